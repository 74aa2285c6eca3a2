//! Every telemetry name wsmon emits, defined once: metrics (OpenTelemetry name, Prometheus
//! name, type, unit, labels, buckets, meaning), span names and attribute keys. The README's
//! metric table and the tests are checked against [`METRICS`].

use metrics::Unit;

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The Prometheus `# TYPE` word.
    pub fn prometheus_type(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric's definition.
#[derive(Debug)]
pub struct MetricDef {
    /// OpenTelemetry name (also the `metrics` facade key).
    pub name: &'static str,
    /// The series name Prometheus stores, by either path (scrape or collector).
    pub prometheus: &'static str,
    pub kind: Kind,
    /// Unit for the `metrics` facade (drives the Prometheus suffix).
    pub unit: Unit,
    /// UCUM unit for OpenTelemetry (`s`, `By`, or an annotation like `{connection}`).
    pub otel_unit: &'static str,
    /// Label keys; each has a bounded value set.
    pub labels: &'static [&'static str],
    /// Histogram bucket upper bounds (empty for other kinds).
    pub buckets: &'static [f64],
    pub description: &'static str,
}

/// Connection duration buckets: 1 s to 24 h.
pub const DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0,
    86400.0,
];
/// Fan-out buckets: 10 µs to 1 s.
pub const FANOUT_BUCKETS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
];
/// Backplane latency buckets: 100 µs to 2.5 s.
pub const BACKPLANE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// HTTP request duration buckets: OpenTelemetry's recommendation, 5 ms to 10 s.
pub const HTTP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Message size buckets: 16 B to 64 KiB (the default size limit).
pub const SIZE_BUCKETS: &[f64] = &[16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0];

pub const ACTIVE_CONNECTIONS: &str = "websocket.server.active_connections";
pub const CONNECTIONS_OPENED: &str = "websocket.server.connections.opened";
pub const CONNECTIONS_CLOSED: &str = "websocket.server.connections.closed";
pub const CONNECTION_DURATION: &str = "websocket.server.connection.duration";
pub const MESSAGES: &str = "websocket.server.messages";
pub const MESSAGE_SIZE: &str = "websocket.server.message.size";
pub const FANOUT_DURATION: &str = "websocket.server.fanout.duration";
pub const SEND_QUEUE_MESSAGES: &str = "websocket.server.send_queue.messages";
pub const SEND_QUEUE_DROPS: &str = "websocket.server.send_queue.drops";
pub const SEND_QUEUE_BYTES: &str = "websocket.server.send_queue.held";
pub const SEND_QUEUE_SHEDS: &str = "websocket.server.send_queue.sheds";
pub const IDLE_CONNECTIONS: &str = "websocket.server.idle_connections";
pub const REJECTIONS: &str = "websocket.server.rejections";
pub const ERRORS: &str = "websocket.server.errors";
pub const MESSAGES_RATE_LIMITED: &str = "websocket.server.messages.rate_limited";
pub const TELEMETRY_EXPORTS: &str = "websocket.server.telemetry.exports";
pub const TELEMETRY_SPANS: &str = "websocket.server.telemetry.spans";
pub const BACKPLANE_MESSAGES: &str = "websocket.server.backplane.messages";
pub const BACKPLANE_DROPPED: &str = "websocket.server.backplane.dropped";
pub const BACKPLANE_ERRORS: &str = "websocket.server.backplane.errors";
pub const BACKPLANE_LATENCY: &str = "websocket.server.backplane.latency";
pub const BACKPLANE_UP: &str = "websocket.server.backplane.up";
pub const BACKPLANE_PRIMARY_SWITCHES: &str = "websocket.server.backplane.primary_switches";
pub const CLUSTER_NODES: &str = "websocket.server.cluster.nodes";
pub const HTTP_CONNECTIONS: &str = "websocket.server.http.connections";
pub const HTTP_HEADER_TIMEOUTS: &str = "websocket.server.http.header_timeouts";
pub const ACCEPT_ERRORS: &str = "websocket.server.accept.errors";
/// OpenTelemetry's HTTP server semantic convention, for the API and dashboard requests.
pub const HTTP_REQUEST_DURATION: &str = "http.server.request.duration";

/// Label keys.
pub const CLOSE_REASON: &str = "close.reason";
pub const CLOSE_INITIATOR: &str = "close.initiator";
pub const DIRECTION: &str = "direction";
pub const REJECTION_REASON: &str = "rejection.reason";
pub const ERROR_TYPE: &str = "error.type";
pub const SIGNAL: &str = "signal";
pub const OUTCOME: &str = "outcome";
pub const DROP_REASON: &str = "reason";
pub const OPERATION: &str = "operation";
pub const BUDGET: &str = "budget";
pub const HTTP_ROUTE: &str = "http.route";
pub const HTTP_METHOD: &str = "http.request.method";
pub const HTTP_STATUS: &str = "http.response.status_code";

