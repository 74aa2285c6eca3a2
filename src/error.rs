//! The HTTP API's error type. Each variant documents its status; the body is always
//! `{"error": "<code>", "message": "<text>"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::cluster::ClusterError;
use crate::monitor::RejectReason;

/// An API or upgrade error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An upgrade refused before the connection existed: the reason's own status
    /// (400 invalid client id / bad upgrade, 401, 403, 429, 503), `Retry-After` on 429/503.
    #[error("{1}")]
    Rejected(RejectReason, String),
    /// 400: a query parameter is malformed (e.g. an invalid cursor or sort).
    #[error("{0}")]
    BadRequest(String),
    /// 404: no live connection with that id.
    #[error("{0}")]
    NotFound(String),
    /// 503: a bounded resource (e.g. dashboard streams) is exhausted, or the Redis backplane
    /// is down.
    #[error("{0}")]
    Unavailable(String),
    /// 504: another node did not answer in time.
    #[error("{0}")]
    Timeout(String),
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::UnknownNode(m) => ApiError::NotFound(m),
            ClusterError::Timeout(m) => ApiError::Timeout(m),
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

impl ApiError {
    /// The status and JSON body this error is served as.
    pub fn status_and_body(&self) -> (StatusCode, serde_json::Value) {
        let (status, code) = match self {
            ApiError::Rejected(r, _) => (
                StatusCode::from_u16(r.status()).unwrap_or(StatusCode::BAD_REQUEST),
                r.as_str(),
            ),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "node_timeout"),
        };
        (
            status,
            json!({ "error": code, "message": self.to_string() }),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.status_and_body();
        let mut response = (status, Json(body)).into_response();
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}
