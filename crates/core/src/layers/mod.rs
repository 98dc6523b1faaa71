//! Building blocks. Each layer is described by a serialisable spec (what the user asked for) and built into a
//! layer that owns indices into the model's parameter list. Parameters are created here, initialised as
//! PyTorch initialises the same modules, from the model's seeded [`Rng`].

pub mod attention;
pub mod dense;
pub mod dropout;
pub mod embedding;
pub mod norm;
pub mod positional;
pub mod recurrent;
pub mod transformer;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::Rng;

pub use attention::{MultiHeadAttention, MultiHeadAttentionSpec};
pub use dense::{Activation, Dense, DenseSpec};
pub use dropout::{Dropout, DropoutSpec};
pub use embedding::{Embedding, EmbeddingSpec};
pub use norm::{LayerNorm, LayerNormSpec};
pub use positional::{PositionKind, PositionalEncoding, PositionalEncodingSpec};
pub use recurrent::{Cell, LstmSpec, Nonlinearity, Recurrent, RecurrentSpec, RecurrentState};
pub use transformer::{FeedForwardActivation, TransformerBlock, TransformerBlockSpec};

/// A layer as the user describes it (JSON-able; `type` selects the variant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum LayerSpec {
    Embedding(EmbeddingSpec),
    Dense(DenseSpec),
    Lstm(RecurrentSpec),
    Gru(RecurrentSpec),
    Rnn(RecurrentSpec),
    Dropout(DropoutSpec),
    MultiHeadAttention(MultiHeadAttentionSpec),
    PositionalEncoding(PositionalEncodingSpec),
    LayerNorm(LayerNormSpec),
    TransformerBlock(TransformerBlockSpec),
}

impl LayerSpec {
    pub fn type_name(&self) -> &'static str {
        match self {
            LayerSpec::Embedding(_) => "embedding",
            LayerSpec::Dense(_) => "dense",
            LayerSpec::Lstm(_) => "lstm",
            LayerSpec::Gru(_) => "gru",
            LayerSpec::Rnn(_) => "rnn",
            LayerSpec::Dropout(_) => "dropout",
            LayerSpec::MultiHeadAttention(_) => "multiHeadAttention",
            LayerSpec::PositionalEncoding(_) => "positionalEncoding",
            LayerSpec::LayerNorm(_) => "layerNorm",
            LayerSpec::TransformerBlock(_) => "transformerBlock",
        }
    }

    pub fn name(&self) -> Option<&str> {
        match self {
            LayerSpec::Embedding(s) => s.name.as_deref(),
            LayerSpec::Dense(s) => s.name.as_deref(),
            LayerSpec::Lstm(s) | LayerSpec::Gru(s) | LayerSpec::Rnn(s) => s.name.as_deref(),
            LayerSpec::Dropout(s) => s.name.as_deref(),
            LayerSpec::MultiHeadAttention(s) => s.name.as_deref(),
            LayerSpec::PositionalEncoding(s) => s.name.as_deref(),
            LayerSpec::LayerNorm(s) => s.name.as_deref(),
            LayerSpec::TransformerBlock(s) => s.name.as_deref(),
        }
    }
}

/// What flows between layers, known when the model is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Integer token ids `[batch, seq_len]` below a vocabulary size.
    Ids { vocab_size: usize },
    /// Float features; `seq` says whether a `seq_len` axis sits between batch and features.
    Features { size: Option<usize>, seq: Option<bool> },
}

/// The model's trainable parameters in creation order, with their full (PyTorch-style) names.
///
/// A dry run ([`Params::dry`]) records names and shapes only: a model is first assembled that way, so that its
/// memory is known (and checked against the budget) before anything is allocated. Adding a parameter costs the
/// same whatever the count, so a dry run of the largest spec allowed ([`MAX_TENSORS`]) takes a moment.
#[derive(Debug, Default)]
pub struct Params {
    pub(crate) entries: Vec<(String, Var)>,
    planned: Option<Vec<(String, Vec<usize>)>>,
    /// Every name taken, planned or allocated, with its index.
    index: HashMap<String, usize>,
    /// Elements of the parameters, planned or allocated, saturating.
    param_elems: u64,
    /// Elements of the largest parameter.
    largest_elems: u64,
    /// Elements of tensors that are not parameters but live as long as the model (a sinusoidal table).
    buffer_elems: u64,
}

