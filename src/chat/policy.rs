//! Per-connection policies that run inside the session task (no shared state, no scans):
//! the message rate limit, liveness (ping/pong) and the idle warning and close.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::hub::Membership;
use super::protocol;
use crate::monitor::{CloseReason, ConnectionEntry};

/// Rate limit settings for one connection.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
    /// Drops within `window` that close the connection.
    pub close_drops: u32,
    pub window: Duration,
}

/// What to do with one inbound message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Drop it; `notify` is true for the first drop of an episode.
    Drop {
        notify: bool,
    },
    /// Too many drops: close as `rate_limited`.
    Close,
}

/// A token bucket plus a count of recent drops.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    tokens: f64,
    refilled: Instant,
    in_episode: bool,
    window_start: Instant,
    window_drops: u32,
}

impl RateLimiter {
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst),
            refilled: now,
            in_episode: false,
            window_start: now,
            window_drops: 0,
        }
    }

    /// Decides on a message arriving at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * self.limit.per_second).min(f64::from(self.limit.burst));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.in_episode = false;
            return Verdict::Accept;
        }
        if now.saturating_duration_since(self.window_start) > self.limit.window {
            self.window_start = now;
            self.window_drops = 0;
        }
        self.window_drops += 1;
        if self.window_drops >= self.limit.close_drops {
            return Verdict::Close;
        }
        let notify = !self.in_episode;
        self.in_episode = true;
        Verdict::Drop { notify }
    }
}

/// Microseconds on a monotonic clock shared by the session's futures.
fn micros_since(origin: Instant) -> u64 {
    origin.elapsed().as_micros() as u64
}

/// Liveness state shared by the reader (records pongs) and the pinger.
pub struct Liveness {
    origin: Instant,
    last_pong_us: AtomicU64,
}

impl Liveness {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_pong_us: AtomicU64::new(0),
        }
    }

    /// Called by the reader for every pong.
    pub fn pong(&self) {
        self.last_pong_us.store(micros_since(self.origin), Relaxed);
    }
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

/// When a connection pings and when it counts as idle.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub ping_interval: Duration,
    /// A pong must follow a ping within this long.
    pub ping_timeout: Duration,
    /// Idle warning after this long without a chat message...
    pub idle_warn_after: Duration,
    /// ...and the `idle_timeout` close after this long.
    pub idle_close_after: Duration,
    /// The connection's open span is recorded once it has lasted this long (a connection that
    /// ends sooner is in the trace UI by its connection span anyway).
    pub open_span_after: Duration,
}

/// The connection's timers in one: asks for a ping (through `membership`) every
/// `ping_interval` and completes as `ping_timeout` when no pong followed within
/// `ping_timeout`; warns once after `idle_warn_after` without a chat message and completes as
/// `idle_timeout` after `idle_close_after` (a chat message in between resets both); the warning
/// is logged in `span`. One sleep is registered per connection, re-armed for the earliest of
/// these deadlines.
pub async fn watch(
    entry: &ConnectionEntry,
    span: &tracing::Span,
    membership: &Membership,
    liveness: &Liveness,
    clock: Clock,
    opened: impl FnOnce(),
) -> CloseReason {
    let started = Instant::now();
    let mut opened = Some(opened);
    let open_at = started + clock.open_span_after;
    let mut ping_at = started + clock.ping_interval;
    // After a ping: when it was sent (µs since the liveness origin) and when its pong is due.
    let mut awaiting: Option<(u64, Instant)> = None;
    let mut warned = false;
    let sleep = tokio::time::sleep_until(ping_at.into());
    tokio::pin!(sleep);
    loop {
        let now = Instant::now();
        if now >= open_at {
            if let Some(opened) = opened.take() {
                opened();
            }
        }
        match awaiting {
            Some((sent, due)) if now >= due => {
                if liveness.last_pong_us.load(Relaxed) < sent {
                    return CloseReason::PingTimeout;
                }
                awaiting = None;
                ping_at = now + clock.ping_interval;
            }
            None if now >= ping_at => {
                awaiting = Some((micros_since(liveness.origin), now + clock.ping_timeout));
                membership.request_ping();
            }
            _ => {}
        }
        let idle = entry.idle_for();
        if idle >= clock.idle_close_after {
            return CloseReason::IdleTimeout;
        }
        let idle_due = if idle >= clock.idle_warn_after {
            if !warned {
                warned = true;
                span.in_scope(|| {
                    tracing::info!(target: "wsmon", span_event = true, idle_s = idle.as_secs_f64(), "connection idle: warned");
                });
                membership.send_own(
                    protocol::idle_warning(clock.idle_close_after.saturating_sub(idle)).into(),
                );
            }
            now + (clock.idle_close_after - idle)
        } else {
            warned = false;
            now + (clock.idle_warn_after - idle)
        };
        let liveness_due = awaiting.map_or(ping_at, |(_, due)| due);
        let mut due = idle_due.min(liveness_due);
        if opened.is_some() {
            due = due.min(open_at);
        }
        sleep.as_mut().reset(due.into());
        (&mut sleep).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> (RateLimiter, Instant) {
        let now = Instant::now();
        let limit = RateLimit {
            per_second: 10.0,
            burst: 3,
            close_drops: 5,
            window: Duration::from_secs(10),
        };
        (RateLimiter::new(limit, now), now)
    }

    #[test]
    fn a_burst_passes_then_drops_notify_once_per_episode() {
        let (mut l, now) = limiter();
        for _ in 0..3 {
            assert_eq!(l.check(now), Verdict::Accept);
        }
        assert_eq!(l.check(now), Verdict::Drop { notify: true });
        assert_eq!(l.check(now), Verdict::Drop { notify: false });
        // 100 ms later one token is back: accepted, and the episode is over.
        let later = now + Duration::from_millis(100);
        assert_eq!(l.check(later), Verdict::Accept);
        assert_eq!(l.check(later), Verdict::Drop { notify: true });
    }

    #[test]
    fn sustained_abuse_closes_and_old_drops_expire() {
        let (mut l, now) = limiter();
        for _ in 0..3 {
            l.check(now);
        }
        for _ in 0..4 {
            assert!(matches!(l.check(now), Verdict::Drop { .. }));
        }
        assert_eq!(l.check(now), Verdict::Close);

        let (mut l, now) = limiter();
        for _ in 0..3 {
            l.check(now);
        }
        for _ in 0..4 {
            l.check(now);
        }
        // A new window: the drop count starts over (tokens are drained again first).
        let later = now + Duration::from_secs(11);
        for _ in 0..3 {
            assert_eq!(l.check(later), Verdict::Accept);
        }
        assert!(matches!(l.check(later), Verdict::Drop { .. }));
    }
}
