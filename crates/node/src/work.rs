//! What a heavy call does on its worker thread: the model locked, panics caught, cancellation watched, and
//! the result handed back for the JS thread to convert.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use engram_core::{GenerateConfig, HostTensor, InitialState, Tally};
use napi::bindgen_prelude::{Either5, Int32Array, Result};
use napi_derive::napi;

use crate::error::{abort_error, guard, to_napi};
use crate::model::{Shared, with_model};
use crate::tensor::{JsTensor, NamedTensor, named_to_js, to_js};

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
    pub(crate) fn new(loss: f64, grad_norm: f64, tally: Tally) -> Self {
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
    GetWeights,
    SetWeights { weights: Vec<(String, HostTensor)>, strict: bool },
}

pub enum Done {
    Step(StepResult),
    Tensor(HostTensor),
    Named(Vec<(String, HostTensor)>),
    Ids(Vec<i32>),
    Nothing,
}

/// What a heavy call resolves to in JS.
pub type Output = Either5<StepResult, JsTensor, Vec<NamedTensor>, Int32Array, ()>;

/// Runs `f` under `flag`; once the flag is set, a call that fails (or has not started) reports an AbortError.
pub(crate) fn cancellable<T>(op: &str, flag: &Arc<AtomicBool>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if flag.load(Ordering::Relaxed) {
        return Err(abort_error(op));
    }
    match engram_core::cancel::scope(flag.clone(), f) {
        Err(_) if flag.load(Ordering::Relaxed) => Err(abort_error(op)),
        r => r,
    }
}

impl Work {
    fn op(&self) -> &'static str {
        match self {
            Work::Train { .. } => "trainStep",
            Work::Predict { .. } => "predict",
            Work::Evaluate { .. } => "evaluate",
            Work::Attention { .. } => "attention",
            Work::AttentionWeights { .. } => "attentionWeights",
            Work::Generate { .. } => "generate",
            Work::Save { .. } => "save",
            Work::LoadWeights { .. } => "loadWeights",
            Work::GetWeights => "getWeights",
            Work::SetWeights { .. } => "setWeights",
        }
    }

    /// The call, on a worker thread: under `cancel`, with panics caught, the model locked.
    pub(crate) fn run(self, inner: &Shared, cancel: &Arc<AtomicBool>) -> Result<Done> {
        let op = self.op();
        cancellable(op, cancel, || {
            guard(op, || {
                with_model(inner, op, |m| {
                    Ok(match self {
                        Work::Train { inputs, y, states } => {
                            let r = m.train_step(&inputs, &y, &states).map_err(to_napi)?;
                            Done::Step(StepResult::new(r.loss, r.grad_norm, r.tally))
                        }
                        Work::Predict { inputs, states } => Done::Tensor(m.predict(&inputs, &states).map_err(to_napi)?),
                        Work::Attention { inputs } => Done::Tensor(m.attention(&inputs).map_err(to_napi)?),
                        Work::AttentionWeights { inputs } => {
                            Done::Named(m.attention_weights(&inputs).map_err(to_napi)?)
                        }
                        Work::Generate { prompt, cfg } => Done::Ids(m.generate(&prompt, &cfg).map_err(to_napi)?),
                        Work::Evaluate { inputs, y, states } => {
                            let e = m.evaluate(&inputs, &y, &states).map_err(to_napi)?;
                            Done::Step(StepResult::new(e.loss, 0.0, e.tally))
                        }
                        Work::Save { path } => {
                            m.save(path.as_ref()).map_err(to_napi)?;
                            Done::Nothing
                        }
                        Work::LoadWeights { path, prefix } => {
                            m.load_weights(path.as_ref(), &prefix).map_err(to_napi)?;
                            Done::Nothing
                        }
                        Work::GetWeights => Done::Named(m.trainer().weights().map_err(to_napi)?),
                        Work::SetWeights { weights, strict } => {
                            m.trainer_mut().set_weights(&weights, strict).map_err(to_napi)?;
                            Done::Nothing
                        }
                    })
                })
            })
        })
    }
}

impl Done {
    pub(crate) fn into_js(self) -> Output {
        match self {
            Done::Step(s) => Either5::A(s),
            Done::Tensor(t) => Either5::B(to_js(t)),
            Done::Named(all) => Either5::C(named_to_js(all)),
            Done::Ids(ids) => Either5::D(Int32Array::new(ids)),
            Done::Nothing => Either5::E(()),
        }
    }
}
