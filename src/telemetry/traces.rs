//! The OTLP pipelines: resource, span exporter and batch processor, metric exporter and
//! periodic reader, chosen from settings and the standard `OTEL_*` environment.
//!
//! Bounds: the span export queue holds at most `telemetry.span_queue_size` spans (16,384 by
//! default, or `OTEL_BSP_MAX_QUEUE_SIZE`); beyond that spans are dropped by priority and
//! counted (see `span_queue`); each span keeps at most 128 events,
//! 128 attributes and 128 links (SDK limits); an export waits at most `OTEL_EXPORTER_OTLP_TIMEOUT`
//! (10 s by default).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanProcessor,
};
use opentelemetry_sdk::Resource;

use super::export::{CountingMetricExporter, CountingSpanExporter, FailureLog};
use super::metrics::Metrics;
use super::records::Traces;
use super::span_queue::{AdmittingProcessor, Waiting};
use crate::config::{OtlpProtocol, TelemetrySettings};

/// Where and how to export, after the environment has had its say.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    /// Base endpoint from the settings (`None` when `OTEL_EXPORTER_OTLP_ENDPOINT` decides).
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
}

/// A problem with the `OTEL_*` environment or building an exporter.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExportError(pub String);

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Decides whether and how to export: off with `OTEL_SDK_DISABLED=true` or no endpoint.
pub fn export_from_env(settings: &TelemetrySettings) -> Result<Option<Export>, ExportError> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let protocol = match env("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        None => settings.otlp_protocol,
        Some("grpc") => OtlpProtocol::Grpc,
        Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
        Some(other) => {
            return Err(ExportError(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported (grpc or http/protobuf)"
            )))
        }
    };
    if env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        // The exporter reads it itself (and appends /v1/traces, /v1/metrics over HTTP).
        return Ok(Some(Export {
            endpoint: None,
            protocol,
        }));
    }
    if settings.otlp_endpoint.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(Export {
        endpoint: Some(settings.otlp_endpoint.trim_end_matches('/').to_owned()),
        protocol,
    }))
}

/// `service.name` (settings, unless `OTEL_SERVICE_NAME`), `service.version`,
/// `service.instance.id` (the node id, unless `OTEL_RESOURCE_ATTRIBUTES` sets one), `host.name`,
/// plus `OTEL_RESOURCE_ATTRIBUTES`.
pub fn resource(settings: &TelemetrySettings, instance_id: &str) -> Resource {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let mut builder = Resource::builder().with_attributes([
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("host.name", host),
    ]);
    let from_env = env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
        attrs
            .split(',')
            .any(|kv| kv.trim().starts_with("service.instance.id="))
    });
    if !from_env {
        builder =
            builder.with_attribute(KeyValue::new("service.instance.id", instance_id.to_owned()));
    }
    if env("OTEL_SERVICE_NAME").is_none() {
        builder = builder.with_service_name(settings.service_name.clone());
    }
    builder.build()
}

fn signal_endpoint(export: &Export, path: &str) -> Option<String> {
    export.endpoint.as_ref().map(|base| match export.protocol {
        OtlpProtocol::Grpc => base.clone(),
        OtlpProtocol::HttpProtobuf => format!("{base}{path}"),
    })
}

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

/// The meter provider: OTLP exporter → counting wrapper → periodic reader. The metric handles
/// are registered on this provider, so its exporter learns them afterwards through `metrics`.
pub fn meter_provider(
    export: &Export,
    resource: Resource,
    interval: Duration,
    metrics: Arc<OnceLock<Arc<Metrics>>>,
) -> Result<SdkMeterProvider, ExportError> {
    let endpoint = signal_endpoint(export, "/v1/metrics");
    let exporter = match export.protocol {
        OtlpProtocol::Grpc => {
            let mut b = opentelemetry_otlp::MetricExporter::builder().with_tonic();
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            b.build()
        }
        OtlpProtocol::HttpProtobuf => {
            let mut b = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            b.build()
        }
    }
    .map_err(|e| ExportError(format!("OTLP metric exporter: {e}")))?;
    let exporter = CountingMetricExporter {
        inner: exporter,
        metrics,
        log: FailureLog::new("metrics"),
    };
    let reader = PeriodicReader::builder(exporter)
        .with_interval(interval)
        .build();
    Ok(SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build())
}
