//! Authentication of the dashboard and APIs: bearer tokens (or Basic auth with the token as the
//! password) in two roles, `viewer` (read) and `operator` (may kick). Tokens are compared in
//! constant time; failed attempts are throttled per client address and logged without the token.
//! `/healthz` and `/readyz` are always open, `/metrics` unless `auth.protect_metrics`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use crate::config::AuthSettings;

/// Most addresses tracked for failed attempts; when full, expired entries go first, then all.
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
}

/// Who made a request, for audit lines (`operator#2`: the second operator token).
#[derive(Debug, Clone)]
pub struct Caller {
    pub role: Role,
    pub name: String,
}

/// The token sets and the failure throttle.
pub struct Auth {
    viewers: Vec<Vec<u8>>,
    operators: Vec<Vec<u8>>,
    protect_metrics: bool,
    max_failures: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// The token in `Authorization: Bearer <token>` or `Authorization: Basic base64(user:token)`.
pub fn presented_token(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        let password = decoded[colon + 1..].to_vec();
        return (!password.is_empty()).then_some(password);
    }
    None
}

impl Auth {
    /// `None` when no token is configured (the server then runs open; startup refuses that
    /// beyond loopback unless `auth.allow_unauthenticated`).
    pub fn new(settings: &AuthSettings) -> Option<Arc<Self>> {
        if settings.viewer_tokens.is_empty() && settings.operator_tokens.is_empty() {
            return None;
        }
        let bytes = |v: &Vec<String>| v.iter().map(|t| t.as_bytes().to_vec()).collect();
        Some(Arc::new(Self {
            viewers: bytes(&settings.viewer_tokens),
            operators: bytes(&settings.operator_tokens),
            protect_metrics: settings.protect_metrics,
            max_failures: settings.max_failures,
            window: Duration::from_secs(settings.failure_window_secs),
            failures: Mutex::default(),
        }))
    }

    /// The caller a token belongs to. Every token is compared, so timing does not reveal which.
    pub fn identify(&self, token: &[u8]) -> Option<Caller> {
        let mut found = None;
        for (role, tokens) in [
            (Role::Operator, &self.operators),
            (Role::Viewer, &self.viewers),
        ] {
            for (i, t) in tokens.iter().enumerate() {
                if constant_time_eq(t, token) && found.is_none() {
                    let kind = if role == Role::Operator {
                        "operator"
                    } else {
                        "viewer"
                    };
                    found = Some(Caller {
                        role,
                        name: format!("{kind}#{}", i + 1),
                    });
                }
            }
        }
        found
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (u32, Instant)>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn throttled(&self, ip: IpAddr) -> bool {
        self.lock()
            .get(&ip)
            .is_some_and(|(n, since)| *n >= self.max_failures && since.elapsed() < self.window)
    }

    fn record_failure(&self, ip: IpAddr) -> u32 {
        let mut failures = self.lock();
        if failures.len() >= MAX_TRACKED_ADDRESSES && !failures.contains_key(&ip) {
            failures.retain(|_, (_, since)| since.elapsed() < self.window);
            if failures.len() >= MAX_TRACKED_ADDRESSES {
                failures.clear();
            }
        }
        let entry = failures.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
        entry.0
    }
}

fn refuse(status: StatusCode, error: &str, message: &str) -> Response {
    let body = axum::Json(serde_json::json!({ "error": error, "message": message }));
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"wsmon\", charset=\"UTF-8\""),
        );
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    response
}

/// The middleware: checks the credentials and role, and records the caller for audit lines.
pub async fn require(State(auth): State<Arc<Auth>>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let open =
        path == "/healthz" || path == "/readyz" || (path == "/metrics" && !auth.protect_metrics);
    if open {
        return next.run(request).await;
    }
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    if auth.throttled(ip) {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            "too many failed attempts; retry later",
        );
    }
    let caller = presented_token(request.headers()).and_then(|t| auth.identify(&t));
    let Some(caller) = caller else {
        let failures = auth.record_failure(ip);
        tracing::warn!(client.address = %ip, path, failures, "authentication failed");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid token is required",
        );
    };
    let needs = match *request.method() {
        Method::GET | Method::HEAD | Method::OPTIONS => Role::Viewer,
        _ => Role::Operator,
    };
    if caller.role < needs {
        tracing::warn!(client.address = %ip, path, who = %caller.name, "forbidden: operator role required");
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this action needs an operator token",
        );
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Arc<Auth> {
        Auth::new(&AuthSettings {
            viewer_tokens: vec!["viewer-token-0123456789".into()],
            operator_tokens: vec!["operator-token-0123456789".into()],
            max_failures: 3,
            failure_window_secs: 60,
            ..AuthSettings::default()
        })
        .unwrap()
    }

    #[test]
    fn tokens_map_to_roles_and_unknown_tokens_to_none() {
        let a = auth();
        assert_eq!(
            a.identify(b"operator-token-0123456789").unwrap().role,
            Role::Operator
        );
        assert_eq!(
            a.identify(b"viewer-token-0123456789").unwrap().name,
            "viewer#1"
        );
        assert!(a.identify(b"viewer-token-012345678").is_none());
        assert!(a.identify(b"").is_none());
    }

    #[test]
    fn bearer_and_basic_headers_yield_the_token() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(presented_token(&h).unwrap(), b"abc");
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:s3cret:with:colons");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert_eq!(presented_token(&h).unwrap(), b"s3cret:with:colons");
        for bad in ["Bearer", "Basic !!!", "Token abc", "Basic Og=="] {
            h.insert(header::AUTHORIZATION, bad.parse().unwrap());
            assert!(presented_token(&h).is_none(), "{bad}");
        }
    }

    #[test]
    fn failures_throttle_an_address_after_the_limit() {
        let a = auth();
        let ip: IpAddr = "10.1.1.1".parse().unwrap();
        for _ in 0..3 {
            assert!(!a.throttled(ip));
            a.record_failure(ip);
        }
        assert!(a.throttled(ip));
        assert!(!a.throttled("10.1.1.2".parse().unwrap()));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
