//! Injected faults (the `fault-injection` feature, tests only): a panic in one connection's task
//! closes that connection with 1011 `internal_error`, counted once, and nobody else notices.

use crate::helpers::spawn_app;
use crate::metrics::{scrape, value};

#[tokio::test]
async fn a_panic_in_one_connection_closes_it_with_1011_and_the_others_keep_chatting() {
    let app = spawn_app().await;
    let mut doomed = app.connect("doomed").await;
    let mut alice = app.connect("alice").await;
    app.wait_for_active(2).await;

    doomed.send(wsmon::chat::session::FAULT_PANIC).await;
    assert_eq!(doomed.expect_close().await, (1011, "internal_error".into()));
    assert_eq!(alice.recv_text().await, "Client #doomed left the chat");
    alice.send("still here").await;
    assert_eq!(alice.recv_text().await, "You sent: still here");
    assert_eq!(alice.recv_text().await, "Client #alice says: still here");

    let stats = app
        .wait_for_stats("internal_error", |s| {
            s["global_stats"]["disconnects"]["internal_error"] == 1
        })
        .await;
    assert_eq!(stats["global_stats"]["active_connections"], 1);
    let metrics = scrape(&app).await;
    let closed = value(
        &metrics,
        "websocket_server_connections_closed_total",
        &[("close_reason", "internal_error")],
    );
    let errors = value(
        &metrics,
        "websocket_server_errors_total",
        &[("error_type", "internal")],
    );
    assert_eq!((closed, errors), (1.0, 1.0));
}
