//! One live connection's record: immutable identity plus lock-free counters that the message
//! path updates with relaxed atomics, and the close request an operator or policy can raise.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use uuid::Uuid;

use super::registry::Totals;
use crate::reasons::CloseReason;
use crate::sync::{AtomicU8, AtomicWaker};

/// What is known about a connection when it is registered.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The client-chosen id (validated by the caller; data, never markup).
    pub client_id: String,
    /// The client's address, after trusted-proxy resolution.
    pub address: Option<IpAddr>,
    /// The `User-Agent` header, truncated to [`MAX_USER_AGENT`] bytes.
    pub user_agent: Option<String>,
    /// The HTTP route template that accepted the connection (e.g. `/ws/{client_id}`).
    pub route: Option<&'static str>,
}

impl ConnectionInfo {
    /// Info with only a client id (no address, no user agent).
    pub fn new(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            address: None,
            user_agent: None,
            route: None,
        }
    }
}

/// Longest user agent kept per connection (bytes); longer ones are cut at a char boundary.
pub const MAX_USER_AGENT: usize = 256;

/// How full a connection's outbound queue is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueLevel {
    /// Messages waiting.
    pub messages: usize,
    /// Bytes held: waiting, or taken by the writer and not yet written.
    pub bytes: usize,
}

/// Reads a connection's outbound queue level; supplied by whoever owns the queue.
pub type QueueProbe = Box<dyn Fn() -> QueueLevel + Send + Sync>;

