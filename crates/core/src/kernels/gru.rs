//! The GRU recurrence as one op, forward and backward.
//!
//! Inputs: `xp [batch, seq_len, 3H]`, the input projection of every step with `b_ih` added (one GEMM outside,
//! under autograd); `w [3H, H + 1]`, the recurrent weights `W_hh` with `b_hh` as an extra last column (the
//! bias of the `n` gate sits inside `r * (...)`, so it cannot join `xp`); `h0 [batch, H]`. Output: `h` for
//! every step, `[batch, seq_len, H]`. Gate order r, z, n as in PyTorch:
//!
//! `r = σ(x_r + h W_hr^T + b_hr)`, `z = σ(x_z + h W_hz^T + b_hz)`, `n = tanh(x_n + r * (h W_hn^T + b_hn))`,
//! `h' = (1 - z) * n + z * h`.
//!
//! Forward, per step: one GEMM `hp = h W_hh^T` into a buffer, then one fused pass for the gates and `h`.
//! Backward, per step: one fused pass for the gate gradients and one GEMM `dh = dhp W_hh`; after the loop,
//! `dW_hh` for all steps as one GEMM `dhp^T [3H, T*B] x h_prev [T*B, H]`, and `db_hh` as a column sum.
//!
//! With `lengths`, row b runs its first `lengths[b]` steps only (see [`Lengths`]).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::{Inner, Lengths, Mat, Real, matmul, slice, transpose};

/// What the backward needs from the forward, time-major.
pub struct Saved<T> {
    /// Gate activations `[T, B, 3H]`: r, z, n.
    gates: Vec<T>,
    /// `h W_hn^T + b_hn` per step, `[T, B, H]` (the part `r` multiplies).
    hn: Vec<T>,
    /// `h` for steps 0..=T (`h[0]` is the initial state), `[T+1, B, H]`.
    h: Vec<T>,
}

pub struct GruSeq<T: Real> {
    batch: usize,
    seq_len: usize,
    hidden: usize,
    /// Keep activations for a backward (only when the inputs are tracked by autograd).
    keep: bool,
    lengths: Lengths,
    saved: Mutex<Option<Saved<T>>>,
}

impl<T: Real> GruSeq<T> {
    fn forward(&self, xp: &[T], w: &[T], h0: &[T]) -> (Vec<T>, Saved<T>) {
        let (b, t_len, h) = (self.batch, self.seq_len, self.hidden);
        let g3 = 3 * h;
        let (w_hh, b_hh) = split_weights(w, h);
        // W_hh^T [H, 3H] row-major, once per call (see `transpose`).
        let wt = transpose(&w_hh, g3, h);
        let mut gates = vec![T::zero(); t_len * b * g3];
        let mut hns = vec![T::zero(); t_len * b * h];
        let mut hs = vec![T::zero(); (t_len + 1) * b * h];
        hs[..b * h].copy_from_slice(h0);
        let mut hp = vec![T::zero(); b * g3];
        for t in 0..t_len {
            let (h_done, h_rest) = hs.split_at_mut((t + 1) * b * h);
            let h_prev = &h_done[t * b * h..];
            // hp = h_{t-1} [B, H] x W_hh^T [H, 3H], then + b_hh per row.
            matmul(b, g3, h, &mut hp, g3, false, Mat::rows(h_prev, h), Mat::rows(&wt, g3));
            let h_next = &mut h_rest[..b * h];
            for bi in 0..b {
                let x = &xp[(bi * t_len + t) * g3..(bi * t_len + t + 1) * g3];
                let hrow = &mut hp[bi * g3..(bi + 1) * g3];
                for j in 0..g3 {
                    hrow[j] += b_hh[j];
                }
                let g = &mut gates[(t * b + bi) * g3..(t * b + bi + 1) * g3];
                for j in 0..2 * h {
                    g[j] = x[j] + hrow[j];
                }
                T::sigmoid_slice(&mut g[..2 * h]);
                let hn = &mut hns[(t * b + bi) * h..(t * b + bi + 1) * h];
                hn.copy_from_slice(&hrow[2 * h..]);
                for j in 0..h {
                    g[2 * h + j] = x[2 * h + j] + g[j] * hn[j];
                }
                T::tanh_slice(&mut g[2 * h..]);
                let hp_row = &h_prev[bi * h..(bi + 1) * h];
                let out = &mut h_next[bi * h..(bi + 1) * h];
                if !self.lengths.live(bi, t) {
                    out.copy_from_slice(hp_row);
                    continue;
                }
                for j in 0..h {
                    let (z, n) = (g[h + j], g[2 * h + j]);
                    out[j] = (T::one() - z) * n + z * hp_row[j];
                }
            }
        }
        let out = self.lengths.outputs(&hs, b, t_len, h);
        (out, Saved { gates, hn: hns, h: hs })
    }

