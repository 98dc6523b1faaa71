/**
 * What `fit` returns: per-epoch numbers under fixed keys, which can be plotted or saved as JSON.
 * @module
 */
import { readFile } from 'node:fs/promises';
import { historySvg, writeSvg, type HistoryData, type PlotOptions } from './plot.js';
import { describe } from './tensor.js';

/**
 * The record of a `fit` run: the epochs that ran and, per key, one value per epoch. The keys are fixed:
 *
 * - `loss`: the mean training loss over the epoch's batches (weighted by their rows);
 * - `accuracy`, `perplexity`: the compiled metrics over the epoch's counted targets;
 * - `val_loss`, `val_accuracy`, `val_perplexity`: the same on the validation data, in inference mode, after the
 *   epoch (only with `validationData` or `validationSplit`);
 * - `lr`: the learning rate of the epoch's last step.
 *
 * `JSON.stringify(history)` gives `{ epoch, history }`, which `npx engram plot` and {@link History.load} read.
 */
export class History implements HistoryData {
  /** The epochs that ran, 0-based, counting from `initialEpoch`. */
  readonly epoch: number[] = [];
  /** Per key, one value per epoch in {@link History.epoch}. */
  readonly history: Record<string, number[]> = {};
  /** True when `fit` stopped because its `signal` aborted; the epochs listed are those that finished. */
  aborted = false;

  /** Appends one epoch's numbers; a key first seen now is padded with NaN for earlier epochs. @internal */
  push(epoch: number, logs: Record<string, number>): void {
    const n = this.epoch.length;
    this.epoch.push(epoch);
    for (const [k, v] of Object.entries(logs)) (this.history[k] ??= new Array<number>(n).fill(NaN)).push(v);
    for (const values of Object.values(this.history)) if (values.length === n) values.push(NaN);
  }

  /** Draws the losses, metrics and learning rate per epoch as SVG and writes it to `path` (atomically). */
  async plot(path: string, options: PlotOptions = {}): Promise<void> {
    if (typeof path !== 'string') throw new TypeError(`plot: path must be a string, got ${describe(path)}`);
    await writeSvg(path, historySvg(this, options));
  }

  /** The history as SVG text (see {@link History.plot}). */
  toSvg(options: PlotOptions = {}): string {
    return historySvg(this, options);
  }

  /** `{ epoch, history }`, what `JSON.stringify` writes. */
  toJSON(): HistoryData {
    return { epoch: this.epoch, history: this.history };
  }

  /** Reads a history written with `JSON.stringify(history)`. */
  static async load(path: string): Promise<History> {
    const data = JSON.parse(await readFile(path, 'utf8')) as unknown;
    return History.from(data);
  }

  /** A history from `{ epoch, history }` data (a NaN that JSON wrote as `null` reads back as NaN). */
  static from(data: unknown): History {
    const d = data as Partial<HistoryData> | null;
    if (typeof d !== 'object' || d === null || !Array.isArray(d.epoch) || typeof d.history !== 'object' || d.history === null) {
      throw new TypeError(`History.from: expected { epoch: number[], history: { [key]: number[] } }, got ${describe(data)}`);
    }
    const h = new History();
    h.epoch.push(...d.epoch.map(Number));
    for (const [k, v] of Object.entries(d.history)) {
      if (!Array.isArray(v) || v.length !== d.epoch.length) {
        throw new RangeError(`History.from: history.${k} must hold one number per epoch (${d.epoch.length})`);
      }
      h.history[k] = v.map((x) => (x === null ? NaN : Number(x)));
    }
    return h;
  }
}
