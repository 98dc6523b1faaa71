//! Training: losses, optimizers, clipping.

pub mod loss;
pub mod optimizer;

pub use loss::{CrossEntropySpec, LossSpec, MseSpec};
pub use optimizer::{Optimizer, OptimizerConfig, OptimizerKind, OptimizerSpec, Slot};