    /// Returns (d xp `[B, T, 3H]`, d w `[3H, H + 1]`, d h0 `[B, H]`).
    fn backward(&self, s: &Saved<T>, w: &[T], dout: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (b, t_len, h) = (self.batch, self.seq_len, self.hidden);
        let g3 = 3 * h;
        let (w_hh, _) = split_weights(w, h);
        let mut dxp = vec![T::zero(); b * t_len * g3];
        // Gradients of hp = h W_hh^T + b_hh, time-major, for the weight GEMM after the loop.
        let mut dhp = vec![T::zero(); t_len * b * g3];
        let mut dh = vec![T::zero(); b * h];
        let mut dh_direct = vec![T::zero(); b * h];
        for t in (0..t_len).rev() {
            let h_prev = &s.h[t * b * h..(t + 1) * b * h];
            let dhp_t = &mut dhp[t * b * g3..(t + 1) * b * g3];
            for bi in 0..b {
                if !self.lengths.live(bi, t) {
                    // No gate gradients; dh passes through unchanged.
                    dh_direct[bi * h..(bi + 1) * h].copy_from_slice(&dh[bi * h..(bi + 1) * h]);
                    dhp_t[bi * g3..(bi + 1) * g3].fill(T::zero());
                    continue;
                }
                let g = &s.gates[(t * b + bi) * g3..(t * b + bi + 1) * g3];
                let hn = &s.hn[(t * b + bi) * h..(t * b + bi + 1) * h];
                let dx = &mut dxp[(bi * t_len + t) * g3..(bi * t_len + t + 1) * g3];
                let dhr = &mut dhp_t[bi * g3..(bi + 1) * g3];
                for j in 0..h {
                    let k = bi * h + j;
                    let (r, z, n) = (g[j], g[h + j], g[2 * h + j]);
                    let dht = dh[k] + dout[(bi * t_len + t) * h + j];
                    let dn = dht * (T::one() - z) * (T::one() - n * n);
                    let dz = dht * (h_prev[k] - n) * z * (T::one() - z);
                    let dr = dn * hn[j] * r * (T::one() - r);
                    dx[j] = dr;
                    dx[h + j] = dz;
                    dx[2 * h + j] = dn;
                    dhr[j] = dr;
                    dhr[h + j] = dz;
                    dhr[2 * h + j] = dn * r;
                    dh_direct[k] = dht * z;
                }
            }
            // dh_{t-1} = dht * z + dhp_t [B, 3H] x W_hh [3H, H]
            dh.copy_from_slice(&dh_direct);
            matmul(b, h, g3, &mut dh, h, true, Mat::rows(dhp_t, g3), Mat::rows(&w_hh, h));
        }
        // dW_hh = sum_t dhp_t^T h_{t-1}: [3H, T*B] x [T*B, H] in one GEMM; db_hh = column sums of dhp.
        let mut dw_hh = vec![T::zero(); g3 * h];
        matmul(g3, h, t_len * b, &mut dw_hh, h, false, Mat::rows_t(&dhp, g3), Mat::rows(&s.h[..t_len * b * h], h));
        let mut db = vec![T::zero(); g3];
        for row in dhp.chunks_exact(g3) {
            for j in 0..g3 {
                db[j] += row[j];
            }
        }
        let mut dw = vec![T::zero(); g3 * (h + 1)];
        for j in 0..g3 {
            dw[j * (h + 1)..j * (h + 1) + h].copy_from_slice(&dw_hh[j * h..(j + 1) * h]);
            dw[j * (h + 1) + h] = db[j];
        }
        (dxp, dw, dh)
    }
}

