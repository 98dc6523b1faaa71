import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import type { Tensor } from '../tensor.js';
import { cacheDir, dataDir, sha256 } from './files.js';

// The 20 tasks of bAbI v1.2 as named in its file names, with the sha256 of the English 1k files (`en/`):
// [name, train sha256, test sha256]. The tarball's own sha256 is published nowhere we can check, so a download
// is checked file by file against these.
const TASKS: readonly (readonly [string, string, string])[] = [
  ['single-supporting-fact', 'c64ba9b1a49bbb111ffc4cd2ae4f129d25c012399dd7ade9679eea464b9afb05', '55acf66cef2f6d798e2aa1d056e1ec8f24e910ea9215b639450574321132959b'],
  ['two-supporting-facts', 'a4978af5bc0dc30191810e7c9949aaa6eae939ed0f6beb9fcb5f4330c2a27860', 'eff93fb9cd81ba02eb765772cf7cc269769ed44ec71cbbbc19cfb16ee5eba0f6'],
  ['three-supporting-facts', 'a6e78019f36a02a7ed71fe6aaded0b563ff09c8deec392931801fcd9c6af4d60', '17795c977100baf8188f386522ae301b62d6c1a13efc01b3aea781e588b4d57f'],
  ['two-arg-relations', 'c9370502d85fa382f32d1fea2111e817f81ae9e3e79eb2924a1a5392a90417fa', '07f0ca18ddeea9eed4ba6d59e162adcb0ce44815721114b3540d92825509331e'],
  ['three-arg-relations', '086cd59c3ca9677bfac3d6a22ca5853c76a5c1fbae3159c7c4a6aef759a74ec0', 'ec825c1c8a76e63a31f0d7a7763cd63740e98332fa9bdf246a19068949bd5f97'],
  ['yes-no-questions', '5a133115ee35d475776df703ff605d145b11effbcdbf7e74861f9d5639246a5a', 'b108b16f1eccbd1c24df6dca2649079a7b2f10af7fd12d4c45a3393802de59e3'],
  ['counting', 'dca03bd91876951c49f1c971c83c9dd55404de60201b7b6435451cf7ddb4751c', 'a74d1f2b91329b2bae814d41cdac2fbdfdf0328562b7d8afa9a0fa576d461e27'],
  ['lists-sets', '058604df6f9440458317e8ae685d2b7b84261e1a80b4d6410a9140d16f81bf06', '362a653c821a580fa315a85243b4f03bfa06fa7e0269b6f8e596f8fe6911646a'],
  ['simple-negation', '0c3b89921af0caea1c4059ee3f7b7f2a88869f924195a428da37820446b8c49f', '63590aff3f89993db409f0e9a9eb39c2a5b9d5efff99b255d800a891b0044d9f'],
  ['indefinite-knowledge', '0b7691689447bab05476c5b48c44999b41e747c3978df69c18fdd87b60d6e8b3', 'fde8f20ed0b3ba979058ed391a566af34653f23baab5b2793ee37f87ef4e88b7'],
  ['basic-coreference', '9468de9a1f256f43dfda693a5d07182d21149a82b65f7c2451c64e9cff5eb138', '46f3290d0158ce1285a40cd2d793f5a65f86ae5000226e165cbc85a3dfeb2f6f'],
  ['conjunction', '45c2764bb2d3c8f699d35e9d9aa7958fcd96379c6e907116cdf74526c108bb25', '6437718f8f9801ce345869e910b896836cdc6fd2d01dc7b4d2df49730703b4b1'],
  ['compound-coreference', '533a391edbda743e4c99504de88b40cdded5b1d5ef454d1390f0863f748a4cc9', '76a25b684f23c9cc473d8cd1465506168b9a1ec8891cfc59d0bbd87e6a064990'],
  ['time-reasoning', 'b7561cbc624205c9c2fdbb8c843cfa8ad90edd65e78bb223fc6dea8113662df8', 'e3f0b19858ffbec3ed1e49076cc4d1295a89ce146c50318b862f13f202b3caf2'],
  ['basic-deduction', 'e856ebfdcce4dd7d617c1d10f985e96a0850c0ca18e9a19a017cb710d135ed3d', '32b77e117fe9acf5f94906684e3b5206de0108e646c76e1da3e022896ec7ee94'],
  ['basic-induction', '20121005137e3d4b061a086eb177a456303d5742b764eb8da2d0e480b6af4d28', '4a11e55366f2a5a859b5a81f683ee23801bdbe71ef984e51adb976bd053e8dcf'],
  ['positional-reasoning', '20083bf56ff74f0e7cf5e3e2f8c3905cdb8ef09293c3e8cf7a96ed8b45ae2277', '9e1e0250ed4ec1831757fab26c04138f81ea557ebf6976a220db879cbed04bac'],
  ['size-reasoning', '18b7dcf52c9a0e87e4e7dd3d65b7e5a630de039645f52a1294197af7481d739d', 'd34f70eb7228a276fcb3a7854174fe562c5634f4fb454a39fc3d1ad9934be3ef'],
  ['path-finding', 'dcb788352a56effb7bea1449128f31cc9c342c8c327b6df2caeee0e379e6ad3a', '023e391f0d7f79c9e6ae1c46c093e2d0dbd50ab8fbd8965e037a75e3614c20e5'],
  ['agents-motivations', '29580ad55fb7b4b29ba014696056cc68f8f347dac3be88470fd692ad60150398', 'bd3bde3788ac14ba0ae095078f7b820fbd2bfa6a34dba9d1d46a34afde9c2729'],
];

