//! The mixer's runtime on tokio (the binary's, and the benchmarks').
//!
//! The mixer is generic over tor-rtcompat's `SleepProvider + Spawn +
//! Blocking`. tor-rtcompat's own tokio runtime type is only reachable through
//! its TLS-carrying `PreferredRuntime`, which the mixer does not need, so
//! this is the small adapter over a tokio runtime handle.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::{FutureObj, Spawn, SpawnError};
use tor_rtcompat::{Blocking, SleepProvider};

/// A handle to a tokio runtime.
#[derive(Clone, Debug)]
pub struct TokioRt(pub tokio::runtime::Handle);

impl TokioRt {
    /// The runtime of the calling task.
    pub fn current() -> Self {
        Self(tokio::runtime::Handle::current())
    }
}

impl SleepProvider for TokioRt {
    type SleepFuture = tokio::time::Sleep;
    fn sleep(&self, duration: Duration) -> Self::SleepFuture {
        tokio::time::sleep(duration)
    }
}

impl Spawn for TokioRt {
    fn spawn_obj(&self, future: FutureObj<'static, ()>) -> Result<(), SpawnError> {
        drop(self.0.spawn(future));
        Ok(())
    }
}

/// The result of a blocking task; resumes its panic if it panicked.
pub struct Join<T>(tokio::task::JoinHandle<T>);

impl<T> Future for Join<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match Pin::new(&mut self.0).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(t)) => Poll::Ready(t),
            Poll::Ready(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only happens while the runtime itself shuts down.
            Poll::Ready(Err(_)) => Poll::Pending,
        }
    }
}

impl Blocking for TokioRt {
    type ThreadHandle<T: Send + 'static> = Join<T>;

    fn spawn_blocking<F, T>(&self, f: F) -> Join<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Join(self.0.spawn_blocking(f))
    }

    fn reenter_block_on<F: Future>(&self, future: F) -> F::Output {
        self.0.block_on(future)
    }

    fn blocking_io<F, T>(&self, f: F) -> impl Future<Output = T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        std::future::ready(tokio::task::block_in_place(f))
    }
}
