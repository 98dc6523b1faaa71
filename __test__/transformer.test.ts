import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { layers, load, optimizers, sequential, tensor, type Tensor } from '../src/index.js';
import { cycleBatch, expectClose, tempDir } from './helpers.js';

const VOCAB = 10;

/** A small decoder-only Transformer. */
function decoder(seed = 5, maxLen = 16) {
  return sequential(
    [
      layers.embedding({ vocabSize: VOCAB, dim: 16 }),
      layers.positionalEncoding({ kind: 'learned', maxLen }),
      layers.transformerBlock({ dModel: 16, nHeads: 2, ffDim: 32, normFirst: true, causal: true, activation: 'gelu', dropout: 0 }),
      layers.layerNorm(),
      layers.dense({ units: VOCAB }),
    ],
    { seed },
  );
}

describe('transformer layers', () => {
  it('a causal decoder learns a cycle and generate continues it', async () => {
    const model = decoder();
    model.compile({ optimizer: optimizers.adamw({ learningRate: 1e-2 }), loss: 'crossEntropy' });
    const { x, y } = cycleBatch(10, 12, VOCAB);
    const first = (await model.trainStep(x, y)).loss;
    let last = first;
    for (let i = 0; i < 80; i++) last = (await model.trainStep(x, y)).loss;
    expect(first).toBeGreaterThan(2);
    expect(last).toBeLessThan(0.1);
    // Greedy decoding past the context (16) exercises the cache restart too.
    const out = await model.generate([3, 4, 5], { maxTokens: 20, temperature: 0 });
    expect(out).toBeInstanceOf(Int32Array);
    expect(Array.from(out)).toEqual(Array.from({ length: 20 }, (_, i) => (6 + i) % VOCAB));
    model.dispose();
  });

  it('sampling is reproducible with a seed', async () => {
    const model = decoder(6);
    const a = await model.generate(new Int32Array([1, 2]), { maxTokens: 30, temperature: 1.2, topK: 5, seed: 3 });
    const b = await model.generate(new Int32Array([1, 2]), { maxTokens: 30, temperature: 1.2, topK: 5, seed: 3 });
    const c = await model.generate(new Int32Array([1, 2]), { maxTokens: 30, temperature: 1.2, topK: 5, seed: 4 });
    expect(Array.from(a)).toEqual(Array.from(b));
    expect(Array.from(a)).not.toEqual(Array.from(c));
    expect(a.every((t) => t >= 0 && t < VOCAB)).toBe(true);
    model.dispose();
  });

  it('returns attention weights per layer: causal, padded keys hidden, rows summing to 1', async () => {
    const model = sequential(
      [
        layers.positionalEncoding({ inputSize: 8 }),
        layers.multiHeadAttention({ nHeads: 2, causal: true, name: 'attn' }),
        layers.transformerBlock({ dModel: 8, nHeads: 4, ffDim: 16, dropout: 0, name: 'block' }),
      ],
      { seed: 2 },
    );
    const x = tensor(Float32Array.from({ length: 2 * 5 * 8 }, (_, i) => Math.sin(i)), [2, 5, 8]);
    const lengths = tensor(new Int32Array([5, 3]), [2]);
    const w = await model.attentionWeights({ x, lengths });
    expect(Object.keys(w).sort()).toEqual(['attn', 'block']);
    expect(w.attn!.shape).toEqual([2, 2, 5, 5]);
    expect(w.block!.shape).toEqual([2, 4, 5, 5]);
    const at = (t: Tensor, b: number, h: number, i: number, j: number) =>
      t.data[((b * t.shape[1]! + h) * 5 + i) * 5 + j]!;
    for (const [name, t] of Object.entries(w)) {
      for (let b = 0; b < 2; b++) {
        for (let h = 0; h < t.shape[1]!; h++) {
          for (let i = 0; i < 5; i++) {
            let sum = 0;
            for (let j = 0; j < 5; j++) {
              const p = at(t, b, h, i, j);
              sum += p;
              if (name === 'attn' && j > i) expect(p, `${name} causal [${b},${h},${i},${j}]`).toBe(0);
              if (b === 1 && j >= 3) expect(p, `${name} padding [${b},${h},${i},${j}]`).toBe(0);
            }
            expect(sum).toBeCloseTo(1, 5);
          }
        }
      }
    }
    model.dispose();
  });

  it('saves and loads a Transformer with its predictions unchanged', async () => {
    const model = decoder(8);
    model.compile({ optimizer: optimizers.adam({ learningRate: 1e-3 }), loss: 'crossEntropy' });
    const { x, y } = cycleBatch(4, 8, VOCAB);
    await model.trainStep(x, y);
    const file = join(tempDir(), 'gpt.safetensors');
    await model.save(file);
    const again = await load(file);
    expectClose(await again.predict(x), await model.predict(x), 0, 0, 'logits');
    expect(again.summary({ print: false })).toMatch(/transformerBlock/);
    expect(Object.keys(again.getWeights())).toContain('2.self_attn.in_proj_weight');
    model.dispose();
    again.dispose();
  });

  it('rejects bad specs, inputs and generate options with clear errors', async () => {
    expect(() => sequential([layers.transformerBlock({ dModel: 10, nHeads: 4, inputSize: 10 } as never)])).toThrow(TypeError);
    expect(() => sequential([layers.embedding({ vocabSize: 5, dim: 10 }), layers.transformerBlock({ dModel: 10, nHeads: 4 })])).toThrow(
      /dModel \(10\) must be divisible by nHeads \(4\)/,
    );
    expect(() => sequential([layers.embedding({ vocabSize: 5, dim: 8 }), layers.transformerBlock({ dModel: 6, nHeads: 2 })])).toThrow(
      /dModel 6 does not match the 8 features/,
    );
    expect(() => sequential([layers.transformerBlock({ dModel: 8, nHeads: 2, dropout: 1 })])).toThrow(
      /transformerBlock: dropout must be in \[0, 1\), got 1/,
    );
    const model = decoder(9, 8);
    await expect(model.predict(tensor(new Int32Array(12), [1, 12]))).rejects.toThrow(/12 positions but maxLen is 8/);
    await expect(model.generate([1, 99], { maxTokens: 2 })).rejects.toThrow(/prompt id 99 at index 1 is outside \[0, 10\)/);
    await expect(model.generate([1], { maxTokens: 1.5 })).rejects.toThrow(RangeError);
    await expect(model.generate([1], { maxTokens: 2, temperature: -1 })).rejects.toThrow(/temperature/);
    await expect(model.generate([1], { maxTokens: 2, topK: 0 })).rejects.toThrow(/topK/);
    await expect(model.generate([1], { maxTokens: 2, top: 3 } as never)).rejects.toThrow(/unknown option top/);
    await expect(model.generate([0.5], { maxTokens: 2 })).rejects.toThrow(/promptIds\[0\] must be an integer/);
    const encoder = sequential([layers.embedding({ vocabSize: 5, dim: 4 }), layers.transformerBlock({ dModel: 4, nHeads: 2 })]);
    await expect(encoder.generate([1], { maxTokens: 2 })).rejects.toThrow(/causal: true/);
    model.dispose();
    encoder.dispose();
  });
});
