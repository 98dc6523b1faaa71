/**
 * The `lstm` suite: a one-layer LSTM classifier trained with Adam, in engram and in tfjs on its `wasm` and
 * `cpu` backends, on the same batch of data. The models and the batch are the `recurrent` suite's (LSTM cell,
 * batch 32).
 * @module
 */
import os from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { timeCase, type Budget, type Suite } from './measure.js';
import { CLASSES, INPUT_SIZE, LEARNING_RATE, SEQ_LEN, engram, setUpWasm, tfjs, type Subject } from './recurrent.js';
import type { CaseResult } from './report.js';

const BATCH = 32;
const HIDDEN_SIZES = [128, 256];

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
    const results: CaseResult[] = [];
    for (const hidden of HIDDEN_SIZES) {
      const subjects: [string, () => Subject | Promise<Subject>][] = [
        ['engram', () => engram('lstm', hidden, BATCH)],
        ['tfjs-wasm', () => tfjs('wasm', 'lstm', hidden, BATCH)],
        ['tfjs-cpu', () => tfjs('cpu', 'lstm', hidden, BATCH)],
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
