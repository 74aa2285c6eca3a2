//! The connection registry: every live connection indexed by order of arrival, by id and by
//! client id, plus global totals kept in atomics.
//!
//! Bounds: the index holds exactly the live connections (an entry leaves when its
//! [`ConnectionGuard`] drops); per-reason counters are fixed arrays. The index sits behind one
//! `std::sync::Mutex` (never held across an `.await`) that only connect, disconnect and the
//! listing APIs take; the message path touches only atomics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use super::entry::{ConnectionEntry, ConnectionInfo, ConnectionSnapshot};
use super::guard::ConnectionGuard;
use crate::reasons::{CloseReason, RejectReason};
use crate::telemetry::metrics::ConnectionMetrics;
use crate::telemetry::names::DURATION_BUCKETS;
use crate::telemetry::sampling::BriefShare;

/// Server-wide counters, updated lock-free, and the metric handles they mirror.
pub struct Totals {
    pub(crate) total_connections: AtomicU64,
    pub(crate) active_connections: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) disconnects: [AtomicU64; CloseReason::ALL.len()],
    /// Ended connections per duration bucket ([`DURATION_BUCKETS`], then one for longer).
    pub(crate) durations: [AtomicU64; DURATION_BUCKETS.len() + 1],
    pub(crate) rejections: [AtomicU64; RejectReason::ALL.len()],
    pub(crate) metrics: ConnectionMetrics,
}

impl Totals {
    fn new(metrics: ConnectionMetrics) -> Self {
        Self {
            total_connections: AtomicU64::default(),
            active_connections: AtomicU64::default(),
            messages_received: AtomicU64::default(),
            messages_sent: AtomicU64::default(),
            bytes_received: AtomicU64::default(),
            bytes_sent: AtomicU64::default(),
            disconnects: Default::default(),
            durations: Default::default(),
            rejections: Default::default(),
            metrics,
        }
    }
}

/// How a registry reports: idle threshold, trace links, metric handles.
#[derive(Clone)]
pub struct RegistryOptions {
    /// Connections with no client message for this long are flagged idle.
    pub idle_after: Duration,
    /// Link template with `{trace_id}`; empty for none.
    pub trace_url_template: String,
    /// What the core records into (see `ConnectionMetrics`).
    pub metrics: ConnectionMetrics,
    /// The share of brief, normal disconnects whose record is exported
    /// (`telemetry.brief_disconnect_share`).
    pub brief_disconnect_share: f64,
}

#[derive(Default)]
pub(super) struct Index {
    pub(super) by_seq: BTreeMap<u64, Arc<ConnectionEntry>>,
    pub(super) by_id: HashMap<Uuid, u64>,
    pub(super) by_client: HashMap<String, BTreeSet<u64>>,
    next_seq: u64,
    /// Set by [`Registry::close_all`]: connections registered later are asked to close at once.
    closing: Option<CloseReason>,
}

/// The registry; cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Registry {
    index: Arc<Mutex<Index>>,
    totals: Arc<Totals>,
    idle_after: Duration,
    trace_url_template: Arc<str>,
    brief_records: Arc<BriefShare>,
}

/// One bucket of the ended-connection duration histogram.
#[derive(Debug, Clone, Serialize)]
pub struct DurationBucket {
    pub le: Option<f64>,
    pub count: u64,
}

/// Global figures as `/ws-stats` shows them; the first four are the tutorial's contract.
#[derive(Debug, Clone, Serialize)]
pub struct GlobalStats {
    pub total_connections: u64,
    pub active_connections: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Ended connections by close reason (every reason present, zeros included).
    pub disconnects: BTreeMap<&'static str, u64>,
    /// Ended connections by duration: per bucket (not cumulative), `le` in seconds, the last
    /// bucket (`le: null`) holds the longer ones.
    pub connection_durations: Vec<DurationBucket>,
    /// Refused upgrades by reason (every reason present).
    pub rejections: BTreeMap<&'static str, u64>,
}

/// Entries copied out per lock acquisition when a listing must look at every connection.
pub(super) const SCAN_CHUNK: usize = 1024;

impl Registry {
    /// An empty registry without metrics or trace links; connections idle longer than
    /// `idle_after` are flagged idle.
    pub fn new(idle_after: Duration) -> Self {
        Self::with_options(RegistryOptions {
            idle_after,
            trace_url_template: String::new(),
            metrics: ConnectionMetrics::noop(),
            brief_disconnect_share: 1.0,
        })
    }

    /// An empty registry.
    pub fn with_options(options: RegistryOptions) -> Self {
        Self {
            index: Arc::default(),
            totals: Arc::new(Totals::new(options.metrics)),
            idle_after: options.idle_after,
            trace_url_template: options.trace_url_template.into(),
            brief_records: Arc::new(BriefShare::new(options.brief_disconnect_share)),
        }
    }

