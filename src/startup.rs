//! [`Application`]: binds the listener (port 0 works), assembles the routers, and runs until
//! stopped: on the stop signal it turns unready (and refuses upgrades), waits
//! `shutdown.drain_delay_ms`, closes every WebSocket as `server_shutdown`,
//! waits for sessions within the grace period (logging whether the drain completed), leaves the
//! cluster (if any), then stops the HTTP server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::chat::budget::Budget;
use crate::chat::policy::RateLimit;
use crate::chat::session::SessionLimits;
use crate::chat::Hub;
use crate::cluster::{self, Cluster, ClusterError};
use crate::config::{parse_proxies, ConfigError, Settings};
use crate::http::auth::Auth;
use crate::http::client_addr::Resolver;
use crate::http::origin::OriginPolicy;
use crate::http::serve::{self, ServeLimits};
use crate::http::ws::{self, ChatState};
use crate::http::{monitoring_router, stats, Monitoring, MonitoringSettings, Node};
use crate::monitor::limits::ConnectionLimiter;
use crate::monitor::{sampler, CloseReason, Registry, RegistryOptions};
use crate::shutdown::Deadline;
use crate::telemetry::metrics::{Metrics, MetricsHandle};
use crate::telemetry::sampling::MessageSampler;

/// Why a server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting that cannot be used; names the key (the binary exits with status 64).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// The cluster cannot start.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// A bound, ready-to-run server: everything [`Application::build`] decided from the settings,
/// held until [`Application::run_until_stopped`] serves and drains.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    /// The chat route and the monitoring routes, merged.
    router: Router,
    registry: Registry,
    /// Every metric handle (the registry holds only the monitoring core's share).
    metrics: Arc<Metrics>,
    /// Rendered by `/metrics`; its histograms are drained every second ([`UPKEEP_EVERY`]).
    prometheus: PrometheusHandle,
    /// How often the idle and queue-depth gauges are sampled.
    sample_every: Duration,
    /// Cancelled to begin shutdown (the stop signal, or a test).
    shutdown: CancellationToken,
    /// Every session, so the drain can wait for them.
    sessions: TaskTracker,
    /// Unready before closing connections (`shutdown.drain_delay_ms`).
    drain_delay: Duration,
    /// Longest wait for sessions to end (`shutdown.grace_ms`).
    grace: Duration,
    cluster: Option<Cluster>,
    /// Caps and timeouts of the accept loop (before any upgrade).
    serve_limits: ServeLimits,
    /// Who the client is, behind trusted proxies.
    resolver: Arc<Resolver>,
    /// From the stop signal to exit, shared with the telemetry flush.
    deadline: Deadline,
}

/// How often histogram buckets are drained in the Prometheus recorder (its upkeep).
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

