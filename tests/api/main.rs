//! Integration tests: the real server on port 0, a real WebSocket client, every receive under
//! a timeout so a bug fails instead of hanging.

mod admin;
mod audit;
mod bad_input;
mod byte_budget;
mod chat;
mod closes_under_traffic;
mod config;
mod connections_api;
#[cfg(feature = "fault-injection")]
mod faults;
mod grafana;
mod helpers;
mod layering;
mod lifecycle;
mod metrics;
mod parsing;
mod policies;
mod slow_http;
mod stats;
mod storm;
