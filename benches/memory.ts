/**
 * Suite `memory`: End-To-End Memory Networks on bAbI task 1 with the paper's settings (embedding 20, 3 hops,
 * memory 50, adjacent tying, PE, TE, 10% random noise, SGD on the summed loss, batch 32). No JavaScript
 * library has a memory network to compare with, so the table has engram's figures only; the wall time of
 * all 20 tasks x 100 epochs is in examples/babi/RESULTS.md (`npm run babi`).
 * @module
 */
import { datasets, memoryNetwork, optimizers } from '../src/index.js';
import { sliceRows as rows } from '../src/tensor.js';
import { timeCase, type Budget, type Suite } from './measure.js';
import type { CaseResult } from './report.js';

export const memory: Suite = {
  name: 'memory',
  description:
    'End-To-End Memory Network on bAbI task 1 (1,000 training questions, the first 900 trained on): embedding 20, 3 hops, ' +
    'memory 50, adjacent tying, position and temporal encoding, 10% random noise, SGD on the summed loss, batch 32, ' +
    'float32. `train` is one epoch (29 steps); `infer` is predict on the 1,000 test questions.',
  async run(budget: Budget) {
    const { babi } = datasets;
    const train = await babi.loadTask(1, { split: 'train' });
    const test = await babi.loadTask(1, { split: 'test' });
    const vocab = babi.buildVocab([train, test]);
    const both = babi.vectorize([...train, ...test], vocab);
    const tr = babi.vectorize(train, vocab, { sentenceLen: both.sentenceLen });
    const te = babi.vectorize(test, vocab, { sentenceLen: both.sentenceLen });
    const model = memoryNetwork({ vocabSize: vocab.size, sentenceLen: both.sentenceLen, randomNoise: 0.1, seed: 1 });
    model.compile({ optimizer: optimizers.sgd({ learningRate: 0.01, clipNorm: 40 }), loss: { type: 'crossEntropy', reduction: 'sum' } });
    const results: CaseResult[] = [];
    const epoch = async () => {
      for (let s = 0; s < 900; s += 32) {
        const e = Math.min(900, s + 32);
        await model.trainStep({ stories: rows(tr.stories, s, e), queries: rows(tr.queries, s, e) }, rows(tr.answers, s, e));
      }
    };
    const meta = { suite: 'memory', case: 'bAbI task 1', impl: 'engram' };
    results.push(await timeCase({ ...meta, op: 'train' }, epoch, budget));
    results.push(await timeCase({ ...meta, op: 'infer' }, () => model.predict({ stories: te.stories, queries: te.queries }), budget));
    model.dispose();
    return { impls: { engram: 'native addon (candle), float32; fused sentence-embedding kernel on the CPU' }, results };
  },
};
