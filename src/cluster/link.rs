//! The two Redis connections of a node: the publisher (chat messages, requests and replies,
//! pipelined in batches from one bounded queue, so per-sender order holds) and the subscriber
//! (the chat channel and this node's control channel). Each reconnects by itself with backoff;
//! while the publisher is down, chat messages are dropped and counted at once instead of queued
//! (at-most-once across nodes), so nothing grows during an outage.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::source::Source;
use super::wire::{ChatOut, Wire, MAX_PAYLOAD};
use super::Shared;
use crate::chat::hub::Forward;
use crate::telemetry::metrics::{BackplaneDrop, BackplaneOp};
use crate::telemetry::{self, names::spans};

/// Items published per pipeline, at most.
const BATCH: usize = 256;
/// Reconnect backoff: doubles from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));
/// ...up to this with Sentinel, where a retry is a cheap lookup that may name the promoted
/// replica any moment (at 2 s, a failover waited for the backoff rather than for Sentinel).
const SENTINEL_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Longest a Redis connect or command may take before the link counts as down.
pub(super) const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// One item for the publisher.
pub(super) enum Outgoing {
    Chat {
        text: Utf8Bytes,
        sent_at: u64,
        /// The publish span, ended once Redis has taken the message.
        span: Option<tracing::Span>,
        traceparent: Option<String>,
        /// A leave notice.
        leave: bool,
    },
    /// A request or reply for one node's control channel.
    Control { channel: String, wire: Wire },
}

/// The sending side of the publisher's queue; what the hub forwards through.
pub(super) struct Outbox {
    pub tx: mpsc::Sender<Outgoing>,
    pub shared: Arc<Shared>,
}

impl Forward for Outbox {
    fn forward(&self, text: &Utf8Bytes, span: Option<&tracing::Span>) {
        self.queue_chat(text, span, false);
    }

    fn forward_leave(&self, text: &Utf8Bytes) {
        self.queue_chat(text, None, true);
    }
}

impl Outbox {
    fn queue_chat(&self, text: &Utf8Bytes, span: Option<&tracing::Span>, leave: bool) {
        let metrics = &self.shared.metrics;
        if !self.shared.publishing.load(Relaxed) {
            metrics.backplane_drop(BackplaneDrop::BackplaneDown, 1);
            return;
        }
        let (span, traceparent) = span.map_or((None, None), |parent| {
            let span = publish_span(parent, &self.shared.node);
            let traceparent = telemetry::spans::traceparent(&span);
            (Some(span), traceparent)
        });
        // Bounded in bytes as well as in messages: reserve the text's size first.
        let len = text.len();
        let queued = self.shared.queued_bytes.fetch_add(len, Relaxed);
        if queued + len > self.shared.max_queued_bytes {
            self.shared.queued_bytes.fetch_sub(len, Relaxed);
            metrics.backplane_drop(BackplaneDrop::QueueFull, 1);
            return;
        }
        let item = Outgoing::Chat {
            text: text.clone(),
            sent_at: unix_now_ns(),
            span,
            traceparent,
            leave,
        };
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(e) => {
                self.shared.queued_bytes.fetch_sub(len, Relaxed);
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => BackplaneDrop::QueueFull,
                    mpsc::error::TrySendError::Closed(_) => BackplaneDrop::BackplaneDown,
                };
                metrics.backplane_drop(why, 1);
            }
        }
    }

    /// Queues a control message; `false` when the publisher is down or its queue is full.
    pub fn control(&self, channel: String, wire: Wire) -> bool {
        self.shared.publishing.load(Relaxed)
            && self
                .tx
                .try_send(Outgoing::Control { channel, wire })
                .is_ok()
    }
}

