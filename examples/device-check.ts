// Trains the same small models on the device engram picks (ENGRAM_DEVICE, or GPU 0 with the CUDA build) and on
// the CPU, from the same seed and batches, and reports how far apart their losses and predictions end up.
//
//   npx tsx examples/device-check.ts                      # whatever backend() says
//   ENGRAM_DEVICE=cuda npx tsx examples/device-check.ts   # with engram-cuda-linux-x64-gnu installed (or built)
//
// On the CPU against itself the two runs must agree exactly; on a GPU, to float32 rounding.
import { backend, layers, optimizers, sequential, tensor, type LayerSpec, type Model } from '../src/index.js';

const steps = Number(process.argv[process.argv.indexOf('--steps') + 1]) || 5;
const chosen = process.env.ENGRAM_DEVICE;

/** Builds a model on the CPU (`cpu` true) or on the chosen device. */
function build(spec: LayerSpec[], cpu: boolean): Model {
  if (cpu) process.env.ENGRAM_DEVICE = 'cpu';
  else if (chosen === undefined) delete process.env.ENGRAM_DEVICE;
  else process.env.ENGRAM_DEVICE = chosen;
  try {
    const m = sequential(spec, { seed: 11 });
    m.compile({ optimizer: optimizers.adam({ learningRate: 3e-3 }), loss: 'crossEntropy' });
    return m;
  } finally {
    if (chosen === undefined) delete process.env.ENGRAM_DEVICE;
    else process.env.ENGRAM_DEVICE = chosen;
  }
}

const batch = 16;
const seqLen = 32;
const vocab = 40;
let s = 7;
const ids = Int32Array.from({ length: batch * seqLen }, () => (s = (s * 48271) % 2147483647) % vocab);
const next = Int32Array.from(ids, (_, i) => ids[(i + 1) % ids.length]!);
const x = tensor(ids, [batch, seqLen]);
const y = tensor(next, [batch, seqLen]);

const models: Record<string, LayerSpec[]> = {
  lstm: [layers.embedding({ vocabSize: vocab, dim: 16 }), layers.lstm({ hiddenSize: 32, returnSequences: true }), layers.dense({ units: vocab })],
  transformer: [
    layers.embedding({ vocabSize: vocab, dim: 32 }),
    layers.positionalEncoding({ maxLen: seqLen }),
    layers.transformerBlock({ dModel: 32, nHeads: 4, causal: true }),
    layers.dense({ units: vocab }),
  ],
};

console.log('backend', JSON.stringify(backend()));
let worst = 0;
for (const [name, spec] of Object.entries(models)) {
  const here = build(spec, false);
  const cpu = build(spec, true);
  const t0 = performance.now();
  const losses: [number, number][] = [];
  for (let i = 0; i < steps; i++) {
    const a = await here.trainStep(x, y);
    const b = await cpu.trainStep(x, y);
    losses.push([a.loss, b.loss]);
  }
  const ms = (performance.now() - t0) / steps;
  const [p, q] = [await here.predict(x), await cpu.predict(x)];
  let diff = 0;
  for (let i = 0; i < p.data.length; i++) diff = Math.max(diff, Math.abs(p.data[i]! - q.data[i]!));
  const lossDiff = Math.max(...losses.map(([a, b]) => Math.abs(a - b)));
  worst = Math.max(worst, diff, lossDiff);
  console.log(
    `${name}: on ${here.device} vs cpu, ${steps} steps: loss ${losses[0]![0].toFixed(5)} -> ${losses.at(-1)![0].toFixed(5)} ` +
      `(cpu ${losses.at(-1)![1].toFixed(5)}), max loss diff ${lossDiff.toExponential(2)}, max logit diff ${diff.toExponential(2)}, ` +
      `${ms.toFixed(1)} ms per step pair`,
  );
  here.dispose();
  cpu.dispose();
}
const sameDevice = backend().device === 'cpu';
const ok = sameDevice ? worst === 0 : worst < 1e-2;
console.log(ok ? 'AGREE' : 'DISAGREE', `(worst difference ${worst.toExponential(2)}${sameDevice ? ', both on the CPU' : ''})`);
process.exit(ok ? 0 : 1);
