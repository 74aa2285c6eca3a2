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
//!
//! **Leave notices are held once.** Each is written to the hub's [`LeaveLog`], and a queue
//! holds them as a run: its last item may be an *open run* that follows the log, so every notice
//! published after it reaches this client without the hub touching its queue again (only a
//! writer that is waiting is woken). A text queued behind an open run closes it at the notices
//! published so far. A mass departure of N clients thus costs each queue one item instead of N:
//! a client that reads hears every notice however many leave at once, and one that is gone costs
//! next to nothing until its session notices. A run older than the log is [`Recv::Lagged`].

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::Poll;

use axum::extract::ws::Utf8Bytes;

use super::budget::Budget;
use crate::monitor::entry::QueueLevel;
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, AtomicWaker, Mutex, MutexGuard};

/// Capacity kept by a drained queue; anything beyond is given back.
const KEEP: usize = 16;

/// Leave notices kept for the queues' runs, at most (the oldest go first).
pub const LEAVE_LOG_CAPACITY: usize = 65_536;

/// The leave notices of the last [`LEAVE_LOG_CAPACITY`] departures, numbered in order, and how
/// far they have been published to the queues.
pub struct LeaveLog {
    inner: Mutex<LogInner>,
    capacity: usize,
    /// Notices numbered below this are published: open runs include them.
    published: AtomicU64,
}

#[derive(Default)]
struct LogInner {
    /// The number of `texts[0]`.
    first: u64,
    texts: VecDeque<Utf8Bytes>,
}

impl LeaveLog {
    pub fn new() -> Arc<Self> {
        Self::with_capacity(LEAVE_LOG_CAPACITY)
    }

