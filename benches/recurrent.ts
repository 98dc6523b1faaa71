/**
 * The `recurrent` suite: one-layer LSTM and GRU classifiers trained with Adam, at hidden 128/256/512 and batch 32
 * and 1, in engram, tfjs (`wasm` and `cpu` backends), brain.js (its LSTM trains one sequence at a time) and
 * PyTorch CPU (benches/torch_recurrent.py, the same thread count), on the same shapes; plus the machine's f32
 * GEMM peak through candle (1024³) and each engram case's GFLOP/s against it, and the peak RSS of a long-sequence
 * training step.
 * @module
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import * as tf from '@tensorflow/tfjs';
import { getThreadsCount, setThreadsCount, setWasmPaths, version_wasm } from '@tensorflow/tfjs-backend-wasm';
import { seededRandom } from '../src/batching.js';
import { layers, optimizers, sequential, tensor } from '../src/index.js';
import { resolveCommand, timeCase, type Budget, type Suite } from './measure.js';
import type { CaseResult } from './report.js';

export const SEQ_LEN = 50;
export const INPUT_SIZE = 64;
export const CLASSES = 64;
export const LEARNING_RATE = 1e-3;
const CELLS = ['lstm', 'gru'] as const;
const HIDDEN_SIZES = [128, 256, 512];
const BATCHES = [32, 1];
/** tfjs's cpu backend is plain JavaScript: beyond this hidden size one step takes minutes. */
const TFJS_CPU_MAX_HIDDEN = 256;

export type Cell = (typeof CELLS)[number];
type Op = 'train' | 'infer';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** One implementation's model, compiled and holding its copy of the batch. */
export interface Subject {
  train(): Promise<unknown>;
  infer(): Promise<unknown>;
  dispose(): void;
}

/** The same batch for every implementation: seeded, `[batch, SEQ_LEN, INPUT_SIZE]` in [-1, 1) and class ids. */
function batchData(batch: number) {
  const rand = seededRandom(42);
  return {
    x: Float32Array.from({ length: batch * SEQ_LEN * INPUT_SIZE }, () => rand() * 2 - 1),
    y: Int32Array.from({ length: batch }, () => Math.floor(rand() * CLASSES)),
  };
}

/** GEMM work of one call: the forward's, and about three times that for a training step (forward, dX, dW). */
function gflop(cell: Cell, hidden: number, batch: number, op: Op): number {
  const gates = cell === 'lstm' ? 4 : 3;
  const forward = 2 * batch * SEQ_LEN * gates * hidden * (INPUT_SIZE + hidden) + 2 * batch * hidden * CLASSES;
  return ((op === 'train' ? 3 : 1) * forward) / 1e9;
}

export function engram(cell: Cell, hidden: number, batch: number): Subject {
  const model = sequential([layers[cell]({ inputSize: INPUT_SIZE, hiddenSize: hidden }), layers.dense({ units: CLASSES })], { seed: 1 });
  model.compile({ optimizer: optimizers.adam({ learningRate: LEARNING_RATE }), loss: 'crossEntropy' });
  const d = batchData(batch);
  const x = tensor(d.x, [batch, SEQ_LEN, INPUT_SIZE]);
  const y = tensor(d.y, [batch]);
  return { train: () => model.trainStep(x, y), infer: () => model.predict(x), dispose: () => model.dispose() };
}

export async function tfjs(backend: 'cpu' | 'wasm', cell: Cell, hidden: number, batch: number): Promise<Subject> {
  if (!(await tf.setBackend(backend))) throw new Error(`tfjs: the ${backend} backend failed to initialise`);
  // The default orthogonal recurrent initializer runs a QR decomposition that takes minutes on the cpu backend.
  const rnn = { units: hidden, inputShape: [SEQ_LEN, INPUT_SIZE], recurrentInitializer: 'glorotUniform' as const };
  const model = tf.sequential({ layers: [cell === 'lstm' ? tf.layers.lstm(rnn) : tf.layers.gru(rnn), tf.layers.dense({ units: CLASSES })] });
  const optimizer = tf.train.adam(LEARNING_RATE);
  model.compile({ optimizer, loss: (yTrue: tf.Tensor, yPred: tf.Tensor) => tf.losses.softmaxCrossEntropy(yTrue, yPred) });
  const d = batchData(batch);
  const x = tf.tensor3d(d.x, [batch, SEQ_LEN, INPUT_SIZE]);
  const y = tf.tidy(() => tf.oneHot(tf.tensor1d(d.y, 'int32'), CLASSES));
  return {
    train: () => model.trainOnBatch(x, y),
    infer: async () => {
      const logits = model.predict(x) as tf.Tensor;
      await logits.data();
      logits.dispose();
    },
    dispose: () => {
      model.dispose();
      optimizer.dispose();
      tf.dispose([x, y]);
    },
  };
}

