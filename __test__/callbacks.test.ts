import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import {
  callbacks,
  layers,
  load,
  optimizers,
  schedules,
  sequential,
  tensor,
  type Callback,
  type Logs,
  type Model,
  type Tensor,
} from '../src/index.js';
import { cycleBatch, denseModel as dense, linearData, tempDir } from './helpers.js';


/** A small next-token classifier compiled with accuracy and perplexity. */
function classifier(): Model {
  const m = sequential([layers.embedding({ vocabSize: 12, dim: 8 }), layers.dense({ units: 12 })], { seed: 5 });
  m.compile({ optimizer: optimizers.adam({ learningRate: 1e-2 }), loss: 'crossEntropy', metrics: ['accuracy', 'perplexity'] });
  return m;
}

/** A callback that overwrites `logs[key]` with `values[epoch]` (placed before the callback under test). */
function script(key: string, values: number[]): Callback {
  return {
    onEpochEnd: (epoch, logs) => {
      const v = values[epoch];
      if (v === undefined) throw new Error(`script: no ${key} for epoch ${epoch}`);
      logs[key] = v;
    },
  };
}

/** The weights after each epoch, by epoch. */
function weightLog(): Callback & { at: Map<number, Record<string, Tensor>> } {
  const at = new Map<number, Record<string, Tensor>>();
  return { at, onEpochEnd: (epoch, _logs, model) => void at.set(epoch, model.getWeights()) };
}

function weightsEqual(a: Record<string, Tensor>, b: Record<string, Tensor>): boolean {
  const ka = Object.keys(a).sort();
  if (ka.join() !== Object.keys(b).sort().join()) return false;
  return ka.every((k) => {
    const x = a[k]!.data;
    const y = b[k]!.data;
    return x.length === y.length && x.every((v, i) => v === y[i]);
  });
}

/** The expected cosine schedule, written out independently of src/callbacks.ts. */
function cosineExpected(step: number, peak: number, min: number, warmup: number, total: number): number {
  if (step < warmup) return (peak * (step + 1)) / warmup;
  if (step >= total) return min;
  const t = (step - warmup) / (total - warmup);
  return min + ((peak - min) * (1 + Math.cos(Math.PI * t))) / 2;
}

