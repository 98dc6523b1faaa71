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
use crate::kernels::on_caller_if_small;
use crate::layers::attention::KvCache;
use crate::layers::{
    Builder, Dense, Dropout, Embedding, Flow, ForwardCtx, LayerNorm, LayerSpec, MultiHeadAttention, Params,
    PositionalEncoding, Recurrent, RecurrentState, TransformerBlock,
};
use crate::memory::{self, Budget, Bytes};
use crate::rng::Rng;
use crate::train::Trainer;
use crate::train::trainer::check_batch;
pub use crate::train::{CompileConfig, Evaluation, StepOutput};

mod working;

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
    Attention(MultiHeadAttention),
    Positional(PositionalEncoding),
    Norm(LayerNorm),
    Block(TransformerBlock),
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

/// Layers a sequential model may have.
pub const MAX_LAYERS: usize = 10_000;

impl Sequential {
    /// Builds the model on the CPU.
    pub fn new(config: SequentialConfig) -> Result<Self> {
        Self::new_on(config, &Device::Cpu)
    }

    pub fn new_on(config: SequentialConfig, device: &Device) -> Result<Self> {
        Self::new_with(config, device, &Budget::global())
    }

    /// Builds the model once a dry run (shapes only, nothing allocated) has shown that its parameters fit
    /// `budget`; the budget then also bounds its optimizer state and the memory of each call.
    pub fn new_with(config: SequentialConfig, device: &Device, budget: &Budget) -> Result<Self> {
        Self::plan(&config, device, budget)?;
        let (nodes, params, rng) = Self::assemble(&config, device, Params::default(), None)?;
        let dtype = config.dtype.dtype();
        Ok(Sequential { config, nodes, trainer: Trainer::new(params, rng, device, dtype, budget.clone()) })
    }

    /// The model as a dry run: every check of the spec, the layers and their parameter shapes, and the memory
    /// check against `budget`, with nothing allocated. It answers [`Sequential::summary`],
    /// [`Sequential::param_count`] and [`Sequential::resident_bytes`]; every other call fails.
    pub fn plan(config: &SequentialConfig, device: &Device, budget: &Budget) -> Result<Self> {
        let (nodes, params, rng) = Self::assemble(config, device, Params::dry(), Some(budget))?;
        let dtype = config.dtype.dtype();
        Ok(Sequential {
            config: config.clone(),
            nodes,
            trainer: Trainer::new(params, rng, device, dtype, budget.clone()),
        })
    }

    /// Whether this is a [`Sequential::plan`] without weights.
    pub fn is_plan(&self) -> bool {
        self.trainer.params.is_dry()
    }

    /// Bytes the model keeps: parameters and lasting tables (not optimizer state).
    pub fn resident_bytes(&self) -> u64 {
        self.trainer.resident_bytes()
    }

    /// The layers and their parameters, in a dry run (`budget` given: checked layer by layer) or for real.
    fn assemble(
        config: &SequentialConfig,
        device: &Device,
        mut params: Params,
        budget: Option<&Budget>,
    ) -> Result<(Vec<Node>, Params, Rng)> {
        if config.layers.is_empty() {
            return Err(Error::Range("sequential: a model needs at least one layer".into()));
        }
        // Far more than any real model; a list of a million layers would take seconds just to plan.
        crate::layers::check_at_most("sequential", "the number of layers", config.layers.len(), MAX_LAYERS)?;
        let dtype = config.dtype.dtype();
        let mut rng = Rng::new(config.seed);
        let mut nodes = Vec::with_capacity(config.layers.len());
        let mut flow: Option<Flow> = None;
        let mut names = std::collections::HashSet::new();
        for (i, spec) in config.layers.iter().enumerate() {
            let name = spec.name().map(str::to_string).unwrap_or_else(|| i.to_string());
            if name.is_empty() || name.contains('.') {
                return Err(Error::Range(format!(
                    "layer {i} ({}): name must be non-empty and contain no '.', got {name:?}",
                    spec.type_name()
                )));
            }
            if !names.insert(name.clone()) {
                return Err(Error::Range(format!("layer {i}: the name {name:?} is used twice")));
            }
            let before = params.len();
            let resident_before = params.resident_elems();
            let mut b = Builder { params: &mut params, rng: &mut rng, dtype, device, prefix: name.clone() };
            let here = format!("layer {i} ({})", spec.type_name());
            let (layer, out) = Self::layer(spec, &here, flow, &mut b)?;
            if let Some(budget) = budget {
                let size = dtype.size_in_bytes();
                let total = Bytes::of(params.resident_elems(), size).get();
                let own = Bytes::of(params.resident_elems().saturating_sub(resident_before), size);
                budget.check(total, |need| {
                    format!(
                        "{here}{} needs {} of parameters, which brings the model to {need} (and training with \
                         Adam to about 4 times that)",
                        size_options(spec),
                        memory::format_bytes(own.get())
                    )
                })?;
            }
            nodes.push(Node { name, kind: spec.type_name(), layer, out, n_params: params.len() - before });
            flow = Some(out);
        }
        Ok((nodes, params, rng))
    }

