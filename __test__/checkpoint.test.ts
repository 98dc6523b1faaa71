import { spawn } from 'node:child_process';
import { copyFileSync, readFileSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import {
  callbacks,
  importTorch,
  layers,
  load,
  optimizers,
  schedules,
  sequential,
  tensor,
  type Callback,
  type Model,
  type Tensor,
} from '../src/index.js';
import { seededRandom as rand } from '../src/batching.js';
import { LSTM_FIXTURE, readSafetensors, tempDir } from './helpers.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SAVE_LOOP = fileURLToPath(new URL('./fixtures/save-loop.ts', import.meta.url));

// ---------------------------------------------------------------------------------------------------------------
// Helpers

/** A safetensors file as raw parts: its metadata and each tensor's dtype, shape and bytes. */
interface RawFile {
  metadata: Record<string, string>;
  tensors: Record<string, { dtype: string; shape: number[]; bytes: Buffer }>;
}

function readRaw(path: string): RawFile {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
  const out: RawFile = { metadata: {}, tensors: {} };
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') {
      out.metadata = info as Record<string, string>;
      continue;
    }
    const { dtype, shape, data_offsets: [s, e] } = info as { dtype: string; shape: number[]; data_offsets: [number, number] };
    out.tensors[name] = { dtype, shape, bytes: buf.subarray(8 + n + s, 8 + n + e) };
  }
  return out;
}

/** The optimizer step stored in a checkpoint's header. */
const storedStep = (path: string): number => Number(readRaw(path).metadata['engram.optimizer.step']);

