//! Health probes and shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wsmon::http::{monitoring_router, Monitoring, MonitoringSettings};
use wsmon::monitor::Registry;

use crate::helpers::{spawn_app, RECV_TIMEOUT};

#[tokio::test]
async fn healthz_and_readyz_answer_200_while_serving() {
    let app = spawn_app().await;
    assert_eq!(app.get_json("/healthz").await.0, 200);
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
}

#[tokio::test]
async fn readyz_turns_503_once_shutdown_begins() {
    // The monitoring routes on their own, as another application would mount them.
    let shutdown = CancellationToken::new();
    let monitoring = Monitoring::new(
        Registry::new(Duration::from_secs(300)),
        MonitoringSettings::default(),
        shutdown.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, monitoring_router(monitoring)).await });
    let url = format!("http://{addr}/readyz");

    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    shutdown.cancel();
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "shutting_down");
}

#[tokio::test]
async fn shutdown_closes_every_websocket_with_1001_and_the_server_stops() {
    let app = spawn_app().await;
    let mut a = app.connect("a").await;
    let mut b = app.connect("b").await;
    app.wait_for_active(2).await;

    app.shutdown.cancel();

    assert_eq!(a.expect_close().await, (1001, "server_shutdown".into()));
    assert_eq!(b.expect_close().await, (1001, "server_shutdown".into()));
    let result = tokio::time::timeout(RECV_TIMEOUT, app.server)
        .await
        .expect("server stops within the grace period")
        .expect("server task");
    assert!(result.is_ok(), "{result:?}");
}