/// A `backplane.publish` span under the message's own span (never under the connection span:
/// a connection's trace stays bounded).
fn publish_span(parent: &tracing::Span, node: &str) -> tracing::Span {
    tracing::info_span!(
        target: "wsmon",
        parent: parent,
        "backplane.publish",
        otel.name = spans::BACKPLANE_PUBLISH,
        otel.kind = "producer",
        messaging.system = "redis",
        messaging.operation.type = "publish",
        wsmon.node.id = %node,
    )
}

/// Now as unix nanoseconds.
pub(super) fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

async fn backoff(attempt: &mut u32, source: &Source, stop: &CancellationToken) -> bool {
    let max = if source.follows_failover() {
        SENTINEL_BACKOFF_MAX
    } else {
        BACKOFF.1
    };
    let delay = BACKOFF.0.saturating_mul(1 << (*attempt).min(5)).min(max);
    *attempt += 1;
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// A multiplexed connection to the primary, with wsmon's timeouts.
pub(super) async fn connect(
    source: &Source,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    source
        .client()
        .await?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// The publisher's heartbeat: a `PING`, or with Sentinel a `ROLE` that must still say
/// `master`, so a primary demoted while it stayed reachable is left as well as a dead one.
async fn check_link(
    source: &Source,
    conn: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<()> {
    if !source.follows_failover() {
        return redis::cmd("PING").query_async::<()>(conn).await;
    }
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(conn).await?;
    match role.first() {
        Some(redis::Value::BulkString(r)) if r.as_slice() == b"master" => Ok(()),
        _ => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "this Redis is no longer the primary",
        ))),
    }
}

/// Publishes what the outbox queues until `stop`, then what is still queued (best effort).
pub(super) async fn publish_loop(
    shared: Arc<Shared>,
    source: Arc<Source>,
    mut rx: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) {
    let mut seq = 0u64;
    let mut attempt = 0;
    let mut batch = Vec::with_capacity(BATCH);
    'connect: loop {
        let mut conn = match connect(&source).await {
            Ok(conn) => conn,
            Err(e) => {
                shared.metrics.backplane_error(BackplaneOp::Connect);
                shared.log.failed(&e);
                if !backoff(&mut attempt, &source, &stop).await {
                    return;
                }
                continue;
            }
        };
        attempt = 0;
        shared.set_publishing(true);
        tracing::info!(target: "wsmon", "backplane: publishing to Redis");
        let mut ping = tokio::time::interval(shared.heartbeat);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let received = tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => n,
                // A quiet link is checked too, so an outage is noticed before a message is lost.
                _ = ping.tick() => {
                    if let Err(e) = check_link(&source, &mut conn).await {
                        link_down(&shared, &mut rx, &e);
                        if !backoff(&mut attempt, &source, &stop).await {
                            return;
                        }
                        continue 'connect;
                    }
                    continue;
                }
                () = stop.cancelled() => {
                    // Leave notices of the drained sessions are queued: send them, briefly.
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(item) => batch.push(item),
                            Err(_) => break,
                        }
                    }
                    let _ = tokio::time::timeout(
                        REDIS_TIMEOUT,
                        publish_batch(&shared, &mut conn, &mut batch, &mut seq),
                    )
                    .await;
                    shared.set_publishing(false);
                    return;
                }
            };
            if received == 0 {
                shared.set_publishing(false);
                return;
            }
            if let Err(e) = publish_batch(&shared, &mut conn, &mut batch, &mut seq).await {
                link_down(&shared, &mut rx, &e);
                if !backoff(&mut attempt, &source, &stop).await {
                    return;
                }
                continue 'connect;
            }
        }
    }
}

/// The publishing link failed: stop taking messages, and drop what waits in the queue now
/// (counted as `publish_failed`) rather than deliver it late after a reconnect.
fn link_down(shared: &Shared, rx: &mut mpsc::Receiver<Outgoing>, error: &redis::RedisError) {
    shared.metrics.backplane_error(BackplaneOp::Publish);
    shared.log.failed(error);
    shared.set_publishing(false);
    let mut stale = 0;
    while let Ok(item) = rx.try_recv() {
        if let Outgoing::Chat { text, .. } = &item {
            stale += 1;
            shared.queued_bytes.fetch_sub(text.len(), Relaxed);
        }
    }
    shared
        .metrics
        .backplane_drop(BackplaneDrop::PublishFailed, stale);
}