function bytesOf(t: Tensor): Buffer {
  return Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

/** Asserts two weight records have the same names, shapes and the very same bytes, naming the first difference. */
function expectSameBytes(actual: Record<string, Tensor>, expected: Record<string, Tensor>, what: string): void {
  expect(Object.keys(actual).sort(), `${what}: parameter names`).toEqual(Object.keys(expected).sort());
  for (const [name, e] of Object.entries(expected)) {
    const a = actual[name]!;
    expect(a.shape, `${what}: ${name} shape`).toEqual(e.shape);
    expect(a.data.constructor, `${what}: ${name} dtype`).toBe(e.data.constructor);
    if (bytesOf(a).equals(bytesOf(e))) continue;
    const i = a.data.findIndex((v, k) => !Object.is(v, e.data[k]));
    expect.fail(`${what}: ${name}[${i}] is ${a.data[i]} but expected ${e.data[i]} (bitwise)`);
  }
}

/** Whether two weight records differ in any byte. */
function anyByteDiffers(a: Record<string, Tensor>, b: Record<string, Tensor>): boolean {
  return Object.keys(b).some((k) => !bytesOf(a[k]!).equals(bytesOf(b[k]!)));
}

const VOCAB = 12;
const SEQ = 8;

/** Next-token rows: id t+1 follows id t by a per-row stride, with some noise in the targets. */
function tokenData(rows: number, seed: number): { x: Tensor; y: Tensor } {
  const r = rand(seed);
  const x = new Int32Array(rows * SEQ);
  const y = new Int32Array(rows * SEQ);
  for (let b = 0; b < rows; b++) {
    const start = Math.floor(r() * VOCAB);
    const stride = 1 + (b % 3);
    for (let t = 0; t < SEQ; t++) {
      const id = (start + stride * t) % VOCAB;
      x[b * SEQ + t] = id;
      y[b * SEQ + t] = r() < 0.1 ? Math.floor(r() * VOCAB) : (id + stride) % VOCAB;
    }
  }
  return { x: tensor(x, [rows, SEQ]), y: tensor(y, [rows, SEQ]) };
}

/** Embedding, a 2-layer LSTM with dropout between its layers, a dropout layer and a dense head. */
function dropoutModel(): Model {
  const m = sequential(
    [
      layers.embedding({ vocabSize: VOCAB, dim: 8 }),
      layers.lstm({ hiddenSize: 16, numLayers: 2, returnSequences: true, dropout: 0.25 }),
      layers.dropout({ rate: 0.2 }),
      layers.dense({ units: VOCAB }),
    ],
    { seed: 21 },
  );
  m.compile({
    optimizer: optimizers.adam({ learningRate: 2e-2, clipNorm: 0.5 }),
    loss: 'crossEntropy',
    metrics: ['accuracy', 'perplexity'],
  });
  return m;
}

// 26 training rows in batches of 4: 7 batches per pass, the last of 2 rows.
const train = tokenData(26, 1);
const val = tokenData(8, 2);
const BATCHES_PER_PASS = 7;

/** fit options shared by the straight and the resumed runs; the schedule spans `scheduleEpochs` (default 4) epochs. */
function fitOptions(extra: { seed?: number; stepsPerEpoch?: number; callbacks?: Callback[]; scheduleEpochs?: number } = {}) {
  const perEpoch = extra.stepsPerEpoch ?? BATCHES_PER_PASS;
  return {
    batchSize: 4,
    seed: extra.seed ?? 5,
    shuffle: true,
    validationData: [val.x, val.y] as [Tensor, Tensor],
    verbose: 0 as const,
    ...(extra.stepsPerEpoch === undefined ? {} : { stepsPerEpoch: extra.stepsPerEpoch }),
    callbacks: [schedules.cosine({ totalSteps: (extra.scheduleEpochs ?? 4) * perEpoch, warmupSteps: 3 }), ...(extra.callbacks ?? [])],
  };
}

/** Asserts a resumed run's History is the uninterrupted run's from `from` on, value for value. */
function expectHistoryTail(
  resumed: { epoch: number[]; history: Record<string, number[]> },
  straight: { epoch: number[]; history: Record<string, number[]> },
  from: number,
): void {
  expect(resumed.epoch).toEqual(straight.epoch.slice(from));
  expect(Object.keys(resumed.history).sort()).toEqual(Object.keys(straight.history).sort());
  for (const [k, v] of Object.entries(straight.history)) expect(resumed.history[k], `history.${k}`).toEqual(v.slice(from));
}

// ---------------------------------------------------------------------------------------------------------------

describe('resuming from a checkpoint', () => {
  it('continues bit-identically: weights, step and History, with dropout, clipping and a cosine schedule', async () => {
    const straight = dropoutModel();
    const hs = await straight.fit(train.x, train.y, { epochs: 4, ...fitOptions() });
    expect(hs.epoch).toEqual([0, 1, 2, 3]);
    expect(straight.step).toBe(4 * BATCHES_PER_PASS);
    // The schedule ran: warm-up then decay, so the rates of the epochs' last steps all differ.
    expect(new Set(hs.history.lr).size).toBe(4);
    for (const k of ['loss', 'accuracy', 'perplexity', 'val_loss', 'val_accuracy', 'val_perplexity', 'lr']) {
      expect(hs.history[k], k).toHaveLength(4);
    }

    const dir = tempDir();
    const path = join(dir, 'half.safetensors');
    const first = dropoutModel();
    const h1 = await first.fit(train.x, train.y, { epochs: 2, ...fitOptions() });
    // The first two epochs match the straight run's too (the same code path as the straight run, so far).
    expect(h1.epoch).toEqual([0, 1]);
    for (const [k, v] of Object.entries(hs.history)) expect(h1.history[k], `first half history.${k}`).toEqual(v.slice(0, 2));
    await first.save(path);
    const halfWeights = first.getWeights();
    first.dispose();
    expect(readdirSync(dir)).toEqual(['half.safetensors']); // no temporary file left behind

    const resumed = await load(path);
    expect(resumed.step).toBe(2 * BATCHES_PER_PASS);
    expectSameBytes(resumed.getWeights(), halfWeights, 'loaded checkpoint');
    const hr = await resumed.fit(train.x, train.y, { initialEpoch: 2, epochs: 4, ...fitOptions() });
    expectSameBytes(resumed.getWeights(), straight.getWeights(), 'resumed vs straight');
    expect(resumed.step).toBe(straight.step);
    expect(resumed.learningRate).toBe(straight.learningRate);
    expectHistoryTail(hr, hs, 2);

    // Negative controls: the comparison does fail when the resumed run differs. Another shuffling seed ...
    const otherSeed = await load(path);
    await otherSeed.fit(train.x, train.y, { initialEpoch: 2, epochs: 4, ...fitOptions({ seed: 6 }) });
    expect(anyByteDiffers(otherSeed.getWeights(), straight.getWeights())).toBe(true);
    // ... and the weights alone, without the optimizer moments and the dropout generator's state.
    const weightsOnly = dropoutModel();
    weightsOnly.setWeights(halfWeights);
    const hw = await weightsOnly.fit(train.x, train.y, { initialEpoch: 2, epochs: 4, ...fitOptions() });
    expect(anyByteDiffers(weightsOnly.getWeights(), straight.getWeights())).toBe(true);
    expect(hw.history.loss).not.toEqual(hs.history.loss!.slice(2));
    for (const m of [straight, resumed, otherSeed, weightsOnly]) m.dispose();
  });

  it('continues bit-identically with stepsPerEpoch not aligned to the passes over the data', async () => {
    // 3 batches per epoch over 7 per pass: epoch 2 starts at batch 6 of pass 0 and ends in pass 1.
    const steps = 3;
    const straight = dropoutModel();
    const hs = await straight.fit(train.x, train.y, { epochs: 4, ...fitOptions({ stepsPerEpoch: steps }) });
    expect(straight.step).toBe(4 * steps);

    const path = join(tempDir(), 'steps.safetensors');
    const first = dropoutModel();
    await first.fit(train.x, train.y, { epochs: 2, ...fitOptions({ stepsPerEpoch: steps }) });
    await first.save(path);
    first.dispose();
    const resumed = await load(path);
    expect(resumed.step).toBe(2 * steps);
    const hr = await resumed.fit(train.x, train.y, { initialEpoch: 2, epochs: 4, ...fitOptions({ stepsPerEpoch: steps }) });
    expectSameBytes(resumed.getWeights(), straight.getWeights(), 'resumed vs straight (stepsPerEpoch)');
    expect(resumed.step).toBe(straight.step);
    expectHistoryTail(hr, hs, 2);

    // Control: resuming as if each epoch restarted the pass (epoch 2 from batch 0 of a pass) differs, so the
    // test would notice batches that do not continue across passes.
    const misaligned = await load(path);
    await misaligned.fit(train.x, train.y, { epochs: 2, ...fitOptions({ stepsPerEpoch: steps }) });
    expect(misaligned.step).toBe(straight.step);
    expect(anyByteDiffers(misaligned.getWeights(), straight.getWeights())).toBe(true);
    for (const m of [straight, resumed, misaligned]) m.dispose();
  });
});

describe('callbacks.modelCheckpoint', () => {
  it('writes one file per epoch, and resuming from the epoch-2 file matches the uninterrupted run', async () => {
    const dir = tempDir();
    const straight = dropoutModel();
    await straight.fit(train.x, train.y, {
      epochs: 4,
      ...fitOptions({ callbacks: [callbacks.modelCheckpoint({ path: join(dir, 'ckpt-{epoch}.safetensors') })] }),
    });
    expect(readdirSync(dir).sort()).toEqual([1, 2, 3, 4].map((e) => `ckpt-${e}.safetensors`));
    for (const e of [1, 2, 3, 4]) expect(storedStep(join(dir, `ckpt-${e}.safetensors`)), `ckpt-${e} step`).toBe(e * BATCHES_PER_PASS);

    const last = await load(join(dir, 'ckpt-4.safetensors'));
    expectSameBytes(last.getWeights(), straight.getWeights(), 'ckpt-4 vs the trained model');
    last.dispose();

    // Resume from ckpt-2 (after epochs 0 and 1), checkpointing into another folder: the final weights match,
    // and so does the whole epoch-4 checkpoint, optimizer moments, step, rate and generator state included.
    const dir2 = tempDir();
    const resumed = await load(join(dir, 'ckpt-2.safetensors'));
    await resumed.fit(train.x, train.y, {
      initialEpoch: 2,
      epochs: 4,
      ...fitOptions({ callbacks: [callbacks.modelCheckpoint({ path: join(dir2, 'ckpt-{epoch}.safetensors') })] }),
    });
    expectSameBytes(resumed.getWeights(), straight.getWeights(), 'resumed from ckpt-2 vs straight');
    expect(readdirSync(dir2).sort()).toEqual(['ckpt-3.safetensors', 'ckpt-4.safetensors']);
    const a = readRaw(join(dir, 'ckpt-4.safetensors'));
    const b = readRaw(join(dir2, 'ckpt-4.safetensors'));
    expect(b.metadata).toEqual(a.metadata);
    expect(Object.keys(b.tensors).sort()).toEqual(Object.keys(a.tensors).sort());
    expect(Object.keys(a.tensors).filter((k) => k.startsWith('__optimizer__/')).length).toBeGreaterThan(0);
    for (const [k, t] of Object.entries(a.tensors)) {
      expect(b.tensors[k]!.shape, k).toEqual(t.shape);
      expect(b.tensors[k]!.bytes.equals(t.bytes), `${k} bytes`).toBe(true);
    }
    straight.dispose();
    resumed.dispose();
  });

  it('with saveBestOnly rewrites the file only when val_loss improves', async () => {
    const dir = tempDir();
    const path = join(dir, 'best.safetensors');
    // The model's real val_loss, with a scripted bump on top so that some epochs do not improve.
    const bump = [0, 0, 5, 0, 5, 5, 0];
    const seen: { epoch: number; valLoss: number; step: number; fileStep: number | undefined; ino: number | undefined }[] = [];
    const spy: Callback = {
      onEpochEnd(epoch, logs, model) {
        const exists = readdirSync(dir).includes('best.safetensors');
        seen.push({
          epoch,
          valLoss: logs.val_loss!,
          step: model.step,
          fileStep: exists ? storedStep(path) : undefined,
          ino: exists ? statSync(path).ino : undefined,
        });
      },
    };
    const bumper: Callback = {
      onEpochEnd(epoch, logs) {
        logs.val_loss = logs.val_loss! + bump[epoch]!;
      },
    };
    const m = dropoutModel();
    await m.fit(train.x, train.y, {
      epochs: bump.length,
      ...fitOptions({
        scheduleEpochs: bump.length,
        callbacks: [bumper, callbacks.modelCheckpoint({ path, monitor: 'val_loss', saveBestOnly: true }), spy],
      }),
    });
    expect(seen).toHaveLength(bump.length);
    // What the file must hold after each epoch: the step of the last epoch whose val_loss beat all before it.
    let best = Infinity;
    let bestStep = -1;
    const savedAt: number[] = [];
    for (const s of seen) {
      if (s.valLoss < best) {
        best = s.valLoss;
        bestStep = s.step;
        savedAt.push(s.epoch);
      }
      expect(s.fileStep, `file step after epoch ${s.epoch}`).toBe(bestStep);
    }
    // The bumped epochs (2, 4, 5) never improve; the model, still learning, improves on some of the others.
    expect(savedAt[0]).toBe(0);
    expect(savedAt.every((e) => bump[e] === 0)).toBe(true);
    expect(savedAt.length).toBeGreaterThanOrEqual(3);
    // An epoch that did not improve left the very same file (same inode: no rename over it).
    for (let i = 1; i < seen.length; i++) {
      if (seen[i]!.fileStep === seen[i - 1]!.fileStep) expect(seen[i]!.ino, `inode after epoch ${i}`).toBe(seen[i - 1]!.ino);
      else expect(seen[i]!.ino, `inode after epoch ${i}`).not.toBe(seen[i - 1]!.ino);
    }
    expect(readdirSync(dir)).toEqual(['best.safetensors']);
    const loaded = await load(path);
    expect(loaded.step).toBe(bestStep);
    loaded.dispose();
    m.dispose();
  });
});

// ---------------------------------------------------------------------------------------------------------------

/** Runs the save loop until `ms` after it is ready, then SIGKILLs it; resolves to the versions it reported. */
function runAndKill(path: string, ms: number): Promise<{ ready: number; lastSaved: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', SAVE_LOOP, path], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    let ready = -1;
    let lastSaved = -1;
    let timer: NodeJS.Timeout | undefined;
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
      for (const m of out.matchAll(/^(ready|saved) (\d+)\n/gm)) {
        const v = Number(m[2]);
        if (m[1] === 'ready' && ready < 0) {
          ready = v;
          timer = setTimeout(() => child.kill('SIGKILL'), ms);
        }
        lastSaved = Math.max(lastSaved, v);
      }
    });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => void (err += chunk));
    const guard = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('error', reject);
    // 'close', not 'exit': by then every line the writer printed has been read.
    child.on('close', (code, signal) => {
      clearTimeout(guard);
      clearTimeout(timer);
      if (signal !== 'SIGKILL' || ready < 0) {
        reject(new Error(`save loop exited with ${code ?? signal} before it was killed:\n${err}`));
      } else {
        resolve({ ready, lastSaved });
      }
    });
  });
}

