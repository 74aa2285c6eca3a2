//! One chat connection: a reader, a writer and the close signals raced in one `select!`, then a
//! single place that sends the close frame and records the outcome on the guard.
//!
//! The session is generic over the socket's `Sink`/`Stream` halves so it can be driven by tests
//! without a network.

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};

use super::hub::{Envelope, Membership};
use super::policy::{self, Clock, Liveness, RateLimit, RateLimiter, Verdict};
use super::protocol;
use super::queue::{Receiver, Recv};
use crate::monitor::{CloseReason, ConnectionEntry, ConnectionGuard, Outcome};
use crate::telemetry::sampling::MessageSampler;
use crate::telemetry::{self, names::spans};

/// Timing, limits and tracing policy for one session: resolved once from the settings and
/// copied into every session, so the session never reads the settings (or a lock) itself.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Longest a batch of writes may block before the client counts as a slow consumer.
    pub send_timeout: Duration,
    /// Longest the closing handshake may take.
    pub close_timeout: Duration,
    /// Which inbound messages get a `websocket.message` span.
    pub message_spans: MessageSampler,
    /// How often the server pings.
    pub ping_interval: Duration,
    /// How long a pong may take before `ping_timeout`.
    pub ping_timeout: Duration,
    /// Idle warning after this long without a chat message...
    pub idle_warn_after: Duration,
    /// ...and the `idle_timeout` close after this long.
    pub idle_close_after: Duration,
    /// The per-connection message rate limit.
    pub rate: RateLimit,
    /// The close code for `server_shutdown` (1001, or 1012 for a restart).
    pub shutdown_code: u16,
    /// The `websocket.open` span is recorded once the connection has lasted this long.
    pub open_span_after: Duration,
}

/// Messages written per flush, at most.
const WRITE_BATCH: usize = 64;

/// The connection's TCP socket (its descriptor), given by the accept loop so a close can wait
/// until the client has received everything sent ([`wait_received`]); absent for streams that
/// are not a plain TCP socket.
#[derive(Debug, Clone, Copy)]
pub struct Socket(pub std::os::fd::RawFd);

/// With the `fault-injection` feature (tests only, never in a release build), this chat text
/// makes the connection's task panic.
#[cfg(feature = "fault-injection")]
pub const FAULT_PANIC: &str = "\u{0}wsmon-fault:panic";

/// How long the socket is read for a pending EOF, reset or close frame before a close for a
/// reason that describes a live peer (see [`CloseReason::describes_a_live_peer`]) is recorded.
/// A peer that is alive shows nothing and is closed this much later; one whose end is
/// already on its way is recorded as `client_gone` (or `client_closed`).
pub const PEER_PROBE: Duration = Duration::from_millis(250);

/// How the session loop ended.
enum End {
    /// The client sent a close frame (with this code, if any).
    ClientClosed(Option<u16>),
    /// The server closes for this reason.
    Server(CloseReason),
    /// The transport is gone; nothing can be sent.
    Gone,
    /// A write failed; the reader has not said why yet.
    WriteFailed,
}

