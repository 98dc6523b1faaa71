//! Scaled dot-product attention as one op, `O = softmax(s Q K^T + mask) V` with `s = 1 / sqrt(head_dim)`,
//! for every batch row and head, forward and backward.
//!
//! Inputs `q [B, Tq, H*d]`, `k` and `v` `[B, Tk, H*d]`, with the heads side by side in the last axis as the
//! input projection leaves them, so no head transpose is ever copied. Each may be a view with a row stride, such
//! as a third of a fused `qkv` projection. Output `[B, Tq, H*d]`, in the layout the output projection reads.
//!
//! Both masks allow each query a prefix of the keys, so they are loop bounds rather than a tensor:
//! - key padding (`lengths`) allows row `b` its first `lengths[b]` keys;
//! - the causal mask allows query `i` the keys up to `i + Tk - Tq`. The queries are the last `Tq` positions,
//!   which is also what decoding with a key/value cache needs.
//!
//! A query with no allowed key gets zeros (PyTorch gives NaN).
//!
//! Backward, with the probabilities `P` kept from the forward: `dV = P^T dO`, `dP = dO V^T`,
//! `dS = P * (dP - rowsum(P * dP))`, `dQ = s dS K`, `dK = s dS^T Q`.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};

use super::{Mat, Real, dot_lanes, matmul, max_lanes, simd_fn, sum_lanes, with_host};

/// The keys each query may see.
#[derive(Debug, Clone, Default)]
pub struct Mask {
    /// Each batch row's number of real keys (the rest is padding).
    pub lengths: Option<Arc<Vec<usize>>>,
    pub causal: bool,
}

impl Mask {
    /// How many keys (a prefix) query `i` of row `b` may attend to.
    #[inline]
    pub fn allowed(&self, b: usize, i: usize, q_len: usize, k_len: usize) -> usize {
        let mut n = k_len;
        if let Some(l) = &self.lengths {
            n = n.min(l[b]);
        }
        if self.causal {
            n = n.min(i + k_len - q_len + 1);
        }
        n
    }

    fn check(&self, batch: usize, q_len: usize, k_len: usize) -> Result<()> {
        if let Some(l) = self.lengths.as_ref().filter(|l| l.len() != batch) {
            candle_core::bail!("attention: {} lengths for a batch of {batch}", l.len());
        }
        if self.causal && k_len < q_len {
            candle_core::bail!("attention: a causal mask needs at least as many keys ({k_len}) as queries ({q_len})");
        }
        Ok(())
    }
}

/// Where a `[B, T, D]` view's rows are: element `(b, t, j)` at `off + b * sb + t * st + j`.
#[derive(Debug, Clone, Copy)]
struct View {
    off: usize,
    sb: usize,
    st: usize,
}

fn view(l: &Layout, what: &str) -> Result<View> {
    match l.stride() {
        [sb, st, 1] => Ok(View { off: l.start_offset(), sb: *sb, st: *st }),
        s => candle_core::bail!(
            "attention: {what} must be [batch, seq, features] with unit feature stride, got strides {s:?}"
        ),
    }
}

impl View {
    /// Head `h` of row `b` as a `[T, d]` matrix.
    fn head<T>(&self, s: &[T], b: usize, h: usize, d: usize) -> Mat<T> {
        Mat { ptr: s[self.off + b * self.sb + h * d..].as_ptr(), rs: self.st as isize, cs: 1 }
    }

    /// The transpose of [`View::head`]: `[d, T]`.
    fn head_t<T>(&self, s: &[T], b: usize, h: usize, d: usize) -> Mat<T> {
        Mat { ptr: s[self.off + b * self.sb + h * d..].as_ptr(), rs: 1, cs: self.st as isize }
    }
}

simd_fn! {
    /// Softmax of `scale * row[..n]` in place; the masked tail `row[n..]` becomes zero.
    fn softmax_row<T: Real>(row: &mut [T], n: usize, scale: T) {
        let (live, dead) = row.split_at_mut(n);
        let max = max_lanes(live);
        for x in live.iter_mut() {
            *x = ((*x - max) * scale).exp_();
        }
        let inv = T::one() / sum_lanes(live);
        for x in live.iter_mut() {
            let e = *x;
            *x = e * inv;
        }
        for x in dead.iter_mut() {
            *x = T::zero();
        }
    }
}

simd_fn! {
    /// `dp = scale * p * (dp - sum(p * dp))` in place: the softmax's backward for one row.
    fn softmax_row_grad<T: Real>(p: &[T], dp: &mut [T], scale: T) {
        let n = dp.len();
        let p = &p[..n];
        let dot = dot_lanes(p, dp);
        for j in 0..n {
            dp[j] = scale * p[j] * (dp[j] - dot);
        }
    }
}

