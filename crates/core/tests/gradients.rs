//! Backward passes checked against central finite differences, in float64.
//!
//! For a sample of elements of every parameter (all of them for small parameters, otherwise the first, the
//! last, the one with the largest gradient and a few seeded picks) the analytic gradient from
//! `Sequential::gradients` is compared with `(L(w + h) - L(w - h)) / 2h`, `h = 1e-5`, where `L` is the loss
//! of a forward pass with that one element perturbed.
//!
//! Tolerance: `|analytic - numeric| <= 1e-6 * max(|analytic|, |numeric|, 1e-3)`. In float64 the central
//! difference is off by about `h^2 L''' / 6` (truncation) plus `1e-16 |L| / h` (rounding of the two losses),
//! both ~1e-11 here with `h = 1e-5` (measured worst: 4e-11 absolute, 3e-8 relative), so the bound leaves a
//! margin of 30. Below 1e-3 it becomes an absolute 1e-9, which still exposes a missing term in a small
//! gradient; a sign error, a swapped gate or a dropped path gives relative errors of order 1.

mod common;

use candle_core::Tensor;
use common::{compiled, f64_tensor, ids, tensor_values, uniform};
use engram_core::{HostTensor, InitialState, Rng, Sequential};
use serde_json::{Value, json};

const H: f64 = 1e-5;
const TOL: f64 = 1e-6;
const FLOOR: f64 = 1e-3;
/// Seeded picks per parameter, on top of the first, the last and the largest.
const PICKS: usize = 5;

/// How the numeric side evaluates the loss.
#[derive(Clone, Copy)]
enum Forward {
    /// `evaluate`: inference mode, for models without dropout (training and inference agree).
    Inference,
    /// `gradients` with the generator rewound each time: training mode with the same dropout masks as the
    /// analytic pass, so the loss is a smooth function of the weights.
    TrainingSameMasks,
}

fn f64_model(mut spec: Value, loss: Value) -> Sequential {
    spec["dtype"] = json!("float64");
    compiled(spec, json!({ "type": "sgd" }), loss)
}

fn loss_at(
    m: &mut Sequential,
    x: &HostTensor,
    y: &HostTensor,
    states: &[InitialState],
    f: Forward,
    rng: [u64; 4],
) -> f64 {
    match f {
        Forward::Inference => m.evaluate(x, y, states).unwrap().loss,
        Forward::TrainingSameMasks => {
            m.set_rng_state(rng);
            m.gradients(x, y, states).unwrap().0
        }
    }
}

/// Which elements of a parameter of `n` values to check.
fn sample(n: usize, analytic: &[f64], rng: &mut Rng) -> Vec<usize> {
    if n <= 3 + PICKS {
        return (0..n).collect();
    }
    let largest = (0..n).max_by(|&a, &b| analytic[a].abs().total_cmp(&analytic[b].abs())).unwrap();
    let mut picks = vec![0, n - 1, largest];
    while picks.len() < 3 + PICKS {
        let i = (rng.next_u64() % n as u64) as usize;
        if !picks.contains(&i) {
            picks.push(i);
        }
    }
    picks
}

/// Checks a sample of the elements of every parameter of `m`.
fn assert_gradients_match(m: &mut Sequential, x: &HostTensor, y: &HostTensor, states: &[InitialState], f: Forward) {
    let rng = m.rng_state();
    let (_, grads) = m.gradients(x, y, states).unwrap();
    let params: Vec<(String, candle_core::Var)> = m.params().iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
    assert!(!params.is_empty());
    let mut pick = Rng::new(12345);
    for ((name, var), grad) in params.iter().zip(&grads) {
        assert_eq!(grad.dims(), var.dims(), "{name}: gradient shape");
        let analytic = tensor_values(grad);
        let base = tensor_values(var.as_tensor());
        let set = |v: &[f64]| var.set(&Tensor::from_slice(v, var.dims(), var.device()).unwrap()).unwrap();
        for i in sample(base.len(), &analytic, &mut pick) {
            let mut w = base.clone();
            w[i] = base[i] + H;
            set(&w);
            let plus = loss_at(m, x, y, states, f, rng);
            w[i] = base[i] - H;
            set(&w);
            let minus = loss_at(m, x, y, states, f, rng);
            set(&base);
            let numeric = (plus - minus) / (2.0 * H);
            let a = analytic[i];
            let err = (a - numeric).abs() / a.abs().max(numeric.abs()).max(FLOOR);
            assert!(err <= TOL, "{name}[{i}]: analytic {a:e}, numeric {numeric:e}, relative error {err:e}");
        }
    }
}

