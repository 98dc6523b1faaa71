// Trains End-To-End Memory Networks on the bAbI tasks with the paper's recipe and regenerates
// examples/babi/RESULTS.md beside the paper's figures.
//
//   npm run babi -- --tasks 1-20 [--runs N] [--epochs 100] [--concurrency 2] [--joint]
//
// --joint trains one model on all the tasks given (the paper's "PE LS RN joint": embedding 50, 60 epochs after
// 30 of linear start, learning rate halved every 15); --epochs then defaults to 60.
//
// Data: $ENGRAM_DATA/babi/en (ENGRAM_DATA defaults to ../shared/data).
import { writeFileSync } from 'node:fs';
import { cpus, platform, release } from 'node:os';
import { parseArgs } from 'node:util';
import { babiJointRecipe, babiRecipe, datasets } from '../../src/index.js';

const { values: args } = parseArgs({
  options: {
    tasks: { type: 'string', default: '1-20' },
    runs: { type: 'string', default: '1' },
    epochs: { type: 'string' },
    concurrency: { type: 'string', default: String(Math.min(2, cpus().length)) },
    joint: { type: 'boolean', default: false },
    out: { type: 'string' },
  },
});

/** "1-20", "1,3,5" or "2-4,7". */
function parseTasks(spec: string): number[] {
  const out: number[] = [];
  for (const part of spec.split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) throw new RangeError(`--tasks: cannot read ${JSON.stringify(part)}; use e.g. 1-20 or 1,3,5`);
    const [a, b] = [Number(m[1]), Number(m[2] ?? m[1])];
    for (let t = a; t <= b; t++) out.push(t);
  }
  if (out.some((t) => t < 1 || t > 20)) throw new RangeError('--tasks: task numbers are 1 to 20');
  return out;
}

// Sukhbaatar et al. 2015, Table 1, 1k training examples, "PE LS RN" column: test error in percent.
const PAPER_PE_LS_RN = [0.0, 8.3, 40.3, 2.8, 13.1, 7.6, 17.3, 10.0, 13.2, 15.1, 0.9, 0.2, 0.4, 1.7, 0.0, 1.3, 51.0, 11.1, 82.8, 0.0];
// The same table's "PE LS RN joint" column.
const PAPER_JOINT = [0.0, 11.4, 21.9, 13.4, 14.4, 2.8, 18.3, 9.3, 1.9, 6.5, 0.3, 0.1, 0.2, 6.9, 0.0, 2.7, 40.4, 9.4, 88.0, 0.0];

const tasks = parseTasks(args.tasks);
const runs = Number(args.runs);
const joint = args.joint;
const epochs = Number(args.epochs ?? (joint ? 60 : 100));
const paper = joint ? PAPER_JOINT : PAPER_PE_LS_RN;
const started = performance.now();
const results = new Map<number, { error: number; seconds: number; validation: number }>();
const line = (task: number, error: number, seconds: number) =>
  console.log(`task ${String(task).padStart(2)} ${datasets.babi.taskName(task).padEnd(24)} test error ${(100 * error).toFixed(1).padStart(5)}%  (paper ${paper[task - 1]!.toFixed(1)}%)  ${seconds.toFixed(1)} s`);
if (joint) {
  const sets = [];
  for (const task of tasks) {
    sets.push({ train: await datasets.babi.loadTask(task, { split: 'train' }), test: await datasets.babi.loadTask(task, { split: 'test' }) });
  }
  const r = await babiJointRecipe(sets, {
    runs,
    epochs,
    onEpochEnd: (run, e, logs) => {
      if ((e + 1) % 10 === 0) console.log(`  run ${run + 1} epoch ${e + 1}: loss ${logs.loss!.toFixed(1)}, validation loss ${logs.val_loss?.toFixed(1)}`);
    },
  });
  tasks.forEach((task, i) => {
    results.set(task, { error: r.testErrors[i]!, seconds: r.seconds, validation: r.validationErrors[r.bestRun]! });
    line(task, r.testErrors[i]!, r.seconds);
  });
  r.model.dispose();
} else {
  const queue = [...tasks];
  const worker = async () => {
    for (let task = queue.shift(); task !== undefined; task = queue.shift()) {
      const train = await datasets.babi.loadTask(task, { split: 'train' });
      const test = await datasets.babi.loadTask(task, { split: 'test' });
      const r = await babiRecipe(train, test, { runs, epochs });
      results.set(task, { error: r.testError, seconds: r.seconds, validation: r.validationErrors[r.bestRun]! });
      r.model.dispose();
      line(task, r.testError, r.seconds);
    }
  };
  await Promise.all(Array.from({ length: Number(args.concurrency) }, worker));
}
const wall = (performance.now() - started) / 1000;

