//! Cooperative cancellation. A long call (a training step over a long sequence, `generate` of many tokens, a
//! save) runs under a flag that another thread may set; the call looks at it between units of work (a layer,
//! a time step of a recurrent kernel, a token, a chunk of a file) and stops with [`Error::Cancelled`] before it
//! changes the model, so a cancelled call leaves the model as it found it.
//!
//! The flag is set per thread by [`scope`]; kernels that run on other threads (rayon's) take a [`Cancel`] from
//! [`current`] when they are built and carry it with them.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

thread_local! {
    static CURRENT: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// A handle on the flag of the call that created it (or on none).
#[derive(Debug, Clone, Default)]
pub struct Cancel(Option<Arc<AtomicBool>>);

impl Cancel {
    pub fn is_set(&self) -> bool {
        self.0.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// `Err(Cancelled)` once the flag is set.
    pub fn check(&self, op: &str) -> Result<()> {
        if self.is_set() { Err(cancelled(op)) } else { Ok(()) }
    }

    /// The same test for code that returns candle's errors (custom ops).
    pub(crate) fn check_candle(&self) -> candle_core::Result<()> {
        if self.is_set() { Err(candle_core::Error::Msg("cancelled".into())) } else { Ok(()) }
    }
}

fn cancelled(op: &str) -> Error {
    Error::Cancelled(format!("{op}: cancelled"))
}

/// Runs `f` with `flag` as this thread's cancellation flag.
pub fn scope<R>(flag: Arc<AtomicBool>, f: impl FnOnce() -> R) -> R {
    let before = CURRENT.with(|c| c.replace(Some(flag)));
    let out = f();
    CURRENT.with(|c| *c.borrow_mut() = before);
    out
}

/// The flag of the call running on this thread.
pub fn current() -> Cancel {
    Cancel(CURRENT.with(|c| c.borrow().clone()))
}

/// `Err(Cancelled)` when the call running on this thread has been cancelled.
pub fn check(op: &str) -> Result<()> {
    current().check(op)
}

/// Whether the call running on this thread has been cancelled.
pub fn is_cancelled() -> bool {
    current().is_set()
}
