//! Out of file descriptors: `accept` fails, the server counts it and backs off instead of
//! spinning, and once descriptors are free again it serves by itself. The real binary runs with
//! a hard open-file limit of 64 that it cannot raise.

#[path = "support/process.rs"]
#[allow(dead_code)]
mod process;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

fn get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    tcp.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.1 200").then_some(body)
}

#[test]
fn with_no_descriptors_left_accept_backs_off_is_counted_and_recovers() {
    let server = process::start_with(
        &[("WSMON_SERVER__HEADER_READ_TIMEOUT_MS", "60000".to_owned())],
        |cmd| {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child here.
            unsafe {
                cmd.pre_exec(|| {
                    let limit = libc::rlimit {
                        rlim_cur: 64,
                        rlim_max: 64,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        },
    );
    assert!(get(server.addr, "/healthz").is_some(), "serves before");
    // Idle connections that send nothing hold the server's descriptors (the header timeout is
    // a minute); past 64 its accept fails with EMFILE.
    let held: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let cpu_before = cpu_seconds(server.child.id());
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_seconds(server.child.id()) - cpu_before;
    assert!(
        spent < 0.5,
        "backs off instead of spinning: {spent:.2} s of CPU in 2 s"
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        if let Some(m) = get(server.addr, "/metrics") {
            break m;
        }
        assert!(Instant::now() < deadline, "did not recover");
        std::thread::sleep(Duration::from_millis(100));
    };
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("websocket_server_accept_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("accept errors in /metrics");
    assert!(errors >= 1.0, "failed accepts are counted");
    assert!(get(server.addr, "/healthz").is_some(), "serves after");
    process::sigterm_and_wait(server);
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}
