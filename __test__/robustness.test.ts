import { pbkdf2 } from 'node:crypto';
import { mkdirSync, readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  AbortError,
  layers,
  load,
  memoryBudget,
  memoryNetwork,
  optimizers,
  sequential,
  sequentialAsync,
  setMemoryBudget,
  tensor,
  type Model,
  type Tensor,
} from '../src/index.js';
import { tempDir } from './helpers.js';

const ids = (b: number, t: number, v = 1) => tensor(new Int32Array(b * t).map((_, i) => (i * 7 + v) % 10), [b, t]);

function lstmModel(hidden = 16): Model {
  const m = sequential(
    [layers.embedding({ vocabSize: 10, dim: 8 }), layers.lstm({ hiddenSize: hidden, returnSequences: true }), layers.dense({ units: 10 })],
    { seed: 2 },
  );
  m.compile({ optimizer: optimizers.adam(), loss: 'crossEntropy' });
  return m;
}

function decoder(maxMemory?: string): Model {
  const m = sequential(
    [
      layers.embedding({ vocabSize: 10, dim: 16 }),
      layers.positionalEncoding({ maxLen: 4096 }),
      layers.transformerBlock({ dModel: 16, nHeads: 2, causal: true, dropout: 0 }),
      layers.dense({ units: 10 }),
    ],
    { seed: 5, maxMemory },
  );
  m.compile({ optimizer: optimizers.adam(), loss: 'crossEntropy' });
  return m;
}

function bits(m: Model): number[] {
  return Object.values(m.getWeights()).flatMap((t) => Array.from(new Uint32Array(new Float32Array(t.data).buffer)));
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e, 'the call should have been rejected').toBeInstanceOf(Error);
  return e as Error;
}

afterEach(() => setMemoryBudget(undefined));

