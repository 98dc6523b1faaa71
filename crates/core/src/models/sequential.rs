//! A stack of layers built from a JSON-able spec, trained by backpropagation through candle autograd.
//!
//! Parameters are named as in PyTorch's `nn.Sequential`: the layer's index (or its `name`) then the module's
//! own parameter name, e.g. `0.weight`, `1.weight_ih_l0`, so a torch `state_dict` maps onto the model.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::layers::{Builder, Dense, Dropout, Embedding, Flow, ForwardCtx, LayerSpec, Lstm, LstmState, Params};
use crate::rng::Rng;
use crate::train::{LossSpec, Optimizer, OptimizerConfig, OptimizerSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Precision {
    #[default]
    Float32,
    Float64,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::Float32 => DType::F32,
            Precision::Float64 => DType::F64,
        }
    }
}

/// Everything needed to rebuild a model: stored in checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SequentialConfig {
    pub layers: Vec<LayerSpec>,
    /// Seeds the initial weights and every dropout mask.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub dtype: Precision,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompileConfig {
    pub optimizer: OptimizerSpec,
    pub loss: LossSpec,
}

/// An initial state for one recurrent layer, addressed by its name or index.
#[derive(Debug, Clone)]
pub struct InitialState {
    pub layer: String,
    pub h: HostTensor,
    pub c: HostTensor,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutput {
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

#[derive(Debug, Clone)]
enum Layer {
    Embedding(Embedding),
    Dense(Dense),
    Lstm(Lstm),
    Dropout(Dropout),
}

#[derive(Debug, Clone)]
struct Node {
    name: String,
    kind: &'static str,
    layer: Layer,
    out: Flow,
    n_params: usize,
}

struct Compiled {
    loss: LossSpec,
    optimizer: Optimizer,
    spec: CompileConfig,
}

pub struct Sequential {
    config: SequentialConfig,
    nodes: Vec<Node>,
    params: Params,
    device: Device,
    dtype: DType,
    rng: Rng,
    compiled: Option<Compiled>,
}

impl Sequential {
    /// Builds the model on the CPU.
    pub fn new(config: SequentialConfig) -> Result<Self> {
        Self::new_on(config, &Device::Cpu)
    }

    pub fn new_on(config: SequentialConfig, device: &Device) -> Result<Self> {
        if config.layers.is_empty() {
            return Err(Error::Range("sequential: a model needs at least one layer".into()));
        }
        let dtype = config.dtype.dtype();
        let mut rng = Rng::new(config.seed);
        let mut params = Params::default();
        let mut nodes = Vec::with_capacity(config.layers.len());
        let mut flow: Option<Flow> = None;
        let mut names = Vec::new();
        for (i, spec) in config.layers.iter().enumerate() {
            let name = spec.name().map(str::to_string).unwrap_or_else(|| i.to_string());
            if name.is_empty() || name.contains('.') {
                return Err(Error::Range(format!(
                    "layer {i} ({}): name must be non-empty and contain no '.', got {name:?}",
                    spec.type_name()
                )));
            }
            if names.contains(&name) {
                return Err(Error::Range(format!("layer {i}: the name {name:?} is used twice")));
            }
            names.push(name.clone());
            let before = params.len();
            let mut b = Builder { params: &mut params, rng: &mut rng, dtype, device, prefix: name.clone() };
            let here = format!("layer {i} ({})", spec.type_name());
            let (layer, out) = match spec {
                LayerSpec::Embedding(s) => {
                    if flow.is_some() {
                        return Err(Error::Type(format!("{here}: an embedding must be the first layer")));
                    }
                    let e = Embedding::build(s, &mut b)?;
                    let out = Flow::Features { size: Some(e.dim), seq: Some(true) };
                    (Layer::Embedding(e), out)
                }
                LayerSpec::Dense(s) => {
                    let size = input_size(&here, flow, s.input_size)?;
                    let d = Dense::build(s, size, &mut b)?;
                    let seq = match flow {
                        Some(Flow::Features { seq, .. }) => seq,
                        _ => None,
                    };
                    let out = Flow::Features { size: Some(d.units), seq };
                    (Layer::Dense(d), out)
                }
                LayerSpec::Lstm(s) => {
                    let size = input_size(&here, flow, s.input_size)?;
                    if let Some(Flow::Features { seq: Some(false), .. }) = flow {
                        return Err(Error::Type(format!(
                            "{here}: needs a sequence [batch, seqLen, features], but the layer before returns only \
                             the last step (set returnSequences: true there)"
                        )));
                    }
                    let l = Lstm::build(s, size, &mut b)?;
                    let out = Flow::Features { size: Some(l.hidden_size), seq: Some(l.return_sequences) };
                    (Layer::Lstm(l), out)
                }
                LayerSpec::Dropout(s) => {
                    let d = Dropout::build(s)?;
                    (Layer::Dropout(d), flow.unwrap_or(Flow::Features { size: None, seq: None }))
                }
            };
            nodes.push(Node { name, kind: spec.type_name(), layer, out, n_params: params.len() - before });
            flow = Some(out);
        }
        Ok(Sequential { config, nodes, params, device: device.clone(), dtype, rng, compiled: None })
    }

    pub fn config(&self) -> &SequentialConfig {
        &self.config
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn param_count(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// What the first layer takes: ids below a vocabulary size, or float features of a given size.
    pub fn input_flow(&self) -> Flow {
        match self.nodes.first().map(|n| &n.layer) {
            Some(Layer::Embedding(e)) => Flow::Ids { vocab_size: e.vocab_size },
            Some(Layer::Dense(d)) => Flow::Features { size: Some(d.input_size), seq: None },
            Some(Layer::Lstm(l)) => Flow::Features { size: Some(l.input_size), seq: Some(true) },
            _ => Flow::Features { size: None, seq: None },
        }
    }

    pub fn compile(&mut self, spec: CompileConfig) -> Result<()> {
        let config = OptimizerConfig::from_spec(&spec.optimizer)?;
        let optimizer = Optimizer::new(config, self.params.len());
        self.compiled = Some(Compiled { loss: spec.loss.clone(), optimizer, spec });
        Ok(())
    }

    pub fn compile_config(&self) -> Option<&CompileConfig> {
        self.compiled.as_ref().map(|c| &c.spec)
    }

    /// Optimizer steps taken since `compile`.
    pub fn step_count(&self) -> u64 {
        self.compiled.as_ref().map_or(0, |c| c.optimizer.step)
    }

    /// The compiled optimizer's current learning rate.
    pub fn learning_rate(&self) -> Option<f64> {
        self.compiled.as_ref().map(|c| c.optimizer.config.learning_rate)
    }

    /// Changes the learning rate of the compiled optimizer (for schedules).
    pub fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::Range(format!("learningRate must be a finite number >= 0, got {lr}")));
        }
        let c = self.compiled_mut()?;
        c.optimizer.config.learning_rate = lr;
        Ok(())
    }

    fn compiled_mut(&mut self) -> Result<&mut Compiled> {
        self.compiled
            .as_mut()
            .ok_or_else(|| Error::State("the model is not compiled: call compile({ optimizer, loss }) first".into()))
    }

    /// Validates the input and makes it a tensor on the model's device.
    fn input_tensor(&self, x: &HostTensor) -> Result<Tensor> {
        // An empty axis anywhere (not only the batch) would reach the losses as a zero-length sequence.
        if x.shape.is_empty() || x.shape.contains(&0) {
            return Err(Error::shape("input", "x", "[batch >= 1, ...] with no empty axis", &x.shape));
        }
        match self.input_flow() {
            Flow::Ids { vocab_size } => {
                if x.shape.len() != 2 {
                    return Err(Error::shape("input", "x (token ids)", "[batch, seqLen]", &x.shape));
                }
                x.to_ids("x", vocab_size, &self.device)
            }
            Flow::Features { .. } => x.to_floats("x", self.dtype, &self.device),
        }
    }

    fn states(&self, states: &[InitialState]) -> Result<HashMap<usize, LstmState>> {
        let mut out = HashMap::new();
        for s in states {
            let idx = self
                .nodes
                .iter()
                .position(|n| n.name == s.layer)
                .ok_or_else(|| Error::Range(format!("initialState: no layer named {:?}", s.layer)))?;
            if !matches!(self.nodes[idx].layer, Layer::Lstm(_)) {
                return Err(Error::Type(format!(
                    "initialState: layer {:?} is a {}, only recurrent layers take an initial state",
                    s.layer, self.nodes[idx].kind
                )));
            }
            let h = s.h.to_floats("initialState h", self.dtype, &self.device)?;
            let c = s.c.to_floats("initialState c", self.dtype, &self.device)?;
            out.insert(idx, LstmState { h, c });
        }
        Ok(out)
    }

    fn forward_tensor(
        &self,
        x: &Tensor,
        states: &HashMap<usize, LstmState>,
        p: &[Tensor],
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        // Layers hold indices into the whole parameter list (see `Builder`), so each gets all of `p`.
        for (i, node) in self.nodes.iter().enumerate() {
            h = match &node.layer {
                Layer::Embedding(e) => e.forward(&h, p)?,
                Layer::Dense(d) => d.forward(&h, p)?,
                Layer::Lstm(l) => l.forward(&h, states.get(&i), p, ctx)?,
                Layer::Dropout(d) => d.forward(&h, ctx)?,
            };
        }
        Ok(h)
    }

    /// Inference: the model's output for `x`, no dropout, no graph kept.
    pub fn predict(&self, x: &HostTensor, states: &[InitialState]) -> Result<HostTensor> {
        HostTensor::from_tensor(&self.output(x, states)?)
    }

    fn output(&self, x: &HostTensor, states: &[InitialState]) -> Result<Tensor> {
        let x = self.input_tensor(x)?;
        let states = self.states(states)?;
        let p = self.params.tensors(false);
        let mut rng = self.rng.clone();
        let mut ctx = ForwardCtx { train: false, rng: &mut rng };
        self.forward_tensor(&x, &states, &p, &mut ctx)
    }

    /// The compiled loss of the model's output (inference mode) against `y`.
    pub fn evaluate(&self, x: &HostTensor, y: &HostTensor, states: &[InitialState]) -> Result<f64> {
        let loss = self.loss_spec()?;
        check_batch(x, y)?;
        let out = self.output(x, states)?;
        scalar(&loss.compute(&out, y)?)
    }

    fn loss_spec(&self) -> Result<&LossSpec> {
        self.compiled
            .as_ref()
            .map(|c| &c.loss)
            .ok_or_else(|| Error::State("the model is not compiled: call compile({ optimizer, loss }) first".into()))
    }

    /// Loss and gradient of every parameter for one batch in training mode, without an update.
    /// Returns gradients in parameter order (zeros for a parameter the loss does not reach).
    pub fn gradients(&mut self, x: &HostTensor, y: &HostTensor, states: &[InitialState]) -> Result<(f64, Vec<Tensor>)> {
        let loss_spec = self.loss_spec()?.clone();
        check_batch(x, y)?;
        let xt = self.input_tensor(x)?;
        let st = self.states(states)?;
        let p = self.params.tensors(true);
        // Draw dropout masks from a copy and commit it only once the step succeeded.
        let mut rng = self.rng.clone();
        let mut ctx = ForwardCtx { train: true, rng: &mut rng };
        let out = self.forward_tensor(&xt, &st, &p, &mut ctx)?;
        let loss = loss_spec.compute(&out, y)?;
        let value = scalar(&loss)?;
        if !value.is_finite() {
            return Err(Error::Range(format!(
                "trainStep: the loss is {value}; the weights are left as they were (lower the learning rate or clip gradients)"
            )));
        }
        let store = loss.backward()?;
        let grads = self
            .params
            .iter()
            .map(|(_, v)| match store.get(v.as_tensor()) {
                Some(g) => Ok(g.detach()),
                None => Ok(v.as_tensor().zeros_like()?),
            })
            .collect::<Result<Vec<_>>>()?;
        self.rng = rng;
        Ok((value, grads))
    }

    /// One training step: forward, loss, backward, clipping, update.
    pub fn train_step(&mut self, x: &HostTensor, y: &HostTensor, states: &[InitialState]) -> Result<StepOutput> {
        self.compiled_mut()?;
        let (loss, mut grads) = self.gradients(x, y, states)?;
        let vars: Vec<&Var> = self.params.entries.iter().map(|(_, v)| v).collect();
        let c = self.compiled.as_mut().ok_or_else(|| Error::State("the model is not compiled".into()))?;
        let grad_norm = c.optimizer.clip(&mut grads)?;
        c.optimizer.step(&vars, &grads)?;
        Ok(StepOutput { loss, grad_norm })
    }

    /// Every parameter, by name, copied to the host.
    pub fn weights(&self) -> Result<Vec<(String, HostTensor)>> {
        self.params.iter().map(|(n, v)| Ok((n.to_string(), HostTensor::from_tensor(v.as_tensor())?))).collect()
    }

    /// Replaces parameters by name. Every name must exist and every shape match; with `strict`, every
    /// parameter must be given. Nothing changes unless all checks pass.
    pub fn set_weights(&mut self, weights: &[(String, HostTensor)], strict: bool) -> Result<()> {
        let mut staged = Vec::with_capacity(weights.len());
        for (name, t) in weights {
            let var = self.params.get(name).ok_or_else(|| {
                let known: Vec<&str> = self.params.iter().map(|(n, _)| n).collect();
                Error::Range(format!("setWeights: the model has no parameter {name:?}; it has {known:?}"))
            })?;
            if t.shape != var.dims() {
                return Err(Error::shape("setWeights", name.clone(), format!("{:?}", var.dims()), &t.shape));
            }
            staged.push((var, t.to_floats(&format!("setWeights {name}"), self.dtype, &self.device)?));
        }
        if strict {
            let missing: Vec<&str> =
                self.params.iter().map(|(n, _)| n).filter(|n| !weights.iter().any(|(w, _)| w == n)).collect();
            if !missing.is_empty() {
                return Err(Error::Range(format!("setWeights: missing parameters {missing:?}")));
            }
        }
        for (var, t) in staged {
            var.set(&t)?;
        }
        Ok(())
    }

    /// A table of layers, output shapes and parameter counts.
    pub fn summary(&self) -> String {
        let mut rows = vec![("Layer".to_string(), "Type".to_string(), "Output".to_string(), "Params".to_string())];
        let mut offset = 0;
        for node in &self.nodes {
            let count: usize =
                self.params.entries[offset..offset + node.n_params].iter().map(|(_, v)| v.elem_count()).sum();
            offset += node.n_params;
            let out = match node.out {
                Flow::Features { size: Some(s), seq: Some(true) } => format!("[batch, seqLen, {s}]"),
                Flow::Features { size: Some(s), seq: Some(false) } => format!("[batch, {s}]"),
                Flow::Features { size: Some(s), seq: None } => format!("[batch, ..., {s}]"),
                _ => "as input".to_string(),
            };
            rows.push((node.name.clone(), node.kind.to_string(), out, count.to_string()));
        }
        let w: Vec<usize> = (0..4)
            .map(|i| {
                rows.iter()
                    .map(|r| match i {
                        0 => r.0.len(),
                        1 => r.1.len(),
                        2 => r.2.len(),
                        _ => r.3.len(),
                    })
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut s = String::new();
        for (k, r) in rows.iter().enumerate() {
            s.push_str(&format!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}\n",
                r.0,
                r.1,
                r.2,
                r.3,
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3]
            ));
            if k == 0 {
                s.push_str(&"-".repeat(w.iter().sum::<usize>() + 6));
                s.push('\n');
            }
        }
        s.push_str(&format!(
            "Total parameters: {} ({})\n",
            self.param_count(),
            match self.dtype {
                DType::F64 => "float64",
                _ => "float32",
            }
        ));
        s
    }

    /// The generator's state, for checkpoints that resume exactly.
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

fn input_size(here: &str, flow: Option<Flow>, given: Option<usize>) -> Result<usize> {
    match (flow, given) {
        (None, Some(n)) if n > 0 => Ok(n),
        (None, _) => Err(Error::Type(format!(
            "{here}: the first layer receives float features, so it needs inputSize (a positive integer)"
        ))),
        (Some(Flow::Features { size: Some(n), .. }), None) => Ok(n),
        (Some(Flow::Features { size: Some(n), .. }), Some(g)) if g == n => Ok(n),
        (Some(Flow::Features { size: Some(n), .. }), Some(g)) => Err(Error::Range(format!(
            "{here}: inputSize {g} does not match the {n} features the layer before returns (leave it out)"
        ))),
        _ => Err(Error::Type(format!("{here}: cannot infer the input size; give inputSize"))),
    }
}

fn check_batch(x: &HostTensor, y: &HostTensor) -> Result<()> {
    if x.batch() != y.batch() {
        return Err(Error::Range(format!(
            "x and y must have the same batch size (first axis): x has {}, y has {}",
            x.batch(),
            y.batch()
        )));
    }
    Ok(())
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}