/**
 * brain.js trains its LSTM one sequence at a time (`LSTMTimeStep`: the input vectors of every step in, a vector
 * out), so it is timed on batch 1 only: one training iteration over one sequence, and one `run`.
 */
async function brain(hidden: number): Promise<Subject | undefined> {
  let lib: { recurrent: { LSTMTimeStep: new (o: object) => BrainNet } };
  try {
    lib = (await import('brain.js')).default as typeof lib;
  } catch {
    return undefined;
  }
  const net = new lib.recurrent.LSTMTimeStep({ inputSize: INPUT_SIZE, hiddenLayers: [hidden], outputSize: INPUT_SIZE, learningRate: LEARNING_RATE });
  const d = batchData(1);
  const steps = Array.from({ length: SEQ_LEN }, (_, t) => Array.from(d.x.subarray(t * INPUT_SIZE, (t + 1) * INPUT_SIZE)));
  // One training sequence: the 50 steps in, and the next vector (a one-hot class) as the target.
  const target = Array.from({ length: INPUT_SIZE }, (_, k) => (k === d.y[0] ? 1 : 0));
  const sample = [...steps, target];
  net.train([sample], { iterations: 1, log: false, errorThresh: 0 });
  return {
    train: async () => net.train([sample], { iterations: 1, log: false, errorThresh: 0 }),
    infer: async () => net.run(steps),
    dispose: () => undefined,
  };
}

interface BrainNet {
  train(data: number[][][], options: object): unknown;
  run(input: number[][]): unknown;
}

interface TorchOut {
  torch: string;
  threads: number;
  results: (CaseResult & { cell: Cell; batch: number })[];
}

/**
 * The Python that runs the PyTorch peers: `$ENGRAM_TORCH_PYTHON` (a path, or a command on `PATH` such as
 * `python3`), else the repo's `.venv`.
 */
function python(): string | undefined {
  const set = process.env.ENGRAM_TORCH_PYTHON;
  if (set !== undefined && set !== '') {
    const found = resolveCommand(set);
    if (found === undefined) console.warn(`ENGRAM_TORCH_PYTHON=${set}: no such file, nor a command on PATH`);
    return found;
  }
  const venv = path.join(repoRoot, '.venv', 'bin', 'python');
  return existsSync(venv) ? venv : undefined;
}

/**
 * Runs the PyTorch peer `benches/<script>` on every case in one process and parses its JSON; undefined (with the
 * reason logged) if it cannot.
 */
export function runTorchPeer<T>(script: string, threads: number, budget: Budget, cases: unknown[]): T | undefined {
  const py = python();
  if (py === undefined) {
    console.warn('PyTorch peer skipped: no .venv/bin/python (see the README, Benchmarks) and ENGRAM_TORCH_PYTHON unset');
    return undefined;
  }
  try {
    const out = execFileSync(py, [path.join(repoRoot, 'benches', script), JSON.stringify({ threads, budget, cases })], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
      maxBuffer: 16 << 20,
    });
    return JSON.parse(out) as T;
  } catch (e) {
    console.warn(`PyTorch peer failed: ${(e as Error).message}`);
    return undefined;
  }
}

/** The PyTorch peer on every case of this suite. */
function torchPeer(threads: number, budget: Budget): TorchOut | undefined {
  const cases = CELLS.flatMap((cell) =>
    HIDDEN_SIZES.flatMap((hidden) => BATCHES.flatMap((batch) => (['train', 'infer'] as const).map((op) => ({ cell, hidden, batch, op })))),
  );
  return runTorchPeer<TorchOut>('torch_recurrent.py', threads, budget, cases);
}