/** The official bAbI v1.2 tarball (tasks 1-20, every language and size); only its `en/` folder is kept. */
export const babiTarballUrl = 'http://www.thespermwhale.com/jaseweston/babi/tasks_1-20_v1-2.tar.gz';

/** Which file of a task: its training or its test questions. */
export type BabiSplit = 'train' | 'test';

/** sha256 of each of the 40 files of bAbI v1.2's `en/` folder, by file name (`qa1_single-supporting-fact_train.txt`). */
export const babiSha256: Readonly<Record<string, string>> = Object.fromEntries(
  TASKS.flatMap(([name, train, test], i) => [
    [`qa${i + 1}_${name}_train.txt`, train],
    [`qa${i + 1}_${name}_test.txt`, test],
  ]),
);

/** The name of bAbI task `n` (1 to 20) as its files spell it: `taskName(1)` is `'single-supporting-fact'`. */
export function taskName(n: number): string {
  return task('taskName', n)[0];
}

function task(op: string, n: number): readonly [string, string, string] {
  const t = Number.isInteger(n) ? TASKS[n - 1] : undefined;
  if (t === undefined) throw new RangeError(`${op}: bAbI tasks are numbered 1 to 20, got ${n}`);
  return t;
}

/** One question of a bAbI story with everything the story said before it. */
export interface BabiExample {
  /** The story's statements before the question, oldest first, each a list of words (questions are left out). */
  story: string[][];
  /** The line ID of each story sentence in the file, which supporting facts refer to. */
  storyIds: number[];
  /** The question's words. */
  query: string[];
  /** The answer, lowercased, as one token even when it lists several words (`apple,football` in task 8). */
  answer: string;
  /** The supporting facts, as indices into `story`, in the order the file gives them. */
  supporting: number[];
}

/**
 * Splits text into lowercase words: runs of letters, digits, apostrophes and hyphens are words, and every other
 * visible character is a word of its own, except `.`, `?` and `!`, which are dropped. Every bAbI statement ends in
 * `.` and every question in `?`, so they tell the model nothing a sentence's place does not.
 */
export function tokenize(text: string): string[] {
  const words = text.toLowerCase().match(/[\p{L}\p{N}'-]+|[^\s\p{L}\p{N}'-]/gu) ?? [];
  return words.filter((w) => w !== '.' && w !== '?' && w !== '!');
}

/**
 * Parses a bAbI file. Each line is `ID text`; IDs start at 1 with each story and increase within it. A line
 * `ID question\tanswer\tsupporting IDs` is a question and gives one example whose story is the statements before
 * it in the same story. Blank lines, surrounding whitespace and CRLF line ends are ignored; a malformed line is a
 * SyntaxError naming its line number.
 */
