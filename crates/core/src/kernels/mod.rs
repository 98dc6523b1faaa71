//! Fused CPU kernels: forward and backward side by side, joined to candle autograd as custom ops.

pub mod activation;
pub mod attention;
pub mod bag;
pub mod gru;
pub mod isa;
pub mod linear;
pub mod lstm;
pub mod norm;
pub mod projected;
pub mod rnn;
pub(crate) mod small;

/// Where a kernel leaves a final state for the caller to read after the forward.
pub type FinalState = std::sync::Arc<std::sync::Mutex<Option<Vec<f64>>>>;

use gemm::Parallelism;

/// The float types the kernels run in, with the activations they apply element by element.
pub trait Real: candle_core::WithDType + num_traits::Float + std::ops::AddAssign + Send + Sync + 'static {
    /// `1 / (1 + exp(-x))`.
    #[inline(always)]
    fn sigmoid(self) -> Self {
        Self::one() / (Self::one() + (-self).exp())
    }

    /// `tanh(x)`.
    #[inline(always)]
    fn tanh_(self) -> Self {
        self.tanh()
    }

    /// `exp(x)`.
    #[inline(always)]
    fn exp_(self) -> Self {
        self.exp()
    }

    /// The error function.
    fn erf_(self) -> Self;

    /// The elements of a CPU storage of this type, for writing (None for another type).
    fn storage_mut(s: &mut candle_core::CpuStorage) -> Option<&mut [Self]>;
}

/// f64 keeps libm's functions: it is the precision of the gradient checks.
impl Real for f64 {
    #[inline(always)]
    fn erf_(self) -> f64 {
        candle_core::cpu::erf::erf_f64(self)
    }