/** The f32 GEMM peak through candle: `cargo run --release --example gemm_peak` (1024³, best of several). */
function gemmPeak(threads: number): number | undefined {
  try {
    const out = execFileSync('cargo', ['run', '--quiet', '--release', '-p', 'engram-core', '--example', 'gemm_peak'], {
      cwd: repoRoot,
      encoding: 'utf8',
      env: { ...process.env, RAYON_NUM_THREADS: String(threads) },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const m = /gflops=([\d.]+)/.exec(out);
    return m ? Number(m[1]) : undefined;
  } catch (e) {
    console.warn(`GEMM peak not measured: ${(e as Error).message}`);
    return undefined;
  }
}

/** Peak RSS (MiB) of a fresh process that takes one LSTM training step at seqLen 1000, hidden 256, batch 32. */
function longSequenceRss(): number | undefined {
  try {
    const out = execFileSync(process.execPath, ['--import', 'tsx', path.join(repoRoot, 'benches', 'rss.ts')], {
      cwd: repoRoot,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const m = /maxRssMiB=([\d.]+)/.exec(out);
    return m ? Number(m[1]) : undefined;
  } catch (e) {
    console.warn(`peak RSS not measured: ${(e as Error).message}`);
    return undefined;
  }
}

/** Points the wasm backend at its binaries and asks it for as many threads as engram gets. */
export async function setUpWasm(threads: number): Promise<string> {
  const require = createRequire(import.meta.url);
  setWasmPaths(`${path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm'))}${path.sep}`);
  setThreadsCount(threads);
  if (!(await tf.setBackend('wasm'))) throw new Error('tfjs: the wasm backend failed to initialise');
  const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
  const multithread = await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT');
  const used = getThreadsCount();
  return (
    `@tensorflow/tfjs-backend-wasm ${version_wasm}, SIMD ${simd ? 'on' : 'off'}, ${used} thread${used === 1 ? '' : 's'}` +
    (multithread ? '' : ` (asked for ${threads}; WASM_HAS_MULTITHREAD_SUPPORT is false in Node, so it runs one)`)
  );
}

export const recurrent: Suite = {
  name: 'recurrent',
  description:
    `One recurrent layer (LSTM or GRU; input ${INPUT_SIZE} float features → hidden H, last step) → dense ${CLASSES} ` +
    `logits, softmax cross-entropy on class ids, Adam (lr ${LEARNING_RATE}); seqLen ${SEQ_LEN}, batch B, float32. ` +
    '`train` is one step (forward, loss, backward, update); `infer` is predict on the same batch. brain.js trains ' +
    'its LSTM one sequence at a time (LSTMTimeStep, a regression head), so it appears at B 1 only, per sequence. ' +
    'GFLOP/s counts the GEMM work (training ≈ 3× the forward).',
  async run(budget: Budget) {
    const threads = Number(process.env.RAYON_NUM_THREADS) || os.cpus().length;
    const impls: Record<string, string> = {
      engram: 'native addon (candle + fused recurrent kernels), float32; threads from RAYON_NUM_THREADS',
      'tfjs-wasm': await setUpWasm(threads),
      'tfjs-cpu': `@tensorflow/tfjs ${tf.version.tfjs}, cpu backend (plain JavaScript, one thread); hidden ≤ ${TFJS_CPU_MAX_HIDDEN} only`,
    };
    const results: CaseResult[] = [];
    const label = (cell: Cell, hidden: number, batch: number) => `${cell} H${hidden} B${batch}`;
    for (const cell of CELLS) {
      for (const hidden of HIDDEN_SIZES) {
        for (const batch of BATCHES) {
          const kase = label(cell, hidden, batch);
          const subjects: [string, () => Promise<Subject | undefined>][] = [
            ['engram', async () => engram(cell, hidden, batch)],
            ['tfjs-wasm', () => tfjs('wasm', cell, hidden, batch)],
          ];
          if (hidden <= TFJS_CPU_MAX_HIDDEN) subjects.push(['tfjs-cpu', () => tfjs('cpu', cell, hidden, batch)]);
          if (cell === 'lstm' && batch === 1) subjects.push(['brain.js', () => brain(hidden)]);
          for (const [impl, make] of subjects) {
            const subject = await make();
            if (subject === undefined) continue;
            try {
              for (const op of ['train', 'infer'] as const) {
                const meta = { suite: 'recurrent', case: kase, impl, hidden, op, gflop: gflop(cell, hidden, batch, op) };
                results.push(await timeCase(meta, () => subject[op](), budget));
              }
            } finally {
              subject.dispose();
            }
          }
        }
      }
    }
    const torch = torchPeer(threads, budget);
    if (torch !== undefined) {
      impls.pytorch = `torch ${torch.torch} (PyPI), CPU, torch.set_num_threads(${torch.threads}); benches/torch_recurrent.py`;
      for (const r of torch.results) {
        results.push({ ...r, suite: 'recurrent', case: label(r.cell, r.hidden!, r.batch), impl: 'pytorch' });
      }
    }
    const brainVersion = await import('brain.js').then(
      () => 'brain.js (LSTMTimeStep), plain JavaScript, one thread',
      () => undefined,
    );
    if (brainVersion !== undefined) impls['brain.js'] = brainVersion;
    const peak = gemmPeak(threads);
    const rss = longSequenceRss();
    const notes = [
      peak === undefined ? 'GEMM peak: not measured' : `f32 GEMM peak through candle (1024³, ${threads} threads): ${peak.toFixed(1)} GFLOP/s`,
      rss === undefined ? 'Peak RSS: not measured' : `Peak RSS of one LSTM training step at seqLen 1000, hidden 256, batch 32 (fresh process): ${rss.toFixed(0)} MiB`,
    ];
    return { impls, results, notes, gemmPeakGflops: peak };
  },
};