    /// One layer from its spec, given what flows into it (`b` plans or allocates its parameters).
    fn layer(spec: &LayerSpec, here: &str, flow: Option<Flow>, b: &mut Builder) -> Result<(Layer, Flow)> {
        let here = here.to_string();
        Ok(match spec {
            LayerSpec::Embedding(s) => {
                if flow.is_some() {
                    return Err(Error::Type(format!("{here}: an embedding must be the first layer")));
                }
                let e = Embedding::build(s, b)?;
                let out = Flow::Features { size: Some(e.dim), seq: Some(true) };
                (Layer::Embedding(e), out)
            }
            LayerSpec::Dense(s) => {
                let size = input_size(&here, flow, s.input_size)?;
                let d = Dense::build(s, size, b)?;
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
                let l = Recurrent::build(spec.type_name(), s, size, b)?;
                let out = Flow::Features { size: Some(l.output_size()), seq: Some(l.return_sequences) };
                (Layer::Recurrent(l), out)
            }
            LayerSpec::Dropout(s) => {
                let d = Dropout::build(s)?;
                (Layer::Dropout(d), flow.unwrap_or(Flow::Features { size: None, seq: None }))
            }
            LayerSpec::MultiHeadAttention(s) => {
                let d = sequence_size(&here, flow, s.d_model, "dModel")?;
                let l = MultiHeadAttention::from_spec(s, d, b)?;
                (Layer::Attention(l), Flow::Features { size: Some(d), seq: Some(true) })
            }
            LayerSpec::PositionalEncoding(s) => {
                let d = sequence_size(&here, flow, s.input_size, "inputSize")?;
                let l = PositionalEncoding::build(s, d, b)?;
                (Layer::Positional(l), Flow::Features { size: Some(d), seq: Some(true) })
            }
            LayerSpec::LayerNorm(s) => {
                let d = input_size(&here, flow, s.input_size)?;
                let l = LayerNorm::build("layerNorm", d, s.eps, b)?;
                let seq = match flow {
                    Some(Flow::Features { seq, .. }) => seq,
                    _ => None,
                };
                (Layer::Norm(l), Flow::Features { size: Some(d), seq })
            }
            LayerSpec::TransformerBlock(s) => {
                let d = sequence_size(&here, flow, Some(s.d_model), "dModel")?;
                let l = TransformerBlock::build(s, b)?;
                (Layer::Block(l), Flow::Features { size: Some(d), seq: Some(true) })
            }
        })
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
            Some(Layer::Attention(l)) => Flow::Features { size: Some(l.d_model), seq: Some(true) },
            Some(Layer::Positional(l)) => Flow::Features { size: Some(l.d_model), seq: Some(true) },
            Some(Layer::Norm(l)) => Flow::Features { size: Some(l.size), seq: None },
            Some(Layer::Block(l)) => Flow::Features { size: Some(l.d_model), seq: Some(true) },
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

    /// The estimated peak bytes a call on `x` allocates on top of what the model holds (`training`: a
    /// `train_step`, else `predict`): what the memory budget is checked against.
    pub fn working_memory(&self, x: &HostTensor, training: bool) -> u64 {
        self.trainer.call_extra(self.working_bytes(x, training), training)
    }

    /// Fails unless a call on `x` fits the memory budget (and the model has weights).
    fn check_memory(&self, op: &str, x: &HostTensor, training: bool) -> Result<()> {
        if self.is_plan() {
            return Err(Error::State(format!("{op}: the model has no weights yet (a plan)")));
        }
        let working = self.working_bytes(x, training);
        self.trainer.check_call(working, training, || format!("{op} on a batch of shape {:?}", x.shape))
    }

    /// A call's work in multiply-adds, roughly: every parameter once per position of `x` (the first two axes,
    /// batch and time). Small calls run on the calling thread ([`on_caller_if_small`]).
    fn work(&self, x: &HostTensor) -> u64 {
        let positions = x.shape.iter().take(2).map(|&d| d as u64).product::<u64>();
        positions.saturating_mul(self.trainer.param_count() as u64)
    }

    /// Inference: the model's output for `x`, no dropout, no graph kept.
    pub fn predict<'a>(&self, x: impl Into<Input<'a>>, states: &[InitialState]) -> Result<HostTensor> {
        let x = x.into();
        self.check_memory("predict", x.x, false)?;
        let work = self.work(x.x);
        let b = self.prepare(x, states)?;
        on_caller_if_small(work, || {
            self.keeping_states(|m| {
                HostTensor::from_tensor(&m.trainer.infer(|p, ctx| forward_nodes(&m.nodes, &b, p, ctx))?)
            })
        })
    }

