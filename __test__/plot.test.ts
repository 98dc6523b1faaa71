import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { describe, expect, it } from 'vitest';
import { attentionMap, historySvg, writeSvg, type HistoryData } from '../src/plot.js';
import { tensor } from '../src/tensor.js';

type Node = Record<string, unknown>;
// Every element as an array, so one helper finds them all; text stays text (no number parsing).
const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '',
  parseTagValue: false,
  isArray: (_name, _path, _leaf, isAttribute) => !isAttribute,
});

function parse(svg: string): Node {
  expect(XMLValidator.validate(svg)).toBe(true);
  return parser.parse(svg) as Node;
}

/** All elements named `tag` anywhere below `node`, in document order within each parent. */
function findAll(node: unknown, tag: string): Node[] {
  const out: Node[] = [];
  const walk = (n: unknown): void => {
    if (Array.isArray(n)) return n.forEach(walk);
    if (typeof n !== 'object' || n === null) return;
    for (const [k, v] of Object.entries(n)) {
      if (k === tag) out.push(...(v as unknown[]).map((e) => (typeof e === 'string' ? { '#text': e } : (e as Node))));
      walk(v);
    }
  };
  walk(node);
  return out;
}

const text = (n: Node): string => String(n['#text'] ?? '');
const byClass = (root: unknown, cls: string): string[] =>
  findAll(root, 'text').filter((t) => t.class === cls).map(text);
const values = (p: Node): number[] => String(p['data-values']).split(',').map(Number);
const yOf = (p: Node): number[] => String(p.points).split(' ').map((xy) => Number(xy.split(',')[1]));

const awkward: HistoryData = {
  epoch: [0, 1, 2, 3],
  history: {
    loss: [0.1 + 0.2, 1 / 3, 1e-8, 123456.789],
    val_loss: [Math.PI, Math.E, 2 ** -30, 0.5],
    accuracy: [0.25, 0.5, 0.75, 1],
    val_accuracy: [0.2, 0.4, 0.6, 0.8],
    lr: [1e-3, 1e-3, 5e-4, 2.5e-4],
  },
};

