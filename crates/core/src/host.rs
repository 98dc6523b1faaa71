//! Plain host-memory tensors: how data enters and leaves the core. The binding fills these from typed arrays
//! (one copy, on the caller's thread) and the core validates them once before they become candle tensors.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    I32(Vec<i32>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl HostData {
    pub fn len(&self) -> usize {
        match self {
            HostData::I32(v) => v.len(),
            HostData::F32(v) => v.len(),
            HostData::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype_name(&self) -> &'static str {
        match self {
            HostData::I32(_) => "int32",
            HostData::F32(_) => "float32",
            HostData::F64(_) => "float64",
        }
    }
}

/// A row-major tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub data: HostData,
    pub shape: Vec<usize>,
}

impl HostTensor {
    /// Checks that the data length matches the shape.
    pub fn new(data: HostData, shape: Vec<usize>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Range(format!(
                "tensor: shape {shape:?} holds {n} values but the data has {}",
                data.len()
            )));
        }
        Ok(HostTensor { data, shape })
    }

    pub fn f32(data: Vec<f32>, shape: &[usize]) -> Result<Self> {
        Self::new(HostData::F32(data), shape.to_vec())
    }

    pub fn f64(data: Vec<f64>, shape: &[usize]) -> Result<Self> {
        Self::new(HostData::F64(data), shape.to_vec())
    }

    pub fn i32(data: Vec<i32>, shape: &[usize]) -> Result<Self> {
        Self::new(HostData::I32(data), shape.to_vec())
    }

    pub fn batch(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Token ids as a U32 tensor, after checking every id is in `[0, vocab_size)`.
    pub(crate) fn to_ids(&self, what: &str, vocab_size: usize, device: &Device) -> Result<Tensor> {
        let HostData::I32(ids) = &self.data else {
            return Err(Error::Type(format!(
                "{what}: expected int32 token ids (an Int32Array), got {} data",
                self.data.dtype_name()
            )));
        };
        if let Some((i, &id)) = ids.iter().enumerate().find(|&(_, &id)| id < 0 || id as usize >= vocab_size) {
            return Err(Error::Range(format!(
                "{what}: token ids must be in [0, {vocab_size}), found {id} at flat index {i}"
            )));
        }
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        Ok(Tensor::from_vec(ids, self.shape.as_slice(), device)?)
    }

    /// Float features as a tensor of `dtype`, after checking every value is finite.
    pub(crate) fn to_floats(&self, what: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let t = match &self.data {
            HostData::F32(v) => {
                check_finite(what, v.iter().map(|&x| x as f64))?;
                Tensor::from_slice(v, self.shape.as_slice(), device)?
            }
            HostData::F64(v) => {
                check_finite(what, v.iter().copied())?;
                Tensor::from_slice(v, self.shape.as_slice(), device)?
            }
            HostData::I32(_) => {
                return Err(Error::Type(format!("{what}: expected float features (a Float32Array), got int32 data")));
            }
        };
        Ok(t.to_dtype(dtype)?)
    }

    /// Copies a candle tensor back to the host: integers as i32, f64 as f64, any other float as f32.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let shape = t.dims().to_vec();
        let flat = t.flatten_all()?;
        let data = match t.dtype() {
            DType::F64 => HostData::F64(flat.to_vec1::<f64>()?),
            DType::I32 => HostData::I32(flat.to_vec1::<i32>()?),
            DType::U32 | DType::I64 | DType::I16 | DType::U8 => {
                HostData::I32(flat.to_dtype(DType::I64)?.to_vec1::<i64>()?.into_iter().map(|x| x as i32).collect())
            }
            _ => HostData::F32(flat.to_dtype(DType::F32)?.to_vec1::<f32>()?),
        };
        Ok(HostTensor { data, shape })
    }
}

fn check_finite(what: &str, values: impl Iterator<Item = f64>) -> Result<()> {
    for (i, x) in values.enumerate() {
        if !x.is_finite() {
            return Err(Error::Range(format!("{what}: values must be finite, found {x} at flat index {i}")));
        }
    }
    Ok(())
}
