import { spawnSync } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { backend, layers, sequential } from '../src/index.js';

const saved = process.env.ENGRAM_DEVICE;
afterEach(() => {
  if (saved === undefined) delete process.env.ENGRAM_DEVICE;
  else process.env.ENGRAM_DEVICE = saved;
});

const tiny = () => sequential([layers.dense({ units: 2, inputSize: 3 })]);

describe('backend', () => {
  it('reports the binary, the platform and the CPU device', () => {
    delete process.env.ENGRAM_DEVICE;
    const b = backend();
    expect(b.platform).toMatch(/^(linux|darwin|win32)-(x64|arm64)/);
    // A native binary for this platform, or the WebAssembly build where that is what runs.
    const wasm = b.notes.some((n) => n.includes('WebAssembly'));
    expect(b.binary).toMatch(wasm ? /engram\.wasi\.cjs$|^engram-wasm32-wasi$/ : new RegExp(`engram[.-]${b.platform}(\\.node)?$`));
    // The macOS packages are built with metal; none of the binaries this suite loads has cuda.
    expect(b.gpu).toEqual(process.platform === 'darwin' ? ['metal'] : []);
    expect(b.device).toBe('cpu');
    expect(tiny().device).toBe('cpu');
  });

  it('ENGRAM_DEVICE=cpu keeps models on the CPU', () => {
    process.env.ENGRAM_DEVICE = 'CPU';
    expect(backend().device).toBe('cpu');
    expect(tiny().device).toBe('cpu');
  });

  it('a GPU this binary was built without is an error that says what to install', () => {
    process.env.ENGRAM_DEVICE = 'cuda:1';
    expect(() => tiny()).toThrow(/ENGRAM_DEVICE=cuda:1: this engram binary was built without cuda.*npm install engram-cuda-linux-x64-gnu/);
    expect(() => backend()).toThrow(/built without cuda/);
    if (process.platform !== 'darwin') {
      process.env.ENGRAM_DEVICE = 'metal';
      expect(() => tiny()).toThrow(/built without metal.*macOS/);
    }
  });

  it('a malformed ENGRAM_DEVICE is a TypeError naming the accepted values', () => {
    for (const bad of ['gpu', 'cuda:x', 'cuda:-1']) {
      process.env.ENGRAM_DEVICE = bad;
      expect(() => tiny()).toThrow(TypeError);
      expect(() => tiny()).toThrow(/expected cpu, cuda, cuda:N, metal or metal:N/);
    }
  });

  it('ENGRAM_DEVICE=cuda at import, without the CUDA package, fails the import with what to install', () => {
    const r = spawnSync(process.execPath, ['-e', "require('./dist/cjs/index.js')"], {
      encoding: 'utf8',
      env: { ...process.env, ENGRAM_DEVICE: 'cuda' },
    });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(
      backend().platform === 'linux-x64-gnu'
        ? /ENGRAM_DEVICE=cuda but the CUDA build is not installed: run `npm install engram-cuda-linux-x64-gnu`/
        : /ENGRAM_DEVICE=cuda, but there is no CUDA build for/,
    );
  });
});
