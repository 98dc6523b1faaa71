import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { layers, load, optimizers, sequential, tensor, type Tensor } from '../src/index.js';
import { cycleBatch, expectClose, tempDir } from './helpers.js';

function charModel(seed = 7) {
  return sequential(
    [
      layers.embedding({ vocabSize: 12, dim: 8 }),
      layers.lstm({ hiddenSize: 16, numLayers: 2, returnSequences: true, dropout: 0.1 }),
      layers.dense({ units: 12 }),
    ],
    { seed },
  );
}

describe('sequential model', () => {
  it('learns a next-token task: loss falls by more than half', async () => {
    const model = charModel();
    model.compile({ optimizer: optimizers.adam({ learningRate: 1e-2, clipNorm: 5 }), loss: 'crossEntropy' });
    const { x, y } = cycleBatch(8, 10);
    const first = (await model.trainStep(x, y)).loss;
    let last = first;
    for (let i = 0; i < 60; i++) last = (await model.trainStep(x, y)).loss;
    expect(first).toBeGreaterThan(2);
    expect(last).toBeLessThan(first / 2);
    expect(model.step).toBe(61);
    model.dispose();
  });

  it('gives the same weights and the same training run for the same seed', async () => {
    const run = async (seed: number) => {
      const m = charModel(seed);
      m.compile({ optimizer: optimizers.sgd({ learningRate: 0.1, momentum: 0.9 }), loss: 'crossEntropy' });
      const { x, y } = cycleBatch(4, 6);
      const losses = [];
      for (let i = 0; i < 3; i++) losses.push((await m.trainStep(x, y)).loss);
      const w = m.getWeights();
      m.dispose();
      return { losses, w };
    };
    const a = await run(3);
    const b = await run(3);
    const c = await run(4);
    expect(a.losses).toEqual(b.losses);
    for (const k of Object.keys(a.w)) expect(Array.from(a.w[k]!.data)).toEqual(Array.from(b.w[k]!.data));
    expect(Array.from(a.w['0.weight']!.data)).not.toEqual(Array.from(c.w['0.weight']!.data));
  });

  it('predicts with the output shape and the same values whatever the batch size', async () => {
    const model = charModel();
    const { x } = cycleBatch(5, 4);
    const whole = await model.predict(x);
    const pieces = await model.predict(x, { batchSize: 2 });
    expect(whole.shape).toEqual([5, 4, 12]);
    expect(whole.data).toBeInstanceOf(Float32Array);
    expectClose(pieces, whole, 1e-6, 1e-7, 'batched predict');
    model.dispose();
  });

  it('returns only the last step without returnSequences', async () => {
    const model = sequential([layers.lstm({ inputSize: 3, hiddenSize: 5 }), layers.dense({ units: 2 })], { seed: 1 });
    const out = await model.predict(tensor(new Float32Array(4 * 7 * 3).fill(0.5), [4, 7, 3]));
    expect(out.shape).toEqual([4, 2]);
    model.dispose();
  });

  it('takes an initial state per recurrent layer, and it changes the output', async () => {
    const model = sequential([layers.lstm({ inputSize: 2, hiddenSize: 3, numLayers: 2, name: 'rnn' })], { seed: 2 });
    const x = tensor(new Float32Array(2 * 4 * 2).fill(0.1), [2, 4, 2]);
    const zero = { h: tensor(new Float32Array(12), [2, 2, 3]), c: tensor(new Float32Array(12), [2, 2, 3]) };
    const ones = { h: tensor(new Float32Array(12).fill(1), [2, 2, 3]), c: tensor(new Float32Array(12).fill(1), [2, 2, 3]) };
    const plain = await model.predict(x);
    const withZero = await model.predict(x, { initialState: { rnn: zero } });
    const withOnes = await model.predict(x, { initialState: { rnn: ones } });
    expectClose(withZero, plain, 0, 0, 'zero state');
    expect(Math.abs(withOnes.data[0]! - plain.data[0]!)).toBeGreaterThan(1e-4);
    model.dispose();
  });

  it('builds GRU and RNN layers, bidirectional ones with PyTorch names and D * hiddenSize features', async () => {
    const gru = sequential([layers.gru({ inputSize: 3, hiddenSize: 4, bidirectional: true, returnSequences: true }), layers.dense({ units: 2 })], { seed: 3 });
    expect(Object.keys(gru.getWeights())).toEqual([
      '0.weight_ih_l0', '0.weight_hh_l0', '0.bias_ih_l0', '0.bias_hh_l0',
      '0.weight_ih_l0_reverse', '0.weight_hh_l0_reverse', '0.bias_ih_l0_reverse', '0.bias_hh_l0_reverse',
      '1.weight', '1.bias',
    ]);
    expect(gru.getWeights()['0.weight_ih_l0']!.shape).toEqual([12, 3]);
    expect(gru.getWeights()['1.weight']!.shape).toEqual([2, 8]);
    const x = tensor(new Float32Array(2 * 5 * 3).map((_, i) => Math.sin(i)), [2, 5, 3]);
    expect((await gru.predict(x)).shape).toEqual([2, 5, 2]);
    // A GRU's initial state is h only: [numLayers * 2, batch, hidden] when bidirectional.
    const h = tensor(new Float32Array(2 * 2 * 4).fill(0.5), [2, 2, 4]);
    const moved = await gru.predict(x, { initialState: { '0': { h } } });
    expect(Math.abs(moved.data[0]! - (await gru.predict(x)).data[0]!)).toBeGreaterThan(1e-5);
    await expect(gru.predict(x, { initialState: { '0': { h, c: h } } })).rejects.toThrow(/h only/);
    gru.dispose();

    const rnn = sequential([layers.rnn({ inputSize: 3, hiddenSize: 6, nonlinearity: 'relu', numLayers: 2 }), layers.dense({ units: 1 })], { seed: 4 });
    rnn.compile({ optimizer: optimizers.adam({ learningRate: 0.01 }), loss: 'mse' });
    const y = tensor(new Float32Array([0.5, -0.5]), [2, 1]);
    const first = await rnn.trainStep(x, y);
    let last = first;
    for (let i = 0; i < 30; i++) last = await rnn.trainStep(x, y);
    expect(last.loss).toBeLessThan(first.loss / 2);
    rnn.dispose();
  });

  it('runs padded batches with lengths (or maskZero), and carries state with stateful', async () => {
    const model = sequential([layers.gru({ inputSize: 2, hiddenSize: 3 })], { seed: 5 });
    // Row 1 has 2 real steps and garbage after them.
    const x = tensor(Float32Array.from([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, -0.3, 0.9, 0.2, -0.1, 7, 7]), [2, 3, 2]);
    const padded = await model.predict({ x, lengths: tensor(Int32Array.from([3, 2]), [2]) });
    const alone = await model.predict(tensor(Float32Array.from([-0.3, 0.9, 0.2, -0.1]), [1, 2, 2]));
    expectClose({ data: padded.data.subarray(3, 6), shape: [1, 3] }, alone, 1e-6, 1e-7, 'row 1 alone');
    await expect(model.predict({ x, lengths: tensor(Int32Array.from([3, 4]), [2]) })).rejects.toThrow(/row 1 has length 4/);
    await expect(model.predict({ x, lengths: tensor(Int32Array.from([3]), [1]) })).rejects.toThrow(RangeError);
    model.dispose();

    const ids = tensor(Int32Array.from([4, 2, 0, 3, 0, 0]), [2, 3]);
    const masked = sequential([layers.embedding({ vocabSize: 6, dim: 2, maskZero: true }), layers.lstm({ hiddenSize: 3 })], { seed: 6 });
    const plain = sequential([layers.embedding({ vocabSize: 6, dim: 2 }), layers.lstm({ hiddenSize: 3 })], { seed: 6 });
    const byLengths = await plain.predict({ x: ids, lengths: tensor(Int32Array.from([2, 1]), [2]) });
    expectClose(await masked.predict(ids), byLengths, 0, 0, 'maskZero');
    masked.dispose();
    plain.dispose();

    const stateful = sequential([layers.lstm({ inputSize: 2, hiddenSize: 3, stateful: true, returnSequences: true })], { seed: 7 });
    const step = tensor(Float32Array.from([0.5, -0.5, 0.25, 0.75]), [2, 1, 2]);
    const a = await stateful.predict(step);
    const b = await stateful.predict(step);
    expect(Math.abs(a.data[0]! - b.data[0]!)).toBeGreaterThan(1e-4);
    await stateful.resetStates();
    expectClose(await stateful.predict(step), a, 0, 0, 'after resetStates');
    stateful.dispose();
  });

  it('round-trips weights through getWeights and setWeights', async () => {
    const a = charModel(1);
    const b = charModel(2);
    const { x } = cycleBatch(2, 3);
    b.setWeights(a.getWeights());
    expectClose(await b.predict(x), await a.predict(x), 0, 0, 'copied model');
    a.dispose();
    b.dispose();
  });

  it('saves and loads the model with its optimizer state, so training resumes exactly', async () => {
    const dir = tempDir();
    const path = join(dir, 'model.safetensors');
    const { x, y } = cycleBatch(4, 5);
    const straight = charModel(5);
    straight.compile({ optimizer: optimizers.adam({ learningRate: 5e-3 }), loss: 'crossEntropy' });
    for (let i = 0; i < 4; i++) await straight.trainStep(x, y);

    const first = charModel(5);
    first.compile({ optimizer: optimizers.adam({ learningRate: 5e-3 }), loss: 'crossEntropy' });
    for (let i = 0; i < 2; i++) await first.trainStep(x, y);
    await first.save(path);
    first.dispose();
    const resumed = await load(path);
    expect(resumed.step).toBe(2);
    for (let i = 0; i < 2; i++) await resumed.trainStep(x, y);

    const ws = straight.getWeights();
    const wr = resumed.getWeights();
    for (const k of Object.keys(ws)) expect(Array.from(wr[k]!.data), k).toEqual(Array.from(ws[k]!.data));
    expect(resumed.config.layers.map((l) => l.type)).toEqual(['embedding', 'lstm', 'dense']);
    expect(existsSync(path)).toBe(true);
    straight.dispose();
    resumed.dispose();
  });

  it('summarises layers, shapes and parameter counts', () => {
    const model = charModel();
    const s = model.summary({ print: false });
    expect(s).toMatch(/embedding\s+\[batch, seqLen, 8\]\s+96/);
    expect(s).toMatch(/lstm\s+\[batch, seqLen, 16\]/);
    expect(s).toContain(`Total parameters: ${model.paramCount}`);
    // embedding 12*8, 2-layer LSTM 4*16*(8+16+2) + 4*16*(16+16+2), dense 12*16+12
    expect(model.paramCount).toBe(96 + 64 * 26 + 64 * 34 + 204);
    model.dispose();
  });

  it('trains in float64 too', async () => {
    const model = sequential([layers.dense({ inputSize: 2, units: 1 })], { seed: 1, dtype: 'float64' });
    model.compile({ optimizer: optimizers.sgd({ learningRate: 0.1 }), loss: 'mse' });
    const x = tensor(Float64Array.from([1, 0, 0, 1, 1, 1, 0, 0]), [4, 2]);
    const y = tensor(Float64Array.from([1, 2, 3, 0]), [4, 1]);
    const { loss: before } = await model.evaluate(x, y);
    for (let i = 0; i < 50; i++) await model.trainStep(x, y);
    expect((await model.evaluate(x, y)).loss).toBeLessThan(before);
    expect((await model.predict(x)).data).toBeInstanceOf(Float64Array);
    model.dispose();
  });

  it('changes the learning rate of the compiled optimizer', () => {
    const model = charModel();
    expect(model.learningRate).toBeUndefined();
    model.compile({ optimizer: optimizers.adamw({ learningRate: 0.003 }), loss: 'crossEntropy' });
    expect(model.learningRate).toBeCloseTo(0.003, 12);
    model.learningRate = 0.001;
    expect(model.learningRate).toBeCloseTo(0.001, 12);
    model.dispose();
  });
});
