//! Optimizers with PyTorch's update rules, step for step (`torch.optim.SGD`, `Adam`, `AdamW`, single-tensor
//! path), and gradient clipping by global norm (`clip_grad_norm_`) or by value (`clip_grad_value_`).

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels::{Real, SharedMut, with_host};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    #[serde(rename = "adamw")]
    AdamW,
}

/// What the user asks for; unset fields take the defaults of the chosen optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OptimizerSpec {
    #[serde(rename = "type")]
    pub kind: OptimizerKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dampening: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nesterov: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta2: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_norm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_value: Option<f64>,
    /// Parameters whose names contain any of these strings get no weight decay (as Keras's
    /// `exclude_from_weight_decay`, or a PyTorch parameter group with `weight_decay=0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_from_weight_decay: Option<Vec<String>>,
}

impl OptimizerSpec {
    pub fn new(kind: OptimizerKind, learning_rate: f64) -> Self {
        OptimizerSpec {
            kind,
            learning_rate: Some(learning_rate),
            momentum: None,
            dampening: None,
            nesterov: None,
            beta1: None,
            beta2: None,
            epsilon: None,
            weight_decay: None,
            clip_norm: None,
            clip_value: None,
            exclude_from_weight_decay: None,
        }
    }
}

/// The resolved settings, every default filled in and every value checked.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub learning_rate: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
    pub clip_norm: Option<f64>,
    pub clip_value: Option<f64>,
    pub exclude_from_weight_decay: Vec<String>,
}

impl OptimizerConfig {
    pub fn from_spec(s: &OptimizerSpec) -> Result<Self> {
        let name = match s.kind {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdamW => "adamw",
        };
        let is_sgd = s.kind == OptimizerKind::Sgd;
        let misplaced: &[(&str, bool)] = if is_sgd {
            &[("beta1", s.beta1.is_some()), ("beta2", s.beta2.is_some()), ("epsilon", s.epsilon.is_some())]
        } else {
            &[
                ("momentum", s.momentum.is_some()),
                ("dampening", s.dampening.is_some()),
                ("nesterov", s.nesterov.is_some()),
            ]
        };
        if let Some((field, _)) = misplaced.iter().find(|(_, set)| *set) {
            return Err(Error::Type(format!("optimizer {name} has no option {field}")));
        }
        let c = OptimizerConfig {
            kind: s.kind,
            learning_rate: s.learning_rate.unwrap_or(if is_sgd { 0.01 } else { 0.001 }),
            momentum: s.momentum.unwrap_or(0.0),
            dampening: s.dampening.unwrap_or(0.0),
            nesterov: s.nesterov.unwrap_or(false),
            beta1: s.beta1.unwrap_or(0.9),
            beta2: s.beta2.unwrap_or(0.999),
            epsilon: s.epsilon.unwrap_or(1e-8),
            weight_decay: s.weight_decay.unwrap_or(if s.kind == OptimizerKind::AdamW { 0.01 } else { 0.0 }),
            clip_norm: s.clip_norm,
            clip_value: s.clip_value,
            exclude_from_weight_decay: s.exclude_from_weight_decay.clone().unwrap_or_default(),
        };
        if c.exclude_from_weight_decay.iter().any(String::is_empty) {
            return Err(Error::Range(format!(
                "optimizer {name}: excludeFromWeightDecay holds an empty string, which would match every parameter"
            )));
        }
        let range = |what: &str, v: f64, ok: bool, want: &str| -> Result<()> {
            if ok && v.is_finite() {
                Ok(())
            } else {
                Err(Error::Range(format!("optimizer {name}: {what} must be {want}, got {v}")))
            }
        };
        range("learningRate", c.learning_rate, c.learning_rate >= 0.0, ">= 0")?;
        range("momentum", c.momentum, c.momentum >= 0.0, ">= 0")?;
        range("dampening", c.dampening, (0.0..=1.0).contains(&c.dampening), "in [0, 1]")?;
        range("beta1", c.beta1, (0.0..1.0).contains(&c.beta1), "in [0, 1)")?;
        range("beta2", c.beta2, (0.0..1.0).contains(&c.beta2), "in [0, 1)")?;
        range("epsilon", c.epsilon, c.epsilon > 0.0, "> 0")?;
        range("weightDecay", c.weight_decay, c.weight_decay >= 0.0, ">= 0")?;
        if let Some(v) = c.clip_norm {
            range("clipNorm", v, v > 0.0, "> 0")?;
        }
        if let Some(v) = c.clip_value {
            range("clipValue", v, v > 0.0, "> 0")?;
        }
        if c.nesterov && (c.momentum <= 0.0 || c.dampening != 0.0) {
            return Err(Error::Range("optimizer sgd: nesterov needs momentum > 0 and dampening 0".into()));
        }
        Ok(c)
    }
}

