/**
 * Layer specs: plain, JSON-able descriptions the native core builds layers from. Parameter names follow
 * PyTorch's modules, prefixed by the layer's index in the model (as `nn.Sequential` does) or by `name`.
 * @module
 */

/** Options every layer takes. */
export interface LayerBase {
  /** Prefix of the layer's parameter names; defaults to its index in the model. No dots. */
  name?: string;
}

/** Token embedding, as `nn.Embedding` (`weight [vocabSize, dim]`, N(0, 1) init). Must be the first layer. */
export interface EmbeddingSpec extends LayerBase {
  /** Selects the layer. */
  type: 'embedding';
  /** Number of distinct token ids; ids must be in `[0, vocabSize)`. */
  vocabSize: number;
  /** Size of each embedding vector. */
  dim: number;
  /**
   * Treat id 0 as padding at the end of each row (default false): recurrent layers after it run each row up to
   * its last non-zero id, as if given `lengths`. A zero before a row's last non-zero id is an ordinary token.
   */
  maskZero?: boolean;
}

/** Activation applied after a dense layer's affine map. */
export type Activation = 'linear' | 'relu' | 'tanh' | 'sigmoid';

/** Fully connected layer on the last axis, as `nn.Linear` (`weight [units, in]`, `bias [units]`). */
export interface DenseSpec extends LayerBase {
  /** Selects the layer. */
  type: 'dense';
  /** Output features. */
  units: number;
  /** Input features; only for a first layer (otherwise inferred). */
  inputSize?: number;
  /** Whether to add a bias (default true). */
  useBias?: boolean;
  /** Default `'linear'` (none). */
  activation?: Activation;
}

/** Options the recurrent layers share (`lstm`, `gru`, `rnn`). */
export interface RecurrentBase extends LayerBase {
  /** Size of the hidden (and, for an LSTM, cell) state. */
  hiddenSize: number;
  /** Stacked layers (default 1). */
  numLayers?: number;
  /**
   * Return every step `[batch, seqLen, D * hiddenSize]` (true) or only the final states `[batch, D * hiddenSize]`
   * (default), D = 2 when bidirectional. The final states of a bidirectional layer are the forward direction's
   * last step and the backward direction's first (PyTorch's `h_n`), not the output's last step.
   */
  returnSequences?: boolean;
  /** Dropout on the outputs of every stacked layer but the last, in training (default 0). */
  dropout?: number;
  /**
   * Run a second stack over the reversed sequence and concatenate its features after the forward ones (default
   * false); its parameters carry PyTorch's `_reverse` suffix (`weight_ih_l0_reverse`, ...).
   */
  bidirectional?: boolean;
  /**
   * Carry each call's final state (detached) into the next call as its initial state (default false), for
   * truncated backpropagation through time over a long stream cut into consecutive batches: row i of each batch
   * continues row i of the one before, so keep the batch size and do not shuffle. Every call (trainStep,
   * predict, evaluate) continues and updates the state; `model.resetStates()` clears it, and a checkpoint does
   * not hold it. Not with `bidirectional`.
   */
  stateful?: boolean;
  /** Input features; only for a first layer (otherwise inferred). */
  inputSize?: number;
}

/**
 * Stacked LSTM, batch-first, as `nn.LSTM(batch_first=True)`: parameters `weight_ih_l{k}`, `weight_hh_l{k}`,
 * `bias_ih_l{k}`, `bias_hh_l{k}`, gate order i, f, g, o. Input `[batch, seqLen, features]`.
 */
export interface LstmSpec extends RecurrentBase {
  /** Selects the layer. */
  type: 'lstm';
}

/**
 * Stacked GRU, batch-first, as `nn.GRU(batch_first=True)`: the same parameter names as the LSTM, gate order
 * r, z, n, with `b_hn` inside the reset gate's product: `n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))`.
 */
export interface GruSpec extends RecurrentBase {
  /** Selects the layer. */
  type: 'gru';
}

/** Stacked Elman RNN, batch-first, as `nn.RNN(batch_first=True)`: `h = act(x W_ih^T + b_ih + h W_hh^T + b_hh)`. */
export interface RnnSpec extends RecurrentBase {
  /** Selects the layer. */
  type: 'rnn';
  /** The activation, `'tanh'` (default) or `'relu'`. */
  nonlinearity?: 'tanh' | 'relu';
}

/** Inverted dropout: zeroes values with probability `rate` in training, identity otherwise. */
export interface DropoutSpec extends LayerBase {
  /** Selects the layer. */
  type: 'dropout';
  /** Probability of zeroing each value, in [0, 1). */
  rate: number;
}

/**
 * Multi-head self-attention (Vaswani et al. 2017), as `nn.MultiheadAttention(batch_first=True)` with query, key
 * and value all the input: parameters `in_proj_weight [3 dModel, dModel]`, `in_proj_bias`, `out_proj.weight`,
 * `out_proj.bias`. Input and output `[batch, seqLen, dModel]`. A padded batch (the `lengths` input, or an
 * embedding with `maskZero`) hides each row's padding keys; rows' padding positions still get outputs.
 */
export interface MultiHeadAttentionSpec extends LayerBase {
  /** Selects the layer. */
  type: 'multiHeadAttention';
  /** Number of heads; must divide `dModel`. */
  nHeads: number;
  /** Feature size; only for a first layer (otherwise inferred). */
  dModel?: number;
  /** Let each position attend only to itself and earlier positions (default false). */
  causal?: boolean;
  /** Dropout on the attention probabilities, in training (default 0). */
  dropout?: number;
  /** Whether the projections have biases (default true). */
  useBias?: boolean;
}

