//! A small-batch matrix product for the recurrent kernels' per-step GEMMs: `dst [m, n] (+)= A [m, k] x B [k, n]`
//! with `m` a batch slice (1 to a few dozen rows) and `B` a weight matrix that stays the same for every step of
//! a call. A general GEMM packs `B` into its panel layout on every call, which for `m = 16` costs as much as the
//! product itself (about half the f32 peak was left). Here `B` is packed once per call ([`Packed`]) and the
//! product runs as an AVX2/FMA micro-kernel over the packed panels.
//!
//! Every output element is summed over `k` in order with fused multiply-adds, whatever the row blocking, so a
//! row's result does not depend on how the batch was cut into slices. Where AVX2 and FMA are missing, or for
//! f64, [`matmul`] returns false and the caller uses the general GEMM.

use super::Real;

/// Columns per packed panel: two AVX vectors of f32.
pub(crate) const NR: usize = 16;

/// `B [k, n]` in panels of [`NR`] columns: panel p holds columns `p*NR..(p+1)*NR` as `k` contiguous rows of
/// `NR`, the last panel padded with zeros.
pub(crate) struct Packed<T> {
    data: Vec<T>,
    k: usize,
    n: usize,
}

impl<T: Real> Packed<T> {
    /// `B[i, j] = src[i * stride + j]`.
    pub fn rows(src: &[T], k: usize, n: usize, stride: usize) -> Self {
        Self::pack(k, n, |p, panel| {
            let (c0, w) = (p * NR, NR.min(n - p * NR));
            for i in 0..k {
                panel[i * NR..i * NR + w].copy_from_slice(&src[i * stride + c0..i * stride + c0 + w]);
            }
        })
    }

    /// `B = W^T` for `W [n, k]`, `W[j, i] = src[j * stride + i]`.
    pub fn transposed(src: &[T], k: usize, n: usize, stride: usize) -> Self {
        Self::pack(k, n, |p, panel| {
            for c in 0..NR.min(n - p * NR) {
                let row = &src[(p * NR + c) * stride..(p * NR + c) * stride + k];
                for (i, &v) in row.iter().enumerate() {
                    panel[i * NR + c] = v;
                }
            }
        })
    }

    /// Fills each panel with `fill(p, panel)`, the panels shared out among the threads (packing is a serial
    /// stretch of every call otherwise).
    fn pack(k: usize, n: usize, fill: impl Fn(usize, &mut [T]) + Sync) -> Self {
        use rayon::prelude::*;
        let mut data = vec![T::zero(); n.div_ceil(NR) * k * NR];
        if k > 0 {
            data.par_chunks_mut(k * NR).enumerate().with_min_len(8).for_each(|(p, panel)| fill(p, panel));
        }
        Packed { data, k, n }
    }
}

/// Whether [`matmul`] has a micro-kernel for this CPU and type.
pub(crate) fn available<T: 'static>() -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        return super::has_avx2();
    }
    false
}

/// `dst [m, n] (row stride dst_rs) = (accumulate ? dst : 0) + A [m, k] (row stride a_rs) x B`. Returns false,
/// having done nothing, where there is no micro-kernel for this CPU and type.
pub(crate) fn matmul<T: Real>(
    m: usize,
    a: &[T],
    a_rs: usize,
    b: &Packed<T>,
    dst: &mut [T],
    dst_rs: usize,
    accumulate: bool,
) -> bool {
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 {
        return true;
    }
    assert!(a.len() >= (m - 1) * a_rs + k && dst.len() >= (m - 1) * dst_rs + n, "small matmul: views out of bounds");
    #[cfg(target_arch = "x86_64")]
    if available::<T>() {
        let panels = n.div_ceil(NR);
        // One or two rows (a batch of one, not already cut into per-thread slices): the product reads all of B
        // for very little arithmetic, so two threads each take half the panels (and half of B in their cache).
        let split = m <= 2 && panels >= 16 && !super::in_serial() && rayon::current_num_threads() > 1;
        let (a, b, dst) =
            (Ptr(a.as_ptr() as *mut f32), Ptr(b.data.as_ptr() as *mut f32), Ptr(dst.as_mut_ptr() as *mut f32));
        let run = |p0: usize, p1: usize| {
            // SAFETY: T is f32 (`available`), so the casts are identities; every access stays inside the
            // slices (the assertion above and the packed layout); the two halves write disjoint columns; the
            // CPU has AVX2 and FMA.
            unsafe { avx2::matmul(m, k, n, a.get(), a_rs, b.get(), p0..p1, dst.get(), dst_rs, accumulate) }
        };
        if split {
            rayon::join(|| run(0, panels / 2), || run(panels / 2, panels));
        } else {
            run(0, panels);
        }
        return true;
    }
    false
}