describe('historySvg', () => {
  it('carries every value of every key exactly', () => {
    const root = parse(historySvg(awkward));
    const lines = findAll(root, 'polyline');
    expect(lines).toHaveLength(5);
    for (const [key, series] of Object.entries(awkward.history)) {
      const mine = lines.filter((l) => l['data-key'] === key);
      expect(mine).toHaveLength(1);
      expect(mine[0]!['data-start']).toBe('0');
      expect(values(mine[0]!)).toEqual(series);
      expect(String(mine[0]!.points).split(' ')).toHaveLength(series.length);
    }
  });

  it('pairs k with val_k in one panel, validation dashed, lr on its own', () => {
    const root = parse(historySvg(awkward));
    const panels = findAll(root, 'g').filter((g) => g.class === 'panel');
    expect(panels.map((p) => p['data-panel'])).toEqual(['loss', 'accuracy', 'lr']);
    const keysIn = (p: Node): unknown[] => findAll(p, 'polyline').map((l) => l['data-key']);
    expect(keysIn(panels[0]!)).toEqual(['loss', 'val_loss']);
    expect(keysIn(panels[1]!)).toEqual(['accuracy', 'val_accuracy']);
    expect(keysIn(panels[2]!)).toEqual(['lr']);
    for (const l of findAll(root, 'polyline')) {
      expect(l['stroke-dasharray'] !== undefined).toBe(String(l['data-key']).startsWith('val_'));
    }
    expect(byClass(panels[0], 'legend')).toEqual(['loss', 'val_loss']);
    expect(byClass(root, 'y-label')).toEqual(['loss', 'accuracy', 'lr']);
    expect(byClass(root, 'title')).toEqual(['training history']);
  });

  it('breaks the line at non-finite values and marks an isolated point', () => {
    const svg = historySvg({ epoch: [0, 1, 2, 3, 4], history: { loss: [1, NaN, 0.5, 0.4, Infinity] } });
    const root = parse(svg);
    const lines = findAll(root, 'polyline');
    expect(lines.map((l) => [l['data-start'], values(l)])).toEqual([
      ['0', [1]],
      ['2', [0.5, 0.4]],
    ]);
    expect(findAll(root, 'circle').map((c) => c['data-key'])).toEqual(['loss']);
    expect(svg).not.toMatch(/NaN|Infinity/);
  });

  it('draws a single epoch as a marker, labelled 1-based', () => {
    const root = parse(historySvg({ epoch: [0], history: { loss: [0.7], val_loss: [0.9] } }));
    expect(findAll(root, 'polyline').map(values)).toEqual([[0.7], [0.9]]);
    expect(findAll(root, 'circle')).toHaveLength(2);
    expect(byClass(root, 'x-tick')).toEqual(['1']);
    expect(byClass(root, 'x-label')).toEqual(['epoch (1-based)']);
  });

  it('labels the x axis with epoch + 1 and the y axis with about five nice ticks covering the data', () => {
    const loss = [0.87, 0.61, 0.42, 0.3, 0.24, 0.2, 0.17, 0.15, 0.14, 0.13];
    const root = parse(historySvg({ epoch: loss.map((_, i) => i), history: { loss } }));
    expect(byClass(root, 'x-tick')).toEqual(['2', '4', '6', '8', '10']);
    const yt = byClass(root, 'y-tick').map(Number);
    expect(yt.length).toBeGreaterThanOrEqual(4);
    expect(yt.length).toBeLessThanOrEqual(7);
    expect(Math.min(...yt)).toBeLessThanOrEqual(0.13);
    expect(Math.max(...yt)).toBeGreaterThanOrEqual(0.87);
    const steps = yt.slice(1).map((t, i) => t - yt[i]!);
    for (const s of steps) expect(s).toBeCloseTo(steps[0]!, 9);
    expect([0.1, 0.2, 0.25, 0.5]).toContain(Number(Math.abs(steps[0]!).toPrecision(6)));
    // Smaller loss is drawn lower (larger y in SVG coordinates).
    const ys = yOf(findAll(root, 'polyline')[0]!);
    for (let i = 1; i < ys.length; i++) expect(ys[i]!).toBeGreaterThan(ys[i - 1]!);
  });

  it('uses a log axis for loss-like panels only with logScale, leaving out values <= 0', () => {
    const h = { epoch: [0, 1, 2, 3], history: { loss: [100, 1, 0.01, 0], accuracy: [0, 0.5, 0.9, 1] } };
    const root = parse(historySvg(h, { logScale: true }));
    const [lossPanel, accPanel] = findAll(root, 'g').filter((g) => g.class === 'panel');
    expect(byClass(lossPanel, 'y-tick')).toEqual(['0.01', '0.1', '1', '10', '100']);
    expect(byClass(root, 'y-label')).toEqual(['loss (log scale)', 'accuracy']);
    const [loss, acc] = findAll(root, 'polyline');
    expect(values(loss!)).toEqual([100, 1, 0.01]);
    expect(values(acc!)).toEqual([0, 0.5, 0.9, 1]);
    const [a, b, c] = yOf(loss!);
    expect(b! - a!).toBeCloseTo(c! - b!, 1); // 1 lies halfway between 100 and 0.01 in log10
    expect(byClass(accPanel, 'y-tick')).not.toContain('0.01');
    const linear = yOf(findAll(parse(historySvg(h)), 'polyline')[0]!);
    expect(linear[1]! - linear[0]!).toBeGreaterThan(10 * (linear[2]! - linear[1]!));
  });

  it('draws only the keys asked for, with a title and sizes as given', () => {
    const root = parse(historySvg(awkward, { keys: ['val_loss', 'lr'], title: 'run 7', width: 800, height: 150 }));
    expect(findAll(root, 'polyline').map((l) => l['data-key'])).toEqual(['val_loss', 'lr']);
    const svg = findAll(root, 'svg')[0]!;
    expect([svg.width, svg.height]).toEqual(['800', String(36 + 2 * 150)]);
    expect(byClass(root, 'title')).toEqual(['run 7']);
  });

  it('escapes the title and keys', () => {
    const nasty = `<b>&"'`;
    const svg = historySvg({ epoch: [0, 1], history: { [nasty]: [1, 2] } }, { title: nasty });
    const root = parse(svg);
    expect(byClass(root, 'title')).toEqual([nasty]);
    expect(findAll(root, 'polyline')[0]!['data-key']).toBe(nasty);
    expect(svg).not.toContain('<b>');
  });

  it('rejects what is not a history', () => {
    const bad = (h: unknown, o?: unknown): (() => string) => () => historySvg(h as HistoryData, o as object);
    expect(bad(null)).toThrow(TypeError);
    expect(bad({ history: { loss: [1] } })).toThrow(/historySvg: history.epoch must be an array/);
    expect(bad({ epoch: ['0'], history: { loss: [1] } })).toThrow(TypeError);
    expect(bad({ epoch: [0], history: [[1]] })).toThrow(/history.history must be an object/);
    expect(bad({ epoch: [0], history: { loss: ['1'] } })).toThrow(/history.history.loss must be an array of numbers/);
    expect(bad({ epoch: [0], history: { loss: [1, 2] } })).toThrow(RangeError);
    expect(bad({ epoch: [0], history: { loss: [1, 2] } })).toThrow(/loss has 2 values for 1 epochs/);
    expect(bad({ epoch: [], history: { loss: [] } })).toThrow(/nothing to plot/);
    expect(bad({ epoch: [], history: {} })).toThrow(RangeError);
    expect(bad(awkward, { keys: ['perplexity'] })).toThrow(/options.keys names "perplexity"/);
    expect(bad(awkward, { keys: [] })).toThrow(/nothing to plot/);
    expect(bad(awkward, { width: 10 })).toThrow(RangeError);
    expect(bad(awkward, { height: NaN })).toThrow(/options.height/);
    expect(bad(awkward, { logScale: 'yes' })).toThrow(TypeError);
  });
});

