import { NativeModel, loadModel, type JsState } from './backend.js';
import { native, nativeAsync } from './errors.js';
import type { LayerSpec } from './layers.js';
import type { OptimizerSpec } from './optimizers.js';
import { checkTensor, describe, sliceRows, type Tensor, type TensorData } from './tensor.js';
import { inputList, rowCount, type Inputs, type MemoryInputs } from './inputs.js';
import { BatchStream, fit, isDataset, unpackBatch, type Dataset, type FitOptions } from './fit.js';
import type { History } from './history.js';
import { batchRanges } from './batching.js';
import { METRICS, Meter, type MetricName } from './metrics.js';

/** A loss: `'crossEntropy'` on logits with int32 class ids, or `'mse'` with float targets. */
export type LossSpec = 'crossEntropy' | 'mse' | CrossEntropyLoss | MseLoss;

/** Cross-entropy on logits with int32 class ids, with options. */
export interface CrossEntropyLoss {
  /** Selects the loss. */
  type: 'crossEntropy';
  /** Targets equal to this are left out (a padding mask); default -100, as PyTorch. */
  ignoreIndex?: number;
  /** `mean` (default) over the counted targets, or their `sum`. */
  reduction?: 'mean' | 'sum';
}

/** Mean squared error against float targets. */
export interface MseLoss {
  /** Selects the loss. */
  type: 'mse';
}

/** Options of {@link Model.compile}. */
export interface CompileOptions {
  /** From {@link optimizers}, e.g. `optimizers.adam({ learningRate: 2e-3, clipNorm: 5 })`. */
  optimizer: OptimizerSpec;
  /**
   * `crossEntropy` takes logits `[batch, classes]` with ids `[batch]`, or `[batch, seqLen, classes]` with ids
   * `[batch, seqLen]` (every step) or `[batch]` (last step); ids equal to `ignoreIndex` (default -100) are
   * left out of the mean. `mse` takes float targets of the output's shape, or `[batch, features]` for the last
   * step of a sequence. `reduction: 'sum'` adds the per-target losses instead of averaging them (the
   * memory-network paper's learning rates assume sums).
   */
  loss: LossSpec;
  /** Reported beside the loss by `trainStep`, `evaluate` and `fit`: `accuracy`, `perplexity` (crossEntropy only). */
  metrics?: MetricName[];
}

/** What {@link Model.evaluate} resolves to: the compiled loss and metrics. */
export interface EvaluateResult {
  /** The loss, averaged over batches weighted by their rows. */
  loss: number;
  /** With the `accuracy` metric: the share of counted targets whose most likely class is right. */
  accuracy?: number;
  /** With the `perplexity` metric: `exp` of the mean cross-entropy per counted target. */
  perplexity?: number;
}

/** Options of {@link sequential}. */
export interface SequentialOptions {
  /** Seeds the initial weights and dropout masks: the same seed gives the same run. Default: random. */
  seed?: number;
  /** `float32` (default) or `float64`. */
  dtype?: 'float32' | 'float64';
}

/**
 * The initial state of one recurrent layer stack, as PyTorch lays it out: `[numLayers * D, batch, hiddenSize]`,
 * D = 2 for a bidirectional layer (layer-major, forward direction first).
 */
export interface RecurrentInitialState {
  /** Hidden state. */
  h: Tensor;
  /** Cell state: an LSTM's only, and required there. */
  c?: Tensor;
}

/** The initial state of an LSTM layer stack (see {@link RecurrentInitialState}). */
export type LstmInitialState = RecurrentInitialState;

/** Initial states for recurrent layers, keyed by layer name (or index as a string). */
export type InitialStates = Record<string, RecurrentInitialState>;

/** Options of {@link Model.trainStep}. */
export interface StepOptions {
  /** Initial `h` (and an LSTM's `c`) per recurrent layer, `[numLayers * D, batch, hiddenSize]`; zeros otherwise. */
  initialState?: InitialStates;
}

/** Options of {@link Model.predict} and {@link Model.evaluate}. */
export interface PredictOptions extends StepOptions {
  /** Rows per native call (default 128); results are the same whatever the size. */
  batchSize?: number;
}

