//! The outbound queue of one connection: bounded, single consumer, and allocating nothing while
//! it is empty (an idle connection costs its queue about a hundred bytes; tokio's mpsc channel
//! allocates a block of 32 slots up front, 1 KiB or more per connection). Senders never wait:
//! [`Sender::try_send`] fails at once when the queue is full or its receiver is gone.
//!
//! The one consumer is woken through an atomic waker (no lock per wake). A ping request rides
//! the same wake-up ([`Sender::request_ping`]), so the connection's writer waits on one thing.
//!
//! The queue is bounded in bytes as well (see [`super::budget`]): what it holds counts from
//! [`Sender::try_send`] until the writer reports it written ([`Receiver::release`]) or the
//! receiver is dropped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;

use super::budget::Budget;
use crate::monitor::entry::QueueLevel;

/// Capacity kept by a drained queue; anything beyond is given back.
const KEEP: usize = 16;

struct Shared {
    items: Mutex<VecDeque<Utf8Bytes>>,
    capacity: usize,
    waker: AtomicWaker,
    /// A ping is due (see [`Sender::request_ping`]).
    ping: AtomicBool,
    senders: AtomicUsize,
    receiver_gone: AtomicBool,
    /// Bytes queued or taken and not yet written (changed under the items lock when added).
    held: AtomicUsize,
    budget: Arc<Budget>,
    /// Since when the writer has been writing what it took, as [`ticks`] + 1 (0: it is not
    /// writing). A writer blocked by a peer that does not read stays in its write; one that is
    /// merely waiting for CPU has not taken anything yet.
    writing_since: AtomicU64,
}

/// Milliseconds since the first call (a cheap, monotonic clock for [`Shared::writing_since`]).
fn ticks() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl Shared {
    fn items(&self) -> MutexGuard<'_, VecDeque<Utf8Bytes>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrySendError {
    /// `capacity` messages are waiting.
    Full,
    /// The message would take the queue over its share of the byte budget.
    OverBudget,
    /// The receiver is gone (the connection is ending).
    Closed,
}

/// A queue of at most `capacity` messages, with no byte limit (tests).
#[cfg(test)]
pub fn channel(capacity: usize) -> (Sender, Receiver) {
    budgeted(capacity, Budget::unlimited())
}

/// A queue of at most `capacity` messages and `budget`'s per-connection share of bytes,
/// counted in `budget`.
pub fn budgeted(capacity: usize, budget: Arc<Budget>) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        items: Mutex::new(VecDeque::new()),
        capacity,
        waker: AtomicWaker::new(),
        ping: AtomicBool::new(false),
        senders: AtomicUsize::new(1),
        receiver_gone: AtomicBool::new(false),
        held: AtomicUsize::new(0),
        budget,
        writing_since: AtomicU64::new(0),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// Queues messages; cheap to clone. When the last one is dropped, the receiver sees the end.
pub struct Sender(Arc<Shared>);

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        Self(self.0.clone())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.waker.wake();
        }
    }
}

impl Sender {
    /// Queues `item` without waiting.
    pub fn try_send(&self, item: Utf8Bytes) -> Result<(), TrySendError> {
        if self.0.receiver_gone.load(Ordering::Relaxed) {
            return Err(TrySendError::Closed);
        }
        let len = item.len();
        let mut items = self.0.items();
        if items.len() >= self.0.capacity {
            return Err(TrySendError::Full);
        }
        let held = self.0.held.load(Ordering::Relaxed);
        if held.saturating_add(len) > self.0.budget.per_connection() {
            return Err(TrySendError::OverBudget);
        }
        items.push_back(item);
        self.0.held.fetch_add(len, Ordering::Relaxed);
        self.0.budget.add(len);
        drop(items);
        self.0.waker.wake();
        Ok(())
    }