/**
 * Adds a position code to a sequence `[batch, seqLen, dModel]`: `sinusoidal` (default; "Attention Is All You Need":
 * `PE(pos, 2i) = sin(pos / 10000^(2i/d))`, `PE(pos, 2i+1) = cos(...)`, no parameters) or `learned` (a trainable
 * `weight [maxLen, dModel]`, initialised N(0, 0.02²)).
 */
export interface PositionalEncodingSpec extends LayerBase {
  /** Selects the layer. */
  type: 'positionalEncoding';
  /** `'sinusoidal'` (default) or `'learned'`. */
  kind?: 'sinusoidal' | 'learned';
  /** The longest sequence accepted (default 512); it is also the context that {@link Model.generate} keeps. */
  maxLen?: number;
  /** Dropout on the sum, in training (default 0). */
  dropout?: number;
  /** Feature size; only for a first layer (otherwise inferred). */
  inputSize?: number;
}

/**
 * Layer normalisation over the last axis (Ba et al. 2016), as `nn.LayerNorm`: `weight` (ones) and `bias`
 * (zeros). Trains every parameter before it: it has its own backward pass.
 */
export interface LayerNormSpec extends LayerBase {
  /** Selects the layer. */
  type: 'layerNorm';
  /** Added to the variance (default 1e-5). */
  eps?: number;
  /** Feature size; only for a first layer (otherwise inferred). */
  inputSize?: number;
}

/**
 * A Transformer block, as `nn.TransformerEncoderLayer(batch_first=True)`: self-attention and a feed-forward
 * network, each with a residual connection and layer norm. Post-norm by default (`x = norm1(x + sa(x))`,
 * `x = norm2(x + ff(x))`), pre-norm with `normFirst` (`x = x + sa(norm1(x))`, as GPT-2). Parameters
 * `self_attn.in_proj_weight`, `self_attn.in_proj_bias`, `self_attn.out_proj.*`, `linear1.*`, `linear2.*`,
 * `norm1.*`, `norm2.*`. Input and output `[batch, seqLen, dModel]`; with `causal` it is a decoder (GPT) block.
 */
export interface TransformerBlockSpec extends LayerBase {
  /** Selects the layer. */
  type: 'transformerBlock';
  /** Feature size of the input and output. */
  dModel: number;
  /** Number of attention heads; must divide `dModel`. */
  nHeads: number;
  /** Hidden size of the feed-forward network (default 4 × dModel). */
  ffDim?: number;
  /** Layer norm before each sub-layer instead of after the residual sum (default false, as PyTorch). */
  normFirst?: boolean;
  /** Let each position attend only to itself and earlier positions (default false). */
  causal?: boolean;
  /** The feed-forward activation: `'relu'` (default) or `'gelu'` (the exact, erf-based GELU). */
  activation?: 'relu' | 'gelu';
  /** Dropout on the attention probabilities, after each sub-layer and inside the feed-forward, in training (default 0.1, as PyTorch). */
  dropout?: number;
  /** The layer norms' epsilon (default 1e-5). */
  layerNormEps?: number;
}

/** Any layer spec. */
export type LayerSpec =
  | EmbeddingSpec
  | DenseSpec
  | LstmSpec
  | GruSpec
  | RnnSpec
  | DropoutSpec
  | MultiHeadAttentionSpec
  | PositionalEncodingSpec
  | LayerNormSpec
  | TransformerBlockSpec;

/** A layer spec without its `type`: what the {@link layers} builders take. */
export type LayerOptions<T> = Omit<T, 'type'>;

/** Builders for layer specs, to pass to {@link sequential}. */
export const layers = {
  /** Token embedding; see {@link EmbeddingSpec}. */
  embedding: (options: LayerOptions<EmbeddingSpec>): EmbeddingSpec => ({ type: 'embedding', ...options }),
  /** Fully connected layer; see {@link DenseSpec}. */
  dense: (options: LayerOptions<DenseSpec>): DenseSpec => ({ type: 'dense', ...options }),
  /** Stacked LSTM; see {@link LstmSpec}. */
  lstm: (options: LayerOptions<LstmSpec>): LstmSpec => ({ type: 'lstm', ...options }),
  /** Stacked GRU; see {@link GruSpec}. */
  gru: (options: LayerOptions<GruSpec>): GruSpec => ({ type: 'gru', ...options }),
  /** Stacked Elman RNN (tanh or relu); see {@link RnnSpec}. */
  rnn: (options: LayerOptions<RnnSpec>): RnnSpec => ({ type: 'rnn', ...options }),
  /** Dropout; see {@link DropoutSpec}. */
  dropout: (options: LayerOptions<DropoutSpec>): DropoutSpec => ({ type: 'dropout', ...options }),
  /** Multi-head self-attention; see {@link MultiHeadAttentionSpec}. */
  multiHeadAttention: (options: LayerOptions<MultiHeadAttentionSpec>): MultiHeadAttentionSpec => ({
    type: 'multiHeadAttention',
    ...options,
  }),
  /** Sinusoidal or learned positional encoding; see {@link PositionalEncodingSpec}. */
  positionalEncoding: (options: LayerOptions<PositionalEncodingSpec> = {}): PositionalEncodingSpec => ({
    type: 'positionalEncoding',
    ...options,
  }),
  /** Layer normalisation; see {@link LayerNormSpec}. */
  layerNorm: (options: LayerOptions<LayerNormSpec> = {}): LayerNormSpec => ({ type: 'layerNorm', ...options }),
  /** A Transformer encoder (or, causal, decoder) block; see {@link TransformerBlockSpec}. */
  transformerBlock: (options: LayerOptions<TransformerBlockSpec>): TransformerBlockSpec => ({
    type: 'transformerBlock',
    ...options,
  }),
};
