//! Checkpoints as safetensors files.
//!
//! Parameters are stored under their PyTorch-style names, so the file also reads as a `state_dict`. The
//! metadata holds the kind of model (`engram.kind`), its spec (`engram.model`), the compile options (`engram.compile`), the optimizer step
//! and current learning rate, and the generator state; optimizer moments are tensors under
//! `__optimizer__/<param>/<slot>`. Writes go to a temporary file that is renamed over the target, so a crash
//! mid-save leaves the previous file intact.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::memory::{Budget, Bytes};
use crate::models::{MemoryNetwork, MemoryNetworkConfig, Sequential, SequentialConfig};
use crate::train::{CompileConfig, Slot, Trainer};

const FORMAT: &str = "engram.format";
const KIND: &str = "engram.kind";
const MODEL: &str = "engram.model";
const COMPILE: &str = "engram.compile";
const STEP: &str = "engram.optimizer.step";
const LR: &str = "engram.optimizer.learningRate";
const RNG: &str = "engram.rng";
const OPT_PREFIX: &str = "__optimizer__/";
const LINEAR_START: &str = "engram.linearStart";

fn io<'a>(op: &'a str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io { op: op.to_string(), path: path.to_path_buf(), source }
}

/// Bytes written (or read) between two looks at the cancellation flag.
const CHUNK: usize = 8 << 20;

/// Writes `bytes` to `path` atomically: a sibling temporary file, flushed to disk, then renamed. Errors name
/// `path` (never the temporary file); a cancelled write removes the temporary file and leaves `path` as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_as("save", path, bytes)
}

/// [`write_atomic`], with `op` naming the operation in errors.
pub fn write_atomic_as(op: &'static str, path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_inner(op, path, bytes).map_err(|e| e.during(op))
}

fn write_atomic_inner(op: &str, path: &Path, bytes: &[u8]) -> Result<()> {
    if path.is_dir() {
        return Err(io(op, path)(std::io::Error::from(std::io::ErrorKind::IsADirectory)));
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().ok_or_else(|| Error::checkpoint(path, "not a file path"))?;
    // Process id and a per-process counter: concurrent saves to one path (worker threads) each get their own
    // temporary file, so one's rename cannot carry away the other's half-written bytes.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp: PathBuf = dir.join(format!(".{}.{}.{n}.tmp", file_name.to_string_lossy(), process_tag()));
    let mut created = false;
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io(op, path))?;
        created = true;
        for chunk in bytes.chunks(CHUNK) {
            crate::cancel::check(op)?;
            f.write_all(chunk).map_err(io(op, path))?;
        }
        f.sync_all().map_err(io(op, path))?;
        crate::cancel::check(op)?;
        std::fs::rename(&tmp, path).map_err(io(op, path))
    })();
    if result.is_err() && created {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The whole file, read in chunks (looking at the cancellation flag between them) into a buffer allocated
/// fallibly.
fn read_file(op: &str, path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io(op, path))?;
    let meta = f.metadata().map_err(io(op, path))?;
    if meta.is_dir() {
        return Err(io(op, path)(std::io::Error::from(std::io::ErrorKind::IsADirectory)));
    }
    let len = usize::try_from(meta.len()).map_err(|_| Error::checkpoint(path, "too large for this machine"))?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(len).map_err(|_| {
        Error::Memory(format!(
            "{op} {}: cannot allocate {} to read it",
            path.display(),
            crate::memory::format_bytes(len as u64)
        ))
    })?;
    let mut chunk = vec![0u8; CHUNK.min(len.max(1))];
    loop {
        crate::cancel::check(op)?;
        let got = f.read(&mut chunk).map_err(io(op, path))?;
        if got == 0 {
            break;
        }
        if buf.len() + got > len {
            return Err(Error::checkpoint(path, "changed while it was read"));
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    Ok(buf)
}

/// A safetensors file's metadata and its length, from its header alone.
fn read_header(op: &str, path: &Path) -> Result<(HashMap<String, String>, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io(op, path))?;
    let meta = f.metadata().map_err(io(op, path))?;
    if meta.is_dir() {
        return Err(io(op, path)(std::io::Error::from(std::io::ErrorKind::IsADirectory)));
    }
    let corrupt =
        |why: &str| Error::checkpoint(path, format!("not a valid safetensors file (truncated or corrupt?): {why}"));
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| corrupt("shorter than its header"))?;
    let n = u64::from_le_bytes(n);
    if n > 100 << 20 || n.saturating_add(8) > meta.len() {
        return Err(corrupt("the header's length is past the end of the file"));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|_| corrupt("the header is cut short"))?;
    let json: serde_json::Value = serde_json::from_slice(&header).map_err(|e| corrupt(&format!("header: {e}")))?;
    let meta_map = json
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
        .unwrap_or_default();
    Ok((meta_map, meta.len()))
}

