//! The fused recurrent kernels (LSTM, GRU, RNN) against the generic candle-ops recurrences and against finite
//! differences, in f64; the fused weighted bag against gather-multiply-sum.

use engram_core::kernels::{gru::gru_seq, lstm::lstm_seq, rnn::rnn_seq};
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

struct Case {
    kind: Kind,
    xp: candle_core::Var,
    w: candle_core::Var,
    /// The GRU's b_hh (the others fold it into xp).
    b: candle_core::Var,
    h0: candle_core::Var,
    /// The LSTM's c0.
    c0: candle_core::Var,
    weights: Tensor,
    lengths: Option<Vec<usize>>,
}

fn case(kind: Kind, b: usize, t: usize, h: usize, seed: u64) -> Case {
    let g = match kind {
        Kind::Lstm => 4,
        Kind::Gru => 3,
        _ => 1,
    };
    let mut rng = Rng::new(seed);
    let var = |x: Tensor| candle_core::Var::from_tensor(&x).unwrap();
    Case {
        kind,
        xp: var(random(&mut rng, &[b, t, g * h], 1.5)),
        w: var(random(&mut rng, &[g * h, h], 0.5)),
        b: var(random(&mut rng, &[g * h], 0.5)),
        h0: var(random(&mut rng, &[b, h], 0.8)),
        c0: var(random(&mut rng, &[b, h], 0.8)),
        // A random linear read-out makes every output element matter to the loss.
        weights: random(&mut rng, &[b, t, h], 1.0),
        lengths: None,
    }
}

/// The same case over a padded batch: row i runs `t - i % t` steps (the first row all of them).
fn padded(kind: Kind, b: usize, t: usize, h: usize, seed: u64) -> Case {
    Case { lengths: Some((0..b).map(|i| t - i % t).collect()), ..case(kind, b, t, h, seed) }
}

impl Case {
    fn inputs(&self) -> Vec<(&'static str, &candle_core::Var)> {
        match self.kind {
            Kind::Lstm => vec![("xp", &self.xp), ("w_hh", &self.w), ("h0", &self.h0), ("c0", &self.c0)],
            Kind::Gru => vec![("xp", &self.xp), ("w_hh", &self.w), ("b_hh", &self.b), ("h0", &self.h0)],
            _ => vec![("xp", &self.xp), ("w_hh", &self.w), ("h0", &self.h0)],
        }
    }
}

fn loss(c: &Case, fused: bool) -> Tensor {
    let (xp, w, h0) = (c.xp.as_tensor(), c.w.as_tensor(), c.h0.as_tensor());
    let relu = c.kind == Kind::RnnRelu;
    let (shared, l) = (c.lengths.clone().map(Arc::new), c.lengths.as_deref());
    let out = match (c.kind, fused) {
        (Kind::Lstm, true) => lstm_seq(xp, w, &Tensor::cat(&[h0, c.c0.as_tensor()], 1).unwrap(), shared, None).unwrap(),
        (Kind::Lstm, false) => lstm_generic(xp, w, h0, c.c0.as_tensor(), l).unwrap(),
        (Kind::Gru, true) => {
            let wb = Tensor::cat(&[w, &c.b.as_tensor().unsqueeze(1).unwrap()], 1).unwrap();
            gru_seq(xp, &wb, h0, shared).unwrap()
        }
        (Kind::Gru, false) => gru_generic(xp, w, c.b.as_tensor(), h0, l).unwrap(),
        (_, true) => rnn_seq(xp, w, h0, relu, shared).unwrap(),
        (_, false) => rnn_generic(xp, w, h0, relu, l).unwrap(),
    };
    out.mul(&c.weights).unwrap().sum_all().unwrap()
}

#[test]
fn fused_recurrences_match_the_generic_ones_forward_and_backward() {
    for kind in KINDS {
        for (b, t, h, pad) in [(1, 1, 1, false), (3, 7, 5, false), (4, 13, 16, false), (4, 7, 5, true), (5, 3, 4, true)]
        {
            let seed = (b * 100 + t * 10 + h) as u64;
            let c = if pad { padded(kind, b, t, h, seed) } else { case(kind, b, t, h, seed) };
            let lf = loss(&c, true);
            let lg = loss(&c, false);
            let (vf, vg) = (lf.to_scalar::<f64>().unwrap(), lg.to_scalar::<f64>().unwrap());
            assert!((vf - vg).abs() < 1e-12 * vg.abs().max(1.0), "{kind:?}: loss {vf} vs {vg}");
            let gf = lf.backward().unwrap();
            let gg = lg.backward().unwrap();
            for (name, v) in c.inputs() {
                let a = gf.get(v.as_tensor()).unwrap_or_else(|| panic!("{kind:?} fused: no gradient for {name}"));
                let e = gg.get(v.as_tensor()).unwrap_or_else(|| panic!("{kind:?} generic: no gradient for {name}"));
                let d = max_abs_diff(a, e);
                assert!(d < 1e-11, "{kind:?}: {name} gradient differs by {d} for b={b} t={t} h={h}");
            }
        }
    }
}

