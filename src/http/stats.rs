//! The stats API: `/ws-stats` (the tutorial's shape, bounded) and the paginated
//! `/api/v1/connections` with lookup and kick.

use std::net::SocketAddr;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{Extensions, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::{Caller, Role};
use super::Monitoring;
use crate::error::ApiError;
use crate::monitor::{CloseReason, ConnectionSnapshot, GlobalStats, PageRequest, SortKey};

pub(super) fn routes() -> Router<Monitoring> {
    Router::new()
        .route("/ws-stats", get(ws_stats))
        .route("/api/v1/connections", get(list))
        .route(
            "/api/v1/connections/{connection_id}",
            get(show).delete(kick),
        )
        .route("/api/v1/whoami", get(whoami))
}

/// `/ws-stats`: the tutorial's document plus wsmon's extra fields.
#[derive(Serialize)]
pub struct WsStats {
    pub global_stats: GlobalStats,
    /// Oldest first, at most `monitor.ws_stats_max_connections` entries.
    pub connections: Vec<ConnectionSnapshot>,
    /// True when more connections are live than listed (page through `/api/v1/connections`).
    pub connections_truncated: bool,
}

async fn ws_stats(State(m): State<Monitoring>) -> Result<Json<WsStats>, ApiError> {
    let limit = m.settings.monitor.ws_stats_max_connections;
    let page = m
        .registry
        .page(&PageRequest {
            limit,
            ..PageRequest::default()
        })
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Json(WsStats {
        global_stats: m.registry.global_stats(),
        connections: page.items.iter().map(|e| m.registry.snapshot(e)).collect(),
        connections_truncated: page.next_cursor.is_some(),
    }))
}

/// Query of `/api/v1/connections`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
    client_id: Option<String>,
    search: Option<String>,
    sort: Option<SortKey>,
}

/// A page of connections.
#[derive(Serialize)]
pub struct ConnectionPage {
    pub connections: Vec<ConnectionSnapshot>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
    pub active_connections: u64,
}

async fn list(
    State(m): State<Monitoring>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ConnectionPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let settings = &m.settings.monitor;
    let limit = q.limit.unwrap_or(settings.page_default_limit);
    if limit == 0 || limit > settings.page_max_limit {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {}",
            settings.page_max_limit
        )));
    }
    let request = PageRequest {
        limit,
        cursor: q.cursor,
        client_id: q.client_id,
        search: q.search,
        sort: q.sort.unwrap_or_default(),
    };
    let page = m
        .registry
        .page(&request)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Json(ConnectionPage {
        connections: page.items.iter().map(|e| m.registry.snapshot(e)).collect(),
        next_cursor: page.next_cursor,
        active_connections: m.registry.active(),
    }))
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::BadRequest("connection_id must be a UUID".into()))
}

async fn show(
    State(m): State<Monitoring>,
    Path(id): Path<String>,
) -> Result<Json<ConnectionSnapshot>, ApiError> {
    let id = parse_id(&id)?;
    let entry = m
        .registry
        .get(id)
        .ok_or_else(|| ApiError::NotFound(format!("no live connection {id}")))?;
    Ok(Json(m.registry.snapshot(&entry)))
}

/// Asks the connection to close as `admin_kick`; 202 once requested (the close is asynchronous).
async fn kick(
    State(m): State<Monitoring>,
    Path(id): Path<String>,
    extensions: Extensions,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let id = parse_id(&id)?;
    let entry = m
        .registry
        .get(id)
        .ok_or_else(|| ApiError::NotFound(format!("no live connection {id}")))?;
    let first = entry.request_close(CloseReason::AdminKick);
    let by = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let who = extensions
        .get::<Caller>()
        .map_or_else(|| "unauthenticated".to_owned(), |c| c.name.clone());
    tracing::info!(
        target: "wsmon",
        audit = true,
        action = "kick",
        who = %who,
        by.address = %by,
        at = %crate::monitor::entry::rfc3339(crate::monitor::entry::now_us()),
        connection.id = %id,
        client.id = %entry.info().client_id,
        first_request = first,
        "connection kick requested"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "connection_id": id,
            "closing": entry.requested_close().map(CloseReason::as_str),
        })),
    ))
}

/// What the caller may do: `operator`, `viewer`, or `open` (no auth configured: everything).
async fn whoami(extensions: Extensions) -> Json<serde_json::Value> {
    let (role, name) = match extensions.get::<Caller>() {
        Some(c) if c.role == Role::Operator => ("operator", c.name.as_str()),
        Some(c) => ("viewer", c.name.as_str()),
        None => ("open", ""),
    };
    Json(serde_json::json!({ "role": role, "name": name, "can_kick": role != "viewer" }))
}
