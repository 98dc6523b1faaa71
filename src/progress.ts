/**
 * What `fit` prints: a progress bar per epoch on a terminal (cli-progress), one plain line per epoch otherwise.
 * @module
 */
import cliProgress from 'cli-progress';
import type { Logs } from './callbacks.js';

/** How much `fit` prints: 0 nothing, 1 a progress bar on a terminal (a line per epoch elsewhere), 2 a line per epoch. */
export type Verbosity = 0 | 1 | 2;

/** A stream the bar can draw on (`process.stderr`, or a fake in tests). @internal */
export interface BarStream {
  isTTY?: boolean;
  columns?: number;
  write(s: string): boolean;
}

/** `loss 0.1234 - accuracy 0.9000 - lr 1.0e-3`; `size` is left out. @internal */
export function formatLogs(logs: Logs): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(logs)) {
    if (k === 'size') continue;
    parts.push(`${k} ${k === 'lr' ? v.toExponential(2) : v.toFixed(4)}`);
  }
  return parts.join(' - ');
}

/** Seconds as `0.4s`, `42s`, `3m07s` or `1h02m`. @internal */
export function duration(s: number): string {
  if (!Number.isFinite(s)) return '?';
  if (s < 9.95) return `${s.toFixed(1)}s`;
  const r = Math.round(s);
  if (r < 60) return `${r}s`;
  if (r < 3600) return `${Math.floor(r / 60)}m${String(r % 60).padStart(2, '0')}s`;
  return `${Math.floor(r / 3600)}h${String(Math.floor((r % 3600) / 60)).padStart(2, '0')}m`;
}

/** Prints a run's progress at the verbosity asked for. @internal */
export class Progress {
  #bar: cliProgress.SingleBar | undefined;
  #started = 0;
  #label = '';

  constructor(
    private readonly verbose: Verbosity,
    private readonly stream: BarStream = process.stderr,
    private readonly line: (s: string) => void = (s) => console.log(s),
  ) {}

  get #useBar(): boolean {
    return this.verbose === 1 && this.stream.isTTY === true;
  }

  /** `total` batches, or undefined when the data does not say. */
  epochBegin(epoch: number, epochs: number, total: number | undefined): void {
    this.#started = performance.now();
    this.#label = `epoch ${epoch + 1}/${epochs}`;
    if (!this.#useBar) return;
    const known = total !== undefined;
    this.#bar = new cliProgress.SingleBar(
      {
        format: known
          ? '{label} {bar} {value}/{total} | {logs} | {rate} items/s | ETA {remaining}'
          : '{label} {value} batches | {logs} | {rate} items/s | {elapsed}',
        stream: this.stream as NodeJS.WriteStream,
        hideCursor: false,
        clearOnComplete: false,
        barsize: 24,
        fps: 10,
      },
      cliProgress.Presets.shades_classic,
    );
    this.#bar.start(total ?? 0, 0, { label: this.#label, logs: '', rate: '-', remaining: '?', elapsed: '0s' });
  }

  /** After batch `batch` (0-based), with the running logs and the rows seen this epoch. */
  batchEnd(batch: number, logs: Logs, rows: number, total: number | undefined): void {
    if (!this.#bar) return;
    const secs = (performance.now() - this.#started) / 1000;
    const eta = total === undefined ? NaN : (secs / (batch + 1)) * (total - batch - 1);
    this.#bar.update(batch + 1, {
      label: this.#label,
      logs: formatLogs(logs),
      rate: secs > 0 ? Math.round(rows / secs).toLocaleString('en-US') : '-',
      remaining: duration(eta),
      elapsed: duration(secs),
    });
  }

  /** After the epoch, with its final logs (validation included). */
  epochEnd(logs: Logs, batches: number, rows: number): void {
    const secs = (performance.now() - this.#started) / 1000;
    const rate = secs > 0 ? Math.round(rows / secs).toLocaleString('en-US') : '-';
    if (this.#bar) {
      this.#bar.update(batches, { label: this.#label, logs: formatLogs(logs), rate, remaining: '0s', elapsed: duration(secs) });
      this.#bar.stop();
      this.#bar = undefined;
    } else if (this.verbose > 0) {
      this.line(`${this.#label} - ${batches} steps - ${duration(secs)} - ${rate} items/s - ${formatLogs(logs)}`);
    }
  }

  /** Stops a bar left running (training ended by an error). */
  close(): void {
    this.#bar?.stop();
    this.#bar = undefined;
  }
}
