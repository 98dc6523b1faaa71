//! Positional encodings added to a sequence `[batch, seq_len, d_model]`, so that attention (which is blind to
//! order) can tell positions apart.
//!
//! - `sinusoidal`, as in "Attention Is All You Need" (Vaswani et al. 2017): `PE(pos, 2i) = sin(pos / 10000^(2i/d))`,
//!   `PE(pos, 2i+1) = cos(pos / 10000^(2i/d))`; no parameters.
//! - `learned`: a trainable table `weight [max_len, d_model]`, initialised N(0, 0.02²) as GPT-2 initialises its
//!   position embeddings.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{Builder, ForwardCtx, check_positive, check_rate, seq_len};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PositionKind {
    #[default]
    Sinusoidal,
    Learned,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PositionalEncodingSpec {
    #[serde(default)]
    pub kind: PositionKind,
    /// The longest sequence the layer accepts (default 512).
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Dropout on the sum, in training (default 0).
    #[serde(default)]
    pub dropout: f64,
    /// Only for a first layer; otherwise inferred from the layer before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn default_max_len() -> usize {
    512
}

#[derive(Debug, Clone)]
pub struct PositionalEncoding {
    pub kind: PositionKind,
    pub max_len: usize,
    pub d_model: usize,
    pub dropout: f64,
    weight: Option<usize>,
    table: Option<Tensor>,
}

/// The sinusoidal table `[max_len, d]`, computed in f64 and rounded once to `dtype`.
pub fn sinusoidal_table(max_len: usize, d: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let value = |i: usize| {
        let (pos, j) = (i / d, i % d);
        let i2 = (j - j % 2) as f64;
        let angle = pos as f64 / 10000f64.powf(i2 / d as f64);
        if j % 2 == 0 { angle.sin() } else { angle.cos() }
    };
    let n =
        max_len.checked_mul(d).ok_or_else(|| Error::Memory("positionalEncoding: maxLen x dModel overflows".into()))?;
    Ok(match dtype {
        DType::F64 => {
            let mut v = crate::memory::zeros::<f64>("positionalEncoding table", n)?;
            v.iter_mut().enumerate().for_each(|(i, x)| *x = value(i));
            Tensor::from_vec(v, (max_len, d), device)?
        }
        _ => {
            let mut v = crate::memory::zeros::<f32>("positionalEncoding table", n)?;
            v.iter_mut().enumerate().for_each(|(i, x)| *x = value(i) as f32);
            Tensor::from_vec(v, (max_len, d), device)?.to_dtype(dtype)?
        }
    })
}

impl PositionalEncoding {
    pub(crate) fn build(spec: &PositionalEncodingSpec, d_model: usize, b: &mut Builder) -> Result<Self> {
        check_positive("positionalEncoding", "maxLen", spec.max_len)?;
        check_rate("positionalEncoding", "dropout", spec.dropout)?;
        let (weight, table) = match spec.kind {
            PositionKind::Learned => (Some(b.normal_std("weight", &[spec.max_len, d_model], 0.02)?), None),
            PositionKind::Sinusoidal if b.is_dry() => {
                b.buffer(&[spec.max_len, d_model]);
                (None, None)
            }
            PositionKind::Sinusoidal => (None, Some(sinusoidal_table(spec.max_len, d_model, b.dtype, b.device)?)),
        };
        Ok(PositionalEncoding { kind: spec.kind, max_len: spec.max_len, d_model, dropout: spec.dropout, weight, table })
    }

    /// `x [B, T, D]` holding positions `offset..offset + T`.
    pub(crate) fn forward(&self, x: &Tensor, offset: usize, p: &[Tensor], ctx: &mut ForwardCtx) -> Result<Tensor> {
        let t = seq_len("positionalEncoding", x, self.d_model)?;
        if offset + t > self.max_len {
            return Err(Error::Range(format!(
                "positionalEncoding: the sequence has {} positions but maxLen is {}; raise maxLen or shorten the input",
                offset + t,
                self.max_len
            )));
        }
        let table = match (&self.table, self.weight) {
            (Some(table), _) => table,
            (None, Some(w)) => &p[w],
            (None, None) => return Err(Error::State("positionalEncoding: no table".into())),
        };
        let out = x.broadcast_add(&table.narrow(0, offset, t)?)?;
        super::dropout(&out, self.dropout, ctx)
    }
}