/// A live connection's record, shared between its task, the registry and the APIs.
pub struct ConnectionEntry {
    pub(super) seq: u64,
    id: Uuid,
    info: ConnectionInfo,
    connected_at_us: u64,
    messages_received: AtomicU64,
    messages_sent: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    last_activity_us: AtomicU64,
    last_message_us: AtomicU64,
    /// 0 = no close requested; otherwise `CloseReason::index() + 1`. First request wins.
    close_requested: AtomicU8,
    /// The connection's task, waiting in [`Self::close_requested`]: one waiter, so an atomic
    /// waker (no lock on the task's every wake, as a shared token's waiter list would take).
    close_waker: AtomicWaker,
    queue_probe: OnceLock<QueueProbe>,
    /// The trace id (as the 128-bit number), once telemetry has drawn one.
    trace_id: OnceLock<u128>,
    totals: Arc<Totals>,
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// RFC 3339 (UTC, microseconds) for a timestamp in microseconds since the epoch.
pub(crate) fn rfc3339(us: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl ConnectionEntry {
    pub(super) fn new(seq: u64, mut info: ConnectionInfo, totals: Arc<Totals>) -> Self {
        if let Some(ua) = info.user_agent.as_mut() {
            truncate_at_char_boundary(ua, MAX_USER_AGENT);
        }
        let now = now_us();
        Self {
            seq,
            id: Uuid::new_v4(),
            info,
            connected_at_us: now,
            messages_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            last_activity_us: AtomicU64::new(now),
            last_message_us: AtomicU64::new(now),
            close_requested: AtomicU8::new(0),
            close_waker: AtomicWaker::new(),
            queue_probe: OnceLock::new(),
            trace_id: OnceLock::new(),
            totals,
        }
    }

    /// The server-assigned connection id (UUID v4).
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// What was known at registration.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Records one message received from the client (`bytes` of payload).
    pub fn record_received(&self, bytes: usize) {
        let now = now_us();
        self.messages_received.fetch_add(1, Relaxed);
        self.bytes_received.fetch_add(bytes as u64, Relaxed);
        self.last_activity_us.store(now, Relaxed);
        self.last_message_us.store(now, Relaxed);
        self.totals.messages_received.fetch_add(1, Relaxed);
        self.totals.bytes_received.fetch_add(bytes as u64, Relaxed);
        self.totals.metrics.messages_received.increment(1);
        self.totals.metrics.message_size.record(bytes as f64);
    }

    /// Records one frame written to the client (`bytes` of payload).
    pub fn record_sent(&self, bytes: usize) {
        self.record_sent_many(1, bytes);
    }

    /// Records `frames` frames written at once (`bytes` of payload in all): one update of the
    /// shared counters per batch keeps writers on different cores off each other's cache lines.
    pub fn record_sent_many(&self, frames: u64, bytes: usize) {
        self.messages_sent.fetch_add(frames, Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Relaxed);
        self.last_activity_us.store(now_us(), Relaxed);
        self.totals.messages_sent.fetch_add(frames, Relaxed);
        self.totals.bytes_sent.fetch_add(bytes as u64, Relaxed);
        self.totals.metrics.messages_sent.increment(frames);
    }

    /// Asks the connection's task to close with `reason`. The first request wins; returns
    /// whether this call was it.
    pub fn request_close(&self, reason: CloseReason) -> bool {
        let won = self
            .close_requested
            .compare_exchange(0, reason.index() as u8 + 1, Relaxed, Relaxed)
            .is_ok();
        if won {
            self.close_waker.wake();
        }
        won
    }

    /// Whether a close has been requested (a cheap check for hot loops).
    pub fn close_is_requested(&self) -> bool {
        self.close_requested.load(Relaxed) != 0
    }

    /// The reason of the first close request, if any.
    pub fn requested_close(&self) -> Option<CloseReason> {
        match self.close_requested.load(Relaxed) {
            0 => None,
            n => CloseReason::ALL.get(usize::from(n) - 1).copied(),
        }
    }

    /// Completes when a close has been requested; the connection's task selects on it (one
    /// task only: a second waiter would take the first one's place).
    pub async fn close_requested(&self) -> CloseReason {
        std::future::poll_fn(|cx| {
            if let Some(reason) = self.requested_close() {
                return Poll::Ready(reason);
            }
            self.close_waker.register(cx.waker());
            // A request made before the registration is seen here.
            self.requested_close().map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }

    /// Installs the function that reports this connection's outbound queue depth (once).
    pub fn set_queue_probe(&self, probe: QueueProbe) {
        let _ = self.queue_probe.set(probe);
    }

    /// Current outbound queue depth, or 0 when no queue is attached.
    pub fn queue_depth(&self) -> usize {
        self.queue_level().messages
    }

    /// Current outbound queue level (zeros when no queue is attached).
    pub fn queue_level(&self) -> QueueLevel {
        self.queue_probe
            .get()
            .map_or(QueueLevel::default(), |p| p())
    }

    /// The trace id, once telemetry has assigned one.
    pub fn trace_id(&self) -> Option<String> {
        self.trace_id.get().map(|id| format!("{id:032x}"))
    }

    /// Sets the trace id shown in the stats (once; telemetry fills it in).
    pub fn set_trace_id(&self, trace_id: u128) {
        let _ = self.trace_id.set(trace_id);
    }

    /// Messages received so far.
    pub fn messages_received(&self) -> u64 {
        self.messages_received.load(Relaxed)
    }

    /// Frames sent so far.
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent.load(Relaxed)
    }

    /// Payload bytes received and sent so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.bytes_received.load(Relaxed),
            self.bytes_sent.load(Relaxed),
        )
    }

    /// Time since the connection was registered.
    pub fn age(&self) -> Duration {
        Duration::from_micros(now_us().saturating_sub(self.connected_at_us))
    }

    /// Time since the last message received from the client.
    pub fn idle_for(&self) -> Duration {
        Duration::from_micros(now_us().saturating_sub(self.last_message_us.load(Relaxed)))
    }

    /// A point-in-time copy for the APIs; `idle_after` decides the idle flag.
    pub fn snapshot(&self, idle_after: Duration) -> ConnectionSnapshot {
        let now = now_us();
        let (bytes_received, bytes_sent) = self.bytes();
        let level = self.queue_level();
        let idle_seconds =
            now.saturating_sub(self.last_message_us.load(Relaxed)) as f64 / 1_000_000.0;
        ConnectionSnapshot {
            connection_id: self.id.to_string(),
            client_id: self.info.client_id.clone(),
            connected_at: rfc3339(self.connected_at_us),
            messages_received: self.messages_received(),
            messages_sent: self.messages_sent(),
            last_activity: rfc3339(self.last_activity_us.load(Relaxed)),
            duration: now.saturating_sub(self.connected_at_us) as f64 / 1_000_000.0,
            client_address: self.info.address.map(|a| a.to_string()),
            user_agent: self.info.user_agent.clone(),
            bytes_received,
            bytes_sent,
            idle: idle_seconds >= idle_after.as_secs_f64(),
            idle_seconds,
            queue_depth: level.messages,
            queue_bytes: level.bytes,
            trace_id: self.trace_id().unwrap_or_default(),
            trace_url: String::new(),
            closing: self.requested_close().map(CloseReason::as_str),
        }
    }
}

/// One connection as the stats API and the dashboard show it. The first seven fields are the
/// tutorial's contract (names and types fixed); the rest are wsmon's additions.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionSnapshot {
    pub connection_id: String,
    pub client_id: String,
    pub connected_at: String,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub last_activity: String,
    /// Seconds since connect.
    pub duration: f64,
    pub client_address: Option<String>,
    pub user_agent: Option<String>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub idle: bool,
    /// Seconds since the last message from the client.
    pub idle_seconds: f64,
    pub queue_depth: usize,
    /// Outbound bytes held for it (queued, or being written).
    pub queue_bytes: usize,
    /// The connection's trace id; empty when tracing export is off.
    pub trace_id: String,
    /// Link to the trace (`telemetry.trace_url_template`); empty without a trace id.
    pub trace_url: String,
    /// The close reason already requested for this connection, if any.
    pub closing: Option<&'static str>,
}

