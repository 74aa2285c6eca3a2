//! Traces and correlated logs, captured with the SDK's in-memory span exporter and a log buffer
//! installed once for this test binary: span names, attributes, parent/link structure, one
//! disconnect record per close reason, trace ids in `/ws-stats`, `traceparent`, log fields.
//! (The same spans go to a real collector and Jaeger in the operator-stack tests.)

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::SinkExt;
use opentelemetry::trace::{SpanId, Status};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{
    InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor, SpanData,
};
use opentelemetry_sdk::Resource;
use tokio_tungstenite::tungstenite::Message;
use wsmon::config::{LogFormat, LogSettings, MessageSpans};
use wsmon::monitor::CloseReason;

use helpers::{spawn_app, spawn_app_with, Client, TestApp, RECV_TIMEOUT};

struct Captured {
    spans: InMemorySpanExporter,
    logs: Arc<Mutex<Vec<u8>>>,
    _provider: SdkTracerProvider,
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let spans = InMemorySpanExporter::default();
        let (provider, traces) = wsmon::telemetry::traces::pipeline(
            SimpleSpanProcessor::new(spans.clone()),
            Resource::builder().build(),
        );
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let settings = LogSettings {
            level: "info".into(),
            format: LogFormat::Json,
        };
        let subscriber = wsmon::telemetry::get_subscriber(&settings, Some(traces), move || {
            LogWriter(sink.clone())
        });
        wsmon::telemetry::install(subscriber);
        Captured {
            spans,
            logs,
            _provider: provider,
        }
    })
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn attr_str(span: &SpanData, key: &str) -> String {
    attr(span, key)
        .map(|v| v.as_str().into_owned())
        .unwrap_or_default()
}

fn attr_i64(span: &SpanData, key: &str) -> Option<i64> {
    match attr(span, key)? {
        Value::I64(v) => Some(*v),
        other => panic!("{key}: {other:?}"),
    }
}

/// Finished spans of one connection (by `connection.id`), plus the spans sharing its trace.
fn spans_of(connection_id: &str) -> Vec<SpanData> {
    captured()
        .spans
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| attr_str(s, "connection.id") == connection_id)
        .collect()
}

