//! Several nodes over Redis (off unless `cluster.redis_url`, `redis_url_file` or `sentinels` is
//! set): chat fan-out across nodes on pub/sub, presence keys with expiry for the cluster view,
//! and a control channel per node for connections-API requests (list, show, kick) about connections another node holds.
//!
//! - [`source`]: where Redis is (one URL, plain, TLS or a socket; or the primary Sentinel
//!   names), asked at every (re)connect.
//! - [`wire`]: channel and key names, the JSON messages, the presence value.
//! - [`link`]: the publisher and subscriber connections, reconnecting by themselves.
//! - [`presence`]: the heartbeat and the view it reads.
//! - [`requests`]: requests to other nodes awaiting their replies, and gap counting.
//!
//! Guarantees: per-sender order across nodes (one queue, one connection, one channel);
//! at-most-once across nodes: while Redis is unreachable each node keeps its local chat, and
//! messages that cannot cross are dropped and counted, never queued without bound.

pub mod link;
pub mod presence;
pub mod requests;
pub mod source;
pub mod wire;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, RwLock, RwLockWriteGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::Hub;
use crate::config::ClusterSettings;
use crate::config::ConfigError;
use crate::monitor::Registry;
use crate::telemetry::export::FailureLog;
use crate::telemetry::metrics::Metrics;
use link::Outbox;
use presence::{NodeView, View};
use requests::{Pending, Sequences};
use wire::{Names, NodeInfo, Op, Wire};

/// Serves a connections-API operation asked by another node (named by the second argument):
/// the HTTP status and JSON body this node would answer with.
pub type Serve = Box<dyn Fn(Op, &str) -> (u16, serde_json::Value) + Send + Sync>;

/// State the cluster tasks (publisher, subscriber, presence) and the handles share: one
/// `Arc`, so a task never waits for another to read what it needs.
pub(crate) struct Shared {
    /// This node's id (`cluster.node_id`, resolved).
    node: String,
    /// How this process's own chat messages begin on the wire (they come back from Redis).
    own_chat_prefix: Vec<u8>,
    /// When this process started (ms since the epoch): with `node`, what tells a restarted
    /// node's sequence numbers from its previous life's.
    epoch: u64,
    /// The Redis channel and key names under `cluster.prefix`.
    names: Names,
    metrics: Arc<Metrics>,
    /// Where chat from other nodes is fanned out.
    hub: Hub,
    /// This node's connections, for its presence record and the connections API.
    registry: Registry,
    /// `http://host:port` shown for this node in the cluster view.
    address: String,
    /// RFC 3339, shown in the cluster view.
    started_at: String,
    heartbeat: Duration,
    presence_ttl: Duration,
    /// Nodes kept in the view, at most (`cluster.max_nodes`).
    max_nodes: usize,
    /// The publisher's link is up (what `backplane.up` and 503s on cross-node requests read).
    publishing: AtomicBool,
    /// The subscriber's link is up.
    subscribed: AtomicBool,
    /// Chat bytes waiting in the publish queue, and their limit (`cluster.publish_queue_bytes`).
    queued_bytes: std::sync::atomic::AtomicUsize,
    max_queued_bytes: usize,
    /// The nodes last read from Redis.
    view: RwLock<View>,
    /// Requests to other nodes waiting for their answer.
    pending: Pending,
    /// The last sequence number seen per sending node: gaps are counted as `lost`.
    sequences: Sequences,
    /// Serves other nodes' connections-API requests here.
    serve: Serve,
    /// Permits for serving other nodes' requests at once.
    serving: Arc<tokio::sync::Semaphore>,
    /// Longest chat text accepted from Redis (bytes).
    max_text: usize,
    /// Redis failures, logged at most every 30 s with a count.
    log: FailureLog,
    /// Another live node wrote this node's presence key.
    duplicate_log: FailureLog,
}

impl Shared {
    fn set_publishing(&self, up: bool) {
        self.publishing.store(up, Relaxed);
        self.update_gauges();
    }
    fn set_subscribed(&self, up: bool) {
        self.subscribed.store(up, Relaxed);
        self.update_gauges();
    }
    fn up(&self) -> bool {
        self.publishing.load(Relaxed) && self.subscribed.load(Relaxed)
    }
    fn update_gauges(&self) {
        self.metrics
            .backplane_up
            .set(if self.up() { 1.0 } else { 0.0 });
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        let alive = if view.current {
            view.nodes.len().max(1)
        } else {
            1
        };
        self.metrics.cluster_nodes.set(alive as f64);
    }
    fn view_mut(&self) -> RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(|p| p.into_inner())
    }
    fn self_info(&self) -> NodeInfo {
        node_info(&self.node, &self.address, &self.started_at, &self.registry)
    }
}