describe('callbacks.earlyStopping', () => {
  const { x, y } = linearData(20);

  it('with patience 0 stops at the first epoch that does not improve', async () => {
    const m = dense();
    const es = callbacks.earlyStopping({ patience: 0 });
    const h = await m.fit(x, y, { epochs: 10, batchSize: 5, verbose: 0, callbacks: [script('val_loss', [5, 4, 4.5, 3, 2, 1, 0.5, 0.4, 0.3, 0.2]), es] });
    expect(h.epoch).toEqual([0, 1, 2]);
    expect(es.stoppedEpoch).toBe(2);
    expect(m.step).toBe(3 * 4);
  });

  it('with patience 2 waits two epochs without improvement, and an improvement resets the count', async () => {
    const m = dense();
    const es = callbacks.earlyStopping({ patience: 2 });
    // 4.5 (wait 1), 3.9 improves (wait 0), 4.2 (wait 1), 4.1 (wait 2: stop).
    const vals = [5, 4, 4.5, 3.9, 4.2, 4.1, 1, 0.5, 0.4, 0.3];
    const h = await m.fit(x, y, { epochs: 10, batchSize: 5, verbose: 0, callbacks: [script('val_loss', vals), es] });
    expect(h.epoch).toEqual([0, 1, 2, 3, 4, 5]);
    expect(es.stoppedEpoch).toBe(5);
  });

  it('does not stop, and leaves stoppedEpoch undefined, while the value keeps improving', async () => {
    const m = dense();
    const es = callbacks.earlyStopping({ patience: 0 });
    const h = await m.fit(x, y, { epochs: 5, batchSize: 5, verbose: 0, callbacks: [script('val_loss', [5, 4.4, 4, 3.9, 3.8]), es] });
    expect(h.epoch).toEqual([0, 1, 2, 3, 4]);
    expect(es.stoppedEpoch).toBeUndefined();
  });

  it('counts only improvements larger than minDelta', async () => {
    const m = dense();
    const es = callbacks.earlyStopping({ patience: 0, minDelta: 0.5 });
    // 4.4 beats 5 by 0.6; 4.0 beats 4.4 by only 0.4.
    const h = await m.fit(x, y, { epochs: 5, batchSize: 5, verbose: 0, callbacks: [script('val_loss', [5, 4.4, 4, 3.9, 3.8]), es] });
    expect(h.epoch).toEqual([0, 1, 2]);
    expect(es.stoppedEpoch).toBe(2);
  });

  it("watches accuracy-like keys upwards in mode 'auto', and any key upwards in mode 'max'", async () => {
    const { x: cx, y: cy } = cycleBatch(8, 6);
    const run = async (monitor: string, mode: 'auto' | 'min' | 'max', values: number[]) => {
      const m = classifier();
      const es = callbacks.earlyStopping({ monitor, mode, patience: 0 });
      const h = await m.fit(cx, cy, { epochs: values.length, batchSize: 4, verbose: 0, callbacks: [script(monitor, values), es] });
      expect(h.history.accuracy).toHaveLength(h.epoch.length);
      return es.stoppedEpoch;
    };
    const rising = [0.2, 0.4, 0.6, 0.5, 0.9];
    expect(await run('accuracy', 'auto', rising)).toBe(3);
    expect(await run('val_accuracy', 'auto', rising)).toBe(3);
    expect(await run('accuracy', 'min', rising)).toBe(1);
    expect(await run('score', 'max', rising)).toBe(3);
    expect(await run('score', 'auto', rising)).toBe(1);
  });

  it('stops on a real plateau (learning rate 0)', async () => {
    const m = dense(0);
    const es = callbacks.earlyStopping({ monitor: 'loss', patience: 1 });
    const h = await m.fit(x, y, { epochs: 10, batchSize: 5, shuffle: false, verbose: 0, callbacks: es });
    expect(h.history.loss![1]).toBe(h.history.loss![0]);
    expect(h.epoch).toEqual([0, 1]);
    expect(es.stoppedEpoch).toBe(1);
  });

  it("restoreBestWeights puts back exactly the best epoch's weights", async () => {
    const m = dense();
    const w = weightLog();
    const es = callbacks.earlyStopping({ patience: 2, restoreBestWeights: true });
    // Best at epoch 1; stops at epoch 3.
    const h = await m.fit(x, y, { epochs: 10, batchSize: 5, verbose: 0, callbacks: [script('val_loss', [3, 1, 2, 2.5, 0, 0, 0, 0, 0, 0]), w, es] });
    expect(h.epoch).toEqual([0, 1, 2, 3]);
    expect(weightsEqual(w.at.get(1)!, w.at.get(3)!)).toBe(false);
    expect(weightsEqual(m.getWeights(), w.at.get(1)!)).toBe(true);
  });

  it('without restoreBestWeights keeps the last epoch’s weights', async () => {
    const m = dense();
    const w = weightLog();
    const es = callbacks.earlyStopping({ patience: 2 });
    await m.fit(x, y, { epochs: 10, batchSize: 5, verbose: 0, callbacks: [script('val_loss', [3, 1, 2, 2.5, 0, 0, 0, 0, 0, 0]), w, es] });
    expect(weightsEqual(m.getWeights(), w.at.get(3)!)).toBe(true);
    expect(weightsEqual(m.getWeights(), w.at.get(1)!)).toBe(false);
  });

  it('starts afresh on each fit', async () => {
    const m = dense();
    const es = callbacks.earlyStopping({ patience: 0 });
    await m.fit(x, y, { epochs: 5, batchSize: 5, verbose: 0, callbacks: [script('val_loss', [1, 2, 3, 4, 5]), es] });
    expect(es.stoppedEpoch).toBe(1);
    // A best of 1 carried over would stop this run at once.
    const h = await m.fit(x, y, { epochs: 3, batchSize: 5, verbose: 0, callbacks: [script('val_loss', [9, 8, 7]), es] });
    expect(h.epoch).toEqual([0, 1, 2]);
    expect(es.stoppedEpoch).toBeUndefined();
  });

  it('counts a NaN after real values as no improvement', async () => {
    const m = dense();
    const es = callbacks.earlyStopping({ patience: 1 });
    const h = await m.fit(x, y, { epochs: 5, batchSize: 5, verbose: 0, callbacks: [script('val_loss', [2, 1, NaN, 0.5, 0.4]), es] });
    expect(h.epoch).toEqual([0, 1, 2]);
  });

  // A run diverged to NaN from its first epoch never improves: it stops after `patience` epochs, as in Keras.
  it('stops a run whose monitored value is NaN from the start', async () => {
    const m = dense();
    const es = callbacks.earlyStopping({ patience: 1 });
    const h = await m.fit(x, y, { epochs: 5, batchSize: 5, verbose: 0, callbacks: [script('val_loss', Array(5).fill(NaN)), es] });
    expect(h.epoch.length).toBeLessThan(5);
  });

  it('rejects fit when the monitored key is missing, naming it and hinting at validationData', async () => {
    const m = dense();
    await expect(m.fit(x, y, { epochs: 2, verbose: 0, callbacks: callbacks.earlyStopping() })).rejects.toThrow(
      /earlyStopping: 'val_loss' is not among the epoch's logs \(loss, lr\); pass validationData or validationSplit to fit/,
    );
    const err = await m.fit(x, y, { epochs: 2, verbose: 0, callbacks: callbacks.earlyStopping({ monitor: 'accuracy' }) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RangeError);
    expect((err as Error).message).toMatch(/'accuracy' is not among/);
    expect((err as Error).message).not.toMatch(/validationData/);
  });

  it('finds val_loss once validation runs', async () => {
    const m = dense();
    const es = callbacks.earlyStopping({ patience: 100 });
    const h = await m.fit(x, y, { epochs: 2, batchSize: 5, verbose: 0, validationSplit: 0.25, callbacks: es });
    expect(h.history.val_loss).toHaveLength(2);
  });

  it('rejects bad options', () => {
    expect(() => callbacks.earlyStopping({ patience: -1 })).toThrow(RangeError);
    expect(() => callbacks.earlyStopping({ patience: -1 })).toThrow(/earlyStopping: patience must be an integer >= 0, got -1/);
    expect(() => callbacks.earlyStopping({ patience: 1.5 })).toThrow(/patience must be an integer >= 0, got 1.5/);
    expect(() => callbacks.earlyStopping({ minDelta: -0.1 })).toThrow(/minDelta must be a number >= 0/);
    expect(() => callbacks.earlyStopping({ mode: 'up' as 'max' })).toThrow(/mode must be 'min', 'max' or 'auto', got up/);
    expect(() => callbacks.earlyStopping({ patince: 3 } as never)).toThrow(TypeError);
    expect(() => callbacks.earlyStopping({ patince: 3 } as never)).toThrow(/earlyStopping: unknown option patince/);
    expect(() => callbacks.earlyStopping(null as never)).toThrow(/earlyStopping: options must be an object/);
  });
});

describe('callbacks.modelCheckpoint', () => {
  const { x, y } = linearData(20);

  it('fills {epoch} (1-based) and {loss} (four decimals) into the path, one file per epoch', async () => {
    const dir = tempDir();
    const m = dense();
    const h = await m.fit(x, y, {
      epochs: 3,
      batchSize: 5,
      verbose: 0,
      callbacks: callbacks.modelCheckpoint({ path: join(dir, 'ckpt-{epoch}-{loss}-{nope}.safetensors') }),
    });
    const expected = h.history.loss!.map((l, i) => `ckpt-${i + 1}-${l.toFixed(4)}-{nope}.safetensors`);
    expect(new Set(expected).size).toBe(3);
    expect(readdirSync(dir).sort()).toEqual(expected.sort());
  });

  it('saves the model as it was after that epoch', async () => {
    const dir = tempDir();
    const m = dense();
    const w = weightLog();
    await m.fit(x, y, { epochs: 3, batchSize: 5, verbose: 0, callbacks: [w, callbacks.modelCheckpoint({ path: join(dir, 'e{epoch}.safetensors') })] });
    const second = await load(join(dir, 'e2.safetensors'));
    expect(weightsEqual(second.getWeights(), w.at.get(1)!)).toBe(true);
    expect(weightsEqual(second.getWeights(), w.at.get(2)!)).toBe(false);
    expect(second.step).toBe(8);
  });

  it('with saveBestOnly saves only improving epochs, and a fixed name is overwritten', async () => {
    const dir = tempDir();
    const m = dense();
    await m.fit(x, y, {
      epochs: 5,
      batchSize: 5,
      verbose: 0,
      callbacks: [script('val_loss', [3, 2, 2.5, 1, 1]), callbacks.modelCheckpoint({ path: join(dir, 'best-{epoch}-{val_loss}.safetensors'), saveBestOnly: true })],
    });
    expect(readdirSync(dir).sort()).toEqual(['best-1-3.0000.safetensors', 'best-2-2.0000.safetensors', 'best-4-1.0000.safetensors']);

    const dir2 = tempDir();
    const w = weightLog();
    await dense().fit(x, y, {
      epochs: 5,
      batchSize: 5,
      verbose: 0,
      callbacks: [script('val_loss', [3, 2, 2.5, 1, 1]), w, callbacks.modelCheckpoint({ path: join(dir2, 'best.safetensors'), saveBestOnly: true })],
    });
    expect(readdirSync(dir2)).toEqual(['best.safetensors']);
    const best = await load(join(dir2, 'best.safetensors'));
    expect(weightsEqual(best.getWeights(), w.at.get(3)!)).toBe(true);
  });

  it('rejects a missing path and a missing monitored key', async () => {
    expect(() => callbacks.modelCheckpoint({ path: '' })).toThrow(TypeError);
    expect(() => callbacks.modelCheckpoint({} as never)).toThrow(/modelCheckpoint: path must be a non-empty string/);
    expect(() => callbacks.modelCheckpoint({ path: 'a', every: 2 } as never)).toThrow(/modelCheckpoint: unknown option every/);
    const m = dense();
    await expect(
      m.fit(x, y, { epochs: 1, verbose: 0, callbacks: callbacks.modelCheckpoint({ path: join(tempDir(), 'x.safetensors'), saveBestOnly: true }) }),
    ).rejects.toThrow(/modelCheckpoint: 'val_loss' is not among the epoch's logs.*validationData/);
  });
});

describe('schedules', () => {
  const { x, y } = linearData(20);

  it('stepDecay sets initial * factor ^ floor(epoch / every) before each epoch', async () => {
    const m = dense(0.1);
    const h = await m.fit(x, y, { epochs: 5, batchSize: 5, verbose: 0, callbacks: schedules.stepDecay({ every: 2, factor: 0.5 }) });
    expect(h.history.lr).toEqual([0.1, 0.1, 0.05, 0.05, 0.025]);
    expect(m.compiledLearningRate).toBe(0.1);

    const m2 = dense(0.1);
    const h2 = await m2.fit(x, y, { epochs: 3, batchSize: 5, verbose: 0, callbacks: schedules.stepDecay({ every: 1, factor: 0.1, initialLearningRate: 1 }) });
    expect(h2.history.lr![0]).toBe(1);
    expect(h2.history.lr![1]).toBeCloseTo(0.1, 12);
    expect(h2.history.lr![2]).toBeCloseTo(0.01, 12);
  });

  it('stepDecay follows the epoch index when resuming with initialEpoch, and the default factor is 0.5', async () => {
    const m = dense(0.2);
    const lrs: number[] = [];
    const h = await m.fit(x, y, {
      epochs: 5,
      initialEpoch: 3,
      batchSize: 5,
      verbose: 0,
      callbacks: [schedules.stepDecay({ every: 2 }), { onBatchEnd: (_b, logs) => void lrs.push(logs.lr!) }],
    });
    expect(h.epoch).toEqual([3, 4]);
    expect(h.history.lr).toEqual([0.1, 0.05]);
    expect(lrs).toEqual([0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05]);
  });

  it('cosine warms up linearly, then follows half a cosine down to minLearningRate at totalSteps', async () => {
    const m = dense(0.1);
    const peak = 0.5;
    const min = 0.01;
    const lrs: number[] = [];
    const steps: number[] = [];
    // 10 rows in batches of 2: 5 steps per epoch, 15 in all.
    const { x: sx, y: sy } = linearData(10);
    const h = await m.fit(sx, sy, {
      epochs: 3,
      batchSize: 2,
      verbose: 0,
      callbacks: [
        { onBatchBegin: (_b, _l, model) => void steps.push(model.step) },
        schedules.cosine({ totalSteps: 10, warmupSteps: 3, minLearningRate: min, initialLearningRate: peak }),
        { onBatchEnd: (_b, logs) => void lrs.push(logs.lr!) },
      ],
    });
    expect(steps).toEqual([...Array(15).keys()]);
    expect(lrs).toHaveLength(15);
    for (let s = 0; s < 15; s++) expect(lrs[s], `step ${s}`).toBeCloseTo(cosineExpected(s, peak, min, 3, 10), 12);
    expect(lrs[0]).toBeCloseTo(peak / 3, 12);
    expect(lrs[1]).toBeCloseTo((2 * peak) / 3, 12);
    expect(lrs[2]).toBeCloseTo(peak, 12);
    expect(lrs[3]).toBeCloseTo(peak, 12);
    // Halfway through the decay (step 3 + 3.5), the rate is the midpoint.
    expect(cosineExpected(6.5, peak, min, 3, 10)).toBeCloseTo((peak + min) / 2, 12);
    for (let s = 3; s < 10; s++) expect(lrs[s + 1]!).toBeLessThan(lrs[s]!);
    expect(lrs[9]!).toBeGreaterThan(min);
    expect(lrs.slice(10)).toEqual([min, min, min, min, min]);
    // The epoch's lr is that of its last step.
    expect(h.history.lr).toEqual([lrs[4], lrs[9], lrs[14]]);
  });

  it('cosine without warm-up starts at the compiled rate', async () => {
    const m = dense(0.2);
    const lrs: number[] = [];
    await m.fit(x, y, {
      epochs: 2,
      batchSize: 5,
      verbose: 0,
      callbacks: [schedules.cosine({ totalSteps: 8 }), { onBatchEnd: (_b, logs) => void lrs.push(logs.lr!) }],
    });
    expect(lrs).toHaveLength(8);
    expect(lrs[0]).toBe(0.2);
    for (let s = 0; s < 8; s++) expect(lrs[s]).toBeCloseTo(cosineExpected(s, 0.2, 0, 0, 8), 12);
    expect(lrs[4]).toBeCloseTo(0.1, 12);
  });

  it('reduceLROnPlateau multiplies the rate by factor after patience epochs without improvement', async () => {
    const m = dense(0.1);
    const h = await m.fit(x, y, {
      epochs: 7,
      batchSize: 5,
      verbose: 0,
      callbacks: [script('val_loss', [1, 1, 1, 1, 1, 1, 1]), schedules.reduceLROnPlateau({ factor: 0.5, patience: 2 })],
    });
    // Reduced at the end of epochs 2 and 4 (and 6, too late to show).
    expect(h.history.lr).toEqual([0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025]);
    expect(m.learningRate).toBeCloseTo(0.0125, 12);
  });

  it('reduceLROnPlateau resets its count on an improvement and ignores changes below minDelta', async () => {
    const m = dense(0.1);
    const h = await m.fit(x, y, {
      epochs: 6,
      batchSize: 5,
      verbose: 0,
      callbacks: [script('val_loss', [1, 1, 0.5, 0.49995, 0.5, 0.5]), schedules.reduceLROnPlateau({ factor: 0.5, patience: 2 })],
    });
    // Improves at 2; 0.49995 is within the default minDelta 1e-4; reduced at the end of epoch 4.
    expect(h.history.lr).toEqual([0.1, 0.1, 0.1, 0.1, 0.1, 0.05]);
  });

  it('reduceLROnPlateau waits out the cooldown before counting again', async () => {
    const m = dense(0.1);
    const h = await m.fit(x, y, {
      epochs: 10,
      batchSize: 5,
      verbose: 0,
      callbacks: [script('val_loss', Array(10).fill(1)), schedules.reduceLROnPlateau({ factor: 0.5, patience: 2, cooldown: 2 })],
    });
    // Reduced at the end of epoch 2; epoch 3 does not count (as in Keras the cooldown runs down at the start of
    // each epoch's check, so epoch 4 counts again); reduced again after epochs 5 and 8. Without the cooldown it
    // would reduce after 2, 4, 6 and 8.
    expect(h.history.lr).toEqual([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125]);
  });

  it('reduceLROnPlateau never goes below minLearningRate', async () => {
    const m = dense(0.1);
    const h = await m.fit(x, y, {
      epochs: 5,
      batchSize: 5,
      verbose: 0,
      callbacks: [script('val_loss', [1, 1, 1, 1, 1]), schedules.reduceLROnPlateau({ factor: 0.5, patience: 1, minLearningRate: 0.03 })],
    });
    expect(h.history.lr).toEqual([0.1, 0.1, 0.05, 0.03, 0.03]);
  });

  // As in earlyStopping, NaN from the start is a plateau.
  it('reduceLROnPlateau reduces when the monitored value is NaN from the start', async () => {
    const m = dense(0.1);
    const h = await m.fit(x, y, {
      epochs: 4,
      batchSize: 5,
      verbose: 0,
      callbacks: [script('val_loss', Array(4).fill(NaN)), schedules.reduceLROnPlateau({ factor: 0.5, patience: 1 })],
    });
    expect(h.history.lr![3]).toBeLessThan(0.1);
  });

  it('reduceLROnPlateau watches accuracy upwards', async () => {
    const { x: cx, y: cy } = cycleBatch(8, 6);
    const m = classifier();
    const h = await m.fit(cx, cy, {
      epochs: 4,
      batchSize: 4,
      verbose: 0,
      callbacks: [script('accuracy', [0.1, 0.2, 0.15, 0.3]), schedules.reduceLROnPlateau({ monitor: 'accuracy', factor: 0.5, patience: 1 })],
    });
    expect(h.history.lr).toEqual([0.01, 0.01, 0.01, 0.005]);
  });

  it('rejects invalid options with TypeError or RangeError and a message', () => {
    expect(() => schedules.stepDecay({ every: 2, facter: 0.5 } as never)).toThrow(TypeError);
    expect(() => schedules.stepDecay({ every: 2, facter: 0.5 } as never)).toThrow(/stepDecay: unknown option facter \(known: factor, every, initialLearningRate\)/);
    expect(() => schedules.stepDecay({ every: 0 })).toThrow(RangeError);
    expect(() => schedules.stepDecay({ every: 0 })).toThrow(/stepDecay: every must be an integer >= 1, got 0/);
    expect(() => schedules.stepDecay({} as never)).toThrow(/every \(epochs between drops\) is required/);
    expect(() => schedules.stepDecay({ every: 1.5 })).toThrow(RangeError);
    expect(() => schedules.stepDecay({ every: 1, factor: -1 })).toThrow(/factor must be a number >= 0, got -1/);
    expect(() => schedules.stepDecay({ every: 1, initialLearningRate: NaN })).toThrow(/initialLearningRate must be a number >= 0/);

    expect(() => schedules.cosine({ totalSteps: 10, warmupSteps: 11 })).toThrow(RangeError);
    expect(() => schedules.cosine({ totalSteps: 10, warmupSteps: 11 })).toThrow(/cosine: warmupSteps \(11\) must not exceed totalSteps \(10\)/);
    expect(() => schedules.cosine({ totalSteps: 0 })).toThrow(/cosine: totalSteps must be an integer >= 1, got 0/);
    expect(() => schedules.cosine({ totalSteps: 10, warmupSteps: -1 })).toThrow(/warmupSteps must be an integer >= 0, got -1/);
    expect(() => schedules.cosine({ totalSteps: 10, minLearningRate: -1 })).toThrow(/minLearningRate must be a number >= 0/);
    expect(() => schedules.cosine({ totalSteps: 10, steps: 3 } as never)).toThrow(TypeError);

    expect(() => schedules.reduceLROnPlateau({ factor: 1 })).toThrow(RangeError);
    expect(() => schedules.reduceLROnPlateau({ factor: 1 })).toThrow(/reduceLROnPlateau: factor must be below 1, got 1/);
    expect(() => schedules.reduceLROnPlateau({ factor: 2 })).toThrow(/factor must be below 1, got 2/);
    expect(() => schedules.reduceLROnPlateau({ patience: -1 })).toThrow(RangeError);
    expect(() => schedules.reduceLROnPlateau({ patience: -1 })).toThrow(/reduceLROnPlateau: patience must be an integer >= 0, got -1/);
    expect(() => schedules.reduceLROnPlateau({ cooldown: 0.5 })).toThrow(/cooldown must be an integer >= 0, got 0.5/);
    expect(() => schedules.reduceLROnPlateau({ minLearningRate: -1 })).toThrow(/minLearningRate must be a number >= 0/);
    expect(() => schedules.reduceLROnPlateau({ mode: 'down' as 'min' })).toThrow(/mode must be 'min', 'max' or 'auto'/);
    expect(() => schedules.reduceLROnPlateau({ patients: 2 } as never)).toThrow(/reduceLROnPlateau: unknown option patients/);
  });
});

describe('callback mechanics', () => {
  const { x, y } = linearData(4);
  const HOOKS = ['onTrainBegin', 'onEpochBegin', 'onBatchBegin', 'onBatchEnd', 'onEpochEnd', 'onTrainEnd'] as const;

  function recorder(name: string, events: string[], model: () => Model): Callback {
    const cb: Callback = {};
    for (const hook of HOOKS) {
      (cb as Record<string, unknown>)[hook] = (...args: unknown[]) => {
        const m = args[args.length - 1];
        if (m !== model()) throw new Error(`${name}.${hook}: the last argument is not the model`);
        const logs = args[args.length - 2] as Logs;
        if (typeof logs !== 'object' || logs === null) throw new Error(`${name}.${hook}: no logs`);
        events.push(args.length === 3 ? `${name}:${hook}:${String(args[0])}` : `${name}:${hook}`);
      };
    }
    return cb;
  }

  it('runs several callbacks in array order on every hook, with the model last', async () => {
    const m = dense();
    const events: string[] = [];
    await m.fit(x, y, { epochs: 2, batchSize: 2, shuffle: false, verbose: 0, callbacks: [recorder('A', events, () => m), recorder('B', events, () => m)] });
    const expected: string[] = ['A:onTrainBegin', 'B:onTrainBegin'];
    for (let e = 0; e < 2; e++) {
      expected.push(`A:onEpochBegin:${e}`, `B:onEpochBegin:${e}`);
      for (let b = 0; b < 2; b++) expected.push(`A:onBatchBegin:${b}`, `B:onBatchBegin:${b}`, `A:onBatchEnd:${b}`, `B:onBatchEnd:${b}`);
      expected.push(`A:onEpochEnd:${e}`, `B:onEpochEnd:${e}`);
    }
    expected.push('A:onTrainEnd', 'B:onTrainEnd');
    expect(events).toEqual(expected);
  });

  it('passes the same logs object to every callback of a hook', async () => {
    const m = dense();
    const seen: string[] = [];
    await m.fit(x, y, {
      epochs: 1,
      verbose: 0,
      callbacks: [
        { onEpochEnd: (_e, logs) => void (logs.extra = 42) },
        { onEpochEnd: (_e, logs) => void seen.push(`${logs.extra}`) },
      ],
    });
    expect(seen).toEqual(['42']);
  });

  it("gives each batch's own loss, lr and size, and the epoch their row-weighted mean", async () => {
    const m = dense(0);
    const { x: x10, y: y10 } = linearData(10);
    const batches: Logs[] = [];
    const h = await m.fit(x10, y10, { epochs: 1, batchSize: 4, shuffle: false, verbose: 0, callbacks: { onBatchEnd: (_b, logs) => void batches.push({ ...logs }) } });
    expect(batches.map((l) => Object.keys(l).sort())).toEqual(Array(3).fill(['loss', 'lr', 'size']));
    expect(batches.map((l) => l.size)).toEqual([4, 4, 2]);
    // With learning rate 0 each batch's loss is that of evaluating it alone.
    for (const [i, [s, e]] of ([[0, 4], [4, 8], [8, 10]] as const).entries()) {
      const part = { x: tensor(x10.data.slice(2 * s, 2 * e), [e - s, 2]), y: tensor(y10.data.slice(s, e), [e - s, 1]) };
      expect(batches[i]!.loss).toBeCloseTo((await m.evaluate(part.x, part.y)).loss, 6);
    }
    const mean = batches.reduce((a, l) => a + l.loss! * l.size!, 0) / 10;
    expect(h.history.loss![0]).toBeCloseTo(mean, 6);
    expect(Object.keys(h.history).sort()).toEqual(['loss', 'lr']);
  });

  it('takes one object literal, and calls hooks with the object as this', async () => {
    const m = dense();
    class Counter implements Callback {
      batches = 0;
      epochs = 0;
      onBatchEnd(): void {
        this.batches++;
      }
      onEpochEnd(): void {
        this.epochs++;
      }
    }
    const c = new Counter();
    await m.fit(x, y, { epochs: 3, batchSize: 2, verbose: 0, callbacks: c });
    expect(c.batches).toBe(6);
    expect(c.epochs).toBe(3);
    let n = 0;
    await m.fit(x, y, { epochs: 2, verbose: 0, callbacks: { onEpochEnd: () => void n++ } });
    expect(n).toBe(2);
  });

  it('rejects callbacks that are not objects', async () => {
    const m = dense();
    await expect(m.fit(x, y, { verbose: 0, callbacks: [{}, null as never] })).rejects.toThrow(/fit: callbacks\[1\] must be an object of hooks/);
  });

  it('rejects fit with the error a hook throws, after the batches before it', async () => {
    const m = dense();
    const boom = new Error('boom at batch 1');
    const err = await m
      .fit(x, y, { epochs: 3, batchSize: 1, verbose: 0, callbacks: { onBatchEnd: (b) => { if (b === 1) throw boom; } } })
      .catch((e: unknown) => e);
    expect(err).toBe(boom);
    expect(m.step).toBe(2);

    const m2 = dense();
    const async = new RangeError('async boom');
    await expect(
      m2.fit(x, y, { epochs: 3, verbose: 0, callbacks: { onEpochEnd: async () => { await sleep(5); throw async; } } }),
    ).rejects.toBe(async);
    const ended: string[] = [];
    await expect(
      m2.fit(x, y, { epochs: 2, verbose: 0, callbacks: [{ onTrainBegin: () => { throw new TypeError('at the start'); } }, { onTrainEnd: () => void ended.push('end') }] }),
    ).rejects.toThrow(TypeError);
    expect(ended).toEqual([]);
  });

  it('awaits an async hook before the next callback and the next batch', async () => {
    const m = dense();
    const events: string[] = [];
    const started = performance.now();
    await m.fit(x, y, {
      epochs: 2,
      batchSize: 2,
      shuffle: false,
      verbose: 0,
      callbacks: [
        {
          onBatchEnd: async (b) => {
            await sleep(20);
            events.push(`slow${b}`);
          },
          onTrainEnd: async () => {
            await sleep(20);
            events.push('slow end');
          },
        },
        {
          onBatchBegin: (b, _l, model) => void events.push(`begin${b}@${model.step}`),
          onBatchEnd: (b) => void events.push(`fast${b}`),
          onTrainEnd: () => void events.push('fast end'),
        },
      ],
    });
    expect(events).toEqual([
      'begin0@0', 'slow0', 'fast0', 'begin1@1', 'slow1', 'fast1',
      'begin0@2', 'slow0', 'fast0', 'begin1@3', 'slow1', 'fast1',
      'slow end', 'fast end',
    ]);
    expect(performance.now() - started).toBeGreaterThanOrEqual(5 * 20 - 5);
  });

  it('stops mid-epoch when onBatchEnd sets stopTraining, then still ends the epoch and the run', async () => {
    const m = dense();
    const { x: x20, y: y20 } = linearData(20);
    const events: string[] = [];
    const h = await m.fit(x20, y20, {
      epochs: 5,
      batchSize: 2,
      verbose: 0,
      callbacks: {
        onBatchEnd: (b, _l, model) => {
          if (model.step > 10 && b === 3) model.stopTraining = true;
        },
        onEpochEnd: (e) => void events.push(`E${e}`),
        onTrainEnd: () => void events.push('end'),
      },
    });
    // 10 batches in epoch 0, then batches 0 to 3 of epoch 1.
    expect(m.step).toBe(14);
    expect(h.epoch).toEqual([0, 1]);
    expect(events).toEqual(['E0', 'E1', 'end']);
    // The next fit starts with stopTraining cleared.
    const before = m.step;
    await m.fit(x20, y20, { epochs: 1, batchSize: 2, verbose: 0 });
    expect(m.step).toBe(before + 10);
  });

  it('keeps the event loop responsive while training from an async generator', async () => {
    const m = sequential([layers.lstm({ inputSize: 8, hiddenSize: 64 }), layers.dense({ units: 1 })], { seed: 1 });
    m.compile({ optimizer: optimizers.adam(), loss: 'mse' });
    const bx = tensor(new Float32Array(16 * 30 * 8).fill(0.3), [16, 30, 8]);
    const by = tensor(new Float32Array(16).fill(1), [16, 1]);
    let produced = 0;
    async function* batches(): AsyncGenerator<[Tensor, Tensor]> {
      for (let i = 0; i < 4; i++) {
        await sleep(0);
        produced++;
        yield [bx, by];
      }
    }
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const started = performance.now();
    try {
      const h = await m.fit(() => batches(), { epochs: 3, verbose: 0 });
      expect(h.epoch).toEqual([0, 1, 2]);
    } finally {
      clearInterval(timer);
    }
    const elapsed = performance.now() - started;
    expect(produced).toBe(12);
    expect(m.step).toBe(12);
    // A 1 ms timer fires at least once per 20 ms of training unless the loop was blocked.
    expect(ticks).toBeGreaterThan(elapsed / 20);
  });
});
