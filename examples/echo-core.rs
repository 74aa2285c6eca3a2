//! An echo server built on wsmon's monitoring core alone: the registry, the connection guard,
//! the close reasons and the metric handles, with its own two routes (`/stats`, `/metrics`).
//! Nothing of wsmon's chat, cluster or HTTP layer is used: this is what the core needs from an
//! application (a `Registry`, a guard per connection, an `Outcome` at the end).
//!
//! Run: `cargo run --example echo-core`, connect to `ws://127.0.0.1:8002/echo/<your-id>`, then
//! read `http://127.0.0.1:8002/stats` and `http://127.0.0.1:8002/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use wsmon::monitor::{
    client_id, CloseReason, ConnectionGuard, ConnectionInfo, Outcome, PageRequest, Registry,
    RegistryOptions, SortKey,
};

#[derive(Clone)]
struct App {
    registry: Registry,
    prometheus: PrometheusHandle,
}

async fn echo(
    State(app): State<App>,
    Path(client_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Result<Response, (axum::http::StatusCode, String)> {
    // The core's id rules: what a client may call itself.
    client_id::validate(&client_id, 64)
        .map_err(|e| (axum::http::StatusCode::BAD_REQUEST, e.to_string()))?;
    let mut info = ConnectionInfo::new(client_id);
    info.address = Some(peer.ip());
    info.route = Some("/echo/{client_id}");
    let guard = app.registry.register(info);
    Ok(ws.on_upgrade(move |socket| run(socket, guard)))
}

async fn run(mut socket: WebSocket, mut guard: ConnectionGuard) {
    let entry = guard.entry().clone();
    let outcome = loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    entry.record_received(text.len());
                    let len = text.len();
                    if socket.send(Message::Text(text)).await.is_err() {
                        break Outcome { reason: CloseReason::ClientGone, code_sent: None, code_received: None };
                    }
                    entry.record_sent(len);
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| f.code);
                    break Outcome { reason: CloseReason::ClientClosed, code_sent: code, code_received: code };
                }
                Some(Ok(Message::Binary(_))) => {
                    break Outcome::server(CloseReason::UnsupportedData);
                }
                Some(Ok(_)) => {}
                _ => break Outcome { reason: CloseReason::ClientGone, code_sent: None, code_received: None },
            },
            // An operator's kick, or shutdown (`Registry::close_all`).
            reason = entry.close_requested() => break Outcome::server(reason),
        }
    };
    if outcome.reason == CloseReason::ClientClosed {
        // The answer to the client's close frame is queued: flush it out.
        let _ = futures_util::SinkExt::close(&mut socket).await;
    } else if let Some(code) = outcome.code_sent {
        let frame = axum::extract::ws::CloseFrame {
            code,
            reason: outcome.reason.as_str().into(),
        };
        let _ = socket.send(Message::Close(Some(frame))).await;
    }
    guard.set_outcome(outcome); // the guard's drop releases the connection and counts the reason
}

/// The totals and the first 100 connections.
async fn stats(State(app): State<App>) -> Json<serde_json::Value> {
    let page = app.registry.page(&PageRequest {
        limit: 100,
        cursor: None,
        client_id: None,
        search: None,
        sort: SortKey::default(),
    });
    let connections: Vec<_> = page
        .map(|p| p.items.iter().map(|e| app.registry.snapshot(e)).collect())
        .unwrap_or_default();
    Json(serde_json::json!({
        "global": app.registry.global_stats(),
        "connections": connections,
    }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    wsmon::telemetry::init(&Default::default());
    let handle = wsmon::telemetry::metrics::build(None);
    let registry = Registry::with_options(RegistryOptions {
        idle_after: Duration::from_secs(60),
        trace_url_template: String::new(),
        metrics: handle.metrics.connections(),
        brief_disconnect_share: 1.0,
    });
    let app = App {
        registry,
        prometheus: handle.prometheus,
    };
    let router = Router::new()
        .route("/echo/{client_id}", get(echo))
        .route("/stats", get(stats))
        .route(
            "/metrics",
            get(|State(app): State<App>| async move { app.prometheus.render() }),
        )
        .with_state(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8002").await?;
    tracing::info!("echo on ws://127.0.0.1:8002/echo/<id>, stats on /stats and /metrics");
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
