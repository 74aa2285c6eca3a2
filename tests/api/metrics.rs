//! `/metrics`: every documented series, with its type and labels, and exact counts after a
//! scripted session (parsed with a Prometheus text-format parser).

use std::collections::BTreeSet;

use futures_util::SinkExt;
use prometheus_parse::{Scrape, Value};
use tokio_tungstenite::tungstenite::Message;
use wsmon::telemetry::names::{Kind, METRICS};

use crate::helpers::{spawn_app, TestApp};

pub(crate) async fn scrape(app: &TestApp) -> Scrape {
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
pub(crate) fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        other => panic!("{name}: unexpected {other:?}"),
    }
}

#[tokio::test]
async fn every_documented_series_is_exported_with_its_type_and_labels() {
    let app = spawn_app().await;
    // The request-duration histogram has a series per route, method and status once requested.
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
    let scrape = scrape(&app).await;
    let healthz = scrape.samples.iter().find(|s| {
        s.metric == "http_server_request_duration_seconds"
            && s.labels.get("http_route") == Some("/healthz")
            && s.labels.get("http_request_method") == Some("GET")
            && s.labels.get("http_response_status_code") == Some("200")
    });
    assert!(healthz.is_some(), "the /healthz request is timed");
    for def in METRICS {
        let samples: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == def.prometheus)
            .collect();
        assert!(!samples.is_empty(), "{} missing", def.prometheus);
        let expected: BTreeSet<String> = def.labels.iter().map(|l| l.replace('.', "_")).collect();
        for s in samples {
            let kind_ok = matches!(
                (def.kind, &s.value),
                (Kind::Counter, Value::Counter(_))
                    | (Kind::Gauge, Value::Gauge(_))
                    | (Kind::Histogram, Value::Histogram(_))
            );
            assert!(kind_ok, "{}: {:?}", def.prometheus, s.value);
            let keys: BTreeSet<String> = s.labels.keys().cloned().collect();
            assert_eq!(keys, expected, "{}", def.prometheus);
        }
        assert!(
            scrape.docs.contains_key(def.prometheus),
            "{} has HELP",
            def.prometheus
        );
    }
    // Bounded label sets: exactly one series per reason for the per-reason metrics.
    let closed = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "websocket_server_connections_closed_total")
        .count();
    assert_eq!(closed, wsmon::monitor::CloseReason::ALL.len());
    for s in &scrape.samples {
        for key in s.labels.keys() {
            assert!(
                !key.contains("client") && !key.contains("connection"),
                "{key}"
            );
        }
    }
}

/// (series name, labels), expected value.
type Expectation = ((&'static str, Vec<(&'static str, &'static str)>), f64);

#[tokio::test]
async fn counts_are_exact_after_a_scripted_session() {
    let app = spawn_app().await;
    let mut a = app.connect("a").await;
    let mut b = app.connect("b").await;
    app.wait_for_active(2).await;
    for text in ["1", "22", "333"] {
        a.send(text).await;
        a.recv_text().await;
        a.recv_text().await;
        b.recv_text().await;
    }
    b.send("4444").await;
    for _ in 0..2 {
        b.recv_text().await;
    }
    a.recv_text().await;
    a.ws.close(None).await.unwrap();
    assert_eq!(b.recv_text().await, "Client #a left the chat");
    b.ws.send(Message::binary(vec![0u8])).await.unwrap();
    b.expect_close().await;
    let _ = app.get_json("/ws/%0A").await; // refused: invalid client id
    app.wait_for_active(0).await;

    let s = scrape(&app).await;
    let reason = |r: &'static str, i: &'static str| [("close_reason", r), ("close_initiator", i)];
    let expected: Vec<Expectation> = vec![
        (("websocket_server_connections_opened_total", vec![]), 2.0),
        (("websocket_server_active_connections", vec![]), 0.0),
        (
            (
                "websocket_server_messages_total",
                vec![("direction", "received")],
            ),
            4.0,
        ),
        // a: 3 replies + 3 echoes; b: 3 broadcasts, 1 reply, 1 echo, 1 leave notice; a: b's 1
        (
            (
                "websocket_server_messages_total",
                vec![("direction", "sent")],
            ),
            13.0,
        ),
        (
            (
                "websocket_server_connections_closed_total",
                reason("client_closed", "client").to_vec(),
            ),
            1.0,
        ),
        (
            (
                "websocket_server_connections_closed_total",
                reason("unsupported_data", "server").to_vec(),
            ),
            1.0,
        ),
        (
            (
                "websocket_server_connections_closed_total",
                reason("client_gone", "network").to_vec(),
            ),
            0.0,
        ),
        (
            (
                "websocket_server_connection_duration_seconds",
                reason("client_closed", "client").to_vec(),
            ),
            1.0,
        ),
        (
            (
                "websocket_server_errors_total",
                vec![("error_type", "unsupported_data")],
            ),
            1.0,
        ),
        (
            (
                "websocket_server_rejections_total",
                vec![("rejection_reason", "invalid_client_id")],
            ),
            1.0,
        ),
        (("websocket_server_message_size_bytes", vec![]), 4.0),
        // four chat messages and two leave notices (the last one to an empty room)
        (("websocket_server_fanout_duration_seconds", vec![]), 6.0),
        (("websocket_server_send_queue_drops_total", vec![]), 0.0),
    ];
    for ((name, labels), want) in &expected {
        assert_eq!(value(&s, name, labels), *want, "{name} {labels:?}");
    }
    let size_sum = s
        .samples
        .iter()
        .find(|x| x.metric == "websocket_server_message_size_bytes")
        .and_then(|x| match &x.value {
            Value::Histogram(b) => Some(b.iter().find(|b| b.less_than == 16.0).unwrap().count),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        size_sum, 4.0,
        "all four messages fall in the first bucket (<= 16 bytes)"
    );
}

/// The README's metric table, as it must read.
fn expected_metric_table() -> String {
    let mut out = String::from(
        "| Prometheus series | OpenTelemetry name | type | unit | labels | meaning |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for m in METRICS {
        let labels = if m.labels.is_empty() {
            "-".to_owned()
        } else {
            m.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| `{}` | `{}` | {} | `{}` | {} | {} |\n",
            m.prometheus,
            m.name,
            m.kind.prometheus_type(),
            m.otel_unit,
            labels,
            m.description
        ));
    }
    out
}

#[test]
fn the_readme_metric_table_matches_the_names_module() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("<!-- metrics-table:start -->\n")
        .expect("start marker")
        + 29;
    let end = readme
        .find("<!-- metrics-table:end -->")
        .expect("end marker");
    let expected = expected_metric_table();
    assert_eq!(
        &readme[start..end],
        expected,
        "README table should read:\n{expected}"
    );
}
