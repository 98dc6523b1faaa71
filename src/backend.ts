/**
 * The native binary: which one loaded, and where models go. The choice itself is made in `binding.cjs` when
 * engram is first imported.
 */
import binding from './binding.cjs';
import type { Model as NativeModelHandle } from './native.cjs';
import { native } from './errors.js';

/** @internal */
export const NativeModel = binding.Model;
/** @internal */
export type NativeModel = NativeModelHandle;
/** @internal */
export const loadModel = binding.loadModel;
/** @internal */
export const CancelToken = binding.CancelToken;
/** @internal */
export type CancelToken = InstanceType<typeof binding.CancelToken>;
/** @internal */
export const nativeMemory = { set: binding.setMemoryBudget, get: binding.memoryBudget };
export type { JsState } from './native.cjs';

/** What {@link backend} reports. */
export interface Backend {
  /**
   * Where the binary came from: a package (`engram-linux-x64-gnu`, `engram-cuda-linux-x64-gnu`) or, in a
   * source checkout, the path of the `.node` file.
   */
  binary: string;
  /** This machine as the platform packages name it, e.g. `linux-x64-gnu`, `darwin-arm64`, `win32-x64-msvc`. */
  platform: string;
  /** GPU kinds compiled into the binary: `[]`, `['cuda']` or `['metal']`. */
  gpu: string[];
  /**
   * The device a model created now gets (`cpu`, `cuda:0`, `metal:0`): `ENGRAM_DEVICE` if set; else, with the
   * CUDA build, GPU 0 when one answers; else the CPU.
   */
  device: string;
  /**
   * The instruction set engram's CPU kernels run in: `avx512`, `avx2` (x86-64 with AVX2 and FMA), `neon`
   * (arm64) or `baseline` (what the binary was compiled for). The widest one the CPU has, unless `ENGRAM_ISA`
   * lowers it (`ENGRAM_ISA=avx2` on an AVX-512 machine); it can never raise it.
   */
  isa: string;
  /** The widest instruction set this CPU supports, whatever `ENGRAM_ISA` says. */
  cpuIsa: string;
  /**
   * Why the loader chose as it did, e.g. a CUDA build that is installed but could not load, or an `ENGRAM_ISA`
   * that names a set this CPU lacks.
   */
  notes: string[];
}

/**
 * Reports the native binary engram loaded and the device new models get.
 *
 * ```ts
 * import { backend } from 'engram';
 * console.log(backend());
 * // { binary: 'engram-linux-x64-gnu', platform: 'linux-x64-gnu', gpu: [], device: 'cpu', isa: 'avx512',
 * //   cpuIsa: 'avx512', notes: [] }
 * ```
 * @throws TypeError if `ENGRAM_DEVICE` is not `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N`; Error if it names a
 *   GPU this binary lacks or that cannot be opened.
 */
export function backend(): Backend {
  const { gpu, device, isa, cpuIsa, isaNote } = native(() => binding.nativeBackend());
  const { source, platform, notes } = binding.loadedFrom;
  return { binary: source, platform, gpu, device, isa, cpuIsa, notes: isaNote ? [...notes, isaNote] : [...notes] };
}
