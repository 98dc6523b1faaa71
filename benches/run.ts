/**
 * Runs the benchmark suites and regenerates `benches/RESULTS.md`.
 *
 * ```sh
 * RAYON_NUM_THREADS=2 npm run bench                      # every suite, then write the results
 * npm run bench -- --suite lstm                          # one suite (repeat the flag for more)
 * npm run bench -- --quick                               # smoke test: prints the table, writes nothing
 * npm run bench -- --quick --out /tmp/bench              # ... or writes under /tmp/bench instead
 * ```
 * @module
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { attention } from './attention.js';
import { lstm } from './lstm.js';
import { memory } from './memory.js';
import { recurrent } from './recurrent.js';
import { small } from './small.js';
import { fullBudget, quickBudget, type Suite } from './measure.js';
import { backend } from '../src/index.js';
import { renderMarkdown, writeReport, type Machine, type SuiteReport } from './report.js';

const suites: Suite[] = [lstm, recurrent, memory, attention, small];

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function git(...args: string[]): string {
  return execFileSync('git', args, { cwd: repoRoot, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
}

function commit(): string {
  try {
    const sha = git('rev-parse', '--short', 'HEAD');
    // Only changes to what is measured count: the core, the binding and the facade, not their tests.
    const changed = git('status', '--porcelain', '--', 'crates', 'src', 'Cargo.toml', 'Cargo.lock', ':(exclude)crates/*/tests');
    return changed === '' ? sha : `${sha} (dirty)`;
  } catch {
    return 'unknown';
  }
}

/** The newest modification time among the Rust sources and manifests the addon is built from. */
function newestRustSource(): number {
  const crates = path.join(repoRoot, 'crates');
  const files = readdirSync(crates, { recursive: true, encoding: 'utf8' })
    .filter((f) => /(^|\/)src\/.*\.rs$|Cargo\.toml$/.test(f))
    .map((f) => path.join(crates, f));
  files.push(path.join(repoRoot, 'Cargo.toml'), path.join(repoRoot, 'Cargo.lock'));
  return Math.max(...files.map((f) => statSync(f, { throwIfNoEntry: false })?.mtimeMs ?? 0));
}

/** The addon and its build time, flagged when a Rust source changed after it was built. */
function addon(): string {
  const src = path.join(repoRoot, 'src');
  const file = readdirSync(src).find((f) => f.endsWith('.node'));
  if (file === undefined) return 'not found';
  const built = statSync(path.join(src, file)).mtime;
  const stale = newestRustSource() > built.getTime();
  return `${file} built ${built.toISOString()}${stale ? ' (older than crates/: stale)' : ''}`;
}

/** CPU milliseconds of this process's finished children (the PyTorch peer, cargo): Linux's /proc, else 0. */
function childrenCpuMs(): number {
  try {
    // Fields after the command name: cutime and cstime are the 14th and 15th, in clock ticks (100 per second).
    const fields = readFileSync('/proc/self/stat', 'utf8').replace(/^.*\) /s, '').split(' ');
    return ((Number(fields[13]) || 0) + (Number(fields[14]) || 0)) * 10;
  } catch {
    return 0;
  }
}

/**
 * Starts counting the cores' busy time that neither this process nor its own children (the suites' peers run
 * as child processes) spent; the returned function gives it as a share of the cores' time so far. Other work on
 * a 2-core machine inflates every timing.
 */
function otherCpuMeter(): () => number {
  const sample = () => {
    let busy = 0;
    let total = 0;
    for (const { times } of os.cpus()) {
      const all = times.user + times.nice + times.sys + times.idle + times.irq;
      busy += all - times.idle;
      total += all;
    }
    return { busy, total, own: process.cpuUsage(), children: childrenCpuMs() };
  };
  const a = sample();
  return () => {
    const b = sample();
    const ownMs = (b.own.user - a.own.user + b.own.system - a.own.system) / 1000 + (b.children - a.children);
    return b.total > a.total ? Math.max(0, (b.busy - a.busy - ownMs) / (b.total - a.total)) : 0;
  };
}

/** Read when a suite starts, so a commit or a rebuild during the run is not what gets recorded. */
function machine(): Omit<Machine, 'otherCpu'> {
  const cpus = os.cpus();
  const { isa, cpuIsa } = backend();
  return {
    isa,
    cpuIsa,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    cpu: cpus[0]?.model.trim() ?? 'unknown',
    cores: cpus.length,
    node: process.version,
    rayonNumThreads: process.env.RAYON_NUM_THREADS ?? 'unset',
    date: new Date().toISOString(),
    commit: commit(),
    addon: addon(),
  };
}

const { values } = parseArgs({
  options: {
    suite: { type: 'string', multiple: true },
    quick: { type: 'boolean', default: false },
    out: { type: 'string' },
  },
});

const names = values.suite ?? suites.map((s) => s.name);
const unknown = names.filter((n) => !suites.some((s) => s.name === n));
if (unknown.length > 0) {
  console.error(`unknown suite ${unknown.join(', ')}; suites: ${suites.map((s) => s.name).join(', ')}`);
  process.exit(1);
}
if (process.env.RAYON_NUM_THREADS === undefined) {
  console.warn('RAYON_NUM_THREADS is unset: engram uses every core; set it to record a comparable run');
}

const budget = values.quick ? quickBudget : fullBudget;
{
  const b = backend();
  console.log(`engram kernels: ${b.isa} (the CPU has ${b.cpuIsa}); CPU ${os.cpus()[0]?.model.trim() ?? 'unknown'}`);
  for (const n of b.notes) console.warn(n);
}
for (const suite of suites.filter((s) => names.includes(s.name))) {
  const started = performance.now();
  const at = machine();
  const otherCpu = otherCpuMeter();
  const { impls, results, notes, gemmPeakGflops } = await suite.run(budget);
  const report: SuiteReport = {
    suite: suite.name,
    description: suite.description,
    machine: { ...at, otherCpu: otherCpu() },
    impls,
    results,
    ...(notes === undefined ? {} : { notes }),
    ...(gemmPeakGflops === undefined ? {} : { gemmPeakGflops }),
  };
  console.log(`${suite.name}: ${((performance.now() - started) / 1000).toFixed(0)} s`);
  const { otherCpu: other, addon: binary } = report.machine;
  if (other > 0.05) console.warn(`other processes used ${Math.round(other * 100)}% of the cores: times are inflated`);
  if (binary.endsWith('stale)')) console.warn('the native addon is older than crates/: run npm run build:native');
  if (values.quick && values.out === undefined) {
    console.log(`\n${renderMarkdown([report])}(--quick: nothing written; add --out DIR to write there)`);
  } else {
    console.log(`wrote ${writeReport(report, values.out)}`);
  }
}
