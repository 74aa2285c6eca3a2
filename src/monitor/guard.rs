//! [`ConnectionGuard`]: the RAII handle that keeps a connection registered and records its
//! disconnect exactly once, whatever ends it: a normal return, an error, a kick, shutdown, or a
//! panic unwinding through the connection's task.

use std::sync::Arc;

use opentelemetry::KeyValue;

use super::entry::ConnectionEntry;
use super::registry::Registry;
use crate::reasons::CloseReason;
use crate::telemetry::{self, names::attributes as attr, names::spans};

/// How a connection ended, as recorded by its owner just before the guard drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub reason: CloseReason,
    /// The close code the server sent, if it sent one.
    pub code_sent: Option<u16>,
    /// The close code the client sent, if it sent one.
    pub code_received: Option<u16>,
}

impl Outcome {
    /// An outcome where the server sent the reason's own code (if any) and received none.
    pub fn server(reason: CloseReason) -> Self {
        Self {
            reason,
            code_sent: reason.server_code(),
            code_received: None,
        }
    }
}

/// Keeps a connection in the registry; dropping it releases the connection exactly once and
/// ends the connection span with the disconnect recorded on it (reason, initiator, codes,
/// duration, message and byte counts).
///
/// Drop order, which a change must keep: the outcome is read first (a panic still unwinding
/// is `internal_error`), the disconnect record is finished while the counts are final, then,
/// inside the span, the attachments are dropped (the chat membership, whose drop publishes the
/// leave notice; the connection-cap permit) *before* the registry releases the entry, so that
/// when `/ws-stats` no longer lists a client its leave notice has already been sent and its
/// place under the caps is free. The span itself closes last, when the guard's handle and the
/// session's clones are gone, and only then is the record exported.
pub struct ConnectionGuard {
    registry: Registry,
    entry: Arc<ConnectionEntry>,
    outcome: Option<Outcome>,
    span: tracing::Span,
    /// Values whose drop is part of the cleanup (e.g. the chat membership and its leave
    /// notice); dropped inside the connection span, before the registry release.
    attachments: Vec<Box<dyn Send>>,
}

impl ConnectionGuard {
    pub(super) fn new(
        registry: Registry,
        entry: Arc<ConnectionEntry>,
        parent: Option<opentelemetry::Context>,
    ) -> Self {
        let info = entry.info();
        let parent = parent.map(|cx| {
            use opentelemetry::trace::TraceContextExt as _;
            cx.span().span_context().clone()
        });
        let (span, record) = telemetry::records::open(parent, |ids| {
            tracing::info_span!(
                target: "wsmon",
                "websocket.connection",
                connection.id = %entry.id(),
                client.id = %info.client_id,
                client.address = info.address.map(tracing::field::display),
                user_agent.original = info.user_agent.as_deref(),
                http.route = info.route,
                trace_id = ids.map(|cx| tracing::field::display(cx.trace_id())),
                span_id = ids.map(|cx| tracing::field::display(cx.span_id())),
            )
        });
        if let Some(cx) = record {
            entry.set_trace_id(u128::from_be_bytes(cx.trace_id().to_bytes()));
        }
        Self {
            registry,
            entry,
            outcome: None,
            span,
            attachments: Vec::new(),
        }
    }

    /// The connection's record (counters, close requests).
    pub fn entry(&self) -> &Arc<ConnectionEntry> {
        &self.entry
    }

    /// The connection span. Run the connection's task inside it (`.instrument(span)`): log
    /// lines then carry its ids, and span events stay bounded by the SDK's per-span limit.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Records that the connection is established: a short `websocket.open` span that ends at
    /// once, so the connection shows up in the trace UI within seconds, not when it ends.
    pub fn opened(&self) {
        record_open(&self.span, &self.entry);
    }

    /// Records how the connection ended; the last call before drop wins.
    pub fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }

    /// Makes dropping `value` part of this connection's cleanup.
    pub fn attach<T: Send + 'static>(&mut self, value: T) {
        self.attachments.push(Box::new(value));
    }

    /// The outcome the guard will record if dropped now. Without an explicit outcome:
    /// a panic is `internal_error`; otherwise a requested close reason, else `client_gone`
    /// (the task ended before a closing handshake, e.g. the upgrade never completed).
    pub fn effective_outcome(&self) -> Outcome {
        if let Some(o) = self.outcome {
            return o;
        }
        if std::thread::panicking() {
            return Outcome::server(CloseReason::InternalError);
        }
        match self.entry.requested_close() {
            Some(reason) => Outcome::server(reason),
            None => Outcome {
                reason: CloseReason::ClientGone,
                code_sent: None,
                code_received: None,
            },
        }
    }
}

