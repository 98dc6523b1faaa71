//! engram's own worker threads.
//!
//! Heavy calls do not run on libuv's thread pool: that pool has four threads by default and every `fs`, `dns`,
//! `crypto` and `zlib` call of the process shares them, so four long calls (a `generate` of a billion tokens, a
//! `fit` nobody stops) would stall the whole process. Each call gets a thread of its own instead: an idle one
//! when there is one, a new one otherwise; a thread idle for [`IDLE_EXIT`] exits. A call settles its promise
//! through a threadsafe function (a napi `JsDeferred`), which also keeps Node alive while the call runs.
//!
//! On WebAssembly the calls stay on the runtime's async work queue (its workers are what wasi threads are made
//! of there), through the same [`run`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use napi::bindgen_prelude::{Env, PromiseRaw, Result, ToNapiValue, TypeName};

/// Runs `work` off the event loop and returns a promise of what `resolve` makes of its result (on the JS
/// thread). `work` runs under the caller's own `guard` and its `cancel` flag, which is also set if the Node
/// environment goes away (see [`cancel_on_teardown`]); its error rejects the promise.
pub fn run<'env, T, R>(
    env: &'env Env,
    cancel: &Arc<AtomicBool>,
    work: impl FnOnce() -> Result<T> + Send + 'static,
    resolve: impl FnOnce(Env, T) -> Result<R> + Send + 'static,
) -> Result<PromiseRaw<'env, R>>
where
    T: Send + 'static,
    R: ToNapiValue + TypeName + 'static,
{
    cancel_on_teardown(env, cancel)?;
    #[cfg(not(target_family = "wasm"))]
    {
        use napi::JsValue;
        let (deferred, promise) = env.create_deferred::<R, Resolver<R>>()?;
        let value = promise.value();
        let settle = Settle(Some(deferred));
        // When no thread can be started the job, and with it `settle`, is dropped: the promise rejects then
        // (an error thrown here instead would leave a promise nobody holds to reject unhandled).
        let _ = pool::submit(Box::new(move || settle.finish(work().map(|t| move |env| resolve(env, t)))));
        Ok(PromiseRaw::new(value.env, value.value))
    }
    #[cfg(target_family = "wasm")]
    {
        let task = wasm::Once { work: Some(Box::new(work)), resolve: Some(Box::new(resolve)) };
        Ok(env.spawn(task)?.promise_object())
    }
}

/// What a worker hands back to the JS thread: it builds the JS value there.
#[cfg(not(target_family = "wasm"))]
type Resolver<R> = Box<dyn FnOnce(Env) -> Result<R> + Send>;

/// A call's promise, settled exactly once: by the call's result, or, if the call is dropped without one (no
/// thread could be started for it), rejected. A napi deferred dropped unsettled would keep Node's event loop
/// alive for ever.
#[cfg(not(target_family = "wasm"))]
struct Settle<R: ToNapiValue + 'static>(Option<napi::JsDeferred<R, Resolver<R>>>);

#[cfg(not(target_family = "wasm"))]
impl<R: ToNapiValue + 'static> Settle<R> {
    fn finish(mut self, result: Result<impl FnOnce(Env) -> Result<R> + Send + 'static>) {
        if let Some(d) = self.0.take() {
            match result {
                Ok(make) => d.resolve(Box::new(make)),
                Err(e) => d.reject(e),
            }
        }
    }
}

#[cfg(not(target_family = "wasm"))]
impl<R: ToNapiValue + 'static> Drop for Settle<R> {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            d.reject(napi::Error::from_reason(
                "Error: the call could not run: the system refused to start a worker thread for it",
            ));
        }
    }
}

thread_local! {
    /// The cancel flags of the calls this thread's Node environment (the main thread's, or a worker_threads
    /// worker's: each runs on a thread of its own) has started; `None` until its teardown hook is installed.
    static STARTED: std::cell::RefCell<Option<Vec<Weak<AtomicBool>>>> = const { std::cell::RefCell::new(None) };
}