/// Runs the chat for one connection until it ends, then releases it via `guard`'s drop
/// (after `membership`'s drop has told the others it left).
pub async fn run<S, R>(
    (mut sink, mut stream): (S, R),
    mut guard: ConnectionGuard,
    membership: Membership,
    mut outbound: Receiver,
    limits: SessionLimits,
    socket: Option<Socket>,
) where
    S: Sink<Message, Error = axum::Error> + Unpin,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let entry = guard.entry().clone();
    // The connection span: what the session logs goes there (the task is not entered in it).
    let span = guard.span().clone();
    let liveness = Liveness::new();
    // A panic anywhere in the loop (a bug) ends this connection only: the socket halves are
    // borrowed, not moved, so the client still gets its 1011 close frame.
    let looped = std::panic::AssertUnwindSafe(async {
        let read = read_loop(&mut stream, &entry, &span, &membership, &liveness, &limits);
        tokio::pin!(read);
        let write = write_loop(&mut sink, &mut outbound, &entry, limits.send_timeout);
        let clock = Clock {
            ping_interval: limits.ping_interval,
            ping_timeout: limits.ping_timeout,
            idle_warn_after: limits.idle_warn_after,
            idle_close_after: limits.idle_close_after,
            open_span_after: limits.open_span_after,
        };
        let opened = || crate::monitor::guard::record_open(&span, &entry);
        let timers = policy::watch(&entry, &span, &membership, &liveness, clock, opened);
        // In a fixed order (no random start per wake): a requested close first, then what the
        // client sent, what it is sent, and the timers. `read_done`: the read future finished
        // and must not be polled again.
        //
        // Invariant a change must keep: this is the session's only wait, and it decides how the
        // session ends. The read future is pinned outside it because it is polled again below
        // (to tell a client that closed or vanished from a live one); the write and timer
        // futures are dropped, which is safe only because they hold nothing of their own: what
        // is not yet written is in the queue or the sink (the close frame goes through the same
        // sink), the timers' deadlines come from the entry and the liveness state, and a close
        // requested while another branch won is still in the entry for the outcome to read.
        let (end, read_done) = tokio::select! {
            biased;
            reason = entry.close_requested() => (End::Server(reason), false),
            end = &mut read => (end, true),
            end = write => (end, false),
            reason = timers => (End::Server(reason), false),
        };
        match end {
            // A write failed: the client may have sent a close frame and hung up before we
            // read it. What is left to read decides between client_closed and client_gone.
            End::WriteFailed => match tokio::time::timeout(limits.close_timeout, &mut read).await {
                Ok(closed @ End::ClientClosed(_)) => closed,
                _ => End::Gone,
            },
            // A reason that describes a live peer (queue overflow, no pong, silence) is only
            // the truth if the socket has not already ended: in a storm, dead peers' queues
            // overflow with leave notices before their EOF is read. The socket decides.
            End::Server(reason) if !read_done && reason.describes_a_live_peer() => {
                match tokio::time::timeout(PEER_PROBE, &mut read).await {
                    Ok(End::Gone) => End::Gone,
                    Ok(closed @ End::ClientClosed(_)) => closed,
                    _ => End::Server(reason),
                }
            }
            other => other,
        }
    });
    let end = match looped.catch_unwind().await {
        Ok(end) => end,
        Err(_) => {
            span.in_scope(|| {
                tracing::error!(target: "wsmon", "connection task panicked: closing it with 1011");
            });
            End::Server(CloseReason::InternalError)
        }
    };
    drop(outbound);
    let outcome = finish(end, &mut sink, &mut stream, &limits, socket).await;
    guard.set_outcome(outcome);
    // The leave notice goes out inside the connection span, as its last work.
    guard.attach(membership);
    drop(guard);
}

/// Sends or answers the close frame as `end` requires; how the connection ended.
async fn finish<S, R>(
    end: End,
    sink: &mut S,
    stream: &mut R,
    limits: &SessionLimits,
    socket: Option<Socket>,
) -> Outcome
where
    S: Sink<Message, Error = axum::Error> + Unpin,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    match end {
        End::ClientClosed(code) => {
            // tungstenite queued the echo of the client's close frame; flush it out.
            let _ = tokio::time::timeout(limits.close_timeout, sink.close()).await;
            Outcome {
                reason: CloseReason::ClientClosed,
                code_sent: code,
                code_received: code,
            }
        }
        End::Server(reason) => {
            let code = match reason {
                CloseReason::ServerShutdown => Some(limits.shutdown_code),
                other => other.server_code(),
            };
            let frame = code.map(|code| CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason.as_str()),
            });
            let closing = tokio::time::Instant::now();
            let sent = matches!(
                tokio::time::timeout(limits.close_timeout, sink.send(Message::Close(frame))).await,
                Ok(Ok(()))
            );
            // A lingering close: a client still sending when the server closes has data on its
            // way; closing a socket with unread input resets the connection, and the kernel
            // discards whatever of the close frame is still unsent. Read and discard until the
            // client answers (or hangs up), then close.
            let answered = if sent {
                linger(stream, limits.close_timeout).await
            } else {
                None
            };
            // No answer read: the client may not be reading yet, or the input cannot be read
            // (the rest of an oversized frame). Keep the socket until the client has received
            // what was sent, close frame included, so the reset cannot destroy it.
            if let (true, None, Some(socket)) = (sent, answered, socket) {
                let left = limits.close_timeout.saturating_sub(closing.elapsed());
                wait_received(socket, left).await;
            }
            let _ = tokio::time::timeout(limits.close_timeout, sink.close()).await;
            Outcome {
                reason,
                code_sent: code.filter(|_| sent),
                code_received: answered,
            }
        }
        End::Gone | End::WriteFailed => Outcome {
            reason: CloseReason::ClientGone,
            code_sent: None,
            code_received: None,
        },
    }
}

