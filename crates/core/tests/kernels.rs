//! The fused LSTM kernel against the generic candle-ops recurrence and against finite differences, in f64.

use engram_core::kernels::lstm::lstm_seq;
use engram_core::layers::lstm::recurrence_generic;
use engram_core::{Device, Rng, Tensor};

fn random(rng: &mut Rng, shape: &[usize], scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.uniform(-scale, scale)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

struct Case {
    xp: candle_core::Var,
    w: candle_core::Var,
    h0: candle_core::Var,
    c0: candle_core::Var,
    weights: Tensor,
}

fn case(b: usize, t: usize, h: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let var = |x: Tensor| candle_core::Var::from_tensor(&x).unwrap();
    Case {
        xp: var(random(&mut rng, &[b, t, 4 * h], 1.5)),
        w: var(random(&mut rng, &[4 * h, h], 0.5)),
        h0: var(random(&mut rng, &[b, h], 0.8)),
        c0: var(random(&mut rng, &[b, h], 0.8)),
        // A random linear read-out makes every output element matter to the loss.
        weights: random(&mut rng, &[b, t, h], 1.0),
    }
}

fn loss(c: &Case, fused: bool) -> Tensor {
    let out = if fused {
        let s0 = Tensor::cat(&[c.h0.as_tensor(), c.c0.as_tensor()], 1).unwrap();
        lstm_seq(c.xp.as_tensor(), c.w.as_tensor(), &s0).unwrap()
    } else {
        recurrence_generic(c.xp.as_tensor(), c.w.as_tensor(), c.h0.as_tensor(), c.c0.as_tensor()).unwrap()
    };
    out.mul(&c.weights).unwrap().sum_all().unwrap()
}

#[test]
fn fused_lstm_matches_the_generic_recurrence_forward_and_backward() {
    for (b, t, h) in [(1, 1, 1), (3, 7, 5), (4, 13, 16)] {
        let c = case(b, t, h, (b * 100 + t * 10 + h) as u64);
        let lf = loss(&c, true);
        let lg = loss(&c, false);
        let (vf, vg) = (lf.to_scalar::<f64>().unwrap(), lg.to_scalar::<f64>().unwrap());
        assert!((vf - vg).abs() < 1e-12 * vg.abs().max(1.0), "loss {vf} vs {vg}");
        let gf = lf.backward().unwrap();
        let gg = lg.backward().unwrap();
        for (name, v) in [("xp", &c.xp), ("w_hh", &c.w), ("h0", &c.h0), ("c0", &c.c0)] {
            let a = gf.get(v.as_tensor()).unwrap_or_else(|| panic!("fused: no gradient for {name}"));
            let e = gg.get(v.as_tensor()).unwrap_or_else(|| panic!("generic: no gradient for {name}"));
            let d = max_abs_diff(a, e);
            assert!(d < 1e-11, "{name} gradient differs by {d} for b={b} t={t} h={h}");
        }
    }
}

#[test]
fn fused_lstm_backward_matches_finite_differences() {
    let c = case(2, 6, 3, 42);
    let grads = loss(&c, true).backward().unwrap();
    let eps = 1e-6;
    for (name, v) in [("xp", &c.xp), ("w_hh", &c.w), ("h0", &c.h0), ("c0", &c.c0)] {
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
            assert!(err < 1e-6, "{name}[{i}]: analytic {} numeric {numeric} (relative error {err})", g[i]);
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
