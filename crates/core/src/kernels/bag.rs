//! Weighted bag of embeddings: `out[r] = sum_j w[r, j] * E[ids[r, j]]` (elementwise weights of size d), the
//! sentence encoding of memory networks (position encoding times word embeddings, summed over the words).
//!
//! Forward reads each looked-up row once and writes `[rows, d]`; backward scatter-adds `w * dout` into the
//! rows of `dE` it came from. The generic path (gather `[rows * S, d]`, multiply, sum, and their backwards)
//! materialised three tensors of that size per embedding. Word id 0 is padding and skipped.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::Real;

struct WeightedBag {
    /// `[rows * words]` word ids (0 = padding).
    ids: Arc<Vec<u32>>,
    rows: usize,
    words: usize,
}

fn contiguous<'a, T: Real>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    let all = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => candle_core::bail!("weighted bag: {what} must be contiguous"),
    }
}

impl WeightedBag {
    fn fwd<T: Real>(&self, e: &[T], w: &[T], d: usize) -> Vec<T> {
        let mut out = vec![T::zero(); self.rows * d];
        for r in 0..self.rows {
            let o = &mut out[r * d..(r + 1) * d];
            for j in 0..self.words {
                let id = self.ids[r * self.words + j] as usize;
                if id == 0 {
                    continue;
                }
                let row = &e[id * d..(id + 1) * d];
                let wj = &w[(r * self.words + j) * d..(r * self.words + j + 1) * d];
                for k in 0..d {
                    o[k] += wj[k] * row[k];
                }
            }
        }
        out
    }

    fn bwd<T: Real>(&self, vocab: usize, w: &[T], grad: &[T], d: usize) -> Vec<T> {
        let mut de = vec![T::zero(); vocab * d];
        for r in 0..self.rows {
            let g = &grad[r * d..(r + 1) * d];
            for j in 0..self.words {
                let id = self.ids[r * self.words + j] as usize;
                if id == 0 {
                    continue;
                }
                let wj = &w[(r * self.words + j) * d..(r * self.words + j + 1) * d];
                let row = &mut de[id * d..(id + 1) * d];
                for k in 0..d {
                    row[k] += wj[k] * g[k];
                }
            }
        }
        de
    }
}

impl CustomOp2 for WeightedBag {
    fn name(&self) -> &'static str {
        "weighted-bag"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (vocab, d) = l1.shape().dims2()?;
        if l2.dims() != [self.rows, self.words, d] {
            candle_core::bail!("weighted bag: weights {:?}, expected {:?}", l2.dims(), [self.rows, self.words, d]);
        }
        if let Some(&bad) = self.ids.iter().find(|&&i| i as usize >= vocab) {
            candle_core::bail!("weighted bag: id {bad} outside a table of {vocab} rows");
        }
        let out = match s1 {
            CpuStorage::F64(_) => CpuStorage::F64(self.fwd(contiguous(s1, l1, "E")?, contiguous(s2, l2, "w")?, d)),
            _ => CpuStorage::F32(self.fwd(contiguous(s1, l1, "E")?, contiguous(s2, l2, "w")?, d)),
        };
        Ok((out, Shape::from((self.rows, d))))
    }

    fn bwd(&self, e: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (vocab, d) = e.dims2()?;
        let dev = e.device();
        let de = match e.dtype() {
            candle_core::DType::F64 => {
                let (w, g) = (w.flatten_all()?.to_vec1::<f64>()?, grad.flatten_all()?.to_vec1::<f64>()?);
                Tensor::from_vec(self.bwd(vocab, &w, &g, d), (vocab, d), dev)?
            }
            _ => {
                let (w, g) = (w.flatten_all()?.to_vec1::<f32>()?, grad.flatten_all()?.to_vec1::<f32>()?);
                Tensor::from_vec(self.bwd(vocab, &w, &g, d), (vocab, d), dev)?
            }
        };
        // The weights are constants (position encoding), so they get no gradient.
        Ok((Some(de), None))
    }
}

/// `out [rows, d] = sum_j w[r, j] * E[ids[r, j]]` for a table `e [V, d]` and weights `w [rows, words, d]`.
pub fn weighted_bag(e: &Tensor, ids: Arc<Vec<u32>>, w: &Tensor) -> Result<Tensor> {
    let (rows, words, _) = w.dims3()?;
    if ids.len() != rows * words {
        candle_core::bail!("weighted bag: {} ids for {rows} x {words} weights", ids.len());
    }
    let (e, w) = (e.contiguous()?, w.contiguous()?);
    e.apply_op2(&w, WeightedBag { ids, rows, words })
}