impl Application {
    /// Checks `settings` ([`Settings::validate`]), binds `settings.server.listen` and builds
    /// the routers, recording into `metrics`.
    pub async fn build(settings: Settings, metrics: MetricsHandle) -> Result<Self, StartError> {
        settings.validate()?;
        let address = settings.server.listen;
        let bind = |source| StartError::Bind { address, source };
        let listener = TcpListener::bind(address).await.map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let node = Node {
            id: settings.cluster.resolved_node_id().to_owned(),
            address: if settings.cluster.advertise_url.is_empty() {
                format!("http://{addr}")
            } else {
                settings.cluster.advertise_url.clone()
            },
            started_at: crate::monitor::entry::rfc3339(crate::monitor::entry::now_us()),
        };
        let registry = Registry::with_options(RegistryOptions {
            idle_after: settings.monitor.idle_after(),
            trace_url_template: settings.telemetry.trace_url_template.clone(),
            metrics: metrics.metrics.connections(),
            brief_disconnect_share: settings.telemetry.brief_disconnect_share,
        });
        let shutdown = CancellationToken::new();
        let sessions = TaskTracker::new();
        let resolver = Arc::new(Resolver::new(
            parse_proxies(&settings.server.trusted_proxies).map_err(|message| ConfigError {
                key: "server.trusted_proxies".into(),
                source: "settings".into(),
                message,
            })?,
            settings.server.client_address_header,
        ));
        let hub = Hub::with_budget(
            metrics.metrics.clone(),
            Budget::new(
                settings.websocket.outbound_queue_bytes,
                settings.limits.max_outbound_bytes,
            ),
        );
        let chat = ChatState {
            registry: registry.clone(),
            hub: hub.clone(),
            websocket: Arc::new(settings.websocket.clone()),
            shutdown: shutdown.clone(),
            sessions: sessions.clone(),
            session: session_limits(&settings),
            limiter: ConnectionLimiter::new(
                settings.limits.max_connections,
                settings.limits.max_connections_per_ip,
            ),
            origins: Arc::new(OriginPolicy::new(&settings.security)?),
        };
        let monitoring = Monitoring::new(
            registry.clone(),
            MonitoringSettings {
                monitor: settings.monitor.clone(),
                admin: settings.admin.clone(),
            },
            shutdown.clone(),
        )
        .with_prometheus(metrics.prometheus.clone())
        .with_metrics(metrics.metrics.clone())
        .with_auth(Auth::new(&settings.auth))
        .with_node(node.clone());
        let cluster = settings
            .cluster
            .enabled()
            .then(|| {
                Cluster::start(
                    &settings.cluster,
                    cluster::LocalNode {
                        address: node.address.clone(),
                        hub,
                        registry: registry.clone(),
                        metrics: metrics.metrics.clone(),
                        serve: stats::serve_remote(monitoring.clone()),
                        // "Client #" + an id of at most max_client_id_chars (4 bytes each) + " says: ".
                        max_text: settings.websocket.max_message_size
                            + 4 * settings.websocket.max_client_id_chars
                            + 16,
                    },
                )
            })
            .transpose()?;
        let monitoring = match &cluster {
            Some(c) => monitoring.with_cluster(c.clone()),
            None => monitoring,
        };
        let router = ws::router(chat).merge(monitoring_router(monitoring));
        Ok(Self {
            listener,
            addr,
            router,
            registry,
            metrics: metrics.metrics.clone(),
            prometheus: metrics.prometheus,
            sample_every: Duration::from_millis(settings.monitor.sample_interval_ms),
            shutdown,
            sessions,
            drain_delay: Duration::from_millis(settings.shutdown.drain_delay_ms),
            grace: settings.shutdown.grace(),
            cluster,
            serve_limits: ServeLimits {
                max_http_connections: settings.server.max_http_connections,
                header_read_timeout: Duration::from_millis(settings.server.header_read_timeout_ms),
                max_http_connections_per_ip: settings.server.max_http_connections_per_ip,
            },
            resolver,
            deadline: Deadline::new(
                Duration::from_millis(settings.shutdown.deadline_ms),
                Duration::from_millis(settings.telemetry.shutdown_timeout_ms),
            ),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The registry of this server's connections.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// The tracker of live sessions (empty once every connection task has ended).
    pub fn sessions(&self) -> TaskTracker {
        self.sessions.clone()
    }

    /// The shutdown deadline; it starts when the stop signal arrives, and the telemetry flush
    /// after [`Self::run_until_stopped`] gets what is left of it.
    pub fn deadline(&self) -> Deadline {
        self.deadline.clone()
    }

    /// Cancelling this token begins shutdown (as the stop signal does).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until `stop` completes (or the shutdown token is cancelled), then drains.
    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Self {
            listener,
            addr,
            router,
            registry,
            metrics,
            prometheus,
            sample_every,
            shutdown,
            sessions,
            drain_delay,
            grace,
            cluster,
            serve_limits,
            resolver,
            deadline,
        } = self;
        tokio::spawn(sampler::run(
            registry.clone(),
            sample_every,
            shutdown.clone(),
        ));
        tokio::spawn(upkeep(prometheus, shutdown.clone()));
        tracing::info!(address = %addr, "listening");
        tracing::info!("dashboard: http://{addr}/admin   stats: http://{addr}/ws-stats");
        tracing::info!("chat: connect a WebSocket client to ws://{addr}/ws/<client_id>");

        let http_stop = CancellationToken::new();
        let server = tokio::spawn(serve::serve(
            listener,
            router,
            serve_limits,
            registry.clone(),
            metrics,
            resolver,
            http_stop.clone(),
            grace,
            deadline.clone(),
        ));

        tokio::select! {
            () = stop => shutdown.cancel(),
            () = shutdown.cancelled() => {}
        }
        deadline.start();
        // Unready first (load balancers stop routing here), then close the connections.
        let drain_delay = deadline.phase(drain_delay);
        tracing::info!(
            drain_delay_ms = drain_delay.as_millis() as u64,
            deadline_ms = deadline.total().as_millis() as u64,
            "not ready: refusing new connections"
        );
        tokio::time::sleep(drain_delay).await;
        registry.close_all(CloseReason::ServerShutdown);
        sessions.close();
        let active = registry.active();
        let grace = deadline.phase(grace);
        tracing::info!(
            connections = active,
            grace_ms = grace.as_millis() as u64,
            "draining"
        );
        let drained = tokio::time::timeout(grace, sessions.wait()).await.is_ok();
        if drained {
            tracing::info!("drain completed");
        } else {
            tracing::warn!(
                remaining = registry.active(),
                "drain incomplete at end of grace period"
            );
        }
        if let Some(cluster) = cluster {
            // After the drain, so the leave notices of this node's clients reach the others.
            let left = deadline.phase(Duration::MAX);
            if tokio::time::timeout(left, cluster.stop()).await.is_err() {
                tracing::warn!("left the cluster without waiting for it: shutdown deadline");
            }
        }
        http_stop.cancel();
        // The loop itself waits at most `grace` for requests in progress.
        server.await.map_err(std::io::Error::other)
    }
}

/// Keeps the Prometheus recorder's histograms bounded (it is not installed globally, so nothing
/// else runs its upkeep).
async fn upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                handle.run_upkeep();
                release_drained_samples();
            }
        }
    }
}

