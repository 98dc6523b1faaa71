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
//! On the CPU each direction of each layer is one fused op, input projection included (see
//! [`crate::kernels::projected`]); on other devices the recurrence runs as candle ops step by step.

use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{Builder, ForwardCtx, check_at_most, check_positive, check_rate, dropout};
use crate::error::{Error, Result};
use crate::kernels::FinalState;
use crate::kernels::projected::{Kind, projected};

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
    /// Carry each batch's final state (detached) into the next call as its initial state, for truncated
    /// backpropagation through time over long streams; `reset_states` clears it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stateful: bool,
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
    pub stateful: bool,
    /// Per layer, per direction (forward first).
    layers: Vec<LayerParams>,
    /// With `stateful`, the last call's final states, detached (shared by clones of the layer).
    carried: Arc<Mutex<Option<RecurrentState>>>,
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
        check_at_most(kind, "numLayers", spec.num_layers, 10_000)?;
        check_rate(&format!("{kind} dropout"), "rate", spec.dropout)?;
        if spec.stateful && spec.bidirectional {
            return Err(Error::Type(format!(
                "{kind}: stateful and bidirectional do not go together (the backward direction would start from the \
                 next batch's end)"
            )));
        }
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
            stateful: spec.stateful,
            layers,
            carried: Arc::new(Mutex::new(None)),
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

    /// `lengths` (one per row, in `1..=seq_len`): each row's real steps; padded steps past them never change the
    /// state, their outputs are zero, the backward direction starts at each row's last real step, and the final
    /// states are taken at each row's length.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        lengths: Option<&Arc<Vec<usize>>>,
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
        let carried = if self.stateful && state.is_none() { self.carried_state(batch)? } else { None };
        let state = state.or(carried.as_ref());
        if let Some(s) = state {
            self.check_state(s, batch)?;
        }
        // With stateful, each layer's final (h, c), detached, for the next call.
        let mut finals: Vec<(Tensor, Option<Tensor>)> = Vec::new();
        if let Some(l) = lengths
            && (l.len() != batch || l.iter().any(|&n| n == 0 || n > seq_len))
        {
            return Err(Error::Range(format!(
                "{kind}: lengths must hold {batch} values (one per row) in 1..={seq_len}, got {:?}",
                &l[..l.len().min(8)]
            )));
        }
        let len = |b: usize| lengths.map_or(seq_len, |l| l[b]);
        let (hs, dirs) = (self.hidden_size, self.directions());
        // Picks rows of a [B, T, F] tensor flattened to [B*T, F]: `src(b, t)` is the time step moved to t.
        let gather = |t: &Tensor, idx: Vec<u32>, out_t: usize| -> Result<Tensor> {
            let f = t.dim(2)?;
            let n = idx.len();
            let picked = t.reshape((batch * seq_len, f))?.index_select(&Tensor::from_vec(idx, n, t.device())?, 0)?;
            Ok(picked.reshape((batch, out_t, f))?)
        };
        // Reverses each row's first len(b) steps (padding stays where it is): for the backward direction, and back.
        let reverse = |t: &Tensor| -> Result<Tensor> {
            let idx = (0..batch)
                .flat_map(|b| (0..seq_len).map(move |t| (b, t)))
                .map(|(b, t)| (b * seq_len + if t < len(b) { len(b) - 1 - t } else { t }) as u32)
                .collect();
            gather(t, idx, seq_len)
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
                let sink: Option<FinalState> = (self.stateful && self.cell == Cell::Lstm).then(Default::default);
                let seq = self.direction(&self.layers[i], &xin, (&h0, c0.as_ref()), lengths, sink.clone(), p)?;
                if self.stateful {
                    let last_idx = (0..batch).map(|b| (b * seq_len + len(b) - 1) as u32).collect();
                    let h_n = gather(&seq, last_idx, 1)?.squeeze(1)?.detach();
                    let c_n = match sink {
                        Some(s) => {
                            let v = s.lock().map_err(|_| Error::State(format!("{kind}: poisoned state")))?.take();
                            let v = v.ok_or_else(|| Error::State(format!("{kind}: the kernel left no cell state")))?;
                            Some(Tensor::from_vec(v, (batch, hs), x.device())?.to_dtype(x.dtype())?)
                        }
                        None => None,
                    };
                    finals.push((h_n, c_n));
                }
                outs.push(if dir == 1 { reverse(&seq)? } else { seq });
            }
            if k + 1 == self.num_layers {
                if self.stateful {
                    self.keep_state(finals)?;
                }
                if self.return_sequences {
                    return Ok(if dirs == 2 { Tensor::cat(&outs, 2)? } else { outs.swap_remove(0) });
                }
                // Final states: the forward direction's last real step, the backward direction's first.
                let last_idx = (0..batch).map(|b| (b * seq_len + len(b) - 1) as u32).collect();
                let last = gather(&outs[0], last_idx, 1)?.squeeze(1)?;
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

    /// The state carried from the last call, if any; an error if the batch size changed.
    fn carried_state(&self, batch: usize) -> Result<Option<RecurrentState>> {
        let kind = self.cell.type_name();
        let guard = self.carried.lock().map_err(|_| Error::State(format!("{kind}: poisoned state")))?;
        match guard.as_ref() {
            Some(s) if s.h.dim(1)? != batch => Err(Error::Range(format!(
                "{kind}: a stateful layer carries the state of a batch of {} rows, got {batch}; keep the batch size \
                 or call resetStates() first",
                s.h.dim(1)?
            ))),
            other => Ok(other.cloned()),
        }
    }

    /// Stores this call's final states (per layer and direction) for the next call.
    fn keep_state(&self, finals: Vec<(Tensor, Option<Tensor>)>) -> Result<()> {
        let kind = self.cell.type_name();
        let (hs, cs): (Vec<Tensor>, Vec<Option<Tensor>>) = finals.into_iter().unzip();
        let h = Tensor::stack(&hs, 0)?;
        let c = match cs.into_iter().collect::<Option<Vec<_>>>() {
            Some(cs) if self.cell == Cell::Lstm => Some(Tensor::stack(&cs, 0)?),
            _ => None,
        };
        *self.carried.lock().map_err(|_| Error::State(format!("{kind}: poisoned state")))? =
            Some(RecurrentState { h, c });
        Ok(())
    }

    /// The carried state, to put back with [`Recurrent::restore_state`] when a call fails after its forward.
    pub(crate) fn carried_snapshot(&self) -> Option<RecurrentState> {
        self.carried.lock().ok().and_then(|g| g.clone())
    }

    pub(crate) fn restore_state(&self, s: Option<RecurrentState>) {
        if let Ok(mut g) = self.carried.lock() {
            *g = s;
        }
    }

    /// Forgets the carried state: the next call starts from zeros (or its explicit initial state).
    pub fn reset_states(&self) {
        if let Ok(mut g) = self.carried.lock() {
            *g = None;
        }
    }

    /// One direction of one layer over `x [B, T, in]` from `h0` (and `c0`): `h` for every step `[B, T, H]`.
    /// With `final_c`, an LSTM also leaves its final cell state there.
    fn direction(
        &self,
        lp: &LayerParams,
        x: &Tensor,
        (h0, c0): (&Tensor, Option<&Tensor>),
        lengths: Option<&Arc<Vec<usize>>>,
        final_c: Option<FinalState>,
        p: &[Tensor],
    ) -> Result<Tensor> {
        let (batch, seq_len, inp) = x.dims3()?;
        let (shared, slice) = (lengths.cloned(), lengths.map(|l| l.as_slice()));
        if x.device().is_cpu() {
            // The projection and the recurrence as one op (see kernels::projected).
            let w = Tensor::cat(&[&p[lp.w_ih], &p[lp.w_hh], &p[lp.b_ih].unsqueeze(1)?, &p[lp.b_hh].unsqueeze(1)?], 1)?;
            let (kind, s0) = match self.cell {
                Cell::Lstm => {
                    let c0 = match c0 {
                        Some(c) => c.clone(),
                        None => h0.zeros_like()?,
                    };
                    (Kind::Lstm, Tensor::cat(&[h0, &c0], 1)?)
                }
                Cell::Gru => (Kind::Gru, h0.clone()),
                Cell::Rnn(act) => (Kind::Rnn { relu: act == Nonlinearity::Relu }, h0.clone()),
            };
            return Ok(projected(kind, x, &w, &s0, shared, final_c)?);
        }
        // Elsewhere: the input projection for every step as one GEMM, [batch*seq_len, in] x [in, G*H], then the
        // recurrence step by step. The GRU keeps b_hh apart: its n-gate part sits inside r * (...).
        let bias = match self.cell {
            Cell::Gru => p[lp.b_ih].clone(),
            _ => p[lp.b_ih].add(&p[lp.b_hh])?,
        };
        let g = self.cell.gates() * self.hidden_size;
        let xp = x
            .reshape((batch * seq_len, inp))?
            .matmul(&p[lp.w_ih].t()?)?
            .broadcast_add(&bias)?
            .reshape((batch, seq_len, g))?;
        let w_hh = &p[lp.w_hh];
        Ok(match self.cell {
            Cell::Lstm => {
                let c0 = match c0 {
                    Some(c) => c.clone(),
                    None => h0.zeros_like()?,
                };
                let (out, c_n) = lstm_generic_state(&xp, w_hh, h0, &c0, slice)?;
                if let Some(sink) = final_c {
                    let v = c_n.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
                    *sink.lock().map_err(|_| Error::State("lstm: poisoned state".into()))? = Some(v);
                }
                out
            }
            Cell::Gru => gru_generic(&xp, w_hh, &p[lp.b_hh], h0, slice)?,
            Cell::Rnn(act) => rnn_generic(&xp, w_hh, h0, act == Nonlinearity::Relu, slice)?,
        })
    }
}

