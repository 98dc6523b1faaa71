/**
 * The error a call rejects with when its `signal` aborts (or its model is disposed while it runs), shaped as
 * Node's own: `name` `'AbortError'`, `code` `'ABORT_ERR'`, and the signal's reason as `cause`.
 */
export class AbortError extends Error {
  /** Always `'ABORT_ERR'`, as Node's `AbortError`. */
  readonly code = 'ABORT_ERR';

  constructor(message = 'The operation was aborted', options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AbortError';
  }
}

/** The properties a native error may carry after its message (see the binding's error.rs). */
interface NativeProps {
  code?: string;
  path?: string;
  syscall?: string;
  cause?: string;
}

/**
 * Native errors arrive as `Error`s whose message starts with the class to throw (`TypeError: ...`) and may end,
 * after a `\u0001`, with a JSON object of properties (`code`, `path`, `syscall` of a file error; the `cause` of an
 * internal one). This throws an instance of that class with those properties, so callers can test
 * `err instanceof RangeError` or `err.code === 'ENOENT'`. A failed conversion of an argument (napi-rs's
 * "Failed to convert ...") becomes a TypeError naming `op`.
 * @internal
 */
export function rethrow(err: unknown, op?: string): never {
  if (err instanceof Error && !(err instanceof TypeError) && !(err instanceof RangeError) && !(err instanceof AbortError)) {
    const m = /^(TypeError|RangeError|AbortError|Error): ([\s\S]*)$/.exec(err.message);
    if (m) {
      const [, cls, rest] = m as unknown as [string, string, string];
      const cut = rest.indexOf('\u0001');
      const msg = cut < 0 ? rest : rest.slice(0, cut);
      let props: NativeProps = {};
      if (cut >= 0) {
        try {
          props = JSON.parse(rest.slice(cut + 1)) as NativeProps;
        } catch {
          props = {};
        }
      }
      const { cause, ...own } = props;
      const opts = cause === undefined ? undefined : { cause: new Error(cause) };
      const out =
        cls === 'TypeError'
          ? new TypeError(msg, opts)
          : cls === 'RangeError'
            ? new RangeError(msg, opts)
            : cls === 'AbortError'
              ? new AbortError(msg, opts)
              : new Error(msg, opts);
      Object.assign(out, own);
      throw out;
    }
    if (/^Failed to convert|^(Expect|Expected) /.test(err.message) || (err as { code?: string }).code === 'InvalidArg') {
      throw new TypeError(`${op ?? 'engram'}: an argument has the wrong type (${err.message})`);
    }
  }
  throw err;
}

/** Runs a synchronous native call, translating its error. @internal */
export function native<T>(f: () => T, op?: string): T {
  try {
    return f();
  } catch (e) {
    rethrow(e, op);
  }
}

/** Awaits an asynchronous native call, translating its error. @internal */
export async function nativeAsync<T>(f: () => Promise<T>, op?: string): Promise<T> {
  try {
    return await f();
  } catch (e) {
    rethrow(e, op);
  }
}

/** Checks that `signal` is an AbortSignal (or undefined). @internal */
export function checkSignal(what: string, signal: unknown): AbortSignal | undefined {
  if (signal === undefined) return undefined;
  if (!(signal instanceof AbortSignal)) {
    throw new TypeError(`${what}: signal must be an AbortSignal (from an AbortController), got ${typeof signal}`);
  }
  return signal;
}

/** The AbortError for an aborted signal. @internal */
export function abortError(op: string, signal: AbortSignal): AbortError {
  return new AbortError(`${op}: the operation was aborted`, { cause: signal.reason });
}
