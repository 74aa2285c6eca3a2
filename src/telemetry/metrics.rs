//! [`Metrics`]: every metric handle wsmon records into, registered once at startup (so every
//! documented series exists from the start, and the hot path never looks a name up).
//!
//! Recorded through the `metrics` facade into one recorder per application: Prometheus text for
//! `/metrics` always, fanned out to the OpenTelemetry bridge when OTLP metrics are on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;

use super::names::{self, Kind};
use super::otel_bridge::OtelBridge;
use crate::reasons::{CloseReason, RejectReason};

/// Signals whose export is counted.
#[derive(Debug, Clone, Copy)]
pub enum Signal {
    Traces = 0,
    Metrics = 1,
}

/// Which budget a shed enforced (the `budget` label of `websocket.server.send_queue.sheds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The connection's own share.
    Connection = 0,
    /// The process-wide ceiling.
    Process = 1,
}

/// Span lifecycle outcomes counted by `websocket.server.telemetry.spans`.
#[derive(Debug, Clone, Copy)]
pub enum SpanOutcome {
    Ended = 0,
    Exported = 1,
    Failed = 2,
    /// Not admitted to the export queue (see `span_queue`).
    Dropped = 3,
    /// A disconnect record left out by the sampling rule (see `records`); never ended as a
    /// span, so not among the others.
    SampledOut = 4,
}

/// The handles, one per series, registered once at startup: the hot path indexes an array
/// instead of looking a name and labels up. Cheap to share (`Arc`); every field is a bounded
/// label set. Each field's series is the one of the same name in [`names::METRICS`].
pub struct Metrics {
    /// Connections open now (incremented at registration, decremented at release).
    pub active_connections: Gauge,
    /// Connections registered.
    pub connections_opened: Counter,
    /// Ended connections; indexed by [`CloseReason::index`].
    pub connections_closed: Vec<Counter>,
    /// How long ended connections lasted; indexed by [`CloseReason::index`].
    pub connection_duration: Vec<Histogram>,
    /// Chat messages received from clients.
    pub messages_received: Counter,
    /// Frames sent to clients.
    pub messages_sent: Counter,
    /// Payload size of received messages.
    pub message_size: Histogram,
    /// Time to offer one broadcast to every queue.
    pub fanout_duration: Histogram,
    /// Queued messages, summed over connections (the sampler sets it).
    pub send_queue_messages: Gauge,
    /// Messages not queued because a queue was full.
    pub send_queue_drops: Counter,
    /// Outbound bytes held, summed over connections (the sampler sets it).
    pub send_queue_bytes: Gauge,
    /// Connections shed by the byte budget; indexed by [`Shed`].
    pub send_queue_sheds: [Counter; 2],
    /// Idle connections (the sampler sets it).
    pub idle_connections: Gauge,
    /// Messages dropped by the per-connection rate limit.
    pub messages_rate_limited: Counter,
    /// Refused upgrades; indexed by [`RejectReason::index`].
    pub rejections: Vec<Counter>,
    /// Connections ended by an error; indexed by [`CloseReason::index`], present only for
    /// reasons with an error type.
    pub errors: Vec<Option<Counter>>,
    /// OTLP export calls: `[signal][0 = success, 1 = failure]`.
    pub telemetry_exports: [[Counter; 2]; 2],
    /// Spans by what became of them; indexed by [`SpanOutcome`].
    pub telemetry_spans: [Counter; 5],
    /// Chat messages published to Redis.
    pub backplane_published: Counter,
    /// Chat messages received from other nodes.
    pub backplane_received: Counter,
    /// Chat messages that did not cross nodes; indexed by [`BackplaneDrop`].
    pub backplane_dropped: [Counter; 4],
    /// Redis failures; indexed by [`BackplaneOp`].
    pub backplane_errors: [Counter; 6],
    /// Times Sentinel named another primary.
    pub backplane_primary_switches: Counter,
    /// From publishing on another node to receiving here.
    pub backplane_latency: Histogram,
    /// 1 while publishing and subscribed.
    pub backplane_up: Gauge,
    /// Nodes in the cluster view.
    pub cluster_nodes: Gauge,
    /// Accepted TCP connections not (yet) upgraded.
    pub http_connections: Gauge,
    /// Connections closed for a slow request head.
    pub http_header_timeouts: Counter,
    /// Failed accept calls.
    pub accept_errors: Counter,
    /// `http.server.request.duration`, one histogram per route, method and status.
    pub requests: RequestDurations,
}

