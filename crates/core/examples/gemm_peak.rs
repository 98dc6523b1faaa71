//! The machine's f32 GEMM peak through candle: a 1024 x 1024 x 1024 matmul, best of several runs, on
//! RAYON_NUM_THREADS threads. Prints `gflops=<number>`; benches/recurrent.ts reads it.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p engram-core --example gemm_peak

use std::time::Instant;

use engram_core::{Device, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = 1024;
    let a = Tensor::rand(-1f32, 1f32, (n, n), &Device::Cpu)?;
    let b = Tensor::rand(-1f32, 1f32, (n, n), &Device::Cpu)?;
    let mut best = f64::INFINITY;
    for _ in 0..12 {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        // Reading one value back makes sure the product is done.
        let _ = c.get(0)?.get(0)?.to_scalar::<f32>()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let flop = 2.0 * (n * n * n) as f64;
    println!("gflops={:.1} best_ms={:.2}", flop / best / 1e9, best * 1e3);
    Ok(())
}
