/**
 * engram's WebAssembly build against its native binary and TensorFlow.js's wasm backend: one LSTM training step
 * (the `recurrent` suite's shapes: seq 50, 64 float features, 64 classes, Adam) at hidden 128 and 256, batch 32.
 * Each engram build runs in its own process, since the binary is chosen when engram is first imported; the
 * WebAssembly one is loaded through NAPI_RS_NATIVE_LIBRARY_PATH.
 *
 *   npm run build:wasm && RAYON_NUM_THREADS=2 npx tsx benches/wasm.ts
 *
 * Prints a Markdown table of median ms per step and the ratios.
 * @module
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { fullBudget, measure } from './measure.js';

const HIDDEN = [128, 256];
const BATCH = 32;
const threads = Number(process.env.RAYON_NUM_THREADS) || 2;
const child = process.argv[2];

/** One subject's median ms per training step, by hidden size. */
async function timeSubject(which: 'engram' | 'tfjs'): Promise<Record<number, number>> {
  const rec = await import('./recurrent.js');
  const out: Record<number, number> = {};
  if (which === 'tfjs') console.error(await rec.setUpWasm(threads));
  for (const hidden of HIDDEN) {
    const s = which === 'engram' ? rec.engram('lstm', hidden, BATCH) : await rec.tfjs('wasm', 'lstm', hidden, BATCH);
    out[hidden] = (await measure(`${which} ${hidden}`, () => s.train(), fullBudget)).medianMs;
    s.dispose();
  }
  if (which === 'engram') {
    const { backend } = await import('../src/index.js');
    console.error('engram binary:', backend().binary);
  }
  return out;
}

if (child === 'engram' || child === 'tfjs') {
  process.stdout.write(JSON.stringify(await timeSubject(child)));
} else {
  if (!existsSync('npm/wasm32-wasi/engram.wasm32-wasi.wasm')) {
    throw new Error('benches/wasm.ts: build the WebAssembly module first (npm run build:wasm)');
  }
  const self = fileURLToPath(import.meta.url);
  const run = (which: string, env: Record<string, string> = {}) =>
    JSON.parse(
      execFileSync(process.execPath, ['--import', 'tsx', self, which], {
        env: { ...process.env, ...env },
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'inherit'],
      }),
    ) as Record<number, number>;
  const native = run('engram');
  // The generated loader takes the module's own loader in place of the native binary.
  const wasm = run('engram', { NAPI_RS_NATIVE_LIBRARY_PATH: fileURLToPath(new URL('../npm/wasm32-wasi/engram.wasi.cjs', import.meta.url)) });
  const tfjs = run('tfjs');
  console.log(`\nLSTM training step, batch ${BATCH}, seq 50, 64 features; median ms; RAYON_NUM_THREADS=${threads}`);
  console.log(`machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, Node ${process.version}\n`);
  console.log('| hidden | engram native | engram wasm | tfjs-wasm | wasm / native | tfjs-wasm / engram wasm |');
  console.log('| --: | --: | --: | --: | --: | --: |');
  for (const h of HIDDEN) {
    const [n, w, t] = [native[h]!, wasm[h]!, tfjs[h]!];
    console.log(`| ${h} | ${n.toFixed(1)} | ${w.toFixed(1)} | ${t.toFixed(1)} | ${(w / n).toFixed(2)}× | ${(t / w).toFixed(1)}× |`);
  }
}
