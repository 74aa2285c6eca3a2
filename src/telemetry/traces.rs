//! The OTLP trace pipeline: span exporter → counting wrapper → batch processor → priority
//! admission, shared by the tracer (spans through `tracing-opentelemetry`) and the disconnect
//! records.
//!
//! Bounds: the span export queue holds at most `telemetry.span_queue_size` spans (16,384 by
//! default, or `OTEL_BSP_MAX_QUEUE_SIZE`); beyond that spans are dropped by priority and
//! counted (see `span_queue`); each span keeps at most 128 events,
//! 128 attributes and 128 links (SDK limits); an export waits at most `OTEL_EXPORTER_OTLP_TIMEOUT`
//! (10 s by default).

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanProcessor,
};
use opentelemetry_sdk::Resource;

use super::export::{CountingSpanExporter, FailureLog};
use super::metrics::Metrics;
use super::otlp::{env, signal_endpoint, Export, ExportError};
use super::records::Traces;
use super::span_queue::{AdmittingProcessor, Waiting};
use crate::config::{OtlpProtocol, TelemetrySettings};

/// The span export queue's capacity: `OTEL_BSP_MAX_QUEUE_SIZE` when set, else the setting.
pub fn span_queue_size(settings: &TelemetrySettings) -> Result<usize, ExportError> {
    match env("OTEL_BSP_MAX_QUEUE_SIZE") {
        None => Ok(settings.span_queue_size),
        Some(v) => v.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            ExportError(format!(
                "OTEL_BSP_MAX_QUEUE_SIZE={v} is not a positive number of spans"
            ))
        }),
    }
}

/// The tracer provider and where disconnect records go: OTLP exporter → counting wrapper →
/// batch processor (holding `queue_size` spans) → admitting processor (priorities; counts ended
/// and dropped spans), which both the provider and the records feed.
/// Must run where blocking is allowed (the HTTP exporter builds a blocking client) and a Tokio
/// runtime is reachable (the gRPC exporter spawns its connection there).
pub fn tracer_provider(
    export: &Export,
    resource: Resource,
    metrics: Arc<Metrics>,
    queue_size: usize,
) -> Result<(SdkTracerProvider, Traces), ExportError> {
    let endpoint = signal_endpoint(export, "/v1/traces");
    let exporter = match export.protocol {
        OtlpProtocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            b.build()
        }
        OtlpProtocol::HttpProtobuf => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            b.build()
        }
    }
    .map_err(|e| ExportError(format!("OTLP span exporter: {e}")))?;
    let waiting = Waiting::new(queue_size);
    let exporter = CountingSpanExporter {
        inner: exporter,
        metrics: metrics.clone(),
        log: FailureLog::new("traces"),
        waiting: waiting.clone(),
    };
    // The same capacity as the admission's: the batch processor never drops on its own.
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(waiting.capacity())
        .build();
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(config)
        .build();
    let processor = AdmittingProcessor::new(batch, waiting, metrics);
    Ok(pipeline(processor, resource))
}

/// A tracer provider ending in `processor`, and the [`Traces`] that hand disconnect records to
/// the same processor (what tests build around an in-memory exporter, too).
pub fn pipeline<P: SpanProcessor + 'static>(
    mut processor: P,
    resource: Resource,
) -> (SdkTracerProvider, Traces) {
    // Set here, once: the provider cannot reach a processor it shares.
    processor.set_resource(&resource);
    let shared = Shared(Arc::new(processor));
    let provider = SdkTracerProvider::builder()
        .with_span_processor(shared.clone())
        .with_resource(resource)
        .build();
    let traces = Traces {
        tracer: provider.tracer("wsmon"),
        records: shared.0,
    };
    (provider, traces)
}

/// A processor shared by the provider and the disconnect records.
#[derive(Debug)]
struct Shared(Arc<dyn SpanProcessor>);

impl Clone for Shared {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl SpanProcessor for Shared {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.0.on_start(span, cx);
    }
    fn on_end(&self, span: opentelemetry_sdk::trace::SpanData) {
        self.0.on_end(span);
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
}
