/**
 * Benchmark results: one JSON file per suite in `benches/results/`, and `benches/RESULTS.md` rendered from all
 * of them. {@link renderMarkdown} is pure, so the table can be tested without timing anything.
 * @module
 */
import { mkdirSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The implementation the speed-ups are relative to. */
export const BASELINE = 'engram';

/** One timed case: an operation of one implementation on one configuration. */
export interface CaseResult {
  suite: string;
  /** The configuration, e.g. `hidden 128`; rows of the table. */
  case: string;
  /** `engram`, `tfjs-wasm`, `tfjs-cpu`; columns of the table. */
  impl: string;
  hidden?: number;
  /** `train`: forward, loss, backward and optimizer update; `infer`: predict. */
  op: 'train' | 'infer';
  /** GEMM work per call in GFLOP, where the suite counts it. */
  gflop?: number;
  meanMs: number;
  medianMs: number;
  minMs: number;
  iterations: number;
  /**
   * This process's user and system (kernel) CPU time over the case, warmup included, where the case ran in
   * this process: the system share shows threads waking one another instead of working.
   */
  cpuUserMs?: number;
  cpuSystemMs?: number;
}

/** Where a suite ran. */
export interface Machine {
  os: string;
  cpu: string;
  cores: number;
  node: string;
  /** The variable as set, or `unset`. */
  rayonNumThreads: string;
  /** ISO 8601. */
  date: string;
  /** engram's commit; `(dirty)` when its sources had uncommitted changes. */
  commit: string;
  /** The native addon that was loaded and when it was built: the commit alone cannot say. */
  addon: string;
  /** Share of the cores' time that other processes used during the suite: above a few percent, times are inflated. */
  otherCpu: number;
  /** The instruction set engram's kernels dispatched to (`backend().isa`): `avx512`, `avx2`, `neon`, `baseline`. */
  isa: string;
  /** The widest set the CPU has (`backend().cpuIsa`). */
  cpuIsa: string;
}

/**
 * The kind of machine a report is filed under, `results/<kind>/`: the dispatched instruction set, with the CPU's
 * own where `ENGRAM_ISA` lowered it (`avx2-on-avx512`), so that each kind keeps its own tables.
 */
export function machineKind(m: Machine): string {
  return m.isa === m.cpuIsa ? m.isa : `${m.isa}-on-${m.cpuIsa}`;
}

const KIND_TITLES: Record<string, string> = {
  avx512: 'AVX-512 machine',
  avx2: 'AVX2 machine (no AVX-512)',
  neon: 'arm64 machine (NEON)',
  baseline: 'machine without AVX2',
};

function kindTitle(kind: string): string {
  const forced = /^(\w+)-on-(\w+)$/.exec(kind);
  if (forced) return `${KIND_TITLES[forced[2]!] ?? forced[2]}, kernels forced to ${forced[1]} (ENGRAM_ISA)`;
  return KIND_TITLES[kind] ?? kind;
}

/** The contents of `benches/results/<suite>.json`. */
export interface SuiteReport {
  suite: string;
  /** What every case computes, in a sentence. */
  description: string;
  machine: Machine;
  /** How each implementation was set up (versions, backend, threads), by name. */
  impls: Record<string, string>;
  results: CaseResult[];
  /** Further measurements, one sentence each. */
  notes?: string[];
  /** The machine's f32 GEMM peak, GFLOP/s: with `gflop` per case, the table shows engram's share of it. */
  gemmPeakGflops?: number;
}

const benchesDir = path.dirname(fileURLToPath(import.meta.url));

/**
 * Writes `<root>/results/<suite>.json`, then regenerates `<root>/RESULTS.md` from every JSON file there, so
 * running one suite keeps the others' tables. `root` defaults to `benches/`.
 */
export function writeReport(report: SuiteReport, root = benchesDir): string {
  const resultsDir = path.join(root, 'results');
  const kindDir = path.join(resultsDir, machineKind(report.machine));
  mkdirSync(kindDir, { recursive: true });
  // Through a temporary file beside the target (git ignores `*.tmp` under results/), so an interrupted run
  // leaves the old file whole rather than a truncated one that would break every later render.
  const write = (file: string, text: string) => {
    const tmp = `${file}.tmp`;
    writeFileSync(tmp, text);
    renameSync(tmp, file);
  };
  write(path.join(kindDir, `${report.suite}.json`), `${JSON.stringify(report, null, 2)}\n`);
  const reports = readdirSync(resultsDir, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => d.name)
    .sort()
    .flatMap((kind) =>
      readdirSync(path.join(resultsDir, kind))
        .filter((f) => f.endsWith('.json'))
        .sort()
        .map((f) => readReport(path.join(resultsDir, kind, f))),
    );
  const markdownPath = path.join(root, 'RESULTS.md');
  write(markdownPath, renderMarkdown(reports));
  return markdownPath;
}

function readReport(file: string): SuiteReport {
  const r = JSON.parse(readFileSync(file, 'utf8')) as Partial<SuiteReport>;
  if (typeof r.suite !== 'string' || !Array.isArray(r.results) || typeof r.machine !== 'object') {
    throw new Error(`${file}: not a suite report (expected suite, machine and results)`);
  }
  if (typeof r.machine.isa !== 'string' || typeof r.machine.cpuIsa !== 'string') {
    throw new Error(`${file}: the machine has no isa and cpuIsa (the instruction sets engram dispatched to and the CPU has)`);
  }
  return r as SuiteReport;
}

/** The whole of `RESULTS.md` for these suites: one section per kind of machine, AVX-512 first. */
export function renderMarkdown(reports: readonly SuiteReport[]): string {
  const lines = [
    '# Benchmark results',
    '',
    'Generated by `npm run bench` from `benches/results/<machine kind>/*.json`; do not edit by hand.',
    '',
    `Times are median milliseconds per call. A speed-up is the peer's median divided by ${BASELINE}'s: above 1×,`,
    `${BASELINE} is faster. Means, minimums and iteration counts are under each suite's details. Each kind of`,
    'machine keeps its own tables: a run replaces the tables of its own kind only.',
  ];
  const order = ['avx512', 'avx2', 'neon', 'baseline'];
  const rank = (k: string) => (order.includes(k) ? order.indexOf(k) : order.length);
  const kinds = unique(reports.map((r) => machineKind(r.machine))).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  for (const kind of kinds) {
    const mine = reports.filter((r) => machineKind(r.machine) === kind);
    lines.push('', `## ${kindTitle(kind)}: ${unique(mine.map((r) => r.machine.cpu)).join(', ')}`);
    for (const r of mine) lines.push('', ...renderSuite(r));
  }
  return `${lines.join('\n')}\n`;
}

function renderSuite(r: SuiteReport): string[] {
  const m = r.machine;
  const lines = [
    `### ${r.suite} (${kindTitle(machineKind(m))})`,
    '',
    r.description,
    '',
    `- Machine: ${m.cpu}, ${m.cores} cores, ${m.os}`,
    `- Kernels dispatched to ${m.isa} (the CPU has ${m.cpuIsa})`,
    `- Node ${m.node}, RAYON_NUM_THREADS=${m.rayonNumThreads}`,
    `- Run ${m.date}; other processes used ${Math.round(m.otherCpu * 100)}% of the cores meanwhile`,
    `- engram commit ${m.commit}, addon ${m.addon}`,
    ...Object.entries(r.impls).map(([name, how]) => `- ${name}: ${how}`),
    ...(r.notes ?? []).map((n) => `- ${n}`),
    ...kernelShare(r.results),
    '',
    ...renderTable(r.results, r.gemmPeakGflops),
    '',
    '#### Details',
    '',
    '| impl | op | case | mean ms | median ms | min ms | iterations |',
    '| --- | --- | --- | --: | --: | --: | --: |',
    ...r.results.map(
      (c) =>
        `| ${c.impl} | ${c.op} | ${c.case} | ${ms(c.meanMs)} | ${ms(c.medianMs)} | ${ms(c.minMs)} | ${c.iterations} |`,
    ),
  ];
  return lines;
}

/** A line on engram's system (kernel) time against its user time over its cases, where they were counted. */
function kernelShare(results: readonly CaseResult[]): string[] {
  const mine = results.filter((c) => c.impl === BASELINE && c.cpuUserMs !== undefined && c.cpuSystemMs !== undefined);
  const user = mine.reduce((s, c) => s + c.cpuUserMs!, 0);
  const system = mine.reduce((s, c) => s + c.cpuSystemMs!, 0);
  if (mine.length === 0 || user <= 0) return [];
  const worst = mine
    .map((c) => ({ c, share: c.cpuSystemMs! / Math.max(c.cpuUserMs!, 1e-9) }))
    .reduce((a, b) => (b.share > a.share ? b : a));
  return [
    `- ${BASELINE} CPU time over its cases: system (kernel) ${Math.round((100 * system) / user)}% of user ` +
      `(${(system / 1000).toFixed(1)} s against ${(user / 1000).toFixed(1)} s); the most, ${Math.round(100 * worst.share)}%, ` +
      `in ${worst.c.op} ${worst.c.case}`,
  ];
}

/** Rows (op, case) and implementation columns in order of first appearance, the baseline first. */
function renderTable(results: readonly CaseResult[], peak?: number): string[] {
  const ops = unique(results.map((c) => c.op));
  const cases = unique(results.map((c) => c.case));
  const peers = unique(results.map((c) => c.impl)).filter((i) => i !== BASELINE);
  const median = (impl: string, op: string, kase: string) =>
    results.find((c) => c.impl === impl && c.op === op && c.case === kase)?.medianMs;
  const work = (op: string, kase: string) => results.find((c) => c.op === op && c.case === kase && c.gflop !== undefined)?.gflop;
  const rate = results.some((c) => c.gflop !== undefined);
  const header = [
    'op',
    'case',
    ...[BASELINE, ...peers].map((i) => `${i} ms`),
    ...peers.map((p) => `speed-up vs ${p}`),
    ...(rate ? [`${BASELINE} GFLOP/s${peak === undefined ? '' : ' (% of GEMM peak)'}`] : []),
  ];
  const lines = [`| ${header.join(' | ')} |`, `| --- | --- | ${header.slice(2).map(() => '--:').join(' | ')} |`];
  for (const op of ops) {
    for (const kase of cases) {
      if (!results.some((c) => c.op === op && c.case === kase)) continue;
      const base = median(BASELINE, op, kase);
      const cells = [
        op,
        kase,
        ...[BASELINE, ...peers].map((i) => msOrDash(median(i, op, kase))),
        ...peers.map((p) => {
          const peer = median(p, op, kase);
          return base === undefined || peer === undefined ? '–' : speedUp(peer / base);
        }),
      ];
      if (rate) {
        const g = work(op, kase);
        const perS = g === undefined || base === undefined ? undefined : g / (base / 1000);
        cells.push(perS === undefined ? '–' : `${perS.toFixed(1)}${peak === undefined ? '' : ` (${Math.round((100 * perS) / peak)}%)`}`);
      }
      lines.push(`| ${cells.join(' | ')} |`);
    }
  }
  return lines;
}

function unique<T>(xs: readonly T[]): T[] {
  return [...new Set(xs)];
}

function msOrDash(v: number | undefined): string {
  return v === undefined ? '–' : ms(v);
}

/** Three significant figures or so: `2,204`, `506`, `21.6`, `3.42`. */
function ms(v: number): string {
  if (v >= 100) return Math.round(v).toLocaleString('en-US');
  return v.toFixed(v >= 10 ? 1 : 2);
}

function speedUp(ratio: number): string {
  return `${ratio.toFixed(ratio >= 1 ? 1 : 2)}×`;
}
