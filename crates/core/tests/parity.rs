//! Parity with PyTorch: forward, loss, gradients and optimizer steps against values that
//! `scripts/make-fixtures.py` computed with torch (float32, CPU) and stored in `tests/fixtures/`.
//!
//! Tolerance: every value must satisfy `|engram - torch| <= 1e-5 * max(1, |torch|)`. Both sides compute in
//! float32 (epsilon 1.2e-7) but sum in different orders (candle's GEMMs versus torch's), so exact equality is
//! out of reach. Measured worst cases: 1e-7 for logits, loss and gradients; 3e-6 for AdamW, whose first
//! update `g / (|g| + 1e-8)` amplifies the rounding of gradients of size ~1e-8 (Adam with weight decay adds
//! `wd * p` to such gradients, which damps this). 1e-5 keeps a margin over those and still catches any wrong
//! formula: a wrong gate order, a missed bias or a wrong bias correction shows up at 1e-3 or more.

mod common;

use common::{Fixture, assert_close, compiled, fixture_path, tensor_values, values};
use engram_core::{HostTensor, Sequential};
use serde_json::{Value, json};

const TOL: f64 = 1e-5;
const CE_FIXTURE: &str = "lstm_parity.safetensors";

/// The engram twin of `LstmClassifier` in make-fixtures.py, with the torch weights loaded.
fn classifier(optimizer: Value) -> Sequential {
    let mut m = compiled(
        json!({ "layers": [
            { "type": "embedding", "vocabSize": 11, "dim": 8 },
            { "type": "lstm", "hiddenSize": 16, "numLayers": 2, "returnSequences": true },
            { "type": "dense", "units": 11 },
        ]}),
        optimizer,
        json!({ "type": "crossEntropy", "ignoreIndex": -100 }),
    );
    // The fixture also holds inputs, gradients and stepped weights; load_weights keeps only the model's names.
    m.load_weights(fixture_path(CE_FIXTURE), "").expect("the fixture loads as a state dict");
    m
}

/// Takes `steps` training steps on the fixture batch, then compares every weight with `<tag>.<name>`.
fn assert_steps_match(optimizer: Value, steps: usize, tag: &str) -> Sequential {
    let f = Fixture::open(CE_FIXTURE);
    let mut m = classifier(optimizer);
    for _ in 0..steps {
        m.train_step(&f.i32("input"), &f.i32("target"), &[]).unwrap();
    }
    let want = f.tagged(tag, &m);
    for (name, got) in common::weights(&m) {
        assert_close(&format!("{tag} {name}"), &got, &want[&name], TOL);
    }
    m
}

/// Compares the loss and the gradient of every parameter with the fixture's `loss` and `grad.<name>`.
fn assert_loss_and_gradients_match(m: &mut Sequential, f: &Fixture, x: &HostTensor, y: &HostTensor) {
    let (loss, grads) = m.gradients(x, y, &[]).unwrap();
    assert_close("loss", &[loss], &[f.scalar("loss")], TOL);
    let want = f.tagged("grad", m);
    assert_eq!(grads.len(), want.len());
    for ((name, _), g) in m.params().iter().zip(&grads) {
        assert_close(&format!("grad {name}"), &tensor_values(g), &want[name], TOL);
    }
}

#[test]
fn lstm_classifier_forward_loss_and_gradients_match_pytorch() {
    let f = Fixture::open(CE_FIXTURE);
    let mut m = classifier(json!({ "type": "sgd" }));
    let logits = m.predict(&f.i32("input"), &[]).unwrap();
    assert_eq!(logits.shape, [3, 5, 11]);
    assert_close("logits", &values(&logits), f.values("logits"), TOL);

    assert_loss_and_gradients_match(&mut m, &f, &f.i32("input"), &f.i32("target"));
}

#[test]
fn sgd_nesterov_with_weight_decay_matches_pytorch() {
    let sgd = json!({ "type": "sgd", "learningRate": 0.1, "momentum": 0.9, "nesterov": true, "weightDecay": 0.01 });
    assert_steps_match(sgd, 1, "sgd");
}

#[test]
fn adam_one_and_two_steps_match_pytorch() {
    let adam = json!({ "type": "adam", "learningRate": 0.01, "weightDecay": 0.001 });
    assert_steps_match(adam.clone(), 1, "adam1");
    let m = assert_steps_match(adam, 2, "adam2");
    assert_eq!(m.step_count(), 2);
}

#[test]
fn adamw_step_matches_pytorch() {
    assert_steps_match(json!({ "type": "adamw", "learningRate": 0.01, "weightDecay": 0.1 }), 1, "adamw");
}

