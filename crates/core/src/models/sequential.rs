//! A stack of layers built from a JSON-able spec, trained by backpropagation through candle autograd.
//!
//! Parameters are named as in PyTorch's `nn.Sequential`: the layer's index (or its `name`) then the module's
//! own parameter name, e.g. `0.weight`, `1.weight_ih_l0`, so a torch `state_dict` maps onto the model.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::{HostData, HostTensor};
use crate::layers::{
    Builder, Dense, Dropout, Embedding, Flow, ForwardCtx, LayerSpec, Params, Recurrent, RecurrentState,
};
use crate::rng::Rng;
use crate::train::Trainer;
use crate::train::trainer::check_batch;
pub use crate::train::{CompileConfig, StepOutput};

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

/// A model input: the batch `x`, and optionally each row's length (an int32 tensor `[batch]`, values in
/// `1..=seqLen`) for recurrent layers over a padded batch. `&HostTensor` converts into one without lengths.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub x: &'a HostTensor,
    pub lengths: Option<&'a HostTensor>,
}

impl<'a> From<&'a HostTensor> for Input<'a> {
    fn from(x: &'a HostTensor) -> Self {
        Input { x, lengths: None }
    }
}

/// An initial state for one recurrent layer, addressed by its name or index; `c` for an LSTM only.
#[derive(Debug, Clone)]
pub struct InitialState {
    pub layer: String,
    pub h: HostTensor,
    pub c: Option<HostTensor>,
}