/// Parameter tensors a model may have: far more than any real one, few enough to plan in a moment.
const MAX_TENSORS: usize = 100_000;

impl Params {
    /// Records shapes instead of allocating.
    pub(crate) fn dry() -> Self {
        Params { planned: Some(Vec::new()), ..Params::default() }
    }

    pub(crate) fn is_dry(&self) -> bool {
        self.planned.is_some()
    }

    pub fn len(&self) -> usize {
        self.planned.as_ref().map_or(self.entries.len(), Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.index.get(name).and_then(|&i| self.entries.get(i)).map(|(_, v)| v)
    }

    /// Names and shapes of every parameter, planned or allocated.
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        match &self.planned {
            Some(p) => p.clone(),
            None => self.entries.iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect(),
        }
    }

    /// Values in the parameters (planned or allocated) and in the model's other lasting tensors, saturating.
    pub(crate) fn resident_elems(&self) -> u64 {
        self.param_elems().saturating_add(self.buffer_elems)
    }

    /// Values in the parameters (planned or allocated), saturating.
    pub(crate) fn param_elems(&self) -> u64 {
        self.param_elems
    }

    /// Values in the largest parameter.
    pub(crate) fn largest_elems(&self) -> u64 {
        self.largest_elems
    }

    /// Takes `name` for a new parameter, or explains why it cannot have it.
    fn claim(&mut self, name: &str) -> Result<()> {
        if self.len() >= MAX_TENSORS {
            return Err(Error::Range(format!("a model may have at most {MAX_TENSORS} parameter tensors")));
        }
        if self.index.contains_key(name) {
            return Err(Error::Type(format!("two parameters are named {name}: give the layers distinct names")));
        }
        self.index.insert(name.to_string(), self.len());
        Ok(())
    }

    /// Counts a new parameter of `elems` values into the totals.
    fn count(&mut self, elems: u64) {
        self.param_elems = self.param_elems.saturating_add(elems);
        self.largest_elems = self.largest_elems.max(elems);
    }

    /// Registers a parameter and returns its index.
    pub(crate) fn add(&mut self, name: String, value: Var) -> Result<usize> {
        self.claim(&name)?;
        self.count(value.elem_count() as u64);
        self.entries.push((name, value));
        Ok(self.entries.len() - 1)
    }

    /// Registers a parameter of a dry run and returns its index.
    pub(crate) fn plan(&mut self, name: String, shape: &[usize]) -> Result<usize> {
        self.claim(&name)?;
        self.count(crate::memory::elems(shape));
        let planned = self.planned.get_or_insert_with(Vec::new);
        planned.push((name, shape.to_vec()));
        Ok(planned.len() - 1)
    }

    /// The current values, tracked by autograd for a training forward, detached otherwise.
    pub(crate) fn tensors(&self, track: bool) -> Vec<Tensor> {
        self.entries.iter().map(|(_, v)| if track { v.as_tensor().clone() } else { v.as_detached_tensor() }).collect()
    }
}

/// Where a layer creates its parameters.
pub(crate) struct Builder<'a> {
    pub params: &'a mut Params,
    pub rng: &'a mut Rng,
    pub dtype: DType,
    pub device: &'a Device,
    pub prefix: String,
}

