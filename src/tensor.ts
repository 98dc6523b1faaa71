/** The element types engram accepts: float features, int32 token ids and class ids, float64 for checks. */
export type TensorData = Float32Array | Int32Array | Float64Array;

/** The data type of a {@link Tensor}'s elements. */
export type DType = 'float32' | 'int32' | 'float64';

/**
 * A row-major tensor: a typed array and a shape, batch first. Plain objects of this form are accepted
 * wherever a tensor is expected.
 */
export interface Tensor {
  /** The values, row-major. */
  readonly data: TensorData;
  /** The size of each axis, batch first; their product is `data.length`. */
  readonly shape: readonly number[];
}

/** The dtype of a tensor's data. */
export function dtypeOf(t: Tensor): DType {
  if (t.data instanceof Int32Array) return 'int32';
  if (t.data instanceof Float64Array) return 'float64';
  return 'float32';
}

/**
 * Makes a tensor. `data` may be a typed array (used as is, no copy) or an array of numbers, converted to
 * `dtype` (default `float32`). The shape's product must equal the data's length.
 *
 * ```ts
 * const ids = tensor(Int32Array.from([1, 2, 3, 4]), [2, 2]);
 * const x = tensor([0.5, 1.5], [1, 2]);
 * ```
 */
export function tensor(data: TensorData | readonly number[], shape: readonly number[], dtype?: DType): Tensor {
  let typed: TensorData;
  if (Array.isArray(data)) {
    const d = dtype ?? 'float32';
    typed = d === 'int32' ? Int32Array.from(data) : d === 'float64' ? Float64Array.from(data) : Float32Array.from(data);
  } else if (data instanceof Float32Array || data instanceof Int32Array || data instanceof Float64Array) {
    typed = data;
    if (dtype !== undefined && dtype !== dtypeOf({ data, shape })) {
      throw new TypeError(`tensor: data is ${dtypeOf({ data, shape })} but dtype ${dtype} was asked for`);
    }
  } else {
    throw new TypeError(
      `tensor: data must be a Float32Array, Int32Array, Float64Array or number[], got ${describe(data)}`,
    );
  }
  const t = { data: typed, shape: [...shape] };
  checkTensor('tensor', t);
  return t;
}

/** @internal */
export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (ArrayBuffer.isView(v)) return v.constructor.name;
  return typeof v === 'object' ? (v.constructor?.name ?? 'an object') : typeof v;
}

/**
 * Checks that `t` is a well-formed tensor and returns it; `what` names the argument in errors.
 * @internal
 */
export function checkTensor(what: string, t: unknown): Tensor {
  if (typeof t !== 'object' || t === null || !('data' in t) || !('shape' in t)) {
    throw new TypeError(`${what} must be a tensor { data: Float32Array | Int32Array, shape: number[] }, got ${describe(t)}`);
  }
  const { data, shape } = t as { data: unknown; shape: unknown };
  if (!(data instanceof Float32Array || data instanceof Int32Array || data instanceof Float64Array)) {
    throw new TypeError(`${what}.data must be a Float32Array, Int32Array or Float64Array, got ${describe(data)}`);
  }
  if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d < 0 || d > 0xffffffff)) {
    throw new TypeError(`${what}.shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
  }
  const n = shape.reduce((a: number, b: number) => a * b, 1);
  if (n !== data.length) {
    throw new RangeError(`${what}: shape [${shape.join(', ')}] holds ${n} values but data has ${data.length}`);
  }
  return t as Tensor;
}

/** Number of values in one row (everything after the batch axis). @internal */
export function rowSize(t: Tensor): number {
  return t.shape.slice(1).reduce((a, b) => a * b, 1);
}

/** Rows `start` to `end` (exclusive) of `t`, sharing its memory. @internal */
export function sliceRows(t: Tensor, start: number, end: number): Tensor {
  const r = rowSize(t);
  return { data: t.data.subarray(start * r, end * r), shape: [end - start, ...t.shape.slice(1)] };
}

/** The rows of `t` at `indices`, copied into a new tensor. @internal */
export function takeRows(t: Tensor, indices: ArrayLike<number>): Tensor {
  const r = rowSize(t);
  const Ctor = t.data.constructor as new (n: number) => TensorData;
  const out = new Ctor(indices.length * r);
  for (let i = 0; i < indices.length; i++) {
    const src = indices[i]! * r;
    out.set(t.data.subarray(src, src + r), i * r);
  }
  return { data: out, shape: [indices.length, ...t.shape.slice(1)] };
}
