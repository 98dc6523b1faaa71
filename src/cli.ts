#!/usr/bin/env node
/**
 * The `engram` command line: `engram plot history.json -o history.svg` draws a saved training history.
 * @module
 */
import { readFile } from 'node:fs/promises';
import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { historySvg, writeSvg, type HistoryData } from './plot.js';

const USAGE = `usage: engram plot <history.json> -o <out.svg> [--title T] [--log]

  plot   draw a training history (JSON.stringify of what fit returned) as an SVG line chart
         -o, --output <file>  where to write the SVG (required)
         --title <text>       heading of the chart
         --log                log10 y axis for loss, perplexity and lr panels
  -h, --help                  show this help
`;

/** JSON has no NaN: `JSON.stringify` writes a diverged loss as null, which is read back as a gap (NaN). */
function nullsToNaN(json: unknown): unknown {
  if (typeof json !== 'object' || json === null || !('history' in json)) return json;
  const { history } = json as { history: unknown };
  if (typeof history !== 'object' || history === null || Array.isArray(history)) return json;
  const fix = (vs: unknown): unknown => (Array.isArray(vs) ? vs.map((v: unknown) => (v === null ? NaN : v)) : vs);
  return { ...json, history: Object.fromEntries(Object.entries(history).map(([k, vs]) => [k, fix(vs)])) };
}

/** A system error's code (ENOENT, EACCES...), else the error's message. */
function reason(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? (e instanceof Error ? e.message : String(e));
}

/** Runs `fn`, replacing any error it throws by one whose message is `describe(error)`. */
async function attempt<T>(fn: () => T | Promise<T>, describe: (e: unknown) => string): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw new Error(describe(e));
  }
}

/**
 * Runs the command line with `argv` (the arguments after the program name) and resolves to the exit code:
 * 0 on success, 1 when the input cannot be read or drawn, 2 for a usage error.
 */
export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        output: { type: 'string', short: 'o' },
        title: { type: 'string' },
        log: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (e) {
    process.stderr.write(`engram: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const [command, file, ...extra] = positionals;
  const why =
    command === undefined ? 'no command'
    : command !== 'plot' ? `unknown command "${command}"`
    : file === undefined ? 'no history file'
    : values.output === undefined ? 'no -o <out.svg>'
    : extra.length > 0 ? `unexpected ${extra.join(' ')}`
    : undefined;
  const output = values.output;
  if (why !== undefined || file === undefined || output === undefined) {
    process.stderr.write(`engram: ${why}\n${USAGE}`);
    return 2;
  }
  try {
    const text = await attempt(() => readFile(file, 'utf8'), (e) => `cannot read ${file} (${reason(e)})`);
    const json = await attempt(() => JSON.parse(text) as unknown, (e) => `${file} is not valid JSON (${reason(e)})`);
    const history = nullsToNaN(json) as HistoryData;
    const svg = await attempt(
      () => historySvg(history, { title: values.title, logScale: values.log ?? false }),
      (e) => `${file} is not a training history: ${reason(e).replace(/^historySvg: /, '')}`,
    );
    await attempt(() => writeSvg(output, svg), (e) => `cannot write ${output} (${reason(e)})`);
    const keys = Object.keys(history.history);
    process.stdout.write(`wrote ${output} (${history.epoch.length} epochs, keys: ${keys.join(', ')})\n`);
    return 0;
  } catch (e) {
    process.stderr.write(`engram plot: ${(e as Error).message.replace(/\s*\n\s*/g, ' ')}\n`);
    return 1;
  }
}

/** True when this file is the program being run; npm's bin links are symlinks, hence realpath. */
function isEntryPoint(): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return import.meta.url === pathToFileURL(realpathSync(script)).href;
  } catch {
    return false;
  }
}

if (isEntryPoint()) process.exitCode = await main(process.argv.slice(2));