export function parseBabi(text: string): BabiExample[] {
  const examples: BabiExample[] = [];
  let story: string[][] = [];
  let storyIds: number[] = [];
  let lastId = 0;
  const lines = text.split(/\r\n|\r|\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '') continue;
    const where = `parseBabi: line ${i + 1}`;
    const m = /^(\d+)\s+(.*)$/s.exec(line);
    if (m === null) throw new SyntaxError(`${where} is not "ID text": ${JSON.stringify(line)}`);
    const id = Number(m[1]);
    if (id === 1) {
      story = [];
      storyIds = [];
    } else if (id <= lastId || lastId === 0) {
      const after = lastId === 0 ? 'no story' : `ID ${lastId}`;
      throw new SyntaxError(`${where} has ID ${id} after ${after}; a story starts at ID 1 and its IDs increase`);
    }
    lastId = id;
    const fields = m[2]!.split('\t');
    if (fields.length === 1) {
      story.push(tokenize(fields[0]!));
      storyIds.push(id);
      continue;
    }
    if (fields.length > 3) {
      throw new SyntaxError(`${where} has ${fields.length} tab-separated fields, expected question, answer, supporting IDs`);
    }
    const answer = fields[1]!.trim().toLowerCase();
    if (answer === '') throw new SyntaxError(`${where} is a question without an answer`);
    const support = (fields[2] ?? '').trim();
    const supporting = support === '' ? [] : support.split(/\s+/).map((s) => {
      const k = /^\d+$/.test(s) ? storyIds.indexOf(Number(s)) : -1;
      if (k < 0) {
        throw new SyntaxError(`${where}: supporting fact ${JSON.stringify(s)} is not a statement of this story before the question`);
      }
      return k;
    });
    examples.push({ story: story.slice(), storyIds: storyIds.slice(), query: tokenize(fields[0]!), answer, supporting });
  }
  return examples;
}

/** Options of {@link loadTask}. */
export interface LoadTaskOptions {
  /** Which of the task's two files to read. */
  split: BabiSplit;
  /** Folder holding `babi/en/`; default {@link dataDir} (`$ENGRAM_DATA`). */
  dir?: string;
}

/**
 * The questions of bAbI task `n` (1 to 20), English, 1k training questions (1,000 per split). Read from
 * `<dir>/babi/en/qa<n>_*_<split>.txt`; when that folder does not exist, from the cache folder, where the official
 * tarball's `en/` files are extracted on first use. Every file is checked against {@link babiSha256}, so only the
 * published v1.2 data loads; parse other bAbI-format text with {@link parseBabi}.
 */
export async function loadTask(n: number, options: LoadTaskOptions): Promise<BabiExample[]> {
  const [name, trainSha, testSha] = task('loadTask', n);
  const split = options?.split;
  if (split !== 'train' && split !== 'test') {
    throw new TypeError(`loadTask: split must be 'train' or 'test', got ${JSON.stringify(split)}`);
  }
  let folder = join(options.dir ?? dataDir(), 'babi', 'en');
  if (!existsSync(folder)) {
    const cached = join(cacheDir(), 'babi', 'en');
    if (!existsSync(cached)) await downloadBabi(cached, folder);
    folder = cached;
  }
  const prefix = `qa${n}_`;
  const suffix = `_${split}.txt`;
  const file = readdirSync(folder).find((f) => f.startsWith(prefix) && f.endsWith(suffix));
  if (file === undefined) {
    throw new Error(`loadTask: ${folder} has no ${prefix}*${suffix}; ${DATA_HINT}`);
  }
  const path = join(folder, file);
  const bytes = readFileSync(path);
  const expected = split === 'train' ? trainSha : testSha;
  const got = sha256(bytes);
  if (got !== expected) {
    throw new Error(`loadTask: ${path} has sha256 ${got}, expected ${expected} (bAbI v1.2 en/qa${n}_${name}${suffix})`);
  }
  return parseBabi(bytes.toString('utf8'));
}

const DATA_HINT = 'set ENGRAM_DATA to a folder whose babi/en/ holds the bAbI v1.2 English 1k tasks';

