//! Hostile input: each gets its documented close code or HTTP error, is counted by reason,
//! and leaves everyone else chatting.

use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{encode, spawn_app, Client, TestApp, RECV_TIMEOUT};

/// Asserts the bystander still chats normally.
async fn still_chatting(bystander: &mut Client) {
    bystander.send("still here").await;
    assert_eq!(bystander.recv_text().await, "You sent: still here");
    assert_eq!(
        bystander.recv_text().await,
        format!("Client #{} says: still here", bystander.id)
    );
}

async fn assert_disconnect_counted(app: &TestApp, reason: &str) {
    app.wait_for_stats(reason, |s| s["global_stats"]["disconnects"][reason] == 1)
        .await;
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009_and_others_keep_chatting() {
    let app = spawn_app().await;
    let mut bystander = app.connect("bystander").await;
    let mut big = app.connect("big").await;

    big.send(&"x".repeat(64 * 1024 + 1)).await;

    assert_eq!(big.expect_close().await, (1009, "message_too_big".into()));
    assert_eq!(bystander.recv_text().await, "Client #big left the chat");
    assert_disconnect_counted(&app, "message_too_big").await;
    still_chatting(&mut bystander).await;
}

#[tokio::test]
async fn a_message_at_the_limit_is_accepted() {
    let app = spawn_app().await;
    let mut c = app.connect("edge").await;
    let text = "y".repeat(64 * 1024);
    c.send(&text).await;
    assert_eq!(c.recv_text().await, format!("You sent: {text}"));
}

#[tokio::test]
async fn a_binary_frame_closes_with_1003_and_others_keep_chatting() {
    let app = spawn_app().await;
    let mut bystander = app.connect("bystander").await;
    let mut bin = app.connect("bin").await;

    bin.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();

    assert_eq!(bin.expect_close().await, (1003, "unsupported_data".into()));
    assert_eq!(bystander.recv_text().await, "Client #bin left the chat");
    assert_disconnect_counted(&app, "unsupported_data").await;
    still_chatting(&mut bystander).await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_and_others_keep_chatting() {
    let app = spawn_app().await;
    let mut bystander = app.connect("bystander").await;
    let mut bad = app.connect("bad").await;

    let frame = Frame::message(vec![0x68u8, 0xff, 0xfe], OpCode::Data(Data::Text), true);
    bad.ws.send(Message::Frame(frame)).await.unwrap();

    assert_eq!(bad.expect_close().await, (1007, "invalid_payload".into()));
    assert_eq!(bystander.recv_text().await, "Client #bad left the chat");
    assert_disconnect_counted(&app, "invalid_payload").await;
    still_chatting(&mut bystander).await;
}

/// Performs the opening handshake by hand and returns the raw socket.
async fn raw_upgrade(app: &TestApp, client_id: &str) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /ws/{client_id} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        app.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(RECV_TIMEOUT, tcp.read_exact(&mut byte))
            .await
            .expect("handshake response")
            .unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

#[tokio::test]
async fn a_protocol_violation_closes_with_1002_and_others_keep_chatting() {
    let app = spawn_app().await;
    let mut bystander = app.connect("bystander").await;
    let mut tcp = raw_upgrade(&app, "rogue").await;

    // FIN + RSV1 (no extension negotiated) + text opcode; masked, empty payload.
    tcp.write_all(&[0xC1, 0x80, 0, 0, 0, 0]).await.unwrap();

    let mut frame = [0u8; 4];
    tokio::time::timeout(RECV_TIMEOUT, tcp.read_exact(&mut frame))
        .await
        .expect("close frame")
        .unwrap();
    assert_eq!(frame[0], 0x88, "a close frame");
    assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1002);
    assert_eq!(bystander.recv_text().await, "Client #rogue left the chat");
    assert_disconnect_counted(&app, "client_protocol_error").await;
    still_chatting(&mut bystander).await;
}

#[tokio::test]
async fn invalid_client_ids_are_refused_with_400_and_json_before_the_upgrade() {
    let app = spawn_app().await;
    let long = "a".repeat(65);
    let cases = [
        "/ws/".to_string(),
        format!("/ws/{long}"),
        "/ws/a%0Ab".into(),
        "/ws/nul%00".into(),
        "/ws/esc%1B%5B31m".into(),
        "/ws/bad%FFutf8".into(),
    ];
    for path in &cases {
        let response = app
            .http
            .get(app.url(path))
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client_id", "{path}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("client_id"),
            "{body}"
        );
    }
    let stats = app.stats().await;
    assert_eq!(
        stats["global_stats"]["rejections"]["invalid_client_id"],
        cases.len() as u64
    );
    assert_eq!(stats["global_stats"]["total_connections"], 0);
}

#[tokio::test]
async fn any_other_unicode_client_id_is_accepted_and_stays_data() {
    let app = spawn_app().await;
    let id = "用户 <img src=x onerror=\"alert(1)\"> & Zoë";
    let mut c = app.connect(id).await;
    c.send("hi").await;
    assert_eq!(c.recv_text().await, "You sent: hi");
    assert_eq!(c.recv_text().await, format!("Client #{id} says: hi"));
    let stats = app.stats().await;
    assert_eq!(stats["connections"][0]["client_id"], id);
    assert_eq!(encode("a b"), "a%20b"); // the helper really encodes
}

#[tokio::test]
async fn a_plain_http_request_to_the_chat_route_gets_a_json_400() {
    let app = spawn_app().await;
    let (status, body) = app.get_json("/ws/alice").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "bad_upgrade");
    let stats = app.stats().await;
    assert_eq!(stats["global_stats"]["rejections"]["bad_upgrade"], 1);
}
