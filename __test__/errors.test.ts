import { truncateSync, copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { layers, load, memoryNetwork, optimizers, sequential, tensor, type LayerSpec } from '../src/index.js';
import { tempDir } from './helpers.js';

function model() {
  const m = sequential(
    [layers.embedding({ vocabSize: 10, dim: 4 }), layers.lstm({ hiddenSize: 6, returnSequences: true }), layers.dense({ units: 10 })],
    { seed: 1 },
  );
  m.compile({ optimizer: optimizers.adam(), loss: 'crossEntropy' });
  return m;
}
const ids = (b: number, t: number, v = 1) => tensor(new Int32Array(b * t).fill(v), [b, t]);

describe('bad input gives a clear error and never crashes the process', () => {
  it('rejects a tensor whose shape does not match its data', () => {
    expect(() => tensor(new Float32Array(5), [2, 3])).toThrow(RangeError);
    expect(() => tensor(new Float32Array(5), [2, 3])).toThrow(/shape \[2, 3\] holds 6 values but data has 5/);
  });

  it('rejects non-tensors with a TypeError naming the argument', async () => {
    const m = model();
    await expect(m.trainStep([1, 2, 3] as never, ids(1, 3))).rejects.toThrow(TypeError);
    await expect(m.trainStep({ data: [1, 2], shape: [2] } as never, ids(1, 2))).rejects.toThrow(/x\.data must be a Float32Array/);
  });

  it('rejects the wrong rank', async () => {
    const m = model();
    const err = await m.trainStep(tensor(new Int32Array(6), [6]), ids(6, 1)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RangeError);
    expect((err as Error).message).toMatch(/x \(token ids\) must have shape \[batch, seqLen\], got \[6\]/);
  });

  it('rejects float data where ids are expected', async () => {
    const err = await model().predict(tensor(new Float32Array(6), [2, 3])).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TypeError);
    expect((err as Error).message).toMatch(/expected int32 token ids \(an Int32Array\), got float32/);
  });

  it('rejects ids at or past vocabSize and negative ids', async () => {
    const m = model();
    await expect(m.predict(ids(2, 3, 10))).rejects.toThrow(/token ids must be in \[0, 10\), found 10/);
    await expect(m.predict(ids(2, 3, -1))).rejects.toThrow(RangeError);
    await expect(m.trainStep(ids(2, 3), ids(2, 3, 12))).rejects.toThrow(/class ids in y must be in \[0, 10\)/);
  });

  it('rejects NaN and Infinity in float inputs', async () => {
    const m = sequential([layers.dense({ inputSize: 2, units: 1 })], { seed: 1 });
    m.compile({ optimizer: optimizers.sgd(), loss: 'mse' });
    await expect(m.predict(tensor([1, NaN], [1, 2]))).rejects.toThrow(/values must be finite, found NaN at flat index 1/);
    await expect(m.trainStep(tensor([1, 2], [1, 2]), tensor([Infinity], [1, 1]))).rejects.toThrow(RangeError);
  });

  it('rejects x and y with different batch sizes', async () => {
    await expect(model().trainStep(ids(2, 3), ids(3, 3))).rejects.toThrow(/same batch size.*x has 2, y has 3/);
  });

  it('rejects targets of the wrong shape or type', async () => {
    const m = model();
    await expect(m.trainStep(ids(2, 3), ids(2, 4))).rejects.toThrow(/y must have shape \[2, 3\] \(every step\) or \[2\] \(last step\)/);
    await expect(m.trainStep(ids(2, 3), tensor(new Float32Array(6), [2, 3]))).rejects.toThrow(TypeError);
  });

  it('rejects unknown layer types and option names', async () => {
    expect(() => sequential([{ type: 'conv' } as unknown as LayerSpec])).toThrow(TypeError);
    expect(() => sequential([{ type: 'conv' } as unknown as LayerSpec])).toThrow(/unknown variant `conv`/);
    expect(() => sequential([layers.lstm({ inputSize: 2, hiddenSise: 3 } as never)])).toThrow(/unknown field `hiddenSise`/);
    expect(() => sequential([layers.dense({ units: 2 })], { sede: 1 } as never)).toThrow(/unknown option sede/);
    const m = model();
    expect(() => m.compile({ optimizer: optimizers.adam({ momentum: 0.9 } as never), loss: 'crossEntropy' })).toThrow(
      /optimizer adam has no option momentum/,
    );
    expect(() => m.compile({ optimizer: optimizers.adam(), loss: 'hinge' as never })).toThrow(/unknown variant `hinge`/);
    expect(() => m.compile({ optimizer: optimizers.adam({ learningRate: -1 }), loss: 'mse' })).toThrow(RangeError);
    await expect(m.fit(ids(2, 3), ids(2, 3), { epocs: 2 } as never)).rejects.toThrow(/unknown option epocs/);
  });

  it('names the layer and field of an option of the wrong type, without JSON positions', () => {
    const err = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return e as Error;
      }
      throw new Error('expected an error');
    };
    const e = err(() => sequential([layers.dense({ units: 4, inputSize: 2 }), layers.lstm({ hiddenSize: null as never })]));
    expect(e).toBeInstanceOf(TypeError);
    expect(e.message).toBe('model spec: layer 1 (lstm): hiddenSize must be a non-negative integer, got null');
    expect(err(() => sequential([layers.lstm({ inputSize: 2, hiddenSize: 3, bidirectional: {} as never })])).message).toBe(
      'model spec: layer 0 (lstm): bidirectional must be true or false, got an object',
    );
    expect(err(() => memoryNetwork({ vocabSize: 10, sentenceLen: 3, hops: 2.5 })).message).toBe(
      'memoryNetwork options: hops must be a non-negative integer, got 2.5',
    );
    const m = model();
    expect(err(() => m.compile({ optimizer: optimizers.adam({ beta1: 'x' as never }), loss: 'mse' })).message).toBe(
      'compile options: optimizer: beta1 must be a number, got "x"',
    );
    expect(err(() => m.compile({ optimizer: optimizers.adam(), loss: { type: 'crossEntropy', ignoreIndex: 1.5 } })).message).toBe(
      'compile options: loss: ignoreIndex must be an integer, got 1.5',
    );
  });

  it('explains a first layer that needs inputSize, and bad sizes', () => {
    expect(() => sequential([layers.lstm({ hiddenSize: 3 })])).toThrow(/needs inputSize/);
    expect(() => sequential([layers.dense({ inputSize: 2, units: 0 })])).toThrow(/units must be a positive integer/);
    expect(() => sequential([layers.dropout({ rate: 1.5 })])).toThrow(/rate must be in \[0, 1\)/);
  });

  it('rejects training before compile', async () => {
    const m = sequential([layers.dense({ inputSize: 2, units: 1 })], { seed: 1 });
    await expect(m.trainStep(tensor([1, 2], [1, 2]), tensor([1], [1, 1]))).rejects.toThrow(/not compiled/);
  });

  it('rejects every call on a disposed model', async () => {
    const m = model();
    m.dispose();
    m.dispose();
    expect(m.isDisposed).toBe(true);
    await expect(m.predict(ids(1, 2))).rejects.toThrow(/disposed/);
    await expect(m.trainStep(ids(1, 2), ids(1, 2))).rejects.toThrow(/disposed/);
    expect(() => m.getWeights()).toThrow(/disposed/);
    expect(() => m.summary()).toThrow(/disposed/);
  });

  it('queues a second trainStep made while one runs, in call order', async () => {
    const m = model();
    const order: number[] = [];
    const calls = [0, 1, 2, 3].map((i) => m.trainStep(ids(4, 5, i), ids(4, 5, i)).then((r) => (order.push(i), r)));
    const results = await Promise.all(calls);
    expect(order).toEqual([0, 1, 2, 3]);
    expect(results.every((r) => Number.isFinite(r.loss))).toBe(true);
    expect(m.step).toBe(4);
  });

  it('keeps the queue going after a failed call', async () => {
    const m = model();
    const bad = m.trainStep(ids(2, 3, 99), ids(2, 3));
    const good = m.trainStep(ids(2, 3), ids(2, 3));
    await expect(bad).rejects.toThrow(RangeError);
    await expect(good).resolves.toHaveProperty('loss');
    expect(m.step).toBe(1);
  });

  it('rejects a missing, truncated or corrupt checkpoint without half-loading', async () => {
    const dir = tempDir();
    await expect(load(join(dir, 'nope.safetensors'))).rejects.toThrow(/nope\.safetensors.*No such file/);
    const good = join(dir, 'good.safetensors');
    await model().save(good);
    const cut = join(dir, 'cut.safetensors');
    copyFileSync(good, cut);
    truncateSync(cut, 100);
    await expect(load(cut)).rejects.toThrow(/^load .*cut\.safetensors: not a valid safetensors file/);
    await expect(load(cut)).rejects.toHaveProperty('path', cut);
    const junk = join(dir, 'junk.safetensors');
    writeFileSync(junk, 'this is not a checkpoint at all, just text');
    await expect(load(junk)).rejects.toThrow(/junk\.safetensors/);
    await expect((await load(good)).predict(ids(1, 2))).resolves.toHaveProperty('shape', [1, 2, 10]);
  });

  it('rejects weights with unknown names or wrong shapes and changes nothing', () => {
    const m = model();
    const before = m.getWeights();
    const w = m.getWeights();
    expect(() => m.setWeights({ ...w, '9.weight': tensor([1], [1]) })).toThrow(/no parameter "9.weight"/);
    expect(() => m.setWeights({ ...w, '2.bias': tensor(new Float32Array(3).fill(9), [3]) })).toThrow(/2\.bias must have shape \[10\]/);
    const { ['2.bias']: _dropped, ...partial } = w;
    expect(() => m.setWeights(partial)).toThrow(/missing parameters \["2.bias"\]/);
    expect(Array.from(m.getWeights()['2.bias']!.data)).toEqual(Array.from(before['2.bias']!.data));
  });
});
