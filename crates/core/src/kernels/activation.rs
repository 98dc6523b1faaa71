//! Feed-forward activations as ops with their backward, one vectorised pass each way:
//!
//! - the exact GELU, `gelu(x) = x Φ(x)` with `Φ(x) = (1 + erf(x / √2)) / 2` (Hendrycks and Gimpel 2016;
//!   PyTorch's `'gelu'`), backward `Φ(x) + x φ(x)`, `φ(x) = exp(-x²/2) / √(2π)`. candle's `gelu_erf` backward
//!   rounds `1/√(2π)` to 0.398942 (a relative error of 7e-7 in the gradient) and takes eight passes;
//! - ReLU, whose candle backward takes three (compare, convert, multiply).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::{Real, simd_fn, slice, with_host};

#[derive(Debug, Clone, Copy)]
enum Act {
    Gelu,
    Relu,
}

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

simd_fn! {
    fn relu_forward<T: Real>(x: &[T], y: &mut [T]) {
        let n = y.len();
        let x = &x[..n];
        for j in 0..n {
            y[j] = if x[j] > T::zero() { x[j] } else { T::zero() };
        }
    }
}

simd_fn! {
    fn relu_backward<T: Real>(x: &[T], dy: &[T], dx: &mut [T]) {
        let n = dx.len();
        let (x, dy) = (&x[..n], &dy[..n]);
        for j in 0..n {
            dx[j] = if x[j] > T::zero() { dy[j] } else { T::zero() };
        }
    }
}

simd_fn! {
    fn forward<T: Real>(x: &[T], y: &mut [T]) {
        let n = y.len();
        let x = &x[..n];
        let half = T::from(0.5).unwrap_or_else(T::zero);
        let r2 = T::from(std::f64::consts::FRAC_1_SQRT_2).unwrap_or_else(T::zero);
        for j in 0..n {
            y[j] = x[j] * half * (T::one() + (x[j] * r2).erf_());
        }
    }
}

simd_fn! {
    /// `dx = dy (Φ(x) + x φ(x))`.
    fn backward<T: Real>(x: &[T], dy: &[T], dx: &mut [T]) {
        let n = dx.len();
        let (x, dy) = (&x[..n], &dy[..n]);
        let half = T::from(0.5).unwrap_or_else(T::zero);
        let r2 = T::from(std::f64::consts::FRAC_1_SQRT_2).unwrap_or_else(T::zero);
        let c = T::from(FRAC_1_SQRT_2PI).unwrap_or_else(T::zero);
        for j in 0..n {
            let v = x[j];
            let cdf = half * (T::one() + (v * r2).erf_());
            let pdf = c * (-half * v * v).exp_();
            dx[j] = dy[j] * (cdf + v * pdf);
        }
    }
}

/// Splits the work over threads in fixed-size chunks when it is large enough to pay for them.
fn chunked<T: Real>(n: usize, f: impl Fn(std::ops::Range<usize>, &mut [T]) + Sync) -> Vec<T> {
    const CHUNK: usize = 1 << 14;
    let mut out = vec![T::zero(); n];
    if n >= 4 * CHUNK && !super::in_serial() {
        use rayon::prelude::*;
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| f(i * CHUNK..i * CHUNK + o.len(), o));
    } else {
        f(0..n, &mut out);
    }
    out
}

impl Act {
    fn fwd<T: Real>(self, x: &[T], y: &mut [T]) {
        match self {
            Act::Gelu => forward(x, y),
            Act::Relu => relu_forward(x, y),
        }
    }

    fn bwd<T: Real>(self, x: &[T], dy: &[T], dx: &mut [T]) {
        match self {
            Act::Gelu => backward(x, dy, dx),
            Act::Relu => relu_backward(x, dy, dx),
        }
    }
}

impl CustomOp1 for Act {
    fn name(&self) -> &'static str {
        match self {
            Act::Gelu => "gelu",
            Act::Relu => "relu",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = l.shape().elem_count();
        let storage = match s {
            CpuStorage::F64(_) => {
                let x = slice::<f64>(s, l, "x")?;
                CpuStorage::F64(chunked(n, |r, o| self.fwd(&x[r], o)))
            }
            CpuStorage::F32(_) => {
                let x = slice::<f32>(s, l, "x")?;
                CpuStorage::F32(chunked(n, |r, o| self.fwd(&x[r], o)))
            }
            _ => candle_core::bail!("{}: expected float32 or float64 values", self.name()),
        };
        Ok((storage, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        fn run<T: Real>(act: Act, x: &Tensor, g: &Tensor) -> Result<Tensor> {
            let n = x.elem_count();
            let dx =
                with_host(x, |x: &[T]| with_host(g, |g: &[T]| chunked(n, |r, o| act.bwd(&x[r.clone()], &g[r], o))))??;
            Tensor::from_vec(dx, x.shape(), x.device())
        }
        Ok(Some(match x.dtype() {
            candle_core::DType::F64 => run::<f64>(*self, x, grad)?,
            _ => run::<f32>(*self, x, grad)?,
        }))
    }
}

/// The exact GELU of a CPU tensor (see the module doc).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Act::Gelu)
}

/// `max(x, 0)` of a CPU tensor, with a one-pass backward (gradient 0 at 0, as PyTorch).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Act::Relu)
}
