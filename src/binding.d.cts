import type * as Native from './native.cjs';

/** The native binding, and where it was loaded from. */
declare const binding: typeof Native & {
  readonly loadedFrom: { readonly source: string; readonly platform: string; readonly notes: readonly string[] };
};
export = binding;
