//! Storms: many clients vanishing at once (a network path dying, a load balancer restarting)
//! are recorded as what they are, `client_gone`, never as the slow consumers their pending
//! leave notices would make them look like.

use crate::helpers::{spawn_app_with, Client, TestApp};
use crate::metrics::{scrape, value};

/// Connects `n` clients, a few at a time.
async fn connect_many(app: &TestApp, prefix: &str, n: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let batch = chunk.iter().map(|i| {
            let id = format!("{prefix}-{i}");
            async move { app.connect(&id).await }
        });
        clients.extend(futures_util::future::join_all(batch).await);
    }
    clients
}

/// Drops every client's socket without a closing handshake: half of them reset (SO_LINGER 0,
/// as when a middlebox kills the path), half with a bare FIN (as when a process dies).
fn vanish(clients: Vec<Client>) {
    for (i, client) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = client.ws.get_ref() {
                tcp.set_zero_linger().unwrap();
            }
        }
        drop(client);
    }
}

async fn storm(flavour_note: &str, n: usize, queue: usize) {
    let app = spawn_app_with(|s| {
        // Far fewer slots than departures: every survivor's queue overflows with leave notices
        // long before the storm is over.
        s.websocket.outbound_queue = queue;
    })
    .await;
    let clients = connect_many(&app, "storm", n).await;
    app.wait_for_active(n as u64).await;

    vanish(clients);
    let stats = app.wait_for_active(0).await;

    let disconnects = &stats["global_stats"]["disconnects"];
    assert_eq!(
        disconnects["client_gone"], n as u64,
        "{flavour_note}: every vanished client is client_gone: {disconnects:#}"
    );
    assert_eq!(disconnects["slow_consumer"], 0, "{flavour_note}");
    let metrics = scrape(&app).await;
    let closed = |reason| {
        value(
            &metrics,
            "websocket_server_connections_closed_total",
            &[("close_reason", reason)],
        )
    };
    assert_eq!(closed("client_gone"), n as f64, "{flavour_note}");
    assert_eq!(closed("slow_consumer"), 0.0, "{flavour_note}");
}

#[tokio::test]
async fn clients_vanishing_at_once_are_client_gone_not_slow_consumers() {
    storm("one thread", 400, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_at_once_on_two_threads_are_client_gone_not_slow_consumers() {
    storm("two threads", 1_000, 16).await;
}

/// A client that stays and reads everything is not a slow consumer, however many leave notices
/// a mass departure lands on it at once: it hears every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_reader_hears_every_leave_notice_of_a_departure_larger_than_its_queue() {
    const N: usize = 1_000;
    let app = spawn_app_with(|s| s.websocket.outbound_queue = 16).await;
    let mut survivor = app.connect("survivor").await;
    let clients = connect_many(&app, "storm", N).await;
    app.wait_for_active(N as u64 + 1).await;

    vanish(clients);
    survivor.hear_leaves("storm-", N).await;
    let stats = app.wait_for_active(1).await;
    let disconnects = &stats["global_stats"]["disconnects"];
    assert_eq!(disconnects["client_gone"], N as u64, "{disconnects:#}");
    assert_eq!(disconnects["slow_consumer"], 0, "{disconnects:#}");
    // Still chatting.
    survivor.send("still here").await;
    assert_eq!(survivor.recv_text().await, "You sent: still here");
}