/// Every metric wsmon records.
pub const METRICS: &[MetricDef] = &[
    MetricDef {
        name: ACTIVE_CONNECTIONS,
        prometheus: "websocket_server_active_connections",
        kind: Kind::Gauge,
        unit: Unit::Count,
        otel_unit: "{connection}",
        labels: &[],
        buckets: &[],
        description: "WebSocket connections open right now.",
    },
    MetricDef {
        name: CONNECTIONS_OPENED,
        prometheus: "websocket_server_connections_opened_total",
        kind: Kind::Counter,
        unit: Unit::Count,
        otel_unit: "{connection}",
        labels: &[],
        buckets: &[],
        description: "WebSocket connections accepted.",
    },
    MetricDef {
        name: CONNECTIONS_CLOSED,
        prometheus: "websocket_server_connections_closed_total",
        kind: Kind::Counter,
        unit: Unit::Count,
        otel_unit: "{connection}",
        labels: &[CLOSE_REASON, CLOSE_INITIATOR],
        buckets: &[],
        description: "WebSocket connections ended, by close reason and initiator.",
    },
    MetricDef {
        name: CONNECTION_DURATION,
        prometheus: "websocket_server_connection_duration_seconds",
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        otel_unit: "s",
        labels: &[CLOSE_REASON, CLOSE_INITIATOR],
        buckets: DURATION_BUCKETS,
        description: "How long ended connections lasted, by close reason and initiator.",
    },
    MetricDef {
        name: MESSAGES,
        prometheus: "websocket_server_messages_total",
        kind: Kind::Counter,
        unit: Unit::Count,
        otel_unit: "{message}",
        labels: &[DIRECTION],
        buckets: &[],
        description: "Messages received from clients and frames sent to them.",
    },
    MetricDef {
        name: MESSAGE_SIZE,
        prometheus: "websocket_server_message_size_bytes",
        kind: Kind::Histogram,
        unit: Unit::Bytes,
        otel_unit: "By",
        labels: &[],
        buckets: SIZE_BUCKETS,
        description: "Payload size of messages received from clients.",
    },
    MetricDef {
        name: FANOUT_DURATION,
        prometheus: "websocket_server_fanout_duration_seconds",
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        otel_unit: "s",
        labels: &[],
        buckets: FANOUT_BUCKETS,
        description: "Time to offer one broadcast to every connection's outbound queue.",
    },
    MetricDef {
        name: SEND_QUEUE_MESSAGES,
        prometheus: "websocket_server_send_queue_messages",
        kind: Kind::Gauge,
        unit: Unit::Count,
        otel_unit: "{message}",
        labels: &[],
        buckets: &[],
        description: "Messages waiting in outbound queues, summed over connections (sampled).",
    },
    MetricDef {
        name: SEND_QUEUE_DROPS,
        prometheus: "websocket_server_send_queue_drops_total",
        kind: Kind::Counter,
        unit: Unit::Count,
        otel_unit: "{message}",
        labels: &[],
        buckets: &[],
        description: "Messages not queued because a connection's outbound queue was full.",
    },
    MetricDef {
        name: SEND_QUEUE_BYTES,
        prometheus: "websocket_server_send_queue_held_bytes",
        kind: Kind::Gauge,
        unit: Unit::Bytes,
        otel_unit: "By",
        labels: &[],
        buckets: &[],
        description: "Outbound bytes held for clients (queued or being written), summed over \
                      connections (sampled); bounded by limits.max_outbound_bytes.",
    },
    MetricDef {
        name: SEND_QUEUE_SHEDS,
        prometheus: "websocket_server_send_queue_sheds_total",
        kind: Kind::Counter,
        unit: Unit::Count,
        otel_unit: "{connection}",
        labels: &[BUDGET],
        buckets: &[],
        description: "Connections closed as slow_consumer by the byte budget: over their own \
                      share (connection) or as the largest holders over the process ceiling \
                      (process).",
    },
    MetricDef {
        name: IDLE_CONNECTIONS,
        prometheus: "websocket_server_idle_connections",
        kind: Kind::Gauge,
        unit: Unit::Count,
        otel_unit: "{connection}",
        labels: &[],
        buckets: &[],
        description:
            "Open connections with no client message for monitor.idle_after_secs (sampled).",
    },
    MetricDef {
        name: REJECTIONS,
        prometheus: "websocket_server_rejections_total",
        kind: Kind::Counter,
        unit: Unit::Count,
        otel_unit: "{request}",
        labels: &[REJECTION_REASON],
        buckets: &[],
        description: "Upgrade requests refused before a connection existed, by reason.",
    },
    MetricDef {
        name: ERRORS,
        prometheus: "websocket_server_errors_total",
        kind: Kind::Counter,
        unit: Unit::Count,
        otel_unit: "{error}",
        labels: &[ERROR_TYPE],
        buckets: &[],
        description: "Connections ended by an error, by error type.",
    },
    MetricDef {
        name: MESSAGES_RATE_LIMITED,
        prometheus: "websocket_server_messages_rate_limited_total",
        kind: Kind::Counter,
        unit: Unit::Count,
        otel_unit: "{message}",
        labels: &[],
        buckets: &[],
        description: "Messages dropped by the per-connection rate limit.",
    },
    MetricDef {
        name: TELEMETRY_EXPORTS,
        prometheus: "websocket_server_telemetry_exports_total",
        kind: Kind::Counter,
        unit: Unit::Count,
        otel_unit: "{export}",
        labels: &[SIGNAL, OUTCOME],
        buckets: &[],
        description:
            "OTLP export calls, by signal (traces, metrics) and outcome (success, failure).",
    },
    MetricDef {
        name: TELEMETRY_SPANS,
        prometheus: "websocket_server_telemetry_spans_total",
        kind: Kind::Counter,
        unit: Unit::Count,
        otel_unit: "{span}",
        labels: &[OUTCOME],
        buckets: &[],
        description: "Spans ended, exported, failed to export, and dropped at a full export \
                      queue (lowest priority first); ended minus the others is what is queued. \
                      sampled_out: disconnect records of brief normal connections left out by \
                      telemetry.brief_disconnect_share (never ended, not among the others).",
    },
    MetricDef {
        name: BACKPLANE_MESSAGES,
        prometheus: "websocket_server_backplane_messages_total",
        kind: Kind::Counter,
        unit: Unit::Count,
        otel_unit: "{message}",
        labels: &[DIRECTION],
        buckets: &[],
        description: "Chat messages published to Redis and received from other nodes (0 on a \
                      single node).",
    },
    MetricDef {
        name: BACKPLANE_DROPPED,
        prometheus: "websocket_server_backplane_dropped_total",
        kind: Kind::Counter,
        unit: Unit::Count,
        otel_unit: "{message}",
        labels: &[DROP_REASON],
        buckets: &[],
        description: "Chat messages that did not cross nodes: backplane_down, queue_full, \
                      publish_failed (sender side), lost (a gap seen by the receiver).",
    },
    MetricDef {
        name: BACKPLANE_ERRORS,
        prometheus: "websocket_server_backplane_errors_total",
        kind: Kind::Counter,
        unit: Unit::Count,
        otel_unit: "{error}",
        labels: &[OPERATION],
        buckets: &[],
        description: "Redis failures, by operation (connect, publish, subscribe, presence, \
                      decode, sentinel).",
    },
    MetricDef {
        name: BACKPLANE_LATENCY,
        prometheus: "websocket_server_backplane_latency_seconds",
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        otel_unit: "s",
        labels: &[],
        buckets: BACKPLANE_BUCKETS,
        description: "From publishing on the sending node to receiving here (wall clocks of \
                      two nodes).",
    },
    MetricDef {
        name: BACKPLANE_UP,
        prometheus: "websocket_server_backplane_up",
        kind: Kind::Gauge,
        unit: Unit::Count,
        otel_unit: "{status}",
        labels: &[],
        buckets: &[],
        description: "1 while publishing to and subscribed on Redis; 0 otherwise (and on a \
                      single node).",
    },
    MetricDef {
        name: BACKPLANE_PRIMARY_SWITCHES,
        prometheus: "websocket_server_backplane_primary_switches_total",
        kind: Kind::Counter,
        unit: Unit::Count,
        otel_unit: "{switch}",
        labels: &[],
        buckets: &[],
        description: "Times Sentinel named another Redis primary than the one this node used \
                      (a failover followed; 0 without Sentinel).",
    },
    MetricDef {
        name: CLUSTER_NODES,
        prometheus: "websocket_server_cluster_nodes",
        kind: Kind::Gauge,
        unit: Unit::Count,
        otel_unit: "{node}",
        labels: &[],
        buckets: &[],
        description: "Nodes in the cluster view with a live presence key, this one included.",
    },
    MetricDef {
        name: HTTP_CONNECTIONS,
        prometheus: "websocket_server_http_connections",
        kind: Kind::Gauge,
        unit: Unit::Count,
        otel_unit: "{connection}",
        labels: &[],
        buckets: &[],
        description: "TCP connections accepted and not upgraded to a WebSocket: requests in \
                      progress and idle keep-alive (at most server.max_http_connections).",
    },
    MetricDef {
        name: HTTP_HEADER_TIMEOUTS,
        prometheus: "websocket_server_http_header_timeouts_total",
        kind: Kind::Counter,
        unit: Unit::Count,
        otel_unit: "{connection}",
        labels: &[],
        buckets: &[],
        description: "Connections closed because a request head did not arrive within \
                      server.header_read_timeout_ms (slow or idle clients).",
    },
    MetricDef {
        name: ACCEPT_ERRORS,
        prometheus: "websocket_server_accept_errors_total",
        kind: Kind::Counter,
        unit: Unit::Count,
        otel_unit: "{error}",
        labels: &[],
        buckets: &[],
        description: "Failed accept calls (e.g. out of file descriptors); the server backs off \
                      and retries.",
    },
    MetricDef {
        name: HTTP_REQUEST_DURATION,
        prometheus: "http_server_request_duration_seconds",
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        otel_unit: "s",
        labels: &[HTTP_ROUTE, HTTP_METHOD, HTTP_STATUS],
        buckets: HTTP_BUCKETS,
        description: "Duration of API, dashboard and /metrics requests, by route template, \
                      method and status (the /admin/events stream is not counted).",
    },
];

