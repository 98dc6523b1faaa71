// A small BERT-style masked character model on Tiny Shakespeare: 15% of the characters of each window are
// chosen (80% replaced by a mask id, 10% by a random character, 10% kept) and the model, which sees the whole
// window in both directions, is trained to name them. Reports the accuracy on held-out text against guessing
// the most frequent character, then fills in a masked line.
//
//   npm run example:masked                    # 1,200 steps, about 40 s on 2 cores
//   npm run example:masked -- --steps 100
//
// Data: $ENGRAM_DATA/tinyshakespeare/input.txt (ENGRAM_DATA defaults to ../shared/data); when missing, it is
// downloaded once into ~/.cache/engram and checked by sha256.
import { parseArgs } from 'node:util';
import { datasets, layers, maskTokens, optimizers, sequential, tensor, type Tensor } from '../src/index.js';
import { seededRandom } from '../src/batching.js';

const { values: args } = parseArgs({
  options: {
    steps: { type: 'string', default: '1200' },
    seed: { type: 'string', default: '3' },
  },
});
const steps = Number(args.steps);
const seed = Number(args.seed);
const SEQ_LEN = 64;
const BATCH = 32;

const text = await datasets.loadTinyShakespeare();
const vocab = datasets.charVocab(text);
const ids = vocab.encode(text);
const split = Math.floor(ids.length * 0.9);
const vocabSize = vocab.chars.length;
const maskId = vocabSize; // one id past the characters

const model = sequential(
  [
    layers.embedding({ vocabSize: vocabSize + 1, dim: 64 }),
    layers.positionalEncoding({ maxLen: SEQ_LEN }),
    layers.transformerBlock({ dModel: 64, nHeads: 4, ffDim: 256, normFirst: true, activation: 'gelu', dropout: 0 }),
    layers.transformerBlock({ dModel: 64, nHeads: 4, ffDim: 256, normFirst: true, activation: 'gelu', dropout: 0 }),
    layers.layerNorm(),
    layers.dense({ units: vocabSize }),
  ],
  { seed },
);
model.compile({ optimizer: optimizers.adamw({ learningRate: 2e-3, clipNorm: 1 }), loss: 'crossEntropy' });

const random = seededRandom(seed);
function windows(from: number, to: number, n: number, rand: () => number): Tensor {
  const x = new Int32Array(n * SEQ_LEN);
  for (let b = 0; b < n; b++) {
    const start = from + Math.floor(rand() * (to - from - SEQ_LEN));
    x.set(ids.subarray(start, start + SEQ_LEN), b * SEQ_LEN);
  }
  return tensor(x, [n, SEQ_LEN]);
}

/** The share of chosen positions whose most likely character is the original one. */
async function accuracy(batch: { x: Tensor; y: Tensor }): Promise<number> {
  const logits = await model.predict(batch.x);
  let right = 0;
  let total = 0;
  for (let i = 0; i < batch.y.data.length; i++) {
    const want = batch.y.data[i]!;
    if (want < 0) continue;
    let best = 0;
    for (let c = 1; c < vocabSize; c++) if (logits.data[i * vocabSize + c]! > logits.data[i * vocabSize + best]!) best = c;
    right += best === want ? 1 : 0;
    total++;
  }
  return right / total;
}

const val = maskTokens(windows(split, ids.length, 200, seededRandom(seed + 1)), { maskId, vocabSize, seed: seed + 2 });
const counts = new Array<number>(vocabSize).fill(0);
for (let i = 0; i < split; i++) counts[ids[i]!]!++;
const common = counts.indexOf(Math.max(...counts));
let baseline = 0;
for (const t of val.y.data) if (t >= 0) baseline += t === common ? 1 : 0;
baseline /= val.count;

const started = performance.now();
let smooth = NaN;
for (let step = 1; step <= steps; step++) {
  const { x, y } = maskTokens(windows(0, split, BATCH, random), { maskId, vocabSize, seed: seed * 100_003 + step });
  const { loss } = await model.trainStep(x, y);
  smooth = Number.isNaN(smooth) ? loss : 0.95 * smooth + 0.05 * loss;
  if (step % 100 === 0 || step === steps) console.log(`step ${step}  masked-token loss ${smooth.toFixed(3)}`);
}
const seconds = (performance.now() - started) / 1000;
const acc = await accuracy(val);
console.log(`trained ${steps} steps in ${seconds.toFixed(1)} s`);
console.log(
  `masked-token accuracy ${(100 * acc).toFixed(1)}% on ${val.count} held-out positions ` +
    `(most-frequent-character baseline ${(100 * baseline).toFixed(1)}%)`,
);

// Fill in every fourth letter of a line the model has not trained on.
const line = vocab.decode(ids.subarray(split + 1000, split + 1000 + SEQ_LEN)).replace(/\n/g, ' ');
const lineIds = vocab.encode(line);
const x = Int32Array.from(lineIds);
for (let i = 3; i < x.length; i += 4) x[i] = maskId;
const logits = await model.predict(tensor(x, [1, SEQ_LEN]));
const filled = Array.from(x, (id, i) => {
  if (id !== maskId) return vocab.chars[id]!;
  let best = 0;
  for (let c = 1; c < vocabSize; c++) if (logits.data[i * vocabSize + c]! > logits.data[i * vocabSize + best]!) best = c;
  return vocab.chars[best]!;
}).join('');
console.log(`masked:  ${Array.from(x, (id) => (id === maskId ? '_' : vocab.chars[id]!)).join('')}`);
console.log(`filled:  ${filled}`);
console.log(`truth:   ${line}`);
model.dispose();
