//! The native model handle. Heavy calls (`trainStep`, `predict`, `evaluate`, `save`, `load`) run as
//! `AsyncTask`s on libuv's thread pool; light ones are synchronous. A model runs one call at a time: a call
//! that finds it busy fails at once (the facade queues calls, so users never see that).

use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use engram_core::{
    CompileConfig, GenerateConfig, HostTensor, InitialState, MemoryNetwork, MemoryNetworkConfig, Sequential,
    SequentialConfig, Tally,
};
use napi::bindgen_prelude::{AsyncTask, Env, Int32Array};
use napi::{Task, bindgen_prelude::Result};
use napi_derive::napi;

use crate::device;
use crate::error::{guard, state_error, to_napi, type_error};
use crate::net::Net;
use crate::tensor::{JsState, JsTensor, NamedTensor, states_to_host, to_host, to_js};

type Shared = Arc<Mutex<Option<Net>>>;

#[napi]
pub struct Model {
    inner: Shared,
    device: String,
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| type_error(format!("{what}: {e}")))
}

/// Locks the model for one call, or explains why it cannot be used now.
fn with_model<T>(inner: &Shared, op: &str, f: impl FnOnce(&mut Net) -> Result<T>) -> Result<T> {
    let mut guard: MutexGuard<Option<Net>> = match inner.try_lock() {
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
    match guard.as_mut() {
        Some(m) => f(m),
        None => Err(state_error(format!("{op}: the model has been disposed"))),
    }
}

#[napi]
impl Model {
    /// Builds a model from its JSON spec (`{ layers, seed, dtype }`).
    #[napi(factory, catch_unwind)]
    pub fn create(spec_json: String) -> Result<Model> {
        let config: SequentialConfig = parse_json("model spec", &spec_json)?;
        let (on, device) = device::current()?;
        let model = Sequential::new_on(config, &on).map_err(to_napi)?;
        Ok(Model { inner: Arc::new(Mutex::new(Some(Net::Sequential(model)))), device })
    }

    /// Builds an end-to-end memory network from its JSON options.
    #[napi(factory, catch_unwind)]
    pub fn create_memory_network(options_json: String) -> Result<Model> {
        let config: MemoryNetworkConfig = parse_json("memoryNetwork options", &options_json)?;
        let (on, device) = device::current()?;
        let model = MemoryNetwork::new_on(config, &on).map_err(to_napi)?;
        Ok(Model { inner: Arc::new(Mutex::new(Some(Net::MemoryNetwork(model)))), device })
    }

    /// The device the model lives on, as `ENGRAM_DEVICE` names it (`cpu`, `cuda:0`).
    #[napi(getter)]
    pub fn device(&self) -> String {
        self.device.clone()
    }

    /// `sequential` or `memoryNetwork`.
    #[napi(catch_unwind)]
    pub fn kind(&self) -> Result<String> {
        with_model(&self.inner, "kind", |m| Ok(m.kind().to_string()))
    }

    /// Memory networks: linear start (attention without softmax) on or off.
    #[napi(catch_unwind)]
    pub fn set_linear_start(&self, on: bool) -> Result<()> {
        with_model(&self.inner, "linearStart", |m| m.set_linear(on).map_err(to_napi))
    }

    #[napi(catch_unwind)]
    pub fn get_linear_start(&self) -> Result<bool> {
        with_model(&self.inner, "linearStart", |m| Ok(m.is_linear()))
    }

    /// Sequential models: forgets the state that `stateful` recurrent layers carry between calls.
    #[napi(catch_unwind)]
    pub fn reset_states(&self) -> Result<()> {
        with_model(&self.inner, "resetStates", |m| m.reset_states().map_err(to_napi))
    }

    /// Memory networks: each hop's attention over the memories, `[hops, batch, memorySize]`.
    #[napi(catch_unwind, ts_return_type = "Promise<JsTensor>")]
    pub fn attention(&self, inputs: Vec<JsTensor>) -> Result<AsyncTask<Job>> {
        let inputs = inputs_to_host(&inputs)?;
        Ok(AsyncTask::new(Job { inner: self.inner.clone(), work: Work::Attention { inputs } }))
    }

    /// Sequential models: each attention layer's probabilities `[batch, nHeads, seqLen, seqLen]`, by layer name.
    #[napi(catch_unwind, ts_return_type = "Promise<Array<NamedTensor>>")]
    pub fn attention_weights(&self, inputs: Vec<JsTensor>) -> Result<AsyncTask<Job>> {
        let inputs = inputs_to_host(&inputs)?;
        Ok(AsyncTask::new(Job { inner: self.inner.clone(), work: Work::AttentionWeights { inputs } }))
    }

    /// Decoder-only Transformers: samples `maxTokens` ids after `prompt` (options as JSON:
    /// `{ maxTokens, temperature, topK, seed }`).
    #[napi(catch_unwind, ts_return_type = "Promise<Int32Array>")]
    pub fn generate(&self, prompt: Int32Array, options_json: String) -> Result<AsyncTask<Job>> {
        let cfg: GenerateConfig = parse_json("generate options", &options_json)?;
        Ok(AsyncTask::new(Job { inner: self.inner.clone(), work: Work::Generate { prompt: prompt.to_vec(), cfg } }))
    }

    /// Compiles with `{ optimizer, loss }` as JSON; resets the optimizer state.
    #[napi(catch_unwind)]
    pub fn compile(&self, options_json: String) -> Result<()> {
        let spec: CompileConfig = parse_json("compile options", &options_json)?;
        with_model(&self.inner, "compile", |m| m.compile(spec).map_err(to_napi))
    }

    #[napi(catch_unwind)]
    pub fn set_learning_rate(&self, lr: f64) -> Result<()> {
        with_model(&self.inner, "setLearningRate", |m| m.trainer_mut().set_learning_rate(lr).map_err(to_napi))
    }

    #[napi(catch_unwind)]
    pub fn get_learning_rate(&self) -> Result<Option<f64>> {
        with_model(&self.inner, "getLearningRate", |m| Ok(m.trainer().learning_rate()))
    }

    /// The learning rate compile set, before any schedule changed it.
    #[napi(catch_unwind)]
    pub fn get_compiled_learning_rate(&self) -> Result<Option<f64>> {
        with_model(&self.inner, "compiledLearningRate", |m| Ok(m.trainer().compiled_learning_rate()))
    }

    /// Optimizer steps taken since compile.
    #[napi(catch_unwind)]
    pub fn step_count(&self) -> Result<f64> {
        with_model(&self.inner, "stepCount", |m| Ok(m.trainer().step_count() as f64))
    }

    /// One forward, loss, backward and update on a batch. Resolves to `{ loss, gradNorm }`.
    #[napi(catch_unwind, ts_return_type = "Promise<StepResult>")]
    pub fn train_step(
        &self,
        inputs: Vec<JsTensor>,
        y: JsTensor,
        states: Option<Vec<JsState>>,
    ) -> Result<AsyncTask<Job>> {
        let inputs = inputs_to_host(&inputs)?;
        let y = to_host("y", &y)?;
        let states = states_to_host(states)?;
        Ok(AsyncTask::new(Job { inner: self.inner.clone(), work: Work::Train { inputs, y, states } }))
    }

    /// The model's output for a batch, in inference mode.
    #[napi(catch_unwind, ts_return_type = "Promise<JsTensor>")]
    pub fn predict(&self, inputs: Vec<JsTensor>, states: Option<Vec<JsState>>) -> Result<AsyncTask<Job>> {
        let inputs = inputs_to_host(&inputs)?;
        let states = states_to_host(states)?;
        Ok(AsyncTask::new(Job { inner: self.inner.clone(), work: Work::Predict { inputs, states } }))
    }

    /// The compiled loss on a batch, in inference mode, with its tally. Resolves to `{ loss, gradNorm: 0, ... }`.
    #[napi(catch_unwind, ts_return_type = "Promise<StepResult>")]
    pub fn evaluate(&self, inputs: Vec<JsTensor>, y: JsTensor, states: Option<Vec<JsState>>) -> Result<AsyncTask<Job>> {
        let inputs = inputs_to_host(&inputs)?;
        let y = to_host("y", &y)?;
        let states = states_to_host(states)?;
        Ok(AsyncTask::new(Job { inner: self.inner.clone(), work: Work::Evaluate { inputs, y, states } }))
    }

    /// Writes a checkpoint (atomically).
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn save(&self, path: String) -> Result<AsyncTask<Job>> {
        Ok(AsyncTask::new(Job { inner: self.inner.clone(), work: Work::Save { path } }))
    }

    /// Loads a safetensors state dict (e.g. from PyTorch) into this model, stripping `prefix` from names.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn load_weights(&self, path: String, prefix: Option<String>) -> Result<AsyncTask<Job>> {
        let prefix = prefix.unwrap_or_default();
        Ok(AsyncTask::new(Job { inner: self.inner.clone(), work: Work::LoadWeights { path, prefix } }))
    }

    #[napi(catch_unwind)]
    pub fn get_weights(&self) -> Result<Vec<NamedTensor>> {
        with_model(&self.inner, "getWeights", |m| {
            let w = m.trainer().weights().map_err(to_napi)?;
            Ok(w.into_iter().map(|(name, t)| NamedTensor { name, tensor: to_js(t) }).collect())
        })
    }

    /// Replaces weights by name; with `strict` (the default) every parameter must be given.
    #[napi(catch_unwind)]
    pub fn set_weights(&self, weights: Vec<NamedTensor>, strict: Option<bool>) -> Result<()> {
        let host = weights
            .iter()
            .map(|w| Ok((w.name.clone(), to_host(&format!("setWeights {}", w.name), &w.tensor)?)))
            .collect::<Result<Vec<(String, HostTensor)>>>()?;
        with_model(&self.inner, "setWeights", |m| {
            m.trainer_mut().set_weights(&host, strict.unwrap_or(true)).map_err(to_napi)
        })
    }

    #[napi(catch_unwind)]
    pub fn summary(&self) -> Result<String> {
        with_model(&self.inner, "summary", |m| Ok(m.summary()))
    }

    /// The spec the model was built from, as JSON.
    #[napi(catch_unwind)]
    pub fn config_json(&self) -> Result<String> {
        with_model(&self.inner, "config", |m| m.config_json().map_err(to_napi))
    }

    /// The compile options, as JSON, or null before compile.
    #[napi(catch_unwind)]
    pub fn compile_json(&self) -> Result<Option<String>> {
        with_model(&self.inner, "compileConfig", |m| {
            m.trainer()
                .compile_config()
                .map(|c| serde_json::to_string(c).map_err(|e| state_error(format!("compileConfig: {e}"))))
                .transpose()
        })
    }

    #[napi(catch_unwind)]
    pub fn param_count(&self) -> Result<f64> {
        with_model(&self.inner, "paramCount", |m| Ok(m.trainer().param_count() as f64))
    }

    /// Frees the weights. Later calls fail with a clear error; disposing twice is harmless.
    #[napi(catch_unwind)]
    pub fn dispose(&self) -> Result<()> {
        match self.inner.try_lock() {
            Ok(mut g) => {
                *g = None;
                Ok(())
            }
            Err(TryLockError::Poisoned(p)) => {
                *p.into_inner() = None;
                Ok(())
            }
            Err(TryLockError::WouldBlock) => {
                Err(state_error("dispose: the model is busy with another call; await it first"))
            }
        }
    }

    #[napi(getter, catch_unwind)]
    pub fn is_disposed(&self) -> bool {
        match self.inner.try_lock() {
            Ok(g) => g.is_none(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().is_none(),
            Err(TryLockError::WouldBlock) => false,
        }
    }
}

/// Loads a checkpoint written by `save` into a new model.
#[napi(catch_unwind, ts_return_type = "Promise<Model>")]
pub fn load_model(path: String) -> AsyncTask<LoadTask> {
    AsyncTask::new(LoadTask { path })
}

#[napi(object)]
pub struct StepResult {
    pub loss: f64,
    pub grad_norm: f64,
    /// Targets that counted (class ids other than `ignoreIndex`; for `mse`, target values).
    pub targets: f64,
    /// `crossEntropy`: how many of those the most likely class got right.
    pub correct: Option<f64>,
}

impl StepResult {
    fn new(loss: f64, grad_norm: f64, tally: Tally) -> Self {
        StepResult { loss, grad_norm, targets: tally.targets as f64, correct: tally.correct.map(|c| c as f64) }
    }
}

pub enum Work {
    Train { inputs: Vec<HostTensor>, y: HostTensor, states: Vec<InitialState> },
    Predict { inputs: Vec<HostTensor>, states: Vec<InitialState> },
    Evaluate { inputs: Vec<HostTensor>, y: HostTensor, states: Vec<InitialState> },
    Attention { inputs: Vec<HostTensor> },
    AttentionWeights { inputs: Vec<HostTensor> },
    Generate { prompt: Vec<i32>, cfg: GenerateConfig },
    Save { path: String },
    LoadWeights { path: String, prefix: String },
}

pub enum Done {
    Step(StepResult),
    Tensor(HostTensor),
    Named(Vec<(String, HostTensor)>),
    Ids(Vec<i32>),
    Nothing,
}

pub struct Job {
    inner: Shared,
    work: Work,
}

impl Task for Job {
    type Output = Done;
    type JsValue = napi::bindgen_prelude::Either5<StepResult, JsTensor, Vec<NamedTensor>, Int32Array, ()>;

    fn compute(&mut self) -> Result<Done> {
        let op = match self.work {
            Work::Train { .. } => "trainStep",
            Work::Predict { .. } => "predict",
            Work::Evaluate { .. } => "evaluate",
            Work::Attention { .. } => "attention",
            Work::AttentionWeights { .. } => "attentionWeights",
            Work::Generate { .. } => "generate",
            Work::Save { .. } => "save",
            Work::LoadWeights { .. } => "loadWeights",
        };
        let work = &self.work;
        guard(op, || {
            with_model(&self.inner, op, |m| {
                Ok(match work {
                    Work::Train { inputs, y, states } => {
                        let r = m.train_step(inputs, y, states).map_err(to_napi)?;
                        Done::Step(StepResult::new(r.loss, r.grad_norm, r.tally))
                    }
                    Work::Predict { inputs, states } => Done::Tensor(m.predict(inputs, states).map_err(to_napi)?),
                    Work::Attention { inputs } => Done::Tensor(m.attention(inputs).map_err(to_napi)?),
                    Work::AttentionWeights { inputs } => Done::Named(m.attention_weights(inputs).map_err(to_napi)?),
                    Work::Generate { prompt, cfg } => Done::Ids(m.generate(prompt, cfg).map_err(to_napi)?),
                    Work::Evaluate { inputs, y, states } => {
                        let e = m.evaluate(inputs, y, states).map_err(to_napi)?;
                        Done::Step(StepResult::new(e.loss, 0.0, e.tally))
                    }
                    Work::Save { path } => {
                        m.save(path.as_ref()).map_err(to_napi)?;
                        Done::Nothing
                    }
                    Work::LoadWeights { path, prefix } => {
                        m.load_weights(path.as_ref(), prefix).map_err(to_napi)?;
                        Done::Nothing
                    }
                })
            })
        })
    }

    fn resolve(&mut self, _env: Env, output: Done) -> Result<Self::JsValue> {
        use napi::bindgen_prelude::Either5;
        Ok(match output {
            Done::Step(s) => Either5::A(s),
            Done::Tensor(t) => Either5::B(to_js(t)),
            Done::Named(all) => {
                Either5::C(all.into_iter().map(|(name, t)| NamedTensor { name, tensor: to_js(t) }).collect())
            }
            Done::Ids(ids) => Either5::D(Int32Array::new(ids)),
            Done::Nothing => Either5::E(()),
        })
    }
}

pub struct LoadTask {
    path: String,
}

impl Task for LoadTask {
    type Output = (Net, String);
    type JsValue = Model;

    fn compute(&mut self) -> Result<(Net, String)> {
        guard("load", || {
            let (on, device) = device::current()?;
            Ok((Net::load(self.path.as_ref(), &on).map_err(to_napi)?, device))
        })
    }

    fn resolve(&mut self, _env: Env, (net, device): (Net, String)) -> Result<Model> {
        Ok(Model { inner: Arc::new(Mutex::new(Some(net))), device })
    }
}

fn inputs_to_host(inputs: &[JsTensor]) -> Result<Vec<HostTensor>> {
    inputs.iter().enumerate().map(|(i, t)| to_host(&format!("input {i}"), t)).collect()
}
