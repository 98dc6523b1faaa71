// `npm test`: builds what is missing, runs the Rust tests, the vitest suites and the install test, and ends with one line
// `N passed, N failed` summed over all of them. Exits non-zero if anything failed.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const env = { ...process.env, RAYON_NUM_THREADS: process.env.RAYON_NUM_THREADS ?? '2' };
let passed = 0;
let failed = 0;

function run(cmd, args, extraEnv = {}) {
  const shown = Object.entries(extraEnv).map(([k, v]) => `${k}=${JSON.stringify(v)} `).join('');
  console.log(`\n$ ${shown}${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, {
    env: { ...env, ...extraEnv },
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 1 << 28,
  });
  process.stdout.write(r.stdout ?? '');
  if (r.error) throw r.error;
  return r;
}

if (!readdirSync('src').some((f) => f.endsWith('.node')) || !existsSync('src/native.cjs')) {
  const b = run('npm', ['run', 'build:native']);
  if (b.status !== 0) {
    console.log('0 passed, 1 failed');
    process.exit(1);
  }
}

/** Adds up cargo's `test result` lines; a run that printed none (it did not build) counts as one failure. */
function countCargo(r) {
  let counted = 0;
  for (const m of r.stdout.matchAll(/test result: \w+\. (\d+) passed; (\d+) failed/g)) {
    passed += Number(m[1]);
    failed += Number(m[2]);
    counted++;
  }
  if (r.status !== 0 && counted === 0) failed++;
}

countCargo(run('cargo', ['test', '-p', 'engram-core', '--release', '--', '--color', 'never']));

// The kernels' tests once more with the AVX2 variants forced, on a machine whose CPU would pick AVX-512: each
// instruction set's path is then tested where it can run.
const KERNEL_TESTS = ['--lib', '--test', 'kernels', '--test', 'gradients', '--test', 'parity', '--test', 'attention_kernels',
  '--test', 'attention_parity', '--test', 'recurrent', '--test', 'optimizer', '--test', 'training'];
if (process.arch === 'x64' && cpuFlags().includes('avx512f')) {
  countCargo(run('cargo', ['test', '-p', 'engram-core', '--release', ...KERNEL_TESTS, '--', '--color', 'never'], { ENGRAM_ISA: 'avx2' }));
}

// arm64: the core cross-compiled for aarch64 and its tests run under qemu (the NEON paths). .ci/run installs
// what this needs; elsewhere the suite runs where the tools are, and says what is missing where they are not.
const ARM = 'aarch64-unknown-linux-gnu';
const armTools = {
  [`rust target ${ARM} (rustup target add ${ARM})`]: () =>
    spawnSync('rustup', ['target', 'list', '--installed'], { encoding: 'utf8' }).stdout?.split('\n').includes(ARM),
  'aarch64-linux-gnu-gcc (Debian: gcc-aarch64-linux-gnu libc6-dev-arm64-cross)': () => onPath('aarch64-linux-gnu-gcc'),
  'qemu-aarch64 (Debian: qemu-user)': () => onPath('qemu-aarch64'),
};
const missing = process.arch === 'arm64' ? [] : Object.entries(armTools).filter(([, has]) => !has()).map(([what]) => what);
if (process.arch === 'arm64') {
  // Native arm64: the first cargo run already tested the NEON paths.
} else if (missing.length === 0) {
  // The memory-budget tests allocate gigabytes, which takes minutes under emulation and tests nothing of the
  // kernels: they are the one suite left out.
  countCargo(
    run('cargo', ['test', '-p', 'engram-core', '--release', '--target', ARM, ...KERNEL_TESTS, '--test', 'generate',
      '--test', 'memory_network', '--test', 'checkpoint', '--test', 'errors', '--', '--color', 'never'], {
      [`CARGO_TARGET_${ARM.toUpperCase().replaceAll('-', '_')}_LINKER`]: 'aarch64-linux-gnu-gcc',
      [`CARGO_TARGET_${ARM.toUpperCase().replaceAll('-', '_')}_RUNNER`]: 'qemu-aarch64 -L /usr/aarch64-linux-gnu',
    }),
  );
} else if (process.env.CI) {
  console.log(`arm64 suite: cannot run, missing ${missing.join(', ')}`);
  failed++;
} else {
  console.log(`arm64 suite not run here: it needs ${missing.join(', ')} (.ci/run installs them)`);
}

const out = join(mkdtempSync(join(tmpdir(), 'engram-vitest-')), 'results.json');
const vitest = run('npx', ['vitest', 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${out}`]);
if (existsSync(out)) {
  const r = JSON.parse(readFileSync(out, 'utf8'));
  passed += r.numPassedTests;
  failed += r.numFailedTests + suitesThatRanNoTest(r);
} else {
  failed++;
}
if (vitest.status !== 0 && failed === 0) failed++;

// The release as users get it: published to a local registry, installed into clean folders (scripts/test-install.mjs).
const install = run('node', ['scripts/test-install.mjs']);
const counted = /install: (\d+) passed, (\d+) failed/.exec(install.stdout ?? '');
if (counted) {
  passed += Number(counted[1]);
  failed += Number(counted[2]);
}
if (!counted || (install.status !== 0 && Number(counted[2]) === 0)) failed++;

/** The CPU's feature flags (Linux), or '' where they cannot be read. */
function cpuFlags() {
  try {
    return readFileSync('/proc/cpuinfo', 'utf8').match(/^flags\s*:(.*)$/m)?.[1] ?? '';
  } catch {
    return '';
  }
}

/** Whether `cmd` is a file in a folder on PATH. */
function onPath(cmd) {
  return (process.env.PATH ?? '').split(':').some((d) => d !== '' && existsSync(join(d, cmd)));
}

/** A suite that failed without running any test (it did not load) counts as one failure. */
function suitesThatRanNoTest(r) {
  return (r.testResults ?? []).filter((s) => s.status !== 'passed' && (s.assertionResults ?? []).length === 0).length;
}

console.log(`\n${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
