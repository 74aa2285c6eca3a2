//! Authentication of the dashboard and APIs: bearer tokens (or Basic auth with the token as the
//! password) in two roles, `viewer` (read) and `operator` (may kick). Tokens are compared in
//! constant time (`subtle`); failed attempts are throttled per client address (resolved through
//! the trusted proxies, see `client_addr`) and logged without the token.
//! `/healthz` and `/readyz` are always open, `/metrics` unless `auth.protect_metrics`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use subtle::ConstantTimeEq;

use super::client_addr::ClientAddress;
use crate::config::AuthSettings;

/// Most addresses tracked for failed attempts; when full, expired entries go first, then the
/// oldest eighth (never the whole table: a flood of new addresses cannot reset everyone's count).
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

/// Equality in time independent of where the bytes differ (`subtle`; only a difference in
/// length shows, and a token's length is no secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
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
                evict_oldest(&mut failures, MAX_TRACKED_ADDRESSES / 8);
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

/// Removes the `n` entries whose window started longest ago.
fn evict_oldest(failures: &mut HashMap<IpAddr, (u32, Instant)>, n: usize) {
    let mut starts: Vec<Instant> = failures.values().map(|(_, since)| *since).collect();
    if n == 0 || starts.is_empty() {
        return;
    }
    let n = n.min(starts.len());
    let (_, cutoff, _) = starts.select_nth_unstable(n - 1);
    let cutoff = *cutoff;
    let mut removed = 0;
    failures.retain(|_, (_, since)| {
        let evict = *since <= cutoff && removed < n;
        removed += usize::from(evict);
        !evict
    });
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
    let address = ClientAddress::of(request.extensions());
    let ip = address.client;
    let proxy = address.proxy().map(|p| p.to_string());
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
        tracing::warn!(
            client.address = %ip,
            network.peer.address = proxy.as_deref(),
            path,
            failures,
            "authentication failed"
        );
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
        tracing::warn!(
            client.address = %ip,
            network.peer.address = proxy.as_deref(),
            path,
            who = %caller.name,
            "forbidden: operator role required"
        );
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
    fn a_full_table_evicts_its_oldest_entries_not_everyone() {
        let a = auth();
        let addr = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
        let max = MAX_TRACKED_ADDRESSES as u32;
        for i in 0..max {
            a.record_failure(addr(i));
        }
        let late: IpAddr = "10.9.9.9".parse().unwrap();
        for _ in 0..3 {
            a.record_failure(late);
        }
        // One address too many: the oldest eighth goes, everyone else keeps their count.
        assert!(a.throttled(late));
        assert_eq!(
            a.lock().len(),
            MAX_TRACKED_ADDRESSES - MAX_TRACKED_ADDRESSES / 8 + 1
        );
        assert!(a.lock().get(&addr(0)).is_none(), "the oldest went");
        assert_eq!(a.lock().get(&addr(max - 1)).map(|e| e.0), Some(1));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
