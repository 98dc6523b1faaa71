//! The native model handle. Heavy calls (`trainStep`, `predict`, `evaluate`, `generate`, `save`, `load`, and
//! building a large model) run on engram's own worker threads (see [`crate::worker`]), each under a
//! [`CancelToken`]; light ones are synchronous, and getters read the model's [`Facts`]. A model runs one call
//! at a time: a call that finds it busy fails at once (the facade queues calls, so users never see that).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use engram_core::{
    Budget, CompileConfig, GenerateConfig, HostTensor, MemoryNetwork, MemoryNetworkConfig, Sequential, SequentialConfig,
};
use napi::bindgen_prelude::{Env, Int32Array, PromiseRaw, Result};
use napi_derive::napi;

use crate::device;
use crate::error::{guard, state_error, to_napi, type_error};
use crate::facts::{Changing, Facts, compile_json};
use crate::net::Net;
use crate::options::parse_json;
use crate::tensor::{JsState, JsTensor, NamedTensor, named_to_js, states_to_host, to_host};
use crate::work::{Output, Work, cancellable};
use crate::worker;

/// A model and what its light getters answer.
pub(crate) struct Handle {
    net: Mutex<Option<Net>>,
    facts: Mutex<Facts>,
}

pub(crate) type Shared = Arc<Handle>;

#[napi]
pub struct Model {
    inner: Shared,
    device: String,
}

impl Model {
    fn new(net: Net, device: String) -> Result<Model> {
        let facts = Facts::of(&net)?;
        Ok(Model { inner: Arc::new(Handle { net: Mutex::new(Some(net)), facts: Mutex::new(facts) }), device })
    }

    /// Reads the model's facts (see [`Facts`]); fails only once it is disposed.
    fn fact<T>(&self, op: &str, f: impl FnOnce(&Facts) -> T) -> Result<T> {
        let facts = self.inner.facts.lock().unwrap_or_else(|p| p.into_inner());
        if facts.disposed {
            return Err(state_error(format!("{op}: the model has been disposed")));
        }
        Ok(f(&facts))
    }
}

/// Locks the model for one call, or explains why it cannot be used now; afterwards its changing facts are
/// brought up to date.
pub(crate) fn with_model<T>(inner: &Shared, op: &str, f: impl FnOnce(&mut Net) -> Result<T>) -> Result<T> {
    let mut guard: MutexGuard<Option<Net>> = match inner.net.try_lock() {
        Ok(g) => g,
        Err(TryLockError::WouldBlock) => {
            return Err(state_error(format!(
                "{op}: the model is busy with another call; await it first (the engram facade queues calls for you)"
            )));
        }
        Err(TryLockError::Poisoned(_)) => {
            return Err(state_error(format!(
                "{op}: an internal error interrupted an earlier call, so the model's state is unknown; load it again"
            )));
        }
    };
    let Some(m) = guard.as_mut() else {
        return Err(state_error(format!("{op}: the model has been disposed")));
    };
    let out = f(m);
    inner.facts.lock().unwrap_or_else(|p| p.into_inner()).now = Changing::of(m);
    out
}

/// A flag that stops the call it is given to (see `engram_core::cancel`): set by an `AbortSignal` or by
/// `dispose()`, looked at between layers, time steps, tokens and chunks of a file.
#[napi]
pub struct CancelToken {
    flag: Arc<AtomicBool>,
}

#[napi]
impl CancelToken {
    #[napi(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        CancelToken { flag: Arc::new(AtomicBool::new(false)) }
    }

    #[napi]
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }

    #[napi(getter)]
    pub fn cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

/// What a model spec makes, checked but not allocated (see `Sequential::plan`).
#[napi(object)]
pub struct ModelPlan {
    pub param_count: f64,
    /// Bytes of parameters and lasting tables.
    pub resident_bytes: f64,
    pub summary: String,
    /// The spec with every default filled in, as `config` reports it.
    pub config_json: String,
    /// Where the model would live.
    pub device: String,
}

/// A model spec, parsed.
enum Spec {
    Sequential(SequentialConfig),
    MemoryNetwork(MemoryNetworkConfig),
}

impl Spec {
    fn parse(kind: &str, json: &str) -> Result<Spec> {
        match kind {
            "sequential" => Ok(Spec::Sequential(parse_json("model spec", json)?)),
            "memoryNetwork" => Ok(Spec::MemoryNetwork(parse_json("memoryNetwork options", json)?)),
            _ => Err(type_error(format!("model kind: expected sequential or memoryNetwork, got {kind:?}"))),
        }
    }

