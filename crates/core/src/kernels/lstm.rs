//! The LSTM recurrence over one slice of the batch, forward and backward, for [`super::projected`].
//!
//! Input: `xp [batch, seq_len, 4H]`, the input projection of every step with `b_ih` added; `W_hh` and `b_hh`
//! ([`Hidden`]); `s0 [batch, 2H]`, the initial `h` and `c` side by side. Output: `h` for every step. Gate order
//! i, f, g, o as in PyTorch, and the pre-activation is `xp + (h W_hh^T + b_hh)`, PyTorch's rounding.
//!
//! Forward, per step: one GEMM `hp = h W_hh^T`, then one fused pass that makes the gates, `c`, `tanh(c)` and
//! `h`. Backward, per step: one fused pass for the gate gradients and one GEMM `dh = dgates W_hh`; after the
//! loop, `dW_hh` for all steps as one GEMM `dgates^T [4H, T*B] x h_prev [T*B, H]`. The forward keeps only
//! what the backward reads (gate activations, `c`, `tanh(c)` and `h` per step), and nothing but a step's
//! worth when no backward will follow.
//!
//! With `lengths`, row b runs its first `lengths[b]` steps only: past them its state is carried unchanged and
//! its output is zero, as PyTorch's packed sequences (see [`Lengths`]).

use super::{Hidden, Inner, Lengths, Mat, Real, SharedMut, Team, blocks, blocks_mut, matmul, simd_fn, small};

/// Bytes of `W_hh` above which a forward without a backward shares the hidden units among the threads instead
/// of the batch ([`LstmSeq::forward_units`]): 1.5 MiB, most of a 2 MiB L2. On a 2-core Xeon with AVX-512 and
/// 2 MiB of L2 a core, an LSTM of 512 (4 MiB) over 50 steps went from 23-25 to 22 ms at batch 32; at H = 256
/// (1 MiB, which each core holds whole) cutting the batch is as fast. (A batch of one row shares its units at
/// any size from [`super::SPLIT_WORK`]: at H = 512 that took an inference from 4.2-5.2 to 3.7 ms.)
const UNITS_ABOVE: usize = 3 << 19;

/// What the backward needs from the forward, time-major. Without a backward, each buffer holds the latest
/// step only (`c` the latest two).
pub struct Saved<T> {
    /// Gate activations `[T, B, 4H]`: sigmoid(i), sigmoid(f), tanh(g), sigmoid(o).
    gates: Vec<T>,
    /// `c` for steps 0..=T (`c[0]` is the initial state), `[T+1, B, H]`.
    c: Vec<T>,
    /// `h` likewise, `[T+1, B, H]`.
    h: Vec<T>,
    /// `tanh(c)` for steps 1..=T, `[T, B, H]`, so the backward need not recompute it.
    tc: Vec<T>,
    /// Whether every step was kept.
    keep: bool,
}

pub(crate) struct LstmSeq {
    batch: usize,
    seq_len: usize,
    hidden: usize,
    lengths: Lengths,
    /// The flag of the call that built the op: the time loops stop early once it is set (the op then fails).
    cancel: crate::cancel::Cancel,
}

impl LstmSeq {
    pub(crate) fn new(batch: usize, seq_len: usize, hidden: usize, lengths: Lengths) -> Self {
        LstmSeq { batch, seq_len, hidden, lengths, cancel: crate::cancel::current() }
    }

    /// How many threads a forward shares the hidden units among (see [`LstmSeq::forward_units`]); 1 where it
    /// does not. Only where the product has a micro-kernel and the units fall on its panels, and either a batch
    /// of one row, whose product would be split between the threads at every step anyway (with a join each
    /// time), or a forward without a backward whose `W_hh` is larger than a core's cache can hold beside the
    /// rest.
    fn threads_for_units<T: Real>(&self, keep: bool) -> usize {
        let h = self.hidden;
        let bytes = 4 * h * h * std::mem::size_of::<T>();
        let one_row = self.batch == 1 && 4 * h * h >= super::SPLIT_WORK;
        let large = !keep && bytes > UNITS_ABOVE;
        if !(one_row || large) || !small::available::<T>() || !h.is_multiple_of(small::NR) {
            return 1;
        }
        if !super::share(self.batch * self.seq_len * 4 * h * h, super::UNITS_WORK) {
            return 1;
        }
        rayon::current_num_threads().min(h / small::NR)
    }

