/**
 * The `attention` suite: one post-norm Transformer encoder block (batch 16, seqLen 64, d_model 128, 4 heads,
 * feed-forward 512) with a per-token 64-class head, trained with Adam, in engram, in tfjs built from ops (`wasm`
 * and `cpu` backends) and in PyTorch CPU (benches/torch_attention.py, nn.TransformerEncoderLayer, the same thread
 * count); plus the training speed, in tokens/s, of a small decoder-only character model in nanoGPT's CPU
 * configuration (4 pre-norm causal blocks, batch 12, context 64), in engram and PyTorch.
 * @module
 */
import os from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { seededRandom } from '../src/batching.js';
import { layers, optimizers, sequential, tensor } from '../src/index.js';
import { timeCase, type Budget, type Suite } from './measure.js';
import { runTorchPeer, setUpWasm, type Subject } from './recurrent.js';
import type { CaseResult } from './report.js';

const BATCH = 16;
const SEQ_LEN = 64;
const D_MODEL = 128;
const HEADS = 4;
const HEAD_DIM = D_MODEL / HEADS;
const FF_DIM = 512;
const CLASSES = 64;
const LEARNING_RATE = 1e-3;
/** nn.LayerNorm's default. */
const LN_EPS = 1e-5;

/** The GPT configuration: nanoGPT's CPU settings on a 65-character vocabulary. */
const GPT_VOCAB = 65;
const GPT_BATCH = 12;
const GPT_CONTEXT = 64;
const GPT_LAYERS = 4;
const GPT_WEIGHT_DECAY = 0.1;
const GPT_TOKENS = GPT_BATCH * GPT_CONTEXT;

const BLOCK_CASE = `block B${BATCH} T${SEQ_LEN} D${D_MODEL}`;
const GPT_CASE = `gpt ${GPT_LAYERS} blocks B${GPT_BATCH} T${GPT_CONTEXT}`;

/** The layer builders this suite needs beyond the recurrent ones; engram is skipped while any is missing. */
const TRANSFORMER_LAYERS = ['transformerBlock', 'positionalEncoding', 'layerNorm'] as const;

type Op = 'train' | 'infer';

/** The same batch for every JavaScript implementation: seeded, `[BATCH, SEQ_LEN, D_MODEL]` in [-1, 1) and per-token class ids. */
function batchData() {
  const rand = seededRandom(42);
  return {
    x: Float32Array.from({ length: BATCH * SEQ_LEN * D_MODEL }, () => rand() * 2 - 1),
    y: Int32Array.from({ length: BATCH * SEQ_LEN }, () => Math.floor(rand() * CLASSES)),
  };
}

/** Token ids `[GPT_BATCH, GPT_CONTEXT]` and the next-token targets, seeded. */
function gptData() {
  const rand = seededRandom(42);
  const ids = Int32Array.from({ length: GPT_BATCH * (GPT_CONTEXT + 1) }, () => Math.floor(rand() * GPT_VOCAB));
  const x = new Int32Array(GPT_TOKENS);
  const y = new Int32Array(GPT_TOKENS);
  for (let b = 0; b < GPT_BATCH; b++) {
    const row = ids.subarray(b * (GPT_CONTEXT + 1), (b + 1) * (GPT_CONTEXT + 1));
    x.set(row.subarray(0, GPT_CONTEXT), b * GPT_CONTEXT);
    y.set(row.subarray(1), b * GPT_CONTEXT);
  }
  return { x, y };
}

/**
 * GEMM work of one forward per token of one encoder block: the fused in-projection, the output projection, the
 * two feed-forward layers and the attention products (QKᵀ and AV, dense, causal or not).
 */
function blockFlopPerToken(seqLen: number): number {
  const projections = 2 * D_MODEL * 3 * D_MODEL + 2 * D_MODEL * D_MODEL;
  const feedForward = 2 * 2 * D_MODEL * FF_DIM;
  const attention = 2 * 2 * seqLen * D_MODEL;
  return projections + feedForward + attention;
}

/** GEMM work of one call: the forward's, and about three times that for a training step (forward, dX, dW). */
function gflop(model: 'block' | 'gpt', op: Op): number {
  const forward =
    model === 'block'
      ? BATCH * SEQ_LEN * (blockFlopPerToken(SEQ_LEN) + 2 * D_MODEL * CLASSES)
      : GPT_TOKENS * (GPT_LAYERS * blockFlopPerToken(GPT_CONTEXT) + 2 * D_MODEL * GPT_VOCAB);
  return ((op === 'train' ? 3 : 1) * forward) / 1e9;
}