    fn plan(&self, on: &engram_core::Device, budget: &Budget) -> Result<Net> {
        Ok(match self {
            Spec::Sequential(c) => Net::Sequential(Sequential::plan(c, on, budget).map_err(to_napi)?),
            Spec::MemoryNetwork(c) => Net::MemoryNetwork(MemoryNetwork::plan(c, on, budget).map_err(to_napi)?),
        })
    }

    fn build(self, on: &engram_core::Device, budget: &Budget) -> Result<Net> {
        Ok(match self {
            Spec::Sequential(c) => Net::Sequential(Sequential::new_with(c, on, budget).map_err(to_napi)?),
            Spec::MemoryNetwork(c) => Net::MemoryNetwork(MemoryNetwork::new_with(c, on, budget).map_err(to_napi)?),
        })
    }
}

/// The budget of a model: its `maxMemory` option (bytes) when given, else the process's.
fn budget(max_memory: Option<f64>) -> Result<Budget> {
    match max_memory {
        None => Ok(Budget::global()),
        Some(b) if b.is_finite() && b >= 1.0 => Ok(Budget::new(b as u64, "the model's maxMemory option")),
        Some(b) => {
            Err(napi::Error::from_reason(format!("RangeError: maxMemory must be a number of bytes >= 1, got {b}")))
        }
    }
}

#[napi]
impl Model {
    /// Builds a model from its JSON spec (`{ layers, seed, dtype }`), here and now (the facade builds large
    /// ones with [`Model::build`]).
    #[napi(factory, catch_unwind)]
    pub fn create(spec_json: String, max_memory: Option<f64>) -> Result<Model> {
        Self::create_kind("sequential", &spec_json, max_memory)
    }

    /// Builds an end-to-end memory network from its JSON options.
    #[napi(factory, catch_unwind)]
    pub fn create_memory_network(options_json: String, max_memory: Option<f64>) -> Result<Model> {
        Self::create_kind("memoryNetwork", &options_json, max_memory)
    }

    fn create_kind(kind: &str, json: &str, max_memory: Option<f64>) -> Result<Model> {
        let spec = Spec::parse(kind, json)?;
        let budget = budget(max_memory)?;
        let (on, device) = device::current()?;
        let net = guard("create", || spec.build(&on, &budget))?;
        Model::new(net, device)
    }

    /// Checks a spec of `kind` (`sequential`, `memoryNetwork`) and its memory against the budget, allocating
    /// nothing: the parameter count, bytes, summary and normalised spec of the model it would build.
    #[napi(catch_unwind)]
    pub fn plan(kind: String, spec_json: String, max_memory: Option<f64>) -> Result<ModelPlan> {
        let spec = Spec::parse(&kind, &spec_json)?;
        let budget = budget(max_memory)?;
        let (on, device) = device::current()?;
        let net = guard("plan", || spec.plan(&on, &budget))?;
        Ok(ModelPlan {
            param_count: net.trainer().param_count() as f64,
            resident_bytes: net.trainer().resident_bytes() as f64,
            summary: net.summary(),
            config_json: net.config_json().map_err(to_napi)?,
            device,
        })
    }