async fn wait_for_span(connection_id: &str, name: &str) -> SpanData {
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        if let Some(s) = spans_of(connection_id).into_iter().find(|s| s.name == name) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {name} span for {connection_id}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_for_client_span(client_id: &str, name: &str) -> SpanData {
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        let found = captured()
            .spans
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .find(|s| s.name == name && attr_str(s, "client.id") == client_id);
        if let Some(s) = found {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {name} span for {client_id}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn trace_spans(trace_id: opentelemetry::trace::TraceId) -> Vec<SpanData> {
    captured()
        .spans
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace_id)
        .collect()
}

async fn connection_id_of(app: &TestApp, client_id: &str) -> String {
    app.connection_id(client_id).await
}

#[tokio::test]
async fn a_live_connection_is_visible_at_once_and_its_trace_id_is_in_the_stats() {
    captured();
    let app = spawn_app().await;
    let _alice = app.connect("alice-live").await;
    let id = connection_id_of(&app, "alice-live").await;

    let open = wait_for_span(&id, "websocket.open").await;
    assert_eq!(attr_str(&open, "client.id"), "alice-live");
    assert!(
        spans_of(&id)
            .iter()
            .all(|s| s.name != "websocket.connection"),
        "the connection span is still open"
    );
    let stats = app.stats().await;
    let conn = &stats["connections"][0];
    let trace_id = open.span_context.trace_id().to_string();
    assert_eq!(conn["trace_id"], trace_id);
    assert_eq!(
        conn["trace_url"],
        format!("http://localhost:16686/trace/{trace_id}")
    );
    let (_, api) = app.get_json(&format!("/api/v1/connections/{id}")).await;
    assert_eq!(api["trace_id"], trace_id);
}

#[tokio::test]
async fn a_disconnect_ends_the_connection_span_with_its_record_and_the_trace_holds_two_spans() {
    captured();
    let app = spawn_app().await;
    let mut alice = app
        .connect_with("alice-close", &[("user-agent", "probe/2")])
        .await;
    let mut bob = app.connect("bob-close").await;
    let id = connection_id_of(&app, "alice-close").await;
    connection_id_of(&app, "bob-close").await;
    alice.send("hello").await;
    alice.recv_text().await;
    alice.recv_text().await;
    bob.recv_text().await;
    alice.ws.close(Some(normal_close())).await.unwrap();
    assert_eq!(bob.recv_text().await, "Client #alice-close left the chat");

    let connection = wait_for_span(&id, "websocket.connection").await;
    let open = wait_for_span(&id, "websocket.open").await;
    for (key, want) in [
        ("client.id", "alice-close"),
        ("client.address", "127.0.0.1"),
        ("user_agent.original", "probe/2"),
        ("http.route", "/ws/{client_id}"),
        ("network.protocol.name", "websocket"),
        ("close.reason", "client_closed"),
        ("close.initiator", "client"),
    ] {
        assert_eq!(attr_str(&connection, key), want, "connection span {key}");
    }
    assert_eq!(open.parent_span_id, connection.span_context.span_id());
    assert_eq!(attr_i64(&connection, "close.code_received"), Some(1000));
    assert_eq!(attr_i64(&connection, "messages.received"), Some(1));
    assert_eq!(attr_i64(&connection, "messages.sent"), Some(2));
    assert_eq!(attr_i64(&connection, "bytes.received"), Some(5));
    assert!(matches!(
        attr(&connection, "connection.duration_s"),
        Some(Value::F64(_))
    ));
    assert!(!matches!(connection.status, Status::Error { .. }));
    assert_eq!(connection.parent_span_id, SpanId::INVALID, "a root span");

    let trace = trace_spans(connection.span_context.trace_id());
    let mut names: Vec<_> = trace.iter().map(|s| s.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["websocket.connection", "websocket.open"]);
}

#[tokio::test]
async fn by_default_only_a_connection_that_lasts_gets_an_open_span() {
    captured();
    let app = spawn_app_with(|s| s.telemetry.open_span_after_ms = 1_000).await;
    let mut brief = app.connect("brief-open").await;
    let brief_id = connection_id_of(&app, "brief-open").await;
    brief.ws.close(None).await.unwrap();
    let connection = wait_for_span(&brief_id, "websocket.connection").await;
    let trace = trace_spans(connection.span_context.trace_id());
    let names: Vec<_> = trace.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(
        names,
        ["websocket.connection"],
        "one span for a brief connection"
    );

    let _lasting = app.connect("lasting-open").await;
    let lasting_id = connection_id_of(&app, "lasting-open").await;
    let open = wait_for_span(&lasting_id, "websocket.open").await;
    assert!(
        spans_of(&lasting_id)
            .iter()
            .all(|s| s.name != "websocket.connection"),
        "the open span arrives while the connection lasts"
    );
    assert_eq!(attr_str(&open, "client.id"), "lasting-open");
}

#[tokio::test]
async fn monitoring_requests_are_spans_with_route_template_method_and_status_never_the_query() {
    captured();
    let app = spawn_app().await;
    let _c = app.connect("spanned").await;
    let id = connection_id_of(&app, "spanned").await;
    let url = app.url(&format!("/api/v1/connections/{id}"));
    assert_eq!(app.http.get(url).send().await.unwrap().status(), 200);
    let url = app.url("/api/v1/connections?client_id=secret-in-query");
    assert_eq!(app.http.get(url).send().await.unwrap().status(), 200);
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);

    for route in ["/api/v1/connections/{connection_id}", "/api/v1/connections"] {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        let span = loop {
            let found = captured()
                .spans
                .get_finished_spans()
                .unwrap()
                .into_iter()
                .find(|s| s.name == format!("GET {route}") && attr_str(s, "http.route") == route);
            if let Some(s) = found {
                break s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no span for {route}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(attr_str(&span, "http.request.method"), "GET");
        assert_eq!(attr_i64(&span, "http.response.status_code"), Some(200));
        for kv in &span.attributes {
            let v = kv.value.as_str();
            assert!(
                !v.contains("secret-in-query") && !v.contains(&id),
                "{kv:?}: no query string, no raw path"
            );
        }
    }
    let scrapes = captured()
        .spans
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.name == "GET /metrics")
        .count();
    assert_eq!(scrapes, 0, "/metrics is not traced");
}

fn normal_close() -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "bye".into(),
    }
}

