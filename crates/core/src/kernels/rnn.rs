//! The Elman RNN recurrence as one op, forward and backward: `h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)`
//! with `act` tanh or relu, as `nn.RNN`.
//!
//! Inputs: `xp [batch, seq_len, H]`, the input projection of every step with both biases added (one GEMM
//! outside, under autograd); `w_hh [H, H]`; `h0 [batch, H]`. Output: `h` for every step, `[batch, seq_len, H]`.
//! Forward, per step: one GEMM into the step's slice of a time-major buffer, then the activation in place.
//! Backward, per step: the activation's derivative fused with the incoming gradient, and one GEMM
//! `dh = dpre W_hh`; after the loop `dW_hh` as one GEMM over all steps.
//!
//! With `lengths`, row b runs its first `lengths[b]` steps only (see [`Lengths`]).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::{Inner, Lengths, Mat, Real, matmul, slice, transpose};

pub struct RnnSeq<T: Real> {
    batch: usize,
    seq_len: usize,
    hidden: usize,
    relu: bool,
    keep: bool,
    lengths: Lengths,
    /// `h` for steps 0..=T, time-major `[T+1, B, H]` (all the backward needs).
    saved: Mutex<Option<Vec<T>>>,
}

impl<T: Real> RnnSeq<T> {
    fn forward(&self, xp: &[T], w: &[T], h0: &[T]) -> (Vec<T>, Vec<T>) {
        let (b, t_len, h) = (self.batch, self.seq_len, self.hidden);
        // W_hh^T row-major, once per call (see `transpose`).
        let wt = transpose(w, h, h);
        let mut hs = vec![T::zero(); (t_len + 1) * b * h];
        hs[..b * h].copy_from_slice(h0);
        for t in 0..t_len {
            let (done, rest) = hs.split_at_mut((t + 1) * b * h);
            let h_prev = &done[t * b * h..];
            let next = &mut rest[..b * h];
            for bi in 0..b {
                next[bi * h..(bi + 1) * h].copy_from_slice(&xp[(bi * t_len + t) * h..(bi * t_len + t + 1) * h]);
            }
            // next += h_{t-1} [B, H] x W_hh^T [H, H]
            matmul(b, h, h, next, h, true, Mat::rows(h_prev, h), Mat::rows(&wt, h));
            if self.relu {
                for v in next.iter_mut() {
                    if *v < T::zero() {
                        *v = T::zero();
                    }
                }
            } else {
                T::tanh_slice(next);
            }
            for bi in 0..b {
                if !self.lengths.live(bi, t) {
                    next[bi * h..(bi + 1) * h].copy_from_slice(&h_prev[bi * h..(bi + 1) * h]);
                }
            }
        }
        let out = self.lengths.outputs(&hs, b, t_len, h);
        (out, hs)
    }

    /// Returns (d xp `[B, T, H]`, d w_hh `[H, H]`, d h0 `[B, H]`).
    fn backward(&self, hs: &[T], w: &[T], dout: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (b, t_len, h) = (self.batch, self.seq_len, self.hidden);
        // Gradients of the pre-activations, time-major.
        let mut dpre = vec![T::zero(); t_len * b * h];
        let mut dh = vec![T::zero(); b * h];
        for t in (0..t_len).rev() {
            let h_t = &hs[(t + 1) * b * h..(t + 2) * b * h];
            let d = &mut dpre[t * b * h..(t + 1) * b * h];
            let carry = self.lengths.carry(&dh, t, b, h);
            for bi in 0..b {
                if !self.lengths.live(bi, t) {
                    continue;
                }
                for j in 0..h {
                    let k = bi * h + j;
                    let g = dh[k] + dout[(bi * t_len + t) * h + j];
                    let y = h_t[k];
                    d[k] = if self.relu { if y > T::zero() { g } else { T::zero() } } else { g * (T::one() - y * y) };
                }
            }
            // dh_{t-1} = dpre_t [B, H] x W_hh [H, H]
            matmul(b, h, h, &mut dh, h, false, Mat::rows(d, h), Mat::rows(w, h));
            Lengths::add_carry(&mut dh, carry, h);
        }
        let mut dw = vec![T::zero(); h * h];
        matmul(h, h, t_len * b, &mut dw, h, false, Mat::rows_t(&dpre, h), Mat::rows(&hs[..t_len * b * h], h));
        let mut dxp = vec![T::zero(); b * t_len * h];
        for t in 0..t_len {
            for bi in 0..b {
                let src = (t * b + bi) * h;
                dxp[(bi * t_len + t) * h..(bi * t_len + t + 1) * h].copy_from_slice(&dpre[src..src + h]);
            }
        }
        (dxp, dw, dh)
    }
}

