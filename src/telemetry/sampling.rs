//! Which spans and records are exported: a share of the inbound messages
//! (`telemetry.message_spans`) and of the brief, normal disconnects
//! (`telemetry.brief_disconnect_share`). Both keep every n-th, deterministically, so a share
//! holds exactly and costs a modulo.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::config::MessageSpans;

/// Which inbound messages get a `websocket.message` span: none, every `n`-th of a connection,
/// or all. Deterministic and free of shared state, so it costs one modulo per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageSampler {
    every: Option<u64>,
}

impl MessageSampler {
    /// From the settings: `off`, `ratio` (every ⌈1/ratio⌉-th message) or `all`.
    pub fn new(policy: MessageSpans, ratio: f64) -> Self {
        let every = match policy {
            MessageSpans::Off => None,
            MessageSpans::All => Some(1),
            MessageSpans::Ratio => Some((1.0 / ratio).ceil().max(1.0) as u64),
        };
        Self { every }
    }

    /// Whether the `n`-th message (1-based) of a connection is traced.
    pub fn sample(self, n: u64) -> bool {
        self.every.is_some_and(|every| n % every == 0)
    }
}

/// Keeps every `n`-th of the records it is asked about: the share of brief, normal disconnects
/// that is exported (`telemetry.brief_disconnect_share`). Deterministic, so a share of `0.25`
/// keeps exactly one in four.
#[derive(Debug)]
pub struct BriefShare {
    every: Option<u64>,
    seen: AtomicU64,
}

impl BriefShare {
    /// `share` in `[0, 1]`: 0 keeps none, 1 keeps all, otherwise every ⌈1/share⌉-th.
    pub fn new(share: f64) -> Self {
        let every = (share > 0.0).then(|| (1.0 / share.min(1.0)).ceil() as u64);
        Self {
            every,
            seen: AtomicU64::new(0),
        }
    }

    /// Whether the next one is kept.
    pub fn keep(&self) -> bool {
        match self.every {
            None => false,
            Some(1) => true,
            Some(n) => (self.seen.fetch_add(1, Relaxed) + 1) % n == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_keeps_exactly_every_nth() {
        let kept = |share: f64| {
            let s = BriefShare::new(share);
            (0..100).filter(|_| s.keep()).count()
        };
        assert_eq!(kept(0.0), 0);
        assert_eq!(kept(0.25), 25);
        assert_eq!(kept(0.1), 10);
        assert_eq!(kept(1.0), 100);
    }

    #[test]
    fn message_spans_follow_the_policy() {
        let traced = |s: MessageSampler| (1..=100).filter(|n| s.sample(*n)).count();
        assert_eq!(traced(MessageSampler::new(MessageSpans::Off, 0.5)), 0);
        assert_eq!(traced(MessageSampler::new(MessageSpans::Ratio, 0.1)), 10);
        assert_eq!(traced(MessageSampler::new(MessageSpans::All, 0.1)), 100);
    }
}
