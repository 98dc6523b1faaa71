//! Multi-head self-attention (Vaswani et al. 2017), batch-first, as `nn.MultiheadAttention` with query, key
//! and value all the layer's input: `in_proj_weight [3D, D]` and `in_proj_bias [3D]` project the input to
//! queries, keys and values in one product; each of `n_heads` heads attends over its `D / n_heads` features;
//! `out_proj.weight [D, D]` and `out_proj.bias [D]` mix the heads. Initialised as PyTorch does: Xavier-uniform
//! input projection, `nn.Linear`'s uniform output projection, zero biases.
//!
//! Masks: `causal` lets each position attend only to itself and earlier positions; a padded batch (`lengths`,
//! or an embedding with `maskZero`) hides each row's padding keys. Dropout, in training, applies to the
//! attention probabilities, as PyTorch does.

use candle_core::{D, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::dense::linear;
use super::{Builder, ForwardCtx, check_positive, check_rate, seq_len};
use crate::error::{Error, Result};
use crate::kernels::attention::{Mask, sdpa, self_attention};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MultiHeadAttentionSpec {
    pub n_heads: usize,
    /// Only for a first layer; otherwise inferred from the layer before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d_model: Option<usize>,
    #[serde(default)]
    pub causal: bool,
    /// On the attention probabilities, in training.
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "yes")]
    pub use_bias: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn yes() -> bool {
    true
}

/// The keys and values of the positions decoded so far, for one attention layer.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

#[derive(Debug, Clone)]
pub struct MultiHeadAttention {
    pub d_model: usize,
    pub n_heads: usize,
    pub causal: bool,
    pub dropout: f64,
    in_w: usize,
    in_b: Option<usize>,
    out_w: usize,
    out_b: Option<usize>,
}

impl MultiHeadAttention {
    pub(crate) fn build(
        op: &str,
        d_model: usize,
        n_heads: usize,
        causal: bool,
        dropout: f64,
        bias: bool,
        b: &mut Builder,
    ) -> Result<Self> {
        check_positive(op, "nHeads", n_heads)?;
        check_rate(op, "dropout", dropout)?;
        if !d_model.is_multiple_of(n_heads) {
            return Err(Error::Range(format!("{op}: dModel ({d_model}) must be divisible by nHeads ({n_heads})")));
        }
        // Xavier-uniform over [3D, D]: fan_in D, fan_out 3D.
        let in_w = b.uniform("in_proj_weight", &[3 * d_model, d_model], (6.0 / (4 * d_model) as f64).sqrt())?;
        let in_b = if bias { Some(b.constant("in_proj_bias", &[3 * d_model], 0.0)?) } else { None };
        let out_w = b.uniform("out_proj.weight", &[d_model, d_model], 1.0 / (d_model as f64).sqrt())?;
        let out_b = if bias { Some(b.constant("out_proj.bias", &[d_model], 0.0)?) } else { None };
        Ok(MultiHeadAttention { d_model, n_heads, causal, dropout, in_w, in_b, out_w, out_b })
    }

    pub(crate) fn from_spec(spec: &MultiHeadAttentionSpec, d_model: usize, b: &mut Builder) -> Result<Self> {
        Self::build("multiHeadAttention", d_model, spec.n_heads, spec.causal, spec.dropout, spec.use_bias, b)
    }

    /// `x [B, T, D]` to `[B, T, D]`; with `weights`, also the attention probabilities `[B, H, T, Tk]`. With a
    /// cache, `x` holds the positions after the cached ones, and their keys and values join the cache.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        lengths: Option<&std::sync::Arc<Vec<usize>>>,
        p: &[Tensor],
        ctx: &mut ForwardCtx,
        cache: Option<&mut KvCache>,
        weights: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let dm = self.d_model;
        seq_len("multiHeadAttention", x, dm)?;
        let qkv = linear(x, &p[self.in_w], self.in_b.map(|b| &p[b]))?;
        let mask = Mask { lengths: lengths.cloned(), causal: self.causal };
        let dropout = if ctx.train { self.dropout } else { 0.0 };
        let fused = matches!(x.device(), Device::Cpu) && dropout == 0.0;
        if fused && cache.is_none() {
            let (o, w) = self_attention(&qkv, self.n_heads, &mask, weights)?;
            return Ok((linear(&o, &p[self.out_w], self.out_b.map(|b| &p[b]))?, w));
        }
        let q = qkv.narrow(2, 0, dm)?;
        let (mut k, mut v) = (qkv.narrow(2, dm, dm)?, qkv.narrow(2, 2 * dm, dm)?);
        if let Some(c) = cache {
            if let (Some(ck), Some(cv)) = (&c.k, &c.v) {
                k = Tensor::cat(&[ck, &k], 1)?;
                v = Tensor::cat(&[cv, &v], 1)?;
            }
            c.k = Some(k.clone());
            c.v = Some(v.clone());
        }
        let (o, w) = if fused {
            sdpa(&q, &k, &v, self.n_heads, &mask, weights)?
        } else {
            attention_ops(&q, &k, &v, self.n_heads, &mask, dropout, ctx)?
        };
        Ok((linear(&o, &p[self.out_w], self.out_b.map(|b| &p[b]))?, w))
    }
}

/// Scaled dot-product attention from candle's generic ops: the path for GPUs and for attention dropout, and
/// the reference the fused kernel is tested against. Same shapes and masks as [`sdpa`].
pub fn attention_ops(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: &Mask,
    dropout: f64,
    ctx: &mut ForwardCtx,
) -> Result<(Tensor, Option<Tensor>)> {
    let (b, tq, dm) = q.dims3()?;
    let tk = k.dim(1)?;
    let d = dm / heads;
    // [B, T, H*d] -> [B, H, T, d]
    let heads_first = |t: &Tensor, len: usize| -> Result<Tensor> {
        Ok(t.contiguous()?.reshape((b, len, heads, d))?.transpose(1, 2)?.contiguous()?)
    };
    let (qh, kh, vh) = (heads_first(q, tq)?, heads_first(k, tk)?, heads_first(v, tk)?);
    let mut s = qh.matmul(&kh.t()?)?.affine(1.0 / (d as f64).sqrt(), 0.0)?;
    if mask.causal || mask.lengths.is_some() {
        // A large finite negative rather than -inf, so a query with no allowed key gives a uniform row that the
        // row mask then zeroes, instead of NaN.
        let mut add = vec![0f64; b * tq * tk];
        let mut rows = vec![1f64; b * tq];
        for bi in 0..b {
            for i in 0..tq {
                let n = mask.allowed(bi, i, tq, tk);
                add[(bi * tq + i) * tk + n..(bi * tq + i + 1) * tk].fill(-1e9);
                if n == 0 {
                    rows[bi * tq + i] = 0.0;
                }
            }
        }
        let add = Tensor::from_vec(add, (b, 1, tq, tk), q.device())?.to_dtype(q.dtype())?;
        let rows = Tensor::from_vec(rows, (b, 1, tq, 1), q.device())?.to_dtype(q.dtype())?;
        s = candle_nn::ops::softmax(&s.broadcast_add(&add)?, D::Minus1)?.broadcast_mul(&rows)?;
    } else {
        s = candle_nn::ops::softmax(&s, D::Minus1)?;
    }
    let p = s;
    let used = super::dropout(&p, dropout, ctx)?;
    let o = used.matmul(&vh)?.transpose(1, 2)?.reshape((b, tq, dm))?;
    Ok((o, Some(p)))
}