    /// The initial state `s0 [B, 2H]` (h and c side by side) into step 0 of `hs` and `cs`.
    fn start<T: Real>(&self, s0: &[T], hs: &mut [T], cs: &mut [T]) {
        let h = self.hidden;
        for bi in 0..self.batch {
            hs[bi * h..(bi + 1) * h].copy_from_slice(&s0[bi * 2 * h..bi * 2 * h + h]);
            cs[bi * h..(bi + 1) * h].copy_from_slice(&s0[bi * 2 * h + h..(bi + 1) * 2 * h]);
        }
    }

    fn forward<T: Real>(&self, xp: &[T], w: &Hidden<T>, s0: &[T], out: &mut [T], keep: bool) -> Saved<T> {
        let threads = self.threads_for_units::<T>(keep);
        if threads > 1
            && let Some(packed) = w.packed()
        {
            return self.forward_units(xp, (packed, &w.b_hh), s0, out, keep, threads);
        }
        let (b, t_len, h) = (self.batch, self.seq_len, self.hidden);
        let g4 = 4 * h;
        let steps = if keep { t_len } else { 1 };
        let mut gates = vec![T::zero(); steps * b * g4];
        let mut tcs = vec![T::zero(); steps * b * h];
        let mut cs = vec![T::zero(); (if keep { t_len + 1 } else { 2 }) * b * h];
        let mut hs = vec![T::zero(); (if keep { t_len + 1 } else { 2 }) * b * h];
        // Step t's buffers (the latest one, or the latest two, when not keeping every step).
        let at = |t: usize| if keep { t } else { 0 };
        let state = |t: usize| if keep { t } else { t % 2 };
        let mut hp = vec![T::zero(); b * g4];
        self.start(s0, &mut hs, &mut cs);
        for t in 0..t_len {
            if self.cancel.is_set() {
                break;
            }
            let (prev, next) = (state(t) * b * h, state(t + 1) * b * h);
            // hp = h_{t-1} [B, H] x W_hh^T [H, 4H]
            w.times_t(b, &hs[prev..prev + b * h], &mut hp, false);
            let g = &mut gates[at(t) * b * g4..(at(t) + 1) * b * g4];
            let tc = &mut tcs[at(t) * b * h..(at(t) + 1) * b * h];
            for bi in 0..b {
                let row = (bi * t_len + t) * h;
                let o = &mut out[row..row + h];
                let (p, n) = (prev + bi * h, next + bi * h);
                if !self.lengths.live(bi, t) {
                    // Past this row's length: the state is carried as it was, the output is zero.
                    cs.copy_within(p..p + h, n);
                    hs.copy_within(p..p + h, n);
                    o.fill(T::zero());
                    continue;
                }
                let (c_prev, c_next) = pair(&mut cs, p, n, h);
                let h_next = &mut hs[n..n + h];
                let x = &xp[(bi * t_len + t) * g4..(bi * t_len + t + 1) * g4];
                let gr = &mut g[bi * g4..(bi + 1) * g4];
                cell(
                    x,
                    h,
                    &hp[bi * g4..(bi + 1) * g4],
                    &w.b_hh,
                    c_prev,
                    gr,
                    c_next,
                    &mut tc[bi * h..(bi + 1) * h],
                    h_next,
                );
                o.copy_from_slice(h_next);
            }
        }
        Saved { gates, c: cs, h: hs, tc: tcs, keep }
    }

