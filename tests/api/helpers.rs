//! `spawn_app()` and a small WebSocket test client.

use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wsmon::config::Settings;
use wsmon::startup::Application;

/// Every receive in the tests waits at most this long.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub server: JoinHandle<std::io::Result<()>>,
    pub registry: wsmon::monitor::Registry,
    pub sessions: tokio_util::task::TaskTracker,
}

static LOG: Once = Once::new();

/// `TEST_LOG=1 cargo test` shows the server's logs.
fn init_logs() {
    LOG.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            wsmon::telemetry::init(&Default::default());
        }
    });
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    init_logs();
    let mut settings = Settings::default();
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    settings.shutdown.grace_ms = 2_000;
    // Every test client comes from 127.0.0.1, and many tests chat faster than a person would:
    // tests of the per-address cap and of the rate limit set their own values.
    settings.limits.max_connections_per_ip = 10_000;
    settings.server.max_http_connections_per_ip = 100_000;
    settings.limits.messages_per_second = 1_000_000.0;
    settings.limits.message_burst = 1_000_000;
    // Tests look for a connection's open span at once; the delayed default has its own test.
    settings.telemetry.open_span_after_ms = 0;
    // ... and for every disconnect record; the share of brief ones has its own test.
    settings.telemetry.brief_disconnect_share = 1.0;
    configure(&mut settings);
    let app = Application::build(settings, wsmon::telemetry::metrics::build(None))
        .await
        .expect("server binds");
    let addr = app.local_addr();
    let shutdown = app.shutdown_token();
    let registry = app.registry();
    let sessions = app.sessions();
    let server = tokio::spawn(app.run_until_stopped(std::future::pending()));
    TestApp {
        addr,
        http: reqwest::Client::new(),
        shutdown,
        server,
        registry,
        sessions,
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub id: String,
    pub ws: Ws,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, client_id: &str) -> String {
        format!("ws://{}/ws/{}", self.addr, encode(client_id))
    }

    pub async fn connect(&self, client_id: &str) -> Client {
        self.connect_with(client_id, &[]).await
    }

    pub async fn connect_with(&self, client_id: &str, headers: &[(&'static str, &str)]) -> Client {
        let mut request = self.ws_url(client_id).into_client_request().unwrap();
        for (k, v) in headers {
            request.headers_mut().insert(*k, v.parse().unwrap());
        }
        let (ws, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        Client {
            id: client_id.to_owned(),
            ws,
        }
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn stats(&self) -> Value {
        let (status, body) = self.get_json("/ws-stats").await;
        assert_eq!(status, 200);
        body
    }

    /// Polls `/ws-stats` until `check` holds (or fails after [`RECV_TIMEOUT`]).
    pub async fn wait_for_stats(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        loop {
            let stats = self.stats().await;
            if check(&stats) {
                return stats;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}; last stats: {stats:#}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The connection id of `client_id`'s connection, once `/ws-stats` lists it.
    pub async fn connection_id(&self, client_id: &str) -> String {
        let listed = |s: &Value| {
            s["connections"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["client_id"] == client_id).cloned())
        };
        let stats = self
            .wait_for_stats(client_id, |s| listed(s).is_some())
            .await;
        listed(&stats).unwrap()["connection_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn wait_for_active(&self, n: u64) -> Value {
        self.wait_for_stats(&format!("{n} active connections"), |s| {
            s["global_stats"]["active_connections"] == n
        })
        .await
    }
}

impl Client {
    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// The next text message (pings and pongs skipped); panics on close or timeout.
    pub async fn recv_text(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(RECV_TIMEOUT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: no message within {RECV_TIMEOUT:?}", self.id));
            match msg {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("{}: expected text, got {other:?}", self.id),
            }
        }
    }

    /// Reads until the server's close frame; returns its code and reason. Text messages
    /// still in flight are skipped.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            let msg = tokio::time::timeout(RECV_TIMEOUT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: no close within {RECV_TIMEOUT:?}", self.id));
            match msg {
                Some(Ok(Message::Close(Some(f)))) => {
                    return (u16::from(f.code), f.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => {
                    return (u16::from(CloseCode::Status), String::new())
                }
                Some(Ok(_)) => continue,
                other => panic!("{}: expected a close frame, got {other:?}", self.id),
            }
        }
    }

    /// Reads `n` leave notices of clients whose ids start with `prefix`, and nothing else;
    /// panics on any other text or a notice heard twice.
    pub async fn hear_leaves(&mut self, prefix: &str, n: usize) {
        let mut heard = std::collections::HashSet::new();
        while heard.len() < n {
            let text = self.recv_text().await;
            let who = text
                .strip_prefix("Client #")
                .and_then(|t| t.strip_suffix(" left the chat"))
                .filter(|who| who.starts_with(prefix))
                .unwrap_or_else(|| panic!("{}: unexpected {text:?}", self.id));
            assert!(heard.insert(who.to_owned()), "{text} twice");
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(msg) = tokio::time::timeout(wait, self.ws.next()).await {
            panic!("{}: expected silence, got {msg:?}", self.id);
        }
    }
}
