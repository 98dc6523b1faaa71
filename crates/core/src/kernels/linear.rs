//! The affine map `y = x W^T + b` as one op, forward and backward: `x [rows, in]`, `W [out, in]`, `b [out]`.
//!
//! Through candle's generic ops this is a matmul against a transposed view, a broadcast add, and in the
//! backward a transpose, two matmuls, a strided sum over rows for `db`, and zero-filled gradient buffers for
//! each: a third of a Transformer block's training step went to those extras. Here the forward starts from
//! the bias and accumulates the product into it; the backward is `dx = dy W`, `dW = dy^T x` (both GEMMs reading
//! the operands in place) and `db` as column sums, and skips `dx` when nothing before needs it.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::{Mat, Real, column_sums, matmul, slice, with_host};

struct Linear;

fn dims(lx: &Layout, lw: &Layout) -> Result<(usize, usize, usize)> {
    let (rows, input) = lx.shape().dims2()?;
    let (out, input_w) = lw.shape().dims2()?;
    if input != input_w {
        candle_core::bail!("linear: x {:?} does not fit weight {:?}", lx.dims(), lw.dims());
    }
    Ok((rows, input, out))
}

fn forward<T: Real>(x: &[T], w: &[T], b: Option<&[T]>, rows: usize, input: usize, out: usize) -> Vec<T> {
    let mut y = match b {
        Some(b) => {
            let mut y = Vec::with_capacity(rows * out);
            for _ in 0..rows {
                y.extend_from_slice(b);
            }
            y
        }
        None => vec![T::zero(); rows * out],
    };
    // W^T as a view: element (k, j) is W[j, k].
    matmul(rows, out, input, &mut y, out, b.is_some(), Mat::rows(x, input), Mat::rows_t(w, input));
    y
}

fn cpu_fwd(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    bias: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    let (rows, input, out) = dims(l1, l2)?;
    if let Some((_, lb)) = bias.filter(|(_, lb)| lb.dims() != [out]) {
        candle_core::bail!("linear: bias {:?} for {out} outputs", lb.dims());
    }
    macro_rules! run {
        ($t:ty, $v:ident) => {{
            let b = bias.map(|(s, l)| slice::<$t>(s, l, "bias")).transpose()?;
            CpuStorage::$v(forward(slice::<$t>(s1, l1, "x")?, slice::<$t>(s2, l2, "weight")?, b, rows, input, out))
        }};
    }
    let storage = match s1 {
        CpuStorage::F64(_) => run!(f64, F64),
        CpuStorage::F32(_) => run!(f32, F32),
        _ => candle_core::bail!("linear: expected float32 or float64 values"),
    };
    Ok((storage, Shape::from((rows, out))))
}

/// `dx` (when wanted), `dW`, `db`.
type Grads<T> = (Option<Vec<T>>, Vec<T>, Vec<T>);

fn backward<T: Real>(x: &Tensor, w: &Tensor, dy: &Tensor, want_dx: bool) -> Result<Grads<T>> {
    let (rows, input) = x.dims2()?;
    let out = w.dim(0)?;
    with_host(dy, |dy: &[T]| {
        let mut dw = vec![T::zero(); out * input];
        with_host(x, |x: &[T]| {
            matmul(out, input, rows, &mut dw, input, false, Mat::rows_t(dy, out), Mat::rows(x, input))
        })?;
        let dx = if want_dx {
            let mut dx = vec![T::zero(); rows * input];
            with_host(w, |w: &[T]| {
                matmul(rows, input, out, &mut dx, input, false, Mat::rows(dy, out), Mat::rows(w, input))
            })?;
            Some(dx)
        } else {
            None
        };
        Ok((dx, dw, column_sums(dy, out)))
    })?
}

fn cpu_bwd(x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Tensor, Tensor)> {
    let dev = x.device();
    macro_rules! run {
        ($t:ty) => {{
            let (dx, dw, db) = backward::<$t>(x, w, grad, x.track_op())?;
            (
                dx.map(|dx| Tensor::from_vec(dx, x.shape(), dev)).transpose()?,
                Tensor::from_vec(dw, w.shape(), dev)?,
                Tensor::from_vec(db, w.dim(0)?, dev)?,
            )
        }};
    }
    Ok(match x.dtype() {
        candle_core::DType::F64 => run!(f64),
        _ => run!(f32),
    })
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "linear"
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
        cpu_fwd(s1, l1, s2, l2, Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = cpu_bwd(x, w, grad)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_fwd(s1, l1, s2, l2, None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = cpu_bwd(x, w, grad)?;
        Ok((dx, Some(dw)))
    }
}

/// `x [rows, in] W^T + b` on CPU tensors (see the module doc).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, Linear),
        None => x.apply_op2(&w, Linear),
    }
}