#[test]
fn fused_recurrences_backward_match_finite_differences() {
    for (kind, pad) in KINDS.iter().flat_map(|&k| [(k, false), (k, true)]) {
        let c = if pad { padded(kind, 3, 6, 3, 42) } else { case(kind, 2, 6, 3, 42) };
        let grads = loss(&c, true).backward().unwrap();
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
                    loss(&c, true).to_scalar::<f64>().unwrap()
                };
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
                at(0.0);
                let err = (numeric - g[i]).abs() / numeric.abs().max(g[i].abs()).max(1e-3);
                assert!(err < 1e-6, "{kind:?} {name}[{i}]: analytic {} numeric {numeric} (relative error {err})", g[i]);
            }
        }
    }
}

#[test]
fn weighted_bag_matches_gather_multiply_sum_forward_and_backward() {
    use engram_core::kernels::bag::weighted_bag;
    use std::sync::Arc;
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

/// The whole-direction op (input projection inside) against candle's matmul plus the generic recurrence:
/// forward and every gradient, x's included, with and without padding.
#[test]
fn projected_op_matches_projection_plus_generic_recurrence() {
    use engram_core::kernels::projected::{Kind as P, projected};
    for (kind, pk) in [
        (Kind::Lstm, P::Lstm),
        (Kind::Gru, P::Gru),
        (Kind::RnnTanh, P::Rnn { relu: false }),
        (Kind::RnnRelu, P::Rnn { relu: true }),
    ] {
        for pad in [false, true] {
            let (b, t, inp, h) = (3, 5, 4, 6);
            let g = match kind {
                Kind::Lstm => 4,
                Kind::Gru => 3,
                _ => 1,
            };
            let mut rng = Rng::new(11);
            let var = |x: Tensor| candle_core::Var::from_tensor(&x).unwrap();
            let x = var(random(&mut rng, &[b, t, inp], 1.0));
            let w_ih = var(random(&mut rng, &[g * h, inp], 0.5));
            let w_hh = var(random(&mut rng, &[g * h, h], 0.5));
            let b_ih = var(random(&mut rng, &[g * h], 0.5));
            let b_hh = var(random(&mut rng, &[g * h], 0.5));
            let states = if kind == Kind::Lstm { 2 } else { 1 };
            let s0 = var(random(&mut rng, &[b, states * h], 0.8));
            let read = random(&mut rng, &[b, t, h], 1.0);
            let lengths: Option<Vec<usize>> = pad.then(|| vec![5, 3, 1]);
            let relu = kind == Kind::RnnRelu;
            let fused = || {
                let w = Tensor::cat(
                    &[
                        w_ih.as_tensor(),
                        w_hh.as_tensor(),
                        &b_ih.as_tensor().unsqueeze(1).unwrap(),
                        &b_hh.as_tensor().unsqueeze(1).unwrap(),
                    ],
                    1,
                )
                .unwrap();
                projected(pk, x.as_tensor(), &w, s0.as_tensor(), lengths.clone().map(Arc::new), None).unwrap()
            };
            let generic = || {
                let bias = if kind == Kind::Gru {
                    b_ih.as_tensor().clone()
                } else {
                    b_ih.as_tensor().add(b_hh.as_tensor()).unwrap()
                };
                let xp = x
                    .as_tensor()
                    .reshape((b * t, inp))
                    .unwrap()
                    .matmul(&w_ih.as_tensor().t().unwrap())
                    .unwrap()
                    .broadcast_add(&bias)
                    .unwrap()
                    .reshape((b, t, g * h))
                    .unwrap();
                let l = lengths.as_deref();
                let s = s0.as_tensor();
                match kind {
                    Kind::Lstm => {
                        lstm_generic(&xp, w_hh.as_tensor(), &s.narrow(1, 0, h).unwrap(), &s.narrow(1, h, h).unwrap(), l)
                    }
                    Kind::Gru => gru_generic(&xp, w_hh.as_tensor(), b_hh.as_tensor(), s, l),
                    _ => rnn_generic(&xp, w_hh.as_tensor(), s, relu, l),
                }
                .unwrap()
            };
            let (of, og) = (fused(), generic());
            assert!(max_abs_diff(&of, &og) < 1e-12, "{kind:?} pad={pad}: outputs differ");
            let gf = of.mul(&read).unwrap().sum_all().unwrap().backward().unwrap();
            let gg = og.mul(&read).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in
                [("x", &x), ("w_ih", &w_ih), ("w_hh", &w_hh), ("b_ih", &b_ih), ("b_hh", &b_hh), ("s0", &s0)]
            {
                let a = gf.get(v.as_tensor()).unwrap_or_else(|| panic!("{kind:?}: fused gives no gradient for {name}"));
                let e =
                    gg.get(v.as_tensor()).unwrap_or_else(|| panic!("{kind:?}: generic gives no gradient for {name}"));
                let d = max_abs_diff(a, e);
                assert!(d < 1e-11, "{kind:?} pad={pad}: {name} gradient differs by {d}");
            }
        }
    }
}
