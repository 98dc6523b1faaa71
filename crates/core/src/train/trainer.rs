//! What every trainable model shares: its named parameters, the seeded generator that draws its dropout
//! masks, and once compiled, the loss and optimizer. A model supplies only its forward pass (a closure over
//! the parameter tensors); the trainer runs loss, backward, clipping and update around it.

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::kernels::with_host;
use crate::layers::{ForwardCtx, Params};
use crate::memory::{self, Budget, Bytes};
use crate::rng::Rng;
use crate::train::{LossSpec, Optimizer, OptimizerConfig, OptimizerKind, OptimizerSpec, Tally};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompileConfig {
    pub optimizer: OptimizerSpec,
    pub loss: LossSpec,
    /// Metrics reported beside the loss; both need `crossEntropy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metric>,
}

/// A metric of a compiled model. `accuracy`: the share of counted targets whose most likely class is right.
/// `perplexity`: the exponential of the mean cross-entropy per counted target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Metric {
    Accuracy,
    Perplexity,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutput {
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub tally: Tally,
}

/// The compiled loss of a batch in inference mode, with its tally.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub tally: Tally,
}

struct Compiled {
    loss: LossSpec,
    optimizer: Optimizer,
    spec: CompileConfig,
}

pub struct Trainer {
    pub(crate) params: Params,
    pub(crate) rng: Rng,
    pub(crate) device: Device,
    pub(crate) dtype: DType,
    compiled: Option<Compiled>,
    /// What the model may use: parameters, optimizer state and the working memory of each call.
    budget: Budget,
}

const NOT_COMPILED: &str = "the model is not compiled: call compile({ optimizer, loss }) first";