fn truncate_at_char_boundary(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_user_agents_are_cut_on_a_char_boundary() {
        let mut s = "é".repeat(200); // 400 bytes
        truncate_at_char_boundary(&mut s, MAX_USER_AGENT);
        assert_eq!(s.len(), MAX_USER_AGENT);
        let mut odd = format!("a{}", "é".repeat(200));
        truncate_at_char_boundary(&mut odd, MAX_USER_AGENT);
        assert_eq!(odd.len(), MAX_USER_AGENT - 1);
    }

    #[test]
    fn rfc3339_is_utc_with_z_suffix() {
        assert_eq!(rfc3339(1_000_000), "1970-01-01T00:00:01Z");
        assert_eq!(rfc3339(1_500_000), "1970-01-01T00:00:01.5Z");
    }
}

/// Model-checked with loom (`RUSTFLAGS="--cfg wsmon_loom" cargo test --lib loom`).
#[cfg(all(test, wsmon_loom))]
mod loom_tests {
    use loom::future::block_on;
    use loom::thread;

    use super::*;
    use crate::monitor::{ConnectionInfo, Registry};

    #[test]
    fn loom_a_close_requested_while_the_task_registers_wakes_it_and_the_first_wins() {
        loom::model(|| {
            let registry = Registry::new(Duration::from_secs(300));
            let guard = registry.register(ConnectionInfo::new("x"));
            let entry = guard.entry().clone();
            let kicker = {
                let entry = entry.clone();
                thread::spawn(move || entry.request_close(CloseReason::AdminKick))
            };
            let other = entry.request_close(CloseReason::SlowConsumer);
            let reason = block_on(entry.close_requested());
            let kicked = kicker.join().unwrap();
            assert!(kicked != other, "exactly one request wins");
            let winner = if kicked {
                CloseReason::AdminKick
            } else {
                CloseReason::SlowConsumer
            };
            assert_eq!(reason, winner);
        });
    }
}