/** Whether this build of engram has the transformer layers; logs what is missing when not. */
function engramHasTransformers(): boolean {
  const missing = TRANSFORMER_LAYERS.filter((k) => !(k in layers));
  if (missing.length > 0) console.warn(`engram skipped: layers.${missing.join(', layers.')} not in this build`);
  return missing.length === 0;
}

function engramBlock(): Subject {
  const model = sequential(
    [
      layers.transformerBlock({ dModel: D_MODEL, nHeads: HEADS, ffDim: FF_DIM, normFirst: false, activation: 'relu', dropout: 0 }),
      layers.dense({ units: CLASSES }),
    ],
    { seed: 1 },
  );
  model.compile({ optimizer: optimizers.adam({ learningRate: LEARNING_RATE }), loss: 'crossEntropy' });
  const d = batchData();
  const x = tensor(d.x, [BATCH, SEQ_LEN, D_MODEL]);
  const y = tensor(d.y, [BATCH, SEQ_LEN]);
  return { train: () => model.trainStep(x, y), infer: () => model.predict(x), dispose: () => model.dispose() };
}

function engramGpt(): Subject {
  const model = sequential(
    [
      layers.embedding({ vocabSize: GPT_VOCAB, dim: D_MODEL }),
      layers.positionalEncoding({ kind: 'learned', maxLen: GPT_CONTEXT }),
      ...Array.from({ length: GPT_LAYERS }, () =>
        layers.transformerBlock({ dModel: D_MODEL, nHeads: HEADS, ffDim: FF_DIM, normFirst: true, causal: true, activation: 'gelu', dropout: 0 }),
      ),
      layers.layerNorm({}),
      layers.dense({ units: GPT_VOCAB }),
    ],
    { seed: 1 },
  );
  model.compile({ optimizer: optimizers.adamw({ learningRate: LEARNING_RATE, weightDecay: GPT_WEIGHT_DECAY }), loss: 'crossEntropy' });
  const d = gptData();
  const x = tensor(d.x, [GPT_BATCH, GPT_CONTEXT]);
  const y = tensor(d.y, [GPT_BATCH, GPT_CONTEXT]);
  return {
    train: () => model.trainStep(x, y),
    infer: () => model.predict(x),
    dispose: () => model.dispose(),
  };
}

/** The block's weights in PyTorch's layouts (`weight [out, in]`), as tf variables. */
interface TfBlockWeights {
  inProjW: tf.Variable;
  inProjB: tf.Variable;
  outProjW: tf.Variable;
  outProjB: tf.Variable;
  ln1G: tf.Variable;
  ln1B: tf.Variable;
  ff1W: tf.Variable;
  ff1B: tf.Variable;
  ff2W: tf.Variable;
  ff2B: tf.Variable;
  ln2G: tf.Variable;
  ln2B: tf.Variable;
  headW: tf.Variable;
  headB: tf.Variable;
}

/** Seeded U(-1/√in, 1/√in) weights and biases (nn.Linear's scale), unit gains and zero shifts for the norms. */
function tfBlockWeights(): TfBlockWeights {
  let seed = 1;
  const linear = (out: number, inp: number): [tf.Variable, tf.Variable] => {
    const bound = 1 / Math.sqrt(inp);
    return [
      tf.variable(tf.randomUniform([out, inp], -bound, bound, 'float32', seed++)),
      tf.variable(tf.randomUniform([out], -bound, bound, 'float32', seed++)),
    ];
  };
  const [inProjW, inProjB] = linear(3 * D_MODEL, D_MODEL);
  const [outProjW, outProjB] = linear(D_MODEL, D_MODEL);
  const [ff1W, ff1B] = linear(FF_DIM, D_MODEL);
  const [ff2W, ff2B] = linear(D_MODEL, FF_DIM);
  const [headW, headB] = linear(CLASSES, D_MODEL);
  return {
    inProjW,
    inProjB,
    outProjW,
    outProjB,
    ln1G: tf.variable(tf.ones([D_MODEL])),
    ln1B: tf.variable(tf.zeros([D_MODEL])),
    ff1W,
    ff1B,
    ff2W,
    ff2B,
    ln2G: tf.variable(tf.ones([D_MODEL])),
    ln2B: tf.variable(tf.zeros([D_MODEL])),
    headW,
    headB,
  };
}