fn floats(rng: &mut Rng, shape: &[usize], low: f64, high: f64) -> HostTensor {
    f64_tensor(uniform(rng, shape.iter().product(), low, high), shape)
}

fn check(spec: Value, loss: Value, x: &HostTensor, y: &HostTensor, states: &[InitialState]) {
    let mut m = f64_model(spec, loss);
    assert_gradients_match(&mut m, x, y, states, Forward::Inference);
}

fn mse() -> Value {
    json!({ "type": "mse" })
}

fn cross_entropy() -> Value {
    json!({ "type": "crossEntropy" })
}

#[test]
fn embedding_then_dense_matches_finite_differences() {
    let mut r = Rng::new(1);
    let spec = json!({ "seed": 1, "layers": [
        { "type": "embedding", "vocabSize": 7, "dim": 5 },
        { "type": "dense", "units": 7 },
    ]});
    let x = HostTensor::i32(ids(&mut r, 8, 7), &[2, 4]).unwrap();
    let y = HostTensor::i32(ids(&mut r, 8, 7), &[2, 4]).unwrap();
    check(spec, cross_entropy(), &x, &y, &[]);
}

/// A dense layer with `activation` on float input, then a linear one so the activation's backward feeds
/// another layer's weights.
fn check_dense(activation: &str) {
    let mut r = Rng::new(2);
    let spec = json!({ "seed": 2, "layers": [
        { "type": "dense", "inputSize": 4, "units": 6, "activation": activation },
        { "type": "dense", "units": 3 },
    ]});
    let x = floats(&mut r, &[5, 4], -2.0, 2.0);
    let y = floats(&mut r, &[5, 3], -1.0, 1.0);
    check(spec, mse(), &x, &y, &[]);
}

#[test]
fn dense_linear_matches_finite_differences() {
    check_dense("linear");
}

#[test]
fn dense_relu_matches_finite_differences() {
    check_dense("relu");
}

#[test]
fn dense_tanh_matches_finite_differences() {
    check_dense("tanh");
}

#[test]
fn dense_sigmoid_matches_finite_differences() {
    check_dense("sigmoid");
}

/// lstm(inputSize 3, hidden 5, `layers`) -> dense(2) on x `[2, 4, 3]`; with `return_sequences` the
/// target covers every step, otherwise only the last.
fn check_lstm(layers: usize, return_sequences: bool, with_state: bool) {
    let mut r = Rng::new(3 + layers as u64);
    let spec = json!({ "seed": 3, "layers": [
        { "type": "lstm", "inputSize": 3, "hiddenSize": 5, "numLayers": layers, "returnSequences": return_sequences },
        { "type": "dense", "units": 2 },
    ]});
    let (batch, seq_len) = (2, 4);
    let x = floats(&mut r, &[batch, seq_len, 3], -1.0, 1.0);
    let y_shape: &[usize] = if return_sequences { &[batch, seq_len, 2] } else { &[batch, 2] };
    let y = floats(&mut r, y_shape, -1.0, 1.0);
    let states = if with_state {
        vec![InitialState {
            layer: "0".into(),
            h: floats(&mut r, &[layers, batch, 5], -0.5, 0.5),
            c: Some(floats(&mut r, &[layers, batch, 5], -0.5, 0.5)),
        }]
    } else {
        vec![]
    };
    check(spec, mse(), &x, &y, &states);
}

