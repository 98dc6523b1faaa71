//! Models: containers that own parameters, run forward and backward, and train.

pub mod sequential;

pub use sequential::{CompileConfig, InitialState, Precision, Sequential, SequentialConfig, StepOutput};
