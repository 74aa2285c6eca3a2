//! wsmon's binary: CLI → settings → telemetry → bind → serve until SIGINT/SIGTERM → drain →
//! flush telemetry.
//! Exit status 64 on a bad setting, 1 if the server cannot start.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wsmon::cluster::ClusterError;
use wsmon::startup::{Application, StartError};
use wsmon::telemetry::Telemetry;
use wsmon::{config, shutdown};

/// jemalloc, purging freed memory in a background thread: with glibc malloc, RSS stayed at its
/// peak after thousands of connections closed; with this, it returns close to the baseline.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (read once at start; `_RJEM_MALLOC_CONF` in the environment adds to them):
/// return dirty pages after 1 s, from a background thread so an idle server purges too.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// A WebSocket chat server whose every connection is observable.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML file layered over config/default.toml (WSMON_* variables override both).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration, print the effective settings as TOML, and exit.
    #[arg(long)]
    check_config: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match config::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wsmon: {e}");
            return ExitCode::from(64);
        }
    };
    if cli.check_config {
        println!("{}", config::to_toml(&settings));
        return ExitCode::SUCCESS;
    }
    let telemetry = match Telemetry::init(&settings).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("wsmon: {e}");
            return ExitCode::from(64);
        }
    };
    match wsmon::http::serve::raise_fd_limit() {
        Ok((before, now, hard)) => {
            tracing::info!(soft_before = before, soft = now, hard, "open-file limit");
        }
        Err(e) => tracing::warn!(error = %e, "open-file limit not raised"),
    }
    let app = match Application::build(settings, telemetry.metrics.clone()).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("wsmon: {e}");
            return match e {
                StartError::Config(_) | StartError::Cluster(ClusterError::Config(_)) => {
                    ExitCode::from(64)
                }
                _ => ExitCode::FAILURE,
            };
        }
    };
    let deadline = app.deadline();
    let served = app.run_until_stopped(shutdown::signal()).await;
    telemetry.shutdown_within(deadline.left()).await;
    tracing::info!(
        left_ms = deadline.left().as_millis() as u64,
        deadline_ms = deadline.total().as_millis() as u64,
        "stopped"
    );
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}
