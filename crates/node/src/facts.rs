//! What a model's light getters answer, kept beside it (see [`Facts`]).

use napi::bindgen_prelude::Result;

use crate::error::{state_error, to_napi};
use crate::net::Net;

/// What the light getters (`summary`, `step`, `learningRate`, `compileOptions` ...) answer, kept beside the
/// model so that they never wait for, or fail on, a call in flight on a worker thread: the fixed facts once,
/// the compile options at each `compile`, the changing ones after every call.
pub struct Facts {
    pub kind: &'static str,
    pub summary: String,
    pub config_json: String,
    pub param_count: f64,
    pub param_bytes: f64,
    /// The compile options as JSON (`None` before compile): only `compile` changes them.
    pub compile_json: Option<String>,
    pub now: Changing,
    pub disposed: bool,
}

/// The facts any call may change: cheap to read after each one.
#[derive(Default)]
pub struct Changing {
    pub learning_rate: Option<f64>,
    pub compiled_learning_rate: Option<f64>,
    pub step_count: f64,
    pub memory_bytes: f64,
    pub linear: bool,
}

impl Facts {
    pub fn of(net: &Net) -> Result<Facts> {
        Ok(Facts {
            kind: net.kind(),
            summary: net.summary(),
            config_json: net.config_json().map_err(to_napi)?,
            param_count: net.trainer().param_count() as f64,
            param_bytes: net.trainer().param_bytes() as f64,
            compile_json: compile_json(net)?,
            now: Changing::of(net),
            disposed: false,
        })
    }
}

impl Changing {
    pub fn of(net: &Net) -> Changing {
        let t = net.trainer();
        Changing {
            learning_rate: t.learning_rate(),
            compiled_learning_rate: t.compiled_learning_rate(),
            step_count: t.step_count() as f64,
            memory_bytes: (t.resident_bytes() + t.optimizer_bytes()) as f64,
            linear: net.is_linear(),
        }
    }
}

/// The model's compile options as JSON, or `None` before compile.
pub fn compile_json(net: &Net) -> Result<Option<String>> {
    net.trainer()
        .compile_config()
        .map(|c| serde_json::to_string(c).map_err(|e| state_error(format!("compileConfig: {e}"))))
        .transpose()
}
