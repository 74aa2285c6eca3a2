//! Presence: every heartbeat a node writes its [`NodeInfo`] under its own key with an expiry,
//! then reads every node's key into the cluster view. A node that stops refreshing (killed,
//! partitioned) disappears when its key expires; a node that stops cleanly deletes its key.
//! While Redis cannot be read, the last view is kept and its nodes are reported `unknown`.

use std::sync::Arc;
use std::time::Instant;

use redis::AsyncCommands;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::link::{connect, REDIS_TIMEOUT};
use super::source::Source;
use super::wire::NodeInfo;
use super::Shared;
use crate::telemetry::metrics::BackplaneOp;

/// The nodes last read from Redis.
#[derive(Debug, Default)]
pub(super) struct View {
    pub nodes: Vec<NodeInfo>,
    /// When the last successful read finished.
    pub read_at: Option<Instant>,
    /// Whether the latest attempt to refresh succeeded.
    pub current: bool,
}

/// One node as `/api/v1/cluster` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub info: NodeInfo,
    /// `alive` (fresh presence key), or `unknown` (Redis cannot be read right now; the last
    /// known values are shown).
    pub status: &'static str,
    /// Milliseconds since the node last wrote its presence.
    pub heartbeat_age_ms: u64,
    /// Whether this is the node answering.
    #[serde(rename = "self")]
    pub is_self: bool,
}

pub(super) fn now_ms() -> u64 {
    super::link::unix_now_ns() / 1_000_000
}

/// Refreshes this node's presence and the view every heartbeat until `stop`; then deletes
/// this node's key so it leaves the view at once.
pub(super) async fn run(shared: Arc<Shared>, source: Arc<Source>, stop: CancellationToken) {
    let key = shared.names.presence(&shared.node);
    let mut conn = None;
    let mut last_write = None;
    let mut tick = tokio::time::interval(shared.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let refreshed = tokio::time::timeout(
            REDIS_TIMEOUT * 2,
            refresh(&shared, &source, &key, &mut conn, &mut last_write),
        )
        .await;
        let ok = matches!(refreshed, Ok(Ok(())));
        if !ok {
            conn = None;
            shared.metrics.backplane_error(BackplaneOp::Presence);
            match refreshed {
                Ok(Err(e)) => shared.log.failed(&e),
                _ => shared.log.failed(&"presence refresh timed out"),
            }
            shared.view_mut().current = false;
        }
        shared.update_gauges();
    }
    if let Some(mut conn) = conn {
        let _ = tokio::time::timeout(REDIS_TIMEOUT, conn.del::<_, ()>(&key)).await;
    }
}

async fn refresh(
    shared: &Shared,
    source: &Source,
    key: &str,
    conn: &mut Option<redis::aio::MultiplexedConnection>,
    last_write: &mut Option<u64>,
) -> redis::RedisResult<()> {
    if conn.is_none() {
        *conn = Some(connect(source).await?);
    }
    let conn = conn.as_mut().expect("connected above");
    let me = shared.self_info();
    let ttl = shared.presence_ttl.as_millis() as u64;
    let previous: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(serde_json::to_string(&me).expect("node info serializes"))
        .arg("PX")
        .arg(ttl)
        .arg("GET")
        .query_async(conn)
        .await?;
    // Written since our last write by a process with another start: a second live node with
    // this id (an earlier run of this node stops writing, so it never qualifies).
    let twin = previous
        .and_then(|v| serde_json::from_str::<NodeInfo>(&v).ok())
        .filter(|p| {
            p.started_at != shared.started_at
                && last_write.is_some_and(|at| p.heartbeat_unix_ms > at)
        });
    if let Some(other) = twin {
        shared.duplicate_log.failed(&format!(
            "{} started at {}",
            other.address, other.started_at
        ));
    }
    *last_write = Some(me.heartbeat_unix_ms);
    // SCAN, bounded by max_nodes keys; then one MGET.
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(shared.names.presence_pattern())
            .arg("COUNT")
            .arg(200)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        keys.dedup();
        cursor = next;
        if cursor == 0 || keys.len() >= shared.max_nodes {
            break;
        }
    }
    keys.sort();
    keys.dedup();
    keys.truncate(shared.max_nodes);
    let values: Vec<Option<String>> = if keys.is_empty() {
        Vec::new()
    } else {
        conn.mget(&keys).await?
    };
    let mut nodes: Vec<NodeInfo> = values
        .iter()
        .flatten()
        .filter_map(|v| match serde_json::from_str::<NodeInfo>(v) {
            Ok(n) => Some(n),
            Err(_) => {
                shared.metrics.backplane_error(BackplaneOp::Decode);
                None
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut view = shared.view_mut();
    view.nodes = nodes;
    view.read_at = Some(Instant::now());
    view.current = true;
    Ok(())
}