    pub fn with_capacity(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(LogInner::default()),
            capacity: capacity.max(1),
            published: AtomicU64::new(0),
        })
    }

    fn inner(&self) -> MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a notice (not yet published); returns its number.
    pub fn push(&self, text: Utf8Bytes) -> u64 {
        let mut log = self.inner();
        if log.texts.len() == self.capacity {
            log.texts.pop_front();
            log.first += 1;
        }
        log.texts.push_back(text);
        log.first + log.texts.len() as u64 - 1
    }

    /// Publishes every notice pushed so far; returns the numbers newly published (`from..to`).
    /// The caller then offers them to the queues that do not follow the log
    /// ([`Sender::offer_leaves`]); the ones that do see them at once.
    pub fn publish(&self) -> std::ops::Range<u64> {
        let end = {
            let log = self.inner();
            log.first + log.texts.len() as u64
        };
        let from = self.published.swap(end, Ordering::SeqCst);
        from..end.max(from)
    }

    fn published(&self) -> u64 {
        self.published.load(Ordering::SeqCst)
    }

    /// Appends the notices `from..to` to `out`; `false` when some are no longer held.
    fn copy(&self, from: u64, to: u64, out: &mut Vec<Utf8Bytes>) -> bool {
        let log = self.inner();
        if from < log.first || to > log.first + log.texts.len() as u64 {
            return false;
        }
        let range = (from - log.first) as usize..(to - log.first) as usize;
        out.extend(log.texts.range(range).cloned());
        true
    }

    /// Notices held.
    pub fn len(&self) -> usize {
        self.inner().texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Runs one job at a time for many requesters, none waiting: a request made while the job
/// runs makes the running thread run it again before it stops (the hub publishes the leave log
/// this way). One atomic carries both the requests and who runs.
#[derive(Debug, Default)]
pub struct Combined {
    requests: AtomicUsize,
}

impl Combined {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `job` here, unless another thread is running it: that thread then runs it once
    /// more, after this call's effects (made before it) are visible to it.
    pub fn run(&self, mut job: impl FnMut()) {
        if self.requests.fetch_add(1, Ordering::AcqRel) != 0 {
            return;
        }
        let mut served = 1;
        loop {
            job();
            match self
                .requests
                .compare_exchange(served, 0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                // More arrived while the job ran.
                Err(now) => served = now,
            }
        }
    }
}

/// One queued item.
#[derive(Debug, Clone)]
enum Item {
    Text(Utf8Bytes),
    /// The leave notices `from..to` of the log; `to: None` follows the log (only ever last).
    Leaves {
        from: u64,
        to: Option<u64>,
    },
}

struct State {
    items: VecDeque<Item>,
    /// Notices numbered below this are queued (or were published before this queue existed).
    leaves_from: u64,
}

struct Shared {
    state: Mutex<State>,
    leaves: Arc<LeaveLog>,
    /// The last item is an open run of leave notices.
    following: AtomicBool,
    /// The writer waits with an open run and nothing else to do: a notice published must wake
    /// it (see [`Sender::offer_leaves`]).
    idle: AtomicBool,
    capacity: usize,
    waker: AtomicWaker,
    /// A ping is due (see [`Sender::request_ping`]).
    ping: AtomicBool,
    senders: AtomicUsize,
    receiver_gone: AtomicBool,
    /// Bytes queued or taken and not yet written (changed under the state lock when added).
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
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes an open run at the notices published so far (under the state lock).
    fn close_run(&self, state: &mut State) {
        if !self.following.load(Ordering::SeqCst) {
            return;
        }
        // Not following any more *before* reading how far the log is published (both SeqCst),
        // while a publisher publishes before it looks whether this queue follows: either it
        // sees this queue not following and offers it the notices (after this lock), or this
        // read sees them published and the closed run includes them. Found by loom the other
        // way round: a notice published in between reached neither.
        self.following.store(false, Ordering::SeqCst);
        let published = self.leaves.published();
        match state.items.back_mut() {
            Some(Item::Leaves { from, to }) if to.is_none() => {
                if *from >= published {
                    state.items.pop_back();
                } else {
                    *to = Some(published);
                }
            }
            _ => unreachable!("following without an open run"),
        }
        state.leaves_from = published;
    }
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrySendError {
    /// `capacity` items are waiting (a run of leave notices is one item).
    Full,
    /// The message would take the queue over its share of the byte budget.
    OverBudget,
    /// The receiver is gone (the connection is ending).
    Closed,
}

/// A queue of at most `capacity` messages, with no byte limit (tests).
#[cfg(test)]
pub fn channel(capacity: usize) -> (Sender, Receiver) {
    budgeted(capacity, Budget::unlimited(), LeaveLog::new())
}

/// A queue of at most `capacity` items and `budget`'s per-connection share of bytes, counted
/// in `budget`; it gets the leave notices published in `leaves` from now on.
pub fn budgeted(capacity: usize, budget: Arc<Budget>, leaves: Arc<LeaveLog>) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            leaves_from: leaves.published(),
        }),
        leaves,
        following: AtomicBool::new(false),
        idle: AtomicBool::new(false),
        capacity,
        waker: AtomicWaker::new(),
        ping: AtomicBool::new(false),
        senders: AtomicUsize::new(1),
        receiver_gone: AtomicBool::new(false),
        held: AtomicUsize::new(0),
        budget,
        writing_since: AtomicU64::new(0),
    });
    let receiver = Receiver {
        shared: shared.clone(),
        taken: 0,
    };
    (Sender(shared), receiver)
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
    /// Queues `item` without waiting (closing an open run of leave notices first).
    pub fn try_send(&self, item: Utf8Bytes) -> Result<(), TrySendError> {
        if self.0.receiver_gone.load(Ordering::Relaxed) {
            return Err(TrySendError::Closed);
        }
        let len = item.len();
        let mut state = self.0.state();
        self.0.close_run(&mut state);
        if state.items.len() >= self.0.capacity {
            return Err(TrySendError::Full);
        }
        let held = self.0.held.load(Ordering::Relaxed);
        if held.saturating_add(len) > self.0.budget.per_connection() {
            return Err(TrySendError::OverBudget);
        }
        state.items.push_back(Item::Text(item));
        self.0.held.fetch_add(len, Ordering::Relaxed);
        self.0.budget.add(len);
        drop(state);
        self.0.waker.wake();
        Ok(())
    }

    /// Offers the leave notices `published` (just published in the log, see
    /// [`LeaveLog::publish`]) without waiting. A queue that follows the log has them already: at
    /// most its waiting writer is woken, with no lock taken. Any other gets an open run from its
    /// first notice not yet queued (one item; `Full` when there is no room for it). Their texts
    /// are held by the log, not counted against the byte budget.
    pub fn offer_leaves(&self, published: std::ops::Range<u64>) -> Result<(), TrySendError> {
        let shared = &self.0;
        if shared.receiver_gone.load(Ordering::Relaxed) {
            return Err(TrySendError::Closed);
        }
        if !shared.following.load(Ordering::SeqCst) {
            let mut state = shared.state();
            if !shared.following.load(Ordering::SeqCst) {
                let from = state.leaves_from.max(published.start);
                if from >= published.end {
                    return Ok(());
                }
                if state.items.len() >= shared.capacity {
                    return Err(TrySendError::Full);
                }
                state.items.push_back(Item::Leaves { from, to: None });
                shared.following.store(true, Ordering::SeqCst);
                drop(state);
                shared.waker.wake();
                return Ok(());
            }
        }
        if shared.idle.swap(false, Ordering::SeqCst) {
            shared.waker.wake();
        }
        Ok(())
    }

    /// Asks the receiver to send a ping: [`Receiver::recv_many`] returns [`Recv::Ping`] before
    /// any further message.
    pub fn request_ping(&self) {
        // A swap, not a store: the reader swaps the flag back, and loom (0.7) lets a plain
        // store slip between the two halves of a concurrent swap (tokio-rs/loom#254), which
        // it then reports as a lost wake-up. The same goes for `idle` below.
        self.0.ping.swap(true, Ordering::Release);
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
        self.0.upgrade().map_or(QueueLevel::default(), |s| {
            let published = s.leaves.published();
            let messages = s
                .state()
                .items
                .iter()
                .map(|item| match item {
                    Item::Text(_) => 1,
                    Item::Leaves { from, to } => {
                        to.unwrap_or(published).saturating_sub(*from) as usize
                    }
                })
                .sum();
            QueueLevel {
                messages,
                bytes: s.held.load(Ordering::Relaxed),
            }
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
    /// Leave notices for this queue were dropped from the log before they were written: the
    /// client would miss them, so it is a slow consumer.
    Lagged,
}

/// The one consumer.
pub struct Receiver {
    shared: Arc<Shared>,
    /// Bytes of what was taken and not yet reported written.
    taken: usize,
}

impl Receiver {
    /// Waits for a ping request or messages, and moves up to `limit` messages into `buffer`
    /// (leave notices as their texts; a run longer than what is left of `limit` is split).
    /// Cancel-safe: nothing is taken unless it is returned.
    pub async fn recv_many(&mut self, buffer: &mut Vec<Utf8Bytes>, limit: usize) -> Recv {
        std::future::poll_fn(|cx| {
            if let Some(got) = self.take(buffer, limit) {
                return Poll::Ready(got);
            }
            self.shared.waker.register(cx.waker());
            // Published notices wake an idle writer (see `Sender::offer_leaves`): say so before
            // looking again, so a notice published in between is either seen here or wakes it.
            self.shared.idle.swap(true, Ordering::SeqCst);
            // What was queued before the registration is seen here: nothing is missed.
            let got = self.take(buffer, limit);
            if got.is_some() {
                self.shared.idle.swap(false, Ordering::SeqCst);
            }
            got.map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }

    fn take(&mut self, buffer: &mut Vec<Utf8Bytes>, limit: usize) -> Option<Recv> {
        let shared = &self.shared;
        if shared.ping.swap(false, Ordering::Acquire) {
            return Some(Recv::Ping);
        }
        let mut state = shared.state();
        let mut n = 0;
        while n < limit {
            let Some(item) = state.items.front_mut() else {
                break;
            };
            match item {
                Item::Text(text) => {
                    self.taken += text.len();
                    buffer.push(std::mem::take(text));
                    state.items.pop_front();
                    n += 1;
                }
                Item::Leaves { from, to } => {
                    let end = to.unwrap_or_else(|| shared.leaves.published());
                    let last = end.min(*from + (limit - n) as u64);
                    if last <= *from {
                        // An open run with nothing published since: it stays, following.
                        break;
                    }
                    if !shared.leaves.copy(*from, last, buffer) {
                        return Some(Recv::Lagged);
                    }
                    n += (last - *from) as usize;
                    *from = last;
                    if to.is_some() && last == end {
                        state.items.pop_front();
                    } else if to.is_none() {
                        // Still following: it is the last item.
                        break;
                    }
                }
            }
        }
        if n == 0 {
            // Under the state lock: a sender cannot queue something and leave in between
            // (found by loom when the lock was let go first).
            return (shared.senders.load(Ordering::Acquire) == 0).then_some(Recv::Closed);
        }
        let _ = shared.writing_since.compare_exchange(
            0,
            ticks() + 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if state.items.is_empty() && state.items.capacity() > KEEP {
            state.items.shrink_to(KEEP);
        }
        Some(Recv::Items(n))
    }

    /// Reports what was taken as written: it no longer counts against the budget.
    pub fn release(&mut self) {
        let bytes = std::mem::take(&mut self.taken).min(self.shared.held.load(Ordering::Relaxed));
        self.shared.held.fetch_sub(bytes, Ordering::Relaxed);
        self.shared.budget.sub(bytes);
        self.shared.writing_since.store(0, Ordering::Relaxed);
    }

    /// A waiting message, if any, written at once (tests read queues without a runtime).
    #[cfg(test)]
    pub fn try_recv(&mut self) -> Option<Utf8Bytes> {
        let mut one = Vec::new();
        match self.take(&mut one, 1) {
            Some(Recv::Items(1)) => {
                self.release();
                one.pop()
            }
            _ => None,
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.receiver_gone.store(true, Ordering::Relaxed);
        let mut state = shared.state();
        state.items.clear();
        shared.following.store(false, Ordering::SeqCst);
        let held = shared.held.swap(0, Ordering::Relaxed);
        drop(state);
        shared.budget.sub(held);
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
        let (tx, mut rx) = budgeted(100, budget.clone(), LeaveLog::new());
        assert_eq!(tx.try_send("12345".into()), Ok(()));
        assert_eq!(tx.try_send("123456".into()), Err(TrySendError::OverBudget));
        assert_eq!(tx.try_send("12345".into()), Ok(()));
        assert_eq!((tx.held(), budget.held()), (10, 10));
        // Taken by the writer: still held until written.
        let mut buffer = Vec::new();
        assert_eq!(rx.take(&mut buffer, 1), Some(Recv::Items(1)));
        assert_eq!(budget.held(), 10);
        rx.release();
        assert_eq!((tx.held(), budget.held()), (5, 5));
        let (tx2, rx2) = budgeted(100, budget.clone(), LeaveLog::new());
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

    /// Pushes `texts` to the log and publishes them, as the hub does.
    fn publish(log: &LeaveLog, tx: &Sender, texts: impl IntoIterator<Item = String>) {
        for t in texts {
            log.push(t.into());
        }
        let published = log.publish();
        let _ = tx.offer_leaves(published);
    }

    #[test]
    fn leave_notices_take_one_item_follow_the_log_and_come_out_in_order_among_texts() {
        let log = LeaveLog::new();
        let (tx, mut rx) = budgeted(3, Budget::unlimited(), log.clone());
        tx.try_send("before".into()).unwrap();
        // One open run: every later notice joins it without the queue being offered it.
        publish(&log, &tx, (0..10).map(|i| format!("left {i}")));
        for i in 10..1_000 {
            log.push(format!("left {i}").into());
            log.publish();
        }
        assert_eq!(tx.downgrade().level().messages, 1_001);
        let mut got = Vec::new();
        assert_eq!(rx.take(&mut got, 64), Some(Recv::Items(64)));
        rx.release();
        // A text closes the run; a later notice opens another: three items, the queue is full.
        tx.try_send("after".into()).unwrap();
        publish(&log, &tx, ["left late".to_owned()]);
        assert_eq!(tx.try_send("one too many".into()), Err(TrySendError::Full));
        // Taken in batches of 64: the run is split, never reordered.
        while let Some(Recv::Items(_)) = rx.take(&mut got, 64) {
            rx.release();
        }
        let got: Vec<&str> = got.iter().map(|t| t.as_str()).collect();
        assert_eq!(got.len(), 1_003);
        assert_eq!(got[0], "before");
        for (i, text) in got[1..1_001].iter().enumerate() {
            assert_eq!(*text, format!("left {i}"));
        }
        assert_eq!(&got[1_001..], ["after", "left late"]);
    }

    #[test]
    fn a_queue_gets_only_the_notices_published_after_it_was_made_each_once() {
        let log = LeaveLog::new();
        let (early, mut early_rx) = budgeted(8, Budget::unlimited(), log.clone());
        publish(&log, &early, ["left a".to_owned()]);
        let (late, mut late_rx) = budgeted(8, Budget::unlimited(), log.clone());
        log.push("left b".into());
        let published = log.publish();
        for tx in [&early, &late] {
            tx.offer_leaves(published.clone()).unwrap();
            // Offered twice (a queue is never offered a range twice, but a text between
            // must not make it come again).
            tx.try_send("text".into()).unwrap();
            tx.offer_leaves(published.clone()).unwrap();
        }
        let drain = |rx: &mut Receiver| {
            let mut got = Vec::new();
            while let Some(Recv::Items(_)) = rx.take(&mut got, 64) {}
            got.iter().map(|t| t.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(drain(&mut early_rx), ["left a", "left b", "text"]);
        assert_eq!(drain(&mut late_rx), ["left b", "text"]);
    }

    #[test]
    fn a_run_older_than_the_log_is_reported_lagged_never_skipped() {
        let log = LeaveLog::with_capacity(4);
        let (tx, mut rx) = budgeted(8, Budget::unlimited(), log.clone());
        publish(&log, &tx, (0..6).map(|i| format!("left {i}")));
        assert_eq!(log.len(), 4, "the log keeps its capacity");
        assert_eq!(rx.take(&mut Vec::new(), 64), Some(Recv::Lagged));
    }

    #[tokio::test]
    async fn a_waiting_writer_following_the_log_is_woken_by_a_published_notice() {
        let log = LeaveLog::new();
        let (tx, mut rx) = budgeted(8, Budget::unlimited(), log.clone());
        publish(&log, &tx, ["left a".to_owned()]);
        let mut got = Vec::new();
        assert_eq!(rx.recv_many(&mut got, 8).await, Recv::Items(1));
        let waiting = tokio::spawn(async move {
            let mut b = Vec::new();
            let n = rx.recv_many(&mut b, 8).await;
            (n, b)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        publish(&log, &tx, ["left b".to_owned()]);
        let (n, b) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((n, b[0].as_str()), (Recv::Items(1), "left b"));
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_memory_back() {
        let (tx, mut rx) = channel(1000);
        for _ in 0..500 {
            tx.try_send("x".into()).unwrap();
        }
        let mut buffer = Vec::new();
        while rx.recv_many(&mut buffer, 64).await == Recv::Items(64) {}
        assert!(rx.shared.state().items.capacity() <= KEEP);
    }
}

/// Model-checked with loom (`RUSTFLAGS="--cfg wsmon_loom" cargo test --lib loom`): every
/// interleaving of a writer waiting on the queue with the senders, within loom's bounds.
#[cfg(all(test, wsmon_loom))]
mod loom_tests {
    use loom::future::block_on;
    use loom::thread;

    use super::*;

    fn recv(rx: &mut Receiver) -> (Recv, Vec<String>) {
        let mut got = Vec::new();
        let r = block_on(rx.recv_many(&mut got, 8));
        rx.release();
        (r, got.iter().map(|t| t.to_string()).collect())
    }

    #[test]
    fn loom_messages_from_two_senders_arrive_then_the_end_none_lost() {
        loom::model(|| {
            let (tx, mut rx) = channel(4);
            let tx2 = tx.clone();
            let a = thread::spawn(move || tx.try_send("a".into()).unwrap());
            let b = thread::spawn(move || tx2.try_send("b".into()).unwrap());
            let mut got = Vec::new();
            loop {
                match recv(&mut rx) {
                    (Recv::Items(_), texts) => got.extend(texts),
                    (Recv::Closed, _) => break,
                    other => panic!("{other:?}"),
                }
            }
            a.join().unwrap();
            b.join().unwrap();
            got.sort();
            assert_eq!(got, ["a", "b"]);
        });
    }

    #[test]
    fn loom_a_ping_requested_while_the_writer_registers_wakes_it() {
        loom::model(|| {
            let (tx, mut rx) = channel(4);
            let pinger = thread::spawn(move || {
                tx.request_ping();
                tx
            });
            assert_eq!(recv(&mut rx).0, Recv::Ping);
            drop(pinger.join().unwrap());
        });
    }

    #[test]
    fn loom_a_notice_published_while_a_following_writer_waits_wakes_it() {
        loom::model(|| {
            let log = LeaveLog::with_capacity(8);
            let (tx, mut rx) = budgeted(4, Budget::unlimited(), log.clone());
            log.push("left a".into());
            tx.offer_leaves(log.publish()).unwrap();
            assert_eq!(recv(&mut rx).1, ["left a"]);
            let publisher = {
                let log = log.clone();
                thread::spawn(move || {
                    log.push("left b".into());
                    tx.offer_leaves(log.publish()).unwrap();
                    tx
                })
            };
            assert_eq!(recv(&mut rx), (Recv::Items(1), vec!["left b".to_owned()]));
            drop(publisher.join().unwrap());
        });
    }

    #[test]
    fn loom_notices_from_two_departures_at_once_are_both_published() {
        loom::model(|| {
            let log = LeaveLog::with_capacity(8);
            let publishing = std::sync::Arc::new(Combined::new());
            let (tx, mut rx) = budgeted(4, Budget::unlimited(), log.clone());
            let tx = std::sync::Arc::new(tx);
            let departures: Vec<_> = ["left a", "left b"]
                .into_iter()
                .map(|text| {
                    let (log, publishing, tx) = (log.clone(), publishing.clone(), tx.clone());
                    thread::spawn(move || {
                        log.push(text.into());
                        publishing.run(|| {
                            let published = log.publish();
                            if !published.is_empty() {
                                tx.offer_leaves(published).unwrap();
                            }
                        });
                    })
                })
                .collect();
            for d in departures {
                d.join().unwrap();
            }
            let mut got = Vec::new();
            while let Some(Recv::Items(_)) = rx.take(&mut got, 8) {}
            let mut got: Vec<String> = got.iter().map(|t| t.to_string()).collect();
            got.sort();
            assert_eq!(got, ["left a", "left b"]);
        });
    }

    #[test]
    fn loom_a_text_racing_a_published_notice_gets_each_once() {
        loom::model(|| {
            let log = LeaveLog::with_capacity(8);
            let (tx, mut rx) = budgeted(4, Budget::unlimited(), log.clone());
            log.push("left a".into());
            tx.offer_leaves(log.publish()).unwrap();
            let tx2 = tx.clone();
            let texter = thread::spawn(move || tx2.try_send("text".into()).unwrap());
            let publisher = {
                let log = log.clone();
                thread::spawn(move || {
                    log.push("left b".into());
                    tx.offer_leaves(log.publish()).unwrap();
                })
            };
            texter.join().unwrap();
            publisher.join().unwrap();
            let mut got = Vec::new();
            while let (Recv::Items(_), texts) = recv(&mut rx) {
                got.extend(texts);
            }
            assert_eq!(got[0], "left a");
            let rest: Vec<&str> = got[1..].iter().map(String::as_str).collect();
            assert!(
                rest == ["text", "left b"] || rest == ["left b", "text"],
                "{got:?}"
            );
        });
    }
}
