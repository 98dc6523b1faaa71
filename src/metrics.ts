/**
 * Metrics over many batches, from what each native step reports: its loss, how many targets counted and (for
 * cross-entropy) how many its most likely class got right.
 * @module
 */
import type { Logs } from './callbacks.js';

/** A metric {@link Model.compile} can report beside the loss; both need the `crossEntropy` loss. */
export type MetricName = 'accuracy' | 'perplexity';

/** The metrics known to {@link Model.compile}. @internal */
export const METRICS: readonly MetricName[] = ['accuracy', 'perplexity'];

/** What one native step or evaluation reports. @internal */
export interface Tally {
  loss: number;
  targets: number;
  correct?: number | null;
}

/**
 * Sums batches into epoch-level numbers: `loss` is the mean of the batch losses weighted by their rows (what a
 * single pass over all rows at once would give for a mean loss); `accuracy` is correct over counted targets;
 * `perplexity` is `exp` of the summed cross-entropy over the counted targets. @internal
 */
export class Meter {
  #rows = 0;
  #loss = 0;
  #targets = 0;
  #correct = 0;
  #nll = 0;

  constructor(
    private readonly metrics: readonly MetricName[],
    /** Whether the loss is a sum over targets (`reduction: 'sum'`) rather than their mean. */
    private readonly summed: boolean,
  ) {}

  /** Adds one batch of `rows` rows. */
  add(t: Tally, rows: number): void {
    this.#rows += rows;
    this.#loss += t.loss * rows;
    this.#targets += t.targets;
    this.#correct += t.correct ?? 0;
    this.#nll += this.summed ? t.loss : t.loss * t.targets;
  }

  /** Rows added so far. */
  get rows(): number {
    return this.#rows;
  }

  /** The numbers so far, keys prefixed with `prefix` (e.g. `val_`). */
  logs(prefix = ''): Logs {
    const out: Logs = { [`${prefix}loss`]: this.#loss / this.#rows };
    for (const m of this.metrics) out[`${prefix}${m}`] = metric(m, this.#correct, this.#nll, this.#targets);
    return out;
  }
}

/** One metric from sums; a batch whose targets were all ignored scores NaN rather than a made-up value. */
export function metric(m: MetricName, correct: number, nll: number, targets: number): number {
  if (targets === 0) return NaN;
  return m === 'accuracy' ? correct / targets : Math.exp(nll / targets);
}
