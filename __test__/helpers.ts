import { readFileSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'vitest';
import { layers, optimizers, sequential, tensor, type Model, type Tensor } from '../src/index.js';

/** Reads a safetensors file (F32, F64 and I32 tensors) into tensors by name. */
export function readSafetensors(path: string): Record<string, Tensor> {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const base = 8 + n;
  const out: Record<string, Tensor> = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [s, e] = info.data_offsets;
    const bytes = buf.buffer.slice(buf.byteOffset + base + s, buf.byteOffset + base + e);
    const data =
      info.dtype === 'F32' ? new Float32Array(bytes) : info.dtype === 'F64' ? new Float64Array(bytes) : new Int32Array(bytes);
    out[name] = { data, shape: info.shape };
  }
  return out;
}

/** Asserts |a - b| <= atol + rtol * |b| elementwise, with the worst index in the message. */
export function expectClose(actual: Tensor, expected: Tensor, rtol = 1e-5, atol = 1e-6, what = 'tensor'): void {
  expect(actual.shape, `${what} shape`).toEqual(expected.shape);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < expected.data.length; i++) {
    const a = actual.data[i]!;
    const b = expected.data[i]!;
    const excess = Math.abs(a - b) - (atol + rtol * Math.abs(b));
    if (!(excess <= worst)) {
      worst = Number.isNaN(excess) ? Infinity : excess;
      at = i;
    }
  }
  expect(at, `${what}: element ${at} is ${actual.data[at]} but expected ${expected.data[at]}`).toBe(-1);
}

/** A fresh temporary folder. */
export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'engram-test-'));
}

/** The PyTorch fixture written by scripts/make-fixtures.py. */
export const LSTM_FIXTURE = new URL('../crates/core/tests/fixtures/lstm_parity.safetensors', import.meta.url).pathname;

/** Rows of the cycle 0, 1, ..., vocab - 1, 0, ... from different starts, with the next id of each as its target. */
export function cycleBatch(batch: number, seqLen: number, vocab = 12): { x: Tensor; y: Tensor } {
  const x = new Int32Array(batch * seqLen);
  const y = new Int32Array(batch * seqLen);
  for (let b = 0; b < batch; b++) {
    for (let t = 0; t < seqLen; t++) {
      x[b * seqLen + t] = (b + t) % vocab;
      y[b * seqLen + t] = (b + t + 1) % vocab;
    }
  }
  return { x: tensor(x, [batch, seqLen]), y: tensor(y, [batch, seqLen]) };
}

/** y = 2 x0 - x1 + 0.5 over n rows: a linear task a dense layer fits. */
export function linearData(n: number): { x: Tensor; y: Tensor } {
  const x = new Float32Array(n * 2);
  const y = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    x[2 * i] = Math.sin(i);
    x[2 * i + 1] = Math.cos(3 * i);
    y[i] = 2 * x[2 * i]! - x[2 * i + 1]! + 0.5;
  }
  return { x: tensor(x, [n, 2]), y: tensor(y, [n, 1]) };
}

/** A seeded dense layer for {@link linearData}, compiled with SGD and mse. */
export function denseModel(learningRate = 0.1): Model {
  const m = sequential([layers.dense({ inputSize: 2, units: 1 })], { seed: 3 });
  m.compile({ optimizer: optimizers.sgd({ learningRate }), loss: 'mse' });
  return m;
}
