/**
 * engram: neural memory for Node.js. Build sequence models from layer specs, train them at native speed off
 * the event loop, and exchange weights with PyTorch.
 *
 * ```ts
 * import { sequential, layers, optimizers, tensor } from 'engram';
 * ```
 * @module
 */

export { backend } from './backend.js';
export type { Backend } from './backend.js';
export { layers } from './layers.js';
export type {
  Activation,
  DenseSpec,
  DropoutSpec,
  EmbeddingSpec,
  LayerBase,
  LayerNormSpec,
  LayerOptions,
  GruSpec,
  LayerSpec,
  LstmSpec,
  MultiHeadAttentionSpec,
  PositionalEncodingSpec,
  RecurrentBase,
  RnnSpec,
  TransformerBlockSpec,
} from './layers.js';
export { optimizers } from './optimizers.js';
export type { AdamOptions, AdamSpec, ClipOptions, OptimizerSpec, SgdOptions, SgdSpec } from './optimizers.js';
export { Model, load, memoryNetwork, memoryNetworkAsync, sequential, sequentialAsync } from './model.js';
export { AbortError } from './errors.js';
export { memoryBudget, setMemoryBudget } from './memory.js';
export type { ByteSize, MemoryBudget } from './memory.js';
export type { Inputs, MemoryInputs, SequenceInputs } from './inputs.js';
export type {
  CompileOptions,
  CrossEntropyLoss,
  EvaluateResult,
  ImportTorchOptions,
  GenerateOptions,
  InitialStates,
  LoadOptions,
  LstmInitialState,
  LossSpec,
  RecurrentInitialState,
  MemoryNetworkOptions,
  ModelConfig,
  MseLoss,
  PredictOptions,
  SequentialOptions,
  SignalOptions,
  StepOptions,
  StepResult,
} from './model.js';
export type { Batch, BatchObject, BatchSource, Dataset, FitOptions } from './fit.js';
export { callbacks, schedules } from './callbacks.js';
export type {
  Callback,
  Callbacks,
  CosineOptions,
  EarlyStopping,
  EarlyStoppingOptions,
  Logs,
  Mode,
  ModelCheckpointOptions,
  ReduceLROnPlateauOptions,
  StepDecayOptions,
} from './callbacks.js';
export { History } from './history.js';
export type { MetricName } from './metrics.js';
export type { Verbosity } from './progress.js';
export { attentionMap, historySvg, writeSvg } from './plot.js';
export type { AttentionMapOptions, HistoryData, PlotOptions } from './plot.js';
export { importTorch } from './model.js';
export { maskTokens } from './masking.js';
export type { MaskedTokens, MaskTokensOptions } from './masking.js';
export { dtypeOf, tensor } from './tensor.js';
export type { DType, Tensor, TensorData } from './tensor.js';
export * as datasets from './datasets/index.js';
export { babiJointRecipe, babiRecipe, classificationError } from './recipes.js';
export type { BabiJointResult, BabiRecipeOptions, BabiRecipeResult } from './recipes.js';
