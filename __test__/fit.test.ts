import { describe, expect, it } from 'vitest';
import { layers, optimizers, sequential, tensor, type Tensor } from '../src/index.js';

/** y = 2 x0 - x1 + 0.5: a linear task a dense layer fits. */
function linearData(n: number): { x: Tensor; y: Tensor } {
  const x = new Float32Array(n * 2);
  const y = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    x[2 * i] = Math.sin(i);
    x[2 * i + 1] = Math.cos(3 * i);
    y[i] = 2 * x[2 * i]! - x[2 * i + 1]! + 0.5;
  }
  return { x: tensor(x, [n, 2]), y: tensor(y, [n, 1]) };
}

function dense() {
  const m = sequential([layers.dense({ inputSize: 2, units: 1 })], { seed: 3 });
  m.compile({ optimizer: optimizers.sgd({ learningRate: 0.1 }), loss: 'mse' });
  return m;
}

describe('fit', () => {
  it('trains over epochs with validation and returns the history', async () => {
    const m = dense();
    const { x, y } = linearData(100);
    const h = await m.fit(x, y, { epochs: 20, batchSize: 10, validationSplit: 0.2 });
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
});
