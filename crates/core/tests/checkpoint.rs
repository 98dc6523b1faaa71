//! Checkpoints: what is saved comes back exactly, training resumes as if never stopped, and every kind of
//! unusable file is an `Err` that names the file, never a panic.

mod common;

use std::path::Path;

use common::{Fixture, Scratch, compiled, fixture_path, ids, model, values, weight_bits};
use engram_core::{Error, HostTensor, Rng, Sequential};
use safetensors::SafeTensors;
use serde_json::{Value, json};

fn spec(dtype: &str) -> Value {
    json!({ "seed": 21, "dtype": dtype, "layers": [
        { "type": "embedding", "vocabSize": 10, "dim": 5 },
        { "type": "lstm", "hiddenSize": 7, "numLayers": 2, "dropout": 0.25, "returnSequences": true },
        { "type": "dropout", "rate": 0.2 },
        { "type": "dense", "units": 10, "name": "head" },
    ]})
}

fn batch(rng: &mut Rng) -> (HostTensor, HostTensor) {
    let x = HostTensor::i32(ids(rng, 3 * 6, 10), &[3, 6]).unwrap();
    let y = HostTensor::i32(ids(rng, 3 * 6, 10), &[3, 6]).unwrap();
    (x, y)
}

fn load_err(path: &Path) -> Error {
    match Sequential::load(path) {
        Ok(_) => panic!("{} should not load", path.display()),
        Err(e) => e,
    }
}

/// The error names the file, so a user with many checkpoints knows which one is bad.
fn assert_names_path(e: &Error, path: &Path) {
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "the message should name the file: {msg}");
}

#[test]
fn save_then_load_gives_identical_weights_and_predictions() {
    let dir = Scratch::new("checkpoint_round_trip");
    for dtype in ["float32", "float64"] {
        let m = model(spec(dtype));
        let path = dir.join(format!("{dtype}.safetensors"));
        m.save(&path).unwrap();
        let back = Sequential::load(&path).unwrap();
        assert_eq!(back.config(), m.config());
        assert_eq!(weight_bits(&back), weight_bits(&m), "{dtype}");
        assert_eq!(back.rng_state(), m.rng_state());
        assert!(back.compile_config().is_none(), "an uncompiled model loads uncompiled");
        let x = batch(&mut Rng::new(1)).0;
        assert_eq!(back.predict(&x, &[]).unwrap(), m.predict(&x, &[]).unwrap(), "{dtype}");
    }
    let left = dir.files();
    assert_eq!(left.len(), 2, "no temporary files stay behind: {left:?}");
}

/// Trains `first` steps, saves, loads, trains `then` more; compares with `first + then` steps in one go.
fn assert_resume_is_exact(optimizer: Value, name: &str) {
    let (first, then) = (3, 4);
    let dir = Scratch::new(name);
    let path = dir.join("model.safetensors");
    let loss = json!({ "type": "crossEntropy" });
    let mut data = Rng::new(9);
    let batches: Vec<_> = (0..first + then).map(|_| batch(&mut data)).collect();

    let mut straight = compiled(spec("float32"), optimizer.clone(), loss.clone());
    for (x, y) in &batches {
        straight.train_step(x, y, &[]).unwrap();
    }

    let mut interrupted = compiled(spec("float32"), optimizer, loss);
    for (x, y) in &batches[..first] {
        interrupted.train_step(x, y, &[]).unwrap();
    }
    interrupted.save(&path).unwrap();
    drop(interrupted);
    let mut resumed = Sequential::load(&path).unwrap();
    assert_eq!(resumed.step_count(), first as u64);
    assert!(resumed.compile_config().is_some());
    for (x, y) in &batches[first..] {
        resumed.train_step(x, y, &[]).unwrap();
    }
    assert_eq!(resumed.step_count(), (first + then) as u64);
    // Bit-identical: the optimizer moments, the step count (Adam's bias correction) and the generator that
    // draws the dropout masks must all survive the round trip.
    assert_eq!(weight_bits(&resumed), weight_bits(&straight));
    assert_eq!(resumed.rng_state(), straight.rng_state());
}

#[test]
fn adam_training_resumes_exactly_after_save_and_load() {
    assert_resume_is_exact(json!({ "type": "adam", "learningRate": 0.01 }), "resume_adam");
}

#[test]
fn sgd_momentum_training_resumes_exactly_after_save_and_load() {
    assert_resume_is_exact(json!({ "type": "sgd", "learningRate": 0.1, "momentum": 0.9 }), "resume_sgd");
}