/// Sends `batch` as one pipeline; on failure its chat messages are counted as `publish_failed`.
async fn publish_batch(
    shared: &Shared,
    conn: &mut redis::aio::MultiplexedConnection,
    batch: &mut Vec<Outgoing>,
    seq: &mut u64,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    let mut chats = 0u64;
    let mut spans = Vec::new();
    let chat_channel = shared.names.chat();
    for item in batch.drain(..) {
        match item {
            Outgoing::Chat {
                text,
                sent_at,
                span,
                traceparent,
                leave,
            } => {
                *seq += 1;
                chats += 1;
                shared.queued_bytes.fetch_sub(text.len(), Relaxed);
                // Serialized straight from the queued text (no owned copy of it first).
                let wire = ChatOut {
                    node: &shared.node,
                    epoch: shared.epoch,
                    seq: *seq,
                    sent_at,
                    text: text.as_str(),
                    traceparent: traceparent.as_deref(),
                    leave,
                };
                pipe.publish(&chat_channel, encode(&wire)).ignore();
                spans.extend(span);
            }
            Outgoing::Control { channel, wire } => {
                pipe.publish(channel, encode(&wire)).ignore();
            }
        }
    }
    let result = pipe.exec_async(conn).await;
    match &result {
        Ok(()) => shared.metrics.backplane_published.increment(chats),
        Err(_) => shared
            .metrics
            .backplane_drop(BackplaneDrop::PublishFailed, chats),
    }
    // The publish spans end here: once Redis has taken (or refused) the batch.
    drop(spans);
    result
}

fn encode(wire: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(wire).expect("wire messages serialize")
}

/// Receives chat from other nodes and requests/replies for this one until `stop`.
pub(super) async fn subscribe_loop(
    shared: Arc<Shared>,
    source: Arc<Source>,
    outbox: Arc<Outbox>,
    stop: CancellationToken,
) {
    let mut attempt = 0;
    let channels = [shared.names.chat(), shared.names.control(&shared.node)];
    loop {
        let subscribed = async {
            let client = source.client().await?;
            let pubsub = tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub())
                .await
                .map_err(|_| timeout_error("connect"))??;
            let (mut sink, stream) = pubsub.split();
            tokio::time::timeout(REDIS_TIMEOUT, sink.subscribe(&channels))
                .await
                .map_err(|_| timeout_error("subscribe"))??;
            Ok::<_, redis::RedisError>((sink, stream))
        };
        let (mut sink, mut stream) = tokio::select! {
            () = stop.cancelled() => return,
            r = subscribed => match r {
                Ok(pair) => pair,
                Err(e) => {
                    shared.metrics.backplane_error(BackplaneOp::Subscribe);
                    shared.log.failed(&e);
                    if !backoff(&mut attempt, &source, &stop).await {
                        return;
                    }
                    continue;
                }
            },
        };
        attempt = 0;
        shared.set_subscribed(true);
        tracing::info!(target: "wsmon", channels = ?channels, "backplane: subscribed");
        let mut ping = tokio::time::interval(shared.heartbeat);
        ping.tick().await;
        let why = loop {
            tokio::select! {
                () = stop.cancelled() => {
                    shared.set_subscribed(false);
                    return;
                }
                msg = stream.next() => match msg {
                    Some(msg) => receive(&shared, &outbox, msg.get_payload_bytes()),
                    None => break "subscription ended".to_owned(),
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(REDIS_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break "Redis did not answer a ping".to_owned();
                    }
                }
            }
        };
        shared.set_subscribed(false);
        shared.metrics.backplane_error(BackplaneOp::Subscribe);
        shared.log.failed(&why);
        if !backoff(&mut attempt, &source, &stop).await {
            return;
        }
    }
}