/// The definition of `name`, if it is one of wsmon's.
pub fn metric(name: &str) -> Option<&'static MetricDef> {
    METRICS.iter().find(|m| m.name == name)
}

/// Attributes of the disconnect record (the `websocket.connection` span).
pub mod attributes {
    pub const CONNECTION_ID: &str = "connection.id";
    pub const CLIENT_ID: &str = "client.id";
    pub const CLIENT_ADDRESS: &str = "client.address";
    pub const USER_AGENT: &str = "user_agent.original";
    pub const HTTP_ROUTE: &str = "http.route";
    /// Always `websocket`.
    pub const PROTOCOL: &str = "network.protocol.name";
    pub const CLOSE_REASON: &str = "close.reason";
    pub const CLOSE_INITIATOR: &str = "close.initiator";
    /// `true` on abnormal disconnects (absent otherwise): a plain attribute to search by.
    pub const CLOSE_ABNORMAL: &str = "close.abnormal";
    pub const CLOSE_CODE_SENT: &str = "close.code_sent";
    pub const CLOSE_CODE_RECEIVED: &str = "close.code_received";
    pub const DURATION: &str = "connection.duration_s";
    pub const MESSAGES_RECEIVED: &str = "messages.received";
    pub const MESSAGES_SENT: &str = "messages.sent";
    pub const BYTES_RECEIVED: &str = "bytes.received";
    pub const BYTES_SENT: &str = "bytes.sent";
}