#[derive(Debug, Clone)]
enum Layer {
    Embedding(Embedding),
    Dense(Dense),
    Recurrent(Recurrent),
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

pub struct Sequential {
    config: SequentialConfig,
    nodes: Vec<Node>,
    trainer: Trainer,
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
                LayerSpec::Lstm(s) | LayerSpec::Gru(s) | LayerSpec::Rnn(s) => {
                    let size = input_size(&here, flow, s.input_size)?;
                    if let Some(Flow::Features { seq: Some(false), .. }) = flow {
                        return Err(Error::Type(format!(
                            "{here}: needs a sequence [batch, seqLen, features], but the layer before returns only \
                             the last step (set returnSequences: true there)"
                        )));
                    }
                    let l = Recurrent::build(spec.type_name(), s, size, &mut b)?;
                    let out = Flow::Features { size: Some(l.output_size()), seq: Some(l.return_sequences) };
                    (Layer::Recurrent(l), out)
                }
                LayerSpec::Dropout(s) => {
                    let d = Dropout::build(s)?;
                    (Layer::Dropout(d), flow.unwrap_or(Flow::Features { size: None, seq: None }))
                }
            };
            nodes.push(Node { name, kind: spec.type_name(), layer, out, n_params: params.len() - before });
            flow = Some(out);
        }
        Ok(Sequential { config, nodes, trainer: Trainer::new(params, rng, device, dtype) })
    }

    pub fn config(&self) -> &SequentialConfig {
        &self.config
    }

    /// Parameters, optimizer and generator state.
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    pub fn trainer_mut(&mut self) -> &mut Trainer {
        &mut self.trainer
    }

    pub fn params(&self) -> &Params {
        &self.trainer.params
    }

    pub fn dtype(&self) -> DType {
        self.trainer.dtype
    }

    pub fn device(&self) -> &Device {
        &self.trainer.device
    }

    pub fn param_count(&self) -> usize {
        self.trainer.param_count()
    }

    /// What the first layer takes: ids below a vocabulary size, or float features of a given size.
    pub fn input_flow(&self) -> Flow {
        match self.nodes.first().map(|n| &n.layer) {
            Some(Layer::Embedding(e)) => Flow::Ids { vocab_size: e.vocab_size },
            Some(Layer::Dense(d)) => Flow::Features { size: Some(d.input_size), seq: None },
            Some(Layer::Recurrent(l)) => Flow::Features { size: Some(l.input_size), seq: Some(true) },
            _ => Flow::Features { size: None, seq: None },
        }
    }

    pub fn compile(&mut self, spec: CompileConfig) -> Result<()> {
        self.trainer.compile(spec)
    }

    pub fn compile_config(&self) -> Option<&CompileConfig> {
        self.trainer.compile_config()
    }

    /// Optimizer steps taken since `compile`.
    pub fn step_count(&self) -> u64 {
        self.trainer.step_count()
    }

    /// The compiled optimizer's current learning rate.
    pub fn learning_rate(&self) -> Option<f64> {
        self.trainer.learning_rate()
    }

    /// Changes the learning rate of the compiled optimizer (for schedules).
    pub fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        self.trainer.set_learning_rate(lr)
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
                x.to_ids("x", vocab_size, self.device())
            }
            Flow::Features { .. } => x.to_floats("x", self.dtype(), self.device()),
        }
    }

    fn states(&self, states: &[InitialState]) -> Result<HashMap<usize, RecurrentState>> {
        let mut out = HashMap::new();
        for s in states {
            let idx = self
                .nodes
                .iter()
                .position(|n| n.name == s.layer)
                .ok_or_else(|| Error::Range(format!("initialState: no layer named {:?}", s.layer)))?;
            if !matches!(self.nodes[idx].layer, Layer::Recurrent(_)) {
                return Err(Error::Type(format!(
                    "initialState: layer {:?} is a {}, only recurrent layers take an initial state",
                    s.layer, self.nodes[idx].kind
                )));
            }
            let h = s.h.to_floats("initialState h", self.dtype(), self.device())?;
            let c = s.c.as_ref().map(|c| c.to_floats("initialState c", self.dtype(), self.device())).transpose()?;
            out.insert(idx, RecurrentState { h, c });
        }
        Ok(out)
    }

    /// Each row's length: given, or (with a `maskZero` embedding first) one past its last non-zero id.
    fn lengths(&self, input: Input) -> Result<Option<Arc<Vec<usize>>>> {
        let x = input.x;
        let seq_len = match x.shape.get(1) {
            Some(&t) if x.shape.len() >= 3 || matches!(self.input_flow(), Flow::Ids { .. }) => t,
            _ if input.lengths.is_some() => {
                return Err(Error::Type(format!(
                    "lengths: the input must be a sequence [batch, seqLen, ...] to take lengths, got shape {:?}",
                    x.shape
                )));
            }
            _ => return Ok(None),
        };
        let batch = x.shape[0];
        if let Some(l) = input.lengths {
            if l.shape != [batch] {
                return Err(Error::shape("input", "lengths", format!("[{batch}] (one per row)"), &l.shape));
            }
            let HostData::I32(v) = &l.data else {
                return Err(Error::Type(format!(
                    "lengths: expected int32 values (an Int32Array), got {} data",
                    l.data.dtype_name()
                )));
            };
            if let Some((b, &n)) = v.iter().enumerate().find(|&(_, &n)| n < 1 || n as usize > seq_len) {
                return Err(Error::Range(format!("lengths: row {b} has length {n}; lengths must be in 1..={seq_len}")));
            }
            return Ok(Some(Arc::new(v.iter().map(|&n| n as usize).collect())));
        }
        let Some(Layer::Embedding(e)) = self.nodes.first().map(|n| &n.layer) else { return Ok(None) };
        if !e.mask_zero {
            return Ok(None);
        }
        let HostData::I32(ids) = &x.data else { return Ok(None) };
        let mut out = Vec::with_capacity(batch);
        for (b, row) in ids.chunks_exact(seq_len.max(1)).enumerate() {
            match row.iter().rposition(|&id| id != 0) {
                Some(last) => out.push(last + 1),
                None => {
                    return Err(Error::Range(format!(
                        "x: row {b} is all padding (id 0), which maskZero leaves with no steps"
                    )));
                }
            }
        }
        Ok(Some(Arc::new(out)))
    }

    /// Validated tensors for one call.
    fn prepare(&self, input: Input, states: &[InitialState]) -> Result<Prepared> {
        Ok(Prepared { x: self.input_tensor(input.x)?, lengths: self.lengths(input)?, states: self.states(states)? })
    }

    /// Inference: the model's output for `x`, no dropout, no graph kept.
    pub fn predict<'a>(&self, x: impl Into<Input<'a>>, states: &[InitialState]) -> Result<HostTensor> {
        let b = self.prepare(x.into(), states)?;
        HostTensor::from_tensor(&self.trainer.infer(|p, ctx| forward_nodes(&self.nodes, &b, p, ctx))?)
    }

    /// The compiled loss of the model's output (inference mode) against `y`.
    pub fn evaluate<'a>(&self, x: impl Into<Input<'a>>, y: &HostTensor, states: &[InitialState]) -> Result<f64> {
        let x = x.into();
        self.trainer.loss_spec()?;
        check_batch(x.x, y)?;
        let b = self.prepare(x, states)?;
        self.trainer.evaluate(y, |p, ctx| forward_nodes(&self.nodes, &b, p, ctx))
    }

    /// Loss and gradient of every parameter for one batch in training mode, without an update.
    /// Returns gradients in parameter order (zeros for a parameter the loss does not reach).
    pub fn gradients<'a>(
        &mut self,
        x: impl Into<Input<'a>>,
        y: &HostTensor,
        states: &[InitialState],
    ) -> Result<(f64, Vec<Tensor>)> {
        let x = x.into();
        self.trainer.loss_spec()?;
        check_batch(x.x, y)?;
        let b = self.prepare(x, states)?;
        let Sequential { trainer, nodes, .. } = self;
        trainer.gradients(y, |p, ctx| forward_nodes(nodes, &b, p, ctx))
    }

    /// One training step: forward, loss, backward, clipping, update.
    pub fn train_step<'a>(
        &mut self,
        x: impl Into<Input<'a>>,
        y: &HostTensor,
        states: &[InitialState],
    ) -> Result<StepOutput> {
        let x = x.into();
        self.trainer.loss_spec()?;
        check_batch(x.x, y)?;
        let b = self.prepare(x, states)?;
        let Sequential { trainer, nodes, .. } = self;
        trainer.train_step(y, |p, ctx| forward_nodes(nodes, &b, p, ctx))
    }

    /// Clears the state that `stateful` recurrent layers carry from call to call.
    pub fn reset_states(&self) {
        for node in &self.nodes {
            if let Layer::Recurrent(l) = &node.layer {
                l.reset_states();
            }
        }
    }

    /// Every parameter, by name, copied to the host.
    pub fn weights(&self) -> Result<Vec<(String, HostTensor)>> {
        self.trainer.weights()
    }

    /// Replaces parameters by name. Every name must exist and every shape match; with `strict`, every
    /// parameter must be given. Nothing changes unless all checks pass.
    pub fn set_weights(&mut self, weights: &[(String, HostTensor)], strict: bool) -> Result<()> {
        self.trainer.set_weights(weights, strict)
    }
    /// A table of layers, output shapes and parameter counts.
    pub fn summary(&self) -> String {
        let mut rows = vec![("Layer".to_string(), "Type".to_string(), "Output".to_string(), "Params".to_string())];
        let mut offset = 0;
        for node in &self.nodes {
            let count: usize =
                self.trainer.params.entries[offset..offset + node.n_params].iter().map(|(_, v)| v.elem_count()).sum();
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
            match self.dtype() {
                DType::F64 => "float64",
                _ => "float32",
            }
        ));
        s
    }

    /// The generator's state, for checkpoints that resume exactly.
    pub fn rng_state(&self) -> [u64; 4] {
        self.trainer.rng_state()
    }

    pub fn set_rng_state(&mut self, s: [u64; 4]) {
        self.trainer.set_rng_state(s)
    }
}

/// One call's validated input.
struct Prepared {
    x: Tensor,
    lengths: Option<Arc<Vec<usize>>>,
    states: HashMap<usize, RecurrentState>,
}

fn forward_nodes(nodes: &[Node], b: &Prepared, p: &[Tensor], ctx: &mut ForwardCtx) -> Result<Tensor> {
    let mut h = b.x.clone();
    // Layers hold indices into the whole parameter list (see `Builder`), so each gets all of `p`.
    for (i, node) in nodes.iter().enumerate() {
        h = match &node.layer {
            Layer::Embedding(e) => e.forward(&h, p)?,
            Layer::Dense(d) => d.forward(&h, p)?,
            Layer::Recurrent(l) => l.forward(&h, b.lengths.as_ref(), b.states.get(&i), p, ctx)?,
            Layer::Dropout(d) => d.forward(&h, ctx)?,
        };
    }
    Ok(h)
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
