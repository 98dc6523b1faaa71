/**
 * Training recipes from the papers, ready to run.
 * @module
 */
import * as babi from './datasets/babi.js';
import type { BabiExample, BabiTensors, BabiVocab } from './datasets/babi.js';
import { memoryNetwork, type Model } from './model.js';
import { optimizers } from './optimizers.js';
import { sliceRows, type Tensor } from './tensor.js';

/** Options of {@link babiRecipe}; the defaults are the paper's per-task settings (Sukhbaatar et al. 2015). */
export interface BabiRecipeOptions {
  /** Passes over the training set (default 100). */
  epochs?: number;
  /** Default 32. */
  batchSize?: number;
  /** SGD learning rate on the batch's summed loss (default 0.01). */
  learningRate?: number;
  /** The learning rate halves every this many epochs (default 25). */
  halveEvery?: number;
  /** Gradient-norm clip (default 40). */
  clipNorm?: number;
  /** Fraction of the training set held out, from its end, to pick the best run (default 0.1). */
  validationSplit?: number;
  /** Linear start: no softmax in the memory layers until the validation loss stops falling (default true). */
  linearStart?: boolean;
  /** Epochs linear start may last at most (default 20). */
  linearStartEpochs?: number;
  /** Fraction of empty memories added to training stories (default 0.1). */
  randomNoise?: number;
  /** Default 20. */
  embedDim?: number;
  /** Default 3. */
  hops?: number;
  /** Default 50. */
  memorySize?: number;
  /** Independent runs; the one with the lowest validation error is kept (the paper: best of 10). Default 1. */
  runs?: number;
  /** Seed of the first run; run r uses `seed + r` (default 1). */
  seed?: number;
  /** Called after each epoch of each run. */
  onEpochEnd?: (run: number, epoch: number, logs: Record<string, number>) => void;
}

/** What {@link babiRecipe} returns. */
export interface BabiRecipeResult {
  /** The best run's model (the others are disposed). */
  model: Model;
  /** The vocabulary built over the training and test examples. */
  vocab: BabiVocab;
  /** The test set as tensors (for predictions and attention). */
  test: BabiTensors;
  /** Test error of the best run, in [0, 1]. */
  testError: number;
  /** Validation error of each run, in [0, 1]. */
  validationErrors: number[];
  /** Index of the best run. */
  bestRun: number;
  /** Wall time of all runs, in seconds. */
  seconds: number;
}

/** Fraction of rows whose highest logit is not the answer. */
export function classificationError(logits: Tensor, answers: Tensor): number {
  const n = answers.data.length;
  const v = logits.data.length / n;
  let wrong = 0;
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let k = 1; k < v; k++) if (logits.data[i * v + k]! > logits.data[i * v + best]!) best = k;
    if (best !== answers.data[i]) wrong++;
  }
  return wrong / n;
}

function rows(t: BabiTensors, s: number, e: number) {
  const cut = (x: Tensor) => sliceRows(x, s, e);
  return { x: { stories: cut(t.stories), queries: cut(t.queries) }, y: cut(t.answers) };
}

/**
 * Trains End-To-End Memory Networks on one bAbI task as the paper does: SGD on the summed loss with the learning
 * rate halved every 25 epochs, gradient clipping, position and temporal encoding, adjacent tying, linear start
 * and random noise; `runs` independent runs, keeping the one with the lowest validation error.
 */
export async function babiRecipe(
  train: BabiExample[],
  test: BabiExample[],
  options: BabiRecipeOptions = {},
): Promise<BabiRecipeResult> {
  const o = {
    epochs: 100,
    batchSize: 32,
    learningRate: 0.01,
    halveEvery: 25,
    clipNorm: 40,
    validationSplit: 0.1,
    linearStart: true,
    linearStartEpochs: 20,
    randomNoise: 0.1,
    embedDim: 20,
    hops: 3,
    memorySize: 50,
    runs: 1,
    seed: 1,
    ...options,
  };
  if (!Number.isInteger(o.runs) || o.runs < 1) throw new RangeError(`babiRecipe: runs must be a positive integer, got ${o.runs}`);
  const started = performance.now();
  const vocab = babi.buildVocab([train, test]);
  const both = babi.vectorize([...train, ...test], vocab, { memorySize: o.memorySize });
  const opts = { memorySize: o.memorySize, sentenceLen: both.sentenceLen };
  const trainT = babi.vectorize(train, vocab, opts);
  const testT = babi.vectorize(test, vocab, opts);
  const n = train.length;
  const nVal = Math.floor(n * o.validationSplit);
  const fitPart = rows(trainT, 0, n - nVal);
  const valPart = rows(trainT, n - nVal, n);
  let best: { model: Model; err: number; run: number } | undefined;
  const validationErrors: number[] = [];
  for (let run = 0; run < o.runs; run++) {
    const model = memoryNetwork({
      vocabSize: vocab.size,
      sentenceLen: both.sentenceLen,
      embedDim: o.embedDim,
      hops: o.hops,
      memorySize: o.memorySize,
      randomNoise: o.randomNoise,
      seed: o.seed + run,
    });
    model.compile({
      optimizer: optimizers.sgd({ learningRate: o.learningRate, clipNorm: o.clipNorm }),
      loss: { type: 'crossEntropy', reduction: 'sum' },
    });
    model.linearStart = o.linearStart;
    let bestVal = Infinity;
    await model.fit(fitPart.x, fitPart.y, {
      epochs: o.epochs,
      batchSize: o.batchSize,
      validationData: nVal > 0 ? [valPart.x, valPart.y] : undefined,
      seed: o.seed + run,
      callbacks: {
        onEpochBegin: (e) => void (model.learningRate = o.learningRate * 0.5 ** Math.floor(e / o.halveEvery)),
        onEpochEnd: (e, logs) => {
          if (model.linearStart) {
            // The paper puts the softmax back once the validation loss stops falling.
            const v = logs.val_loss ?? logs.loss!;
            if (v < bestVal) bestVal = v;
            else model.linearStart = false;
            if (e + 1 >= o.linearStartEpochs) model.linearStart = false;
          }
          o.onEpochEnd?.(run, e, logs);
        },
      },
    });
    model.linearStart = false;
    const err = nVal > 0 ? classificationError(await model.predict(valPart.x), valPart.y) : 0;
    validationErrors.push(err);
    if (best === undefined || err < best.err) {
      best?.model.dispose();
      best = { model, err, run };
    } else {
      model.dispose();
    }
  }
  if (best === undefined) throw new Error('babiRecipe: no run finished');
  const testError = classificationError(await best.model.predict({ stories: testT.stories, queries: testT.queries }), testT.answers);
  return {
    model: best.model,
    vocab,
    test: testT,
    testError,
    validationErrors,
    bestRun: best.run,
    seconds: (performance.now() - started) / 1000,
  };
}
