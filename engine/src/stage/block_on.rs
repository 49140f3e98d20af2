//! Drives a future to completion on the current thread without an async runtime.
//!
//! The local backends (file finder, host networker) implement async traits but
//! never wait on I/O readiness, so their futures complete on the first polls. This
//! keeps `rkt run` of a local image free of any runtime start-up; finders that do
//! network I/O say so (`ImageFinder::needs_runtime`) and get a real runtime.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Polls `future` until it is ready, parking the thread between polls so a future
/// woken from another thread still completes.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let thread = std::thread::current();
    let waker = Waker::from(std::sync::Arc::new(ThreadWaker(thread)));
    let mut cx = Context::from_waker(&waker);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => std::thread::park(),
        }
    }
}

struct ThreadWaker(std::thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ready_future_completes() {
        assert_eq!(super::block_on(async { 7 }), 7);
    }
}
