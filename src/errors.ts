/**
 * Native errors arrive as `Error`s whose message starts with the class to throw (`TypeError: ...`).
 * This turns them into instances of that class, so callers can test `err instanceof RangeError`.
 * @internal
 */
export function rethrow(err: unknown): never {
  if (err instanceof Error && !(err instanceof TypeError) && !(err instanceof RangeError)) {
    const m = /^(TypeError|RangeError|Error): ([\s\S]*)$/.exec(err.message);
    if (m) {
      const [, cls, msg] = m;
      const out =
        cls === 'TypeError' ? new TypeError(msg) : cls === 'RangeError' ? new RangeError(msg) : new Error(msg);
      throw out;
    }
  }
  throw err;
}

/** Runs a synchronous native call, translating its error. @internal */
export function native<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    rethrow(e);
  }
}

/** Awaits an asynchronous native call, translating its error. @internal */
export async function nativeAsync<T>(f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    rethrow(e);
  }
}
