//! The `/admin` dashboard in a real headless Chromium, driven over the DevTools protocol:
//! it goes live without reloads, renders hostile client ids as text, loads nothing from
//! outside the server, and logs no console errors. Needs `chromium` (`CHROMIUM` overrides the
//! path); run with `cargo test --features browser-tests`.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// Traces on (into memory), so connections have trace ids and the table trace links.
fn install_tracing() -> opentelemetry_sdk::trace::SdkTracerProvider {
    use opentelemetry::trace::TracerProvider as _;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_sdk::trace::InMemorySpanExporter::default())
        .build();
    let subscriber = wsmon::telemetry::get_subscriber(
        &Default::default(),
        Some(provider.tracer("wsmon")),
        std::io::sink,
    );
    wsmon::telemetry::install(subscriber);
    provider
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_data_in_a_real_browser_and_renders_ids_as_text() {
    let _provider = install_tracing();
    let app = spawn_app_with(|s| s.admin.push_interval_ms = 100).await;
    let browser = launch();
    let mut page = Page::open(&browser).await;
    for domain in [
        "Runtime.enable",
        "Log.enable",
        "Network.enable",
        "Page.enable",
    ] {
        page.call(domain, json!({})).await;
    }
    page.call("Page.navigate", json!({ "url": app.url("/admin") }))
        .await;
    page.wait_for(
        "document.getElementById('status').dataset.state",
        json!("live"),
    )
    .await;
    page.wait_for(ACTIVE, json!("0")).await;
    page.eval("window.__loads = performance.getEntriesByType('navigation').length")
        .await;

    let hostile = r#"<img src=x onerror="window.__xss=1">"#;
    let mut alice = app.connect("alice").await;
    let _bob = app.connect("bob").await;
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
    assert!(links[0]
        .as_str()
        .unwrap()
        .starts_with("http://localhost:16686/trace/"));

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
        "[...document.querySelectorAll('#disconnects tr')].find(r => r.cells[0].textContent === 'client_gone').cells[1].textContent",
        json!("1"),
    )
    .await;
    // Still the first page load: every change arrived by push.
    assert_eq!(page.eval("window.__loads").await, json!(1));

    let shot = page
        .call("Page.captureScreenshot", json!({ "format": "png" }))
        .await;
    let png = base64_decode(shot["data"].as_str().unwrap());
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin.png");
    std::fs::write(&out, png).unwrap();

    let origin = app.url("");
    for event in &page.events {
        match event["method"].as_str() {
            Some("Network.requestWillBeSent") => {
                let url = event["params"]["request"]["url"].as_str().unwrap();
                assert!(
                    url.starts_with(&origin),
                    "request outside the server: {url}"
                );
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

fn base64_decode(s: &str) -> Vec<u8> {
    let mut table = [255u8; 256];
    for (i, c) in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        .iter()
        .enumerate()
    {
        table[*c as usize] = i as u8;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &b in s.as_bytes().iter().filter(|&&b| b != b'=') {
        acc = (acc << 6) | u32::from(table[b as usize]);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