async fn raw_protocol_violation(app: &TestApp, client_id: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /ws/{client_id} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = [0u8; 256];
    let _ = tcp.read(&mut buf).await.unwrap();
    tcp.write_all(&[0xC1, 0x80, 0, 0, 0, 0]).await.unwrap();
    let _ = tokio::time::timeout(RECV_TIMEOUT, tcp.read(&mut buf)).await;
}

/// Ends one connection for `reason` through the path that produces it for real where one
/// exists here; policies of later issues are requested through the same close-request path a
/// policy uses.
async fn end_connection(app: &TestApp, client: Client, reason: CloseReason) -> Option<u16> {
    let mut c = client;
    match reason {
        CloseReason::ClientClosed => {
            c.ws.close(Some(normal_close())).await.unwrap();
            Some(1000)
        }
        CloseReason::ClientGone => {
            drop(c);
            None
        }
        CloseReason::ClientProtocolError => unreachable!("driven over a raw socket"),
        CloseReason::InvalidPayload => {
            let frame = tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
                vec![0xffu8],
                tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
                    tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
                ),
                true,
            );
            c.ws.send(Message::Frame(frame)).await.unwrap();
            Some(c.expect_close().await.0)
        }
        CloseReason::UnsupportedData => {
            c.ws.send(Message::binary(vec![1u8])).await.unwrap();
            Some(c.expect_close().await.0)
        }
        CloseReason::MessageTooBig => {
            c.send(&"x".repeat(70_000)).await;
            Some(c.expect_close().await.0)
        }
        CloseReason::ServerShutdown => {
            app.shutdown.cancel();
            Some(c.expect_close().await.0)
        }
        CloseReason::AdminKick => {
            let id = connection_id_of(app, &c.id).await;
            let url = app.url(&format!("/api/v1/connections/{id}"));
            assert_eq!(app.http.delete(url).send().await.unwrap().status(), 202);
            Some(c.expect_close().await.0)
        }
        other => {
            let entry = app.registry.by_client(&c.id).pop().unwrap();
            entry.request_close(other);
            Some(c.expect_close().await.0)
        }
    }
}

#[tokio::test]
async fn every_close_reason_is_recorded_with_initiator_code_and_status() {
    captured();
    for &reason in CloseReason::ALL {
        let app = spawn_app().await;
        let client_id = format!("reason-{}", reason.as_str());
        let code_seen = if reason == CloseReason::ClientProtocolError {
            raw_protocol_violation(&app, &client_id).await;
            Some(1002)
        } else {
            let client = app.connect(&client_id).await;
            connection_id_of(&app, &client_id).await;
            end_connection(&app, client, reason).await
        };
        if reason != CloseReason::ServerShutdown {
            let stats = app
                .wait_for_stats(reason.as_str(), |s| {
                    s["global_stats"]["disconnects"][reason.as_str()] == 1
                })
                .await;
            assert_eq!(stats["global_stats"]["active_connections"], 0);
        }
        let record = wait_for_client_span(&client_id, "websocket.connection").await;
        assert_eq!(attr_str(&record, "close.reason"), reason.as_str());
        assert_eq!(
            attr_str(&record, "close.initiator"),
            reason.initiator().as_str()
        );
        match reason.server_code() {
            Some(code) => {
                assert_eq!(
                    code_seen,
                    Some(code),
                    "{}: code on the wire",
                    reason.as_str()
                );
                assert_eq!(attr_i64(&record, "close.code_sent"), Some(i64::from(code)));
            }
            None if reason == CloseReason::ClientClosed => {
                assert_eq!(attr_i64(&record, "close.code_received"), Some(1000));
            }
            None => assert_eq!(attr_i64(&record, "close.code_sent"), None),
        }
        let is_error = matches!(record.status, Status::Error { .. });
        assert_eq!(is_error, !reason.is_normal(), "{}: status", reason.as_str());
    }
}

