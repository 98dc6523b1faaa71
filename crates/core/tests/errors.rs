//! Bad input at the core's boundary: each mistake a caller can make is an `Err` of the right kind
//! (`Type` for a wrong kind of value, `Range` for a value or shape outside what is allowed, `Other` for state
//! and files) whose message says what was expected, never a panic and never a silent wrong answer.

mod common;

use common::{compiled, model};
use engram_core::{CompileConfig, ErrorKind, HostData, HostTensor, InitialState, LayerSpec, Result, SequentialConfig};
use serde_json::{Value, json};

/// The kind and message of an error that must happen.
fn err<T: std::fmt::Debug>(r: Result<T>) -> (ErrorKind, String) {
    let e = r.expect_err("this call must fail");
    (e.kind(), e.to_string())
}

fn assert_err<T: std::fmt::Debug>(r: Result<T>, kind: ErrorKind, mentions: &str) {
    let (k, msg) = err(r);
    assert_eq!(k, kind, "wrong kind for: {msg}");
    assert!(msg.contains(mentions), "the message should mention {mentions:?}: {msg}");
}

fn ids(v: Vec<i32>, shape: &[usize]) -> HostTensor {
    HostTensor::i32(v, shape).unwrap()
}

fn floats(v: Vec<f32>, shape: &[usize]) -> HostTensor {
    HostTensor::f32(v, shape).unwrap()
}

fn classifier() -> engram_core::Sequential {
    compiled(
        json!({ "layers": [
            { "type": "embedding", "vocabSize": 5, "dim": 3 },
            { "type": "lstm", "hiddenSize": 4 },
            { "type": "dense", "units": 5 },
        ]}),
        json!({ "type": "sgd" }),
        json!({ "type": "crossEntropy" }),
    )
}

fn regressor() -> engram_core::Sequential {
    compiled(
        json!({ "layers": [
            { "type": "lstm", "inputSize": 2, "hiddenSize": 4, "returnSequences": true },
            { "type": "dense", "units": 1 },
        ]}),
        json!({ "type": "adam" }),
        json!({ "type": "mse" }),
    )
}

#[test]
fn float_ids_for_an_embedding_are_a_type_error() {
    let m = classifier();
    assert_err(m.predict(&floats(vec![1.0; 6], &[2, 3]), &[]), ErrorKind::Type, "int32");
}

#[test]
fn int_features_for_a_float_model_are_a_type_error() {
    let m = regressor();
    assert_err(m.predict(&ids(vec![1; 6], &[1, 3, 2]), &[]), ErrorKind::Type, "float");
}

#[test]
fn ids_outside_the_vocabulary_are_a_range_error() {
    let m = classifier();
    assert_err(m.predict(&ids(vec![0, 1, 5], &[1, 3]), &[]), ErrorKind::Range, "[0, 5)");
    assert_err(m.predict(&ids(vec![0, -1, 2], &[1, 3]), &[]), ErrorKind::Range, "-1");
}

#[test]
fn non_finite_features_are_a_range_error() {
    let m = regressor();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut v = vec![0.5; 6];
        v[3] = bad;
        assert_err(m.predict(&floats(v, &[1, 3, 2]), &[]), ErrorKind::Range, "finite");
    }
    let mut m = regressor();
    let x = floats(vec![0.5; 6], &[1, 3, 2]);
    let y = floats(vec![0.0, f32::NAN, 0.0], &[1, 3, 1]);
    assert_err(m.train_step(&x, &y, &[]), ErrorKind::Range, "finite");
}

#[test]
fn a_batch_mismatch_between_x_and_y_is_a_range_error() {
    let mut m = classifier();
    let x = ids(vec![0; 6], &[2, 3]);
    let y = ids(vec![0; 3], &[3]);
    assert_err(m.train_step(&x, &y, &[]), ErrorKind::Range, "batch");
    assert_err(m.evaluate(&x, &y, &[]), ErrorKind::Range, "batch");
    assert_err(m.gradients(&x, &y, &[]), ErrorKind::Range, "batch");
}

