//! Recurrent layers, batch-first and stacked, with PyTorch's semantics and parameter names: LSTM (Hochreiter
//! and Schmidhuber 1997), GRU (Cho et al. 2014) and the Elman RNN with tanh or relu.
//!
//! As `nn.LSTM` / `nn.GRU` / `nn.RNN` with `batch_first=True`: per layer `k`, `weight_ih_l{k} [G*H, in]`,
//! `weight_hh_l{k} [G*H, H]`, `bias_ih_l{k} [G*H]`, `bias_hh_l{k} [G*H]` (G = 4, 3, 1; LSTM gates i, f, g, o;
//! GRU gates r, z, n), the same with the suffix `_reverse` for the backward direction of a bidirectional
//! layer, all U(-1/sqrt(H), 1/sqrt(H)).
//!
//! - LSTM: `gates = x W_ih^T + b_ih + h W_hh^T + b_hh`; `c = f*c + i*g`; `h = o*tanh(c)`.
//! - GRU: `r = σ(x W_ir^T + b_ir + h W_hr^T + b_hr)`, `z` likewise, `n = tanh(x W_in^T + b_in + r*(h W_hn^T +
//!   b_hn))`, `h = (1-z)*n + z*h`.
//! - RNN: `h = act(x W_ih^T + b_ih + h W_hh^T + b_hh)`.
//!
//! Input `[batch, seq_len, input_size]`; output `[batch, seq_len, D*H]` with `returnSequences` (D = 2 when
//! bidirectional: forward then backward features, as PyTorch), else the final states `[batch, D*H]`: the
//! forward direction's last step and, when bidirectional, the backward direction's first (PyTorch's `h_n` of
//! the last layer). Dropout (training only) applies to the outputs of every layer but the last.
//!
//! On the CPU each direction of each layer is one fused op (see [`crate::kernels`]); on other devices the
//! recurrence runs as candle ops step by step.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{Builder, ForwardCtx, check_positive, check_rate, dropout};
use crate::error::{Error, Result};
use crate::kernels::{gru::gru_seq, lstm::lstm_seq, rnn::rnn_seq};

/// Which recurrent cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    Lstm,
    Gru,
    Rnn(Nonlinearity),
}

impl Cell {
    /// Gate blocks per step.
    pub fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru => 3,
            Cell::Rnn(_) => 1,
        }
    }

    pub fn type_name(self) -> &'static str {
        match self {
            Cell::Lstm => "lstm",
            Cell::Gru => "gru",
            Cell::Rnn(_) => "rnn",
        }
    }
}