    /// Asks the receiver to send a ping: [`Receiver::recv_many`] returns [`Recv::Ping`] before
    /// any further message.
    pub fn request_ping(&self) {
        self.0.ping.store(true, Ordering::Release);
        self.0.waker.wake();
    }

    /// A handle that reads the depth without keeping the queue open.
    pub fn downgrade(&self) -> WeakSender {
        WeakSender(Arc::downgrade(&self.0))
    }
}

/// Reads a queue's depth; does not count as a sender.
pub struct WeakSender(Weak<Shared>);

impl WeakSender {
    /// Messages waiting and bytes held (zeros once the queue is gone).
    pub fn level(&self) -> QueueLevel {
        self.0
            .upgrade()
            .map_or(QueueLevel::default(), |s| QueueLevel {
                messages: s.items().len(),
                bytes: s.held.load(Ordering::Relaxed),
            })
    }
}

impl Sender {
    /// Bytes this queue holds (queued, or taken and not yet written).
    pub fn held(&self) -> usize {
        self.0.held.load(Ordering::Relaxed)
    }

    /// How long the writer has been in the write of what it last took (zero when it is not
    /// writing): long only for a peer that does not read.
    pub fn stalled_for(&self) -> std::time::Duration {
        match self.0.writing_since.load(Ordering::Relaxed) {
            0 => std::time::Duration::ZERO,
            since => std::time::Duration::from_millis(ticks().saturating_sub(since - 1)),
        }
    }
}

/// What [`Receiver::recv_many`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// This many messages were moved into the buffer.
    Items(usize),
    /// A ping was requested.
    Ping,
    /// Every sender is gone and nothing is left.
    Closed,
}

/// The one consumer.
pub struct Receiver(Arc<Shared>);