#[test]
fn a_wrong_rank_or_size_is_a_range_error() {
    let c = classifier();
    assert_err(c.predict(&ids(vec![0; 6], &[1, 2, 3]), &[]), ErrorKind::Range, "[batch, seqLen]");
    assert_err(c.predict(&ids(vec![0; 3], &[3]), &[]), ErrorKind::Range, "[batch, seqLen]");
    let r = regressor();
    assert_err(r.predict(&floats(vec![0.0; 6], &[3, 2]), &[]), ErrorKind::Range, "lstm");
    assert_err(r.predict(&floats(vec![0.0; 9], &[1, 3, 3]), &[]), ErrorKind::Range, "lstm");
    assert_err(r.predict(&floats(vec![], &[0, 3, 2]), &[]), ErrorKind::Range, "batch");
    let d = model(json!({ "layers": [{ "type": "dense", "inputSize": 3, "units": 2 }] }));
    assert_err(d.predict(&floats(vec![0.0; 3], &[3]), &[]), ErrorKind::Range, "dense");
    // A shape that does not match the data is caught before any model sees it.
    assert_err(HostTensor::f32(vec![0.0; 5], &[2, 3]), ErrorKind::Range, "6 values");
}

#[test]
fn wrong_targets_are_errors_of_the_right_kind() {
    let mut c = classifier();
    let x = ids(vec![0, 1, 2, 3, 4, 0], &[2, 3]);
    assert_err(c.train_step(&x, &ids(vec![0, 5], &[2]), &[]), ErrorKind::Range, "[0, 5)");
    assert_err(c.train_step(&x, &floats(vec![0.0, 1.0], &[2]), &[]), ErrorKind::Type, "int32");
    assert_err(c.train_step(&x, &ids(vec![0; 4], &[2, 2]), &[]), ErrorKind::Range, "y");
    let mut r = regressor();
    let x = floats(vec![0.0; 12], &[2, 3, 2]);
    assert_err(r.train_step(&x, &floats(vec![0.0; 4], &[2, 2]), &[]), ErrorKind::Range, "mse");
    assert_err(r.train_step(&x, &ids(vec![0; 2], &[2, 1]), &[]), ErrorKind::Type, "float");
}

#[test]
fn bad_initial_states_are_errors() {
    let r = regressor();
    let x = floats(vec![0.0; 6], &[1, 3, 2]);
    let state = |layer: &str, shape: &[usize]| InitialState {
        layer: layer.into(),
        h: floats(vec![0.0; shape.iter().product()], shape),
        c: Some(floats(vec![0.0; shape.iter().product()], shape)),
    };
    assert!(r.predict(&x, &[state("0", &[1, 1, 4])]).is_ok());
    let no_c = InitialState { c: None, ..state("0", &[1, 1, 4]) };
    assert_err(r.predict(&x, &[no_c]), ErrorKind::Type, "both h and c");
    assert_err(r.predict(&x, &[state("0", &[1, 2, 4])]), ErrorKind::Range, "h0");
    assert_err(r.predict(&x, &[state("7", &[1, 1, 4])]), ErrorKind::Range, "no layer");
    assert_err(r.predict(&x, &[state("1", &[1, 1, 4])]), ErrorKind::Type, "recurrent");
}

#[test]
fn bad_recurrent_specs_and_states_are_errors() {
    let rnn = |extra: serde_json::Value| {
        let mut l = json!({ "type": "gru", "inputSize": 2, "hiddenSize": 3 });
        for (k, v) in extra.as_object().unwrap() {
            l[k] = v.clone();
        }
        engram_core::Sequential::new(serde_json::from_value(json!({ "layers": [l] })).unwrap())
    };
    assert_err(rnn(json!({ "nonlinearity": "relu" })).map(|_| ()), ErrorKind::Type, "rnn layers only");
    assert_err(rnn(json!({ "hiddenSize": 0 })).map(|_| ()), ErrorKind::Range, "hiddenSize");
    let bad: std::result::Result<SequentialConfig, _> =
        serde_json::from_value(json!({ "layers": [{ "type": "rnn", "hiddenSize": 3, "nonlinearity": "sigmoid" }] }));
    assert!(bad.unwrap_err().to_string().contains("unknown variant `sigmoid`"));
    // A GRU state is h only, [numLayers * 2, batch, hidden] when bidirectional.
    let m = rnn(json!({ "bidirectional": true })).unwrap();
    let x = floats(vec![0.0; 6], &[1, 3, 2]);
    let h = |n: usize| floats(vec![0.0; n * 3], &[n, 1, 3]);
    assert!(m.predict(&x, &[InitialState { layer: "0".into(), h: h(2), c: None }]).is_ok());
    assert_err(
        m.predict(&x, &[InitialState { layer: "0".into(), h: h(1), c: None }]),
        ErrorKind::Range,
        "numLayers * 2",
    );
    assert_err(m.predict(&x, &[InitialState { layer: "0".into(), h: h(2), c: Some(h(2)) }]), ErrorKind::Type, "h only");
}