    /// A forward over the whole batch whose hidden units are shared among up to `threads` threads (see
    /// [`LstmSeq::threads_for_units`] for where): each makes its units' gates (its columns of `h W_hh^T`, its
    /// rows of `W_hh` kept in its own cache from step to step) and their `c` and `h` for every row, and the
    /// threads meet after every step ([`Team::steps`]), when each needs the whole of `h`. Cutting the batch instead, every thread would read all of
    /// `W_hh` at every step: from the shared cache or memory once it outgrows a core's. The same bits as the
    /// batch-cut forward (every element is made by the same operations in the same order).
    fn forward_units<T: Real>(
        &self,
        xp: &[T],
        (packed, b_hh): (&small::Packed<T>, &[T]),
        s0: &[T],
        out: &mut [T],
        keep: bool,
        threads: usize,
    ) -> Saved<T> {
        let (b, t_len, h) = (self.batch, self.seq_len, self.hidden);
        let g4 = 4 * h;
        let steps = if keep { t_len } else { 1 };
        let mut saved_gates = vec![T::zero(); if keep { steps * b * g4 } else { 0 }];
        let mut tcs = vec![T::zero(); if keep { steps * b * h } else { 0 }];
        let states = if keep { t_len + 1 } else { 2 };
        let mut cs = vec![T::zero(); states * b * h];
        let mut hs = vec![T::zero(); states * b * h];
        let state = |t: usize| if keep { t } else { t % 2 };
        self.start(s0, &mut hs, &mut cs);
        let panels = h / small::NR;
        // The threads that join: a participant's share of the units, out of `n`.
        let units = |i: usize, n: usize| (i * panels / n * small::NR)..((i + 1) * panels / n * small::NR);
        let team = Team::new();
        let (c_ptr, h_ptr, out_ptr) =
            (SharedMut::new(cs.as_mut_ptr()), SharedMut::new(hs.as_mut_ptr()), SharedMut::new(out.as_mut_ptr()));
        let (g_ptr, tc_ptr) = (SharedMut::new(saved_gates.as_mut_ptr()), SharedMut::new(tcs.as_mut_ptr()));
        let run = |units: std::ops::Range<usize>| {
            let nu = units.len();
            let mut hp = vec![T::zero(); b * 4 * nu];
            let mut gates = vec![T::zero(); 4 * nu];
            let mut tc_own = vec![T::zero(); nu];
            team.steps(t_len, &self.cancel, |t| {
                let (prev, next) = (state(t) * b * h, state(t + 1) * b * h);
                // SAFETY: the state buffers hold `states` steps of b * h elements. Between two rounds of the
                // barrier no thread writes step t's state (`prev`), and each writes only its own units of step
                // t + 1's state, of `out` and of the kept gates and tanh(c) (row bi's at bi * h + units,
                // (bi * t_len + t) * h + units, (t * b + bi) * 4H + g * H + units and (t * b + bi) * h + units),
                // so the slices made here overlap nothing that another thread writes meanwhile.
                let (h_prev, c_prev) = unsafe { (h_ptr.slice(prev, b * h), c_ptr.slice(prev, b * h)) };
                for g in 0..4 {
                    // SAFETY: hp holds b rows of 4 * nu: gate g's columns go to nu of them, g * nu on.
                    let dst = unsafe { hp.as_mut_ptr().add(g * nu) };
                    let cols = g * h + units.start..g * h + units.end;
                    // SAFETY: as above.
                    let done = unsafe { small::matmul_columns(b, h_prev, h, packed, cols, dst, 4 * nu) };
                    assert!(done, "lstm: no small-product kernel for the shared forward");
                }
                for bi in 0..b {
                    let own = bi * h + units.start;
                    // SAFETY: this thread's units of row bi (see above).
                    let (h_next, c_next, o) = unsafe {
                        (
                            h_ptr.slice_mut(next + own, nu),
                            c_ptr.slice_mut(next + own, nu),
                            out_ptr.slice_mut((bi * t_len + t) * h + units.start, nu),
                        )
                    };
                    if !self.lengths.live(bi, t) {
                        h_next.copy_from_slice(&h_prev[own..own + nu]);
                        c_next.copy_from_slice(&c_prev[own..own + nu]);
                        o.fill(T::zero());
                        continue;
                    }
                    let row = (bi * t_len + t) * g4;
                    let tc = if keep {
                        // SAFETY: this thread's units of row bi at step t (see above).
                        unsafe { tc_ptr.slice_mut((t * b + bi) * h + units.start, nu) }
                    } else {
                        &mut tc_own[..]
                    };
                    cell(
                        &xp[row + units.start..row + g4],
                        h,
                        &hp[bi * 4 * nu..(bi + 1) * 4 * nu],
                        &b_hh[units.start..],
                        &c_prev[own..own + nu],
                        &mut gates,
                        c_next,
                        tc,
                        h_next,
                    );
                    o.copy_from_slice(h_next);
                    if keep {
                        for (g, part) in gates.chunks_exact(nu).enumerate() {
                            let at = (t * b + bi) * g4 + g * h + units.start;
                            // SAFETY: this thread's units of gate g, row bi, step t (see above).
                            unsafe { g_ptr.slice_mut(at, nu) }.copy_from_slice(part);
                        }
                    }
                }
            });
        };
        // The helpers are jobs of the pool, whose threads sit on their own cores already. One that has not
        // started when the team closes (its thread busy elsewhere) does nothing: the others share its units.
        rayon::scope(|s| {
            for _ in 1..threads {
                s.spawn(|_| {
                    if let Some((i, n)) = team.join() {
                        run(units(i, n));
                    }
                });
            }
            let n = team.close(threads);
            run(units(0, n));
        });
        Saved { gates: saved_gates, c: cs, h: hs, tc: tcs, keep }
    }

