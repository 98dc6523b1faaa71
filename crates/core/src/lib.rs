//! engram-core: neural memory models with forward and backward passes, on candle.
//!
//! The core knows maths and nothing of Node: models are built from JSON-able specs, take and return
//! [`HostTensor`]s, and report failures as [`Error`]s whose messages name what was expected and found.

pub mod cancel;
pub mod checkpoint;
pub mod error;
pub mod host;
pub mod kernels;
pub mod layers;
pub mod memory;
pub mod models;
pub mod rng;
pub mod train;

pub use candle_core::{DType, Device, Tensor};
pub use checkpoint::write_atomic;
pub use error::{Error, ErrorKind, Result};
pub use host::{HostData, HostTensor};
pub use layers::{
    Activation, DenseSpec, DropoutSpec, EmbeddingSpec, FeedForwardActivation, LayerNormSpec, LayerSpec, LstmSpec,
    MultiHeadAttentionSpec, Nonlinearity, PositionKind, PositionalEncodingSpec, RecurrentSpec, TransformerBlockSpec,
};
pub use memory::{Budget, format_bytes, parse_bytes};
pub use models::{
    CompileConfig, GenerateConfig, InitialState, Input, Precision, Sequential, SequentialConfig, StepOutput,
};
pub use models::{MemoryNetwork, MemoryNetworkConfig, WeightTying};
pub use rng::Rng;
pub use train::{CrossEntropySpec, Evaluation, LossSpec, Metric, MseSpec, OptimizerKind, OptimizerSpec, Tally};
