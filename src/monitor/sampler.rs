//! Periodic sampling of the gauges that need a walk over all connections (idle connections,
//! queued outbound messages and bytes). It walks the registry in chunks every `monitor.sample_interval_ms`
//! (the lock is released between chunks), so the message path never pays for it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Registry;

/// Samples until `shutdown` is cancelled.
pub async fn run(registry: Registry, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => sample(&registry),
        }
    }
}

/// One sample: sets the idle-connections and send-queue gauges.
pub fn sample(registry: &Registry) {
    let idle_after = registry.idle_after();
    let (mut idle, mut queued, mut bytes) = (0u64, 0u64, 0u64);
    for entry in registry.scan_all() {
        if entry.idle_for() >= idle_after {
            idle += 1;
        }
        let level = entry.queue_level();
        queued += level.messages as u64;
        bytes += level.bytes as u64;
    }
    let metrics = registry.metrics();
    metrics.idle_connections.set(idle as f64);
    metrics.send_queue_messages.set(queued as f64);
    metrics.send_queue_bytes.set(bytes as f64);
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::monitor::entry::QueueLevel;
    use crate::monitor::registry::RegistryOptions;
    use crate::monitor::ConnectionInfo;
    use crate::telemetry::metrics;

    #[tokio::test]
    async fn a_sample_counts_idle_connections_and_queued_messages() {
        let handle = metrics::build(None);
        let registry = Registry::with_options(RegistryOptions {
            idle_after: Duration::from_millis(50),
            trace_url_template: String::new(),
            metrics: handle.metrics.connections(),
            brief_disconnect_share: 1.0,
        });
        let quiet = registry.register(ConnectionInfo::new("quiet"));
        quiet.entry().set_queue_probe(Box::new(|| QueueLevel {
            messages: 3,
            bytes: 700,
        }));
        let busy = registry.register(ConnectionInfo::new("busy"));
        tokio::time::sleep(Duration::from_millis(60)).await;
        busy.entry().record_received(1);
        sample(&registry);
        let text = handle.prometheus.render();
        assert!(
            text.contains("websocket_server_idle_connections 1\n"),
            "{text}"
        );
        assert!(
            text.contains("websocket_server_send_queue_messages 3\n"),
            "{text}"
        );
        assert!(
            text.contains("websocket_server_send_queue_held_bytes 700\n"),
            "{text}"
        );
    }
}