#[test]
fn training_before_compile_is_an_error() {
    let mut m = model(json!({ "layers": [{ "type": "dense", "inputSize": 2, "units": 1 }] }));
    let x = floats(vec![0.0; 2], &[1, 2]);
    let y = floats(vec![0.0], &[1, 1]);
    assert_err(m.train_step(&x, &y, &[]), ErrorKind::Other, "compile");
    assert_err(m.evaluate(&x, &y, &[]), ErrorKind::Other, "compile");
    assert_err(m.gradients(&x, &y, &[]), ErrorKind::Other, "compile");
    assert_err(m.set_learning_rate(0.1), ErrorKind::Other, "compile");
    assert!(m.predict(&x, &[]).is_ok(), "inference needs no compile");
}

#[test]
fn a_non_finite_loss_leaves_the_weights_unchanged() {
    let mut m = compiled(
        json!({ "layers": [{ "type": "dense", "inputSize": 2, "units": 1 }] }),
        json!({ "type": "sgd" }),
        json!({ "type": "mse" }),
    );
    // Finite weights whose output squares to infinity in float32.
    let huge = vec![("0.weight".to_string(), floats(vec![1e30, 1e30], &[1, 2]))];
    m.set_weights(&huge, false).unwrap();
    let before = m.weights().unwrap();
    let x = floats(vec![1.0, 1.0], &[1, 2]);
    let y = floats(vec![0.0], &[1, 1]);
    assert_err(m.train_step(&x, &y, &[]), ErrorKind::Range, "loss");
    assert_eq!(m.weights().unwrap(), before);
    assert_eq!(m.step_count(), 0);
}

#[test]
fn bad_weights_are_rejected_whole() {
    let mut m = model(json!({ "layers": [{ "type": "dense", "inputSize": 2, "units": 1 }] }));
    let before = m.weights().unwrap();
    let good = ("0.bias".to_string(), floats(vec![3.0], &[1]));
    for (bad, kind, mentions) in [
        (("0.weight".to_string(), floats(vec![f32::NAN, 0.0], &[1, 2])), ErrorKind::Range, "finite"),
        (("0.weight".to_string(), floats(vec![0.0; 3], &[1, 3])), ErrorKind::Range, "0.weight"),
        (("0.weights".to_string(), floats(vec![0.0; 2], &[1, 2])), ErrorKind::Range, "0.weights"),
        (("0.weight".to_string(), ids(vec![0; 2], &[1, 2])), ErrorKind::Type, "float"),
    ] {
        assert_err(m.set_weights(&[good.clone(), bad], false), kind, mentions);
        assert_eq!(m.weights().unwrap(), before, "a rejected call changes nothing, not even 0.bias");
    }
    assert_err(m.set_weights(&[good], true), ErrorKind::Range, "missing");
    assert_eq!(m.weights().unwrap(), before);
}

fn parse_model(spec: Value) -> std::result::Result<SequentialConfig, String> {
    serde_json::from_value(spec).map_err(|e| e.to_string())
}

