// Exact resume: a character LSTM trained with fit (metrics, a warm-up + cosine schedule, dropout, a checkpoint
// per epoch), then "crashed" after epoch --resume-at: a new process would load that epoch's checkpoint and fit
// the remaining epochs. The resumed run's weights must equal the uninterrupted run's, bit for bit. Also writes
// the history as JSON and as an SVG plot.
//
//   npm run example:resume                       # 6 epochs, resumes after 3
//   npm run example:resume -- --epochs 4 --resume-at 2 --windows 512 --out /tmp/resume
//
// Data: $ENGRAM_DATA/tinyshakespeare/input.txt (ENGRAM_DATA defaults to ../shared/data).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { callbacks, datasets, layers, load, optimizers, schedules, sequential, tensor, type Model } from '../src/index.js';
import { seededRandom } from '../src/batching.js';

const { values: args } = parseArgs({
  options: {
    epochs: { type: 'string', default: '6' },
    'resume-at': { type: 'string', default: '3' },
    windows: { type: 'string', default: '4096' },
    hidden: { type: 'string', default: '128' },
    out: { type: 'string', default: 'resume-out' },
    verbose: { type: 'string', default: '1' },
  },
});
const epochs = Number(args.epochs);
const resumeAt = Number(args['resume-at']);
const nWindows = Number(args.windows);
const out = args.out;
const verbose = Number(args.verbose) as 0 | 1 | 2;
if (!(resumeAt >= 1 && resumeAt < epochs)) throw new RangeError('--resume-at must be in [1, epochs)');
mkdirSync(out, { recursive: true });

const SEQ = 64;
const BATCH = 32;
const text = await datasets.loadTinyShakespeare();
const vocab = datasets.charVocab(text);
const ids = vocab.encode(text);
const split = Math.floor(ids.length * 0.9);
const random = seededRandom(1);
/** `n` random windows from [from, to): inputs and the next character at every step. */
function windows(from: number, to: number, n: number) {
  const x = new Int32Array(n * SEQ);
  const y = new Int32Array(n * SEQ);
  for (let b = 0; b < n; b++) {
    const s = from + Math.floor(random() * (to - from - SEQ - 1));
    x.set(ids.subarray(s, s + SEQ), b * SEQ);
    y.set(ids.subarray(s + 1, s + SEQ + 1), b * SEQ);
  }
  return { x: tensor(x, [n, SEQ]), y: tensor(y, [n, SEQ]) };
}
const train = windows(0, split, nWindows);
const val = windows(split, ids.length, 256);

const model = sequential(
  [
    layers.embedding({ vocabSize: vocab.chars.length, dim: 32 }),
    layers.lstm({ hiddenSize: Number(args.hidden), returnSequences: true }),
    layers.dropout({ rate: 0.1 }),
    layers.dense({ units: vocab.chars.length }),
  ],
  { seed: 7 },
);
model.compile({
  optimizer: optimizers.adam({ learningRate: 3e-3, clipNorm: 5 }),
  loss: 'crossEntropy',
  metrics: ['accuracy', 'perplexity'],
});
const stepsPerEpoch = Math.ceil(nWindows / BATCH);
/** The same options for both runs: only the epochs differ. */
const fitOptions = (m: Model) => ({
  batchSize: BATCH,
  validationData: [val.x, val.y] as [typeof val.x, typeof val.y],
  seed: 11,
  verbose,
  callbacks: [
    schedules.cosine({ totalSteps: epochs * stepsPerEpoch, warmupSteps: 20, minLearningRate: 3e-4 }),
    callbacks.modelCheckpoint({ path: join(out, m === model ? 'epoch-{epoch}.safetensors' : 'resumed-{epoch}.safetensors') }),
  ],
});

console.log(`uninterrupted: epochs 1-${epochs}`);
let started = performance.now();
const history = await model.fit(train.x, train.y, { ...fitOptions(model), epochs });
const straightSeconds = (performance.now() - started) / 1000;

console.log(`resumed: load epoch-${resumeAt}.safetensors, fit epochs ${resumeAt + 1}-${epochs}`);
started = performance.now();
const resumed = await load(join(out, `epoch-${resumeAt}.safetensors`));
const rest = await resumed.fit(train.x, train.y, { ...fitOptions(resumed), initialEpoch: resumeAt, epochs });

const a = model.getWeights();
const b = resumed.getWeights();
let values = 0;
let differ = 0;
for (const [name, t] of Object.entries(a)) {
  const u = b[name]!.data;
  for (let i = 0; i < t.data.length; i++) differ += Object.is(t.data[i], u[i]) ? 0 : 1;
  values += t.data.length;
}
const last = (h: Record<string, number[]>, k: string) => h[k]!.at(-1)!;
console.log(`steps: uninterrupted ${model.step}, resumed ${resumed.step}`);
console.log(`final val_loss: uninterrupted ${last(history.history, 'val_loss')}, resumed ${last(rest.history, 'val_loss')}`);
console.log(`weights: ${values.toLocaleString('en-US')} values, ${differ} differ -> ${differ === 0 ? 'IDENTICAL' : 'DIFFERENT'}`);

writeFileSync(join(out, 'history.json'), JSON.stringify(history));
await history.plot(join(out, 'history.svg'), { title: 'character LSTM on Tiny Shakespeare' });
console.log(`wrote ${join(out, 'history.json')} and ${join(out, 'history.svg')} (uninterrupted run took ${straightSeconds.toFixed(1)} s)`);
process.exitCode = differ === 0 && model.step === resumed.step ? 0 : 1;
model.dispose();
resumed.dispose();
