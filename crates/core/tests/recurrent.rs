//! Recurrent layers over padded batches: with `lengths` (or a `maskZero` embedding) each row gives exactly what
//! it gives alone, whatever the padding holds; bad lengths are clear errors.

mod common;

use common::{model, uniform, values};
use engram_core::{ErrorKind, HostTensor, Input, Rng};
use serde_json::json;

const T: usize = 6;
const F: usize = 3;
const LENGTHS: [usize; 3] = [6, 4, 1];

/// `[3, T, F]` with garbage in the padding, and row i alone, `[1, LENGTHS[i], F]`.
fn batch(rng: &mut Rng) -> (HostTensor, Vec<HostTensor>) {
    let data = uniform(rng, 3 * T * F, -1.0, 1.0);
    let rows = (0..3)
        .map(|i| {
            let row = data[i * T * F..(i * T + LENGTHS[i]) * F].to_vec();
            HostTensor::f64(row, &[1, LENGTHS[i], F]).unwrap()
        })
        .collect();
    (HostTensor::f64(data, &[3, T, F]).unwrap(), rows)
}

fn close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-12, "{what}[{k}]: {g} vs {w}");
    }
}

#[test]
fn padded_rows_give_what_each_row_gives_alone() {
    let lengths = HostTensor::i32(LENGTHS.iter().map(|&n| n as i32).collect(), &[3]).unwrap();
    for kind in ["lstm", "gru", "rnn"] {
        for bidirectional in [false, true] {
            for every_step in [false, true] {
                let m = model(json!({ "seed": 2, "dtype": "float64", "layers": [
                    { "type": kind, "inputSize": F, "hiddenSize": 4, "numLayers": 2, "bidirectional": bidirectional,
                      "returnSequences": every_step },
                ]}));
                let (x, rows) = batch(&mut Rng::new(7));
                let out = values(&m.predict(Input { x: &x, lengths: Some(&lengths) }, &[]).unwrap());
                let d = if bidirectional { 8 } else { 4 };
                let what = format!("{kind} bidirectional={bidirectional} every_step={every_step}");
                for (i, row) in rows.iter().enumerate() {
                    let alone = values(&m.predict(row, &[]).unwrap());
                    if every_step {
                        let n = LENGTHS[i];
                        close(&format!("{what} row {i}"), &out[i * T * d..(i * T + n) * d], &alone);
                        let pad = &out[(i * T + n) * d..(i + 1) * T * d];
                        assert!(pad.iter().all(|&v| v == 0.0), "{what} row {i}: padded steps must output 0");
                    } else {
                        close(&format!("{what} row {i}"), &out[i * d..(i + 1) * d], &alone);
                    }
                }
                // Without lengths the padding is read as data, and the short rows change.
                let plain = values(&m.predict(&x, &[]).unwrap());
                assert_ne!(plain, out, "{what}: lengths should matter");
            }
        }
    }
}

#[test]
fn mask_zero_embedding_gives_the_same_as_explicit_lengths() {
    let spec = |mask: bool| {
        json!({ "seed": 4, "dtype": "float64", "layers": [
            { "type": "embedding", "vocabSize": 9, "dim": 3, "maskZero": mask },
            { "type": "gru", "hiddenSize": 5, "bidirectional": true },
        ]})
    };
    let ids = HostTensor::i32(vec![3, 1, 4, 1, 5, 0, 0, 2, 0, 0, 0, 0, 6, 0, 8, 0, 0, 0], &[3, 6]).unwrap();
    // Trailing zeros are padding; a zero before the last real id is an ordinary token.
    let lengths = HostTensor::i32(vec![5, 2, 3], &[3]).unwrap();
    let masked = values(&model(spec(true)).predict(&ids, &[]).unwrap());
    let explicit = values(&model(spec(false)).predict(Input { x: &ids, lengths: Some(&lengths) }, &[]).unwrap());
    close("maskZero", &masked, &explicit);
    let e = model(spec(true)).predict(&HostTensor::i32(vec![1, 0, 0, 0], &[2, 2]).unwrap(), &[]).unwrap_err();
    assert!(e.to_string().contains("row 1 is all padding"), "{e}");
}

