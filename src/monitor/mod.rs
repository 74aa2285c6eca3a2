//! The reusable monitoring core: any axum application can wrap its own WebSocket handler with
//! it and get the registry, stats and close-reason accounting, not only the chat.
//!
//! - the bounded close and rejection reasons are [`crate::reasons`] (re-exported here): the
//!   vocabulary this core records and telemetry labels by, below both.
//! - [`entry`]: one connection's record and its snapshot.
//! - [`registry`]: the index of live connections and the totals.
//! - [`paging`]: pages of connections, by age or by value.
//! - [`guard`]: the RAII guard that releases a connection exactly once.
//! - [`client_id`]: validation of client-chosen ids.
//! - [`sampler`]: the periodic idle and queue-depth gauges.
//! - [`limits`]: global and per-address connection caps.

pub mod client_id;
pub mod entry;
pub mod guard;
pub mod limits;
pub mod paging;
pub mod registry;
pub mod sampler;

pub use crate::reasons::{CloseReason, Initiator, RejectReason};
pub use entry::{ConnectionEntry, ConnectionInfo, ConnectionSnapshot};
pub use guard::{ConnectionGuard, Outcome};
pub use paging::{InvalidCursor, Page, PageRequest, SortKey};
pub use registry::{GlobalStats, Registry, RegistryOptions};