/// The LSTM recurrence from candle's generic ops (about 15 small ops per step, autograd through all of them):
/// the path on devices without a fused kernel, and the reference the fused kernel is tested against.
/// `xp [batch, seq_len, 4H]` holds the input projections with both biases; returns `h` for every step.
pub fn lstm_generic(xp: &Tensor, w_hh: &Tensor, h0: &Tensor, c0: &Tensor, lengths: Option<&[usize]>) -> Result<Tensor> {
    Ok(lstm_generic_state(xp, w_hh, h0, c0, lengths)?.0)
}

/// [`lstm_generic`], also returning the final cell state `[B, H]`.
fn lstm_generic_state(
    xp: &Tensor,
    w_hh: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
    lengths: Option<&[usize]>,
) -> Result<(Tensor, Tensor)> {
    let (_, seq_len, g4) = xp.dims3()?;
    let hs = g4 / 4;
    let w_hh_t = w_hh.t()?;
    let (mut h, mut c) = (h0.clone(), c0.clone());
    let mut outs = Vec::with_capacity(seq_len);
    for t in 0..seq_len {
        let (h_prev, c_prev) = (h.clone(), c.clone());
        let gates = xp.narrow(1, t, 1)?.squeeze(1)?.add(&h.matmul(&w_hh_t)?)?;
        let i_f = candle_nn::ops::sigmoid(&gates.narrow(1, 0, 2 * hs)?)?;
        let i = i_f.narrow(1, 0, hs)?;
        let f = i_f.narrow(1, hs, hs)?;
        let g = gates.narrow(1, 2 * hs, hs)?.tanh()?;
        let o = candle_nn::ops::sigmoid(&gates.narrow(1, 3 * hs, hs)?)?;
        c = f.mul(&c)?.add(&i.mul(&g)?)?;
        h = o.mul(&c.tanh()?)?;
        match step_mask(lengths, t, &h)? {
            Some(m) => {
                outs.push(h.broadcast_mul(&m)?);
                h = keep_past_length(&h, &h_prev, &m)?;
                c = keep_past_length(&c, &c_prev, &m)?;
            }
            None => outs.push(h.clone()),
        }
    }
    Ok((Tensor::stack(&outs, 1)?, c))
}