/// The client ids starting with `prefix` that have a disconnect record.
fn records_of(prefix: &str) -> Vec<String> {
    let mut found: Vec<String> = captured()
        .spans
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.name == "websocket.connection")
        .map(|s| attr_str(&s, "client.id"))
        .filter(|c| c.starts_with(prefix))
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn brief_normal_disconnects_are_exported_at_their_share_and_the_others_always() {
    captured();
    let app = spawn_app_with(|s| {
        s.telemetry.open_span_after_ms = 300;
        s.telemetry.brief_disconnect_share = 0.25;
    })
    .await;
    // Eight brief connections closing normally: every fourth record is exported.
    for i in 0..8 {
        let mut c = app.connect(&format!("share-brief-{i}")).await;
        c.ws.close(Some(normal_close())).await.unwrap();
        app.wait_for_active(0).await;
    }
    // Brief and abnormal (the peer vanishes): always.
    for i in 0..3 {
        drop(app.connect(&format!("share-gone-{i}")).await);
        app.wait_for_active(0).await;
    }
    // Normal but lasting (its open span was recorded): always, and outside the share's count.
    let mut lasting = app.connect("share-lasting").await;
    let id = connection_id_of(&app, "share-lasting").await;
    wait_for_span(&id, "websocket.open").await;
    lasting.ws.close(Some(normal_close())).await.unwrap();
    // Brief and normal in a sampled caller's trace: always.
    let parent = "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut called = app
        .connect_with("share-called", &[("traceparent", parent)])
        .await;
    called.ws.close(Some(normal_close())).await.unwrap();
    app.wait_for_active(0).await;

    // The in-memory exporter is synchronous: every record kept is there once its connection
    // is released.
    assert_eq!(
        records_of("share-brief-"),
        ["share-brief-3", "share-brief-7"]
    );
    assert_eq!(records_of("share-gone-").len(), 3);
    assert_eq!(records_of("share-lasting"), ["share-lasting"]);
    let called = wait_for_client_span("share-called", "websocket.connection").await;
    assert_eq!(
        called.span_context.trace_id().to_string(),
        "5bf92f3577b34da6a3ce929d0e0e4736"
    );
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "websocket_server_telemetry_spans_total{outcome=\"sampled_out\"} 6"),
        "six brief records left out, and counted"
    );
}

