//! Models: containers that own parameters, run forward and backward, and train.

pub mod memory_network;
pub mod sequential;

pub use memory_network::{MemoryNetwork, MemoryNetworkConfig, WeightTying};
pub use sequential::{
    CompileConfig, GenerateConfig, InitialState, Input, Precision, Sequential, SequentialConfig, StepOutput,
};
