//! The OTLP metric pipeline: exporter → counting wrapper → periodic reader, on a meter
//! provider the metric handles are registered on (see [`super::metrics::build`]).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::Resource;

use super::export::{CountingMetricExporter, FailureLog};
use super::metrics::Metrics;
use super::otlp::{signal_endpoint, Export, ExportError};
use crate::config::OtlpProtocol;

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