impl Trainer {
    pub(crate) fn new(params: Params, rng: Rng, device: &Device, dtype: DType, budget: Budget) -> Self {
        Trainer { params, rng, device: device.clone(), dtype, compiled: None, budget }
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Bytes of the parameters and the model's other lasting tensors.
    pub fn resident_bytes(&self) -> u64 {
        Bytes::of(self.params.resident_elems(), self.dtype.size_in_bytes()).get()
    }

    /// Bytes of the optimizer's state (Adam's two moments, SGD's momentum): none until its first step.
    pub fn optimizer_bytes(&self) -> u64 {
        match &self.compiled {
            Some(c) if c.optimizer.step > 0 => self.optimizer_bytes_for(&c.optimizer.config),
            _ => 0,
        }
    }

    fn optimizer_bytes_for(&self, c: &OptimizerConfig) -> u64 {
        let slots = match c.kind {
            OptimizerKind::Adam | OptimizerKind::AdamW => 2,
            OptimizerKind::Sgd if c.momentum != 0.0 => 1,
            OptimizerKind::Sgd => 0,
        };
        (Bytes::of(self.param_elems(), self.dtype.size_in_bytes()) * slots).get()
    }

    fn param_elems(&self) -> u64 {
        self.params.param_elems()
    }

    /// The optimizer's phase of a step, after the activations are freed: every gradient, and for the
    /// parameter being updated its new value and new moments beside the old (measured: P + 3L, L the largest
    /// parameter's bytes), plus the moments themselves on the first step, which creates them.
    fn update_bytes(&self, config: &OptimizerConfig, first: bool) -> u64 {
        let size = self.dtype.size_in_bytes();
        let new_moments = if first { self.optimizer_bytes_for(config) } else { 0 };
        let phase = Bytes::of(self.param_elems(), size) + Bytes::of(self.params.largest_elems(), size) * 3;
        (phase + Bytes(new_moments)).get()
    }

    /// What a call allocates beyond what the model holds: its `working` bytes or, in training, the update
    /// phase if that is larger.
    pub(crate) fn call_extra(&self, working: u64, training: bool) -> u64 {
        let update = match (&self.compiled, training) {
            (Some(c), true) => self.update_bytes(&c.optimizer.config, c.optimizer.step == 0),
            _ => 0,
        };
        working.max(update)
    }

    /// Fails unless a call that needs `working` bytes on top of what the model holds fits the budget; `what`
    /// names the call and its sizes (`trainStep on a batch of shape [64, 512]`). In training the update is a
    /// phase of its own, so the step needs the larger of the two.
    pub(crate) fn check_call(&self, working: u64, training: bool, what: impl FnOnce() -> String) -> Result<()> {
        let held = Bytes(self.resident_bytes()) + Bytes(self.optimizer_bytes());
        let extra = Bytes(self.call_extra(working, training));
        self.budget.check((held + extra).get(), |n| {
            format!(
                "{} needs about {} of working memory, {n} with the {} the model holds",
                what(),
                memory::format_bytes(extra.get()),
                memory::format_bytes(held.get())
            )
        })
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn param_count(&self) -> usize {
        usize::try_from(self.param_elems()).unwrap_or(usize::MAX)
    }

    pub fn compile(&mut self, spec: CompileConfig) -> Result<()> {
        if let (Some(m), LossSpec::Mse(_)) = (spec.metrics.first(), &spec.loss) {
            let name = match m {
                Metric::Accuracy => "accuracy",
                Metric::Perplexity => "perplexity",
            };
            return Err(Error::Range(format!("compile: the {name} metric needs the crossEntropy loss, not mse")));
        }
        let config = OptimizerConfig::from_spec(&spec.optimizer)?;
        let need = Bytes(self.resident_bytes()) + Bytes(self.update_bytes(&config, true));
        self.budget.check(need.get(), |n| {
            format!(
                "compile: training with {} needs at least {n} (parameters {}, optimizer state {}, and the gradients \
                 and new values of an update), before any activations",
                optimizer_name(config.kind),
                memory::format_bytes(self.resident_bytes()),
                memory::format_bytes(self.optimizer_bytes_for(&config))
            )
        })?;
        let names: Vec<&str> = self.params.iter().map(|(n, _)| n).collect();
        let optimizer = Optimizer::new(config, &names);
        self.compiled = Some(Compiled { loss: spec.loss.clone(), optimizer, spec });
        Ok(())
    }

    pub fn compile_config(&self) -> Option<&CompileConfig> {
        self.compiled.as_ref().map(|c| &c.spec)
    }

    pub fn step_count(&self) -> u64 {
        self.compiled.as_ref().map_or(0, |c| c.optimizer.step)
    }

    pub fn learning_rate(&self) -> Option<f64> {
        self.compiled.as_ref().map(|c| c.optimizer.config.learning_rate)
    }

    /// The learning rate compile set, before any schedule changed it.
    pub fn compiled_learning_rate(&self) -> Option<f64> {
        let spec = &self.compiled.as_ref()?.spec.optimizer;
        OptimizerConfig::from_spec(spec).ok().map(|c| c.learning_rate)
    }

    pub fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::Range(format!("learningRate must be a finite number >= 0, got {lr}")));
        }
        let c = self.compiled.as_mut().ok_or_else(|| Error::State(NOT_COMPILED.into()))?;
        c.optimizer.config.learning_rate = lr;
        Ok(())
    }

    pub(crate) fn loss_spec(&self) -> Result<&LossSpec> {
        self.compiled.as_ref().map(|c| &c.loss).ok_or_else(|| Error::State(NOT_COMPILED.into()))
    }

    /// Runs `forward` in inference mode on detached parameters.
    pub(crate) fn infer(&self, forward: impl FnOnce(&[Tensor], &mut ForwardCtx) -> Result<Tensor>) -> Result<Tensor> {
        let p = self.params.tensors(false);
        let mut rng = self.rng.clone();
        let mut ctx = ForwardCtx { train: false, rng: &mut rng };
        forward(&p, &mut ctx)
    }

    /// The compiled loss of `forward`'s output in inference mode.
    pub(crate) fn evaluate(
        &self,
        y: &HostTensor,
        forward: impl FnOnce(&[Tensor], &mut ForwardCtx) -> Result<Tensor>,
    ) -> Result<Evaluation> {
        let spec = self.loss_spec()?;
        let out = self.infer(forward)?;
        let loss = scalar(&spec.compute(&out, y)?)?;
        Ok(Evaluation { loss, tally: spec.tally(&out, y)? })
    }

    /// Loss and gradient of every parameter (in parameter order; zeros where the loss does not reach) for one
    /// forward in training mode, without an update.
    pub(crate) fn gradients(
        &mut self,
        y: &HostTensor,
        forward: impl FnOnce(&[Tensor], &mut ForwardCtx) -> Result<Tensor>,
    ) -> Result<(f64, Vec<Tensor>)> {
        let (loss, _, grads, rng) = self.backward(y, forward)?;
        self.rng = rng;
        Ok((loss, grads))
    }

    /// [`Trainer::gradients`] with the batch's tally and the generator after the dropout masks, which the
    /// caller commits once the step is sure to complete.
    fn backward(
        &mut self,
        y: &HostTensor,
        forward: impl FnOnce(&[Tensor], &mut ForwardCtx) -> Result<Tensor>,
    ) -> Result<(f64, Tally, Vec<Tensor>, Rng)> {
        let loss_spec = self.loss_spec()?.clone();
        let p = self.params.tensors(true);
        // Draw dropout masks from a copy and commit it only once the step succeeded.
        let mut rng = self.rng.clone();
        let mut ctx = ForwardCtx { train: true, rng: &mut rng };
        let out = forward(&p, &mut ctx)?;
        let loss = loss_spec.compute(&out, y)?;
        let value = scalar(&loss)?;
        if !value.is_finite() {
            return Err(Error::Range(format!(
                "trainStep: the loss is {value}; the weights are left as they were (lower the learning rate or clip gradients)"
            )));
        }
        let tally = loss_spec.tally(&out, y)?;
        crate::cancel::check("backward")?;
        let store = loss.backward()?;
        crate::cancel::check("backward")?;
        let grads = self
            .params
            .iter()
            .map(|(_, v)| match store.get(v.as_tensor()) {
                Some(g) => Ok(g.detach()),
                None => Ok(v.as_tensor().zeros_like()?),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((value, tally, grads, rng))
    }

    /// One training step around `forward`: loss, backward, clipping, update.
    pub(crate) fn train_step(
        &mut self,
        y: &HostTensor,
        forward: impl FnOnce(&[Tensor], &mut ForwardCtx) -> Result<Tensor>,
    ) -> Result<StepOutput> {
        if self.compiled.is_none() {
            return Err(Error::State(NOT_COMPILED.into()));
        }
        let (loss, tally, mut grads, rng) = self.backward(y, forward)?;
        // The last look: once the update starts it runs to the end, so a step is taken whole or not at all.
        crate::cancel::check("trainStep")?;
        self.rng = rng;
        let vars: Vec<&Var> = self.params.entries.iter().map(|(_, v)| v).collect();
        let c = self.compiled.as_mut().ok_or_else(|| Error::State(NOT_COMPILED.into()))?;
        let grad_norm = c.optimizer.clip(&mut grads)?;
        c.optimizer.step(&vars, &grads)?;
        Ok(StepOutput { loss, grad_norm, tally })
    }

    /// Bytes of the trainable parameters (not lasting tables, not optimizer state).
    pub fn param_bytes(&self) -> u64 {
        Bytes::of(self.param_elems(), self.dtype.size_in_bytes()).get()
    }

    /// Every parameter, by name, copied to the host (once the copy is known to fit the budget).
    pub fn weights(&self) -> Result<Vec<(String, HostTensor)>> {
        // A copy as f32 or f64, and candle's flattened view of each tensor on the way.
        let largest = Bytes::of(self.params.largest_elems(), self.dtype.size_in_bytes());
        let working = (Bytes(self.param_bytes()) + largest).get();
        self.check_call(working, false, || format!("getWeights of {} parameters", self.param_count()))?;
        self.params
            .iter()
            .map(|(n, v)| {
                crate::cancel::check("getWeights")?;
                Ok((n.to_string(), HostTensor::from_tensor(v.as_tensor())?))
            })
            .collect()
    }

    /// Replaces parameters by name. Every name must exist and every shape match; with `strict`, every
    /// parameter must be given. Nothing changes unless all checks pass.
    pub fn set_weights(&mut self, weights: &[(String, HostTensor)], strict: bool) -> Result<()> {
        let (dtype, device) = (self.dtype, self.device.clone());
        // Each given tensor becomes a tensor of the model's dtype beside the parameter it replaces.
        let working =
            weights.iter().fold(Bytes(0), |a, (_, t)| a + Bytes::of(t.data.len() as u64, dtype.size_in_bytes()));
        self.check_call(working.get(), false, || format!("setWeights of {} tensors", weights.len()))?;
        let given = weights.iter().map(|(n, t)| (n.as_str(), t.shape.as_slice(), t));
        let staged = self.stage("setWeights: ", given, strict, |name, t| {
            t.to_floats(&format!("setWeights {name}"), dtype, &device)
        })?;
        commit(staged)
    }

    /// [`Trainer::set_weights`] from tensors already in memory (a checkpoint's), strictly: every parameter
    /// must be given with its shape and finite values. The tensors are converted in place of a host copy, so
    /// loading holds the file's tensors and the model, not a third copy.
    pub(crate) fn set_tensors(&mut self, weights: &[(&str, &Tensor)]) -> Result<()> {
        let (dtype, device) = (self.dtype, self.device.clone());
        let given = weights.iter().map(|&(n, t)| (n, t.dims(), t));
        let staged = self.stage("", given, true, |name, t| {
            let t = t.to_dtype(dtype)?.to_device(&device)?;
            let finite = match (t.device().is_cpu(), t.dtype()) {
                (true, DType::F32) => with_host(&t, |v: &[f32]| v.iter().all(|x| x.is_finite()))?,
                (true, DType::F64) => with_host(&t, |v: &[f64]| v.iter().all(|x| x.is_finite()))?,
                _ => t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?.is_finite(),
            };
            if !finite {
                return Err(Error::Range(format!("{name}: values must be finite")));
            }
            Ok(t)
        })?;
        commit(staged)
    }

    /// The checks of a replacement of parameters by name, before anything changes: each name must exist, each
    /// shape match, each value `convert`; with `strict`, every parameter must be given. `prefix` starts the
    /// messages (`setWeights: `).
    fn stage<'a, T>(
        &self,
        prefix: &str,
        given: impl Iterator<Item = (&'a str, &'a [usize], T)>,
        strict: bool,
        mut convert: impl FnMut(&str, T) -> Result<Tensor>,
    ) -> Result<Vec<(&Var, Tensor)>> {
        let mut staged = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (name, shape, t) in given {
            let var = self.params.get(name).ok_or_else(|| {
                Error::Range(format!("{prefix}the model has no parameter {name:?}; it has {}", self.some_names()))
            })?;
            if shape != var.dims() {
                return Err(Error::shape("setWeights", name.to_string(), format!("{:?}", var.dims()), shape));
            }
            crate::cancel::check("setWeights")?;
            staged.push((var, convert(name, t)?));
            seen.insert(name);
        }
        if strict {
            let missing: Vec<&str> = self.params.iter().map(|(n, _)| n).filter(|n| !seen.contains(n)).collect();
            if !missing.is_empty() {
                return Err(Error::Range(format!("{prefix}missing parameters {}", list_some(&missing))));
            }
        }
        Ok(staged)
    }

    /// The parameter names, the first few of them when there are many.
    fn some_names(&self) -> String {
        list_some(&self.params.iter().map(|(n, _)| n).collect::<Vec<_>>())
    }

    pub fn rng_state(&self) -> [u64; 4] {
        self.rng.state()
    }

    pub fn set_rng_state(&mut self, s: [u64; 4]) {
        self.rng = Rng::from_state(s);
    }

    pub(crate) fn optimizer(&self) -> Option<&Optimizer> {
        self.compiled.as_ref().map(|c| &c.optimizer)
    }

    pub(crate) fn optimizer_mut(&mut self) -> Option<&mut Optimizer> {
        self.compiled.as_mut().map(|c| &mut c.optimizer)
    }
}

/// Sets each staged value: the last step of a replacement whose every check has passed.
fn commit(staged: Vec<(&Var, Tensor)>) -> Result<()> {
    for (var, t) in staged {
        var.set(&t)?;
    }
    Ok(())
}

/// `["a", "b"]`, or the first 20 names and how many more.
fn list_some(names: &[&str]) -> String {
    const SHOWN: usize = 20;
    if names.len() <= SHOWN {
        format!("{names:?}")
    } else {
        format!("{:?} and {} more", &names[..SHOWN], names.len() - SHOWN)
    }
}

fn optimizer_name(k: OptimizerKind) -> &'static str {
    match k {
        OptimizerKind::Sgd => "sgd",
        OptimizerKind::Adam => "adam",
        OptimizerKind::AdamW => "adamw",
    }
}

pub(crate) fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

pub(crate) fn check_batch(x: &HostTensor, y: &HostTensor) -> Result<()> {
    if x.batch() != y.batch() {
        return Err(Error::Range(format!(
            "x and y must have the same batch size (first axis): x has {}, y has {}",
            x.batch(),
            y.batch()
        )));
    }
    Ok(())
}
