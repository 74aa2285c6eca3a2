//! `GET /ws/{client_id}`: validates the request, registers the connection and joins the hub
//! *before* answering 101 (so a client whose handshake completed receives every later
//! broadcast), then runs the chat session on the upgraded socket.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use tokio_util::task::TaskTracker;

use super::client_addr::ClientAddress;
use super::origin::OriginPolicy;
use crate::chat::session::{self, SessionLimits};
use crate::chat::Hub;
use crate::config::WebSocketSettings;
use crate::error::ApiError;
use crate::monitor::limits::ConnectionLimiter;
use crate::monitor::{client_id, ConnectionInfo, Registry, RejectReason};
use tokio_util::sync::CancellationToken;

use crate::telemetry;

/// What the chat route needs; cheap to clone.
#[derive(Clone)]
pub struct ChatState {
    pub registry: Registry,
    pub hub: Hub,
    pub websocket: Arc<WebSocketSettings>,
    pub shutdown: CancellationToken,
    /// Tracks every session so shutdown can wait for them (bounded by the grace period).
    pub sessions: TaskTracker,
    /// Timing, limits and tracing policy of every session.
    pub session: SessionLimits,
    /// Global and per-address connection caps.
    pub limiter: ConnectionLimiter,
    pub origins: Arc<OriginPolicy>,
}

/// The route template of the chat.
pub const ROUTE: &str = "/ws/{client_id}";

/// The chat route, with its state applied.
pub fn router(state: ChatState) -> Router {
    Router::new()
        .route(ROUTE, get(upgrade))
        .route("/ws/", get(empty_client_id))
        .with_state(state)
}

/// `/ws/` has no client id at all: the same 400 as any other invalid id.
async fn empty_client_id(State(state): State<ChatState>) -> ApiError {
    state
        .registry
        .record_rejection(RejectReason::InvalidClientId);
    ApiError::Rejected(
        RejectReason::InvalidClientId,
        client_id::InvalidClientId::Empty.to_string(),
    )
}

async fn upgrade(
    State(state): State<ChatState>,
    address: ClientAddress,
    tcp: Option<axum::Extension<session::Socket>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let reject = |reason: RejectReason, message: String| {
        state.registry.record_rejection(reason);
        tracing::info!(
            rejection.reason = reason.as_str(),
            client.address = %address.client,
            "upgrade refused: {message}"
        );
        ApiError::Rejected(reason, message)
    };
    if state.shutdown.is_cancelled() {
        return Err(reject(
            RejectReason::ShuttingDown,
            "server is shutting down".into(),
        ));
    }
    let client_id = match path {
        Ok(Path(id)) => id,
        Err(e) => return Err(reject(RejectReason::InvalidClientId, e.body_text())),
    };
    let ws_settings = &state.websocket;
    if let Err(e) = client_id::validate(&client_id, ws_settings.max_client_id_chars) {
        return Err(reject(RejectReason::InvalidClientId, e.to_string()));
    }
    let ws = ws.map_err(|e| reject(RejectReason::BadUpgrade, e.body_text()))?;
    if let Err(why) = state.origins.check(&headers) {
        return Err(reject(RejectReason::OriginNotAllowed, why));
    }
    let address = address.client;
    let permit = match state.limiter.acquire(address) {
        Ok(permit) => permit,
        Err(reason) => return Err(reject(reason, format!("{}: retry later", reason.as_str()))),
    };

    let info = ConnectionInfo {
        client_id,
        address: Some(address),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        route: Some(ROUTE),
    };
    let parent = telemetry::spans::remote_parent(&headers);
    let mut guard = state.registry.register_traced(info, parent);
    guard.attach(permit);
    let (membership, outbound) = state
        .hub
        .join(guard.entry().clone(), ws_settings.outbound_queue);
    guard
        .span()
        .in_scope(|| tracing::info!(target: "wsmon", "connection accepted"));
    let limits = state.session;
    let token = state.sessions.token();
    Ok(ws
        .read_buffer_size(ws_settings.read_buffer_size)
        .write_buffer_size(ws_settings.write_buffer_size)
        .max_write_buffer_size(ws_settings.max_write_buffer_size)
        .max_message_size(ws_settings.max_message_size)
        .max_frame_size(ws_settings.max_frame_size)
        // The task is not instrumented with the connection span: entering and leaving it at
        // every wake cost 5 % of the server's CPU in a fan-out with export on (the OpenTelemetry
        // layer stamps an end time at every exit). What the session logs, it logs in that span.
        .on_upgrade(move |socket| async move {
            let _token = token;
            let halves = socket.split();
            let tcp = tcp.map(|axum::Extension(s)| s);
            session::run(halves, guard, membership, outbound, limits, tcp).await;
        }))
}
