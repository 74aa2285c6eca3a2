//! The accept loop: what `axum::serve` does, plus the bounds a public server needs before a
//! connection has upgraded. `axum::serve` installs no timer, so a client that sends half a
//! request head holds its socket forever; here:
//!
//! - at most `server.max_http_connections` connections that have not upgraded (requests in
//!   progress, idle keep-alive) are held at once: a permit is taken *before* `accept`, so beyond
//!   the cap new connections wait in the kernel's listen backlog, never in the process's file
//!   descriptors;
//! - a request head must arrive within `server.header_read_timeout_ms`, counted from the
//!   connection's start or the previous response (hyper's header-read timeout), which also
//!   bounds an idle keep-alive connection;
//! - at most `server.max_http_connections_per_ip` of them from one address (trusted proxies
//!   exempt): beyond it the connection is answered 429 at once and closed, so one source cannot
//!   fill the global cap;
//! - a failing `accept` (out of file descriptors, most often) is counted and backed off, and the
//!   loop recovers by itself once descriptors are free again.
//!
//! Cut connections and accept failures are counted and logged at most every 30 s with a count.
//! An upgraded connection leaves the cap: from then on `limits.max_connections` bounds it.

use crate::telemetry::metrics::Metrics;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use super::client_addr::Resolver;
use crate::chat::session::Socket;
use crate::monitor::{Registry, RejectReason};
use crate::shutdown::Deadline;
use crate::telemetry::export::FailureLog;

/// Bounds on connections before they upgrade.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections accepted and not upgraded, at most.
    pub max_http_connections: usize,
    /// Longest wait for a whole request head.
    pub header_read_timeout: Duration,
    /// Connections not upgraded from one address, at most (trusted proxies are exempt).
    pub max_http_connections_per_ip: usize,
}

/// Connections not yet upgraded, per peer address. Entries leave with their last connection,
/// so the map holds at most `max_http_connections` addresses.
#[derive(Default)]
struct PerPeer(std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>);

impl PerPeer {
    /// Counts a connection from `ip` unless it already has `limit`.
    fn try_add(&self, ip: IpAddr, limit: usize) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                map.remove(&ip);
            }
            return false;
        }
        *n += 1;
        true
    }

    fn remove(&self, ip: IpAddr) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// The body of the answer to an address over its cap (the shape of every refusal's body).
const TOO_MANY_BODY: &str =
    r#"{"error":"per_ip_http_limit","message":"too many open connections from this address"}"#;

/// Wait after a failed `accept` before trying again; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `stop` is cancelled, then lets requests in progress
/// finish for up to `grace`, within what is left of `deadline` (upgraded WebSockets are not
/// this loop's: the session drain owns them).
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    registry: Registry,
    metrics: Arc<Metrics>,
    resolver: Arc<Resolver>,
    stop: CancellationToken,
    grace: Duration,
    deadline: Deadline,
) {
    let per_peer = Arc::new(PerPeer::default());
    let permits = Arc::new(Semaphore::new(limits.max_http_connections.max(1)));
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let timeouts = Arc::new(FailureLog::with_message(
        "http",
        "closed connections whose request head did not arrive in time",
    ));
    let accept_failures = FailureLog::with_message("http", "accept failed; backing off");
    let mut backoff = FIRST_BACKOFF;
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => {
                backoff = FIRST_BACKOFF;
                pair
            }
            Err(e) => {
                metrics.accept_errors.increment(1);
                accept_failures.failed(&e);
                drop(permit);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let ip = peer.ip();
        let exempt = resolver.is_trusted(&ip);
        if !exempt && !per_peer.try_add(ip, limits.max_http_connections_per_ip) {
            registry.record_rejection(RejectReason::PerIpHttpLimit);
            tokio::spawn(refuse(tcp));
            continue;
        }
        // Chat frames are small and latency-bound: no Nagle delay.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        metrics.http_connections.increment(1.0);
        let socket = Socket(std::os::fd::AsRawFd::as_raw_fd(&tcp));
        let service = connection_service(router.clone(), peer, socket, resolver.clone());
        let conn = builder
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let (metrics, timeouts, stop) = (metrics.clone(), timeouts.clone(), stop.clone());
        let per_peer = (!exempt).then(|| per_peer.clone());
        connections.spawn(async move {
            tokio::pin!(conn);
            let served = tokio::select! {
                served = conn.as_mut() => served,
                () = stop.cancelled() => {
                    // Finish the request in progress, then close (keep-alive ends).
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = served {
                if e.is_timeout() {
                    metrics.http_header_timeouts.increment(1);
                    timeouts.failed(&e);
                }
            }
            // Ended, or upgraded: either way it leaves the caps.
            metrics.http_connections.decrement(1.0);
            if let Some(per_peer) = per_peer {
                per_peer.remove(ip);
            }
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(deadline.phase(grace), connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open at end of grace period");
    }
}

/// Answers 429 and closes, without reading a request (bounded: one small write, 1 s at most).
async fn refuse(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 10\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{TOO_MANY_BODY}",
        TOO_MANY_BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

/// The router as a hyper service for one connection from `peer`: each request carries the
/// peer (`ConnectInfo`), the client address resolved from it and the request's headers, and the
/// socket (for a closing WebSocket to wait until its client has received everything).
fn connection_service(
    router: Router,
    peer: SocketAddr,
    socket: Socket,
    resolver: Arc<Resolver>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let client = resolver.resolve(peer.ip(), request.headers());
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(client);
        request.extensions_mut().insert(socket);
        let mut router = router.clone();
        async move { router.call(request.map(axum::body::Body::new)).await }
    })
}

/// Raises the soft limit on open files to the hard limit (every connection is a descriptor)
/// and returns `(before, after)` soft limits with the hard limit, for the start-up log.
pub fn raise_fd_limit() -> std::io::Result<(u64, u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let before = limit.rlim_cur;
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok((before, limit.rlim_cur, limit.rlim_max))
    }
}
