import type { Callback, Logs } from './callbacks.js';
import { History } from './history.js';
import { Meter } from './metrics.js';
import type { Model } from './model.js';
import { Progress, type Verbosity } from './progress.js';
import { permutation, seededRandom } from './batching.js';
import { checkTensor, describe, sliceRows, type Tensor } from './tensor.js';
import { AbortError, checkSignal } from './errors.js';
import { inputList, rowCount, sliceInputs, takeInputs, type Inputs } from './inputs.js';

/** One batch from a {@link Dataset}: inputs and targets, as a pair or an object. */
export type Batch = [Inputs, Tensor] | BatchObject;

/** A batch as an object. */
export interface BatchObject {
  /** The inputs. */
  x: Inputs;
  /** The targets. */
  y: Tensor;
}

/** Batches in order, produced as they are needed (a generator, an async generator, an array of batches). */
export type BatchSource = AsyncIterable<Batch> | Iterable<Batch>;

/**
 * Data bigger than memory, for {@link Model.fit} and {@link Model.evaluate}: batches from an iterable, or a
 * function that returns a fresh iterable for each epoch. A generator object runs only once, so give the
 * function (`() => batches()`) to train for several epochs, or `stepsPerEpoch` to draw each epoch's batches from
 * one endless generator.
 */
export type Dataset = BatchSource | (() => BatchSource);

/** Options of {@link Model.fit}. */
export interface FitOptions {
  /**
   * The epoch to stop before (default 1), counted from 0 as Keras does: training runs epochs `initialEpoch` to
   * `epochs - 1`, so `{ initialEpoch: 3, epochs: 10 }` resumes a 10-epoch run after its third epoch.
   */
  epochs?: number;
  /** Rows per training step (default 32; tensors only); the last batch of a pass may be smaller. */
  batchSize?: number;
  /** Fraction of rows, taken from the end before shuffling, held out for validation (default 0; tensors only). */
  validationSplit?: number;
  /** Validation data, `[x, y]` or a {@link Dataset}; evaluated after each epoch. Takes precedence over `validationSplit`. */
  validationData?: [Inputs, Tensor] | Dataset;
  /** Shuffle the training rows each pass (default true; tensors only). */
  shuffle?: boolean;
  /** Seed of the shuffling (default 0). Each pass's order depends only on the seed and the pass, so a run resumed with `initialEpoch` shuffles as the uninterrupted run did. */
  seed?: number;
  /** The first epoch's index, when resuming (default 0). */
  initialEpoch?: number;
  /**
   * Batches per epoch. With tensors the batches continue from one epoch into the next across passes over the
   * data (default: one pass). With a dataset each epoch draws this many batches from the same iterator (default:
   * until it ends).
   */
  stepsPerEpoch?: number;
  /** Hooks called as training runs: one object or an array, called in order (see {@link callbacks}, {@link schedules}). */
  callbacks?: Callback | Callback[];
  /** 0: silent, 1: a progress bar on a terminal and one line per epoch elsewhere (default), 2: one line per epoch. */
  verbose?: Verbosity;
  /**
   * Stops training: the step running when it aborts is cancelled (its update never applies), `onTrainEnd` is
   * called, and `fit` resolves with the {@link History} of the epochs that finished (`history.aborted` is
   * true). The model keeps the weights of its last finished step.
   */
  signal?: AbortSignal;
}

const KNOWN = new Set([
  'epochs',
  'batchSize',
  'validationSplit',
  'validationData',
  'shuffle',
  'seed',
  'initialEpoch',
  'stepsPerEpoch',
  'callbacks',
  'verbose',
  'signal',
]);

function int(what: string, v: unknown, dflt: number, min: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    throw new RangeError(`fit: ${what} must be an integer >= ${min}, got ${String(v)}`);
  }
  return v;
}

/** Whether `v` looks like a tensor rather than a dataset. @internal */
export function isTensorLike(v: unknown): v is Tensor {
  return typeof v === 'object' && v !== null && 'data' in v && 'shape' in v;
}

/** A batch's inputs and targets, checked. @internal */
export function unpackBatch(kind: string, what: string, b: unknown): [Inputs, Tensor] {
  let x: unknown;
  let y: unknown;
  if (Array.isArray(b) && b.length === 2) [x, y] = b;
  else if (typeof b === 'object' && b !== null && 'x' in b && 'y' in b && !('lengths' in b)) ({ x, y } = b as { x: unknown; y: unknown });
  else throw new TypeError(`${what} must be [x, y] or { x, y }, got ${describe(b)}`);
  inputList(kind, `${what} x`, x);
  return [x as Inputs, checkTensor(`${what} y`, y)];
}

/** A dataset's batches, restarted (a fresh iterable) or continued. @internal */
export class BatchStream {
  #it: AsyncIterator<unknown> | Iterator<unknown> | undefined;