    /// Builds a model of `kind` off the event loop (for large ones: initialising their weights takes time).
    #[napi(catch_unwind, ts_return_type = "Promise<Model>")]
    pub fn build<'env>(
        env: &'env Env,
        kind: String,
        spec_json: String,
        max_memory: Option<f64>,
        cancel: &CancelToken,
    ) -> Result<PromiseRaw<'env, Model>> {
        let spec = Spec::parse(&kind, &spec_json)?;
        let budget = budget(max_memory)?;
        make_model(env, "build", cancel, move |on| spec.build(on, &budget))
    }

    /// The device the model lives on, as `ENGRAM_DEVICE` names it (`cpu`, `cuda:0`).
    #[napi(getter)]
    pub fn device(&self) -> String {
        self.device.clone()
    }

    /// `sequential` or `memoryNetwork`.
    #[napi(catch_unwind)]
    pub fn kind(&self) -> Result<String> {
        self.fact("kind", |f| f.kind.to_string())
    }

    /// Memory networks: linear start (attention without softmax) on or off.
    #[napi(catch_unwind)]
    pub fn set_linear_start(&self, on: bool) -> Result<()> {
        with_model(&self.inner, "linearStart", |m| m.set_linear(on).map_err(to_napi))
    }

    #[napi(catch_unwind)]
    pub fn get_linear_start(&self) -> Result<bool> {
        self.fact("linearStart", |f| f.now.linear)
    }

    /// Sequential models: forgets the state that `stateful` recurrent layers carry between calls.
    #[napi(catch_unwind)]
    pub fn reset_states(&self) -> Result<()> {
        with_model(&self.inner, "resetStates", |m| m.reset_states().map_err(to_napi))
    }

    /// Memory networks: each hop's attention over the memories, `[hops, batch, memorySize]`.
    #[napi(catch_unwind, ts_return_type = "Promise<JsTensor>")]
    pub fn attention<'env>(
        &self,
        env: &'env Env,
        inputs: Vec<JsTensor>,
        cancel: &CancelToken,
    ) -> Result<PromiseRaw<'env, Output>> {
        let inputs = inputs_to_host(&inputs)?;
        self.job(env, Work::Attention { inputs }, cancel)
    }

    /// Sequential models: each attention layer's probabilities `[batch, nHeads, seqLen, seqLen]`, by layer name.
    #[napi(catch_unwind, ts_return_type = "Promise<Array<NamedTensor>>")]
    pub fn attention_weights<'env>(
        &self,
        env: &'env Env,
        inputs: Vec<JsTensor>,
        cancel: &CancelToken,
    ) -> Result<PromiseRaw<'env, Output>> {
        let inputs = inputs_to_host(&inputs)?;
        self.job(env, Work::AttentionWeights { inputs }, cancel)
    }

    /// Decoder-only Transformers: samples `maxTokens` ids after `prompt` (options as JSON:
    /// `{ maxTokens, temperature, topK, seed }`).
    #[napi(catch_unwind, ts_return_type = "Promise<Int32Array>")]
    pub fn generate<'env>(
        &self,
        env: &'env Env,
        prompt: Int32Array,
        options_json: String,
        cancel: &CancelToken,
    ) -> Result<PromiseRaw<'env, Output>> {
        let cfg: GenerateConfig = parse_json("generate options", &options_json)?;
        self.job(env, Work::Generate { prompt: prompt.to_vec(), cfg }, cancel)
    }

    /// Compiles with `{ optimizer, loss }` as JSON; resets the optimizer state.
    #[napi(catch_unwind)]
    pub fn compile(&self, options_json: String) -> Result<()> {
        let spec: CompileConfig = parse_json("compile options", &options_json)?;
        let json = with_model(&self.inner, "compile", |m| {
            m.compile(spec).map_err(to_napi)?;
            compile_json(m)
        })?;
        self.inner.facts.lock().unwrap_or_else(|p| p.into_inner()).compile_json = json;
        Ok(())
    }

    #[napi(catch_unwind)]
    pub fn set_learning_rate(&self, lr: f64) -> Result<()> {
        with_model(&self.inner, "setLearningRate", |m| m.trainer_mut().set_learning_rate(lr).map_err(to_napi))
    }

    #[napi(catch_unwind)]
    pub fn get_learning_rate(&self) -> Result<Option<f64>> {
        self.fact("learningRate", |f| f.now.learning_rate)
    }

    /// The learning rate compile set, before any schedule changed it.
    #[napi(catch_unwind)]
    pub fn get_compiled_learning_rate(&self) -> Result<Option<f64>> {
        self.fact("compiledLearningRate", |f| f.now.compiled_learning_rate)
    }

    /// Optimizer steps taken since compile.
    #[napi(catch_unwind)]
    pub fn step_count(&self) -> Result<f64> {
        self.fact("step", |f| f.now.step_count)
    }

    /// One forward, loss, backward and update on a batch. Resolves to `{ loss, gradNorm }`.
    #[napi(catch_unwind, ts_return_type = "Promise<StepResult>")]
    pub fn train_step<'env>(
        &self,
        env: &'env Env,
        inputs: Vec<JsTensor>,
        y: JsTensor,
        states: Option<Vec<JsState>>,
        cancel: &CancelToken,
    ) -> Result<PromiseRaw<'env, Output>> {
        let inputs = inputs_to_host(&inputs)?;
        let y = to_host("y", &y)?;
        let states = states_to_host(states)?;
        self.job(env, Work::Train { inputs, y, states }, cancel)
    }

    /// The model's output for a batch, in inference mode.
    #[napi(catch_unwind, ts_return_type = "Promise<JsTensor>")]
    pub fn predict<'env>(
        &self,
        env: &'env Env,
        inputs: Vec<JsTensor>,
        states: Option<Vec<JsState>>,
        cancel: &CancelToken,
    ) -> Result<PromiseRaw<'env, Output>> {
        let inputs = inputs_to_host(&inputs)?;
        let states = states_to_host(states)?;
        self.job(env, Work::Predict { inputs, states }, cancel)
    }

    /// The compiled loss on a batch, in inference mode, with its tally. Resolves to `{ loss, gradNorm: 0, ... }`.
    #[napi(catch_unwind, ts_return_type = "Promise<StepResult>")]
    pub fn evaluate<'env>(
        &self,
        env: &'env Env,
        inputs: Vec<JsTensor>,
        y: JsTensor,
        states: Option<Vec<JsState>>,
        cancel: &CancelToken,
    ) -> Result<PromiseRaw<'env, Output>> {
        let inputs = inputs_to_host(&inputs)?;
        let y = to_host("y", &y)?;
        let states = states_to_host(states)?;
        self.job(env, Work::Evaluate { inputs, y, states }, cancel)
    }

    /// Writes a checkpoint (atomically).
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn save<'env>(&self, env: &'env Env, path: String, cancel: &CancelToken) -> Result<PromiseRaw<'env, Output>> {
        self.job(env, Work::Save { path }, cancel)
    }

    /// Loads a safetensors state dict (e.g. from PyTorch) into this model, stripping `prefix` from names.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn load_weights<'env>(
        &self,
        env: &'env Env,
        path: String,
        prefix: Option<String>,
        cancel: &CancelToken,
    ) -> Result<PromiseRaw<'env, Output>> {
        let prefix = prefix.unwrap_or_default();
        self.job(env, Work::LoadWeights { path, prefix }, cancel)
    }

    #[napi(catch_unwind)]
    pub fn get_weights(&self) -> Result<Vec<NamedTensor>> {
        with_model(&self.inner, "getWeights", |m| Ok(named_to_js(m.trainer().weights().map_err(to_napi)?)))
    }

    /// [`Model::get_weights`] on a worker thread (for large models).
    #[napi(catch_unwind, ts_return_type = "Promise<Array<NamedTensor>>")]
    pub fn get_weights_async<'env>(&self, env: &'env Env, cancel: &CancelToken) -> Result<PromiseRaw<'env, Output>> {
        self.job(env, Work::GetWeights, cancel)
    }

    /// Replaces weights by name; with `strict` (the default) every parameter must be given.
    #[napi(catch_unwind)]
    pub fn set_weights(&self, weights: Vec<NamedTensor>, strict: Option<bool>) -> Result<()> {
        let host = weights_to_host(&weights)?;
        with_model(&self.inner, "setWeights", |m| {
            m.trainer_mut().set_weights(&host, strict.unwrap_or(true)).map_err(to_napi)
        })
    }

    /// [`Model::set_weights`] with the checks and the update on a worker thread; the arrays are copied here.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn set_weights_async<'env>(
        &self,
        env: &'env Env,
        weights: Vec<NamedTensor>,
        strict: Option<bool>,
        cancel: &CancelToken,
    ) -> Result<PromiseRaw<'env, Output>> {
        let weights = weights_to_host(&weights)?;
        self.job(env, Work::SetWeights { weights, strict: strict.unwrap_or(true) }, cancel)
    }

    /// Bytes of the trainable parameters: what `getWeights` copies.
    #[napi(catch_unwind)]
    pub fn param_bytes(&self) -> Result<f64> {
        self.fact("paramBytes", |f| f.param_bytes)
    }

    #[napi(catch_unwind)]
    pub fn summary(&self) -> Result<String> {
        self.fact("summary", |f| f.summary.clone())
    }

    /// The spec the model was built from, as JSON.
    #[napi(catch_unwind)]
    pub fn config_json(&self) -> Result<String> {
        self.fact("config", |f| f.config_json.clone())
    }

    /// The compile options, as JSON, or null before compile.
    #[napi(catch_unwind)]
    pub fn compile_json(&self) -> Result<Option<String>> {
        self.fact("compileConfig", |f| f.compile_json.clone())
    }

    #[napi(catch_unwind)]
    pub fn param_count(&self) -> Result<f64> {
        self.fact("paramCount", |f| f.param_count)
    }

    /// Frees the weights. Later calls fail with a clear error; disposing twice is harmless.
    #[napi(catch_unwind)]
    pub fn dispose(&self) -> Result<()> {
        let gone = || self.inner.facts.lock().unwrap_or_else(|p| p.into_inner()).disposed = true;
        match self.inner.net.try_lock() {
            Ok(mut g) => {
                *g = None;
                gone();
                Ok(())
            }
            Err(TryLockError::Poisoned(p)) => {
                *p.into_inner() = None;
                gone();
                Ok(())
            }
            Err(TryLockError::WouldBlock) => {
                Err(state_error("dispose: the model is busy with another call; await it first"))
            }
        }
    }

    /// Runs `work` on a worker thread, under `cancel`, with the model locked.
    fn job<'env>(&self, env: &'env Env, work: Work, cancel: &CancelToken) -> Result<PromiseRaw<'env, Output>> {
        let (inner, flag) = (self.inner.clone(), cancel.flag.clone());
        worker::run(env, &cancel.flag, move || work.run(&inner, &flag), |_, done| Ok(done.into_js()))
    }

    /// Bytes the model holds: parameters, lasting tables and optimizer state.
    #[napi(catch_unwind)]
    pub fn memory_bytes(&self) -> Result<f64> {
        self.fact("memoryBytes", |f| f.now.memory_bytes)
    }

    #[napi(getter, catch_unwind)]
    pub fn is_disposed(&self) -> bool {
        self.inner.facts.lock().unwrap_or_else(|p| p.into_inner()).disposed
    }
}

