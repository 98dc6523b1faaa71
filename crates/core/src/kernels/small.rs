//! A small-batch matrix product for the recurrent kernels' per-step GEMMs: `dst [m, n] (+)= A [m, k] x B [k, n]`
//! with `m` a batch slice (1 to a few dozen rows) and `B` a weight matrix that stays the same for every step of
//! a call. A general GEMM packs `B` into its panel layout on every call, which for `m = 16` costs as much as the
//! product itself (about half the f32 peak was left). Here `B` is packed once per call ([`Packed`]) and the
//! product runs as a micro-kernel over the packed panels: AVX-512, AVX2/FMA or NEON, as [`super::isa`] chose.
//!
//! Every output element is summed over `k` in order with fused multiply-adds, whatever the row blocking and
//! whichever instruction set, so a row's result does not depend on how the batch was cut into slices, and the
//! variants give the same bits. On x86-64 without AVX2 and FMA, or for f64, [`matmul`] returns false and the
//! caller uses the general GEMM.

use super::{Real, SharedMut};

/// Columns per packed panel: one AVX-512 vector of f32, two AVX ones, four NEON ones.
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
            let w = NR.min(n - p * NR);
            let row = |c: usize| &src[(p * NR + c) * stride..(p * NR + c) * stride + k];
            if w == NR {
                // A full panel row by row of the panel: 16 streams read, one written (W's rows one at a time,
                // scattered into the panel, took 1.7 times as long).
                let rows: [&[T]; NR] = std::array::from_fn(row);
                for (i, out) in panel.chunks_exact_mut(NR).enumerate() {
                    for (o, r) in out.iter_mut().zip(&rows) {
                        *o = r[i];
                    }
                }
            } else {
                for c in 0..w {
                    for (i, &v) in row(c).iter().enumerate() {
                        panel[i * NR + c] = v;
                    }
                }
            }
        })
    }

    /// Fills each panel with `fill(p, panel)`, the panels shared out among the threads (packing is a serial
    /// stretch of every call otherwise).
    fn pack(k: usize, n: usize, fill: impl Fn(usize, &mut [T]) + Sync) -> Self {
        use rayon::prelude::*;
        let mut data = vec![T::zero(); n.div_ceil(NR) * k * NR];
        if k == 0 {
            return Packed { data, k, n };
        }
        if super::in_serial() || n <= 8 * NR {
            data.chunks_mut(k * NR).enumerate().for_each(|(p, panel)| fill(p, panel));
        } else {
            data.par_chunks_mut(k * NR).enumerate().with_min_len(8).for_each(|(p, panel)| fill(p, panel));
        }
        Packed { data, k, n }
    }
}