/// The process id; under WASI, where `std::process::id()` panics ("unsupported"), a stamp of the clock taken once
/// per instance, which keeps two processes' temporary files apart just the same.
fn process_tag() -> u64 {
    #[cfg(not(target_os = "wasi"))]
    {
        u64::from(std::process::id())
    }
    #[cfg(target_os = "wasi")]
    {
        static TAG: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        *TAG.get_or_init(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        })
    }
}

/// A model that checkpoints: a kind name, a spec it is rebuilt from, and a [`Trainer`] with its state.
pub trait Checkpointed: Sized {
    /// Stored as `engram.kind`, so that loading can tell models apart.
    const KIND: &'static str;
    type Config: serde::Serialize + serde::de::DeserializeOwned;
    fn config(&self) -> &Self::Config;
    fn build_with(config: Self::Config, device: &Device, budget: &Budget) -> Result<Self>;
    /// The model as a dry run: checked against `budget`, nothing allocated.
    fn plan(config: &Self::Config, device: &Device, budget: &Budget) -> Result<Self>;
    fn trainer(&self) -> &Trainer;
    fn trainer_mut(&mut self) -> &mut Trainer;
    /// Model state outside the trainer that a resumed run needs, as metadata entries.
    fn state(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Restores what [`Checkpointed::state`] stored.
    fn restore_state(&mut self, _meta: &HashMap<String, String>) -> Result<()> {
        Ok(())
    }
}

/// The kind a checkpoint holds (`sequential`, `memoryNetwork`, ...), read from its header only.
pub fn stored_kind(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let (meta, _) = read_header("load", path).map_err(|e| e.during("load"))?;
    match (meta.get(KIND), meta.get(MODEL)) {
        (Some(k), _) => Ok(k.clone()),
        (None, Some(_)) => Ok(Sequential::KIND.to_string()),
        (None, None) => Err(no_spec(path).during("load")),
    }
}

fn no_spec(path: &Path) -> Error {
    Error::checkpoint(
        path,
        "holds no engram model spec (is it a PyTorch state_dict? build the model, then loadWeights)",
    )
}

/// Saves weights, spec, compile options and optimizer state.
pub fn save<M: Checkpointed>(model: &M, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let t = model.trainer();
    let mut meta = HashMap::new();
    meta.insert(FORMAT.to_string(), "1".to_string());
    meta.insert(KIND.to_string(), M::KIND.to_string());
    meta.insert(MODEL.to_string(), json(model.config())?);
    for (k, v) in model.state() {
        meta.insert(k.to_string(), v);
    }
    let s = t.rng_state();
    meta.insert(RNG.to_string(), format!("{},{},{},{}", s[0], s[1], s[2], s[3]));
    let mut tensors: Vec<(String, Tensor)> =
        t.params().iter().map(|(n, v)| (n.to_string(), v.as_detached_tensor())).collect();
    if let (Some(spec), Some(opt)) = (t.compile_config(), t.optimizer()) {
        meta.insert(COMPILE.to_string(), json(spec)?);
        meta.insert(STEP.to_string(), opt.step.to_string());
        // The rate a schedule may have set since compile; Rust prints f64 so that it parses back exactly.
        meta.insert(LR.to_string(), opt.config.learning_rate.to_string());
        for ((name, _), slot) in t.params().iter().zip(&opt.slots) {
            if let Slot::Momentum(b) = slot {
                tensors.push((format!("{OPT_PREFIX}{name}/momentum"), b.clone()));
            } else if let Some((exp_avg, exp_avg_sq)) = slot.moments()? {
                // Views into packed moments are written as their own values (safetensors reads them flattened).
                tensors.push((format!("{OPT_PREFIX}{name}/exp_avg"), exp_avg));
                tensors.push((format!("{OPT_PREFIX}{name}/exp_avg_sq"), exp_avg_sq));
            }
        }
    }
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
        .map_err(|e| Error::checkpoint(path, format!("cannot serialise: {e}")))?;
    crate::cancel::check("save")?;
    write_atomic_as("save", path, &bytes)
}

/// Loads a model saved by [`save`], compiled and with its optimizer state if it was saved so.
pub fn load<M: Checkpointed>(path: impl AsRef<Path>, device: &Device) -> Result<M> {
    load_with(path, device, &Budget::global())
}

/// [`load`], after checking from the file's header that the model and the file's contents fit `budget`.
pub fn load_with<M: Checkpointed>(path: impl AsRef<Path>, device: &Device, budget: &Budget) -> Result<M> {
    load_inner(path.as_ref(), device, budget).map_err(|e| e.during("load"))
}

fn load_inner<M: Checkpointed>(path: &Path, device: &Device, budget: &Budget) -> Result<M> {
    let (meta, file_len) = read_header("load", path)?;
    let config = stored_config::<M>(path, &meta)?;
    let plan = M::plan(&config, device, budget)?;
    // The file's bytes and the tensors parsed from them, then the model beside those tensors.
    let need = Bytes(file_len) * 2 + Bytes(plan.trainer().resident_bytes());
    budget.check(need.get(), |n| {
        format!(
            "load {}: reading the checkpoint ({}) and building its model needs {n}",
            path.display(),
            crate::memory::format_bytes(file_len)
        )
    })?;
    drop(plan);
    let (tensors, meta) = {
        let bytes = read_file("load", path)?;
        parse(path, &bytes, device)?
    };
    crate::cancel::check("load")?;
    let mut model = M::build_with(config, device, budget)?;
    crate::cancel::check("load")?;
    model.restore_state(&meta).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    let t = model.trainer_mut();
    let weights = stored_weights(&tensors, |n| !n.starts_with(OPT_PREFIX));
    t.set_tensors(&weights).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    if let Some(c) = meta.get(COMPILE) {
        let spec: CompileConfig = serde_json::from_str(c)
            .map_err(|e| Error::checkpoint(path, format!("the stored compile options are invalid: {e}")))?;
        t.compile(spec)?;
        if let Some(lr) = meta.get(LR) {
            let lr = lr.parse().map_err(|_| Error::checkpoint(path, format!("invalid {LR} {lr:?}")))?;
            t.set_learning_rate(lr).map_err(|e| Error::checkpoint(path, e.to_string()))?;
        }
        let step = match meta.get(STEP) {
            Some(s) => s.parse().map_err(|_| Error::checkpoint(path, format!("invalid {STEP} {s:?}")))?,
            None => 0,
        };
        let names: Vec<(String, Vec<usize>)> =
            t.params().iter().map(|(n, v)| (n.to_string(), v.dims().to_vec())).collect();
        let dtype = t.dtype;
        if let Some(opt) = t.optimizer_mut() {
            opt.step = step;
            for ((name, shape), slot) in names.iter().zip(opt.slots.iter_mut()) {
                let get = |s: &str| -> Result<Option<Tensor>> {
                    let Some(t) = tensors.get(&format!("{OPT_PREFIX}{name}/{s}")) else { return Ok(None) };
                    if t.dims() != shape.as_slice() {
                        return Err(Error::checkpoint(
                            path,
                            format!("optimizer state {name}/{s} has shape {:?}, the parameter {shape:?}", t.dims()),
                        ));
                    }
                    Ok(Some(t.to_dtype(dtype)?))
                };
                *slot = match (get("momentum")?, get("exp_avg")?, get("exp_avg_sq")?) {
                    (Some(b), None, None) => Slot::Momentum(b),
                    (None, Some(m), Some(v)) => Slot::Moments { exp_avg: m, exp_avg_sq: v },
                    (None, None, None) => Slot::Empty,
                    _ => {
                        return Err(Error::checkpoint(
                            path,
                            format!("the optimizer state of {name} is incomplete (truncated or corrupt?)"),
                        ));
                    }
                };
            }
        }
    }
    if let Some(r) = meta.get(RNG) {
        let parts: Vec<u64> =
            r.split(',').map(|p| p.parse()).collect::<std::result::Result<_, _>>().unwrap_or_default();
        match parts[..] {
            [a, b, c, d] => t.set_rng_state([a, b, c, d]),
            _ => return Err(Error::checkpoint(path, format!("invalid {RNG} {r:?}"))),
        }
    }
    Ok(model)
}

/// Loads parameters from a safetensors state dict (a PyTorch `state_dict` saved with
/// `safetensors.torch.save_file`, or an engram checkpoint) into this model. `prefix` is stripped from
/// the stored names first. Every parameter must be present with its shape; nothing changes otherwise.
pub fn load_weights(t: &mut Trainer, path: impl AsRef<Path>, prefix: &str) -> Result<()> {
    load_weights_inner(t, path.as_ref(), prefix).map_err(|e| e.during("loadWeights"))
}

fn load_weights_inner(t: &mut Trainer, path: &Path, prefix: &str) -> Result<()> {
    let (_, file_len) = read_header("loadWeights", path)?;
    t.check_call((Bytes(file_len) * 2).get(), false, || format!("loadWeights {}", path.display()))?;
    let (tensors, _) = {
        let bytes = read_file("loadWeights", path)?;
        parse(path, &bytes, &t.device)?
    };
    crate::cancel::check("loadWeights")?;
    let stripped: HashMap<String, Tensor> = tensors
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix(prefix).map(|s| (s.to_string(), t)))
        .filter(|(n, _)| !n.starts_with(OPT_PREFIX))
        .collect();
    let names: Vec<String> = t.params().iter().map(|(n, _)| n.to_string()).collect();
    let weights = stored_weights(&stripped, |n| names.iter().any(|m| m == n));
    t.set_tensors(&weights).map_err(|e| Error::checkpoint(path, e.to_string()))
}

