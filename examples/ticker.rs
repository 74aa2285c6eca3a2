//! A live price ticker that is not a chat, monitored by wsmon's core: every connection is in the
//! registry, with its span and metrics; `/ws-stats`, `/api/v1/connections` (kick included),
//! `/metrics` and `/admin` work unchanged.
//!
//! Run: `cargo run --example ticker`, then connect to `ws://127.0.0.1:8001/ticker/<your-id>`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wsmon::http::{monitoring_router, Monitoring, MonitoringSettings};
use wsmon::monitor::{
    CloseReason, ConnectionGuard, ConnectionInfo, Outcome, Registry, RegistryOptions,
};

async fn subscribe(
    State(registry): State<Registry>,
    Path(client_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let mut info = ConnectionInfo::new(client_id);
    info.address = Some(peer.ip());
    info.route = Some("/ticker/{client_id}");
    let guard = registry.register(info);
    let span = guard.span().clone();
    ws.read_buffer_size(1024)
        .on_upgrade(move |socket| stream_prices(socket, guard).instrument(span))
}

async fn stream_prices(mut socket: WebSocket, mut guard: ConnectionGuard) {
    let entry = guard.entry().clone();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut price = 100.0_f64;
    let outcome = loop {
        tokio::select! {
            _ = tick.tick() => {
                price *= 1.0 + (entry.age().subsec_nanos() % 7) as f64 / 1000.0 - 0.003;
                let text = format!("{{\"symbol\":\"WSM\",\"price\":{price:.2}}}");
                let len = text.len();
                if socket.send(Message::text(text)).await.is_err() {
                    break Outcome { reason: CloseReason::ClientGone, code_sent: None, code_received: None };
                }
                entry.record_sent(len);
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| f.code);
                    break Outcome { reason: CloseReason::ClientClosed, code_sent: code, code_received: code };
                }
                Some(Ok(msg)) => entry.record_received(msg.into_data().len()),
                _ => break Outcome { reason: CloseReason::ClientGone, code_sent: None, code_received: None },
            },
            reason = entry.close_requested() => {
                let frame = reason.server_code().map(|code| CloseFrame { code, reason: reason.as_str().into() });
                let _ = socket.send(Message::Close(frame)).await;
                break Outcome::server(reason);
            }
        }
    };
    if outcome.reason == CloseReason::ClientClosed {
        // The answer to the client's close frame is queued: flush it out.
        let _ = futures_util::SinkExt::close(&mut socket).await;
    }
    guard.set_outcome(outcome); // the guard's drop releases the connection and counts the reason
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    wsmon::telemetry::init(&Default::default());
    let metrics = wsmon::telemetry::metrics::build(None);
    let registry = Registry::with_options(RegistryOptions {
        idle_after: Duration::from_secs(300),
        trace_url_template: String::new(),
        metrics: metrics.metrics.connections(),
        brief_disconnect_share: 1.0,
    });
    let monitoring = Monitoring::new(
        registry.clone(),
        MonitoringSettings::default(),
        CancellationToken::new(),
    )
    .with_prometheus(metrics.prometheus)
    .with_metrics(metrics.metrics);
    let app = Router::new()
        .route("/ticker/{client_id}", get(subscribe))
        .with_state(registry)
        .merge(monitoring_router(monitoring));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8001").await?;
    tracing::info!(
        "ticker on ws://127.0.0.1:8001/ticker/<id>, dashboard on http://127.0.0.1:8001/admin"
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