/// What the monitoring core records (see `monitor`): the handles of the connection-level
/// series, cloned out of [`Metrics`] (each shares its series). The core holds this and nothing
/// of the chat's, the cluster's or HTTP's handles.
#[derive(Clone)]
pub struct ConnectionMetrics {
    pub active_connections: Gauge,
    pub connections_opened: Counter,
    /// Indexed by [`CloseReason::index`].
    pub connections_closed: Vec<Counter>,
    /// Indexed by [`CloseReason::index`].
    pub connection_duration: Vec<Histogram>,
    /// Indexed by [`CloseReason::index`]; present only for reasons with an error type.
    pub errors: Vec<Option<Counter>>,
    /// Indexed by [`RejectReason::index`].
    pub rejections: Vec<Counter>,
    pub messages_received: Counter,
    pub message_size: Histogram,
    pub messages_sent: Counter,
    /// Set by the sampler.
    pub idle_connections: Gauge,
    /// Set by the sampler.
    pub send_queue_messages: Gauge,
    /// Set by the sampler.
    pub send_queue_bytes: Gauge,
    /// Disconnect records left out by the sampling rule (`outcome="sampled_out"`).
    pub records_sampled_out: Counter,
}

impl ConnectionMetrics {
    /// Handles that record nothing (a core without metrics, tests).
    pub fn noop() -> Self {
        Metrics::noop().connections()
    }
}

/// Methods kept as label values; any other is `_OTHER` (OpenTelemetry's convention).
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// Route template, method label, status code.
type RequestKey = (String, &'static str, u16);

/// Request-duration histograms, registered on first use per (route template, method, status):
/// a bounded set (the routes are the router's templates, methods the nine standard ones plus
/// `_OTHER`, statuses 100-599).
pub struct RequestDurations {
    /// Where a new histogram is registered: Prometheus, and the OpenTelemetry bridge when
    /// exporting (each gets its own handle).
    recorders: Vec<Arc<dyn Recorder + Send + Sync>>,
    /// A std mutex: held for a map lookup, never across an await.
    cache: Mutex<HashMap<RequestKey, Vec<Histogram>>>,
}

impl RequestDurations {
    fn new(recorders: Vec<Arc<dyn Recorder + Send + Sync>>) -> Self {
        Self {
            recorders,
            cache: Mutex::default(),
        }
    }

    /// The label value for `method`.
    pub fn method_label(method: &str) -> &'static str {
        METHODS
            .iter()
            .find(|m| **m == method)
            .copied()
            .unwrap_or("_OTHER")
    }

    /// Records one request to `route` (a template, never a raw path).
    pub fn record(&self, route: &str, method: &str, status: u16, seconds: f64) {
        if self.recorders.is_empty() {
            return;
        }
        let method = Self::method_label(method);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let key = (route.to_owned(), method, status);
        let handles = cache.entry(key).or_insert_with(|| {
            let labels = vec![
                Label::new(names::HTTP_ROUTE, route.to_owned()),
                Label::new(names::HTTP_METHOD, method),
                Label::new(names::HTTP_STATUS, status.to_string()),
            ];
            let key = Key::from_parts(names::HTTP_REQUEST_DURATION, labels);
            let meta = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
            self.recorders
                .iter()
                .map(|r| r.register_histogram(&key, &meta))
                .collect()
        });
        for h in handles.iter() {
            h.record(seconds);
        }
    }
}

/// Why a chat message did not cross nodes.
#[derive(Debug, Clone, Copy)]
pub enum BackplaneDrop {
    BackplaneDown = 0,
    QueueFull = 1,
    PublishFailed = 2,
    Lost = 3,
}

/// A Redis operation that can fail.
#[derive(Debug, Clone, Copy)]
pub enum BackplaneOp {
    Connect = 0,
    Publish = 1,
    Subscribe = 2,
    Presence = 3,
    Decode = 4,
    /// Asking Sentinel for the primary.
    Sentinel = 5,
}

/// Where `/metrics` text comes from, plus the handles.
#[derive(Clone)]
pub struct MetricsHandle {
    pub metrics: Arc<Metrics>,
    pub prometheus: PrometheusHandle,
}

/// A shared recorder, so the same one can feed the fan-out and later registrations.
struct Shared(Arc<dyn Recorder + Send + Sync>);

