//! The stats API: `/ws-stats` (the tutorial's shape, bounded, this node's) and the paginated
//! `/api/v1/connections` with lookup and kick. With `node=<id>` naming another node of the
//! cluster, the request travels over the Redis control channel and that node's answer (status
//! and body) is served as is.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{Extensions, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::{Caller, Role};
use super::client_addr::ClientAddress;
use super::Monitoring;
use crate::cluster::wire::Op;
use crate::cluster::Serve;
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
    /// The node answering (its own connections only; `/api/v1/cluster` has the totals).
    pub node: String,
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
        node: m.node.id.clone(),
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
    /// Another node's id: list its connections instead.
    node: Option<String>,
}

/// Query of the routes about one connection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeQuery {
    /// The node holding the connection, when it is not this one.
    node: Option<String>,
}

/// A page of connections.
#[derive(Serialize)]
pub struct ConnectionPage {
    /// The node these connections live on.
    pub node: String,
    pub connections: Vec<ConnectionSnapshot>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
    pub active_connections: u64,
}

/// The other node `node` names, if any (this node's own id means this node).
fn remote<'a>(m: &Monitoring, node: Option<&'a str>) -> Option<&'a str> {
    node.filter(|n| *n != m.node.id)
}

/// Asks another node; its answer is served as it gave it.
async fn ask(m: &Monitoring, node: &str, op: Op) -> Result<Response, ApiError> {
    let Some(cluster) = &m.cluster else {
        return Err(ApiError::NotFound(format!(
            "no node {node:?}: this server runs without a cluster"
        )));
    };
    let (status, body) = cluster.request(node, op).await?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    Ok((status, Json(body)).into_response())
}

async fn list(
    State(m): State<Monitoring>,
    RawQuery(raw): RawQuery,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if let Some(node) = remote(&m, q.node.as_deref()) {
        let query = raw
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty() && !pair.starts_with("node="))
            .collect::<Vec<_>>()
            .join("&");
        return ask(&m, node, Op::List { query }).await;
    }
    Ok(Json(list_local(&m, q)?).into_response())
}

fn list_local(m: &Monitoring, q: ListQuery) -> Result<ConnectionPage, ApiError> {
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
    Ok(ConnectionPage {
        node: m.node.id.clone(),
        connections: page.items.iter().map(|e| m.registry.snapshot(e)).collect(),
        next_cursor: page.next_cursor,
        active_connections: m.registry.active(),
    })
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::BadRequest("connection_id must be a UUID".into()))
}

fn node_query(query: Result<Query<NodeQuery>, QueryRejection>) -> Result<NodeQuery, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

async fn show(
    State(m): State<Monitoring>,
    Path(id): Path<String>,
    query: Result<Query<NodeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = node_query(query)?;
    if let Some(node) = remote(&m, q.node.as_deref()) {
        parse_id(&id)?;
        return ask(&m, node, Op::Show { connection_id: id }).await;
    }
    Ok(Json(show_local(&m, &id)?).into_response())
}

fn show_local(m: &Monitoring, id: &str) -> Result<ConnectionSnapshot, ApiError> {
    let id = parse_id(id)?;
    let entry = m
        .registry
        .get(id)
        .ok_or_else(|| ApiError::NotFound(format!("no live connection {id} on this node")))?;
    Ok(m.registry.snapshot(&entry))
}

/// Who asked for a kick, for the audit line.
struct Requester<'a> {
    who: &'a str,
    address: &'a str,
    /// The node the request came through, when it came from another node.
    via_node: Option<&'a str>,
}

/// Asks the connection to close as `admin_kick`; 202 once requested (the close is asynchronous).
async fn kick(
    State(m): State<Monitoring>,
    Path(id): Path<String>,
    query: Result<Query<NodeQuery>, QueryRejection>,
    extensions: Extensions,
) -> Result<Response, ApiError> {
    let q = node_query(query)?;
    // The resolved client (through trusted proxies), and the proxy when there was one.
    let client = ClientAddress::of(&extensions);
    let address = match client.proxy() {
        Some(proxy) => format!("{} via {proxy}", client.client),
        None => client.client.to_string(),
    };
    let who = extensions
        .get::<Caller>()
        .map_or_else(|| "unauthenticated".to_owned(), |c| c.name.clone());
    if let Some(node) = remote(&m, q.node.as_deref()) {
        parse_id(&id)?;
        tracing::info!(
            target: "wsmon",
            audit = true,
            action = "kick",
            who = %who,
            by.address = %address,
            at = %crate::monitor::entry::rfc3339(crate::monitor::entry::now_us()),
            connection.id = %id,
            node.id = %m.node.id,
            node.target = %node,
            "connection kick forwarded to another node"
        );
        let op = Op::Kick {
            connection_id: id,
            who,
            address,
        };
        return ask(&m, node, op).await;
    }
    let requester = Requester {
        who: &who,
        address: &address,
        via_node: None,
    };
    Ok((StatusCode::ACCEPTED, Json(kick_local(&m, &id, &requester)?)).into_response())
}

fn kick_local(
    m: &Monitoring,
    id: &str,
    requester: &Requester<'_>,
) -> Result<serde_json::Value, ApiError> {
    let id = parse_id(id)?;
    let entry = m
        .registry
        .get(id)
        .ok_or_else(|| ApiError::NotFound(format!("no live connection {id} on this node")))?;
    let first = entry.request_close(CloseReason::AdminKick);
    tracing::info!(
        target: "wsmon",
        audit = true,
        action = "kick",
        who = %requester.who,
        by.address = %requester.address,
        at = %crate::monitor::entry::rfc3339(crate::monitor::entry::now_us()),
        connection.id = %id,
        client.id = %entry.info().client_id,
        node.id = %m.node.id,
        node.requested_via = requester.via_node.unwrap_or("-"),
        first_request = first,
        "connection kick requested"
    );
    Ok(serde_json::json!({
        "connection_id": id,
        "node": m.node.id,
        "closing": entry.requested_close().map(CloseReason::as_str),
    }))
}

/// Serves what other nodes ask about this node's connections, as the HTTP routes would.
pub fn serve_remote(m: Monitoring) -> Serve {
    Box::new(move |op, from| {
        let answer = match op {
            Op::List { query } => format!("/?{query}")
                .parse::<Uri>()
                .map_err(|e| ApiError::BadRequest(e.to_string()))
                .and_then(|uri| {
                    Query::<ListQuery>::try_from_uri(&uri)
                        .map_err(|e| ApiError::BadRequest(e.body_text()))
                })
                .and_then(|Query(q)| list_local(&m, q))
                .map(|page| (StatusCode::OK, to_json(page))),
            Op::Show { connection_id } => {
                show_local(&m, &connection_id).map(|snapshot| (StatusCode::OK, to_json(snapshot)))
            }
            Op::Kick {
                connection_id,
                who,
                address,
            } => {
                let requester = Requester {
                    who: &who,
                    address: &address,
                    via_node: Some(from),
                };
                kick_local(&m, &connection_id, &requester).map(|v| (StatusCode::ACCEPTED, v))
            }
        };
        match answer {
            Ok((status, body)) => (status.as_u16(), body),
            Err(e) => {
                let (status, body) = e.status_and_body();
                (status.as_u16(), body)
            }
        }
    })
}

fn to_json(value: impl Serialize) -> serde_json::Value {
    serde_json::to_value(value).expect("API documents have string keys and serialize")
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