fn node_info(node: &str, address: &str, started_at: &str, registry: &Registry) -> NodeInfo {
    let g = registry.global_stats();
    NodeInfo {
        id: node.to_owned(),
        address: address.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: started_at.to_owned(),
        heartbeat_unix_ms: presence::now_ms(),
        active_connections: g.active_connections,
        total_connections: g.total_connections,
        messages_received: g.messages_received,
        messages_sent: g.messages_sent,
    }
}

/// A running backplane; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    request_timeout: Duration,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// What this node needs to join a cluster.
pub struct LocalNode {
    /// `http://host:port` shown for this node.
    pub address: String,
    pub hub: Hub,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    pub serve: Serve,
    /// Longest chat text accepted from another node (bytes): what this node's own clients may
    /// send, plus the `Client #<id> says: ` framing.
    pub max_text: usize,
}

/// What went wrong in the cluster: starting it, or asking another node.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A cluster setting (or a file it names) that cannot be used; names the key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Redis client cannot be built from these settings.
    #[error("cluster: cannot reach Redis this way: {0}")]
    Redis(String),
    /// No node with that id in the cluster view.
    #[error("{0}")]
    UnknownNode(String),
    /// The backplane is down, or too many requests to other nodes are in flight.
    #[error("{0}")]
    Unavailable(String),
    /// The node did not answer within `cluster.request_timeout_ms`.
    #[error("{0}")]
    Timeout(String),
}

impl Cluster {
    /// Starts the publisher, subscriber and presence tasks (they connect, and reconnect, by
    /// themselves) and attaches the backplane to the hub. Fails when the Redis settings (or
    /// the files they name) are wrong; they are checked at load, so only a file changed since
    /// then gets here.
    pub fn start(settings: &ClusterSettings, member: LocalNode) -> Result<Self, ClusterError> {
        let target = settings
            .redis_target()
            .map_err(|(key, message)| ConfigError {
                key,
                source: "settings".into(),
                message,
            })?;
        let source = source::Source::new(target, member.metrics.clone())
            .map_err(|e| ClusterError::Redis(e.to_string()))?;
        let source = Arc::new(source);
        let started = crate::monitor::entry::now_us();
        let shared = Arc::new(Shared {
            node: settings.resolved_node_id().to_owned(),
            own_chat_prefix: wire::chat_prefix(settings.resolved_node_id(), started / 1000),
            epoch: started / 1000,
            names: Names::new(&settings.prefix),
            metrics: member.metrics,
            hub: member.hub.clone(),
            registry: member.registry,
            address: member.address,
            started_at: crate::monitor::entry::rfc3339(started),
            heartbeat: settings.heartbeat(),
            presence_ttl: settings.presence_ttl(),
            max_nodes: settings.max_nodes,
            publishing: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            queued_bytes: std::sync::atomic::AtomicUsize::new(0),
            max_queued_bytes: settings.publish_queue_bytes,
            view: RwLock::default(),
            pending: Pending::new(settings.max_pending_requests),
            sequences: Sequences::new(settings.max_nodes),
            serve: member.serve,
            serving: Arc::new(tokio::sync::Semaphore::new(link::SERVING)),
            max_text: member.max_text,
            log: FailureLog::with_message(
                "backplane",
                "Redis backplane failing; local chat continues, cross-node messages are dropped \
                 and counted",
            ),
            duplicate_log: FailureLog::with_message(
                "backplane",
                "another live node uses this node's id: give every node its own cluster.node_id",
            ),
        });
        shared.update_gauges();
        let (tx, rx) = mpsc::channel(settings.publish_queue);
        let outbox = Arc::new(Outbox {
            tx,
            shared: shared.clone(),
        });
        member.hub.set_forward(outbox.clone());
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(link::publish_loop(
            shared.clone(),
            source.clone(),
            rx,
            stop.clone(),
        ));
        tasks.spawn(link::subscribe_loop(
            shared.clone(),
            source.clone(),
            outbox.clone(),
            stop.clone(),
        ));
        tasks.spawn(presence::run(shared.clone(), source.clone(), stop.clone()));
        tasks.close();
        tracing::info!(
            node.id = %shared.node,
            prefix = %settings.prefix,
            redis = %source.describe(),
            "cluster mode: chat and the cluster view go through Redis"
        );
        Ok(Self {
            shared,
            outbox,
            request_timeout: settings.request_timeout(),
            stop,
            tasks,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }

    /// Stops the tasks: what is queued is published (briefly), the presence key deleted.
    pub async fn stop(&self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(link::REDIS_TIMEOUT * 2, self.tasks.wait()).await;
        self.shared.metrics.backplane_up.set(0.0);
    }

    /// The cluster as this node sees it.
    pub fn view(&self) -> ClusterView {
        let s = &self.shared;
        let view = s.view.read().unwrap_or_else(|p| p.into_inner());
        let now = presence::now_ms();
        let mut nodes: Vec<NodeView> = view
            .nodes
            .iter()
            .filter(|n| n.id != s.node)
            .map(|n| NodeView {
                info: n.clone(),
                status: if view.current { "alive" } else { "unknown" },
                heartbeat_age_ms: now.saturating_sub(n.heartbeat_unix_ms),
                is_self: false,
            })
            .collect();
        nodes.push(NodeView {
            info: s.self_info(),
            status: "alive",
            heartbeat_age_ms: 0,
            is_self: true,
        });
        nodes.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        ClusterView::new(
            &s.node,
            Backplane {
                configured: true,
                up: s.up(),
                publishing: s.publishing.load(Relaxed),
                subscribed: s.subscribed.load(Relaxed),
                view_age_ms: view.read_at.map(|t| t.elapsed().as_millis() as u64),
            },
            nodes,
        )
    }

    /// Asks `node` to serve `op`; its status and body, or why it could not be asked.
    pub async fn request(
        &self,
        node: &str,
        op: Op,
    ) -> Result<(u16, serde_json::Value), ClusterError> {
        let s = &self.shared;
        let known = s
            .view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .iter()
            .any(|n| n.id == node);
        if !known {
            return Err(ClusterError::UnknownNode(format!(
                "no node {node:?} in the cluster view"
            )));
        }
        if !s.publishing.load(Relaxed) {
            return Err(ClusterError::Unavailable(format!(
                "the Redis backplane is down: node {node:?} cannot be reached"
            )));
        }
        let (id, answer) = s.pending.register().ok_or_else(|| {
            ClusterError::Unavailable("too many requests to other nodes in flight".into())
        })?;
        let request = Wire::Request {
            node: s.node.clone(),
            id,
            op,
        };
        if !self.outbox.control(s.names.control(node), request) {
            s.pending.forget(id);
            return Err(ClusterError::Unavailable(
                "the Redis backplane cannot take the request now".into(),
            ));
        }
        match tokio::time::timeout(self.request_timeout, answer).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                s.pending.forget(id);
                Err(ClusterError::Timeout(format!(
                    "node {node:?} did not answer within {} ms",
                    self.request_timeout.as_millis()
                )))
            }
        }
    }
}