#[test]
fn unknown_layer_types_and_option_names_are_rejected() {
    let layer = |l: Value| parse_model(json!({ "layers": [l] }));
    let e = layer(json!({ "type": "conv2d", "filters": 3 })).unwrap_err();
    assert!(e.contains("conv2d"), "{e}");
    // A misspelt option must not be dropped silently, in every variant of the internally tagged enum.
    for (spec, typo) in [
        (json!({ "type": "lstm", "hiddenSise": 4, "hiddenSize": 4 }), "hiddenSise"),
        (json!({ "type": "dense", "units": 2, "inputSize": 3, "activaton": "relu" }), "activaton"),
        (json!({ "type": "embedding", "vocabSize": 5, "dim": 2, "dims": 2 }), "dims"),
        (json!({ "type": "dropout", "rate": 0.1, "p": 0.1 }), "p"),
    ] {
        let e = layer(spec).unwrap_err();
        assert!(e.contains(&format!("unknown field `{typo}`")), "{e}");
    }
    let e = parse_model(json!({ "layers": [], "sed": 1 })).unwrap_err();
    assert!(e.contains("unknown field `sed`"), "{e}");
    let e = layer(json!({ "type": "dense", "units": 2, "activation": "gelu" })).unwrap_err();
    assert!(e.contains("gelu"), "{e}");
    let e = layer(json!({ "hiddenSize": 4 })).unwrap_err();
    assert!(e.contains("type"), "{e}");
    // The same spec without the typo parses, and serialises back to what parses again.
    let ok = layer(json!({ "type": "lstm", "hiddenSize": 4, "inputSize": 2 })).unwrap();
    let again: SequentialConfig = serde_json::from_str(&serde_json::to_string(&ok).unwrap()).unwrap();
    assert_eq!(again, ok);
    assert!(matches!(ok.layers[0], LayerSpec::Lstm(_)));
}

#[test]
fn unknown_compile_options_are_rejected() {
    let compile = |optimizer: Value, loss: Value| {
        serde_json::from_value::<CompileConfig>(json!({ "optimizer": optimizer, "loss": loss }))
            .map_err(|e| e.to_string())
    };
    let sgd = json!({ "type": "sgd" });
    let mse = json!({ "type": "mse" });
    for (optimizer, loss, typo) in [
        (json!({ "type": "adam", "learningrate": 0.1 }), mse.clone(), "learningrate"),
        (sgd.clone(), json!({ "type": "mse", "reduction": "sum" }), "reduction"),
        (sgd.clone(), json!({ "type": "crossEntropy", "ignoreIdx": 0 }), "ignoreIdx"),
    ] {
        let e = compile(optimizer, loss).unwrap_err();
        assert!(e.contains(&format!("unknown field `{typo}`")), "{e}");
    }
    assert!(compile(json!({ "type": "rmsprop" }), mse.clone()).unwrap_err().contains("rmsprop"));
    assert!(compile(sgd, json!({ "type": "huber" })).unwrap_err().contains("huber"));
}

#[test]
fn invalid_specs_are_errors_when_the_model_is_built() {
    let build = |spec: Value| {
        let config: SequentialConfig = serde_json::from_value(spec).unwrap();
        engram_core::Sequential::new(config).map(|_| ())
    };
    assert_err(build(json!({ "layers": [] })), ErrorKind::Range, "at least one layer");
    assert_err(
        build(json!({ "layers": [{ "type": "lstm", "inputSize": 2, "hiddenSize": 0 }] })),
        ErrorKind::Range,
        "hiddenSize",
    );
    assert_err(
        build(json!({ "layers": [{ "type": "lstm", "inputSize": 2, "hiddenSize": 3, "dropout": 1.0 }] })),
        ErrorKind::Range,
        "rate",
    );
    assert_err(build(json!({ "layers": [{ "type": "dense", "units": 2 }] })), ErrorKind::Type, "inputSize");
    assert_err(
        build(json!({ "layers": [
            { "type": "dense", "inputSize": 2, "units": 3 },
            { "type": "embedding", "vocabSize": 4, "dim": 2 },
        ]})),
        ErrorKind::Type,
        "first layer",
    );
    assert_err(
        build(json!({ "layers": [
            { "type": "lstm", "inputSize": 2, "hiddenSize": 3 },
            { "type": "lstm", "hiddenSize": 3 },
        ]})),
        ErrorKind::Type,
        "returnSequences",
    );
    assert_err(
        build(json!({ "layers": [
            { "type": "dense", "inputSize": 2, "units": 3, "name": "a" },
            { "type": "dense", "units": 3, "name": "a" },
        ]})),
        ErrorKind::Range,
        "twice",
    );
}

