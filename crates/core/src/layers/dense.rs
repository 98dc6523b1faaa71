//! Fully connected layer on the last axis: `y = x W^T + b`, then an optional activation.
//! As `nn.Linear`: `weight [units, in]`, `bias [units]`, both U(-1/sqrt(in), 1/sqrt(in)).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{Builder, check_positive};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Activation {
    #[default]
    Linear,
    Relu,
    Tanh,
    Sigmoid,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DenseSpec {
    pub units: usize,
    /// Only for a first layer; otherwise inferred from the layer before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_size: Option<usize>,
    #[serde(default = "yes")]
    pub use_bias: bool,
    #[serde(default)]
    pub activation: Activation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone)]
pub struct Dense {
    pub input_size: usize,
    pub units: usize,
    pub activation: Activation,
    weight: usize,
    bias: Option<usize>,
}

impl Dense {
    pub(crate) fn build(spec: &DenseSpec, input_size: usize, b: &mut Builder) -> Result<Self> {
        check_positive("dense", "units", spec.units)?;
        let bound = 1.0 / (input_size as f64).sqrt();
        let weight = b.uniform("weight", &[spec.units, input_size], bound)?;
        let bias = if spec.use_bias { Some(b.uniform("bias", &[spec.units], bound)?) } else { None };
        Ok(Dense { input_size, units: spec.units, activation: spec.activation, weight, bias })
    }

    /// `x`: `[..., input_size]` with at least two axes.
    pub(crate) fn forward(&self, x: &Tensor, p: &[Tensor]) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 2 || dims[dims.len() - 1] != self.input_size {
            return Err(Error::shape("dense", "input", format!("[batch, ..., {}]", self.input_size), dims));
        }
        let bias = self.bias.map(|b| &p[b]);
        let y = linear(x, &p[self.weight], bias)?;
        Ok(match self.activation {
            Activation::Linear => y,
            Activation::Relu => y.relu()?,
            Activation::Tanh => y.tanh()?,
            Activation::Sigmoid => candle_nn::ops::sigmoid(&y)?,
        })
    }
}

/// `x [..., in] W^T + b` with `W [out, in]`: one GEMM over all leading axes.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims();
    let (units, input) = w.dims2()?;
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x = x.reshape((rows, input))?;
    let y = if matches!(x.device(), candle_core::Device::Cpu) {
        crate::kernels::linear::linear(&x, w, b)?
    } else {
        let y = x.matmul(&w.t()?)?;
        match b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        }
    };
    let mut out = dims.to_vec();
    let last = out.len() - 1;
    out[last] = units;
    Ok(y.reshape(out)?)
}
