//! One error type for the core. Messages name the operation, what was expected and what was found, so that
//! the binding can hand them to JavaScript unchanged.

use std::path::PathBuf;

/// The broad class of an error: the binding turns these into `TypeError`, `RangeError` or `Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A value of the wrong type: float data where ids were expected, an unknown layer or option name.
    Type,
    /// A value of the right type outside what is allowed: a wrong shape, an id past the vocabulary, NaN.
    Range,
    /// Anything else: model state, files, internal failures.
    Other,
    /// The call was cancelled (an `AbortSignal`, or the model disposed while it ran).
    Abort,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Wrong type of value (dtype, option type, unknown name).
    #[error("{0}")]
    Type(String),
    /// Wrong shape or rank.
    #[error("{op}: {what} must have shape {expected}, got {got}")]
    Shape { op: &'static str, what: String, expected: String, got: String },
    /// A value outside its allowed range.
    #[error("{0}")]
    Range(String),
    /// The model is not in a state that allows the call (not compiled, ...).
    #[error("{0}")]
    State(String),
    /// A checkpoint or state-dict file that cannot be used: `op` is what engram was doing (`load`), once the
    /// error has left the checkpoint code (see [`Error::during`]).
    #[error("{}", checkpoint_text(op, path, reason))]
    Checkpoint { op: &'static str, path: PathBuf, reason: String },
    /// A file operation that failed: `op` is what engram was doing (`save`, `load`), `path` the user's path.
    #[error("{op} {}: {}", path.display(), io_message(source))]
    Io { op: String, path: PathBuf, source: std::io::Error },
    /// An estimate over the memory budget (see [`crate::memory`]).
    #[error("{0}")]
    Memory(String),
    /// Stopped by its cancellation flag before it finished; the model is as it was before the call.
    #[error("{0}")]
    Cancelled(String),
    /// An error from candle: a bug in engram if it is ever reached from valid input.
    #[error("internal tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Type(_) => ErrorKind::Type,
            Error::Shape { .. } | Error::Range(_) | Error::Memory(_) => ErrorKind::Range,
            Error::Cancelled(_) => ErrorKind::Abort,
            _ => ErrorKind::Other,
        }
    }

    pub(crate) fn shape(op: &'static str, what: impl Into<String>, expected: impl Into<String>, got: &[usize]) -> Self {
        Error::Shape { op, what: what.into(), expected: expected.into(), got: format!("{got:?}") }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Checkpoint { op: "", path: path.into(), reason: reason.into() }
    }

    /// Names the operation in a checkpoint error that does not name one yet.
    pub(crate) fn during(self, op: &'static str) -> Self {
        match self {
            Error::Checkpoint { op: "", path, reason } => Error::Checkpoint { op, path, reason },
            e => e,
        }
    }
}

/// `load /models/m.safetensors: not a valid safetensors file ...`, as file errors read.
fn checkpoint_text(op: &str, path: &std::path::Path, reason: &str) -> String {
    match (op, path.as_os_str().is_empty()) {
        ("", _) => format!("{}: {reason}", path.display()),
        (op, true) => format!("{op}: the path is empty"),
        (op, false) => format!("{op} {}: {reason}", path.display()),
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// An I/O error's text without Rust's ` (os error N)` suffix.
fn io_message(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
