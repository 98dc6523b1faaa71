import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { XMLParser } from 'fast-xml-parser';
import { describe, expect, it } from 'vitest';
import { History, layers, optimizers, sequential, tensor, type Batch } from '../src/index.js';
import { denseModel as dense, linearData, tempDir } from './helpers.js';


describe('fit', () => {
  it('trains over epochs with validation and returns the history', async () => {
    const m = dense();
    const { x, y } = linearData(100);
    const h = await m.fit(x, y, { epochs: 20, batchSize: 10, validationSplit: 0.2, verbose: 0 });
    expect(h.epoch).toEqual([...Array(20).keys()]);
    expect(h.history.loss).toHaveLength(20);
    expect(h.history.val_loss).toHaveLength(20);
    expect(h.history.val_loss![19]!).toBeLessThan(h.history.val_loss![0]! / 10);
    expect(m.step).toBe(20 * 8);
  });

  it('calls the callbacks in order with logs', async () => {
    const m = dense();
    const { x, y } = linearData(10);
    const events: string[] = [];
    await m.fit(x, y, {
      epochs: 2,
      batchSize: 4,
      callbacks: {
        onTrainBegin: () => void events.push('train'),
        onEpochBegin: (e) => void events.push(`e${e}`),
        onBatchEnd: (b, logs) => void events.push(`b${b}:${logs.size}`),
        onEpochEnd: (e, logs) => void events.push(`E${e}:${Number.isFinite(logs.loss)}`),
        onTrainEnd: () => void events.push('end'),
      },
    });
    expect(events).toEqual(['train', 'e0', 'b0:4', 'b1:4', 'b2:2', 'E0:true', 'e1', 'b0:4', 'b1:4', 'b2:2', 'E1:true', 'end']);
  });

  it('stops when a callback sets stopTraining', async () => {
    const m = dense();
    const { x, y } = linearData(20);
    const h = await m.fit(x, y, {
      epochs: 50,
      batchSize: 5,
      callbacks: { onEpochEnd: (e) => void (e === 2 && (m.stopTraining = true)) },
    });
    expect(h.epoch).toEqual([0, 1, 2]);
  });

  it('shuffles the same way for the same seed', async () => {
    const run = async (seed: number) => {
      const m = dense();
      const { x, y } = linearData(30);
      const losses: number[] = [];
      await m.fit(x, y, { epochs: 2, batchSize: 7, seed, callbacks: { onBatchEnd: (_b, l) => void losses.push(l.loss!) } });
      return losses;
    };
    expect(await run(1)).toEqual(await run(1));
    expect(await run(1)).not.toEqual(await run(2));
  });

  it('uses validationData when given', async () => {
    const m = dense();
    const { x, y } = linearData(20);
    const v = linearData(7);
    const h = await m.fit(x, y, { epochs: 1, validationData: [v.x, v.y] });
    expect(h.history.val_loss![0]).toBeCloseTo((await m.evaluate(v.x, v.y)).loss, 6);
  });

  it('keeps the event loop free while training', async () => {
    const m = sequential([layers.lstm({ inputSize: 8, hiddenSize: 64 }), layers.dense({ units: 1 })], { seed: 1 });
    m.compile({ optimizer: optimizers.adam(), loss: 'mse' });
    const x = tensor(new Float32Array(64 * 30 * 8).fill(0.3), [64, 30, 8]);
    const y = tensor(new Float32Array(64).fill(1), [64, 1]);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const started = performance.now();
    await m.fit(x, y, { epochs: 3, batchSize: 16 });
    clearInterval(timer);
    const elapsed = performance.now() - started;
    // A timer of 1 ms fires at least once per 20 ms of training unless the loop was blocked.
    expect(ticks).toBeGreaterThan(elapsed / 20);
  });

  it('rejects bad options', async () => {
    const m = dense();
    const { x, y } = linearData(10);
    await expect(m.fit(x, y, { batchSize: 0 })).rejects.toThrow(/batchSize must be an integer >= 1/);
    await expect(m.fit(x, y, { validationSplit: 1 })).rejects.toThrow(/validationSplit must be in \[0, 1\)/);
  });

  it('records the fixed keys: loss, the compiled metrics, their val_ twins and lr', async () => {
    const { m, x, y } = classifier(['accuracy', 'perplexity']);
    const h = await m.fit(x, y, { epochs: 3, batchSize: 8, validationSplit: 0.25, verbose: 0 });
    expect(h).toBeInstanceOf(History);
    expect(Object.keys(h.history).sort()).toEqual(
      ['accuracy', 'loss', 'lr', 'perplexity', 'val_accuracy', 'val_loss', 'val_perplexity'].sort(),
    );
    expect(h.history.lr).toEqual([0.05, 0.05, 0.05]);
    // Validation numbers are an evaluation of the held-out rows after the epoch.
    const tail = { data: x.data.subarray(48 * 4), shape: [16, 4] };
    const ytail = { data: y.data.subarray(48), shape: [16] };
    const e = await m.evaluate(tail, ytail, { batchSize: 8 });
    expect(h.history.val_loss![2]).toBe(e.loss);
    expect(h.history.val_accuracy![2]).toBe(e.accuracy);
    expect(h.history.val_perplexity![2]).toBeCloseTo(Math.exp(e.loss), 12);
  });

  it('computes accuracy and perplexity natively, as argmax and exp(mean cross-entropy)', async () => {
    const { m, x, y } = classifier(['accuracy', 'perplexity']);
    await m.fit(x, y, { epochs: 2, batchSize: 16, verbose: 0 });
    const e = await m.evaluate(x, y, { batchSize: 5 });
    const logits = await m.predict(x);
    let right = 0;
    for (let r = 0; r < 64; r++) {
      const row = Array.from(logits.data.subarray(r * 3, r * 3 + 3));
      if (row.indexOf(Math.max(...row)) === y.data[r]) right++;
    }
    expect(e.accuracy).toBe(right / 64);
    expect(e.perplexity).toBeCloseTo(Math.exp(e.loss), 12);
    // Each step reports what its batch scored before the update.
    const r = await m.trainStep(x, y);
    expect(r.targets).toBe(64);
    expect(r.correct).toBe(right);
  });

  it('rejects metrics that do not fit the loss', () => {
    const m = dense();
    expect(() => m.compile({ optimizer: optimizers.sgd(), loss: 'mse', metrics: ['accuracy'] })).toThrow(
      /accuracy metric needs the crossEntropy loss/,
    );
    expect(() => m.compile({ optimizer: optimizers.sgd(), loss: 'crossEntropy', metrics: ['f1' as never] })).toThrow(
      /unknown metric f1/,
    );
  });

  it('trains on an async generator, an array of batches or a function giving one per epoch', async () => {
    const { x, y } = linearData(40);
    const batches = (): Batch[] =>
      [0, 10, 20, 30].map((s) => ({ x: { data: x.data.subarray(s * 2, s * 2 + 20), shape: [10, 2] }, y: { data: y.data.subarray(s, s + 10), shape: [10, 1] } }));
    async function* stream() {
      for (const b of batches()) yield b;
    }
    // The same batches in the same order give the same weights whatever carries them.
    const viaTensors = dense();
    await viaTensors.fit(x, y, { epochs: 3, batchSize: 10, shuffle: false, verbose: 0 });
    const viaFunction = dense();
    const h = await viaFunction.fit(() => stream(), { epochs: 3, verbose: 0 });
    const viaArray = dense();
    await viaArray.fit(batches(), { epochs: 3, verbose: 0 });
    expect(viaFunction.getWeights()).toEqual(viaTensors.getWeights());
    expect(viaArray.getWeights()).toEqual(viaTensors.getWeights());
    expect(h.epoch).toEqual([0, 1, 2]);
    expect(viaFunction.step).toBe(12);
    expect((await viaFunction.evaluate(() => stream())).loss).toBe((await viaFunction.evaluate(x, y, { batchSize: 10 })).loss);
    // A generator object runs once: the second epoch has nothing, and says what to do.
    await expect(dense().fit(stream(), { epochs: 2, verbose: 0 })).rejects.toThrow(/no batches in epoch 1.*fresh one per epoch/);
    // With stepsPerEpoch, epochs draw from one endless generator.
    async function* endless() {
      for (;;) yield* stream();
    }
    const m = dense();
    const hs = await m.fit(endless(), { epochs: 5, stepsPerEpoch: 3, verbose: 0 });
    expect(m.step).toBe(15);
    expect(hs.history.loss).toHaveLength(5);
    await expect(dense().fit(stream(), { batchSize: 4 })).rejects.toThrow(/batchSize applies to tensors/);
    await expect(dense().fit([[x]] as never, { verbose: 0 })).rejects.toThrow(/must be \[x, y\] or \{ x, y \}/);
  });

  it('runs stepsPerEpoch batches per epoch from tensors, continuing across passes', async () => {
    const m = dense();
    const { x, y } = linearData(25);
    const seen: number[] = [];
    await m.fit(x, y, { epochs: 4, batchSize: 10, stepsPerEpoch: 2, verbose: 0, callbacks: { onBatchEnd: (_b, l) => void seen.push(l.size!) } });
    // Passes of 10, 10, 5 rows; epochs take two batches each.
    expect(seen).toEqual([10, 10, 5, 10, 10, 5, 10, 10]);
  });

  it('counts epochs as Keras does: from initialEpoch up to epochs', async () => {
    const m = dense();
    const { x, y } = linearData(20);
    const h = await m.fit(x, y, { initialEpoch: 2, epochs: 5, batchSize: 10, verbose: 0 });
    expect(h.epoch).toEqual([2, 3, 4]);
    expect(m.step).toBe(6);
  });

  it('plots its history as SVG carrying the numbers, and round-trips through JSON', async () => {
    const { m, x, y } = classifier(['accuracy']);
    const h = await m.fit(x, y, { epochs: 4, batchSize: 16, validationSplit: 0.25, verbose: 0 });
    const path = join(tempDir(), 'loss.svg');
    await h.plot(path);
    const svg = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '' }).parse(readFileSync(path, 'utf8'));
    const lines: Array<Record<string, string>> = [];
    const walk = (n: unknown): void => {
      if (Array.isArray(n)) n.forEach(walk);
      else if (n && typeof n === 'object') {
        const o = n as Record<string, unknown>;
        if (typeof o['data-key'] === 'string' && typeof o.points === 'string') lines.push(o as Record<string, string>);
        Object.values(o).forEach(walk);
      }
    };
    walk(svg);
    for (const key of ['loss', 'val_loss', 'accuracy', 'val_accuracy', 'lr']) {
      const line = lines.find((l) => l['data-key'] === key);
      expect(line, key).toBeDefined();
      expect(line!['data-values']!.split(',').map(Number)).toEqual(h.history[key]);
    }
    const back = History.from(JSON.parse(JSON.stringify(h)));
    expect(back.history).toEqual(h.history);
    expect(back.epoch).toEqual(h.epoch);
  });
});

/** 64 rows of 4 features, 3 classes decided by which of the first three features is largest. */
function classifier(metrics: Array<'accuracy' | 'perplexity'>) {
  const n = 64;
  const x = new Float32Array(n * 4);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < 4; j++) x[i * 4 + j] = Math.sin(i * 1.7 + j * 2.3);
    const row = Array.from(x.subarray(i * 4, i * 4 + 3));
    y[i] = row.indexOf(Math.max(...row));
  }
  const m = sequential([layers.dense({ inputSize: 4, units: 8, activation: 'tanh' }), layers.dense({ units: 3 })], { seed: 5 });
  m.compile({ optimizer: optimizers.sgd({ learningRate: 0.05 }), loss: 'crossEntropy', metrics });
  return { m, x: tensor(x, [n, 4]), y: tensor(y, [n]) };
}
