//! A whole recurrent layer direction as one op: the input projection and the recurrence together, so the big
//! per-step tensors (`xp`, its gradient) never become candle tensors. Through candle's autograd each of those
//! costs a zero-filled gradient buffer, an accumulating add and, for the bias, a reduction: about a third of an
//! LSTM training step before this op existed.
//!
//! Inputs: `x [B, T, In]`; `w [G*H, In + H + 2]`, the columns `W_ih | W_hh | b_ih | b_hh` side by side (a
//! small concatenation under autograd); `s0 [B, S*H]` (S = 2 for an LSTM's h and c). Output `[B, T, H]`.
//!
//! Forward: `xp = x W_ih^T + b` as one GEMM (b = b_ih, plus b_hh for the RNN; the LSTM and GRU add b_hh in
//! the recurrence), then the recurrence ([`Inner`]). Backward: the recurrence's backward gives `dxp`; then
//! `dW_ih = dxp^T x` and (only when `x` needs it) `dx = dxp W_ih` as one GEMM each, and the biases as column
//! sums. The weights are read in place from `w`; only `W_hh^T` is built, once per forward.
//!
//! The batch is cut into one slice per thread: rows of a batch are independent through the whole recurrence,
//! so each slice runs on its own thread with serial GEMMs, with no synchronisation per step. A batch of one
//! row runs as one slice whose GEMMs may use every thread.

use std::ops::Range;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::{FinalState, Hidden, Inner, Mat, Real, matmul, slice, with_host};

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
    _t: std::marker::PhantomData<fn() -> T>,
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("recurrent kernel: poisoned lock".into())
}

/// `buf` cut into consecutive chunks of `rows.len() * per_row` elements, one per range.
fn chunks<'a, T>(mut buf: &'a mut [T], slices: &[Range<usize>], per_row: usize) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(slices.len());
    for r in slices {
        let (a, rest) = std::mem::take(&mut buf).split_at_mut(r.len() * per_row);
        out.push(a);
        buf = rest;
    }
    out
}

impl<T: Real, K: Inner<T>> Projected<T, K> {
    fn slices(&self) -> Vec<Range<usize>> {
        // One slice where the call is small or already runs on one thread (see `kernels::share` and
        // `kernels::SLICE_WORK`).
        let work = self.batch * self.seq_len * K::GATES * self.hidden * (self.hidden + 1);
        // Or one slice whose hidden units the recurrence shares among the threads itself.
        let units = <K as Inner<T>>::unit_threads(&self.inner, self.keep) > 1;
        let n = if !units && super::share(work, super::SLICE_WORK) {
            rayon::current_num_threads().min(self.batch).max(1)
        } else {
            1
        };
        (0..n).map(|i| (i * self.batch / n)..((i + 1) * self.batch / n)).collect()
    }

    /// Runs `f(slice index, rows, its chunk of a, its chunk of b)` for every slice, in parallel when there are several, and
    /// returns the results in slice order.
    fn each<R: Send>(
        &self,
        a: (&mut [T], usize),
        b: (&mut [T], usize),
        f: impl Fn(usize, Range<usize>, &mut [T], &mut [T]) -> R + Sync,
    ) -> Vec<R> {
        let slices = self.slices();
        let work: Vec<_> =
            slices.iter().cloned().zip(chunks(a.0, &slices, a.1)).zip(chunks(b.0, &slices, b.1)).enumerate().collect();
        if work.len() == 1 {
            let run = || work.into_iter().map(|(i, ((r, a), b))| f(i, r, a, b)).collect();
            // A batch of one or two splits each step's product between the threads (`small::matmul`): the pass
            // then runs inside the pool, so that a split is a join between its threads, not a hand-off from
            // this thread and back at every step.
            if self.batch <= 2 && super::share(self.hidden * K::GATES * self.hidden, super::SPLIT_WORK) {
                return rayon::scope(|_| run());
            }
            return run();
        }
        use rayon::prelude::*;
        work.into_par_iter().map(|(i, ((r, a), b))| super::serial(|| f(i, r, a, b))).collect()
    }

    fn cols(&self) -> usize {
        self.input + self.hidden + 2
    }