impl Builder<'_> {
    /// Whether this is a dry run that only plans shapes (see [`Params::dry`]).
    pub fn is_dry(&self) -> bool {
        self.params.is_dry()
    }

    pub fn uniform(&mut self, local: &str, shape: &[usize], bound: f64) -> Result<usize> {
        self.add(local, shape, |rng| rng.uniform(-bound, bound))
    }

    pub fn normal(&mut self, local: &str, shape: &[usize]) -> Result<usize> {
        self.normal_std(local, shape, 1.0)
    }

    pub fn normal_std(&mut self, local: &str, shape: &[usize], std: f64) -> Result<usize> {
        self.add(local, shape, |rng| std * rng.normal())
    }

    pub fn constant(&mut self, local: &str, shape: &[usize], value: f64) -> Result<usize> {
        self.add(local, shape, |_| value)
    }

    /// Accounts for a tensor of `shape` that the layer keeps but does not train (in a dry run; otherwise the
    /// layer allocates it itself).
    pub fn buffer(&mut self, shape: &[usize]) {
        self.params.buffer_elems = self.params.buffer_elems.saturating_add(crate::memory::elems(shape));
    }

    /// A builder for a sub-module: its parameters are named `prefix.name.*`, as PyTorch names nested modules.
    pub fn child(&mut self, name: &str) -> Builder<'_> {
        Builder {
            params: &mut *self.params,
            rng: &mut *self.rng,
            dtype: self.dtype,
            device: self.device,
            prefix: format!("{}.{name}", self.prefix),
        }
    }

    /// Draws the values in the parameter's own precision (each f64 draw rounded once, as a conversion of the
    /// whole tensor would) straight into the buffer the parameter keeps: no temporary copies.
    fn add(&mut self, local: &str, shape: &[usize], mut draw: impl FnMut(&mut Rng) -> f64) -> Result<usize> {
        let name = if self.prefix.is_empty() { local.to_string() } else { format!("{}.{local}", self.prefix) };
        if self.is_dry() {
            return self.params.plan(name, shape);
        }
        let n = usize::try_from(crate::memory::elems(shape))
            .map_err(|_| Error::Memory(format!("{name}: {shape:?} holds more values than this machine can address")))?;
        let var = match self.dtype {
            DType::F64 => {
                let mut v = crate::memory::zeros::<f64>(&name, n)?;
                v.iter_mut().for_each(|x| *x = draw(self.rng));
                Var::from_vec(v, shape, self.device)?
            }
            _ => {
                let mut v = crate::memory::zeros::<f32>(&name, n)?;
                v.iter_mut().for_each(|x| *x = draw(self.rng) as f32);
                Var::from_vec(v, shape, self.device)?
            }
        };
        self.params.add(name, var)
    }
}

/// Per-forward state: training mode and the generator that draws dropout masks.
pub struct ForwardCtx<'a> {
    pub train: bool,
    pub rng: &'a mut Rng,
}

/// Inverted dropout with a mask drawn from the seeded generator (identity outside training).
pub(crate) fn dropout(x: &Tensor, rate: f64, ctx: &mut ForwardCtx) -> Result<Tensor> {
    if !ctx.train || rate <= 0.0 {
        return Ok(x.clone());
    }
    let scale = 1.0 / (1.0 - rate);
    let mask: Vec<f64> = (0..x.elem_count()).map(|_| if ctx.rng.next_f64() < rate { 0.0 } else { scale }).collect();
    let mask = Tensor::from_vec(mask, x.dims(), x.device())?.to_dtype(x.dtype())?;
    Ok(x.mul(&mask)?)
}

/// The sequence length of `x`, which must be `[batch, seqLen, features]`.
pub(crate) fn seq_len(op: &'static str, x: &Tensor, features: usize) -> Result<usize> {
    match x.dims() {
        [_, t, d] if *d == features => Ok(*t),
        dims => Err(Error::shape(op, "input", format!("[batch, seqLen, {features}]"), dims)),
    }
}

/// A dropout probability, named `what` in the message.
pub(crate) fn check_rate(op: &str, what: &str, rate: f64) -> Result<()> {
    if !(0.0..1.0).contains(&rate) {
        return Err(Error::Range(format!("{op}: {what} must be in [0, 1), got {rate}")));
    }
    Ok(())
}

pub(crate) fn check_positive(op: &str, what: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(Error::Range(format!("{op}: {what} must be a positive integer, got 0")));
    }
    Ok(())
}

/// A count (layers, hops) that loops run over while the model is planned: bounded so that planning stays quick.
pub(crate) fn check_at_most(op: &str, what: &str, v: usize, max: usize) -> Result<()> {
    if v > max {
        return Err(Error::Range(format!("{op}: {what} must be at most {max}, got {v}")));
    }
    Ok(())
}
