//! Settings sections for serving: listening, WebSocket limits, policies, auth, shutdown.
//! Defaults are mirrored in `config/default.toml`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Listening and client-address resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Peers (IPs or CIDR ranges) whose `client_address_header` is believed.
    pub trusted_proxies: Vec<String>,
    /// The one header the trusted proxies set with the client's address.
    pub client_address_header: AddressHeader,
    /// Connections accepted and not upgraded to a WebSocket, at most.
    pub max_http_connections: usize,
    /// ... and from one address (trusted proxies exempt).
    pub max_http_connections_per_ip: usize,
    /// Longest wait for a whole request head, from the connection's start or the previous
    /// response (ms); also the idle limit of a keep-alive connection.
    pub header_read_timeout_ms: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            trusted_proxies: Vec::new(),
            client_address_header: AddressHeader::XForwardedFor,
            max_http_connections: 2_048,
            max_http_connections_per_ip: 256,
            header_read_timeout_ms: 10_000,
        }
    }
}

/// The header a trusted proxy sets with the client's address; wsmon believes this one only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AddressHeader {
    /// `X-Forwarded-For: client, proxy1, ...` (nginx `$proxy_add_x_forwarded_for`, cloud load
    /// balancers).
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    #[serde(rename = "forwarded")]
    Forwarded,
    /// `X-Real-IP: client` (one address, set by the proxy).
    #[serde(rename = "x-real-ip")]
    XRealIp,
}

/// Per-connection limits and buffers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketSettings {
    /// Largest message accepted (bytes); larger closes the connection with 1009.
    pub max_message_size: usize,
    /// Largest single frame accepted (bytes).
    pub max_frame_size: usize,
    /// Read buffer per connection (bytes).
    pub read_buffer_size: usize,
    /// Bytes buffered before the writer flushes.
    pub write_buffer_size: usize,
    /// Hard cap on buffered outbound bytes per connection.
    pub max_write_buffer_size: usize,
    /// Outbound queue per connection (messages); overflow closes it as `slow_consumer`.
    pub outbound_queue: usize,
    /// Outbound bytes held per connection (queued or being written); over it, `slow_consumer`.
    pub outbound_queue_bytes: usize,
    /// Longest a single write may block before the client is closed as `slow_consumer` (ms).
    pub send_timeout_ms: u64,
    /// Time allowed for sending the close frame when the server closes (ms).
    pub close_timeout_ms: u64,
    /// Longest accepted `client_id`, in characters.
    pub max_client_id_chars: usize,
    /// Interval between server pings (ms).
    pub ping_interval_ms: u64,
    /// A pong must arrive this long after a ping, or the connection closes as `ping_timeout` (ms).
    pub ping_timeout_ms: u64,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        Self {
            max_message_size: 64 * 1024,
            max_frame_size: 64 * 1024,
            read_buffer_size: 1024,
            write_buffer_size: 8 * 1024,
            max_write_buffer_size: 1024 * 1024,
            outbound_queue: 256,
            outbound_queue_bytes: 4 << 20,
            send_timeout_ms: 10_000,
            close_timeout_ms: 1_000,
            max_client_id_chars: 64,
            ping_interval_ms: 25_000,
            ping_timeout_ms: 10_000,
        }
    }
}

impl WebSocketSettings {
    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }
    pub fn close_timeout(&self) -> Duration {
        Duration::from_millis(self.close_timeout_ms)
    }
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }
}

/// Per-connection and per-server limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// A connection idle this long after its last message is closed as `idle_timeout` (s);
    /// the warning goes out at `monitor.idle_after_secs`.
    pub idle_close_after_secs: u64,
    /// Sustained chat messages per second per connection (token bucket rate).
    pub messages_per_second: f64,
    /// Messages a connection may send in a burst (token bucket size).
    pub message_burst: u32,
    /// Dropped messages within `rate_limit_window_secs` that close the connection as `rate_limited`.
    pub rate_limit_close_drops: u32,
    /// The window for `rate_limit_close_drops` (s).
    pub rate_limit_window_secs: u64,
    /// Connections the server accepts at once; more get HTTP 503.
    pub max_connections: usize,
    /// Connections one client address may hold at once; more get HTTP 429.
    pub max_connections_per_ip: usize,
    /// Outbound bytes held for all clients together; over it the largest holders are shed.
    pub max_outbound_bytes: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            idle_close_after_secs: 600,
            messages_per_second: 20.0,
            message_burst: 40,
            rate_limit_close_drops: 100,
            rate_limit_window_secs: 10,
            max_connections: 10_000,
            max_connections_per_ip: 100,
            max_outbound_bytes: 1 << 30,
        }
    }
}

/// Cross-site WebSocket hijacking protection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySettings {
    /// Origins (`scheme://host[:port]`) allowed besides the server's own.
    pub allowed_origins: Vec<String>,
    /// Whether upgrades without an `Origin` header (non-browser clients) are accepted.
    pub allow_missing_origin: bool,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allow_missing_origin: true,
        }
    }
}

/// Authentication of the dashboard and APIs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Tokens that may read (`/admin`, `/ws-stats`, `/api/v1/*` GET).
    pub viewer_tokens: Vec<String>,
    /// Tokens that may also act (kick).
    pub operator_tokens: Vec<String>,
    /// Whether `/metrics` requires a viewer token too.
    pub protect_metrics: bool,
    /// Allow listening beyond loopback with no token configured (everything open).
    pub allow_unauthenticated: bool,
    /// Failed attempts per client address within `failure_window_secs` before 429.
    pub max_failures: u32,
    /// The window for `max_failures` (s).
    pub failure_window_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            viewer_tokens: Vec::new(),
            operator_tokens: Vec::new(),
            protect_metrics: false,
            allow_unauthenticated: false,
            max_failures: 10,
            failure_window_secs: 60,
        }
    }
}