/// Span names.
pub mod spans {
    /// The whole connection, from the upgrade to the end of cleanup; it ends carrying the
    /// disconnect record: reason, initiator, codes, duration, counts.
    pub const CONNECTION: &str = "websocket.connection";
    /// Short span ended right after the upgrade, so a live connection shows up in seconds.
    pub const OPEN: &str = "websocket.open";
    /// One API or dashboard request (not `/metrics`, not the `/admin/events` stream).
    pub const HTTP_REQUEST: &str = "http.server.request";
    /// One inbound message (sampled; its own trace, linked to the connection).
    pub const MESSAGE: &str = "websocket.message";
    /// A chat message handed to Redis (child of the message span).
    pub const BACKPLANE_PUBLISH: &str = "backplane.publish";
    /// A chat message from another node, fanned out here (child of its publish span).
    pub const BACKPLANE_DELIVER: &str = "backplane.deliver";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_names_follow_the_otel_translation_rules() {
        for m in METRICS {
            let mut expected = m.name.replace('.', "_");
            match m.otel_unit {
                "s" => expected.push_str("_seconds"),
                "By" => expected.push_str("_bytes"),
                u => assert!(u.starts_with('{'), "{}: unexpected unit {u}", m.name),
            }
            if m.kind == Kind::Counter {
                expected.push_str("_total");
            }
            assert_eq!(m.prometheus, expected, "{}", m.name);
            assert_eq!(
                m.buckets.is_empty(),
                m.kind != Kind::Histogram,
                "{}",
                m.name
            );
        }
    }

    #[test]
    fn duration_buckets_span_one_second_to_a_day() {
        assert_eq!(DURATION_BUCKETS.first(), Some(&1.0));
        assert_eq!(DURATION_BUCKETS.last(), Some(&86400.0));
        assert!(DURATION_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }
}
