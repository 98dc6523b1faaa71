//! The LSTM recurrence as one op, forward and backward.
//!
//! Inputs: `xp [batch, seq_len, 4H]`, the input projection of every step with both biases already added
//! (one GEMM outside, under autograd); `w_hh [4H, H]`; `s0 [batch, 2H]`, the initial `h` and `c` side by side.
//! Output: `h` for every step, `[batch, seq_len, H]`. Gate order i, f, g, o as in PyTorch.
//!
//! Forward, per step: one GEMM `gates += h W_hh^T` into a time-major buffer, then one fused pass for the
//! gates, `c` and `h`. Backward, per step: one fused pass for the gate gradients and one GEMM `dh = dgates
//! W_hh`; after the loop, `dW_hh` for all steps as a single GEMM `dgates^T [4H, T*B] x h_prev [T*B, H]`.
//! The forward keeps only what the backward reads: gate activations, `c` and `h` per step.
//!
//! With `lengths`, row b runs its first `lengths[b]` steps only: past them its state is carried unchanged and
//! its output is zero, as PyTorch's packed sequences (see [`Lengths`]).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::gru::split_weights;
use super::{Inner, Lengths, Mat, Real, matmul, slice, transpose};

/// What the backward needs from the forward, time-major.
pub struct Saved<T> {
    /// Gate activations `[T, B, 4H]`: sigmoid(i), sigmoid(f), tanh(g), sigmoid(o).
    gates: Vec<T>,
    /// `c` for steps 0..=T (`c[0]` is the initial state), `[T+1, B, H]`.
    c: Vec<T>,
    /// `h` likewise, `[T+1, B, H]`.
    h: Vec<T>,
    /// `tanh(c)` for steps 1..=T, `[T, B, H]`, so the backward need not recompute it.
    tc: Vec<T>,
}

pub struct LstmSeq<T: Real> {
    batch: usize,
    seq_len: usize,
    hidden: usize,
    /// Keep activations for a backward (only when the inputs are tracked by autograd).
    keep: bool,
    lengths: Lengths,
    /// `w` is `[4H, H + 1]`, `W_hh` with `b_hh` as a last column, and `xp` holds `b_ih` only: the recurrent
    /// part is `h W_hh^T + b_hh` as PyTorch adds it (same rounding). Otherwise `w` is `W_hh` and `xp` holds both.
    hh_bias: bool,
    /// Receives the final cell state `[B, H]` (as f64) when the caller carries state across batches.
    final_c: Option<FinalState>,
    saved: Mutex<Option<Saved<T>>>,
}

/// Where a kernel leaves a final state for the caller to read after the forward.
pub type FinalState = Arc<Mutex<Option<Vec<f64>>>>;

