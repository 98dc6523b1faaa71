//! The fused attention, layer-norm and GELU ops against candle's generic ops (forward and gradients) and
//! against finite differences, in f64; and f32 against f64.

use candle_core::{DType, Var};
use engram_core::kernels::activation::{gelu, relu};
use engram_core::kernels::attention::{Mask, sdpa, self_attention};
use engram_core::kernels::norm::layer_norm;
use engram_core::layers::ForwardCtx;
use engram_core::layers::attention::attention_ops;
use engram_core::layers::norm::layer_norm_ops;
use engram_core::{Device, Rng, Tensor};
use std::sync::Arc;

fn random(rng: &mut Rng, shape: &[usize], scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.uniform(-scale, scale)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let d = a.to_dtype(DType::F64).unwrap().sub(&b.to_dtype(DType::F64).unwrap()).unwrap();
    d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// q, k, v for one case: views into one fused `[B, T, 3D]` tensor when `Tq == Tk` (as self-attention makes
/// them), separate tensors otherwise.
struct Case {
    qkv: Vec<Var>,
    heads: usize,
    mask: Mask,
    readout: Tensor,
}

impl Case {
    fn new(rng: &mut Rng, b: usize, tq: usize, tk: usize, heads: usize, d: usize, mask: Mask) -> Self {
        let dm = heads * d;
        let qkv = if tq == tk {
            vec![Var::from_tensor(&random(rng, &[b, tq, 3 * dm], 1.5)).unwrap()]
        } else {
            vec![
                Var::from_tensor(&random(rng, &[b, tq, dm], 1.5)).unwrap(),
                Var::from_tensor(&random(rng, &[b, tk, dm], 1.5)).unwrap(),
                Var::from_tensor(&random(rng, &[b, tk, dm], 1.5)).unwrap(),
            ]
        };
        Case { qkv, heads, mask, readout: random(rng, &[b, tq, dm], 1.0) }
    }

    fn qkv(&self) -> [Tensor; 3] {
        if let [x] = self.qkv.as_slice() {
            let dm = x.dim(2).unwrap() / 3;
            [0, 1, 2].map(|i| x.narrow(2, i * dm, dm).unwrap())
        } else {
            [0, 1, 2].map(|i| self.qkv[i].as_tensor().clone())
        }
    }

    /// `sum(out * readout)` by one of the three paths.
    fn loss(&self, path: Path) -> Tensor {
        let [q, k, v] = self.qkv();
        let out = match (path, self.qkv.as_slice()) {
            (Path::SelfAttention, [x]) => self_attention(x, self.heads, &self.mask, false).unwrap().0,
            (Path::Fused | Path::SelfAttention, _) => sdpa(&q, &k, &v, self.heads, &self.mask, false).unwrap().0,
            (Path::Generic, _) => {
                let mut rng = Rng::new(0);
                let mut ctx = ForwardCtx { train: false, rng: &mut rng };
                attention_ops(&q, &k, &v, self.heads, &self.mask, 0.0, &mut ctx).unwrap().0
            }
        };
        out.mul(&self.readout).unwrap().sum_all().unwrap()
    }
}

/// The fused op on three tensors, the fused op on one `qkv` tensor (where the case has one), candle's ops.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    Fused,
    SelfAttention,
    Generic,
}

fn masks(b: usize, tk: usize, rng: &mut Rng) -> Vec<Mask> {
    let lengths: Vec<usize> = (0..b).map(|i| if i == 0 { tk } else { 1 + (rng.next_u64() as usize) % tk }).collect();
    let l = Some(Arc::new(lengths));
    vec![
        Mask::default(),
        Mask { lengths: None, causal: true },
        Mask { lengths: l.clone(), causal: false },
        Mask { lengths: l, causal: true },
    ]
}

const SHAPES: [(usize, usize, usize, usize, usize); 5] =
    [(1, 1, 1, 1, 4), (2, 5, 5, 3, 4), (3, 7, 7, 2, 8), (2, 3, 9, 4, 2), (1, 1, 6, 2, 3)];

