/**
 * The masked-token objective of BERT (Devlin et al. 2019): hide some tokens and train the model to name them.
 * @module
 */
import { seededRandom } from './batching.js';
import { checkTensor, describe, type Tensor } from './tensor.js';

/** Options of {@link maskTokens}. */
export interface MaskTokensOptions {
  /** The id that replaces most chosen tokens (BERT's `[MASK]`); usually one past the text's ids. */
  maskId: number;
  /** Number of ids: random replacements are drawn from `[0, vocabSize)`, never `maskId` or a special id. */
  vocabSize: number;
  /** Fraction of (non-special) tokens chosen for prediction (default 0.15). */
  rate?: number;
  /** Ids never chosen, such as padding (default none). */
  specialIds?: number[];
  /** The target at positions not chosen, left out by the loss (default -100, `crossEntropy`'s default `ignoreIndex`). */
  ignoreIndex?: number;
  /** Seeds the choice: the same seed gives the same masks. Default: random. */
  seed?: number;
}

/** What {@link maskTokens} returns: the corrupted input and the targets. */
export interface MaskedTokens {
  /** The ids with the chosen positions corrupted, same shape as the input. */
  x: Tensor;
  /** The original id at each chosen position and `ignoreIndex` elsewhere: targets for `crossEntropy`. */
  y: Tensor;
  /** How many positions were chosen. */
  count: number;
}

function intOption(what: string, v: unknown, min: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    throw new RangeError(`maskTokens: ${what} must be an integer >= ${min}, got ${String(v)}`);
  }
  return v;
}

/**
 * Chooses `rate` of the tokens of `ids` (int32, any shape) at random; of those, 80% become `maskId`, 10% a
 * random id and 10% stay as they are, as in BERT. Train with `crossEntropy` on `y`: the loss then covers the
 * chosen positions only.
 *
 * ```ts
 * const { x, y } = maskTokens(batch, { maskId: vocabSize, vocabSize, seed: step });
 * await model.trainStep(x, y); // model: embedding (vocabSize + 1 ids) ... dense(vocabSize), loss 'crossEntropy'
 * ```
 */
export function maskTokens(ids: Tensor, options: MaskTokensOptions): MaskedTokens {
  checkTensor('maskTokens: ids', ids);
  if (!(ids.data instanceof Int32Array)) {
    throw new TypeError(`maskTokens: ids must hold int32 token ids (an Int32Array), got ${describe(ids.data)}`);
  }
  if (typeof options !== 'object' || options === null) {
    throw new TypeError(`maskTokens: options must be { maskId, vocabSize, ... }, got ${describe(options)}`);
  }
  const { maskId, vocabSize, rate = 0.15, specialIds = [], ignoreIndex = -100, seed, ...rest } = options;
  const extra = Object.keys(rest);
  if (extra.length > 0) throw new TypeError(`maskTokens: unknown option ${extra.join(', ')}`);
  intOption('vocabSize', vocabSize, 1);
  intOption('maskId', maskId, 0);
  if (!(typeof rate === 'number' && rate >= 0 && rate <= 1)) {
    throw new RangeError(`maskTokens: rate must be in [0, 1], got ${String(rate)}`);
  }
  if (!Number.isSafeInteger(ignoreIndex)) throw new RangeError(`maskTokens: ignoreIndex must be an integer, got ${String(ignoreIndex)}`);
  const special = new Set(specialIds);
  const replacements: number[] = [];
  for (let id = 0; id < vocabSize; id++) if (id !== maskId && !special.has(id)) replacements.push(id);
  const random = seededRandom(seed ?? Math.floor(Math.random() * 2 ** 32));
  const src = ids.data;
  const x = Int32Array.from(src);
  const y = new Int32Array(src.length).fill(ignoreIndex);
  let count = 0;
  for (let i = 0; i < src.length; i++) {
    const id = src[i]!;
    if (special.has(id) || random() >= rate) continue;
    y[i] = id;
    count++;
    const r = random();
    if (r < 0.8) x[i] = maskId;
    else if (r < 0.9 && replacements.length > 0) x[i] = replacements[Math.floor(random() * replacements.length)]!;
  }
  return { x: { data: x, shape: [...ids.shape] }, y: { data: y, shape: [...ids.shape] }, count };
}
