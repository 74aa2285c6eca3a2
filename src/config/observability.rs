//! Settings sections for observing: stats, dashboard, logs, telemetry.
//! Defaults are mirrored in `config/default.toml`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the registry and stats APIs report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorSettings {
    /// A connection with no client message for this long is flagged idle (s).
    pub idle_after_secs: u64,
    /// Most connections listed by `/ws-stats` (the paginated API lists the rest).
    pub ws_stats_max_connections: usize,
    /// Page size of `/api/v1/connections` when `limit` is absent.
    pub page_default_limit: usize,
    /// Largest `limit` accepted by `/api/v1/connections`.
    pub page_max_limit: usize,
    /// How often the idle and queue-depth gauges are sampled (ms).
    pub sample_interval_ms: u64,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        Self {
            idle_after_secs: 300,
            ws_stats_max_connections: 1_000,
            page_default_limit: 100,
            page_max_limit: 1_000,
            sample_interval_ms: 5_000,
        }
    }
}

impl MonitorSettings {
    pub fn idle_after(&self) -> Duration {
        Duration::from_secs(self.idle_after_secs)
    }
}

/// The `/admin` dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Interval between live updates pushed to each open dashboard (ms).
    pub push_interval_ms: u64,
    /// Most dashboards streaming at once; more get HTTP 503.
    pub max_streams: usize,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            push_interval_ms: 1_000,
            max_streams: 32,
        }
    }
}

/// Log output (`RUST_LOG`, when set, overrides `level`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// Filter directives, `RUST_LOG` syntax.
    pub level: String,
    /// `text` for terminals, `json` for log pipelines.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Trace and metric export (OTLP), trace links, per-message spans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// OTLP endpoint; empty turns export off. `OTEL_EXPORTER_OTLP_ENDPOINT`, when set, wins.
    pub otlp_endpoint: String,
    /// OTLP protocol; `OTEL_EXPORTER_OTLP_PROTOCOL`, when set, wins.
    pub otlp_protocol: OtlpProtocol,
    /// `service.name`; `OTEL_SERVICE_NAME`, when set, wins.
    pub service_name: String,
    /// Export traces when an endpoint is set.
    pub export_traces: bool,
    /// Export metrics when an endpoint is set.
    pub export_metrics: bool,
    /// Interval between OTLP metric exports (ms).
    pub metrics_interval_ms: u64,
    /// Spans for single inbound messages: off, a sampled ratio, or all.
    pub message_spans: MessageSpans,
    /// With `message_spans = "ratio"`: the share of messages traced (0 < r <= 1).
    pub message_span_ratio: f64,
    /// Link to a trace in the trace UI; `{trace_id}` is replaced. Empty: no links.
    pub trace_url_template: String,
    /// Longest wait for the final telemetry flush at shutdown (ms).
    pub shutdown_timeout_ms: u64,
    /// Spans waiting for export, at most; `OTEL_BSP_MAX_QUEUE_SIZE`, when set, wins.
    pub span_queue_size: usize,
    /// A connection's `websocket.open` span is recorded once it has lasted this long (ms).
    pub open_span_after_ms: u64,
    /// The share (0 to 1) of brief, normal disconnects whose record is exported: connections
    /// that closed normally before `open_span_after_ms`, outside a sampled caller's trace. Every
    /// abnormal disconnect and every longer connection is exported whatever this says.
    pub brief_disconnect_share: f64,
}

/// Spans the export queue holds by default (`telemetry.span_queue_size`): about 28 MiB at the
/// measured 1.7 KB a span.
pub const DEFAULT_SPAN_QUEUE: usize = 16_384;

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            otlp_protocol: OtlpProtocol::Grpc,
            service_name: "wsmon".into(),
            export_traces: true,
            export_metrics: true,
            metrics_interval_ms: 10_000,
            message_spans: MessageSpans::Off,
            message_span_ratio: 0.01,
            trace_url_template: "http://localhost:16686/trace/{trace_id}".into(),
            shutdown_timeout_ms: 5_000,
            span_queue_size: DEFAULT_SPAN_QUEUE,
            open_span_after_ms: 1_000,
            brief_disconnect_share: 0.1,
        }
    }
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Per-message span policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageSpans {
    Off,
    Ratio,
    All,
}
