//! Admission to the span export queue by priority, so a storm cannot push the disconnect records
//! out of it. The batch processor's own queue drops whatever arrives when it is full, first come
//! first served: in a mass departure that was most of the disconnects. Here every ended span is
//! admitted or dropped before it reaches that queue, against the number of spans still waiting
//! for export (handed on and not yet exported or failed), by what it is:
//!
//! | class | spans | admitted while waiting is under |
//! | --- | --- | --- |
//! | abnormal disconnect | `websocket.connection` with status ERROR | the whole queue |
//! | disconnect | `websocket.connection`, normal close | three quarters of it |
//! | other | `websocket.open`, `websocket.message`, backplane spans | half of it |
//!
//! The batch processor's queue has the same capacity, so it never drops on its own: every span
//! lost to a full queue is dropped here, counted (`websocket.server.telemetry.spans`,
//! `outcome="dropped"`) and logged at most once per [`super::export::LOG_EVERY`] with a count.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::Status;
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;

use super::export::FailureLog;
use super::metrics::{Metrics, SpanOutcome};
use super::names::spans;

/// How much an ended span matters to an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Open, message and backplane spans: their loss costs a detail.
    Other,
    /// A connection that ended normally.
    Disconnect,
    /// A connection that ended abnormally: what an operator opens Jaeger for.
    AbnormalDisconnect,
}

impl Priority {
    /// The class of `span`.
    pub fn of(span: &SpanData) -> Self {
        if span.name != spans::CONNECTION {
            Priority::Other
        } else if matches!(span.status, Status::Error { .. }) {
            Priority::AbnormalDisconnect
        } else {
            Priority::Disconnect
        }
    }
}

/// The count of spans waiting for export, shared by the admitting processor and the exporter.
#[derive(Debug)]
pub struct Waiting {
    capacity: u64,
    count: AtomicU64,
}

impl Waiting {
    /// A queue of `capacity` spans (at least 4).
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(4) as u64,
            count: AtomicU64::new(0),
        })
    }

    /// The queue's capacity, in spans.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Spans handed on and not yet exported or failed.
    pub fn count(&self) -> u64 {
        self.count.load(Acquire)
    }

    /// Takes a place for a span of `priority`; `false` when its share of the queue is full.
    pub fn admit(&self, priority: Priority) -> bool {
        let limit = match priority {
            Priority::AbnormalDisconnect => self.capacity,
            Priority::Disconnect => self.capacity * 3 / 4,
            Priority::Other => self.capacity / 2,
        };
        let before = self.count.fetch_add(1, AcqRel);
        if before < limit {
            return true;
        }
        self.count.fetch_sub(1, AcqRel);
        false
    }

    /// `n` spans left the queue (exported, failed, or dropped by the processor itself).
    pub fn done(&self, n: u64) {
        // Never below zero, even if a caller reports more than it was given.
        let _ = self
            .count
            .fetch_update(AcqRel, Acquire, |c| Some(c.saturating_sub(n)));
    }
}

/// Counts every ended span, admits it by [`Priority`] and hands the admitted ones to `inner`
/// (the batch processor).
pub struct AdmittingProcessor<P> {
    pub inner: P,
    pub waiting: Arc<Waiting>,
    pub metrics: Arc<Metrics>,
    pub log: FailureLog,
}

impl<P> AdmittingProcessor<P> {
    pub fn new(inner: P, waiting: Arc<Waiting>, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            waiting,
            metrics,
            log: FailureLog::with_message(
                "traces",
                "span export queue full: dropping spans, lowest priority first \
                 (abnormal disconnects last)",
            ),
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for AdmittingProcessor<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmittingProcessor")
            .field("inner", &self.inner)
            .field("waiting", &self.waiting)
            .finish()
    }
}

impl<P: SpanProcessor> SpanProcessor for AdmittingProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.metrics.spans(SpanOutcome::Ended, 1);
        let priority = Priority::of(&span);
        if self.waiting.admit(priority) {
            self.inner.on_end(span);
            return;
        }
        self.metrics.spans(SpanOutcome::Dropped, 1);
        self.log.failed(&format_args!(
            "{} spans waiting for export (capacity {}); dropped a {priority:?} span",
            self.waiting.count(),
            self.waiting.capacity()
        ));
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_priorities_get_smaller_shares_and_a_finished_export_frees_places() {
        let waiting = Waiting::new(8);
        let admitted = |p| (0..8).filter(|_| waiting.admit(p)).count();
        assert_eq!(admitted(Priority::Other), 4, "half");
        assert_eq!(admitted(Priority::Disconnect), 2, "up to three quarters");
        assert_eq!(admitted(Priority::AbnormalDisconnect), 2, "up to the whole");
        assert_eq!(waiting.count(), 8);
        assert!(!waiting.admit(Priority::AbnormalDisconnect));
        waiting.done(3);
        assert_eq!(admitted(Priority::Other), 0, "still over half");
        assert_eq!(admitted(Priority::AbnormalDisconnect), 3);
        waiting.done(100);
        assert_eq!(waiting.count(), 0, "never below zero");
    }
}
