import { checkTensor, describe, sliceRows, takeRows, type Tensor } from './tensor.js';

/** The two inputs of a memory network, row for row: `stories [batch, memorySize, sentenceLen]` and
 * `queries [batch, sentenceLen]`, int32 word ids with 0 as padding. */
export interface MemoryInputs {
  /** `[batch, memorySize, sentenceLen]`, sentences oldest first, padding after. */
  stories: Tensor;
  /** `[batch, sentenceLen]`. */
  queries: Tensor;
}

/**
 * A padded batch of sequences with each row's length, for the recurrent layers of a sequential model: row i runs
 * its first `lengths[i]` steps only; the steps after never change its state and output zeros (PyTorch's packed
 * sequences). With token ids, an `embedding({ maskZero: true })` first derives the lengths from trailing zeros.
 */
export interface SequenceInputs {
  /** `[batch, seqLen, ...]`. */
  x: Tensor;
  /** Int32 `[batch]`, each in `1..=seqLen`. */
  lengths: Tensor;
}

/** What a model takes: a tensor or a padded batch with lengths (sequential models), or named tensors (memory networks). */
export type Inputs = Tensor | SequenceInputs | MemoryInputs;

/** The kinds of model, with the names of their inputs in native order. @internal */
export const INPUT_NAMES: Record<string, readonly string[] | undefined> = {
  sequential: ['x', 'lengths'],
  memoryNetwork: ['stories', 'queries'],
};

function isTensor(x: unknown): x is Tensor {
  return typeof x === 'object' && x !== null && 'data' in x && 'shape' in x;
}

/** Checks inputs against a model kind and returns them as a list in native order. @internal */
export function inputList(kind: string, what: string, x: unknown): Tensor[] {
  if (kind === 'memoryNetwork') {
    if (typeof x !== 'object' || x === null || isTensor(x) || !('stories' in x) || !('queries' in x)) {
      throw new TypeError(`${what} must be { stories, queries } for a memory network, got ${describe(x)}`);
    }
    const m = x as MemoryInputs;
    const list = [checkTensor(`${what}.stories`, m.stories), checkTensor(`${what}.queries`, m.queries)];
    if ((list[0]!.shape[0] ?? 0) !== (list[1]!.shape[0] ?? 0)) {
      throw new RangeError(`${what}: stories and queries must have the same batch size, got ${list[0]!.shape[0]} and ${list[1]!.shape[0]}`);
    }
    return list;
  }
  if (typeof x === 'object' && x !== null && !isTensor(x) && 'x' in x && 'lengths' in x) {
    const s = x as SequenceInputs;
    const list = [checkTensor(`${what}.x`, s.x), checkTensor(`${what}.lengths`, s.lengths)];
    if (!(list[1]!.data instanceof Int32Array)) {
      throw new TypeError(`${what}.lengths must be an Int32Array tensor, got ${describe(list[1]!.data)}`);
    }
    if (list[1]!.shape.length !== 1 || list[1]!.shape[0] !== list[0]!.shape[0]) {
      throw new RangeError(`${what}.lengths must have shape [${list[0]!.shape[0]}] (one per row), got [${list[1]!.shape.join(', ')}]`);
    }
    return list;
  }
  return [checkTensor(what, x)];
}

/** Rows in the inputs (their shared first axis). @internal */
export function rowCount(list: Tensor[]): number {
  return list[0]?.shape[0] ?? 0;
}

/** The inputs with `f` applied to each tensor, keeping their form. @internal */
export function mapInputs(x: Inputs, f: (t: Tensor) => Tensor): Inputs {
  if (isTensor(x)) return f(x);
  if ('lengths' in x) return { x: f(x.x), lengths: f(x.lengths) };
  return { stories: f(x.stories), queries: f(x.queries) };
}

/** Rows `[s, e)` of every input, sharing memory. @internal */
export function sliceInputs(x: Inputs, s: number, e: number): Inputs {
  return mapInputs(x, (t) => sliceRows(t, s, e));
}

/** The rows at `idx` of every input, copied. @internal */
export function takeInputs(x: Inputs, idx: ArrayLike<number>): Inputs {
  return mapInputs(x, (t) => takeRows(t, idx));
}