impl Checkpointed for Sequential {
    const KIND: &'static str = "sequential";
    type Config = SequentialConfig;

    fn config(&self) -> &SequentialConfig {
        Sequential::config(self)
    }

    fn build_with(config: SequentialConfig, device: &Device, budget: &Budget) -> Result<Self> {
        Sequential::new_with(config, device, budget)
    }

    fn plan(config: &SequentialConfig, device: &Device, budget: &Budget) -> Result<Self> {
        Sequential::plan(config, device, budget)
    }

    fn trainer(&self) -> &Trainer {
        Sequential::trainer(self)
    }

    fn trainer_mut(&mut self) -> &mut Trainer {
        Sequential::trainer_mut(self)
    }
}

impl Sequential {
    /// Saves weights, spec, compile options and optimizer state (see [`save`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        save(self, path)
    }

    /// Loads a model saved by [`Sequential::save`] on the CPU.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        load(path, &Device::Cpu)
    }

    pub fn load_on(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        load(path, device)
    }

    /// Loads a safetensors state dict into this model (see [`load_weights`]).
    pub fn load_weights(&mut self, path: impl AsRef<Path>, prefix: &str) -> Result<()> {
        load_weights(self.trainer_mut(), path, prefix)
    }
}

/// The model spec stored in a checkpoint's metadata, for a model of kind `M`.
fn stored_config<M: Checkpointed>(path: &Path, meta: &HashMap<String, String>) -> Result<M::Config> {
    let kind = meta.get(KIND).map_or(Sequential::KIND, |k| k.as_str());
    if kind != M::KIND {
        return Err(Error::checkpoint(path, format!("holds a {kind} model, not a {}", M::KIND)));
    }
    match meta.get(MODEL) {
        Some(m) => serde_json::from_str(m)
            .map_err(|e| Error::checkpoint(path, format!("the stored model spec is invalid: {e}"))),
        None => Err(no_spec(path)),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::State(format!("cannot serialise the model spec: {e}")))
}

