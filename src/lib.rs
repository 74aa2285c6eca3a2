//! wsmon: a WebSocket chat server whose every connection is observable.
//!
//! From the bottom up (a module uses only those above it in this list; `tests/api/layering.rs`
//! checks the core's part):
//!
//! - [`config`]: settings, their layered loading and validation.
//! - [`sync`]: the primitives of the hand-written concurrency (loom's when model-checking).
//! - [`reasons`]: why a connection ended and why an upgrade was refused: the vocabulary the
//!   monitoring core records and telemetry labels by.
//! - [`telemetry`]: every metric and span name, the metrics recorder and its OpenTelemetry
//!   bridge, the OTLP trace and metric pipelines, disconnect records, export health, the logs.
//! - [`monitor`]: the reusable monitoring core (registry, connection guard, caps, sampler).
//! - [`chat`]: the chat application (protocol texts, hub, session).
//! - [`cluster`]: several nodes over Redis (chat across nodes, cluster view, remote kicks).
//! - [`error`]: the HTTP API's error type (and how cluster errors become one).
//! - [`shutdown`]: stop signals and the shutdown deadline.
//! - [`http`]: routers (chat upgrade, stats API, admin dashboard, health).
//! - [`startup`]: [`startup::Application`] checks the settings, binds, serves and drains.

pub mod chat;
pub mod cluster;
pub mod config;
pub mod error;
pub mod http;
pub mod monitor;
pub mod reasons;
pub mod shutdown;
pub mod startup;
pub mod sync;
pub mod telemetry;
