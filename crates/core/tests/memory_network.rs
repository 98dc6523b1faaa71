//! End-to-End Memory Network: finite-difference gradients in f64 for both tyings, with and without linear
//! start; every parameter gets a gradient; input checks; a tiny task it must learn; checkpoints.

mod common;

use common::Scratch;
use engram_core::{CompileConfig, ErrorKind, HostTensor, MemoryNetwork, MemoryNetworkConfig, Rng};
use serde_json::json;

const V: usize = 12;
const M: usize = 6;
const S: usize = 4;

fn net(extra: serde_json::Value, dtype: &str) -> MemoryNetwork {
    let mut spec = json!({ "vocabSize": V, "sentenceLen": S, "memorySize": M, "embedDim": 5, "hops": 3, "seed": 9, "dtype": dtype });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let config: MemoryNetworkConfig = serde_json::from_value(spec).unwrap();
    let mut m = MemoryNetwork::new(config).unwrap();
    let c: CompileConfig = serde_json::from_value(
        json!({ "optimizer": { "type": "sgd", "learningRate": 0.05 }, "loss": { "type": "crossEntropy" } }),
    )
    .unwrap();
    m.compile(c).unwrap();
    m
}

/// Random stories with `lengths[b]` sentences of 1..=S words (ids 1..V), queries of 2 words, answers.
fn data(rng: &mut Rng, lengths: &[usize]) -> (HostTensor, HostTensor, HostTensor) {
    let b = lengths.len();
    let mut st = vec![0i32; b * M * S];
    let mut q = vec![0i32; b * S];
    let mut a = vec![0i32; b];
    for (bi, &k) in lengths.iter().enumerate() {
        for j in 0..k {
            let words = 1 + (rng.next_u64() as usize % S);
            for w in 0..words {
                st[(bi * M + j) * S + w] = 1 + (rng.next_u64() % (V as u64 - 1)) as i32;
            }
        }
        q[bi * S] = 1 + (rng.next_u64() % (V as u64 - 1)) as i32;
        q[bi * S + 1] = 1 + (rng.next_u64() % (V as u64 - 1)) as i32;
        a[bi] = (rng.next_u64() % V as u64) as i32;
    }
    (HostTensor::i32(st, &[b, M, S]).unwrap(), HostTensor::i32(q, &[b, S]).unwrap(), HostTensor::i32(a, &[b]).unwrap())
}