#[test]
fn attention_kernel_matches_generic_ops_forward_and_gradients() {
    let mut rng = Rng::new(7);
    for (b, tq, tk, heads, d) in SHAPES {
        for mask in masks(b, tk, &mut rng) {
            let case = Case::new(&mut rng, b, tq, tk, heads, d, mask.clone());
            let generic = case.loss(Path::Generic);
            let gg = generic.backward().unwrap();
            for path in [Path::Fused, Path::SelfAttention] {
                let fused = case.loss(path);
                let what = format!("{path:?} B{b} Tq{tq} Tk{tk} H{heads} d{d} {mask:?}");
                assert!((scalar(&fused) - scalar(&generic)).abs() < 1e-12, "{what}: forward");
                let gf = fused.backward().unwrap();
                for v in &case.qkv {
                    let diff = max_abs_diff(gf.get(v).unwrap(), gg.get(v).unwrap());
                    assert!(diff < 1e-12, "{what}: gradient differs by {diff:e}");
                }
            }
        }
    }
}

#[test]
fn attention_kernel_weights_match_generic_ops() {
    let mut rng = Rng::new(8);
    let case = Case::new(&mut rng, 2, 6, 6, 2, 4, Mask { lengths: Some(Arc::new(vec![6, 3])), causal: true });
    let [q, k, v] = case.qkv();
    let (_, w) = sdpa(&q, &k, &v, 2, &case.mask, true).unwrap();
    let mut r = Rng::new(0);
    let mut ctx = ForwardCtx { train: false, rng: &mut r };
    let (_, want) = attention_ops(&q, &k, &v, 2, &case.mask, 0.0, &mut ctx).unwrap();
    let w = w.unwrap();
    assert_eq!(w.dims(), [2, 2, 6, 6]);
    assert!(max_abs_diff(&w, &want.unwrap()) < 1e-14);
    // Row sums are 1 and the masked keys get nothing: row 1 sees at most 3 keys.
    let row1 = w.narrow(0, 1, 1).unwrap().narrow(3, 3, 3).unwrap();
    assert_eq!(row1.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap(), 0.0);
}

/// Central differences of `loss` in every input element touched, against the op's gradient.
fn check_fd(what: &str, vars: &[Var], loss: impl Fn() -> Tensor, tol: f64) {
    let grads = loss().backward().unwrap();
    let eps = 1e-6;
    for (vi, v) in vars.iter().enumerate() {
        let g: Vec<f64> = grads.get(v).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let step = (base.len() / 11).max(1);
        for i in (0..base.len()).step_by(step) {
            let at = |delta: f64| {
                let mut p = base.clone();
                p[i] += delta;
                v.set(&Tensor::from_vec(p, v.shape(), &Device::Cpu).unwrap()).unwrap();
                scalar(&loss())
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            v.set(&Tensor::from_vec(base.clone(), v.shape(), &Device::Cpu).unwrap()).unwrap();
            assert!((fd - g[i]).abs() <= tol * (1.0 + fd.abs()), "{what}: input {vi} [{i}] fd {fd} vs {}", g[i]);
        }
    }
}

#[test]
fn attention_kernel_backward_matches_finite_differences() {
    let mut rng = Rng::new(9);
    for (b, tq, tk, heads, d) in [(2, 4, 4, 2, 3), (2, 2, 5, 1, 4)] {
        for mask in masks(b, tk, &mut rng) {
            let case = Case::new(&mut rng, b, tq, tk, heads, d, mask);
            for path in [Path::Fused, Path::SelfAttention] {
                let what = format!("{path:?} B{b} Tq{tq} Tk{tk} {:?}", case.mask);
                check_fd(&what, &case.qkv, || case.loss(path), 1e-7);
            }
        }
    }
}

#[test]
fn layer_norm_kernel_matches_generic_ops_and_finite_differences() {
    let mut rng = Rng::new(10);
    for shape in [[1, 1, 3], [2, 5, 8], [3, 40, 16]] {
        let d = shape[2];
        let x = Var::from_tensor(&(random(&mut rng, &shape, 2.0) + 0.7).unwrap()).unwrap();
        let w = Var::from_tensor(&(random(&mut rng, &[d], 0.5) + 1.0).unwrap()).unwrap();
        let b = Var::from_tensor(&random(&mut rng, &[d], 0.5)).unwrap();
        let r = random(&mut rng, &shape, 1.0);
        let loss = |fused: bool| {
            let y =
                if fused { layer_norm(&x, &w, &b, 1e-5).unwrap() } else { layer_norm_ops(&x, &w, &b, 1e-5).unwrap() };
            y.mul(&r).unwrap().sum_all().unwrap()
        };
        assert!((scalar(&loss(true)) - scalar(&loss(false))).abs() < 1e-12);
        let (gf, gg) = (loss(true).backward().unwrap(), loss(false).backward().unwrap());
        for v in [&x, &w, &b] {
            assert!(max_abs_diff(gf.get(v).unwrap(), gg.get(v).unwrap()) < 1e-12, "{shape:?}");
        }
        check_fd(&format!("layerNorm {shape:?}"), &[x.clone(), w.clone(), b.clone()], || loss(true), 1e-7);
    }
}

#[test]
fn gelu_kernel_matches_erf_gelu_and_finite_differences() {
    let mut rng = Rng::new(11);
    let x = Var::from_tensor(&random(&mut rng, &[3, 50], 4.0)).unwrap();
    let r = random(&mut rng, &[3, 50], 1.0);
    assert!(max_abs_diff(&gelu(&x).unwrap(), &x.gelu_erf().unwrap()) < 1e-15);
    check_fd("gelu", std::slice::from_ref(&x), || gelu(&x).unwrap().mul(&r).unwrap().sum_all().unwrap(), 1e-8);
    assert_eq!(max_abs_diff(&relu(&x).unwrap(), &x.relu().unwrap()), 0.0);
    let (a, b) =
        (relu(&x).unwrap().mul(&r).unwrap().sum_all().unwrap(), x.relu().unwrap().mul(&r).unwrap().sum_all().unwrap());
    let (ga, gb) = (a.backward().unwrap(), b.backward().unwrap());
    assert_eq!(max_abs_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap()), 0.0);
}

