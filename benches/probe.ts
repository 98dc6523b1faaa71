import { layers, optimizers, sequential, tensor, backend } from '../src/index.js';
const med = (a: number[]) => a.sort((x, y) => x - y)[a.length >> 1]!;
async function time(f: () => Promise<unknown>, n: number) { for (let i = 0; i < 3; i++) await f(); const t: number[] = []; for (let i = 0; i < n; i++) { const t0 = performance.now(); await f(); t.push(performance.now() - t0); } return med(t); }
const rnd = (n: number) => Float32Array.from({ length: n }, () => Math.random() - 0.5);
const out: Record<string, number> = {};
const which = (process.argv[2] ?? 'lstm,block').split(',');
if (which.includes('lstm')) for (const [H, B] of [[128, 32], [512, 32], [128, 1], [512, 1]]) {
  const m = sequential([layers.lstm({ inputSize: 64, hiddenSize: H! }), layers.dense({ units: 64 })], { seed: 1 });
  m.compile({ optimizer: optimizers.adam({ learningRate: 1e-3 }), loss: 'crossEntropy' });
  const x = tensor(rnd(B! * 50 * 64), [B!, 50, 64]); const y = tensor(new Int32Array(B!).map((_, i) => i), [B!]);
  out[`lstm${H} B${B} train`] = await time(() => m.trainStep(x, y), 20);
  out[`lstm${H} B${B} infer`] = await time(() => m.predict(x), 20);
}
if (which.includes('block')) {
  const m = sequential([layers.transformerBlock({ dModel: 128, nHeads: 4, ffDim: 512, normFirst: false, activation: 'relu', dropout: 0 }), layers.dense({ units: 64 })], { seed: 1 });
  m.compile({ optimizer: optimizers.adam({ learningRate: 1e-3 }), loss: 'crossEntropy' });
  const x = tensor(rnd(16 * 64 * 128), [16, 64, 128]); const y = tensor(new Int32Array(16 * 64).map((_, i) => i % 64), [16, 64]);
  out['block train'] = await time(() => m.trainStep(x, y), 40);
  out['block infer'] = await time(() => m.predict(x), 40);
}
const u = process.cpuUsage();
console.log(backend().isa, JSON.stringify(Object.fromEntries(Object.entries(out).map(([k, v]) => [k, +v.toFixed(2)]))), `sys/user ${(u.system / u.user * 100).toFixed(0)}%`);
