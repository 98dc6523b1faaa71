// A character-level GPT on Tiny Shakespeare in nanoGPT's CPU configuration: 4 causal pre-norm blocks, 4 heads,
// d_model 128, context 64, batch 12, 2,000 iterations, AdamW with the learning rate warming up for 100
// iterations then decaying from 1e-3 to 1e-4 on a cosine, no dropout, a 90/10 split. nanoGPT's README reports a
// validation loss of about 1.88 for this configuration after about 3 minutes on a laptop CPU.
//
//   npm run gpt                               # the full run; the last line is `val_loss=<n> wall_s=<n>`
//   npm run gpt -- --iters 200 --eval-every 100 --sample 100
//
// Data: $ENGRAM_DATA/tinyshakespeare/input.txt (ENGRAM_DATA defaults to ../shared/data); when missing, it is
// downloaded once into ~/.cache/engram and checked by sha256.
import { parseArgs } from 'node:util';
import { datasets, layers, optimizers, sequential, tensor } from '../src/index.js';
import { seededRandom } from '../src/batching.js';

const { values: args } = parseArgs({
  options: {
    iters: { type: 'string', default: '2000' },
    'eval-every': { type: 'string', default: '250' },
    'eval-windows': { type: 'string', default: '240' },
    sample: { type: 'string', default: '300' },
    seed: { type: 'string', default: '1337' },
  },
});
const iters = Number(args.iters);
const evalEvery = Number(args['eval-every']);
const evalWindows = Number(args['eval-windows']);
const sampleLength = Number(args.sample);
const seed = Number(args.seed);

const CONTEXT = 64;
const BATCH = 12;
const D_MODEL = 128;
const MAX_LR = 1e-3;
const MIN_LR = 1e-4;
const WARMUP = 100;

const text = await datasets.loadTinyShakespeare();
const vocab = datasets.charVocab(text);
const ids = vocab.encode(text);
const split = Math.floor(ids.length * 0.9);
const vocabSize = vocab.chars.length;
console.log(`Tiny Shakespeare: ${ids.length.toLocaleString()} characters, ${vocabSize} distinct; 90/10 split`);

const model = sequential(
  [
    layers.embedding({ vocabSize, dim: D_MODEL }),
    layers.positionalEncoding({ kind: 'learned', maxLen: CONTEXT }),
    ...Array.from({ length: 4 }, () =>
      layers.transformerBlock({ dModel: D_MODEL, nHeads: 4, ffDim: 4 * D_MODEL, normFirst: true, causal: true, activation: 'gelu', dropout: 0 }),
    ),
    layers.layerNorm({ name: 'norm' }),
    layers.dense({ units: vocabSize }),
  ],
  { seed },
);
// nanoGPT's Shakespeare settings: beta2 0.99 (few tokens per step), weight decay 0.1 on the weight matrices and
// embeddings only (not on biases and layer norms), gradients clipped at 1.
model.compile({
  optimizer: optimizers.adamw({
    learningRate: MAX_LR,
    beta2: 0.99,
    weightDecay: 0.1,
    excludeFromWeightDecay: ['bias', 'norm'],
    clipNorm: 1,
  }),
  loss: 'crossEntropy',
});
model.summary();

/** Linear warm-up, then a cosine from MAX_LR down to MIN_LR at the last iteration. */
function learningRate(it: number): number {
  if (it < WARMUP) return (MAX_LR * (it + 1)) / (WARMUP + 1);
  const progress = Math.min(1, (it - WARMUP) / Math.max(1, iters - WARMUP));
  return MIN_LR + 0.5 * (1 + Math.cos(Math.PI * progress)) * (MAX_LR - MIN_LR);
}

const random = seededRandom(seed);
/** `n` random windows from [from, to): inputs and the next character at every position. */
function windows(from: number, to: number, n: number, rand: () => number) {
  const x = new Int32Array(n * CONTEXT);
  const y = new Int32Array(n * CONTEXT);
  for (let b = 0; b < n; b++) {
    const start = from + Math.floor(rand() * (to - from - CONTEXT - 1));
    x.set(ids.subarray(start, start + CONTEXT), b * CONTEXT);
    y.set(ids.subarray(start + 1, start + CONTEXT + 1), b * CONTEXT);
  }
  return { x: tensor(x, [n, CONTEXT]), y: tensor(y, [n, CONTEXT]) };
}

// The same validation windows at every evaluation, so the curve compares like with like.
const val = windows(split, ids.length, evalWindows, seededRandom(seed + 1));
const started = performance.now();
const elapsed = () => (performance.now() - started) / 1000;
let valLoss = NaN;
let smooth = NaN;
for (let it = 0; it < iters; it++) {
  model.learningRate = learningRate(it);
  const { x, y } = windows(0, split, BATCH, random);
  const { loss } = await model.trainStep(x, y);
  smooth = Number.isNaN(smooth) ? loss : 0.98 * smooth + 0.02 * loss;
  if ((it + 1) % evalEvery === 0 || it + 1 === iters) {
    ({ loss: valLoss } = await model.evaluate(val.x, val.y));
    console.log(
      `iter ${it + 1}  train loss ${smooth.toFixed(4)}  val loss ${valLoss.toFixed(4)}  lr ${model.learningRate!.toExponential(2)}  ${elapsed().toFixed(1)} s`,
    );
  }
}
const wall = elapsed();
const tokensPerSecond = (iters * BATCH * CONTEXT) / wall;
console.log(`trained ${iters} iterations in ${wall.toFixed(1)} s (${Math.round(tokensPerSecond).toLocaleString()} tokens/s with evaluations)`);

if (sampleLength > 0) {
  const prompt = vocab.encode('ROMEO:\n');
  const out = await model.generate(prompt, { maxTokens: sampleLength, temperature: 0.8, topK: 40, seed });
  console.log(`\n--- sample (${sampleLength} characters) ---\nROMEO:\n${vocab.decode(out)}\n---`);
}
model.dispose();
console.log(`val_loss=${valLoss.toFixed(4)} wall_s=${wall.toFixed(1)}`);
