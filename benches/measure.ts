/**
 * Timing for the suites: tinybench with budgets sized for calls that take from 10 ms to 10 s.
 * @module
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Bench } from 'tinybench';
import type { CaseResult, SuiteReport } from './report.js';

/** A benchmark suite; `npm run bench -- --suite <name>` runs one. */
export interface Suite {
  name: string;
  /** What every case computes, for RESULTS.md. */
  description: string;
  /** Times every case under `budget`, logging each as it completes. */
  run(budget: Budget): Promise<Pick<SuiteReport, 'impls' | 'results' | 'notes' | 'gemmPeakGflops'>>;
}

/** How long to time one case. Each phase runs until both its iteration count and its time are reached. */
export interface Budget {
  warmupIterations: number;
  warmupMs: number;
  iterations: number;
  timeMs: number;
}

/**
 * Full runs: a slow case (a 10 s tfjs-cpu step) still gets 5 samples, a fast one as many as fit in 4 s.
 * The warmup's 500 ms lets engram settle its allocations while a slow peer warms up on one call.
 */
export const fullBudget: Budget = { warmupIterations: 1, warmupMs: 500, iterations: 5, timeMs: 4000 };

/** Smoke test: one warmup call and one timed call per case. */
export const quickBudget: Budget = { warmupIterations: 1, warmupMs: 0, iterations: 1, timeMs: 0 };

/** Milliseconds per call of one case. */
export interface Timing {
  meanMs: number;
  medianMs: number;
  minMs: number;
  iterations: number;
}

/** Times `fn`, which must resolve only once its work is done (results read back, not just scheduled). */
export async function measure(name: string, fn: () => Promise<unknown>, budget: Budget): Promise<Timing> {
  const bench = new Bench({
    throws: true,
    warmupIterations: budget.warmupIterations,
    warmupTime: budget.warmupMs,
    iterations: budget.iterations,
    time: budget.timeMs,
  });
  // `async: true` spares tinybench a detection call, which would cost a whole extra step for slow peers.
  bench.add(name, fn, { async: true });
  const [task] = await bench.run();
  const result = task?.result;
  if (result?.state !== 'completed') throw new Error(`${name}: benchmark ended in state ${result?.state}`);
  const { mean, p50, min, samplesCount } = result.latency;
  return { meanMs: mean, medianMs: p50, minMs: min, iterations: samplesCount };
}

/** Times one case and logs it on a line. */
export async function timeCase(
  meta: Omit<CaseResult, keyof Timing>,
  fn: () => Promise<unknown>,
  budget: Budget,
): Promise<CaseResult> {
  const name = `${meta.suite} ${meta.impl} ${meta.op} ${meta.case}`;
  const cpu0 = process.cpuUsage();
  const t = await measure(name, fn, budget);
  const cpu = process.cpuUsage(cpu0);
  const f = (v: number) => v.toFixed(1).padStart(9);
  console.log(`${name.padEnd(32)} mean ${f(t.meanMs)} ms  median ${f(t.medianMs)} ms  min ${f(t.minMs)} ms  n=${t.iterations}`);
  return { ...meta, ...t, cpuUserMs: cpu.user / 1000, cpuSystemMs: cpu.system / 1000 };
}

/** `cmd` as a path (one with a slash) or looked up on `PATH`, as a shell would; undefined when not found. */
export function resolveCommand(cmd: string): string | undefined {
  if (cmd.includes('/') || cmd.includes(path.sep)) return existsSync(cmd) ? cmd : undefined;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir === '') continue;
    for (const ext of process.platform === 'win32' ? ['.exe', '.cmd', ''] : ['']) {
      const full = path.join(dir, cmd + ext);
      if (existsSync(full)) return full;
    }
  }
  return undefined;
}
