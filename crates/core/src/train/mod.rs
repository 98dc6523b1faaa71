//! Training: losses, optimizers, clipping.

pub mod loss;
pub mod optimizer;
pub mod trainer;

pub use loss::{CrossEntropySpec, LossSpec, MseSpec, Reduction, Tally};
pub use optimizer::{Optimizer, OptimizerConfig, OptimizerKind, OptimizerSpec, Slot};
pub use trainer::{CompileConfig, Evaluation, Metric, StepOutput, Trainer};