/// Per-parameter state: the momentum buffer (SGD) or the two moments (Adam, AdamW).
#[derive(Debug, Clone)]
pub enum Slot {
    Empty,
    Momentum(Tensor),
    Moments {
        exp_avg: Tensor,
        exp_avg_sq: Tensor,
    },
    /// Adam's moments on the CPU as one buffer `[2, ...shape]` (exp_avg, then exp_avg_sq) that each step
    /// updates in place.
    Packed(Tensor),
}

impl Slot {
    /// Adam's two moments (views into the buffer where they are packed); None for the other kinds.
    pub fn moments(&self) -> Result<Option<(Tensor, Tensor)>> {
        Ok(match self {
            Slot::Moments { exp_avg, exp_avg_sq } => Some((exp_avg.clone(), exp_avg_sq.clone())),
            Slot::Packed(mv) => Some((mv.get(0)?, mv.get(1)?)),
            _ => None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Optimizer {
    pub config: OptimizerConfig,
    pub step: u64,
    pub slots: Vec<Slot>,
    /// Per parameter: whether weight decay applies (see `exclude_from_weight_decay`).
    decays: Vec<bool>,
}

impl Optimizer {
    /// An optimizer for the parameters named `names`, in order.
    pub fn new(config: OptimizerConfig, names: &[&str]) -> Self {
        let decays =
            names.iter().map(|n| !config.exclude_from_weight_decay.iter().any(|x| n.contains(x.as_str()))).collect();
        Optimizer { config, step: 0, slots: vec![Slot::Empty; names.len()], decays }
    }

    /// Clips `grads` in place as configured and returns the global gradient norm before clipping.
    pub fn clip(&self, grads: &mut [Tensor]) -> Result<f64> {
        let raw = global_norm(grads)?;
        let mut norm = raw;
        if let Some(v) = self.config.clip_value {
            for g in grads.iter_mut() {
                *g = g.clamp(-v, v)?;
            }
            norm = global_norm(grads)?;
        }
        if let Some(max) = self.config.clip_norm {
            // As clip_grad_norm_: scale by max / (norm + 1e-6) when that is below 1.
            let coef = max / (norm + 1e-6);
            if coef < 1.0 {
                for g in grads.iter_mut() {
                    *g = g.affine(coef, 0.0)?;
                }
            }
        }
        Ok(raw)
    }

    /// Applies one update to `params` from (already clipped) `grads`.
    pub fn step(&mut self, params: &[&Var], grads: &[Tensor]) -> Result<()> {
        if params.len() != self.slots.len() || grads.len() != params.len() {
            return Err(Error::State(format!(
                "optimizer: {} slots for {} parameters and {} gradients",
                self.slots.len(),
                params.len(),
                grads.len()
            )));
        }
        self.step += 1;
        let c = self.config.clone();
        let no_decay = OptimizerConfig { weight_decay: 0.0, ..c.clone() };
        for (((var, grad), slot), &decays) in params.iter().zip(grads).zip(self.slots.iter_mut()).zip(&self.decays) {
            let c = if decays { &c } else { &no_decay };
            let p = var.as_detached_tensor();
            let new = match c.kind {
                OptimizerKind::Sgd => Some(sgd(c, &p, grad, slot)?),
                OptimizerKind::Adam | OptimizerKind::AdamW => adam(c, self.step, &p, grad, slot)?,
            };
            if let Some(new) = new {
                var.set(&new)?;
            }
        }
        Ok(())
    }
}

/// The L2 norm of all gradients together (summed in f64; on CPU in one pass over each gradient).
fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut sq = 0.0f64;
    for g in grads {
        sq += match (g.device().is_cpu(), g.dtype()) {
            (true, DType::F32) => with_host(g, |v: &[f32]| v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())?,
            (true, DType::F64) => with_host(g, |v: &[f64]| v.iter().map(|&x| x * x).sum::<f64>())?,
            _ => g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?,
        };
    }
    Ok(sq.sqrt())
}

fn sgd(c: &OptimizerConfig, p: &Tensor, grad: &Tensor, slot: &mut Slot) -> Result<Tensor> {
    let mut g = grad.clone();
    if c.weight_decay != 0.0 {
        g = g.add(&p.affine(c.weight_decay, 0.0)?)?;
    }
    if c.momentum != 0.0 {
        let buf = match slot {
            Slot::Momentum(b) => b.affine(c.momentum, 0.0)?.add(&g.affine(1.0 - c.dampening, 0.0)?)?,
            _ => g.clone(),
        };
        g = if c.nesterov { g.add(&buf.affine(c.momentum, 0.0)?)? } else { buf.clone() };
        *slot = Slot::Momentum(buf);
    }
    Ok(p.sub(&g.affine(c.learning_rate, 0.0)?)?)
}

/// The new value of `p`, or None where it was updated in place (on the CPU, in f32 and f64).
fn adam(c: &OptimizerConfig, step: u64, p: &Tensor, grad: &Tensor, slot: &mut Slot) -> Result<Option<Tensor>> {
    if p.device().is_cpu() && grad.dtype() == p.dtype() && p.is_contiguous() {
        // A gradient can come out of the backward as a strided view (a transpose): one copy, still far cheaper
        // than the tensor ops.
        let grad = &grad.contiguous()?;
        match p.dtype() {
            DType::F32 => return adam_host::<f32>(c, step, p, grad, slot).map(|()| None),
            DType::F64 => return adam_host::<f64>(c, step, p, grad, slot).map(|()| None),
            _ => {}
        }
    }
    adam_tensors(c, step, p, grad, slot).map(Some)
}

/// [`adam`] as tensor ops, for any device.
fn adam_tensors(c: &OptimizerConfig, step: u64, p: &Tensor, grad: &Tensor, slot: &mut Slot) -> Result<Tensor> {
    let mut p = p.clone();
    let mut g = grad.clone();
    if c.kind == OptimizerKind::AdamW {
        p = p.affine(1.0 - c.learning_rate * c.weight_decay, 0.0)?;
    } else if c.weight_decay != 0.0 {
        g = g.add(&p.affine(c.weight_decay, 0.0)?)?;
    }
    let (m, v) = match slot.moments()? {
        Some(mv) => mv,
        None => (g.zeros_like()?, g.zeros_like()?),
    };
    // PyTorch writes the first moment as a lerp: m + (1 - beta1) (g - m).
    let m = m.add(&g.sub(&m)?.affine(1.0 - c.beta1, 0.0)?)?;
    let v = v.affine(c.beta2, 0.0)?.add(&g.sqr()?.affine(1.0 - c.beta2, 0.0)?)?;
    let bc1 = 1.0 - c.beta1.powf(step as f64);
    let bc2 = 1.0 - c.beta2.powf(step as f64);
    let step_size = c.learning_rate / bc1;
    let denom = v.sqrt()?.affine(1.0 / bc2.sqrt(), c.epsilon)?;
    let new = p.sub(&m.div(&denom)?.affine(step_size, 0.0)?)?;
    *slot = Slot::Moments { exp_avg: m, exp_avg_sq: v };
    Ok(new)
}

/// [`adam`]'s constants, in the parameter's type.
struct AdamConsts<T> {
    adamw: bool,
    l2: bool,
    decay: T,
    wd: T,
    one_minus_b1: T,
    b2: T,
    one_minus_b2: T,
    inv_sqrt_bc2: T,
    eps: T,
    step_size: T,
}

/// [`adam`] on the CPU, in place: one pass updates the moments (packed into one buffer, made on the first
/// step), a second the parameter, with no allocation. Each element goes through the same operations in the
/// same order as the tensor ops (an affine map `x * a + b` included, with its `+ 0`), so the results are the
/// same to the bit.
fn adam_host<T: Real>(c: &OptimizerConfig, step: u64, p: &Tensor, grad: &Tensor, slot: &mut Slot) -> Result<()> {
    let bc1 = 1.0 - c.beta1.powf(step as f64);
    let bc2 = 1.0 - c.beta2.powf(step as f64);
    let k = AdamConsts {
        adamw: c.kind == OptimizerKind::AdamW,
        l2: c.kind == OptimizerKind::Adam && c.weight_decay != 0.0,
        decay: T::from_f64(1.0 - c.learning_rate * c.weight_decay),
        wd: T::from_f64(c.weight_decay),
        one_minus_b1: T::from_f64(1.0 - c.beta1),
        b2: T::from_f64(c.beta2),
        one_minus_b2: T::from_f64(1.0 - c.beta2),
        inv_sqrt_bc2: T::from_f64(1.0 / bc2.sqrt()),
        eps: T::from_f64(c.epsilon),
        step_size: T::from_f64(c.learning_rate / bc1),
    };
    let packed = match slot {
        Slot::Packed(mv) if mv.is_contiguous() => mv.clone(),
        // Zeros on the first step; moments a checkpoint loaded as two tensors are packed once.
        other => {
            let mv = match other.moments()? {
                Some((m, v)) => Tensor::stack(&[m, v], 0)?.contiguous()?,
                None => {
                    let dims: Vec<usize> = std::iter::once(2).chain(p.dims().iter().copied()).collect();
                    Tensor::zeros(dims, p.dtype(), p.device())?
                }
            };
            *other = Slot::Packed(mv.clone());
            mv
        }
    };
    packed.inplace_op3(p, grad, &AdamMoments(&k))?;
    p.inplace_op2(&packed, &AdamParams(&k))?;
    Ok(())
}

/// Values per parallel chunk of an update pass.
const ADAM_CHUNK: usize = 1 << 15;

/// Runs `f(range)` over `0..n` in [`ADAM_CHUNK`]s, shared among the threads when it is large enough to pay.
fn adam_chunks(n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    use rayon::prelude::*;
    let run = |i: usize| f(i * ADAM_CHUNK..((i + 1) * ADAM_CHUNK).min(n));
    if crate::kernels::share(n, 2 * ADAM_CHUNK) {
        (0..n.div_ceil(ADAM_CHUNK)).into_par_iter().for_each(run);
    } else {
        (0..n.div_ceil(ADAM_CHUNK)).for_each(run);
    }
}

/// The moments' pass: `[m; v]` in place from the gradient (and, for L2 decay, the parameter).
struct AdamMoments<'a, T>(&'a AdamConsts<T>);

impl<T: Real> candle_core::InplaceOp3 for AdamMoments<'_, T> {
    fn name(&self) -> &'static str {
        "adam-moments"
    }

    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let mv = crate::kernels::slice_mut::<T>(s1, l1, "moments")?;
        let (ps, gs) = (crate::kernels::slice::<T>(s2, l2, "p")?, crate::kernels::slice::<T>(s3, l3, "grad")?);
        let n = ps.len();
        if gs.len() != n || mv.len() != 2 * n {
            candle_core::bail!("adam: {} moments for {n} values and {} gradients", mv.len(), gs.len());
        }
        let out = SharedMut::new(mv.as_mut_ptr());
        adam_chunks(n, |r| {
            // SAFETY: m's range and v's range (n further on) of this chunk, which no other chunk touches.
            let (ms, vs) = unsafe { (out.slice_mut(r.start, r.len()), out.slice_mut(n + r.start, r.len())) };
            adam_moments(self.0, &ps[r.clone()], &gs[r], ms, vs);
        });
        Ok(())
    }
}

