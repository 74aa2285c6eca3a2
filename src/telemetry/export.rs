//! Export health: wrappers around the OTLP exporters and the span processor that count what was
//! ended, exported and lost (`websocket.server.telemetry.*`), and log failures at most once per
//! [`LOG_EVERY`], with the number of failures since the last line. The SDK's own per-batch error
//! logs are not compiled in, so a dead collector cannot flood the log.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

use super::metrics::{Metrics, Signal, SpanOutcome};
use super::span_queue::Waiting;

/// Minimum interval between two export-failure log lines per signal.
pub const LOG_EVERY: Duration = Duration::from_secs(30);

/// Logs export failures at a throttled rate.
pub struct FailureLog {
    signal: &'static str,
    message: &'static str,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl FailureLog {
    pub fn new(signal: &'static str) -> Self {
        Self::with_message(
            signal,
            "OTLP export failed; telemetry is being dropped (chat is unaffected)",
        )
    }

    /// A log for another kind of failure, e.g. the Redis backplane's.
    pub fn with_message(signal: &'static str, message: &'static str) -> Self {
        Self {
            signal,
            message,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    pub fn failed(&self, error: &dyn fmt::Display) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            self.suppressed.fetch_add(1, Relaxed);
            return;
        }
        *last = Some(Instant::now());
        let suppressed = self.suppressed.swap(0, Relaxed);
        tracing::warn!(
            signal = self.signal,
            failures_since_last_log = suppressed + 1,
            error = %error,
            "{}",
            self.message
        );
    }
}

/// A span exporter that counts exported and failed spans, and frees their places in the
/// export queue ([`Waiting`]) once their export is over, however it ends.
pub struct CountingSpanExporter<E> {
    pub inner: E,
    pub metrics: Arc<Metrics>,
    pub log: FailureLog,
    pub waiting: Arc<Waiting>,
}

/// Frees a batch's places even if its export future is dropped before it finishes.
struct Leaving<'a>(&'a Waiting, u64);

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        self.0.done(self.1);
    }
}

impl<E: fmt::Debug> fmt::Debug for CountingSpanExporter<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingSpanExporter")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<E: SpanExporter> SpanExporter for CountingSpanExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let _leaving = Leaving(&self.waiting, n);
        let result = self.inner.export(batch).await;
        self.metrics.export(Signal::Traces, result.is_ok());
        match &result {
            Ok(()) => self.metrics.spans(SpanOutcome::Exported, n),
            Err(e) => {
                self.metrics.spans(SpanOutcome::Failed, n);
                self.log.failed(e);
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A metric exporter that counts export calls by outcome (once `metrics` is set).
pub struct CountingMetricExporter<E> {
    pub inner: E,
    pub metrics: Arc<OnceLock<Arc<Metrics>>>,
    pub log: FailureLog,
}

impl<E: PushMetricExporter> PushMetricExporter for CountingMetricExporter<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        if let Some(m) = self.metrics.get() {
            m.export(Signal::Metrics, result.is_ok());
        }
        if let Err(e) = &result {
            self.log.failed(e);
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}