/// A pointer handed to the threads of [`matmul`], which write disjoint parts of what it points to.
#[derive(Clone, Copy)]
struct Ptr(*mut f32);

impl Ptr {
    /// The pointer (a method, so that closures capture the whole `Ptr`, which is Send, not its field).
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: see `matmul`: the threads read shared inputs and write disjoint columns.
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::NR;

    /// Rows in blocks of up to 6; a block of `MR` rows runs over `NV` vectors (`NV / 2` panels) at a time, so
    /// that there are always 8 to 12 independent accumulators (enough to hide the FMA latency).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn matmul(
        m: usize,
        k: usize,
        n: usize,
        a: *const f32,
        a_rs: usize,
        b: *const f32,
        panels: std::ops::Range<usize>,
        dst: *mut f32,
        dst_rs: usize,
        acc: bool,
    ) {
        let mut r = 0;
        while r < m {
            let rows = (m - r).min(6);
            let (a, dst) = unsafe { (a.add(r * a_rs), dst.add(r * dst_rs)) };
            unsafe {
                match rows {
                    6 => block::<6, 2>(k, n, a, a_rs, b, panels.clone(), dst, dst_rs, acc),
                    5 => block::<5, 2>(k, n, a, a_rs, b, panels.clone(), dst, dst_rs, acc),
                    4 => block::<4, 2>(k, n, a, a_rs, b, panels.clone(), dst, dst_rs, acc),
                    3 => block::<3, 4>(k, n, a, a_rs, b, panels.clone(), dst, dst_rs, acc),
                    2 => block::<2, 4>(k, n, a, a_rs, b, panels.clone(), dst, dst_rs, acc),
                    _ => block::<1, 8>(k, n, a, a_rs, b, panels.clone(), dst, dst_rs, acc),
                }
            }
            r += rows;
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const MR: usize, const NV: usize>(
        k: usize,
        n: usize,
        a: *const f32,
        a_rs: usize,
        b: *const f32,
        panels: std::ops::Range<usize>,
        dst: *mut f32,
        dst_rs: usize,
        acc: bool,
    ) {
        let per = NV / 2;
        let mut p = panels.start;
        while p + per <= panels.end {
            unsafe { tile::<MR, NV>(k, n, a, a_rs, b, p, dst, dst_rs, acc) };
            p += per;
        }
        while p < panels.end {
            unsafe { tile::<MR, 2>(k, n, a, a_rs, b, p, dst, dst_rs, acc) };
            p += 1;
        }
    }

    /// Rows `0..MR` by the `NV` vectors of columns from panel `p0` on.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const MR: usize, const NV: usize>(
        k: usize,
        n: usize,
        a: *const f32,
        a_rs: usize,
        b: *const f32,
        p0: usize,
        dst: *mut f32,
        dst_rs: usize,
        acc: bool,
    ) {
        unsafe {
            let mut c = [[_mm256_setzero_ps(); NV]; MR];
            // Vector v reads panel p0 + v / 2, half v % 2.
            let base = |v: usize| b.add((p0 + v / 2) * k * NR + (v % 2) * 8);
            for i in 0..k {
                let mut bv = [_mm256_setzero_ps(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(base(v).add(i * NR));
                }
                for (r, cr) in c.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*a.add(r * a_rs + i));
                    for (x, &bx) in cr.iter_mut().zip(&bv) {
                        *x = _mm256_fmadd_ps(av, bx, *x);
                    }
                }
            }
            for (r, cr) in c.iter().enumerate() {
                for (v, &x) in cr.iter().enumerate() {
                    let col = (p0 + v / 2) * NR + (v % 2) * 8;
                    if col >= n {
                        continue;
                    }
                    let out = dst.add(r * dst_rs + col);
                    if col + 8 <= n {
                        let x = if acc { _mm256_add_ps(_mm256_loadu_ps(out), x) } else { x };
                        _mm256_storeu_ps(out, x);
                    } else {
                        let mut tmp = [0f32; 8];
                        _mm256_storeu_ps(tmp.as_mut_ptr(), x);
                        for (j, &t) in tmp.iter().enumerate().take(n - col) {
                            *out.add(j) = if acc { *out.add(j) + t } else { t };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Packed, available, matmul};
    use crate::Rng;

    fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()
    }

    #[test]
    fn packed_products_match_a_plain_sum_and_do_not_depend_on_the_row_blocking() {
        if !available::<f32>() {
            // Nothing to test on a CPU without AVX2: the callers use the general GEMM.
            assert!(!matmul(1, &[0f32], 1, &Packed::rows(&[0f32], 1, 1, 1), &mut [0f32], 1, false));
            return;
        }
        let mut rng = Rng::new(5);
        for (m, k, n) in
            [(1, 1, 1), (1, 7, 5), (2, 9, 16), (3, 4, 17), (5, 33, 40), (6, 8, 64), (13, 21, 37), (16, 64, 96)]
        {
            let a_rs = k + 3;
            let a = random(&mut rng, m * a_rs);
            // B given as rows with a stride, and the same B given as the transpose of W [n, k].
            let stride = n + 2;
            let b = random(&mut rng, k * stride);
            let mut w = vec![0f32; n * (k + 1)];
            for i in 0..k {
                for j in 0..n {
                    w[j * (k + 1) + i] = b[i * stride + j];
                }
            }
            for packed in [Packed::rows(&b, k, n, stride), Packed::transposed(&w, k, n, k + 1)] {
                for accumulate in [false, true] {
                    let dst_rs = n + 1;
                    let init = random(&mut rng, m * dst_rs);
                    let mut dst = init.clone();
                    assert!(matmul(m, &a, a_rs, &packed, &mut dst, dst_rs, accumulate));
                    for r in 0..m {
                        for j in 0..n {
                            let mut e: f64 = (0..k).map(|i| a[r * a_rs + i] as f64 * b[i * stride + j] as f64).sum();
                            if accumulate {
                                e += init[r * dst_rs + j] as f64;
                            }
                            let got = dst[r * dst_rs + j] as f64;
                            assert!((got - e).abs() < 1e-5 * (1.0 + e.abs()), "m{m} k{k} n{n} [{r},{j}]: {got} vs {e}");
                        }
                        // The padding column past n is untouched.
                        assert_eq!(dst[r * dst_rs + n], init[r * dst_rs + n]);
                        // Each row alone gives the same bits as in its block.
                        let mut alone = init[r * dst_rs..(r + 1) * dst_rs].to_vec();
                        assert!(matmul(1, &a[r * a_rs..], a_rs, &packed, &mut alone, dst_rs, accumulate));
                        assert_eq!(
                            alone,
                            dst[r * dst_rs..(r + 1) * dst_rs],
                            "m{m} k{k} n{n}: row {r} depends on its block"
                        );
                    }
                }
            }
        }
    }
}
