//! Fused CPU kernels: forward and backward side by side, joined to candle autograd as custom ops.

pub mod bag;
pub mod gru;
pub mod lstm;
pub mod projected;
pub mod rnn;

pub use lstm::FinalState;

use gemm::Parallelism;

/// The float types the kernels run in, with the activations they apply to whole slices.
pub trait Real: candle_core::WithDType + num_traits::Float + std::ops::AddAssign + Send + Sync + 'static {
    /// `x = 1 / (1 + exp(-x))` for every element.
    fn sigmoid_slice(xs: &mut [Self]) {
        for x in xs {
            *x = Self::one() / (Self::one() + (-*x).exp());
        }
    }

    /// `x = tanh(x)` for every element.
    fn tanh_slice(xs: &mut [Self]) {
        for x in xs {
            *x = x.tanh();
        }
    }
}

/// f64 keeps libm's functions: it is the precision of the gradient checks.
impl Real for f64 {}

/// f32 uses the branch-free functions in [`fast`], which the compiler vectorises: libm's `expf` and `tanhf`
/// are scalar calls and took most of an LSTM step's time.
impl Real for f32 {
    fn sigmoid_slice(xs: &mut [f32]) {
        for x in xs {
            *x = fast::sigmoid(*x);
        }
    }

    fn tanh_slice(xs: &mut [f32]) {
        for x in xs {
            *x = fast::tanh(*x);
        }
    }
}

/// Branch-free f32 transcendental functions, accurate to a few units in the last place.
pub mod fast {
    /// `exp(x)` by Cody-Waite range reduction `x = n ln2 + r`, `|r| <= ln2 / 2`, and a degree-6 polynomial
    /// for `exp(r)` (the classic Cephes `expf` coefficients); `2^n` is built in the exponent bits.
    #[inline(always)]
    pub fn exp(x: f32) -> f32 {
        // Past these bounds exp overflows or underflows f32; clamping keeps 2^n inside the exponent range.
        let x = x.clamp(-87.0, 88.0);
        // Round to nearest without a libm call: adding 1.5 * 2^23 pushes the fraction out of the mantissa.
        const MAGIC: f32 = 12_582_912.0;
        let n = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
        // ln2 split in two so that n * C1 is exact.
        let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
        let p = 1.987_569_1e-4;
        let p = p * r + 1.398_199_9e-3;
        let p = p * r + 8.333_452e-3;
        let p = p * r + 4.166_579_6e-2;
        let p = p * r + 1.666_666_5e-1;
        let p = p * r + 0.5;
        let y = p * r * r + r + 1.0;
        y * f32::from_bits(((n as i32 + 127) << 23) as u32)
    }

    #[inline(always)]
    pub fn sigmoid(x: f32) -> f32 {
        1.0 / (1.0 + exp(-x))
    }

    /// `tanh(x) = 2 sigmoid(2x) - 1`: absolute error about 1e-7, which is what f32 holds near 1 anyway.
    #[inline(always)]
    pub fn tanh(x: f32) -> f32 {
        2.0 / (1.0 + exp(-2.0 * x)) - 1.0
    }
}

/// A recurrence over precomputed input projections `xp [B, T, G*H]` (batch-major), as [`projected`] drives it.
pub(crate) trait Inner<T: Real>: Send + Sync + 'static {
    /// What the backward needs from the forward.
    type Saved: Send + Sync;
    /// Gate blocks per step (4, 3, 1).
    const GATES: usize;
    /// State blocks in `s0` (2 for an LSTM's h and c).
    const STATES: usize;
    /// Whether the recurrent weights carry `b_hh` as an extra column (the GRU) instead of it joining `xp`.
    const HH_BIAS_INSIDE: bool;
    /// Returns `h` for every step `[B, T, H]` and what the backward needs.
    fn run(&self, xp: &[T], w: &[T], s0: &[T]) -> (Vec<T>, Self::Saved);
    /// Returns (d xp, d w, d s0) for the incoming gradient of the output.
    fn grad(&self, s: &Self::Saved, w: &[T], dout: &[T]) -> (Vec<T>, Vec<T>, Vec<T>);
    /// The final cell state `[B, H]` (an LSTM's; None otherwise).
    fn final_cell(&self, _s: &Self::Saved) -> Option<Vec<f64>> {
        None
    }
    /// The same recurrence over batch rows `rows` only.
    fn rows(&self, rows: std::ops::Range<usize>) -> Self;
}

/// Per-row sequence lengths of a padded batch, for the recurrent kernels: row b is live at step t when
/// `t < lengths[b]`. Past its length a row's state is carried unchanged and its output is zero, so padded steps
/// never change the final state, and nothing flows back through them.
#[derive(Debug, Clone, Default)]
pub struct Lengths(Option<std::sync::Arc<Vec<usize>>>);

impl Lengths {
    /// Checks `lengths` (one per row, each in `1..=seq_len`).
    pub fn new(lengths: Option<std::sync::Arc<Vec<usize>>>, batch: usize, seq_len: usize) -> candle_core::Result<Self> {
        if let Some(l) = &lengths
            && (l.len() != batch || l.iter().any(|&n| n == 0 || n > seq_len))
        {
            candle_core::bail!("kernel: lengths must be {batch} values in 1..={seq_len}, got {l:?}");
        }
        Ok(Lengths(lengths))
    }

