//! Loading and validating [`Settings`]: layering with figment, then checks serde cannot
//! express ([`Settings::validate`]). Every error names the key and the source that set it.

use std::fmt;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use ipnet::IpNet;

use super::Settings;

/// The file read (when present, relative to the working directory) before `--config`.
pub const DEFAULT_FILE: &str = "config/default.toml";
/// Prefix of environment overrides; nesting uses `__` (`WSMON_SERVER__LISTEN`).
pub const ENV_PREFIX: &str = "WSMON_";

/// A setting that could not be used. The binary prints it and exits with status 64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key, e.g. `websocket.max_message_size`; empty when the error is about a file.
    pub key: String,
    /// Where the value came from, e.g. `environment variable WSMON_LOG__LEVEL`.
    pub source: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(
                f,
                "invalid configuration ({}): {}",
                self.source, self.message
            )
        } else {
            write!(
                f,
                "invalid setting `{}` (from {}): {}",
                self.key, self.source, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Loads settings: defaults < [`DEFAULT_FILE`] (if present) < `extra_file` < `WSMON_*`.
pub fn load(extra_file: Option<&Path>) -> Result<Settings, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(Settings::default()));
    if Path::new(DEFAULT_FILE).is_file() {
        figment = figment.merge(Toml::file_exact(DEFAULT_FILE));
    }
    if let Some(path) = extra_file {
        if !path.is_file() {
            return Err(ConfigError {
                key: String::new(),
                source: format!("--config {}", path.display()),
                message: "file not found".into(),
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
    from_figment(&figment)
}

/// Extracts and validates settings from any figment (tests build their own).
pub fn from_figment(figment: &Figment) -> Result<Settings, ConfigError> {
    let settings: Settings = figment.extract().map_err(|e| describe(figment, e))?;
    validate(&settings).map_err(|(key, message)| ConfigError {
        source: source_of(figment, &key),
        key,
        message,
    })?;
    Ok(settings)
}

fn describe(figment: &Figment, err: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let mut path = err.path.clone();
    let message = match &err.kind {
        Kind::UnknownField(field, _) => {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            "unknown key".to_string()
        }
        other => other.to_string(),
    };
    let key = path.join(".");
    let source = match &err.metadata {
        Some(md) => name_source(md, &key),
        None => source_of(figment, &key),
    };
    ConfigError {
        key,
        source,
        message,
    }
}

fn source_of(figment: &Figment, key: &str) -> String {
    figment
        .find_metadata(key)
        .map_or_else(|| "built-in default".into(), |md| name_source(md, key))
}

/// "file config/x.toml", "environment variable WSMON_A__B", or the provider's name.
fn name_source(md: &figment::Metadata, key: &str) -> String {
    match &md.source {
        Some(figment::Source::File(path)) => format!("file {}", path.display()),
        _ if md.name.contains("environment") => format!(
            "environment variable {ENV_PREFIX}{}",
            key.replace('.', "__").to_uppercase()
        ),
        _ if md.name == "Serialized" || md.name == "Default" => "built-in default".into(),
        _ => md.name.to_string(),
    }
}

/// Parses `server.trusted_proxies` (plain IPs or CIDR ranges).
pub fn parse_proxies(entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{s}` is neither an IP address nor a CIDR range"))
        })
        .collect()
}

impl Settings {
    /// The checks serde cannot express, on settings however they were built: [`load`] and
    /// [`from_figment`] run them (naming the source of a bad value), and so does
    /// `Application::build`, so settings built in code (tests, an embedding application) are
    /// held to the same rules. The error names the key; its source is `settings`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate(self).map_err(|(key, message)| ConfigError {
            key,
            source: "settings".into(),
            message,
        })
    }
}

fn validate(s: &Settings) -> Result<(), (String, String)> {
    let l = &s.limits;
    let positive: [(&str, u64); 30] = [
        (
            "server.max_http_connections_per_ip",
            s.server.max_http_connections_per_ip as u64,
        ),
        ("shutdown.deadline_ms", s.shutdown.deadline_ms),
        (
            "server.max_http_connections",
            s.server.max_http_connections as u64,
        ),
        (
            "server.header_read_timeout_ms",
            s.server.header_read_timeout_ms,
        ),
        ("websocket.ping_interval_ms", s.websocket.ping_interval_ms),
        ("websocket.ping_timeout_ms", s.websocket.ping_timeout_ms),
        ("limits.idle_close_after_secs", l.idle_close_after_secs),
        ("limits.message_burst", u64::from(l.message_burst)),
        (
            "limits.rate_limit_close_drops",
            u64::from(l.rate_limit_close_drops),
        ),
        ("limits.rate_limit_window_secs", l.rate_limit_window_secs),
        ("limits.max_connections", l.max_connections as u64),
        (
            "limits.max_connections_per_ip",
            l.max_connections_per_ip as u64,
        ),
        ("monitor.sample_interval_ms", s.monitor.sample_interval_ms),
        (
            "telemetry.metrics_interval_ms",
            s.telemetry.metrics_interval_ms,
        ),
        (
            "telemetry.shutdown_timeout_ms",
            s.telemetry.shutdown_timeout_ms,
        ),
        (
            "telemetry.span_queue_size",
            s.telemetry.span_queue_size as u64,
        ),
        (
            "websocket.max_message_size",
            s.websocket.max_message_size as u64,
        ),
        (
            "websocket.max_frame_size",
            s.websocket.max_frame_size as u64,
        ),
        (
            "websocket.read_buffer_size",
            s.websocket.read_buffer_size as u64,
        ),
        (
            "websocket.outbound_queue",
            s.websocket.outbound_queue as u64,
        ),
        (
            "websocket.outbound_queue_bytes",
            s.websocket.outbound_queue_bytes as u64,
        ),
        ("limits.max_outbound_bytes", l.max_outbound_bytes as u64),
        ("websocket.send_timeout_ms", s.websocket.send_timeout_ms),
        ("websocket.close_timeout_ms", s.websocket.close_timeout_ms),
        (
            "websocket.max_client_id_chars",
            s.websocket.max_client_id_chars as u64,
        ),
        ("monitor.idle_after_secs", s.monitor.idle_after_secs),
        (
            "monitor.page_default_limit",
            s.monitor.page_default_limit as u64,
        ),
        ("monitor.page_max_limit", s.monitor.page_max_limit as u64),
        ("admin.push_interval_ms", s.admin.push_interval_ms),
        ("admin.max_streams", s.admin.max_streams as u64),
    ];
    for (key, value) in positive {
        if value == 0 {
            return Err((key.into(), "must be greater than 0".into()));
        }
    }
    let ws = &s.websocket;
    if ws.max_write_buffer_size <= ws.write_buffer_size {
        return Err((
            "websocket.max_write_buffer_size".into(),
            format!(
                "must be greater than websocket.write_buffer_size ({})",
                ws.write_buffer_size
            ),
        ));
    }
    if ws.max_frame_size > ws.max_message_size {
        return Err((
            "websocket.max_frame_size".into(),
            "must not exceed websocket.max_message_size".into(),
        ));
    }
    if s.monitor.page_default_limit > s.monitor.page_max_limit {
        return Err((
            "monitor.page_default_limit".into(),
            "must not exceed monitor.page_max_limit".into(),
        ));
    }
    if !(l.messages_per_second > 0.0 && l.messages_per_second.is_finite()) {
        return Err((
            "limits.messages_per_second".into(),
            "must be a number greater than 0".into(),
        ));
    }
    if l.idle_close_after_secs <= s.monitor.idle_after_secs {
        return Err((
            "limits.idle_close_after_secs".into(),
            format!(
                "must be greater than monitor.idle_after_secs ({}): the warning comes first",
                s.monitor.idle_after_secs
            ),
        ));
    }
    for origin in &s.security.allowed_origins {
        parse_origin(origin).map_err(|e| ("security.allowed_origins".to_string(), e))?;
    }
    check_auth(s)?;
    check_cluster(&s.cluster)?;
    let t = &s.telemetry;
    if !(t.message_span_ratio > 0.0 && t.message_span_ratio <= 1.0) {
        return Err((
            "telemetry.message_span_ratio".into(),
            "must be greater than 0 and at most 1".into(),
        ));
    }
    if !(0.0..=1.0).contains(&t.brief_disconnect_share) {
        return Err((
            "telemetry.brief_disconnect_share".into(),
            "must be from 0 to 1".into(),
        ));
    }
    if !t.trace_url_template.is_empty() && !t.trace_url_template.contains("{trace_id}") {
        return Err((
            "telemetry.trace_url_template".into(),
            "must contain {trace_id} (or be empty for no links)".into(),
        ));
    }
    if t.service_name.trim().is_empty() {
        return Err(("telemetry.service_name".into(), "must not be empty".into()));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&s.log.level) {
        return Err(("log.level".into(), format!("not a valid filter: {e}")));
    }
    parse_proxies(&s.server.trusted_proxies)
        .map(drop)
        .map_err(|e| ("server.trusted_proxies".into(), e))
}

/// Parses an allowed origin (`scheme://host[:port]`, no path), lower-cased.
pub fn parse_origin(origin: &str) -> Result<String, String> {
    let lower = origin.trim().to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or_else(|| format!("`{origin}` must start with http:// or https://"))?;
    if rest.is_empty() || rest.contains('/') || rest.contains(char::is_whitespace) {
        return Err(format!(
            "`{origin}` must be scheme://host[:port] without a path"
        ));
    }
    Ok(lower)
}

/// Shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

fn check_auth(s: &Settings) -> Result<(), (String, String)> {
    let a = &s.auth;
    for (key, tokens) in [
        ("auth.viewer_tokens", &a.viewer_tokens),
        ("auth.operator_tokens", &a.operator_tokens),
    ] {
        if tokens.iter().any(|t| t.len() < MIN_TOKEN_LEN) {
            return Err((
                key.into(),
                format!("every token must be at least {MIN_TOKEN_LEN} characters"),
            ));
        }
    }
    if a.max_failures == 0 || a.failure_window_secs == 0 {
        return Err((
            "auth.max_failures".into(),
            "auth.max_failures and auth.failure_window_secs must be greater than 0".into(),
        ));
    }
    let open = a.viewer_tokens.is_empty() && a.operator_tokens.is_empty();
    if open && !s.server.listen.ip().is_loopback() && !a.allow_unauthenticated {
        return Err((
            "server.listen".into(),
            format!(
                "wsmon would listen on {} (not loopback) with no credentials: set \
                 auth.operator_tokens / auth.viewer_tokens, or auth.allow_unauthenticated = true \
                 to run it open on purpose",
                s.server.listen
            ),
        ));
    }
    Ok(())
}

fn check_cluster(c: &super::ClusterSettings) -> Result<(), (String, String)> {
    let err = |key: &str, message: &str| Err((format!("cluster.{key}"), message.to_owned()));
    if !c.node_id.is_empty() && !super::valid_node_id(&c.node_id) {
        return err("node_id", "1 to 64 characters of A-Z a-z 0-9 . _ -");
    }
    if c.prefix.is_empty() || !super::valid_node_id(&c.prefix) {
        return err("prefix", "1 to 64 characters of A-Z a-z 0-9 . _ -");
    }
    if c.enabled() {
        c.redis_target()?;
    }
    for (key, value) in [
        ("heartbeat_ms", c.heartbeat_ms),
        ("request_timeout_ms", c.request_timeout_ms),
        ("publish_queue", c.publish_queue as u64),
        ("publish_queue_bytes", c.publish_queue_bytes as u64),
        ("max_pending_requests", c.max_pending_requests as u64),
        ("max_nodes", c.max_nodes as u64),
    ] {
        if value == 0 {
            return err(key, "must be greater than 0");
        }
    }
    if c.presence_ttl_ms < 2 * c.heartbeat_ms {
        return err(
            "presence_ttl_ms",
            "must be at least twice cluster.heartbeat_ms, or a live node would flicker out",
        );
    }
    Ok(())
}
