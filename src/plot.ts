/**
 * Pictures as standalone SVG, with no dependencies: {@link historySvg} draws what `fit` returned,
 * {@link attentionMap} draws attention weights as heatmaps. Every drawn number is also kept verbatim in a
 * `data-*` attribute, so a picture can be checked (or re-plotted) without reading pixels.
 * @module
 */
import { randomBytes } from 'node:crypto';
import { rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { checkTensor, describe, type Tensor } from './tensor.js';

/** A training history as `fit` returns it (the `History` type) or as read back from its JSON. */
export interface HistoryData {
  /** The epochs that ran, 0-based. */
  epoch: number[];
  /** Per key (`loss`, `val_loss`, `accuracy`, `lr`, ...), one value per epoch. */
  history: Record<string, number[]>;
}

/** Options of {@link historySvg}. */
export interface PlotOptions {
  /** Heading of the chart (default `training history`). */
  title?: string;
  /** Width of the picture in pixels (default 640, at least 200). */
  width?: number;
  /** Height of each panel in pixels (default 220, at least 120); panels are stacked. */
  height?: number;
  /** The keys to draw, in panel order (default all keys of the history). */
  keys?: string[];
  /** Log10 y axis for the loss-like panels: names containing `loss` or `perplexity`, and `lr` (default false). */
  logScale?: boolean;
}

const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' };
const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => ENTITIES[c]!);
/** Pixel coordinates: two decimals are plenty and keep files small. */
const px = (v: number): number => Math.round(v * 100) / 100;
/** Tick labels: six significant digits hide float noise such as 0.30000000000000004. */
const tickLabel = (v: number): string => String(Number(v.toPrecision(6)));
/** Rough width of one character at font-size 11, to leave room for labels. */
const CHAR_W = 6.5;
const TRAIN_COLOUR = '#1f77b4';
const VAL_COLOUR = '#ff7f0e';
const LOG_PANELS = /loss|perplexity|^lr$/;
const MIDDLE = { 'dominant-baseline': 'middle' };
const CENTRE = { 'text-anchor': 'middle' };
const END = { 'text-anchor': 'end' };

type Attrs = Record<string, string | number | undefined>;

/** An opening tag; attribute values are escaped, undefined ones left out. */
function open(tag: string, attrs: Attrs): string {
  let a = '';
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined) a += ` ${k}="${esc(String(v))}"`;
  return `<${tag}${a}>`;
}

/** A whole element; `body` is inserted as is (escape text with `esc`). */
function el(tag: string, attrs: Attrs, body?: string): string {
  return body === undefined ? `${open(tag, attrs).slice(0, -1)}/>` : `${open(tag, attrs)}${body}</${tag}>`;
}

/** The chart's heading, centred on `x`. */
const heading = (x: number, y: number, text: string): string =>
  el('text', { class: 'title', x: px(x), y, ...CENTRE, 'font-size': 14 }, esc(text));

function svgOpen(width: number, height: number): string {
  const attrs = { xmlns: 'http://www.w3.org/2000/svg', width: px(width), height: px(height) };
  return `${open('svg', { ...attrs, 'font-family': 'sans-serif', 'font-size': 11 })}\n` +
    el('rect', { width: '100%', height: '100%', fill: 'white' });
}

function fail(fn: string, message: string, Err: ErrorConstructor = TypeError): never {
  throw new Err(`${fn}: ${message}`);
}

function checkHistory(h: unknown): HistoryData {
  if (typeof h !== 'object' || h === null) {
    fail('historySvg', `history must be { epoch: number[], history: { [key]: number[] } }, got ${describe(h)}`);
  }
  const { epoch, history } = h as Record<string, unknown>;
  if (!Array.isArray(epoch) || !epoch.every((e) => typeof e === 'number' && Number.isFinite(e))) {
    fail('historySvg', `history.epoch must be an array of finite numbers, got ${JSON.stringify(epoch) ?? 'undefined'}`);
  }
  if (typeof history !== 'object' || history === null || Array.isArray(history)) {
    fail('historySvg', `history.history must be an object of number arrays, got ${describe(history)}`);
  }
  for (const [key, values] of Object.entries(history)) {
    if (!Array.isArray(values) || !values.every((v) => typeof v === 'number')) {
      fail('historySvg', `history.history.${key} must be an array of numbers, got ${describe(values)}`);
    }
    if (values.length !== epoch.length) {
      fail('historySvg', `history.history.${key} has ${values.length} values for ${epoch.length} epochs`, RangeError);
    }
  }
  return h as HistoryData;
}