/** `x Wᵀ + b` on `[rows, in]`. */
function tfLinear(x: tf.Tensor2D, w: tf.Variable, b: tf.Variable): tf.Tensor2D {
  return tf.add(tf.matMul(x, w as tf.Tensor2D, false, true), b);
}

/** Layer norm over the last axis, biased variance, as nn.LayerNorm. */
function tfLayerNorm(x: tf.Tensor2D, gain: tf.Variable, shift: tf.Variable): tf.Tensor2D {
  const { mean, variance } = tf.moments(x, -1, true);
  return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, LN_EPS))), gain), shift);
}

/** `[B·T, D]` → `[B, H, T, d]`. */
function tfHeads(t: tf.Tensor2D): tf.Tensor4D {
  return tf.transpose(tf.reshape(t, [BATCH, SEQ_LEN, HEADS, HEAD_DIM]), [0, 2, 1, 3]);
}

/**
 * The block and head forward, as nn.TransformerEncoderLayer (post-norm, relu, no dropout) then nn.Linear:
 * `h = LN1(x + MHA(x))`, `out = LN2(h + W2 relu(W1 h + b1) + b2)`, logits `[B·T, CLASSES]`.
 */
function tfBlockForward(w: TfBlockWeights, x: tf.Tensor2D): tf.Tensor2D {
  const qkv = tfLinear(x, w.inProjW, w.inProjB);
  const [q, k, v] = tf.split(qkv, 3, -1) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
  const scores = tf.mul(tf.matMul(tfHeads(q), tfHeads(k), false, true), 1 / Math.sqrt(HEAD_DIM));
  const context = tf.matMul(tf.softmax(scores), tfHeads(v));
  const merged = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [BATCH * SEQ_LEN, D_MODEL]) as tf.Tensor2D;
  const h = tfLayerNorm(tf.add(x, tfLinear(merged, w.outProjW, w.outProjB)), w.ln1G, w.ln1B);
  const ff = tfLinear(tf.relu(tfLinear(h, w.ff1W, w.ff1B)), w.ff2W, w.ff2B);
  const out = tfLayerNorm(tf.add(h, ff), w.ln2G, w.ln2B);
  return tfLinear(out, w.headW, w.headB);
}

/** The block in tfjs ops on `backend`, trained with `tf.train.adam` through `optimizer.minimize`. */
async function tfjsBlock(backend: 'cpu' | 'wasm'): Promise<Subject> {
  if (!(await tf.setBackend(backend))) throw new Error(`tfjs: the ${backend} backend failed to initialise`);
  const w = tfBlockWeights();
  const vars = Object.values(w);
  const optimizer = tf.train.adam(LEARNING_RATE);
  const d = batchData();
  // Tokens as rows: the block's every linear map is one [B·T, in] product.
  const x = tf.tensor2d(d.x, [BATCH * SEQ_LEN, D_MODEL]);
  const y = tf.tidy(() => tf.oneHot(tf.tensor1d(d.y, 'int32'), CLASSES));
  // Mean token cross-entropy (softmaxCrossEntropy's default reduction averages over the B·T rows).
  const loss = () => tf.losses.softmaxCrossEntropy(y, tfBlockForward(w, x)) as tf.Scalar;
  return {
    // The cpu and wasm backends run every op synchronously; reading the loss back makes sure of it.
    train: async () => tf.tidy(() => optimizer.minimize(loss, true, vars)!.dataSync()[0]),
    infer: async () => tf.tidy(() => void tfBlockForward(w, x).dataSync()),
    dispose: () => {
      optimizer.dispose();
      tf.dispose([...vars, x, y]);
    },
  };
}

interface TorchCase {
  model: 'block' | 'gpt';
  op: Op;
}

interface TorchOut {
  torch: string;
  threads: number;
  results: (TorchCase & { path: string; meanMs: number; medianMs: number; minMs: number; iterations: number })[];
}

/** The PyTorch peer on every case of this suite. */
function torchPeer(threads: number, budget: Budget): TorchOut | undefined {
  const cases: TorchCase[] = [
    { model: 'block', op: 'train' },
    { model: 'block', op: 'infer' },
    { model: 'gpt', op: 'train' },
  ];
  return runTorchPeer<TorchOut>('torch_attention.py', threads, budget, cases);
}

