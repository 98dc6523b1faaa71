//! The GRU recurrence over one slice of the batch, forward and backward, for [`super::projected`].
//!
//! Input: `xp [batch, seq_len, 3H]`, the input projection of every step with `b_ih` added; `W_hh` and `b_hh`
//! ([`Hidden`]; the bias of the `n` gate sits inside `r * (...)`, so it cannot join `xp`); `h0 [batch, H]`.
//! Output: `h` for every step. Gate order r, z, n as in PyTorch:
//!
//! `r = σ(x_r + h W_hr^T + b_hr)`, `z = σ(x_z + h W_hz^T + b_hz)`, `n = tanh(x_n + r * (h W_hn^T + b_hn))`,
//! `h' = (1 - z) * n + z * h`.
//!
//! Forward, per step: one GEMM `hp = h W_hh^T`, then one fused pass for the gates and `h`. Backward, per step:
//! one fused pass for the gate gradients and one GEMM `dh = dhp W_hh`; after the loop, `dW_hh` for all steps
//! as one GEMM `dhp^T [3H, T*B] x h_prev [T*B, H]`, and `db_hh` as a column sum.
//!
//! With `lengths`, row b runs its first `lengths[b]` steps only (see [`Lengths`]).

use super::{Hidden, Inner, Lengths, Mat, Real, blocks, blocks_mut, column_sums, matmul, simd_fn};

/// What the backward needs from the forward, time-major; without a backward, the latest step only.
pub struct Saved<T> {
    /// Gate activations `[T, B, 3H]`: r, z, n.
    gates: Vec<T>,
    /// `h W_hn^T + b_hn` per step, `[T, B, H]` (the part `r` multiplies).
    hn: Vec<T>,
    /// `h` for steps 0..=T (`h[0]` is the initial state), `[T+1, B, H]`.
    h: Vec<T>,
}

pub(crate) struct GruSeq {
    batch: usize,
    seq_len: usize,
    hidden: usize,
    lengths: Lengths,
    /// The flag of the call that built the op: the time loops stop early once it is set (the op then fails).
    cancel: crate::cancel::Cancel,
}

impl GruSeq {
    pub(crate) fn new(batch: usize, seq_len: usize, hidden: usize, lengths: Lengths) -> Self {
        GruSeq { batch, seq_len, hidden, lengths, cancel: crate::cancel::current() }
    }

    fn forward<T: Real>(&self, xp: &[T], w: &Hidden<T>, h0: &[T], out: &mut [T], keep: bool) -> Saved<T> {
        let (b, t_len, h) = (self.batch, self.seq_len, self.hidden);
        let g3 = 3 * h;
        let steps = if keep { t_len } else { 1 };
        let at = |t: usize| if keep { t } else { 0 };
        let state = |t: usize| if keep { t } else { t % 2 };
        let mut gates = vec![T::zero(); steps * b * g3];
        let mut hns = vec![T::zero(); steps * b * h];
        let mut hs = vec![T::zero(); (if keep { t_len + 1 } else { 2 }) * b * h];
        hs[..b * h].copy_from_slice(h0);
        let mut hp = vec![T::zero(); b * g3];
        for t in 0..t_len {
            if self.cancel.is_set() {
                break;
            }
            let (prev, next) = (state(t) * b * h, state(t + 1) * b * h);
            // hp = h_{t-1} [B, H] x W_hh^T [H, 3H]
            w.times_t(b, &hs[prev..prev + b * h], &mut hp, false);
            for bi in 0..b {
                let row = (bi * t_len + t) * h;
                let o = &mut out[row..row + h];
                let (p, n) = (prev + bi * h, next + bi * h);
                if !self.lengths.live(bi, t) {
                    hs.copy_within(p..p + h, n);
                    o.fill(T::zero());
                    continue;
                }
                let (h_prev, h_next) = super::lstm::pair(&mut hs, p, n, h);
                let x = &xp[(bi * t_len + t) * g3..(bi * t_len + t + 1) * g3];
                let g = &mut gates[(at(t) * b + bi) * g3..(at(t) * b + bi + 1) * g3];
                let hn = &mut hns[(at(t) * b + bi) * h..(at(t) * b + bi + 1) * h];
                cell(x, &hp[bi * g3..(bi + 1) * g3], &w.b_hh, h_prev, g, hn, h_next);
                o.copy_from_slice(h_next);
            }
        }
        Saved { gates, hn: hns, h: hs }
    }

