//! Settings: every knob wsmon has, its default, and the layering that loads them
//! (built-in defaults < `config/default.toml` < `--config FILE` < `WSMON_*` environment).
//!
//! `config/default.toml` carries every key with its default and a comment; a test keeps it and
//! [`Settings::default`] identical, and another keeps the README's table in step with it.

mod load;
mod observability;
mod redis_target;
mod sections;

pub use observability::*;
pub use redis_target::{RedisTarget, SentinelTarget, TlsMaterial};
pub use sections::*;

pub use load::{
    from_figment, load, parse_origin, parse_proxies, ConfigError, DEFAULT_FILE, ENV_PREFIX,
    MIN_TOKEN_LEN,
};

use serde::{Deserialize, Serialize};

/// All settings. Unknown keys are errors, so typos never pass silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub websocket: WebSocketSettings,
    pub monitor: MonitorSettings,
    pub admin: AdminSettings,
    pub limits: LimitSettings,
    pub security: SecuritySettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
    pub shutdown: ShutdownSettings,
    pub cluster: ClusterSettings,
}

/// The settings as TOML (what `--check-config` prints), tokens redacted.
pub fn to_toml(settings: &Settings) -> String {
    let mut shown = settings.clone();
    for token in shown
        .auth
        .viewer_tokens
        .iter_mut()
        .chain(shown.auth.operator_tokens.iter_mut())
    {
        *token = "<redacted>".into();
    }
    shown.cluster.redis_url = redact_url_password(&shown.cluster.redis_url);
    toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render settings: {e}"))
}

/// `redis://user:secret@host` → `redis://user:<redacted>@host`.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => format!("{scheme}://<redacted>@{host}"),
    }
}