/// `[B, 1]`: 1 for the rows still within their length at step `t`, 0 past it (None without lengths).
fn step_mask(lengths: Option<&[usize]>, t: usize, like: &Tensor) -> Result<Option<Tensor>> {
    let Some(l) = lengths else { return Ok(None) };
    let m: Vec<f64> = l.iter().map(|&n| if t < n { 1.0 } else { 0.0 }).collect();
    Ok(Some(Tensor::from_vec(m, (l.len(), 1), like.device())?.to_dtype(like.dtype())?))
}

/// `new` where the mask is 1, `old` where it is 0: `old + m * (new - old)`.
fn keep_past_length(new: &Tensor, old: &Tensor, m: &Tensor) -> Result<Tensor> {
    Ok(old.add(&new.sub(old)?.broadcast_mul(m)?)?)
}

/// The GRU recurrence from candle's generic ops. `xp [batch, seq_len, 3H]` holds the input projections with
/// `b_ih`; `b_hh` is added to the recurrent part.
pub fn gru_generic(
    xp: &Tensor,
    w_hh: &Tensor,
    b_hh: &Tensor,
    h0: &Tensor,
    lengths: Option<&[usize]>,
) -> Result<Tensor> {
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
        let next = n.add(&z.mul(&h.sub(&n)?)?)?;
        match step_mask(lengths, t, &next)? {
            Some(m) => {
                outs.push(next.broadcast_mul(&m)?);
                h = keep_past_length(&next, &h, &m)?;
            }
            None => {
                h = next;
                outs.push(h.clone());
            }
        }
    }
    Ok(Tensor::stack(&outs, 1)?)
}

/// The RNN recurrence from candle's generic ops. `xp [batch, seq_len, H]` holds the input projections with
/// both biases.
pub fn rnn_generic(xp: &Tensor, w_hh: &Tensor, h0: &Tensor, relu: bool, lengths: Option<&[usize]>) -> Result<Tensor> {
    let seq_len = xp.dim(1)?;
    let w_hh_t = w_hh.t()?;
    let mut h = h0.clone();
    let mut outs = Vec::with_capacity(seq_len);
    for t in 0..seq_len {
        let pre = xp.narrow(1, t, 1)?.squeeze(1)?.add(&h.matmul(&w_hh_t)?)?;
        let next = if relu { pre.relu()? } else { pre.tanh()? };
        match step_mask(lengths, t, &next)? {
            Some(m) => {
                outs.push(next.broadcast_mul(&m)?);
                h = keep_past_length(&next, &h, &m)?;
            }
            None => {
                h = next;
                outs.push(h.clone());
            }
        }
    }
    Ok(Tensor::stack(&outs, 1)?)
}
