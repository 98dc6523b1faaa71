//! The native model handle. Heavy calls (`trainStep`, `predict`, `evaluate`, `save`, `load`) run as
//! `AsyncTask`s on libuv's thread pool; light ones are synchronous. A model runs one call at a time: a call
//! that finds it busy fails at once (the facade queues calls, so users never see that).

use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use engram_core::{CompileConfig, HostTensor, InitialState, Sequential, SequentialConfig};
use napi::bindgen_prelude::{AsyncTask, Env};
use napi::{Task, bindgen_prelude::Result};
use napi_derive::napi;

use crate::error::{guard, state_error, to_napi, type_error};
use crate::tensor::{JsState, JsTensor, NamedTensor, states_to_host, to_host, to_js};

type Shared = Arc<Mutex<Option<Sequential>>>;

#[napi]
pub struct Model {
    inner: Shared,
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| type_error(format!("{what}: {e}")))
}

/// Locks the model for one call, or explains why it cannot be used now.
fn with_model<T>(inner: &Shared, op: &str, f: impl FnOnce(&mut Sequential) -> Result<T>) -> Result<T> {
    let mut guard: MutexGuard<Option<Sequential>> = match inner.try_lock() {
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
        let model = Sequential::new(config).map_err(to_napi)?;
        Ok(Model { inner: Arc::new(Mutex::new(Some(model))) })
    }

    /// Compiles with `{ optimizer, loss }` as JSON; resets the optimizer state.
    #[napi(catch_unwind)]
    pub fn compile(&self, options_json: String) -> Result<()> {
        let spec: CompileConfig = parse_json("compile options", &options_json)?;
        with_model(&self.inner, "compile", |m| m.compile(spec).map_err(to_napi))
    }

    #[napi(catch_unwind)]
    pub fn set_learning_rate(&self, lr: f64) -> Result<()> {
        with_model(&self.inner, "setLearningRate", |m| m.set_learning_rate(lr).map_err(to_napi))
    }

    #[napi(catch_unwind)]
    pub fn get_learning_rate(&self) -> Result<Option<f64>> {
        with_model(&self.inner, "getLearningRate", |m| Ok(m.learning_rate()))
    }

    /// Optimizer steps taken since compile.
    #[napi(catch_unwind)]
    pub fn step_count(&self) -> Result<f64> {
        with_model(&self.inner, "stepCount", |m| Ok(m.step_count() as f64))
    }

    /// One forward, loss, backward and update on a batch. Resolves to `{ loss, gradNorm }`.
    #[napi(catch_unwind, ts_return_type = "Promise<StepResult>")]
    pub fn train_step(&self, x: JsTensor, y: JsTensor, states: Option<Vec<JsState>>) -> Result<AsyncTask<Job>> {
        let x = to_host("x", &x)?;
        let y = to_host("y", &y)?;
        let states = states_to_host(states)?;
        Ok(AsyncTask::new(Job { inner: self.inner.clone(), work: Work::Train { x, y, states } }))
    }

    /// The model's output for a batch, in inference mode.
    #[napi(catch_unwind, ts_return_type = "Promise<JsTensor>")]
    pub fn predict(&self, x: JsTensor, states: Option<Vec<JsState>>) -> Result<AsyncTask<Job>> {
        let x = to_host("x", &x)?;
        let states = states_to_host(states)?;
        Ok(AsyncTask::new(Job { inner: self.inner.clone(), work: Work::Predict { x, states } }))
    }

    /// The compiled loss on a batch, in inference mode. Resolves to `{ loss, gradNorm: 0 }`.
    #[napi(catch_unwind, ts_return_type = "Promise<StepResult>")]
    pub fn evaluate(&self, x: JsTensor, y: JsTensor, states: Option<Vec<JsState>>) -> Result<AsyncTask<Job>> {
        let x = to_host("x", &x)?;
        let y = to_host("y", &y)?;
        let states = states_to_host(states)?;
        Ok(AsyncTask::new(Job { inner: self.inner.clone(), work: Work::Evaluate { x, y, states } }))
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
            let w = m.weights().map_err(to_napi)?;
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
        with_model(&self.inner, "setWeights", |m| m.set_weights(&host, strict.unwrap_or(true)).map_err(to_napi))
    }

    #[napi(catch_unwind)]
    pub fn summary(&self) -> Result<String> {
        with_model(&self.inner, "summary", |m| Ok(m.summary()))
    }

    /// The spec the model was built from, as JSON.
    #[napi(catch_unwind)]
    pub fn config_json(&self) -> Result<String> {
        with_model(&self.inner, "config", |m| {
            serde_json::to_string(m.config()).map_err(|e| state_error(format!("config: {e}")))
        })
    }

    /// The compile options, as JSON, or null before compile.
    #[napi(catch_unwind)]
    pub fn compile_json(&self) -> Result<Option<String>> {
        with_model(&self.inner, "compileConfig", |m| {
            m.compile_config()
                .map(|c| serde_json::to_string(c).map_err(|e| state_error(format!("compileConfig: {e}"))))
                .transpose()
        })
    }

    #[napi(catch_unwind)]
    pub fn param_count(&self) -> Result<f64> {
        with_model(&self.inner, "paramCount", |m| Ok(m.param_count() as f64))
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
}

pub enum Work {
    Train { x: HostTensor, y: HostTensor, states: Vec<InitialState> },
    Predict { x: HostTensor, states: Vec<InitialState> },
    Evaluate { x: HostTensor, y: HostTensor, states: Vec<InitialState> },
    Save { path: String },
    LoadWeights { path: String, prefix: String },
}

pub enum Done {
    Step(StepResult),
    Tensor(HostTensor),
    Nothing,
}

pub struct Job {
    inner: Shared,
    work: Work,
}

impl Task for Job {
    type Output = Done;
    type JsValue = napi::bindgen_prelude::Either3<StepResult, JsTensor, ()>;

    fn compute(&mut self) -> Result<Done> {
        let op = match self.work {
            Work::Train { .. } => "trainStep",
            Work::Predict { .. } => "predict",
            Work::Evaluate { .. } => "evaluate",
            Work::Save { .. } => "save",
            Work::LoadWeights { .. } => "loadWeights",
        };
        let work = &self.work;
        guard(op, || {
            with_model(&self.inner, op, |m| {
                Ok(match work {
                    Work::Train { x, y, states } => {
                        let r = m.train_step(x, y, states).map_err(to_napi)?;
                        Done::Step(StepResult { loss: r.loss, grad_norm: r.grad_norm })
                    }
                    Work::Predict { x, states } => Done::Tensor(m.predict(x, states).map_err(to_napi)?),
                    Work::Evaluate { x, y, states } => {
                        let loss = m.evaluate(x, y, states).map_err(to_napi)?;
                        Done::Step(StepResult { loss, grad_norm: 0.0 })
                    }
                    Work::Save { path } => {
                        m.save(path).map_err(to_napi)?;
                        Done::Nothing
                    }
                    Work::LoadWeights { path, prefix } => {
                        m.load_weights(path, prefix).map_err(to_napi)?;
                        Done::Nothing
                    }
                })
            })
        })
    }

    fn resolve(&mut self, _env: Env, output: Done) -> Result<Self::JsValue> {
        use napi::bindgen_prelude::Either3;
        Ok(match output {
            Done::Step(s) => Either3::A(s),
            Done::Tensor(t) => Either3::B(to_js(t)),
            Done::Nothing => Either3::C(()),
        })
    }
}

pub struct LoadTask {
    path: String,
}

impl Task for LoadTask {
    type Output = Sequential;
    type JsValue = Model;

    fn compute(&mut self) -> Result<Sequential> {
        guard("load", || Sequential::load(&self.path).map_err(to_napi))
    }

    fn resolve(&mut self, _env: Env, output: Sequential) -> Result<Model> {
        Ok(Model { inner: Arc::new(Mutex::new(Some(output))) })
    }
}