    fn backward<T: Real>(
        &self,
        s: &Saved<T>,
        w: &Hidden<T>,
        dout: &[T],
        dxp: &mut [T],
        ds0: &mut [T],
    ) -> (Vec<T>, Vec<T>) {
        let (b, t_len, h) = (self.batch, self.seq_len, self.hidden);
        let g4 = 4 * h;
        let mut dh = vec![T::zero(); b * h];
        let mut dc = vec![T::zero(); b * h];
        // The gate gradients go straight into d xp (batch-major: row (b, t) at (b * T + t) * 4H), which the
        // step's product then reads with a row stride of T * 4H.
        let row_stride = t_len * g4;
        for t in (0..t_len).rev() {
            if self.cancel.is_set() {
                break;
            }
            let gates = &s.gates[t * b * g4..(t + 1) * b * g4];
            let c_prev = &s.c[t * b * h..(t + 1) * b * h];
            let tc_t = &s.tc[t * b * h..(t + 1) * b * h];
            let carry = self.lengths.carry(&dh, t, b, h);
            for bi in 0..b {
                if !self.lengths.live(bi, t) {
                    // Gates zero; dh and dc pass through unchanged (dh is added back after the GEMM).
                    continue;
                }
                let r = bi * h..(bi + 1) * h;
                let d_out = &dout[(bi * t_len + t) * h..(bi * t_len + t + 1) * h];
                let gr = &gates[bi * g4..(bi + 1) * g4];
                let drow = &mut dxp[bi * row_stride + t * g4..bi * row_stride + (t + 1) * g4];
                cell_grad(gr, &c_prev[r.clone()], &tc_t[r.clone()], d_out, &dh[r.clone()], &mut dc[r], drow);
            }
            // dh_{t-1} = dgates_t [B, 4H] x W_hh [4H, H]
            w.times(b, &dxp[t * g4..], row_stride, &mut dh, false);
            Lengths::add_carry(&mut dh, carry, h);
        }
        // h_{t-1} in d xp's row order, then dW_hh = sum dgates^T h_{t-1}: [4H, B*T] x [B*T, H] in one GEMM.
        let mut h_prev = vec![T::zero(); b * t_len * h];
        for bi in 0..b {
            for t in 0..t_len {
                if self.cancel.is_set() {
                    break;
                }
                let src = (t * b + bi) * h;
                h_prev[(bi * t_len + t) * h..(bi * t_len + t + 1) * h].copy_from_slice(&s.h[src..src + h]);
            }
        }
        let mut dw = vec![T::zero(); g4 * h];
        matmul(g4, h, t_len * b, &mut dw, h, false, Mat::rows_t(dxp, g4), Mat::rows(&h_prev, h));
        for bi in 0..b {
            ds0[bi * 2 * h..bi * 2 * h + h].copy_from_slice(&dh[bi * h..(bi + 1) * h]);
            ds0[bi * 2 * h + h..(bi + 1) * 2 * h].copy_from_slice(&dc[bi * h..(bi + 1) * h]);
        }
        // d b_hh = d b_ih: left to the caller.
        (dw, Vec::new())
    }
}

/// `(&v[a..a + n], &mut v[b..b + n])` for non-overlapping `a` and `b`.
pub(crate) fn pair<T>(v: &mut [T], a: usize, b: usize, n: usize) -> (&[T], &mut [T]) {
    if a < b {
        let (lo, hi) = v.split_at_mut(b);
        (&lo[a..a + n], &mut hi[..n])
    } else {
        let (lo, hi) = v.split_at_mut(a);
        (&hi[..n], &mut lo[b..b + n])
    }
}

simd_fn! {
    /// One row's step: gates from `x + (hp + b_hh)`, then `c`, `tanh(c)` and `h`, in one pass. The gate
    /// blocks of `x` and `b_hh` start `xs` apart, those of `hp` and `gates` `n` apart (`n` the units of `c`).
    fn cell<T: Real>(
        x: &[T],
        xs: usize,
        hp: &[T],
        b_hh: &[T],
        c_prev: &[T],
        gates: &mut [T],
        c: &mut [T],
        tc: &mut [T],
        h_out: &mut [T],
    ) {
        let n = c.len();
        blocks!(x, n, xs => xi, xf, xg, xo);
        blocks!(hp, n => pi, pf, pg, po);
        blocks!(b_hh, n, xs => bi, bf, bg, bo);
        blocks_mut!(gates, n => gi, gf, gg, go);
        let (c_prev, c, tc, h_out) = (&c_prev[..n], &mut c[..n], &mut tc[..n], &mut h_out[..n]);
        for j in 0..n {
            let i = (xi[j] + (pi[j] + bi[j])).sigmoid();
            let f = (xf[j] + (pf[j] + bf[j])).sigmoid();
            let g = (xg[j] + (pg[j] + bg[j])).tanh_();
            let o = (xo[j] + (po[j] + bo[j])).sigmoid();
            let cj = f * c_prev[j] + i * g;
            let t = cj.tanh_();
            gi[j] = i;
            gf[j] = f;
            gg[j] = g;
            go[j] = o;
            c[j] = cj;
            tc[j] = t;
            h_out[j] = o * t;
        }
    }
}

