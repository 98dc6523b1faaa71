import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { dataDir, fetchChecked, sha256, type RemoteFile } from './files.js';

/** char-rnn's Tiny Shakespeare: 1,115,394 characters, 65 distinct. */
export const tinyShakespeareFile: RemoteFile = {
  url: 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt',
  sha256: '86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed',
  name: 'tinyshakespeare.txt',
};

/**
 * The Tiny Shakespeare text: from `$ENGRAM_DATA/tinyshakespeare/input.txt` when present, else downloaded
 * once into the cache folder and checked by sha256.
 */
export async function loadTinyShakespeare(options: { dir?: string } = {}): Promise<string> {
  const local = join(options.dir ?? dataDir(), 'tinyshakespeare', 'input.txt');
  if (existsSync(local)) {
    const bytes = readFileSync(local);
    if (sha256(bytes) !== tinyShakespeareFile.sha256) {
      throw new Error(`${local} does not have the expected sha256 ${tinyShakespeareFile.sha256}`);
    }
    return bytes.toString('utf8');
  }
  return Buffer.from(await fetchChecked(tinyShakespeareFile)).toString('utf8');
}

/** A character vocabulary: sorted distinct characters, with encode and decode. */
export interface CharVocab {
  /** The characters, index = id. */
  chars: string[];
  /** Text to ids; throws a RangeError on a character outside the vocabulary. */
  encode(text: string): Int32Array;
  /** Ids to text. */
  decode(ids: ArrayLike<number>): string;
}

/** Builds the character vocabulary of `text`. */
export function charVocab(text: string): CharVocab {
  const chars = [...new Set(text)].sort();
  const index = new Map(chars.map((c, i) => [c, i]));
  return {
    chars,
    encode(s: string): Int32Array {
      const out = new Int32Array(s.length);
      for (let i = 0; i < s.length; i++) {
        const id = index.get(s[i]!);
        if (id === undefined) throw new RangeError(`charVocab.encode: ${JSON.stringify(s[i])} at ${i} is not in the vocabulary`);
        out[i] = id;
      }
      return out;
    },
    decode(ids: ArrayLike<number>): string {
      let s = '';
      for (let i = 0; i < ids.length; i++) s += chars[ids[i]!] ?? '?';
      return s;
    },
  };
}
