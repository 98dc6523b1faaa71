import type { Callbacks, History, Logs } from './callbacks.js';
import type { Model } from './model.js';
import { batchRanges, permutation, seededRandom } from './batching.js';
import { checkTensor, describe, sliceRows, type Tensor } from './tensor.js';
import { inputList, rowCount, sliceInputs, takeInputs, type Inputs } from './inputs.js';

/** Options of {@link Model.fit}. */
export interface FitOptions {
  /** Passes over the training data (default 1). */
  epochs?: number;
  /** Rows per training step (default 32); the last batch of an epoch may be smaller. */
  batchSize?: number;
  /** Fraction of rows, taken from the end before shuffling, held out for validation (default 0). */
  validationSplit?: number;
  /** Validation data `[x, y]`; takes precedence over `validationSplit`. */
  validationData?: [Inputs, Tensor];
  /** Shuffle the training rows each epoch (default true). */
  shuffle?: boolean;
  /** Seed of the shuffling order (default 0), so that runs repeat exactly. */
  seed?: number;
  /** Epoch to start counting from, when resuming (default 0). */
  initialEpoch?: number;
  /** Hooks called as training runs. */
  callbacks?: Callbacks;
  /** 0: silent, 1: one line per epoch (default 0). */
  verbose?: 0 | 1;
}

const KNOWN = new Set([
  'epochs',
  'batchSize',
  'validationSplit',
  'validationData',
  'shuffle',
  'seed',
  'initialEpoch',
  'callbacks',
  'verbose',
]);

function int(what: string, v: unknown, dflt: number, min: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) {
    throw new RangeError(`fit: ${what} must be an integer >= ${min}, got ${String(v)}`);
  }
  return v;
}

/** The training loop behind {@link Model.fit}. @internal */
export async function fit(model: Model, x: Inputs, y: Tensor, options: FitOptions): Promise<History> {
  if (typeof options !== 'object' || options === null) {
    throw new TypeError(`fit: options must be an object, got ${describe(options)}`);
  }
  for (const k of Object.keys(options)) if (!KNOWN.has(k)) throw new TypeError(`fit: unknown option ${k}`);
  const xList = inputList(model.kind, 'x', x);
  checkTensor('y', y);
  const epochs = int('epochs', options.epochs, 1, 0);
  const batchSize = int('batchSize', options.batchSize, 32, 1);
  const initialEpoch = int('initialEpoch', options.initialEpoch, 0, 0);
  const seed = int('seed', options.seed, 0, 0);
  const split = options.validationSplit ?? 0;
  if (typeof split !== 'number' || !(split >= 0 && split < 1)) {
    throw new RangeError(`fit: validationSplit must be in [0, 1), got ${String(split)}`);
  }
  const n = rowCount(xList);
  if (n !== (y.shape[0] ?? 0)) {
    throw new RangeError(`fit: x and y must have the same batch size (first axis), got ${n} and ${y.shape[0] ?? 0}`);
  }
  let trainX = x;
  let trainY = y;
  let val: [Inputs, Tensor] | undefined;
  if (options.validationData !== undefined) {
    const vd = options.validationData;
    if (!Array.isArray(vd) || vd.length !== 2) throw new TypeError('fit: validationData must be [x, y]');
    inputList(model.kind, 'validationData[0]', vd[0]);
    val = [vd[0], checkTensor('validationData[1]', vd[1])];
  } else if (split > 0) {
    const nVal = Math.floor(n * split);
    if (nVal < 1 || nVal >= n) {
      throw new RangeError(`fit: validationSplit ${split} of ${n} rows leaves no validation or no training rows`);
    }
    trainX = sliceInputs(x, 0, n - nVal);
    trainY = sliceRows(y, 0, n - nVal);
    val = [sliceInputs(x, n - nVal, n), sliceRows(y, n - nVal, n)];
  }
  const nTrain = n - (split > 0 && options.validationData === undefined ? Math.floor(n * split) : 0);
  if (nTrain === 0) throw new RangeError('fit: x has no rows');
  const cb = options.callbacks ?? {};
  if (typeof cb !== 'object' || cb === null) throw new TypeError('fit: callbacks must be an object of hooks');
  const random = seededRandom(seed);
  const history: History = { epoch: [], history: {} };
  const record = (logs: Logs) => {
    for (const [k, v] of Object.entries(logs)) (history.history[k] ??= []).push(v);
  };
  const shuffle = options.shuffle ?? true;
  model.stopTraining = false;
  await cb.onTrainBegin?.({});
  let last: Logs = {};
  for (let epoch = initialEpoch; epoch < initialEpoch + epochs && !model.stopTraining; epoch++) {
    const started = performance.now();
    await cb.onEpochBegin?.(epoch, {});
    const order = shuffle ? permutation(nTrain, random) : undefined;
    let sum = 0;
    let rows = 0;
    let batch = 0;
    for (const [s, e] of batchRanges(nTrain, batchSize)) {
      await cb.onBatchBegin?.(batch, { size: e - s });
      const idx = order?.subarray(s, e);
      const bx = idx ? takeInputs(trainX, idx) : sliceInputs(trainX, s, e);
      const by = idx ? (takeInputs(trainY, idx) as Tensor) : sliceRows(trainY, s, e);
      const { loss } = await model.trainStep(bx, by);
      sum += loss * (e - s);
      rows += e - s;
      await cb.onBatchEnd?.(batch, { loss, size: e - s });
      batch++;
      if (model.stopTraining) break;
    }
    const logs: Logs = { loss: sum / rows };
    if (val) logs.val_loss = await model.evaluate(val[0], val[1], { batchSize });
    history.epoch.push(epoch);
    record(logs);
    last = logs;
    if (options.verbose === 1) {
      const parts = Object.entries(logs).map(([k, v]) => `${k} ${v.toFixed(4)}`);
      const secs = ((performance.now() - started) / 1000).toFixed(1);
      console.log(`epoch ${epoch + 1}/${initialEpoch + epochs} - ${parts.join(' - ')} - ${secs}s`);
    }
    await cb.onEpochEnd?.(epoch, logs);
  }
  await cb.onTrainEnd?.(last);
  return history;
}
