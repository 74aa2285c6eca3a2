//! `GET /metrics`: every metric in Prometheus text format (nothing to install).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::Monitoring;
use crate::error::ApiError;

pub(super) fn routes() -> Router<Monitoring> {
    Router::new().route("/metrics", get(render))
}

async fn render(State(m): State<Monitoring>) -> Response {
    match &m.prometheus {
        Some(handle) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response(),
        None => ApiError::NotFound("metrics are not enabled".into()).into_response(),
    }
}