#[test]
fn lstm_one_layer_last_step_matches_finite_differences() {
    check_lstm(1, false, false);
}

#[test]
fn lstm_one_layer_every_step_matches_finite_differences() {
    check_lstm(1, true, false);
}

#[test]
fn lstm_two_layers_last_step_matches_finite_differences() {
    check_lstm(2, false, false);
}

#[test]
fn lstm_two_layers_every_step_matches_finite_differences() {
    check_lstm(2, true, false);
}

#[test]
fn lstm_one_layer_with_initial_state_matches_finite_differences() {
    check_lstm(1, false, true);
}

#[test]
fn lstm_two_layers_with_initial_state_matches_finite_differences() {
    check_lstm(2, true, true);
}

/// embedding(9, 4) -> lstm(6, every step) -> dense(9), cross-entropy against `y`.
fn check_cross_entropy(y: HostTensor) {
    let mut r = Rng::new(5);
    let spec = json!({ "seed": 5, "layers": [
        { "type": "embedding", "vocabSize": 9, "dim": 4 },
        { "type": "lstm", "hiddenSize": 6, "returnSequences": true },
        { "type": "dense", "units": 9 },
    ]});
    let x = HostTensor::i32(ids(&mut r, 3 * 4, 9), &[3, 4]).unwrap();
    check(spec, cross_entropy(), &x, &y, &[]);
}

#[test]
fn cross_entropy_every_step_with_ignored_targets_matches_finite_differences() {
    check_cross_entropy(HostTensor::i32(vec![1, -100, 3, 8, 0, 5, -100, 2, 7, 7, 4, -100], &[3, 4]).unwrap());
}

#[test]
fn cross_entropy_last_step_with_ignored_targets_matches_finite_differences() {
    check_cross_entropy(HostTensor::i32(vec![6, -100, 2], &[3]).unwrap());
}

/// lstm(every step) -> dense(2), mse against every step or, with `last_step`, only the last.
fn check_mse(last_step: bool) {
    let mut r = Rng::new(6);
    let spec = json!({ "seed": 6, "layers": [
        { "type": "lstm", "inputSize": 3, "hiddenSize": 4, "returnSequences": true },
        { "type": "dense", "units": 2 },
    ]});
    let x = floats(&mut r, &[3, 5, 3], -1.0, 1.0);
    let y_shape: &[usize] = if last_step { &[3, 2] } else { &[3, 5, 2] };
    let y = floats(&mut r, y_shape, -1.0, 1.0);
    check(spec, mse(), &x, &y, &[]);
}

#[test]
fn mse_every_step_matches_finite_differences() {
    check_mse(false);
}

#[test]
fn mse_last_step_matches_finite_differences() {
    check_mse(true);
}

fn dropout_model(seed: u64) -> (Sequential, HostTensor, HostTensor) {
    let mut r = Rng::new(7);
    let spec = json!({ "seed": seed, "layers": [
        { "type": "embedding", "vocabSize": 6, "dim": 4 },
        { "type": "lstm", "hiddenSize": 5, "numLayers": 2, "dropout": 0.3, "returnSequences": true },
        { "type": "dropout", "rate": 0.5 },
        { "type": "dense", "units": 6 },
    ]});
    let x = HostTensor::i32(ids(&mut r, 2 * 5, 6), &[2, 5]).unwrap();
    let y = HostTensor::i32(ids(&mut r, 2 * 5, 6), &[2, 5]).unwrap();
    (f64_model(spec, cross_entropy()), x, y)
}

#[test]
fn dropout_with_fixed_masks_matches_finite_differences() {
    let (mut m, x, y) = dropout_model(8);
    assert_gradients_match(&mut m, &x, &y, &[], Forward::TrainingSameMasks);
}

