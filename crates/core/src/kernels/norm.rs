//! Layer normalisation over the last axis as one op, forward and backward (candle's fused `layer_norm` records
//! no backward, so everything before it would stop learning).
//!
//! `y = (x - mean) / sqrt(var + eps) * weight + bias`, with the biased variance, as `nn.LayerNorm`. Inputs
//! `x [..., D]`, `weight [D]`, `bias [D]`. Backward, with `x^ = (x - mean) * r`, `r = 1 / sqrt(var + eps)` and
//! `g = dy * weight`: `dx = r (g - mean(g) - x^ mean(g x^))`, `dweight = sum over rows of dy x^`,
//! `dbias = sum of dy`. Mean and `r` are recomputed in the backward: one pass over `x`, cheaper than keeping them.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::{Real, simd_fn, slice, sum_lanes, with_host};

/// Rows per task: fixed, so that the sums over rows (the weight gradients) add up in the same order whatever
/// the thread count.
const CHUNK: usize = 32;

struct LayerNorm {
    eps: f64,
}

simd_fn! {
    /// One row: `y = (x - mean) r w + b`.
    fn normalise<T: Real>(x: &[T], w: &[T], b: &[T], y: &mut [T], mean: T, r: T) {
        let n = y.len();
        let (x, w, b) = (&x[..n], &w[..n], &b[..n]);
        for j in 0..n {
            y[j] = (x[j] - mean) * r * w[j] + b[j];
        }
    }
}

simd_fn! {
    /// A row's mean and `1 / sqrt(var + eps)`, written to `out`.
    fn moments<T: Real>(x: &[T], out: &mut [T], eps: T) {
        let n = T::from(x.len()).unwrap_or_else(T::one);
        let mean = sum_lanes(x) / n;
        let mut acc = [T::zero(); 8];
        let chunks = x.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..8 {
                let d = c[l] - mean;
                acc[l] += d * d;
            }
        }
        let mut var = sum_lanes(&acc);
        for &v in rest {
            var += (v - mean) * (v - mean);
        }
        out[0] = mean;
        out[1] = T::one() / (var / n + eps).sqrt();
    }
}

/// A row's mean and `1 / sqrt(var + eps)`.
#[inline]
fn row_moments<T: Real>(x: &[T], eps: T) -> (T, T) {
    let mut out = [T::zero(); 2];
    moments(x, &mut out, eps);
    (out[0], out[1])
}

simd_fn! {
    /// One row's backward: writes `dx`, adds to `dw` and `db`.
    fn row_grad<T: Real>(x: &[T], w: &[T], dy: &[T], dx: &mut [T], dw: &mut [T], db: &mut [T], mean: T, r: T) {
        let n = dx.len();
        let (x, w, dy, dw, db) = (&x[..n], &w[..n], &dy[..n], &mut dw[..n], &mut db[..n]);
        // Eight partial sums each, so that the loop vectorises (see `sum_lanes`).
        let (mut sg, mut sgx) = ([T::zero(); 8], [T::zero(); 8]);
        let whole = n - n % 8;
        for c in (0..whole).step_by(8) {
            for l in 0..8 {
                let j = c + l;
                let xh = (x[j] - mean) * r;
                let g = dy[j] * w[j];
                sg[l] += g;
                sgx[l] += g * xh;
                dw[j] += dy[j] * xh;
                db[j] += dy[j];
            }
        }
        let (mut sum_g, mut sum_gx) = (sum_lanes(&sg), sum_lanes(&sgx));
        for j in whole..n {
            let xh = (x[j] - mean) * r;
            let g = dy[j] * w[j];
            sum_g += g;
            sum_gx += g * xh;
            dw[j] += dy[j] * xh;
            db[j] += dy[j];
        }
        let inv_n = T::one() / T::from(n).unwrap_or_else(T::one);
        let (mg, mgx) = (sum_g * inv_n, sum_gx * inv_n);
        for j in 0..n {
            let xh = (x[j] - mean) * r;
            dx[j] = r * (dy[j] * w[j] - mg - xh * mgx);
        }
    }
}

