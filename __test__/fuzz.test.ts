// Random calls over the whole public API, as a careless user would make them: specs with wrong, huge and
// absurd sizes, inputs of every wrong kind, bad options, files that are truncated, corrupt, a folder or
// missing, disposal mid-call, concurrent calls and aborted ones. Seeded, so a failure replays. It asserts that
// the process lives, that every call settles (a rejection is an Error subclass with a message of our own, not
// a conversion or internal error), and that good calls interleaved with the rejected ones give, bit for bit,
// what the same good calls give alone.
import { copyFileSync, mkdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import {
  AbortError,
  layers,
  load,
  memoryBudget,
  memoryNetwork,
  optimizers,
  sequential,
  setMemoryBudget,
  tensor,
  type Model,
} from '../src/index.js';
import { seededRandom } from '../src/batching.js';
import { tempDir } from './helpers.js';

const CALLS = Number(process.env.ENGRAM_FUZZ_CALLS ?? 10_000);
const SEED = Number(process.env.ENGRAM_FUZZ_SEED ?? 20261202);

const rand = seededRandom(SEED);
const int = (n: number) => Math.floor(rand() * n);
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;

/** Values of every wrong kind, and sizes from sensible to absurd. */
const JUNK: unknown[] = [undefined, null, NaN, -1, 0, 1.5, Infinity, -Infinity, 2 ** 53, 1e300, '', '8', 'abc', true, {}, [], [1, 2], () => 1, new Float32Array(3), new Uint8Array(2), Symbol.iterator];
const SIZES: unknown[] = [0, -3, 1.5, NaN, 2 ** 31 - 1, 2 ** 40, 1e9, 1e18, '8', null, 3, 8, 2 ** 20];

function junk(): unknown {
  return pick(JUNK);
}

function size(): unknown {
  return rand() < 0.5 ? 1 + int(6) : pick(SIZES);
}

function randomSpec(): unknown {
  const kinds = ['embedding', 'dense', 'lstm', 'gru', 'rnn', 'dropout', 'multiHeadAttention', 'positionalEncoding', 'layerNorm', 'transformerBlock', 'conv'];
  const fields = ['vocabSize', 'dim', 'units', 'hiddenSize', 'numLayers', 'inputSize', 'nHeads', 'dModel', 'maxLen', 'ffDim', 'rate', 'dropout'];
  const spec: Record<string, unknown> = { type: rand() < 0.95 ? pick(kinds) : junk() };
  const n = int(5);
  for (let i = 0; i < n; i++) spec[pick(fields)] = size();
  if (rand() < 0.1) spec[pick(['bidirectional', 'causal', 'returnSequences', 'stateful', 'maskZero'])] = rand() < 0.5 ? junk() : true;
  return rand() < 0.05 ? junk() : spec;
}

/** A tensor that is wrong for the small models below in at least one way. */
function badTensor(): unknown {
  switch (int(9)) {
    case 0:
      return junk();
    case 1:
      return { data: new Int32Array(5), shape: [2, 3] }; // shape and data disagree
    case 2:
      return { data: new Float32Array(6), shape: [2, 3] }; // floats where ids go
    case 3:
      return tensor(new Int32Array(6).fill(99), [2, 3]); // ids past the vocabulary
    case 4:
      return tensor(new Int32Array(6).fill(-1), [2, 3]);
    case 5:
      return { data: new Int32Array(0), shape: [0, 3] };
    case 6:
      return { data: [1, 2, 3], shape: [1, 3] };
    case 7:
      return { data: new Int32Array(4), shape: [2, 2 ** 31] };
    default:
      return { data: new Int32Array(6), shape: pick([[6], [1, 2, 3], [2, -3], [2, 3.5], 'x', null]) };
  }
}

const ids = (b: number, t: number, off: number) => tensor(Int32Array.from({ length: b * t }, (_, i) => (i * 3 + off) % 10), [b, t]);

function mainModel(): Model {
  const m = sequential(
    [layers.embedding({ vocabSize: 10, dim: 8 }), layers.lstm({ hiddenSize: 8, returnSequences: true }), layers.dropout({ rate: 0.1 }), layers.dense({ units: 10 })],
    { seed: 11 },
  );
  m.compile({ optimizer: optimizers.adam({ learningRate: 0.01 }), loss: 'crossEntropy', metrics: ['accuracy'] });
  return m;
}

function decoder(): Model {
  const m = sequential(
    [
      layers.embedding({ vocabSize: 10, dim: 8 }),
      layers.positionalEncoding({ maxLen: 16 }),
      layers.transformerBlock({ dModel: 8, nHeads: 2, causal: true, dropout: 0 }),
      layers.dense({ units: 10 }),
    ],
    { seed: 3 },
  );
  m.compile({ optimizer: optimizers.sgd(), loss: 'crossEntropy' });
  return m;
}

function bits(m: Model): string {
  return Object.entries(m.getWeights())
    .map(([k, t]) => `${k}:${Buffer.from(new Float32Array(t.data).buffer).toString('hex')}`)
    .join('|');
}

it(`settles ${CALLS} random calls with named errors and leaves good calls unchanged`, { timeout: 170_000 }, async () => {
  const dir = tempDir();
  const good = join(dir, 'good.safetensors');
  await mainModel().save(good);
  const bytes = readFileSync(good);
  const files = {
    truncated: join(dir, 'truncated.safetensors'),
    corrupt: join(dir, 'corrupt.safetensors'),
    folder: join(dir, 'folder'),
    missing: join(dir, 'missing.safetensors'),
    torch: join(dir, 'notes.txt'),
  };
  copyFileSync(good, files.truncated);
  truncateSync(files.truncated, Math.floor(bytes.length / 2));
  const corrupt = Buffer.from(bytes);
  for (let i = 8; i < 200; i += 7) corrupt[i] = 0x7b;
  writeFileSync(files.corrupt, corrupt);
  mkdirSync(files.folder);
  writeFileSync(files.torch, 'not a model');

  const fuzzed = mainModel();
  const alone = mainModel();
  const gen = decoder();
  const lossesFuzzed: number[] = [];
  const lossesAlone: number[] = [];
  const classes = new Map<string, number>();
  const problems: string[] = [];
  let calls = 0;
  let scratch: Model = decoder();

  const settle = async (what: string, f: () => unknown, mustFail: boolean, names: RegExp) => {
    calls++;
    let err: unknown;
    try {
      await f();
    } catch (e) {
      err = e;
    }
    if (err === undefined) {
      if (mustFail) problems.push(`${what}: succeeded but should have failed`);
      classes.set('ok', (classes.get('ok') ?? 0) + 1);
      return;
    }
    if (!(err instanceof Error)) {
      problems.push(`${what}: rejected with a non-Error ${String(err)}`);
      return;
    }
    const name = err instanceof AbortError ? 'AbortError' : err.constructor.name;
    classes.set(name, (classes.get(name) ?? 0) + 1);
    if (process.env.ENGRAM_FUZZ_MESSAGES) process.stderr.write(`MSG ${what} | ${name} | ${err.message.slice(0, 110)}\n`);
    if (!err.message || /Failed to convert|internal error|capacity overflow|panicked|unreachable|os error/i.test(err.message) || /(options|spec)\b.*at line \d+ column/.test(err.message)) {
      problems.push(`${what}: ${name}: ${err.message}`);
    } else if (!names.test(err.message)) {
      problems.push(`${what}: ${name} does not name the argument (${names}): ${err.message}`);
    }
  };

  // Each kind of call: what it is, the call, whether it must fail, and what its error must name (the argument,
  // option, layer, file operation or call at fault).
  const bad: Array<() => [string, () => unknown, boolean, RegExp]> = [
    () => ['sequential(random)', () => sequential(Array.from({ length: 1 + int(3) }, randomSpec) as never, rand() < 0.3 ? (junk() as never) : {}), false, /^sequential: |^model spec: layer \d+|^layer \d+ \(\w+\)/],
    () => ['memoryNetwork(random)', () => memoryNetwork({ vocabSize: size(), sentenceLen: size(), embedDim: size(), hops: size(), memorySize: size() } as never), false, /memoryNetwork/],
    () => ['trainStep(bad x)', () => fuzzed.trainStep(badTensor() as never, ids(2, 3, 0)), true, /\bx\b/],
    () => ['trainStep(bad y)', () => fuzzed.trainStep(ids(2, 3, 0), badTensor() as never), true, /\by\b/],
    () => ['trainStep(bad options)', () => fuzzed.trainStep(ids(2, 3, 0), ids(2, 3, 1), { initialState: junk() ?? 5, signal: 'no' } as never), true, /initialState|signal/],
    () => ['predict(bad)', () => fuzzed.predict(badTensor() as never, rand() < 0.5 ? { batchSize: junk() as never } : {}), true, /\bx\b|predict: batchSize|positionalEncoding/],
    () => ['evaluate(bad)', () => fuzzed.evaluate(badTensor() as never, badTensor() as never), true, /\bx\b|\by\b|evaluate: (batch|batchSize)/],
    () => ['fit(bad) on scratch', () => scratch.fit(ids(4, 3, 0), ids(4, 3, 1), { [pick(['epochs', 'batchSize', 'validationSplit', 'verbose', 'signal', 'callbacks', 'epocs'])]: junk() } as never), false, /^fit: /],
    () => ['generate(bad)', () => gen.generate(rand() < 0.5 ? (junk() as never) : [1, 99], { maxTokens: pick([1e12, -1, NaN, 2.5, undefined]) } as never), true, /^generate(:| of)/],
    () => ['generate(bad options)', () => gen.generate([1], junk() as never), true, /^generate: /],
    () => ['compile(bad) on scratch', () => scratch.compile({ optimizer: rand() < 0.5 ? junk() : optimizers.adam({ learningRate: junk() as never }), loss: junk() } as never), false, /^compile( options)?: /],
    () => ['learningRate = junk', () => ((fuzzed as { learningRate: unknown }).learningRate = pick([NaN, -1, '3', null, {}, Infinity])), true, /^learningRate /],
    () => ['setWeights(bad)', () => fuzzed.setWeights({ [pick(['0.weight', 'nope', '1.weight_ih_l0'])]: badTensor() } as never), true, /^setWeights|^weights\./],
    () => ['save(bad path)', () => fuzzed.save(pick([join(dir, 'no', 'such', 'm.safetensors'), files.folder, '', null, 5, {}, undefined]) as never), true, /^save[: ]/],
    () => ['load(bad file)', () => load(pick([files.truncated, files.corrupt, files.folder, files.missing, files.torch, null, 5, {}]) as never), true, /^load[: ]/],
    () => ['loadWeights(bad file)', () => fuzzed.loadWeights(pick([files.truncated, files.corrupt, files.folder, files.missing, files.torch])), true, /^loadWeights /],
    () => ['setMemoryBudget(bad)', () => setMemoryBudget(pick([-1, 0, NaN, 'lots', {}, '1e30 TiB']) as never), true, /^setMemoryBudget /],
    () => ['memoryBudget()', () => memoryBudget(), false, /memoryBudget/],
    () => ['huge model', () => sequential([layers.lstm({ inputSize: 8, hiddenSize: pick([100000, 2 ** 30]) })]), true, /^layer 0 \(lstm\) with hiddenSize \d+/],
    () => ['huge call on scratch', () => scratch.predict(ids(pick([1024, 4096]), 16, 0), { batchSize: 4096 }).then(() => scratch.predict(ids(1, 4096, 0))), true, /^predict|positionalEncoding/],
    () => [
      'aborted call on scratch',
      () => {
        const ac = new AbortController();
        const p = scratch.generate([1, 2], { maxTokens: 100 + int(2000), signal: ac.signal });
        if (rand() < 0.5) ac.abort();
        else setTimeout(() => ac.abort(), int(3));
        return p;
      },
      false,
      /^generate: /,
    ],
    () => [
      'concurrent calls on scratch',
      () => Promise.all([scratch.predict(ids(2, 4, 0)), scratch.trainStep(ids(2, 4, 0), ids(2, 4, 1)), scratch.generate([3], { maxTokens: 5 }), scratch.evaluate(ids(2, 4, 0), ids(2, 4, 2))]),
      false,
      /disposed/,
    ],
    () => [
      'weights off the event loop, bad or aborted',
      () => {
        const ac = new AbortController();
        if (rand() < 0.5) ac.abort();
        return rand() < 0.5
          ? scratch.getWeightsAsync({ signal: ac.signal })
          : scratch.setWeightsAsync({ [pick(['0.weight', 'nope'])]: badTensor() } as never, { strict: rand() < 0.5, signal: ac.signal });
      },
      false,
      /^(getWeights|setWeights)|^weights\./,
    ],
    () => [
      'several models at once',
      () => Promise.all([scratch.trainStep(ids(2, 4, 0), ids(2, 4, 1)), gen.generate([2], { maxTokens: 3, seed: 1 }), scratch.predict(badTensor() as never)]),
      true,
      /\bx\b/,
    ],
    () => [
      'dispose mid-call',
      () => {
        const m = scratch;
        const p = m.generate([1], { maxTokens: 200 + int(500) });
        m.dispose();
        scratch = decoder();
        return p.then(() => m.predict(ids(1, 2, 0)));
      },
      true,
      /disposed/,
    ],
  ];

  for (let i = 0; calls < CALLS; i++) {
    if (i % 40 === 0) {
      const x = ids(4, 5, i);
      const y = ids(4, 5, i + 1);
      const a = await fuzzed.trainStep(x, y);
      const b = await alone.trainStep(x, y);
      lossesFuzzed.push(a.loss);
      lossesAlone.push(b.loss);
      calls++;
      continue;
    }
    const [what, f, mustFail, names] = pick(bad)();
    if (process.env.ENGRAM_FUZZ_TRACE) process.stderr.write(`${calls} ${what}\n`);
    await settle(what, f, mustFail, names);
  }
  setMemoryBudget(undefined);

  console.log(`fuzz: ${calls} calls, seed ${SEED}, outcomes ${JSON.stringify(Object.fromEntries(classes))}`);
  if (problems.length > 0) console.log(problems.slice(0, 20).join("\n"));
  expect(problems.length, "calls that did not settle as they should").toBe(0);
  expect(lossesFuzzed).toEqual(lossesAlone);
  expect(fuzzed.step).toBe(alone.step);
  expect(bits(fuzzed)).toBe(bits(alone));
  // Both still work afterwards, identically.
  const [pa, pb] = [await fuzzed.predict(ids(3, 4, 5)), await alone.predict(ids(3, 4, 5))];
  expect(Buffer.from(pa.data.buffer).equals(Buffer.from(pb.data.buffer))).toBe(true);
});
