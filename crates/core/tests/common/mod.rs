//! Helpers shared by the integration tests: building models from JSON, reading fixtures, comparing numbers.
// Each test file compiles its own copy of this module and uses only some of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use engram_core::{CompileConfig, HostData, HostTensor, Rng, Sequential, SequentialConfig};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// A model from a JSON spec, as the binding would hand it over.
pub fn model(spec: Value) -> Sequential {
    let config: SequentialConfig = serde_json::from_value(spec).expect("valid model spec");
    Sequential::new(config).expect("the model builds")
}

/// A model from a JSON spec, compiled with `optimizer` and `loss` (JSON too).
pub fn compiled(spec: Value, optimizer: Value, loss: Value) -> Sequential {
    let mut m = model(spec);
    let c: CompileConfig =
        serde_json::from_value(serde_json::json!({ "optimizer": optimizer, "loss": loss })).expect("valid compile");
    m.compile(c).expect("compiles");
    m
}

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

/// A scratch directory for one test, removed when dropped. The process id keeps runs apart: several
/// `cargo test` runs (dev and release, or two people) can share one target directory.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    pub fn join(&self, file: impl AsRef<std::path::Path>) -> PathBuf {
        self.0.join(file)
    }

    /// The names of the files in the directory.
    pub fn files(&self) -> Vec<String> {
        let entries = std::fs::read_dir(&self.0).expect("read scratch dir");
        entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every tensor of a safetensors fixture, widened to f64 (ids stay exact: they are small integers).
pub struct Fixture {
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Fixture {
    pub fn open(name: &str) -> Self {
        let bytes = std::fs::read(fixture_path(name)).expect("fixture exists (run scripts/make-fixtures.py)");
        let st = SafeTensors::deserialize(&bytes).expect("fixture parses");
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let b = view.data();
            let values: Vec<f64> = match view.dtype() {
                Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                Dtype::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
                Dtype::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                other => panic!("fixture tensor {name}: unexpected dtype {other:?}"),
            };
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Fixture { tensors }
    }

    fn get(&self, name: &str) -> &(Vec<usize>, Vec<f64>) {
        self.tensors.get(name).unwrap_or_else(|| panic!("fixture has no tensor {name}"))
    }

    pub fn values(&self, name: &str) -> &[f64] {
        &self.get(name).1
    }

    pub fn scalar(&self, name: &str) -> f64 {
        self.values(name)[0]
    }

    pub fn f32(&self, name: &str) -> HostTensor {
        let (shape, v) = self.get(name);
        HostTensor::f32(v.iter().map(|&x| x as f32).collect(), shape).unwrap()
    }

    pub fn f64(&self, name: &str) -> HostTensor {
        let (shape, v) = self.get(name);
        HostTensor::new(HostData::F64(v.clone()), shape.clone()).unwrap()
    }

    pub fn i32(&self, name: &str) -> HostTensor {
        let (shape, v) = self.get(name);
        HostTensor::i32(v.iter().map(|&x| x as i32).collect(), shape).unwrap()
    }

    /// The tensors named `<tag>.<param>` for every parameter of `model`, keyed by parameter name.
    pub fn tagged(&self, tag: &str, model: &Sequential) -> BTreeMap<String, Vec<f64>> {
        model.params().iter().map(|(n, _)| (n.to_string(), self.values(&format!("{tag}.{n}")).to_vec())).collect()
    }
}

/// A host tensor's values as f64, whatever its dtype.
pub fn values(t: &HostTensor) -> Vec<f64> {
    match &t.data {
        HostData::I32(v) => v.iter().map(|&x| x as f64).collect(),
        HostData::F32(v) => v.iter().map(|&x| x as f64).collect(),
        HostData::F64(v) => v.clone(),
    }
}

/// A candle tensor's values as a flat f64 vector.
pub fn tensor_values(t: &engram_core::Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(engram_core::DType::F64).unwrap().to_vec1().unwrap()
}

/// Every parameter by name, as f64.
pub fn weights(model: &Sequential) -> BTreeMap<String, Vec<f64>> {
    model.weights().unwrap().into_iter().map(|(n, t)| (n, values(&t))).collect()
}

/// Every parameter by name, as raw bits: for "bit-identical" comparisons.
pub fn weight_bits(model: &Sequential) -> BTreeMap<String, Vec<u64>> {
    weights(model).into_iter().map(|(n, v)| (n, v.into_iter().map(f64::to_bits).collect())).collect()
}

/// `max |got - want| / max(1, |want|)`: absolute near zero, relative for large values.
pub fn max_scaled_diff(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    got.iter().zip(want).map(|(g, w)| (g - w).abs() / w.abs().max(1.0)).fold(0.0, f64::max)
}

pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    let d = max_scaled_diff(got, want);
    if std::env::var("ENGRAM_SHOW_DIFF").is_ok() {
        eprintln!("{what}: {d:e}");
    }
    assert!(d <= tol, "{what}: max scaled difference {d:e} exceeds {tol:e}");
}

/// `n` floats uniform in [low, high) from a seeded generator.
pub fn uniform(rng: &mut Rng, n: usize, low: f64, high: f64) -> Vec<f64> {
    (0..n).map(|_| rng.uniform(low, high)).collect()
}

/// `n` ids uniform in [0, vocab).
pub fn ids(rng: &mut Rng, n: usize, vocab: usize) -> Vec<i32> {
    (0..n).map(|_| (rng.next_u64() % vocab as u64) as i32).collect()
}

pub fn f64_tensor(v: Vec<f64>, shape: &[usize]) -> HostTensor {
    HostTensor::new(HostData::F64(v), shape.to_vec()).unwrap()
}