impl<T: Real> LstmSeq<T> {
    fn forward(&self, xp: &[T], w: &[T], s0: &[T]) -> (Vec<T>, Saved<T>) {
        let (b, t_len, h) = (self.batch, self.seq_len, self.hidden);
        let g4 = 4 * h;
        // Gate activations, time-major (what the backward reads); each step's recurrent GEMM goes to `hp`.
        let mut gates = vec![T::zero(); t_len * b * g4];
        let mut hp = vec![T::zero(); b * g4];
        let (w_hh, b_hh) = if self.hh_bias { split_weights(w, h) } else { (w.to_vec(), vec![T::zero(); g4]) };
        // W_hh^T [H, 4H] row-major, once per call (see `transpose`).
        let wt = transpose(&w_hh, g4, h);
        let mut hs = vec![T::zero(); (t_len + 1) * b * h];
        let mut cs = vec![T::zero(); (t_len + 1) * b * h];
        let mut tcs = vec![T::zero(); t_len * b * h];
        for bi in 0..b {
            hs[bi * h..(bi + 1) * h].copy_from_slice(&s0[bi * 2 * h..bi * 2 * h + h]);
            cs[bi * h..(bi + 1) * h].copy_from_slice(&s0[bi * 2 * h + h..(bi + 1) * 2 * h]);
        }
        for t in 0..t_len {
            let (h_done, h_rest) = hs.split_at_mut((t + 1) * b * h);
            let h_prev = &h_done[t * b * h..];
            let g = &mut gates[t * b * g4..(t + 1) * b * g4];
            // hp = h_{t-1} [B, H] x W_hh^T [H, 4H]; gates_t = xp_t + hp.
            matmul(b, g4, h, &mut hp, g4, false, Mat::rows(h_prev, h), Mat::rows(&wt, g4));
            for bi in 0..b {
                let x = &xp[(bi * t_len + t) * g4..(bi * t_len + t + 1) * g4];
                let dst = &mut g[bi * g4..(bi + 1) * g4];
                for (((d, &a), &c), &bias) in dst.iter_mut().zip(x).zip(&hp[bi * g4..(bi + 1) * g4]).zip(&b_hh) {
                    *d = a + (c + bias);
                }
            }
            let (c_done, c_rest) = cs.split_at_mut((t + 1) * b * h);
            let c_prev = &c_done[t * b * h..];
            let c_next = &mut c_rest[..b * h];
            let h_next = &mut h_rest[..b * h];
            let tc = &mut tcs[t * b * h..(t + 1) * b * h];
            for bi in 0..b {
                let row = &mut g[bi * g4..(bi + 1) * g4];
                // Activations over contiguous runs (i and f together, then g, then o), so they vectorise.
                T::sigmoid_slice(&mut row[..2 * h]);
                T::tanh_slice(&mut row[2 * h..3 * h]);
                T::sigmoid_slice(&mut row[3 * h..]);
                let (i, rest) = row.split_at(h);
                let (f, rest) = rest.split_at(h);
                let (gg, o) = rest.split_at(h);
                let cp = &c_prev[bi * h..(bi + 1) * h];
                let cn = &mut c_next[bi * h..(bi + 1) * h];
                for j in 0..h {
                    cn[j] = f[j] * cp[j] + i[j] * gg[j];
                }
                let tcr = &mut tc[bi * h..(bi + 1) * h];
                tcr.copy_from_slice(cn);
                T::tanh_slice(tcr);
                let hn = &mut h_next[bi * h..(bi + 1) * h];
                if !self.lengths.live(bi, t) {
                    // Past this row's length: the state is carried as it was.
                    cn.copy_from_slice(cp);
                    hn.copy_from_slice(&h_prev[bi * h..(bi + 1) * h]);
                    continue;
                }
                for j in 0..h {
                    hn[j] = o[j] * tcr[j];
                }
            }
        }
        let out = self.lengths.outputs(&hs, b, t_len, h);
        (out, Saved { gates, c: cs, h: hs, tc: tcs })
    }

