/**
 * Datasets: the real data the examples and benchmarks use, read from `$ENGRAM_DATA` or downloaded on demand
 * into a cache folder and checked by sha256.
 * @module
 */
export { cacheDir, dataDir, fetchChecked, sha256 } from './files.js';
export type { RemoteFile } from './files.js';
export { charVocab, loadTinyShakespeare, tinyShakespeareFile } from './shakespeare.js';
export type { CharVocab } from './shakespeare.js';
export * as babi from './babi.js';
export type { BabiExample, BabiSplit, BabiTensors, BabiVocab, LoadTaskOptions, VectorizeOptions } from './babi.js';
