//! A whole recurrent layer direction as one op: the input projection and the recurrence together, so the big
//! per-step tensors (`xp`, its gradient) never become candle tensors. Through candle's autograd each of those
//! costs a zero-filled gradient buffer, an accumulating add and, for the bias, a reduction: about a third of an
//! LSTM training step before this op existed.
//!
//! Inputs: `x [B, T, In]`; `w [G*H, In + H + 2]`, the columns `W_ih | W_hh | b_ih | b_hh` side by side (a
//! small concatenation under autograd); `s0 [B, S*H]` (S = 2 for an LSTM's h and c). Output `[B, T, H]`.
//!
//! Forward: `xp = x W_ih^T + b` as one GEMM (b = b_ih + b_hh, or b_ih alone for the GRU, whose b_hh stays in the
//! recurrence), then the recurrence ([`Inner`]). Backward: the recurrence's backward gives `dxp`; then
//! `dW_ih = dxp^T x` and (only when `x` needs it) `dx = dxp W_ih` as one GEMM each, and the biases as column
//! sums.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::{FinalState, Inner, Mat, Real, matmul, slice};

pub(crate) struct Projected<T: Real, K: Inner<T>> {
    inner: K,
    batch: usize,
    seq_len: usize,
    input: usize,
    hidden: usize,
    keep: bool,
    final_c: Option<FinalState>,
    /// Per slice of the batch (see [`Projected::slices`]).
    saved: Mutex<Option<Vec<K::Saved>>>,
}

/// `w [G*H, In + H + 2]` split into `W_ih [G*H, In]`, the recurrence's weights (`W_hh [G*H, H]`, with `b_hh` as
/// a last column for the GRU) and the bias added to `xp`.
struct Split<T> {
    w_ih: Vec<T>,
    w_rec: Vec<T>,
    bias: Vec<T>,
}

impl<T: Real, K: Inner<T>> Projected<T, K> {
    /// The batch cut into one slice per thread: rows of a batch are independent through the whole recurrence,
    /// so each slice runs on its own thread with serial GEMMs, with no synchronisation per step. A batch of
    /// one row runs as one slice whose GEMMs may use every thread.
    fn slices(&self) -> Vec<std::ops::Range<usize>> {
        let n = rayon::current_num_threads().min(self.batch).max(1);
        (0..n).map(|i| (i * self.batch / n)..((i + 1) * self.batch / n)).collect()
    }

    /// Runs `f` on every slice, in parallel when there are several, and returns the results in slice order.
    fn each<R: Send>(&self, f: impl Fn(std::ops::Range<usize>) -> R + Sync) -> Vec<R> {
        let slices = self.slices();
        if slices.len() == 1 {
            return slices.into_iter().map(&f).collect();
        }
        use rayon::prelude::*;
        slices.into_par_iter().map(|r| super::serial(|| f(r))).collect()
    }

    fn split(&self, w: &[T]) -> Split<T> {
        let (inp, h) = (self.input, self.hidden);
        let cols = inp + h + 2;
        let rows = K::GATES * h;
        let rec_cols = if K::HH_BIAS_INSIDE { h + 1 } else { h };
        let mut s = Split {
            w_ih: Vec::with_capacity(rows * inp),
            w_rec: Vec::with_capacity(rows * rec_cols),
            bias: Vec::with_capacity(rows),
        };
        for row in w.chunks_exact(cols) {
            s.w_ih.extend_from_slice(&row[..inp]);
            s.w_rec.extend_from_slice(&row[inp..inp + h]);
            let (b_ih, b_hh) = (row[inp + h], row[inp + h + 1]);
            if K::HH_BIAS_INSIDE {
                s.w_rec.push(b_hh);
                s.bias.push(b_ih);
            } else {
                s.bias.push(b_ih + b_hh);
            }
        }
        s
    }

