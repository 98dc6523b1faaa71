// `npm test`: builds what is missing, runs the Rust tests, the vitest suites and the install test, and ends with one line
// `N passed, N failed` summed over all of them. Exits non-zero if anything failed.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const env = { ...process.env, RAYON_NUM_THREADS: process.env.RAYON_NUM_THREADS ?? '2' };
let passed = 0;
let failed = 0;

function run(cmd, args) {
  console.log(`\n$ ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 28 });
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

const cargo = run('cargo', ['test', '-p', 'engram-core', '--release', '--', '--color', 'never']);
let cargoCounted = 0;
for (const m of cargo.stdout.matchAll(/test result: \w+\. (\d+) passed; (\d+) failed/g)) {
  passed += Number(m[1]);
  failed += Number(m[2]);
  cargoCounted++;
}
if (cargo.status !== 0 && cargoCounted === 0) failed++; // did not build: count it as a failure

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

/** A suite that failed without running any test (it did not load) counts as one failure. */
function suitesThatRanNoTest(r) {
  return (r.testResults ?? []).filter((s) => s.status !== 'passed' && (s.assertionResults ?? []).length === 0).length;
}

console.log(`\n${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