/// Whether [`matmul`] has a micro-kernel for this CPU and type.
pub(crate) fn available<T: 'static>() -> bool {
    if std::any::TypeId::of::<T>() != std::any::TypeId::of::<f32>() {
        return false;
    }
    match super::isa::isa() {
        super::isa::Isa::Avx2 | super::isa::Isa::Avx512 => cfg!(target_arch = "x86_64"),
        super::isa::Isa::Neon => cfg!(target_arch = "aarch64"),
        super::isa::Isa::Baseline => false,
    }
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
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if available::<T>() {
        let panels = n.div_ceil(NR);
        // One or two rows (a batch of one, not already cut into per-thread slices): the product reads all of B
        // for very little arithmetic, so two threads each take half the panels (and half of B in their cache),
        // where B is large enough to pay for the join ([`super::SPLIT_WORK`]).
        let split = m <= 2 && panels >= 16 && super::share(k * n, super::SPLIT_WORK);
        let (a, b, dst) = (
            SharedMut::new(a.as_ptr() as *mut f32),
            SharedMut::new(b.data.as_ptr() as *mut f32),
            SharedMut::new(dst.as_mut_ptr() as *mut f32),
        );
        let run = |p0: usize, p1: usize| {
            // SAFETY: T is f32 (`available`), so the casts are identities; every access stays inside the
            // slices (the assertion above and the packed layout); the two halves write disjoint columns; the
            // CPU has the instruction set of the variant called (`available` and the ISA choice).
            unsafe { kernel(m, k, n, a.get(), a_rs, b.get(), p0..p1, dst.get(), dst_rs, accumulate) }
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

/// `dst [m, cols] = A [m, k] (row stride a_rs) x B[:, cols]` for the columns `cols` of B (a multiple of [`NR`] at
/// both ends, or ending at B's last column), written to `dst` with row stride `dst_rs`: column `j` of B goes
/// to `dst[r * dst_rs + j - cols.start]`. For threads that share out one product by columns. Returns false,
/// having done nothing, where there is no micro-kernel for this CPU and type.
///
/// # Safety
/// `dst` must be valid for writes at every `r * dst_rs + j` with `r < m` and `j < cols.len()`, and nothing else
/// may access those elements during the call.
pub(crate) unsafe fn matmul_columns<T: Real>(
    m: usize,
    a: &[T],
    a_rs: usize,
    b: &Packed<T>,
    cols: std::ops::Range<usize>,
    dst: *mut T,
    dst_rs: usize,
) -> bool {
    let (k, n) = (b.k, b.n);
    if !available::<T>() {
        return false;
    }
    assert!(
        cols.start.is_multiple_of(NR) && (cols.end.is_multiple_of(NR) || cols.end == n) && cols.end <= n,
        "small matmul: columns {cols:?} not on panel bounds"
    );
    if m == 0 || cols.is_empty() {
        return true;
    }
    assert!(a.len() >= (m - 1) * a_rs + k, "small matmul: A out of bounds");
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        // The kernel writes column j at dst + j: dst shifted back by cols.start, which the kernels only offset
        // with wrapping arithmetic, into the columns of `cols`.
        let shifted = (dst as *mut f32).wrapping_sub(cols.start);
        let panels = cols.start / NR..cols.end.div_ceil(NR);
        // SAFETY: T is f32 (`available`); A stays inside `a` (asserted); the kernel writes only the columns of
        // `panels` below n, that is dst's columns 0..cols.len() of m rows (the caller's promise); the CPU has
        // the instruction set of the variant called.
        unsafe {
            kernel(
                m,
                k,
                n,
                a.as_ptr() as *const f32,
                a_rs,
                b.data.as_ptr() as *const f32,
                panels,
                shifted,
                dst_rs,
                false,
            )
        };
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (dst, dst_rs);
        false
    }
}

/// The micro-kernel for the chosen instruction set (whose availability the caller checked).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
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
    // SAFETY: as for `matmul`; AVX-512 only where the ISA choice found it.
    unsafe {
        if super::has_avx512() {
            avx512::matmul(m, k, n, a, a_rs, b, panels, dst, dst_rs, acc)
        } else {
            avx2::matmul(m, k, n, a, a_rs, b, panels, dst, dst_rs, acc)
        }
    }
}

#[cfg(target_arch = "aarch64")]
use neon::matmul as kernel;

/// Panels a row block goes over before the next row block starts, where B is too large for the cache (see the
/// kernels' loops): 384 columns, whose part of B is 1.5 KiB a row of k (768 KiB for k = 512, within a 1 or
/// 2 MiB L2). A multiple of every tile's panel count (1, 2, 3, 4, 6, 8), so that chunks leave no remainder
/// tiles but the last.
const PANEL_CHUNK: usize = 24;

/// Above this many bytes of B the AVX2 and NEON kernels take the panels in chunks: measured on a 2 MiB-L2
/// Xeon, chunks made H = 512 (4 MiB of B) faster and H = 256 (1 MiB) slower. The AVX-512 kernel's 8-row
/// blocks gain from chunks at every size (see there).
const CHUNKED_ABOVE: usize = 3 << 19;