/** What {@link Model.trainStep} resolves to. */
export interface StepResult {
  /** The batch's loss before the update. */
  loss: number;
  /** The global L2 norm of the gradients before clipping. */
  gradNorm: number;
  /** Targets that counted: class ids other than `ignoreIndex` (for `mse`, target values). */
  targets: number;
  /** With `crossEntropy`: how many counted targets the most likely class got right. */
  correct?: number | null;
}

/** Options of {@link Model.generate}. */
export interface GenerateOptions {
  /** How many tokens to sample. */
  maxTokens: number;
  /** Divides the logits before sampling (default 1); 0 always takes the most likely token. */
  temperature?: number;
  /** Samples among the `topK` most likely tokens only (default: all). */
  topK?: number;
  /** Seeds the sampling: the same seed gives the same tokens. Default: random. */
  seed?: number;
}

/** The spec a model was built from. */
export interface ModelConfig {
  /** The layer specs, as given. */
  layers: LayerSpec[];
  /** The seed the weights were drawn with. */
  seed: number;
  /** The parameters' precision. */
  dtype: 'float32' | 'float64';
}

function toNative(t: Tensor) {
  return { data: t.data, shape: [...t.shape] };
}

function statesToNative(states: InitialStates | undefined): JsState[] | undefined {
  if (states === undefined) return undefined;
  if (typeof states !== 'object' || states === null) {
    throw new TypeError(`initialState must be an object keyed by layer name, got ${describe(states)}`);
  }
  return Object.entries(states).map(([layer, s]) => ({
    layer,
    h: toNative(checkTensor(`initialState.${layer}.h`, s?.h)),
    c: s?.c === undefined ? undefined : toNative(checkTensor(`initialState.${layer}.c`, s.c)),
  }));
}

function positiveInt(what: string, v: unknown, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) {
    throw new RangeError(`${what} must be a positive integer, got ${String(v)}`);
  }
  return v;
}

/**
 * A trainable model. Calls on one model run one at a time in the order they were made: a second
 * `trainStep` made while one runs waits for it (they queue). Heavy calls run off the event loop.
 */
export class Model {
  #native: NativeModel;
  #kind: string;
  #queue: Promise<unknown> = Promise.resolve();
  #disposed = false;
  /** Set to true (e.g. from a callback) to stop `fit` after the current batch. */
  stopTraining = false;

  /** @internal Use {@link sequential} or {@link load}. */
  constructor(handle: NativeModel) {
    this.#native = handle;
    this.#kind = native(() => handle.kind());
  }

  /** `'sequential'` or `'memoryNetwork'`. */
  get kind(): string {
    return this.#kind;
  }

  /** The device the model lives on: `'cpu'`, `'cuda:0'` ... (see {@link backend}). */
  get device(): string {
    return this.#native.device;
  }

  #check(op: string): NativeModel {
    if (this.#disposed) throw new Error(`${op}: the model has been disposed`);
    return this.#native;
  }