/// Loads a checkpoint written by `save` into a new model.
#[napi(catch_unwind, ts_return_type = "Promise<Model>")]
pub fn load_model<'env>(
    env: &'env Env,
    path: String,
    max_memory: Option<f64>,
    cancel: &CancelToken,
) -> Result<PromiseRaw<'env, Model>> {
    let budget = budget(max_memory)?;
    make_model(env, "load", cancel, move |on| Net::load(path.as_ref(), on, &budget).map_err(to_napi))
}

/// Makes a model on a worker thread, under `cancel`, on the device `ENGRAM_DEVICE` names.
fn make_model<'env>(
    env: &'env Env,
    op: &'static str,
    cancel: &CancelToken,
    make: impl FnOnce(&engram_core::Device) -> Result<Net> + Send + 'static,
) -> Result<PromiseRaw<'env, Model>> {
    let flag = cancel.flag.clone();
    let work = move || {
        cancellable(op, &flag, || {
            guard(op, || {
                let (on, device) = device::current()?;
                Ok((make(&on)?, device))
            })
        })
    };
    worker::run(env, &cancel.flag, work, |_, (net, device)| Model::new(net, device))
}

/// The process's memory budget.
#[napi(object)]
pub struct MemoryBudget {
    pub bytes: f64,
    /// Where it comes from (`ENGRAM_MAX_MEMORY`, half of the machine's memory ...).
    pub source: String,
}