#[test]
fn bad_lengths_are_clear_errors() {
    let m = model(json!({ "layers": [{ "type": "lstm", "inputSize": F, "hiddenSize": 2 }] }));
    let (x, _) = batch(&mut Rng::new(1));
    let x = HostTensor::f32(values(&x).iter().map(|&v| v as f32).collect(), &[3, T, F]).unwrap();
    let cases = [
        (HostTensor::i32(vec![1, 2], &[2]).unwrap(), ErrorKind::Range, "lengths must have shape [3]"),
        (HostTensor::i32(vec![1, 0, 2], &[3]).unwrap(), ErrorKind::Range, "row 1 has length 0"),
        (HostTensor::i32(vec![1, 7, 2], &[3]).unwrap(), ErrorKind::Range, "in 1..=6"),
        (HostTensor::f32(vec![1.0; 3], &[3]).unwrap(), ErrorKind::Type, "int32"),
    ];
    for (lengths, kind, says) in cases {
        let e = m.predict(Input { x: &x, lengths: Some(&lengths) }, &[]).unwrap_err();
        assert_eq!(e.kind(), kind, "{e}");
        assert!(e.to_string().contains(says), "{e} should say {says:?}");
    }
}

#[test]
fn a_stateful_layer_continues_the_stream_across_calls() {
    for kind in ["lstm", "gru", "rnn"] {
        let spec = |stateful: bool| {
            json!({ "seed": 6, "dtype": "float64", "layers": [
                { "type": kind, "inputSize": F, "hiddenSize": 4, "numLayers": 2, "returnSequences": true,
                  "stateful": stateful },
            ]})
        };
        let mut rng = Rng::new(3);
        let data = uniform(&mut rng, 2 * 2 * T * F, -1.0, 1.0);
        let whole = HostTensor::f64(data.clone(), &[2, 2 * T, F]).unwrap();
        // The same two streams cut in halves: batch k holds steps kT..(k+1)T of both rows.
        let half = |k: usize| {
            let mut v = Vec::new();
            for row in 0..2 {
                v.extend_from_slice(&data[(row * 2 * T + k * T) * F..(row * 2 * T + (k + 1) * T) * F]);
            }
            HostTensor::f64(v, &[2, T, F]).unwrap()
        };
        let once = values(&model(spec(false)).predict(&whole, &[]).unwrap());
        let m = model(spec(true));
        let first = values(&m.predict(&half(0), &[]).unwrap());
        let second = values(&m.predict(&half(1), &[]).unwrap());
        for row in 0..2 {
            let want = &once[row * 2 * T * 4..(row + 1) * 2 * T * 4];
            close(&format!("{kind} row {row} first half"), &first[row * T * 4..(row + 1) * T * 4], &want[..T * 4]);
            close(&format!("{kind} row {row} second half"), &second[row * T * 4..(row + 1) * T * 4], &want[T * 4..]);
        }
        // After a reset the next call starts from zeros again, like a fresh model.
        m.reset_states();
        close(
            &format!("{kind} after reset"),
            &values(&m.predict(&half(1), &[]).unwrap()),
            &values(&model(spec(false)).predict(&half(1), &[]).unwrap()),
        );
        // The carried state has the old batch size: another one is an error until a reset.
        let e = m.predict(&HostTensor::f64(vec![0.0; T * F], &[1, T, F]).unwrap(), &[]).unwrap_err();
        assert!(e.to_string().contains("resetStates"), "{e}");
        m.reset_states();
        assert!(m.predict(&HostTensor::f64(vec![0.0; T * F], &[1, T, F]).unwrap(), &[]).is_ok());
    }
    let both = serde_json::from_value(json!({ "layers": [
        { "type": "gru", "inputSize": 2, "hiddenSize": 3, "stateful": true, "bidirectional": true },
    ]}))
    .unwrap();
    let e = engram_core::Sequential::new(both).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Type);
    assert!(e.to_string().contains("stateful and bidirectional"), "{e}");
}
