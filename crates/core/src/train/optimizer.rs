//! Optimizers with PyTorch's update rules, step for step (`torch.optim.SGD`, `Adam`, `AdamW`, single-tensor
//! path), and gradient clipping by global norm (`clip_grad_norm_`) or by value (`clip_grad_value_`).

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels::{Real, with_host};

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
    Moments { exp_avg: Tensor, exp_avg_sq: Tensor },
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
                OptimizerKind::Sgd => sgd(c, &p, grad, slot)?,
                OptimizerKind::Adam | OptimizerKind::AdamW => adam(c, self.step, &p, grad, slot)?,
            };
            var.set(&new)?;
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

fn adam(c: &OptimizerConfig, step: u64, p: &Tensor, grad: &Tensor, slot: &mut Slot) -> Result<Tensor> {
    if p.device().is_cpu() && grad.dtype() == p.dtype() {
        match p.dtype() {
            DType::F32 => return adam_host::<f32>(c, step, p, grad, slot),
            DType::F64 => return adam_host::<f64>(c, step, p, grad, slot),
            _ => {}
        }
    }
    adam_tensors(c, step, p, grad, slot)
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
    let (m, v) = match slot {
        Slot::Moments { exp_avg, exp_avg_sq } => (exp_avg.clone(), exp_avg_sq.clone()),
        _ => (g.zeros_like()?, g.zeros_like()?),
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

/// [`adam`] on CPU in one pass per parameter, instead of a dozen tensor ops that each read and write the whole
/// parameter. Each element goes through the same operations in the same order as the tensor ops (an affine
/// map `x * a + b` included, with its `+ 0`), so the results are the same to the bit.
fn adam_host<T: Real>(c: &OptimizerConfig, step: u64, p: &Tensor, grad: &Tensor, slot: &mut Slot) -> Result<Tensor> {
    use rayon::prelude::*;
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
    let (m0, v0) = match slot {
        Slot::Moments { exp_avg, exp_avg_sq } => (exp_avg.clone(), exp_avg_sq.clone()),
        _ => {
            let z = p.zeros_like()?;
            (z.clone(), z)
        }
    };
    let n = p.elem_count();
    let (mut np, mut nm, mut nv) = (vec![T::zero(); n], vec![T::zero(); n], vec![T::zero(); n]);
    with_host(p, |ps: &[T]| {
        with_host(grad, |gs: &[T]| {
            with_host(&m0, |ms: &[T]| {
                with_host(&v0, |vs: &[T]| {
                    const CHUNK: usize = 1 << 15;
                    type Out<'a, T> = (usize, ((&'a mut [T], &'a mut [T]), &'a mut [T]));
                    let run = |(i, ((po, mo), vo)): Out<T>| {
                        let r = i * CHUNK..i * CHUNK + po.len();
                        let (ps, gs, ms, vs) = (&ps[r.clone()], &gs[r.clone()], &ms[r.clone()], &vs[r]);
                        adam_pass(&k, ps, gs, ms, vs, po, mo, vo);
                    };
                    if crate::kernels::share(n, 2 * CHUNK) {
                        let out = np.par_chunks_mut(CHUNK).zip(nm.par_chunks_mut(CHUNK)).zip(nv.par_chunks_mut(CHUNK));
                        out.enumerate().for_each(run);
                    } else {
                        np.chunks_mut(CHUNK)
                            .zip(nm.chunks_mut(CHUNK))
                            .zip(nv.chunks_mut(CHUNK))
                            .enumerate()
                            .for_each(run);
                    }
                })
            })
        })
    })????;
    let shape = p.shape().clone();
    let dev = p.device();
    *slot = Slot::Moments {
        exp_avg: Tensor::from_vec(nm, shape.clone(), dev)?,
        exp_avg_sq: Tensor::from_vec(nv, shape.clone(), dev)?,
    };
    Ok(Tensor::from_vec(np, shape, dev)?)
}

crate::kernels::simd_fn! {
    /// [`adam_element`] over slices of one length, vectorised for the CPU.
    fn adam_pass<T: Real>(
        k: &AdamConsts<T>,
        ps: &[T],
        gs: &[T],
        ms: &[T],
        vs: &[T],
        po: &mut [T],
        mo: &mut [T],
        vo: &mut [T],
    ) {
        let n = po.len();
        let (ps, gs, ms, vs, mo, vo) = (&ps[..n], &gs[..n], &ms[..n], &vs[..n], &mut mo[..n], &mut vo[..n]);
        for j in 0..n {
            (po[j], mo[j], vo[j]) = adam_element(k, ps[j], gs[j], ms[j], vs[j]);
        }
    }
}

/// One element of [`adam`]: the same operations as its tensor ops, in the same order.
#[inline(always)]
fn adam_element<T: Real>(k: &AdamConsts<T>, p: T, g: T, m: T, v: T) -> (T, T, T) {
    let zero = T::zero();
    let (mut p, mut g) = (p, g);
    if k.adamw {
        p = p * k.decay + zero;
    } else if k.l2 {
        g += p * k.wd + zero;
    }
    let m = m + ((g - m) * k.one_minus_b1 + zero);
    let v = (v * k.b2 + zero) + ((g * g) * k.one_minus_b2 + zero);
    let denom = v.sqrt() * k.inv_sqrt_bc2 + k.eps;
    let p = p - ((m / denom) * k.step_size + zero);
    (p, m, v)
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
                let (mut pa, mut pb) = (random(&mut rng, n, dtype), Tensor::zeros(n, dtype, &Device::Cpu).unwrap());
                pb = pb.add(&pa).unwrap();
                let (mut sa, mut sb) = (Slot::Empty, Slot::Empty);
                for step in 1..=3 {
                    let g = random(&mut rng, n, dtype);
                    pa = match dtype {
                        DType::F32 => adam_host::<f32>(&c, step, &pa, &g, &mut sa),
                        _ => adam_host::<f64>(&c, step, &pa, &g, &mut sa),
                    }
                    .unwrap();
                    pb = adam_tensors(&c, step, &pb, &g, &mut sb).unwrap();
                    let bits = |t: &Tensor| -> Vec<u64> {
                        match dtype {
                            DType::F32 => t.to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits() as u64).collect(),
                            _ => t.to_vec1::<f64>().unwrap().iter().map(|x| x.to_bits()).collect(),
                        }
                    };
                    assert!(bits(&pa) == bits(&pb), "{kind:?} wd={wd} {dtype:?} step {step}: parameters differ");
                    let (Slot::Moments { exp_avg: ma, exp_avg_sq: va }, Slot::Moments { exp_avg: mb, exp_avg_sq: vb }) =
                        (&sa, &sb)
                    else {
                        panic!("no moments after a step")
                    };
                    assert!(bits(ma) == bits(mb) && bits(va) == bits(vb), "{kind:?} {dtype:?}: moments differ");
                }
            }
        }
    }
}
