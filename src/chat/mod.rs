//! The chat application built on the monitoring core: the tutorial's protocol texts, the hub
//! that fans messages out through bounded per-connection queues, and the per-connection session.

pub mod hub;
pub mod protocol;
pub mod session;

pub use hub::{Hub, Membership};
