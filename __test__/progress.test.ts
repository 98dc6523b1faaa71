import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Progress, duration, formatLogs } from '../src/progress.js';
import { denseModel as dense, linearData } from './helpers.js';

/** A stream that keeps what is written to it; by default it says it is a terminal (`unset`: no isTTY at all). */
function fakeStream(tty: boolean | 'unset' = true) {
  const chunks: string[] = [];
  return {
    ...(tty === 'unset' ? {} : { isTTY: tty }),
    columns: 100,
    chunks,
    write(s: string): boolean {
      chunks.push(s);
      return true;
    },
    get text(): string {
      return chunks.join('');
    },
    /** The bar's drawn lines, without the escape sequences around them. */
    get frames(): string[] {
      return chunks.filter((c) => !c.startsWith('\x1b') && c !== '\n');
    },
  };
}

/** Makes `performance.now()` return `clock.ms`, so that rates and durations are exact. */
function fakeClock(): { ms: number } {
  const clock = { ms: 0 };
  vi.spyOn(performance, 'now').mockImplementation(() => clock.ms);
  return clock;
}

afterEach(() => {
  vi.restoreAllMocks();
});


describe('formatLogs', () => {
  it('writes four decimals, lr in exponential notation, and leaves size out', () => {
    expect(formatLogs({ loss: 0.123456, accuracy: 0.9, size: 32, lr: 0.001 })).toBe('loss 0.1235 - accuracy 0.9000 - lr 1.00e-3');
    expect(formatLogs({ lr: 0.00025, val_loss: 12 })).toBe('lr 2.50e-4 - val_loss 12.0000');
    expect(formatLogs({ loss: NaN })).toBe('loss NaN');
    expect(formatLogs({ size: 4 })).toBe('');
    expect(formatLogs({})).toBe('');
  });
});

describe('duration', () => {
  it('writes seconds as 0.4s, 42s, 3m07s or 1h02m, and ? when unknown', () => {
    expect(duration(0)).toBe('0.0s');
    expect(duration(0.4)).toBe('0.4s');
    expect(duration(9.9)).toBe('9.9s');
    expect(duration(9.96)).toBe('10s');
    expect(duration(42)).toBe('42s');
    expect(duration(42.4)).toBe('42s');
    expect(duration(59.6)).toBe('1m00s');
    expect(duration(187)).toBe('3m07s');
    expect(duration(3599)).toBe('59m59s');
    expect(duration(3599.6)).toBe('1h00m');
    expect(duration(3720)).toBe('1h02m');
    expect(duration(3 * 3600 + 59 * 60 + 59)).toBe('3h59m');
    expect(duration(NaN)).toBe('?');
    expect(duration(Infinity)).toBe('?');
  });
});

