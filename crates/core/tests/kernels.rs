//! The fused recurrent op (a whole LSTM, GRU or RNN direction: input projection and recurrence) against
//! candle's matmul plus the generic candle-ops recurrences and against finite differences, in f64; the fused
//! weighted bag against gather-multiply-sum.

use candle_core::Var;
use engram_core::kernels::projected::{Kind as P, projected};
use engram_core::layers::recurrent::{gru_generic, lstm_generic, rnn_generic};
use engram_core::{Device, Rng, Tensor};
use std::sync::Arc;

fn random(rng: &mut Rng, shape: &[usize], scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.uniform(-scale, scale)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Lstm,
    Gru,
    RnnTanh,
    RnnRelu,
}

const KINDS: [Kind; 4] = [Kind::Lstm, Kind::Gru, Kind::RnnTanh, Kind::RnnRelu];

impl Kind {
    fn gates(self) -> usize {
        match self {
            Kind::Lstm => 4,
            Kind::Gru => 3,
            _ => 1,
        }
    }

    fn op(self) -> P {
        match self {
            Kind::Lstm => P::Lstm,
            Kind::Gru => P::Gru,
            Kind::RnnTanh => P::Rnn { relu: false },
            Kind::RnnRelu => P::Rnn { relu: true },
        }
    }
}

/// One layer direction's inputs and parameters, and a random linear read-out of its output (so every output
/// element matters to the loss).
struct Case {
    kind: Kind,
    dims: (usize, usize, usize, usize),
    x: Var,
    w_ih: Var,
    w_hh: Var,
    b_ih: Var,
    b_hh: Var,
    /// `h0`, and the LSTM's `c0` beside it.
    s0: Var,
    read: Tensor,
    lengths: Option<Vec<usize>>,
}

fn case(kind: Kind, (b, t, inp, h): (usize, usize, usize, usize), seed: u64) -> Case {
    let g = kind.gates();
    let mut rng = Rng::new(seed);
    let var = |x: Tensor| Var::from_tensor(&x).unwrap();
    let states = if kind == Kind::Lstm { 2 } else { 1 };
    Case {
        kind,
        dims: (b, t, inp, h),
        x: var(random(&mut rng, &[b, t, inp], 1.0)),
        w_ih: var(random(&mut rng, &[g * h, inp], 0.6)),
        w_hh: var(random(&mut rng, &[g * h, h], 0.5)),
        b_ih: var(random(&mut rng, &[g * h], 0.5)),
        b_hh: var(random(&mut rng, &[g * h], 0.5)),
        s0: var(random(&mut rng, &[b, states * h], 0.8)),
        read: random(&mut rng, &[b, t, h], 1.0),
        lengths: None,
    }
}

/// The same case over a padded batch: row i runs `t - i % t` steps (the first row all of them).
fn padded(kind: Kind, dims: (usize, usize, usize, usize), seed: u64) -> Case {
    let (b, t, _, _) = dims;
    Case { lengths: Some((0..b).map(|i| t - i % t).collect()), ..case(kind, dims, seed) }
}