#[test]
fn dropout_acts_in_training_only() {
    let (mut m, x, y) = dropout_model(8);
    let inference = m.evaluate(&x, &y, &[]).unwrap().loss;
    assert_eq!(inference, m.evaluate(&x, &y, &[]).unwrap().loss, "inference is deterministic");
    let start = m.rng_state();
    let (first, g1) = m.gradients(&x, &y, &[]).unwrap();
    let (second, _) = m.gradients(&x, &y, &[]).unwrap();
    assert_ne!(first, inference, "training applies dropout");
    assert_ne!(first, second, "each training pass draws new masks");
    m.set_rng_state(start);
    let (again, g2) = m.gradients(&x, &y, &[]).unwrap();
    assert_eq!(first, again, "the same generator state gives the same masks");
    for (a, b) in g1.iter().zip(&g2) {
        assert_eq!(tensor_values(a), tensor_values(b));
    }
}

/// A recurrent layer of `kind` (inputSize 3, hidden 4) with `extra` options -> dense(2) on x `[2, 5, 3]`, MSE on
/// every step or the final states; with `with_state`, a random initial state (h, and c for an LSTM).
fn check_recurrent(kind: &str, extra: Value, with_state: bool) {
    let mut r = Rng::new(17);
    let mut layer = json!({ "type": kind, "inputSize": 3, "hiddenSize": 4 });
    for (k, v) in extra.as_object().unwrap() {
        layer[k] = v.clone();
    }
    let every_step = layer["returnSequences"] == json!(true);
    let dirs = if layer["bidirectional"] == json!(true) { 2 } else { 1 };
    let layers = layer["numLayers"].as_u64().unwrap_or(1) as usize;
    let spec = json!({ "seed": 5, "layers": [layer, { "type": "dense", "units": 2 }] });
    let (batch, seq_len) = (2, 5);
    let x = floats(&mut r, &[batch, seq_len, 3], -1.0, 1.0);
    let y_shape: &[usize] = if every_step { &[batch, seq_len, 2] } else { &[batch, 2] };
    let y = floats(&mut r, y_shape, -1.0, 1.0);
    let states = if with_state {
        let shape = [layers * dirs, batch, 4];
        let c = (kind == "lstm").then(|| floats(&mut r, &shape, -0.5, 0.5));
        vec![InitialState { layer: "0".into(), h: floats(&mut r, &shape, -0.5, 0.5), c }]
    } else {
        vec![]
    };
    check(spec, mse(), &x, &y, &states);
}

#[test]
fn gru_stacked_every_step_and_last_state_match_finite_differences() {
    check_recurrent("gru", json!({ "numLayers": 2, "returnSequences": true }), false);
    check_recurrent("gru", json!({}), true);
}

#[test]
fn rnn_tanh_and_relu_match_finite_differences() {
    check_recurrent("rnn", json!({ "numLayers": 2, "returnSequences": true }), true);
    check_recurrent("rnn", json!({ "nonlinearity": "relu" }), false);
}

#[test]
fn bidirectional_layers_match_finite_differences() {
    for kind in ["lstm", "gru", "rnn"] {
        check_recurrent(kind, json!({ "bidirectional": true, "numLayers": 2, "returnSequences": true }), true);
        check_recurrent(kind, json!({ "bidirectional": true }), false);
    }
}

#[test]
fn every_parameter_gets_a_nonzero_gradient() {
    let mut r = Rng::new(9);
    let hidden = 6;
    let spec = json!({ "seed": 9, "layers": [
        { "type": "embedding", "vocabSize": 10, "dim": 4 },
        { "type": "lstm", "hiddenSize": hidden, "numLayers": 2, "returnSequences": true },
        { "type": "dense", "units": 10 },
    ]});
    let mut m = f64_model(spec, cross_entropy());
    let x = HostTensor::i32(ids(&mut r, 3 * 6, 10), &[3, 6]).unwrap();
    let y = HostTensor::i32(ids(&mut r, 3 * 6, 10), &[3, 6]).unwrap();
    let (_, grads) = m.gradients(&x, &y, &[]).unwrap();
    let names: Vec<String> = m.params().iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(names.len(), 1 + 8 + 2);
    for (name, g) in names.iter().zip(&grads) {
        let g = tensor_values(g);
        assert!(g.iter().all(|v| v.is_finite()), "{name}: non-finite gradient");
        if name.starts_with("1.") {
            // Every gate block (i, f, g, o) of every LSTM weight and bias must be reached.
            for (k, gate) in g.chunks(g.len() / 4).enumerate() {
                assert!(gate.iter().any(|&v| v != 0.0), "{name}: gate block {k} gets no gradient");
            }
        } else {
            assert!(g.iter().any(|&v| v != 0.0), "{name}: the loss does not reach this parameter");
        }
    }
}

