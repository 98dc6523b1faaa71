//! A Transformer encoder block (Vaswani et al. 2017), batch-first, as `nn.TransformerEncoderLayer`:
//! self-attention then a position-wise feed-forward network, each with a residual connection and layer norm.
//!
//! - post-norm (PyTorch's default, `normFirst: false`): `x = norm1(x + sa(x))`, `x = norm2(x + ff(x))`;
//! - pre-norm (`normFirst: true`, as GPT-2): `x = x + sa(norm1(x))`, `x = x + ff(norm2(x))`;
//! - `ff(x) = linear2(dropout(act(linear1(x))))`.
//!
//! Parameters as PyTorch names them: `self_attn.in_proj_weight`, `self_attn.in_proj_bias`,
//! `self_attn.out_proj.{weight,bias}`, `linear1.*`, `linear2.*`, `norm1.*`, `norm2.*`. With `causal`, each
//! position attends only to itself and earlier ones: a decoder-only (GPT) block.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::attention::{KvCache, MultiHeadAttention};
use super::norm::{LayerNorm, default_eps};
use super::{Activation, Builder, Dense, DenseSpec, ForwardCtx, check_positive, check_rate, seq_len};
use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FeedForwardActivation {
    #[default]
    Relu,
    /// The exact GELU, `x Φ(x)` (PyTorch's `'gelu'`).
    Gelu,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransformerBlockSpec {
    pub d_model: usize,
    pub n_heads: usize,
    /// Hidden size of the feed-forward network (default 4 × dModel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ff_dim: Option<usize>,
    #[serde(default)]
    pub norm_first: bool,
    #[serde(default)]
    pub causal: bool,
    #[serde(default)]
    pub activation: FeedForwardActivation,
    /// Default 0.1, as PyTorch.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn default_dropout() -> f64 {
    0.1
}

#[derive(Debug, Clone)]
pub struct TransformerBlock {
    pub d_model: usize,
    pub norm_first: bool,
    pub activation: FeedForwardActivation,
    pub dropout: f64,
    pub(crate) attn: MultiHeadAttention,
    linear1: Dense,
    linear2: Dense,
    norm1: LayerNorm,
    norm2: LayerNorm,
}

impl TransformerBlock {
    /// The feed-forward network's hidden size.
    pub fn ff_dim(&self) -> usize {
        self.linear1.units
    }

    pub(crate) fn build(spec: &TransformerBlockSpec, b: &mut Builder) -> Result<Self> {
        let op = "transformerBlock";
        check_positive(op, "dModel", spec.d_model)?;
        check_rate(op, "dropout", spec.dropout)?;
        let d = spec.d_model;
        let ff = spec.ff_dim.unwrap_or(4 * d);
        check_positive(op, "ffDim", ff)?;
        let attn =
            MultiHeadAttention::build(op, d, spec.n_heads, spec.causal, spec.dropout, true, &mut b.child("self_attn"))?;
        let dense =
            |units| DenseSpec { units, input_size: None, use_bias: true, activation: Activation::Linear, name: None };
        let linear1 = Dense::build(&dense(ff), d, &mut b.child("linear1"))?;
        let linear2 = Dense::build(&dense(d), ff, &mut b.child("linear2"))?;
        let norm1 = LayerNorm::build(op, d, spec.layer_norm_eps, &mut b.child("norm1"))?;
        let norm2 = LayerNorm::build(op, d, spec.layer_norm_eps, &mut b.child("norm2"))?;
        Ok(TransformerBlock {
            d_model: d,
            norm_first: spec.norm_first,
            activation: spec.activation,
            dropout: spec.dropout,
            attn,
            linear1,
            linear2,
            norm1,
            norm2,
        })
    }

    fn feed_forward(&self, x: &Tensor, p: &[Tensor], ctx: &mut ForwardCtx) -> Result<Tensor> {
        let h = self.linear1.forward(x, p)?;
        let cpu = matches!(h.device(), candle_core::Device::Cpu);
        let h = match self.activation {
            FeedForwardActivation::Relu if cpu => crate::kernels::activation::relu(&h)?,
            FeedForwardActivation::Relu => h.relu()?,
            FeedForwardActivation::Gelu if cpu => crate::kernels::activation::gelu(&h)?,
            FeedForwardActivation::Gelu => h.gelu_erf()?,
        };
        let h = super::dropout(&h, self.dropout, ctx)?;
        self.linear2.forward(&h, p)
    }

    /// `x [B, T, D]` to `[B, T, D]`, and the attention probabilities when asked (see
    /// [`MultiHeadAttention::forward`], also for the cache).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        lengths: Option<&std::sync::Arc<Vec<usize>>>,
        p: &[Tensor],
        ctx: &mut ForwardCtx,
        cache: Option<&mut KvCache>,
        weights: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        seq_len("transformerBlock", x, self.d_model)?;
        let rate = self.dropout;
        if self.norm_first {
            let (a, w) = self.attn.forward(&self.norm1.forward(x, p)?, lengths, p, ctx, cache, weights)?;
            let x = (x + super::dropout(&a, rate, ctx)?)?;
            let f = self.feed_forward(&self.norm2.forward(&x, p)?, p, ctx)?;
            Ok(((&x + super::dropout(&f, rate, ctx)?)?, w))
        } else {
            let (a, w) = self.attn.forward(x, lengths, p, ctx, cache, weights)?;
            let x = self.norm1.forward(&(x + super::dropout(&a, rate, ctx)?)?, p)?;
            let f = self.feed_forward(&x, p, ctx)?;
            Ok((self.norm2.forward(&(&x + super::dropout(&f, rate, ctx)?)?, p)?, w))
        }
    }
}
