//! Losses on a model's output. Targets arrive as host tensors and are validated against the output here.
//!
//! `crossEntropy` takes logits and integer class ids: `[batch, C]` with `[batch]`; `[batch, seq_len, C]` with
//! `[batch, seq_len]` (every step) or `[batch]` (the last step). Targets equal to `ignoreIndex` (default -100,
//! as PyTorch) are masked out and the mean runs over the rest. `mse` takes float targets of the output's
//! shape, or `[batch, F]` against `[batch, seq_len, F]` for the last step.

use candle_core::{D, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::{HostData, HostTensor};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum LossSpec {
    CrossEntropy(CrossEntropySpec),
    Mse(MseSpec),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CrossEntropySpec {
    #[serde(default = "default_ignore")]
    pub ignore_index: i64,
    #[serde(default)]
    pub reduction: Reduction,
}

/// How per-target losses combine, as PyTorch's `reduction`: the mean over counted targets, or their sum
/// (what the memory-network paper's learning rates assume).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reduction {
    #[default]
    Mean,
    Sum,
}

impl Default for CrossEntropySpec {
    fn default() -> Self {
        CrossEntropySpec { ignore_index: default_ignore(), reduction: Reduction::Mean }
    }
}

fn default_ignore() -> i64 {
    -100
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MseSpec {}

impl LossSpec {
    /// The scalar loss of `output` against host targets `y`.
    pub fn compute(&self, output: &Tensor, y: &HostTensor) -> Result<Tensor> {
        match self {
            LossSpec::CrossEntropy(s) => cross_entropy(output, y, s.ignore_index, s.reduction),
            LossSpec::Mse(_) => mse(output, y),
        }
    }

    /// Counts what `output` scored against `y` (already validated by [`LossSpec::compute`]).
    pub fn tally(&self, output: &Tensor, y: &HostTensor) -> Result<Tally> {
        match (self, &y.data) {
            (LossSpec::CrossEntropy(s), HostData::I32(ids)) => {
                let logits = scored_logits(output, y)?;
                let classes = logits.dim(D::Minus1)?;
                let predicted: Vec<u32> = logits.reshape((ids.len(), classes))?.argmax(D::Minus1)?.to_vec1()?;
                let (mut targets, mut correct) = (0, 0);
                for (&id, &p) in ids.iter().zip(&predicted) {
                    if id as i64 != s.ignore_index {
                        targets += 1;
                        correct += usize::from(id as u32 == p);
                    }
                }
                Ok(Tally { targets, correct: Some(correct) })
            }
            _ => Ok(Tally { targets: y.shape.iter().product(), correct: None }),
        }
    }
}

/// What a batch scored besides its loss: the targets that counted (class ids other than `ignoreIndex`; for
/// `mse`, target values) and, for `crossEntropy`, how many of them the most likely class got right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub targets: usize,
    pub correct: Option<usize>,
}

/// The logits `crossEntropy` scores against `y`: all of them, or the last step's when `y` is `[batch]` against a
/// sequence output.
fn scored_logits(logits: &Tensor, y: &HostTensor) -> Result<Tensor> {
    let dims = logits.dims().to_vec();
    if dims.len() < 2 {
        return Err(Error::shape(
            "crossEntropy",
            "the model output",
            "[batch, classes] or [batch, seqLen, classes]",
            &dims,
        ));
    }
    let lead = &dims[..dims.len() - 1];
    if y.shape.as_slice() == lead {
        Ok(logits.clone())
    } else if dims.len() == 3 && y.shape.as_slice() == [dims[0]] {
        Ok(logits.narrow(1, dims[1] - 1, 1)?.squeeze(1)?)
    } else {
        let every = format!("{lead:?}");
        let expected =
            if dims.len() == 3 { format!("{every} (every step) or [{}] (last step)", dims[0]) } else { every };
        Err(Error::shape("crossEntropy", "y", expected, &y.shape))
    }
}

pub(crate) fn cross_entropy(
    logits: &Tensor,
    y: &HostTensor,
    ignore_index: i64,
    reduction: Reduction,
) -> Result<Tensor> {
    let HostData::I32(ids) = &y.data else {
        return Err(Error::Type(format!(
            "crossEntropy: y must hold int32 class ids (an Int32Array), got {} data",
            y.data.dtype_name()
        )));
    };
    let logits = scored_logits(logits, y)?;
    let classes = logits.dim(D::Minus1)?;
    let n = ids.len();
    let mut idx = Vec::with_capacity(n);
    let mut mask = Vec::with_capacity(n);
    for (i, &id) in ids.iter().enumerate() {
        if id as i64 == ignore_index {
            idx.push(0u32);
            mask.push(0.0);
        } else if id < 0 || id as usize >= classes {
            return Err(Error::Range(format!(
                "crossEntropy: class ids in y must be in [0, {classes}) or equal ignoreIndex ({ignore_index}), found {id} at flat index {i}"
            )));
        } else {
            idx.push(id as u32);
            mask.push(1.0);
        }
    }
    let count: f64 = mask.iter().sum();
    let dev = logits.device();
    let flat = logits.reshape((n, classes))?;
    let logp = candle_nn::ops::log_softmax(&flat, D::Minus1)?;
    let idx = Tensor::from_vec(idx, (n, 1), dev)?;
    let picked = logp.gather(&idx, 1)?.squeeze(1)?;
    let mask = Tensor::from_vec(mask, n, dev)?.to_dtype(logits.dtype())?;
    // Mean over the targets that count; an all-ignored batch contributes 0 rather than NaN.
    let scale = match reduction {
        Reduction::Mean => -1.0 / count.max(1.0),
        Reduction::Sum => -1.0,
    };
    Ok(picked.mul(&mask)?.sum_all()?.affine(scale, 0.0)?)
}

pub(crate) fn mse(output: &Tensor, y: &HostTensor) -> Result<Tensor> {
    let dims = output.dims().to_vec();
    let out = if y.shape == dims {
        output.clone()
    } else if dims.len() == 3 && y.shape.as_slice() == [dims[0], dims[2]] {
        output.narrow(1, dims[1] - 1, 1)?.squeeze(1)?
    } else {
        let mut expected = format!("{dims:?}");
        if dims.len() == 3 {
            expected.push_str(&format!(" (every step) or [{}, {}] (last step)", dims[0], dims[2]));
        }
        return Err(Error::shape("mse", "y", expected, &y.shape));
    };
    let target = y.to_floats("mse: y", out.dtype(), out.device())?;
    Ok(out.sub(&target)?.sqr()?.mean_all()?)
}
