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
#[derive(Debug, Default)]
pub struct Params {
    pub(crate) entries: Vec<(String, Var)>,
}

impl Params {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Registers a parameter and returns its index.
    pub(crate) fn add(&mut self, name: String, value: Tensor) -> Result<usize> {
        if self.get(&name).is_some() {
            return Err(Error::Type(format!("two parameters are named {name}: give the layers distinct names")));
        }
        self.entries.push((name, Var::from_tensor(&value)?));
        Ok(self.entries.len() - 1)
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
    pub fn uniform(&mut self, local: &str, shape: &[usize], bound: f64) -> Result<usize> {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| self.rng.uniform(-bound, bound)).collect();
        self.add(local, v, shape)
    }

    pub fn normal(&mut self, local: &str, shape: &[usize]) -> Result<usize> {
        self.normal_std(local, shape, 1.0)
    }

    pub fn normal_std(&mut self, local: &str, shape: &[usize], std: f64) -> Result<usize> {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| std * self.rng.normal()).collect();
        self.add(local, v, shape)
    }

    pub fn constant(&mut self, local: &str, shape: &[usize], value: f64) -> Result<usize> {
        let n: usize = shape.iter().product();
        self.add(local, vec![value; n], shape)
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

    fn add(&mut self, local: &str, v: Vec<f64>, shape: &[usize]) -> Result<usize> {
        let t = Tensor::from_vec(v, shape, self.device)?.to_dtype(self.dtype)?;
        self.params.add(format!("{}.{local}", self.prefix), t)
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