impl Case {
    fn inputs(&self) -> [(&'static str, &Var); 6] {
        [
            ("x", &self.x),
            ("w_ih", &self.w_ih),
            ("w_hh", &self.w_hh),
            ("b_ih", &self.b_ih),
            ("b_hh", &self.b_hh),
            ("s0", &self.s0),
        ]
    }

    fn fused(&self) -> Tensor {
        let col = |v: &Var| v.as_tensor().unsqueeze(1).unwrap();
        let w = Tensor::cat(&[self.w_ih.as_tensor(), self.w_hh.as_tensor(), &col(&self.b_ih), &col(&self.b_hh)], 1)
            .unwrap();
        let lengths = self.lengths.clone().map(Arc::new);
        projected(self.kind.op(), self.x.as_tensor(), &w, self.s0.as_tensor(), lengths, None).unwrap()
    }

    fn generic(&self) -> Tensor {
        let (b, t, inp, h) = self.dims;
        let (b_ih, b_hh) = (self.b_ih.as_tensor(), self.b_hh.as_tensor());
        let bias = if self.kind == Kind::Gru { b_ih.clone() } else { b_ih.add(b_hh).unwrap() };
        let xp = self
            .x
            .as_tensor()
            .reshape((b * t, inp))
            .unwrap()
            .matmul(&self.w_ih.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap()
            .reshape((b, t, self.kind.gates() * h))
            .unwrap();
        let (l, s, w_hh) = (self.lengths.as_deref(), self.s0.as_tensor(), self.w_hh.as_tensor());
        match self.kind {
            Kind::Lstm => lstm_generic(&xp, w_hh, &s.narrow(1, 0, h).unwrap(), &s.narrow(1, h, h).unwrap(), l),
            Kind::Gru => gru_generic(&xp, w_hh, b_hh, s, l),
            k => rnn_generic(&xp, w_hh, s, k == Kind::RnnRelu, l),
        }
        .unwrap()
    }

    fn loss(&self, fused: bool) -> Tensor {
        let out = if fused { self.fused() } else { self.generic() };
        out.mul(&self.read).unwrap().sum_all().unwrap()
    }
}

/// Forward and every gradient (x, W_ih, W_hh, both biases, the initial state), with and without padding, over
/// shapes from one unit to several slices of the batch.
#[test]
fn fused_recurrences_match_the_generic_ones_forward_and_backward() {
    for kind in KINDS {
        for (dims, pad) in [
            ((1, 1, 1, 1), false),
            ((3, 7, 2, 5), false),
            ((4, 13, 6, 16), false),
            ((3, 5, 4, 6), true),
            ((4, 7, 3, 5), true),
            ((5, 3, 2, 4), true),
        ] {
            let (b, t, inp, h) = dims;
            let seed = (b * 1000 + t * 100 + inp * 10 + h) as u64;
            let c = if pad { padded(kind, dims, seed) } else { case(kind, dims, seed) };
            let (of, og) = (c.fused(), c.generic());
            let d = max_abs_diff(&of, &og);
            assert!(d < 1e-12, "{kind:?} {dims:?} pad={pad}: outputs differ by {d}");
            let gf = c.loss(true).backward().unwrap();
            let gg = c.loss(false).backward().unwrap();
            for (name, v) in c.inputs() {
                let a = gf.get(v.as_tensor()).unwrap_or_else(|| panic!("{kind:?}: fused gives no gradient for {name}"));
                let e =
                    gg.get(v.as_tensor()).unwrap_or_else(|| panic!("{kind:?}: generic gives no gradient for {name}"));
                let d = max_abs_diff(a, e);
                assert!(d < 1e-11, "{kind:?} {dims:?} pad={pad}: {name} gradient differs by {d}");
            }
        }
    }
}

#[test]
fn fused_recurrences_backward_match_finite_differences() {
    for (kind, pad) in KINDS.iter().flat_map(|&k| [(k, false), (k, true)]) {
        let c = if pad { padded(kind, (3, 6, 2, 3), 42) } else { case(kind, (2, 6, 2, 3), 42) };
        let grads = c.loss(true).backward().unwrap();
        let eps = 1e-6;
        for (name, v) in c.inputs() {
            let g = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let base = v.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let shape = v.as_tensor().dims().to_vec();
            for i in (0..base.len()).step_by(base.len().div_ceil(12)) {
                let at = |delta: f64| {
                    let mut p = base.clone();
                    p[i] += delta;
                    v.set(&Tensor::from_vec(p, shape.as_slice(), &Device::Cpu).unwrap()).unwrap();
                    c.loss(true).to_scalar::<f64>().unwrap()
                };
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
                at(0.0);
                let err = (numeric - g[i]).abs() / numeric.abs().max(g[i].abs()).max(1e-3);
                assert!(err < 1e-6, "{kind:?} {name}[{i}]: analytic {} numeric {numeric} (relative error {err})", g[i]);
            }
        }
    }
}

/// The f32 op (vectorised element-wise passes and, where the CPU has AVX2, the packed small-batch product)
/// against the f64 one: outputs and every gradient, padded and not, one slice and several.
#[test]
fn fused_recurrences_in_f32_match_f64() {
    use engram_core::DType;
    for kind in KINDS {
        for (dims, pad) in [((1, 9, 5, 37), false), ((13, 6, 7, 20), true), ((32, 5, 8, 64), false)] {
            let c = if pad { padded(kind, dims, 3) } else { case(kind, dims, 3) };
            let to32 = |v: &Var| Var::from_tensor(&v.as_tensor().to_dtype(DType::F32).unwrap()).unwrap();
            let c32 = Case {
                x: to32(&c.x),
                w_ih: to32(&c.w_ih),
                w_hh: to32(&c.w_hh),
                b_ih: to32(&c.b_ih),
                b_hh: to32(&c.b_hh),
                s0: to32(&c.s0),
                read: c.read.to_dtype(DType::F32).unwrap(),
                lengths: c.lengths.clone(),
                ..c
            };
            let (o64, o32) = (c.fused(), c32.fused().to_dtype(DType::F64).unwrap());
            let d = max_abs_diff(&o64, &o32);
            assert!(d < 2e-5, "{kind:?} {dims:?}: f32 outputs differ by {d}");
            let g64 = c.loss(true).backward().unwrap();
            let g32 = c32.loss(true).backward().unwrap();
            for ((name, v64), (_, v32)) in c.inputs().into_iter().zip(c32.inputs()) {
                let a = g64.get(v64.as_tensor()).unwrap();
                let b = g32.get(v32.as_tensor()).unwrap().to_dtype(DType::F64).unwrap();
                let scale = a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
                let d = max_abs_diff(a, &b);
                assert!(
                    d < 1e-4 * scale.max(1.0),
                    "{kind:?} {dims:?}: f32 {name} gradient differs by {d} (scale {scale})"
                );
            }
        }
    }
}

/// An f32 LSTM shares its hidden units among the threads in a forward without a backward whose W_hh outgrows a
/// core's cache (H = 320: 1.6 MB), and in every forward of a batch of one row. Each gives the same bits as on
/// one thread (where nothing is shared out): outputs, final cell states and, for the batch of one, the
/// gradients that the backward makes from what the forward kept; on pools of 2 and 3 threads (uneven shares
/// of the units), with and without padded rows.
#[test]
fn lstm_forward_shared_by_hidden_units_gives_the_same_bits_as_on_one_thread() {
    use engram_core::DType;
    use std::sync::Mutex;
    let (inp, h) = (24, 320);
    for (b, t, lengths) in
        [(1, 45, None), (1, 30, Some(vec![21])), (7, 9, Some(vec![9, 3, 2, 9, 1, 8, 5])), (16, 4, None)]
    {
        let mut rng = Rng::new(b as u64 + t as u64);
        let x = random(&mut rng, &[b, t, inp], 1.0).to_dtype(DType::F32).unwrap();
        let w = random(&mut rng, &[4 * h, inp + h + 2], 0.08).to_dtype(DType::F32).unwrap();
        let s0 = random(&mut rng, &[b, 2 * h], 0.5).to_dtype(DType::F32).unwrap();
        let read = random(&mut rng, &[b, t, h], 1.0).to_dtype(DType::F32).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
        };
        // (output, final cells) without a backward; (output, dx, dW, ds0) with one.
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let cells: engram_core::kernels::FinalState = Arc::new(Mutex::new(None));
                let lens = || lengths.clone().map(Arc::new);
                let out = projected(P::Lstm, &x, &w, &s0, lens(), Some(cells.clone())).unwrap();
                let cells = cells.lock().unwrap().clone().unwrap();
                let (xv, wv, sv) =
                    (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap(), Var::from_tensor(&s0).unwrap());
                let kept = projected(P::Lstm, xv.as_tensor(), wv.as_tensor(), sv.as_tensor(), lens(), None).unwrap();
                let grads = kept.mul(&read).unwrap().sum_all().unwrap().backward().unwrap();
                let g = |v: &Var| bits(grads.get(v.as_tensor()).unwrap());
                ((bits(&out), cells), (bits(&kept), g(&xv), g(&wv), g(&sv)))
            })
        };
        let ((out1, cells1), kept1) = run(1);
        assert!(out1.iter().any(|&v| v != 0));
        assert_eq!(kept1.0, out1, "b {b} t {t}: the forward for a backward differs on one thread");
        for threads in [2, 3] {
            let ((out, cells), kept) = run(threads);
            assert!(out == out1, "b {b} t {t} threads {threads}: outputs differ");
            assert_eq!(cells, cells1, "b {b} t {t} threads {threads}: final cells differ");
            assert!(kept.0 == out1, "b {b} t {t} threads {threads}: outputs for a backward differ");
            if b == 1 {
                assert!(kept.1 == kept1.1, "b {b} t {t} threads {threads}: dx differs");
                assert!(kept.2 == kept1.2, "b {b} t {t} threads {threads}: dW differs");
                assert!(kept.3 == kept1.3, "b {b} t {t} threads {threads}: ds0 differs");
            }
        }
    }
}

