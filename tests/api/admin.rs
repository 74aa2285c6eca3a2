//! `/admin`: the embedded page is safe to serve, and its event stream pushes live data.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_with, TestApp, RECV_TIMEOUT};

#[tokio::test]
async fn the_dashboard_is_served_with_a_strict_csp_and_no_external_resources() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/admin")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let html = response.text().await.unwrap();
    assert!(html.contains(r#"<script src="/admin/app.js""#));
    for vendored in [
        "/admin/vendor/uPlot.iife.min.js",
        "/admin/vendor/uPlot.min.css",
    ] {
        assert!(html.contains(vendored));
        let r = app.http.get(app.url(vendored)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{vendored} is embedded");
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external URLs"
    );
    assert!(!html.contains("<script>"), "no inline script");

    let js = app.http.get(app.url("/admin/app.js")).send().await.unwrap();
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let js = js.text().await.unwrap();
    assert!(js.contains("textContent"));
    assert!(
        !js.contains("innerHTML") && !js.contains("insertAdjacentHTML"),
        "data is never markup"
    );
    let css = app
        .http
        .get(app.url("/admin/app.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), 200);
}

/// Reads server-sent events until one satisfies `check`.
async fn next_update(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buf: &mut String,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                let update: Value = serde_json::from_str(data).unwrap();
                if check(&update) {
                    return update;
                }
            }
        }
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("an update in time")
            .expect("stream open")
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

async fn open_stream(app: &TestApp) -> reqwest::Response {
    let response = app.http.get(app.url("/admin/events")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    response
}

#[tokio::test]
async fn the_event_stream_pushes_live_totals_and_the_duration_histogram() {
    let app = spawn_app_with(|s| s.admin.push_interval_ms = 50).await;
    let mut body = open_stream(&app).await.bytes_stream();
    let mut buf = String::new();
    let first = next_update(&mut body, &mut buf, |_| true).await;
    assert_eq!(first["global_stats"]["active_connections"], 0);

    let mut c = app.connect("<b>live</b>").await;
    let update = next_update(&mut body, &mut buf, |u| {
        u["global_stats"]["active_connections"] == 1
    })
    .await;
    assert!(
        update.get("connections").is_none(),
        "rows come from the paged API"
    );

    c.send("ping").await;
    next_update(&mut body, &mut buf, |u| {
        u["global_stats"]["messages_received"] == 1
    })
    .await;
    drop(c);
    let last = next_update(&mut body, &mut buf, |u| {
        u["global_stats"]["active_connections"] == 0
    })
    .await;
    // The ended connection lasted under a second: first duration bucket (le 1 s).
    let buckets = last["global_stats"]["connection_durations"]
        .as_array()
        .unwrap();
    assert_eq!(
        buckets.len(),
        wsmon::telemetry::names::DURATION_BUCKETS.len() + 1
    );
    assert_eq!(buckets[0]["le"], 1.0);
    assert_eq!(buckets[0]["count"], 1);
    assert_eq!(buckets.last().unwrap()["le"], serde_json::Value::Null);
    let total: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 1);
}

#[tokio::test]
async fn search_finds_connections_by_client_id_or_address_in_any_sort_order() {
    let app = spawn_app().await;
    let _a = app.connect("Alice-phone").await;
    let _b = app.connect("bob").await;
    let _c = app.connect("alice-laptop").await;
    app.wait_for_active(3).await;
    for sort in ["oldest", "newest", "idle"] {
        let (status, page) = app
            .get_json(&format!("/api/v1/connections?search=ALICE&sort={sort}"))
            .await;
        assert_eq!(status, 200);
        let mut ids: Vec<_> = page["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["client_id"].as_str().unwrap().to_owned())
            .collect();
        if sort == "newest" {
            assert_eq!(ids, ["alice-laptop", "Alice-phone"]);
        }
        ids.sort();
        assert_eq!(ids, ["Alice-phone", "alice-laptop"], "{sort}");
    }
    let (_, page) = app
        .get_json("/api/v1/connections?search=127.0.0&limit=2")
        .await;
    assert_eq!(page["connections"].as_array().unwrap().len(), 2);
    assert!(page["next_cursor"].is_string(), "by address, paged");
    let (_, whoami) = app.get_json("/api/v1/whoami").await;
    assert_eq!(whoami["role"], "open");
}

#[tokio::test]
async fn dashboard_streams_are_bounded() {
    let app = spawn_app_with(|s| s.admin.max_streams = 1).await;
    let _first = open_stream(&app).await;
    let second = app.http.get(app.url("/admin/events")).send().await.unwrap();
    assert_eq!(second.status(), 503);
    assert!(second.headers().contains_key("retry-after"));
    drop(_first);
    // The permit returns when the first stream closes.
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        let r = app.http.get(app.url("/admin/events")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "permit never returned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
