/**
 * Hooks into {@link Model.fit}: the {@link Callback} shape, the built-in {@link callbacks} (early stopping,
 * checkpoints) and the learning-rate {@link schedules}.
 * @module
 */
import type { Model } from './model.js';
import { describe } from './tensor.js';
import type { Tensor } from './tensor.js';

/**
 * Numbers reported after a batch or an epoch. After an epoch: `loss`, the compiled metrics (`accuracy`,
 * `perplexity`), their `val_` twins once validation ran, and `lr`. After a batch: `loss`, the metrics, `lr`
 * and `size` (rows).
 */
export type Logs = Record<string, number>;

/**
 * Hooks `fit` calls as training runs, written as an object literal with any of these methods; `fit`'s
 * `callbacks` option takes one or an array, called in order. Each hook may return a promise, which `fit`
 * awaits, and receives the model last. Set `model.stopTraining = true` from any hook to end training after the
 * current batch. An error thrown by a hook ends `fit` with that error.
 *
 * ```ts
 * await model.fit(x, y, { epochs: 10, callbacks: { onEpochEnd: (epoch, logs) => console.log(epoch, logs.loss) } });
 * ```
 */
export interface Callback {
  /** Before the first epoch. */
  onTrainBegin?: (logs: Logs, model: Model) => void | Promise<void>;
  /** After the last epoch, or when training stopped, with the last epoch's logs. */
  onTrainEnd?: (logs: Logs, model: Model) => void | Promise<void>;
  /** Before each epoch (0-based, counting from `initialEpoch`). */
  onEpochBegin?: (epoch: number, logs: Logs, model: Model) => void | Promise<void>;
  /** After each epoch, with the epoch's numbers (see {@link Logs}). */
  onEpochEnd?: (epoch: number, logs: Logs, model: Model) => void | Promise<void>;
  /** Before each batch (0-based within the epoch). */
  onBatchBegin?: (batch: number, logs: Logs, model: Model) => void | Promise<void>;
  /** After each batch, with its `loss`, metrics, `lr` and `size` (rows). */
  onBatchEnd?: (batch: number, logs: Logs, model: Model) => void | Promise<void>;
}

/** @deprecated Use {@link Callback}: one hook object. */
export type Callbacks = Callback;

/** Which way a monitored number improves: `auto` means up for names with `acc`, down otherwise. */
export type Mode = 'min' | 'max' | 'auto';

function better(monitor: string, mode: Mode | undefined, minDelta: number): (v: number, best: number) => boolean {
  const m = mode ?? 'auto';
  if (m !== 'min' && m !== 'max' && m !== 'auto') throw new RangeError(`mode must be 'min', 'max' or 'auto', got ${String(m)}`);
  const up = m === 'max' || (m === 'auto' && /acc/.test(monitor));
  return up ? (v, best) => v > best + minDelta : (v, best) => v < best - minDelta;
}

function monitored(who: string, monitor: string, logs: Logs): number {
  const v = logs[monitor];
  if (v === undefined) {
    const hint = monitor.startsWith('val_') ? '; pass validationData or validationSplit to fit' : '';
    throw new RangeError(`${who}: '${monitor}' is not among the epoch's logs (${Object.keys(logs).join(', ')})${hint}`);
  }
  return v;
}

function nonNegative(who: string, what: string, v: unknown, dflt: number, integer = false, min = 0): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || (integer && !Number.isInteger(v))) {
    throw new RangeError(`${who}: ${what} must be a${integer ? 'n integer' : ' number'} >= ${min}, got ${String(v)}`);
  }
  return v;
}

function checkKeys(who: string, options: object, known: string[]): void {
  if (typeof options !== 'object' || options === null) throw new TypeError(`${who}: options must be an object, got ${describe(options)}`);
  for (const k of Object.keys(options)) {
    if (!known.includes(k)) throw new TypeError(`${who}: unknown option ${k} (known: ${known.join(', ')})`);
  }
}

/** Options of {@link callbacks.earlyStopping}. */
export interface EarlyStoppingOptions {
  /** The epoch log to watch (default `val_loss`). */
  monitor?: string;
  /** Epochs without improvement to wait before stopping (default 0: stop at the first). */
  patience?: number;
  /** The smallest change that counts as an improvement (default 0). */
  minDelta?: number;
  /** Which way is better (default `auto`). */
  mode?: Mode;
  /** When training ends, put back the weights of the best epoch (default false). */
  restoreBestWeights?: boolean;
}

/** The callback {@link callbacks.earlyStopping} returns. */
export interface EarlyStopping extends Callback {
  /** The epoch at which it stopped training, or undefined if it did not. */
  readonly stoppedEpoch: number | undefined;
}

