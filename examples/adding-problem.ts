// The adding problem (Hochreiter and Schmidhuber 1997): at each of T steps the input is a value in [0, 1]
// and a marker; exactly two steps are marked, and the target is the sum of their values. Always predicting
// the mean (1.0) scores an MSE of about 0.167 (the variance of a sum of two U(0, 1)); an LSTM that learned the
// task scores below 0.01.
//
//   npm run example:adding                   # T = 50, the full run
//   npm run example:adding -- --steps 20 --epochs 5
import { parseArgs } from 'node:util';
import { layers, optimizers, sequential, tensor, type Tensor } from '../src/index.js';
import { seededRandom } from '../src/batching.js';

const { values: args } = parseArgs({
  options: {
    steps: { type: 'string', default: '50' },
    train: { type: 'string', default: '10000' },
    test: { type: 'string', default: '1000' },
    epochs: { type: 'string', default: '30' },
    hidden: { type: 'string', default: '64' },
    seed: { type: 'string', default: '1' },
  },
});
const T = Number(args.steps);
const random = seededRandom(Number(args.seed));

/** `n` sequences `[n, T, 2]` (value, marker) and targets `[n, 1]`. */
export function addingData(n: number, rand: () => number): { x: Tensor; y: Tensor } {
  const x = new Float32Array(n * T * 2);
  const y = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const a = Math.floor(rand() * T);
    let b = Math.floor(rand() * (T - 1));
    if (b >= a) b++;
    for (let t = 0; t < T; t++) x[(i * T + t) * 2] = rand();
    x[(i * T + a) * 2 + 1] = 1;
    x[(i * T + b) * 2 + 1] = 1;
    y[i] = x[(i * T + a) * 2]! + x[(i * T + b) * 2]!;
  }
  return { x: tensor(x, [n, T, 2]), y: tensor(y, [n, 1]) };
}

const train = addingData(Number(args.train), random);
const test = addingData(Number(args.test), random);
const model = sequential([layers.lstm({ inputSize: 2, hiddenSize: Number(args.hidden) }), layers.dense({ units: 1 })], {
  seed: Number(args.seed),
});
model.compile({ optimizer: optimizers.adam({ learningRate: 1e-2, clipNorm: 1 }), loss: 'mse' });

let mean = 0;
for (const v of test.y.data) mean += v / test.y.data.length;
let baseline = 0;
for (const v of test.y.data) baseline += (v - mean) ** 2 / test.y.data.length;
console.log(`adding problem, T = ${T}: predicting the mean scores test MSE ${baseline.toFixed(4)}`);

const started = performance.now();
await model.fit(train.x, train.y, {
  epochs: Number(args.epochs),
  batchSize: 64,
  validationSplit: 0.1,
  verbose: 1,
  callbacks: {
    // Once the task is learned, more epochs only cost time.
    onEpochEnd: (_e, logs) => void (logs.val_loss! < 0.001 && (model.stopTraining = true)),
  },
});
const { loss: mse } = await model.evaluate(test.x, test.y);
console.log(`test MSE ${mse.toFixed(5)} (mean baseline ${baseline.toFixed(4)}) in ${((performance.now() - started) / 1000).toFixed(1)} s`);
model.dispose();
