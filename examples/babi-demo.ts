// The main demo: an End-To-End Memory Network learns bAbI task 1 (single supporting fact), reports its test
// accuracy, then answers a few test questions showing where each hop looked.
//
//   npm run demo
//   npm run demo -- --task 2 --epochs 60 --questions 5
//   npm run demo -- --svg attention.svg     # also draws the first question's attention as an SVG heatmap
//
// Data: $ENGRAM_DATA/babi/en (ENGRAM_DATA defaults to ../shared/data).
import { parseArgs } from 'node:util';
import { attentionMap, babiRecipe, datasets, tensor } from '../src/index.js';
import { sliceRows } from '../src/tensor.js';

const { values: args } = parseArgs({
  options: {
    task: { type: 'string', default: '1' },
    epochs: { type: 'string', default: '100' },
    questions: { type: 'string', default: '3' },
    svg: { type: 'string' },
  },
});
const task = Number(args.task);
const { babi } = datasets;
console.log(`bAbI task ${task} (${babi.taskName(task)}): training an end-to-end memory network (3 hops)...`);
const train = await babi.loadTask(task, { split: 'train' });
const test = await babi.loadTask(task, { split: 'test' });
const r = await babiRecipe(train, test, {
  epochs: Number(args.epochs),
  onEpochEnd: (_run, e, logs) => {
    if ((e + 1) % 20 === 0) console.log(`  epoch ${e + 1}: loss ${logs.loss!.toFixed(3)}, validation loss ${logs.val_loss!.toFixed(3)}`);
  },
});
console.log(`test accuracy ${(100 * (1 - r.testError)).toFixed(1)}% on ${test.length} questions (${r.seconds.toFixed(1)} s)\n`);

const shown = Number(args.questions);
const x = { stories: sliceRows(r.test.stories, 0, shown), queries: sliceRows(r.test.queries, 0, shown) };
const [att, logits] = [await r.model.attention(x), await r.model.predict(x)];
const hops = att.shape[0]!;
const m = r.test.memorySize;
for (let i = 0; i < shown; i++) {
  const ex = test[i]!;
  const kept = r.test.storyLengths[i]!;
  const story = ex.story.slice(ex.story.length - kept);
  console.log(`Story ${i + 1}                                  ${Array.from({ length: hops }, (_, h) => `hop ${h + 1}`).join('  ')}`);
  story.forEach((words, j) => {
    const w = Array.from({ length: hops }, (_, h) => att.data[(h * shown + i) * m + j]!.toFixed(2).padStart(5));
    const mark = ex.supporting.includes(ex.story.length - kept + j) ? '*' : ' ';
    console.log(`${mark} ${words.join(' ').padEnd(40).slice(0, 40)} ${w.join('  ')}`);
  });
  // Empty memory slots share the softmax too (attendEmpty): whatever weight no sentence got went to them.
  const rest = Array.from({ length: hops }, (_, h) => {
    let sum = 0;
    for (let j = 0; j < kept; j++) sum += att.data[(h * shown + i) * m + j]!;
    return Math.max(0, 1 - sum).toFixed(2).padStart(5);
  });
  console.log(`  ${'(empty memory)'.padEnd(40)} ${rest.join('  ')}`);
  const v = r.vocab.size;
  let best = 0;
  for (let k = 1; k < v; k++) if (logits.data[i * v + k]! > logits.data[i * v + best]!) best = k;
  console.log(`Q: ${ex.query.join(' ')}?  A: ${r.vocab.word(best)}  (truth: ${ex.answer})\n`);
}
console.log('* marks the supporting facts bAbI lists for each question.');
if (args.svg !== undefined && shown > 0) {
  // The first question: one row per hop, one column per story sentence.
  const ex = test[0]!;
  const kept = r.test.storyLengths[0]!;
  const weights = new Float32Array(hops * kept);
  for (let h = 0; h < hops; h++) weights.set(att.data.subarray(h * shown * m, h * shown * m + kept) as Float32Array, h * kept);
  await attentionMap(tensor(weights, [hops, kept]), {
    rowLabels: Array.from({ length: hops }, (_, h) => `hop ${h + 1}`),
    colLabels: ex.story.slice(ex.story.length - kept).map((w) => w.join(' ')),
    title: `${ex.query.join(' ')}? (answer: ${ex.answer})`,
    path: args.svg,
  });
  console.log(`wrote ${args.svg}`);
}
r.model.dispose();