#[test]
fn every_gru_and_rnn_parameter_in_both_directions_gets_a_nonzero_gradient() {
    for (kind, gates) in [("gru", 3), ("rnn", 1)] {
        let mut r = Rng::new(4);
        let spec = json!({ "seed": 4, "layers": [
            { "type": "embedding", "vocabSize": 10, "dim": 4 },
            { "type": kind, "hiddenSize": 5, "numLayers": 2, "bidirectional": true, "returnSequences": true },
            { "type": "dense", "units": 10 },
        ]});
        let mut m = f64_model(spec, cross_entropy());
        let x = HostTensor::i32(ids(&mut r, 3 * 6, 10), &[3, 6]).unwrap();
        let y = HostTensor::i32(ids(&mut r, 3 * 6, 10), &[3, 6]).unwrap();
        let (_, grads) = m.gradients(&x, &y, &[]).unwrap();
        let names: Vec<String> = m.params().iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names.len(), 1 + 16 + 2, "{kind}: {names:?}");
        assert!(names.contains(&"1.weight_hh_l1_reverse".to_string()), "{names:?}");
        for (name, g) in names.iter().zip(&grads) {
            let g = tensor_values(g);
            assert!(g.iter().all(|v| v.is_finite()), "{name}: non-finite gradient");
            let blocks = if name.starts_with("1.") { gates } else { 1 };
            for (k, block) in g.chunks(g.len() / blocks).enumerate() {
                assert!(block.iter().any(|&v| v != 0.0), "{kind} {name}: block {k} gets no gradient");
            }
        }
    }
}

/// A small decoder-only Transformer: learned positions, two causal pre-norm GELU blocks, a final norm.
fn gpt_spec(seed: u64) -> Value {
    json!({ "seed": seed, "layers": [
        { "type": "embedding", "vocabSize": 9, "dim": 8 },
        { "type": "positionalEncoding", "kind": "learned", "maxLen": 6 },
        { "type": "transformerBlock", "dModel": 8, "nHeads": 2, "ffDim": 12, "normFirst": true, "causal": true,
          "activation": "gelu", "dropout": 0.0 },
        { "type": "transformerBlock", "dModel": 8, "nHeads": 2, "ffDim": 12, "normFirst": true, "causal": true,
          "activation": "gelu", "dropout": 0.0 },
        { "type": "layerNorm" },
        { "type": "dense", "units": 9 },
    ]})
}

#[test]
fn decoder_transformer_matches_finite_differences() {
    let mut r = Rng::new(21);
    let x = HostTensor::i32(ids(&mut r, 2 * 5, 9), &[2, 5]).unwrap();
    let y = HostTensor::i32(ids(&mut r, 2 * 5, 9), &[2, 5]).unwrap();
    check(gpt_spec(21), cross_entropy(), &x, &y, &[]);
}

