//! The `/admin` dashboard in a real headless Chromium, driven over the DevTools protocol:
//! it goes live without reloads, renders hostile client ids as text, loads nothing from
//! outside the server, and logs no console errors; with two nodes on a real Redis it lists the
//! nodes and disconnects another node's client. Needs `chromium` (`CHROMIUM` overrides the path)
//! and `redis-server`; run with `cargo test --features browser-tests`.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "support/redis.rs"]
#[allow(dead_code)]
mod redis_server;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use helpers::{spawn_app_with, Ws, RECV_TIMEOUT};

struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    http_base: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn launch() -> Browser {
    let exe = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(&exe)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {exe} (install Debian's chromium): {e}"));
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut ws_url = None;
    for line in stderr.lines() {
        let line = line.unwrap();
        if let Some(url) = line.strip_prefix("DevTools listening on ") {
            ws_url = Some(url.trim().to_owned());
            break;
        }
    }
    let ws_url = ws_url.expect("chromium printed its DevTools address");
    let host = ws_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    Browser {
        child,
        _profile: profile,
        http_base: format!("http://{host}"),
    }
}

/// One page's DevTools session; events are collected while waiting for replies.
struct Page {
    ws: Ws,
    next_id: u64,
    events: Vec<Value>,
}

impl Page {
    async fn open(browser: &Browser) -> Page {
        let target: Value = reqwest::Client::new()
            .put(format!("{}/json/new?about:blank", browser.http_base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let url = target["webSocketDebuggerUrl"].as_str().unwrap();
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Page {
            ws,
            next_id: 0,
            events: Vec::new(),
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::text(request.to_string()))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(RECV_TIMEOUT, self.ws.next())
                .await
                .expect("DevTools reply")
                .unwrap()
                .unwrap();
            let Message::Text(text) = msg else { continue };
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["id"] == id {
                assert!(value.get("error").is_none(), "{method}: {value}");
                return value["result"].clone();
            }
            self.events.push(value);
        }
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it evaluates to `expected`.
    async fn wait_for(&mut self, expression: &str, expected: Value) {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        // The page may still be loading: a throwing expression counts as "not yet".
        let guarded =
            format!("(() => {{ try {{ return {expression}; }} catch (e) {{ return null; }} }})()");
        loop {
            let value = self.eval(&guarded).await;
            if value == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{expression}: still {value}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const ROWS: &str = "document.querySelectorAll('#connections tr').length";
const ACTIVE: &str = "document.getElementById('active_connections').textContent";

/// Traces on (into memory), so connections have trace ids and the table trace links. Installed
/// once for this test binary.
fn install_tracing() {
    static PROVIDER: std::sync::OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> =
        std::sync::OnceLock::new();
    PROVIDER.get_or_init(|| {
        let (provider, traces) = wsmon::telemetry::traces::pipeline(
            opentelemetry_sdk::trace::SimpleSpanProcessor::new(
                opentelemetry_sdk::trace::InMemorySpanExporter::default(),
            ),
            opentelemetry_sdk::Resource::builder().build(),
        );
        let subscriber =
            wsmon::telemetry::get_subscriber(&Default::default(), Some(traces), std::io::sink);
        wsmon::telemetry::install(subscriber);
        provider
    });
}

async fn open_dashboard(page: &mut Page, url: String) {
    for domain in [
        "Runtime.enable",
        "Log.enable",
        "Network.enable",
        "Page.enable",
    ] {
        page.call(domain, json!({})).await;
    }
    page.call("Page.navigate", json!({ "url": url })).await;
    page.wait_for(
        "document.getElementById('status').dataset.state",
        json!("live"),
    )
    .await;
}

/// Every request stayed on the server; no exception, console error or logged error.
fn assert_clean(page: &Page, origin: &str) {
    for event in &page.events {
        match event["method"].as_str() {
            Some("Network.requestWillBeSent") => {
                let url = event["params"]["request"]["url"].as_str().unwrap();
                assert!(url.starts_with(origin), "request outside the server: {url}");
            }
            Some("Runtime.exceptionThrown") => panic!("page exception: {event}"),
            Some("Runtime.consoleAPICalled") => {
                assert_ne!(event["params"]["type"], "error", "console error: {event}");
            }
            Some("Log.entryAdded") => {
                assert_ne!(
                    event["params"]["entry"]["level"], "error",
                    "logged error: {event}"
                );
            }
            _ => {}
        }
    }
}

async fn screenshot(page: &mut Page, name: &str) {
    let shot = page
        .call("Page.captureScreenshot", json!({ "format": "png" }))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&out, png).unwrap();
}

const ROW_IDS: &str =
    "[...document.querySelectorAll('#connections tr')].map(tr => tr.dataset.connectionId)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_data_pages_5000_connections_and_disconnects_in_a_real_browser() {
    install_tracing();
    let app = spawn_app_with(|s| s.admin.push_interval_ms = 200).await;
    let browser = launch();
    let mut page = Page::open(&browser).await;
    open_dashboard(&mut page, app.url("/admin")).await;
    page.wait_for(ACTIVE, json!("0")).await;
    page.eval("window.__loads = performance.getEntriesByType('navigation').length")
        .await;
    // The charts are drawn by the vendored library.
    assert_eq!(
        page.eval("document.querySelectorAll('.uplot canvas').length >= 3")
            .await,
        json!(true)
    );
    // From the first sample the time axis shows the last minute, not years.
    assert_eq!(
        page.eval("document.getElementById('chart_active').dataset.windowS")
            .await,
        json!("60")
    );

    let hostile = r#"<img src=x onerror="window.__xss=1">"#;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    let evil = app.connect(hostile).await;
    page.wait_for(ACTIVE, json!("3")).await;
    page.wait_for(ROWS, json!(3)).await;
    let ids = page
        .eval("[...document.querySelectorAll('#connections td.client')].map(td => td.textContent)")
        .await;
    assert_eq!(ids, json!(["alice", "bob", hostile]));
    assert_eq!(
        page.eval("document.querySelectorAll('#connections img').length")
            .await,
        json!(0)
    );
    assert_eq!(page.eval("typeof window.__xss").await, json!("undefined"));
    let links = page
        .eval("[...document.querySelectorAll('#connections a')].map(a => a.href)")
        .await;
    let stats = app.stats().await;
    let expected: Vec<_> = stats["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["trace_url"].clone())
        .collect();
    assert_eq!(links, json!(expected), "one trace link per connection");

    alice.send("hello").await;
    page.wait_for(
        "document.getElementById('messages_received').textContent",
        json!("1"),
    )
    .await;
    drop(evil);
    page.wait_for(ACTIVE, json!("2")).await;
    page.wait_for(ROWS, json!(2)).await;
    page.wait_for(
        "[...document.querySelectorAll('#disconnect_bars .bar-row')].find(r => r.firstChild.textContent === 'client_gone').lastChild.textContent",
        json!("1"),
    )
    .await;

    // Disconnect bob: row, detail, confirmation, close frame, row gone.
    page.eval("[...document.querySelectorAll('#connections tr')].find(tr => tr.querySelector('td.client').textContent === 'bob').click()").await;
    page.wait_for("document.getElementById('detail').hidden", json!(false))
        .await;
    assert_eq!(
        page.eval("document.getElementById('kick_area').hidden")
            .await,
        json!(false)
    );
    page.eval("document.getElementById('kick').click()").await;
    assert_eq!(
        page.eval("document.getElementById('kick_confirm').hidden")
            .await,
        json!(false)
    );
    page.eval("document.getElementById('kick_yes').click()")
        .await;
    assert_eq!(bob.expect_close().await, (4003, "admin_kick".into()));
    page.wait_for(ROWS, json!(1)).await;
    page.eval("document.getElementById('detail_close').click()")
        .await;

    // 5,000 connections: page through all of them, 500 at a time.
    let mut guards = Vec::new();
    for i in 0..4_999 {
        guards.push(
            app.registry
                .register(wsmon::monitor::ConnectionInfo::new(format!("load-{i:04}"))),
        );
    }
    page.wait_for(ACTIVE, json!("5,000")).await;
    page.eval("const l = document.getElementById('limit'); l.value = '500'; l.dispatchEvent(new Event('change'))").await;
    page.wait_for(ROWS, json!(500)).await;
    let mut seen = std::collections::HashSet::new();
    for expected_page in 1..=10 {
        page.wait_for(
            "document.getElementById('page_label').textContent",
            json!(format!("page {expected_page}")),
        )
        .await;
        page.wait_for(ROWS, json!(500)).await;
        for id in page.eval(ROW_IDS).await.as_array().unwrap() {
            seen.insert(id.as_str().unwrap().to_owned());
        }
        if expected_page < 10 {
            page.eval("document.getElementById('next').click()").await;
        }
    }
    assert_eq!(seen.len(), 5_000, "every connection once");
    assert_eq!(
        page.eval("document.getElementById('next').disabled").await,
        json!(true)
    );
    page.eval("document.getElementById('prev').click()").await;
    page.wait_for(
        "document.getElementById('page_label').textContent",
        json!("page 9"),
    )
    .await;

    // Under load: chat traffic while 5,000 connections are listed.
    for i in 0..50 {
        alice.send(&format!("load {i}")).await;
        alice.recv_text().await;
        alice.recv_text().await;
    }
    page.wait_for(
        "document.getElementById('messages_received').textContent",
        json!("51"),
    )
    .await;
    screenshot(&mut page, "admin-under-load.png").await;
    assert_eq!(
        page.eval("window.__loads").await,
        json!(1),
        "no reload: every change arrived by push"
    );
    assert_clean(&page, &app.url(""));
    drop(guards);
}

const VIEWER: &str = "viewer-token-ffffffffffff";
const OPERATOR: &str = "operator-token-gggggggggggg";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_do_not_see_the_disconnect_action() {
    install_tracing();
    let app = spawn_app_with(|s| {
        s.auth.viewer_tokens = vec![VIEWER.into()];
        s.auth.operator_tokens = vec![OPERATOR.into()];
        s.admin.push_interval_ms = 200;
    })
    .await;
    let _target = app.connect("target").await;
    for (token, can_kick) in [(VIEWER, false), (OPERATOR, true)] {
        let browser = launch();
        let mut page = Page::open(&browser).await;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("browser:{token}"));
        page.call("Network.enable", json!({})).await;
        page.call(
            "Network.setExtraHTTPHeaders",
            json!({ "headers": { "Authorization": format!("Basic {basic}") } }),
        )
        .await;
        open_dashboard(&mut page, app.url("/admin")).await;
        let role = if can_kick { "operator" } else { "viewer" };
        page.wait_for("document.getElementById('role').textContent", json!(role))
            .await;
        page.wait_for(ROWS, json!(1)).await;
        page.eval("document.querySelector('#connections tr').click()")
            .await;
        page.wait_for("document.getElementById('detail').hidden", json!(false))
            .await;
        assert_eq!(
            page.eval("document.getElementById('kick_area').hidden")
                .await,
            json!(!can_kick),
            "{role}"
        );
        assert_clean(&page, &app.url(""));
    }
    // Without credentials the page itself is refused.
    let r = reqwest::get(app.url("/admin")).await.unwrap();
    assert_eq!(r.status(), 401);
}

/// Waits until `app`'s cluster view shows `n` alive nodes with the backplane up.
async fn wait_cluster(app: &helpers::TestApp, n: u64) {
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        let (_, view) = app.get_json("/api/v1/cluster").await;
        if view["backplane"]["up"] == true && view["totals"]["alive_nodes"] == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster not ready: {view:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_lists_the_nodes_and_disconnects_a_client_of_another_node() {
    install_tracing();
    let redis = redis_server::Redis::start();
    let node = |id: &'static str| {
        let url = redis.url();
        spawn_app_with(move |s| {
            s.admin.push_interval_ms = 200;
            s.cluster.redis_url = url;
            s.cluster.node_id = id.into();
            s.cluster.heartbeat_ms = 200;
            s.cluster.presence_ttl_ms = 1_000;
        })
    };
    let (a, b) = (node("node-a").await, node("node-b").await);
    wait_cluster(&a, 2).await;
    wait_cluster(&b, 2).await;
    let mut remote = b.connect("remote-client").await;
    let mut local = a.connect("local-client").await;

    let browser = launch();
    let mut page = Page::open(&browser).await;
    open_dashboard(&mut page, a.url("/admin")).await;
    page.wait_for(
        "[...document.querySelectorAll('#nodes tr')].map(tr => tr.dataset.node).join(',')",
        json!("node-a,node-b"),
    )
    .await;
    page.wait_for(
        "document.querySelector('#nodes tr[data-node=\"node-a\"] td').textContent",
        json!("node-a (this node)"),
    )
    .await;
    // This node's table first: the node column names it.
    page.wait_for(
        "[...document.querySelectorAll('#connections tr')].map(tr => tr.firstChild.textContent + '/' + tr.querySelector('td.client').textContent).join()",
        json!("node-a/local-client"),
    )
    .await;
    // Another node's connections, through the cluster.
    page.eval("const s = document.getElementById('node'); s.value = 'node-b'; s.dispatchEvent(new Event('change'))")
        .await;
    page.wait_for(
        "[...document.querySelectorAll('#connections tr')].map(tr => tr.firstChild.textContent + '/' + tr.querySelector('td.client').textContent).join()",
        json!("node-b/remote-client"),
    )
    .await;
    page.eval("document.querySelector('#connections tr').click()")
        .await;
    page.wait_for("document.getElementById('detail').hidden", json!(false))
        .await;
    page.eval("document.getElementById('kick').click()").await;
    page.eval("document.getElementById('kick_yes').click()")
        .await;
    page.wait_for(
        "document.getElementById('detail_status').textContent",
        json!("Disconnect requested."),
    )
    .await;
    assert_eq!(remote.expect_close().await, (4003, "admin_kick".into()));
    assert_eq!(
        local.recv_text().await,
        "Client #remote-client left the chat"
    );
    page.wait_for(ROWS, json!(0)).await;
    screenshot(&mut page, "admin-cluster.png").await;
    assert_clean(&page, &a.url(""));
}
