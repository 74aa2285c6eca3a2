//! wsmon: a WebSocket chat server whose every connection is observable.
//!
//! - [`config`]: settings and their layered loading.
//! - [`startup`]: [`startup::Application`] binds, serves and drains.
//! - [`shutdown`]: stop signals.
//! - [`telemetry`]: every metric and span name, the metrics recorder and its OpenTelemetry
//!   bridge, the OTLP trace and metric pipelines, export health, and the logs.
//! - [`sync`]: the primitives of the hand-written concurrency (loom's when model-checking).
//! - [`monitor`]: the reusable monitoring core (registry, connection guard, close reasons).
//! - [`chat`]: the chat application (protocol texts, hub, session).
//! - [`cluster`]: several nodes over Redis (chat across nodes, cluster view, remote kicks).
//! - [`http`]: routers (chat upgrade, stats API, admin dashboard, health).
//! - [`error`]: the HTTP API's error type.

pub mod chat;
pub mod cluster;
pub mod config;
pub mod error;
pub mod http;
pub mod monitor;
pub mod shutdown;
pub mod startup;
pub mod sync;
pub mod telemetry;