function checkOptions(fn: string, options: unknown): void {
  if (typeof options !== 'object' || options === null) fail(fn, `options must be an object, got ${describe(options)}`);
  const { title } = options as { title?: unknown };
  if (title !== undefined && typeof title !== 'string') {
    fail(fn, `options.title must be a string, got ${describe(title)}`);
  }
}

function sizeOption(fn: string, what: string, v: unknown, fallback: number, min: number): number {
  if (v === undefined) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min) {
    fail(fn, `${what} must be a number >= ${min}, got ${String(v)}`, RangeError);
  }
  return v;
}

/** The step of 1, 2 or 5 times a power of ten nearest to `raw` (> 0), on a log scale. */
function niceStep(raw: number): number {
  const mag = 10 ** Math.floor(Math.log10(raw));
  const n = raw / mag;
  return (n < Math.SQRT2 ? 1 : n < Math.sqrt(10) ? 2 : n < Math.sqrt(50) ? 5 : 10) * mag;
}

/** Smallest and largest of `values` (without spreading them onto the stack); `[0, 1]` when empty. */
function extent(values: number[]): [number, number] {
  if (values.length === 0) return [0, 1];
  return [values.reduce((a, b) => Math.min(a, b)), values.reduce((a, b) => Math.max(a, b))];
}

/** A y axis covering `values` (already log10 when `log`), ending on ticks, with about five ticks. */
function yAxis(values: number[], log: boolean): { lo: number; hi: number; ticks: number[] } {
  let [lo, hi] = extent(values);
  if (lo === hi && log) [lo, hi] = [Math.floor(lo), Math.floor(lo) + 1];
  else if (lo === hi) [lo, hi] = [lo - (Math.abs(lo) / 10 || 1), hi + (Math.abs(hi) / 10 || 1)];
  // Log axes tick at whole decades only.
  const step = log ? Math.ceil((Math.ceil(hi) - Math.floor(lo)) / 5) : niceStep((hi - lo) / 5);
  lo = Math.floor(lo / step) * step;
  const n = Math.ceil((hi - lo) / step - 1e-9);
  return { lo, hi: lo + n * step, ticks: Array.from({ length: n + 1 }, (_, i) => lo + i * step) };
}

/** Runs of consecutive drawable values: a gap (NaN, infinite, or <= 0 on a log axis) breaks the line. */
function runs(values: number[], drawable: (v: number) => boolean): { start: number; values: number[] }[] {
  const out: { start: number; values: number[] }[] = [];
  values.forEach((v, i) => {
    if (!drawable(v)) return;
    const last = out[out.length - 1];
    if (last && last.start + last.values.length === i) last.values.push(v);
    else out.push({ start: i, values: [v] });
  });
  return out;
}

/**
 * Draws a training history as an SVG line chart. A key `k` and `val_k` share a panel (training solid,
 * validation dashed); every other name, `lr` included, gets its own; panels are stacked top to bottom.
 * The x axis shows epochs 1-based (`epoch[i] + 1`).
 *
 * Each unbroken run of a series is one `<polyline>` with `data-key` (the history key), `data-start` (index of
 * its first epoch) and `data-values` (its values, `String(v)` each, so they parse back to the same doubles).
 * Non-finite values, and values <= 0 on a log axis, are gaps: the line stops there and resumes after, so a
 * series with gaps is several polylines with the same `data-key`. A run of one value (a single epoch, say)
 * also gets a `<circle>`, since a one-point line is invisible.
 *
 * ```ts
 * const history = await model.fit(x, y, { epochs: 20, validationSplit: 0.1 });
 * await writeSvg('history.svg', historySvg(history, { logScale: true }));
 * ```
 */