fn check_gradients(extra: serde_json::Value, linear: bool) {
    let mut m = net(extra.clone(), "float64");
    m.set_linear(linear);
    let mut rng = Rng::new(5);
    let (st, q, a) = data(&mut rng, &[3, 6, 1]);
    let (_, grads) = m.gradients(&st, &q, &a).unwrap();
    let names: Vec<String> = m.trainer().params().iter().map(|(n, _)| n.to_string()).collect();
    let eps = 1e-6;
    for (pi, name) in names.iter().enumerate() {
        let var = m.trainer().params().get(name).unwrap().clone();
        let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let g = grads[pi].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let shape = var.as_tensor().dims().to_vec();
        // The largest gradient entry plus a spread of others.
        let big = (0..g.len()).max_by(|&i, &j| g[i].abs().total_cmp(&g[j].abs())).unwrap();
        let mut picks: Vec<usize> = (0..g.len()).step_by(g.len().div_ceil(6)).collect();
        picks.push(big);
        for i in picks {
            let at = |delta: f64| {
                let mut p = base.clone();
                p[i] += delta;
                var.set(&engram_core::Tensor::from_vec(p, shape.as_slice(), &engram_core::Device::Cpu).unwrap())
                    .unwrap();
                m.evaluate(&st, &q, &a).unwrap().loss
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            at(0.0);
            let err = (numeric - g[i]).abs() / numeric.abs().max(g[i].abs()).max(1e-3);
            assert!(err < 1e-6, "{extra} linear={linear}: {name}[{i}] analytic {} numeric {numeric} (rel {err})", g[i]);
        }
        assert!(g.iter().any(|x| x.abs() > 0.0), "{extra} linear={linear}: {name} got no gradient");
    }
}

#[test]
fn adjacent_tying_gradients_match_finite_differences() {
    check_gradients(json!({}), false);
}

#[test]
fn adjacent_tying_linear_start_gradients_match_finite_differences() {
    check_gradients(json!({}), true);
}

#[test]
fn layerwise_tying_gradients_match_finite_differences() {
    check_gradients(json!({ "weightTying": "layerwise" }), false);
}

#[test]
fn bag_of_words_without_temporal_encoding_gradients_match_finite_differences() {
    check_gradients(json!({ "positionEncoding": false, "temporalEncoding": false, "attendEmpty": false }), false);
}

#[test]
fn parameters_are_named_after_the_paper() {
    let names = |m: &MemoryNetwork| m.trainer().params().iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>();
    assert_eq!(names(&net(json!({}), "float32")), ["A.1", "C.1", "C.2", "C.3", "T_A.1", "T_C.1", "T_C.2", "T_C.3"]);
    assert_eq!(names(&net(json!({ "weightTying": "layerwise" }), "float32")), ["A", "B", "C", "W", "H", "T_A", "T_C"]);
}

#[test]
fn attention_is_a_distribution_over_the_real_sentences_in_every_hop() {
    // Without attendEmpty every hop's weights over the real sentences sum to 1 and padding gets none.
    let m = net(json!({ "attendEmpty": false }), "float32");
    let mut rng = Rng::new(1);
    let (st, q, _) = data(&mut rng, &[2, 5]);
    let att = m.attention(&st, &q).unwrap();
    assert_eq!(att.shape, [3, 2, M]);
    let engram_core::HostData::F32(w) = att.data else { panic!("f32 attention") };
    for hop in 0..3 {
        for (bi, k) in [(0, 2), (1, 5)] {
            let row = &w[(hop * 2 + bi) * M..(hop * 2 + bi + 1) * M];
            assert!((row[..k].iter().sum::<f32>() - 1.0).abs() < 1e-5, "hop {hop} example {bi}: {row:?}");
            assert!(row[k..].iter().all(|&x| x == 0.0), "padding slots got weight: {row:?}");
        }
    }
}

#[test]
fn empty_slots_take_a_share_of_the_softmax_at_score_zero() {
    // With attendEmpty (the default) the M - k empty slots each weigh exp(0) in the softmax, so with the real
    // slots' weights p_i = exp(s_i) / Z, Z = sum exp(s_i) + (M - k): 1 - sum p = (M - k) / Z. A full memory
    // has no empty slot and sums to 1.
    let with = net(json!({}), "float64");
    let without = net(json!({ "attendEmpty": false }), "float64");
    let mut rng = Rng::new(1);
    let (st, q, _) = data(&mut rng, &[2, 5, M]);
    let first_hop = |m: &MemoryNetwork| -> Vec<f64> {
        let att = m.attention(&st, &q).unwrap();
        let engram_core::HostData::F64(w) = att.data else { panic!("f64 attention") };
        w[..3 * M].to_vec()
    };
    let (a, b) = (first_hop(&with), first_hop(&without));
    for (bi, k) in [(0, 2), (1, 5), (2, M)] {
        let (ra, rb) = (&a[bi * M..(bi + 1) * M], &b[bi * M..(bi + 1) * M]);
        // The same scores feed both: the ratios between real slots agree.
        for i in 1..k {
            assert!((ra[i] / ra[0] - rb[i] / rb[0]).abs() < 1e-9, "example {bi}: {ra:?} vs {rb:?}");
        }
        // exp(s_0) = rb[0] * Zb, and Za = Zb + (M - k), so ra[0] = rb[0] * Zb / (Zb + M - k). Solve for Zb and
        // check 1 - sum(ra) = (M - k) / Za.
        let zb = (M - k) as f64 * ra[0] / (rb[0] - ra[0]).max(1e-300);
        let rest = 1.0 - ra[..k].iter().sum::<f64>();
        if k == M {
            assert!(rest.abs() < 1e-12 && (ra[0] - rb[0]).abs() < 1e-12, "a full memory sums to 1: {ra:?}");
        } else {
            assert!((rest - (M - k) as f64 / (zb + (M - k) as f64)).abs() < 1e-9, "example {bi}: {ra:?}");
            assert!(rest > 0.0 && ra[k..].iter().all(|&x| x == 0.0), "example {bi}: {ra:?}");
        }
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let m = net(json!({}), "float32");
    let mut rng = Rng::new(2);
    let (st, q, a) = data(&mut rng, &[2, 3]);
    let wrong = HostTensor::i32(vec![1; 2 * 5 * S], &[2, 5, S]).unwrap();
    let e = m.predict(&wrong, &q).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Range);
    assert!(e.to_string().contains("stories must have shape [batch >= 1, 6, 4], got [2, 5, 4]"), "{e}");
    let floats = HostTensor::f32(vec![1.0; 2 * S], &[2, S]).unwrap();
    assert_eq!(m.predict(&st, &floats).unwrap_err().kind(), ErrorKind::Type);
    let too_big = HostTensor::i32(vec![V as i32; 2 * S], &[2, S]).unwrap();
    let e = m.predict(&st, &too_big).unwrap_err();
    assert!(e.to_string().contains("queries: word ids must be in [0, 12), found 12"), "{e}");
    let empty = HostTensor::i32(vec![0; 2 * M * S], &[2, M, S]).unwrap();
    let e = m.predict(&empty, &q).unwrap_err();
    assert!(e.to_string().contains("stories: example 0 has no sentences"), "{e}");
    let short = HostTensor::i32(vec![1], &[1]).unwrap();
    assert_eq!(m.evaluate(&st, &q, &short).unwrap_err().kind(), ErrorKind::Range);
    let _ = a;
}

/// The answer is the first word of the sentence the query's first word appears in: attention must find it.
#[test]
fn learns_to_look_up_a_fact() {
    let mut m = net(json!({ "embedDim": 16, "hops": 1, "randomNoise": 0.1 }), "float32");
    let c: CompileConfig = serde_json::from_value(
        json!({ "optimizer": { "type": "adam", "learningRate": 0.02 }, "loss": { "type": "crossEntropy" } }),
    )
    .unwrap();
    m.compile(c).unwrap();
    let make = |rng: &mut Rng, n: usize| {
        let mut st = vec![0i32; n * M * S];
        let mut q = vec![0i32; n * S];
        let mut a = vec![0i32; n];
        for bi in 0..n {
            // Sentences "key value" with distinct keys from 1..=5 and values from 6..=11.
            let k = 2 + (rng.next_u64() as usize % (M - 1));
            let mut keys: Vec<i32> = (1..=5).collect();
            for j in 0..k.min(5) {
                let pick = keys.remove(rng.next_u64() as usize % keys.len());
                st[(bi * M + j) * S] = pick;
                st[(bi * M + j) * S + 1] = 6 + (rng.next_u64() % 6) as i32;
            }
            let j = rng.next_u64() as usize % k.min(5);
            q[bi * S] = st[(bi * M + j) * S];
            a[bi] = st[(bi * M + j) * S + 1];
        }
        (HostTensor::i32(st, &[n, M, S]).unwrap(), HostTensor::i32(q, &[n, S]).unwrap(), a)
    };
    let mut rng = Rng::new(11);
    for _ in 0..400 {
        let (st, q, a) = make(&mut rng, 32);
        m.train_step(&st, &q, &HostTensor::i32(a, &[32]).unwrap()).unwrap();
    }
    let (st, q, a) = make(&mut rng, 200);
    let engram_core::HostData::F32(logits) = m.predict(&st, &q).unwrap().data else { panic!() };
    let correct = (0..200)
        .filter(|&i| {
            let row = &logits[i * V..(i + 1) * V];
            let best = (0..V).max_by(|&x, &y| row[x].total_cmp(&row[y])).unwrap();
            best as i32 == a[i]
        })
        .count();
    assert!(correct >= 190, "only {correct}/200 answers right");
}

#[test]
fn checkpoints_round_trip_and_resume_exactly() {
    let dir = Scratch::new("memnet-ckpt");
    let path = dir.join("m.safetensors");
    let mut rng = Rng::new(3);
    let batches: Vec<_> = (0..4).map(|_| data(&mut rng, &[2, 4, 6])).collect();
    let mut straight = net(json!({ "randomNoise": 0.2 }), "float32");
    for (s, q, a) in &batches {
        straight.train_step(s, q, a).unwrap();
    }
    let mut first = net(json!({ "randomNoise": 0.2 }), "float32");
    for (s, q, a) in &batches[..2] {
        first.train_step(s, q, a).unwrap();
    }
    first.set_linear(true);
    engram_core::checkpoint::save(&first, &path).unwrap();
    let mut resumed: MemoryNetwork = engram_core::checkpoint::load(&path, &engram_core::Device::Cpu).unwrap();
    assert!(resumed.is_linear(), "linear start must survive a checkpoint");
    resumed.set_linear(false);
    for (s, q, a) in &batches[2..] {
        resumed.train_step(s, q, a).unwrap();
    }
    assert_eq!(resumed.trainer().weights().unwrap(), straight.trainer().weights().unwrap());
    assert_eq!(engram_core::checkpoint::stored_kind(&path).unwrap(), "memoryNetwork");
    let wrong: Result<engram_core::Sequential, _> = engram_core::checkpoint::load(&path, &engram_core::Device::Cpu);
    assert!(wrong.err().unwrap().to_string().contains("holds a memoryNetwork model, not a sequential"));
}
