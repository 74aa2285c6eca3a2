//! Outbound memory is bounded in bytes: clients that never read (a small receive window, full)
//! while someone broadcasts large messages are closed as `slow_consumer` once they hold their
//! share, or, over the process ceiling, the largest holders first; the clients that read get
//! every message, in order.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{spawn_app_with, TestApp};
use crate::metrics::{scrape, value};

/// A client that never reads, with a small receive buffer so the server's writes stall soon.
async fn stalled(
    app: &TestApp,
    id: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(app.addr).await.unwrap();
    tokio_tungstenite::client_async(app.ws_url(id), tcp)
        .await
        .unwrap()
        .0
}

/// `n` messages of 60 KiB from one sender (which reads what comes back), paced inside the
/// rate limit; returns their texts.
async fn broadcast(app: &TestApp, n: usize) -> Vec<String> {
    let sender = app.connect("sender").await;
    let (mut sink, mut stream) = sender.ws.split();
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let mut sent = Vec::new();
    for i in 0..n {
        let text = format!("{i:04}:{}", "x".repeat(60 * 1024));
        sink.send(Message::text(text.clone())).await.unwrap();
        sent.push(text);
        tokio::time::sleep(Duration::from_millis(12)).await;
    }
    drain.abort();
    sent
}

/// Reads until `want` broadcasts from `sender` arrived (other lines skipped); their texts.
async fn read_broadcasts(mut reader: crate::helpers::Client, want: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < want {
        let line = reader.recv_text().await;
        if let Some(text) = line.strip_prefix("Client #sender says: ") {
            got.push(text.to_owned());
        }
    }
    got
}

async fn closed_as_slow_consumer(app: &TestApp, n: u64) {
    app.wait_for_stats("stalled clients closed as slow_consumer", |s| {
        s["global_stats"]["disconnects"]["slow_consumer"] == n
    })
    .await;
}

/// 8.4 MB in all: more than the kernel's send buffer takes for a client that does not read
/// (4 MiB at most by default), so the server holds the rest.
const N: usize = 140;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_process_ceiling_the_stalled_are_shed_and_readers_get_everything_in_order() {
    const STALLED: usize = 30;
    let app = spawn_app_with(|s| {
        s.limits.max_outbound_bytes = 1 << 20;
        s.limits.messages_per_second = 100.0;
    })
    .await;
    let mut held = Vec::new();
    for i in 0..STALLED {
        held.push(stalled(&app, &format!("stalled-{i}")).await);
    }
    let readers: Vec<_> = futures_util::future::join_all((0..3).map(|i| {
        let app = &app;
        async move { app.connect(&format!("reader-{i}")).await }
    }))
    .await;
    app.wait_for_active(STALLED as u64 + 3).await;
    let reading: Vec<_> = readers
        .into_iter()
        .map(|r| tokio::spawn(read_broadcasts(r, N)))
        .collect();
    let sent = broadcast(&app, N).await;
    for r in reading {
        assert_eq!(r.await.unwrap(), sent, "every broadcast, in order");
    }
    closed_as_slow_consumer(&app, STALLED as u64).await;
    let metrics = scrape(&app).await;
    let shed = value(
        &metrics,
        "websocket_server_send_queue_sheds_total",
        &[("budget", "process")],
    );
    assert!(shed >= 1.0, "the process ceiling shed: {shed}");
    // Everything they held was given back.
    app.wait_for_stats("nothing held", |s| {
        s["connections"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["queue_bytes"] == 0))
    })
    .await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_own_byte_share_is_closed_as_slow_consumer() {
    let app = spawn_app_with(|s| {
        s.websocket.outbound_queue_bytes = 256 * 1024;
        s.limits.messages_per_second = 100.0;
    })
    .await;
    let held = stalled(&app, "stalled").await;
    let reader = app.connect("reader").await;
    app.wait_for_active(2).await;
    let reading = tokio::spawn(read_broadcasts(reader, N));
    let sent = broadcast(&app, N).await;
    assert_eq!(reading.await.unwrap(), sent);
    closed_as_slow_consumer(&app, 1).await;
    let metrics = scrape(&app).await;
    let shed = value(
        &metrics,
        "websocket_server_send_queue_sheds_total",
        &[("budget", "connection")],
    );
    assert_eq!(shed, 1.0);
    drop(held);
}