describe('writeSvg', () => {
  it('writes the file, replaces an old one and leaves no temporary file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'engram-plot-'));
    const path = join(dir, 'out.svg');
    await writeFile(path, 'old');
    await writeSvg(path, '<svg/>\n');
    expect(await readFile(path, 'utf8')).toBe('<svg/>\n');
    expect(await readdir(dir)).toEqual(['out.svg']);
  });

  it('removes its temporary file when the rename fails', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'engram-plot-'));
    await mkdir(join(dir, 'taken'));
    await expect(writeSvg(join(dir, 'taken'), '<svg/>')).rejects.toThrow();
    expect(await readdir(dir)).toEqual(['taken']);
    await expect(writeSvg(join(dir, 'missing', 'x.svg'), '<svg/>')).rejects.toThrow(/ENOENT/);
    await expect(writeSvg('', '<svg/>')).rejects.toThrow(TypeError);
  });
});

const cellsOf = (root: unknown): Node[] => findAll(root, 'rect').filter((r) => r['data-value'] !== undefined);

describe('attentionMap', () => {
  it('draws a 2D matrix cell by cell with its exact values', async () => {
    const w = tensor([0.1, 0.7, 0.2, 0, 0.25, 0.75], [2, 3]);
    const svg = await attentionMap(w);
    const cells = cellsOf(parse(svg));
    expect(cells).toHaveLength(6);
    cells.forEach((c, k) => {
      expect([c['data-row'], c['data-col']]).toEqual([String(Math.floor(k / 3)), String(k % 3)]);
      expect(c['data-value']).toBe(String(w.data[k]));
      expect(Number(c['data-value'])).toBe(w.data[k]);
      expect(text(findAll(c, 'title')[0]!)).toContain(String(w.data[k]));
    });
    expect(cells[5]!.fill).toBe('rgb(8,48,107)'); // the largest value is the darkest
    expect(cells[3]!.fill).toBe('rgb(255,255,255)');
    expect(cells[0]!.fill).not.toBe(cells[1]!.fill);
  });

  it('draws one heatmap per head of the chosen example of a 4D tensor', async () => {
    const [b, h, tq, tk] = [2, 3, 2, 4];
    const data = Float32Array.from({ length: b * h * tq * tk }, (_, i) => (i % 7) / 7 + i / 1000);
    const tokens = ['w', 'x', 'y', 'z'];
    const root = parse(await attentionMap({ data, shape: [b, h, tq, tk] }, { batchIndex: 1, tokens }));
    const maps = findAll(root, 'g').filter((g) => g.class === 'heatmap');
    expect(maps.map((m) => m['data-title'])).toEqual(['head 1', 'head 2', 'head 3']);
    expect(byClass(root, 'head-title')).toEqual(['head 1', 'head 2', 'head 3']);
    maps.forEach((m, head) => {
      const start = (1 * h + head) * tq * tk;
      expect(cellsOf(m).map((c) => Number(c['data-value']))).toEqual([...data.subarray(start, start + tq * tk)]);
      expect(byClass(m, 'col-label')).toEqual(tokens);
      expect(byClass(m, 'row-label')).toEqual(['y', 'z']); // the last Tq tokens
    });
  });

  it('draws a memory network hop by hop over the memory slots', async () => {
    const [hops, batch, size] = [3, 2, 5];
    const data = Float64Array.from({ length: hops * batch * size }, (_, i) => i / 29);
    const root = parse(await attentionMap({ data, shape: [hops, batch, size] }, { batchIndex: 1 }));
    const cells = cellsOf(root);
    expect(cells).toHaveLength(hops * size);
    for (const c of cells) {
      const [k, j] = [Number(c['data-row']), Number(c['data-col'])];
      expect(Number(c['data-value'])).toBe(data[(k * batch + 1) * size + j]);
    }
    expect(byClass(root, 'row-label')).toEqual(['hop 1', 'hop 2', 'hop 3']);
    expect(byClass(root, 'col-label')).toEqual(['0', '1', '2', '3', '4']);
  });

  it('escapes labels and titles and lets rowLabels/colLabels override tokens', async () => {
    const nasty = `<b>&"`;
    const w = tensor([0.5, 0.5, 0.1, 0.9], [2, 2]);
    const svg = await attentionMap(w, { tokens: [nasty, 'it'], colLabels: ['k0', `'k1'`], title: nasty });
    const root = parse(svg);
    expect(byClass(root, 'row-label')).toEqual([nasty, 'it']);
    expect(byClass(root, 'col-label')).toEqual(['k0', `'k1'`]);
    expect(byClass(root, 'title')).toEqual([nasty]);
    expect(svg).toContain('&lt;b&gt;&amp;&quot;');
    expect(svg).not.toContain('<b>');
    const root2 = parse(await attentionMap(w, { tokens: ['a', 'b'], rowLabels: ['q0', 'q1'] }));
    expect(byClass(root2, 'row-label')).toEqual(['q0', 'q1']);
    expect(byClass(root2, 'col-label')).toEqual(['a', 'b']);
  });

  it('writes the picture when given a path', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'engram-attn-'));
    const path = join(dir, 'a.svg');
    const svg = await attentionMap(tensor([1, 0, 0, 1], [2, 2]), { path, cellSize: 10 });
    expect(await readFile(path, 'utf8')).toBe(svg);
    expect(cellsOf(parse(svg))[0]!.width).toBe('10');
    expect(await readdir(dir)).toEqual(['a.svg']);
  });

  it('rejects wrong tensors, labels and batch indices', async () => {
    const w4 = tensor(new Float32Array(2 * 1 * 2 * 3), [2, 1, 2, 3]);
    const bad = (w: unknown, o?: object): Promise<string> => attentionMap(w as never, o);
    await expect(bad([[0.5]])).rejects.toThrow(TypeError);
    await expect(bad({ data: [0.5, 0.5], shape: [1, 2] })).rejects.toThrow(/attentionMap: weights.data must be/);
    await expect(bad(tensor(Int32Array.from([1, 0]), [1, 2]))).rejects.toThrow(/Float32Array or Float64Array/);
    await expect(bad({ data: new Float32Array(5), shape: [2, 3] })).rejects.toThrow(RangeError);
    await expect(bad(tensor([1, 2], [2]))).rejects.toThrow(/got shape \[2\]/);
    await expect(bad(tensor(new Float32Array(2), [1, 1, 1, 1, 2]))).rejects.toThrow(RangeError);
    await expect(bad(w4, { batchIndex: 2 })).rejects.toThrow(/batchIndex must be an integer in \[0, 2\)/);
    await expect(bad(w4, { batchIndex: -1 })).rejects.toThrow(RangeError);
    await expect(bad(w4, { batchIndex: 0.5 })).rejects.toThrow(RangeError);
    await expect(bad(w4, { tokens: ['a', 'b'] })).rejects.toThrow(/options.tokens has 2 labels for 3 columns/);
    await expect(bad(w4, { rowLabels: ['a'] })).rejects.toThrow(/options.rowLabels has 1 labels for 2 rows/);
    await expect(bad(w4, { colLabels: [1, 2, 3] })).rejects.toThrow(TypeError);
    const tall = tensor(new Float32Array(6), [3, 2]);
    await expect(bad(tall, { tokens: ['a', 'b'] })).rejects.toThrow(/pass options.rowLabels/);
    await expect(bad(tall, { tokens: ['a', 'b'], rowLabels: ['p', 'q', 'r'] })).resolves.toContain('>r</text>');
    await expect(bad(w4, { cellSize: 0 })).rejects.toThrow(RangeError);
    await expect(bad(w4, { batchIndex: 1 })).resolves.toContain('<svg');
  });
});