type Parsed = (HashMap<String, Tensor>, HashMap<String, String>);

fn parse(path: &Path, bytes: &[u8], device: &Device) -> Result<Parsed> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::checkpoint(path, format!("not a valid safetensors file (truncated or corrupt?): {e}")))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::checkpoint(path, format!("unreadable safetensors header: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let t = view.load(device).map_err(|e| Error::checkpoint(path, format!("tensor {name}: {e}")))?;
        tensors.insert(name, t);
    }
    Ok((tensors, meta))
}

fn stored_weights(tensors: &HashMap<String, Tensor>, keep: impl Fn(&str) -> bool) -> Vec<(&str, &Tensor)> {
    let mut out: Vec<(&str, &Tensor)> = tensors.iter().filter(|(n, _)| keep(n)).map(|(n, t)| (n.as_str(), t)).collect();
    out.sort_by(|a, b| a.0.cmp(b.0));
    out
}

impl Checkpointed for MemoryNetwork {
    const KIND: &'static str = "memoryNetwork";
    type Config = MemoryNetworkConfig;

    fn config(&self) -> &MemoryNetworkConfig {
        MemoryNetwork::config(self)
    }

    fn build_with(config: MemoryNetworkConfig, device: &Device, budget: &Budget) -> Result<Self> {
        MemoryNetwork::new_with(config, device, budget)
    }

    fn plan(config: &MemoryNetworkConfig, device: &Device, budget: &Budget) -> Result<Self> {
        MemoryNetwork::plan(config, device, budget)
    }

    fn trainer(&self) -> &Trainer {
        MemoryNetwork::trainer(self)
    }

    fn trainer_mut(&mut self) -> &mut Trainer {
        MemoryNetwork::trainer_mut(self)
    }

    fn state(&self) -> Vec<(&'static str, String)> {
        vec![(LINEAR_START, self.is_linear().to_string())]
    }

    fn restore_state(&mut self, meta: &HashMap<String, String>) -> Result<()> {
        match meta.get(LINEAR_START).map(String::as_str) {
            None | Some("false") => self.set_linear(false),
            Some("true") => self.set_linear(true),
            Some(other) => return Err(Error::State(format!("invalid {LINEAR_START} {other:?}"))),
        }
        Ok(())
    }
}
