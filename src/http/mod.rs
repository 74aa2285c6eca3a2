//! HTTP routers, each module owning its routes.
//!
//! - [`ws`]: the chat's `/ws/{client_id}` upgrade.
//! - [`stats`]: `/ws-stats` and `/api/v1/connections` (this node's, or another node's through
//!   the cluster).
//! - [`cluster`]: `/api/v1/cluster`, the nodes and their totals.
//! - [`admin`]: the `/admin` dashboard and its live event stream.
//! - [`auth`]: tokens, roles and the failure throttle for everything but the chat.
//! - [`health`]: `/healthz` and `/readyz`.
//! - [`metrics`]: `/metrics` (Prometheus text).
//! - [`client_addr`]: client address resolution behind trusted proxies.
//! - [`origin`]: the `Origin` allowlist for upgrades.
//! - [`observe`]: a span and a duration for every monitoring request.
//! - [`serve`]: the accept loop, with the bounds on connections that have not upgraded.
//!
//! [`monitoring_router`] bundles everything but the chat, for any axum application that
//! registers its own WebSocket connections in a [`Registry`].

pub mod admin;
pub mod auth;
pub mod client_addr;
pub mod cluster;
pub mod health;
pub mod metrics;
pub mod observe;
pub mod origin;
pub mod serve;
pub mod stats;
pub mod ws;

use crate::telemetry::metrics::Metrics;
use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::cluster::Cluster;
use crate::config::{AdminSettings, MonitorSettings};
use crate::monitor::Registry;

/// What the monitoring routes need; cheap to clone.
#[derive(Clone)]
pub struct Monitoring {
    pub registry: Registry,
    pub settings: Arc<MonitoringSettings>,
    /// Cancelled when shutdown begins: `/readyz` turns 503, streams end.
    pub shutdown: CancellationToken,
    /// Permits for live dashboard streams (`admin.max_streams`).
    pub streams: Arc<Semaphore>,
    /// Renders `/metrics`; `None` serves 404 there.
    pub prometheus: Option<PrometheusHandle>,
    /// Credentials required by the routes; `None` leaves them open.
    pub auth: Option<Arc<auth::Auth>>,
    /// This node as the cluster view names it.
    pub node: Arc<Node>,
    /// The Redis backplane, when several nodes share one cluster.
    pub cluster: Option<Cluster>,
    /// Where request durations are recorded (no-op handles unless [`Self::with_metrics`]).
    pub metrics: Arc<Metrics>,
}

/// This node's identity in the cluster view.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    /// `http://host:port`.
    pub address: String,
    /// RFC 3339.
    pub started_at: String,
}

impl Default for Node {
    fn default() -> Self {
        Self {
            id: "local".into(),
            address: String::new(),
            started_at: crate::monitor::entry::rfc3339(crate::monitor::entry::now_us()),
        }
    }
}

/// The settings the monitoring routes read.
#[derive(Debug, Clone, Default)]
pub struct MonitoringSettings {
    pub monitor: MonitorSettings,
    pub admin: AdminSettings,
}

impl Monitoring {
    /// Monitoring for `registry` with the given settings.
    pub fn new(
        registry: Registry,
        settings: MonitoringSettings,
        shutdown: CancellationToken,
    ) -> Self {
        let streams = Arc::new(Semaphore::new(settings.admin.max_streams));
        Self {
            registry,
            settings: Arc::new(settings),
            shutdown,
            streams,
            prometheus: None,
            auth: None,
            node: Arc::default(),
            cluster: None,
            metrics: Metrics::noop(),
        }
    }

    /// Records request durations into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Names this node in the stats and the cluster view.
    pub fn with_node(mut self, node: Node) -> Self {
        self.node = Arc::new(node);
        self
    }

    /// Serves the cluster view and other nodes' connections through `cluster`.
    pub fn with_cluster(mut self, cluster: Cluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Requires the credentials of `auth` (when given).
    pub fn with_auth(mut self, auth: Option<Arc<auth::Auth>>) -> Self {
        self.auth = auth;
        self
    }

    /// Serves `/metrics` from `handle`.
    pub fn with_prometheus(mut self, handle: PrometheusHandle) -> Self {
        self.prometheus = Some(handle);
        self
    }
}

/// `/ws-stats`, `/api/v1/connections*`, `/admin*`, `/healthz`, `/readyz`, `/metrics`.
/// Responses carry `X-Content-Type-Options: nosniff` and, unless a route sets its own,
/// `Cache-Control: no-store`.
pub fn monitoring_router(monitoring: Monitoring) -> Router {
    let auth = monitoring.auth.clone();
    let metrics = monitoring.metrics.clone();
    let router = Router::new()
        .merge(stats::routes())
        .merge(cluster::routes())
        .merge(admin::routes())
        .merge(health::routes())
        .merge(metrics::routes())
        .with_state(monitoring);
    let router = match auth {
        Some(auth) => router.layer(axum::middleware::from_fn_with_state(auth, auth::require)),
        None => router,
    };
    router
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        // Outermost, so refused requests (401, 429) are observed too.
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            observe::observe,
        ))
}
