//! A dead, refusing or black-holing collector never hurts the chat: the real binary runs with
//! OTLP export pointed at a closed port or at a listener that accepts and never answers; chat
//! keeps working, memory stays bounded over a sustained run, export failures are counted, the
//! server exits promptly on SIGTERM, and export resumes by itself once an endpoint answers.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "support/process.rs"]
mod process;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use process::{sigterm_and_wait, Server};
use tokio_tungstenite::tungstenite::Message;

/// An endpoint that accepts connections and never reads or answers.
fn black_hole() -> String {
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", hole.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in hole.incoming().flatten() {
            held.push(stream);
        }
    });
    endpoint
}

/// Starts the real binary with export to `endpoint` over `protocol`, many spans, fast batches.
fn start(endpoint: &str, protocol: &str) -> Server {
    let env = |k: &'static str, v: &str| (k, v.to_owned());
    process::start(&[
        env("WSMON_TELEMETRY__MESSAGE_SPANS", "all"),
        env("WSMON_TELEMETRY__METRICS_INTERVAL_MS", "200"),
        env("WSMON_TELEMETRY__SHUTDOWN_TIMEOUT_MS", "1000"),
        env("WSMON_SHUTDOWN__GRACE_MS", "2000"),
        // This test is about telemetry, not slow consumers: room for pipelined bursts...
        env("WSMON_WEBSOCKET__OUTBOUND_QUEUE", "4096"),
        // ... nor about the rate limit: a load run lifts it.
        env("WSMON_LIMITS__MESSAGES_PER_SECOND", "1000000"),
        env("WSMON_LIMITS__MESSAGE_BURST", "1000000"),
        env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        env("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
        env("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `clients` clients each send `per_client` messages (pipelined in bursts of 25) and read
/// every reply and broadcast; panics if any receive stalls.
async fn chat(addr: SocketAddr, clients: usize, per_client: usize) {
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            let url = format!("ws://{addr}/ws/load{i}");
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let mut sent = 0;
            while sent < per_client {
                let burst = 25.min(per_client - sent);
                for _ in 0..burst {
                    ws.feed(Message::text("m")).await.unwrap();
                }
                ws.flush().await.unwrap();
                sent += burst;
                // Our own replies arrive in order; broadcasts from others interleave.
                let mut own = 0;
                while own < burst {
                    let msg = tokio::time::timeout(helpers::RECV_TIMEOUT, ws.next())
                        .await
                        .expect("chat stalled while the collector is down")
                        .expect("connection open")
                        .unwrap();
                    if msg.to_text().unwrap().starts_with("You sent") {
                        own += 1;
                    }
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            ws.close(None).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn metric(addr: SocketAddr, series: &str) -> f64 {
    process::metric(addr, series).await
}

async fn sustained_run_with_broken_collector(endpoint: &str, protocol: &str) {
    let server = start(endpoint, protocol);
    let pid = server.child.id();
    chat(server.addr, 4, 2_000).await; // warm-up: queues fill, allocator settles
    let warm = rss_kib(pid);
    for _ in 0..5 {
        chat(server.addr, 4, 5_000).await; // 100,000 more messages, one span each
    }
    let after = rss_kib(pid);
    let failures = metric(
        server.addr,
        "websocket_server_telemetry_exports_total{signal=\"traces\",outcome=\"failure\"}",
    )
    .await;
    let ended = metric(
        server.addr,
        "websocket_server_telemetry_spans_total{outcome=\"ended\"}",
    )
    .await;
    let exported = metric(
        server.addr,
        "websocket_server_telemetry_spans_total{outcome=\"exported\"}",
    )
    .await;
    println!("{protocol} {endpoint}: rss warm {warm} KiB, after 100k spans {after} KiB; export failures {failures}, spans ended {ended}, exported {exported}");
    assert!(failures >= 1.0, "failed exports are counted");
    assert_eq!(exported, 0.0);
    assert!(ended >= 100_000.0);
    // Unbounded buffering would hold ~100k spans (well over 100 MiB); message spans may fill half
    // of the 16,384-span export queue (a few MiB).
    assert!(
        after < warm + 40 * 1024,
        "memory grew from {warm} KiB to {after} KiB"
    );
    let took = sigterm_and_wait(server);
    println!("{protocol}: exited {took:?} after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_grpc_export_leaves_chat_and_memory_unaffected() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    sustained_run_with_broken_collector(&format!("http://127.0.0.1:{port}"), "grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_http_collector_leaves_chat_and_memory_unaffected() {
    // Accepts connections and never reads or answers.
    let endpoint = black_hole();
    sustained_run_with_broken_collector(&endpoint, "http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_resumes_by_itself_when_the_collector_returns() {
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    let collector: SocketAddr = probe.local_addr().unwrap();
    drop(probe);
    let server = start(&format!("http://{collector}"), "http/protobuf");
    chat(server.addr, 2, 200).await;
    let series = "websocket_server_telemetry_exports_total{signal=\"traces\",outcome=\"success\"}";
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metric(server.addr, series).await, 0.0);

    // Now a collector appears on that port: an OTLP/HTTP endpoint that accepts everything.
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    let app = axum::Router::new().route(
        "/v1/{signal}",
        axum::routing::post(move || {
            count.fetch_add(1, Ordering::Relaxed);
            async {
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(collector).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        chat(server.addr, 1, 10).await;
        if metric(server.addr, series).await >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "export never resumed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(received.load(Ordering::Relaxed) >= 1);
    sigterm_and_wait(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_clients_and_a_black_hole_collector_exits_within_the_deadline() {
    // Accepts connections and never reads or answers: the final flush would wait its own 5 s.
    let endpoint = black_hole();
    const DEADLINE: Duration = Duration::from_millis(2_500);
    let env = |k: &'static str, v: &str| (k, v.to_owned());
    let server = process::start(&[
        env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        env("OTEL_EXPORTER_OTLP_TIMEOUT", "10000"),
        env("WSMON_TELEMETRY__SHUTDOWN_TIMEOUT_MS", "5000"),
        env("WSMON_SHUTDOWN__GRACE_MS", "10000"),
        env(
            "WSMON_SHUTDOWN__DEADLINE_MS",
            &DEADLINE.as_millis().to_string(),
        ),
        env("WSMON_LIMITS__MESSAGES_PER_SECOND", "1000000"),
        env("WSMON_LIMITS__MESSAGE_BURST", "1000000"),
    ]);
    // Clients that never read: their closing handshakes take the whole close timeout.
    let mut clients = Vec::new();
    for i in 0..20 {
        let url = format!("ws://{}/ws/stuck{i}", server.addr);
        clients.push(tokio_tungstenite::connect_async(url).await.unwrap().0);
    }
    chat(server.addr, 2, 50).await; // spans and metrics waiting for the black hole
    let took = tokio::task::spawn_blocking(move || sigterm_and_wait(server))
        .await
        .unwrap();
    // A margin for process start-up of the signal handling and exit, not a speed claim.
    assert!(
        took < DEADLINE + Duration::from_millis(1_500),
        "exited {took:?} after SIGTERM; deadline {DEADLINE:?}"
    );
    drop(clients);
}
