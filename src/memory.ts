import { totalmem as osTotal } from 'node:os';
import { nativeMemory } from './backend.js';
import { native } from './errors.js';

/**
 * A size in bytes: a number, or a string with a binary unit, as `'8GiB'`, `'512 MiB'`, `'2GB'` (GB and GiB
 * both mean 1024³ here) or `'1e9'`.
 */
export type ByteSize = number | string;

const UNITS: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, kb: 2 ** 10, kib: 2 ** 10, m: 2 ** 20, mb: 2 ** 20, mib: 2 ** 20, g: 2 ** 30, gb: 2 ** 30, gib: 2 ** 30, t: 2 ** 40, tb: 2 ** 40, tib: 2 ** 40 };

/** `size` in bytes, or a RangeError naming `what`. @internal */
export function parseBytes(what: string, size: unknown): number {
  let bytes = NaN;
  if (typeof size === 'number') bytes = size;
  else if (typeof size === 'string') {
    const m = /^\s*([0-9.]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$/i.exec(size);
    const scale = m ? UNITS[m[2]!.toLowerCase()] : undefined;
    if (m && scale !== undefined) bytes = Number(m[1]) * scale;
  } else {
    throw new TypeError(`${what} must be a number of bytes or a size such as '8GiB', got ${size === null ? 'null' : typeof size}`);
  }
  if (!Number.isFinite(bytes) || bytes < 1 || bytes >= 2 ** 64) {
    throw new RangeError(`${what} must be a size of at least 1 byte, such as 8e9 or '8GiB', got ${JSON.stringify(size)}`);
  }
  return Math.floor(bytes);
}

/** A size as the errors print it. @internal */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u + 1 < units.length) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${bytes} B` : `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${units[u]}`;
}

let chosen: { bytes: number; source: string } | undefined;

/**
 * Sets the memory budget of every model without a `maxMemory` of its own: each model's parameters,
 * optimizer state and the working memory of each call are estimated before they are allocated, and a model
 * or call over the budget fails with a RangeError that names the layer or call, the estimate and the budget,
 * instead of aborting the process when an allocation fails. `undefined` goes back to the default:
 * `ENGRAM_MAX_MEMORY` when set, else half of the machine's memory (its cgroup limit, when lower).
 */
export function setMemoryBudget(size: ByteSize | undefined): void {
  chosen = size === undefined ? undefined : { bytes: parseBytes('setMemoryBudget', size), source: 'set by setMemoryBudget' };
  applyBudget();
}

/** What {@link memoryBudget} reports. */
export interface MemoryBudget {
  /** The budget in bytes. */
  bytes: number;
  /** Where it comes from: `ENGRAM_MAX_MEMORY`, `set by setMemoryBudget`, `half of this machine's 24.0 GiB` ... */
  source: string;
}

/** The memory budget models get (see {@link setMemoryBudget}): its bytes and where it comes from. */
export function memoryBudget(): MemoryBudget {
  applyBudget();
  return native(() => nativeMemory.get());
}

/** Hands the budget in force to the native side; called before each model is made. @internal */
export function applyBudget(): void {
  const b = chosen ?? fromEnvironment();
  native(() => nativeMemory.set(b.bytes, b.source));
}

function fromEnvironment(): { bytes: number; source: string } {
  const env = process.env.ENGRAM_MAX_MEMORY;
  if (env !== undefined && env.trim() !== '') return { bytes: parseBytes('ENGRAM_MAX_MEMORY', env), source: 'ENGRAM_MAX_MEMORY' };
  const total = osTotal();
  const limit = typeof process.constrainedMemory === 'function' ? process.constrainedMemory() : 0;
  const machine = limit > 0 && limit < total ? limit : total;
  return { bytes: Math.floor(machine / 2), source: `half of this machine's ${formatBytes(machine)}` };
}
