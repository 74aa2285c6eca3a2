//! A real `redis-server` for tests, on a free loopback port, without persistence: plain, or
//! with extra arguments (TLS, an ACL file, a replica), and Sentinels watching one.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on a loopback port, without persistence; killed on drop.
pub struct Redis {
    port: u16,
    /// `redis` or `rediss`: what `url` starts with.
    scheme: &'static str,
    args: Vec<String>,
    child: Option<Child>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with("redis", &[])
    }

    /// A server whose port speaks `scheme` (`rediss` serves TLS only: the arguments must name
    /// its certificates), with `args` added.
    pub fn start_with(scheme: &'static str, args: &[&str]) -> Self {
        let mut redis = Self {
            port: free_port(),
            scheme,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        };
        redis.spawn();
        redis
    }

    pub fn spawn(&mut self) {
        let port = self.port.to_string();
        let ports: Vec<&str> = if self.scheme == "rediss" {
            vec!["--port", "0", "--tls-port", &port]
        } else {
            vec!["--port", &port]
        };
        let child = Command::new("redis-server")
            .args(&ports)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt install redis-server)");
        self.child = Some(child);
        wait_for_port(self.port, "redis-server");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Redis Sentinel (`redis-server --sentinel`) watching one primary; killed on drop.
pub struct Sentinel {
    port: u16,
    child: Child,
}

impl Sentinel {
    /// Watches the primary on `primary_port` as `master`, declaring it down after
    /// `down_after_ms`; `quorum` Sentinels must agree. `dir` holds its config (Sentinel
    /// rewrites it).
    pub fn start(
        dir: &Path,
        primary_port: u16,
        master: &str,
        quorum: u8,
        down_after_ms: u64,
    ) -> Self {
        let port = free_port();
        let config = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {master} 127.0.0.1 {primary_port} {quorum}\n\
                 sentinel down-after-milliseconds {master} {down_after_ms}\n\
                 sentinel failover-timeout {master} 10000\n\
                 sentinel parallel-syncs {master} 1\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt install redis-server)");
        wait_for_port(port, "redis sentinel");
        Self { port, child }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