  constructor(
    private readonly data: Dataset,
    private readonly what: string,
  ) {
    if (!isDataset(data)) throw new TypeError(`${what} must be tensors, an iterable of batches or a function returning one, got ${describe(data)}`);
  }

  /** Drops the current iterator, so the next batch comes from a fresh one. */
  restart(): void {
    this.#it = undefined;
  }

  /** The next batch, or undefined when the data ended (the next call starts afresh). */
  async next(): Promise<unknown> {
    if (this.#it === undefined) {
      const src: unknown = typeof this.data === 'function' ? this.data() : this.data;
      if (!isIterable(src)) throw new TypeError(`${this.what}: the function must return an iterable of batches, got ${describe(src)}`);
      this.#it = Symbol.asyncIterator in src ? src[Symbol.asyncIterator]() : src[Symbol.iterator]();
    }
    const r = await this.#it.next();
    if (r.done) {
      this.#it = undefined;
      return undefined;
    }
    return r.value;
  }
}

function isIterable(v: unknown): v is AsyncIterable<unknown> | Iterable<unknown> {
  return typeof v === 'object' && v !== null && (Symbol.asyncIterator in v || Symbol.iterator in v);
}

/** Whether `v` is a {@link Dataset}. @internal */
export function isDataset(v: unknown): v is Dataset {
  return typeof v === 'function' || (isIterable(v) && !Array.isArray(v)) || (Array.isArray(v) && !(v.length === 2 && isTensorLike(v[1])));
}

/** A source of training batches for one epoch at a time. */
interface Source {
  /** Batches in the epoch, when known. */
  total: number | undefined;
  /** The epoch's batches. */
  batches(epoch: number): AsyncGenerator<[Inputs, Tensor]>;
}

/** Rows of tensors in shuffled batches; pass p's order is drawn from a generator seeded by (seed, p). */
function tensorSource(x: Inputs, y: Tensor, n: number, batchSize: number, shuffle: boolean, seed: number, steps: number | undefined): Source {
  const perPass = Math.ceil(n / batchSize);
  const perEpoch = steps ?? perPass;
  let cached: [number, Uint32Array | undefined] | undefined;
  const order = (pass: number) => {
    if (cached?.[0] !== pass) {
      cached = [pass, shuffle ? permutation(n, seededRandom((seed ^ Math.imul(pass + 1, 0x9e3779b1)) >>> 0)) : undefined];
    }
    return cached[1];
  };
  return {
    total: perEpoch,
    async *batches(epoch) {
      for (let i = 0; i < perEpoch; i++) {
        const g = epoch * perEpoch + i;
        const s = (g % perPass) * batchSize;
        const e = Math.min(n, s + batchSize);
        const idx = order(Math.floor(g / perPass))?.subarray(s, e);
        yield idx ? [takeInputs(x, idx), takeInputs(y, idx) as Tensor] : [sliceInputs(x, s, e), sliceRows(y, s, e)];
      }
    },
  };
}

function datasetSource(kind: string, data: Dataset, steps: number | undefined): Source {
  const stream = new BatchStream(data, 'fit: data');
  return {
    total: steps,
    async *batches(epoch) {
      if (steps === undefined) stream.restart();
      let got = 0;
      for (; steps === undefined || got < steps; got++) {
        const b = await stream.next();
        if (b === undefined) break;
        yield unpackBatch(kind, `fit: batch ${got} of epoch ${epoch}`, b);
      }
      if (got === 0) {
        throw new RangeError(
          `fit: the data gave no batches in epoch ${epoch}; a generator runs only once, so pass a function that returns a fresh one per epoch (() => batches())`,
        );
      }
    },
  };
}

