// The main demo: a 2-layer character LSTM trained on Tiny Shakespeare for about a minute on the CPU, with
// progress, then a 300-character sample.
//
//   npm run demo                         # about 60 s of training
//   npm run demo -- --seconds 10 --sample 100
//
// Data: $ENGRAM_DATA/tinyshakespeare/input.txt (ENGRAM_DATA defaults to ../shared/data); when missing, it is
// downloaded once into ~/.cache/engram and checked by sha256.
import { parseArgs } from 'node:util';
import { datasets, layers, optimizers, sequential, tensor } from '../src/index.js';
import { seededRandom } from '../src/batching.js';

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '60' },
    sample: { type: 'string', default: '300' },
    hidden: { type: 'string', default: '128' },
    'seq-len': { type: 'string', default: '64' },
    batch: { type: 'string', default: '32' },
    seed: { type: 'string', default: '7' },
  },
});
const seconds = Number(args.seconds);
const sampleLength = Number(args.sample);
const hiddenSize = Number(args.hidden);
const seqLen = Number(args['seq-len']);
const batch = Number(args.batch);
const seed = Number(args.seed);

const text = await datasets.loadTinyShakespeare();
const vocab = datasets.charVocab(text);
const ids = vocab.encode(text);
const split = Math.floor(ids.length * 0.9);
console.log(`Tiny Shakespeare: ${ids.length.toLocaleString()} characters, ${vocab.chars.length} distinct; 90/10 split`);

const model = sequential(
  [
    layers.embedding({ vocabSize: vocab.chars.length, dim: 32 }),
    layers.lstm({ hiddenSize, numLayers: 2, returnSequences: true }),
    layers.dense({ units: vocab.chars.length }),
  ],
  { seed },
);
model.compile({ optimizer: optimizers.adam({ learningRate: 3e-3, clipNorm: 5 }), loss: 'crossEntropy' });
model.summary();

const random = seededRandom(seed);
/** A batch of random windows from [from, to): inputs and the next character at every step. */
function windows(from: number, to: number, n: number) {
  const x = new Int32Array(n * seqLen);
  const y = new Int32Array(n * seqLen);
  for (let b = 0; b < n; b++) {
    const start = from + Math.floor(random() * (to - from - seqLen - 1));
    x.set(ids.subarray(start, start + seqLen), b * seqLen);
    y.set(ids.subarray(start + 1, start + seqLen + 1), b * seqLen);
  }
  return { x: tensor(x, [n, seqLen]), y: tensor(y, [n, seqLen]) };
}

const val = windows(split, ids.length, 64);
const started = performance.now();
const elapsed = () => (performance.now() - started) / 1000;
let step = 0;
let smooth = NaN;
const tty = process.stdout.isTTY;
while (elapsed() < seconds) {
  const { x, y } = windows(0, split, batch);
  const { loss } = await model.trainStep(x, y);
  smooth = Number.isNaN(smooth) ? loss : 0.95 * smooth + 0.05 * loss;
  step++;
  if (step % 10 === 0 || elapsed() >= seconds) {
    const t = elapsed();
    const line = `step ${step}  loss ${smooth.toFixed(3)}  ${(step / t).toFixed(2)} steps/s  ${t.toFixed(0)}s  ETA ${Math.max(0, seconds - t).toFixed(0)}s`;
    if (tty) process.stdout.write(`\r${line}   `);
    else if (step % 50 === 0) console.log(line);
  }
}
if (tty) process.stdout.write('\n');
const wall = elapsed();
const { loss: valLoss } = await model.evaluate(val.x, val.y);
console.log(`trained ${step} steps in ${wall.toFixed(1)} s; final train loss ${smooth.toFixed(3)}, validation loss ${valLoss.toFixed(3)}`);

// Sampling: feed the last seqLen characters and draw the next from the softmax at temperature 0.8.
const context = Array.from(vocab.encode('ROMEO:\n'));
const out: number[] = [];
for (let i = 0; i < sampleLength; i++) {
  const window = context.slice(-seqLen);
  const logits = await model.predict(tensor(Int32Array.from(window), [1, window.length]));
  const v = vocab.chars.length;
  const last = logits.data.subarray((window.length - 1) * v, window.length * v);
  let max = -Infinity;
  for (const l of last) max = Math.max(max, l);
  const p = Array.from(last, (l) => Math.exp((l - max) / 0.8));
  let r = random() * p.reduce((a, b) => a + b, 0);
  let next = 0;
  while (next < v - 1 && (r -= p[next]!) > 0) next++;
  context.push(next);
  out.push(next);
}
console.log(`\n--- sample (${sampleLength} characters) ---\nROMEO:\n${vocab.decode(out)}\n---`);
model.dispose();
