//! Which device a new or loaded model lives on. `ENGRAM_DEVICE` chooses: `cpu`, `cuda`/`cuda:N` or
//! `metal`/`metal:N`, the GPU kinds only in a binary built with that cargo feature. Unset, the CUDA build uses
//! GPU 0 when one answers and the CPU otherwise; every other binary uses the CPU. The variable is read at each model's
//! creation, so one process can hold models on both.

use std::sync::{Mutex, OnceLock};

use engram_core::Device;
use napi::bindgen_prelude::Result;
use napi_derive::napi;

use crate::error::{state_error, type_error};

/// The GPU kinds compiled into this binary.
const GPU_KINDS: &[&str] = &[
    #[cfg(feature = "cuda")]
    "cuda",
    #[cfg(feature = "metal")]
    "metal",
];

/// One handle per GPU: candle ties every tensor to the handle it was made on, and a handle owns a GPU context,
/// so models on the same GPU share one.
static OPENED: Mutex<Vec<(String, Device)>> = Mutex::new(Vec::new());

fn parse(setting: &str) -> Result<(&str, usize)> {
    let bad = || type_error(format!("ENGRAM_DEVICE: expected cpu, cuda, cuda:N, metal or metal:N, got {setting:?}"));
    let (kind, ordinal) = match setting.split_once(':') {
        Some((k, n)) => (k, n.parse::<usize>().map_err(|_| bad())?),
        None => (setting, 0),
    };
    match kind {
        "cpu" | "cuda" | "metal" => Ok((kind, ordinal)),
        _ => Err(bad()),
    }
}

fn open(kind: &str, ordinal: usize) -> Result<Device> {
    let name = format!("{kind}:{ordinal}");
    let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, d)) = opened.iter().find(|(n, _)| *n == name) {
        return Ok(d.clone());
    }
    let Some(device) = gpu(kind, ordinal) else {
        return Err(state_error(format!(
            "ENGRAM_DEVICE={name}: this engram binary was built without {kind} (its GPU kinds: {}); {}, or unset \
             ENGRAM_DEVICE to train on the CPU",
            if GPU_KINDS.is_empty() { "none".to_string() } else { GPU_KINDS.join(", ") },
            if kind == "cuda" {
                "install the CUDA build (`npm install engram-cuda-linux-x64-gnu`, Linux x64)"
            } else {
                "the macOS packages are built with metal"
            }
        )));
    };
    let device = device.map_err(|e| state_error(format!("ENGRAM_DEVICE={name}: cannot open the GPU: {e}")))?;
    opened.push((name, device.clone()));
    Ok(device)
}

/// An error's message without the backtrace candle appends when RUST_BACKTRACE is set.
#[cfg(any(feature = "cuda", feature = "metal"))]
fn first_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Opens a GPU of a kind compiled into this binary; `None` for a kind that is not.
#[allow(unused_variables)]
fn gpu(kind: &str, ordinal: usize) -> Option<std::result::Result<Device, String>> {
    match kind {
        #[cfg(feature = "cuda")]
        "cuda" => Some(Device::new_cuda(ordinal).map_err(|e| first_line(&e))),
        #[cfg(feature = "metal")]
        "metal" => Some(Device::new_metal(ordinal).map_err(|e| first_line(&e))),
        _ => None,
    }
}

/// The device for a model created or loaded now, with its name as `ENGRAM_DEVICE` writes it (`cpu`, `cuda:0`).
pub fn current() -> Result<(Device, String)> {
    match std::env::var("ENGRAM_DEVICE") {
        Ok(s) if !s.trim().is_empty() => match parse(&s.trim().to_ascii_lowercase())? {
            ("cpu", _) => Ok((Device::Cpu, "cpu".into())),
            (kind, n) => Ok((open(kind, n)?, format!("{kind}:{n}"))),
        },
        _ => Ok(UNSET.get_or_init(unset_default).clone()),
    }
}

/// The device with `ENGRAM_DEVICE` unset, settled the first time it is asked for: a CUDA build without a GPU
/// would otherwise try to open one again at every model.
static UNSET: OnceLock<(Device, String)> = OnceLock::new();

/// Only a CUDA binary moves models to the GPU unasked: it is a separate package the user installed for that.
/// Metal is built into the ordinary macOS packages, so there it takes `ENGRAM_DEVICE=metal`.
fn unset_default() -> (Device, String) {
    GPU_KINDS
        .iter()
        .find(|kind| **kind == "cuda")
        .and_then(|kind| open(kind, 0).ok().map(|d| (d, format!("{kind}:0"))))
        .unwrap_or((Device::Cpu, "cpu".into()))
}

/// What this binary can run on and where new models go.
#[napi(object)]
pub struct NativeBackend {
    /// GPU kinds compiled in: `[]`, `["cuda"]` or `["metal"]`.
    pub gpu: Vec<String>,
    /// Where a model created now would live (`cpu`, `cuda:0`, `metal:0` ...), after `ENGRAM_DEVICE`.
    pub device: String,
    /// The instruction set the CPU kernels run in (`avx512`, `avx2`, `neon`, `baseline`), after `ENGRAM_ISA`.
    pub isa: String,
    /// The widest set this CPU supports.
    pub cpu_isa: String,
    /// Why `ENGRAM_ISA` was not followed as written, if it was not.
    pub isa_note: Option<String>,
}

/// Reports the binary's GPU kinds and the device new models get; an unusable `ENGRAM_DEVICE` is an error.
#[napi(catch_unwind)]
pub fn native_backend() -> Result<NativeBackend> {
    let isa = engram_core::kernels::isa::isa_choice();
    Ok(NativeBackend {
        gpu: GPU_KINDS.iter().map(|s| s.to_string()).collect(),
        device: current()?.1,
        isa: isa.isa.name().into(),
        cpu_isa: isa.detected.name().into(),
        isa_note: isa.note.clone(),
    })
}