describe('a checkpoint writer killed mid-write', () => {
  it('leaves a file that loads as one whole version, never a mix', async () => {
    const dir = tempDir();
    const path = join(dir, 'ckpt.safetensors');
    const report: string[] = [];
    const tmpSeen = new Set<string>();
    let previous = 0;
    try {
      for (let round = 0; round < 5; round++) {
        const ms = 50 + Math.floor(Math.random() * 350);
        const { ready, lastSaved } = await runAndKill(path, ms);
        const tmp = readdirSync(dir).filter((f) => /^\.ckpt\.safetensors\..*\.tmp$/.test(f) && !tmpSeen.has(f));
        for (const f of tmp) tmpSeen.add(f);
        const tmpSizes = tmp.map((f) => statSync(join(dir, f)).size);

        // Every version the writer reported saved is on disk, or the one after it if the kill came between its
        // rename and its print.
        expect(ready, 'each run resumes from the version the last one left').toBe(previous + 1);
        const model = await load(path);
        const v = model.step;
        expect([lastSaved, lastSaved + 1], `round ${round}: the loaded version`).toContain(v);
        expect(model.learningRate, `round ${round}: learning rate of version ${v}`).toBe(v);
        const w = model.getWeights();
        expect(Object.keys(w).sort()).toEqual(['0.bias', '0.weight']);
        expect(w['0.weight']!.shape).toEqual([2000, 1000]);
        for (const [name, t] of Object.entries(w)) {
          const bad = t.data.findIndex((x) => x !== v);
          expect(bad, `round ${round}: ${name}[${bad}] is ${t.data[bad]}, not ${v}: a mix of versions`).toBe(-1);
        }
        expect(model.config.layers).toMatchObject([{ type: 'dense', inputSize: 1000, units: 2000 }]);
        expect(model.compileOptions?.loss).toEqual({ type: 'mse' });
        expect(model.compileOptions?.optimizer.type).toBe('adam');
        model.dispose();
        const left = tmp.length === 0 ? 'no new temporary file' : `new temporary file(s) of ${tmpSizes.join(', ')} bytes`;
        report.push(`round ${round}: killed ${ms} ms after ready (versions ${ready}..${lastSaved} reported, ${v} on disk), ${left}`);
        previous = v;
      }
      console.log(
        `checkpoint kill test (${statSync(path).size} bytes per save):\n  ${report.join('\n  ')}\n  ` +
          (tmpSeen.size > 0
            ? `${tmpSeen.size} leftover temporary file(s): at least one kill landed inside a save (temporary file created, not yet renamed), and the target file survived it`
            : 'no leftover temporary files: no kill landed mid-write this time'),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true }); // the checkpoints and leftovers are 24 MB each
    }
  }, 60_000);
});

