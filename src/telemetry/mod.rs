//! Logging setup: `RUST_LOG`-style filtering, human text on a terminal or JSON lines.
//! (Trace and metric export plug in here as further layers.)

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Registry};

use crate::config::{LogFormat, LogSettings};

/// A subscriber writing to `sink`; `RUST_LOG`, when set, overrides `settings.level`.
pub fn get_subscriber<W>(settings: &LogSettings, sink: W) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&settings.level));
    let base = Registry::default().with(filter);
    match settings.format {
        LogFormat::Text => Box::new(
            base.with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stdout().is_terminal())
                    .with_writer(sink),
            ),
        ),
        LogFormat::Json => Box::new(
            base.with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(sink),
            ),
        ),
    }
}

/// Installs the global subscriber (stdout). A second call is ignored.
pub fn init(settings: &LogSettings) {
    let _ = tracing::subscriber::set_global_default(get_subscriber(settings, std::io::stdout));
}
