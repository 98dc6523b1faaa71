import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

function runExample(file: string, args: string[]) {
  const r = spawnSync('npx', ['tsx', file, ...args], { encoding: 'utf8', env: process.env, timeout: 120_000, shell: process.platform === 'win32' });
  return { code: r.status, out: `${r.stdout}${r.stderr}`, stdout: r.stdout };
}

describe('examples', () => {
  it('resume: loading an epoch checkpoint and fitting the rest equals the uninterrupted run, bit for bit', () => {
    const out = mkdtempSync(join(tmpdir(), 'engram-resume-'));
    const { code, out: text } = runExample('examples/resume.ts', ['--epochs', '3', '--resume-at', '1', '--windows', '256', '--hidden', '32', '--out', out, '--verbose', '2']);
    expect(code, text).toBe(0);
    expect(text.match(/^epoch \d\/3 - 8 steps .* val_perplexity [\d.]+ - lr /gm), text).toHaveLength(5);
    expect(text).toMatch(/steps: uninterrupted 24, resumed 24/);
    expect(text).toMatch(/weights: [\d,]+ values, 0 differ -> IDENTICAL/);
    const history = JSON.parse(readFileSync(join(out, 'history.json'), 'utf8')) as { epoch: number[]; history: Record<string, number[]> };
    expect(history.epoch).toEqual([0, 1, 2]);
    const svg = readFileSync(join(out, 'history.svg'), 'utf8');
    expect(svg).toContain(`data-values="${history.history.val_loss!.join(',')}"`);
  });

  it('device-check trains the same models on the chosen device and the CPU and compares them', () => {
    const { code, out } = runExample('examples/device-check.ts', ['--steps', '2']);
    expect(code, out).toBe(0);
    expect(out).toMatch(/^lstm: on cpu vs cpu, 2 steps: .* max loss diff 0\.00e\+0, max logit diff 0\.00e\+0/m);
    expect(out).toMatch(/^transformer: on cpu vs cpu, 2 steps: /m);
    expect(out).toMatch(/^AGREE \(worst difference 0\.00e\+0, both on the CPU\)/m);
  });

  it('adding-problem beats the predict-the-mean baseline in a short run', () => {
    const { code, out } = runExample('examples/adding-problem.ts', ['--steps', '10', '--train', '2000', '--test', '300', '--epochs', '8', '--hidden', '16']);
    expect(code, out).toBe(0);
    const m = /test MSE ([\d.]+) \(mean baseline ([\d.]+)\)/.exec(out);
    expect(m, out).not.toBeNull();
    const [mse, baseline] = [Number(m![1]), Number(m![2])];
    expect(baseline).toBeGreaterThan(0.1);
    expect(mse).toBeLessThan(baseline / 3);
  });

  it('the demo trains a memory network on bAbI task 1 and shows its attention', () => {
    const svgPath = join(mkdtempSync(join(tmpdir(), 'engram-babi-')), 'attention.svg');
    const { code, out } = runExample('examples/babi-demo.ts', ['--epochs', '40', '--questions', '2', '--svg', svgPath]);
    expect(code, out).toBe(0);
    // The heatmap carries one cell per hop and sentence, labelled with the sentences.
    const svg = readFileSync(svgPath, 'utf8');
    expect(svg.match(/<rect [^>]*data-row="2"/g)?.length ?? 0).toBeGreaterThan(1);
    expect(svg).toContain('>hop 3<');
    expect(svg).toMatch(/where is \w+\? \(answer: \w+\)/);
    const acc = /test accuracy ([\d.]+)% on 1000 questions/.exec(out);
    expect(acc, out).not.toBeNull();
    expect(Number(acc![1])).toBeGreaterThan(90);
    expect(out.match(/^Q: where is \w+\?  A: \w+  \(truth: \w+\)$/gm)).toHaveLength(2);
    expect(out).toMatch(/^\* .+ +[01]\.\d\d +[01]\.\d\d +[01]\.\d\d$/m);
  });

  it('the Shakespeare LSTM demo trains and prints a sample', () => {
    const { code, out } = runExample('examples/shakespeare-lstm.ts', ['--seconds', '3', '--sample', '40', '--hidden', '32']);
    expect(code, out).toBe(0);
    expect(out).toMatch(/Tiny Shakespeare: 1,115,394 characters, 65 distinct/);
    expect(out).toMatch(/trained \d+ steps in [\d.]+ s; final train loss [\d.]+, validation loss [\d.]+/);
    const sample = /--- sample \(40 characters\) ---\nROMEO:\n([\s\S]*)\n---/.exec(out);
    expect(sample, out).not.toBeNull();
    expect(sample![1]!.length).toBe(40);
  });

  it('the Shakespeare GPT trains, evaluates on schedule, samples with generate and ends with its summary line', () => {
    const { code, out, stdout } = runExample('examples/shakespeare-gpt.ts', ['--iters', '40', '--eval-every', '20', '--eval-windows', '24', '--sample', '50']);
    expect(code, out).toBe(0);
    const evals = [...out.matchAll(/^iter (\d+) +train loss ([\d.]+) +val loss ([\d.]+)/gm)];
    expect(evals.map((m) => Number(m[1]))).toEqual([20, 40]);
    // From ln(65) = 4.17 at the start, 40 steps of warm-up already bring the validation loss down.
    expect(Number(evals[1]![3])).toBeLessThan(3.6);
    const sample = /--- sample \(50 characters\) ---\nROMEO:\n([\s\S]*)\n---/.exec(out);
    expect(sample, out).not.toBeNull();
    expect(sample![1]!.length).toBe(50);
    const last = stdout.trim().split('\n').at(-1)!;
    expect(last).toMatch(/^val_loss=\d+\.\d+ wall_s=\d+\.\d+$/);
    expect(Number(/val_loss=([\d.]+)/.exec(last)![1])).toBeCloseTo(Number(evals[1]![3]), 4);
  });

  it('the masked-token example trains on masked characters and reports accuracy against a baseline', () => {
    const { code, out } = runExample('examples/masked-lm.ts', ['--steps', '100']);
    expect(code, out).toBe(0);
    const loss = /step 100 +masked-token loss ([\d.]+)/.exec(out);
    expect(loss, out).not.toBeNull();
    // ln(65) = 4.17 before training.
    expect(Number(loss![1])).toBeLessThan(3.6);
    expect(out).toMatch(/masked-token accuracy [\d.]+% on \d+ held-out positions \(most-frequent-character baseline [\d.]+%\)/);
    expect(out).toMatch(/^filled: {2}.{64}$/m);
  });
});