/// The probabilities of the last forward, `[B, H, Tq, Tk]`, shared with whoever asked for them.
pub type Weights<T> = Arc<Mutex<Option<Vec<T>>>>;

struct Sdpa<T: Real> {
    heads: usize,
    mask: Mask,
    keep: Weights<T>,
    keep_on: bool,
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("attention kernel: poisoned lock".into())
}

/// Runs `f(b, chunks...)` for every batch row, in parallel over rows when there are several.
fn per_row<T: Send, F>(bufs: Vec<(&mut [T], usize)>, batch: usize, f: F)
where
    F: Fn(usize, &mut [&mut [T]]) + Sync,
{
    let mut rows: Vec<Vec<&mut [T]>> = (0..batch).map(|_| Vec::with_capacity(bufs.len())).collect();
    for (buf, per) in bufs {
        for (row, chunk) in rows.iter_mut().zip(buf.chunks_mut(per.max(1))) {
            row.push(chunk);
        }
    }
    if batch == 1 || super::in_serial() {
        for (b, mut row) in rows.into_iter().enumerate() {
            f(b, &mut row);
        }
        return;
    }
    use rayon::prelude::*;
    rows.into_par_iter().enumerate().for_each(|(b, mut row)| super::serial(|| f(b, &mut row)));
}

/// Problem sizes: batch, query length, key length, model width.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    tq: usize,
    tk: usize,
    dm: usize,
}

/// Where a gradient goes: which output buffer, at which column, with which row stride.
#[derive(Debug, Clone, Copy)]
struct Place {
    buf: usize,
    col: usize,
    rs: usize,
}

impl<T: Real> Sdpa<T> {
    fn check(&self, l1: &Layout, l2: &Layout, l3: &Layout) -> Result<Dims> {
        let (batch, tq, dm) = l1.shape().dims3()?;
        let (b2, tk, dm2) = l2.shape().dims3()?;
        if b2 != batch || dm2 != dm || l3.dims() != l2.dims() || !dm.is_multiple_of(self.heads) {
            candle_core::bail!(
                "attention: q {:?}, k {:?}, v {:?} do not fit {} heads",
                l1.dims(),
                l2.dims(),
                l3.dims(),
                self.heads
            );
        }
        self.mask.check(batch, tq, tk)?;
        Ok(Dims { batch, tq, tk, dm })
    }

    fn scale(&self, dm: usize) -> T {
        T::from(1.0 / ((dm / self.heads) as f64).sqrt()).unwrap_or_else(T::one)
    }

    /// The output `[B, Tq, dm]`, keeping the probabilities when asked.
    fn forward(&self, q: (&[T], View), k: (&[T], View), v: (&[T], View), n: Dims) -> Result<Vec<T>> {
        let Dims { batch, tq, tk, dm } = n;
        let (heads, d, scale) = (self.heads, dm / self.heads, self.scale(dm));
        let mut out = vec![T::zero(); batch * tq * dm];
        let mut p = vec![T::zero(); batch * heads * tq * tk];
        per_row(vec![(&mut out, tq * dm), (&mut p, heads * tq * tk)], batch, |b, bufs| {
            let [out, p] = bufs else { return };
            for h in 0..heads {
                let ph = &mut p[h * tq * tk..(h + 1) * tq * tk];
                // Raw scores Q K^T; the scale goes inside the exponent.
                matmul(tq, tk, d, ph, tk, false, q.1.head(q.0, b, h, d), k.1.head_t(k.0, b, h, d));
                for (i, row) in ph.chunks_exact_mut(tk).enumerate() {
                    softmax_row(row, self.mask.allowed(b, i, tq, tk), scale);
                }
                matmul(tq, d, tk, &mut out[h * d..], dm, false, Mat::rows(ph, tk), v.1.head(v.0, b, h, d));
            }
        });
        if self.keep_on {
            *self.keep.lock().map_err(|_| poisoned())? = Some(p);
        }
        Ok(out)
    }