    fn storage_mut(s: &mut candle_core::CpuStorage) -> Option<&mut [f64]> {
        match s {
            candle_core::CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
}

/// f32 uses the branch-free functions in [`fast`], which the compiler vectorises: libm's `expf` and `tanhf`
/// are scalar calls and took most of an LSTM step's time.
impl Real for f32 {
    #[inline(always)]
    fn sigmoid(self) -> f32 {
        fast::sigmoid(self)
    }

    #[inline(always)]
    fn tanh_(self) -> f32 {
        fast::tanh(self)
    }

    #[inline(always)]
    fn exp_(self) -> f32 {
        fast::exp(self)
    }

    #[inline(always)]
    fn erf_(self) -> f32 {
        fast::erf(self)
    }

    fn storage_mut(s: &mut candle_core::CpuStorage) -> Option<&mut [f32]> {
        match s {
            candle_core::CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use isa::{has_avx2, has_avx512};

/// Defines an element-wise pass over slices that runs compiled for AVX-512 or for AVX2 and FMA when the CPU has
/// them (16 or 8 floats at a time instead of the baseline x86-64's 4), and as built otherwise: prebuilt
/// binaries target the baseline, so this is decided at run time ([`isa`]). On aarch64 the baseline is NEON.
/// Each slice is its own argument so that the compiler knows they do not overlap and vectorises the loops
/// without run-time overlap checks; what the body calls must be `#[inline(always)]` to be compiled with it.
macro_rules! simd_fn {
    ($(#[$m:meta])* fn $name:ident<T: Real>($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        fn $name<T: Real>($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body<T: Real>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512<T: Real>($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2<T: Real>($($arg: $ty),*) {
                    body($($arg),*)
                }
                if $crate::kernels::has_avx512() {
                    // SAFETY: the CPU has the features `avx512` is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::kernels::has_avx2() {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// `sum(v)` in 8 interleaved partial sums, so that the loop vectorises (a single running sum is a chain of
/// dependent additions the compiler must keep in order).
#[inline(always)]
pub(crate) fn sum_lanes<T: Real>(v: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    let mut s = T::zero();
    for &x in rest {
        s += x;
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + s
}

/// `sum(a * b)` as [`sum_lanes`] does it.
#[inline(always)]
pub(crate) fn dot_lanes<T: Real>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero(); 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += ca[l] * cb[l];
        }
    }
    let mut s = T::zero();
    for i in n - n % 8..n {
        s += a[i] * b[i];
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + s
}

/// `max(v)` (negative infinity when empty) as [`sum_lanes`] does it.
#[inline(always)]
pub(crate) fn max_lanes<T: Real>(v: &[T]) -> T {
    let mut acc = [T::neg_infinity(); 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    let mut m = T::neg_infinity();
    for &x in rest.iter().chain(acc.iter()) {
        m = if x > m { x } else { m };
    }
    m
}

/// Branch-free f32 transcendental functions, accurate to a few units in the last place.
pub mod fast {
    /// `exp(x)` by Cody-Waite range reduction `x = n ln2 + r`, `|r| <= ln2 / 2`, and a degree-6 polynomial
    /// for `exp(r)` (the classic Cephes `expf` coefficients); `2^n` is built in the exponent bits.
    #[inline(always)]
    pub fn exp(x: f32) -> f32 {
        // Past these bounds exp overflows or underflows f32; clamping keeps 2^n inside the exponent range.
        let x = x.clamp(-87.0, 88.0);
        // Round to nearest without a libm call or a float-to-int conversion (Rust's `as` saturates, which does
        // not vectorise): adding 1.5 * 2^23 pushes the fraction out of the mantissa, whose low bits then hold n.
        const MAGIC: f32 = 12_582_912.0;
        let k = x * std::f32::consts::LOG2_E + MAGIC;
        let n = k - MAGIC;
        // ln2 split in two so that n * C1 is exact.
        let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
        let p = 1.987_569_1e-4;
        let p = p * r + 1.398_199_9e-3;
        let p = p * r + 8.333_452e-3;
        let p = p * r + 4.166_579_6e-2;
        let p = p * r + 1.666_666_5e-1;
        let p = p * r + 0.5;
        let y = p * r * r + r + 1.0;
        // 2^n: n + 127 in the exponent bits (n is in -126..=127 after the clamp).
        let two_n = (k.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127)) << 23;
        y * f32::from_bits(two_n)
    }

    #[inline(always)]
    pub fn sigmoid(x: f32) -> f32 {
        1.0 / (1.0 + exp(-x))
    }

    /// `erf(x)` by Abramowitz and Stegun 7.1.26: absolute error 1.5e-7 in exact arithmetic, under 6e-7 in f32
    /// with the fast exponential. Ample where it is added to 1, as in the GELU; not a relative accuracy near 0.
    #[inline(always)]
    pub fn erf(x: f32) -> f32 {
        let a = x.abs();
        let t = 1.0 / (1.0 + 0.327_591_1 * a);
        let p = 1.061_405_4;
        let p = p * t - 1.453_152_1;
        let p = p * t + 1.421_413_8;
        let p = p * t - 0.284_496_74;
        let p = p * t + 0.254_829_6;
        let y = 1.0 - p * t * exp(-a * a);
        y.copysign(x)
    }

    /// `tanh(x) = 2 sigmoid(2x) - 1`: absolute error about 1e-7, which is what f32 holds near 1 anyway.
    #[inline(always)]
    pub fn tanh(x: f32) -> f32 {
        2.0 / (1.0 + exp(-2.0 * x)) - 1.0
    }
}

/// The recurrent weights as an [`Inner`] recurrence reads them, prepared once per call by [`projected`]: the
/// per-step products by `W_hh^T` (forward) and `W_hh` (backward) and `b_hh`.
pub(crate) struct Hidden<'a, T> {
    /// `W_hh [G*H, H]`, a view into the op's weight matrix: row r starts at `hh[r * stride]`.
    hh: &'a [T],
    stride: usize,
    hidden: usize,
    gates: usize,
    /// The right-hand side of the step's product, prepared once for every step of the call.
    rhs: Rhs<T>,
    /// `b_hh [G*H]` where it stays in the recurrence (the LSTM and GRU); empty where it joined `xp`.
    pub b_hh: Vec<T>,
}

enum Rhs<T> {
    /// Packed for the small-batch micro-kernel ([`small`]).
    Packed(small::Packed<T>),
    /// `W_hh^T [H, G*H]` row-major, for the general GEMM (given `W_hh` as a transposed view, the GEMM would
    /// gather all of it element by element at every step).
    Transposed(Vec<T>),
    /// `W_hh` read in place by the general GEMM.
    InPlace,
}

impl<'a, T: Real> Hidden<'a, T> {
    /// For a forward (products by `W_hh^T`) or a backward (by `W_hh`); `hh` as in the field.
    pub fn new(hh: &'a [T], stride: usize, gates: usize, hidden: usize, b_hh: Vec<T>, forward: bool) -> Self {
        let gh = gates * hidden;
        let rhs = match (small::available::<T>(), forward) {
            (true, true) => Rhs::Packed(small::Packed::transposed(hh, hidden, gh, stride)),
            (true, false) => Rhs::Packed(small::Packed::rows(hh, gh, hidden, stride)),
            (false, true) => Rhs::Transposed(transpose(hh, gh, hidden, stride)),
            (false, false) => Rhs::InPlace,
        };
        Hidden { hh, stride, hidden, gates, rhs, b_hh }
    }

    /// `W_hh` packed for the small-batch product, where it was.
    pub fn packed(&self) -> Option<&small::Packed<T>> {
        match &self.rhs {
            Rhs::Packed(p) => Some(p),
            _ => None,
        }
    }

    /// `dst [m, G*H] (+)= h [m, H] x W_hh^T` (built for a forward).
    pub fn times_t(&self, m: usize, h: &[T], dst: &mut [T], accumulate: bool) {
        let (hd, gh) = (self.hidden, self.gates * self.hidden);
        match &self.rhs {
            Rhs::Packed(p) if small::matmul(m, h, hd, p, dst, gh, accumulate) => {}
            Rhs::Transposed(t) => matmul(m, gh, hd, dst, gh, accumulate, Mat::rows(h, hd), Mat::rows(t, gh)),
            _ => {
                let view = Mat { ptr: self.hh.as_ptr(), rs: 1, cs: self.stride as isize };
                matmul(m, gh, hd, dst, gh, accumulate, Mat::rows(h, hd), view)
            }
        }
    }

    /// `dst [m, H] (+)= d [m, G*H] x W_hh` (built for a backward), `d`'s rows `d_rs` apart.
    pub fn times(&self, m: usize, d: &[T], d_rs: usize, dst: &mut [T], accumulate: bool) {
        let (hd, gh) = (self.hidden, self.gates * self.hidden);
        match &self.rhs {
            Rhs::Packed(p) if small::matmul(m, d, d_rs, p, dst, hd, accumulate) => {}
            _ => {
                let view = Mat { ptr: self.hh.as_ptr(), rs: self.stride as isize, cs: 1 };
                let lhs = Mat { ptr: d.as_ptr(), rs: d_rs as isize, cs: 1 };
                matmul(m, hd, gh, dst, hd, accumulate, lhs, view)
            }
        }
    }
}

/// A recurrence over precomputed input projections `xp [B, T, G*H]` (batch-major), as [`projected`] drives it
/// on one slice of the batch.
pub(crate) trait Inner<T: Real>: Send + Sync + 'static {
    /// What the backward needs from the forward.
    type Saved: Send + Sync;
    /// Gate blocks per step (4, 3, 1).
    const GATES: usize;
    /// State blocks in `s0` (2 for an LSTM's h and c).
    const STATES: usize;
    /// Whether `b_hh` is added inside the recurrence (as PyTorch rounds it, or because the GRU's `n` gate needs
    /// it there) instead of joining `xp`.
    const HH_BIAS_INSIDE: bool;
    /// Writes `h` for every step into `out [B, T, H]` (zero past a row's length). With `keep`, keeps what the
    /// backward needs; otherwise only the final state.
    fn run(&self, xp: &[T], w: &Hidden<T>, s0: &[T], out: &mut [T], keep: bool) -> Self::Saved;
    /// Writes d xp `[B, T, G*H]` (zero-filled on entry) and d s0 `[B, S*H]` for the incoming gradient of the
    /// output, and returns (d W_hh `[G*H, H]`, d b_hh `[G*H]`); d b_hh is left empty where it equals d b_ih (the
    /// column sums of d xp, which the caller makes anyway).
    fn grad(&self, s: &Self::Saved, w: &Hidden<T>, dout: &[T], dxp: &mut [T], ds0: &mut [T]) -> (Vec<T>, Vec<T>);
    /// The final cell state `[B, H]` (an LSTM's; None otherwise).
    fn final_cell(&self, _s: &Self::Saved) -> Option<Vec<f64>> {
        None
    }
    /// The same recurrence over batch rows `rows` only.
    fn rows(&self, rows: std::ops::Range<usize>) -> Self;
    /// How many threads [`Inner::run`] shares the hidden units of the whole batch among, where it does (the
    /// batch is then not cut into slices); 1 otherwise.
    fn unit_threads(&self, _keep: bool) -> usize {
        1
    }
}

/// `let a = &v[0..n]; let b = &v[n..2n]; ...`: consecutive blocks of `n` elements of `v`, each a slice whose
/// length the compiler sees to be exactly `n`, so that it drops the bounds checks in the element loops. (Built
/// as an array by a function, the lengths went through memory: the loops then kept their checks, which made
/// LLVM run a whole vector's worth of every row in scalar code, a third of an LSTM cell's time.)
macro_rules! blocks {
    ($v:expr, $n:expr => $($name:ident),+ $(,)?) => {
        $crate::kernels::blocks!($v, $n, $n => $($name),+);
    };
    // Blocks of `n` that start `stride` apart.
    ($v:expr, $n:expr, $stride:expr => $($name:ident),+ $(,)?) => {
        let (__v, __n, __stride) = ($v, $n, $stride);
        let mut __at = 0usize;
        $(
            let $name = &__v[__at..__at + __n];
            __at += __stride;
        )+
        let _ = __at;
    };
}
pub(crate) use blocks;

/// As [`blocks!`], for writing: `v` cut into consecutive mutable blocks of `n` elements.
macro_rules! blocks_mut {
    ($v:expr, $n:expr => $($name:ident),+ $(,)?) => {
        let (__rest, __n): (&mut [_], usize) = ($v, $n);
        $(
            let ($name, __rest) = __rest.split_at_mut(__n);
        )+
        let _ = __rest;
    };
}
pub(crate) use blocks_mut;

/// A pointer that several threads use at once, each writing only its own elements of what it points to (the
/// callers' SAFETY comments say which): Send and Sync so that closures run on other threads may hold it.
pub(crate) struct SharedMut<T>(*mut T);

impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}

// SAFETY: the threads that share one write disjoint elements (each user's SAFETY comments), and read only what
// no thread writes meanwhile.
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub fn new(ptr: *mut T) -> Self {
        SharedMut(ptr)
    }

    /// The pointer (a method, so that closures capture the whole value, which is Send, not its field).
    pub fn get(self) -> *mut T {
        self.0
    }

    /// The `len` elements from `at`, for writing.
    ///
    /// # Safety
    /// They must lie inside the allocation, and no other thread may access them while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut<'a>(self, at: usize, len: usize) -> &'a mut [T] {
        // SAFETY: the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }

    /// The `len` elements from `at`, for reading.
    ///
    /// # Safety
    /// They must lie inside the allocation, and no thread may write them while the slice lives.
    pub unsafe fn slice<'a>(self, at: usize, len: usize) -> &'a [T] {
        // SAFETY: the caller's promise.
        unsafe { std::slice::from_raw_parts(self.0.add(at) as *const T, len) }
    }
}

/// A barrier for a fixed set of threads that step through a loop together ([`Team::steps`]),
/// which spins for a while before yielding: a step of such a loop takes tens to hundreds of microseconds,
/// far less than a futex sleep and wake-up round trip on a virtual machine. Each round also carries a vote,
/// so that every thread leaves the loop at the same step when one of them sees the call cancelled.
pub(crate) struct StepBarrier {
    threads: std::sync::atomic::AtomicUsize,
    arrived: std::sync::atomic::AtomicUsize,
    generation: std::sync::atomic::AtomicUsize,
    /// The stop votes of even and odd rounds.
    stop: [std::sync::atomic::AtomicBool; 2],
}

impl StepBarrier {
    /// For `threads` threads; [`StepBarrier::set_threads`] may lower the count before the last of them arrives.
    pub fn new(threads: usize) -> Self {
        StepBarrier {
            threads: std::sync::atomic::AtomicUsize::new(threads),
            arrived: Default::default(),
            generation: Default::default(),
            stop: Default::default(),
        }
    }

    /// The number of threads that take part, where fewer than planned could be started: set before this thread
    /// arrives at the first round.
    pub fn set_threads(&self, threads: usize) {
        self.threads.store(threads, std::sync::atomic::Ordering::Release);
    }

    /// Waits until every thread has arrived at round `round` (counted from 0 by each thread), and returns
    /// whether any of them voted to stop in this round.
    pub fn wait(&self, round: usize, stop: bool) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
        let slot = round & 1;
        if stop {
            self.stop[slot].store(true, Relaxed);
        }
        let generation = self.generation.load(Acquire);
        if self.arrived.fetch_add(1, AcqRel) + 1 == self.threads.load(Acquire) {
            // The last to arrive: every thread has read the other slot's vote (of the round before), so it can
            // be cleared for the next round.
            self.arrived.store(0, Relaxed);
            self.stop[slot ^ 1].store(false, Relaxed);
            self.generation.fetch_add(1, Release);
        } else {
            let mut spins = 0u32;
            while self.generation.load(Acquire) == generation {
                if spins < 1 << 14 {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        self.stop[slot].load(Acquire)
    }
}

/// The threads of a pool that join a call which steps through a loop together ([`Team::steps`]): the caller,
/// index 0, and the helper jobs it spawned that started before it closed the team. A helper whose thread was
/// busy elsewhere must not be waited for (two such calls, each waiting on the other's threads, would wait for
/// ever): it finds the team closed and does nothing, and the others share its work.
pub(crate) struct Team {
    /// The members so far (the caller counts from the start), with [`Team::CLOSED`] set once closed.
    state: std::sync::atomic::AtomicUsize,
    /// Counted in members once the team is closed (no member arrives before that).
    barrier: StepBarrier,
}

impl Team {
    const CLOSED: usize = 1 << (usize::BITS - 1);

    pub fn new() -> Self {
        Team { state: std::sync::atomic::AtomicUsize::new(1), barrier: StepBarrier::new(0) }
    }

    /// For a helper: its index and the number of members, once the caller closed the team; None where it was
    /// closed before this helper started.
    pub fn join(&self) -> Option<(usize, usize)> {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        let index = self
            .state
            .fetch_update(AcqRel, Acquire, |s| if s & Self::CLOSED != 0 { None } else { Some(s + 1) })
            .ok()?;
        loop {
            let s = self.state.load(Acquire);
            if s & Self::CLOSED != 0 {
                return Some((index, s & !Self::CLOSED));
            }
            std::hint::spin_loop();
        }
    }

    /// For the caller: waits a little (200 microseconds at most) for `want` members, closes the team and returns
    /// the number of members.
    pub fn close(&self, want: usize) -> usize {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        let start = std::time::Instant::now();
        while self.state.load(Acquire) < want && start.elapsed() < std::time::Duration::from_micros(200) {
            std::hint::spin_loop();
        }
        let members = self.state.fetch_or(Self::CLOSED, AcqRel) & !Self::CLOSED;
        // Before this thread arrives at the barrier's first round, so that the last to arrive sees the count.
        self.barrier.set_threads(members);
        members
    }

    /// For every member: runs `step(t)` for `t` in `0..steps`, all members meeting after each step. Every member
    /// leaves at the same step once one of them sees `cancel` set or its step panics; the panic then goes on
    /// from that member (left to itself, it would leave the others waiting at the barrier for ever).
    pub fn steps(&self, steps: usize, cancel: &crate::cancel::Cancel, mut step: impl FnMut(usize)) {
        let mut panic = None;
        for t in 0..steps {
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(t))) {
                panic = Some(p);
            }
            if self.barrier.wait(t, panic.is_some() || cancel.is_set()) {
                break;
            }
        }
        if let Some(p) = panic {
            std::panic::resume_unwind(p);
        }
    }
}

/// Column sums of `m [rows, n]` row-major.
pub(crate) fn column_sums<T: Real>(m: &[T], n: usize) -> Vec<T> {
    let mut s = vec![T::zero(); n];
    for row in m.chunks_exact(n) {
        for (d, &v) in s.iter_mut().zip(row) {
            *d += v;
        }
    }
    s
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

/// The elements a contiguous CPU storage covers, for writing.
pub(crate) fn slice_mut<'a, T: Real>(
    s: &'a mut candle_core::CpuStorage,
    l: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a mut [T]> {
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("kernel: {what} must be contiguous") };
    match T::storage_mut(s) {
        Some(all) => Ok(&mut all[a..b]),
        None => candle_core::bail!("kernel: {what} has another dtype than {:?}", T::DTYPE),
    }
}

/// Runs `f` on the elements of a CPU tensor in place (a copy only when it is not contiguous).
pub(crate) fn with_host<T: Real, R>(t: &candle_core::Tensor, f: impl FnOnce(&[T]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => Ok(f(slice(cpu, layout, "tensor")?)),
        _ => candle_core::bail!("kernel: expected a CPU tensor"),
    }
}

/// Makes candle run its element-wise ops on the calling thread, unless the user has set `CANDLE_NUM_THREADS`.
///
/// candle hands element-wise ops of 64K elements or more to a pool of its own, whose workers spin for a while
/// after each op. engram's heavy work (GEMMs, fused kernels) runs on rayon's threads, one per core, so the
/// spinning worker takes a core from them: on 2 cores it took a third of a Transformer block's training step
/// (20 ms against 16 ms; the nanoGPT configuration 71 against 51 ms). The ops left to candle are light passes
/// over memory that gain little from a second thread.
///
/// candle reads the variable once, when its pool starts, so this must run before the first candle op; and as
/// it writes the environment it must run while no other thread reads it: the Node addon calls it as it loads.
pub fn inline_elementwise() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called before engram starts any thread (see above); the variable is only read by candle.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
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

/// Whether this thread runs one slice of a batch (see [`serial`]).
pub(crate) fn in_serial() -> bool {
    SERIAL.with(|s| s.get())
}

/// A call's work, in multiply-adds (parameters times positions, a rough count), below which it runs on the
/// calling thread alone. Sharing a step out costs a few wake-ups of tens of microseconds each (futex calls,
/// the kernel's time); a tiny model (an LSTM of 16 over a batch of 4 x 6) took 1.2 ms a step on two threads
/// against 0.37 ms on one.
pub const SMALL_WORK: u64 = 1 << 20;

/// The least work in a recurrent layer's pass (multiply-adds of its recurrence) for which the batch is cut into
/// slices, one a thread: below about 256K the slices' wake-ups cost more than they save.
pub(crate) const SLICE_WORK: usize = 1 << 18;

/// The least `k * n` for which a product of one or two rows is split between threads: below it the join
/// costs more than half the product (a GRU of 128 at batch 1, 49K, spent more time in the kernel than in user
/// code when it split).
pub(crate) const SPLIT_WORK: usize = 1 << 17;

/// The least work in an LSTM's recurrence (multiply-adds over all steps) for which its hidden units are shared
/// among threads stepping together (see `lstm::LstmSeq::forward_units`): 4M, some 50 microseconds on one
/// core, against the few microseconds the threads take to join.
pub(crate) const UNITS_WORK: usize = 1 << 22;

/// Runs `f` with every kernel and parallel pass kept on the calling thread when `work` (see [`SMALL_WORK`]) is
/// below the threshold, as is otherwise.
pub fn on_caller_if_small<R>(work: u64, f: impl FnOnce() -> R) -> R {
    if work < SMALL_WORK { serial(f) } else { f() }
}

/// Whether `units` of work (elements, rows) are worth sharing out from here: more than one thread, not already
/// inside a slice or a small call, and at least `min` units.
pub(crate) fn share(units: usize, min: usize) -> bool {
    units >= min && !in_serial() && rayon::current_num_threads() > 1
}

pub(crate) fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    if in_serial() {
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

/// `w [rows, cols]` (row r at `w[r * stride]`), transposed: `[cols, rows]` row-major.
pub(crate) fn transpose<T: Real>(w: &[T], rows: usize, cols: usize, stride: usize) -> Vec<T> {
    const TILE: usize = 16;
    let mut t = vec![T::zero(); rows * cols];
    // Tile by tile, so both the reads and the writes stay in cache; the writes run along a row of `t`.
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            for c in c0..(c0 + TILE).min(cols) {
                let dst = &mut t[c * rows + r0..c * rows + r1];
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = w[(r0 + i) * stride + c];
                }
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {

    /// A member whose step panics stops every member at that step (none is left waiting at the barrier), and
    /// the panic reaches the caller; without one, every member runs every step.
    #[test]
    fn a_team_stops_together_when_a_member_panics() {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for panic_at in [None, Some(4)] {
            let done = [AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)];
            let members = AtomicUsize::new(0);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.install(|| {
                    let team = super::Team::new();
                    let run = |i: usize| {
                        team.steps(10, &crate::cancel::Cancel::default(), |t| {
                            if i == 0 && Some(t) == panic_at {
                                panic!("step {t}");
                            }
                            done[i].fetch_add(1, Relaxed);
                        })
                    };
                    rayon::scope(|s| {
                        for _ in 1..3 {
                            s.spawn(|_| {
                                if let Some((i, _)) = team.join() {
                                    run(i);
                                }
                            });
                        }
                        members.store(team.close(3), Relaxed);
                        run(0);
                    });
                })
            }));
            let members = members.load(Relaxed);
            assert!(members >= 1);
            let steps: Vec<usize> = done.iter().take(members).map(|d| d.load(Relaxed)).collect();
            match panic_at {
                None => {
                    assert!(outcome.is_ok());
                    assert!(steps.iter().all(|&n| n == 10), "{steps:?}");
                }
                Some(at) => {
                    assert!(outcome.is_err(), "the panic did not reach the caller");
                    // Member 0 finished `at` steps; the others also the one where it panicked.
                    assert_eq!(steps[0], at);
                    assert!(steps[1..].iter().all(|&n| n == at + 1), "{steps:?}");
                }
            }
        }
    }
    use super::{dot_lanes, fast, max_lanes, sum_lanes};

    #[test]
    fn lane_reductions_match_plain_loops_at_every_length() {
        for n in 0..40 {
            let a: Vec<f64> = (0..n).map(|i| ((i * 37 % 11) as f64 - 5.0) * 0.25).collect();
            let b: Vec<f64> = (0..n).map(|i| ((i * 13 % 7) as f64 - 3.0) * 0.5).collect();
            assert!((sum_lanes(&a) - a.iter().sum::<f64>()).abs() < 1e-12, "sum, n {n}");
            let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot_lanes(&a, &b) - dot).abs() < 1e-12, "dot, n {n}");
            assert_eq!(max_lanes(&a), a.iter().copied().fold(f64::NEG_INFINITY, f64::max), "max, n {n}");
        }
    }

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
        let mut worst_erf = 0f64;
        let mut x = -8.0f32;
        while x <= 8.0 {
            worst_erf = worst_erf.max(((fast::erf(x) as f64) - candle_core::cpu::erf::erf_f64(x as f64)).abs());
            x += 0.000_37;
        }
        assert!(worst_erf < 6e-7, "erf absolute error {worst_erf}");
        // Saturation: no NaN or infinity far out.
        for x in [-1e30f32, -500.0, 500.0, 1e30] {
            assert!(fast::sigmoid(x).is_finite() && fast::tanh(x).is_finite() && fast::exp(x).is_finite());
        }
        assert_eq!(fast::tanh(1e30), 1.0);
        assert_eq!(fast::tanh(-1e30), -1.0);
    }
}