/// Waits until the peer has acknowledged everything sent on `socket` (its send queue is
/// empty), looking every 5 ms, for at most `timeout`.
async fn wait_received(socket: Socket, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while unacknowledged(socket) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Bytes sent on `socket` and not yet acknowledged by the peer (0 when unknown).
#[cfg(target_os = "linux")]
fn unacknowledged(socket: Socket) -> usize {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int; the descriptor belongs to this connection's
    // socket, which the session keeps open until it returns.
    let ok = unsafe { libc::ioctl(socket.0, libc::TIOCOUTQ, &mut queued) } == 0;
    if ok {
        queued.max(0) as usize
    } else {
        0
    }
}

#[cfg(not(target_os = "linux"))]
fn unacknowledged(_: Socket) -> usize {
    0
}

/// Most bytes read and discarded while waiting for the client's answer to a close frame.
pub const LINGER_BYTES: usize = 1 << 20;

/// Reads and discards what the client still sends, until its close frame (its code), EOF or
/// an error, `timeout`, or [`LINGER_BYTES`].
async fn linger<R>(stream: &mut R, timeout: Duration) -> Option<u16>
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let drain = async {
        let mut discarded = 0;
        while let Some(Ok(msg)) = stream.next().await {
            discarded += match msg {
                Message::Close(frame) => return frame.map(|f| f.code),
                Message::Text(t) => t.len(),
                Message::Binary(b) => b.len(),
                Message::Ping(b) | Message::Pong(b) => b.len(),
            };
            if discarded > LINGER_BYTES {
                break;
            }
        }
        None
    };
    tokio::time::timeout(timeout, drain).await.ok().flatten()
}

async fn read_loop<R>(
    stream: &mut R,
    entry: &ConnectionEntry,
    span: &tracing::Span,
    membership: &Membership,
    liveness: &Liveness,
    limits: &SessionLimits,
) -> End
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let client_id = &entry.info().client_id;
    let connection = telemetry::spans::connection_context(span);
    let mut rate = RateLimiter::new(limits.rate, Instant::now());
    let metrics = membership.hub().metrics().clone();
    loop {
        let msg = match stream.next().await {
            None => return End::Gone,
            Some(Err(e)) => return classify(e),
            Some(Ok(msg)) => msg,
        };
        match msg {
            Message::Text(text) => {
                #[cfg(feature = "fault-injection")]
                if text.as_str() == FAULT_PANIC {
                    panic!("injected fault");
                }
                match rate.check(Instant::now()) {
                    Verdict::Accept => {}
                    Verdict::Drop { notify } => {
                        metrics.messages_rate_limited.increment(1);
                        if notify {
                            span.in_scope(|| {
                                tracing::info!(target: "wsmon", span_event = true, "rate limit exceeded: dropping messages");
                            });
                            membership
                                .send_own(protocol::rate_limited(limits.rate.per_second).into());
                        }
                        continue;
                    }
                    Verdict::Close => {
                        metrics.messages_rate_limited.increment(1);
                        return End::Server(CloseReason::RateLimited);
                    }
                }
                entry.record_received(text.len());
                let span = limits
                    .message_spans
                    .sample(entry.messages_received())
                    .then(|| message_span(entry, text.len(), &connection));
                let _in_span = span.as_ref().map(tracing::Span::enter);
                if !membership.send_own(protocol::personal_reply(&text).into()) {
                    return End::Server(CloseReason::SlowConsumer);
                }
                membership.hub().publish(Envelope {
                    text: protocol::says(client_id, &text).into(),
                    except: None,
                    span: span.clone(),
                });
            }
            Message::Binary(_) => return End::Server(CloseReason::UnsupportedData),
            Message::Close(frame) => return End::ClientClosed(frame.map(|f| f.code)),
            Message::Pong(_) => liveness.pong(),
            // tungstenite answers pings itself.
            Message::Ping(_) => {}
        }
    }
}