async function downloadBabi(folder: string, missing: string): Promise<void> {
  const fail = (why: string) =>
    new Error(`loadTask: ${missing} does not exist and ${babiTarballUrl} could not be downloaded (${why}); ${DATA_HINT}`);
  let res: Response;
  try {
    res = await fetch(babiTarballUrl);
  } catch (e) {
    throw fail((e as Error).message);
  }
  if (!res.ok) throw fail(`HTTP ${res.status}`);
  extractBabi(new Uint8Array(await res.arrayBuffer()), folder);
}

/**
 * Writes the 40 `en/` files of the bAbI v1.2 tarball (`.tar.gz` bytes) into `folder`, each checked against
 * {@link babiSha256}. Nothing is written unless all 40 are present and pass; the folder appears whole, by a rename.
 * @internal
 */
export function extractBabi(tarGz: Uint8Array, folder: string): void {
  const found = new Map<string, Uint8Array>();
  for (const entry of readTar(gunzipSync(tarGz))) {
    const parts = entry.name.split('/');
    const base = parts[parts.length - 1]!;
    if (parts[parts.length - 2] === 'en' && Object.hasOwn(babiSha256, base)) found.set(base, entry.data);
  }
  for (const [name, expected] of Object.entries(babiSha256)) {
    const data = found.get(name);
    if (data === undefined) throw new Error(`extractBabi: the tarball has no en/${name}; nothing was kept`);
    const got = sha256(data);
    if (got !== expected) throw new Error(`extractBabi: the tarball's en/${name} has sha256 ${got}, expected ${expected}; nothing was kept`);
  }
  const tmp = `${folder}.${process.pid}.tmp`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  for (const [name, data] of found) writeFileSync(join(tmp, name), data);
  mkdirSync(dirname(folder), { recursive: true });
  try {
    renameSync(tmp, folder);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    // Another process extracting at the same time got there first; its files passed the same checks.
    if (!existsSync(folder)) throw e;
  }
}

/** A regular file read from a tar archive. */
export interface TarEntry {
  /** Its path in the archive. */
  name: string;
  /** Its bytes, a view into the archive. */
  data: Uint8Array;
}

/**
 * The regular files of an uncompressed tar archive, in archive order. Reads POSIX ustar headers (name, with the
 * ustar prefix), GNU long names (`L` entries) and pax `path` records (`x` entries); other entries (directories,
 * links, global pax headers) are skipped. A header with a bad checksum or an entry cut short is an error.
 */
export function readTar(tar: Uint8Array): TarEntry[] {
  const entries: TarEntry[] = [];
  let longName: string | undefined;
  let offset = 0;
  while (offset + 512 <= tar.length) {
    const header = tar.subarray(offset, offset + 512);
    if (header.every((b) => b === 0)) break;
    // The checksum is the sum of the header's bytes with its own 8-byte field read as spaces.
    let sum = 8 * 0x20;
    for (let i = 0; i < 512; i++) if (i < 148 || i >= 156) sum += header[i]!;
    if (tarNumber(header, 148, 156, offset) !== sum) throw new Error(`readTar: the header at byte ${offset} has a bad checksum`);
    const size = tarNumber(header, 124, 136, offset);
    const start = offset + 512;
    if (start + size > tar.length) {
      throw new Error(`readTar: the entry at byte ${offset} holds ${size} bytes but the archive ends ${tar.length - start} bytes later`);
    }
    const data = tar.subarray(start, start + size);
    offset = start + Math.ceil(size / 512) * 512;
    const type = String.fromCharCode(header[156]!);
    if (type === 'L') {
      longName = cString(data);
    } else if (type === 'x') {
      longName = paxPath(data) ?? longName;
    } else if (type !== 'g') {
      let name = cString(header.subarray(0, 100));
      // Only POSIX ustar ("ustar\0") has a prefix field; old GNU headers ("ustar  ") keep times there.
      const prefix = cString(header.subarray(257, 263)) === 'ustar' && header[262] === 0 ? cString(header.subarray(345, 500)) : '';
      if (prefix !== '') name = `${prefix}/${name}`;
      if (longName !== undefined) name = longName;
      longName = undefined;
      if (type === '0' || type === '\0' || type === '7') entries.push({ name, data });
    }
  }
  return entries;
}

const utf8 = new TextDecoder();

function cString(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return utf8.decode(end < 0 ? bytes : bytes.subarray(0, end));
}