/** The training loop behind {@link Model.fit}. @internal */
export async function fit(model: Model, data: Inputs | Dataset, y: Tensor | undefined, options: FitOptions): Promise<History> {
  if (typeof options !== 'object' || options === null) {
    throw new TypeError(`fit: options must be an object, got ${describe(options)}`);
  }
  for (const k of Object.keys(options)) if (!KNOWN.has(k)) throw new TypeError(`fit: unknown option ${k}`);
  const epochs = int('epochs', options.epochs, 1, 0);
  const batchSize = int('batchSize', options.batchSize, 32, 1);
  const initialEpoch = int('initialEpoch', options.initialEpoch, 0, 0);
  const seed = int('seed', options.seed, 0, 0);
  const steps = options.stepsPerEpoch === undefined ? undefined : int('stepsPerEpoch', options.stepsPerEpoch, 1, 1);
  const verbose = options.verbose ?? 1;
  const signal = checkSignal('fit', options.signal);
  if (verbose !== 0 && verbose !== 1 && verbose !== 2) throw new RangeError(`fit: verbose must be 0, 1 or 2, got ${String(verbose)}`);
  const split = options.validationSplit ?? 0;
  if (typeof split !== 'number' || !(split >= 0 && split < 1)) {
    throw new RangeError(`fit: validationSplit must be in [0, 1), got ${String(split)}`);
  }
  const cbs = options.callbacks === undefined ? [] : Array.isArray(options.callbacks) ? options.callbacks : [options.callbacks];
  for (const [i, c] of cbs.entries()) {
    if (typeof c !== 'object' || c === null) throw new TypeError(`fit: callbacks[${i}] must be an object of hooks, got ${describe(c)}`);
  }
  const { metrics, summed } = model.lossInfo('fit');

  let source: Source;
  let val: [Inputs, Tensor] | Dataset | undefined;
  if (options.validationData !== undefined) {
    const vd = options.validationData;
    val = isDataset(vd) ? vd : unpackBatch(model.kind, 'fit: validationData', vd);
  }
  if (y !== undefined) {
    const x = data as Inputs;
    const n = rowCount(inputList(model.kind, 'x', x));
    checkTensor('y', y);
    if (n !== (y.shape[0] ?? 0)) {
      throw new RangeError(`fit: x and y must have the same batch size (first axis), got ${n} and ${y.shape[0] ?? 0}`);
    }
    let nTrain = n;
    if (val === undefined && split > 0) {
      const nVal = Math.floor(n * split);
      if (nVal < 1 || nVal >= n) {
        throw new RangeError(`fit: validationSplit ${split} of ${n} rows leaves no validation or no training rows`);
      }
      nTrain = n - nVal;
      val = [sliceInputs(x, nTrain, n), sliceRows(y, nTrain, n)];
    }
    if (nTrain === 0) throw new RangeError('fit: x has no rows');
    const tx = nTrain < n ? sliceInputs(x, 0, nTrain) : x;
    const ty = nTrain < n ? sliceRows(y, 0, nTrain) : y;
    source = tensorSource(tx, ty, nTrain, batchSize, options.shuffle ?? true, seed, steps);
  } else {
    if (split > 0) throw new TypeError('fit: validationSplit needs tensors; give a dataset validationData instead');
    for (const k of ['batchSize', 'shuffle'] as const) {
      if (options[k] !== undefined) throw new TypeError(`fit: ${k} applies to tensors; a dataset gives its own batches`);
    }
    source = datasetSource(model.kind, data as Dataset, steps);
  }

  const history = new History();
  const progress = new Progress(verbose);
  const call = async <K extends keyof Callback>(hook: K, ...args: Parameters<NonNullable<Callback[K]>>) => {
    for (const c of cbs) await (c[hook] as ((...a: unknown[]) => unknown) | undefined)?.call(c, ...args);
  };
  model.stopTraining = false;
  let last: Logs = {};
  /** Whether `err` is the cancellation the signal asked for (anything else propagates). */
  const aborted = (err: unknown) => err instanceof AbortError && signal?.aborted === true;
  try {
    await call('onTrainBegin', {}, model);
    for (let epoch = initialEpoch; epoch < epochs && !model.stopTraining && !signal?.aborted; epoch++) {
      await call('onEpochBegin', epoch, {}, model);
      progress.epochBegin(epoch, epochs, source.total);
      const meter = new Meter(metrics, summed);
      let batch = 0;
      let lr = NaN;
      for await (const [bx, by] of source.batches(epoch)) {
        const size = rowCount(inputList(model.kind, 'x', bx));
        await call('onBatchBegin', batch, { size }, model);
        lr = model.learningRate ?? NaN;
        if (signal?.aborted) break;
        let r;
        try {
          r = await model.trainStep(bx, by, { signal });
        } catch (e) {
          if (aborted(e)) break;
          throw e;
        }
        meter.add(r, size);
        const one = new Meter(metrics, summed);
        one.add(r, size);
        progress.batchEnd(batch, { ...meter.logs(), lr }, meter.rows, source.total);
        await call('onBatchEnd', batch, { ...one.logs(), lr, size }, model);
        batch++;
        if (model.stopTraining) break;
      }
      if (signal?.aborted) break;
      const logs: Logs = meter.logs();
      if (val !== undefined) {
        try {
          Object.assign(logs, (await model.evaluateMeter(val, batchSize, 'fit: validationData', undefined, signal)).logs('val_'));
        } catch (e) {
          if (aborted(e)) break;
          throw e;
        }
      }
      logs.lr = lr;
      history.push(epoch, logs);
      last = logs;
      progress.epochEnd(logs, batch, meter.rows);
      await call('onEpochEnd', epoch, logs, model);
    }
    if (signal?.aborted) history.aborted = true;
    await call('onTrainEnd', last, model);
  } finally {
    progress.close();
  }
  return history;
}