impl Recorder for Shared {
    fn describe_counter(&self, key: metrics::KeyName, unit: Option<Unit>, text: SharedString) {
        self.0.describe_counter(key, unit, text);
    }
    fn describe_gauge(&self, key: metrics::KeyName, unit: Option<Unit>, text: SharedString) {
        self.0.describe_gauge(key, unit, text);
    }
    fn describe_histogram(&self, key: metrics::KeyName, unit: Option<Unit>, text: SharedString) {
        self.0.describe_histogram(key, unit, text);
    }
    fn register_counter(&self, key: &Key, meta: &Metadata<'_>) -> Counter {
        self.0.register_counter(key, meta)
    }
    fn register_gauge(&self, key: &Key, meta: &Metadata<'_>) -> Gauge {
        self.0.register_gauge(key, meta)
    }
    fn register_histogram(&self, key: &Key, meta: &Metadata<'_>) -> Histogram {
        self.0.register_histogram(key, meta)
    }
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
    Key::from_parts(name, labels)
}

impl Metrics {
    /// Handles that record nothing (for a registry used without telemetry).
    pub fn noop() -> Arc<Self> {
        Arc::new(Self::register(&metrics::NoopRecorder))
    }

    /// Describes and registers every metric of [`names::METRICS`] on `recorder`.
    pub fn register(recorder: &dyn Recorder) -> Self {
        for def in names::METRICS {
            let (unit, text) = (Some(def.unit), def.description.into());
            match def.kind {
                Kind::Counter => recorder.describe_counter(def.name.into(), unit, text),
                Kind::Gauge => recorder.describe_gauge(def.name.into(), unit, text),
                Kind::Histogram => recorder.describe_histogram(def.name.into(), unit, text),
            }
        }
        let meta = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
        let counter = |name, labels: &[(&'static str, &'static str)]| {
            recorder.register_counter(&key(name, labels), &meta)
        };
        let gauge = |name| recorder.register_gauge(&key(name, &[]), &meta);
        let histogram = |name, labels: &[(&'static str, &'static str)]| {
            recorder.register_histogram(&key(name, labels), &meta)
        };
        let by_reason = |r: &CloseReason| {
            [
                (names::CLOSE_REASON, r.as_str()),
                (names::CLOSE_INITIATOR, r.initiator().as_str()),
            ]
        };
        let exports = |signal: &'static str| {
            [
                counter(
                    names::TELEMETRY_EXPORTS,
                    &[(names::SIGNAL, signal), (names::OUTCOME, "success")],
                ),
                counter(
                    names::TELEMETRY_EXPORTS,
                    &[(names::SIGNAL, signal), (names::OUTCOME, "failure")],
                ),
            ]
        };
        Self {
            active_connections: gauge(names::ACTIVE_CONNECTIONS),
            connections_opened: counter(names::CONNECTIONS_OPENED, &[]),
            connections_closed: CloseReason::ALL
                .iter()
                .map(|r| counter(names::CONNECTIONS_CLOSED, &by_reason(r)))
                .collect(),
            connection_duration: CloseReason::ALL
                .iter()
                .map(|r| histogram(names::CONNECTION_DURATION, &by_reason(r)))
                .collect(),
            messages_received: counter(names::MESSAGES, &[(names::DIRECTION, "received")]),
            messages_sent: counter(names::MESSAGES, &[(names::DIRECTION, "sent")]),
            message_size: histogram(names::MESSAGE_SIZE, &[]),
            fanout_duration: histogram(names::FANOUT_DURATION, &[]),
            send_queue_messages: gauge(names::SEND_QUEUE_MESSAGES),
            send_queue_drops: counter(names::SEND_QUEUE_DROPS, &[]),
            send_queue_bytes: gauge(names::SEND_QUEUE_BYTES),
            send_queue_sheds: ["connection", "process"]
                .map(|b| counter(names::SEND_QUEUE_SHEDS, &[(names::BUDGET, b)])),
            idle_connections: gauge(names::IDLE_CONNECTIONS),
            messages_rate_limited: counter(names::MESSAGES_RATE_LIMITED, &[]),
            rejections: RejectReason::ALL
                .iter()
                .map(|r| counter(names::REJECTIONS, &[(names::REJECTION_REASON, r.as_str())]))
                .collect(),
            errors: CloseReason::ALL
                .iter()
                .map(|r| {
                    r.error_type()
                        .map(|t| counter(names::ERRORS, &[(names::ERROR_TYPE, t)]))
                })
                .collect(),
            telemetry_exports: [exports("traces"), exports("metrics")],
            telemetry_spans: ["ended", "exported", "failed", "dropped", "sampled_out"]
                .map(|o| counter(names::TELEMETRY_SPANS, &[(names::OUTCOME, o)])),
            backplane_published: counter(
                names::BACKPLANE_MESSAGES,
                &[(names::DIRECTION, "published")],
            ),
            backplane_received: counter(
                names::BACKPLANE_MESSAGES,
                &[(names::DIRECTION, "received")],
            ),
            backplane_dropped: ["backplane_down", "queue_full", "publish_failed", "lost"]
                .map(|r| counter(names::BACKPLANE_DROPPED, &[(names::DROP_REASON, r)])),
            backplane_errors: [
                "connect",
                "publish",
                "subscribe",
                "presence",
                "decode",
                "sentinel",
            ]
            .map(|o| counter(names::BACKPLANE_ERRORS, &[(names::OPERATION, o)])),
            backplane_primary_switches: counter(names::BACKPLANE_PRIMARY_SWITCHES, &[]),
            backplane_latency: histogram(names::BACKPLANE_LATENCY, &[]),
            backplane_up: gauge(names::BACKPLANE_UP),
            cluster_nodes: gauge(names::CLUSTER_NODES),
            http_connections: gauge(names::HTTP_CONNECTIONS),
            http_header_timeouts: counter(names::HTTP_HEADER_TIMEOUTS, &[]),
            accept_errors: counter(names::ACCEPT_ERRORS, &[]),
            requests: RequestDurations::new(Vec::new()),
        }
    }

    /// The monitoring core's share of the handles.
    pub fn connections(&self) -> ConnectionMetrics {
        ConnectionMetrics {
            active_connections: self.active_connections.clone(),
            connections_opened: self.connections_opened.clone(),
            connections_closed: self.connections_closed.clone(),
            connection_duration: self.connection_duration.clone(),
            errors: self.errors.clone(),
            rejections: self.rejections.clone(),
            messages_received: self.messages_received.clone(),
            message_size: self.message_size.clone(),
            messages_sent: self.messages_sent.clone(),
            idle_connections: self.idle_connections.clone(),
            send_queue_messages: self.send_queue_messages.clone(),
            send_queue_bytes: self.send_queue_bytes.clone(),
            records_sampled_out: self.telemetry_spans[SpanOutcome::SampledOut as usize].clone(),
        }
    }

    /// Counts one export call.
    pub fn export(&self, signal: Signal, ok: bool) {
        self.telemetry_exports[signal as usize][usize::from(!ok)].increment(1);
    }

    /// Counts connections the byte budget closed.
    pub fn shed(&self, budget: Shed, n: u64) {
        self.send_queue_sheds[budget as usize].increment(n);
    }

    /// Counts chat messages that did not cross nodes.
    pub fn backplane_drop(&self, why: BackplaneDrop, n: u64) {
        self.backplane_dropped[why as usize].increment(n);
    }

    /// Counts a failed Redis operation.
    pub fn backplane_error(&self, op: BackplaneOp) {
        self.backplane_errors[op as usize].increment(1);
    }

    /// Counts spans reaching a lifecycle point.
    pub fn spans(&self, outcome: SpanOutcome, n: u64) {
        self.telemetry_spans[outcome as usize].increment(n);
    }
}

