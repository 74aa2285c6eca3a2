//! The primitives of the hand-written concurrency (the outbound queue and its leave log, the
//! connection's close waker): std's atomics and mutex and futures' atomic waker in a build, and
//! loom's when model-checking them (`RUSTFLAGS="--cfg wsmon_loom"`, see the README's "Test").
//! Only the state those protocols synchronise on goes through here; counters stay std.

#[cfg(not(wsmon_loom))]
pub use futures_util::task::AtomicWaker;
#[cfg(not(wsmon_loom))]
pub use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(not(wsmon_loom))]
pub use std::sync::{Mutex, MutexGuard};

/// loom's atomic waker with futures' signature (`register` by reference).
#[cfg(wsmon_loom)]
#[derive(Debug, Default)]
pub struct AtomicWaker(loom::future::AtomicWaker);

#[cfg(wsmon_loom)]
impl AtomicWaker {
    pub fn new() -> Self {
        Self(loom::future::AtomicWaker::new())
    }

    pub fn register(&self, waker: &std::task::Waker) {
        self.0.register_by_ref(waker);
    }

    pub fn wake(&self) {
        self.0.wake();
    }
}
#[cfg(wsmon_loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(wsmon_loom)]
pub use loom::sync::{Mutex, MutexGuard};
