//! The chat application built on the monitoring core: the tutorial's protocol texts, the hub
//! that fans messages out through bounded per-connection queues, the per-connection session and
//! its policies (rate limit, liveness, idle).

pub mod budget;
pub mod hub;
pub mod policy;
pub mod protocol;
pub mod queue;
pub mod session;

pub use hub::{Hub, Membership};