/// The parameter's pass: `p` in place from the new moments.
struct AdamParams<'a, T>(&'a AdamConsts<T>);

impl<T: Real> candle_core::InplaceOp2 for AdamParams<'_, T> {
    fn name(&self) -> &'static str {
        "adam-params"
    }

    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let ps = crate::kernels::slice_mut::<T>(s1, l1, "p")?;
        let mv = crate::kernels::slice::<T>(s2, l2, "moments")?;
        let n = ps.len();
        if mv.len() != 2 * n {
            candle_core::bail!("adam: {} moments for {n} values", mv.len());
        }
        let out = SharedMut::new(ps.as_mut_ptr());
        adam_chunks(n, |r| {
            // SAFETY: this chunk's range of p, which no other chunk touches.
            let po = unsafe { out.slice_mut(r.start, r.len()) };
            adam_params(self.0, &mv[r.clone()], &mv[n + r.start..n + r.end], po);
        });
        Ok(())
    }
}

crate::kernels::simd_fn! {
    /// `m` and `v` for one chunk, as [`adam_tensors`] computes them.
    fn adam_moments<T: Real>(k: &AdamConsts<T>, ps: &[T], gs: &[T], ms: &mut [T], vs: &mut [T]) {
        let n = ms.len();
        let (ps, gs, vs) = (&ps[..n], &gs[..n], &mut vs[..n]);
        let zero = T::zero();
        for j in 0..n {
            let mut g = gs[j];
            if k.l2 {
                g += ps[j] * k.wd + zero;
            }
            ms[j] = ms[j] + ((g - ms[j]) * k.one_minus_b1 + zero);
            vs[j] = (vs[j] * k.b2 + zero) + ((g * g) * k.one_minus_b2 + zero);
        }
    }
}

