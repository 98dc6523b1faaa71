import { describe, expect, it } from 'vitest';
import { babiJointRecipe, babiRecipe, classificationError, datasets, load, memoryNetwork, optimizers, tensor } from '../src/index.js';
import { join } from 'node:path';
import { tempDir } from './helpers.js';

const { babi } = datasets;

function tiny(attendEmpty = true) {
  const m = memoryNetwork({ vocabSize: 8, sentenceLen: 3, memorySize: 4, embedDim: 6, seed: 3, attendEmpty });
  m.compile({ optimizer: optimizers.sgd({ learningRate: 0.01 }), loss: { type: 'crossEntropy', reduction: 'sum' } });
  return m;
}
// Two examples: 2 and 3 real sentences of up to 3 words.
const stories = tensor(Int32Array.from([1, 2, 0, 3, 4, 5, 0, 0, 0, 0, 0, 0, 2, 2, 0, 6, 0, 0, 7, 1, 1, 0, 0, 0]), [2, 4, 3]);
const queries = tensor(Int32Array.from([1, 0, 0, 3, 4, 0]), [2, 3]);
const answers = tensor(Int32Array.from([5, 6]), [2]);

describe('memoryNetwork', () => {
  it('gives logits over the vocabulary and per-hop attention over the real sentences', async () => {
    const m = tiny();
    expect(m.kind).toBe('memoryNetwork');
    const logits = await m.predict({ stories, queries });
    expect(logits.shape).toEqual([2, 8]);
    const att = await m.attention({ stories, queries });
    expect(att.shape).toEqual([3, 2, 4]);
    // Without attendEmpty each hop's weights over the real sentences sum to 1; with it (the default) the empty
    // slots take a share, so the sums fall short of 1; padding slots show 0 either way.
    const strict = await tiny(false).attention({ stories, queries });
    for (let hop = 0; hop < 3; hop++) {
      for (const [a, sumsToOne] of [[strict, true], [att, false]] as const) {
        const row0 = Array.from(a.data.subarray((hop * 2) * 4, (hop * 2) * 4 + 4));
        const row1 = Array.from(a.data.subarray((hop * 2 + 1) * 4, (hop * 2 + 1) * 4 + 4));
        expect(row0.slice(2)).toEqual([0, 0]);
        expect(row1[3]).toBe(0);
        for (const sum of [row0[0]! + row0[1]!, row1[0]! + row1[1]! + row1[2]!]) {
          if (sumsToOne) expect(sum).toBeCloseTo(1, 5);
          else expect(sum > 0.05 && sum < 0.999).toBe(true);
        }
      }
    }
    expect(Object.keys(m.getWeights())).toEqual(['A.1', 'C.1', 'C.2', 'C.3', 'T_A.1', 'T_C.1', 'T_C.2', 'T_C.3']);
  });

  it('trains, saves and loads back as a memory network', async () => {
    const m = tiny();
    m.linearStart = true;
    expect(m.linearStart).toBe(true);
    const { loss: before } = await m.evaluate({ stories, queries }, answers);
    for (let i = 0; i < 30; i++) await m.trainStep({ stories, queries }, answers);
    expect((await m.evaluate({ stories, queries }, answers)).loss).toBeLessThan(before);
    const path = join(tempDir(), 'memnet.safetensors');
    await m.save(path);
    const again = await load(path);
    expect(again.kind).toBe('memoryNetwork');
    expect(Array.from((await again.predict({ stories, queries })).data)).toEqual(Array.from((await m.predict({ stories, queries })).data));
  });

  it('rejects bad input with clear errors', async () => {
    const m = tiny();
    await expect(m.predict(stories as never)).rejects.toThrow(/must be \{ stories, queries \} for a memory network/);
    await expect(m.predict({ stories: tensor(new Int32Array(2 * 5 * 3), [2, 5, 3]), queries })).rejects.toThrow(
      /stories must have shape \[batch >= 1, 4, 3\], got \[2, 5, 3\]/,
    );
    await expect(m.predict({ stories: tensor(new Int32Array(24), [2, 4, 3]), queries })).rejects.toThrow(/example 0 has no sentences/);
    await expect(m.predict({ stories, queries: tensor(Int32Array.from([9, 0, 0, 1, 0, 0]), [2, 3]) })).rejects.toThrow(
      /queries: word ids must be in \[0, 8\), found 9/,
    );
    await expect(m.predict({ stories, queries: tensor(new Int32Array(3), [1, 3]) })).rejects.toThrow(/same batch size/);
    expect(() => memoryNetwork({ vocabSize: 8, sentenceLen: 3, hopz: 2 } as never)).toThrow(/unknown field `hopz`/);
  });

  it('vectorize rejects a sentence longer than sentenceLen and, by default, unknown words', () => {
    const ex = babi.parseBabi('1 Mary went to the kitchen.\n2 Where is Mary?\tkitchen\t1\n');
    const vocab = babi.buildVocab([ex]);
    expect(() => babi.vectorize(ex, vocab, { sentenceLen: 3 })).toThrow(RangeError);
    const other = babi.parseBabi('1 Bob went to the garden.\n2 Where is Bob?\tkitchen\t1\n');
    expect(() => babi.vectorize(other, vocab)).toThrow(/bob/);
    expect(babi.vectorize(other, vocab, { unknown: 'skip' }).queries.shape[0]).toBe(1);
  });

  it('reaches at least 99% test accuracy on bAbI task 1 with the paper recipe', async () => {
    const train = await babi.loadTask(1, { split: 'train' });
    const test = await babi.loadTask(1, { split: 'test' });
    const r = await babiRecipe(train, test, { epochs: 60 });
    expect(1 - r.testError).toBeGreaterThanOrEqual(0.99);
    // The error helper agrees with a prediction made here.
    const again = classificationError(await r.model.predict({ stories: r.test.stories, queries: r.test.queries }), r.test.answers);
    expect(again).toBe(r.testError);
    r.model.dispose();
  });
});

describe('babiJointRecipe', () => {
  it('trains one model on several tasks and reports each task its own test error', async () => {
    const sets = [];
    for (const t of [1, 20]) sets.push({ train: await babi.loadTask(t, { split: 'train' }), test: await babi.loadTask(t, { split: 'test' }) });
    const r = await babiJointRecipe(sets, { embedDim: 20, linearStartEpochs: 5, epochs: 15 });
    expect(r.testErrors).toHaveLength(2);
    expect(r.tests.map((t) => t.answers.shape[0])).toEqual([1000, 1000]);
    // Each task's error is the model's own on that task's test set.
    for (let i = 0; i < 2; i++) {
      const t = r.tests[i]!;
      expect(classificationError(await r.model.predict({ stories: t.stories, queries: t.queries }), t.answers)).toBe(r.testErrors[i]);
    }
    // One vocabulary over both tasks, and the model learned both (chance is below 1 in 6 on either).
    expect(r.vocab.has('kitchen') && r.vocab.has('hungry')).toBe(true);
    for (const e of r.testErrors) expect(e).toBeLessThan(0.2);
    r.model.dispose();
  });

  it('rejects an empty task list and bad epoch counts', async () => {
    await expect(babiJointRecipe([])).rejects.toThrow(RangeError);
    const t = babi.parseBabi('1 Mary went to the kitchen.\n2 Where is Mary?\tkitchen\t1\n');
    await expect(babiRecipe(t, t, { epochs: 1.5 })).rejects.toThrow(/epochs must be a non-negative integer/);
  });
});
