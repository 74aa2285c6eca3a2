//! Where and how OTLP export goes, after the standard `OTEL_*` environment has had its say:
//! on or off, endpoint and protocol, and the resource every signal carries. The pipelines
//! themselves are built by [`super::traces`] and [`super::meters`].

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

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

/// A non-blank environment variable.
pub(super) fn env(name: &str) -> Option<String> {
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

/// The endpoint of one signal (`/v1/traces`, `/v1/metrics` appended over HTTP).
pub(super) fn signal_endpoint(export: &Export, path: &str) -> Option<String> {
    export.endpoint.as_ref().map(|base| match export.protocol {
        OtlpProtocol::Grpc => base.clone(),
        OtlpProtocol::HttpProtobuf => format!("{base}{path}"),
    })
}
