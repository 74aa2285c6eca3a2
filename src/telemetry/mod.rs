//! Telemetry: logs (`RUST_LOG`-style filter, text or JSON), traces and metrics over OTLP when an
//! endpoint is configured, Prometheus text always.
//!
//! - [`names`]: every metric, span and attribute name, once.
//! - [`metrics`]: the metric handles and their recorder (Prometheus + OpenTelemetry bridge).
//! - [`otlp`]: whether and where to export (the `OTEL_*` environment), the resource.
//! - [`traces`]: the OTLP trace pipeline, shared by the tracer and the disconnect records.
//! - [`meters`]: the OTLP metric pipeline.
//! - [`export`]: export-health counters and throttled failure logs.
//! - [`records`]: disconnect records, the connection span's OpenTelemetry side, built at the
//!   close and only when kept.
//! - [`sampling`]: which messages get a span, which brief disconnects a record.
//! - [`span_queue`]: admission to the span export queue by priority (disconnect records last
//!   to go).
//! - [`spans`]: helpers that tie `tracing` spans to OpenTelemetry trace ids.

pub mod export;
pub mod meters;
pub mod metrics;
pub mod names;
mod otel_bridge;
pub mod otlp;
pub mod records;
pub mod sampling;
pub mod span_queue;
pub mod spans;
pub mod traces;

use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use self::metrics::MetricsHandle;
pub use self::otlp::ExportError;
use crate::config::{LogFormat, LogSettings, Settings};

/// A subscriber writing logs to `sink` and, given a trace pipeline, spans of wsmon's own targets
/// to OpenTelemetry (`hyper`, `h2`, `tonic`, `reqwest` never: no telemetry about telemetry):
/// connection spans as disconnect records ([`records`]), the others through
/// `tracing-opentelemetry`. `RUST_LOG`, when set, overrides `settings.level` for logs; it does
/// not change what is traced.
pub fn get_subscriber<W>(
    settings: &LogSettings,
    traces: Option<records::Traces>,
    sink: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&settings.level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(sink);
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![match settings.format {
        LogFormat::Text => fmt
            .with_ansi(std::io::stdout().is_terminal())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_filter(filter)
            .boxed(),
    }];
    if let Some(traces) = traces {
        let traced = Targets::new().with_target("wsmon", tracing::Level::INFO);
        layers.push(
            records::ConnectionRecords::new(traces.records)
                .with_filter(traced.clone())
                .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                    records::ConnectionRecords::owns(m) || (m.is_event() && reaches_traces(m))
                }))
                .boxed(),
        );
        layers.push(
            // Entering a span (every poll of a connection's task) does no OpenTelemetry work:
            // no context activation (nothing inside reads the OpenTelemetry context; parents
            // come from the tracing span tree) and no busy/idle timing. No code location or
            // thread attributes either (memory on every open connection's span, no use to an
            // operator).
            tracing_opentelemetry::layer()
                .with_tracer(traces.tracer)
                .with_context_activation(false)
                .with_tracked_inactivity(false)
                .with_location(false)
                .with_threads(false)
                .with_filter(traced)
                .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                    reaches_traces(m) && !records::ConnectionRecords::owns(m)
                }))
                .boxed(),
        );
    }
    Box::new(Registry::default().with(layers))
}

/// Marks an info event that should also be recorded on its span in the trace (see
/// [`reaches_traces`]): `tracing::info!(target: "wsmon", span_event = true, "...")`.
pub const SPAN_EVENT: &str = "span_event";

/// What the OpenTelemetry layer records: every span, and of the events only warnings, errors
/// and those marked [`SPAN_EVENT`] (a rate limit hit, an idle warning). The routine lines
/// ("connection accepted", "connection closed") stay in the logs, which carry the trace id:
/// in traces they repeated the span's own start and end, and cost a fifth of what tracing adds
/// to a short connection's CPU.
fn reaches_traces(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span()
        || *metadata.level() <= tracing::Level::WARN
        || metadata.fields().field(SPAN_EVENT).is_some()
}

