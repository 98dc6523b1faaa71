//! Decoding with a key/value cache: the same tokens as recomputing the whole sequence every step, the same
//! tokens for the same seed, and clear errors for models that cannot decode.

mod common;

use common::{compiled, model, values};
use engram_core::{ErrorKind, GenerateConfig, HostTensor, Sequential};
use serde_json::{Value, json};

fn decoder(max_len: usize, kind: &str) -> Value {
    json!({ "seed": 3, "layers": [
        { "type": "embedding", "vocabSize": 11, "dim": 16 },
        { "type": "positionalEncoding", "kind": kind, "maxLen": max_len },
        { "type": "transformerBlock", "dModel": 16, "nHeads": 4, "ffDim": 32, "normFirst": true, "causal": true,
          "activation": "gelu", "dropout": 0.0 },
        { "type": "transformerBlock", "dModel": 16, "nHeads": 2, "ffDim": 32, "causal": true, "dropout": 0.1 },
        { "type": "multiHeadAttention", "nHeads": 2, "causal": true },
        { "type": "layerNorm" },
        { "type": "dense", "units": 11 },
    ]})
}

fn greedy(n: usize) -> GenerateConfig {
    GenerateConfig { max_tokens: n, temperature: 0.0, top_k: None, seed: 0 }
}

/// The most likely next token after `ids`, from a full forward over (at most the last `window` of) them.
fn next_by_full_forward(m: &Sequential, ids: &[i32]) -> i32 {
    let x = HostTensor::i32(ids.to_vec(), &[1, ids.len()]).unwrap();
    let logits = values(&m.predict(&x, &[]).unwrap());
    let last = &logits[logits.len() - 11..];
    (0..11).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap() as i32
}

#[test]
fn cached_decoding_matches_full_forwards_within_the_context() {
    for kind in ["learned", "sinusoidal"] {
        let m = model(decoder(32, kind));
        let prompt = [1, 5, 2];
        let out = m.generate(&prompt, &greedy(20)).unwrap();
        let mut seq = prompt.to_vec();
        for &tok in &out {
            assert_eq!(tok, next_by_full_forward(&m, &seq), "{kind}: after {seq:?}");
            seq.push(tok);
        }
    }
}

#[test]
fn a_full_context_restarts_from_its_last_half() {
    let m = model(decoder(8, "learned"));
    let prompt = [3, 1, 4, 1, 5];
    let out = m.generate(&prompt, &greedy(12)).unwrap();
    // Replays the documented window: full forwards over what the cache holds at each step.
    let mut seq = prompt.to_vec();
    let mut start = 0;
    for &tok in &out {
        if seq.len() - start > 8 {
            start = seq.len() - 4;
        }
        assert_eq!(tok, next_by_full_forward(&m, &seq[start..]), "after {seq:?} from {start}");
        seq.push(tok);
    }
}

#[test]
fn sampling_is_reproducible_and_respects_top_k() {
    let m = model(decoder(64, "learned"));
    let cfg = GenerateConfig { max_tokens: 40, temperature: 1.5, top_k: Some(3), seed: 9 };
    let a = m.generate(&[2, 7], &cfg).unwrap();
    assert_eq!(a, m.generate(&[2, 7], &cfg).unwrap());
    assert_ne!(a, m.generate(&[2, 7], &GenerateConfig { seed: 10, ..cfg.clone() }).unwrap());
    assert!(a.iter().all(|&t| (0..11).contains(&t)));
    // With topK 1 sampling is greedy whatever the temperature.
    let one = GenerateConfig { top_k: Some(1), ..cfg };
    assert_eq!(m.generate(&[2, 7], &one).unwrap(), m.generate(&[2, 7], &greedy(40)).unwrap());
}

#[test]
fn generate_refuses_models_that_cannot_decode() {
    let not_causal = model(json!({ "layers": [
        { "type": "embedding", "vocabSize": 5, "dim": 4 },
        { "type": "transformerBlock", "dModel": 4, "nHeads": 2 },
        { "type": "dense", "units": 5 },
    ]}));
    let e = not_causal.generate(&[1], &greedy(3)).unwrap_err();
    assert!(e.to_string().contains("causal"), "{e}");
    let recurrent = model(json!({ "layers": [
        { "type": "embedding", "vocabSize": 5, "dim": 4 },
        { "type": "lstm", "hiddenSize": 4, "returnSequences": true },
        { "type": "dense", "units": 5 },
    ]}));
    assert!(recurrent.generate(&[1], &greedy(3)).unwrap_err().to_string().contains("recurrent"));
    let m = compiled(decoder(16, "learned"), json!({ "type": "adam" }), json!({ "type": "crossEntropy" }));
    let e = m.generate(&[1, 11], &greedy(3)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Range);
    assert!(e.to_string().contains("prompt id 11 at index 1"), "{e}");
    assert_eq!(m.generate(&[], &greedy(3)).unwrap_err().kind(), ErrorKind::Range);
    let e = m.generate(&[1], &GenerateConfig { top_k: Some(0), ..greedy(2) }).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Range);
    assert_eq!(m.generate(&[1], &greedy(0)).unwrap(), Vec::<i32>::new());
}