/** Options of {@link callbacks.modelCheckpoint}. */
export interface ModelCheckpointOptions {
  /**
   * Where to save. `{epoch}` (1-based) and `{<log key>}` (e.g. `{val_loss}`, four decimals) are filled in, so
   * `ckpt-{epoch}.safetensors` keeps one file per epoch; a fixed name is overwritten (atomically).
   */
  path: string;
  /** The epoch log `saveBestOnly` compares (default `val_loss`). */
  monitor?: string;
  /** Save only when `monitor` improved on the best so far (default false: every epoch). */
  saveBestOnly?: boolean;
  /** Which way is better (default `auto`). */
  mode?: Mode;
  /**
   * With `saveBestOnly`, the best value so far: only epochs that beat it are saved. Give the best `monitor` value
   * of the run being resumed, so that its first resumed epoch does not overwrite a better file.
   */
  initialValueThreshold?: number;
}

/** Built-in callbacks. Each call returns a fresh {@link Callback}; pass it in `fit`'s `callbacks`. */
export const callbacks = {
  /**
   * Stops training once `monitor` has not improved by more than `minDelta` for `patience` epochs, and with
   * `restoreBestWeights` puts the best epoch's weights back at the end (the optimizer state stays as it is).
   */
  earlyStopping(options: EarlyStoppingOptions = {}): EarlyStopping {
    const who = 'earlyStopping';
    checkKeys(who, options, ['monitor', 'patience', 'minDelta', 'mode', 'restoreBestWeights']);
    const monitor = options.monitor ?? 'val_loss';
    const patience = nonNegative(who, 'patience', options.patience, 0, true);
    const improved = better(monitor, options.mode, nonNegative(who, 'minDelta', options.minDelta, 0));
    let best = NaN;
    let wait = 0;
    let bestWeights: Record<string, Tensor> | undefined;
    let stoppedEpoch: number | undefined;
    return {
      get stoppedEpoch() {
        return stoppedEpoch;
      },
      onTrainBegin() {
        best = NaN;
        wait = 0;
        bestWeights = undefined;
        stoppedEpoch = undefined;
      },
      // The weights are copied off the event loop, so a model of any size can restore its best epoch.
      async onEpochEnd(epoch, logs, model) {
        const v = monitored(who, monitor, logs);
        if ((Number.isNaN(best) && !Number.isNaN(v)) || improved(v, best)) {
          best = v;
          wait = 0;
          if (options.restoreBestWeights) bestWeights = await model.getWeightsAsync();
        } else if (++wait >= patience) {
          stoppedEpoch = epoch;
          model.stopTraining = true;
        }
      },
      async onTrainEnd(_logs, model) {
        if (bestWeights) await model.setWeightsAsync(bestWeights);
      },
    };
  },

  /** Saves the model (weights, spec, optimizer state) after each epoch, or only after improving ones. */
  modelCheckpoint(options: ModelCheckpointOptions): Callback {
    const who = 'modelCheckpoint';
    checkKeys(who, options, ['path', 'monitor', 'saveBestOnly', 'mode', 'initialValueThreshold']);
    const threshold = options.initialValueThreshold ?? NaN;
    if (typeof threshold !== 'number') throw new TypeError(`${who}: initialValueThreshold must be a number, got ${describe(threshold)}`);
    if (typeof options.path !== 'string' || options.path === '') {
      throw new TypeError(`${who}: path must be a non-empty string, got ${describe(options.path)}`);
    }
    const monitor = options.monitor ?? 'val_loss';
    const improved = better(monitor, options.mode, 0);
    let best = threshold;
    return {
      onTrainBegin() {
        best = threshold;
      },
      async onEpochEnd(epoch, logs, model) {
        if (options.saveBestOnly) {
          const v = monitored(who, monitor, logs);
          if (!Number.isNaN(best) && !improved(v, best)) return;
          best = v;
        }
        const path = options.path.replace(/\{(\w+)\}/g, (whole, key: string) => {
          if (key === 'epoch') return String(epoch + 1);
          const v = logs[key];
          return v === undefined ? whole : v.toFixed(4);
        });
        await model.save(path);
      },
    };
  },
};

/** Options of {@link schedules.stepDecay}. */
export interface StepDecayOptions {
  /** Multiply the rate by `factor` every `every` epochs (default 0.5). */
  factor?: number;
  /** Epochs between drops. */
  every: number;
  /** The starting rate (default: the rate given to `compile`). */
  initialLearningRate?: number;
}

/** Options of {@link schedules.cosine}. */
export interface CosineOptions {
  /** Optimizer steps over which the rate falls to `minLearningRate`, warm-up included. */
  totalSteps: number;
  /** Steps of linear warm-up from `peak / warmupSteps` to the peak (default 0). */
  warmupSteps?: number;
  /** The rate at the end and after (default 0). */
  minLearningRate?: number;
  /** The peak rate (default: the rate given to `compile`). */
  initialLearningRate?: number;
}

