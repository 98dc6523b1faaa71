'use strict';
// Chooses engram's native binary and explains a missing one. napi-rs generates `native.cjs`, which finds the
// CPU binary for this platform (a `.node` file beside it in a source checkout, else the optional dependency
// `engram-<platform>`, else the WebAssembly build `engram-wasm32-wasi` if that is installed). Before it, this
// file looks for the opt-in CUDA build, and after a failure it replaces the generic "Cannot find native binding"
// with the platform, the package that should have been there and what to do. CommonJS, so both the ESM and the
// CJS builds of the facade load the one addon instance.

/** Platforms with a prebuilt CPU binary, as `npm/<dir>` names them. */
const PREBUILT = [
  'linux-x64-gnu',
  'linux-arm64-gnu',
  'linux-x64-musl',
  'linux-arm64-musl',
  'darwin-x64',
  'darwin-arm64',
  'win32-x64-msvc',
];
/** Platforms with a CUDA build, and its package. */
const CUDA = { 'linux-x64-gnu': 'engram-cuda-linux-x64-gnu' };

/** glibc or musl, tested in the order the generated loader tests it (so the two never disagree). */
function libc() {
  if (process.platform !== 'linux') return null;
  try {
    return require('fs').readFileSync('/usr/bin/ldd', 'utf8').includes('musl') ? 'musl' : 'gnu';
  } catch {
    // no ldd: ask Node's own report
  }
  try {
    if (process.report) process.report.excludeNetwork = true;
    const report = process.report && process.report.getReport();
    if (report && report.header && report.header.glibcVersionRuntime) return 'gnu';
    if (report && Array.isArray(report.sharedObjects) && report.sharedObjects.some((f) => /ld-musl-|libc\.musl-/.test(f))) {
      return 'musl';
    }
  } catch {
    // fall through
  }
  return 'gnu';
}

/** This machine as npm's platform packages name it: `linux-x64-gnu`, `darwin-arm64`, `win32-x64-msvc`. */
function platformName() {
  const { platform, arch } = process;
  if (platform === 'linux') return `${platform}-${arch}-${libc()}`;
  if (platform === 'win32') return `${platform}-${arch}-msvc`;
  return `${platform}-${arch}`;
}

function firstLine(err) {
  return String((err && err.message) || err).split('\n')[0];
}

/**
 * The real reason in the generated loader's chain of causes: one load attempt per candidate, most of them a
 * "Cannot find module" for the candidates that are not there.
 */
function rootCause(err) {
  const chain = [];
  for (let e = err && err.cause; e; e = e.cause) chain.push(e);
  const real = chain.find((e) => !/^Cannot find module /.test(firstLine(e))) || chain[chain.length - 1] || err;
  return firstLine(real);
}

function isMissing(err, name) {
  return Boolean(err && err.code === 'MODULE_NOT_FOUND' && String(err.message).includes(`'${name}'`));
}

const platform = platformName();
const requested = (process.env.ENGRAM_DEVICE || '').trim().toLowerCase();
const wantsCuda = requested.startsWith('cuda');
const cudaPackage = CUDA[platform];
const notes = [];
let binding = null;
let source = null;

if (requested === '' || wantsCuda) {
  if (cudaPackage) {
    try {
      binding = require(cudaPackage);
      source = cudaPackage;
    } catch (err) {
      if (wantsCuda || !isMissing(err, cudaPackage)) {
        const why = isMissing(err, cudaPackage)
          ? `the CUDA build is not installed: run \`npm install ${cudaPackage}\` beside engram`
          : `${cudaPackage} is installed but did not load (${firstLine(err)}): it needs the NVIDIA driver, CUDA 11's ` +
            `cuBLAS and cuRAND, and glibc 2.35 or newer`;
        if (wantsCuda) {
          const e = new Error(`engram: ENGRAM_DEVICE=${requested} but ${why}. Unset ENGRAM_DEVICE to use the CPU.`);
          e.cause = err;
          throw e;
        }
        notes.push(`${why}; using the CPU build`);
      }
    }
  } else if (wantsCuda) {
    throw new Error(
      `engram: ENGRAM_DEVICE=${requested}, but there is no CUDA build for ${platform} (CUDA builds: ${Object.keys(CUDA).join(', ')}). Unset ENGRAM_DEVICE to use the CPU.`,
    );
  }
}

if (binding === null) {
  try {
    binding = require('./native.cjs');
    const { existsSync } = require('fs');
    const { join } = require('path');
    if (String(binding.__napiBindingTarget).startsWith('wasm32')) {
      // native.cjs fell back to the WebAssembly build: no native binary for this machine, or NAPI_RS_FORCE_WASI.
      const local = join(__dirname, 'engram.wasi.cjs');
      source = process.env.NAPI_RS_NATIVE_LIBRARY_PATH || (existsSync(local) ? local : 'engram-wasm32-wasi');
      notes.push('the WebAssembly build: CPU only, about 3 times slower than a native binary');
    } else {
      const local = join(__dirname, `engram.${platform}.node`);
      source = process.env.NAPI_RS_NATIVE_LIBRARY_PATH || (existsSync(local) ? local : `engram-${platform}`);
    }
  } catch (err) {
    const pkg = `engram-${platform}`;
    const runtime = `Node ${process.versions.node}`;
    let installed = null;
    try {
      installed = require('path').dirname(require.resolve(`${pkg}/package.json`));
    } catch {
      // not installed
    }
    const what = installed
      ? `${pkg} is installed (${installed}) but its binary did not load: ${rootCause(err)}. A damaged or ` +
        `half-written install is fixed by reinstalling; otherwise the binary needs something this machine lacks ` +
        `(the Linux builds need glibc 2.17 or newer, the Windows build the Visual C++ runtime)`
      : PREBUILT.includes(platform)
      ? `its binary package ${pkg} is not installed. npm installs only the package for the platform it runs on, and ` +
        `skips it with --omit=optional, --no-optional or a lockfile or node_modules made on another platform. ` +
        `On this machine, remove node_modules and package-lock.json and run \`npm install engram\` again ` +
        `(or \`npm install ${pkg}\`)`
      : `engram has no prebuilt binary for it (prebuilt: ${PREBUILT.join(', ')}). Use the WebAssembly build, ` +
        `which runs anywhere on the CPU at about a third of native speed: \`npm install --cpu=wasm32 engram\` (or ` +
        `cpu=wasm32 in the project's .npmrc, so later installs keep it); ` +
        `or build a native one from source (a Rust toolchain, then \`npm run build\` in a clone of the repository) ` +
        `and point NAPI_RS_NATIVE_LIBRARY_PATH at the .node file`;
    const e = new Error(`engram cannot load its native binary for ${platform} (${runtime}): ${what}.`);
    e.cause = err;
    throw e;
  }
}

// Where the binary came from (a package name, or a path) and anything worth knowing about the choice.
module.exports = Object.assign({}, binding, { loadedFrom: { source, platform, notes } });