/// Sets the budget of models created from now on (and of those without a `maxMemory` of their own, at their
/// next call); `bytes` undefined goes back to the machine's default.
#[napi(catch_unwind)]
pub fn set_memory_budget(bytes: Option<f64>, source: Option<String>) -> Result<()> {
    let budget = match bytes {
        None => None,
        Some(b) if b.is_finite() && b >= 1.0 => {
            Some(Budget::new(b as u64, source.unwrap_or_else(|| "set by setMemoryBudget".into())))
        }
        Some(b) => {
            return Err(napi::Error::from_reason(format!(
                "RangeError: setMemoryBudget: bytes must be a number >= 1, got {b}"
            )));
        }
    };
    Budget::set_global(budget);
    Ok(())
}

#[napi(catch_unwind)]
pub fn memory_budget() -> MemoryBudget {
    let b = Budget::global();
    MemoryBudget { bytes: b.bytes as f64, source: b.source }
}

fn weights_to_host(weights: &[NamedTensor]) -> Result<Vec<(String, HostTensor)>> {
    weights.iter().map(|w| Ok((w.name.clone(), to_host(&format!("setWeights {}", w.name), &w.tensor)?))).collect()
}

fn inputs_to_host(inputs: &[JsTensor]) -> Result<Vec<HostTensor>> {
    inputs.iter().enumerate().map(|(i, t)| to_host(&format!("input {i}"), t)).collect()
}