    /// The lengths of batch rows `rows`.
    pub(crate) fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        Lengths(self.0.as_ref().map(|l| std::sync::Arc::new(l[rows].to_vec())))
    }

    #[inline]
    pub fn live(&self, row: usize, t: usize) -> bool {
        self.0.as_ref().is_none_or(|l| t < l[row])
    }

    /// Batch-first outputs `[B, T, H]` from time-major states `[T+1, B, H]` (state 0 is the initial one), zero
    /// past each row's length.
    pub(crate) fn outputs<T: Real>(&self, hs: &[T], b: usize, t_len: usize, h: usize) -> Vec<T> {
        let mut out = vec![T::zero(); b * t_len * h];
        for t in 0..t_len {
            for bi in 0..b {
                if self.live(bi, t) {
                    let src = ((t + 1) * b + bi) * h;
                    out[(bi * t_len + t) * h..(bi * t_len + t + 1) * h].copy_from_slice(&hs[src..src + h]);
                }
            }
        }
        out
    }

    /// The rows of `dh [B, H]` that are past their length at step t (their gradient passes through the step).
    pub(crate) fn carry<T: Real>(&self, dh: &[T], t: usize, b: usize, h: usize) -> Vec<(usize, Vec<T>)> {
        (0..b).filter(|&bi| !self.live(bi, t)).map(|bi| (bi, dh[bi * h..(bi + 1) * h].to_vec())).collect()
    }

    /// Adds back what [`Lengths::carry`] kept (the GEMM that produced `dh` gave those rows zero).
    pub(crate) fn add_carry<T: Real>(dh: &mut [T], carry: Vec<(usize, Vec<T>)>, h: usize) {
        for (bi, row) in carry {
            for (d, v) in dh[bi * h..(bi + 1) * h].iter_mut().zip(row) {
                *d += v;
            }
        }
    }
}

/// The elements a contiguous CPU tensor covers.
pub(crate) fn slice<'a, T: Real>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    let all = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => candle_core::bail!("kernel: {what} must be contiguous"),
    }
}

thread_local! {
    /// Set while a kernel runs one slice of a batch on a worker thread: its GEMMs then stay on that thread.
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's GEMMs kept serial (see [`SERIAL`]).
pub(crate) fn serial<R>(f: impl FnOnce() -> R) -> R {
    let before = SERIAL.with(|s| s.replace(true));
    let out = f();
    SERIAL.with(|s| s.set(before));
    out
}

pub(crate) fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    if SERIAL.with(|s| s.get()) {
        return Parallelism::None;
    }
    let threads = candle_core::utils::get_num_threads();
    // Below this much work per GEMM, waking other threads costs more than it saves.
    if threads > 1 && m * n * k >= 48 * 48 * 48 { Parallelism::Rayon(threads) } else { Parallelism::None }
}

/// Row-major matrix view: pointer, row stride and column stride, in elements.
#[derive(Clone, Copy)]
pub(crate) struct Mat<T> {
    pub ptr: *const T,
    pub rs: isize,
    pub cs: isize,
}

impl<T> Mat<T> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(s: &[T], cols: usize) -> Self {
        Mat { ptr: s.as_ptr(), rs: cols as isize, cs: 1 }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn rows_t(s: &[T], cols: usize) -> Self {
        Mat { ptr: s.as_ptr(), rs: 1, cs: cols as isize }
    }
}

/// `dst [m, n] (row-major, row stride dst_rs) = (accumulate ? dst : 0) + lhs [m, k] x rhs [k, n]`.
///
/// Callers guarantee that `dst` holds the `m x n` block and that `lhs`/`rhs` views stay inside their slices;
/// every call site below derives the views from slices of checked lengths.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
) {
    debug_assert!(m == 0 || dst.len() >= (m - 1) * dst_rs + n);
    // SAFETY: the views describe memory inside live slices (see above); dst is exclusively borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism(m, n, k),
        );
    }
}

/// `w [rows, cols]` row-major, transposed: `[cols, rows]` row-major. The recurrent kernels multiply by `W^T`
/// every step; given as a transposed view, the GEMM would gather (pack) all of `W` element by element each
/// time, which took a third of an LSTM forward.
pub(crate) fn transpose<T: Real>(w: &[T], rows: usize, cols: usize) -> Vec<T> {
    const TILE: usize = 32;
    let mut t = vec![T::zero(); rows * cols];
    // Tile by tile, so both the reads and the writes stay in cache.
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    t[c * rows + r] = w[r * cols + c];
                }
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::fast;

    #[test]
    fn fast_functions_match_libm_over_their_range() {
        let (mut worst_exp, mut worst_sig, mut worst_tanh) = (0f64, 0f64, 0f64);
        let mut x = -30.0f32;
        while x <= 30.0 {
            let e = (x as f64).exp();
            worst_exp = worst_exp.max(((fast::exp(x) as f64) - e).abs() / e);
            worst_sig = worst_sig.max(((fast::sigmoid(x) as f64) - 1.0 / (1.0 + (-x as f64).exp())).abs());
            worst_tanh = worst_tanh.max(((fast::tanh(x) as f64) - (x as f64).tanh()).abs());
            x += 0.000_37;
        }
        assert!(worst_exp < 4e-7, "exp relative error {worst_exp}");
        assert!(worst_sig < 2e-7, "sigmoid absolute error {worst_sig}");
        assert!(worst_tanh < 4e-7, "tanh absolute error {worst_tanh}");
        // Saturation: no NaN or infinity far out.
        for x in [-1e30f32, -500.0, 500.0, 1e30] {
            assert!(fast::sigmoid(x).is_finite() && fast::tanh(x).is_finite() && fast::exp(x).is_finite());
        }
        assert_eq!(fast::tanh(1e30), 1.0);
        assert_eq!(fast::tanh(-1e30), -1.0);
    }
}