describe('sizes that do not fit are refused before they are allocated', () => {
  it('names the layer, its sizes, the estimate and the budget', () => {
    setMemoryBudget('12GiB');
    const f = () => sequential([layers.lstm({ inputSize: 8, hiddenSize: 100000 })]);
    expect(f).toThrow(RangeError);
    expect(() => memoryNetwork({ vocabSize: 1e9, sentenceLen: 6, embedDim: 100, hops: 3, memorySize: 50 })).toThrow(
      /memoryNetwork with vocabSize 1000000000, embedDim 100, hops 3, memorySize 50 needs 1\.46 TiB of parameters; the memory budget is 12\.0 GiB/,
    );
    expect(f).toThrow(/layer 0 \(lstm\) with hiddenSize 100000.* needs 149 GiB of parameters, which brings the model to 149 GiB \(and training with Adam to about 4 times that\); the memory budget is 12\.0 GiB \(set by setMemoryBudget\)/);
  });

  it('refuses a huge positional table, and sizes whose product overflows', () => {
    expect(() => sequential([layers.positionalEncoding({ inputSize: 16, maxLen: 2 ** 31 - 1 })])).toThrow(/positionalEncoding.*memory budget/);
    const e = (() => {
      try {
        sequential([layers.embedding({ vocabSize: 2 ** 40, dim: 2 ** 20 })]);
      } catch (err) {
        return err as Error;
      }
    })();
    expect(e).toBeInstanceOf(RangeError);
    expect(e?.message).toMatch(/layer 0 \(embedding\) with dim 1048576, vocabSize 1099511627776 needs 4\.00 EiB of parameters/);
    expect(e?.message).not.toMatch(/capacity overflow/);
    // A list of a million layers is refused before it is even serialised.
    expect(() => sequential(Array.from({ length: 1e6 }, () => layers.dropout({ rate: 0.1 })))).toThrow(
      /sequential: the number of layers must be at most 10000, got 1000000/,
    );
  });

  it('takes ENGRAM_MAX_MEMORY and a per-model maxMemory', () => {
    process.env.ENGRAM_MAX_MEMORY = '1MiB';
    try {
      expect(memoryBudget()).toEqual({ bytes: 2 ** 20, source: 'ENGRAM_MAX_MEMORY' });
      expect(() => sequential([layers.embedding({ vocabSize: 1000, dim: 1000 })])).toThrow(/1\.00 MiB \(ENGRAM_MAX_MEMORY\)/);
      expect(sequential([layers.embedding({ vocabSize: 1000, dim: 1000 })], { maxMemory: '64MiB' }).paramCount).toBe(1e6);
      process.env.ENGRAM_MAX_MEMORY = 'lots';
      expect(() => sequential([layers.dense({ inputSize: 2, units: 2 })])).toThrow(/ENGRAM_MAX_MEMORY must be a size/);
    } finally {
      delete process.env.ENGRAM_MAX_MEMORY;
    }
    expect(memoryBudget().source).toMatch(/half of this machine's/);
    expect(() => sequential([layers.dense({ inputSize: 2, units: 2 })], { maxMemory: -5 })).toThrow(RangeError);
    expect(() => sequential([layers.dense({ inputSize: 2, units: 2 })], { maxMemory: {} as never })).toThrow(TypeError);
  });

  it('refuses a call whose activations do not fit, and the model stays usable', async () => {
    // Attention over 2048 positions: 4 x 2 heads x 2048^2 probabilities, 128 MiB alone.
    const m = decoder('64MiB');
    const err = await rejection(m.predict(ids(4, 2048)));
    expect(err).toBeInstanceOf(RangeError);
    expect(err.message).toMatch(/predict on a batch of shape \[4, 2048\] needs about .* of working memory/);
    const long = await rejection(m.trainStep(ids(4, 2048), ids(4, 2048)));
    expect(long.message).toMatch(/trainStep on a batch of shape \[4, 2048\]/);
    expect((await m.trainStep(ids(2, 8), ids(2, 8))).loss).toBeGreaterThan(0);
  });

  it('refuses to generate more tokens than fit', async () => {
    const m = decoder('64MiB');
    const err = await rejection(m.generate([1, 2], { maxTokens: 1e9 }));
    expect(err).toBeInstanceOf(RangeError);
    expect(err.message).toMatch(/generate of 1000000000 tokens/);
  });

  it('builds large models off the event loop only', async () => {
    const spec = [layers.embedding({ vocabSize: 2 ** 20, dim: 32 })];
    expect(() => sequential(spec)).toThrow(/initialising them would hold the event loop, so build it with await sequentialAsync/);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const m = await sequentialAsync(spec, { seed: 1 });
    clearInterval(timer);
    expect(m.paramCount).toBe(2 ** 25);
    expect(ticks).toBeGreaterThan(0);
    // The same seed builds the same weights either way.
    const small = [layers.embedding({ vocabSize: 50, dim: 4 })];
    expect(bits(await sequentialAsync(small, { seed: 9 }))).toEqual(bits(sequential(small, { seed: 9 })));
  });

  it('copies the weights of a large model off the event loop only', async () => {
    const m = await sequentialAsync([layers.embedding({ vocabSize: 2 ** 20, dim: 32 })], { seed: 1 });
    expect(() => m.getWeights()).toThrow(RangeError);
    expect(() => m.getWeights()).toThrow(/128 MiB of parameters; copying them would hold the event loop, so use await getWeightsAsync/);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const w = await m.getWeightsAsync();
    clearInterval(timer);
    expect(ticks).toBeGreaterThan(0);
    const table = w['0.weight']!;
    expect(table.shape).toEqual([2 ** 20, 32]);
    const twice = new Float32Array(table.data.length);
    for (let i = 0; i < twice.length; i++) twice[i] = 2 * table.data[i]!;
    const doubled = tensor(twice, [2 ** 20, 32]);
    expect(() => m.setWeights({ '0.weight': doubled })).toThrow(/128 MiB of weights would hold the event loop.*setWeightsAsync/);
    // A rejected replacement changes nothing; an accepted one takes every value.
    await expect(m.setWeightsAsync({ '0.wieght': doubled }, { strict: false })).rejects.toThrow(/no parameter "0.wieght"/);
    const same = (a: Tensor, b: Tensor) => Buffer.from(a.data.buffer).equals(Buffer.from(b.data.buffer));
    expect(same((await m.getWeightsAsync())['0.weight']!, table)).toBe(true);
    await m.setWeightsAsync({ '0.weight': doubled });
    expect(same((await m.getWeightsAsync())['0.weight']!, doubled)).toBe(true);
    expect(same(doubled, table)).toBe(false);
    const ac = new AbortController();
    ac.abort();
    await expect(m.getWeightsAsync({ signal: ac.signal })).rejects.toBeInstanceOf(AbortError);
    m.dispose();
  });
});

describe('cancellation', () => {
  it('an aborted trainStep rejects with an AbortError and leaves the weights as they were', async () => {
    const m = lstmModel(256);
    const before = bits(m);
    const ac = new AbortController();
    const p = m.trainStep(ids(32, 2000), ids(32, 2000), { signal: ac.signal });
    setTimeout(() => ac.abort(new Error('enough')), 20);
    const err = await rejection(p);
    expect(err).toBeInstanceOf(AbortError);
    expect(err.name).toBe('AbortError');
    expect((err as AbortError).code).toBe('ABORT_ERR');
    expect((err.cause as Error).message).toBe('enough');
    expect(bits(m)).toEqual(before);
    expect(m.step).toBe(0);
    expect((await m.trainStep(ids(2, 4), ids(2, 4))).loss).toBeGreaterThan(0);
  });

  it('an already aborted signal, or one that aborts while the call waits, rejects at once', async () => {
    const m = lstmModel();
    await expect(m.predict(ids(2, 3), { signal: AbortSignal.abort() })).rejects.toBeInstanceOf(AbortError);
    const ac = new AbortController();
    const first = m.trainStep(ids(2, 3), ids(2, 3));
    const queued = m.trainStep(ids(2, 3), ids(2, 3), { signal: ac.signal });
    ac.abort();
    await expect(queued).rejects.toBeInstanceOf(AbortError);
    await first;
    expect(m.step).toBe(1);
    await expect(m.trainStep(ids(2, 3), ids(2, 3), { signal: 'stop' as never })).rejects.toThrow(/signal must be an AbortSignal/);
  });

  it('generate of very many tokens stops when aborted', async () => {
    const m = decoder();
    const ac = new AbortController();
    const p = m.generate([1, 2], { maxTokens: 1e7, signal: ac.signal });
    setTimeout(() => ac.abort(), 30);
    expect(await rejection(p)).toBeInstanceOf(AbortError);
    expect((await m.generate([1], { maxTokens: 3, temperature: 0 })).length).toBe(3);
  });

  it('dispose cancels the call in flight', async () => {
    const m = decoder();
    const p = m.generate([1, 2], { maxTokens: 1e7 });
    await new Promise((r) => setTimeout(r, 20));
    m.dispose();
    const err = await rejection(p);
    expect(err).toBeInstanceOf(AbortError);
    expect(err.message).toMatch(/disposed/);
    await expect(m.predict(ids(1, 2))).rejects.toThrow(/disposed/);
  });

  it('long calls nobody stops leave the thread pool to fs, crypto and other models', async () => {
    // libuv runs fs and crypto on 4 threads (UV_THREADPOOL_SIZE); six endless engram calls must not hold them.
    const busy = Array.from({ length: 6 }, () => decoder());
    const stop = new AbortController();
    const settled: boolean[] = busy.map(() => false);
    const running = busy.map((m, i) =>
      rejection(m.generate([1, 2], { maxTokens: 1e7, signal: stop.signal })).finally(() => (settled[i] = true)),
    );
    await new Promise((r) => setTimeout(r, 50));
    const text = await readFile(fileURLToPath(import.meta.url), 'utf8');
    const key = await new Promise<Buffer>((ok, fail) => pbkdf2('pw', 'salt', 1000, 32, 'sha256', (e, k) => (e ? fail(e) : ok(k))));
    const other = lstmModel();
    const step = await other.trainStep(ids(2, 3), ids(2, 3));
    expect(text).toContain('long calls nobody stops');
    expect(key.length).toBe(32);
    expect(Number.isFinite(step.loss)).toBe(true);
    expect(settled).toEqual([false, false, false, false, false, false]);
    stop.abort();
    for (const err of await Promise.all(running)) expect(err).toBeInstanceOf(AbortError);
  });

  it('a call made by a worker thread stops when the worker is terminated', async () => {
    // The worker starts an endless generate on the native model directly and is terminated mid-call: the
    // call's thread must stop (no one can await it any more) instead of computing on for hours.
    const binding = fileURLToPath(new URL('../src/binding.cjs', import.meta.url));
    const code = `
      const { Model, CancelToken } = require(${JSON.stringify(binding)});
      const spec = { layers: [{ type: 'embedding', vocabSize: 10, dim: 16 }, { type: 'positionalEncoding', maxLen: 4096 },
        { type: 'transformerBlock', dModel: 16, nHeads: 2, causal: true, dropout: 0 }, { type: 'dense', units: 10 }], seed: 5, dtype: 'float32' };
      const m = Model.create(JSON.stringify(spec));
      m.generate(Int32Array.from([1, 2]), JSON.stringify({ maxTokens: 1e7, temperature: 1, seed: 1 }), new CancelToken()).catch(() => {});
      require('node:worker_threads').parentPort.postMessage('started');
    `;
    const cpuOver = async (ms: number) => {
      const before = process.cpuUsage();
      await new Promise((r) => setTimeout(r, ms));
      const d = process.cpuUsage(before);
      return (d.user + d.system) / 1000 / ms;
    };
    const w = new Worker(code, { eval: true });
    await new Promise((r) => w.once('message', r));
    expect(await cpuOver(500)).toBeGreaterThan(0.3); // the call is running: about a core when the machine is idle
    await w.terminate();
    await new Promise((r) => setTimeout(r, 100));
    expect(await cpuOver(500)).toBeLessThan(0.2); // and it stopped with its worker
  });

  it('light getters answer while a call runs, and a queued evaluate waits its turn', async () => {
    const m = decoder();
    const stop = new AbortController();
    const running = rejection(m.generate([1, 2], { maxTokens: 1e7, signal: stop.signal }));
    await new Promise((r) => setTimeout(r, 20));
    expect(m.summary({ print: false })).toMatch(/transformerBlock/);
    expect(m.step).toBe(0);
    expect(m.learningRate).toBeGreaterThan(0);
    expect(m.compileOptions?.loss).toEqual({ type: 'crossEntropy', ignoreIndex: -100, reduction: 'mean' });
    expect(m.paramCount).toBeGreaterThan(0);
    expect(m.memoryBytes).toBeGreaterThan(0);
    const evaluated = m.evaluate(ids(2, 3), ids(2, 3));
    stop.abort();
    expect(await running).toBeInstanceOf(AbortError);
    expect(Number.isFinite((await evaluated).loss)).toBe(true);
    await m.trainStep(ids(2, 3), ids(2, 3));
    expect(m.step).toBe(1);
  });

  it('fit stopped by its signal resolves with the history of the epochs that finished', async () => {
    const m = lstmModel();
    const ac = new AbortController();
    const h = await m.fit(ids(64, 6), ids(64, 6), {
      epochs: 1000,
      batchSize: 8,
      verbose: 0,
      signal: ac.signal,
      callbacks: { onEpochEnd: (epoch) => (epoch === 2 ? ac.abort() : undefined) },
    });
    expect(h.aborted).toBe(true);
    expect(h.epoch).toEqual([0, 1, 2]);
    expect(m.step).toBe(24);
  });

  it('an aborted save leaves the file as it was, and no temporary file', async () => {
    const dir = tempDir();
    const path = join(dir, 'm.safetensors');
    const m = lstmModel();
    await m.save(path);
    await expect(m.save(path, { signal: AbortSignal.abort() })).rejects.toBeInstanceOf(AbortError);
    expect(readdirSync(dir)).toEqual(['m.safetensors']);
    expect((await load(path)).paramCount).toBe(m.paramCount);
  });
});

describe('errors name what went wrong', () => {
  it('a property of the wrong type is a TypeError naming it', () => {
    const m = lstmModel();
    for (const bad of ['3', null, {}]) {
      expect(() => {
        m.learningRate = bad as never;
      }).toThrow(/^learningRate must be a number/);
    }
    expect(() => m.setWeights({}, { strict: 'yes' as never })).toThrow(TypeError);
  });

  it('file errors carry the code and the path, as fs errors do', async () => {
    const m = lstmModel();
    const missing = '/no/such/dir/m.safetensors';
    const e = (await rejection(m.save(missing))) as NodeJS.ErrnoException;
    expect(e.code).toBe('ENOENT');
    expect(e.path).toBe(missing);
    expect(e.message).toBe(`save ${missing}: No such file or directory (ENOENT)`);
    const dir = tempDir();
    mkdirSync(join(dir, 'folder'));
    const isDir = (await rejection(m.save(join(dir, 'folder')))) as NodeJS.ErrnoException;
    expect(isDir.code).toBe('EISDIR');
    const notThere = (await rejection(load(join(dir, 'nothing.safetensors')))) as NodeJS.ErrnoException;
    expect(notThere.code).toBe('ENOENT');
    expect(notThere.message).toMatch(/^load .*nothing\.safetensors: No such file or directory/);
    expect(((await rejection(load(join(dir, 'folder')))) as NodeJS.ErrnoException).code).toBe('EISDIR');
  });
});