#[test]
fn invalid_optimizer_settings_are_errors_at_compile() {
    let mut m = model(json!({ "layers": [{ "type": "dense", "inputSize": 2, "units": 1 }] }));
    let mut compile = |optimizer: Value| {
        let c: CompileConfig =
            serde_json::from_value(json!({ "optimizer": optimizer, "loss": { "type": "mse" } })).unwrap();
        m.compile(c)
    };
    assert_err(compile(json!({ "type": "adam", "momentum": 0.9 })), ErrorKind::Type, "momentum");
    assert_err(compile(json!({ "type": "sgd", "beta1": 0.9 })), ErrorKind::Type, "beta1");
    assert_err(compile(json!({ "type": "sgd", "learningRate": -1.0 })), ErrorKind::Range, "learningRate");
    assert_err(compile(json!({ "type": "adam", "beta2": 1.0 })), ErrorKind::Range, "beta2");
    assert_err(compile(json!({ "type": "sgd", "nesterov": true })), ErrorKind::Range, "nesterov");
    assert_err(compile(json!({ "type": "adamw", "clipNorm": 0.0 })), ErrorKind::Range, "clipNorm");
}

#[test]
fn f64_host_data_is_accepted_for_a_float32_model() {
    // The binding may hand over a Float64Array; it is converted, not rejected.
    let m = regressor();
    let x = HostTensor::new(HostData::F64(vec![0.25; 6]), vec![1, 3, 2]).unwrap();
    assert_eq!(m.predict(&x, &[]).unwrap().shape, [1, 3, 1]);
}

#[test]
fn an_empty_axis_is_a_range_error() {
    // A zero-length sequence through a dense-only model used to reach the losses and underflow there.
    let x = floats(vec![], &[2, 0, 3]);
    let dense = json!({ "layers": [{ "type": "dense", "inputSize": 3, "units": 4 }] });
    let mut ce = compiled(dense.clone(), json!({ "type": "sgd" }), json!({ "type": "crossEntropy" }));
    assert_err(ce.train_step(&x, &ids(vec![1, 2], &[2]), &[]), ErrorKind::Range, "empty axis");
    let mut mse = compiled(dense, json!({ "type": "sgd" }), json!({ "type": "mse" }));
    assert_err(mse.train_step(&x, &floats(vec![0.0; 8], &[2, 4]), &[]), ErrorKind::Range, "empty axis");
    assert_err(mse.predict(&floats(vec![], &[0, 3]), &[]), ErrorKind::Range, "batch");
    assert_err(classifier().predict(&ids(vec![], &[2, 0]), &[]), ErrorKind::Range, "empty axis");
}

#[test]
fn integer_tensors_come_back_as_integers() {
    // An int32 tensor in a state dict must not turn into float weights on the way in.
    let t = engram_core::Tensor::new(&[1i32, -2, 3], &engram_core::Device::Cpu).unwrap();
    assert_eq!(HostTensor::from_tensor(&t).unwrap().data, HostData::I32(vec![1, -2, 3]));
    let mut m = model(json!({ "layers": [{ "type": "dense", "inputSize": 3, "units": 1, "useBias": false }] }));
    let w = HostTensor::from_tensor(&t.reshape((1, 3)).unwrap()).unwrap();
    assert_err(m.set_weights(&[("0.weight".into(), w)], true), ErrorKind::Type, "float");
}

#[test]
fn more_layers_than_any_model_has_are_a_range_error() {
    let dropout = json!({ "type": "dropout", "rate": 0.1 });
    let cfg: SequentialConfig = serde_json::from_value(json!({ "layers": vec![dropout; 10_001] })).unwrap();
    let r = engram_core::Sequential::new(cfg).map(|_| ());
    assert_err(r, ErrorKind::Range, "sequential: the number of layers must be at most 10000, got 10001");
}

#[test]
fn ten_thousand_layers_build_with_every_parameter_counted() {
    // Parameters are counted as they are added (no sum over all of them per layer); the count must still be
    // exact at the largest number of layers allowed.
    let dense = json!({ "type": "dense", "units": 2 });
    let mut layers = vec![json!({ "type": "dense", "units": 2, "inputSize": 2 })];
    layers.extend(std::iter::repeat_n(dense, 9_999));
    let cfg: SequentialConfig = serde_json::from_value(json!({ "layers": layers })).unwrap();
    let m = engram_core::Sequential::new(cfg).unwrap();
    assert_eq!(m.param_count(), 10_000 * 6);
}
