//! Requests this node sent to others, awaiting replies (bounded, each forgotten on timeout),
//! and the last sequence number seen from every other node (bounded), which turns a gap into
//! a count of messages this node missed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use tokio::sync::oneshot;

type Reply = (u16, serde_json::Value);

/// Requests in flight, at most `max`.
pub(crate) struct Pending {
    max: usize,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
}

impl Pending {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            next: AtomicU64::new(1),
            waiting: Mutex::default(),
        }
    }

    /// A new request id and where its reply arrives; `None` when `max` are in flight.
    pub fn register(&self) -> Option<(u64, oneshot::Receiver<Reply>)> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.len() >= self.max {
            return None;
        }
        let id = self.next.fetch_add(1, Relaxed);
        let (tx, rx) = oneshot::channel();
        waiting.insert(id, tx);
        Some((id, rx))
    }

    /// Hands a reply to its request; replies nobody waits for (late, or forged) are ignored.
    pub fn complete(&self, id: u64, status: u16, body: serde_json::Value) {
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(tx) = waiting {
            let _ = tx.send((status, body));
        }
    }

    pub fn forget(&self, id: u64) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The last `(epoch, seq)` seen per publishing node, for at most `max` nodes.
pub(crate) struct Sequences {
    max: usize,
    last: Mutex<HashMap<String, (u64, u64)>>,
}

impl Sequences {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            last: Mutex::default(),
        }
    }

    /// Records a message and returns how many of `node`'s messages were skipped before it.
    /// A new epoch (the node restarted) starts over without counting.
    pub fn observe(&self, node: &str, epoch: u64, seq: u64) -> u64 {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get_mut(node) {
            Some((e, s)) if *e == epoch => {
                let missed = seq.saturating_sub(*s + 1);
                *s = (*s).max(seq);
                missed
            }
            Some(entry) => {
                *entry = (epoch, seq);
                0
            }
            None => {
                if last.len() >= self.max {
                    last.clear();
                }
                last.insert(node.to_owned(), (epoch, seq));
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_counted_per_node_and_epoch() {
        let s = Sequences::new(2);
        assert_eq!(s.observe("a", 1, 1), 0);
        assert_eq!(s.observe("a", 1, 2), 0);
        assert_eq!(s.observe("a", 1, 6), 3);
        assert_eq!(s.observe("b", 1, 10), 0);
        assert_eq!(s.observe("a", 2, 1), 0, "a restarted");
        assert_eq!(s.observe("a", 2, 3), 1);
        assert_eq!(s.observe("a", 2, 2), 0, "late duplicate");
        assert_eq!(
            s.observe("c", 1, 1),
            0,
            "a third node clears the bounded map"
        );
        assert_eq!(s.observe("a", 2, 9), 0, "a is new again after the clear");
    }

    #[tokio::test]
    async fn pending_requests_are_bounded_and_late_replies_ignored() {
        let p = Pending::new(2);
        let (a, ra) = p.register().unwrap();
        let (b, _rb) = p.register().unwrap();
        assert!(p.register().is_none());
        p.complete(a, 200, serde_json::json!({"ok": true}));
        assert_eq!(ra.await.unwrap().0, 200);
        p.forget(b);
        p.complete(b, 200, serde_json::Value::Null);
        p.complete(999, 200, serde_json::Value::Null);
        assert_eq!(p.in_flight(), 0);
    }
}
