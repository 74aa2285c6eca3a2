//! `/ws-stats`: the tutorial's shape and types, plus wsmon's extra fields.

use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_with};

fn is_rfc3339_utc(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.ends_with('Z')
            && s.len() >= 20
            && s.as_bytes()[10] == b'T'
            && s[..4].parse::<u16>().is_ok()
    })
}

#[tokio::test]
async fn ws_stats_keeps_the_tutorial_fields_and_types() {
    let app = spawn_app().await;
    let mut c = app.connect("alice").await;
    c.send("one").await;
    c.recv_text().await;
    c.recv_text().await;

    let stats = app
        .wait_for_stats("2 frames sent", |s| s["global_stats"]["messages_sent"] == 2)
        .await;

    let g = &stats["global_stats"];
    for key in [
        "total_connections",
        "active_connections",
        "messages_received",
        "messages_sent",
    ] {
        assert!(g[key].is_u64(), "global_stats.{key} is an integer: {g}");
    }
    assert_eq!(g["total_connections"], 1);
    assert_eq!(g["active_connections"], 1);
    assert_eq!(g["messages_received"], 1);
    let conns = stats["connections"]
        .as_array()
        .expect("connections is a list");
    assert_eq!(conns.len(), 1);
    let conn = &conns[0];
    let id = conn["connection_id"]
        .as_str()
        .expect("connection_id is a string");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id} is a UUID");
    assert_eq!(conn["client_id"], "alice");
    assert!(is_rfc3339_utc(&conn["connected_at"]), "{conn}");
    assert!(is_rfc3339_utc(&conn["last_activity"]), "{conn}");
    assert_eq!(conn["messages_received"], 1);
    assert_eq!(conn["messages_sent"], 2);
    assert!(conn["duration"].is_f64(), "duration is a float: {conn}");
    assert!(conn["duration"].as_f64().unwrap() >= 0.0);
}

#[tokio::test]
async fn ws_stats_adds_address_agent_bytes_idle_queue_trace_and_disconnect_counts() {
    let app = spawn_app().await;
    let mut c = app
        .connect_with("alice", &[("user-agent", "wsmon-test/1.0")])
        .await;
    c.send("four").await;
    c.recv_text().await;
    c.recv_text().await;
    let stats = app
        .wait_for_stats("frames counted", |s| {
            s["global_stats"]["messages_sent"] == 2
        })
        .await;

    let conn = &stats["connections"][0];
    assert_eq!(conn["client_address"], "127.0.0.1");
    assert_eq!(conn["user_agent"], "wsmon-test/1.0");
    assert_eq!(conn["bytes_received"], 4);
    let expected_out = "You sent: four".len() + "Client #alice says: four".len();
    assert_eq!(conn["bytes_sent"], expected_out as u64);
    assert_eq!(conn["idle"], false);
    assert_eq!(conn["queue_depth"], 0);
    assert_eq!(conn["trace_id"], "");
    let disconnects = stats["global_stats"]["disconnects"].as_object().unwrap();
    for reason in wsmon::monitor::CloseReason::ALL {
        assert_eq!(disconnects[reason.as_str()], 0, "{}", reason.as_str());
    }
    let rejections = stats["global_stats"]["rejections"].as_object().unwrap();
    assert_eq!(rejections.len(), wsmon::monitor::RejectReason::ALL.len());
}

#[tokio::test]
async fn a_connection_without_messages_for_idle_after_is_flagged_idle() {
    let app = spawn_app_with(|s| s.monitor.idle_after_secs = 1).await;
    let _c = app.connect("sleepy").await;
    let stats = app
        .wait_for_stats("idle flag", |s| s["connections"][0]["idle"] == true)
        .await;
    assert!(stats["connections"][0]["idle_seconds"].as_f64().unwrap() >= 1.0);
}

#[tokio::test]
async fn forwarded_headers_are_believed_only_from_trusted_proxies() {
    let trusting = spawn_app_with(|s| s.server.trusted_proxies = vec!["127.0.0.0/8".into()]).await;
    let _c = trusting
        .connect_with("proxied", &[("x-forwarded-for", "203.0.113.7")])
        .await;
    let stats = trusting.wait_for_active(1).await;
    assert_eq!(stats["connections"][0]["client_address"], "203.0.113.7");

    let untrusting = spawn_app().await;
    let _c = untrusting
        .connect_with("spoofer", &[("x-forwarded-for", "203.0.113.7")])
        .await;
    let stats = untrusting.wait_for_active(1).await;
    assert_eq!(stats["connections"][0]["client_address"], "127.0.0.1");
}

#[tokio::test]
async fn ws_stats_lists_a_bounded_number_of_connections_and_says_so() {
    let app = spawn_app_with(|s| s.monitor.ws_stats_max_connections = 2).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(app.connect(&format!("c{i}")).await);
    }
    let stats = app.wait_for_active(3).await;
    let listed: Vec<_> = stats["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ["c0", "c1"], "oldest first");
    assert_eq!(stats["connections_truncated"], true);
}