    /// Writes `dQ`, `dK`, `dV` where `places` say, in `bufs` (one chunk of `per_row` elements per batch row).
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        q: (&[T], View),
        k: (&[T], View),
        v: (&[T], View),
        dout: &[T],
        n: Dims,
        bufs: Vec<(&mut [T], usize)>,
        places: [Place; 3],
    ) -> Result<()> {
        let guard = self.keep.lock().map_err(|_| poisoned())?;
        let Some(p) = guard.as_ref() else { candle_core::bail!("attention kernel: backward without saved weights") };
        let Dims { batch, tq, tk, dm } = n;
        let (heads, d, scale) = (self.heads, dm / self.heads, self.scale(dm));
        let [pq, pk, pv] = places;
        per_row(bufs, batch, |b, bufs| {
            let mut ds = vec![T::zero(); tq * tk];
            for h in 0..heads {
                let ph = &p[(b * heads + h) * tq * tk..(b * heads + h + 1) * tq * tk];
                let dout_h = Mat { ptr: dout[b * tq * dm + h * d..].as_ptr(), rs: dm as isize, cs: 1 };
                // dV = P^T dO.
                let dv = &mut bufs[pv.buf][pv.col + h * d..];
                matmul(tk, d, tq, dv, pv.rs, false, Mat::rows_t(ph, tk), dout_h);
                // dP = dO V^T, then the softmax's backward row by row over the allowed keys.
                matmul(tq, tk, d, &mut ds, tk, false, dout_h, v.1.head_t(v.0, b, h, d));
                for (i, (p_row, ds_row)) in ph.chunks_exact(tk).zip(ds.chunks_exact_mut(tk)).enumerate() {
                    let n = self.mask.allowed(b, i, tq, tk);
                    softmax_row_grad(p_row, &mut ds_row[..n], scale);
                    ds_row[n..].fill(T::zero());
                }
                // dQ = dS K, dK = dS^T Q (the scale is already in dS).
                let dq = &mut bufs[pq.buf][pq.col + h * d..];
                matmul(tq, d, tk, dq, pq.rs, false, Mat::rows(&ds, tk), k.1.head(k.0, b, h, d));
                let dk = &mut bufs[pk.buf][pk.col + h * d..];
                matmul(tk, d, tq, dk, pk.rs, false, Mat::rows_t(&ds, tk), q.1.head(q.0, b, h, d));
            }
        });
        Ok(())
    }
}

/// The storage and layout of a CPU tensor, for reading a view in place.
fn cpu<'a, T: Real>(s: &'a candle_core::Storage, l: &Layout, what: &str) -> Result<(&'a [T], View)> {
    match s {
        candle_core::Storage::Cpu(c) => Ok((T::cpu_storage_as_slice(c)?, view(l, what)?)),
        _ => candle_core::bail!("attention kernel: expected CPU tensors"),
    }
}

