//! Clipping semantics and optimizer state in checkpoints.

mod common;

use std::collections::HashMap;

use common::{Scratch, compiled};
use engram_core::{HostTensor, Tensor};
use serde_json::json;

fn dense_model(optimizer: serde_json::Value) -> engram_core::Sequential {
    compiled(
        json!({ "layers": [{ "type": "dense", "inputSize": 3, "units": 2 }], "seed": 4 }),
        optimizer,
        json!({ "type": "mse" }),
    )
}

fn batch() -> (HostTensor, HostTensor) {
    let x = HostTensor::f32(vec![3.0, -2.0, 1.0, 0.5, 4.0, -3.0], &[2, 3]).unwrap();
    // Targets far from the output make large gradients, so both clips bite.
    let y = HostTensor::f32(vec![40.0, -40.0, 35.0, -30.0], &[2, 2]).unwrap();
    (x, y)
}

fn weights(m: &engram_core::Sequential) -> Vec<f32> {
    m.weights()
        .unwrap()
        .into_iter()
        .flat_map(|(_, t)| match t.data {
            engram_core::HostData::F32(v) => v,
            _ => panic!("f32 weights expected"),
        })
        .collect()
}

#[test]
fn grad_norm_is_reported_before_any_clipping() {
    let (x, y) = batch();
    let mut plain = dense_model(json!({ "type": "sgd", "learningRate": 1.0 }));
    let mut by_value = dense_model(json!({ "type": "sgd", "learningRate": 1.0, "clipValue": 0.01 }));
    let mut by_norm = dense_model(json!({ "type": "sgd", "learningRate": 1.0, "clipNorm": 0.01 }));
    let before = weights(&plain);
    let a = plain.train_step(&x, &y, &[]).unwrap();
    let b = by_value.train_step(&x, &y, &[]).unwrap();
    let c = by_norm.train_step(&x, &y, &[]).unwrap();
    assert!(a.grad_norm > 1.0, "the batch should give a large gradient, got {}", a.grad_norm);
    assert!((a.grad_norm - b.grad_norm).abs() < 1e-9 && (a.grad_norm - c.grad_norm).abs() < 1e-9);
    // With lr 1, each update is minus the clipped gradient.
    let moved = |m: &engram_core::Sequential| -> Vec<f32> {
        weights(m).iter().zip(&before).map(|(w, b)| w - b).collect::<Vec<f32>>()
    };
    let dv = moved(&by_value);
    assert!(dv.iter().all(|d| d.abs() <= 0.01 + 1e-6), "value clip exceeded: {dv:?}");
    assert!(dv.iter().any(|d| (d.abs() - 0.01).abs() < 1e-6), "value clip never reached: {dv:?}");
    let norm: f32 = moved(&by_norm).iter().map(|d| d * d).sum::<f32>().sqrt();
    assert!((norm - 0.01).abs() < 1e-5, "norm clip gave an update of norm {norm}");
}

#[test]
fn a_checkpoint_whose_optimizer_state_has_the_wrong_shape_is_rejected() {
    let dir = Scratch::new("slot-shape");
    let path = dir.join("m.safetensors");
    let (x, y) = batch();
    let mut m = dense_model(json!({ "type": "adam", "learningRate": 0.01 }));
    m.train_step(&x, &y, &[]).unwrap();
    m.save(&path).unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).unwrap();
    assert!(st.names().iter().any(|n| n.ends_with("0.weight/exp_avg")));
    tensors.insert(
        "__optimizer__/0.weight/exp_avg".into(),
        Tensor::zeros((5, 5), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    let forged =
        safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), header.metadata().clone()).unwrap();
    std::fs::write(&path, forged).unwrap();

    let err = engram_core::Sequential::load(&path).err().expect("a forged slot must not load");
    let msg = err.to_string();
    assert!(msg.contains("optimizer state 0.weight/exp_avg has shape [5, 5], the parameter [2, 3]"), "{msg}");
}

#[test]
fn cross_entropy_sum_reduction_is_the_mean_times_the_counted_targets() {
    let spec = json!({ "layers": [{ "type": "embedding", "vocabSize": 5, "dim": 3 }, { "type": "dense", "units": 5 }], "seed": 2 });
    let opt = json!({ "type": "sgd" });
    let mean = compiled(spec.clone(), opt.clone(), json!({ "type": "crossEntropy" }));
    let sum = compiled(spec, opt, json!({ "type": "crossEntropy", "reduction": "sum" }));
    let x = HostTensor::i32(vec![1, 2, 3, 4, 0, 1], &[2, 3]).unwrap();
    // One target ignored: five count.
    let y = HostTensor::i32(vec![2, -100, 4, 0, 1, 3], &[2, 3]).unwrap();
    let (m, s) = (mean.evaluate(&x, &y, &[]).unwrap().loss, sum.evaluate(&x, &y, &[]).unwrap().loss);
    assert!((s - 5.0 * m).abs() < 1e-5 * s.abs(), "sum {s} vs 5 x mean {m}");
}

#[test]
fn excluded_parameters_get_no_weight_decay() {
    use engram_core::HostTensor;
    let spec = serde_json::json!({ "seed": 4, "layers": [
        { "type": "embedding", "vocabSize": 6, "dim": 4 },
        { "type": "transformerBlock", "dModel": 4, "nHeads": 2, "ffDim": 8, "dropout": 0.0, "causal": true },
        { "type": "dense", "units": 6 },
    ]});
    let step = |opt: serde_json::Value| {
        let mut m = common::compiled(spec.clone(), opt, serde_json::json!({ "type": "crossEntropy" }));
        let x = HostTensor::i32(vec![1, 2, 3, 4, 5, 0], &[2, 3]).unwrap();
        let y = HostTensor::i32(vec![2, 3, 4, 5, 0, 1], &[2, 3]).unwrap();
        m.train_step(&x, &y, &[]).unwrap();
        common::weight_bits(&m)
    };
    let excluded = step(serde_json::json!({ "type": "adamw", "weightDecay": 0.5,
        "excludeFromWeightDecay": ["bias", "norm"] }));
    let decayed = step(serde_json::json!({ "type": "adamw", "weightDecay": 0.5 }));
    let plain = step(serde_json::json!({ "type": "adamw", "weightDecay": 0.0 }));
    let (mut counts, mut spared) = ((0, 0), 0);
    for (name, bits) in &excluded {
        if name.contains("bias") || name.contains("norm") {
            assert_eq!(bits, &plain[name], "{name} was decayed");
            // Zero-initialised biases decay to themselves; the norms' unit weights do not.
            spared += usize::from(bits != &decayed[name]);
            counts.0 += 1;
        } else {
            assert_eq!(bits, &decayed[name], "{name} was not decayed");
            counts.1 += 1;
        }
    }
    assert_eq!(counts, (9, 6), "excluded and decayed parameter counts");
    assert!(spared >= 2, "the decay would have changed only {spared} excluded parameters");
    let bad: Result<engram_core::CompileConfig, _> = serde_json::from_value(serde_json::json!({
        "optimizer": { "type": "adamw", "excludeFromWeightDecay": [""] }, "loss": { "type": "crossEntropy" } }));
    let mut m = common::model(spec.clone());
    let e = m.compile(bad.unwrap()).unwrap_err();
    assert!(e.to_string().contains("empty string"), "{e}");
}
