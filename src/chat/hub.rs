//! Fan-out: every member owns a bounded outbound queue; [`Hub::publish`] offers each message to
//! every member with `try_send` and never waits, so one slow client cannot delay the others.
//! A member whose queue is full is asked to close as `slow_consumer` (so a client that stays
//! connected never silently misses a message).
//!
//! `publish` is the single fan-out seam: with a backplane ([`Forward`], e.g. Redis), what is
//! published here is also handed to it, and what other nodes publish arrives through
//! [`Hub::deliver_remote`], which fans out locally only.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use uuid::Uuid;

use super::protocol;
use super::queue::{self, Receiver, Sender, TrySendError};
use crate::monitor::{CloseReason, ConnectionEntry};
use crate::telemetry::metrics::Metrics;

/// One message to fan out.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub text: Utf8Bytes,
    /// A member that must not receive it (the one leaving, for a leave notice).
    pub except: Option<Uuid>,
    /// The message's own span, when it is traced: the backplane continues its trace.
    pub span: Option<tracing::Span>,
}

/// Carries messages published on this node to the other nodes. `forward` must not wait: it
/// runs inside the fan-out of the publishing session.
pub trait Forward: Send + Sync {
    /// `span`: the message's span, when the message is traced.
    fn forward(&self, text: &Utf8Bytes, span: Option<&tracing::Span>);
}

struct Member {
    tx: Sender,
    entry: Arc<ConnectionEntry>,
}

/// The set of chat members; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    /// A std `RwLock`: held only for `try_send` loops and map updates, never across an await.
    members: Arc<RwLock<HashMap<Uuid, Member>>>,
    metrics: Arc<Metrics>,
    /// The backplane, once one is attached.
    forward: Arc<OnceLock<Arc<dyn Forward>>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(Metrics::noop())
    }
}

/// Membership of one connection; dropping it leaves the hub and tells the others.
pub struct Membership {
    hub: Hub,
    id: Uuid,
    client_id: String,
    tx: Sender,
}

impl Hub {
    /// An empty hub recording into `metrics` (fan-out duration, queue drops).
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            members: Arc::default(),
            metrics,
            forward: Arc::default(),
        }
    }

    /// Hands every message published from now on to `forward` as well (once; later calls are
    /// ignored and return `false`).
    pub fn set_forward(&self, forward: Arc<dyn Forward>) -> bool {
        self.forward.set(forward).is_ok()
    }

    /// Joins `entry` with an outbound queue of `capacity` messages. From the moment this
    /// returns, the member receives every message published.
    pub fn join(&self, entry: Arc<ConnectionEntry>, capacity: usize) -> (Membership, Receiver) {
        let (tx, rx) = queue::channel(capacity);
        let weak = tx.downgrade();
        entry.set_queue_probe(Box::new(move || weak.depth()));
        let id = entry.id();
        let client_id = entry.info().client_id.clone();
        let member = Member {
            tx: tx.clone(),
            entry,
        };
        self.members
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, member);
        let membership = Membership {
            hub: self.clone(),
            id,
            client_id,
            tx,
        };
        (membership, rx)
    }

    /// Offers `envelope` to every member without waiting, then to the backplane (if any).
    /// Members whose queue is full are asked to close as `slow_consumer`; returns how many
    /// local members accepted it.
    pub fn publish(&self, envelope: Envelope) -> usize {
        let delivered = self.fan_out(&envelope);
        if let Some(forward) = self.forward.get() {
            forward.forward(&envelope.text, envelope.span.as_ref());
        }
        delivered
    }

    /// Fans out a message another node published, to local members only.
    pub fn deliver_remote(&self, text: Utf8Bytes) -> usize {
        self.fan_out(&Envelope {
            text,
            except: None,
            span: None,
        })
    }

    fn fan_out(&self, envelope: &Envelope) -> usize {
        let started = Instant::now();
        let members = self.members.read().unwrap_or_else(|p| p.into_inner());
        let (mut delivered, mut drops) = (0, 0);
        for (id, member) in members.iter() {
            // A member asked to close never writes another message: skipping it keeps a mass
            // departure (N leave notices to N members) from costing a full queue each time.
            if Some(*id) == envelope.except || member.entry.close_is_requested() {
                continue;
            }
            match member.tx.try_send(envelope.text.clone()) {
                Ok(()) => delivered += 1,
                Err(TrySendError::Full) => {
                    drops += 1;
                    member.entry.request_close(CloseReason::SlowConsumer);
                }
                Err(TrySendError::Closed) => {}
            }
        }
        drop(members);
        if drops > 0 {
            self.metrics.send_queue_drops.increment(drops);
        }
        self.metrics
            .fanout_duration
            .record(started.elapsed().as_secs_f64());
        delivered
    }

    /// The metric handles this hub records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Members right now.
    pub fn len(&self) -> usize {
        self.members.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the hub has no members.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn leave(&self, id: Uuid) {
        self.members
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

impl Membership {
    /// Queues a message for this member only; `false` (and a counted drop) when its queue
    /// is full.
    pub fn send_own(&self, text: Utf8Bytes) -> bool {
        let queued = self.tx.try_send(text).is_ok();
        if !queued {
            self.hub.metrics.send_queue_drops.increment(1);
        }
        queued
    }

    /// Asks this member's writer to send a ping.
    pub fn request_ping(&self) {
        self.tx.request_ping();
    }

    /// The hub this membership belongs to.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(self.id);
        self.hub.publish(Envelope {
            text: protocol::left(&self.client_id).into(),
            except: Some(self.id),
            span: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::monitor::{ConnectionInfo, Registry};

    fn member(
        registry: &Registry,
        hub: &Hub,
        id: &str,
        capacity: usize,
    ) -> (crate::monitor::ConnectionGuard, Membership, Receiver) {
        let guard = registry.register(ConnectionInfo::new(id));
        let (membership, rx) = hub.join(guard.entry().clone(), capacity);
        (guard, membership, rx)
    }

    #[test]
    fn a_full_queue_asks_only_that_member_to_close_as_slow_consumer() {
        let registry = Registry::new(Duration::from_secs(300));
        let hub = Hub::default();
        let (slow_guard, _slow, _slow_rx) = member(&registry, &hub, "slow", 2);
        let (fast_guard, _fast, mut fast_rx) = member(&registry, &hub, "fast", 2);
        for i in 0..3 {
            hub.publish(Envelope {
                text: format!("m{i}").into(),
                except: None,
                span: None,
            });
            assert_eq!(fast_rx.try_recv().unwrap().as_str(), format!("m{i}"));
        }
        assert_eq!(
            slow_guard.entry().requested_close(),
            Some(CloseReason::SlowConsumer)
        );
        assert_eq!(slow_guard.entry().queue_depth(), 2);
        assert_eq!(fast_guard.entry().requested_close(), None);
    }

    #[tokio::test]
    async fn a_member_dropped_by_a_panic_still_tells_the_others_it_left() {
        let registry = Registry::new(Duration::from_secs(300));
        let hub = Hub::default();
        let (_g, _m, mut rx) = member(&registry, &hub, "stays", 8);
        let (guard, membership, _rx) = member(&registry, &hub, "crashes", 8);
        let task = tokio::spawn(async move {
            let _held = (guard, membership);
            panic!("bug");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(
            rx.try_recv().unwrap().as_str(),
            "Client #crashes left the chat"
        );
        assert_eq!(hub.len(), 1);
        assert_eq!(registry.active(), 1);
    }
}
