/**
 * Peak resident memory of one LSTM training step at seqLen 1000, hidden 256, batch 32 (input 64, last step,
 * dense 64, Adam), in a fresh process: benches/recurrent.ts runs it and reads `maxRssMiB=<number>`.
 * @module
 */
import { layers, optimizers, sequential, tensor } from '../src/index.js';

const [batch, seqLen, input, hidden, classes] = [32, 1000, 64, 256, 64];
const model = sequential([layers.lstm({ inputSize: input, hiddenSize: hidden }), layers.dense({ units: classes })], { seed: 1 });
model.compile({ optimizer: optimizers.adam({ learningRate: 1e-3 }), loss: 'crossEntropy' });
const x = tensor(Float32Array.from({ length: batch * seqLen * input }, (_, i) => Math.sin(i)), [batch, seqLen, input]);
const y = tensor(Int32Array.from({ length: batch }, (_, i) => i % classes), [batch]);
const before = process.resourceUsage().maxRSS;
const { loss } = await model.trainStep(x, y);
// maxRSS is in KiB.
console.log(`maxRssMiB=${(process.resourceUsage().maxRSS / 1024).toFixed(1)} beforeStepMiB=${(before / 1024).toFixed(1)} loss=${loss.toFixed(4)}`);
model.dispose();