const root = fileURLToPath(new URL('..', import.meta.url));
interface Run {
  status: number;
  stdout: string;
  stderr: string;
}

/** Runs `npx tsx src/cli.ts ...args` from the repository root. */
function cli(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile('npx', ['tsx', 'src/cli.ts', ...args], { cwd: root, encoding: 'utf8', shell: process.platform === 'win32' }, (error, stdout, stderr) => {
      // npm may warn about its own configuration on stderr; keep only the lines the CLI wrote.
      const own = stderr.split('\n').filter((l) => !l.startsWith('npm warn')).join('\n');
      resolve({ status: error ? Number(error.code) : 0, stdout, stderr: own });
    });
  });
}

describe('engram plot (command line)', () => {
  it('draws a history file and reports what it wrote', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'engram-cli-'));
    const history = { epoch: [0, 1, 2], history: { loss: [1.5, 0.75, NaN], val_loss: [1.75, 1.125, 1] } };
    const [input, output] = [join(dir, 'h.json'), join(dir, 'out.svg')];
    await writeFile(input, JSON.stringify(history)); // NaN becomes null
    const r = await cli(['plot', input, '-o', output, '--title', 'my run', '--log']);
    expect(r.stderr.trim()).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(`wrote ${output} (3 epochs, keys: loss, val_loss)\n`);
    expect(await readdir(dir)).toEqual(['h.json', 'out.svg']);
    const parsed = parse(await readFile(output, 'utf8'));
    expect(findAll(parsed, 'polyline').map((l) => [l['data-key'], values(l)])).toEqual([
      ['loss', [1.5, 0.75]],
      ['val_loss', [1.75, 1.125, 1]],
    ]);
    expect(byClass(parsed, 'title')).toEqual(['my run']);
    expect(byClass(parsed, 'y-label')).toEqual(['loss (log scale)']);
  });

  it('explains bad input in one line and exits 1, usage errors with 2', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'engram-cli-'));
    await writeFile(join(dir, 'bad.json'), '{"epoch": [0, 1], ');
    await writeFile(join(dir, 'odd.json'), '{"epoch": [0, 1], "history": {"loss": [1]}}');
    await writeFile(join(dir, 'good.json'), JSON.stringify({ epoch: [0], history: { loss: [1] } }));
    const [missing, bad, odd, good] = ['missing', 'bad', 'odd', 'good'].map((f) => join(dir, `${f}.json`)) as [
      string, string, string, string,
    ];
    const out = join(dir, 'x.svg');
    const nowhere = join(dir, 'no', 'x.svg');
    const failures = [
      [missing, out, `engram plot: cannot read ${missing} (ENOENT)\n`],
      [bad, out, /^engram plot: \S+bad\.json is not valid JSON \(.+\)\n$/],
      [odd, out, `engram plot: ${odd} is not a training history: history.history.loss has 1 values for 2 epochs\n`],
      [good, nowhere, `engram plot: cannot write ${nowhere} (ENOENT)\n`],
    ] as const;
    const usage = [
      ['draw', odd, '-o', out],
      ['plot', odd],
      [],
      ['plot', odd, '-o', out, '--bogus'],
      ['plot', odd, good, '-o', out],
    ];
    const [failed, misused, help] = await Promise.all([
      Promise.all(failures.map(([file, to]) => cli(['plot', file, '-o', to]))),
      Promise.all(usage.map(cli)),
      cli(['--help']),
    ]);
    failed.forEach((r, i) => {
      expect(r.status).toBe(1);
      const expected = failures[i]![2];
      if (typeof expected === 'string') expect(r.stderr).toBe(expected);
      else expect(r.stderr).toMatch(expected);
      expect(r.stdout).toBe('');
    });
    expect((await readdir(dir)).sort()).toEqual(['bad.json', 'good.json', 'odd.json']);
    for (const r of misused) {
      expect(r.status).toBe(2);
      expect(r.stderr).toContain('usage: engram plot <history.json> -o <out.svg>');
      expect(r.stdout).toBe('');
    }
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/^usage: engram plot/);
  });
});
