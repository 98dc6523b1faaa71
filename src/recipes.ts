/**
 * Training recipes from the papers, ready to run.
 * @module
 */
import * as babi from './datasets/babi.js';
import type { BabiExample, BabiTensors, BabiVocab } from './datasets/babi.js';
import { memoryNetwork, type Model } from './model.js';
import { optimizers } from './optimizers.js';
import { sliceRows, type Tensor } from './tensor.js';

/**
 * Options of {@link babiRecipe} and {@link babiJointRecipe}. The defaults are the paper's per-task settings
 * (Sukhbaatar et al. 2015) as its authors' released code runs them; the joint recipe changes some (see there).
 */
export interface BabiRecipeOptions {
  /** Passes over the training set after linear start (default 100; joint 60). */
  epochs?: number;
  /** Default 32. */
  batchSize?: number;
  /** SGD learning rate on the batch's summed loss once the softmax is in (default 0.01). */
  learningRate?: number;
  /** The learning rate halves every this many epochs (default 25; joint 15). */
  halveEvery?: number;
  /** Gradient-norm clip (default 40). */
  clipNorm?: number;
  /** Fraction of the training set held out, from its end (per task when joint), to pick the best run (default 0.1). */
  validationSplit?: number;
  /** Linear start: train first with the softmax of the memory layers removed (default true). */
  linearStart?: boolean;
  /** Epochs of linear start, before the `epochs` with the softmax (default 20; joint 30). */
  linearStartEpochs?: number;
  /** Learning rate during linear start (default 0.005, the paper's). */
  linearStartLearningRate?: number;
  /** Random noise: the rate of empty memories inserted into training stories (default 0.1). */
  randomNoise?: number;
  /** Default 20; joint 50. */
  embedDim?: number;
  /** Default 3. */
  hops?: number;
  /** Default 50. */
  memorySize?: number;
  /** Independent runs; the one with the lowest validation error is kept (the paper: best of 10). Default 1. */
  runs?: number;
  /** Seed of the first run; run r uses `seed + r` (default 1). */
  seed?: number;
  /** Called after each epoch of each run; `epoch` counts linear start's epochs first, and `logs.linearStart` is 1 during them. */
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

/** What {@link babiJointRecipe} returns. */
export interface BabiJointResult {
  /** The best run's model, one over all the tasks given (the others are disposed). */
  model: Model;
  /** The vocabulary built over every task's training and test examples. */
  vocab: BabiVocab;
  /** Each task's test set as tensors, in the order given. */
  tests: BabiTensors[];
  /** Each task's test error for the best run, in [0, 1], in the order given. */
  testErrors: number[];
  /** Validation error (all tasks together) of each run, in [0, 1]. */
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

type Part = { x: { stories: Tensor; queries: Tensor }; y: Tensor };

function rows(t: BabiTensors, s: number, e: number): Part {
  const cut = (x: Tensor) => sliceRows(x, s, e);
  return { x: { stories: cut(t.stories), queries: cut(t.queries) }, y: cut(t.answers) };
}

/** Rows of several parts stacked (all with the same shapes past the first axis). */
function stack(parts: Part[]): Part {
  const cat = (ts: Tensor[]): Tensor => {
    const n = ts.reduce((a, t) => a + t.shape[0]!, 0);
    const data = new Int32Array(ts.reduce((a, t) => a + t.data.length, 0));
    let at = 0;
    for (const t of ts) {
      data.set(t.data as Int32Array, at);
      at += t.data.length;
    }
    return { data, shape: [n, ...ts[0]!.shape.slice(1)] };
  };
  return {
    x: { stories: cat(parts.map((p) => p.x.stories)), queries: cat(parts.map((p) => p.x.queries)) },
    y: cat(parts.map((p) => p.y)),
  };
}

const DEFAULTS = {
  epochs: 100,
  batchSize: 32,
  learningRate: 0.01,
  halveEvery: 25,
  clipNorm: 40,
  validationSplit: 0.1,
  linearStart: true,
  linearStartEpochs: 20,
  linearStartLearningRate: 0.005,
  randomNoise: 0.1,
  embedDim: 20,
  hops: 3,
  memorySize: 50,
  runs: 1,
  seed: 1,
};
type Settings = typeof DEFAULTS & Pick<BabiRecipeOptions, 'onEpochEnd'>;

/**
 * `runs` independent runs on `fit`, each: linear start (if on) for `linearStartEpochs` at its own learning rate,
 * then `epochs` with the softmax, the learning rate halving every `halveEvery`. Keeps the run with the lowest
 * error on `val`.
 */
async function bestOfRuns(o: Settings, vocabSize: number, sentenceLen: number, fit: Part, val: Part | undefined) {
  if (!Number.isInteger(o.runs) || o.runs < 1) throw new RangeError(`babiRecipe: runs must be a positive integer, got ${o.runs}`);
  for (const k of ['epochs', 'linearStartEpochs', 'halveEvery'] as const) {
    if (!Number.isInteger(o[k]) || o[k] < (k === 'halveEvery' ? 1 : 0)) {
      throw new RangeError(`babiRecipe: ${k} must be a ${k === 'halveEvery' ? 'positive' : 'non-negative'} integer, got ${o[k]}`);
    }
  }
  let best: { model: Model; err: number; run: number } | undefined;
  const validationErrors: number[] = [];
  for (let run = 0; run < o.runs; run++) {
    const model = memoryNetwork({
      vocabSize,
      sentenceLen,
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
    const validationData: [Part['x'], Tensor] | undefined = val ? [val.x, val.y] : undefined;
    const lsEpochs = o.linearStart ? o.linearStartEpochs : 0;
    if (lsEpochs > 0) {
      model.linearStart = true;
      model.learningRate = o.linearStartLearningRate;
      await model.fit(fit.x, fit.y, {
        epochs: lsEpochs,
        batchSize: o.batchSize,
        validationData,
        seed: o.seed + run,
        verbose: 0,
        callbacks: { onEpochEnd: (e, logs) => o.onEpochEnd?.(run, e, { ...logs, linearStart: 1 }) },
      });
      model.linearStart = false;
    }
    await model.fit(fit.x, fit.y, {
      epochs: o.epochs,
      batchSize: o.batchSize,
      validationData,
      // A seed of its own, so the shuffles of the two phases differ.
      seed: (o.seed + run) * 7919 + 1,
      verbose: 0,
      callbacks: {
        onEpochBegin: (e) => void (model.learningRate = o.learningRate * 0.5 ** Math.floor(e / o.halveEvery)),
        onEpochEnd: (e, logs) => o.onEpochEnd?.(run, lsEpochs + e, { ...logs, linearStart: 0 }),
      },
    });
    const err = val ? classificationError(await model.predict(val.x), val.y) : 0;
    validationErrors.push(err);
    if (best === undefined || err < best.err) {
      best?.model.dispose();
      best = { model, err, run };
    } else {
      model.dispose();
    }
  }
  if (best === undefined) throw new Error('babiRecipe: no run finished');
  return { model: best.model, bestRun: best.run, validationErrors };
}

/**
 * Trains End-To-End Memory Networks on one bAbI task as the paper does: linear start (20 epochs at 0.005), then
 * SGD on the summed loss at 0.01 halved every 25 epochs for 100 epochs, gradient clipping at 40, position and
 * temporal encoding, adjacent tying and random noise; `runs` independent runs, keeping the one with the lowest
 * validation error.
 */
export async function babiRecipe(
  train: BabiExample[],
  test: BabiExample[],
  options: BabiRecipeOptions = {},
): Promise<BabiRecipeResult> {
  const o: Settings = { ...DEFAULTS, ...options };
  const started = performance.now();
  const vocab = babi.buildVocab([train, test]);
  const both = babi.vectorize([...train, ...test], vocab, { memorySize: o.memorySize });
  const opts = { memorySize: o.memorySize, sentenceLen: both.sentenceLen };
  const trainT = babi.vectorize(train, vocab, opts);
  const testT = babi.vectorize(test, vocab, opts);
  const n = train.length;
  const nVal = Math.floor(n * o.validationSplit);
  const r = await bestOfRuns(o, vocab.size, both.sentenceLen, rows(trainT, 0, n - nVal), nVal > 0 ? rows(trainT, n - nVal, n) : undefined);
  const testError = classificationError(await r.model.predict({ stories: testT.stories, queries: testT.queries }), testT.answers);
  return { ...r, vocab, test: testT, testError, seconds: (performance.now() - started) / 1000 };
}

/**
 * Joint training (the paper's "PE LS RN joint"): one model for all the tasks given, trained on their training
 * sets together, with embedding 50, linear start for 30 epochs, then 60 epochs with the learning rate halved
 * every 15 (other defaults as {@link babiRecipe}); each task keeps its last `validationSplit` for validation.
 * Returns each task's test error.
 */
export async function babiJointRecipe(
  tasks: readonly { train: BabiExample[]; test: BabiExample[] }[],
  options: BabiRecipeOptions = {},
): Promise<BabiJointResult> {
  if (tasks.length === 0) throw new RangeError('babiJointRecipe: give at least one task');
  const o: Settings = { ...DEFAULTS, embedDim: 50, epochs: 60, halveEvery: 15, linearStartEpochs: 30, ...options };
  const started = performance.now();
  const vocab = babi.buildVocab(tasks.flatMap((t) => [t.train, t.test]));
  const all = tasks.flatMap((t) => [...t.train, ...t.test]);
  const sentenceLen = babi.vectorize(all, vocab, { memorySize: o.memorySize }).sentenceLen;
  const opts = { memorySize: o.memorySize, sentenceLen };
  const fits: Part[] = [];
  const vals: Part[] = [];
  for (const t of tasks) {
    const tt = babi.vectorize(t.train, vocab, opts);
    const n = t.train.length;
    const nVal = Math.floor(n * o.validationSplit);
    fits.push(rows(tt, 0, n - nVal));
    if (nVal > 0) vals.push(rows(tt, n - nVal, n));
  }
  const r = await bestOfRuns(o, vocab.size, sentenceLen, stack(fits), vals.length > 0 ? stack(vals) : undefined);
  const tests = tasks.map((t) => babi.vectorize(t.test, vocab, opts));
  const testErrors: number[] = [];
  for (const t of tests) {
    testErrors.push(classificationError(await r.model.predict({ stories: t.stories, queries: t.queries }), t.answers));
  }
  return { ...r, vocab, tests, testErrors, seconds: (performance.now() - started) / 1000 };
}
