//! The monitoring routes observe themselves: each API and dashboard request runs in a
//! `http.server.request` span (route template, method, status; never the query string, which
//! may carry a token) and is timed into `http.server.request.duration` (Prometheus
//! `http_server_request_duration_seconds`) by route template, method and status.
//!
//! `/metrics` is timed but gets no span (a scrape every few seconds would be trace noise);
//! `/admin/events` gets neither (a stream that lasts as long as the dashboard is open).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::telemetry::metrics::{Metrics, RequestDurations};

/// Routes with no request span.
const UNTRACED: &[&str] = &["/metrics"];
/// Routes neither traced nor timed.
const UNOBSERVED: &[&str] = &["/admin/events"];

/// Middleware: the span and the duration of one request.
pub async fn observe(
    State(metrics): State<std::sync::Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    // Unmatched requests (404s) share one label value, so a scan of random paths adds none.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    if UNOBSERVED.contains(&route.as_str()) {
        return next.run(request).await;
    }
    let method = RequestDurations::method_label(request.method().as_str());
    let started = Instant::now();
    let response = if UNTRACED.contains(&route.as_str()) {
        next.run(request).await
    } else {
        let span = tracing::info_span!(
            target: "wsmon",
            "http.server.request",
            otel.name = format!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = method,
            http.route = route.as_str(),
            http.response.status_code = tracing::field::Empty,
        );
        let response = next.run(request).instrument(span.clone()).await;
        let status = response.status().as_u16();
        span.record("http.response.status_code", i64::from(status));
        if status >= 500 {
            span.record("otel.status_code", "ERROR");
        }
        response
    };
    metrics.requests.record(
        &route,
        method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