/// Sets `flag` when the Node environment that made the call goes away (a terminated worker, the process
/// exiting), so a call nobody can await any more stops instead of running on for hours on its thread.
fn cancel_on_teardown(env: &Env, flag: &Arc<AtomicBool>) -> Result<()> {
    let first = STARTED.with(|s| s.borrow().is_none());
    if first {
        env.add_env_cleanup_hook((), |()| {
            let flags = STARTED.with(|s| s.borrow_mut().take()).unwrap_or_default();
            for f in flags.iter().filter_map(Weak::upgrade) {
                f.store(true, Ordering::Relaxed);
            }
        })?;
    }
    STARTED.with(|s| {
        let mut s = s.borrow_mut();
        let list = s.get_or_insert_with(Vec::new);
        // Flags of finished calls die with their tokens; drop them now and then, not on every call.
        if list.len() >= 64 && list.len().is_power_of_two() {
            list.retain(|w| w.strong_count() > 0);
        }
        list.push(Arc::downgrade(flag));
    });
    Ok(())
}

#[cfg(not(target_family = "wasm"))]
mod pool {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    pub type Job = Box<dyn FnOnce() + Send>;

    /// How long a worker waits for another call before it exits.
    const IDLE_EXIT: Duration = Duration::from_secs(30);
    /// Candle's backward walks the graph recursively; a generic-ops path over a long sequence is deep.
    const STACK: usize = 16 << 20;

    struct Pool {
        jobs: Mutex<Sender<Job>>,
        queue: Mutex<Receiver<Job>>,
        /// Workers waiting for a job that no caller has claimed yet.
        idle: AtomicUsize,
    }

    fn pool() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let (tx, rx) = channel();
            Pool { jobs: Mutex::new(tx), queue: Mutex::new(rx), idle: AtomicUsize::new(0) }
        })
    }

    /// Takes one from `n` unless it is 0.
    fn claim(n: &AtomicUsize) -> bool {
        n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1)).is_ok()
    }

    /// Gives `job` to an idle worker, or to a new one. Each claim of an idle worker is matched by a job sent,
    /// and a worker leaves only by claiming itself, so a claimed job always finds a worker waiting.
    pub fn submit(job: Job) -> std::io::Result<()> {
        let p = pool();
        if claim(&p.idle) {
            let jobs = p.jobs.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(back) = jobs.send(job) {
                // The receiver lives in a static and is never dropped; start a worker rather than lose the job.
                drop(jobs);
                return spawn(back.0);
            }
            return Ok(());
        }
        spawn(job)
    }

    fn spawn(first: Job) -> std::io::Result<()> {
        std::thread::Builder::new().name("engram-worker".into()).stack_size(STACK).spawn(move || work(first))?;
        Ok(())
    }

    fn work(first: Job) {
        let p = pool();
        let mut job = first;
        loop {
            job();
            p.idle.fetch_add(1, Ordering::AcqRel);
            job = loop {
                let next = p.queue.lock().unwrap_or_else(|e| e.into_inner()).recv_timeout(IDLE_EXIT);
                match next {
                    Ok(j) => break j,
                    // Leave, unless every idle worker has been claimed: then a job is on its way to one of us.
                    Err(RecvTimeoutError::Timeout) if claim(&p.idle) => return,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
        }
    }
}

#[cfg(target_family = "wasm")]
mod wasm {
    use napi::bindgen_prelude::{Env, Result, ToNapiValue, TypeName};
    use napi::{Error, Task};

    type Work<T> = Box<dyn FnOnce() -> Result<T> + Send>;
    type Resolve<T, R> = Box<dyn FnOnce(Env, T) -> Result<R> + Send>;

    /// A call as libuv-style async work.
    pub struct Once<T, R> {
        pub work: Option<Work<T>>,
        pub resolve: Option<Resolve<T, R>>,
    }

    impl<T: Send + 'static, R: ToNapiValue + TypeName> Task for Once<T, R> {
        type Output = T;
        type JsValue = R;

        fn compute(&mut self) -> Result<T> {
            (self.work.take().ok_or_else(|| Error::from_reason("Error: the call ran twice"))?)()
        }

        fn resolve(&mut self, env: Env, t: T) -> Result<R> {
            (self.resolve.take().ok_or_else(|| Error::from_reason("Error: the call resolved twice"))?)(env, t)
        }
    }
}