impl<T: Real> GruSeq<T> {
    /// The recurrence alone, for [`super::projected`].
    pub(crate) fn inner(batch: usize, seq_len: usize, hidden: usize, lengths: Lengths) -> Self {
        GruSeq { batch, seq_len, hidden, keep: false, lengths, saved: Mutex::new(None) }
    }
}

impl<T: Real> Inner<T> for GruSeq<T> {
    type Saved = Saved<T>;
    const GATES: usize = 3;
    const STATES: usize = 1;
    const HH_BIAS_INSIDE: bool = true;

    fn run(&self, xp: &[T], w: &[T], s0: &[T]) -> (Vec<T>, Saved<T>) {
        self.forward(xp, w, s0)
    }

    fn grad(&self, s: &Saved<T>, w: &[T], dout: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        self.backward(s, w, dout)
    }

    fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        GruSeq {
            batch: rows.len(),
            seq_len: self.seq_len,
            hidden: self.hidden,
            keep: false,
            lengths: self.lengths.rows(rows),
            saved: Mutex::new(None),
        }
    }
}

/// `[3H, H + 1]` into a contiguous `W_hh [3H, H]` and `b_hh [3H]`.
pub(crate) fn split_weights<T: Real>(w: &[T], h: usize) -> (Vec<T>, Vec<T>) {
    let mut w_hh = Vec::with_capacity(3 * h * h);
    let mut b_hh = Vec::with_capacity(3 * h);
    for row in w.chunks_exact(h + 1) {
        w_hh.extend_from_slice(&row[..h]);
        b_hh.push(row[h]);
    }
    (w_hh, b_hh)
}

impl<T: Real> CustomOp3 for GruSeq<T> {
    fn name(&self) -> &'static str {
        "gru-seq"
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
        if l1.dims() != [b, t, 3 * h] || l2.dims() != [3 * h, h + 1] || l3.dims() != [b, h] {
            candle_core::bail!("gru kernel: unexpected shapes {:?} {:?} {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        let (out, saved) = self.forward(slice(s1, l1, "xp")?, slice(s2, l2, "w")?, slice(s3, l3, "h0")?);
        if self.keep {
            *self.saved.lock().map_err(|_| candle_core::Error::Msg("gru kernel: poisoned".into()))? = Some(saved);
        }
        Ok((T::to_cpu_storage_owned(out), Shape::from((b, t, h))))
    }

    fn bwd(
        &self,
        _xp: &Tensor,
        w: &Tensor,
        _h0: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = self.saved.lock().map_err(|_| candle_core::Error::Msg("gru kernel: poisoned".into()))?;
        let Some(saved) = guard.as_ref() else { candle_core::bail!("gru kernel: backward without saved activations") };
        let w = w.flatten_all()?.to_vec1::<T>()?;
        let dout = grad.flatten_all()?.to_vec1::<T>()?;
        let (dxp, dw, dh0) = self.backward(saved, &w, &dout);
        let (b, t, h) = (self.batch, self.seq_len, self.hidden);
        let dev = grad.device();
        Ok((
            Some(Tensor::from_vec(dxp, (b, t, 3 * h), dev)?),
            Some(Tensor::from_vec(dw, (3 * h, h + 1), dev)?),
            Some(Tensor::from_vec(dh0, (b, h), dev)?),
        ))
    }
}

/// Runs the fused GRU recurrence on CPU tensors (see the module doc for shapes), over each row's first
/// `lengths[b]` steps when given.
pub fn gru_seq(xp: &Tensor, w: &Tensor, h0: &Tensor, lengths: Option<Arc<Vec<usize>>>) -> Result<Tensor> {
    let (b, t, g3) = xp.dims3()?;
    let h = g3 / 3;
    let keep = xp.track_op() || w.track_op() || h0.track_op();
    let lengths = Lengths::new(lengths, b, t)?;
    let (xp, w, h0) = (xp.contiguous()?, w.contiguous()?, h0.contiguous()?);
    match xp.dtype() {
        candle_core::DType::F64 => {
            let op = GruSeq::<f64> { batch: b, seq_len: t, hidden: h, keep, lengths, saved: Mutex::new(None) };
            xp.apply_op3(&w, &h0, op)
        }
        _ => {
            let op = GruSeq::<f32> { batch: b, seq_len: t, hidden: h, keep, lengths, saved: Mutex::new(None) };
            xp.apply_op3(&w, &h0, op)
        }
    }
}