#[test]
fn encoder_transformer_with_padding_matches_finite_differences() {
    let mut r = Rng::new(22);
    let spec = json!({ "seed": 22, "layers": [
        { "type": "positionalEncoding", "inputSize": 6 },
        { "type": "multiHeadAttention", "nHeads": 3 },
        { "type": "transformerBlock", "dModel": 6, "nHeads": 2, "ffDim": 10, "dropout": 0.0 },
        { "type": "dense", "units": 4 },
    ]});
    let x = floats(&mut r, &[3, 4, 6], -1.0, 1.0);
    let lengths = HostTensor::i32(vec![4, 2, 1], &[3]).unwrap();
    let y = floats(&mut r, &[3, 4, 4], -1.0, 1.0);
    let mut m = f64_model(spec, mse());
    let input = engram_core::Input { x: &x, lengths: Some(&lengths) };
    // Through the gradient check's closures the input is the plain tensor, so run it with lengths by hand.
    let rng = m.rng_state();
    let (loss, grads) = m.gradients(input, &y, &[]).unwrap();
    assert!(loss.is_finite());
    let params: Vec<(String, candle_core::Var)> = m.params().iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
    let mut pick = Rng::new(5);
    for ((name, var), grad) in params.iter().zip(&grads) {
        let analytic = tensor_values(grad);
        let base = tensor_values(var.as_tensor());
        let set = |v: &[f64]| var.set(&Tensor::from_slice(v, var.dims(), var.device()).unwrap()).unwrap();
        for i in sample(base.len(), &analytic, &mut pick) {
            let mut w = base.clone();
            let mut at = |v: f64| {
                w[i] = v;
                set(&w);
                m.set_rng_state(rng);
                m.evaluate(input, &y, &[]).unwrap().loss
            };
            let numeric = (at(base[i] + H) - at(base[i] - H)) / (2.0 * H);
            set(&base);
            let a = analytic[i];
            let err = (a - numeric).abs() / a.abs().max(numeric.abs()).max(FLOOR);
            assert!(err <= TOL, "{name}[{i}]: analytic {a:e}, numeric {numeric:e}, relative error {err:e}");
        }
    }
}

#[test]
fn transformer_with_dropout_matches_finite_differences_under_fixed_masks() {
    let mut r = Rng::new(23);
    let spec = json!({ "seed": 23, "layers": [
        { "type": "embedding", "vocabSize": 7, "dim": 6 },
        { "type": "positionalEncoding", "dropout": 0.2 },
        { "type": "transformerBlock", "dModel": 6, "nHeads": 2, "ffDim": 8, "dropout": 0.3, "causal": true },
        { "type": "dense", "units": 7 },
    ]});
    let mut m = f64_model(spec, cross_entropy());
    let x = HostTensor::i32(ids(&mut r, 2 * 5, 7), &[2, 5]).unwrap();
    let y = HostTensor::i32(ids(&mut r, 2 * 5, 7), &[2, 5]).unwrap();
    assert_gradients_match(&mut m, &x, &y, &[], Forward::TrainingSameMasks);
}

#[test]
fn every_transformer_parameter_gets_a_nonzero_gradient() {
    let mut r = Rng::new(24);
    let mut m = f64_model(gpt_spec(24), cross_entropy());
    let x = HostTensor::i32(ids(&mut r, 3 * 6, 9), &[3, 6]).unwrap();
    let y = HostTensor::i32(ids(&mut r, 3 * 6, 9), &[3, 6]).unwrap();
    let (_, grads) = m.gradients(&x, &y, &[]).unwrap();
    let names: Vec<String> = m.params().iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(names.len(), 1 + 1 + 2 * 12 + 2 + 2, "{names:?}");
    for want in ["1.weight", "2.self_attn.in_proj_weight", "3.linear2.bias", "3.norm2.weight", "4.bias"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    for (name, g) in names.iter().zip(&grads) {
        let g = tensor_values(g);
        assert!(g.iter().all(|v| v.is_finite()), "{name}: non-finite gradient");
        if name.ends_with("in_proj_weight") {
            // The query, key and value blocks each get their own gradient.
            for (k, block) in g.chunks(g.len() / 3).enumerate() {
                assert!(block.iter().any(|&v| v != 0.0), "{name}: block {k} gets no gradient");
            }
        } else {
            assert!(g.iter().any(|&v| v != 0.0), "{name}: the loss does not reach this parameter");
        }
    }
}