    /// Whether the next brief, normal disconnect's record is exported (its share).
    pub(super) fn keep_brief_record(&self) -> bool {
        self.brief_records.keep()
    }

    /// The metric handles this registry records into.
    pub fn metrics(&self) -> &ConnectionMetrics {
        &self.totals.metrics
    }

    /// A snapshot of `entry` for the APIs, with its idle flag and trace link.
    pub fn snapshot(&self, entry: &ConnectionEntry) -> ConnectionSnapshot {
        let mut snapshot = entry.snapshot(self.idle_after);
        if !snapshot.trace_id.is_empty() && !self.trace_url_template.is_empty() {
            snapshot.trace_url = self
                .trace_url_template
                .replace("{trace_id}", &snapshot.trace_id);
        }
        snapshot
    }

    /// The idle threshold snapshots use.
    pub fn idle_after(&self) -> Duration {
        self.idle_after
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic while holding this lock cannot leave the index half-updated in a way that
        // matters more than refusing all further service, so recover from poisoning.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection; it stays listed until the returned guard drops.
    pub fn register(&self, info: ConnectionInfo) -> ConnectionGuard {
        self.register_traced(info, None)
    }

    /// Registers a connection whose span continues the trace of `parent` (e.g. from an
    /// inbound `traceparent`).
    pub fn register_traced(
        &self,
        info: ConnectionInfo,
        parent: Option<opentelemetry::Context>,
    ) -> ConnectionGuard {
        let mut index = self.lock();
        let seq = index.next_seq;
        index.next_seq += 1;
        let client_id = info.client_id.clone();
        let entry = Arc::new(ConnectionEntry::new(seq, info, self.totals.clone()));
        index.by_seq.insert(seq, entry.clone());
        index.by_id.insert(entry.id(), seq);
        index.by_client.entry(client_id).or_default().insert(seq);
        let closing = index.closing;
        drop(index);
        if let Some(reason) = closing {
            entry.request_close(reason);
        }
        self.totals.total_connections.fetch_add(1, Relaxed);
        self.totals.active_connections.fetch_add(1, Relaxed);
        let metrics = &self.totals.metrics;
        metrics.connections_opened.increment(1);
        metrics.active_connections.increment(1.0);
        ConnectionGuard::new(self.clone(), entry, parent)
    }

    /// Asks every connection, and every one registered from now on, to close with `reason`
    /// (shutdown). Each connection's task learns it from its own entry, so no signal shared
    /// by every connection is polled on the message path. Returns how many were asked.
    pub fn close_all(&self, reason: CloseReason) -> usize {
        // Set first: a connection registered from here on is asked by `register`, any earlier
        // one is in the scan.
        self.lock().closing = Some(reason);
        self.scan_all()
            .iter()
            .filter(|e| e.request_close(reason))
            .count()
    }

    /// Removes an entry and counts its close reason; called once, by the guard.
    pub(super) fn release(&self, entry: &ConnectionEntry, reason: CloseReason) {
        let mut index = self.lock();
        if index.by_seq.remove(&entry.seq).is_none() {
            return;
        }
        index.by_id.remove(&entry.id());
        let client_id = &entry.info().client_id;
        if let Some(set) = index.by_client.get_mut(client_id) {
            set.remove(&entry.seq);
            if set.is_empty() {
                index.by_client.remove(client_id);
            }
        }
        drop(index);
        self.totals.active_connections.fetch_sub(1, Relaxed);
        self.totals.disconnects[reason.index()].fetch_add(1, Relaxed);
        let metrics = &self.totals.metrics;
        metrics.active_connections.decrement(1.0);
        metrics.connections_closed[reason.index()].increment(1);
        let seconds = entry.age().as_secs_f64();
        metrics.connection_duration[reason.index()].record(seconds);
        let bucket = DURATION_BUCKETS.partition_point(|le| *le < seconds);
        self.totals.durations[bucket].fetch_add(1, Relaxed);
        if let Some(errors) = &metrics.errors[reason.index()] {
            errors.increment(1);
        }
    }

    /// Counts an upgrade refused before a connection existed.
    pub fn record_rejection(&self, reason: RejectReason) {
        self.totals.rejections[reason.index()].fetch_add(1, Relaxed);
        self.totals.metrics.rejections[reason.index()].increment(1);
    }

    /// Live connections right now.
    pub fn active(&self) -> u64 {
        self.totals.active_connections.load(Relaxed)
    }

    /// The global counters (O(1): atomics only).
    pub fn global_stats(&self) -> GlobalStats {
        let t = &self.totals;
        let by = |names: &[&'static str], counters: &[AtomicU64]| {
            names
                .iter()
                .zip(counters)
                .map(|(n, c)| (*n, c.load(Relaxed)))
                .collect()
        };
        let close_names: Vec<_> = CloseReason::ALL.iter().map(|r| r.as_str()).collect();
        let reject_names: Vec<_> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        GlobalStats {
            total_connections: t.total_connections.load(Relaxed),
            active_connections: t.active_connections.load(Relaxed),
            messages_received: t.messages_received.load(Relaxed),
            messages_sent: t.messages_sent.load(Relaxed),
            bytes_received: t.bytes_received.load(Relaxed),
            bytes_sent: t.bytes_sent.load(Relaxed),
            disconnects: by(&close_names, &t.disconnects),
            connection_durations: t
                .durations
                .iter()
                .enumerate()
                .map(|(i, c)| DurationBucket {
                    le: DURATION_BUCKETS.get(i).copied(),
                    count: c.load(Relaxed),
                })
                .collect(),
            rejections: by(&reject_names, &t.rejections),
        }
    }

    /// The live connection with this id.
    pub fn get(&self, id: Uuid) -> Option<Arc<ConnectionEntry>> {
        let index = self.lock();
        let seq = index.by_id.get(&id)?;
        index.by_seq.get(seq).cloned()
    }

    /// Every live connection of one client id, oldest first.
    pub fn by_client(&self, client_id: &str) -> Vec<Arc<ConnectionEntry>> {
        let index = self.lock();
        index
            .by_client
            .get(client_id)
            .map_or_else(Vec::new, |seqs| {
                seqs.iter()
                    .filter_map(|s| index.by_seq.get(s).cloned())
                    .collect()
            })
    }

    /// Copies out every live entry, taking the lock once per [`SCAN_CHUNK`] entries.
    pub fn scan_all(&self) -> Vec<Arc<ConnectionEntry>> {
        let mut out = Vec::with_capacity(self.active() as usize);
        let mut from = Bound::Unbounded;
        loop {
            let index = self.lock();
            let before = out.len();
            out.extend(
                index
                    .by_seq
                    .range((from, Bound::Unbounded))
                    .take(SCAN_CHUNK)
                    .map(|(_, e)| e.clone()),
            );
            drop(index);
            match out.last() {
                Some(last) if out.len() - before == SCAN_CHUNK => {
                    from = Bound::Excluded(last.seq);
                }
                _ => return out,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> ConnectionInfo {
        ConnectionInfo::new(id)
    }

    fn sizes(r: &Registry) -> (usize, usize, usize) {
        let index = r.lock();
        (index.by_seq.len(), index.by_id.len(), index.by_client.len())
    }

    #[tokio::test]
    async fn close_all_reaches_every_connection_and_every_later_one() {
        let registry = Registry::new(Duration::from_secs(300));
        let kicked = registry.register(info("kicked"));
        kicked.entry().request_close(CloseReason::AdminKick);
        // More than one chunk, so the walk over the index is exercised.
        let guards: Vec<_> = (0..SCAN_CHUNK + 5)
            .map(|i| registry.register(info(&format!("c{i}"))))
            .collect();
        let waiting = guards[7].entry().clone();
        let waiter = tokio::spawn(async move { waiting.close_requested().await });
        tokio::task::yield_now().await;
        assert_eq!(
            registry.close_all(CloseReason::ServerShutdown),
            SCAN_CHUNK + 5
        );
        let woken = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert_eq!(woken.unwrap().unwrap(), CloseReason::ServerShutdown);
        assert!(guards
            .iter()
            .all(|g| g.entry().requested_close() == Some(CloseReason::ServerShutdown)));
        assert_eq!(
            kicked.entry().requested_close(),
            Some(CloseReason::AdminKick)
        );
        let late = registry.register(info("late"));
        assert_eq!(
            late.entry().requested_close(),
            Some(CloseReason::ServerShutdown)
        );
    }

    #[test]
    fn every_index_empties_after_any_number_of_connects_and_disconnects() {
        let registry = Registry::new(Duration::from_secs(300));
        for round in 0..3 {
            let guards: Vec<_> = (0..1000)
                .map(|i| registry.register(info(&format!("c{}", i % 37))))
                .collect();
            assert_eq!(sizes(&registry), (1000, 1000, 37));
            drop(guards);
            assert_eq!(sizes(&registry), (0, 0, 0), "round {round}");
            assert_eq!(registry.active(), 0);
        }
        assert_eq!(registry.global_stats().total_connections, 3000);
    }

    #[test]
    fn scan_all_crosses_chunk_boundaries_without_loss_or_duplicates() {
        let registry = Registry::new(Duration::from_secs(300));
        let n = SCAN_CHUNK * 2 + 7;
        let _guards: Vec<_> = (0..n)
            .map(|i| registry.register(info(&i.to_string())))
            .collect();
        let seqs: Vec<u64> = registry.scan_all().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (0..n as u64).collect::<Vec<_>>());
        // Exactly one chunk: the loop must still stop.
        let exact = Registry::new(Duration::from_secs(300));
        let _g: Vec<_> = (0..SCAN_CHUNK).map(|_| exact.register(info("x"))).collect();
        assert_eq!(exact.scan_all().len(), SCAN_CHUNK);
    }
}