/// Builds the recorder (Prometheus, plus the OpenTelemetry bridge when `meter_provider` is
/// given) and registers every handle.
pub fn build(meter_provider: Option<&SdkMeterProvider>) -> MetricsHandle {
    let mut builder = PrometheusBuilder::new().with_recommended_naming(true);
    for def in names::METRICS.iter().filter(|d| d.kind == Kind::Histogram) {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(def.name.into()), def.buckets)
            .expect("histogram buckets are non-empty");
    }
    let prometheus = builder.build_recorder();
    let handle = prometheus.handle();
    let prometheus: Arc<dyn Recorder + Send + Sync> = Arc::new(prometheus);
    let mut recorders = vec![prometheus.clone()];
    let mut metrics = match meter_provider {
        None => Metrics::register(prometheus.as_ref()),
        Some(provider) => {
            let bridge: Arc<dyn Recorder + Send + Sync> =
                Arc::new(OtelBridge::new(provider.meter("wsmon")));
            recorders.push(bridge.clone());
            let fanout = metrics_util::layers::FanoutBuilder::default()
                .add_recorder(Shared(prometheus))
                .add_recorder(Shared(bridge))
                .build();
            Metrics::register(&fanout)
        }
    };
    metrics.requests = RequestDurations::new(recorders);
    MetricsHandle {
        metrics: Arc::new(metrics),
        prometheus: handle,
    }
}