/// The RNN's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Nonlinearity {
    #[default]
    Tanh,
    Relu,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecurrentSpec {
    pub hidden_size: usize,
    #[serde(default = "one")]
    pub num_layers: usize,
    #[serde(default)]
    pub return_sequences: bool,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub bidirectional: bool,
    /// `rnn` only: `tanh` (default) or `relu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonlinearity: Option<Nonlinearity>,
    /// Only for a first layer; otherwise inferred from the layer before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The LSTM's spec is the common one.
pub type LstmSpec = RecurrentSpec;

fn one() -> usize {
    1
}

/// Initial state of a stacked recurrent layer, as PyTorch lays it out: `h` (and, for an LSTM, `c`) are
/// `[num_layers * D, batch, hidden_size]`, layer-major with the directions inside.
#[derive(Debug, Clone)]
pub struct RecurrentState {
    pub h: Tensor,
    pub c: Option<Tensor>,
}

#[derive(Debug, Clone)]
struct LayerParams {
    w_ih: usize,
    w_hh: usize,
    b_ih: usize,
    b_hh: usize,
}

#[derive(Debug, Clone)]
pub struct Recurrent {
    pub cell: Cell,
    pub input_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub return_sequences: bool,
    pub bidirectional: bool,
    pub dropout: f64,
    /// Per layer, per direction (forward first).
    layers: Vec<LayerParams>,
}

impl Recurrent {
    pub(crate) fn build(kind: &str, spec: &RecurrentSpec, input_size: usize, b: &mut Builder) -> Result<Self> {
        let cell = match (kind, spec.nonlinearity) {
            ("lstm", None) => Cell::Lstm,
            ("gru", None) => Cell::Gru,
            ("rnn", n) => Cell::Rnn(n.unwrap_or_default()),
            (_, Some(_)) => {
                return Err(Error::Type(format!(
                    "{kind}: nonlinearity is an option of rnn layers only (an {kind} has fixed activations)"
                )));
            }
            _ => return Err(Error::Type(format!("unknown recurrent layer {kind:?}"))),
        };
        check_positive(kind, "hiddenSize", spec.hidden_size)?;
        check_positive(kind, "numLayers", spec.num_layers)?;
        check_rate(&format!("{kind} dropout"), spec.dropout)?;
        let h = spec.hidden_size;
        let g = cell.gates() * h;
        let dirs = if spec.bidirectional { 2 } else { 1 };
        let bound = 1.0 / (h as f64).sqrt();
        let mut layers = Vec::with_capacity(spec.num_layers * dirs);
        for k in 0..spec.num_layers {
            let inp = if k == 0 { input_size } else { dirs * h };
            for dir in 0..dirs {
                let sfx = if dir == 1 { "_reverse" } else { "" };
                layers.push(LayerParams {
                    w_ih: b.uniform(&format!("weight_ih_l{k}{sfx}"), &[g, inp], bound)?,
                    w_hh: b.uniform(&format!("weight_hh_l{k}{sfx}"), &[g, h], bound)?,
                    b_ih: b.uniform(&format!("bias_ih_l{k}{sfx}"), &[g], bound)?,
                    b_hh: b.uniform(&format!("bias_hh_l{k}{sfx}"), &[g], bound)?,
                });
            }
        }
        Ok(Recurrent {
            cell,
            input_size,
            hidden_size: h,
            num_layers: spec.num_layers,
            return_sequences: spec.return_sequences,
            bidirectional: spec.bidirectional,
            dropout: spec.dropout,
            layers,
        })
    }

    fn directions(&self) -> usize {
        if self.bidirectional { 2 } else { 1 }
    }

    /// Output features per step: `D * H`.
    pub fn output_size(&self) -> usize {
        self.directions() * self.hidden_size
    }

    pub(crate) fn check_state(&self, state: &RecurrentState, batch: usize) -> Result<()> {
        let kind = self.cell.type_name();
        let want = [self.num_layers * self.directions(), batch, self.hidden_size];
        let layout =
            if self.bidirectional { "(numLayers * 2, batch, hiddenSize)" } else { "(numLayers, batch, hiddenSize)" };
        if state.h.dims() != want {
            return Err(Error::shape(kind, "h0", format!("{want:?} {layout}"), state.h.dims()));
        }
        match (&state.c, self.cell) {
            (Some(c), Cell::Lstm) if c.dims() != want => {
                Err(Error::shape(kind, "c0", format!("{want:?} {layout}"), c.dims()))
            }
            (None, Cell::Lstm) => Err(Error::Type("lstm: an initial state needs both h and c".into())),
            (Some(_), Cell::Gru | Cell::Rnn(_)) => {
                Err(Error::Type(format!("{kind}: an initial state has h only (c belongs to an lstm)")))
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        state: Option<&RecurrentState>,
        p: &[Tensor],
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let kind = self.cell.type_name();
        let dims = x.dims();
        if dims.len() != 3 || dims[2] != self.input_size || dims[1] == 0 {
            return Err(Error::shape(kind, "input", format!("[batch, seqLen >= 1, {}]", self.input_size), dims));
        }
        let (batch, seq_len) = (dims[0], dims[1]);
        if let Some(s) = state {
            self.check_state(s, batch)?;
        }
        let (hs, dirs) = (self.hidden_size, self.directions());
        // Reverses the time axis (for the backward direction, and back again).
        let reverse = |t: &Tensor| -> Result<Tensor> {
            let idx: Vec<u32> = (0..seq_len as u32).rev().collect();
            Ok(t.index_select(&Tensor::from_vec(idx, seq_len, t.device())?, 1)?)
        };
        let mut input = x.clone();
        for k in 0..self.num_layers {
            let mut outs = Vec::with_capacity(dirs);
            for dir in 0..dirs {
                let i = k * dirs + dir;
                let (h0, c0) = match state {
                    Some(s) => (s.h.get(i)?, s.c.as_ref().map(|c| c.get(i)).transpose()?),
                    None => (Tensor::zeros((batch, hs), x.dtype(), x.device())?, None),
                };
                let xin = if dir == 1 { reverse(&input)? } else { input.clone() };
                let seq = self.direction(&self.layers[i], &xin, &h0, c0.as_ref(), p)?;
                outs.push(if dir == 1 { reverse(&seq)? } else { seq });
            }
            if k + 1 == self.num_layers {
                if self.return_sequences {
                    return Ok(if dirs == 2 { Tensor::cat(&outs, 2)? } else { outs.swap_remove(0) });
                }
                // Final states: the forward direction's last step, the backward direction's first.
                let last = outs[0].narrow(1, seq_len - 1, 1)?.squeeze(1)?;
                return Ok(if dirs == 2 {
                    Tensor::cat(&[&last, &outs[1].narrow(1, 0, 1)?.squeeze(1)?], 1)?
                } else {
                    last
                });
            }
            let seq = if dirs == 2 { Tensor::cat(&outs, 2)? } else { outs.swap_remove(0) };
            input = dropout(&seq, self.dropout, ctx)?;
        }
        Err(Error::State(format!("{kind}: no layers")))
    }

    /// One direction of one layer over `x [B, T, in]` from `h0` (and `c0`): `h` for every step `[B, T, H]`.
    fn direction(
        &self,
        lp: &LayerParams,
        x: &Tensor,
        h0: &Tensor,
        c0: Option<&Tensor>,
        p: &[Tensor],
    ) -> Result<Tensor> {
        let (batch, seq_len, inp) = x.dims3()?;
        let hs = self.hidden_size;
        let g = self.cell.gates() * hs;
        // The input projection for every step as one GEMM: [batch*seq_len, in] x [in, G*H]. The GRU keeps b_hh
        // apart: its n-gate part sits inside r * (...).
        let bias = match self.cell {
            Cell::Gru => p[lp.b_ih].clone(),
            _ => p[lp.b_ih].add(&p[lp.b_hh])?,
        };
        let xp = x
            .reshape((batch * seq_len, inp))?
            .matmul(&p[lp.w_ih].t()?)?
            .broadcast_add(&bias)?
            .reshape((batch, seq_len, g))?;
        let w_hh = &p[lp.w_hh];
        let cpu = xp.device().is_cpu();
        Ok(match self.cell {
            Cell::Lstm => {
                let c0 = match c0 {
                    Some(c) => c.clone(),
                    None => h0.zeros_like()?,
                };
                if cpu { lstm_seq(&xp, w_hh, &Tensor::cat(&[h0, &c0], 1)?)? } else { lstm_generic(&xp, w_hh, h0, &c0)? }
            }
            Cell::Gru => {
                if cpu {
                    let w = Tensor::cat(&[w_hh, &p[lp.b_hh].unsqueeze(1)?], 1)?;
                    gru_seq(&xp, &w, h0)?
                } else {
                    gru_generic(&xp, w_hh, &p[lp.b_hh], h0)?
                }
            }
            Cell::Rnn(act) => {
                let relu = act == Nonlinearity::Relu;
                if cpu { rnn_seq(&xp, w_hh, h0, relu)? } else { rnn_generic(&xp, w_hh, h0, relu)? }
            }
        })
    }
}

/// The LSTM recurrence from candle's generic ops (about 15 small ops per step, autograd through all of them):
/// the path on devices without a fused kernel, and the reference the fused kernel is tested against.
/// `xp [batch, seq_len, 4H]` holds the input projections with both biases; returns `h` for every step.
pub fn lstm_generic(xp: &Tensor, w_hh: &Tensor, h0: &Tensor, c0: &Tensor) -> Result<Tensor> {
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

/// The GRU recurrence from candle's generic ops. `xp [batch, seq_len, 3H]` holds the input projections with
/// `b_ih`; `b_hh` is added to the recurrent part.
pub fn gru_generic(xp: &Tensor, w_hh: &Tensor, b_hh: &Tensor, h0: &Tensor) -> Result<Tensor> {
    let (_, seq_len, g3) = xp.dims3()?;
    let hs = g3 / 3;
    let w_hh_t = w_hh.t()?;
    let mut h = h0.clone();
    let mut outs = Vec::with_capacity(seq_len);
    for t in 0..seq_len {
        let x = xp.narrow(1, t, 1)?.squeeze(1)?;
        let hp = h.matmul(&w_hh_t)?.broadcast_add(b_hh)?;
        let rz = candle_nn::ops::sigmoid(&x.narrow(1, 0, 2 * hs)?.add(&hp.narrow(1, 0, 2 * hs)?)?)?;
        let (r, z) = (rz.narrow(1, 0, hs)?, rz.narrow(1, hs, hs)?);
        let n = x.narrow(1, 2 * hs, hs)?.add(&r.mul(&hp.narrow(1, 2 * hs, hs)?)?)?.tanh()?;
        // h' = (1 - z) n + z h = n + z (h - n)
        h = n.add(&z.mul(&h.sub(&n)?)?)?;
        outs.push(h.clone());
    }
    Ok(Tensor::stack(&outs, 1)?)
}

/// The RNN recurrence from candle's generic ops. `xp [batch, seq_len, H]` holds the input projections with
/// both biases.
pub fn rnn_generic(xp: &Tensor, w_hh: &Tensor, h0: &Tensor, relu: bool) -> Result<Tensor> {
    let seq_len = xp.dim(1)?;
    let w_hh_t = w_hh.t()?;
    let mut h = h0.clone();
    let mut outs = Vec::with_capacity(seq_len);
    for t in 0..seq_len {
        let pre = xp.narrow(1, t, 1)?.squeeze(1)?.add(&h.matmul(&w_hh_t)?)?;
        h = if relu { pre.relu()? } else { pre.tanh()? };
        outs.push(h.clone());
    }
    Ok(Tensor::stack(&outs, 1)?)
}