impl LayerNorm {
    fn fwd<T: Real>(&self, x: &[T], w: &[T], b: &[T], d: usize) -> Vec<T> {
        let eps = T::from(self.eps).unwrap_or_else(T::zero);
        let mut y = vec![T::zero(); x.len()];
        let run = |(xs, ys): (&[T], &mut [T])| {
            for (xr, yr) in xs.chunks_exact(d).zip(ys.chunks_exact_mut(d)) {
                let (mean, r) = row_moments(xr, eps);
                normalise(xr, w, b, yr, mean, r);
            }
        };
        if x.len() >= 16 * CHUNK * d && !super::in_serial() {
            use rayon::prelude::*;
            x.par_chunks(CHUNK * d).zip(y.par_chunks_mut(CHUNK * d)).for_each(run);
        } else {
            x.chunks(CHUNK * d).zip(y.chunks_mut(CHUNK * d)).for_each(run);
        }
        y
    }

    /// `(dx, dw, db)`.
    fn bwd<T: Real>(&self, x: &[T], w: &[T], dy: &[T], d: usize) -> (Vec<T>, Vec<T>, Vec<T>) {
        let eps = T::from(self.eps).unwrap_or_else(T::zero);
        let mut dx = vec![T::zero(); x.len()];
        let run = |((xs, dys), dxs): ((&[T], &[T]), &mut [T])| {
            let (mut dw, mut db) = (vec![T::zero(); d], vec![T::zero(); d]);
            for ((xr, dyr), dxr) in xs.chunks_exact(d).zip(dys.chunks_exact(d)).zip(dxs.chunks_exact_mut(d)) {
                let (mean, r) = row_moments(xr, eps);
                row_grad(xr, w, dyr, dxr, &mut dw, &mut db, mean, r);
            }
            (dw, db)
        };
        let parts: Vec<(Vec<T>, Vec<T>)> = if x.len() >= 16 * CHUNK * d && !super::in_serial() {
            use rayon::prelude::*;
            x.par_chunks(CHUNK * d).zip(dy.par_chunks(CHUNK * d)).zip(dx.par_chunks_mut(CHUNK * d)).map(run).collect()
        } else {
            x.chunks(CHUNK * d).zip(dy.chunks(CHUNK * d)).zip(dx.chunks_mut(CHUNK * d)).map(run).collect()
        };
        let (mut dw, mut db) = (vec![T::zero(); d], vec![T::zero(); d]);
        for (pw, pb) in parts {
            for j in 0..d {
                dw[j] += pw[j];
                db[j] += pb[j];
            }
        }
        (dx, dw, db)
    }
}

fn last_dim(l1: &Layout, l2: &Layout, l3: &Layout) -> Result<usize> {
    let d = l1.dims().last().copied().unwrap_or(0);
    if d == 0 || l2.dims() != [d] || l3.dims() != [d] {
        candle_core::bail!("layerNorm: x {:?} with weight {:?} and bias {:?}", l1.dims(), l2.dims(), l3.dims());
    }
    Ok(d)
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(l1, l2, l3)?;
        let storage = match s1 {
            CpuStorage::F64(_) => {
                CpuStorage::F64(self.fwd::<f64>(slice(s1, l1, "x")?, slice(s2, l2, "w")?, slice(s3, l3, "b")?, d))
            }
            CpuStorage::F32(_) => {
                CpuStorage::F32(self.fwd::<f32>(slice(s1, l1, "x")?, slice(s2, l2, "w")?, slice(s3, l3, "b")?, d))
            }
            _ => candle_core::bail!("layerNorm: expected float32 or float64 values"),
        };
        Ok((storage, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        fn run<T: Real>(
            op: &LayerNorm,
            x: &Tensor,
            w: &Tensor,
            g: &Tensor,
            d: usize,
        ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
            with_host(x, |x: &[T]| with_host(w, |w: &[T]| with_host(g, |g: &[T]| op.bwd(x, w, g, d))))??
        }
        let dev = x.device();
        macro_rules! grads {
            ($t:ty) => {{
                let (dx, dw, db) = run::<$t>(self, x, w, grad, d)?;
                (Tensor::from_vec(dx, x.shape(), dev)?, Tensor::from_vec(dw, d, dev)?, Tensor::from_vec(db, d, dev)?)
            }};
        }
        let (dx, dw, db) = match x.dtype() {
            candle_core::DType::F64 => grads!(f64),
            _ => grads!(f32),
        };
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Layer normalisation of CPU tensors over the last axis (see the module doc).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let (x, weight, bias) = (x.contiguous()?, weight.contiguous()?, bias.contiguous()?);
    x.apply_op3(&weight, &bias, LayerNorm { eps })
}