    /// The compiled loss of the model's output (inference mode) against `y`.
    pub fn evaluate<'a>(&self, x: impl Into<Input<'a>>, y: &HostTensor, states: &[InitialState]) -> Result<Evaluation> {
        let x = x.into();
        self.trainer.loss_spec()?;
        check_batch(x.x, y)?;
        self.check_memory("evaluate", x.x, false)?;
        let work = self.work(x.x);
        let b = self.prepare(x, states)?;
        on_caller_if_small(work, || {
            self.keeping_states(|m| m.trainer.evaluate(y, |p, ctx| forward_nodes(&m.nodes, &b, p, ctx)))
        })
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
        self.check_memory("trainStep", x.x, true)?;
        let work = self.work(x.x);
        let b = self.prepare(x, states)?;
        let Sequential { trainer, nodes, .. } = self;
        on_caller_if_small(work, || trainer.gradients(y, |p, ctx| forward_nodes(nodes, &b, p, ctx)))
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
        self.check_memory("trainStep", x.x, true)?;
        let work = self.work(x.x);
        let b = self.prepare(x, states)?;
        let snapshot = self.carried_states();
        let Sequential { trainer, nodes, .. } = self;
        let out = on_caller_if_small(work, || trainer.train_step(y, |p, ctx| forward_nodes(nodes, &b, p, ctx)));
        if out.is_err() {
            self.restore_states(snapshot);
        }
        out
    }

    /// Every attention layer's probabilities for `x` in inference, `[batch, nHeads, seqLen, seqLen]`, by layer
    /// name (a `transformerBlock`'s are its self-attention's).
    pub fn attention_weights<'a>(&self, x: impl Into<Input<'a>>) -> Result<Vec<(String, HostTensor)>> {
        let x = x.into();
        self.check_memory("attentionWeights", x.x, false)?;
        let b = self.prepare(x, &[])?;
        let mut all = Vec::new();
        self.trainer.infer(|p, ctx| run_nodes(&self.nodes, &b, p, ctx, None, Some(&mut all)))?;
        if all.is_empty() {
            return Err(Error::Type("attentionWeights: the model has no attention layer".into()));
        }
        all.into_iter().map(|(n, w)| Ok((n, HostTensor::from_tensor(&w)?))).collect()
    }

    /// The longest context a decoder-only stack takes (the smallest `maxLen` of its positional encodings), or
    /// an error naming the layer that keeps it from decoding token by token.
    fn decoder_window(&self) -> Result<usize> {
        if !matches!(self.nodes.first().map(|n| &n.layer), Some(Layer::Embedding(_))) {
            return Err(Error::Type("generate: the model must start with an embedding of token ids".into()));
        }
        let mut window = usize::MAX;
        for node in &self.nodes {
            let causal = match &node.layer {
                Layer::Attention(a) => a.causal,
                Layer::Block(l) => l.attn.causal,
                Layer::Recurrent(_) => {
                    return Err(Error::Type(format!(
                        "generate: layer {:?} is recurrent; generate decodes Transformer stacks \
                         (embedding, positionalEncoding, causal attention, layerNorm, dense)",
                        node.name
                    )));
                }
                Layer::Positional(l) => {
                    window = window.min(l.max_len);
                    true
                }
                _ => true,
            };
            if !causal {
                return Err(Error::Type(format!(
                    "generate: layer {:?} attends to later positions; a decoder needs causal: true",
                    node.name
                )));
            }
        }
        Ok(window)
    }

    /// Continues `prompt` (token ids) by `max_tokens` sampled tokens and returns them (without the prompt).
    ///
    /// Keys and values are cached, so each new token runs the stack over one position. The context is the
    /// positional encodings' `maxLen`: when it is full, the cache restarts from the last half of it (one full
    /// forward over those positions), so the model always sees between half and all of its context.
    pub fn generate(&self, prompt: &[i32], cfg: &GenerateConfig) -> Result<Vec<i32>> {
        // Each new token runs every parameter once.
        on_caller_if_small(self.trainer.param_count() as u64, || self.generate_tokens(prompt, cfg))
    }

    fn generate_tokens(&self, prompt: &[i32], cfg: &GenerateConfig) -> Result<Vec<i32>> {
        let window = self.decoder_window()?;
        let Flow::Ids { vocab_size } = self.input_flow() else {
            return Err(Error::Type("generate: the model must start with an embedding".into()));
        };
        if prompt.is_empty() {
            return Err(Error::Range("generate: the prompt needs at least one token id".into()));
        }
        if let Some((i, &id)) = prompt.iter().enumerate().find(|&(_, &id)| id < 0 || id as usize >= vocab_size) {
            return Err(Error::Range(format!("generate: prompt id {id} at index {i} is outside [0, {vocab_size})")));
        }
        if !(cfg.temperature.is_finite() && cfg.temperature >= 0.0) {
            return Err(Error::Range(format!("generate: temperature must be >= 0, got {}", cfg.temperature)));
        }
        if cfg.top_k == Some(0) {
            return Err(Error::Range("generate: topK must be a positive integer".into()));
        }
        self.check_generate(prompt.len(), window, cfg.max_tokens)?;
        let mut rng = Rng::new(cfg.seed);
        let mut tokens = prompt.to_vec();
        let mut out = Vec::with_capacity(cfg.max_tokens);
        let mut cache = Cache::new(self.nodes.len());
        let run = |ids: &[i32], cache: &mut Cache| -> Result<Vec<f64>> {
            let x = HostTensor::new(HostData::I32(ids.to_vec()), vec![1, ids.len()])?;
            // No lengths: padding masks do not apply to a decoded stream.
            let b = Prepared { x: self.input_tensor(&x)?, lengths: None, states: HashMap::new() };
            let logits = self.trainer.infer(|p, ctx| run_nodes(&self.nodes, &b, p, ctx, Some(cache), None))?;
            let last = logits.dims().get(1).copied().unwrap_or(1) - 1;
            Ok(logits.narrow(1, last, 1)?.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
        };
        let start = tokens.len().saturating_sub(window);
        let mut logits = run(&tokens[start..], &mut cache)?;
        while out.len() < cfg.max_tokens {
            crate::cancel::check("generate")?;
            let next = sample(&logits, cfg, &mut rng) as i32;
            out.push(next);
            tokens.push(next);
            if out.len() == cfg.max_tokens {
                break;
            }
            if cache.offset >= window {
                cache = Cache::new(self.nodes.len());
                let keep = (window / 2).max(1);
                logits = run(&tokens[tokens.len() - keep..], &mut cache)?;
            } else {
                logits = run(&[next], &mut cache)?;
            }
        }
        Ok(out)
    }

    /// Fails unless generating `max_tokens` after a prompt of `prompt` ids fits the memory budget: the ids kept
    /// (prompt and output), each attention layer's cache of keys and values over the window (grown by
    /// concatenation, so twice), and a forward over the window.
    fn check_generate(&self, prompt: usize, window: usize, max_tokens: usize) -> Result<()> {
        let size = self.dtype().size_in_bytes();
        let window = window.min(prompt.saturating_add(max_tokens)).max(1);
        let ids = Bytes::of((prompt as u64).saturating_add(max_tokens as u64), 4) * 2;
        let mut cache = Bytes(0);
        for node in &self.nodes {
            if let Layer::Attention(a) = &node.layer {
                cache += Bytes::of(window as u64 * a.d_model as u64, size) * 4;
            } else if let Layer::Block(b) = &node.layer {
                cache += Bytes::of(window as u64 * b.d_model as u64, size) * 4;
            }
        }
        let x = HostTensor { data: HostData::I32(Vec::new()), shape: vec![1, window] };
        let working = ids + cache + Bytes(self.working_bytes(&x, false));
        self.trainer.check_call(working.get(), false, || format!("generate of {max_tokens} tokens"))
    }

    /// What `stateful` layers carry, per layer.
    fn carried_states(&self) -> Vec<Option<RecurrentState>> {
        self.nodes
            .iter()
            .map(|n| if let Layer::Recurrent(l) = &n.layer { l.carried_snapshot() } else { None })
            .collect()
    }

    fn restore_states(&self, states: Vec<Option<RecurrentState>>) {
        for (node, s) in self.nodes.iter().zip(states) {
            if let Layer::Recurrent(l) = &node.layer {
                l.restore_state(s);
            }
        }
    }

    /// Runs `f`; when it fails (cancelled, a loss that is not finite ...), `stateful` layers keep the state
    /// they had before it.
    fn keeping_states<T>(&self, f: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        let snapshot = self.carried_states();
        let out = f(self);
        if out.is_err() {
            self.restore_states(snapshot);
        }
        out
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
        let shapes = self.trainer.params.shapes();
        for node in &self.nodes {
            let count: u64 = shapes[offset..offset + node.n_params].iter().map(|(_, s)| memory::elems(s)).sum();
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
    run_nodes(nodes, b, p, ctx, None, None)
}

/// The forward pass. With a cache, `b.x` holds the positions after the cached ones (decoding); with `weights`,
/// each attention layer's probabilities are collected under its name.
fn run_nodes(
    nodes: &[Node],
    b: &Prepared,
    p: &[Tensor],
    ctx: &mut ForwardCtx,
    mut cache: Option<&mut Cache>,
    mut weights: Option<&mut Vec<(String, Tensor)>>,
) -> Result<Tensor> {
    let mut h = b.x.clone();
    let offset = cache.as_ref().map_or(0, |c| c.offset);
    let want = weights.is_some();
    // Layers hold indices into the whole parameter list (see `Builder`), so each gets all of `p`.
    for (i, node) in nodes.iter().enumerate() {
        crate::cancel::check("forward")?;
        let kv = cache.as_mut().map(|c| &mut c.kv[i]);
        let lengths = b.lengths.as_ref();
        let (out, w) = match &node.layer {
            Layer::Embedding(e) => (e.forward(&h, p)?, None),
            Layer::Dense(d) => (d.forward(&h, p)?, None),
            Layer::Recurrent(l) => (l.forward(&h, lengths, b.states.get(&i), p, ctx)?, None),
            Layer::Dropout(d) => (d.forward(&h, ctx)?, None),
            Layer::Attention(a) => a.forward(&h, lengths, p, ctx, kv, want)?,
            Layer::Positional(l) => (l.forward(&h, offset, p, ctx)?, None),
            Layer::Norm(l) => (l.forward(&h, p)?, None),
            Layer::Block(l) => l.forward(&h, lengths, p, ctx, kv, want)?,
        };
        if let (Some(all), Some(w)) = (weights.as_mut(), w) {
            all.push((node.name.clone(), w));
        }
        h = out;
    }
    if let Some(c) = cache {
        c.offset += b.x.dim(1)?;
    }
    Ok(h)
}

/// Per-layer keys and values of the positions decoded so far.
struct Cache {
    offset: usize,
    kv: Vec<KvCache>,
}

impl Cache {
    fn new(layers: usize) -> Self {
        Cache { offset: 0, kv: vec![KvCache::default(); layers] }
    }
}

/// Options of [`Sequential::generate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenerateConfig {
    pub max_tokens: usize,
    /// Divides the logits before sampling; 0 picks the most likely token every time.
    #[serde(default = "one")]
    pub temperature: f64,
    /// Sample among the `top_k` most likely tokens only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub seed: u64,
}

fn one() -> f64 {
    1.0
}

/// Draws a token from one row of logits.
fn sample(logits: &[f64], cfg: &GenerateConfig, rng: &mut Rng) -> usize {
    let best = |v: &[f64]| v.iter().enumerate().fold(0, |bi, (i, &x)| if x > v[bi] { i } else { bi });
    if cfg.temperature == 0.0 {
        return best(logits);
    }
    let mut scaled: Vec<f64> = logits.iter().map(|&x| x / cfg.temperature).collect();
    if let Some(k) = cfg.top_k.filter(|&k| k < scaled.len()) {
        let mut sorted = scaled.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let floor = sorted[k - 1];
        // Ties at the floor stay in, as in nanoGPT's `logits < v[:, [-1]]`.
        for x in scaled.iter_mut() {
            if *x < floor {
                *x = f64::NEG_INFINITY;
            }
        }
    }
    let max = scaled[best(&scaled)];
    let probs: Vec<f64> = scaled.iter().map(|&x| (x - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    let mut u = rng.next_f64() * total;
    for (i, &pr) in probs.iter().enumerate() {
        if u < pr {
            return i;
        }
        u -= pr;
    }
    best(&scaled)
}

/// The feature size of a layer that needs a sequence `[batch, seqLen, features]`; `field` names the option
/// that gives it.
fn sequence_size(here: &str, flow: Option<Flow>, given: Option<usize>, field: &str) -> Result<usize> {
    if let Some(Flow::Features { seq: Some(false), .. }) = flow {
        return Err(Error::Type(format!(
            "{here}: needs a sequence [batch, seqLen, features], but the layer before returns only the last step \
             (set returnSequences: true there)"
        )));
    }
    match (flow, given) {
        (None, Some(n)) if n > 0 => Ok(n),
        (None, _) => Err(Error::Type(format!(
            "{here}: the first layer receives float features, so it needs {field} (a positive integer)"
        ))),
        (Some(Flow::Features { size: Some(n), .. }), Some(g)) if g != n => {
            Err(Error::Range(format!("{here}: {field} {g} does not match the {n} features the layer before returns")))
        }
        _ => input_size(
            here,
            flow,
            given.or(match flow {
                Some(Flow::Features { size: Some(n), .. }) => Some(n),
                _ => None,
            }),
        ),
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

/// A layer's integer options as ` with hiddenSize 100000, numLayers 1`, for messages about its size.
fn size_options(spec: &LayerSpec) -> String {
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(spec) else { return String::new() };
    let sizes: Vec<String> = fields.iter().filter_map(|(k, v)| v.as_u64().map(|n| format!("{k} {n}"))).collect();
    if sizes.is_empty() { String::new() } else { format!(" with {}", sizes.join(", ")) }
}