describe('damaged checkpoints', () => {
  it('are rejected with an error naming the file, whatever was cut or changed', async () => {
    const dir = tempDir();
    const good = join(dir, 'good.safetensors');
    const m = dropoutModel();
    await m.fit(train.x, train.y, { epochs: 1, ...fitOptions() });
    await m.save(good);
    m.dispose();
    const bytes = readFileSync(good);
    const headerLen = Number(bytes.readBigUInt64LE(0));
    const header = bytes.subarray(8, 8 + headerLen).toString('utf8');

    const damaged: [string, Buffer][] = [];
    for (const [tag, len] of [
      ['cut10', 10],
      ['cutheader', 8 + Math.floor(headerLen / 2)],
      ['cutdata', 8 + headerLen + Math.floor((bytes.length - 8 - headerLen) / 2)],
      ['cutlast', bytes.length - 1],
    ] as const) {
      damaged.push([tag, bytes.subarray(0, len)]);
    }
    const longer = Buffer.from(bytes);
    longer.writeBigUInt64LE(BigInt(headerLen + 1), 0);
    damaged.push(['headerlen', longer]);
    const hugeLen = Buffer.from(bytes);
    hugeLen.writeBigUInt64LE(2n ** 40n, 0);
    damaged.push(['hugelen', hugeLen]);
    // Same length, one character changed: the JSON breaks, or a tensor's dtype no longer fits its bytes.
    const patch = (from: string, to: string): Buffer => {
      const at = header.indexOf(from);
      expect(at, `header contains ${from}`).toBeGreaterThanOrEqual(0);
      const b = Buffer.from(bytes);
      b.write(to, 8 + at, 'utf8');
      return b;
    };
    damaged.push(['brace', patch('{', '[')]);
    damaged.push(['dtype', patch('"F32"', '"F16"')]);
    damaged.push(['extra', Buffer.concat([bytes, Buffer.from('trailing')])]);

    for (const [tag, b] of damaged) {
      const p = join(dir, `${tag}.safetensors`);
      writeFileSync(p, b);
      const err = await load(p).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err, `${tag}: load should reject`).toBeInstanceOf(Error);
      expect((err as Error).message, tag).toContain(p);
      expect((err as Error).message, tag).toMatch(/not a valid safetensors file \(truncated or corrupt\?\)/);
    }
    // Control: an undamaged copy loads.
    const copy = join(dir, 'copy.safetensors');
    copyFileSync(good, copy);
    const ok = await load(copy);
    expect(ok.step).toBe(BATCHES_PER_PASS);
    ok.dispose();
    // Truncating the good file in place (as a crash of a non-atomic writer would) is caught the same way.
    truncateSync(copy, bytes.length - 3);
    await expect(load(copy)).rejects.toThrow(new RegExp(`${basename(copy).replace('.', '\\.')}: not a valid safetensors`));
  });

  it('are rejected when the stored model spec is damaged', async () => {
    const dir = tempDir();
    const good = join(dir, 'good.safetensors');
    const m = dropoutModel();
    await m.save(good);
    m.dispose();
    const bytes = readFileSync(good);
    const headerLen = Number(bytes.readBigUInt64LE(0));
    const at = bytes.subarray(8, 8 + headerLen).toString('utf8').indexOf('hiddenSize');
    expect(at).toBeGreaterThan(0);
    const b = Buffer.from(bytes);
    b.write('hiddenSise', 8 + at, 'utf8');
    const p = join(dir, 'spec.safetensors');
    writeFileSync(p, b);
    await expect(load(p)).rejects.toThrow(/spec\.safetensors: the stored model spec is invalid.*hiddenSise/);
  });
});

