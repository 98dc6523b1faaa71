//! Core errors and panics as JavaScript errors.
//!
//! The message starts with the JS error class (`TypeError: `, `RangeError: `, `AbortError: `, `Error: `); the
//! facade reads that prefix and throws an instance of the class, so `err instanceof RangeError` works for users.
//! Properties the error should carry (`code`, `path`, `syscall` of a file error; `cause` of an internal one)
//! follow the message after a `\u{1}`, as a JSON object, which the facade strips and sets on the error.

use std::cell::RefCell;
use std::io::ErrorKind as Io;

use engram_core::{Error as CoreError, ErrorKind};

/// Separates the message from the JSON of the error's properties.
const PROPS: char = '\u{1}';

pub fn to_napi(e: CoreError) -> napi::Error {
    let class = match e.kind() {
        ErrorKind::Type => "TypeError",
        ErrorKind::Range => "RangeError",
        ErrorKind::Abort => "AbortError",
        ErrorKind::Other => "Error",
    };
    match &e {
        CoreError::Io { op, path, source } => {
            let code = node_code(source);
            let props = serde_json::json!({
                "code": code,
                "path": path.to_string_lossy(),
                "syscall": op,
            });
            napi::Error::from_reason(format!("{class}: {e} ({code}){PROPS}{props}"))
        }
        CoreError::Checkpoint { path, .. } => {
            let props = serde_json::json!({ "path": path.to_string_lossy() });
            napi::Error::from_reason(format!("{class}: {e}{PROPS}{props}"))
        }
        _ => napi::Error::from_reason(format!("{class}: {e}")),
    }
}

/// The `code` Node's `fs` gives the same failure (`ENOENT`, `EACCES` ...).
fn node_code(e: &std::io::Error) -> &'static str {
    match e.kind() {
        Io::NotFound => "ENOENT",
        Io::PermissionDenied => "EACCES",
        Io::AlreadyExists => "EEXIST",
        Io::IsADirectory => "EISDIR",
        Io::NotADirectory => "ENOTDIR",
        Io::DirectoryNotEmpty => "ENOTEMPTY",
        Io::StorageFull => "ENOSPC",
        Io::QuotaExceeded => "EDQUOT",
        Io::ReadOnlyFilesystem => "EROFS",
        Io::FileTooLarge => "EFBIG",
        Io::InvalidFilename => "ENAMETOOLONG",
        Io::CrossesDevices => "EXDEV",
        Io::Interrupted => "EINTR",
        Io::OutOfMemory => "ENOMEM",
        Io::UnexpectedEof => "EIO",
        Io::ResourceBusy => "EBUSY",
        _ => match e.raw_os_error() {
            Some(24) => "EMFILE",
            Some(40) => "ELOOP",
            _ => "EIO",
        },
    }
}

pub fn type_error(msg: impl std::fmt::Display) -> napi::Error {
    napi::Error::from_reason(format!("TypeError: {msg}"))
}

pub fn state_error(msg: impl std::fmt::Display) -> napi::Error {
    napi::Error::from_reason(format!("Error: {msg}"))
}

pub fn abort_error(op: &str) -> napi::Error {
    napi::Error::from_reason(format!("AbortError: {op}: the operation was aborted"))
}

thread_local! {
    /// What the panic hook saw last on this thread: the message and where, for the error's `cause`.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces Rust's panic hook, which prints the message (and a backtrace) to stderr: a panic becomes an Error
/// with the details in its `cause`. With `ENGRAM_DEBUG=1` the default hook runs as well.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = payload_text(info.payload());
        let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{message}{place}")));
        if std::env::var("ENGRAM_DEBUG").is_ok_and(|v| v == "1") {
            default(info);
        }
    }));
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f`, turning a Rust panic into an Error instead of aborting the Node process.
pub fn guard<T>(op: &str, f: impl FnOnce() -> napi::Result<T>) -> napi::Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let detail = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| payload_text(&*payload));
            let props = serde_json::json!({ "cause": format!("Rust panic: {detail}") });
            Err(state_error(format!(
                "{op}: internal error (a bug in engram, please report it with the error's cause){PROPS}{props}"
            )))
        }
    }
}
