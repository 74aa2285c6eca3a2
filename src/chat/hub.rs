//! Fan-out: every member owns a bounded outbound queue; [`Hub::publish`] offers each message to
//! every member with `try_send` and never waits, so one slow client cannot delay the others.
//! A member whose queue is full, in messages or in bytes, is asked to close as `slow_consumer`
//! (so a client that stays connected never silently misses a message). When the process holds
//! more than its byte ceiling, the members holding the most are shed the same way (see
//! [`super::budget`]).
//!
//! `publish` is the single fan-out seam: with a backplane ([`Forward`], e.g. Redis), what is
//! published here is also handed to it, and what other nodes publish arrives through
//! [`Hub::deliver_remote`], which fans out locally only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use uuid::Uuid;

use super::budget::{self, Budget, Shed};
use super::protocol;
use super::queue::{self, Combined, LeaveLog, Receiver, Sender, TrySendError};
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

    /// A leave notice (other nodes hold it once in their leave log, as this one does).
    fn forward_leave(&self, text: &Utf8Bytes) {
        self.forward(text, None);
    }
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
    budget: Arc<Budget>,
    /// Leave notices, held once for every queue (see [`queue::LeaveLog`]).
    leaves: Arc<LeaveLog>,
    /// Publishes the leave log: one departure at a time runs the pass over the members, and
    /// those arriving meanwhile leave their notice to it (see [`queue::Combined`]). So in a
    /// mass departure each pass publishes many notices, and no worker thread waits for another.
    publishing_leaves: Arc<Combined>,
    /// A shed pass is scheduled.
    shedding: Arc<AtomicBool>,
}

