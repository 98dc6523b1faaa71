//! Core errors and panics as JavaScript errors.
//!
//! The message starts with the JS error class (`TypeError: `, `RangeError: `, `Error: `); the facade reads that
//! prefix and throws an instance of the class, so `err instanceof RangeError` works for users.

use engram_core::{Error as CoreError, ErrorKind};

pub fn to_napi(e: CoreError) -> napi::Error {
    let class = match e.kind() {
        ErrorKind::Type => "TypeError",
        ErrorKind::Range => "RangeError",
        ErrorKind::Other => "Error",
    };
    napi::Error::from_reason(format!("{class}: {e}"))
}

pub fn type_error(msg: impl std::fmt::Display) -> napi::Error {
    napi::Error::from_reason(format!("TypeError: {msg}"))
}

pub fn state_error(msg: impl std::fmt::Display) -> napi::Error {
    napi::Error::from_reason(format!("Error: {msg}"))
}

/// Runs `f`, turning a Rust panic into an Error instead of aborting the Node process.
pub fn guard<T>(op: &str, f: impl FnOnce() -> napi::Result<T>) -> napi::Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(state_error(format!("{op}: internal error (a bug in engram, please report it): {what}")))
        }
    }
}