  /** Runs `f` after every call made before it has finished. */
  #enqueue<T>(op: string, f: (m: NativeModel) => Promise<T>): Promise<T> {
    const run = async () => nativeAsync(() => f(this.#check(op)));
    const p = this.#queue.then(run, run);
    this.#queue = p.catch(() => undefined);
    return p;
  }

  /** Sets the optimizer and loss; resets the optimizer state. */
  compile(options: CompileOptions): void {
    const m = this.#check('compile');
    if (typeof options !== 'object' || options === null) {
      throw new TypeError(`compile: options must be { optimizer, loss }, got ${describe(options)}`);
    }
    const { optimizer, loss, metrics, ...rest } = options;
    const extra = Object.keys(rest);
    if (extra.length > 0) throw new TypeError(`compile: unknown option ${extra.join(', ')}`);
    if (metrics !== undefined) {
      if (!Array.isArray(metrics)) throw new TypeError(`compile: metrics must be an array such as ['accuracy'], got ${describe(metrics)}`);
      for (const m of metrics) {
        if (!METRICS.includes(m)) throw new RangeError(`compile: unknown metric ${String(m)} (known: ${METRICS.join(', ')})`);
      }
    }
    if (typeof optimizer !== 'object' || optimizer === null) {
      throw new TypeError('compile: optimizer is required, e.g. optimizers.adam({ learningRate: 1e-3 })');
    }
    if (loss === undefined) throw new TypeError("compile: loss is required: 'crossEntropy' or 'mse'");
    const lossSpec = typeof loss === 'string' ? { type: loss } : loss;
    native(() => m.compile(JSON.stringify({ optimizer, loss: lossSpec, metrics: [...new Set(metrics ?? [])] })));
  }

  /** The compiled metrics, and whether the loss sums over targets. @internal */
  lossInfo(op: string): { metrics: MetricName[]; summed: boolean } {
    const json = native(() => this.#check(op).compileJson());
    if (json === null) throw new Error(`${op}: the model is not compiled: call compile({ optimizer, loss }) first`);
    const c = JSON.parse(json) as { loss: { reduction?: string }; metrics?: MetricName[] };
    return { metrics: c.metrics ?? [], summed: c.loss.reduction === 'sum' };
  }

  /** The compile options in effect (undefined before compile), as stored in checkpoints. */
  get compileOptions(): CompileOptions | undefined {
    const json = native(() => this.#check('compileOptions').compileJson());
    return json === null ? undefined : (JSON.parse(json) as CompileOptions);
  }

  /** One forward pass, loss, backward pass and optimizer update on a batch, off the event loop. */
  async trainStep(x: Inputs, y: Tensor, options: StepOptions = {}): Promise<StepResult> {
    const xs = inputList(this.#kind, 'x', x).map(toNative);
    const ys = toNative(checkTensor('y', y));
    const states = statesToNative(options.initialState);
    return this.#enqueue('trainStep', (m) => m.trainStep(xs, ys, states));
  }

  /** The model's output (inference mode: no dropout), computed in batches off the event loop. */
  async predict(x: Inputs, options: PredictOptions = {}): Promise<Tensor> {
    const list = inputList(this.#kind, 'x', x);
    const batchSize = positiveInt('predict: batchSize', options.batchSize, 128);
    const n = rowCount(list);
    if (n === 0) throw new RangeError('predict: x has no rows');
    const outs: Tensor[] = [];
    for (const [s, e] of batchRanges(n, batchSize)) {
      const xs = list.map((t) => toNative(sliceRows(t, s, e)));
      const states = statesToNative(sliceStates(options.initialState, s, e));
      outs.push(await this.#enqueue('predict', (m) => m.predict(xs, states)));
    }
    return concatRows(outs);
  }

  /**
   * Memory networks: each hop's attention over the memory slots, `[hops, batch, memorySize]` (rows sum to 1
   * over the real sentences; empty slots get 0).
   */
  async attention(x: MemoryInputs): Promise<Tensor> {
    const xs = inputList(this.#kind, 'x', x).map(toNative);
    if (this.#kind !== 'memoryNetwork') throw new TypeError('attention: only a memory network has memory attention');
    return this.#enqueue('attention', (m) => m.attention(xs));
  }

  /**
   * Sequential models: the attention probabilities of every attention layer (a `transformerBlock`'s are its
   * self-attention's) for `x`, in inference mode, keyed by layer name: `[batch, nHeads, seqLen, seqLen]`, row i
   * holding how much position i attends to each position. Masked positions get 0.
   */
  async attentionWeights(x: Inputs): Promise<Record<string, Tensor>> {
    const xs = inputList(this.#kind, 'x', x).map(toNative);
    if (this.#kind !== 'sequential') throw new TypeError('attentionWeights: use attention() for a memory network');
    const list = await this.#enqueue('attentionWeights', (m) => m.attentionWeights(xs));
    const out: Record<string, Tensor> = {};
    for (const w of list) out[w.name] = w.tensor as Tensor;
    return out;
  }

  /**
   * Decoder-only Transformers (an embedding, then causal attention blocks): continues `promptIds` by sampling
   * `maxTokens` token ids, and resolves to them (without the prompt). Keys and values are cached, so each new
   * token runs the model over one position. The context is the positional encoding's `maxLen`: once it is full,
   * the cache restarts from the last half of the text (one full pass), so the model sees between half and all
   * of its context.
   */
  async generate(promptIds: ArrayLike<number>, options: GenerateOptions): Promise<Int32Array> {
    if (typeof options !== 'object' || options === null) {
      throw new TypeError(`generate: options must be { maxTokens, temperature?, topK?, seed? }, got ${describe(options)}`);
    }
    const { maxTokens, temperature, topK, seed, ...rest } = options;
    const extra = Object.keys(rest);
    if (extra.length > 0) throw new TypeError(`generate: unknown option ${extra.join(', ')}`);
    if (!Number.isSafeInteger(maxTokens) || maxTokens < 0) {
      throw new RangeError(`generate: maxTokens must be a non-negative integer, got ${String(maxTokens)}`);
    }
    if (temperature !== undefined && !(Number.isFinite(temperature) && temperature >= 0)) {
      throw new RangeError(`generate: temperature must be a finite number >= 0, got ${String(temperature)}`);
    }
    if (topK !== undefined) positiveInt('generate: topK', topK, 1);
    if (seed !== undefined && (!Number.isSafeInteger(seed) || seed < 0)) {
      throw new RangeError(`generate: seed must be a non-negative safe integer, got ${String(seed)}`);
    }
    if (promptIds === null || typeof promptIds !== 'object' || typeof promptIds.length !== 'number') {
      throw new TypeError(`generate: promptIds must be an Int32Array or an array of ids, got ${describe(promptIds)}`);
    }
    const ids = Int32Array.from(promptIds);
    for (let i = 0; i < promptIds.length; i++) {
      const v = promptIds[i];
      if (!Number.isInteger(v) || v !== ids[i]) {
        throw new RangeError(`generate: promptIds[${i}] must be an integer id, got ${String(v)}`);
      }
    }
    const json = JSON.stringify({
      maxTokens,
      temperature: temperature ?? 1,
      topK,
      seed: seed ?? Math.floor(Math.random() * 2 ** 32),
    });
    return this.#enqueue('generate', (m) => m.generate(ids, json));
  }

  /**
   * Memory networks: linear start (Sukhbaatar et al. 2015, section 4.2) removes the softmax from the memory
   * layers while on; turn it off once the validation loss stops falling.
   */
  get linearStart(): boolean {
    return native(() => this.#check('linearStart').getLinearStart());
  }

  /**
   * Forgets the state that `stateful` recurrent layers carry from call to call: the next call starts from zeros
   * (or its `initialState`). Queued after the calls made before it.
   */
  async resetStates(): Promise<void> {
    await this.#enqueue('resetStates', async (m) => m.resetStates());
  }

  /** Turns linear start on or off from the next call on. */
  set linearStart(on: boolean) {
    const m = this.#check('linearStart');
    native(() => m.setLinearStart(on));
  }

  /**
   * The compiled loss and metrics on `x`, `y` in inference mode, over batches of `batchSize` rows (or over a
   * {@link Dataset}'s batches), averaged as `fit` averages an epoch.
   */
  async evaluate(x: Inputs, y: Tensor, options?: PredictOptions): Promise<EvaluateResult>;
  async evaluate(data: Dataset): Promise<EvaluateResult>;
  async evaluate(x: Inputs | Dataset, y?: Tensor, options: PredictOptions = {}): Promise<EvaluateResult> {
    const batchSize = positiveInt('evaluate: batchSize', options.batchSize, 128);
    const data = y === undefined ? (x as Dataset) : ([x, y] as [Inputs, Tensor]);
    return (await this.evaluateMeter(data, batchSize, 'evaluate', options.initialState)).logs() as unknown as EvaluateResult;
  }

  /** Evaluates tensors in batches, or a dataset batch by batch, into a {@link Meter}. @internal */
  async evaluateMeter(data: [Inputs, Tensor] | Dataset, batchSize: number, what: string, initialState?: InitialStates): Promise<Meter> {
    const { metrics, summed } = this.lossInfo(what);
    const meter = new Meter(metrics, summed);
    const step = async (x: Inputs, y: Tensor, s: number, e: number) => {
      const xs = inputList(this.#kind, 'x', x).map((t) => toNative(sliceRows(t, s, e)));
      const ys = toNative(sliceRows(y, s, e));
      const states = statesToNative(sliceStates(initialState, s, e));
      meter.add(await this.#enqueue('evaluate', (m) => m.evaluate(xs, ys, states)), e - s);
    };
    if (isDataset(data)) {
      const stream = new BatchStream(data, `${what}: data`);
      for (let i = 0; ; i++) {
        const b = await stream.next();
        if (b === undefined) break;
        const [bx, by] = unpackBatch(this.#kind, `${what}: batch ${i}`, b);
        const n = rowCount(inputList(this.#kind, 'x', bx));
        await step(bx, by, 0, n);
      }
      if (meter.rows === 0) throw new RangeError(`${what}: the data gave no batches`);
      return meter;
    }
    const [x, y] = unpackBatch(this.#kind, what, data);
    const n = rowCount(inputList(this.#kind, 'x', x));
    if (n !== (y.shape[0] ?? 0)) {
      throw new RangeError(`${what}: x and y must have the same batch size, got ${n} and ${y.shape[0] ?? 0}`);
    }
    if (n === 0) throw new RangeError(`${what}: x has no rows`);
    for (const [s, e] of batchRanges(n, batchSize)) await step(x, y, s, e);
    return meter;
  }

  /**
   * Trains on `x`, `y` in shuffled batches, or on a {@link Dataset}'s batches, from epoch `initialEpoch` to
   * `epochs - 1`, with optional validation, metrics, callbacks and progress output; resolves to the
   * {@link History}. Each step runs off the event loop, so timers and I/O go on while it trains.
   */
  async fit(x: Inputs, y: Tensor, options?: FitOptions): Promise<History>;
  async fit(data: Dataset, options?: FitOptions): Promise<History>;
  async fit(x: Inputs | Dataset, y?: Tensor | FitOptions, options: FitOptions = {}): Promise<History> {
    this.#check('fit');
    if (y === undefined || !('data' in y && 'shape' in y)) return fit(this, x, undefined, (y as FitOptions | undefined) ?? {});
    return fit(this, x, y, options);
  }

  /** Every parameter by its PyTorch-style name, copied out. */
  getWeights(): Record<string, Tensor> {
    const m = this.#check('getWeights');
    const out: Record<string, Tensor> = {};
    for (const w of native(() => m.getWeights())) out[w.name] = w.tensor as Tensor;
    return out;
  }

  /**
   * Replaces parameters by name. With `strict` (default) every parameter must be given; in any case unknown
   * names and wrong shapes are errors, and nothing changes unless every check passes.
   */
  setWeights(weights: Record<string, Tensor>, options: { strict?: boolean } = {}): void {
    const m = this.#check('setWeights');
    if (typeof weights !== 'object' || weights === null) {
      throw new TypeError(`setWeights: weights must be a record of tensors, got ${describe(weights)}`);
    }
    const list = Object.entries(weights).map(([name, t]) => ({ name, tensor: toNative(checkTensor(`weights.${name}`, t)) }));
    native(() => m.setWeights(list, options.strict ?? true));
  }

  /**
   * Loads a safetensors state dict (for instance a PyTorch `state_dict` saved with
   * `safetensors.torch.save_file`) into this model; `prefix` is stripped from the stored names first.
   */
  async loadWeights(path: string, options: { prefix?: string } = {}): Promise<void> {
    if (typeof path !== 'string') throw new TypeError(`loadWeights: path must be a string, got ${describe(path)}`);
    return this.#enqueue('loadWeights', (m) => m.loadWeights(path, options.prefix ?? ''));
  }

  /** Writes weights, spec, compile options and optimizer state to a safetensors file, atomically. */
  async save(path: string): Promise<void> {
    if (typeof path !== 'string') throw new TypeError(`save: path must be a string, got ${describe(path)}`);
    return this.#enqueue('save', (m) => m.save(path));
  }

  /** Prints and returns a table of the layers, their output shapes and parameter counts. */
  summary(options: { print?: boolean } = {}): string {
    const m = this.#check('summary');
    const s = native(() => m.summary());
    if (options.print ?? true) console.log(s);
    return s;
  }

  /** The spec the model was built from. */
  get config(): ModelConfig {
    const m = this.#check('config');
    return JSON.parse(native(() => m.configJson())) as ModelConfig;
  }

  /** Total number of trainable values. */
  get paramCount(): number {
    return native(() => this.#check('paramCount').paramCount());
  }

  /** The compiled optimizer's learning rate (undefined before compile). Settable, e.g. for schedules. */
  get learningRate(): number | undefined {
    return native(() => this.#check('learningRate').getLearningRate()) ?? undefined;
  }

  /** The learning rate given to `compile` (its default if none was), before any schedule changed it. */
  get compiledLearningRate(): number | undefined {
    return native(() => this.#check('compiledLearningRate').getCompiledLearningRate()) ?? undefined;
  }

  /** Sets the learning rate of the compiled optimizer from the next step on. */
  set learningRate(lr: number) {
    const m = this.#check('learningRate');
    native(() => m.setLearningRate(lr));
  }

  /** Optimizer steps taken since compile. */
  get step(): number {
    return native(() => this.#check('step').stepCount());
  }

  /** Whether {@link Model.dispose} was called. */
  get isDisposed(): boolean {
    return this.#disposed;
  }

  /**
   * Frees the native weights once queued calls finish. Calls made after it fail with a clear error; calling
   * it twice is harmless.
   */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    const handle = this.#native;
    this.#queue = this.#queue.then(() => handle.dispose()).catch(() => undefined);
  }
}

function sliceStates(states: InitialStates | undefined, s: number, e: number): InitialStates | undefined {
  if (states === undefined) return undefined;
  const out: InitialStates = {};
  for (const [k, v] of Object.entries(states)) {
    const h = sliceAxis1(checkTensor(`initialState.${k}.h`, v?.h), s, e);
    out[k] = v?.c === undefined ? { h } : { h, c: sliceAxis1(checkTensor(`initialState.${k}.c`, v.c), s, e) };
  }
  return out;
}

/** States are `[numLayers, batch, hidden]`: batching slices their second axis. */
function sliceAxis1(t: Tensor, s: number, e: number): Tensor {
  if (t.shape.length !== 3) return t;
  const [l, b, h] = t.shape as [number, number, number];
  if (b < e) return t;
  const Ctor = t.data.constructor as new (n: number) => TensorData;
  const out = new Ctor(l * (e - s) * h);
  for (let k = 0; k < l; k++) out.set(t.data.subarray((k * b + s) * h, (k * b + e) * h), k * (e - s) * h);
  return { data: out, shape: [l, e - s, h] };
}

function concatRows(parts: Tensor[]): Tensor {
  const first = parts[0];
  if (first === undefined) throw new RangeError('no rows');
  if (parts.length === 1) return first;
  const total = parts.reduce((a, p) => a + p.data.length, 0);
  const Ctor = first.data.constructor as new (n: number) => TensorData;
  const out = new Ctor(total);
  let o = 0;
  for (const p of parts) {
    out.set(p.data, o);
    o += p.data.length;
  }
  const rows = parts.reduce((a, p) => a + (p.shape[0] ?? 0), 0);
  return { data: out, shape: [rows, ...first.shape.slice(1)] };
}

/**
 * Builds a model from a list of layer specs; each layer infers its input size from the one before.
 *
 * ```ts
 * const model = sequential([
 *   layers.embedding({ vocabSize: 65, dim: 32 }),
 *   layers.lstm({ hiddenSize: 128, numLayers: 2, returnSequences: true }),
 *   layers.dense({ units: 65 }),
 * ], { seed: 7 });
 * ```
 */
export function sequential(layerSpecs: LayerSpec[], options: SequentialOptions = {}): Model {
  if (!Array.isArray(layerSpecs)) {
    throw new TypeError(`sequential: layers must be an array of layer specs, got ${describe(layerSpecs)}`);
  }
  const { seed, dtype, ...rest } = options;
  const extra = Object.keys(rest);
  if (extra.length > 0) throw new TypeError(`sequential: unknown option ${extra.join(', ')}`);
  if (seed !== undefined && (!Number.isSafeInteger(seed) || seed < 0)) {
    throw new RangeError(`sequential: seed must be a non-negative safe integer, got ${String(seed)}`);
  }
  const spec = {
    layers: layerSpecs,
    seed: seed ?? Math.floor(Math.random() * 2 ** 32),
    dtype: dtype ?? 'float32',
  };
  return new Model(native(() => NativeModel.create(JSON.stringify(spec))));
}

/** Options of {@link importTorch}. */
export interface ImportTorchOptions {
  /** Stripped from the stored names first, e.g. `'model.'` or `'encoder.'` (default none). */
  prefix?: string;
}

/**
 * Loads a PyTorch `state_dict` saved as safetensors (`safetensors.torch.save_file(module.state_dict(), file)`)
 * into the equivalent engram model, whose parameters carry PyTorch's names. Every parameter must be in the file
 * with its shape; nothing changes unless all are. The same as `model.loadWeights(file, options)`.
 *
 * ```ts
 * const model = sequential([layers.embedding({ vocabSize: 65, dim: 32 }), layers.lstm({ hiddenSize: 64 })]);
 * await importTorch(model, 'lstm.safetensors', { prefix: 'net.' });
 * ```
 */
export async function importTorch(model: Model, file: string, options: ImportTorchOptions = {}): Promise<void> {
  if (!(model instanceof Model)) throw new TypeError(`importTorch: model must be an engram Model, got ${describe(model)}`);
  await model.loadWeights(file, options);
}

/** Loads a model saved with {@link Model.save}: weights, spec, and (if it was compiled) optimizer state. */
export async function load(path: string): Promise<Model> {
  if (typeof path !== 'string') throw new TypeError(`load: path must be a string, got ${describe(path)}`);
  return new Model(await nativeAsync(() => loadModel(path)));
}

/** Options of {@link memoryNetwork}. */
export interface MemoryNetworkOptions {
  /** Number of distinct word ids (id 0 is padding). */
  vocabSize: number;
  /** Words per sentence and per query (padded with 0). */
  sentenceLen: number;
  /** Embedding size d (default 20). */
  embedDim?: number;
  /** Memory hops K (default 3). */
  hops?: number;
  /** Sentences kept in memory, the most recent (default 50). */
  memorySize?: number;
  /** `adjacent` (A^{k+1} = C^k, B = A^1, W = C^K; the default) or `layerwise` (shared A, C and a map H). */
  weightTying?: 'adjacent' | 'layerwise';
  /**
   * Position encoding of word order within a sentence (default true); false gives bag of words. The weights are
   * those of the authors' released code, `1 + 4 (k - (d+1)/2) (j - (J+1)/2) / (d J)` for word j (1-based, padding
   * skipped) of a sentence padded to J = `sentenceLen` words and dimension k of d; they train far better on bAbI
   * than the form printed in the paper.
   */
  positionEncoding?: boolean;
  /** Temporal encoding T_A, T_C of each sentence's recency (default true). */
  temporalEncoding?: boolean;
  /**
   * Random noise (the paper's RN uses 0.1; default 0): in training, an empty memory is inserted after each story
   * sentence with this probability. Empty memories hold nothing, so what changes is the temporal index of the
   * sentences before them, which keeps T_A and T_C from fitting exact positions.
   */
  randomNoise?: number;
  /**
   * Empty memory slots (up to `memorySize`) take part in each hop's softmax with a score of 0, as in the authors'
   * released code (default true): a hop can then put weight on nothing, which yes/no questions need. The
   * attention weights over the sentences then sum to less than 1.
   */
  attendEmpty?: boolean;
  /** Seeds the initial weights (N(0, 0.1^2)) and the random noise. Default: random. */
  seed?: number;
  /** `float32` (default) or `float64`. */
  dtype?: 'float32' | 'float64';
}

/**
 * An End-to-End Memory Network (Sukhbaatar, Szlam, Weston and Fergus 2015). Inputs are
 * `{ stories: Int32 [batch, memorySize, sentenceLen], queries: Int32 [batch, sentenceLen] }` with sentences
 * oldest first; the output is answer logits `[batch, vocabSize]`. Parameters are named after the paper:
 * with adjacent tying `A.1` (also B), `C.1` ... `C.K` (C^k is also A^{k+1}, C^K also W), `T_A.1`, `T_C.k`;
 * with layerwise tying `A`, `B`, `C`, `W`, `H`, `T_A`, `T_C`.
 */
export function memoryNetwork(options: MemoryNetworkOptions): Model {
  if (typeof options !== 'object' || options === null) {
    throw new TypeError(`memoryNetwork: options must be an object, got ${describe(options)}`);
  }
  const seed = options.seed;
  if (seed !== undefined && (!Number.isSafeInteger(seed) || seed < 0)) {
    throw new RangeError(`memoryNetwork: seed must be a non-negative safe integer, got ${String(seed)}`);
  }
  const spec = { ...options, seed: seed ?? Math.floor(Math.random() * 2 ** 32) };
  return new Model(native(() => NativeModel.createMemoryNetwork(JSON.stringify(spec))));
}
