//! The tutorial's chat contract, exactly, and delivery guarantees under concurrency.

use std::collections::HashMap;
use std::time::Duration;

use crate::helpers::{spawn_app, spawn_app_with, Client};

#[tokio::test]
async fn a_message_gets_the_personal_reply_and_is_broadcast_to_everyone() {
    let app = spawn_app().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;

    alice.send("hello there").await;

    assert_eq!(alice.recv_text().await, "You sent: hello there");
    assert_eq!(alice.recv_text().await, "Client #alice says: hello there");
    assert_eq!(bob.recv_text().await, "Client #alice says: hello there");
    bob.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_clean_close_tells_the_others_and_releases_the_connection() {
    let app = spawn_app().await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    app.wait_for_active(2).await;

    alice.ws.close(None).await.unwrap();

    assert_eq!(bob.recv_text().await, "Client #alice left the chat");
    let stats = app.wait_for_active(1).await;
    assert_eq!(stats["global_stats"]["disconnects"]["client_closed"], 1);
    assert_eq!(stats["connections"][0]["client_id"], "bob");
}

#[tokio::test]
async fn a_dropped_tcp_connection_tells_the_others_and_releases_the_connection() {
    let app = spawn_app().await;
    let alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    app.wait_for_active(2).await;

    drop(alice); // FIN without a close frame

    assert_eq!(bob.recv_text().await, "Client #alice left the chat");
    let stats = app.wait_for_active(1).await;
    assert_eq!(stats["global_stats"]["disconnects"]["client_gone"], 1);
}

#[tokio::test]
async fn a_reset_tcp_connection_tells_the_others_and_releases_the_connection() {
    let app = spawn_app().await;
    let alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    app.wait_for_active(2).await;

    if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = alice.ws.get_ref() {
        tcp.set_zero_linger().unwrap();
    }
    drop(alice); // RST

    assert_eq!(bob.recv_text().await, "Client #alice left the chat");
    let stats = app.wait_for_active(1).await;
    assert_eq!(stats["global_stats"]["disconnects"]["client_gone"], 1);
}

#[tokio::test]
async fn counters_are_exact_for_a_scripted_session() {
    const N: usize = 3;
    const M: usize = 5;
    let app = spawn_app().await;
    let mut clients = Vec::new();
    for i in 0..N {
        clients.push(app.connect(&format!("c{i}")).await);
    }
    app.wait_for_active(N as u64).await;

    for (i, c) in clients.iter_mut().enumerate() {
        for m in 0..M {
            c.send(&format!("{i}-{m}")).await;
        }
    }
    // Each client receives its M personal replies and N*M broadcasts.
    for c in &mut clients {
        for _ in 0..M + N * M {
            c.recv_text().await;
        }
    }

    let total_sent = (N * M * (1 + N)) as u64;
    let stats = app
        .wait_for_stats("every frame counted", |s| {
            s["global_stats"]["messages_sent"] == total_sent
        })
        .await;
    let g = &stats["global_stats"];
    assert_eq!(g["messages_received"], (N * M) as u64);
    assert_eq!(g["total_connections"], N as u64);
    assert_eq!(g["active_connections"], N as u64);
    for conn in stats["connections"].as_array().unwrap() {
        assert_eq!(conn["messages_received"], M as u64, "{conn}");
        assert_eq!(conn["messages_sent"], (M + N * M) as u64, "{conn}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_each_receive_every_broadcast_once_and_in_order() {
    const N: usize = 100;
    const M: usize = 20;
    let app = spawn_app().await;
    let mut clients = Vec::new();
    for i in 0..N {
        clients.push(app.connect(&format!("u{i}")).await);
    }
    app.wait_for_active(N as u64).await;

    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                // next expected message number per sender
                let mut next: HashMap<String, usize> = HashMap::new();
                let mut sent = 0;
                let mut own_replies = 0;
                c.send("0").await;
                sent += 1;
                let mut broadcasts = 0;
                while broadcasts < N * M || own_replies < M {
                    let text = c.recv_text().await;
                    if let Some(body) = text.strip_prefix("You sent: ") {
                        assert_eq!(body, own_replies.to_string(), "{}: reply order", c.id);
                        own_replies += 1;
                        // Pace on our own reply, as an interactive client would.
                        if sent < M {
                            c.send(&sent.to_string()).await;
                            sent += 1;
                        }
                        continue;
                    }
                    let rest = text.strip_prefix("Client #").expect("a broadcast");
                    let (sender, body) = rest.split_once(" says: ").expect("says");
                    let expected = next.entry(sender.to_owned()).or_default();
                    assert_eq!(body, expected.to_string(), "{}: order from {sender}", c.id);
                    *expected += 1;
                    broadcasts += 1;
                }
                assert_eq!(next.len(), N, "{}: heard from every sender", c.id);
                assert!(next.values().all(|&n| n == M), "{}: {next:?}", c.id);
                c
            })
        })
        .collect();
    let mut clients: Vec<Client> = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("client task"));
    }
    // Exactly once: nothing more arrives.
    for c in clients.iter_mut().take(5) {
        c.expect_silence(Duration::from_millis(100)).await;
    }
    let stats = app.stats().await;
    assert_eq!(stats["global_stats"]["disconnects"]["slow_consumer"], 0);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_slow_consumer_without_delaying_others() {
    let app = spawn_app_with(|s| {
        s.websocket.outbound_queue = 8;
        s.websocket.send_timeout_ms = 500;
    })
    .await;
    let mut stalled = app.connect("stalled").await;
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect("bob").await;
    app.wait_for_active(3).await;

    // Large messages fill the stalled client's socket buffers quickly.
    let payload = "x".repeat(60 * 1024);
    let left = "Client #stalled left the chat";
    let (mut alice_saw_leave, mut bob_saw_leave) = (false, false);
    async fn next_skipping(c: &mut Client, skip: &str, seen: &mut bool) -> String {
        let text = c.recv_text().await;
        if text == skip {
            *seen = true;
            return c.recv_text().await;
        }
        text
    }
    for i in 0..200 {
        let text = format!("{i}:{payload}");
        alice.send(&text).await;
        let reply = next_skipping(&mut alice, left, &mut alice_saw_leave).await;
        assert_eq!(reply, format!("You sent: {text}"));
        let echo = next_skipping(&mut alice, left, &mut alice_saw_leave).await;
        assert_eq!(echo, format!("Client #alice says: {text}"));
        let heard = next_skipping(&mut bob, left, &mut bob_saw_leave).await;
        assert_eq!(heard, format!("Client #alice says: {text}"));
    }

    let stats = app
        .wait_for_stats("the stalled client closed", |s| {
            s["global_stats"]["disconnects"]["slow_consumer"] == 1
        })
        .await;
    assert_eq!(stats["global_stats"]["active_connections"], 2);
    if !bob_saw_leave {
        assert_eq!(bob.recv_text().await, left);
    }
    // The stalled client's socket ends: a close frame or EOF after the buffered messages.
    let end = tokio::time::timeout(crate::helpers::RECV_TIMEOUT, async {
        use futures_util::StreamExt;
        loop {
            match stalled.ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stalled connection ends");
    match end {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), 1008);
            assert_eq!(f.reason.as_str(), "slow_consumer");
        }
        None | Some(Err(_)) => {} // the close frame could not be written in time
        other => panic!("unexpected {other:?}"),
    }
    let _ = stalled.ws.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_2000_churn_cycles_every_connection_is_released_counted_once_and_no_task_leaks() {
    const WAVES: usize = 20;
    const PER_WAVE: usize = 100;
    let app = spawn_app().await;
    for wave in 0..WAVES {
        let mut clients = Vec::new();
        for i in 0..PER_WAVE {
            clients.push(app.connect(&format!("w{wave}-{i}")).await);
        }
        app.wait_for_active(PER_WAVE as u64).await;
        // Everyone chats once before leaving.
        clients[0].send("hi").await;
        for (i, mut c) in clients.into_iter().enumerate() {
            match i % 3 {
                0 => c.ws.close(None).await.unwrap(),
                1 => drop(c),
                _ => {
                    if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = c.ws.get_ref() {
                        tcp.set_zero_linger().unwrap();
                    }
                    drop(c)
                }
            }
        }
        app.wait_for_active(0).await;
    }
    let stats = app.stats().await;
    let g = &stats["global_stats"];
    let total = (WAVES * PER_WAVE) as u64;
    assert_eq!(g["total_connections"], total);
    let counted: u64 = g["disconnects"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(counted, total, "each disconnect counted exactly once: {g}");
    assert_eq!(
        g["disconnects"]["client_closed"],
        (WAVES * PER_WAVE.div_ceil(3)) as u64
    );
    assert_eq!(stats["connections"].as_array().unwrap().len(), 0);
    let (_, page) = app.get_json("/api/v1/connections").await;
    assert_eq!(page["connections"].as_array().unwrap().len(), 0);
    assert!(app.registry.scan_all().is_empty());
    // No leaked tasks: every session task has ended.
    let deadline = tokio::time::Instant::now() + crate::helpers::RECV_TIMEOUT;
    while !app.sessions.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} session tasks left",
            app.sessions.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