simd_fn! {
    /// One row's gate gradients from `dh` (carried) plus `dout`, and the carried `dc`, which becomes the
    /// gradient of `c_{t-1}`.
    fn cell_grad<T: Real>(
        gates: &[T],
        c_prev: &[T],
        tc: &[T],
        dout: &[T],
        dh: &[T],
        dc: &mut [T],
        dg: &mut [T],
    ) {
        let n = dc.len();
        blocks!(gates, n => gi, gf, gg, go);
        let (c_prev, tc, dout, dh, dc) = (&c_prev[..n], &tc[..n], &dout[..n], &dh[..n], &mut dc[..n]);
        blocks_mut!(dg, n => di, df, dgg, d_o);
        for j in 0..n {
            let (i, f, g, o) = (gi[j], gf[j], gg[j], go[j]);
            let dht = dh[j] + dout[j];
            let t = tc[j];
            let dct = dc[j] + dht * o * (T::one() - t * t);
            di[j] = dct * g * i * (T::one() - i);
            df[j] = dct * c_prev[j] * f * (T::one() - f);
            dgg[j] = dct * i * (T::one() - g * g);
            d_o[j] = dht * t * o * (T::one() - o);
            dc[j] = dct * f;
        }
    }
}

impl<T: Real> Inner<T> for LstmSeq {
    type Saved = Saved<T>;
    const GATES: usize = 4;
    const STATES: usize = 2;
    const HH_BIAS_INSIDE: bool = true;

    fn run(&self, xp: &[T], w: &Hidden<T>, s0: &[T], out: &mut [T], keep: bool) -> Saved<T> {
        self.forward(xp, w, s0, out, keep)
    }

    fn grad(&self, s: &Saved<T>, w: &Hidden<T>, dout: &[T], dxp: &mut [T], ds0: &mut [T]) -> (Vec<T>, Vec<T>) {
        self.backward(s, w, dout, dxp, ds0)
    }

    fn unit_threads(&self, keep: bool) -> usize {
        self.threads_for_units::<T>(keep)
    }

    fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        {
            let mut r = LstmSeq::new(rows.len(), self.seq_len, self.hidden, self.lengths.rows(rows));
            r.cancel = self.cancel.clone();
            r
        }
    }

    fn final_cell(&self, s: &Saved<T>) -> Option<Vec<f64>> {
        let (b, h) = (self.batch, self.hidden);
        let last = if s.keep { self.seq_len } else { self.seq_len % 2 };
        let c = &s.c[last * b * h..(last + 1) * b * h];
        Some(c.iter().map(|x| <T as num_traits::ToPrimitive>::to_f64(x).unwrap_or(f64::NAN)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::{Lengths, LstmSeq};

    /// Which forwards share the hidden units among the threads (the test in tests/kernels.rs checks that they
    /// give the same bits as those that cut the batch).
    #[test]
    fn forwards_without_a_backward_share_large_hidden_states_by_units() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let seq = |b: usize, h: usize| LstmSeq::new(b, 50, h, Lengths::new(None, b, 50).unwrap());
        pool.install(|| {
            let available = super::small::available::<f32>();
            let two = if available { 2 } else { 1 };
            assert_eq!(seq(7, 320).threads_for_units::<f32>(false), two);
            assert_eq!(seq(1, 512).threads_for_units::<f32>(false), two);
            // A batch of one row, with or without a backward, from a product of 128K multiply-adds a step.
            assert_eq!(seq(1, 256).threads_for_units::<f32>(true), two);
            assert_eq!(seq(1, 192).threads_for_units::<f32>(true), two);
            assert_eq!(seq(1, 176).threads_for_units::<f32>(false), 1);
            // A forward for a backward of several rows, a W_hh that a core holds, f64, a hidden size off the
            // panels: not.
            assert_eq!(seq(7, 320).threads_for_units::<f32>(true), 1);
            assert_eq!(seq(7, 256).threads_for_units::<f32>(false), 1);
            assert_eq!(seq(7, 320).threads_for_units::<f64>(false), 1);
            assert_eq!(seq(7, 328).threads_for_units::<f32>(false), 1);
            // Inside a slice already on one thread: not.
            assert_eq!(super::super::serial(|| seq(7, 320).threads_for_units::<f32>(false)), 1);
        });
    }
}