    /// The recurrence's weights, for a forward or a backward.
    fn hidden<'a>(&self, w: &'a [T], forward: bool) -> Hidden<'a, T> {
        let (inp, h, cols) = (self.input, self.hidden, self.cols());
        let rows = K::GATES * h;
        let b_hh = if K::HH_BIAS_INSIDE { (0..rows).map(|r| w[r * cols + inp + h + 1]).collect() } else { Vec::new() };
        Hidden::new(&w[inp..], cols, K::GATES, h, b_hh, forward)
    }

    /// `xp [B*T, G*H] = x [B*T, In] W_ih^T + bias`.
    fn project(&self, x: &[T], w: &[T]) -> Vec<T> {
        let (rows, g, cols, inp, h) =
            (self.batch * self.seq_len, K::GATES * self.hidden, self.cols(), self.input, self.hidden);
        let bias: Vec<T> = (0..g)
            .map(|r| {
                let b_ih = w[r * cols + inp + h];
                if K::HH_BIAS_INSIDE { b_ih } else { b_ih + w[r * cols + inp + h + 1] }
            })
            .collect();
        let mut xp = Vec::with_capacity(rows * g);
        for _ in 0..rows {
            xp.extend_from_slice(&bias);
        }
        // W_ih^T as a view: row r of W_ih starts at w[r * cols].
        let w_ih_t = Mat { ptr: w.as_ptr(), rs: 1, cs: cols as isize };
        matmul(rows, g, inp, &mut xp, g, true, Mat::rows(x, inp), w_ih_t);
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
        if l1.dims() != [b, t, inp] || l2.dims() != [K::GATES * h, self.cols()] || l3.dims() != [b, K::STATES * h] {
            candle_core::bail!("recurrent kernel: unexpected shapes {:?} {:?} {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        let w = slice(s2, l2, "w")?;
        let xp = self.project(slice(s1, l1, "x")?, w);
        let hidden = self.hidden(w, true);
        let s0 = slice(s3, l3, "s0")?;
        let (g, sw) = (K::GATES * h, K::STATES * h);
        let mut out = vec![T::zero(); b * t * h];
        let saved = self.each((&mut out, t * h), (&mut [], 0), |_, r, out, _| {
            let inner = self.inner.rows(r.clone());
            inner.run(&xp[r.start * t * g..r.end * t * g], &hidden, &s0[r.start * sw..r.end * sw], out, self.keep)
        });
        // The time loops stop early once the call is cancelled; what they left is not a result.
        crate::cancel::current().check_candle()?;
        if let Some(sink) = &self.final_c {
            let mut cells = Vec::with_capacity(b * h);
            for (r, sv) in self.slices().into_iter().zip(&saved) {
                cells.extend(self.inner.rows(r).final_cell(sv).unwrap_or_default());
            }
            *sink.lock().map_err(|_| poisoned())? = (!cells.is_empty()).then_some(cells);
        }
        if self.keep {
            *self.saved.lock().map_err(|_| poisoned())? = Some(saved);
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
        let guard = self.saved.lock().map_err(|_| poisoned())?;
        let Some(saved) = guard.as_ref() else {
            candle_core::bail!("recurrent kernel: backward without saved activations")
        };
        let (b, t, inp, h) = (self.batch, self.seq_len, self.input, self.hidden);
        let (rows, g, cols) = (b * t, K::GATES * h, self.cols());
        let mut dxp = vec![T::zero(); rows * g];
        let mut ds0 = vec![T::zero(); b * K::STATES * h];
        let mut dw = vec![T::zero(); g * cols];
        let dx = with_host(w, |w: &[T]| -> Result<Option<Vec<T>>> {
            let hidden = self.hidden(w, false);
            let parts = with_host(grad, |dout: &[T]| {
                self.each((&mut dxp, t * g), (&mut ds0, K::STATES * h), |i, r, dxp, ds0| {
                    self.inner.rows(r.clone()).grad(&saved[i], &hidden, &dout[r.start * t * h..r.end * t * h], dxp, ds0)
                })
            })?;
            crate::cancel::current().check_candle()?;
            // dW_hh and db_hh summed over the slices, into their columns of dw.
            let db_hh_is_db = parts.iter().all(|(_, db_hh)| db_hh.is_empty());
            for (dw_hh, db_hh) in parts {
                for j in 0..g {
                    let row = &mut dw[j * cols..(j + 1) * cols];
                    for (d, &v) in row[inp..inp + h].iter_mut().zip(&dw_hh[j * h..(j + 1) * h]) {
                        *d += v;
                    }
                    if let Some(&v) = db_hh.get(j) {
                        row[inp + h + 1] += v;
                    }
                }
            }
            // dW_ih = dxp^T [G*H, B*T] x x [B*T, In], into the first columns of dw.
            with_host(x, |xs: &[T]| {
                matmul(g, inp, rows, &mut dw, cols, false, Mat::rows_t(&dxp, g), Mat::rows(xs, inp))
            })?;
            let db = super::column_sums(&dxp, g);
            for j in 0..g {
                dw[j * cols + inp + h] = db[j];
                if db_hh_is_db {
                    dw[j * cols + inp + h + 1] = db[j];
                }
            }
            // dx = dxp [B*T, G*H] x W_ih [G*H, In], only when something upstream needs it.
            Ok(x.track_op().then(|| {
                let mut dx = vec![T::zero(); rows * inp];
                matmul(
                    rows,
                    inp,
                    g,
                    &mut dx,
                    inp,
                    false,
                    Mat::rows(&dxp, g),
                    Mat { ptr: w.as_ptr(), rs: cols as isize, cs: 1 },
                );
                dx
            }))
        })??;
        let dev = grad.device();
        Ok((
            dx.map(|dx| Tensor::from_vec(dx, (b, t, inp), dev)).transpose()?,
            Some(Tensor::from_vec(dw, (g, cols), dev)?),
            Some(Tensor::from_vec(ds0, (b, K::STATES * h), dev)?),
        ))
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
        Projected {
            inner,
            batch,
            seq_len,
            input,
            hidden,
            keep,
            final_c,
            saved: Mutex::new(None),
            _t: std::marker::PhantomData,
        }
    }
    let dims = (b, t, inp, h);
    macro_rules! run {
        ($t:ty) => {
            match kind {
                Kind::Lstm => {
                    x.apply_op3(&w, &s0, op::<$t, _>(super::lstm::LstmSeq::new(b, t, h, lengths), dims, keep, final_c))
                }
                Kind::Gru => {
                    x.apply_op3(&w, &s0, op::<$t, _>(super::gru::GruSeq::new(b, t, h, lengths), dims, keep, final_c))
                }
                Kind::Rnn { relu } => x.apply_op3(
                    &w,
                    &s0,
                    op::<$t, _>(super::rnn::RnnSeq::new(b, t, h, relu, lengths), dims, keep, final_c),
                ),
            }
        };
    }
    match x.dtype() {
        candle_core::DType::F64 => run!(f64),
        _ => run!(f32),
    }
}