#[test]
fn a_truncated_file_is_an_error() {
    let dir = Scratch::new("checkpoint_truncated");
    let full = dir.join("full.safetensors");
    compiled(spec("float32"), json!({ "type": "adam" }), json!({ "type": "crossEntropy" })).save(&full).unwrap();
    let bytes = std::fs::read(&full).unwrap();
    // Cut inside the length prefix, inside the JSON header, and inside the tensor data.
    for keep in [0, 5, 40, bytes.len() / 2, bytes.len() - 1] {
        let path = dir.join(format!("cut{keep}.safetensors"));
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let e = load_err(&path);
        assert_names_path(&e, &path);
        let mut m = model(spec("float32"));
        let before = weight_bits(&m);
        let e = m.load_weights(&path, "").unwrap_err();
        assert_names_path(&e, &path);
        assert_eq!(weight_bits(&m), before);
    }
}

#[test]
fn a_garbage_file_is_an_error() {
    let dir = Scratch::new("checkpoint_garbage");
    let mut r = Rng::new(3);
    let noise: Vec<u8> = (0..4096).map(|_| r.next_u64() as u8).collect();
    // A plausible length prefix followed by a header that is not JSON, and one claiming an absurd length.
    let mut bad_header = 16u64.to_le_bytes().to_vec();
    bad_header.extend_from_slice(b"{not json at all");
    let huge = u64::MAX.to_le_bytes().to_vec();
    for (name, bytes) in [("noise", noise), ("bad_header", bad_header), ("huge", huge), ("text", b"hello".to_vec())] {
        let path = dir.join(format!("{name}.safetensors"));
        std::fs::write(&path, bytes).unwrap();
        let e = load_err(&path);
        assert_names_path(&e, &path);
        assert!(e.to_string().contains("safetensors"), "{name}: {e}");
    }
}

#[test]
fn a_missing_file_is_an_error() {
    let dir = Scratch::new("checkpoint_missing");
    let path = dir.join("nowhere.safetensors");
    let e = load_err(&path);
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert_names_path(&e, &path);
    let e = model(spec("float32")).load_weights(&path, "").unwrap_err();
    assert_names_path(&e, &path);
}

#[test]
fn a_torch_state_dict_is_not_a_checkpoint() {
    // The parity fixture is a plain state dict written by safetensors.torch: no engram metadata.
    let path = fixture_path("lstm_parity.safetensors");
    let e = load_err(&path);
    assert_names_path(&e, &path);
    assert!(e.to_string().contains("loadWeights"), "the message should point to loadWeights: {e}");
}

