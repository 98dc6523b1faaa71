import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { XMLValidator } from 'fast-xml-parser';
import { describe, expect, it } from 'vitest';

describe('reference docs and the engram command', () => {
  it('typedoc documents every public export, with warnings as errors (npm run docs)', () => {
    const r = spawnSync('npx', ['typedoc', '--emit', 'none', '--treatWarningsAsErrors'], { encoding: 'utf8', timeout: 120_000, shell: process.platform === 'win32' });
    const out = `${r.stdout}${r.stderr}`;
    expect(r.status, out).toBe(0);
    expect(out).not.toMatch(/does not have any documentation/);
    const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.docs).toMatch(/typedoc .*--treatWarningsAsErrors/);
  }, 120_000);

  it('the package exposes `engram plot` as its bin, built into dist', () => {
    const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { bin: Record<string, string> };
    expect(pkg.bin.engram).toBe('./dist/cli.js');
    expect(existsSync('dist/cli.js'), 'npm run build:ts builds dist/cli.js').toBe(true);
    expect(readFileSync('dist/cli.js', 'utf8').startsWith('#!/usr/bin/env node')).toBe(true);
    const dir = mkdtempSync(join(tmpdir(), 'engram-bin-'));
    writeFileSync(join(dir, 'h.json'), JSON.stringify({ epoch: [0, 1, 2], history: { loss: [2, 1.5, 1.25], val_loss: [2.1, 1.7, 1.6] } }));
    const r = spawnSync(process.execPath, ['dist/cli.js', 'plot', join(dir, 'h.json'), '-o', join(dir, 'h.svg')], { encoding: 'utf8' });
    expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
    const svg = readFileSync(join(dir, 'h.svg'), 'utf8');
    expect(XMLValidator.validate(svg)).toBe(true);
    expect(svg).toContain('data-values="2.1,1.7,1.6"');
  });
});