const tokensPerS = (medianMs: number) => Math.round(GPT_TOKENS / (medianMs / 1000)).toLocaleString('en-US');

export const attention: Suite = {
  name: 'attention',
  description:
    `One post-norm Transformer encoder block as nn.TransformerEncoderLayer (d_model ${D_MODEL}, ${HEADS} heads, ` +
    `feed-forward ${FF_DIM}, relu, no dropout: x = LN1(x + MHA(x)), x = LN2(x + FF(x))) → per-token dense ${CLASSES} ` +
    `logits, mean token cross-entropy, Adam (lr ${LEARNING_RATE}); float input, batch ${BATCH}, seqLen ${SEQ_LEN}, ` +
    'float32. `train` is one step (forward, loss, backward, update); `infer` is predict on the same batch. tfjs builds ' +
    'the block from ops (matMul, softmax, moments) and trains through optimizer.minimize. The `gpt` row is a ' +
    `decoder-only character model in nanoGPT's CPU configuration (vocab ${GPT_VOCAB}, embedding ${D_MODEL} + learned ` +
    `positions, ${GPT_LAYERS} pre-norm causal blocks with gelu, final layer norm, dense ${GPT_VOCAB}; AdamW lr ` +
    `${LEARNING_RATE}, weight decay ${GPT_WEIGHT_DECAY}; batch ${GPT_BATCH}, context ${GPT_CONTEXT}), training only, ` +
    'engram and PyTorch; its tokens/s are in the notes. GFLOP/s counts the GEMM work (training ≈ 3× the forward).',
  async run(budget: Budget) {
    const threads = Number(process.env.RAYON_NUM_THREADS) || os.cpus().length;
    const impls: Record<string, string> = {
      engram: 'native addon (candle), float32; threads from RAYON_NUM_THREADS',
      'tfjs-wasm': `${await setUpWasm(threads)}; the block from tf ops, tf.train.adam`,
      'tfjs-cpu': `@tensorflow/tfjs ${tf.version.tfjs}, cpu backend (plain JavaScript, one thread); the block from tf ops, tf.train.adam`,
    };
    const results: CaseResult[] = [];
    const hasEngram = engramHasTransformers();
    const subjects: [string, () => Subject | Promise<Subject>][] = [
      ...(hasEngram ? [['engram', engramBlock] as [string, () => Subject]] : []),
      ['tfjs-wasm', () => tfjsBlock('wasm')],
      ['tfjs-cpu', () => tfjsBlock('cpu')],
    ];
    for (const [impl, make] of subjects) {
      const subject = await make();
      try {
        for (const op of ['train', 'infer'] as const) {
          const meta = { suite: 'attention', case: BLOCK_CASE, impl, hidden: D_MODEL, op, gflop: gflop('block', op) };
          results.push(await timeCase(meta, () => subject[op](), budget));
        }
      } finally {
        subject.dispose();
      }
    }
    const notes: string[] = [];
    if (hasEngram) {
      const gpt = engramGpt();
      try {
        const meta = { suite: 'attention', case: GPT_CASE, impl: 'engram', hidden: D_MODEL, op: 'train' as const, gflop: gflop('gpt', 'train') };
        const r = await timeCase(meta, () => gpt.train(), budget);
        results.push(r);
        notes.push(`GPT configuration, engram: ${tokensPerS(r.medianMs)} training tokens/s (${GPT_TOKENS} tokens a step)`);
      } finally {
        gpt.dispose();
      }
    }
    const torch = torchPeer(threads, budget);
    if (torch !== undefined) {
      const paths = torch.results.map((r) => `${r.model} ${r.op}: ${r.path}`).join('; ');
      impls.pytorch =
        `torch ${torch.torch} (PyPI), CPU, torch.set_num_threads(${torch.threads}); nn.TransformerEncoderLayer, ` +
        `benches/torch_attention.py; ${paths}`;
      for (const { model, path: _, ...r } of torch.results) {
        const kase = model === 'block' ? BLOCK_CASE : GPT_CASE;
        results.push({ ...r, suite: 'attention', case: kase, impl: 'pytorch', hidden: D_MODEL, gflop: gflop(model, r.op) });
        if (model === 'gpt') notes.push(`GPT configuration, PyTorch: ${tokensPerS(r.medianMs)} training tokens/s`);
      }
    }
    return { impls, results, notes };
  },
};
