//! End-to-end tests against the real operator stack, run natively by `stack/run test`: Jaeger v2
//! and Prometheus started by the script, and in each test the real OpenTelemetry Collector built
//! with `otel/collector.yaml`'s components plus the real wsmon binary.

#[path = "support/process.rs"]
mod process;
#[path = "support/redis.rs"]
#[allow(dead_code)]
mod redis_server;

use redis_server::free_port;

#[path = "stack/alerts.rs"]
mod alerts;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use wsmon::telemetry::names::{Kind, METRICS};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const PATIENCE: Duration = Duration::from_secs(90);

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run these tests with stack/run test"))
}

/// One collector, configured by `otel/collector.yaml` with loopback addresses.
struct Collector {
    child: Child,
    grpc: u16,
    http: u16,
    health: u16,
}

impl Collector {
    fn start_on(grpc: u16, http: u16, health: u16) -> Self {
        Self::start_writing_to(grpc, http, health, &env("STACK_PROMETHEUS"))
    }

    /// A collector whose metrics go by remote write to the Prometheus at `prometheus`.
    fn start_writing_to(grpc: u16, http: u16, health: u16, prometheus: &str) -> Self {
        let child = Command::new(env("COLLECTOR_BIN"))
            .args(["--config", &format!("{ROOT}/otel/collector.yaml")])
            .env("COLLECTOR_OTLP_GRPC_ENDPOINT", format!("127.0.0.1:{grpc}"))
            .env("COLLECTOR_OTLP_HTTP_ENDPOINT", format!("127.0.0.1:{http}"))
            .env("COLLECTOR_HEALTH_ENDPOINT", format!("127.0.0.1:{health}"))
            .env("JAEGER_OTLP_ENDPOINT", env("STACK_JAEGER_OTLP"))
            .env(
                "PROMETHEUS_REMOTE_WRITE_URL",
                format!("http://{prometheus}/api/v1/write"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let c = Self {
            child,
            grpc,
            http,
            health,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", c.health)).is_err() {
            assert!(Instant::now() < deadline, "collector did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn start() -> Self {
        Self::start_on(free_port(), free_port(), free_port())
    }

    fn stop(mut self) -> (u16, u16, u16) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.grpc, self.http, self.health)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// wsmon exporting to `collector` quickly, with a known instance id.
fn wsmon(collector: &Collector, instance: &str, extra: &[(&str, String)]) -> process::Server {
    let mut env: Vec<(&str, String)> = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", collector.grpc),
        ),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("service.instance.id={instance}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        // Short test connections still get their open span.
        ("WSMON_TELEMETRY__OPEN_SPAN_AFTER_MS", "0".into()),
        // And every disconnect record (the share of brief ones has its own test).
        ("WSMON_TELEMETRY__BRIEF_DISCONNECT_SHARE", "1".into()),
        ("WSMON_TELEMETRY__METRICS_INTERVAL_MS", "1000".into()),
        ("WSMON_MONITOR__SAMPLE_INTERVAL_MS", "1000".into()),
    ];
    env.extend(extra.iter().cloned());
    process::start(&env)
}

fn instance_id(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

async fn connect(
    server: &process::Server,
    client: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    tokio_tungstenite::connect_async(format!("ws://{}/ws/{client}", server.addr))
        .await
        .unwrap()
        .0
}

async fn chat(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    text: &str,
) {
    ws.send(Message::text(text)).await.unwrap();
    let want = format!("You sent: {text}");
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if msg.to_text().unwrap() == want {
            return;
        }
    }
}

/// A JSON answer to `GET url?query`; `None` when the request or the body fails.
async fn get_json(url: &str, query: &[(&str, &str)]) -> Option<Value> {
    reqwest::Client::new()
        .get(url)
        .query(query)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

async fn prometheus(expr: &str) -> Result<Vec<Value>, String> {
    let url = format!("http://{}/api/v1/query", env("STACK_PROMETHEUS"));
    let body = get_json(&url, &[("query", expr)]).await.unwrap();
    if body["status"] != "success" {
        return Err(format!("{expr}: {body}"));
    }
    Ok(body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The newest trace holding an `operation` span with `tags`, from Jaeger's HTTP API.
async fn jaeger_trace(operation: &str, tags: Value) -> Option<Value> {
    let url = format!("http://{}/api/traces", env("STACK_JAEGER_QUERY"));
    let tags = tags.to_string();
    let body = get_json(
        &url,
        &[
            ("service", "wsmon"),
            ("operation", operation),
            ("tags", &tags),
            ("lookback", "1h"),
            ("limit", "5"),
        ],
    )
    .await?;
    body["data"].as_array()?.first().cloned()
}

/// The disconnect record of `client` (its ended `websocket.connection` span), and its trace.
async fn close_span(client: &str) -> Option<(Value, Value)> {
    let trace = jaeger_trace(
        "websocket.connection",
        serde_json::json!({ "client.id": client }),
    )
    .await?;
    let span = trace["spans"]
        .as_array()?
        .iter()
        .find(|s| s["operationName"] == "websocket.connection")?
        .clone();
    Some((trace, span))
}

fn tag(span: &Value, key: &str) -> Value {
    span["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| t["value"].clone())
        .unwrap_or(Value::Null)
}

/// The operation names of a Jaeger trace's spans.
fn operations(trace: &Value) -> BTreeSet<String> {
    trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["operationName"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_individual_disconnect_is_found_in_jaeger_by_client_id() {
    let collector = Collector::start();
    let run = instance_id("disconnects");
    let server = wsmon(&collector, &run, &[]);
    let (alice_id, bob_id, carol_id) = (
        format!("alice-{run}"),
        format!("bob-{run}"),
        format!("carol-{run}"),
    );
    let mut alice = connect(&server, &alice_id).await;
    let mut bob = connect(&server, &bob_id).await;
    let mut carol = connect(&server, &carol_id).await;
    chat(&mut alice, "one").await;
    chat(&mut alice, "two").await;
    chat(&mut bob, "three").await;

    // alice's TCP connection dies (reset), bob closes cleanly, carol is kicked.
    if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = alice.get_ref() {
        tcp.set_zero_linger().unwrap();
    }
    drop(alice);
    bob.close(None).await.unwrap();
    let stats: Value = reqwest::get(format!("http://{}/ws-stats", server.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let carol_conn = stats["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == carol_id.as_str())
        .unwrap()
        .clone();
    let kicked = reqwest::Client::new()
        .delete(format!(
            "http://{}/api/v1/connections/{}",
            server.addr,
            carol_conn["connection_id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(kicked.status(), 202);
    // The kick is asynchronous: read until the close frame arrives, so carol's side does not
    // hang up before the server has sent 4003 (that would leave no code to record).
    let code = loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), carol.next())
            .await
            .expect("carol's close frame")
            .expect("carol's stream open")
            .expect("carol's frame");
        if let Message::Close(frame) = msg {
            break frame.map(|f| u16::from(f.code));
        }
    };
    assert_eq!(code, Some(4003));
    drop(carol);

    let expectations = [
        (&alice_id, "client_gone", "network", 2),
        (&bob_id, "client_closed", "client", 1),
        (&carol_id, "admin_kick", "server", 0),
    ];
    for (client, reason, initiator, received) in expectations {
        let (trace, close) = eventually(client, || close_span(client)).await;
        assert_eq!(tag(&close, "close.reason"), reason, "{client}");
        assert_eq!(tag(&close, "close.initiator"), initiator, "{client}");
        assert_eq!(tag(&close, "messages.received"), received, "{client}");
        assert!(
            tag(&close, "connection.duration_s").as_f64().is_some(),
            "{client}"
        );
        let operations = operations(&trace);
        for op in ["websocket.connection", "websocket.open"] {
            assert!(operations.contains(op), "{client}: {op} in {operations:?}");
        }
        let error = tag(&close, "error");
        assert_eq!(
            error == Value::Bool(true),
            reason == "client_gone",
            "{client}: error status"
        );
    }
    let (_, carol_close) = close_span(&carol_id).await.unwrap();
    assert_eq!(tag(&carol_close, "close.code_sent"), 4003);
    assert_eq!(
        tag(&carol_close, "connection.id"),
        carol_conn["connection_id"]
    );
    process::sigterm_and_wait(server);
}

/// Series names a /metrics scrape exposes (histograms as _bucket/_sum/_count).
fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// Two nodes on `redis`: `run` (the one measured) and a peer, so the backplane series have
/// values too (a histogram without any measurement is not exported over OTLP).
async fn node_and_peer(
    collector: &Collector,
    redis: &redis_server::Redis,
    run: &str,
) -> (process::Server, process::Server) {
    let cluster = |node: &str| {
        [
            ("WSMON_CLUSTER__REDIS_URL", redis.url()),
            ("WSMON_CLUSTER__NODE_ID", node.to_owned()),
            ("WSMON_CLUSTER__HEARTBEAT_MS", "200".into()),
        ]
    };
    let server = wsmon(collector, run, &cluster(run));
    let peer_id = format!("{run}-peer");
    let peer = wsmon(collector, &peer_id, &cluster(&peer_id));
    wait_cluster(&[&server, &peer]).await;
    (server, peer)
}

/// A chat message from a client of `peer`, which crosses to the other node.
async fn message_from(peer: &process::Server, run: &str) {
    let mut client = connect(peer, &format!("p-{run}")).await;
    chat(&mut client, "from the other node").await;
}

async fn scripted_load(server: &process::Server, tag: &str) {
    let mut a = connect(server, &format!("a-{tag}")).await;
    let mut b = connect(server, &format!("b-{tag}")).await;
    for i in 0..5 {
        chat(&mut a, &format!("m{i}")).await;
    }
    chat(&mut b, "hello").await;
    b.send(Message::binary(vec![1u8])).await.unwrap(); // an error, closed 1003
    let _ = reqwest::get(format!("http://{}/ws/%0A", server.addr)).await; // a rejection
    a.close(None).await.unwrap();
}

#[tokio::test]
async fn every_documented_series_reaches_prometheus_under_the_names_metrics_serves() {
    let collector = Collector::start();
    let redis = redis_server::Redis::start();
    let run = instance_id("series");
    let (server, peer) = node_and_peer(&collector, &redis, &run).await;
    scripted_load(&server, &run).await;
    message_from(&peer, &run).await;
    // Without message spans, a message crossing nodes adds no span to its connection's trace.
    let peer_client = format!("p-{run}");
    let (trace, _) = eventually("the peer client's close", || close_span(&peer_client)).await;
    let operations = operations(&trace);
    assert_eq!(
        operations,
        BTreeSet::from(["websocket.connection", "websocket.open"].map(String::from))
    );
    assert_eq!(trace["spans"].as_array().unwrap().len(), 2);
    let scraped = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let names = scraped_names(&scraped);
    for def in METRICS {
        let expected = if def.kind == Kind::Histogram {
            format!("{}_bucket", def.prometheus)
        } else {
            def.prometheus.to_owned()
        };
        assert!(names.contains(&expected), "/metrics serves {expected}");
    }
    for name in &names {
        let expr = format!("count({{__name__=\"{name}\", instance=\"{run}\"}})");
        eventually(&expr, || async {
            prometheus(&expr).await.unwrap().first().cloned()
        })
        .await;
    }
    process::sigterm_and_wait(server);
    process::sigterm_and_wait(peer);
}

fn dashboard_exprs() -> Vec<String> {
    let dir = Path::new(ROOT).join("grafana/dashboards");
    let mut exprs = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let d: Value =
            serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                exprs.push(t["expr"].as_str().unwrap().to_owned());
            }
        }
    }
    exprs
}

/// An alert of `otel/alert-rules.yml`: its name and expression (the threshold included).
struct Rule {
    alert: String,
    expr: String,
}

fn alert_rules() -> Vec<Rule> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("otel/alert-rules.yml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let rules: Vec<Rule> = doc["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .map(|r| Rule {
            alert: r["alert"].as_str().unwrap().to_owned(),
            expr: r["expr"].as_str().unwrap().to_owned(),
        })
        .collect();
    assert!(!rules.is_empty());
    rules
}

/// Scopes every wsmon selector in `expr` to one instance and fills Grafana's macros.
fn scoped(expr: &str, instance: &str) -> String {
    let expr = expr
        .replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("=~\"$instance\"", &format!("=\"{instance}\""));
    let mut out = String::new();
    let mut rest = expr.as_str();
    while let Some(i) = rest.find("websocket_server_") {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push_str(&tail[..end]);
        let after = &tail[end..];
        if let Some(inner) = after.strip_prefix('{') {
            if inner.starts_with("instance=") {
                out.push('{');
            } else {
                out.push_str(&format!("{{instance=\"{instance}\","));
            }
            rest = inner;
        } else {
            out.push_str(&format!("{{instance=\"{instance}\"}}"));
            rest = after;
        }
    }
    out.push_str(rest);
    out.replace(",}", "}")
}

/// Whether `rule`'s condition holds now for one instance (a non-empty result), and the result.
async fn condition(rule: &Rule, instance: &str) -> (bool, Vec<Value>) {
    let result = prometheus(&scoped(&rule.expr, instance)).await.unwrap();
    (!result.is_empty(), result)
}

#[tokio::test]
async fn every_dashboard_and_alert_query_runs_against_prometheus_and_dashboards_return_data() {
    let collector = Collector::start();
    let redis = redis_server::Redis::start();
    let run = instance_id("queries");
    let (server, peer) = node_and_peer(&collector, &redis, &run).await;
    scripted_load(&server, &run).await;
    message_from(&peer, &run).await;
    eventually("metrics in Prometheus", || async {
        prometheus(&format!(
            "websocket_server_active_connections{{instance=\"{run}\"}}"
        ))
        .await
        .unwrap()
        .first()
        .cloned()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // two samples for rate()
    for expr in dashboard_exprs() {
        let q = scoped(&expr, &run);
        let result = eventually(&q, || async {
            prometheus(&q).await.ok().filter(|r| !r.is_empty())
        })
        .await;
        assert!(!result.is_empty(), "{q}");
    }
    for rule in alert_rules() {
        prometheus(&scoped(&rule.expr, &run))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", rule.alert));
    }
    process::sigterm_and_wait(server);
    process::sigterm_and_wait(peer);
}

#[tokio::test]
async fn traces_arrive_again_after_a_collector_outage() {
    let collector = Collector::start();
    let run = instance_id("outage");
    let server = wsmon(
        &collector,
        &run,
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "1000".into())],
    );
    let before = format!("before-{run}");
    let mut c = connect(&server, &before).await;
    chat(&mut c, "hi").await;
    c.close(None).await.unwrap();
    eventually("trace before the outage", || close_span(&before)).await;

    let (grpc, http, health) = collector.stop();
    // Chat continues while the collector is gone.
    let mut during = connect(&server, &format!("during-{run}")).await;
    for i in 0..20 {
        chat(&mut during, &format!("d{i}")).await;
    }
    during.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let _collector = Collector::start_on(grpc, http, health);
    let after = format!("after-{run}");
    let mut c = connect(&server, &after).await;
    chat(&mut c, "back").await;
    c.close(None).await.unwrap();
    eventually("trace after the collector returned", || close_span(&after)).await;
    process::sigterm_and_wait(server);
}

/// Waits until every server's backplane is up and sees all of them alive.
async fn wait_cluster(servers: &[&process::Server]) {
    for server in servers {
        eventually("every node in the cluster view", || async {
            let view: Value = reqwest::get(format!("http://{}/api/v1/cluster", server.addr))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let alive = view["totals"]["alive_nodes"].as_u64()? as usize;
            (view["backplane"]["up"] == true && alive == servers.len()).then_some(())
        })
        .await;
    }
}

/// The trace holding a `backplane.deliver` span from node `origin`, from Jaeger's HTTP API.
async fn delivered_trace(origin: &str) -> Option<Value> {
    let tags = serde_json::json!({ "wsmon.node.origin": origin });
    let trace = jaeger_trace("backplane.deliver", tags).await?;
    // Both nodes' batches must have arrived.
    let spans = trace["spans"].as_array()?;
    let has = |op: &str| spans.iter().any(|s| s["operationName"] == op);
    (has("websocket.message") && has("backplane.publish") && has("backplane.deliver"))
        .then_some(trace)
}

/// The `service.instance.id` of the process that emitted `span` in `trace`.
fn instance_of(trace: &Value, span: &Value) -> Value {
    let process = &trace["processes"][span["processID"].as_str().unwrap()];
    process["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == "service.instance.id")
        .map(|t| t["value"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_message_crossing_nodes_is_one_trace_in_jaeger_spanning_both_nodes() {
    let redis = redis_server::Redis::start();
    let collector = Collector::start();
    let run = instance_id("cluster");
    let (node_a, node_b) = (format!("xa-{run}"), format!("xb-{run}"));
    let node = |id: &str| {
        wsmon(
            &collector,
            id,
            &[
                ("WSMON_CLUSTER__REDIS_URL", redis.url()),
                ("WSMON_CLUSTER__NODE_ID", id.to_owned()),
                ("WSMON_CLUSTER__HEARTBEAT_MS", "200".into()),
                ("WSMON_TELEMETRY__MESSAGE_SPANS", "all".into()),
                // The node id is the instance id.
                ("OTEL_RESOURCE_ATTRIBUTES", String::new()),
            ],
        )
    };
    let (a, b) = (node(&node_a), node(&node_b));
    wait_cluster(&[&a, &b]).await;
    let mut alice = connect(&a, &format!("alice-{run}")).await;
    let mut bob = connect(&b, &format!("bob-{run}")).await;
    chat(&mut alice, "across").await;
    let seen = loop {
        match bob.next().await.unwrap().unwrap() {
            Message::Text(t) => break t.to_string(),
            _ => continue,
        }
    };
    assert_eq!(seen, format!("Client #alice-{run} says: across"));

    let trace = eventually("the cross-node trace", || delivered_trace(&node_a)).await;
    let spans = trace["spans"].as_array().unwrap();
    let find = |op: &str| spans.iter().find(|s| s["operationName"] == op).unwrap();
    let (message, publish, deliver) = (
        find("websocket.message"),
        find("backplane.publish"),
        find("backplane.deliver"),
    );
    assert_eq!(instance_of(&trace, message), node_a.as_str());
    assert_eq!(instance_of(&trace, publish), node_a.as_str());
    assert_eq!(instance_of(&trace, deliver), node_b.as_str());
    let parent = |span: &Value| {
        span["references"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["refType"] == "CHILD_OF")
            .map(|r| r["spanID"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(parent(publish), message["spanID"]);
    assert_eq!(parent(deliver), publish["spanID"]);
    assert_eq!(tag(deliver, "wsmon.node.id"), node_b.as_str());
    assert_eq!(tag(deliver, "delivered"), 1);

    // The backplane alert: quiet while Redis serves, firing for the node once Redis is gone.
    let rules = alert_rules();
    let rule = rules
        .iter()
        .find(|r| r.alert == "WsmonBackplaneDown")
        .unwrap();
    eventually("node metrics in Prometheus", || async {
        let expr = format!("websocket_server_backplane_up{{instance=\"{node_a}\"}} == 1");
        prometheus(&expr).await.unwrap().first().cloned()
    })
    .await;
    let (fires, result) = condition(rule, &node_a).await;
    assert!(!fires, "fired with Redis up: {result:?}");
    drop(redis);
    eventually("the backplane alert", || async {
        condition(rule, &node_a).await.0.then_some(())
    })
    .await;
    process::sigterm_and_wait(a);
    process::sigterm_and_wait(b);
}

/// A sample from `server`'s `/metrics`.
async fn scraped(server: &process::Server, series: &str) -> f64 {
    process::metric(server.addr, series).await
}

/// The client ids with an ended connection span of `reason` in Jaeger, among those starting
/// with `prefix`.
async fn disconnects_in_jaeger(reason: &str, prefix: &str) -> BTreeSet<String> {
    let url = format!("http://{}/api/traces", env("STACK_JAEGER_QUERY"));
    let tags = serde_json::json!({ "close.reason": reason }).to_string();
    let body = get_json(
        &url,
        &[
            ("service", "wsmon"),
            ("operation", "websocket.connection"),
            ("tags", &tags),
            ("lookback", "1h"),
            ("limit", "50000"),
        ],
    )
    .await
    .unwrap();
    let mut found = BTreeSet::new();
    for trace in body["data"].as_array().into_iter().flatten() {
        for span in trace["spans"].as_array().into_iter().flatten() {
            if span["operationName"] != "websocket.connection"
                || tag(span, "close.reason") != reason
            {
                continue;
            }
            if let Some(client) = tag(span, "client.id").as_str() {
                if client.starts_with(prefix) {
                    found.insert(client.to_owned());
                }
            }
        }
    }
    found
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `n` clients named `prefix0`.. connect to `server`; returns once `/ws-stats` counts them.
async fn connect_all(server: &process::Server, prefix: &str, n: usize) -> Vec<Ws> {
    let mut clients = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let batch = chunk.iter().map(|i| {
            let client = format!("{prefix}{i}");
            async move { connect(server, &client).await }
        });
        clients.extend(futures_util::future::join_all(batch).await);
    }
    let stats_url = format!("http://{}/ws-stats", server.addr);
    eventually("every storm client connected", || async {
        let stats = get_json(&stats_url, &[]).await?;
        (stats["global_stats"]["active_connections"] == n).then_some(())
    })
    .await;
    clients
}

/// Every client vanishes at once (half reset, half FIN); returns once `/ws-stats` shows none.
async fn vanish_all(server: &process::Server, clients: Vec<Ws>) {
    for (i, ws) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
                tcp.set_zero_linger().unwrap();
            }
        }
        drop(ws);
    }
    // Polled through /metrics, which is not traced: the storm's spans are its disconnects alone.
    eventually("every storm client released", || async {
        (scraped(server, "websocket_server_active_connections").await == 0.0).then_some(())
    })
    .await;
}

const GONE: &str = "websocket_server_connections_closed_total{close_reason=\"client_gone\",close_initiator=\"network\"}";
const SLOW: &str = "websocket_server_connections_closed_total{close_reason=\"slow_consumer\",close_initiator=\"server\"}";
const DROPPED: &str = "websocket_server_telemetry_spans_total{outcome=\"dropped\"}";

/// A collector and a node for a storm of `n` clients (all from one address), and the prefix of
/// this run's client ids.
fn storm_node(
    name: &str,
    n: usize,
    extra: &[(&str, String)],
) -> (Collector, process::Server, String) {
    let collector = Collector::start();
    let run = instance_id(name);
    let mut env = vec![("WSMON_LIMITS__MAX_CONNECTIONS_PER_IP", n.to_string())];
    env.extend(extra.iter().cloned());
    let server = wsmon(&collector, &run, &env);
    (collector, server, format!("{name}-{run}-"))
}

#[tokio::test]
async fn every_disconnect_of_a_5000_client_storm_reaches_jaeger_with_its_reason() {
    const N: usize = 5_000;
    let (_collector, server, prefix) = storm_node("storm", N, &[]);
    let clients = connect_all(&server, &prefix, N).await;
    vanish_all(&server, clients).await;
    assert_eq!(scraped(&server, GONE).await, N as f64);
    assert_eq!(scraped(&server, SLOW).await, 0.0);
    assert_eq!(scraped(&server, DROPPED).await, 0.0);
    let found = eventually("every storm disconnect in Jaeger", || async {
        let found = disconnects_in_jaeger("client_gone", &prefix).await;
        (found.len() == N).then_some(found)
    })
    .await;
    assert_eq!(found.len(), N);
    process::sigterm_and_wait(server);
}

#[tokio::test]
async fn brief_normal_disconnects_reach_jaeger_at_their_share_and_abnormal_ones_all() {
    const N: usize = 200;
    let env = [
        ("WSMON_TELEMETRY__BRIEF_DISCONNECT_SHARE", "0.25".to_owned()),
        // Every connection here is brief: none lasts until its open span.
        ("WSMON_TELEMETRY__OPEN_SPAN_AFTER_MS", "600000".to_owned()),
    ];
    let (_collector, server, prefix) = storm_node("share", N, &env);
    let normal = format!("{prefix}n");
    let clients = connect_all(&server, &normal, N).await;
    futures_util::future::join_all(clients.into_iter().map(|mut ws| async move {
        ws.close(None).await.unwrap();
        // Until the server's answer: the close is the client's, and normal.
        while let Some(Ok(_)) = ws.next().await {}
    }))
    .await;
    let gone = format!("{prefix}g");
    vanish_all(&server, connect_all(&server, &gone, N).await).await;

    let sampled_out = "websocket_server_telemetry_spans_total{outcome=\"sampled_out\"}";
    assert_eq!(scraped(&server, sampled_out).await, (N - N / 4) as f64);
    let closed = "websocket_server_connections_closed_total{close_reason=\"client_closed\",close_initiator=\"client\"}";
    assert_eq!(scraped(&server, closed).await, N as f64);
    let found = eventually("every abnormal disconnect in Jaeger", || async {
        let found = disconnects_in_jaeger("client_gone", &gone).await;
        (found.len() == N).then_some(found)
    })
    .await;
    assert_eq!(found.len(), N);
    // Exported before the abnormal ones: in Jaeger by now, and exactly the share.
    let kept = eventually("the kept share in Jaeger", || async {
        let kept = disconnects_in_jaeger("client_closed", &normal).await;
        (kept.len() >= N / 4).then_some(kept)
    })
    .await;
    assert_eq!(kept.len(), N / 4, "{kept:?}");
    assert_eq!(scraped(&server, DROPPED).await, 0.0);
    process::sigterm_and_wait(server);
}

#[tokio::test]
async fn with_a_small_export_queue_every_storm_disconnect_is_in_jaeger_or_counted_dropped() {
    const N: usize = 1_000;
    // Far smaller than the storm: the queue must shed, and say so.
    let queue = [("WSMON_TELEMETRY__SPAN_QUEUE_SIZE", "64".to_owned())];
    let (_collector, server, prefix) = storm_node("squeeze", N, &queue);
    let clients = connect_all(&server, &prefix, N).await;
    // Open spans end at connect (and some were shed then); what the storm ends are the
    // disconnect records alone.
    let dropped_before = scraped(&server, DROPPED).await;
    vanish_all(&server, clients).await;
    let dropped = scraped(&server, DROPPED).await - dropped_before;
    assert!(
        dropped > 0.0,
        "a 64-span queue cannot hold a 1,000-client storm"
    );
    let exported = "websocket_server_telemetry_spans_total{outcome=\"exported\"}";
    let ended = "websocket_server_telemetry_spans_total{outcome=\"ended\"}";
    eventually("everything ended is exported or dropped", || async {
        let (e, x, d) = (
            scraped(&server, ended).await,
            scraped(&server, exported).await,
            scraped(&server, DROPPED).await,
        );
        (e == x + d).then_some(())
    })
    .await;
    let in_jaeger = eventually("the exported storm disconnects in Jaeger", || async {
        let found = disconnects_in_jaeger("client_gone", &prefix).await.len();
        (found as f64 + dropped >= N as f64).then_some(found)
    })
    .await;
    assert_eq!(
        in_jaeger as f64 + dropped,
        N as f64,
        "each disconnect is in Jaeger or counted as dropped, never both, never neither"
    );
    process::sigterm_and_wait(server);
}
