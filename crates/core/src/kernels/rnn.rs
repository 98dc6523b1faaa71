//! The Elman RNN recurrence over one slice of the batch, forward and backward, for [`super::projected`]:
//! `h' = act(x W_ih^T + b_ih + b_hh + h W_hh^T)` with `act` tanh or relu, as `nn.RNN`.
//!
//! Input: `xp [batch, seq_len, H]`, the input projection of every step with both biases added; `W_hh`
//! ([`Hidden`]); `h0 [batch, H]`. Output: `h` for every step. Forward, per step: `xp_t` copied into the
//! step's slice of a time-major buffer, one accumulating GEMM, then the activation in place. Backward, per
//! step: the activation's derivative fused with the incoming gradient, and one GEMM `dh = dpre W_hh`; after
//! the loop `dW_hh` as one GEMM over all steps.
//!
//! With `lengths`, row b runs its first `lengths[b]` steps only (see [`Lengths`]).

use super::{Hidden, Inner, Lengths, Mat, Real, matmul, simd_fn};

pub(crate) struct RnnSeq {
    batch: usize,
    seq_len: usize,
    hidden: usize,
    relu: bool,
    lengths: Lengths,
    /// The flag of the call that built the op: the time loops stop early once it is set (the op then fails).
    cancel: crate::cancel::Cancel,
}

impl RnnSeq {
    pub(crate) fn new(batch: usize, seq_len: usize, hidden: usize, relu: bool, lengths: Lengths) -> Self {
        RnnSeq { batch, seq_len, hidden, relu, lengths, cancel: crate::cancel::current() }
    }

    /// Returns `h` for steps 0..=T, time-major `[T+1, B, H]` (all the backward needs), or the latest two steps'.
    fn forward<T: Real>(&self, xp: &[T], w: &Hidden<T>, h0: &[T], out: &mut [T], keep: bool) -> Vec<T> {
        let (b, t_len, h) = (self.batch, self.seq_len, self.hidden);
        let state = |t: usize| if keep { t } else { t % 2 };
        let mut hs = vec![T::zero(); (if keep { t_len + 1 } else { 2 }) * b * h];
        hs[..b * h].copy_from_slice(h0);
        for t in 0..t_len {
            if self.cancel.is_set() {
                break;
            }
            let (p, n) = (state(t) * b * h, state(t + 1) * b * h);
            let (h_prev, next) = super::lstm::pair(&mut hs, p, n, b * h);
            for bi in 0..b {
                next[bi * h..(bi + 1) * h].copy_from_slice(&xp[(bi * t_len + t) * h..(bi * t_len + t + 1) * h]);
            }
            // next += h_{t-1} [B, H] x W_hh^T [H, H]
            w.times_t(b, h_prev, next, true);
            activate(next, self.relu);
            for bi in 0..b {
                let r = bi * h..(bi + 1) * h;
                let o = &mut out[(bi * t_len + t) * h..(bi * t_len + t + 1) * h];
                if self.lengths.live(bi, t) {
                    o.copy_from_slice(&next[r]);
                } else {
                    next[r.clone()].copy_from_slice(&h_prev[r]);
                    o.fill(T::zero());
                }
            }
        }
        hs
    }

    fn backward<T: Real>(&self, hs: &[T], w: &Hidden<T>, dout: &[T], dxp: &mut [T], dh0: &mut [T]) -> Vec<T> {
        let (b, t_len, h) = (self.batch, self.seq_len, self.hidden);
        // Gradients of the pre-activations, time-major.
        let mut dpre = vec![T::zero(); t_len * b * h];
        let mut dh = vec![T::zero(); b * h];
        for t in (0..t_len).rev() {
            if self.cancel.is_set() {
                break;
            }
            let h_t = &hs[(t + 1) * b * h..(t + 2) * b * h];
            let d = &mut dpre[t * b * h..(t + 1) * b * h];
            let carry = self.lengths.carry(&dh, t, b, h);
            for bi in 0..b {
                if !self.lengths.live(bi, t) {
                    continue;
                }
                let r = bi * h..(bi + 1) * h;
                let g = &dout[(bi * t_len + t) * h..(bi * t_len + t + 1) * h];
                activate_grad(&dh[r.clone()], g, &h_t[r.clone()], &mut d[r], self.relu);
            }
            // dh_{t-1} = dpre_t [B, H] x W_hh [H, H]
            w.times(b, d, h, &mut dh, false);
            Lengths::add_carry(&mut dh, carry, h);
        }
        let mut dw = vec![T::zero(); h * h];
        matmul(h, h, t_len * b, &mut dw, h, false, Mat::rows_t(&dpre, h), Mat::rows(&hs[..t_len * b * h], h));
        for t in 0..t_len {
            if self.cancel.is_set() {
                break;
            }
            for bi in 0..b {
                let src = (t * b + bi) * h;
                dxp[(bi * t_len + t) * h..(bi * t_len + t + 1) * h].copy_from_slice(&dpre[src..src + h]);
            }
        }
        dh0.copy_from_slice(&dh);
        dw
    }
}

simd_fn! {
    /// `v = act(v)` in place.
    fn activate<T: Real>(v: &mut [T], relu: bool) {
        if relu {
            for x in v.iter_mut() {
                if *x < T::zero() {
                    *x = T::zero();
                }
            }
        } else {
            for x in v.iter_mut() {
                *x = x.tanh_();
            }
        }
    }
}

simd_fn! {
    /// The gradient of one row's pre-activation: `(dh + dout) act'(y)`, from the activation's output `y`.
    fn activate_grad<T: Real>(dh: &[T], dout: &[T], y: &[T], d: &mut [T], relu: bool) {
        let n = d.len();
        let (dh, dout, y) = (&dh[..n], &dout[..n], &y[..n]);
        for j in 0..n {
            let g = dh[j] + dout[j];
            d[j] = if relu {
                if y[j] > T::zero() { g } else { T::zero() }
            } else {
                g * (T::one() - y[j] * y[j])
            };
        }
    }
}

impl<T: Real> Inner<T> for RnnSeq {
    type Saved = Vec<T>;
    const GATES: usize = 1;
    const STATES: usize = 1;
    const HH_BIAS_INSIDE: bool = false;

    fn run(&self, xp: &[T], w: &Hidden<T>, s0: &[T], out: &mut [T], keep: bool) -> Vec<T> {
        self.forward(xp, w, s0, out, keep)
    }

    fn grad(&self, s: &Vec<T>, w: &Hidden<T>, dout: &[T], dxp: &mut [T], ds0: &mut [T]) -> (Vec<T>, Vec<T>) {
        (self.backward(s, w, dout, dxp, ds0), Vec::new())
    }

    fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        {
            let mut r = RnnSeq::new(rows.len(), self.seq_len, self.hidden, self.relu, self.lengths.rows(rows));
            r.cancel = self.cancel.clone();
            r
        }
    }
}
