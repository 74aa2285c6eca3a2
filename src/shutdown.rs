//! Shutdown signals. An HTTP server's graceful shutdown does not cover upgraded WebSockets
//! (axum issue #3003), so the application asks every registered connection to close
//! (`Registry::close_all`) and waits for the sessions on a `TaskTracker`, bounded by
//! `shutdown.grace_ms`, all of it within one [`Deadline`].

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// One deadline for the whole shutdown, from the signal to exit (`shutdown.deadline_ms`): each
/// phase (drain delay, the WebSocket drain, leaving the cluster, requests in progress, the
/// telemetry flush) gets at most its own limit and never more than what is left. Until the
/// final flush, a reserve (the flush's own limit, at most half the deadline) is kept back for
/// it. Cheap to clone; the first [`Deadline::start`] fixes it.
#[derive(Debug, Clone)]
pub struct Deadline {
    at: Arc<OnceLock<Instant>>,
    total: Duration,
    reserve: Duration,
}

impl Deadline {
    /// A deadline of `total` from its start, keeping `flush` (at most half of it) for the last
    /// phase.
    pub fn new(total: Duration, flush: Duration) -> Self {
        Self {
            at: Default::default(),
            total,
            reserve: flush.min(total / 2),
        }
    }

    /// Starts the clock (the stop signal arrived); later calls change nothing.
    pub fn start(&self) {
        let _ = self.at.get_or_init(|| Instant::now() + self.total);
    }

    /// Time left until the deadline (all of it before the start).
    pub fn left(&self) -> Duration {
        self.at.get().map_or(self.total, |at| {
            at.saturating_duration_since(Instant::now())
        })
    }

    /// What a phase that wants `limit` may take, keeping the flush's reserve.
    pub fn phase(&self, limit: Duration) -> Duration {
        limit.min(self.left().saturating_sub(self.reserve))
    }

    /// What the last phase (the telemetry flush) that wants `limit` may take.
    pub fn last(&self, limit: Duration) -> Duration {
        limit.min(self.left())
    }

    /// The whole deadline.
    pub fn total(&self) -> Duration {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_share_what_is_left_and_the_flush_keeps_its_reserve() {
        let d = Deadline::new(Duration::from_secs(10), Duration::from_secs(3));
        assert_eq!(d.left(), Duration::from_secs(10), "not started");
        d.start();
        let phase = d.phase(Duration::from_secs(60));
        assert!(phase <= Duration::from_secs(7) && phase > Duration::from_millis(6_900));
        assert_eq!(d.phase(Duration::from_secs(1)), Duration::from_secs(1));
        assert!(d.last(Duration::from_secs(60)) <= Duration::from_secs(10));
        let tiny = Deadline::new(Duration::from_secs(2), Duration::from_secs(5));
        tiny.start();
        assert!(
            tiny.phase(Duration::from_secs(60)) <= Duration::from_secs(1),
            "reserve ≤ half"
        );
    }
}