/** A numeric header field: octal text ended by NUL or space, or GNU base-256 when the top bit is set. */
function tarNumber(header: Uint8Array, start: number, end: number, offset: number): number {
  if (header[start]! & 0x80) {
    let v = header[start]! & 0x7f;
    for (let i = start + 1; i < end; i++) v = v * 256 + header[i]!;
    return v;
  }
  const text = cString(header.subarray(start, end)).trim();
  if (!/^[0-7]*$/.test(text)) throw new Error(`readTar: the header at byte ${offset} has ${JSON.stringify(text)} where a number should be`);
  return text === '' ? 0 : parseInt(text, 8);
}

/** The `path` of pax extended-header records, each `<length> <key>=<value>\n` with the length in bytes. */
function paxPath(data: Uint8Array): string | undefined {
  let path: string | undefined;
  let i = 0;
  while (i < data.length) {
    const space = data.indexOf(0x20, i);
    const len = space < 0 ? NaN : Number(utf8.decode(data.subarray(i, space)));
    if (!Number.isInteger(len) || len <= space - i) break;
    const record = utf8.decode(data.subarray(space + 1, i + len - 1));
    const eq = record.indexOf('=');
    if (record.slice(0, eq) === 'path') path = record.slice(eq + 1);
    i += len;
  }
  return path;
}

/** The padding word, id 0 in every {@link BabiVocab}. */
export const PAD = '<pad>';

/** The words of some bAbI examples with their ids: `'<pad>'` is 0, the rest follow in sorted order. */
export interface BabiVocab {
  /** The words, index = id. */
  readonly words: readonly string[];
  /** Number of words, padding included. */
  readonly size: number;
  /** Whether `word` has an id. */
  has(word: string): boolean;
  /** The id of `word`; a RangeError when it has none. */
  id(word: string): number;
  /** The word of `id`; a RangeError outside `0 .. size - 1`. */
  word(id: number): string;
}

/**
 * The vocabulary of story, query and answer words across several example lists (e.g. `[train, test]`), so that
 * answers and words share the ids a memory network's output layer predicts. The same words give the same ids
 * whatever their order.
 */
export function buildVocab(examples: readonly (readonly BabiExample[])[]): BabiVocab {
  const seen = new Set<string>();
  for (const list of examples) {
    for (const ex of list) {
      for (const sentence of ex.story) for (const w of sentence) seen.add(w);
      for (const w of ex.query) seen.add(w);
      seen.add(ex.answer);
    }
  }
  seen.delete(PAD);
  const words = [PAD, ...[...seen].sort()];
  const ids = new Map(words.map((w, i) => [w, i]));
  return {
    words,
    size: words.length,
    has: (word) => ids.has(word),
    id(word) {
      const id = ids.get(word);
      if (id === undefined) throw new RangeError(`BabiVocab.id: ${JSON.stringify(word)} is not in the vocabulary`);
      return id;
    },
    word(id) {
      const word = Number.isInteger(id) ? words[id] : undefined;
      if (word === undefined) throw new RangeError(`BabiVocab.word: id ${id} is outside 0 .. ${words.length - 1}`);
      return word;
    },
  };
}

/** Options of {@link vectorize}. */
export interface VectorizeOptions {
  /** Story sentences kept per example, the most recent ones; default 50, the paper's. */
  memorySize?: number;
  /** Word slots per sentence and query; default the longest kept sentence or query (at least 1). */
  sentenceLen?: number;
  /**
   * A story or query word outside the vocabulary: `'error'` (default) throws a RangeError naming the word and
   * the example; `'skip'` drops the word. An answer outside the vocabulary is always an error.
   */
  unknown?: 'error' | 'skip';
}

/** bAbI examples as padded int32 word ids, 0 being padding. */
export interface BabiTensors {
  /**
   * `[n, memorySize, sentenceLen]`. Example i's kept sentences fill slots `0 .. storyLengths[i] - 1` oldest first,
   * so its most recent sentence is in slot `storyLengths[i] - 1`; the slots after are padding.
   */
  stories: Tensor;
  /** `[n, sentenceLen]`. */
  queries: Tensor;
  /** `[n]`, the answers' word ids. */
  answers: Tensor;
  /** Number of sentences kept per example: `min(story length, memorySize)`. */
  storyLengths: Int32Array;
  /** Sentence slots per example. */
  memorySize: number;
  /** Word slots per sentence and query. */
  sentenceLen: number;
}