    /// Returns (d xp `[B, T, 4H]`, d w_hh `[4H, H]`, d s0 `[B, 2H]`).
    fn backward(&self, s: &Saved<T>, w: &[T], dout: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (b, t_len, h) = (self.batch, self.seq_len, self.hidden);
        let g4 = 4 * h;
        let w_hh = if self.hh_bias { split_weights(w, h).0 } else { w.to_vec() };
        let w = &w_hh[..];
        let mut dgates = vec![T::zero(); t_len * b * g4];
        let mut dh = vec![T::zero(); b * h];
        let mut dc = vec![T::zero(); b * h];
        for t in (0..t_len).rev() {
            let gates = &s.gates[t * b * g4..(t + 1) * b * g4];
            let c_prev = &s.c[t * b * h..(t + 1) * b * h];
            let tc_t = &s.tc[t * b * h..(t + 1) * b * h];
            let dg = &mut dgates[t * b * g4..(t + 1) * b * g4];
            let carry = self.lengths.carry(&dh, t, b, h);
            for bi in 0..b {
                if !self.lengths.live(bi, t) {
                    // Gates zero; dh and dc pass through unchanged (dh is added back after the GEMM).
                    continue;
                }
                let row = &gates[bi * g4..(bi + 1) * g4];
                let drow = &mut dg[bi * g4..(bi + 1) * g4];
                for j in 0..h {
                    let k = bi * h + j;
                    let (i, f, gg, o) = (row[j], row[h + j], row[2 * h + j], row[3 * h + j]);
                    let dht = dh[k] + dout[(bi * t_len + t) * h + j];
                    let tc = tc_t[k];
                    let dct = dc[k] + dht * o * (T::one() - tc * tc);
                    drow[j] = dct * gg * i * (T::one() - i);
                    drow[h + j] = dct * c_prev[k] * f * (T::one() - f);
                    drow[2 * h + j] = dct * i * (T::one() - gg * gg);
                    drow[3 * h + j] = dht * tc * o * (T::one() - o);
                    dc[k] = dct * f;
                }
            }
            // dh_{t-1} = dgates_t [B, 4H] x W_hh [4H, H]
            matmul(b, h, g4, &mut dh, h, false, Mat::rows(dg, g4), Mat::rows(w, h));
            Lengths::add_carry(&mut dh, carry, h);
        }
        // dW_hh = sum_t dgates_t^T h_{t-1}: [4H, T*B] x [T*B, H] in one GEMM.
        let mut dw = vec![T::zero(); g4 * h];
        matmul(g4, h, t_len * b, &mut dw, h, false, Mat::rows_t(&dgates, g4), Mat::rows(&s.h[..t_len * b * h], h));
        if self.hh_bias {
            // db_hh = column sums of dgates, as the last column of dw.
            let mut db = vec![T::zero(); g4];
            for row in dgates.chunks_exact(g4) {
                for (d, &v) in db.iter_mut().zip(row) {
                    *d += v;
                }
            }
            let mut full = Vec::with_capacity(g4 * (h + 1));
            for (j, row) in dw.chunks_exact(h).enumerate() {
                full.extend_from_slice(row);
                full.push(db[j]);
            }
            dw = full;
        }
        let mut dxp = vec![T::zero(); b * t_len * g4];
        for t in 0..t_len {
            for bi in 0..b {
                let src = (t * b + bi) * g4;
                dxp[(bi * t_len + t) * g4..(bi * t_len + t + 1) * g4].copy_from_slice(&dgates[src..src + g4]);
            }
        }
        let mut ds0 = vec![T::zero(); b * 2 * h];
        for bi in 0..b {
            ds0[bi * 2 * h..bi * 2 * h + h].copy_from_slice(&dh[bi * h..(bi + 1) * h]);
            ds0[bi * 2 * h + h..(bi + 1) * 2 * h].copy_from_slice(&dc[bi * h..(bi + 1) * h]);
        }
        (dxp, dw, ds0)
    }
}

impl<T: Real> CustomOp3 for LstmSeq<T> {
    fn name(&self) -> &'static str {
        "lstm-seq"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, t, h) = (self.batch, self.seq_len, self.hidden);
        if l1.dims() != [b, t, 4 * h] || l2.dims() != [4 * h, h] || l3.dims() != [b, 2 * h] {
            candle_core::bail!("lstm kernel: unexpected shapes {:?} {:?} {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        let (out, saved) = self.forward(slice(s1, l1, "xp")?, slice(s2, l2, "w_hh")?, slice(s3, l3, "s0")?);
        if let Some(sink) = &self.final_c {
            let last = &saved.c[t * b * h..];
            let v = last.iter().map(|x| <T as num_traits::ToPrimitive>::to_f64(x).unwrap_or(f64::NAN)).collect();
            *sink.lock().map_err(|_| candle_core::Error::Msg("lstm kernel: poisoned".into()))? = Some(v);
        }
        if self.keep {
            *self.saved.lock().map_err(|_| candle_core::Error::Msg("lstm kernel: poisoned".into()))? = Some(saved);
        }
        Ok((T::to_cpu_storage_owned(out), Shape::from((b, t, h))))
    }

    fn bwd(
        &self,
        _xp: &Tensor,
        w_hh: &Tensor,
        _s0: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = self.saved.lock().map_err(|_| candle_core::Error::Msg("lstm kernel: poisoned".into()))?;
        let Some(saved) = guard.as_ref() else { candle_core::bail!("lstm kernel: backward without saved activations") };
        let w = w_hh.flatten_all()?.to_vec1::<T>()?;
        let dout = grad.flatten_all()?.to_vec1::<T>()?;
        let (dxp, dw, ds0) = self.backward(saved, &w, &dout);
        let (b, t, h) = (self.batch, self.seq_len, self.hidden);
        let dev = grad.device();
        Ok((
            Some(Tensor::from_vec(dxp, (b, t, 4 * h), dev)?),
            Some(Tensor::from_vec(dw, (4 * h, h), dev)?),
            Some(Tensor::from_vec(ds0, (b, 2 * h), dev)?),
        ))
    }
}

