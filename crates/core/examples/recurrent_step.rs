//! Times recurrent training steps and inference without Node, for profiling the kernels (e.g. under `perf`):
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p engram-core --example recurrent_step -- lstm 256 32 train 50
//!
//! Arguments: cell (lstm | gru | rnn), hidden size, batch, train | infer, iterations. The model is the bench
//! suite's: input 64 float features, seqLen 50, last step, dense 64, cross-entropy, Adam.

use std::time::Instant;

use engram_core::{CompileConfig, HostTensor, Rng, Sequential};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As the Node addon does when it loads.
    engram_core::kernels::inline_elementwise();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let (cell, hidden, batch, op, iters) = (
        arg(0, "lstm"),
        arg(1, "256").parse::<usize>()?,
        arg(2, "32").parse::<usize>()?,
        arg(3, "train"),
        arg(4, "50").parse::<usize>()?,
    );
    let (seq_len, input, classes) = (50, 64, 64);
    let config = serde_json::from_value(json!({ "seed": 1, "layers": [
        { "type": cell, "inputSize": input, "hiddenSize": hidden },
        { "type": "dense", "units": classes },
    ]}))?;
    let mut m = Sequential::new(config)?;
    let compile: CompileConfig = serde_json::from_value(
        json!({ "optimizer": { "type": "adam", "learningRate": 1e-3 }, "loss": { "type": "crossEntropy" } }),
    )?;
    m.compile(compile)?;
    let mut rng = Rng::new(42);
    let x: Vec<f32> = (0..batch * seq_len * input).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    let y: Vec<i32> = (0..batch).map(|_| (rng.next_u64() % classes as u64) as i32).collect();
    let x = HostTensor::f32(x, &[batch, seq_len, input])?;
    let y = HostTensor::i32(y, &[batch])?;
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
    println!("{cell} H{hidden} B{batch} {op}: median {:.2} ms, min {:.2} ms over {iters}", timed[iters / 2], timed[0]);
    Ok(())
}