impl<T: Real> CustomOp3 for Sdpa<T> {
    fn name(&self) -> &'static str {
        "scaled-dot-product-attention"
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
        let n = self.check(l1, l2, l3)?;
        let (q, k, v) = (T::cpu_storage_as_slice(s1)?, T::cpu_storage_as_slice(s2)?, T::cpu_storage_as_slice(s3)?);
        let out = self.forward((q, view(l1, "q")?), (k, view(l2, "k")?), (v, view(l3, "v")?), n)?;
        Ok((T::to_cpu_storage_owned(out), Shape::from((n.batch, n.tq, n.dm))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let ((qs, ql), (ks, kl), (vs, vl)) = (q.storage_and_layout(), k.storage_and_layout(), v.storage_and_layout());
        let n = self.check(ql, kl, vl)?;
        let Dims { batch, tq, tk, dm } = n;
        let dout = match &*gs {
            candle_core::Storage::Cpu(c) => super::slice::<T>(c, gl, "grad")?,
            _ => candle_core::bail!("attention kernel: expected CPU tensors"),
        };
        let mut dq = vec![T::zero(); batch * tq * dm];
        let mut dk = vec![T::zero(); batch * tk * dm];
        let mut dv = vec![T::zero(); batch * tk * dm];
        let places = [0, 1, 2].map(|buf| Place { buf, col: 0, rs: dm });
        self.backward(
            cpu(&qs, ql, "q")?,
            cpu(&ks, kl, "k")?,
            cpu(&vs, vl, "v")?,
            dout,
            n,
            vec![(&mut dq, tq * dm), (&mut dk, tk * dm), (&mut dv, tk * dm)],
            places,
        )?;
        let dev = grad.device();
        Ok((
            Some(Tensor::from_vec(dq, (batch, tq, dm), dev)?),
            Some(Tensor::from_vec(dk, (batch, tk, dm), dev)?),
            Some(Tensor::from_vec(dv, (batch, tk, dm), dev)?),
        ))
    }
}

/// Self-attention on the fused projection `qkv [B, T, 3 dm]` (queries, keys, values side by side): the same
/// maths as [`Sdpa`], with the gradient written straight into one `[B, T, 3 dm]` buffer. Taking three slices
/// of `qkv` instead would cost, in the backward, a zero-padded copy of each slice's gradient and two additions.
struct SelfSdpa<T: Real>(Sdpa<T>);

impl<T: Real> SelfSdpa<T> {
    fn views(&self, l: &Layout) -> Result<(Dims, [View; 3])> {
        let (batch, t, dm3) = l.shape().dims3()?;
        if !dm3.is_multiple_of(3) || !(dm3 / 3).is_multiple_of(self.0.heads) {
            candle_core::bail!("attention: qkv {:?} does not fit {} heads", l.dims(), self.0.heads);
        }
        self.0.mask.check(batch, t, t)?;
        let dm = dm3 / 3;
        let v = view(l, "qkv")?;
        let at = |i: usize| View { off: v.off + i * dm, ..v };
        Ok((Dims { batch, tq: t, tk: t, dm }, [at(0), at(1), at(2)]))
    }
}

impl<T: Real> CustomOp1 for SelfSdpa<T> {
    fn name(&self) -> &'static str {
        "self-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, [q, k, v]) = self.views(l)?;
        let all = T::cpu_storage_as_slice(s)?;
        let out = self.0.forward((all, q), (all, k), (all, v), n)?;
        Ok((T::to_cpu_storage_owned(out), Shape::from((n.batch, n.tq, n.dm))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (s, l) = qkv.storage_and_layout();
        let (n, [q, k, v]) = self.views(l)?;
        let all = match &*s {
            candle_core::Storage::Cpu(c) => T::cpu_storage_as_slice(c)?,
            _ => candle_core::bail!("attention kernel: expected CPU tensors"),
        };
        let Dims { batch, tq, dm, .. } = n;
        let mut dqkv = vec![T::zero(); batch * tq * 3 * dm];
        let places = [0, 1, 2].map(|i| Place { buf: 0, col: i * dm, rs: 3 * dm });
        with_host(grad, |dout: &[T]| {
            self.0.backward((all, q), (all, k), (all, v), dout, n, vec![(&mut dqkv, tq * 3 * dm)], places)
        })??;
        Ok(Some(Tensor::from_vec(dqkv, (batch, tq, 3 * dm), grad.device())?))
    }
}

/// Self-attention over a CPU tensor `qkv [B, T, 3 dm]` (see [`sdpa`] for the masks and `weights`).
pub fn self_attention(qkv: &Tensor, heads: usize, mask: &Mask, weights: bool) -> Result<(Tensor, Option<Tensor>)> {
    let track = qkv.track_op();
    macro_rules! run {
        ($t:ty) => {{
            let keep: Weights<$t> = Arc::new(Mutex::new(None));
            let op = SelfSdpa(Sdpa::<$t> { heads, mask: mask.clone(), keep: keep.clone(), keep_on: track || weights });
            let out = if track { qkv.apply_op1(op)? } else { qkv.apply_op1_no_bwd(&op)? };
            (out, take_weights(&keep, weights, heads, qkv.dims3()?.1, qkv.dims3()?.1, qkv)?)
        }};
    }
    Ok(match qkv.dtype() {
        candle_core::DType::F64 => run!(f64),
        _ => run!(f32),
    })
}

/// The kept probabilities as a `[B, H, Tq, Tk]` tensor, when asked for.
fn take_weights<T: Real>(
    keep: &Weights<T>,
    weights: bool,
    heads: usize,
    tq: usize,
    tk: usize,
    like: &Tensor,
) -> Result<Option<Tensor>> {
    if !weights {
        return Ok(None);
    }
    let p = keep.lock().map_err(|_| poisoned())?.clone();
    p.map(|p| Tensor::from_vec(p, (like.dim(0)?, heads, tq, tk), like.device())).transpose()
}

/// Attention over CPU tensors (see the module doc for shapes and masks). With `weights`, also returns the
/// probabilities `[B, H, Tq, Tk]`.
pub fn sdpa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: &Mask,
    weights: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let track = q.track_op() || k.track_op() || v.track_op();
    let keep_on = track || weights;
    macro_rules! run {
        ($t:ty) => {{
            let keep: Weights<$t> = Arc::new(Mutex::new(None));
            let op = Sdpa::<$t> { heads, mask: mask.clone(), keep: keep.clone(), keep_on };
            let out = if track { q.apply_op3(k, v, op)? } else { q.apply_op3_no_bwd(k, v, &op)? };
            (out, take_weights(&keep, weights, heads, q.dim(1)?, k.dim(1)?, q)?)
        }};
    }
    Ok(match q.dtype() {
        candle_core::DType::F64 => run!(f64),
        _ => run!(f32),
    })
}