async fn write_loop<S>(
    sink: &mut S,
    outbound: &mut Receiver,
    entry: &ConnectionEntry,
    send_timeout: Duration,
) -> End
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    // Grows with use; an idle connection allocates nothing here.
    let mut batch = Vec::new();
    loop {
        match outbound.recv_many(&mut batch, WRITE_BATCH).await {
            Recv::Items(_) => {}
            Recv::Ping => {
                let send = sink.send(Message::Ping(axum::body::Bytes::new()));
                match tokio::time::timeout(send_timeout, send).await {
                    Err(_) => return End::Server(CloseReason::SlowConsumer),
                    Ok(Err(_)) => return End::WriteFailed,
                    Ok(Ok(())) => continue,
                }
            }
            // Every sender is gone: the membership was dropped, the session is ending.
            Recv::Closed => return End::Server(CloseReason::InternalError),
            // Leave notices meant for this client are gone from the log: it fell that far behind.
            Recv::Lagged => return End::Server(CloseReason::SlowConsumer),
        }
        let frames = batch.len() as u64;
        let bytes: usize = batch.iter().map(|t| t.as_str().len()).sum();
        let write = async {
            for text in batch.drain(..) {
                sink.feed(Message::Text(text)).await?;
            }
            sink.flush().await
        };
        match tokio::time::timeout(send_timeout, write).await {
            Err(_) => return End::Server(CloseReason::SlowConsumer),
            Ok(Err(_)) => return End::WriteFailed,
            Ok(Ok(())) => {
                // Written: no longer held against the byte budget.
                outbound.release();
                entry.record_sent_many(frames, bytes);
            }
        }
        // A burst grew the batch; a quiet connection gives that memory back.
        if frames <= 4 && batch.capacity() > 16 {
            batch.shrink_to(4);
        }
    }
}

/// A `websocket.message` span: its own trace (so a long connection's trace stays bounded),
/// linked to the connection span.
fn message_span(
    entry: &ConnectionEntry,
    size: usize,
    connection: &opentelemetry::trace::SpanContext,
) -> tracing::Span {
    let span = tracing::info_span!(
        target: "wsmon",
        parent: None,
        "websocket.message",
        otel.name = spans::MESSAGE,
        otel.kind = "consumer",
        connection.id = %entry.id(),
        client.id = %entry.info().client_id,
        // i64: tracing-opentelemetry records u64 fields as strings.
        messaging.message.body.size = size as i64,
        message.sequence = entry.messages_received() as i64,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    telemetry::spans::link(&span, connection.clone());
    telemetry::spans::record_ids(&span);
    span
}

/// Maps a read error to how the connection ends.
fn classify(err: axum::Error) -> End {
    use tungstenite::error::{Error as WsError, ProtocolError};
    let inner = err.into_inner();
    let Some(ws) = inner.downcast_ref::<WsError>() else {
        return End::Server(CloseReason::InternalError);
    };
    match ws {
        WsError::Capacity(_) => End::Server(CloseReason::MessageTooBig),
        WsError::Utf8(_) => End::Server(CloseReason::InvalidPayload),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
        | WsError::Io(_)
        | WsError::ConnectionClosed
        | WsError::AlreadyClosed => End::Gone,
        WsError::Protocol(_) => End::Server(CloseReason::ClientProtocolError),
        _ => End::Server(CloseReason::InternalError),
    }
}
