/**
 * The `lstm` suite: a one-layer LSTM classifier trained with Adam, in engram and in tfjs on its `wasm` and
 * `cpu` backends, on the same batch of data.
 * @module
 */
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { getThreadsCount, setThreadsCount, setWasmPaths, version_wasm } from '@tensorflow/tfjs-backend-wasm';
import { layers, optimizers, sequential, tensor } from '../src/index.js';
import { timeCase, type Budget, type Suite } from './measure.js';
import type { CaseResult } from './report.js';

const BATCH = 32;
const SEQ_LEN = 50;
const INPUT_SIZE = 64;
const CLASSES = 64;
const HIDDEN_SIZES = [128, 256];
const LEARNING_RATE = 1e-3;

/** One implementation's model, compiled and holding its copy of the batch. */
interface Subject {
  /** Forward, loss, backward and Adam update; resolves once the step has finished. */
  train(): Promise<unknown>;
  /** Logits for the batch; resolves once they have been read back. */
  infer(): Promise<unknown>;
  dispose(): void;
}

interface Batch {
  /** `[BATCH, SEQ_LEN, INPUT_SIZE]`, uniform in [-1, 1). */
  x: Float32Array;
  /** `[BATCH]` class ids. */
  y: Int32Array;
}

/** Mulberry32: a seeded generator, so every run and every implementation sees the same batch. */
function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), s | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

function makeBatch(seed: number): Batch {
  const rand = random(seed);
  return {
    x: Float32Array.from({ length: BATCH * SEQ_LEN * INPUT_SIZE }, () => rand() * 2 - 1),
    y: Int32Array.from({ length: BATCH }, () => Math.floor(rand() * CLASSES)),
  };
}

function engram(hidden: number, batch: Batch): Subject {
  const model = sequential(
    [layers.lstm({ inputSize: INPUT_SIZE, hiddenSize: hidden }), layers.dense({ units: CLASSES })],
    { seed: 1 },
  );
  model.compile({ optimizer: optimizers.adam({ learningRate: LEARNING_RATE }), loss: 'crossEntropy' });
  const x = tensor(batch.x, [BATCH, SEQ_LEN, INPUT_SIZE]);
  const y = tensor(batch.y, [BATCH]);
  return {
    train: () => model.trainStep(x, y),
    infer: () => model.predict(x),
    dispose: () => model.dispose(),
  };
}

async function tfjs(backend: 'cpu' | 'wasm', hidden: number, batch: Batch): Promise<Subject> {
  if (!(await tf.setBackend(backend))) throw new Error(`tfjs: the ${backend} backend failed to initialise`);
  const model = tf.sequential({
    layers: [
      // The default orthogonal recurrent initializer runs a QR decomposition that takes minutes on the cpu
      // backend; the initializer does not change the cost of a step.
      tf.layers.lstm({ units: hidden, inputShape: [SEQ_LEN, INPUT_SIZE], recurrentInitializer: 'glorotUniform' }),
      tf.layers.dense({ units: CLASSES }),
    ],
  });
  const optimizer = tf.train.adam(LEARNING_RATE);
  // Softmax cross-entropy on logits against one-hot targets: engram's crossEntropy on class ids.
  model.compile({ optimizer, loss: (yTrue: tf.Tensor, yPred: tf.Tensor) => tf.losses.softmaxCrossEntropy(yTrue, yPred) });
  const x = tf.tensor3d(batch.x, [BATCH, SEQ_LEN, INPUT_SIZE]);
  const y = tf.tidy(() => tf.oneHot(tf.tensor1d(batch.y, 'int32'), CLASSES));
  return {
    // trainOnBatch reads the loss back, so it resolves after the update has run.
    train: () => model.trainOnBatch(x, y),
    infer: async () => {
      const logits = model.predict(x) as tf.Tensor;
      await logits.data();
      logits.dispose();
    },
    dispose: () => {
      model.dispose();
      optimizer.dispose(); // compile does not take ownership of an optimizer instance
      tf.dispose([x, y]);
    },
  };
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

export const lstm: Suite = {
  name: 'lstm',
  description:
    `LSTM (input ${INPUT_SIZE} float features → hidden H, last step) → dense ${CLASSES} logits, softmax ` +
    `cross-entropy on class ids, Adam (lr ${LEARNING_RATE}); batch ${BATCH}, seqLen ${SEQ_LEN}, float32. ` +
    '`train` is one step (forward, loss, backward, update); `infer` is predict on the same batch.',
  async run(budget: Budget) {
    const threads = Number(process.env.RAYON_NUM_THREADS) || os.cpus().length;
    const impls = {
      engram: 'native addon (candle), float32; threads from RAYON_NUM_THREADS',
      'tfjs-wasm': await setUpWasm(threads),
      'tfjs-cpu': `@tensorflow/tfjs ${tf.version.tfjs}, cpu backend (plain JavaScript, one thread)`,
    };
    const batch = makeBatch(42);
    const results: CaseResult[] = [];
    for (const hidden of HIDDEN_SIZES) {
      const subjects: [string, () => Subject | Promise<Subject>][] = [
        ['engram', () => engram(hidden, batch)],
        ['tfjs-wasm', () => tfjs('wasm', hidden, batch)],
        ['tfjs-cpu', () => tfjs('cpu', hidden, batch)],
      ];
      for (const [impl, make] of subjects) {
        const subject = await make();
        try {
          for (const op of ['train', 'infer'] as const) {
            const meta = { suite: 'lstm', case: `hidden ${hidden}`, impl, hidden, op };
            results.push(await timeCase(meta, () => subject[op](), budget));
          }
        } finally {
          subject.dispose();
        }
      }
    }
    return { impls, results };
  },
};
