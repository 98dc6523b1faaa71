import { CancelToken, NativeModel, loadModel, type JsState } from './backend.js';
import { AbortError, abortError, checkSignal, native, nativeAsync } from './errors.js';
import { applyBudget, formatBytes, parseBytes, type ByteSize } from './memory.js';
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
  /**
   * This model's memory budget (bytes, or a size such as `'8GiB'`), in place of the process's (see
   * {@link setMemoryBudget}): its parameters, optimizer state and each call's working memory must fit.
   */
  maxMemory?: ByteSize;
}

/** Options of calls that can be cancelled. */
export interface SignalOptions {
  /**
   * Aborts the call: it rejects with an {@link AbortError} within about a layer or a time step (a token for
   * `generate`, a batch for `fit`), and the model is left as it was before the call (for `fit`, after its last
   * finished step).
   */
  signal?: AbortSignal;
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
export interface StepOptions extends SignalOptions {
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
export interface GenerateOptions extends SignalOptions {
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
  /** The cancel tokens of the calls running now (one at most; dispose cancels it). */
  #inflight = new Set<CancelToken>();
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

  /**
   * Runs `f` after every call made before it has finished, under a cancel token that `signal` and
   * {@link Model.dispose} set. A call whose signal aborts while it waits rejects at once and never runs.
   */
  #enqueue<T>(op: string, f: (m: NativeModel, cancel: CancelToken) => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (signal?.aborted) return Promise.reject(abortError(op, signal));
    const token = new CancelToken();
    let started = false;
    let onAbort: (() => void) | undefined;
    const waiting =
      signal === undefined
        ? undefined
        : new Promise<never>((_, reject) => {
            onAbort = () => {
              token.cancel();
              if (!started) reject(abortError(op, signal));
            };
            signal.addEventListener('abort', onAbort, { once: true });
          });
    const run = async () => {
      if (token.cancelled) throw abortError(op, signal!);
      started = true;
      this.#inflight.add(token);
      try {
        return await nativeAsync(() => f(this.#check(op), token), op);
      } catch (e) {
        if (e instanceof AbortError) {
          if (signal?.aborted) throw abortError(op, signal);
          if (this.#disposed) throw new AbortError(`${op}: aborted because the model was disposed`);
        }
        throw e;
      } finally {
        this.#inflight.delete(token);
        if (onAbort) signal?.removeEventListener('abort', onAbort);
      }
    };
    const p = this.#queue.then(run, run);
    this.#queue = p.catch(() => undefined);
    return waiting === undefined ? p : Promise.race([p, waiting]);
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
    const signal = checkSignal('trainStep', options.signal);
    return this.#enqueue('trainStep', (m, c) => m.trainStep(xs, ys, states, c), signal);
  }

  /** The model's output (inference mode: no dropout), computed in batches off the event loop. */
  async predict(x: Inputs, options: PredictOptions = {}): Promise<Tensor> {
    const list = inputList(this.#kind, 'x', x);
    const batchSize = positiveInt('predict: batchSize', options.batchSize, 128);
    const signal = checkSignal('predict', options.signal);
    const n = rowCount(list);
    if (n === 0) throw new RangeError('predict: x has no rows');
    const outs: Tensor[] = [];
    for (const [s, e] of batchRanges(n, batchSize)) {
      const xs = list.map((t) => toNative(sliceRows(t, s, e)));
      const states = statesToNative(sliceStates(options.initialState, s, e));
      outs.push(await this.#enqueue('predict', (m, c) => m.predict(xs, states, c), signal));
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
    return this.#enqueue('attention', (m, c) => m.attention(xs, c));
  }

  /**
   * Sequential models: the attention probabilities of every attention layer (a `transformerBlock`'s are its
   * self-attention's) for `x`, in inference mode, keyed by layer name: `[batch, nHeads, seqLen, seqLen]`, row i
   * holding how much position i attends to each position. Masked positions get 0.
   */
  async attentionWeights(x: Inputs): Promise<Record<string, Tensor>> {
    const xs = inputList(this.#kind, 'x', x).map(toNative);
    if (this.#kind !== 'sequential') throw new TypeError('attentionWeights: use attention() for a memory network');
    return named(await this.#enqueue('attentionWeights', (m, c) => m.attentionWeights(xs, c)));
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
    const { maxTokens, temperature, topK, seed, signal, ...rest } = options;
    checkSignal('generate', signal);
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
    return this.#enqueue('generate', (m, c) => m.generate(ids, json, c), signal);
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
    if (typeof on !== 'boolean') throw new TypeError(`linearStart must be true or false, got ${describe(on)}`);
    native(() => m.setLinearStart(on), 'linearStart');
  }

  /**
   * The compiled loss and metrics on `x`, `y` in inference mode, over batches of `batchSize` rows (or over a
   * {@link Dataset}'s batches), averaged as `fit` averages an epoch.
   */
  async evaluate(x: Inputs, y: Tensor, options?: PredictOptions): Promise<EvaluateResult>;
  async evaluate(data: Dataset): Promise<EvaluateResult>;
  async evaluate(x: Inputs | Dataset, y?: Tensor, options: PredictOptions = {}): Promise<EvaluateResult> {
    const batchSize = positiveInt('evaluate: batchSize', options.batchSize, 128);
    const signal = checkSignal('evaluate', options.signal);
    const data = y === undefined ? (x as Dataset) : ([x, y] as [Inputs, Tensor]);
    return (await this.evaluateMeter(data, batchSize, 'evaluate', options.initialState, signal)).logs() as unknown as EvaluateResult;
  }

  /** Evaluates tensors in batches, or a dataset batch by batch, into a {@link Meter}. @internal */
  async evaluateMeter(
    data: [Inputs, Tensor] | Dataset,
    batchSize: number,
    what: string,
    initialState?: InitialStates,
    signal?: AbortSignal,
  ): Promise<Meter> {
    const { metrics, summed } = this.lossInfo(what);
    const meter = new Meter(metrics, summed);
    const step = async (x: Inputs, y: Tensor, s: number, e: number) => {
      const xs = inputList(this.#kind, 'x', x).map((t) => toNative(sliceRows(t, s, e)));
      const ys = toNative(sliceRows(y, s, e));
      const states = statesToNative(sliceStates(initialState, s, e));
      meter.add(await this.#enqueue('evaluate', (m, c) => m.evaluate(xs, ys, states, c), signal), e - s);
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

  /**
   * Every parameter by its PyTorch-style name, copied out, here and now. A model with more than 64 MiB of
   * parameters is refused (the copy would hold the event loop): use {@link Model.getWeightsAsync}.
   */
  getWeights(): Record<string, Tensor> {
    const m = this.#check('getWeights');
    const bytes = native(() => m.paramBytes());
    if (bytes > SYNC_COPY_BYTES) {
      throw new RangeError(
        `getWeights: the model has ${formatBytes(bytes)} of parameters; copying them would hold the event loop, so use ` +
          'await getWeightsAsync() instead',
      );
    }
    return named(native(() => m.getWeights(), 'getWeights'));
  }

  /** {@link Model.getWeights} off the event loop, for any size; queued after the calls made before it. */
  async getWeightsAsync(options: SignalOptions = {}): Promise<Record<string, Tensor>> {
    const signal = checkSignal('getWeightsAsync', options.signal);
    return named(await this.#enqueue('getWeights', (m, c) => m.getWeightsAsync(c), signal));
  }

  /**
   * Replaces parameters by name, here and now. With `strict` (default) every parameter must be given; in any
   * case unknown names and wrong shapes are errors, and nothing changes unless every check passes. More than
   * 64 MiB of weights is refused (it would hold the event loop): use {@link Model.setWeightsAsync}.
   */
  setWeights(weights: Record<string, Tensor>, options: { strict?: boolean } = {}): void {
    const m = this.#check('setWeights');
    const list = weightList('setWeights', weights, options);
    const bytes = list.reduce((a, w) => a + w.tensor.data.byteLength, 0);
    if (bytes > SYNC_COPY_BYTES) {
      throw new RangeError(
        `setWeights: ${formatBytes(bytes)} of weights would hold the event loop while they are checked and set, so use ` +
          'await setWeightsAsync(...) instead',
      );
    }
    native(() => m.setWeights(list, options.strict ?? true), 'setWeights');
  }

  /**
   * {@link Model.setWeights} with the checks and the update off the event loop, for any size; queued after the
   * calls made before it. The arrays are copied when the queue reaches the call (a memory copy on the event
   * loop, the only part that runs there), so leave them unchanged until it settles, as for `trainStep`'s inputs.
   */
  async setWeightsAsync(weights: Record<string, Tensor>, options: { strict?: boolean } & SignalOptions = {}): Promise<void> {
    this.#check('setWeightsAsync');
    const list = weightList('setWeightsAsync', weights, options);
    const signal = checkSignal('setWeightsAsync', options.signal);
    const strict = options.strict ?? true;
    await this.#enqueue('setWeights', (m, c) => m.setWeightsAsync(list, strict, c), signal);
  }

  /**
   * Loads a safetensors state dict (for instance a PyTorch `state_dict` saved with
   * `safetensors.torch.save_file`) into this model; `prefix` is stripped from the stored names first.
   */
  async loadWeights(path: string, options: { prefix?: string } & SignalOptions = {}): Promise<void> {
    if (typeof path !== 'string') throw new TypeError(`loadWeights: path must be a string, got ${describe(path)}`);
    const prefix = options.prefix ?? '';
    if (typeof prefix !== 'string') throw new TypeError(`loadWeights: prefix must be a string, got ${describe(prefix)}`);
    const signal = checkSignal('loadWeights', options.signal);
    return this.#enqueue('loadWeights', (m, c) => m.loadWeights(path, prefix, c), signal);
  }

  /**
   * Writes weights, spec, compile options and optimizer state to a safetensors file, atomically: a failed or
   * aborted save leaves the file as it was. File errors carry Node's `code` (`ENOENT`, `EISDIR`, `EACCES` ...)
   * and the `path`.
   */
  async save(path: string, options: SignalOptions = {}): Promise<void> {
    if (typeof path !== 'string') throw new TypeError(`save: path must be a string, got ${describe(path)}`);
    const signal = checkSignal('save', options.signal);
    return this.#enqueue('save', (m, c) => m.save(path, c), signal);
  }

  /** Bytes the model holds now: parameters, lasting tables (a sinusoidal encoding's) and optimizer state. */
  get memoryBytes(): number {
    return native(() => this.#check('memoryBytes').memoryBytes());
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
    if (typeof lr !== 'number') throw new TypeError(`learningRate must be a number, got ${describe(lr)}`);
    native(() => m.setLearningRate(lr), 'learningRate');
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
   * Frees the native weights. The call running now is cancelled (it rejects with an {@link AbortError}); calls
   * queued behind it, and calls made after, fail with a clear error. Calling it twice is harmless.
   */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const t of this.#inflight) t.cancel();
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
  const [json, maxMemory] = sequentialSpec('sequential', layerSpecs, options);
  return buildNow('sequential', 'sequential', json, maxMemory);
}

/**
 * {@link sequential}, with the weights initialised off the event loop: for models of any size (the
 * synchronous {@link sequential} refuses those over 64 MiB of parameters, whose initialisation would hold the
 * event loop for more than a few tens of milliseconds). The spec is checked, and its memory against the budget,
 * before the promise is made.
 */
export async function sequentialAsync(layerSpecs: LayerSpec[], options: SequentialOptions & SignalOptions = {}): Promise<Model> {
  const { signal, ...rest } = options;
  const [json, maxMemory] = sequentialSpec('sequentialAsync', layerSpecs, rest);
  return buildLater('sequentialAsync', 'sequential', json, maxMemory, checkSignal('sequentialAsync', signal));
}

function sequentialSpec(op: string, layerSpecs: LayerSpec[], options: SequentialOptions): [string, number | undefined] {
  if (!Array.isArray(layerSpecs)) {
    throw new TypeError(`${op}: layers must be an array of layer specs, got ${describe(layerSpecs)}`);
  }
  // As the core's limit, checked before the specs are serialised.
  if (layerSpecs.length > MAX_LAYERS) {
    throw new RangeError(`${op}: the number of layers must be at most ${MAX_LAYERS}, got ${layerSpecs.length}`);
  }
  if (typeof options !== 'object' || options === null) throw new TypeError(`${op}: options must be an object, got ${describe(options)}`);
  const { seed, dtype, maxMemory, ...rest } = options;
  const extra = Object.keys(rest);
  if (extra.length > 0) throw new TypeError(`${op}: unknown option ${extra.join(', ')}`);
  if (seed !== undefined && (!Number.isSafeInteger(seed) || seed < 0)) {
    throw new RangeError(`${op}: seed must be a non-negative safe integer, got ${String(seed)}`);
  }
  const spec = {
    layers: layerSpecs,
    seed: seed ?? Math.floor(Math.random() * 2 ** 32),
    dtype: dtype ?? 'float32',
  };
  return [JSON.stringify(spec), maxMemory === undefined ? undefined : parseBytes(`${op}: maxMemory`, maxMemory)];
}

/** Layers a sequential model may have (the core's `MAX_LAYERS`). */
const MAX_LAYERS = 10_000;

/** Parameters (bytes) a synchronous factory initialises on the event loop: about 20-40 ms of work. */
const SYNC_BUILD_BYTES = 64 * 2 ** 20;
/** Weights (bytes) `getWeights` and `setWeights` copy on the event loop: a few milliseconds of copying. */
const SYNC_COPY_BYTES = 64 * 2 ** 20;

/** The record of named tensors a native call returns. */
function named(list: { name: string; tensor: unknown }[]): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const w of list) out[w.name] = w.tensor as Tensor;
  return out;
}

/** `setWeights`' arguments, checked, as the native call takes them. */
function weightList(op: string, weights: Record<string, Tensor>, options: { strict?: boolean }) {
  if (typeof options !== 'object' || options === null) {
    throw new TypeError(`${op}: options must be an object, got ${describe(options)}`);
  }
  if (options.strict !== undefined && typeof options.strict !== 'boolean') {
    throw new TypeError(`${op}: strict must be true or false, got ${describe(options.strict)}`);
  }
  if (typeof weights !== 'object' || weights === null) {
    throw new TypeError(`${op}: weights must be a record of tensors, got ${describe(weights)}`);
  }
  return Object.entries(weights).map(([name, t]) => ({ name, tensor: toNative(checkTensor(`weights.${name}`, t)) }));
}

/** Checks the spec and its memory, then builds the model here, if it is small enough. */
function buildNow(op: string, kind: string, json: string, maxMemory: number | undefined): Model {
  applyBudget();
  const plan = native(() => NativeModel.plan(kind, json, maxMemory), op);
  if (plan.residentBytes > SYNC_BUILD_BYTES) {
    throw new RangeError(
      `${op}: the model has ${plan.paramCount} parameters (${formatBytes(plan.residentBytes)}); initialising them would ` +
        `hold the event loop, so build it with await ${op}Async(...) instead`,
    );
  }
  const handle =
    kind === 'sequential'
      ? native(() => NativeModel.create(json, maxMemory), op)
      : native(() => NativeModel.createMemoryNetwork(json, maxMemory), op);
  return new Model(handle);
}

/** Checks the spec and its memory now, then builds the model off the event loop. */
async function buildLater(op: string, kind: string, json: string, maxMemory: number | undefined, signal?: AbortSignal): Promise<Model> {
  applyBudget();
  native(() => NativeModel.plan(kind, json, maxMemory), op);
  return new Model(await runCancellable(op, signal, (c) => NativeModel.build(kind, json, maxMemory, c)));
}

/** A native call that is not a model's (build, load) under a cancel token set by `signal`. */
async function runCancellable<T>(op: string, signal: AbortSignal | undefined, f: (c: CancelToken) => Promise<T>): Promise<T> {
  if (signal?.aborted) throw abortError(op, signal);
  const token = new CancelToken();
  const onAbort = () => token.cancel();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    return await nativeAsync(() => f(token), op);
  } catch (e) {
    if (e instanceof AbortError && signal?.aborted) throw abortError(op, signal);
    throw e;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
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

/** Options of {@link load}. */
export interface LoadOptions extends SignalOptions {
  /** The loaded model's memory budget, as {@link SequentialOptions.maxMemory}. */
  maxMemory?: ByteSize;
}

/**
 * Loads a model saved with {@link Model.save}: weights, spec, and (if it was compiled) optimizer state. The
 * file's header is read first, so a model that does not fit the memory budget is refused before the file is
 * read. File errors carry Node's `code` (`ENOENT`, `EISDIR`, `EACCES` ...) and the `path`.
 */
export async function load(path: string, options: LoadOptions = {}): Promise<Model> {
  if (typeof path !== 'string') throw new TypeError(`load: path must be a string, got ${describe(path)}`);
  if (typeof options !== 'object' || options === null) throw new TypeError(`load: options must be an object, got ${describe(options)}`);
  const { signal, maxMemory, ...rest } = options;
  const extra = Object.keys(rest);
  if (extra.length > 0) throw new TypeError(`load: unknown option ${extra.join(', ')}`);
  const max = maxMemory === undefined ? undefined : parseBytes('load: maxMemory', maxMemory);
  checkSignal('load', signal);
  applyBudget();
  return new Model(await runCancellable('load', signal, (c) => loadModel(path, max, c)));
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
  /** This model's memory budget, as {@link SequentialOptions.maxMemory}. */
  maxMemory?: ByteSize;
}

/**
 * An End-to-End Memory Network (Sukhbaatar, Szlam, Weston and Fergus 2015). Inputs are
 * `{ stories: Int32 [batch, memorySize, sentenceLen], queries: Int32 [batch, sentenceLen] }` with sentences
 * oldest first; the output is answer logits `[batch, vocabSize]`. Parameters are named after the paper:
 * with adjacent tying `A.1` (also B), `C.1` ... `C.K` (C^k is also A^{k+1}, C^K also W), `T_A.1`, `T_C.k`;
 * with layerwise tying `A`, `B`, `C`, `W`, `H`, `T_A`, `T_C`.
 */
export function memoryNetwork(options: MemoryNetworkOptions): Model {
  const [json, maxMemory] = memoryNetworkSpec('memoryNetwork', options);
  return buildNow('memoryNetwork', 'memoryNetwork', json, maxMemory);
}

/** {@link memoryNetwork}, initialised off the event loop (see {@link sequentialAsync}). */
export async function memoryNetworkAsync(options: MemoryNetworkOptions & SignalOptions): Promise<Model> {
  if (typeof options !== 'object' || options === null) {
    throw new TypeError(`memoryNetworkAsync: options must be an object, got ${describe(options)}`);
  }
  const { signal, ...rest } = options;
  const [json, maxMemory] = memoryNetworkSpec('memoryNetworkAsync', rest);
  return buildLater('memoryNetworkAsync', 'memoryNetwork', json, maxMemory, checkSignal('memoryNetworkAsync', signal));
}

function memoryNetworkSpec(op: string, options: MemoryNetworkOptions): [string, number | undefined] {
  if (typeof options !== 'object' || options === null) {
    throw new TypeError(`${op}: options must be an object, got ${describe(options)}`);
  }
  const { maxMemory, ...spec } = options;
  const seed = spec.seed;
  if (seed !== undefined && (!Number.isSafeInteger(seed) || seed < 0)) {
    throw new RangeError(`${op}: seed must be a non-negative safe integer, got ${String(seed)}`);
  }
  const json = JSON.stringify({ ...spec, seed: seed ?? Math.floor(Math.random() * 2 ** 32) });
  return [json, maxMemory === undefined ? undefined : parseBytes(`${op}: maxMemory`, maxMemory)];
}
