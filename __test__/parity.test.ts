import { describe, expect, it } from 'vitest';
import { layers, optimizers, sequential, type Tensor } from '../src/index.js';
import { LSTM_FIXTURE, expectClose, readSafetensors } from './helpers.js';

// The fixture comes from PyTorch (scripts/make-fixtures.py): embedding(11, 8) -> LSTM(8, 16, 2 layers) ->
// Linear(16, 11), cross-entropy over every step with one target ignored (-100). Tolerance: 1e-5 relative
// plus 1e-6 absolute, the float32 rounding left after a 5-step recurrence and a softmax.
const fx = readSafetensors(LSTM_FIXTURE);
const get = (k: string): Tensor => {
  const t = fx[k];
  if (!t) throw new Error(`fixture has no ${k}`);
  return t;
};

function build() {
  return sequential(
    [
      layers.embedding({ vocabSize: 11, dim: 8 }),
      layers.lstm({ hiddenSize: 16, numLayers: 2, returnSequences: true }),
      layers.dense({ units: 11 }),
    ],
    { seed: 1 },
  );
}

describe('PyTorch parity from JavaScript', () => {
  it('loads a torch state_dict and reproduces its logits', async () => {
    const model = build();
    await model.loadWeights(LSTM_FIXTURE);
    expectClose(await model.predict(get('input')), get('logits'), 1e-5, 1e-6, 'logits');
    model.dispose();
  });

  it('gives the same loss and the same weights after one Adam step', async () => {
    const model = build();
    await model.loadWeights(LSTM_FIXTURE);
    model.compile({ optimizer: optimizers.adam({ learningRate: 0.01, weightDecay: 0.001 }), loss: 'crossEntropy' });
    const { loss } = await model.trainStep(get('input'), get('target'));
    expect(Math.abs(loss - get('loss').data[0]!)).toBeLessThan(1e-5);
    const w = model.getWeights();
    for (const name of Object.keys(w)) expectClose(w[name]!, get(`adam1.${name}`), 1e-5, 1e-6, `adam1.${name}`);
    model.dispose();
  });

  it('names parameters as nn.Sequential does', () => {
    const model = build();
    expect(Object.keys(model.getWeights()).sort()).toEqual(
      Object.keys(fx)
        .filter((k) => /^\d\./.test(k))
        .sort(),
    );
    model.dispose();
  });
});
