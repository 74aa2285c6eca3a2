//! Protection and lifecycle policies: each test asserts the close code and reason the client
//! sees, the reason counted in the stats, and that other clients keep chatting.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{spawn_app_with, Client, TestApp, RECV_TIMEOUT};

/// A client whose messages are read continuously by a task (so it answers pings), with the
/// texts forwarded to a channel.
struct Responsive {
    id: String,
    sink: futures_util::stream::SplitSink<crate::helpers::Ws, Message>,
    texts: mpsc::UnboundedReceiver<String>,
}

impl Responsive {
    fn new(client: Client) -> Self {
        let (sink, mut stream) = client.ws.split();
        let (tx, texts) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(t) = msg {
                    let _ = tx.send(t.to_string());
                }
            }
        });
        Self {
            id: client.id,
            sink,
            texts,
        }
    }

    /// Sends a message and waits for its personal reply (skipping broadcasts).
    async fn chat(&mut self, text: &str) {
        self.sink.send(Message::text(text)).await.unwrap();
        let want = format!("You sent: {text}");
        loop {
            let got = tokio::time::timeout(RECV_TIMEOUT, self.texts.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: no reply", self.id))
                .unwrap_or_else(|| panic!("{}: connection ended", self.id));
            if got == want {
                return;
            }
        }
    }
}

