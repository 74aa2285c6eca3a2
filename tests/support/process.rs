//! Running the real wsmon binary from tests: start it with environment overrides, learn its
//! address from its JSON log, stop it with SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Log lines kept per server, at most (later ones are dropped).
const MAX_LOG_LINES: usize = 100_000;

/// A running wsmon; killed on drop if still running.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Its JSON log lines so far.
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// The log lines so far, parsed.
    #[allow(dead_code)]
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts wsmon on a free loopback port with JSON logs and `env` on top.
pub fn start(env: &[(&str, String)]) -> Server {
    start_with(env, |_| {})
}

/// [`start`], with `configure` applied to the command last (e.g. resource limits).
pub fn start_with(env: &[(&str, String)], configure: impl FnOnce(&mut Command)) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsmon"));
    for (k, _) in
        std::env::vars().filter(|(k, _)| k.starts_with("WSMON_") || k.starts_with("OTEL_"))
    {
        cmd.env_remove(k);
    }
    cmd.env("WSMON_SERVER__LISTEN", "127.0.0.1:0")
        .env("WSMON_LOG__FORMAT", "json")
        .env_remove("RUST_LOG")
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    configure(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Every line is kept, those before "listening" too: a failure logged while the server
    // starts (a backplane that refuses it) is logged once per interval, then only counted.
    let mut early = Vec::new();
    let addr = loop {
        let line = lines.next().expect("wsmon logs its address").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        early.push(line);
        if v["message"] == "listening" {
            break v["address"].as_str().unwrap().parse().unwrap();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    let logs = Arc::new(Mutex::new(early));
    let kept = logs.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let mut kept = kept.lock().unwrap();
            if kept.len() < MAX_LOG_LINES {
                kept.push(line);
            }
        }
    });
    Server { child, addr, logs }
}

/// Sends SIGTERM and waits for a successful exit; returns how long it took.
pub fn sigterm_and_wait(mut server: Server) -> Duration {
    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of `series` (exactly as `/metrics` prints it, labels included) on the server at
/// `addr`.
#[allow(dead_code)]
pub async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} not on /metrics"))
        .trim()
        .parse()
        .unwrap()
}
