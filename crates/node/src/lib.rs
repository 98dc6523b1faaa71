//! engram-node: the Node.js binding of engram-core. It knows Node (typed arrays, promises, JS errors) and no
//! maths: every call converts its arguments once, runs one core call per batch, and converts the result.

mod error;
mod model;
mod net;
mod tensor;

pub use model::{Model, StepResult, load_model};
pub use tensor::{JsState, JsTensor, NamedTensor};