impl Receiver {
    /// Waits for a ping request or messages, and moves up to `limit` messages into `buffer`.
    /// Cancel-safe: nothing is taken unless it is returned.
    pub async fn recv_many(&mut self, buffer: &mut Vec<Utf8Bytes>, limit: usize) -> Recv {
        std::future::poll_fn(|cx| {
            if let Some(got) = self.take(buffer, limit) {
                return Poll::Ready(got);
            }
            self.0.waker.register(cx.waker());
            // What was queued before the registration is seen here: nothing is missed.
            self.take(buffer, limit).map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }

    fn take(&self, buffer: &mut Vec<Utf8Bytes>, limit: usize) -> Option<Recv> {
        if self.0.ping.swap(false, Ordering::Acquire) {
            return Some(Recv::Ping);
        }
        let mut items = self.0.items();
        if !items.is_empty() {
            let n = limit.min(items.len());
            buffer.extend(items.drain(..n));
            let _ = self.0.writing_since.compare_exchange(
                0,
                ticks() + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if items.is_empty() && items.capacity() > KEEP {
                items.shrink_to(KEEP);
            }
            return Some(Recv::Items(n));
        }
        (self.0.senders.load(Ordering::Acquire) == 0).then_some(Recv::Closed)
    }

    /// Reports `bytes` of what was taken as written: they no longer count against the budget.
    pub fn release(&self, bytes: usize) {
        let bytes = bytes.min(self.0.held.load(Ordering::Relaxed));
        self.0.held.fetch_sub(bytes, Ordering::Relaxed);
        self.0.budget.sub(bytes);
        self.0.writing_since.store(0, Ordering::Relaxed);
    }

    /// A waiting message, if any (tests read queues without a runtime).
    #[cfg(test)]
    pub fn try_recv(&mut self) -> Option<Utf8Bytes> {
        let item = self.0.items().pop_front();
        if let Some(item) = &item {
            self.release(item.len());
        }
        item
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.0.receiver_gone.store(true, Ordering::Relaxed);
        let mut items = self.0.items();
        items.clear();
        let held = self.0.held.swap(0, Ordering::Relaxed);
        drop(items);
        self.0.budget.sub(held);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bounded_and_closed_when_the_receiver_is_gone() {
        let (tx, rx) = channel(2);
        assert_eq!(tx.try_send("a".into()), Ok(()));
        assert_eq!(tx.try_send("b".into()), Ok(()));
        assert_eq!(tx.try_send("c".into()), Err(TrySendError::Full));
        assert_eq!(tx.downgrade().level().messages, 2);
        drop(rx);
        assert_eq!(tx.try_send("d".into()), Err(TrySendError::Closed));
        assert_eq!(
            tx.downgrade().level().messages,
            0,
            "cleared with the receiver"
        );
    }

    #[tokio::test]
    async fn batches_in_order_wakes_on_send_and_ends_with_the_last_sender() {
        let (tx, mut rx) = channel(100);
        let tx2 = tx.clone();
        let mut buffer = Vec::new();
        for i in 0..5 {
            tx.try_send(i.to_string().into()).unwrap();
        }
        assert_eq!(rx.recv_many(&mut buffer, 3).await, Recv::Items(3));
        assert_eq!(rx.recv_many(&mut buffer, 3).await, Recv::Items(2));
        let got: Vec<&str> = buffer.iter().map(|t| t.as_str()).collect();
        assert_eq!(got, ["0", "1", "2", "3", "4"]);
        let waiting = tokio::spawn(async move {
            let mut b = Vec::new();
            let n = rx.recv_many(&mut b, 10).await;
            (n, b, rx)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx2.try_send("late".into()).unwrap();
        let (n, b, mut rx) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((n, b[0].as_str()), (Recv::Items(1), "late"));
        drop(tx);
        drop(tx2);
        let ended = tokio::time::timeout(Duration::from_secs(5), rx.recv_many(&mut buffer, 1));
        assert_eq!(ended.await.unwrap(), Recv::Closed);
    }

    #[tokio::test]
    async fn a_ping_request_wakes_the_receiver_and_comes_first() {
        let (tx, mut rx) = channel(10);
        let mut buffer = Vec::new();
        let waiting = tokio::spawn(async move {
            let mut b = Vec::new();
            let got = rx.recv_many(&mut b, 10).await;
            (got, rx)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.request_ping();
        let (got, mut rx) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Recv::Ping);
        tx.try_send("m".into()).unwrap();
        tx.request_ping();
        assert_eq!(rx.recv_many(&mut buffer, 10).await, Recv::Ping);
        assert_eq!(rx.recv_many(&mut buffer, 10).await, Recv::Items(1));
    }

    #[test]
    fn bytes_are_bounded_per_queue_and_counted_until_written_or_dropped() {
        let budget = Budget::new(10, usize::MAX);
        let (tx, rx) = budgeted(100, budget.clone());
        assert_eq!(tx.try_send("12345".into()), Ok(()));
        assert_eq!(tx.try_send("123456".into()), Err(TrySendError::OverBudget));
        assert_eq!(tx.try_send("12345".into()), Ok(()));
        assert_eq!((tx.held(), budget.held()), (10, 10));
        // Taken by the writer: still held until written.
        let mut buffer = Vec::new();
        assert_eq!(rx.take(&mut buffer, 1), Some(Recv::Items(1)));
        assert_eq!(budget.held(), 10);
        rx.release(5);
        assert_eq!((tx.held(), budget.held()), (5, 5));
        let (tx2, rx2) = budgeted(100, budget.clone());
        tx2.try_send("abc".into()).unwrap();
        assert_eq!(budget.held(), 8);
        drop(rx2);
        drop(rx);
        assert_eq!(
            (tx.held(), budget.held()),
            (0, 0),
            "given back with the receivers"
        );
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_memory_back() {
        let (tx, mut rx) = channel(1000);
        for _ in 0..500 {
            tx.try_send("x".into()).unwrap();
        }
        let mut buffer = Vec::new();
        while rx.recv_many(&mut buffer, 64).await == Recv::Items(64) {}
        assert!(rx.0.items().capacity() <= KEEP);
    }
}