    /// `xp [B*T, G*H] = x [B*T, In] W_ih^T + bias`.
    fn project(&self, x: &[T], w: &Split<T>) -> Vec<T> {
        let (rows, g) = (self.batch * self.seq_len, K::GATES * self.hidden);
        let mut xp = Vec::with_capacity(rows * g);
        for _ in 0..rows {
            xp.extend_from_slice(&w.bias);
        }
        matmul(rows, g, self.input, &mut xp, g, true, Mat::rows(x, self.input), Mat::rows_t(&w.w_ih, self.input));
        xp
    }
}

impl<T: Real, K: Inner<T>> CustomOp3 for Projected<T, K> {
    fn name(&self) -> &'static str {
        "recurrent-projected"
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
        let (b, t, inp, h) = (self.batch, self.seq_len, self.input, self.hidden);
        if l1.dims() != [b, t, inp] || l2.dims() != [K::GATES * h, inp + h + 2] || l3.dims() != [b, K::STATES * h] {
            candle_core::bail!("recurrent kernel: unexpected shapes {:?} {:?} {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        let w = self.split(slice(s2, l2, "w")?);
        let xp = self.project(slice(s1, l1, "x")?, &w);
        let s0 = slice(s3, l3, "s0")?;
        let (g, sw) = (K::GATES * h, K::STATES * h);
        let parts = self.each(|r| {
            let inner = self.inner.rows(r.clone());
            inner.run(&xp[r.start * t * g..r.end * t * g], &w.w_rec, &s0[r.start * sw..r.end * sw])
        });
        let mut out = Vec::with_capacity(b * t * h);
        let mut saved = Vec::with_capacity(parts.len());
        for (o, sv) in parts {
            out.extend_from_slice(&o);
            saved.push(sv);
        }
        if let Some(sink) = &self.final_c {
            let mut cells = Vec::with_capacity(b * h);
            for (r, sv) in self.slices().into_iter().zip(&saved) {
                cells.extend(self.inner.rows(r).final_cell(sv).unwrap_or_default());
            }
            *sink.lock().map_err(|_| candle_core::Error::Msg("recurrent kernel: poisoned".into()))? =
                (!cells.is_empty()).then_some(cells);
        }
        if self.keep {
            *self.saved.lock().map_err(|_| candle_core::Error::Msg("recurrent kernel: poisoned".into()))? = Some(saved);
        }
        Ok((T::to_cpu_storage_owned(out), Shape::from((b, t, h))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _s0: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = self.saved.lock().map_err(|_| candle_core::Error::Msg("recurrent kernel: poisoned".into()))?;
        let Some(saved) = guard.as_ref() else {
            candle_core::bail!("recurrent kernel: backward without saved activations")
        };
        let (b, t, inp, h) = (self.batch, self.seq_len, self.input, self.hidden);
        let (rows, g) = (b * t, K::GATES * h);
        let split = self.split(&w.flatten_all()?.to_vec1::<T>()?);
        let dout = grad.flatten_all()?.to_vec1::<T>()?;
        let slices = self.slices();
        let parts = self.each(|r| {
            let i = slices.iter().position(|s| *s == r).unwrap_or(0);
            self.inner.rows(r.clone()).grad(&saved[i], &split.w_rec, &dout[r.start * t * h..r.end * t * h])
        });
        let mut dxp = Vec::with_capacity(rows * g);
        let mut ds0 = Vec::with_capacity(b * K::STATES * h);
        let mut dw_rec: Vec<T> = Vec::new();
        for (dx_c, dw_c, ds_c) in parts {
            dxp.extend_from_slice(&dx_c);
            ds0.extend_from_slice(&ds_c);
            if dw_rec.is_empty() {
                dw_rec = dw_c;
            } else {
                for (a, v) in dw_rec.iter_mut().zip(dw_c) {
                    *a += v;
                }
            }
        }
        let xs = x.flatten_all()?.to_vec1::<T>()?;
        // dW_ih = dxp^T [G*H, B*T] x x [B*T, In]
        let mut dw_ih = vec![T::zero(); g * inp];
        matmul(g, inp, rows, &mut dw_ih, inp, false, Mat::rows_t(&dxp, g), Mat::rows(&xs, inp));
        let mut db = vec![T::zero(); g];
        for row in dxp.chunks_exact(g) {
            for (d, &v) in db.iter_mut().zip(row) {
                *d += v;
            }
        }
        let cols = inp + h + 2;
        let rec_cols = if K::HH_BIAS_INSIDE { h + 1 } else { h };
        let mut dw = vec![T::zero(); g * cols];
        for j in 0..g {
            let row = &mut dw[j * cols..(j + 1) * cols];
            row[..inp].copy_from_slice(&dw_ih[j * inp..(j + 1) * inp]);
            row[inp..inp + h].copy_from_slice(&dw_rec[j * rec_cols..j * rec_cols + h]);
            row[inp + h] = db[j];
            row[inp + h + 1] = if K::HH_BIAS_INSIDE { dw_rec[j * rec_cols + h] } else { db[j] };
        }
        let dev = grad.device();
        // dx = dxp [B*T, G*H] x W_ih [G*H, In], only when something upstream needs it.
        let dx = if x.track_op() {
            let mut dx = vec![T::zero(); rows * inp];
            matmul(rows, inp, g, &mut dx, inp, false, Mat::rows(&dxp, g), Mat::rows(&split.w_ih, inp));
            Some(Tensor::from_vec(dx, (b, t, inp), dev)?)
        } else {
            None
        };
        Ok((dx, Some(Tensor::from_vec(dw, (g, cols), dev)?), Some(Tensor::from_vec(ds0, (b, K::STATES * h), dev)?)))
    }
}

/// Which recurrence [`projected`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Lstm,
    Gru,
    Rnn { relu: bool },
}

/// Runs a whole layer direction on CPU tensors (see the module doc for shapes), over each row's first
/// `lengths[b]` steps when given; an LSTM leaves its final cell state in `final_c` when given.
pub fn projected(
    kind: Kind,
    x: &Tensor,
    w: &Tensor,
    s0: &Tensor,
    lengths: Option<std::sync::Arc<Vec<usize>>>,
    final_c: Option<FinalState>,
) -> Result<Tensor> {
    let (b, t, inp) = x.dims3()?;
    let gates = match kind {
        Kind::Lstm => 4,
        Kind::Gru => 3,
        Kind::Rnn { .. } => 1,
    };
    let h = w.dim(0)? / gates;
    let keep = x.track_op() || w.track_op() || s0.track_op();
    let lengths = super::Lengths::new(lengths, b, t)?;
    let (x, w, s0) = (x.contiguous()?, w.contiguous()?, s0.contiguous()?);
    fn op<T: Real, K: Inner<T>>(
        inner: K,
        dims: (usize, usize, usize, usize),
        keep: bool,
        final_c: Option<FinalState>,
    ) -> Projected<T, K> {
        let (batch, seq_len, input, hidden) = dims;
        Projected { inner, batch, seq_len, input, hidden, keep, final_c, saved: Mutex::new(None) }
    }
    let dims = (b, t, inp, h);
    macro_rules! run {
        ($t:ty) => {
            match kind {
                Kind::Lstm => x.apply_op3(
                    &w,
                    &s0,
                    op::<$t, _>(super::lstm::LstmSeq::inner(b, t, h, lengths), dims, keep, final_c),
                ),
                Kind::Gru => {
                    x.apply_op3(&w, &s0, op::<$t, _>(super::gru::GruSeq::inner(b, t, h, lengths), dims, keep, final_c))
                }
                Kind::Rnn { relu } => x.apply_op3(
                    &w,
                    &s0,
                    op::<$t, _>(super::rnn::RnnSeq::inner(b, t, h, relu, lengths), dims, keep, final_c),
                ),
            }
        };
    }
    match x.dtype() {
        candle_core::DType::F64 => run!(f64),
        _ => run!(f32),
    }
}