/** Options of {@link schedules.reduceLROnPlateau}. */
export interface ReduceLROnPlateauOptions {
  /** The epoch log to watch (default `val_loss`). */
  monitor?: string;
  /** Multiply the rate by this on a plateau (default 0.1). */
  factor?: number;
  /** Epochs without improvement before reducing (default 10). */
  patience?: number;
  /** The smallest change that counts as an improvement (default 1e-4). */
  minDelta?: number;
  /** Epochs to wait after a reduction before watching again (default 0). */
  cooldown?: number;
  /** The rate never goes below this (default 0). */
  minLearningRate?: number;
  /** Which way is better (default `auto`). */
  mode?: Mode;
}

function compiledRate(who: string, model: Model, given: number | undefined): number {
  const lr = given ?? model.compiledLearningRate;
  if (lr === undefined) throw new Error(`${who}: the model is not compiled`);
  return lr;
}

/**
 * Learning-rate schedules, as callbacks that set `model.learningRate`. `stepDecay` and `cosine` compute the
 * rate from the epoch index and the optimizer's step count, both of which a checkpoint keeps, so a resumed run
 * follows the same schedule as an uninterrupted one.
 */
export const schedules = {
  /** `initial * factor ^ floor(epoch / every)`, set before each epoch. */
  stepDecay(options: StepDecayOptions): Callback {
    const who = 'stepDecay';
    checkKeys(who, options, ['factor', 'every', 'initialLearningRate']);
    const factor = nonNegative(who, 'factor', options.factor, 0.5);
    if (options.every === undefined) throw new RangeError(`${who}: every (epochs between drops) is required`);
    const every = nonNegative(who, 'every', options.every, NaN, true, 1);
    const initial = options.initialLearningRate;
    if (initial !== undefined) nonNegative(who, 'initialLearningRate', initial, 0);
    return {
      onEpochBegin(epoch, _logs, model) {
        model.learningRate = compiledRate(who, model, initial) * factor ** Math.floor(epoch / every);
      },
    };
  },

  /**
   * Linear warm-up for `warmupSteps` optimizer steps, then half a cosine from the peak down to
   * `minLearningRate` at `totalSteps`, set before each batch from the optimizer's step count.
   */
  cosine(options: CosineOptions): Callback {
    const who = 'cosine';
    checkKeys(who, options, ['totalSteps', 'warmupSteps', 'minLearningRate', 'initialLearningRate']);
    if (options.totalSteps === undefined) throw new RangeError(`${who}: totalSteps is required`);
    const total = nonNegative(who, 'totalSteps', options.totalSteps, NaN, true, 1);
    const warmup = nonNegative(who, 'warmupSteps', options.warmupSteps, 0, true);
    if (warmup > total) throw new RangeError(`${who}: warmupSteps (${warmup}) must not exceed totalSteps (${total})`);
    const min = nonNegative(who, 'minLearningRate', options.minLearningRate, 0);
    const initial = options.initialLearningRate;
    if (initial !== undefined) nonNegative(who, 'initialLearningRate', initial, 0);
    return {
      onBatchBegin(_batch, _logs, model) {
        model.learningRate = cosineRate(model.step, compiledRate(who, model, initial), min, warmup, total);
      },
    };
  },

  /** Multiplies the rate by `factor` when `monitor` has not improved for `patience` epochs. */
  reduceLROnPlateau(options: ReduceLROnPlateauOptions = {}): Callback {
    const who = 'reduceLROnPlateau';
    checkKeys(who, options, ['monitor', 'factor', 'patience', 'minDelta', 'cooldown', 'minLearningRate', 'mode']);
    const monitor = options.monitor ?? 'val_loss';
    const factor = nonNegative(who, 'factor', options.factor, 0.1);
    if (factor >= 1) throw new RangeError(`${who}: factor must be below 1, got ${factor}`);
    const patience = nonNegative(who, 'patience', options.patience, 10, true);
    const cooldown = nonNegative(who, 'cooldown', options.cooldown, 0, true);
    const min = nonNegative(who, 'minLearningRate', options.minLearningRate, 0);
    const improved = better(monitor, options.mode, nonNegative(who, 'minDelta', options.minDelta, 1e-4));
    let best = NaN;
    let wait = 0;
    let cooling = 0;
    return {
      onTrainBegin() {
        best = NaN;
        wait = 0;
        cooling = 0;
      },
      onEpochEnd(_epoch, logs, model) {
        const v = monitored(who, monitor, logs);
        if (cooling > 0) cooling--;
        if ((Number.isNaN(best) && !Number.isNaN(v)) || improved(v, best)) {
          best = v;
          wait = 0;
        } else if (cooling === 0 && ++wait >= patience) {
          const lr = model.learningRate ?? 0;
          model.learningRate = Math.max(min, lr * factor);
          cooling = cooldown;
          wait = 0;
        }
      },
    };
  },
};

/** The cosine schedule's rate before optimizer step `step` (0-based). @internal */
export function cosineRate(step: number, peak: number, min: number, warmup: number, total: number): number {
  if (step < warmup) return (peak * (step + 1)) / warmup;
  if (step >= total) return min;
  const progress = (step - warmup) / Math.max(1, total - warmup);
  return min + 0.5 * (peak - min) * (1 + Math.cos(Math.PI * progress));
}