/// How long after the process goes over its byte ceiling the shed pass runs.
pub const SHED_AFTER: std::time::Duration = std::time::Duration::from_millis(50);
/// How long a writer must have been stuck in one write to be chosen: a peer that reads lets a
/// write finish within moments even on a loaded server (a writer waiting for CPU has not
/// started one), so only the ones that do not read are shed.
pub const STALLED_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

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
    /// An empty hub recording into `metrics` (fan-out duration, queue drops), with no byte
    /// budget.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self::with_budget(metrics, Budget::unlimited())
    }

    /// An empty hub whose queues are bounded in bytes by `budget`.
    pub fn with_budget(metrics: Arc<Metrics>, budget: Arc<Budget>) -> Self {
        Self {
            members: Arc::default(),
            metrics,
            forward: Arc::default(),
            budget,
            leaves: LeaveLog::new(),
            publishing_leaves: Arc::default(),
            shedding: Arc::default(),
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
        let (tx, rx) = queue::budgeted(capacity, self.budget.clone(), self.leaves.clone());
        let weak = tx.downgrade();
        entry.set_queue_probe(Box::new(move || weak.level()));
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

    /// Fans out a leave notice another node published, to local members only.
    pub fn deliver_remote_leave(&self, text: Utf8Bytes) {
        self.leaves.push(text);
        self.publish_leaves();
    }

    /// Fans out a message another node published, to local members only.
    pub fn deliver_remote(&self, text: Utf8Bytes) -> usize {
        self.fan_out(&Envelope {
            text,
            except: None,
            span: None,
        })
    }

    /// Tells every member that `client_id` left (it has left the member map already): the
    /// notice is held once in the leave log and published to every queue (see
    /// [`queue::LeaveLog`]), by this thread or by the one publishing already.
    fn publish_leave(&self, client_id: &str) {
        let text: Utf8Bytes = protocol::left(client_id).into();
        self.leaves.push(text.clone());
        self.publish_leaves();
        if let Some(forward) = self.forward.get() {
            forward.forward_leave(&text);
        }
    }

    /// Publishes the notices pushed to the log: here, or by the thread publishing already.
    fn publish_leaves(&self) {
        self.publishing_leaves.run(|| {
            let published = self.leaves.publish();
            if !published.is_empty() {
                self.fan_out_with(None, |tx| tx.offer_leaves(published.clone()));
            }
        });
    }

    fn fan_out(&self, envelope: &Envelope) -> usize {
        self.fan_out_with(envelope.except, |tx| tx.try_send(envelope.text.clone()))
    }

    fn fan_out_with(
        &self,
        except: Option<Uuid>,
        send: impl Fn(&Sender) -> Result<(), TrySendError>,
    ) -> usize {
        let started = Instant::now();
        let members = self.members.read().unwrap_or_else(|p| p.into_inner());
        let (mut delivered, mut drops) = (0, 0);
        for (id, member) in members.iter() {
            // A member asked to close never writes another message: skipping it keeps a mass
            // departure (N leave notices to N members) from costing a full queue each time.
            if Some(*id) == except || member.entry.close_is_requested() {
                continue;
            }
            match send(&member.tx) {
                Ok(()) => delivered += 1,
                Err(TrySendError::Full) => {
                    drops += 1;
                    member.entry.request_close(CloseReason::SlowConsumer);
                }
                Err(TrySendError::OverBudget) => {
                    drops += 1;
                    if member.entry.request_close(CloseReason::SlowConsumer) {
                        self.metrics.shed(Shed::Connection, 1);
                    }
                }
                Err(TrySendError::Closed) => {}
            }
        }
        drop(members);
        self.shed_soon();
        if drops > 0 {
            self.metrics.send_queue_drops.increment(drops);
        }
        self.metrics
            .fanout_duration
            .record(started.elapsed().as_secs_f64());
        delivered
    }

    /// Over the process ceiling: schedules a shed pass in [`SHED_AFTER`] (at once without a
    /// runtime), one at a time.
    fn shed_soon(&self) {
        if self.budget.excess().is_none() || self.shedding.swap(true, Ordering::AcqRel) {
            return;
        }
        let hub = self.clone();
        let pass = move || {
            let members = hub.members.read().unwrap_or_else(|p| p.into_inner());
            hub.shed(&members);
            drop(members);
            hub.shedding.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(SHED_AFTER).await;
                    pass();
                });
            }
            Err(_) => pass(),
        }
    }

    /// Asks the members holding the most to close as `slow_consumer` until what is left fits
    /// under the process ceiling (what closing members hold counts as freed).
    fn shed(&self, members: &HashMap<Uuid, Member>) {
        let Some(excess) = self.budget.excess() else {
            return;
        };
        let mut closing = 0;
        let mut holders = Vec::new();
        for member in members.values() {
            let held = member.tx.held();
            if member.entry.close_is_requested() {
                closing += held;
            } else if member.tx.stalled_for() >= STALLED_AFTER {
                // Only writers stuck in a write: a client that reads finishes its writes
                // within moments, whatever its share of a burst.
                holders.push((held, member));
            }
        }
        let chosen = budget::choose(holders, excess, closing);
        let mut shed = 0;
        for member in chosen {
            shed += u64::from(member.entry.request_close(CloseReason::SlowConsumer));
        }
        if shed > 0 {
            self.metrics.shed(Shed::Process, shed);
            tracing::warn!(
                target: "wsmon",
                shed,
                held = self.budget.held(),
                "outbound bytes over limits.max_outbound_bytes: shed the largest holders as slow_consumer"
            );
        }
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
        let sent = self.tx.try_send(text);
        match sent {
            Ok(()) => {}
            Err(TrySendError::OverBudget) => {
                self.hub.metrics.send_queue_drops.increment(1);
                self.hub.metrics.shed(Shed::Connection, 1);
            }
            Err(_) => self.hub.metrics.send_queue_drops.increment(1),
        }
        self.hub.shed_soon();
        sent.is_ok()
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
        self.hub.publish_leave(&self.client_id);
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
    async fn over_the_process_ceiling_the_stalled_holders_are_shed_never_the_readers() {
        let registry = Registry::new(Duration::from_secs(300));
        // 10,000 bytes per connection, 1,500 for the process.
        let hub = Hub::with_budget(Metrics::noop(), Budget::new(10_000, 1_500));
        let (reader_guard, _r, mut reader_rx) = member(&registry, &hub, "reader", 100);
        let (a_guard, _a, mut a_rx) = member(&registry, &hub, "stalled-a", 100);
        let (b_guard, _b, mut b_rx) = member(&registry, &hub, "stalled-b", 100);
        let text: Utf8Bytes = "x".repeat(300).into();
        let mut in_flight = Vec::new();
        for i in 0..3 {
            hub.publish(Envelope {
                text: text.clone(),
                except: None,
                span: None,
            });
            // The reader keeps up: what it is given is written (released) at once.
            assert!(reader_rx.try_recv().is_some());
            if i == 0 {
                // The stalled writers take the first message and never finish writing it.
                a_rx.recv_many(&mut in_flight, 1).await;
                b_rx.recv_many(&mut in_flight, 1).await;
            }
        }
        // a and b hold 900 each: 1,800 > 1,500. Once they have written nothing for
        // STALLED_AFTER, a pass (any publish schedules one) sheds one of them (900 covers the
        // excess), never the reader.
        tokio::time::sleep(STALLED_AFTER).await;
        hub.publish(Envelope {
            text: "tick".into(),
            except: None,
            span: None,
        });
        assert!(reader_rx.try_recv().is_some());
        tokio::time::sleep(SHED_AFTER * 3).await;
        let closing = [&a_guard, &b_guard]
            .iter()
            .filter(|g| g.entry().requested_close() == Some(CloseReason::SlowConsumer))
            .count();
        assert_eq!(closing, 1);
        assert_eq!(reader_guard.entry().requested_close(), None);
    }

    #[test]
    fn a_member_over_its_own_byte_share_is_asked_to_close() {
        let registry = Registry::new(Duration::from_secs(300));
        let hub = Hub::with_budget(Metrics::noop(), Budget::new(1_000, usize::MAX));
        let (reader_guard, _r, mut reader_rx) = member(&registry, &hub, "reader", 100);
        let (stalled_guard, _s, _s_rx) = member(&registry, &hub, "stalled", 100);
        for _ in 0..4 {
            hub.publish(Envelope {
                text: "x".repeat(300).into(),
                except: None,
                span: None,
            });
            assert!(reader_rx.try_recv().is_some());
        }
        assert_eq!(
            stalled_guard.entry().requested_close(),
            Some(CloseReason::SlowConsumer)
        );
        assert_eq!(reader_guard.entry().requested_close(), None);
    }

    #[test]
    fn leave_notices_from_many_threads_at_once_reach_a_member_each_once() {
        const LEAVERS: usize = 2_000;
        let registry = Registry::new(Duration::from_secs(300));
        let hub = Hub::default();
        let (_guard, _stays, mut rx) = member(&registry, &hub, "stays", 4);
        let mut groups: Vec<Vec<_>> = (0..4).map(|_| Vec::new()).collect();
        for i in 0..LEAVERS {
            groups[i % 4].push(member(&registry, &hub, &format!("l{i}"), 4));
        }
        let threads: Vec<_> = groups
            .into_iter()
            .map(|group| std::thread::spawn(move || drop(group)))
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut heard = std::collections::HashSet::new();
        while let Some(text) = rx.try_recv() {
            assert!(heard.insert(text.to_string()), "{text} twice");
        }
        assert_eq!(heard.len(), LEAVERS);
        assert!(heard.contains("Client #l1999 left the chat"));
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
