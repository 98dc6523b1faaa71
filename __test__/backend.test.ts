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

  it('reports the instruction set the kernels run in, which ENGRAM_ISA can lower but never raise', () => {
    const b = backend();
    const sets = process.arch === 'arm64' ? ['neon', 'baseline'] : ['avx512', 'avx2', 'baseline'];
    expect(sets).toContain(b.cpuIsa);
    expect(sets).toContain(b.isa);
    // ENGRAM_ISA is read once per process (at the first kernel call), so each setting runs in a child.
    const run = (isa: string) => {
      const r = spawnSync(
        process.execPath,
        ['-e', "const e=require('./dist/cjs/index.js'); const m=e.sequential([e.layers.dense({units:2,inputSize:3})]); " +
          "m.predict(e.tensor(new Float32Array(3),[1,3])); console.log(JSON.stringify(e.backend()))"],
        { encoding: 'utf8', env: { ...process.env, ENGRAM_ISA: isa } },
      );
      expect(r.status, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as ReturnType<typeof backend>;
    };
    const lowered = run('baseline');
    expect([lowered.isa, lowered.cpuIsa, lowered.notes]).toEqual(['baseline', b.cpuIsa, expect.not.arrayContaining([expect.stringMatching(/ENGRAM_ISA/)])]);
    if (b.cpuIsa === 'avx512') expect(run('avx2').isa).toBe('avx2');
    // Asking for more than the CPU has, or for a name that means nothing, keeps the CPU's own and says so.
    const raised = run(b.cpuIsa === 'avx512' ? 'neon' : 'avx512');
    expect(raised.isa).toBe(b.cpuIsa);
    expect(raised.notes.join('\n')).toMatch(/ENGRAM_ISA=\w+ asks for an instruction set this CPU lacks/);
    const unknown = run('sse9');
    expect(unknown.isa).toBe(b.cpuIsa);
    expect(unknown.notes.join('\n')).toMatch(/ENGRAM_ISA="sse9" is not one of baseline, avx2, avx512, neon/);
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