#[test]
fn weighted_bag_matches_gather_multiply_sum_forward_and_backward() {
    use engram_core::kernels::bag::weighted_bag;
    let mut rng = Rng::new(8);
    let (v, d, rows, words) = (9, 4, 5, 3);
    let e = candle_core::Var::from_tensor(&random(&mut rng, &[v, d], 1.0)).unwrap();
    let w = random(&mut rng, &[rows, words, d], 1.0);
    // Some padding (id 0), and a repeated id so the backward must accumulate.
    let ids: Vec<u32> = vec![1, 2, 0, 3, 3, 4, 0, 0, 5, 8, 7, 6, 2, 2, 2];
    let r = random(&mut rng, &[rows, d], 1.0);
    let fused = weighted_bag(e.as_tensor(), Arc::new(ids.clone()), &w).unwrap();
    let mask: Vec<f64> = ids.iter().map(|&i| if i == 0 { 0.0 } else { 1.0 }).collect();
    let mask = Tensor::from_vec(mask, (rows, words, 1), &Device::Cpu).unwrap();
    let idt = Tensor::from_vec(ids, rows * words, &Device::Cpu).unwrap();
    let generic = e
        .as_tensor()
        .index_select(&idt, 0)
        .unwrap()
        .reshape((rows, words, d))
        .unwrap()
        .mul(&w.broadcast_mul(&mask).unwrap())
        .unwrap()
        .sum(1)
        .unwrap();
    assert!(max_abs_diff(&fused, &generic) < 1e-12);
    let gf = fused.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
    let gg = generic.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
    let d = max_abs_diff(gf.get(e.as_tensor()).unwrap(), gg.get(e.as_tensor()).unwrap());
    assert!(d < 1e-12, "gradient differs by {d}");
}