const rows = tasks.map((t) => ({ t, ...results.get(t)! }));
const mean = rows.reduce((a, r) => a + 100 * r.error, 0) / rows.length;
const failed = rows.filter((r) => r.error > 0.05).length;
const mean20 = (col: number[]) => (col.reduce((a, v) => a + v, 0) / col.length).toFixed(1);
const failed20 = (col: number[]) => col.filter((v) => v > 5).length;
const paperMean = tasks.reduce((a, t) => a + paper[t - 1]!, 0) / tasks.length;
const paperFailed = tasks.filter((t) => paper[t - 1]! > 5).length;
const column = joint ? 'PE LS RN joint' : 'PE LS RN';
const recipe = joint
  ? `One model for all ${tasks.length} task(s): embedding 50, 3 hops, memory of the 50 most recent sentences, adjacent weight
tying, position and temporal encoding, 10% random noise; linear start for 30 epochs at learning rate 0.005, then
${epochs} epochs of SGD on the summed loss at 0.01 halved every 15, gradient-norm clip 40, batch 32; the last 10% of
each task's training set held out to pick the best of ${runs} run(s). The "seconds" column is the whole joint run.`
  : `Per task: embedding 20, 3 hops, memory of the 50 most recent sentences, adjacent weight tying, position and
temporal encoding, 10% random noise; linear start for 20 epochs at learning rate 0.005, then ${epochs} epochs of SGD
on the summed loss at 0.01 halved every 25, gradient-norm clip 40, batch 32; the last 10% of the training set held
out to pick the best of ${runs} run(s).`;
const md = `# bAbI results (End-To-End Memory Networks${joint ? ', joint training' : ''})

Generated by \`npm run babi -- --tasks ${args.tasks} --runs ${runs} --epochs ${epochs}${joint ? ' --joint' : ''}\`; do not edit by hand.

${recipe}
The paper's column is its "${column}" model (Sukhbaatar et al. 2015, Table 1, 1k examples, best of 10 runs).

| task | test error % | name | paper ${column} % | validation error % | seconds |
| --: | --: | --- | --: | --: | --: |
${rows.map((r) => `| ${r.t} | ${(100 * r.error).toFixed(1)} | ${datasets.babi.taskName(r.t)} | ${paper[r.t - 1]!.toFixed(1)} | ${(100 * r.validation).toFixed(1)} | ${r.seconds.toFixed(1)} |`).join('\n')}

| | engram | paper ${column} (same tasks) | paper PE LS RN (all 20) | paper PE LS RN joint (all 20) |
| --- | --: | --: | --: | --: |
| mean test error % | ${mean.toFixed(1)} | ${paperMean.toFixed(1)} | ${mean20(PAPER_PE_LS_RN)} | ${mean20(PAPER_JOINT)} |
| failed tasks (error > 5%) | ${failed} of ${rows.length} | ${paperFailed} | ${failed20(PAPER_PE_LS_RN)} | ${failed20(PAPER_JOINT)} |

Wall time ${wall.toFixed(1)} s for ${rows.length} task(s)${joint ? '' : `, ${args.concurrency} at a time`}, on ${cpus().length} cores
(${cpus()[0]?.model ?? 'unknown CPU'}), ${platform()} ${release()}, Node ${process.version},
RAYON_NUM_THREADS=${process.env.RAYON_NUM_THREADS ?? 'unset'}; ${new Date().toISOString().slice(0, 10)}.
`;
const out = args.out ?? new URL(joint ? './RESULTS-joint.md' : './RESULTS.md', import.meta.url).pathname;
writeFileSync(out, md);
console.log(`\nmean test error ${mean.toFixed(1)}%, failed ${failed}/${rows.length}, wall ${wall.toFixed(1)} s -> ${out}`);