    fn backward<T: Real>(
        &self,
        s: &Saved<T>,
        w: &Hidden<T>,
        dout: &[T],
        dxp: &mut [T],
        dh0: &mut [T],
    ) -> (Vec<T>, Vec<T>) {
        let (b, t_len, h) = (self.batch, self.seq_len, self.hidden);
        let g3 = 3 * h;
        // Gradients of hp = h W_hh^T + b_hh, time-major, for the weight GEMM after the loop.
        let mut dhp = vec![T::zero(); t_len * b * g3];
        let mut dh = vec![T::zero(); b * h];
        let mut dh_direct = vec![T::zero(); b * h];
        for t in (0..t_len).rev() {
            if self.cancel.is_set() {
                break;
            }
            let h_prev = &s.h[t * b * h..(t + 1) * b * h];
            let dhp_t = &mut dhp[t * b * g3..(t + 1) * b * g3];
            for bi in 0..b {
                let r = bi * h..(bi + 1) * h;
                if !self.lengths.live(bi, t) {
                    // No gate gradients; dh passes through unchanged.
                    dh_direct[r.clone()].copy_from_slice(&dh[r]);
                    continue;
                }
                let g = &s.gates[(t * b + bi) * g3..(t * b + bi + 1) * g3];
                let hn = &s.hn[(t * b + bi) * h..(t * b + bi + 1) * h];
                let dx = &mut dxp[(bi * t_len + t) * g3..(bi * t_len + t + 1) * g3];
                let d_out = &dout[(bi * t_len + t) * h..(bi * t_len + t + 1) * h];
                let dhr = &mut dhp_t[bi * g3..(bi + 1) * g3];
                cell_grad(g, hn, &h_prev[r.clone()], d_out, &dh[r.clone()], dx, dhr, &mut dh_direct[r]);
            }
            // dh_{t-1} = dht * z + dhp_t [B, 3H] x W_hh [3H, H]
            dh.copy_from_slice(&dh_direct);
            w.times(b, dhp_t, g3, &mut dh, true);
        }
        // dW_hh = sum_t dhp_t^T h_{t-1}: [3H, T*B] x [T*B, H] in one GEMM; db_hh = column sums of dhp.
        let mut dw = vec![T::zero(); g3 * h];
        matmul(g3, h, t_len * b, &mut dw, h, false, Mat::rows_t(&dhp, g3), Mat::rows(&s.h[..t_len * b * h], h));
        dh0.copy_from_slice(&dh);
        (dw, column_sums(&dhp, g3))
    }
}

simd_fn! {
    /// One row's step: `r`, `z`, `hn = hp_n + b_hn`, `n` and `h`, in one pass.
    fn cell<T: Real>(x: &[T], hp: &[T], b_hh: &[T], h_prev: &[T], gates: &mut [T], hn: &mut [T], h_out: &mut [T]) {
        let n = hn.len();
        blocks!(x, n => xr, xz, xn);
        blocks!(hp, n => pr, pz, pn);
        blocks!(b_hh, n => br, bz, bn);
        blocks_mut!(gates, n => gr, gz, gn);
        let (h_prev, hn, h_out) = (&h_prev[..n], &mut hn[..n], &mut h_out[..n]);
        for j in 0..n {
            let r = (xr[j] + (pr[j] + br[j])).sigmoid();
            let z = (xz[j] + (pz[j] + bz[j])).sigmoid();
            let hnj = pn[j] + bn[j];
            let nj = (xn[j] + r * hnj).tanh_();
            gr[j] = r;
            gz[j] = z;
            gn[j] = nj;
            hn[j] = hnj;
            h_out[j] = (T::one() - z) * nj + z * h_prev[j];
        }
    }
}

simd_fn! {
    /// One row's gate gradients: `dx` (= d xp), `dhp` (= d of `h W_hh^T + b_hh`) and the direct part of
    /// `dh_{t-1}`.
    fn cell_grad<T: Real>(
        gates: &[T],
        hn: &[T],
        h_prev: &[T],
        dout: &[T],
        dh: &[T],
        dx: &mut [T],
        dhp: &mut [T],
        direct: &mut [T],
    ) {
        let n = hn.len();
        blocks!(gates, n => gr, gz, gn);
        let (hn, h_prev, dout, dh, direct) = (&hn[..n], &h_prev[..n], &dout[..n], &dh[..n], &mut direct[..n]);
        blocks_mut!(dx, n => dxr, dxz, dxn);
        blocks_mut!(dhp, n => dpr, dpz, dpn);
        for j in 0..n {
            let (r, z, nj) = (gr[j], gz[j], gn[j]);
            let dht = dh[j] + dout[j];
            let dn = dht * (T::one() - z) * (T::one() - nj * nj);
            let dz = dht * (h_prev[j] - nj) * z * (T::one() - z);
            let dr = dn * hn[j] * r * (T::one() - r);
            dxr[j] = dr;
            dxz[j] = dz;
            dxn[j] = dn;
            dpr[j] = dr;
            dpz[j] = dz;
            dpn[j] = dn * r;
            direct[j] = dht * z;
        }
    }
}

impl<T: Real> Inner<T> for GruSeq {
    type Saved = Saved<T>;
    const GATES: usize = 3;
    const STATES: usize = 1;
    const HH_BIAS_INSIDE: bool = true;

    fn run(&self, xp: &[T], w: &Hidden<T>, s0: &[T], out: &mut [T], keep: bool) -> Saved<T> {
        self.forward(xp, w, s0, out, keep)
    }

    fn grad(&self, s: &Saved<T>, w: &Hidden<T>, dout: &[T], dxp: &mut [T], ds0: &mut [T]) -> (Vec<T>, Vec<T>) {
        self.backward(s, w, dout, dxp, ds0)
    }

    fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        {
            let mut r = GruSeq::new(rows.len(), self.seq_len, self.hidden, self.lengths.rows(rows));
            r.cancel = self.cancel.clone();
            r
        }
    }
}
