//! What a model's light getters answer, kept beside it (see [`Facts`]).

use napi::bindgen_prelude::Result;

use crate::error::{state_error, to_napi};
use crate::net::Net;

/// What the light getters (`summary`, `step`, `learningRate`, `compileOptions` ...) answer, kept beside the
/// model so that they never wait for, or fail on, a call in flight on a worker thread: the fixed facts once,
/// the changing ones after every call.
pub struct Facts {
    pub kind: &'static str,
    pub summary: String,
    pub config_json: String,
    pub param_count: f64,
    pub param_bytes: f64,
    pub now: Changing,
    pub disposed: bool,
}

/// The facts a call may change.
#[derive(Default)]
pub struct Changing {
    pub compile_json: Option<String>,
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
            now: Changing::of(net)?,
            disposed: false,
        })
    }
}

impl Changing {
    pub fn of(net: &Net) -> Result<Changing> {
        let t = net.trainer();
        Ok(Changing {
            compile_json: t
                .compile_config()
                .map(|c| serde_json::to_string(c).map_err(|e| state_error(format!("compileConfig: {e}"))))
                .transpose()?,
            learning_rate: t.learning_rate(),
            compiled_learning_rate: t.compiled_learning_rate(),
            step_count: t.step_count() as f64,
            memory_bytes: (t.resident_bytes() + t.optimizer_bytes()) as f64,
            linear: net.is_linear(),
        })
    }
}