export function historySvg(history: HistoryData, options: PlotOptions = {}): string {
  const { epoch, history: series } = checkHistory(history);
  checkOptions('historySvg', options);
  const { title = 'training history', keys = Object.keys(series), logScale = false } = options;
  const width = sizeOption('historySvg', 'options.width', options.width, 640, 200);
  const height = sizeOption('historySvg', 'options.height', options.height, 220, 120);
  if (typeof logScale !== 'boolean') {
    fail('historySvg', `options.logScale must be a boolean, got ${describe(logScale)}`);
  }
  if (!Array.isArray(keys) || !keys.every((k) => typeof k === 'string')) {
    fail('historySvg', `options.keys must be an array of strings, got ${describe(keys)}`);
  }
  const missing = keys.find((k) => !Object.hasOwn(series, k));
  if (missing !== undefined) {
    const has = Object.keys(series).join(', ') || 'no keys';
    fail('historySvg', `options.keys names "${missing}" but the history has ${has}`, RangeError);
  }
  if (epoch.length === 0 || keys.length === 0) fail('historySvg', 'nothing to plot (no epochs or no keys)', RangeError);

  const panels = new Map<string, string[]>();
  for (const k of keys) {
    const family = k.startsWith('val_') ? k.slice(4) : k;
    panels.set(family, [...(panels.get(family) ?? []), k]);
  }
  const isVal = (k: string): number => Number(k.startsWith('val_'));
  const header = 36;
  const [x0, x1, y0, y1] = [64, width - 16, 12, height - 40];
  const labels = epoch.map((e) => e + 1);
  let [xlo, xhi] = extent(labels);
  if (xlo === xhi) [xlo, xhi] = [xlo - 0.5, xhi + 0.5];
  const xStep = Math.max(1, niceStep((xhi - xlo) / 6));
  const xTicks: number[] = [];
  for (let t = Math.ceil(xlo / xStep) * xStep; t <= xhi; t += xStep) xTicks.push(t);
  const x = (label: number): number => px(x0 + ((label - xlo) / (xhi - xlo)) * (x1 - x0));

  const out = [
    svgOpen(width, header + panels.size * height),
    el('title', {}, esc(title)),
    heading(width / 2, 22, title),
  ];
  [...panels].forEach(([family, members], p) => {
    const log = logScale && LOG_PANELS.test(family);
    const drawable = (v: number): boolean => Number.isFinite(v) && (!log || v > 0);
    const tf = (v: number): number => (log ? Math.log10(v) : v);
    const axis = yAxis(members.flatMap((k) => series[k]!.filter(drawable).map(tf)), log);
    /** Pixel row of an axis value (the log10 of a value on a log axis). */
    const y = (t: number): number => px(y1 - ((t - axis.lo) / (axis.hi - axis.lo)) * (y1 - y0));
    out.push(open('g', { class: 'panel', 'data-panel': family, transform: `translate(0,${header + p * height})` }));
    for (const t of axis.ticks) {
      out.push(
        el('line', { x1: x0, x2: x1, y1: y(t), y2: y(t), stroke: '#e5e5e5' }),
        el('text', { class: 'y-tick', x: x0 - 6, y: y(t), ...END, ...MIDDLE }, tickLabel(log ? 10 ** t : t)),
      );
    }
    for (const t of xTicks) {
      out.push(
        el('line', { x1: x(t), x2: x(t), y1, y2: y1 + 4, stroke: '#333' }),
        el('text', { class: 'x-tick', x: x(t), y: y1 + 16, ...CENTRE }, tickLabel(t)),
      );
    }
    out.push(
      el('path', { d: `M${x0},${y0}V${y1}H${x1}`, fill: 'none', stroke: '#333' }),
      el('text', { class: 'x-label', x: px((x0 + x1) / 2), y: y1 + 32, ...CENTRE }, 'epoch (1-based)'),
      el('text', { class: 'y-label', transform: `translate(14,${px((y0 + y1) / 2)}) rotate(-90)`, ...CENTRE },
        esc(`${family}${log ? ' (log scale)' : ''}`)),
    );
    const sorted = [...members].sort((a, b) => isVal(a) - isVal(b));
    const legendW = 34 + Math.max(...sorted.map((k) => k.length)) * CHAR_W;
    const legendX = px(x1 - legendW);
    // The legend goes last, over the lines, on a white backdrop.
    const backdrop = { x: legendX - 6, y: y0 + 2, width: px(legendW), height: 15 * sorted.length + 2 };
    const legend = [el('rect', { ...backdrop, fill: 'white', 'fill-opacity': 0.85 })];
    sorted.forEach((k, i) => {
      const colour = isVal(k) ? VAL_COLOUR : TRAIN_COLOUR;
      const stroke = { stroke: colour, 'stroke-width': 1.5, 'stroke-dasharray': isVal(k) ? '6 4' : undefined };
      for (const run of runs(series[k]!, drawable)) {
        const pts = run.values.map((v, j) => [x(labels[run.start + j]!), y(tf(v))] as const);
        const data = { 'data-key': k, 'data-start': run.start, 'data-values': run.values.map(String).join(',') };
        out.push(el('polyline', { ...data, points: pts.map((pt) => pt.join(',')).join(' '), fill: 'none', ...stroke }));
        const [cx, cy] = pts[0]!;
        if (pts.length === 1) out.push(el('circle', { 'data-key': k, cx, cy, r: 3, fill: colour }));
      }
      const ly = y0 + 10 + i * 15;
      legend.push(
        el('line', { class: 'legend', x1: legendX, x2: legendX + 20, y1: ly, y2: ly, ...stroke }),
        el('text', { class: 'legend', x: legendX + 26, y: ly, ...MIDDLE }, esc(k)),
      );
    });
    out.push(...legend, '</g>');
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

/**
 * Writes `svg` to `path` atomically: to a temporary file in the same folder, then renamed over `path`, so a
 * reader never sees half a picture. The temporary file is removed if anything fails.
 */
export async function writeSvg(path: string, svg: string): Promise<void> {
  if (typeof path !== 'string' || path === '') {
    fail('writeSvg', `path must be a non-empty string, got ${JSON.stringify(path) ?? describe(path)}`);
  }
  if (typeof svg !== 'string') fail('writeSvg', `svg must be a string, got ${describe(svg)}`);
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    await writeFile(tmp, svg, 'utf8');
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/** Options of {@link attentionMap}. */
export interface AttentionMapOptions {
  /**
   * Labels both axes: columns are the keys, rows the last `rows` tokens (the queries, when there are fewer
   * queries than keys). For a memory network's `[hops, batch, memorySize]` they label the memory slots only.
   */
  tokens?: string[];
  /** Row labels, one per row; override `tokens` (memory networks: default `hop 1` ... `hop K`). */
  rowLabels?: string[];
  /** Column labels, one per column; override `tokens`. */
  colLabels?: string[];
  /** Which example of a batched tensor to draw (default 0). */
  batchIndex?: number;
  /** Heading above the heatmaps (default none). */
  title?: string;
  /** Side of one cell in pixels (default 24, at least 2). */
  cellSize?: number;
  /** Also write the SVG here, with {@link writeSvg}. */
  path?: string;
}

/** One heatmap: `rows * cols` values, row-major. */
interface Heatmap {
  title?: string;
  values: ArrayLike<number>;
}

function labelOption(what: string, v: unknown, n: number, axis: string): string[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) {
    fail('attentionMap', `${what} must be an array of strings, got ${describe(v)}`);
  }
  if (v.length !== n) fail('attentionMap', `${what} has ${v.length} labels for ${n} ${axis}`, RangeError);
  return v;
}

/** White at 0 to dark blue (#08306b) at `max`; grey marks a non-finite value. */
function cellColour(v: number, max: number): string {
  if (!Number.isFinite(v)) return '#bdbdbd';
  const t = Math.min(1, Math.max(0, v / max));
  const mix = (to: number): number => Math.round(255 + t * (to - 255));
  return `rgb(${mix(8)},${mix(48)},${mix(107)})`;
}

/**
 * Draws attention weights as heatmaps and resolves to the SVG text (also written to `options.path` if given).
 * Accepted shapes:
 * - `[rows, cols]`: one heatmap;
 * - `[batch, nHeads, Tq, Tk]`, a Transformer's attention probabilities: one heatmap per head of example
 *   `batchIndex`, side by side, titled `head 1` ... `head H`;
 * - `[hops, batch, memorySize]`, a memory network's attention over its memory slots: one heatmap of example
 *   `batchIndex` with a row per hop.
 *
 * Each cell is a `<rect>` with `data-row`, `data-col` (0-based) and `data-value` (`String(v)`) and a `<title>`
 * that shows its labels and value on hover. The darkest blue is the largest value of its heatmap (not 1), so
 * a diffuse head still shows its pattern; values <= 0 are white.
 *
 * ```ts
 * const svg = await attentionMap(probs, { tokens: ['the', 'cat', 'sat'], path: 'attention.svg' });
 * ```
 */
export async function attentionMap(weights: Tensor, options: AttentionMapOptions = {}): Promise<string> {
  const { data, shape } = checkTensor('attentionMap: weights', weights);
  if (!(data instanceof Float32Array || data instanceof Float64Array)) {
    fail('attentionMap', `weights must hold Float32Array or Float64Array data, got ${describe(data)}`);
  }
  checkOptions('attentionMap', options);
  const { batchIndex = 0, title, tokens, path } = options;
  const cell = sizeOption('attentionMap', 'options.cellSize', options.cellSize, 24, 2);
  const batch = shape.length === 2 ? 1 : shape.length === 3 ? shape[1]! : shape.length === 4 ? shape[0]! : -1;
  if (batch < 0) {
    const want = '[rows, cols], [hops, batch, memorySize] or [batch, nHeads, Tq, Tk]';
    fail('attentionMap', `weights must be ${want}, got shape [${shape.join(', ')}]`, RangeError);
  }
  if (!Number.isInteger(batchIndex) || batchIndex < 0 || batchIndex >= batch) {
    const got = String(batchIndex);
    fail('attentionMap', `options.batchIndex must be an integer in [0, ${batch}), got ${got}`, RangeError);
  }

  let maps: Heatmap[];
  let [rows, cols] = [shape[0]!, shape[1]!];
  let defaultRows: string[] | undefined;
  if (shape.length === 4) {
    const [, heads, tq, tk] = shape as [number, number, number, number];
    [rows, cols] = [tq, tk];
    maps = Array.from({ length: heads }, (_, h) => {
      const at = (batchIndex * heads + h) * tq * tk;
      return { title: `head ${h + 1}`, values: data.subarray(at, at + tq * tk) };
    });
  } else if (shape.length === 3) {
    const [hops, , size] = shape as [number, number, number];
    [rows, cols] = [hops, size];
    // Row k of the picture is weights[k, batchIndex, :].
    const at = (i: number): number => data[(Math.floor(i / size) * batch + batchIndex) * size + (i % size)]!;
    maps = [{ values: Float64Array.from({ length: hops * size }, (_, i) => at(i)) }];
    defaultRows = Array.from({ length: hops }, (_, k) => `hop ${k + 1}`);
  } else {
    maps = [{ values: data }];
  }
  const tokenLabels = labelOption('options.tokens', tokens, cols, 'columns');
  if (tokenLabels && !defaultRows && !options.rowLabels && rows > cols) {
    const why = `options.tokens cannot label ${rows} rows with ${cols} tokens; pass options.rowLabels`;
    fail('attentionMap', why, RangeError);
  }
  const count = (n: number): string[] => Array.from({ length: n }, (_, i) => String(i));
  const colLabels = labelOption('options.colLabels', options.colLabels, cols, 'columns') ?? tokenLabels ?? count(cols);
  const rowLabels = labelOption('options.rowLabels', options.rowLabels, rows, 'rows') ?? defaultRows ??
    tokenLabels?.slice(cols - rows) ?? count(rows);

  const longest = (ls: string[]): number => Math.max(1, ...ls.map((l) => l.length)) * CHAR_W;
  const titleH = title === undefined ? 0 : 28;
  const left = 14 + longest(rowLabels);
  const top = titleH + (maps.length > 1 ? 20 : 0) + 12 + longest(colLabels);
  const panelW = left + cols * cell + 16;
  // Wide enough for the title too (at font-size 14, about 8 px a character).
  const width = Math.max(maps.length * panelW, title === undefined ? 0 : title.length * 8 + 24);
  const out = [svgOpen(width, top + rows * cell + 8)];
  if (title !== undefined) out.push(heading(width / 2, 20, title));
  maps.forEach((map, p) => {
    let max = 0;
    for (let i = 0; i < map.values.length; i++) max = Math.max(max, map.values[i]!);
    if (!(max > 0 && Number.isFinite(max))) max = 1;
    out.push(open('g', { class: 'heatmap', 'data-title': map.title, transform: `translate(${px(p * panelW)},0)` }));
    if (map.title !== undefined) {
      const at = { class: 'head-title', x: px(left + (cols * cell) / 2), y: titleH + 14, ...CENTRE };
      out.push(el('text', at, esc(map.title)));
    }
    colLabels.forEach((l, j) => {
      const transform = `translate(${px(left + (j + 0.5) * cell)},${px(top - 6)}) rotate(-90)`;
      out.push(el('text', { class: 'col-label', transform, ...MIDDLE }, esc(l)));
    });
    rowLabels.forEach((l, i) => {
      const at = { class: 'row-label', x: px(left - 6), y: px(top + (i + 0.5) * cell), ...END, ...MIDDLE };
      out.push(el('text', at, esc(l)));
      for (let j = 0; j < cols; j++) {
        const v = map.values[i * cols + j]!;
        const box = { x: px(left + j * cell), y: px(top + i * cell), width: px(cell), height: px(cell) };
        const data = { 'data-row': i, 'data-col': j, 'data-value': String(v) };
        const hover = el('title', {}, esc(`${l} → ${colLabels[j]}: ${v}`));
        out.push(el('rect', { ...box, fill: cellColour(v, max), ...data }, hover));
      }
    });
    out.push('</g>');
  });
  out.push('</svg>');
  const svg = out.join('\n') + '\n';
  if (path !== undefined) await writeSvg(path, svg);
  return svg;
}