impl<T: Real> RnnSeq<T> {
    /// The recurrence alone, for [`super::projected`].
    pub(crate) fn inner(batch: usize, seq_len: usize, hidden: usize, relu: bool, lengths: Lengths) -> Self {
        RnnSeq { batch, seq_len, hidden, relu, keep: false, lengths, saved: Mutex::new(None) }
    }
}

impl<T: Real> Inner<T> for RnnSeq<T> {
    type Saved = Vec<T>;
    const GATES: usize = 1;
    const STATES: usize = 1;
    const HH_BIAS_INSIDE: bool = false;

    fn run(&self, xp: &[T], w: &[T], s0: &[T]) -> (Vec<T>, Vec<T>) {
        self.forward(xp, w, s0)
    }

    fn grad(&self, s: &Vec<T>, w: &[T], dout: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        self.backward(s, w, dout)
    }

    fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        RnnSeq {
            batch: rows.len(),
            seq_len: self.seq_len,
            hidden: self.hidden,
            relu: self.relu,
            keep: false,
            lengths: self.lengths.rows(rows),
            saved: Mutex::new(None),
        }
    }
}

impl<T: Real> CustomOp3 for RnnSeq<T> {
    fn name(&self) -> &'static str {
        "rnn-seq"
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
        if l1.dims() != [b, t, h] || l2.dims() != [h, h] || l3.dims() != [b, h] {
            candle_core::bail!("rnn kernel: unexpected shapes {:?} {:?} {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        let (out, hs) = self.forward(slice(s1, l1, "xp")?, slice(s2, l2, "w_hh")?, slice(s3, l3, "h0")?);
        if self.keep {
            *self.saved.lock().map_err(|_| candle_core::Error::Msg("rnn kernel: poisoned".into()))? = Some(hs);
        }
        Ok((T::to_cpu_storage_owned(out), Shape::from((b, t, h))))
    }

    fn bwd(
        &self,
        _xp: &Tensor,
        w_hh: &Tensor,
        _h0: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = self.saved.lock().map_err(|_| candle_core::Error::Msg("rnn kernel: poisoned".into()))?;
        let Some(hs) = guard.as_ref() else { candle_core::bail!("rnn kernel: backward without saved activations") };
        let w = w_hh.flatten_all()?.to_vec1::<T>()?;
        let dout = grad.flatten_all()?.to_vec1::<T>()?;
        let (dxp, dw, dh0) = self.backward(hs, &w, &dout);
        let (b, t, h) = (self.batch, self.seq_len, self.hidden);
        let dev = grad.device();
        Ok((
            Some(Tensor::from_vec(dxp, (b, t, h), dev)?),
            Some(Tensor::from_vec(dw, (h, h), dev)?),
            Some(Tensor::from_vec(dh0, (b, h), dev)?),
        ))
    }
}

/// Runs the fused RNN recurrence on CPU tensors (see the module doc for shapes), over each row's first
/// `lengths[b]` steps when given.
pub fn rnn_seq(
    xp: &Tensor,
    w_hh: &Tensor,
    h0: &Tensor,
    relu: bool,
    lengths: Option<Arc<Vec<usize>>>,
) -> Result<Tensor> {
    let (b, t, h) = xp.dims3()?;
    let keep = xp.track_op() || w_hh.track_op() || h0.track_op();
    let lengths = Lengths::new(lengths, b, t)?;
    let (xp, w_hh, h0) = (xp.contiguous()?, w_hh.contiguous()?, h0.contiguous()?);
    match xp.dtype() {
        candle_core::DType::F64 => {
            let op = RnnSeq::<f64> { batch: b, seq_len: t, hidden: h, relu, keep, lengths, saved: Mutex::new(None) };
            xp.apply_op3(&w_hh, &h0, op)
        }
        _ => {
            let op = RnnSeq::<f32> { batch: b, seq_len: t, hidden: h, relu, keep, lengths, saved: Mutex::new(None) };
            xp.apply_op3(&w_hh, &h0, op)
        }
    }
}
