//! `/admin`: the embedded dashboard (HTML, JS, CSS and the vendored chart library compiled into
//! the binary, no CDN) and `/admin/events`, a Server-Sent Events stream pushing the global
//! figures every `admin.push_interval_ms`. At most `admin.max_streams` streams at once.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures_util::Stream;
use serde::Serialize;

use super::Monitoring;
use crate::error::ApiError;
use crate::monitor::GlobalStats;

const INDEX_HTML: &str = include_str!("../../assets/admin/index.html");
const APP_JS: &str = include_str!("../../assets/admin/app.js");
const APP_CSS: &str = include_str!("../../assets/admin/app.css");
const FAVICON: &str = include_str!("../../assets/admin/favicon.svg");
/// uPlot (MIT, vendored from npm by `scripts/vendor-uplot`).
const UPLOT_JS: &str = include_str!("../../assets/admin/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/admin/vendor/uPlot.min.css");

/// No inline script or style, nothing from another origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// The embedded files besides the page: path, body, content type.
const ASSETS: &[(&str, &str, &str)] = &[
    ("/admin/app.js", APP_JS, "text/javascript; charset=utf-8"),
    ("/admin/app.css", APP_CSS, "text/css; charset=utf-8"),
    ("/admin/favicon.svg", FAVICON, "image/svg+xml"),
    (
        "/admin/vendor/uPlot.iife.min.js",
        UPLOT_JS,
        "text/javascript; charset=utf-8",
    ),
    (
        "/admin/vendor/uPlot.min.css",
        UPLOT_CSS,
        "text/css; charset=utf-8",
    ),
];

pub(super) fn routes() -> Router<Monitoring> {
    ASSETS.iter().fold(
        Router::new()
            .route("/admin", get(index))
            .route("/admin/events", get(events)),
        |router, &(path, body, content_type)| {
            router.route(path, get(move || asset(body, content_type)))
        },
    )
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        INDEX_HTML,
    )
}

async fn asset(body: &'static str, content_type: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// One pushed update: the global figures (O(1) to build). The page fetches its table rows
/// from `/api/v1/connections` with its own paging, sort and search.
#[derive(Serialize)]
pub struct Update {
    pub global_stats: GlobalStats,
}

fn update(m: &Monitoring) -> Update {
    Update {
        global_stats: m.registry.global_stats(),
    }
}

async fn events(
    State(m): State<Monitoring>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let permit = m
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Unavailable("too many dashboard streams; retry later".into()))?;
    let mut interval =
        tokio::time::interval(Duration::from_millis(m.settings.admin.push_interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let state = (m, interval, permit);
    let stream = futures_util::stream::unfold(state, |(m, mut interval, permit)| async move {
        tokio::select! {
            () = m.shutdown.cancelled() => None,
            _ = interval.tick() => {
                let event = Event::default()
                    .event("stats")
                    .json_data(update(&m))
                    .unwrap_or_else(|_| Event::default().comment("serialization failed"));
                Some((Ok(event), (m, interval, permit)))
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