// ---------------------------------------------------------------------------------------------------------------

/** Writes F32 tensors as a safetensors file (8-byte little-endian header length, JSON header, raw bytes). */
function writeSafetensors(path: string, tensors: Record<string, { data: Float32Array; shape: number[] }>): void {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  const parts: Buffer[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    parts.push(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + json.length) % 8)) % 8); // pad so the data starts 8-aligned, as safetensors does
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)), 0);
  writeFileSync(path, Buffer.concat([len, Buffer.from(json), ...parts]));
}

describe('importTorch', () => {
  function lstmModel(): Model {
    return sequential(
      [layers.embedding({ vocabSize: 11, dim: 8 }), layers.lstm({ hiddenSize: 16, numLayers: 2, returnSequences: true }), layers.dense({ units: 11 })],
      { seed: 1 },
    );
  }

  it('loads a PyTorch safetensors file with a prefix exactly as loadWeights does', async () => {
    // The fixture holds the weights after one Adam step under `adam1.<name>` (scripts/make-fixtures.py).
    const fx = readSafetensors(LSTM_FIXTURE);
    const viaImport = lstmModel();
    const viaLoad = lstmModel();
    const before = viaImport.getWeights();
    await importTorch(viaImport, LSTM_FIXTURE, { prefix: 'adam1.' });
    await viaLoad.loadWeights(LSTM_FIXTURE, { prefix: 'adam1.' });
    const w = viaImport.getWeights();
    expectSameBytes(w, viaLoad.getWeights(), 'importTorch vs loadWeights');
    expectSameBytes(w, Object.fromEntries(Object.keys(w).map((k) => [k, fx[`adam1.${k}`]!])), 'importTorch vs the file');
    expect(anyByteDiffers(w, before)).toBe(true);
    // Another prefix, other weights: the prefix selects what is read.
    await importTorch(viaLoad, LSTM_FIXTURE, { prefix: 'sgd.' });
    expectSameBytes(viaLoad.getWeights(), Object.fromEntries(Object.keys(w).map((k) => [k, fx[`sgd.${k}`]!])), 'prefix sgd.');
    viaImport.dispose();
    viaLoad.dispose();
  });

  it('reads a hand-written state_dict under a prefix, ignores other entries, and names what is missing', async () => {
    const dir = tempDir();
    const file = join(dir, 'torch.safetensors');
    const weight = Float32Array.from({ length: 6 }, (_, i) => i / 7 - 0.25);
    const bias = Float32Array.from([0.5, -1.5]);
    writeSafetensors(file, {
      'net.0.weight': { data: weight, shape: [2, 3] },
      'net.0.bias': { data: bias, shape: [2] },
      'net.1.running_mean': { data: new Float32Array(4).fill(9), shape: [4] }, // a buffer the model does not have
      '0.weight': { data: new Float32Array(6).fill(3), shape: [2, 3] }, // outside the prefix
    });
    const model = sequential([layers.dense({ inputSize: 3, units: 2 })], { seed: 2 });
    await importTorch(model, file, { prefix: 'net.' });
    expectSameBytes(model.getWeights(), { '0.weight': tensor(weight, [2, 3]), '0.bias': tensor(bias, [2]) }, 'imported');
    const out = await model.predict(tensor(Float32Array.from([1, 0, 0]), [1, 3]));
    expect(Array.from(out.data)).toEqual([Math.fround(weight[0]! + bias[0]!), Math.fround(weight[3]! + bias[1]!)]);

    // A wrong prefix finds no parameter; a file without the bias names it; a wrong shape names the parameter.
    const kept = model.getWeights();
    await expect(importTorch(model, file, { prefix: 'model.' })).rejects.toThrow(
      /torch\.safetensors: .*missing parameters \["0\.weight", "0\.bias"\]/,
    );
    const noBias = join(dir, 'nobias.safetensors');
    writeSafetensors(noBias, { 'net.0.weight': { data: weight, shape: [2, 3] } });
    await expect(importTorch(model, noBias, { prefix: 'net.' })).rejects.toThrow(/nobias\.safetensors: .*missing parameters \["0\.bias"\]/);
    const wrongShape = join(dir, 'shape.safetensors');
    writeSafetensors(wrongShape, { 'net.0.weight': { data: weight, shape: [3, 2] }, 'net.0.bias': { data: bias, shape: [2] } });
    await expect(importTorch(model, wrongShape, { prefix: 'net.' })).rejects.toThrow(/shape\.safetensors: .*0\.weight must have shape \[2, 3\]/);
    expectSameBytes(model.getWeights(), kept, 'after the failed imports');
    await expect(importTorch({} as Model, file)).rejects.toThrow(TypeError);
    model.dispose();
  });

  it('with initialValueThreshold a resumed saveBestOnly keeps a better file from before', async () => {
    const dir = tempDir();
    const path = join(dir, 'best.safetensors');
    const m = dropoutModel();
    const check = callbacks.modelCheckpoint({ path, saveBestOnly: true, initialValueThreshold: -1 });
    await m.fit(train.x, train.y, { epochs: 2, ...fitOptions({ scheduleEpochs: 2, callbacks: [check] }) });
    // No loss beats -1: nothing is written.
    expect(readdirSync(dir)).toEqual([]);
    const loose = callbacks.modelCheckpoint({ path, saveBestOnly: true, initialValueThreshold: 1e9 });
    await m.fit(train.x, train.y, { epochs: 1, ...fitOptions({ scheduleEpochs: 1, callbacks: [loose] }) });
    expect(readdirSync(dir)).toEqual(['best.safetensors']);
    expect(() => callbacks.modelCheckpoint({ path, initialValueThreshold: '1' as never })).toThrow(TypeError);
    m.dispose();
  });
});
