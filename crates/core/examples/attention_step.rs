//! Times Transformer training steps and inference without Node, for profiling (e.g. under `perf`):
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p engram-core --example attention_step -- block train 50
//!
//! Arguments: model (`block`: the bench suite's post-norm encoder block, batch 16, seqLen 64, dModel 128, 4
//! heads, feed-forward 512, a dense head to 64 classes, Adam; `gpt`: the nanoGPT CPU configuration, batch 12),
//! train | infer, iterations.

use std::time::Instant;

use engram_core::{CompileConfig, HostTensor, Rng, Sequential};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As the Node addon does when it loads.
    engram_core::kernels::inline_elementwise();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let (which, op, iters) = (arg(0, "block"), arg(1, "train"), arg(2, "50").parse::<usize>()?);
    let block = |norm_first: bool, causal: bool, activation: &str| {
        json!({ "type": "transformerBlock", "dModel": 128, "nHeads": 4, "ffDim": 512, "normFirst": norm_first,
                "causal": causal, "activation": activation, "dropout": 0.0 })
    };
    let mut rng = Rng::new(42);
    let (layers, x, y, optimizer) = if which == "gpt" {
        let (batch, t, vocab) = (12, 64, 65);
        let mut layers = vec![
            json!({ "type": "embedding", "vocabSize": vocab, "dim": 128 }),
            json!({ "type": "positionalEncoding", "kind": "learned", "maxLen": t }),
        ];
        layers.extend((0..4).map(|_| block(true, true, "gelu")));
        layers.push(json!({ "type": "layerNorm" }));
        layers.push(json!({ "type": "dense", "units": vocab }));
        let x: Vec<i32> = (0..batch * t).map(|_| (rng.next_u64() % vocab as u64) as i32).collect();
        let y: Vec<i32> = (0..batch * t).map(|_| (rng.next_u64() % vocab as u64) as i32).collect();
        let adamw =
            json!({ "type": "adamw", "learningRate": 1e-3, "beta2": 0.99, "weightDecay": 0.1, "clipNorm": 1.0 });
        (layers, HostTensor::i32(x, &[batch, t])?, HostTensor::i32(y, &[batch, t])?, adamw)
    } else {
        let (batch, t, d, classes) = (16, 64, 128, 64);
        let layers = vec![block(false, false, "relu"), json!({ "type": "dense", "units": classes })];
        let x: Vec<f32> = (0..batch * t * d).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
        let y: Vec<i32> = (0..batch * t).map(|_| (rng.next_u64() % classes as u64) as i32).collect();
        let adam = json!({ "type": "adam", "learningRate": 1e-3 });
        (layers, HostTensor::f32(x, &[batch, t, d])?, HostTensor::i32(y, &[batch, t])?, adam)
    };
    let mut m = Sequential::new(serde_json::from_value(json!({ "seed": 1, "layers": layers }))?)?;
    let compile: CompileConfig =
        serde_json::from_value(json!({ "optimizer": optimizer, "loss": { "type": "crossEntropy" } }))?;
    m.compile(compile)?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters + 3 {
        let t = Instant::now();
        if op == "train" {
            m.train_step(&x, &y, &[])?;
        } else {
            m.predict(&x, &[])?;
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut timed = times[3..].to_vec();
    timed.sort_by(|a, b| a.total_cmp(b));
    println!("{which} {op}: median {:.2} ms, min {:.2} ms over {iters}", timed[iters / 2], timed[0]);
    Ok(())
}