/// The backplane's state in the cluster view.
#[derive(Debug, Clone, Serialize)]
pub struct Backplane {
    /// Whether a Redis backplane is configured.
    pub configured: bool,
    /// Publishing and subscribed.
    pub up: bool,
    pub publishing: bool,
    pub subscribed: bool,
    /// Milliseconds since the node list was last read from Redis (`null`: never).
    pub view_age_ms: Option<u64>,
}

/// `/api/v1/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    /// The node answering.
    pub node_id: String,
    pub backplane: Backplane,
    /// Sorted by id; at most `cluster.max_nodes`.
    pub nodes: Vec<NodeView>,
    pub totals: Totals,
}

/// Sums over the nodes listed.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub nodes: usize,
    pub alive_nodes: usize,
    pub unknown_nodes: usize,
    pub active_connections: u64,
    pub total_connections: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    /// False when some node's figures are last-known values (Redis unreachable).
    pub complete: bool,
}

impl ClusterView {
    fn new(node_id: &str, backplane: Backplane, nodes: Vec<NodeView>) -> Self {
        let sum = |f: fn(&NodeInfo) -> u64| nodes.iter().map(|n| f(&n.info)).sum();
        let unknown = nodes.iter().filter(|n| n.status != "alive").count();
        let totals = Totals {
            nodes: nodes.len(),
            alive_nodes: nodes.len() - unknown,
            unknown_nodes: unknown,
            active_connections: sum(|n| n.active_connections),
            total_connections: sum(|n| n.total_connections),
            messages_received: sum(|n| n.messages_received),
            messages_sent: sum(|n| n.messages_sent),
            complete: unknown == 0,
        };
        Self {
            node_id: node_id.to_owned(),
            backplane,
            nodes,
            totals,
        }
    }

    /// The view of a node without a backplane: itself.
    pub fn single(node_id: &str, address: &str, started_at: &str, registry: &Registry) -> Self {
        Self::new(
            node_id,
            Backplane {
                configured: false,
                up: false,
                publishing: false,
                subscribed: false,
                view_age_ms: None,
            },
            vec![NodeView {
                info: node_info(node_id, address, started_at, registry),
                status: "alive",
                heartbeat_age_ms: 0,
                is_self: true,
            }],
        )
    }
}
