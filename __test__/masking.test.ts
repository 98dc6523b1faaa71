import { describe, expect, it } from 'vitest';
import { maskTokens, tensor } from '../src/index.js';

function ids(n: number, vocab: number) {
  return tensor(Int32Array.from({ length: n }, (_, i) => (i * 7) % vocab), [n / 100, 100]);
}

describe('maskTokens', () => {
  it('chooses about 15% of the tokens and corrupts them 80/10/10', () => {
    const x = ids(100_000, 50);
    const { x: masked, y, count } = maskTokens(x, { maskId: 50, vocabSize: 50, seed: 1 });
    expect(masked.shape).toEqual([1000, 100]);
    expect(y.shape).toEqual([1000, 100]);
    let chosen = 0;
    let asMask = 0;
    let kept = 0;
    let random = 0;
    for (let i = 0; i < x.data.length; i++) {
      if (y.data[i] === -100) {
        expect(masked.data[i]).toBe(x.data[i]);
        continue;
      }
      chosen++;
      expect(y.data[i]).toBe(x.data[i]);
      if (masked.data[i] === 50) asMask++;
      else if (masked.data[i] === x.data[i]) kept++;
      else random++;
      expect(masked.data[i]).toBeLessThanOrEqual(50);
    }
    expect(count).toBe(chosen);
    expect(chosen / x.data.length).toBeGreaterThan(0.145);
    expect(chosen / x.data.length).toBeLessThan(0.155);
    expect(asMask / chosen).toBeGreaterThan(0.78);
    expect(asMask / chosen).toBeLessThan(0.82);
    // A random replacement can draw the original id (1 in 49), which then counts as kept.
    expect(random / chosen).toBeGreaterThan(0.085);
    expect(kept / chosen).toBeGreaterThan(0.095);
    expect(kept / chosen).toBeLessThan(0.115);
  });

  it('is reproducible with a seed, never touches special ids and honours rate and ignoreIndex', () => {
    const x = tensor(Int32Array.from({ length: 400 }, (_, i) => (i % 5 === 0 ? 0 : 1 + (i % 9))), [4, 100]);
    const a = maskTokens(x, { maskId: 10, vocabSize: 10, seed: 7, specialIds: [0], rate: 0.5, ignoreIndex: -1 });
    const b = maskTokens(x, { maskId: 10, vocabSize: 10, seed: 7, specialIds: [0], rate: 0.5, ignoreIndex: -1 });
    expect(Array.from(a.x.data)).toEqual(Array.from(b.x.data));
    expect(Array.from(a.y.data)).toEqual(Array.from(b.y.data));
    for (let i = 0; i < 400; i++) {
      if (x.data[i] === 0) {
        expect(a.x.data[i]).toBe(0);
        expect(a.y.data[i]).toBe(-1);
      }
      // Random replacements avoid the special id too.
      if (a.y.data[i] !== -1) expect(a.x.data[i]).not.toBe(0);
    }
    expect(a.count / 320).toBeGreaterThan(0.4);
    expect(a.count / 320).toBeLessThan(0.6);
    expect(maskTokens(x, { maskId: 10, vocabSize: 10, rate: 0 }).count).toBe(0);
  });

  it('rejects bad input with clear errors', () => {
    const x = tensor(new Int32Array(4), [2, 2]);
    expect(() => maskTokens(tensor(new Float32Array(4), [2, 2]), { maskId: 3, vocabSize: 3 })).toThrow(/int32 token ids/);
    expect(() => maskTokens(x, { maskId: -1, vocabSize: 3 })).toThrow(RangeError);
    expect(() => maskTokens(x, { maskId: 3, vocabSize: 3, rate: 2 })).toThrow(/rate must be in \[0, 1\]/);
    expect(() => maskTokens(x, { maskId: 3, vocabSize: 3, frac: 1 } as never)).toThrow(/unknown option frac/);
  });
});