/// Installs `subscriber` globally; a second call is ignored (tests install once per process).
pub fn install(subscriber: Box<dyn Subscriber + Send + Sync>) {
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Installs logging only (stdout), for tools and examples.
pub fn init(settings: &LogSettings) {
    install(get_subscriber(settings, None, std::io::stdout));
}

/// The process's telemetry: metric handles, and the OTLP providers when exporting.
/// [`Telemetry::shutdown`] flushes them within `telemetry.shutdown_timeout_ms`.
pub struct Telemetry {
    pub metrics: MetricsHandle,
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    shutdown_timeout: Duration,
}

impl Telemetry {
    /// Metrics for `/metrics` only: no export, no subscriber changes (what tests use).
    pub fn disabled() -> Self {
        Self {
            metrics: metrics::build(None),
            tracer_provider: None,
            meter_provider: None,
            shutdown_timeout: Duration::from_secs(1),
        }
    }

    /// Builds the pipelines the settings and `OTEL_*` environment ask for and installs the
    /// global subscriber (logs, plus traces when exporting). Errors are configuration errors.
    pub async fn init(settings: &Settings) -> Result<Self, ExportError> {
        let export = otlp::export_from_env(&settings.telemetry)?;
        let t = settings.telemetry.clone();
        // One name for a node everywhere: the cluster's node id.
        let instance_id = settings.cluster.resolved_node_id().to_owned();
        // The HTTP exporter builds a blocking client: not allowed on an async worker thread.
        let built = tokio::task::spawn_blocking(move || -> Result<_, ExportError> {
            let Some(export) = export else {
                return Ok((metrics::build(None), None, None, String::new()));
            };
            let resource = otlp::resource(&t, &instance_id);
            let instance = resource
                .get(&opentelemetry::Key::from_static_str("service.instance.id"))
                .map(|v| v.to_string())
                .unwrap_or_default();
            let late = Arc::new(OnceLock::new());
            let meter = t
                .export_metrics
                .then(|| {
                    let interval = Duration::from_millis(t.metrics_interval_ms);
                    meters::meter_provider(&export, resource.clone(), interval, late.clone())
                })
                .transpose()?;
            let handle = metrics::build(meter.as_ref());
            let _ = late.set(handle.metrics.clone());
            let tracer = t
                .export_traces
                .then(|| {
                    let queue = traces::span_queue_size(&t)?;
                    traces::tracer_provider(&export, resource, handle.metrics.clone(), queue)
                })
                .transpose()?;
            Ok((handle, tracer, meter, instance))
        })
        .await
        .map_err(|e| ExportError(format!("telemetry setup failed: {e}")))??;
        let (metrics, traced, meter_provider, instance) = built;
        let (tracer_provider, traces) = traced.unzip();
        install(get_subscriber(&settings.log, traces, std::io::stdout));
        if tracer_provider.is_some() || meter_provider.is_some() {
            tracing::info!(
                traces = tracer_provider.is_some(),
                metrics = meter_provider.is_some(),
                service.instance.id = %instance,
                "OTLP export on"
            );
        }
        Ok(Self {
            metrics,
            tracer_provider,
            meter_provider,
            shutdown_timeout: Duration::from_millis(settings.telemetry.shutdown_timeout_ms),
        })
    }

    /// Whether spans are exported.
    pub fn tracing(&self) -> bool {
        self.tracer_provider.is_some()
    }

    /// Flushes and stops the exporters, waiting at most the configured timeout. The work runs
    /// on its own OS thread (the SDK's shutdown blocks, and must not block the runtime); if the
    /// collector never answers, that thread is abandoned and the process exits anyway.
    pub async fn shutdown(self) {
        let within = self.shutdown_timeout;
        self.shutdown_within(within).await;
    }

    /// [`Self::shutdown`], waiting at most `within` (what is left of the shutdown deadline) or
    /// `telemetry.shutdown_timeout_ms`, whichever is shorter.
    pub async fn shutdown_within(self, within: Duration) {
        if self.tracer_provider.is_none() && self.meter_provider.is_none() {
            return;
        }
        let timeout = self.shutdown_timeout.min(within);
        let (done, finished) = tokio::sync::oneshot::channel();
        let (tracer, meter) = (self.tracer_provider, self.meter_provider);
        std::thread::spawn(move || {
            let traces = tracer.map(|p| p.shutdown_with_timeout(timeout));
            let metrics = meter.map(|p| p.shutdown_with_timeout(timeout));
            let _ = done.send((traces, metrics));
        });
        match tokio::time::timeout(timeout, finished).await {
            Ok(Ok((traces, metrics))) => {
                tracing::info!(traces = ?traces, metrics = ?metrics, "telemetry flushed")
            }
            _ => tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "telemetry flush did not finish in time; exiting without it"
            ),
        }
    }
}