/// The recorder frees the histogram sample blocks it drained through crossbeam's epoch
/// collector, which runs such deferred frees only once later pins have moved the epoch on
/// twice: on a server gone quiet (no more samples recorded) megabytes of drained blocks would
/// stay allocated, pinning partly used pages (measured: RSS +30-45 % after 100,000 churn
/// cycles in some runs, until the next burst of traffic). Three pins move it on.
fn release_drained_samples() {
    for _ in 0..3 {
        crossbeam_epoch::pin().flush();
    }
}

/// Every session's limits, from the settings.
fn session_limits(settings: &Settings) -> SessionLimits {
    let (ws, limits) = (&settings.websocket, &settings.limits);
    SessionLimits {
        send_timeout: ws.send_timeout(),
        close_timeout: ws.close_timeout(),
        message_spans: MessageSampler::new(
            settings.telemetry.message_spans,
            settings.telemetry.message_span_ratio,
        ),
        ping_interval: ws.ping_interval(),
        ping_timeout: ws.ping_timeout(),
        idle_warn_after: settings.monitor.idle_after(),
        idle_close_after: Duration::from_secs(limits.idle_close_after_secs),
        rate: RateLimit {
            per_second: limits.messages_per_second,
            burst: limits.message_burst,
            close_drops: limits.rate_limit_close_drops,
            window: Duration::from_secs(limits.rate_limit_window_secs),
        },
        shutdown_code: settings.shutdown.close_code.code(),
        open_span_after: Duration::from_millis(settings.telemetry.open_span_after_ms),
    }
}