#[test]
fn clip_norm_then_sgd_matches_pytorch() {
    let f = Fixture::open(CE_FIXTURE);
    let mut m = classifier(json!({ "type": "sgd", "learningRate": 0.1, "clipNorm": 0.05 }));
    let out = m.train_step(&f.i32("input"), &f.i32("target"), &[]).unwrap();
    // The norm before clipping, as clip_grad_norm_ returns it; it is well above 0.05, so clipping did act.
    assert_close("grad norm", &[out.grad_norm], &[f.scalar("clip.grad_norm")], TOL);
    assert!(out.grad_norm > 0.05 * 2.0, "the fixture should exercise clipping, norm {}", out.grad_norm);
    let want = f.tagged("clip", &m);
    for (name, got) in common::weights(&m) {
        assert_close(&format!("clip {name}"), &got, &want[&name], TOL);
    }
}

#[test]
fn load_weights_strips_a_prefix() {
    let f = Fixture::open(CE_FIXTURE);
    let mut m = classifier(json!({ "type": "sgd" }));
    m.load_weights(fixture_path(CE_FIXTURE), "adamw.").unwrap();
    let want = f.tagged("adamw", &m);
    for (name, got) in common::weights(&m) {
        assert_eq!(got, want[&name], "{name} should be the stored float32 values exactly");
    }
}

#[test]
fn lstm_regressor_last_step_mse_matches_pytorch() {
    let f = Fixture::open("lstm_mse_parity.safetensors");
    let mut m = compiled(
        json!({ "layers": [
            { "type": "lstm", "inputSize": 4, "hiddenSize": 6 },
            { "type": "dense", "units": 3 },
        ]}),
        json!({ "type": "sgd" }),
        json!({ "type": "mse" }),
    );
    m.load_weights(fixture_path("lstm_mse_parity.safetensors"), "").unwrap();
    let out = m.predict(&f.f32("input"), &[]).unwrap();
    assert_eq!(out.shape, [2, 3]);
    assert_close("output", &values(&out), f.values("output"), TOL);
    assert_loss_and_gradients_match(&mut m, &f, &f.f32("input"), &f.f32("target"));
}

/// One case of RECURRENT_CASES in make-fixtures.py: `[recurrent, dense(3)]` on float input `[3, 6, 4]`, MSE.
fn recurrent_case(file: &str, layer: Value) {
    let path = format!("recurrent_{file}.safetensors");
    let f = Fixture::open(&path);
    let mut m = compiled(
        json!({ "layers": [layer, { "type": "dense", "units": 3 }] }),
        json!({ "type": "adam", "learningRate": 0.01 }),
        json!({ "type": "mse" }),
    );
    m.load_weights(fixture_path(&path), "").unwrap();
    let out = m.predict(&f.f32("input"), &[]).unwrap();
    assert_close(&format!("{file} output"), &values(&out), f.values("output"), TOL);
    assert_loss_and_gradients_match(&mut m, &f, &f.f32("input"), &f.f32("target"));
    m.train_step(&f.f32("input"), &f.f32("target"), &[]).unwrap();
    let want = f.tagged("adam1", &m);
    for (name, got) in common::weights(&m) {
        assert_close(&format!("{file} adam1 {name}"), &got, &want[&name], TOL);
    }
}

#[test]
fn bidirectional_two_layer_lstm_matches_pytorch() {
    let l = json!({ "type": "lstm", "inputSize": 4, "hiddenSize": 5, "numLayers": 2, "bidirectional": true, "returnSequences": true });
    recurrent_case("lstm_bi2", l);
}

#[test]
fn gru_stacked_bidirectional_and_last_state_match_pytorch() {
    let gru = |h: usize, layers: usize, bi: bool, seq: bool| json!({ "type": "gru", "inputSize": 4, "hiddenSize": h, "numLayers": layers, "bidirectional": bi, "returnSequences": seq });
    recurrent_case("gru_bi2", gru(5, 2, true, true));
    recurrent_case("gru_last", gru(6, 1, false, false));
    recurrent_case("gru_bi_last", gru(4, 1, true, false));
}

#[test]
fn rnn_tanh_bidirectional_and_relu_stacked_match_pytorch() {
    let tanh =
        json!({ "type": "rnn", "inputSize": 4, "hiddenSize": 5, "bidirectional": true, "returnSequences": true });
    recurrent_case("rnn_tanh_bi", tanh);
    let relu = json!({ "type": "rnn", "inputSize": 4, "hiddenSize": 6, "numLayers": 2, "nonlinearity": "relu" });
    recurrent_case("rnn_relu2_last", relu);
}