/// Records a `websocket.open` span under `connection` (the connection span of `entry`), ended
/// at once: what [`ConnectionGuard::opened`] does, for a task that holds the span and entry but
/// not the guard.
pub fn record_open(connection: &tracing::Span, entry: &ConnectionEntry) {
    let open = tracing::info_span!(
        target: "wsmon",
        parent: connection,
        "websocket.open",
        otel.name = spans::OPEN,
        connection.id = %entry.id(),
        client.id = %entry.info().client_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    // Its parent is the connection's record, which `tracing-opentelemetry` does not see.
    telemetry::spans::set_connection_parent(&open, connection);
    telemetry::records::mark_opened(connection);
    telemetry::spans::record_ids(&open);
    open.in_scope(|| tracing::debug!(target: "wsmon", "connection open"));
}

/// Counts are exported as `i64` (OpenTelemetry has no unsigned integers).
fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let outcome = self.effective_outcome();
        let reason = outcome.reason;
        let (bytes_in, bytes_out) = self.entry.bytes();
        let duration_s = self.entry.age().as_secs_f64();
        let (received, sent) = (self.entry.messages_received(), self.entry.messages_sent());
        // The disconnect record is the connection span itself, ending now: one span per
        // disconnect to export, not a close span and a cleanup span repeating it. Exported: every
        // abnormal one, every connection that lasted (its trace has an open span), every one in
        // a sampled caller's trace, and a share of the brief normal ones (what a churn is made
        // of). The fields go to the record directly (one lookup, only when it is kept), not
        // through the span's ten `record` calls, which every layer would see.
        let kept = telemetry::records::finish(
            &self.span,
            |facts| {
                !reason.is_normal()
                    || facts.opened
                    || facts.parent_sampled
                    || self.registry.keep_brief_record()
            },
            |record| {
                let info = self.entry.info();
                record.push(KeyValue::new(
                    attr::CONNECTION_ID,
                    self.entry.id().to_string(),
                ));
                record.push(KeyValue::new(attr::CLIENT_ID, info.client_id.clone()));
                if let Some(address) = info.address {
                    record.push(KeyValue::new(attr::CLIENT_ADDRESS, address.to_string()));
                }
                if let Some(ua) = &info.user_agent {
                    record.push(KeyValue::new(attr::USER_AGENT, ua.clone()));
                }
                if let Some(route) = info.route {
                    record.push(KeyValue::new(attr::HTTP_ROUTE, route));
                }
                record.push(KeyValue::new(attr::PROTOCOL, "websocket"));
                record.push(KeyValue::new(attr::CLOSE_REASON, reason.as_str()));
                record.push(KeyValue::new(
                    attr::CLOSE_INITIATOR,
                    reason.initiator().as_str(),
                ));
                if !reason.is_normal() {
                    // A plain attribute to search by: trace stores do not all search by status.
                    record.push(KeyValue::new(attr::CLOSE_ABNORMAL, true));
                }
                if let Some(code) = outcome.code_sent {
                    record.push(KeyValue::new(attr::CLOSE_CODE_SENT, i64::from(code)));
                }
                if let Some(code) = outcome.code_received {
                    record.push(KeyValue::new(attr::CLOSE_CODE_RECEIVED, i64::from(code)));
                }
                record.push(KeyValue::new(attr::DURATION, duration_s));
                record.push(KeyValue::new(attr::MESSAGES_RECEIVED, as_i64(received)));
                record.push(KeyValue::new(attr::MESSAGES_SENT, as_i64(sent)));
                record.push(KeyValue::new(attr::BYTES_RECEIVED, as_i64(bytes_in)));
                record.push(KeyValue::new(attr::BYTES_SENT, as_i64(bytes_out)));
            },
            !reason.is_normal(),
        );
        if kept == Some(false) {
            self.registry.metrics().records_sampled_out.increment(1);
        }
        // The release work (e.g. the leave notice) and the last log line run inside the span;
        // the line carries the record's fields.
        let _in_span = self.span.enter();
        self.attachments.clear();
        self.registry.release(&self.entry, reason);
        macro_rules! closed {
            ($level:expr) => {
                tracing::event!(
                    target: "wsmon",
                    $level,
                    close.reason = reason.as_str(),
                    close.initiator = reason.initiator().as_str(),
                    close.code_sent = outcome.code_sent,
                    close.code_received = outcome.code_received,
                    connection.duration_s = duration_s,
                    messages.received = received,
                    messages.sent = sent,
                    bytes.received = bytes_in,
                    bytes.sent = bytes_out,
                    "connection closed"
                )
            };
        }
        if reason == CloseReason::InternalError {
            closed!(tracing::Level::ERROR);
        } else {
            closed!(tracing::Level::INFO);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::monitor::ConnectionInfo;

    fn info(id: &str) -> ConnectionInfo {
        ConnectionInfo::new(id)
    }

    fn disconnects(registry: &Registry, reason: CloseReason) -> u64 {
        registry.global_stats().disconnects[reason.as_str()]
    }

    #[tokio::test]
    async fn a_panic_in_the_connection_task_releases_it_as_internal_error() {
        let registry = Registry::new(Duration::from_secs(300));
        let guard = registry.register(info("doomed"));
        assert_eq!(registry.active(), 1);
        let task = tokio::spawn(async move {
            let _guard = guard;
            panic!("bug in a handler");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(registry.active(), 0);
        assert_eq!(disconnects(&registry, CloseReason::InternalError), 1);
        assert!(registry.by_client("doomed").is_empty());
    }

    #[test]
    fn without_an_outcome_a_requested_close_wins_else_client_gone() {
        let registry = Registry::new(Duration::from_secs(300));
        let kicked = registry.register(info("a"));
        assert!(kicked.entry().request_close(CloseReason::AdminKick));
        assert!(
            !kicked.entry().request_close(CloseReason::SlowConsumer),
            "first wins"
        );
        drop(kicked);
        drop(registry.register(info("b")));
        assert_eq!(disconnects(&registry, CloseReason::AdminKick), 1);
        assert_eq!(disconnects(&registry, CloseReason::ClientGone), 1);
        assert_eq!(disconnects(&registry, CloseReason::SlowConsumer), 0);
    }

    #[test]
    fn the_recorded_outcome_is_counted_exactly_once() {
        let registry = Registry::new(Duration::from_secs(300));
        let mut guard = registry.register(info("a"));
        guard.set_outcome(Outcome::server(CloseReason::MessageTooBig));
        // Releasing again (as a second cleanup path would) must not count twice.
        registry.release(guard.entry(), CloseReason::MessageTooBig);
        drop(guard);
        assert_eq!(disconnects(&registry, CloseReason::MessageTooBig), 1);
        assert_eq!(registry.active(), 0);
        let total: u64 = registry.global_stats().disconnects.values().sum();
        assert_eq!(total, 1);
    }
}
