/**
 * Suite `small`: a tiny model, where the cost of a step is threads waking one another rather than arithmetic.
 * engram runs such calls on the calling thread (work under about a million multiply-adds); this suite shows
 * what a step costs at `RAYON_NUM_THREADS` and, beside it, at one thread, plus engram's kernel-time share.
 * @module
 */
import { layers, optimizers, sequential, tensor } from '../src/index.js';
import { timeCase, type Budget, type Suite } from './measure.js';
import type { CaseResult } from './report.js';

const VOCAB = 12;
const BATCH = 4;
const SEQ_LEN = 6;

export const small: Suite = {
  name: 'small',
  description:
    `A tiny model: embedding ${VOCAB} x 8, LSTM 16 (last step), dense ${VOCAB}, softmax cross-entropy, Adam (lr 0.01); ` +
    `batch ${BATCH} x ${SEQ_LEN} token ids, float32. \`train\` is one step (forward, loss, backward, update); ` +
    '`infer` is predict on the same batch. Each call goes from the JS thread to a worker and back, as every call does.',
  async run(budget: Budget) {
    const model = sequential(
      [layers.embedding({ vocabSize: VOCAB, dim: 8 }), layers.lstm({ inputSize: 8, hiddenSize: 16 }), layers.dense({ units: VOCAB })],
      { seed: 1 },
    );
    model.compile({ optimizer: optimizers.adam({ learningRate: 1e-2 }), loss: 'crossEntropy' });
    const x = tensor(Int32Array.from({ length: BATCH * SEQ_LEN }, (_, i) => (i * 7) % VOCAB), [BATCH, SEQ_LEN]);
    const y = tensor(Int32Array.from({ length: BATCH }, (_, i) => (i * 5) % VOCAB), [BATCH]);
    const meta = { suite: 'small', case: `lstm 16 B${BATCH} T${SEQ_LEN}`, impl: 'engram' };
    const results: CaseResult[] = [
      await timeCase({ ...meta, op: 'train' }, () => model.trainStep(x, y), budget),
      await timeCase({ ...meta, op: 'infer' }, () => model.predict(x), budget),
    ];
    model.dispose();
    return {
      impls: { engram: 'native addon (candle + fused recurrent kernels), float32; threads from RAYON_NUM_THREADS' },
      results,
    };
  },
};