describe('Progress with a bar (verbose 1 on a terminal)', () => {
  it('draws the epoch, batches, logs, rate and ETA, and stops drawing after the epoch', async () => {
    const clock = fakeClock();
    const stream = fakeStream();
    const lines: string[] = [];
    const p = new Progress(1, stream, (s) => lines.push(s));
    p.epochBegin(0, 3, 4);
    expect(stream.frames[0]).toMatch(/^epoch 1\/3 ░{24} 0\/4 \| {2}\| - items\/s \| ETA /);
    clock.ms = 2000;
    p.batchEnd(0, { loss: 0.5, lr: 1e-3 }, 8, 4);
    // The bar redraws on its own timer (10 per second).
    await sleep(250);
    expect(stream.frames.at(-1)).toMatch(/^epoch 1\/3 █{6}░{18} 1\/4 \| loss 0\.5000 - lr 1\.00e-3 \| 4 items\/s \| ETA /);
    for (let b = 1; b < 4; b++) {
      clock.ms += 2000;
      p.batchEnd(b, { loss: 0.5 - 0.1 * b, lr: 1e-3 }, 8 * (b + 1), 4);
    }
    clock.ms = 8000;
    p.epochEnd({ loss: 0.2, val_loss: 0.3, lr: 1e-3 }, 4, 20_000);
    expect(stream.text).toContain('epoch 1/3');
    expect(stream.text).toContain('loss 0.2000 - val_loss 0.3000 - lr 1.00e-3');
    expect(stream.text).toContain('items/s');
    expect(stream.text).toContain('ETA');
    expect(stream.text).toContain('4/4');
    expect(stream.frames.at(-1)).toMatch(/^epoch 1\/3 █{24} 4\/4 \| loss 0\.2000 - val_loss 0\.3000 - lr 1\.00e-3 \| 2,500 items\/s \| ETA /);
    // The bar ends its line.
    expect(stream.chunks.at(-1)).toBe('\n');
    expect(lines).toEqual([]);
    const written = stream.chunks.length;
    await sleep(300);
    expect(stream.chunks.length).toBe(written);
    p.close();
    expect(stream.chunks.length).toBe(written);
  });

  // The ETA is Progress's own, formatted by duration() (cli-progress's built-in {eta} would show raw seconds).
  it('shows the ETA that Progress computes, formatted by duration()', async () => {
    const clock = fakeClock();
    const stream = fakeStream();
    const p = new Progress(1, stream, () => {});
    p.epochBegin(0, 3, 4);
    expect(stream.frames.at(-1)).toMatch(/ETA \?$/);
    clock.ms = 2000;
    p.batchEnd(0, { loss: 0.5 }, 8, 4);
    await sleep(250);
    // 2 s per batch, 3 batches to go.
    expect(stream.frames.at(-1)).toMatch(/ETA 6\.0s$/);
    clock.ms = 8000;
    p.epochEnd({ loss: 0.2 }, 4, 32);
    expect(stream.frames.at(-1)).toMatch(/ETA 0s$/);
  });

  it('draws one bar per epoch, each ending its line', () => {
    const stream = fakeStream();
    const p = new Progress(1, stream, () => {
      throw new Error('no lines with a bar');
    });
    for (let e = 0; e < 3; e++) {
      p.epochBegin(e, 3, 2);
      p.batchEnd(0, { loss: 1 }, 4, 2);
      p.batchEnd(1, { loss: 1 }, 8, 2);
      p.epochEnd({ loss: 1 }, 2, 8);
    }
    const finals = stream.frames.filter((f) => f.includes('2/2'));
    expect(finals.map((f) => f.slice(0, 9))).toEqual(['epoch 1/3', 'epoch 2/3', 'epoch 3/3']);
    expect(stream.chunks.filter((c) => c === '\n')).toHaveLength(3);
  });

  it('with an unknown total counts batches and shows the elapsed time instead of an ETA', async () => {
    const clock = fakeClock();
    const stream = fakeStream();
    const p = new Progress(1, stream, () => {});
    p.epochBegin(1, 2, undefined);
    clock.ms = 1000;
    p.batchEnd(0, { loss: 0.5 }, 8, undefined);
    await sleep(250);
    expect(stream.frames.at(-1)).toBe('epoch 2/2 1 batches | loss 0.5000 | 8 items/s | 1.0s');
    clock.ms = 2000;
    p.batchEnd(1, { loss: 0.25 }, 16, undefined);
    clock.ms = 42_000;
    p.epochEnd({ loss: 0.25 }, 2, 16);
    expect(stream.frames.at(-1)).toBe('epoch 2/2 2 batches | loss 0.2500 | 0 items/s | 42s');
    expect(stream.text).not.toContain('ETA');
    expect(stream.text).not.toMatch(/[░█]/);
    const written = stream.chunks.length;
    await sleep(250);
    expect(stream.chunks.length).toBe(written);
  });

  it('close() stops a bar left running', async () => {
    const stream = fakeStream();
    const p = new Progress(1, stream, () => {});
    p.epochBegin(0, 1, 10);
    p.batchEnd(0, { loss: 1 }, 4, 10);
    p.close();
    expect(stream.chunks.at(-1)).toBe('\n');
    const written = stream.chunks.length;
    await sleep(250);
    expect(stream.chunks.length).toBe(written);
    p.close();
    expect(stream.chunks.length).toBe(written);
  });
});