/// Graceful shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSettings {
    /// Longest wait for connections to close after SIGINT/SIGTERM (ms).
    pub grace_ms: u64,
    /// Time between turning unready and closing connections (ms).
    pub drain_delay_ms: u64,
    /// Close code clients receive: `going_away` (1001) or `restart` (1012).
    pub close_code: ShutdownCode,
    /// The whole shutdown, from the signal to exit, telemetry flush included (ms).
    pub deadline_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            grace_ms: 10_000,
            drain_delay_ms: 0,
            close_code: ShutdownCode::GoingAway,
            deadline_ms: 25_000,
        }
    }
}

/// The close code sent at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownCode {
    /// 1001: the server is going away.
    GoingAway,
    /// 1012: the server is restarting; clients may reconnect soon.
    Restart,
}

impl ShutdownCode {
    pub fn code(self) -> u16 {
        match self {
            ShutdownCode::GoingAway => 1001,
            ShutdownCode::Restart => 1012,
        }
    }
}

impl ShutdownSettings {
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }
}

/// Several nodes sharing chat and a cluster view through Redis. An empty `redis_url` keeps the
/// single-node default: in-process fan-out and nothing to install.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// `redis://[user:password@]host:port[/db]`, `rediss://…` (TLS) or `redis+unix://…`;
    /// empty (and no `redis_url_file`, no `sentinels`) runs a single node.
    pub redis_url: String,
    /// A file holding the whole URL instead (a container secret); not both.
    pub redis_url_file: String,
    /// A file holding the password, which replaces the URL's.
    pub redis_password_file: String,
    /// PEM CA certificates trusted for `rediss://` besides the system roots.
    pub redis_ca_file: String,
    /// PEM client certificate (chain) and key for mutual TLS; both or neither.
    pub redis_client_cert_file: String,
    pub redis_client_key_file: String,
    /// Sentinel addresses (`host:port`): the primary is the one they name, asked again at every
    /// reconnect; `redis_url` then gives only the scheme, user, password and db.
    pub sentinels: Vec<String>,
    /// The primary's name in Sentinel (`sentinel monitor <name> …`); required with `sentinels`.
    pub sentinel_master: String,
    /// This node's id (1–64 of `A-Z a-z 0-9 . _ -`), also the `service.instance.id` of its
    /// telemetry; empty: the host name plus a random suffix, new at every start (read it with
    /// [`Self::resolved_node_id`]).
    pub node_id: String,
    /// The address shown for this node in the cluster view; empty: `http://` + the bound address.
    pub advertise_url: String,
    /// Prefix of every Redis key and channel, so several clusters can share one Redis.
    pub prefix: String,
    /// Interval between presence refreshes and cluster-view reads (ms).
    pub heartbeat_ms: u64,
    /// Presence expiry (ms): a node that stops refreshing leaves the view after this long.
    pub presence_ttl_ms: u64,
    /// Messages waiting to be published to Redis, at most; beyond, they are dropped and counted.
    pub publish_queue: usize,
    /// ...and in bytes of chat text.
    pub publish_queue_bytes: usize,
    /// Longest wait for another node's answer to a connections-API request (ms).
    pub request_timeout_ms: u64,
    /// Requests to other nodes in flight at once, at most; beyond, 503.
    pub max_pending_requests: usize,
    /// Nodes kept in the cluster view, at most.
    pub max_nodes: usize,
}

impl ClusterSettings {
    /// This node's id: `node_id` when set, otherwise the process's own (the host name reduced
    /// to the allowed characters, plus a random suffix, drawn once per process). Every part of
    /// the process (cluster view, presence, telemetry resource) asks here, so they agree.
    pub fn resolved_node_id(&self) -> &str {
        if self.node_id.is_empty() {
            process_node_id()
        } else {
            &self.node_id
        }
    }
}

/// The node id of a process whose settings name none (see
/// [`ClusterSettings::resolved_node_id`]).
fn process_node_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_default();
        let mut base: String = host
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            .take(48)
            .collect();
        if base.is_empty() {
            base = "node".into();
        }
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!("{base}-{}", &suffix[..8])
    })
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            redis_url_file: String::new(),
            redis_password_file: String::new(),
            redis_ca_file: String::new(),
            redis_client_cert_file: String::new(),
            redis_client_key_file: String::new(),
            sentinels: Vec::new(),
            sentinel_master: String::new(),
            node_id: String::new(),
            advertise_url: String::new(),
            prefix: "wsmon".into(),
            heartbeat_ms: 2_000,
            presence_ttl_ms: 6_000,
            publish_queue: 8_192,
            publish_queue_bytes: 32 << 20,
            request_timeout_ms: 2_000,
            max_pending_requests: 64,
            max_nodes: 256,
        }
    }
}

impl ClusterSettings {
    /// Whether a Redis backplane is configured.
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty() || !self.redis_url_file.is_empty() || !self.sentinels.is_empty()
    }
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    pub fn presence_ttl(&self) -> Duration {
        Duration::from_millis(self.presence_ttl_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Whether `id` may name a node (it becomes part of Redis keys and channels).
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_node_id_resolves_once_per_process_to_a_valid_id_and_a_set_one_is_kept() {
        let unset = ClusterSettings::default();
        let first = unset.resolved_node_id().to_owned();
        assert!(valid_node_id(&first), "{first}");
        assert_eq!(ClusterSettings::default().resolved_node_id(), first);
        let set = ClusterSettings {
            node_id: "node-a".into(),
            ..ClusterSettings::default()
        };
        assert_eq!(set.resolved_node_id(), "node-a");
    }
}