crate::kernels::simd_fn! {
    /// `p` for one chunk from the new moments, as [`adam_tensors`] computes it.
    fn adam_params<T: Real>(k: &AdamConsts<T>, ms: &[T], vs: &[T], po: &mut [T]) {
        let n = po.len();
        let (ms, vs) = (&ms[..n], &vs[..n]);
        let zero = T::zero();
        for j in 0..n {
            let mut p = po[j];
            if k.adamw {
                p = p * k.decay + zero;
            }
            let denom = vs[j].sqrt() * k.inv_sqrt_bc2 + k.eps;
            po[j] = p - ((ms[j] / denom) * k.step_size + zero);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;
    use candle_core::Device;

    fn random(rng: &mut Rng, n: usize, dtype: DType) -> Tensor {
        let v: Vec<f64> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    }

    /// The one-pass CPU update against the tensor ops, bit for bit, over a few steps.
    #[test]
    fn adam_in_one_pass_equals_the_tensor_ops_to_the_bit() {
        for dtype in [DType::F32, DType::F64] {
            for (kind, wd) in [(OptimizerKind::Adam, 0.0), (OptimizerKind::Adam, 0.01), (OptimizerKind::AdamW, 0.01)] {
                let spec = OptimizerSpec {
                    weight_decay: Some(wd),
                    learning_rate: Some(3e-3),
                    ..serde_json::from_value(serde_json::json!({ "type": kind })).unwrap()
                };
                let c = OptimizerConfig::from_spec(&spec).unwrap();
                let mut rng = Rng::new(4);
                // Longer than one parallel chunk, so several chunks run.
                let n = 70_000;
                let (pa, mut pb) = (random(&mut rng, n, dtype), Tensor::zeros(n, dtype, &Device::Cpu).unwrap());
                pb = pb.add(&pa).unwrap();
                let (mut sa, mut sb) = (Slot::Empty, Slot::Empty);
                for step in 1..=3 {
                    let g = random(&mut rng, n, dtype);
                    match dtype {
                        DType::F32 => adam_host::<f32>(&c, step, &pa, &g, &mut sa),
                        _ => adam_host::<f64>(&c, step, &pa, &g, &mut sa),
                    }
                    .unwrap();
                    assert!(matches!(sa, Slot::Packed(_)), "the CPU moments are packed");
                    pb = adam_tensors(&c, step, &pb, &g, &mut sb).unwrap();
                    let bits = |t: &Tensor| -> Vec<u64> {
                        match dtype {
                            DType::F32 => t.to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits() as u64).collect(),
                            _ => t.to_vec1::<f64>().unwrap().iter().map(|x| x.to_bits()).collect(),
                        }
                    };
                    assert!(bits(&pa) == bits(&pb), "{kind:?} wd={wd} {dtype:?} step {step}: parameters differ");
                    let (Some((ma, va)), Some((mb, vb))) = (sa.moments().unwrap(), sb.moments().unwrap()) else {
                        panic!("no moments after a step")
                    };
                    assert!(bits(&ma) == bits(&mb) && bits(&va) == bits(&vb), "{kind:?} {dtype:?}: moments differ");
                }
            }
        }
    }
}