/// `panels` (of `k` rows each) cut into consecutive chunks of at most [`PANEL_CHUNK`], where `always` or
/// where they hold more than [`CHUNKED_ABOVE`] bytes; one chunk otherwise.
fn chunks(panels: std::ops::Range<usize>, k: usize, always: bool) -> impl Iterator<Item = std::ops::Range<usize>> {
    let end = panels.end;
    let chunked = always || panels.len() * NR * k * 4 > CHUNKED_ABOVE;
    let size = if chunked { PANEL_CHUNK } else { panels.len().max(1) };
    panels.step_by(size).map(move |p| p..(p + size).min(end))
}

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
        // Where B is larger than the cache (4 MiB for H = 512), panels go in chunks, every row block over one
        // chunk before the next, so that the chunk stays in the cache while the rows go over it.
        for chunk in super::chunks(panels, k, false) {
            let mut r = 0;
            while r < m {
                let rows = (m - r).min(6);
                let (a, dst) = (unsafe { a.add(r * a_rs) }, dst.wrapping_add(r * dst_rs));
                unsafe {
                    match rows {
                        6 => block::<6, 2>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                        5 => block::<5, 2>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                        4 => block::<4, 2>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                        3 => block::<3, 4>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                        2 => block::<2, 4>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                        _ => block::<1, 8>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                    }
                }
                r += rows;
            }
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
                    let out = dst.wrapping_add(r * dst_rs + col);
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::NR;

    /// As the AVX2 kernel, with one 16-float vector a panel row: rows in blocks of 8 while there are 8, each
    /// over 3 panels at a time (24 accumulators of the 32 registers), then the rest in blocks of up to 6 over
    /// `NP` panels. Eight rows by three panels takes one pass over B for every 8 rows where six by four took
    /// one for every 6: on a 2 MiB-L2 Xeon, a product of 16 rows by B [256, 1024] went from 66 to 77 GMAC/s
    /// on one core, and by B [512, 2048] from 38 to 64. The 8-row blocks always go over B in chunks: 32 rows
    /// by B [256, 1024] made 62 GMAC/s in one pass over the panels and 77 in chunks.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
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
        // Where B is larger than the cache (4 MiB for H = 512), panels go in chunks, every row block over one
        // chunk before the next, so that the chunk stays in the cache while the rows go over it.
        for chunk in super::chunks(panels, k, m >= 8) {
            let mut r = 0;
            while r < m {
                let rows = if m - r >= 8 { 8 } else { (m - r).min(6) };
                let (a, dst) = (unsafe { a.add(r * a_rs) }, dst.wrapping_add(r * dst_rs));
                unsafe {
                    match rows {
                        8 => block::<8, 3>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                        6 => block::<6, 4>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                        5 => block::<5, 4>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                        4 => block::<4, 6>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                        3 => block::<3, 8>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                        2 => block::<2, 8>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                        _ => block::<1, 8>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                    }
                }
                r += rows;
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const MR: usize, const NP: usize>(
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
        let mut p = panels.start;
        while p + NP <= panels.end {
            unsafe { tile::<MR, NP>(k, n, a, a_rs, b, p, dst, dst_rs, acc) };
            p += NP;
        }
        while p < panels.end {
            unsafe { tile::<MR, 1>(k, n, a, a_rs, b, p, dst, dst_rs, acc) };
            p += 1;
        }
    }

    /// Rows `0..MR` by panels `p0..p0 + NP`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const MR: usize, const NP: usize>(
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
            let mut c = [[_mm512_setzero_ps(); NP]; MR];
            for i in 0..k {
                let mut bv = [_mm512_setzero_ps(); NP];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(b.add((p0 + v) * k * NR + i * NR));
                }
                for (r, cr) in c.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a.add(r * a_rs + i));
                    for (x, &bx) in cr.iter_mut().zip(&bv) {
                        *x = _mm512_fmadd_ps(av, bx, *x);
                    }
                }
            }
            for (r, cr) in c.iter().enumerate() {
                for (v, &x) in cr.iter().enumerate() {
                    let col = (p0 + v) * NR;
                    if col >= n {
                        continue;
                    }
                    // The last panel's columns past n are padding: masked off.
                    let mask: __mmask16 = if col + NR <= n { 0xFFFF } else { (1u16 << (n - col)) - 1 };
                    let out = dst.wrapping_add(r * dst_rs + col);
                    let x = if acc { _mm512_add_ps(_mm512_maskz_loadu_ps(mask, out), x) } else { x };
                    _mm512_mask_storeu_ps(out, mask, x);
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::NR;

    /// Rows in blocks of up to 6, each over `NV` 4-float vectors (`NV / 4` panels) at a time: 16 to 32
    /// accumulators would not fit with the operands, so 24 at most.
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
        // Where B is larger than the cache (4 MiB for H = 512), panels go in chunks, every row block over one
        // chunk before the next, so that the chunk stays in the cache while the rows go over it.
        for chunk in super::chunks(panels, k, false) {
            let mut r = 0;
            while r < m {
                let rows = (m - r).min(6);
                let (a, dst) = (unsafe { a.add(r * a_rs) }, dst.wrapping_add(r * dst_rs));
                unsafe {
                    match rows {
                        6 => block::<6, 4>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                        5 => block::<5, 4>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                        4 => block::<4, 4>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                        3 => block::<3, 8>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                        2 => block::<2, 8>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                        _ => block::<1, 8>(k, n, a, a_rs, b, chunk.clone(), dst, dst_rs, acc),
                    }
                }
                r += rows;
            }
        }
    }

    #[inline]
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
        let per = NV / 4;
        let mut p = panels.start;
        while p + per <= panels.end {
            unsafe { tile::<MR, NV>(k, n, a, a_rs, b, p, dst, dst_rs, acc) };
            p += per;
        }
        while p < panels.end {
            unsafe { tile::<MR, 4>(k, n, a, a_rs, b, p, dst, dst_rs, acc) };
            p += 1;
        }
    }

    /// Rows `0..MR` by the `NV` vectors of columns from panel `p0` on.
    #[inline]
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
            let mut c = [[vdupq_n_f32(0.0); NV]; MR];
            // Vector v reads panel p0 + v / 4, quarter v % 4.
            let base = |v: usize| b.add((p0 + v / 4) * k * NR + (v % 4) * 4);
            for i in 0..k {
                let mut bv = [vdupq_n_f32(0.0); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = vld1q_f32(base(v).add(i * NR));
                }
                for (r, cr) in c.iter_mut().enumerate() {
                    let av = vdupq_n_f32(*a.add(r * a_rs + i));
                    for (x, &bx) in cr.iter_mut().zip(&bv) {
                        *x = vfmaq_f32(*x, av, bx);
                    }
                }
            }
            for (r, cr) in c.iter().enumerate() {
                for (v, &x) in cr.iter().enumerate() {
                    let col = (p0 + v / 4) * NR + (v % 4) * 4;
                    if col >= n {
                        continue;
                    }
                    let out = dst.wrapping_add(r * dst_rs + col);
                    if col + 4 <= n {
                        let x = if acc { vaddq_f32(vld1q_f32(out), x) } else { x };
                        vst1q_f32(out, x);
                    } else {
                        let mut tmp = [0f32; 4];
                        vst1q_f32(tmp.as_mut_ptr(), x);
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
            // The last goes over B in chunks (1.6 MB of B, 50 panels: two full chunks and a short one); on AVX-512, so
            // do those of 8 rows or more.
            [
                (1, 1, 1),
                (1, 7, 5),
                (2, 9, 16),
                (3, 4, 17),
                (5, 33, 40),
                (6, 8, 64),
                (13, 21, 37),
                (16, 64, 96),
                (24, 16, 500),
                (16, 512, 800),
            ]
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

    /// The AVX-512 and AVX2 variants called directly (whatever `ENGRAM_ISA` chose) give the same bits, on a
    /// CPU that has both.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_and_avx2_variants_give_the_same_bits() {
        use super::super::isa::{Isa, detect};
        if detect() != Isa::Avx512 {
            eprintln!("no AVX-512 on this CPU: only the AVX2 variant runs here (see the test above)");
            return;
        }
        let mut rng = Rng::new(11);
        for (m, k, n) in [
            (1, 3, 1),
            (2, 17, 15),
            (3, 8, 33),
            (4, 64, 100),
            (5, 31, 16),
            (6, 40, 130),
            (9, 12, 257),
            (7, 512, 900),
            (16, 64, 400),
            (23, 9, 50),
        ] {
            let a = random(&mut rng, m * k);
            let b = random(&mut rng, k * n);
            let packed = Packed::rows(&b, k, n, n);
            let panels = n.div_ceil(super::NR);
            for accumulate in [false, true] {
                let init = random(&mut rng, m * (n + 1));
                let (mut x, mut y) = (init.clone(), init.clone());
                // SAFETY: the CPU has AVX-512 and AVX2 (checked above); the slices hold m rows of n + 1.
                unsafe {
                    super::avx2::matmul(
                        m,
                        k,
                        n,
                        a.as_ptr(),
                        k,
                        packed.data.as_ptr(),
                        0..panels,
                        x.as_mut_ptr(),
                        n + 1,
                        accumulate,
                    );
                    super::avx512::matmul(
                        m,
                        k,
                        n,
                        a.as_ptr(),
                        k,
                        packed.data.as_ptr(),
                        0..panels,
                        y.as_mut_ptr(),
                        n + 1,
                        accumulate,
                    );
                }
                assert_eq!(x, y, "m{m} k{k} n{n} accumulate {accumulate}");
                for r in 0..m {
                    assert_eq!(y[r * (n + 1) + n], init[r * (n + 1) + n], "padding column written");
                }
            }
        }
    }
}
