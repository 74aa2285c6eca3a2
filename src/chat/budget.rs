//! The byte budget of outbound data: what is held for clients (queued, or taken by the writer
//! and not yet written) is bounded per connection (`websocket.outbound_queue_bytes`) and for the
//! whole process (`limits.max_outbound_bytes`).
//!
//! A connection over its own share is closed as `slow_consumer`. When the process is over its
//! ceiling, the connections holding the most are shed (closed as `slow_consumer`) until what is
//! left fits; a connection that keeps up holds next to nothing and is never chosen.
//!
//! Bytes are counted per client: a broadcast waiting in 100 queues counts 100 times though it
//! is stored once, so the figure is an upper bound of the memory it stands for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Which budget a shed enforced: a label of telemetry's, like every label.
pub use crate::telemetry::metrics::Shed;

/// The process-wide count and both limits; shared by every queue.
#[derive(Debug)]
pub struct Budget {
    held: AtomicUsize,
    per_connection: usize,
    ceiling: usize,
}

impl Budget {
    pub fn new(per_connection: usize, ceiling: usize) -> Arc<Self> {
        Arc::new(Self {
            held: AtomicUsize::new(0),
            per_connection,
            ceiling,
        })
    }

    /// No byte limit (tests and embedders that bound by message count alone).
    pub fn unlimited() -> Arc<Self> {
        Self::new(usize::MAX, usize::MAX)
    }

    /// Bytes held for all clients now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// A connection's share.
    pub fn per_connection(&self) -> usize {
        self.per_connection
    }

    /// How far the process is over its ceiling, if it is.
    pub fn excess(&self) -> Option<usize> {
        self.held().checked_sub(self.ceiling).filter(|e| *e > 0)
    }

    pub(super) fn add(&self, n: usize) {
        self.held.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn sub(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Picks the members to shed so that `excess` bytes are freed: the largest holders first.
/// `holders` are (bytes held, member) of the members not already closing; `closing` is what the
/// members already closing will give back. Returns the chosen members.
pub fn choose<T>(mut holders: Vec<(usize, T)>, excess: usize, closing: usize) -> Vec<T> {
    let Some(mut still) = excess.checked_sub(closing).filter(|e| *e > 0) else {
        return Vec::new();
    };
    holders.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
    let mut chosen = Vec::new();
    for (bytes, member) in holders {
        if bytes == 0 {
            break;
        }
        chosen.push(member);
        if bytes >= still {
            break;
        }
        still -= bytes;
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_holders_go_first_and_no_more_than_needed() {
        let holders = vec![
            (10, "a"),
            (500, "b"),
            (0, "keeps-up"),
            (300, "c"),
            (20, "d"),
        ];
        assert_eq!(choose(holders.clone(), 400, 0), ["b"]);
        assert_eq!(choose(holders.clone(), 700, 0), ["b", "c"]);
        assert_eq!(choose(holders.clone(), 10_000, 0), ["b", "c", "d", "a"]);
        // What closing members give back counts first.
        assert!(choose(holders, 400, 400).is_empty());
    }

    #[test]
    fn excess_is_what_is_over_the_ceiling() {
        let b = Budget::new(100, 1_000);
        b.add(900);
        assert_eq!(b.excess(), None);
        b.add(200);
        assert_eq!(b.excess(), Some(100));
        b.sub(1_100);
        assert_eq!(b.held(), 0);
    }
}
