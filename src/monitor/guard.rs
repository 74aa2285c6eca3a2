//! [`ConnectionGuard`]: the RAII handle that keeps a connection registered and records its
//! disconnect exactly once, whatever ends it: a normal return, an error, a kick, shutdown, or a
//! panic unwinding through the connection's task.

use std::sync::Arc;

use super::close::CloseReason;
use super::entry::ConnectionEntry;
use super::registry::Registry;

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

/// Keeps a connection in the registry; dropping it releases the connection exactly once.
pub struct ConnectionGuard {
    registry: Registry,
    entry: Arc<ConnectionEntry>,
    outcome: Option<Outcome>,
}

impl ConnectionGuard {
    pub(super) fn new(registry: Registry, entry: Arc<ConnectionEntry>) -> Self {
        Self {
            registry,
            entry,
            outcome: None,
        }
    }

    /// The connection's record (counters, close requests).
    pub fn entry(&self) -> &Arc<ConnectionEntry> {
        &self.entry
    }

    /// Records how the connection ended; the last call before drop wins.
    pub fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
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

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let outcome = self.effective_outcome();
        self.registry.release(&self.entry, outcome.reason);
        let (bytes_in, bytes_out) = self.entry.bytes();
        let level_is_error = outcome.reason == CloseReason::InternalError;
        macro_rules! disconnect_event {
            ($lvl:ident) => {
                tracing::$lvl!(
                    connection.id = %self.entry.id(),
                    client.id = %self.entry.info().client_id,
                    close.reason = outcome.reason.as_str(),
                    close.initiator = outcome.reason.initiator().as_str(),
                    close.code_sent = outcome.code_sent,
                    close.code_received = outcome.code_received,
                    duration_s = self.entry.age().as_secs_f64(),
                    messages.received = self.entry.messages_received(),
                    messages.sent = self.entry.messages_sent(),
                    bytes.received = bytes_in,
                    bytes.sent = bytes_out,
                    "connection closed"
                )
            };
        }
        if level_is_error {
            disconnect_event!(error);
        } else {
            disconnect_event!(info);
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