#[tokio::test]
async fn an_inbound_traceparent_makes_the_connection_join_the_callers_trace() {
    captured();
    let app = spawn_app().await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let _c = app.connect_with("traced", &[("traceparent", parent)]).await;
    let id = connection_id_of(&app, "traced").await;
    let open = wait_for_span(&id, "websocket.open").await;
    assert_eq!(
        open.span_context.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(
        app.stats().await["connections"][0]["trace_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
}

#[tokio::test]
async fn message_spans_are_sampled_into_their_own_traces_linked_to_the_connection() {
    captured();
    let app = spawn_app_with(|s| {
        s.telemetry.message_spans = MessageSpans::Ratio;
        s.telemetry.message_span_ratio = 0.5;
    })
    .await;
    let mut c = app.connect("sampled").await;
    let id = connection_id_of(&app, "sampled").await;
    for i in 0..4 {
        c.send(&i.to_string()).await;
        c.recv_text().await;
        c.recv_text().await;
    }
    c.ws.close(None).await.unwrap();
    let connection = wait_for_span(&id, "websocket.connection").await;
    let messages: Vec<_> = spans_of(&id)
        .into_iter()
        .filter(|s| s.name == "websocket.message")
        .collect();
    assert_eq!(messages.len(), 2, "every second message");
    for m in &messages {
        assert_ne!(
            m.span_context.trace_id(),
            connection.span_context.trace_id()
        );
        assert_eq!(m.parent_span_id, SpanId::INVALID);
        let link = &m.links.links[0];
        assert_eq!(
            link.span_context.span_id(),
            connection.span_context.span_id()
        );
    }
    let sequences: Vec<_> = messages
        .iter()
        .map(|m| attr_i64(m, "message.sequence"))
        .collect();
    assert_eq!(sequences, [Some(2), Some(4)]);
}

#[tokio::test]
async fn a_long_connection_keeps_a_small_bounded_trace() {
    captured();
    let app = spawn_app_with(|s| s.telemetry.message_spans = MessageSpans::All).await;
    let mut c = app.connect("chatty").await;
    let id = connection_id_of(&app, "chatty").await;
    const N: usize = 2_000;
    for i in 0..N {
        c.send(&i.to_string()).await;
        c.recv_text().await;
        c.recv_text().await;
    }
    c.ws.close(None).await.unwrap();
    let connection = wait_for_span(&id, "websocket.connection").await;
    let trace = trace_spans(connection.span_context.trace_id());
    let mut names: Vec<_> = trace.iter().map(|s| s.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        ["websocket.connection", "websocket.open"],
        "messages live in their own traces"
    );
    assert!(
        connection.events.len() <= 128,
        "{}",
        connection.events.len()
    );
    let messages = spans_of(&id)
        .iter()
        .filter(|s| s.name == "websocket.message")
        .count();
    assert_eq!(messages, N);
}

#[tokio::test]
async fn log_lines_inside_a_connection_carry_its_ids_and_trace_id() {
    let captured = captured();
    let app = spawn_app_with(|s| {
        s.limits.messages_per_second = 1.0;
        s.limits.message_burst = 1;
        s.monitor.idle_after_secs = 1;
    })
    .await;
    let mut c = app.connect("logged").await;
    let id = connection_id_of(&app, "logged").await;
    // Over the rate limit, then idle: both are logged by the session, in the connection's span.
    for text in ["a", "b", "c"] {
        c.send(text).await;
    }
    loop {
        if c.recv_text().await.contains("you have been idle") {
            break;
        }
    }
    drop(c);
    app.wait_for_active(0).await;

    let logs = String::from_utf8(captured.logs.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| {
            l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["connection.id"] == id))
        })
        .collect();
    let messages: Vec<_> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    for expected in [
        "connection accepted",
        "rate limit exceeded: dropping messages",
        "connection idle: warned",
        "connection closed",
    ] {
        assert!(messages.contains(&expected), "{expected}: {messages:?}");
    }
    for line in &lines {
        let conn = line["spans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "websocket.connection")
            .unwrap();
        assert_eq!(conn["client.id"], "logged");
        assert_eq!(conn["trace_id"].as_str().unwrap().len(), 32, "{line}");
        assert_eq!(conn["span_id"].as_str().unwrap().len(), 16, "{line}");
    }
    assert!(
        !logs.contains("You sent"),
        "message bodies are never logged"
    );
    // In the trace, the connection span holds the marked events only: the routine lines would
    // repeat its own start and end.
    let connection = wait_for_span(&id, "websocket.connection").await;
    let events: Vec<_> = connection
        .events
        .iter()
        .map(|e| e.name.to_string())
        .collect();
    assert_eq!(
        events,
        [
            "rate limit exceeded: dropping messages",
            "connection idle: warned"
        ],
        "span events"
    );
}