/**
 * Turns examples into the padded int32 tensors of End-To-End Memory Networks (Sukhbaatar et al. 2015): each story
 * is cut to its `memorySize` most recent sentences, as the paper does, and laid out oldest first with padding
 * after (see {@link BabiTensors.stories}); a temporal encoding indexed by recency reads slot j as
 * `storyLengths[i] - 1 - j` sentences back. An empty story, a sentence or query longer than `sentenceLen`, and an
 * unknown word (unless skipped) are RangeErrors naming the example. To give train and test the same shapes, pass
 * both the larger `sentenceLen`.
 */
export function vectorize(examples: readonly BabiExample[], vocab: BabiVocab, options: VectorizeOptions = {}): BabiTensors {
  const { memorySize = 50, unknown = 'error' } = options;
  if (!Number.isInteger(memorySize) || memorySize < 1) {
    throw new RangeError(`vectorize: memorySize must be a positive integer, got ${memorySize}`);
  }
  if (options.sentenceLen !== undefined && (!Number.isInteger(options.sentenceLen) || options.sentenceLen < 1)) {
    throw new RangeError(`vectorize: sentenceLen must be a positive integer, got ${options.sentenceLen}`);
  }
  if (unknown !== 'error' && unknown !== 'skip') {
    throw new TypeError(`vectorize: unknown must be 'error' or 'skip', got ${JSON.stringify(unknown)}`);
  }

  const encoded = examples.map((ex, i) => {
    const encode = (words: readonly string[], what: string): number[] => {
      const ids: number[] = [];
      for (const w of words) {
        if (vocab.has(w)) ids.push(vocab.id(w));
        else if (unknown === 'error') {
          throw new RangeError(
            `vectorize: example ${i}: ${what} has the word ${JSON.stringify(w)}, which is not in the vocabulary (unknown: 'skip' drops such words)`,
          );
        }
      }
      return ids;
    };
    if (ex.story.length === 0) {
      const query = JSON.stringify(ex.query.join(' '));
      throw new RangeError(`vectorize: example ${i} has an empty story (no statement before the question ${query})`);
    }
    if (!vocab.has(ex.answer)) {
      throw new RangeError(`vectorize: example ${i}: the answer ${JSON.stringify(ex.answer)} is not in the vocabulary`);
    }
    const first = Math.max(0, ex.story.length - memorySize);
    return {
      story: ex.story.slice(first).map((s, j) => encode(s, `sentence ${first + j}`)),
      first,
      query: encode(ex.query, 'the query'),
      answer: vocab.id(ex.answer),
    };
  });

  let sentenceLen = options.sentenceLen ?? 1;
  if (options.sentenceLen === undefined) {
    for (const e of encoded) for (const s of [...e.story, e.query]) sentenceLen = Math.max(sentenceLen, s.length);
  }
  const n = examples.length;
  const stories = new Int32Array(n * memorySize * sentenceLen);
  const queries = new Int32Array(n * sentenceLen);
  const answers = new Int32Array(n);
  const storyLengths = new Int32Array(n);
  encoded.forEach((e, i) => {
    const fit = (ids: number[], what: string): number[] => {
      if (ids.length > sentenceLen) {
        throw new RangeError(`vectorize: example ${i}: ${what} has ${ids.length} words, more than sentenceLen ${sentenceLen}`);
      }
      return ids;
    };
    e.story.forEach((s, j) => stories.set(fit(s, `sentence ${e.first + j}`), (i * memorySize + j) * sentenceLen));
    queries.set(fit(e.query, 'the query'), i * sentenceLen);
    answers[i] = e.answer;
    storyLengths[i] = e.story.length;
  });
  return {
    stories: { data: stories, shape: [n, memorySize, sentenceLen] },
    queries: { data: queries, shape: [n, sentenceLen] },
    answers: { data: answers, shape: [n] },
    storyLengths,
    memorySize,
    sentenceLen,
  };
}
