//! A server-initiated close reaches a client that is still sending: the session reads and
//! discards until the client answers (a lingering close), so the close frame is not thrown away
//! by a reset. Each test asserts the code the client *received*, never "closed somehow".

use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{spawn_app, spawn_app_with, Client, RECV_TIMEOUT};

/// Splits `client`: a task sends `text` (as fast as the socket takes it, or one per `pace`),
/// until sending fails;
/// the returned future reads everything until the close frame, and gives its code and reason
/// (or panics on EOF, reset or timeout).
async fn flood_and_read_until_close(
    client: Client,
    text: &'static str,
    pace: Option<Duration>,
) -> (u16, String) {
    // Big frames keep the server's receive buffer full, as a real flood does.
    let text: &'static str = if pace.is_none() {
        Box::leak(text.repeat(8 * 1024 / text.len()).into_boxed_str())
    } else {
        text
    };
    let (mut sink, mut stream) = client.ws.split();
    let writer = tokio::spawn(async move {
        let mut sent = 0u64;
        while sink.send(Message::text(text)).await.is_ok() {
            sent += 1;
            match pace {
                Some(pace) => tokio::time::sleep(pace).await,
                None if sent % 64 == 0 => tokio::task::yield_now().await,
                None => {}
            }
            if sent > 2_000_000 {
                break;
            }
        }
        sent
    });
    // The client reads everything, in bursts every 50 ms as a busy event loop does: a close
    // frame waits in its socket buffer for a moment, where a reset would destroy it.
    let end = tokio::time::timeout(RECV_TIMEOUT, async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            while let Some(next) = stream.next().now_or_never() {
                match next {
                    Some(Ok(Message::Close(Some(f)))) => {
                        return Ok((u16::from(f.code), f.reason.to_string()))
                    }
                    Some(Ok(Message::Close(None))) => return Ok((1005, String::new())),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("error before a close frame: {e}")),
                    None => return Err("EOF before a close frame".to_owned()),
                }
            }
        }
    })
    .await
    .expect("the close frame within the receive timeout");
    writer.abort();
    end.unwrap_or_else(|e| panic!("{e}"))
}

/// Chatting clients send a message every millisecond: busy, but not slow consumers.
const PACE: Option<Duration> = Some(Duration::from_millis(1));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_but_keeps_flooding_receives_1008_rate_limited() {
    let app = spawn_app_with(|s| {
        s.limits.messages_per_second = 1.0;
        s.limits.message_burst = 1;
        s.limits.rate_limit_close_drops = 50;
    })
    .await;
    let flooder = app.connect("flooder").await;
    let got = flood_and_read_until_close(flooder, "flood", None).await;
    assert_eq!(got, (1008, "rate_limited".into()));
    app.wait_for_stats("rate_limited", |s| {
        s["global_stats"]["disconnects"]["rate_limited"] == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_kicked_while_it_chats_receives_4003() {
    let app = spawn_app().await;
    let chatty = app.connect("chatty").await;
    let id = app.connection_id("chatty").await;
    let http = app.http.clone();
    let url = app.url(&format!("/api/v1/connections/{id}"));
    let kick = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        http.delete(url).send().await.unwrap().status().as_u16()
    });
    let got = flood_and_read_until_close(chatty, "still talking", PACE).await;
    assert_eq!(kick.await.unwrap(), 202);
    assert_eq!(got, (4003, "admin_kick".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_chatting_through_a_shutdown_receive_1001() {
    let app = spawn_app().await;
    let mut floods = Vec::new();
    for i in 0..5 {
        let c = app.connect(&format!("talker{i}")).await;
        floods.push(tokio::spawn(flood_and_read_until_close(c, "talking", PACE)));
    }
    app.wait_for_active(5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.shutdown.cancel();
    for f in floods {
        assert_eq!(f.await.unwrap(), (1001, "server_shutdown".into()));
    }
}

/// 1009 reaches a client that was not reading when its message was refused: the close frame
/// waits in the server's send queue behind what the client has not read yet, and the rest of
/// the oversized frame sits unread in the server's receive queue, so closing the socket at once
/// would reset the connection and throw the close frame away. The server keeps the socket until
/// the client has everything (or `websocket.close_timeout_ms`).
#[tokio::test]
async fn message_too_big_reaches_a_client_that_was_not_reading_when_it_was_refused() {
    const BROADCASTS: usize = 12;
    let app = spawn_app_with(|s| {
        s.websocket.max_message_size = 2048;
        s.websocket.max_frame_size = 2048;
    })
    .await;
    // A small receive window: most of what the server sends it waits in the server's queue.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(app.addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(app.ws_url("slow"), tcp)
        .await
        .unwrap();
    let mut talker = app.connect("talker").await;
    let line = "x".repeat(1_000);
    for _ in 0..BROADCASTS {
        talker.send(&line).await;
        talker.recv_text().await;
        talker.recv_text().await;
    }
    // Not reading, the slow client sends one message far over the limit.
    slow.send(Message::text("y".repeat(256 * 1024)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Now it reads: every broadcast, then the close frame.
    let mut texts = 0;
    let code = loop {
        match tokio::time::timeout(RECV_TIMEOUT, slow.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(_))) => texts += 1,
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            other => panic!("after {texts} texts: {other:?}"),
        }
    };
    assert_eq!((texts, code), (BROADCASTS, 1009));
}
