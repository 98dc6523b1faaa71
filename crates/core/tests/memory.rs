//! The memory estimates against the memory really allocated: a counting allocator measures the peak of each
//! call above what was live before it, which must never exceed the estimate the budget is checked against,
//! and the estimate must not be far above it (a budget of 80% real use must pass). Then the budget itself:
//! a model or call over it is an error, named, before anything is allocated.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use engram_core::{
    Budget, CompileConfig, HostTensor, MemoryNetwork, MemoryNetworkConfig, Sequential, SequentialConfig,
};
use serde_json::{Value, json};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(n: usize) {
    let now = CURRENT.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old {
            PEAK.fetch_max(CURRENT.load(Relaxed) + new_size, Relaxed);
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= old {
                grow(new_size - old);
            } else {
                CURRENT.fetch_sub(old - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The counter is the process's: tests that measure take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// `f`'s result and the most it allocated at once above what was live before it.
fn measure<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = CURRENT.load(Relaxed);
    PEAK.store(before, Relaxed);
    let r = f();
    (r, (PEAK.load(Relaxed) - before) as u64)
}

fn ids(b: usize, t: usize, vocab: usize) -> HostTensor {
    HostTensor::i32((0..b * t).map(|i| (i * 7 % vocab) as i32).collect(), &[b, t]).unwrap()
}

fn floats(shape: &[usize]) -> HostTensor {
    let n: usize = shape.iter().product();
    HostTensor::f32((0..n).map(|i| ((i % 13) as f32 - 6.0) / 7.0).collect(), shape).unwrap()
}

fn compiled(layers: Value, dtype: &str) -> Sequential {
    let cfg: SequentialConfig = serde_json::from_value(json!({ "layers": layers, "seed": 3, "dtype": dtype })).unwrap();
    let mut m = Sequential::new(cfg).unwrap();
    let c: CompileConfig =
        serde_json::from_value(json!({ "optimizer": { "type": "adam" }, "loss": { "type": "crossEntropy" } })).unwrap();
    m.compile(c).unwrap();
    m
}

/// Measured peaks of a second training step and of a prediction, against their estimates.
fn check(name: &str, m: &mut Sequential, x: &HostTensor, y: &HostTensor, worst: &mut f64) {
    m.train_step(x, y, &[]).unwrap();
    for training in [true, false] {
        let estimate = m.working_memory(x, training);
        let (_, peak) = if training {
            measure(|| m.train_step(x, y, &[]).unwrap().loss)
        } else {
            measure(|| m.predict(x, &[]).map(|_| 0.0).unwrap())
        };
        let call = if training { "train_step" } else { "predict" };
        assert!(peak <= estimate, "{name} {call}: measured {peak} bytes, estimated only {estimate}");
        // Loose enough for the slack every call gets, tight enough that the budget is not wasted.
        if peak > 8 << 20 {
            let ratio = estimate as f64 / peak as f64;
            eprintln!("{name} {call}: {peak} used, {estimate} estimated ({ratio:.2}x)");
            *worst = worst.max(ratio);
            assert!(ratio < 2.5, "{name} {call}: estimated {estimate} bytes for {peak} used ({ratio:.2}x)");
        }
    }
}

#[test]
fn estimates_bound_the_memory_calls_really_use() {
    let _turn = serial();
    let head = |n: usize| json!({ "type": "dense", "units": n });
    let mut worst = 0f64;
    let (b, t) = (16, 128);
    let cases: Vec<(&str, Value, bool)> = vec![
        (
            "lstm",
            json!([{ "type": "lstm", "inputSize": 32, "hiddenSize": 256, "returnSequences": true }, head(16)]),
            false,
        ),
        ("gru last step", json!([{ "type": "gru", "inputSize": 32, "hiddenSize": 256 }, head(16)]), false),
        (
            "bidirectional lstm x2",
            json!([{ "type": "lstm", "inputSize": 32, "hiddenSize": 128, "numLayers": 2, "bidirectional": true, "returnSequences": true }, head(16)]),
            false,
        ),
        (
            "rnn",
            json!([{ "type": "rnn", "inputSize": 32, "hiddenSize": 256, "returnSequences": true }, head(16)]),
            false,
        ),
        (
            "attention",
            json!([{ "type": "embedding", "vocabSize": 64, "dim": 128 }, { "type": "multiHeadAttention", "nHeads": 4 }, head(16)]),
            true,
        ),
        (
            "attention with dropout",
            json!([{ "type": "embedding", "vocabSize": 64, "dim": 128 }, { "type": "multiHeadAttention", "nHeads": 4, "dropout": 0.1 }, head(16)]),
            true,
        ),
        (
            "transformer blocks",
            json!([
                { "type": "embedding", "vocabSize": 64, "dim": 128 },
                { "type": "positionalEncoding", "dropout": 0.1 },
                { "type": "transformerBlock", "dModel": 128, "nHeads": 4, "causal": true },
                { "type": "transformerBlock", "dModel": 128, "nHeads": 4, "dropout": 0 },
                { "type": "layerNorm" },
                head(64)
            ]),
            true,
        ),
        (
            "dense, dropout, layer norm",
            json!([{ "type": "dense", "inputSize": 32, "units": 512 }, { "type": "dropout", "rate": 0.5 }, { "type": "layerNorm" }, head(16)]),
            false,
        ),
        ("language-model head", json!([{ "type": "embedding", "vocabSize": 8000, "dim": 64 }, head(8000)]), true),
    ];
    for dtype in ["float32", "float64"] {
        for (name, layers, with_ids) in &cases {
            let mut m = compiled(layers.clone(), dtype);
            let x = if *with_ids { ids(b, t, 64) } else { floats(&[b, t, 32]) };
            let classes = layers.as_array().unwrap().last().unwrap()["units"].as_u64().unwrap() as usize;
            let y = if name.contains("last step") { ids(b, 1, classes).reshaped(&[b]) } else { ids(b, t, classes) };
            check(&format!("{name} ({dtype})"), &mut m, &x, &y, &mut worst);
        }
    }
    eprintln!("worst estimate / measured: {worst:.2}");
}

trait Reshaped {
    fn reshaped(self, shape: &[usize]) -> HostTensor;
}

impl Reshaped for HostTensor {
    fn reshaped(self, shape: &[usize]) -> HostTensor {
        HostTensor::new(self.data, shape.to_vec()).unwrap()
    }
}

#[test]
fn a_model_over_the_budget_is_refused_before_it_is_allocated() {
    let _turn = serial();
    let cfg: SequentialConfig = serde_json::from_value(json!({
        "layers": [{ "type": "lstm", "inputSize": 8, "hiddenSize": 100000 }]
    }))
    .unwrap();
    let budget = Budget::new(12 << 30, "ENGRAM_MAX_MEMORY");
    let (r, peak) = measure(|| Sequential::new_with(cfg, &engram_core::Device::Cpu, &budget).map(|_| ()));
    let e = r.unwrap_err().to_string();
    assert!(e.starts_with("layer 0 (lstm) with hiddenSize 100000"), "{e}");
    assert!(e.contains("needs 149 GiB of parameters, which brings the model to 149 GiB"), "{e}");
    assert!(e.contains("the memory budget is 12.0 GiB (ENGRAM_MAX_MEMORY)"), "{e}");
    assert!(peak < 1 << 20, "the refusal allocated {peak} bytes");

    // Sizes whose product overflows are refused the same way, not with a capacity-overflow panic.
    let cfg: SequentialConfig = serde_json::from_value(json!({
        "layers": [{ "type": "embedding", "vocabSize": 1u64 << 40, "dim": 1u64 << 20 }]
    }))
    .unwrap();
    let e = Sequential::new_with(cfg, &engram_core::Device::Cpu, &budget).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("layer 0 (embedding) with dim 1048576, vocabSize 1099511627776 needs 4.00 EiB"), "{e}");
}

#[test]
fn a_model_at_most_of_its_budget_is_built_and_trains() {
    let _turn = serial();
    // An embedding of 64 MiB and its Adam step (P + 3L after the moments): accepted at 90% use of the budget.
    let layers = json!([{ "type": "embedding", "vocabSize": 1 << 18, "dim": 64 }, { "type": "dense", "units": 8 }]);
    let cfg: SequentialConfig = serde_json::from_value(json!({ "layers": layers, "seed": 1 })).unwrap();
    let params = 4u64 * ((1 << 18) * 64 + 64 * 8 + 8);
    let (x, y) = (ids(4, 8, 1000), ids(4, 8, 8));
    let budget = Budget::new(params * 8, "test");
    let mut m = Sequential::new_with(cfg.clone(), &engram_core::Device::Cpu, &budget).unwrap();
    let c: CompileConfig =
        serde_json::from_value(json!({ "optimizer": { "type": "adam" }, "loss": { "type": "crossEntropy" } })).unwrap();
    m.compile(c.clone()).unwrap();
    let before = CURRENT.load(Relaxed) as u64;
    let (_, peak) = measure(|| m.train_step(&x, &y, &[]).unwrap());
    let used = before + peak;
    let need = m.resident_bytes() + m.working_memory(&x, true);
    assert!(need as f64 <= used as f64 * 1.25, "estimate {need} for {used} used");

    // A budget below the step's need: the step is refused and the weights stay as they were.
    let tight = Budget::new(params * 3, "test");
    let mut m = Sequential::new_with(cfg, &engram_core::Device::Cpu, &tight).unwrap();
    m.compile(c).map(|_| ()).unwrap_err();
}

#[test]
fn a_memory_network_over_the_budget_is_refused() {
    let cfg: MemoryNetworkConfig =
        serde_json::from_value(json!({ "vocabSize": 1u64 << 33, "sentenceLen": 6, "embedDim": 64 })).unwrap();
    let e =
        MemoryNetwork::new_with(cfg, &engram_core::Device::Cpu, &Budget::new(1 << 30, "test")).map(|_| ()).unwrap_err();
    assert!(e.to_string().contains("memoryNetwork with vocabSize 8589934592"), "{e}");
}