#[test]
fn a_checkpoint_with_a_missing_or_broken_part_is_an_error() {
    let dir = Scratch::new("checkpoint_broken");
    let good = dir.join("good.safetensors");
    model(spec("float32")).save(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let meta = SafeTensors::read_metadata(&bytes).unwrap().1.metadata().clone().unwrap();

    // A parameter missing from the file.
    let without: Vec<_> = st.tensors().into_iter().filter(|(n, _)| n != "head.bias").collect();
    let path = dir.join("missing_param.safetensors");
    safetensors::serialize_to_file(without, Some(meta.clone()), &path).unwrap();
    let e = load_err(&path);
    assert_names_path(&e, &path);
    assert!(e.to_string().contains("head.bias"), "{e}");

    // A model spec that no longer parses.
    let mut broken = meta.clone();
    broken.insert("engram.model".into(), "{\"layers\": [{\"type\": \"conv\"}]}".into());
    let path = dir.join("bad_spec.safetensors");
    safetensors::serialize_to_file(st.tensors(), Some(broken), &path).unwrap();
    let e = load_err(&path);
    assert_names_path(&e, &path);
}

#[test]
fn damaged_training_state_is_an_error_not_a_silent_restart() {
    // A step count, generator state or optimizer moment that does not read back would resume a different run
    // (Adam's bias correction and the schedules restart, dropout masks change): each must be reported.
    let dir = Scratch::new("checkpoint_state");
    let good = dir.join("good.safetensors");
    let mut m = compiled(spec("float32"), json!({ "type": "adam" }), json!({ "type": "crossEntropy" }));
    let (x, y) = batch(&mut Rng::new(1));
    m.train_step(&x, &y, &[]).unwrap();
    m.save(&good).unwrap();
    Sequential::load(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let meta = SafeTensors::read_metadata(&bytes).unwrap().1.metadata().clone().unwrap();
    for (key, value, says) in [
        ("engram.optimizer.step", "1x", "engram.optimizer.step"),
        ("engram.rng", "1,2,3", "engram.rng"),
        ("engram.rng", "1,2,3,x", "engram.rng"),
    ] {
        let mut broken = meta.clone();
        broken.insert(key.into(), value.into());
        let path = dir.join("bad_meta.safetensors");
        safetensors::serialize_to_file(st.tensors(), Some(broken), &path).unwrap();
        let e = load_err(&path);
        assert_names_path(&e, &path);
        assert!(e.to_string().contains(says), "{e}");
    }
    let without: Vec<_> = st.tensors().into_iter().filter(|(n, _)| n != "__optimizer__/head.bias/exp_avg_sq").collect();
    assert_eq!(without.len() + 1, st.tensors().len(), "the file holds Adam's moments");
    let path = dir.join("half_moments.safetensors");
    safetensors::serialize_to_file(without, Some(meta), &path).unwrap();
    let e = load_err(&path);
    assert!(e.to_string().contains("optimizer state of head.bias is incomplete"), "{e}");
}

#[test]
fn load_weights_with_a_wrong_shape_fails_and_changes_nothing() {
    // Hidden size 17 instead of the fixture's 16: every LSTM and dense weight has the wrong shape.
    let mut m = model(json!({ "layers": [
        { "type": "embedding", "vocabSize": 11, "dim": 8 },
        { "type": "lstm", "hiddenSize": 17, "numLayers": 2, "returnSequences": true },
        { "type": "dense", "units": 11 },
    ]}));
    let before = weight_bits(&m);
    let path = fixture_path("lstm_parity.safetensors");
    let e = m.load_weights(&path, "").unwrap_err();
    assert_names_path(&e, &path);
    assert!(e.to_string().contains("shape"), "{e}");
    assert_eq!(weight_bits(&m), before, "a failed load must leave every weight as it was");

    // One layer fewer in the file than in the model: a missing parameter, also all or nothing.
    let mut m = model(json!({ "layers": [
        { "type": "embedding", "vocabSize": 11, "dim": 8 },
        { "type": "lstm", "hiddenSize": 16, "numLayers": 2, "returnSequences": true },
        { "type": "dense", "units": 11 },
        { "type": "dense", "units": 2 },
    ]}));
    let before = weight_bits(&m);
    let e = m.load_weights(&path, "").unwrap_err();
    assert!(e.to_string().contains("3.weight"), "{e}");
    assert_eq!(weight_bits(&m), before);

    // And the matching model does load, with the stored values exactly.
    let mut m = model(json!({ "layers": [
        { "type": "embedding", "vocabSize": 11, "dim": 8 },
        { "type": "lstm", "hiddenSize": 16, "numLayers": 2, "returnSequences": true },
        { "type": "dense", "units": 11 },
    ]}));
    m.load_weights(&path, "").unwrap();
    let f = Fixture::open("lstm_parity.safetensors");
    for (name, t) in m.weights().unwrap() {
        assert_eq!(values(&t), f.values(&name), "{name}");
    }
}

#[test]
fn concurrent_saves_to_one_path_leave_a_whole_file() {
    // The binding saves on worker threads; two saves to one path must not interleave their bytes.
    let dir = Scratch::new("checkpoint_concurrent");
    let path = dir.join("model.safetensors");
    let models: Vec<Sequential> = (0..4u64)
        .map(|s| {
            let mut sp = spec("float32");
            sp["seed"] = json!(s);
            model(sp)
        })
        .collect();
    std::thread::scope(|scope| {
        for m in &models {
            let path = &path;
            scope.spawn(move || {
                for _ in 0..25 {
                    m.save(path).expect("every save succeeds");
                }
            });
        }
    });
    let left = dir.files();
    assert_eq!(left, ["model.safetensors"], "no temporary files stay behind");
    let back = Sequential::load(&path).expect("the file is one whole checkpoint");
    assert!(models.iter().any(|m| weight_bits(m) == weight_bits(&back)));
}

#[test]
fn a_changed_learning_rate_survives_save_and_load() {
    // Schedules change the rate after compile; a resumed run must go on with the changed rate.
    let dir = Scratch::new("checkpoint_lr");
    let path = dir.join("model.safetensors");
    let mut data = Rng::new(4);
    let batches: Vec<_> = (0..4).map(|_| batch(&mut data)).collect();
    let start = || {
        let mut m = compiled(
            spec("float32"),
            json!({ "type": "adam", "learningRate": 0.01 }),
            json!({ "type": "crossEntropy" }),
        );
        m.set_learning_rate(0.002).unwrap();
        m
    };
    let mut straight = start();
    for (x, y) in &batches {
        straight.train_step(x, y, &[]).unwrap();
    }
    let mut first = start();
    for (x, y) in &batches[..2] {
        first.train_step(x, y, &[]).unwrap();
    }
    first.save(&path).unwrap();
    let mut resumed = Sequential::load(&path).unwrap();
    for (x, y) in &batches[2..] {
        resumed.train_step(x, y, &[]).unwrap();
    }
    assert_eq!(weight_bits(&resumed), weight_bits(&straight));
}
