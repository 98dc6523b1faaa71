//! Typed arrays in and out. Inputs are copied once, on the JS thread, into host tensors the core validates;
//! outputs hand their Rust buffer to JS without a copy.

use engram_core::memory::copy_of;
use engram_core::{HostData, HostTensor};
use napi::bindgen_prelude::{Either3, Float32Array, Float64Array, Int32Array};
use napi_derive::napi;

use crate::error::{to_napi, type_error};

/// A tensor as JS sees it: row-major data and a shape.
#[napi(object)]
pub struct JsTensor {
    pub data: Either3<Float32Array, Int32Array, Float64Array>,
    pub shape: Vec<u32>,
}

/// A tensor with a name (weights).
#[napi(object)]
pub struct NamedTensor {
    pub name: String,
    pub tensor: JsTensor,
}

/// The initial state of one recurrent layer: `h` and `c` are `[numLayers, batch, hiddenSize]`.
#[napi(object)]
pub struct JsState {
    pub layer: String,
    pub h: JsTensor,
    pub c: Option<JsTensor>,
}

pub fn to_host(what: &str, t: &JsTensor) -> napi::Result<HostTensor> {
    // Fallible copies: a huge typed array that cannot be copied is an error, not an aborted process.
    let data = match &t.data {
        Either3::A(a) => HostData::F32(copy_of(what, a).map_err(to_napi)?),
        Either3::B(a) => HostData::I32(copy_of(what, a).map_err(to_napi)?),
        Either3::C(a) => HostData::F64(copy_of(what, a).map_err(to_napi)?),
    };
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    HostTensor::new(data, shape).map_err(|e| match e.kind() {
        engram_core::ErrorKind::Range => napi::Error::from_reason(format!("RangeError: {what}: {e}")),
        _ => to_napi(e),
    })
}

pub fn to_js(t: HostTensor) -> JsTensor {
    let shape = t.shape.iter().map(|&d| d as u32).collect();
    let data = match t.data {
        HostData::F32(v) => Either3::A(Float32Array::new(v)),
        HostData::I32(v) => Either3::B(Int32Array::new(v)),
        HostData::F64(v) => Either3::C(Float64Array::new(v)),
    };
    JsTensor { data, shape }
}

/// Named tensors (weights, attention maps) as JS sees them.
pub fn named_to_js(all: Vec<(String, HostTensor)>) -> Vec<NamedTensor> {
    all.into_iter().map(|(name, t)| NamedTensor { name, tensor: to_js(t) }).collect()
}

pub fn states_to_host(states: Option<Vec<JsState>>) -> napi::Result<Vec<engram_core::InitialState>> {
    states
        .unwrap_or_default()
        .iter()
        .map(|s| {
            if s.layer.is_empty() {
                return Err(type_error("initialState: each entry needs a layer name or index"));
            }
            Ok(engram_core::InitialState {
                layer: s.layer.clone(),
                h: to_host("initialState h", &s.h)?,
                c: s.c.as_ref().map(|c| to_host("initialState c", c)).transpose()?,
            })
        })
        .collect()
}
