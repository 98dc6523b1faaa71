//! Parity with PyTorch for the attention layers, in float64: `nn.MultiheadAttention` (no mask, causal, key
//! padding, both), `nn.TransformerEncoderLayer` (post-norm with ReLU, pre-norm with GELU, pre-norm with both
//! masks) and `nn.LayerNorm`. Outputs, attention weights, loss, the gradient of every parameter and one
//! optimizer step, against `scripts/make-fixtures.py`.
//!
//! Tolerance 1e-9 (scaled as in `parity.rs`): both sides compute in f64 and differ only in summation order
//! (~1e-15). The loosest values are the Adam steps of the key bias, whose gradient is pure rounding noise
//! (~1e-18: a constant added to every score of a row cancels in the softmax), which the first Adam update
//! `g / (|g| + eps)` scales to ~1e-12.

mod common;

use common::{Fixture, assert_close, compiled, fixture_path, tensor_values, values, weights};
use engram_core::{HostTensor, Input, Sequential};
use serde_json::{Value, json};

const TOL: f64 = 1e-9;

fn load(spec: Vec<Value>, fixture: &str, prefix: &str, optimizer: Value) -> Sequential {
    let mut m = compiled(json!({ "layers": spec, "dtype": "float64" }), optimizer, json!({ "type": "crossEntropy" }));
    m.load_weights(fixture_path(fixture), prefix).expect("the fixture loads as a state dict");
    m
}

/// Output, loss, gradients and one step of `spec` (whose last layer is the head) against `<tag>.*`.
fn check_case(f: &Fixture, fixture: &str, tag: &str, init: &str, spec: Vec<Value>, optimizer: Value) {
    let x = f.f64("x");
    let lengths = f.i32("lengths");
    let padded = tag.contains("padded") || tag.contains("both") || tag.contains("masked");
    let input = Input { x: &x, lengths: padded.then_some(&lengths) };
    let y = f.i32("y");

    let body = load(spec[..spec.len() - 1].to_vec(), fixture, init, optimizer.clone());
    let out = body.predict(input, &[]).unwrap();
    assert_close(&format!("{tag} out"), &values(&out), f.values(&format!("{tag}.out")), TOL);

    let mut m = load(spec, fixture, init, optimizer);
    let (loss, grads) = m.gradients(input, &y, &[]).unwrap();
    assert_close(&format!("{tag} loss"), &[loss], &[f.scalar(&format!("{tag}.loss"))], TOL);
    let want = f.tagged(&format!("{tag}.grad"), &m);
    for ((name, _), g) in m.params().iter().zip(&grads) {
        let g = tensor_values(g);
        assert_close(&format!("{tag} grad {name}"), &g, &want[name], TOL);
        assert!(g.iter().any(|v| v.abs() > 1e-12), "{tag}: {name} receives no gradient");
    }
    m.train_step(input, &y, &[]).unwrap();
    let want = f.tagged(&format!("{tag}.step"), &m);
    for (name, got) in weights(&m) {
        assert_close(&format!("{tag} step {name}"), &got, &want[&name], TOL);
    }
}

fn mha(causal: bool) -> Vec<Value> {
    vec![
        json!({ "type": "multiHeadAttention", "name": "attn", "nHeads": 3, "dModel": 12, "causal": causal }),
        json!({ "type": "dense", "name": "head", "units": 7 }),
    ]
}

const MHA: &str = "mha_parity.safetensors";
const ADAMW: fn() -> Value = || json!({ "type": "adamw", "learningRate": 0.01, "weightDecay": 0.01 });

#[test]
fn multi_head_attention_matches_pytorch_with_and_without_masks() {
    let f = Fixture::open(MHA);
    for (tag, causal) in [("plain", false), ("causal", true), ("padded", false), ("both", true)] {
        check_case(&f, MHA, tag, "", mha(causal), ADAMW());
    }
}

#[test]
fn attention_weights_match_pytorch() {
    let f = Fixture::open(MHA);
    let (x, lengths) = (f.f64("x"), f.i32("lengths"));
    for (tag, causal) in [("plain", false), ("causal", true), ("padded", false), ("both", true)] {
        let m = load(mha(causal)[..1].to_vec(), MHA, "", ADAMW());
        let lengths = (tag == "padded" || tag == "both").then_some(&lengths);
        let w = m.attention_weights(Input { x: &x, lengths }).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].0, "attn");
        assert_eq!(w[0].1.shape, [2, 3, 5, 5]);
        assert_close(&format!("{tag} attn"), &values(&w[0].1), f.values(&format!("{tag}.attn")), TOL);
    }
}

const ENCODER: &str = "encoder_parity.safetensors";

#[test]
fn transformer_block_matches_pytorch_encoder_layer_in_both_norm_orders() {
    let f = Fixture::open(ENCODER);
    for (tag, norm_first, activation, causal) in [
        ("post_relu", false, "relu", false),
        ("pre_gelu", true, "gelu", false),
        ("pre_gelu_masked", true, "gelu", true),
    ] {
        let spec = vec![
            json!({ "type": "transformerBlock", "name": "block", "dModel": 16, "nHeads": 4, "ffDim": 24,
                    "normFirst": norm_first, "activation": activation, "causal": causal, "dropout": 0.0 }),
            json!({ "type": "dense", "name": "head", "units": 5 }),
        ];
        check_case(&f, ENCODER, tag, &format!("{tag}.init."), spec, json!({ "type": "adam", "learningRate": 0.01 }));
    }
}

#[test]
fn layer_norm_matches_pytorch() {
    let f = Fixture::open("layer_norm_parity.safetensors");
    let mut m = compiled(
        json!({ "layers": [{ "type": "layerNorm", "name": "norm", "inputSize": 10 }], "dtype": "float64" }),
        json!({ "type": "sgd" }),
        json!({ "type": "mse" }),
    );
    m.load_weights(fixture_path("layer_norm_parity.safetensors"), "").unwrap();
    let x = f.f64("x");
    assert_close("out", &values(&m.predict(&x, &[]).unwrap()), f.values("out"), TOL);
    let (loss, grads) = m.gradients(&x, &f.f64("y"), &[]).unwrap();
    assert_close("loss", &[loss], &[f.scalar("loss")], TOL);
    assert_close("grad weight", &tensor_values(&grads[0]), f.values("grad.norm.weight"), TOL);
    assert_close("grad bias", &tensor_values(&grads[1]), f.values("grad.norm.bias"), TOL);

    // The input's gradient, through the kernel directly (a model does not expose it).
    use engram_core::{Device, Tensor};
    let t = |name: &str, shape: &[usize]| Tensor::from_vec(f.values(name).to_vec(), shape, &Device::Cpu).unwrap();
    let xv = candle_core::Var::from_tensor(&t("x", &[3, 4, 10])).unwrap();
    let out =
        engram_core::kernels::norm::layer_norm(&xv, &t("norm.weight", &[10]), &t("norm.bias", &[10]), 1e-5).unwrap();
    let loss = out.sub(&t("y", &[3, 4, 10])).unwrap().sqr().unwrap().mean_all().unwrap();
    let g = loss.backward().unwrap();
    assert_close("grad x", &tensor_values(g.get(&xv).unwrap()), f.values("grad.x"), TOL);
    let _: &HostTensor = &x;
}