async fn disconnects(app: &TestApp, reason: &str, n: u64) {
    app.wait_for_stats(reason, |s| s["global_stats"]["disconnects"][reason] == n)
        .await;
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed_as_ping_timeout() {
    let app = spawn_app_with(|s| {
        s.websocket.ping_interval_ms = 100;
        s.websocket.ping_timeout_ms = 200;
    })
    .await;
    let mut silent = app.connect("silent").await; // never reads, so never pongs
    let mut alive = Responsive::new(app.connect("alive").await);

    disconnects(&app, "ping_timeout", 1).await;
    assert_eq!(silent.expect_close().await, (4001, "ping_timeout".into()));
    // The responsive client answered every ping and is still chatting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    alive.chat("still here").await;
    assert_eq!(app.stats().await["global_stats"]["active_connections"], 1);
}

#[tokio::test]
async fn an_idle_client_is_warned_once_then_closed_as_idle_timeout() {
    let app = spawn_app_with(|s| {
        s.monitor.idle_after_secs = 1;
        s.limits.idle_close_after_secs = 2;
    })
    .await;
    let mut idle = app.connect("idle").await;
    let mut busy = Responsive::new(app.connect("busy").await);
    let chatter = tokio::spawn(async move {
        for i in 0..12 {
            busy.chat(&i.to_string()).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        busy
    });

    let mut warnings = 0;
    let close = loop {
        match tokio::time::timeout(RECV_TIMEOUT, idle.ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) if t.starts_with("Server: you have been idle") => {
                warnings += 1
            }
            Some(Ok(Message::Text(_) | Message::Ping(_))) => {}
            Some(Ok(Message::Close(Some(f)))) => break (u16::from(f.code), f.reason.to_string()),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(warnings, 1, "exactly one warning");
    assert_eq!(close, (4000, "idle_timeout".into()));
    disconnects(&app, "idle_timeout", 1).await;
    let mut busy = chatter.await.unwrap();
    busy.chat("after").await;
    assert_eq!(
        app.stats().await["global_stats"]["disconnects"]["idle_timeout"],
        1
    );
}

#[tokio::test]
async fn over_the_rate_limit_messages_are_dropped_with_one_notice_then_the_client_is_closed() {
    let app = spawn_app_with(|s| {
        s.limits.messages_per_second = 1.0;
        s.limits.message_burst = 3;
        s.limits.rate_limit_close_drops = 10;
    })
    .await;
    let mut flooder = app.connect("flooder").await;
    let mut other = Responsive::new(app.connect("other").await);
    for i in 0..6 {
        flooder.send(&format!("m{i}")).await;
    }
    let mut texts = Vec::new();
    for _ in 0..7 {
        texts.push(flooder.recv_text().await);
    }
    let replies = texts.iter().filter(|t| t.starts_with("You sent:")).count();
    let notices = texts
        .iter()
        .filter(|t| t.starts_with("Server: rate limit"))
        .count();
    assert_eq!((replies, notices), (3, 1), "{texts:?}");
    app.wait_for_stats("3 accepted", |s| {
        s["global_stats"]["messages_received"] == 3
    })
    .await;
    for i in 0..10 {
        flooder.send(&format!("flood{i}")).await;
    }
    assert_eq!(flooder.expect_close().await, (1008, "rate_limited".into()));
    disconnects(&app, "rate_limited", 1).await;
    other.chat("unaffected").await;
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("websocket_server_messages_rate_limited_total 10\n"),
        "{metrics}"
    );
}

async fn upgrade_status(
    app: &TestApp,
    client_id: &str,
    origin: Option<&str>,
) -> (u16, Option<String>, serde_json::Value) {
    let mut request = app
        .http
        .get(app.url(&format!("/ws/{client_id}")))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(o) = origin {
        request = request.header("Origin", o);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, r.json().await.unwrap_or_default())
}

#[tokio::test]
async fn connection_caps_refuse_with_429_and_503_and_retry_after() {
    let app = spawn_app_with(|s| {
        s.limits.max_connections_per_ip = 2;
        s.server.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let mut a = Responsive::new(app.connect("a").await);
    let _b = app.connect("b").await;
    let (status, retry, body) = upgrade_status(&app, "c", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("per_ip_limit"))
    );
    assert!(retry.is_some());
    // Another address (through the trusted proxy) still gets in.
    let _other_ip = app
        .connect_with("d", &[("x-forwarded-for", "192.0.2.9")])
        .await;
    a.chat("fine").await;

    let global = spawn_app_with(|s| s.limits.max_connections = 1).await;
    let _only = global.connect("only").await;
    let (status, retry, body) = upgrade_status(&global, "two", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("global_limit"))
    );
    assert!(retry.is_some());
    let stats = global.stats().await;
    assert_eq!(stats["global_stats"]["rejections"]["global_limit"], 1);
    assert_eq!(
        app.stats().await["global_stats"]["rejections"]["per_ip_limit"],
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_refused_connection_attempts_does_not_starve_connected_clients() {
    let app = spawn_app_with(|s| s.limits.max_connections = 1).await;
    let mut chatter = Responsive::new(app.connect("chatter").await);
    let addr = app.addr;
    let burst = tokio::spawn(async move {
        let attempts = (0..300).map(|i| async move {
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws/x{i}"))
                .await
                .is_err()
        });
        futures_util::future::join_all(attempts).await
    });
    for i in 0..20 {
        chatter.chat(&format!("during burst {i}")).await;
    }
    let refused = burst.await.unwrap();
    assert!(refused.iter().all(|r| *r), "every attempt refused");
    assert_eq!(
        app.stats().await["global_stats"]["rejections"]["global_limit"],
        300
    );
}

#[tokio::test]
async fn browser_origins_are_checked_and_missing_origin_follows_the_setting() {
    let app =
        spawn_app_with(|s| s.security.allowed_origins = vec!["https://chat.example.com".into()])
            .await;
    let own = format!("http://{}", app.addr);
    assert_eq!(upgrade_status(&app, "same", Some(&own)).await.0, 101);
    assert_eq!(
        upgrade_status(&app, "listed", Some("https://chat.example.com"))
            .await
            .0,
        101
    );
    assert_eq!(upgrade_status(&app, "none", None).await.0, 101);
    let (status, _, body) = upgrade_status(&app, "evil", Some("https://evil.example")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("origin_not_allowed"))
    );

    let strict = spawn_app_with(|s| s.security.allow_missing_origin = false).await;
    let (status, _, body) = upgrade_status(&strict, "none", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    assert_eq!(
        strict.stats().await["global_stats"]["rejections"]["origin_not_allowed"],
        1
    );
}

const VIEWER: &str = "viewer-token-aaaaaaaaaaaa";
const OPERATOR: &str = "operator-token-bbbbbbbbbbbb";

#[tokio::test]
async fn the_api_needs_a_token_viewers_read_and_only_operators_kick() {
    let app = spawn_app_with(|s| {
        s.auth.viewer_tokens = vec![VIEWER.into()];
        s.auth.operator_tokens = vec![OPERATOR.into()];
    })
    .await;
    let _c = app.connect("target").await;
    let get = |path: &str, token: Option<&str>| {
        let mut r = app.http.get(app.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let r = get("/ws-stats", None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    for path in ["/admin", "/admin/events", "/api/v1/connections"] {
        assert_eq!(get(path, None).await.unwrap().status(), 401, "{path}");
    }
    assert_eq!(get("/healthz", None).await.unwrap().status(), 200);
    assert_eq!(get("/metrics", None).await.unwrap().status(), 200);
    let r = get("/ws-stats", Some(VIEWER)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let stats: serde_json::Value = r.json().await.unwrap();
    let id = stats["connections"][0]["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let basic = app
        .http
        .get(app.url("/api/v1/connections"))
        .basic_auth("anyone", Some(VIEWER))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200, "Basic auth with the token as password");

    let url = app.url(&format!("/api/v1/connections/{id}"));
    let as_viewer = app
        .http
        .delete(&url)
        .bearer_auth(VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(as_viewer.status(), 403);
    let as_operator = app
        .http
        .delete(&url)
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap();
    assert_eq!(as_operator.status(), 202);
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_throttled() {
    let app = spawn_app_with(|s| {
        s.auth.viewer_tokens = vec![VIEWER.into()];
        s.auth.max_failures = 3;
    })
    .await;
    for _ in 0..3 {
        let r = app
            .http
            .get(app.url("/ws-stats"))
            .bearer_auth("wrong-token-xxxxxxxxxx")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = app
        .http
        .get(app.url("/ws-stats"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "even a good token waits out the window");
    assert!(r.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn behind_a_trusted_proxy_one_clients_failures_do_not_lock_out_another() {
    let app = spawn_app_with(|s| {
        s.auth.viewer_tokens = vec![VIEWER.into()];
        s.auth.max_failures = 3;
        s.server.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    // Every request comes from the proxy (127.0.0.1), which names the client it forwards.
    let get = |client: &'static str, token: &'static str| {
        app.http
            .get(app.url("/ws-stats"))
            .header("x-forwarded-for", client)
            .bearer_auth(token)
            .send()
    };
    for _ in 0..10 {
        let status = get("203.0.113.1", "wrong-token-xxxxxxxxxx")
            .await
            .unwrap()
            .status();
        assert!(status == 401 || status == 429, "{status}");
    }
    let a = get("203.0.113.1", VIEWER).await.unwrap().status();
    assert_eq!(a, 429, "client A, who failed, is throttled");
    let b = get("203.0.113.2", VIEWER).await.unwrap().status();
    assert_eq!(b, 200, "client B, behind the same proxy, is not");
}

#[tokio::test]
async fn a_header_of_another_kind_does_not_change_the_address_nor_escape_the_cap() {
    // The proxy appends X-Forwarded-For (the configured header) and passes the client's own
    // Forwarded header through.
    let app = spawn_app_with(|s| {
        s.limits.max_connections_per_ip = 2;
        s.server.trusted_proxies = vec!["127.0.0.1".into()];
        // client_address_header: "x-forwarded-for", the default.
    })
    .await;
    let spoofed = |i: u8| format!("for=198.51.100.{i}");
    let (f1, f2) = (spoofed(1), spoofed(2));
    let _a = app
        .connect_with(
            "a",
            &[("x-forwarded-for", "203.0.113.5"), ("forwarded", &f1)],
        )
        .await;
    let _b = app
        .connect_with(
            "b",
            &[("x-forwarded-for", "203.0.113.5"), ("forwarded", &f2)],
        )
        .await;
    let stats = app.wait_for_active(2).await;
    for c in stats["connections"].as_array().unwrap() {
        assert_eq!(c["client_address"], "203.0.113.5", "{c}");
    }
    let refused = app
        .http
        .get(app.url("/ws/c"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("x-forwarded-for", "203.0.113.5")
        .header("forwarded", spoofed(3))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        429,
        "the third from 203.0.113.5 is over its cap"
    );
}

#[tokio::test]
async fn protected_metrics_need_a_token_when_configured() {
    let app = spawn_app_with(|s| {
        s.auth.viewer_tokens = vec![VIEWER.into()];
        s.auth.protect_metrics = true;
    })
    .await;
    assert_eq!(
        app.http
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_unready_first_then_closes_all_200_clients_with_1001() {
    let app = spawn_app_with(|s| s.shutdown.drain_delay_ms = 300).await;
    let mut clients = Vec::new();
    for i in 0..200 {
        clients.push(app.connect(&format!("s{i}")).await);
    }
    app.wait_for_active(200).await;

    app.shutdown.cancel();
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (503, Some("shutting_down"))
    );
    let (status, _, body) = upgrade_status(&app, "late", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("shutting_down"))
    );

    let closes = futures_util::future::join_all(clients.iter_mut().map(|c| c.expect_close())).await;
    assert!(
        closes
            .iter()
            .all(|c| *c == (1001, "server_shutdown".to_owned())),
        "{closes:?}"
    );
    let result = tokio::time::timeout(RECV_TIMEOUT, app.server)
        .await
        .expect("server stops")
        .unwrap();
    assert!(result.is_ok());
}

#[tokio::test]
async fn a_restart_shutdown_sends_1012() {
    let app =
        spawn_app_with(|s| s.shutdown.close_code = wsmon::config::ShutdownCode::Restart).await;
    let mut c = app.connect("c").await;
    app.wait_for_active(1).await;
    app.shutdown.cancel();
    assert_eq!(c.expect_close().await, (1012, "server_shutdown".into()));
}

#[tokio::test]
async fn the_readme_lists_every_close_and_rejection_reason() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for r in wsmon::monitor::CloseReason::ALL {
        assert!(
            readme.contains(&format!("| `{}` |", r.as_str())),
            "{}",
            r.as_str()
        );
    }
    for r in wsmon::monitor::RejectReason::ALL {
        assert!(
            readme.contains(&format!("| `{}` | {} |", r.as_str(), r.status())),
            "{}",
            r.as_str()
        );
    }
}