#[test]
fn kernels_in_f32_agree_with_f64() {
    let mut rng = Rng::new(12);
    // Attention at the benchmark's head size, with both masks.
    let (b, t, heads, d) = (3, 16, 4, 32);
    let qkv = random(&mut rng, &[b, t, 3 * heads * d], 1.0);
    let mask = Mask { lengths: Some(Arc::new(vec![16, 9, 1])), causal: true };
    let run = |x: &Tensor| {
        let dm = heads * d;
        let [q, k, v] = [0, 1, 2].map(|i| x.narrow(2, i * dm, dm).unwrap());
        sdpa(&q, &k, &v, heads, &mask, false).unwrap().0
    };
    let diff = max_abs_diff(&run(&qkv.to_dtype(DType::F32).unwrap()), &run(&qkv));
    assert!(diff < 2e-6, "attention f32 vs f64: {diff:e}");
    let x = random(&mut rng, &[4, 64, 128], 3.0);
    let (w, bias) = ((random(&mut rng, &[128], 0.5) + 1.0).unwrap(), random(&mut rng, &[128], 0.5));
    let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let diff = max_abs_diff(
        &layer_norm(&f32(&x), &f32(&w), &f32(&bias), 1e-5).unwrap(),
        &layer_norm(&x, &w, &bias, 1e-5).unwrap(),
    );
    assert!(diff < 5e-6, "layer norm f32 vs f64: {diff:e}");
    let diff = max_abs_diff(&gelu(&f32(&x)).unwrap(), &gelu(&x).unwrap());
    assert!(diff < 2e-6, "gelu f32 vs f64: {diff:e}");
}

#[test]
fn linear_kernel_matches_generic_ops_and_finite_differences() {
    let mut rng = Rng::new(13);
    for bias in [true, false] {
        let x = Var::from_tensor(&random(&mut rng, &[7, 5], 1.0)).unwrap();
        let w = Var::from_tensor(&random(&mut rng, &[3, 5], 1.0)).unwrap();
        let b = Var::from_tensor(&random(&mut rng, &[3], 1.0)).unwrap();
        let r = random(&mut rng, &[7, 3], 1.0);
        let loss = |fused: bool| {
            let bt = bias.then(|| b.as_tensor());
            let y = if fused {
                engram_core::kernels::linear::linear(&x, &w, bt).unwrap()
            } else {
                let y = x.matmul(&w.t().unwrap()).unwrap();
                if bias { y.broadcast_add(&b).unwrap() } else { y }
            };
            y.mul(&r).unwrap().sum_all().unwrap()
        };
        assert!((scalar(&loss(true)) - scalar(&loss(false))).abs() < 1e-12);
        let (gf, gg) = (loss(true).backward().unwrap(), loss(false).backward().unwrap());
        let vars = if bias { vec![x.clone(), w.clone(), b.clone()] } else { vec![x.clone(), w.clone()] };
        for v in &vars {
            assert!(max_abs_diff(gf.get(v).unwrap(), gg.get(v).unwrap()) < 1e-12, "bias {bias}");
        }
        check_fd(&format!("linear bias {bias}"), &vars, || loss(true), 1e-7);
    }
}
