//! Fused CPU kernels: forward and backward side by side, joined to candle autograd as custom ops.

pub mod lstm;

use gemm::Parallelism;

/// The float types the kernels run in.
pub trait Real: candle_core::WithDType + num_traits::Float + Send + Sync + 'static {}
impl Real for f32 {}
impl Real for f64 {}

pub(crate) fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
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
