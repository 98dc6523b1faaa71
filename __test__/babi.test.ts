import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import {
  babiSha256,
  buildVocab,
  extractBabi,
  loadTask,
  parseBabi,
  readTar,
  taskName,
  tokenize,
  vectorize,
  type BabiExample,
} from '../src/datasets/babi.js';
import { dataDir, sha256 } from '../src/datasets/files.js';
import { datasets } from '../src/index.js';

const realDir = join(dataDir(), 'babi', 'en');
const scratch = mkdtempSync(join(tmpdir(), 'engram-babi-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** One tar member: a header written by hand (POSIX ustar) and its data padded to 512 bytes. */
function tarMember(name: string, data: Uint8Array | string, opts: { type?: string; prefix?: string } = {}): Uint8Array {
  const body = typeof data === 'string' ? new TextEncoder().encode(data) : data;
  const header = new Uint8Array(512);
  const put = (text: string, at: number) => header.set(new TextEncoder().encode(text), at);
  put(name, 0);
  put('0000644\0', 100);
  put('0000000\0', 108);
  put('0000000\0', 116);
  put(`${body.length.toString(8).padStart(11, '0')}\0`, 124);
  put('00000000000\0', 136);
  put('        ', 148);
  put(opts.type ?? '0', 156);
  put('ustar\0' + '00', 257);
  put(opts.prefix ?? '', 345);
  put(`${header.reduce((a, b) => a + b, 0).toString(8).padStart(6, '0')}\0 `, 148);
  const out = new Uint8Array(512 + Math.ceil(body.length / 512) * 512);
  out.set(header);
  out.set(body, 512);
  return out;
}

function tarArchive(members: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat([...members, new Uint8Array(1024)]));
}

function paxRecord(key: string, value: string): string {
  const rest = ` ${key}=${value}\n`;
  let len = rest.length + 1;
  while (`${len}${rest}`.length !== len) len++;
  return `${len}${rest}`;
}

function example(story: string[], query = 'where is mary', answer = 'kitchen'): BabiExample {
  return {
    story: story.map((s) => s.split(' ')),
    storyIds: story.map((_, i) => i + 1),
    query: query.split(' '),
    answer,
    supporting: [],
  };
}

describe('parseBabi', () => {
  it('gives each question the statements before it in its story, and restarts a story at ID 1', () => {
    const text = [
      '1 Mary moved to the bathroom.',
      '2 John went to the hallway.',
      '3 Where is Mary? \tbathroom\t1',
      '4 Daniel went back to the hallway.',
      '5 Where is Daniel? \thallway\t4',
      '1 Sandra moved to the garden.',
      '2 Where is Sandra? \tgarden\t1',
    ].join('\n');
    const ex = parseBabi(text);
    expect(ex).toHaveLength(3);
    expect(ex[0]).toEqual({
      story: [
        ['mary', 'moved', 'to', 'the', 'bathroom'],
        ['john', 'went', 'to', 'the', 'hallway'],
      ],
      storyIds: [1, 2],
      query: ['where', 'is', 'mary'],
      answer: 'bathroom',
      supporting: [0],
    });
    // The first question is not part of the second one's memory.
    expect(ex[1]!.story.map((s) => s[0])).toEqual(['mary', 'john', 'daniel']);
    expect(ex[1]!.storyIds).toEqual([1, 2, 4]);
    expect(ex[1]!.supporting).toEqual([2]);
    expect(ex[2]!.story).toEqual([['sandra', 'moved', 'to', 'the', 'garden']]);
    expect(ex[2]!.supporting).toEqual([0]);
  });

  it('maps several supporting facts to story indices in the order given', () => {
    const text = [
      '1 Mary got the football there.',
      '2 Where is John? \tkitchen\t',
      '3 Mary went to the kitchen.',
      '4 John went to the office.',
      '5 Where is the football? \tkitchen\t3 1',
    ].join('\n');
    const ex = parseBabi(text);
    expect(ex[0]!.supporting).toEqual([]);
    expect(ex[1]!.storyIds).toEqual([1, 3, 4]);
    expect(ex[1]!.supporting).toEqual([1, 0]);
  });

  it('ignores trailing whitespace, CRLF line ends and blank lines', () => {
    const lf = '1 Mary moved to the bathroom.\n2 Where is Mary?\tbathroom\t1\n';
    const messy = '\r\n1 Mary moved to the bathroom.  \r\n\r\n  \r\n2 Where is Mary? \tbathroom \t1 \t\r\n\r\n';
    expect(parseBabi(messy)).toEqual(parseBabi(lf));
    expect(parseBabi(messy)).toHaveLength(1);
  });

  it('keeps a list answer as one token and lowercases answers', () => {
    const ex = parseBabi(
      '1 Mary got the apple there.\n2 Mary took the football there.\n3 What is Mary carrying?\tapple,football\t1 2\n4 Who has the apple?\tMary\t1',
    );
    expect(ex[0]!.answer).toBe('apple,football');
    expect(ex[1]!.answer).toBe('mary');
  });

  it('tokenises lowercase, drops . ? ! and splits other punctuation off', () => {
    expect(tokenize('Mary, the Cat went to the kitchen.')).toEqual(['mary', ',', 'the', 'cat', 'went', 'to', 'the', 'kitchen']);
    expect(tokenize("Is it John's?")).toEqual(['is', 'it', "john's"]);
    expect(tokenize('  ')).toEqual([]);
  });

  it('rejects malformed lines with their line number', () => {
    expect(() => parseBabi('Mary moved.')).toThrow(/line 1 is not "ID text"/);
    expect(() => parseBabi('2 Mary moved.')).toThrow(/line 1 has ID 2 after no story/);
    expect(() => parseBabi('1 Mary moved.\n3 John moved.\n2 Sandra moved.')).toThrow(/line 3 has ID 2 after ID 3/);
    expect(() => parseBabi('1 Mary moved.\n2 Where is Mary?\t\t1')).toThrow(/line 2 is a question without an answer/);
    expect(() => parseBabi('1 Mary moved.\n2 Where?\tx\t1\n3 Where?\tx\t2')).toThrow(/line 3: supporting fact "2" is not a statement/);
    expect(() => parseBabi('1 Mary moved.\n2 Where?\tx\t3')).toThrow(SyntaxError);
  });
});

describe('taskName', () => {
  it('names the tasks as their files do', () => {
    expect(taskName(1)).toBe('single-supporting-fact');
    expect(taskName(8)).toBe('lists-sets');
    expect(taskName(20)).toBe('agents-motivations');
    expect(() => taskName(0)).toThrow(RangeError);
    expect(() => taskName(21)).toThrow(/numbered 1 to 20, got 21/);
    expect(() => taskName(1.5)).toThrow(RangeError);
  });
});

describe('buildVocab', () => {
  const a = parseBabi('1 Mary moved to the bathroom.\n2 Where is Mary?\tbathroom\t1');
  const b = parseBabi('1 John got the apple.\n2 What is John carrying?\tapple,milk\t1');

  it('reserves id 0 for padding and sorts the words, whatever the order of the examples', () => {
    const v = buildVocab([a, b]);
    expect(v.words[0]).toBe('<pad>');
    expect(v.id('<pad>')).toBe(0);
    const rest = v.words.slice(1);
    expect(rest).toEqual([...rest].sort());
    expect(rest).toContain('apple,milk');
    expect(v.size).toBe(v.words.length);
    expect(buildVocab([b, a]).words).toEqual(v.words);
    expect(buildVocab([[...a, ...b].reverse()]).words).toEqual(v.words);
    for (let id = 0; id < v.size; id++) expect(v.id(v.word(id))).toBe(id);
  });

  it('rejects unknown words and ids', () => {
    const v = buildVocab([a]);
    expect(v.has('john')).toBe(false);
    expect(() => v.id('john')).toThrow(/"john" is not in the vocabulary/);
    expect(() => v.word(v.size)).toThrow(RangeError);
    expect(() => v.word(-1)).toThrow(RangeError);
  });
});

describe('vectorize', () => {
  it('pads sentences and queries with 0 and lays the story out oldest first', () => {
    const ex = [example(['mary went to the kitchen', 'john went away']), example(['john went to the kitchen'], 'where is john')];
    const v = buildVocab([ex]);
    const t = vectorize(ex, v, { memorySize: 3 });
    expect(t.sentenceLen).toBe(5);
    expect(t.memorySize).toBe(3);
    expect(t.stories.shape).toEqual([2, 3, 5]);
    expect(t.queries.shape).toEqual([2, 5]);
    expect(t.answers.shape).toEqual([2]);
    expect(t.stories.data).toBeInstanceOf(Int32Array);
    expect([...t.storyLengths]).toEqual([2, 1]);
    const ids = (s: string) => s.split(' ').map((w) => v.id(w));
    expect([...t.stories.data.subarray(0, 15)]).toEqual([...ids('mary went to the kitchen'), ...ids('john went away'), 0, 0, 0, 0, 0, 0, 0]);
    expect([...t.queries.data.subarray(5, 10)]).toEqual([...ids('where is john'), 0, 0]);
    expect([...t.answers.data]).toEqual([v.id('kitchen'), v.id('kitchen')]);
  });

  it('keeps the 50 most recent sentences of a 60-sentence story', () => {
    const story = Array.from({ length: 60 }, (_, i) => `mary went to room${i}`);
    const ex = [example(story, 'where is mary', 'room59')];
    const v = buildVocab([ex]);
    const t = vectorize(ex, v);
    expect(t.stories.shape).toEqual([1, 50, 4]);
    expect(t.storyLengths[0]).toBe(50);
    const rooms = Array.from({ length: 50 }, (_, j) => v.word(t.stories.data[j * 4 + 3]!));
    expect(rooms).toEqual(Array.from({ length: 50 }, (_, j) => `room${j + 10}`));
  });

  it('sizes sentences by the kept sentences and accepts a larger sentenceLen', () => {
    const ex = [example(['a b c d e f g h', 'mary went'], 'where', 'kitchen')];
    const v = buildVocab([ex]);
    expect(vectorize(ex, v, { memorySize: 1 }).sentenceLen).toBe(2);
    const t = vectorize(ex, v, { memorySize: 4, sentenceLen: 10 });
    expect(t.stories.shape).toEqual([1, 4, 10]);
    expect(t.stories.data.subarray(20)).toEqual(new Int32Array(20));
  });

  it('rejects a sentence or query longer than sentenceLen, naming the example and the lengths', () => {
    const ex = [example(['mary went']), example(['mary went to the kitchen'])];
    const v = buildVocab([ex]);
    expect(() => vectorize(ex, v, { sentenceLen: 4 })).toThrow(RangeError);
    expect(() => vectorize(ex, v, { sentenceLen: 4 })).toThrow(/example 1: sentence 0 has 5 words, more than sentenceLen 4/);
    expect(() => vectorize(ex, v, { sentenceLen: 2 })).toThrow(/example 0: the query has 3 words, more than sentenceLen 2/);
  });

  it('rejects unknown words unless told to skip them', () => {
    const train = [example(['mary went to the kitchen'])];
    const v = buildVocab([train]);
    const test = [example(['mary went to the kitchen']), example(['mary ran to the kitchen'], 'where is mary now')];
    expect(() => vectorize(test, v)).toThrow(RangeError);
    expect(() => vectorize(test, v)).toThrow(/example 1: sentence 0 has the word "ran"/);
    const t = vectorize(test, v, { unknown: 'skip' });
    expect(t.sentenceLen).toBe(5);
    expect([...t.stories.data.subarray(t.memorySize * 5, t.memorySize * 5 + 5)]).toEqual([...['mary', 'to', 'the', 'kitchen'].map((w) => v.id(w)), 0]);
    expect([...t.queries.data.subarray(5)]).toEqual([...['where', 'is', 'mary'].map((w) => v.id(w)), 0, 0]);
    expect(() => vectorize([example(['mary went'], 'where is mary', 'garden')], v, { unknown: 'skip' })).toThrow(
      /example 0: the answer "garden" is not in the vocabulary/,
    );
  });

  it('rejects an empty story and bad options', () => {
    const ex = [example(['mary went to the kitchen']), example([])];
    const v = buildVocab([ex]);
    expect(() => vectorize(ex, v)).toThrow(/example 1 has an empty story/);
    expect(() => vectorize(ex.slice(0, 1), v, { memorySize: 0 })).toThrow(/memorySize must be a positive integer/);
    expect(() => vectorize(ex.slice(0, 1), v, { sentenceLen: 2.5 })).toThrow(/sentenceLen must be a positive integer/);
  });
});

describe('readTar', () => {
  it('reads names, ustar prefixes, GNU long names, pax paths and skips directories', () => {
    const longName = `${'d'.repeat(90)}/${'f'.repeat(40)}.txt`;
    const tar = tarArchive([
      tarMember('top/', '', { type: '5' }),
      tarMember('top/a.txt', 'hello'),
      tarMember('b.txt', 'x'.repeat(513), { prefix: 'top/deep' }),
      tarMember('././@LongLink', `${longName}\0`, { type: 'L' }),
      tarMember(longName.slice(0, 99), 'long'),
      tarMember('PaxHeaders/c', paxRecord('path', 'top/pax name.txt') + paxRecord('mtime', '1'), { type: 'x' }),
      tarMember('c', ''),
    ]);
    const entries = readTar(tar);
    expect(entries.map((e) => e.name)).toEqual(['top/a.txt', 'top/deep/b.txt', longName, 'top/pax name.txt']);
    expect(new TextDecoder().decode(entries[0]!.data)).toBe('hello');
    expect(entries[1]!.data.length).toBe(513);
    expect(new TextDecoder().decode(entries[2]!.data)).toBe('long');
    expect(entries[3]!.data.length).toBe(0);
  });

  it('rejects a bad checksum and a cut-short entry', () => {
    const tar = tarArchive([tarMember('a.txt', 'hello world')]);
    const bad = tar.slice();
    bad[0] = 'b'.charCodeAt(0);
    expect(() => readTar(bad)).toThrow(/header at byte 0 has a bad checksum/);
    expect(() => readTar(tar.subarray(0, 520))).toThrow(/holds 11 bytes but the archive ends 8 bytes later/);
    expect(readTar(new Uint8Array(1024))).toEqual([]);
  });
});

describe('extractBabi', () => {
  const files = Object.keys(babiSha256);
  const member = (name: string, data?: Uint8Array) => tarMember(`tasks_1-20_v1-2/${name}`, data ?? readFileSync(join(realDir, name.split('/')[1]!)));

  it('keeps the 40 en/ files of a tarball, checked by sha256', () => {
    const tarGz = gzipSync(
      tarArchive([
        tarMember('tasks_1-20_v1-2/en/', '', { type: '5' }),
        ...files.map((f) => member(`en/${f}`)),
        member('en-10k/qa1_single-supporting-fact_train.txt', new TextEncoder().encode('1 not this one.')),
        member('en/._qa1_single-supporting-fact_train.txt', new Uint8Array(4)),
      ]),
    );
    const out = join(scratch, 'extract', 'babi', 'en');
    extractBabi(tarGz, out);
    expect(readdirSync(out).sort()).toEqual([...files].sort());
    for (const f of files) expect(sha256(readFileSync(join(out, f)))).toBe(babiSha256[f]);
  });

  it('keeps nothing when a file is missing or altered', () => {
    const out = join(scratch, 'bad', 'babi', 'en');
    const altered = files.map((f, i) => (i === 3 ? member(`en/${f}`, new TextEncoder().encode('1 Mary moved.\n')) : member(`en/${f}`)));
    expect(() => extractBabi(gzipSync(tarArchive(altered)), out)).toThrow(new RegExp(`en/${files[3]} has sha256 [0-9a-f]{64}, expected ${babiSha256[files[3]!]}`));
    expect(() => extractBabi(gzipSync(tarArchive(altered.slice(1))), out)).toThrow(`the tarball has no en/${files[0]}`);
    expect(existsSync(out)).toBe(false);
  });
});

describe('loadTask on the real data', () => {
  it('reads task 1: 1000 training and 1000 test questions', async () => {
    const train = await loadTask(1, { split: 'train' });
    const test = await loadTask(1, { split: 'test' });
    expect(train).toHaveLength(1000);
    expect(test).toHaveLength(1000);
    expect(train[0]).toEqual({
      story: [
        ['mary', 'moved', 'to', 'the', 'bathroom'],
        ['john', 'went', 'to', 'the', 'hallway'],
      ],
      storyIds: [1, 2],
      query: ['where', 'is', 'mary'],
      answer: 'bathroom',
      supporting: [0],
    });
    const vocab = buildVocab([train, test]);
    const t = vectorize(train, vocab);
    expect(t.stories.shape).toEqual([1000, 50, t.sentenceLen]);
    expect(t.answers.data.every((id) => id > 0)).toBe(true);
  });

  it('reads all 20 tasks, both splits, 1000 questions each', async () => {
    for (let n = 1; n <= 20; n++) {
      for (const split of ['train', 'test'] as const) {
        const ex = await loadTask(n, { split });
        expect(ex, `task ${n} ${split}`).toHaveLength(1000);
        expect(ex.every((e) => e.story.length > 0 && e.supporting.every((k) => k < e.story.length))).toBe(true);
      }
    }
  });

  it('hard-codes the sha256 of every real file, as SHA256SUMS lists them', () => {
    const listed = Object.fromEntries(
      readFileSync(join(realDir, 'SHA256SUMS'), 'utf8')
        .trim()
        .split('\n')
        .map((line) => line.split(/\s+/).reverse()),
    );
    expect(babiSha256).toEqual(listed);
    const names = readdirSync(realDir).filter((f) => f.endsWith('.txt'));
    expect(names).toHaveLength(40);
    for (const f of names) expect(sha256(readFileSync(join(realDir, f))), f).toBe(babiSha256[f]);
  });

  it('is datasets.babi in the package', () => {
    expect(datasets.babi.loadTask).toBe(loadTask);
    expect(datasets.babi.taskName(2)).toBe('two-supporting-facts');
  });
});

describe('loadTask errors and fallbacks', () => {
  it('names the folder and ENGRAM_DATA when a task file is missing', async () => {
    const dir = join(scratch, 'empty');
    mkdirSync(join(dir, 'babi', 'en'), { recursive: true });
    await expect(loadTask(3, { split: 'test', dir })).rejects.toThrow(
      `${join(dir, 'babi', 'en')} has no qa3_*_test.txt; set ENGRAM_DATA`,
    );
  });

  it('rejects a file that is not the published one', async () => {
    const dir = join(scratch, 'altered');
    mkdirSync(join(dir, 'babi', 'en'), { recursive: true });
    writeFileSync(join(dir, 'babi', 'en', 'qa1_single-supporting-fact_train.txt'), '1 Mary moved.\n2 Where is Mary?\tx\t1\n');
    await expect(loadTask(1, { split: 'train', dir })).rejects.toThrow(/has sha256 [0-9a-f]{64}, expected c64ba9b1/);
  });

  it('reads the cache folder when the data folder does not exist', async () => {
    const cache = join(scratch, 'cache');
    mkdirSync(join(cache, 'babi', 'en'), { recursive: true });
    const name = 'qa2_two-supporting-facts_test.txt';
    writeFileSync(join(cache, 'babi', 'en', name), readFileSync(join(realDir, name)));
    const saved = process.env.ENGRAM_CACHE;
    process.env.ENGRAM_CACHE = cache;
    try {
      const ex = await loadTask(2, { split: 'test', dir: join(scratch, 'nowhere') });
      expect(ex).toHaveLength(1000);
    } finally {
      if (saved === undefined) delete process.env.ENGRAM_CACHE;
      else process.env.ENGRAM_CACHE = saved;
    }
  });

  it('rejects a bad task number or split', async () => {
    await expect(loadTask(0, { split: 'train' })).rejects.toThrow(RangeError);
    await expect(loadTask(1, { split: 'valid' as 'train' })).rejects.toThrow(/split must be 'train' or 'test', got "valid"/);
  });
});
