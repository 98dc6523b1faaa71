//! Long short-term memory (Hochreiter and Schmidhuber 1997), batch-first, stacked.
//!
//! As `nn.LSTM(batch_first=True)`: per layer `k`, `weight_ih_l{k} [4H, in]`, `weight_hh_l{k} [4H, H]`,
//! `bias_ih_l{k} [4H]`, `bias_hh_l{k} [4H]`, gate order i, f, g, o, all U(-1/sqrt(H), 1/sqrt(H)).
//! Per step: `gates = x_t W_ih^T + b_ih + h W_hh^T + b_hh`; `c = f*c + i*g`; `h = o*tanh(c)`.
//! Input `[batch, seq_len, input_size]`; output `[batch, seq_len, H]` with `returnSequences`, else the last
//! step `[batch, H]`. Dropout (training only) applies to the outputs of every layer but the last.

use candle_core::{D, Tensor};
use serde::{Deserialize, Serialize};

use super::{Builder, ForwardCtx, check_positive, check_rate, dropout};
use crate::error::{Error, Result};
use crate::kernels::lstm::lstm_seq;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LstmSpec {
    pub hidden_size: usize,
    #[serde(default = "one")]
    pub num_layers: usize,
    #[serde(default)]
    pub return_sequences: bool,
    #[serde(default)]
    pub dropout: f64,
    /// Only for a first layer; otherwise inferred from the layer before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn one() -> usize {
    1
}

/// Initial state of a stacked LSTM, as PyTorch lays it out: `h`, `c` are `[num_layers, batch, hidden_size]`.
#[derive(Debug, Clone)]
pub struct LstmState {
    pub h: Tensor,
    pub c: Tensor,
}

#[derive(Debug, Clone)]
struct LayerParams {
    w_ih: usize,
    w_hh: usize,
    b_ih: usize,
    b_hh: usize,
}

#[derive(Debug, Clone)]
pub struct Lstm {
    pub input_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub return_sequences: bool,
    pub dropout: f64,
    layers: Vec<LayerParams>,
}

impl Lstm {
    pub(crate) fn build(spec: &LstmSpec, input_size: usize, b: &mut Builder) -> Result<Self> {
        check_positive("lstm", "hiddenSize", spec.hidden_size)?;
        check_positive("lstm", "numLayers", spec.num_layers)?;
        check_rate("lstm dropout", spec.dropout)?;
        let h = spec.hidden_size;
        let bound = 1.0 / (h as f64).sqrt();
        let mut layers = Vec::with_capacity(spec.num_layers);
        for k in 0..spec.num_layers {
            let inp = if k == 0 { input_size } else { h };
            layers.push(LayerParams {
                w_ih: b.uniform(&format!("weight_ih_l{k}"), &[4 * h, inp], bound)?,
                w_hh: b.uniform(&format!("weight_hh_l{k}"), &[4 * h, h], bound)?,
                b_ih: b.uniform(&format!("bias_ih_l{k}"), &[4 * h], bound)?,
                b_hh: b.uniform(&format!("bias_hh_l{k}"), &[4 * h], bound)?,
            });
        }
        Ok(Lstm {
            input_size,
            hidden_size: h,
            num_layers: spec.num_layers,
            return_sequences: spec.return_sequences,
            dropout: spec.dropout,
            layers,
        })
    }

    pub(crate) fn check_state(&self, state: &LstmState, batch: usize) -> Result<()> {
        let want = [self.num_layers, batch, self.hidden_size];
        for (what, t) in [("h0", &state.h), ("c0", &state.c)] {
            if t.dims() != want {
                return Err(Error::shape("lstm", what, format!("{want:?} (numLayers, batch, hiddenSize)"), t.dims()));
            }
        }
        Ok(())
    }

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        state: Option<&LstmState>,
        p: &[Tensor],
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() != 3 || dims[2] != self.input_size || dims[1] == 0 {
            return Err(Error::shape("lstm", "input", format!("[batch, seqLen >= 1, {}]", self.input_size), dims));
        }
        let (batch, seq_len) = (dims[0], dims[1]);
        if let Some(s) = state {
            self.check_state(s, batch)?;
        }
        let hs = self.hidden_size;
        let mut input = x.clone();
        for (k, lp) in self.layers.iter().enumerate() {
            let last_layer = k + 1 == self.num_layers;
            let inp = input.dim(D::Minus1)?;
            // The input projection for every step as one GEMM: [batch*seq_len, in] x [in, 4H].
            let bias = p[lp.b_ih].add(&p[lp.b_hh])?;
            let xp = input
                .reshape((batch * seq_len, inp))?
                .matmul(&p[lp.w_ih].t()?)?
                .broadcast_add(&bias)?
                .reshape((batch, seq_len, 4 * hs))?;
            let (h0, c0) = match state {
                Some(s) => (s.h.get(k)?, s.c.get(k)?),
                None => {
                    let z = Tensor::zeros((batch, hs), x.dtype(), x.device())?;
                    (z.clone(), z)
                }
            };
            let seq = if xp.device().is_cpu() {
                lstm_seq(&xp, &p[lp.w_hh], &Tensor::cat(&[&h0, &c0], 1)?)?
            } else {
                recurrence_generic(&xp, &p[lp.w_hh], &h0, &c0)?
            };
            if last_layer {
                return Ok(if self.return_sequences { seq } else { seq.narrow(1, seq_len - 1, 1)?.squeeze(1)? });
            }
            input = dropout(&seq, self.dropout, ctx)?;
        }
        Err(Error::State("lstm: no layers".into()))
    }
}

/// The recurrence from candle's generic ops (about 15 small ops per step, autograd through all of them):
/// the path on devices without a fused kernel, and the reference the fused kernel is tested against.
/// `xp [batch, seq_len, 4H]` holds the input projections with both biases; returns `h` for every step.
pub fn recurrence_generic(xp: &Tensor, w_hh: &Tensor, h0: &Tensor, c0: &Tensor) -> Result<Tensor> {
    let (_, seq_len, g4) = xp.dims3()?;
    let hs = g4 / 4;
    let w_hh_t = w_hh.t()?;
    let (mut h, mut c) = (h0.clone(), c0.clone());
    let mut outs = Vec::with_capacity(seq_len);
    for t in 0..seq_len {
        let gates = xp.narrow(1, t, 1)?.squeeze(1)?.add(&h.matmul(&w_hh_t)?)?;
        let i_f = candle_nn::ops::sigmoid(&gates.narrow(1, 0, 2 * hs)?)?;
        let i = i_f.narrow(1, 0, hs)?;
        let f = i_f.narrow(1, hs, hs)?;
        let g = gates.narrow(1, 2 * hs, hs)?.tanh()?;
        let o = candle_nn::ops::sigmoid(&gates.narrow(1, 3 * hs, hs)?)?;
        c = f.mul(&c)?.add(&i.mul(&g)?)?;
        h = o.mul(&c.tanh()?)?;
        outs.push(h.clone());
    }
    Ok(Tensor::stack(&outs, 1)?)
}