pub(super) fn timeout_error(what: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("Redis {what} timed out"),
    ))
}

/// Requests from other nodes served at once, at most; beyond, they are answered 503 at once.
pub(super) const SERVING: usize = 8;

/// Handles one message from a channel.
fn receive(shared: &Arc<Shared>, outbox: &Arc<Outbox>, payload: &[u8]) {
    // Redis echoes this node's own chat messages back: skip them without decoding.
    if payload.starts_with(&shared.own_chat_prefix) {
        return;
    }
    let decoded = (payload.len() <= MAX_PAYLOAD)
        .then(|| serde_json::from_slice::<Wire>(payload).ok())
        .flatten();
    let Some(wire) = decoded else {
        shared.metrics.backplane_error(BackplaneOp::Decode);
        shared
            .log
            .failed(&format!("undecodable message of {} bytes", payload.len()));
        return;
    };
    match wire {
        Wire::Chat { ref text, .. } if text.len() > shared.max_text => {
            shared.metrics.backplane_error(BackplaneOp::Decode);
            shared.log.failed(&format!(
                "chat text of {} bytes from Redis refused",
                text.len()
            ));
        }
        Wire::Chat {
            node,
            epoch,
            seq,
            sent_at,
            text,
            traceparent,
            leave,
        } => {
            let missed = shared.sequences.observe(&node, epoch, seq);
            if missed > 0 {
                shared.metrics.backplane_drop(BackplaneDrop::Lost, missed);
            }
            let metrics = &shared.metrics;
            metrics.backplane_received.increment(1);
            let latency = unix_now_ns().saturating_sub(sent_at);
            metrics.backplane_latency.record(latency as f64 / 1e9);
            let span = traceparent
                .as_deref()
                .and_then(telemetry::spans::parent_from_traceparent)
                .map(|parent| {
                    let span = tracing::info_span!(
                        target: "wsmon",
                        parent: None,
                        "backplane.deliver",
                        otel.name = spans::BACKPLANE_DELIVER,
                        otel.kind = "consumer",
                        messaging.system = "redis",
                        messaging.operation.type = "process",
                        wsmon.node.id = %shared.node,
                        wsmon.node.origin = %node,
                        delivered = tracing::field::Empty,
                    );
                    telemetry::spans::set_parent(&span, parent);
                    span
                });
            let _entered = span.as_ref().map(tracing::Span::enter);
            if leave {
                shared.hub.deliver_remote_leave(text.into());
                return;
            }
            let delivered = shared.hub.deliver_remote(text.into());
            if let Some(span) = &span {
                span.record("delivered", delivered as i64);
            }
        }
        Wire::Request { node, id, op } => {
            // Off the subscriber task: a value-sorted page can take milliseconds, and chat
            // from other nodes must not wait for it.
            let channel = shared.names.control(&node);
            let Ok(permit) = shared.serving.clone().try_acquire_owned() else {
                // A reply carries the HTTP API's answer; this is its 503 (`ApiError::Unavailable`).
                let reply = Wire::Reply {
                    node: shared.node.clone(),
                    id,
                    status: 503,
                    body: serde_json::json!({
                        "error": "unavailable",
                        "message": "this node is busy serving other nodes",
                    }),
                };
                outbox.control(channel, reply);
                return;
            };
            let (shared, outbox) = (shared.clone(), outbox.clone());
            tokio::spawn(async move {
                let (status, body) = (shared.serve)(op, &node);
                drop(permit);
                let reply = Wire::Reply {
                    node: shared.node.clone(),
                    id,
                    status,
                    body,
                };
                if !outbox.control(channel, reply) {
                    shared.metrics.backplane_error(BackplaneOp::Publish);
                }
            });
        }
        Wire::Reply {
            id, status, body, ..
        } => shared.pending.complete(id, status, body),
    }
}
