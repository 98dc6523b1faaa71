//! Layer normalisation over the last axis (Ba et al. 2016), as `nn.LayerNorm(d)`: `weight [d]` (ones) and
//! `bias [d]` (zeros). On the CPU it runs as one fused op with its own backward ([`crate::kernels::norm`]);
//! elsewhere from generic ops.

use candle_core::{D, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::Builder;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LayerNormSpec {
    /// Added to the variance (default 1e-5, as PyTorch).
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Only for a first layer; otherwise inferred from the layer before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

pub(crate) fn default_eps() -> f64 {
    1e-5
}

#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub size: usize,
    pub eps: f64,
    weight: usize,
    bias: usize,
}

impl LayerNorm {
    pub(crate) fn build(op: &str, size: usize, eps: f64, b: &mut Builder) -> Result<Self> {
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::Range(format!("{op}: eps must be a finite number > 0, got {eps}")));
        }
        let weight = b.constant("weight", &[size], 1.0)?;
        let bias = b.constant("bias", &[size], 0.0)?;
        Ok(LayerNorm { size, eps, weight, bias })
    }

    pub(crate) fn forward(&self, x: &Tensor, p: &[Tensor]) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 2 || dims[dims.len() - 1] != self.size {
            return Err(Error::shape("layerNorm", "input", format!("[batch, ..., {}]", self.size), dims));
        }
        let (w, b) = (&p[self.weight], &p[self.bias]);
        if matches!(x.device(), Device::Cpu) {
            return Ok(crate::kernels::norm::layer_norm(x, w, b, self.eps)?);
        }
        layer_norm_ops(x, w, b, self.eps)
    }
}

/// Layer normalisation from candle's generic ops (every one with a backward): the GPU path, and the reference
/// the fused kernel is tested against.
pub fn layer_norm_ops(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let xhat = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(xhat.broadcast_mul(w)?.broadcast_add(b)?)
}
