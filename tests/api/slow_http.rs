//! Connections that never finish a request (slowloris) or sit idle on keep-alive are closed
//! after `server.header_read_timeout_ms`, counted, and never hold more than
//! `server.max_http_connections` descriptors; upgraded clients and `/healthz` keep working.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app_with, TestApp, RECV_TIMEOUT};
use crate::metrics::{scrape, value};

const HALF_HEAD: &[u8] = b"GET /ws/x HTTP/1.1\r\nHost: a\r\n";
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";

/// Opens `n` connections, each sending `bytes` (and, for a whole request, reading its answer).
async fn open(app: &TestApp, n: usize, bytes: &'static [u8], read_answer: bool) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        if read_answer {
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout(RECV_TIMEOUT, tcp.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "answered");
        }
        held.push(tcp);
    }
    held
}

/// Whether the server has closed `tcp` (EOF or reset), waiting at most `wait`.
async fn closed_by_server(tcp: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(wait, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // a 408 or similar before the close
        }
    }
}

async fn healthz_ms(app: &TestApp) -> Option<u128> {
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(RECV_TIMEOUT, app.http.get(app.url("/healthz")).send()).await;
    matches!(r, Ok(Ok(ref resp)) if resp.status() == 200).then(|| started.elapsed().as_millis())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_idle_keep_alive_are_closed_after_the_header_timeout() {
    const N: usize = 2_000;
    let app = spawn_app_with(|s| {
        s.server.header_read_timeout_ms = 1_500;
        s.server.max_http_connections = 8_192;
    })
    .await;
    let started = std::time::Instant::now();
    let mut slow = open(&app, N, HALF_HEAD, false).await;
    let mut idle = open(&app, N, HEALTHZ, true).await;
    // While they are held, the server answers.
    for _ in 0..5 {
        assert!(
            healthz_ms(&app).await.is_some(),
            "/healthz during the attack"
        );
    }
    // Every one is closed by the server within the timeout plus a margin.
    let deadline = Duration::from_millis(1_500) + Duration::from_secs(10);
    for tcp in slow.iter_mut().chain(idle.iter_mut()) {
        let left = deadline.saturating_sub(started.elapsed());
        assert!(closed_by_server(tcp, left).await, "held past {deadline:?}");
    }
    let metrics = scrape(&app).await;
    assert!(
        value(&metrics, "websocket_server_http_header_timeouts_total", &[]) >= (2 * N) as f64,
        "every cut connection is counted"
    );
    let gauge = || async {
        value(
            &scrape(&app).await,
            "websocket_server_http_connections",
            &[],
        )
    };
    let mut open_now = gauge().await;
    for _ in 0..100 {
        // Only the scrape's own connection may remain.
        if open_now <= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        open_now = gauge().await;
    }
    assert!(open_now <= 1.0, "{open_now} HTTP connections still counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_cap_new_connections_wait_and_upgraded_clients_keep_chatting() {
    let app = spawn_app_with(|s| {
        s.server.header_read_timeout_ms = 2_000;
        s.server.max_http_connections = 20;
    })
    .await;
    let mut chatter = app.connect("chatter").await;
    app.wait_for_active(1).await;
    let _slow = open(&app, 20, HALF_HEAD, false).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The cap is full: a new request waits in the listen backlog...
    let waiting = {
        // A new client: the test's own may hold an open keep-alive connection.
        let (http, url) = (reqwest::Client::new(), app.url("/healthz"));
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let status = http.get(url).send().await.map(|r| r.status().as_u16());
            (status.ok(), started.elapsed())
        })
    };
    // ...while the upgraded client chats as before.
    chatter.send("hello").await;
    assert_eq!(chatter.recv_text().await, "You sent: hello");
    assert_eq!(chatter.recv_text().await, "Client #chatter says: hello");
    let (status, waited) = tokio::time::timeout(RECV_TIMEOUT, waiting)
        .await
        .expect("answered once the slow connections time out")
        .unwrap();
    assert_eq!(status, Some(200));
    assert!(
        waited >= Duration::from_millis(1_000),
        "it waited for a slot ({waited:?})"
    );
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_share_of_unupgraded_connections() {
    let app = spawn_app_with(|s| {
        s.server.header_read_timeout_ms = 5_000;
        s.server.max_http_connections_per_ip = 5;
    })
    .await;
    let held = open(&app, 5, HALF_HEAD, false).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The sixth from 127.0.0.1 is answered 429 at once, before any request is read...
    let mut sixth = TcpStream::connect(app.addr).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(RECV_TIMEOUT, sixth.read_to_string(&mut answer))
        .await
        .expect("answered at once")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"per_ip_http_limit""#),
        "{answer}"
    );
    // ...while another address is served.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(app.addr).await.unwrap();
    other.write_all(HEALTHZ).await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(RECV_TIMEOUT, other.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = app.stats().await;
    assert_eq!(stats["global_stats"]["rejections"]["per_ip_http_limit"], 1);
}
