//! The `Origin` check against cross-site WebSocket hijacking: a browser upgrade is accepted when
//! its `Origin` is the server's own (its host equals the request's `Host`) or listed in
//! `security.allowed_origins`; a request without `Origin` follows `security.allow_missing_origin`.

use axum::http::{header, HeaderMap};

use crate::config::{parse_origin, ConfigError, SecuritySettings};

/// The parsed policy.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    allowed: Vec<String>,
    allow_missing: bool,
}

impl OriginPolicy {
    /// From the settings; an entry that is not an origin is an error naming the key, never
    /// dropped.
    pub fn new(settings: &SecuritySettings) -> Result<Self, ConfigError> {
        let allowed = settings
            .allowed_origins
            .iter()
            .map(|o| parse_origin(o))
            .collect::<Result<_, _>>()
            .map_err(|message| ConfigError {
                key: "security.allowed_origins".into(),
                source: "settings".into(),
                message,
            })?;
        Ok(Self {
            allowed,
            allow_missing: settings.allow_missing_origin,
        })
    }

    /// `Err` with the reason when the request must be refused.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return if self.allow_missing {
                Ok(())
            } else {
                Err("an Origin header is required".into())
            };
        };
        let origin = origin
            .to_str()
            .map_err(|_| "the Origin header is not valid".to_string())?
            .to_ascii_lowercase();
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase);
        let origin_host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        let same_origin = matches!((origin_host, &host), (Some(o), Some(h)) if o == h);
        if same_origin || self.allowed.contains(&origin) {
            Ok(())
        } else {
            Err(format!("origin {origin} is not allowed"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    fn policy(allowed: &[&str], allow_missing: bool) -> OriginPolicy {
        OriginPolicy::new(&SecuritySettings {
            allowed_origins: allowed.iter().map(|s| s.to_string()).collect(),
            allow_missing_origin: allow_missing,
        })
        .unwrap()
    }

    #[test]
    fn an_entry_that_is_not_an_origin_is_an_error_naming_the_key_not_dropped() {
        let err = OriginPolicy::new(&SecuritySettings {
            allowed_origins: vec!["https://ok.example".into(), "not an origin".into()],
            allow_missing_origin: true,
        })
        .unwrap_err();
        assert_eq!(err.key, "security.allowed_origins");
        assert!(err.message.contains("not an origin"), "{}", err.message);
    }

    #[test]
    fn same_origin_and_listed_origins_pass_others_are_refused() {
        let p = policy(&["https://chat.example.com"], true);
        assert!(p
            .check(&headers(Some("http://localhost:8000"), "localhost:8000"))
            .is_ok());
        assert!(p
            .check(&headers(Some("https://Chat.Example.com"), "10.0.0.1:8000"))
            .is_ok());
        assert!(p
            .check(&headers(Some("https://evil.example"), "localhost:8000"))
            .is_err());
        assert!(p
            .check(&headers(Some("http://localhost:8001"), "localhost:8000"))
            .is_err());
        assert!(p.check(&headers(Some("null"), "localhost:8000")).is_err());
    }

    #[test]
    fn a_missing_origin_follows_the_setting() {
        assert!(policy(&[], true).check(&headers(None, "h")).is_ok());
        assert!(policy(&[], false).check(&headers(None, "h")).is_err());
    }
}
