//! Token embedding: ids `[batch, seq_len]` to vectors `[batch, seq_len, dim]`.
//! As `nn.Embedding`: parameter `weight [vocab_size, dim]`, initialised N(0, 1).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{Builder, check_positive};
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmbeddingSpec {
    pub vocab_size: usize,
    pub dim: usize,
    /// Id 0 is padding at the end of each row: recurrent layers after run each row up to its last non-zero id.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mask_zero: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Embedding {
    pub vocab_size: usize,
    pub dim: usize,
    pub mask_zero: bool,
    weight: usize,
}

impl Embedding {
    pub(crate) fn build(spec: &EmbeddingSpec, b: &mut Builder) -> Result<Self> {
        check_positive("embedding", "vocabSize", spec.vocab_size)?;
        check_positive("embedding", "dim", spec.dim)?;
        let weight = b.normal("weight", &[spec.vocab_size, spec.dim])?;
        Ok(Embedding { vocab_size: spec.vocab_size, dim: spec.dim, mask_zero: spec.mask_zero, weight })
    }

    /// `ids`: U32 of any shape, already range-checked.
    pub(crate) fn forward(&self, ids: &Tensor, p: &[Tensor]) -> Result<Tensor> {
        let w = &p[self.weight];
        let mut out_shape = ids.dims().to_vec();
        out_shape.push(self.dim);
        let flat = ids.flatten_all()?;
        if flat.elem_count() == 0 {
            return Err(Error::Range("embedding: the input holds no token ids".into()));
        }
        Ok(w.index_select(&flat, 0)?.reshape(out_shape)?)
    }
}