describe('Progress without a bar', () => {
  function epochs(p: Progress, n: number, clock: { ms: number }) {
    for (let e = 0; e < n; e++) {
      clock.ms = 0;
      p.epochBegin(e, n, 4);
      for (let b = 0; b < 4; b++) {
        clock.ms += 500;
        p.batchEnd(b, { loss: 1, lr: 0.01 }, 10 * (b + 1), 4);
      }
      p.epochEnd({ loss: 0.5 + e, val_loss: 0.75, lr: 0.01 }, 4, 4000);
    }
  }
  const expected = (n: number) =>
    Array.from({ length: n }, (_, e) => `epoch ${e + 1}/${n} - 4 steps - 2.0s - 2,000 items/s - loss ${(0.5 + e).toFixed(4)} - val_loss 0.7500 - lr 1.00e-2`);

  it.each([
    ['verbose 1 on a stream that is not a terminal', 1, false],
    ['verbose 1 on a stream without isTTY', 1, 'unset'],
    ['verbose 2 on a terminal', 2, true],
    ['verbose 2 elsewhere', 2, false],
  ] as const)('%s writes exactly one line per epoch and no bar', (_name, verbose, isTTY) => {
    const clock = fakeClock();
    const stream = fakeStream(isTTY);
    const lines: string[] = [];
    epochs(new Progress(verbose, stream, (s) => lines.push(s)), 3, clock);
    expect(stream.chunks).toEqual([]);
    expect(lines).toEqual(expected(3));
  });

  it('verbose 0 writes nothing at all', async () => {
    const clock = fakeClock();
    const stream = fakeStream(true);
    const lines: string[] = [];
    const p = new Progress(0, stream, (s) => lines.push(s));
    epochs(p, 2, clock);
    p.epochBegin(0, 1, undefined);
    p.batchEnd(0, { loss: 1 }, 1, undefined);
    p.close();
    await sleep(150);
    expect(stream.chunks).toEqual([]);
    expect(lines).toEqual([]);
  });
});

describe('fit progress output', () => {
  const { x, y } = linearData(20);

  it('verbose 2 logs one line per epoch with loss, val_loss and lr, and draws no bar', async () => {
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    await dense().fit(x, y, { epochs: 3, batchSize: 4, validationSplit: 0.2, verbose: 2 });
    const lines = log.mock.calls.map((c) => String(c[0]));
    expect(lines).toHaveLength(3);
    lines.forEach((l, i) =>
      expect(l).toMatch(new RegExp(`^epoch ${i + 1}/3 - 4 steps - \\S+ - [\\d,]+ items/s - loss \\d+\\.\\d{4} - val_loss \\d+\\.\\d{4} - lr 1\\.00e-1$`)),
    );
    expect(err.mock.calls.filter((c) => String(c[0]).includes('epoch'))).toEqual([]);
  });

  it('verbose 0 prints nothing', async () => {
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    await dense().fit(x, y, { epochs: 3, batchSize: 4, validationSplit: 0.2, verbose: 0 });
    expect(log).not.toHaveBeenCalled();
    expect(err.mock.calls.filter((c) => String(c[0]).includes('epoch'))).toEqual([]);
  });

  /** Runs `f` with process.stderr's isTTY set as given. */
  async function withTTY<T>(isTTY: boolean, f: () => Promise<T>): Promise<T> {
    const stderr = process.stderr as { isTTY?: boolean; columns?: number };
    const was = { isTTY: stderr.isTTY, columns: stderr.columns };
    stderr.isTTY = isTTY;
    stderr.columns = 120;
    try {
      return await f();
    } finally {
      stderr.isTTY = was.isTTY;
      stderr.columns = was.columns;
    }
  }

  it('by default (verbose 1) logs lines when stderr is not a terminal', async () => {
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    await withTTY(false, () => dense().fit(x, y, { epochs: 2, batchSize: 5 }));
    const lines = log.mock.calls.map((c) => String(c[0]));
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatch(/^epoch 2\/2 - 4 steps - .* - loss \d+\.\d{4} - lr 1\.00e-1$/);
  });

  it('by default (verbose 1) draws a bar on stderr when it is a terminal', async () => {
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    const written: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => {
      written.push(String(s));
      return true;
    });
    await withTTY(true, () => dense().fit(x, y, { epochs: 2, batchSize: 5 }));
    expect(log).not.toHaveBeenCalled();
    const text = written.join('');
    expect(text).toMatch(/epoch 1\/2 █{24} 4\/4 \| loss \d+\.\d{4} - lr 1\.00e-1 \| [\d,]+ items\/s \| ETA /);
    expect(text).toMatch(/epoch 2\/2 █{24} 4\/4 \| loss/);
  });
});
