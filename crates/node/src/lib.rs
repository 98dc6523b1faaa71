//! engram-node: the Node.js binding of engram-core. It knows Node (typed arrays, promises, JS errors) and no
//! maths: every call converts its arguments once, runs one core call per batch, and converts the result.

mod device;
mod error;
mod facts;
mod model;
mod net;
mod options;
mod tensor;
mod work;
mod worker;

pub use device::{NativeBackend, native_backend};
pub use model::{CancelToken, MemoryBudget, Model, ModelPlan, load_model, memory_budget, set_memory_budget};
pub use work::StepResult;

/// Runs when the addon loads, on the JS thread, before any model exists.
#[napi_derive::module_init]
fn on_load() {
    error::install_panic_hook();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tune_malloc();
    engram_core::kernels::inline_elementwise();
}

/// glibc's allocator returns freed memory to the system eagerly: a buffer of a few megabytes (a recurrent
/// kernel's gates, a gradient) is mapped fresh on every call and zero-filled page by page, which cost about 40%
/// of an LSTM inference step. When the addon loads, keep freed memory in the heap instead (up to 512 MiB before
/// trimming; allocations below 32 MiB from the heap). `ENGRAM_MALLOC_TUNING=0` leaves glibc's defaults.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    if std::env::var("ENGRAM_MALLOC_TUNING").is_ok_and(|v| v == "0") {
        return;
    }
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}
pub use tensor::{JsState, JsTensor, NamedTensor};
