/**
 * engram: neural memory for Node.js. Build sequence models from layer specs, train them at native speed off
 * the event loop, and exchange weights with PyTorch.
 *
 * ```ts
 * import { sequential, layers, optimizers, tensor } from 'engram';
 * ```
 * @module
 */

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
export { Model, load, memoryNetwork, sequential } from './model.js';
export type { Inputs, MemoryInputs, SequenceInputs } from './inputs.js';
export type {
  CompileOptions,
  CrossEntropyLoss,
  GenerateOptions,
  InitialStates,
  LstmInitialState,
  LossSpec,
  RecurrentInitialState,
  MemoryNetworkOptions,
  ModelConfig,
  MseLoss,
  PredictOptions,
  SequentialOptions,
  StepOptions,
  StepResult,
} from './model.js';
export type { FitOptions } from './fit.js';
export type { Callbacks, History, Logs } from './callbacks.js';
export { maskTokens } from './masking.js';
export type { MaskedTokens, MaskTokensOptions } from './masking.js';
export { dtypeOf, tensor } from './tensor.js';
export type { DType, Tensor, TensorData } from './tensor.js';
export * as datasets from './datasets/index.js';
export { babiJointRecipe, babiRecipe, classificationError } from './recipes.js';
export type { BabiJointResult, BabiRecipeOptions, BabiRecipeResult } from './recipes.js';