impl<T: Real> LstmSeq<T> {
    /// The recurrence alone, for [`super::projected`] (which keeps what the backward needs itself).
    pub(crate) fn inner(batch: usize, seq_len: usize, hidden: usize, lengths: Lengths) -> Self {
        LstmSeq { batch, seq_len, hidden, keep: false, lengths, hh_bias: true, final_c: None, saved: Mutex::new(None) }
    }
}

impl<T: Real> Inner<T> for LstmSeq<T> {
    type Saved = Saved<T>;
    const GATES: usize = 4;
    const STATES: usize = 2;
    const HH_BIAS_INSIDE: bool = true;

    fn run(&self, xp: &[T], w: &[T], s0: &[T]) -> (Vec<T>, Saved<T>) {
        self.forward(xp, w, s0)
    }

    fn grad(&self, s: &Saved<T>, w: &[T], dout: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        self.backward(s, w, dout)
    }

    fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        LstmSeq {
            batch: rows.len(),
            seq_len: self.seq_len,
            hidden: self.hidden,
            keep: false,
            lengths: self.lengths.rows(rows),
            hh_bias: self.hh_bias,
            final_c: None,
            saved: Mutex::new(None),
        }
    }

    fn final_cell(&self, s: &Saved<T>) -> Option<Vec<f64>> {
        let last = &s.c[self.seq_len * self.batch * self.hidden..];
        Some(last.iter().map(|x| <T as num_traits::ToPrimitive>::to_f64(x).unwrap_or(f64::NAN)).collect())
    }
}

/// Runs the fused recurrence on CPU tensors (see the module doc for shapes), over each row's first
/// `lengths[b]` steps when given.
pub fn lstm_seq(
    xp: &Tensor,
    w_hh: &Tensor,
    s0: &Tensor,
    lengths: Option<Arc<Vec<usize>>>,
    final_c: Option<FinalState>,
) -> Result<Tensor> {
    let (b, t, g4) = xp.dims3()?;
    let h = g4 / 4;
    let keep = xp.track_op() || w_hh.track_op() || s0.track_op();
    let lengths = Lengths::new(lengths, b, t)?;
    let (xp, w_hh, s0) = (xp.contiguous()?, w_hh.contiguous()?, s0.contiguous()?);
    match xp.dtype() {
        candle_core::DType::F64 => {
            let op = LstmSeq::<f64> {
                batch: b,
                seq_len: t,
                hidden: h,
                keep,
                lengths,
                hh_bias: false,
                final_c,
                saved: Mutex::new(None),
            };
            xp.apply_op3(&w_hh, &s0, op)
        }
        _ => {
            let op = LstmSeq::<f32> {
                batch: b,
                seq_len: t,
                hidden: h,
                keep,
                lengths,
                hh_bias: false,
                final_c,
                saved: Mutex::new(None),
            };
            xp.apply_op3(&w_hh, &s0, op)
        }
    }
}
