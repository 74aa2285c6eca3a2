//! Memory under stalled readers, on the real binary: 1,000 clients that never read (a 4 KiB
//! receive buffer) while one client broadcasts 60 KiB messages inside the rate limit for 30 s
//! (5 a second: 9 MB for each stalled client, more than the kernel's send buffer takes, so the
//! server holds the rest; at 20 a second the test's debug build could not copy 60 MB a message
//! to 1,000 sockets fast enough for its readers to tell from the stalled ones).
//! The server's resident memory stays under its baseline plus the configured ceiling
//! (`limits.max_outbound_bytes`), the stalled clients are shed as `slow_consumer`, and the
//! clients that read get every message, in order.

#[path = "support/process.rs"]
#[allow(dead_code)]
mod process;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const STALLED: usize = 1_000;
const CEILING: usize = 128 << 20;
const SECONDS: u64 = 30;
const RATE: u64 = 5;

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// This test process holds a socket per client too.
fn raise_own_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur as usize > STALLED + 100,
        "needs {STALLED} descriptors"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_1000_stalled_readers_memory_stays_under_the_ceiling_and_readers_get_everything() {
    raise_own_fd_limit();
    let n = (STALLED + 10).to_string();
    let server = process::start(&[
        ("WSMON_LIMITS__MAX_OUTBOUND_BYTES", CEILING.to_string()),
        ("WSMON_LIMITS__MAX_CONNECTIONS_PER_IP", n.clone()),
        ("WSMON_SERVER__MAX_HTTP_CONNECTIONS_PER_IP", n),
        // When the stalled clients are shed together, every reader gets a thousand leave
        // notices at once: room for them, so a reader is never shed for a storm of notices.
        ("WSMON_WEBSOCKET__OUTBOUND_QUEUE", "4096".to_owned()),
        // A write blocked this long is slow_consumer by itself: out of reach, so only the byte
        // budget can shed the stalled clients within the test.
        ("WSMON_WEBSOCKET__SEND_TIMEOUT_MS", "120000".to_owned()),
    ]);
    let pid = server.child.id();
    let addr = server.addr;
    let url = |id: &str| format!("ws://{addr}/ws/{id}");
    let baseline = rss(pid);

    let mut stalled = Vec::with_capacity(STALLED);
    for i in 0..STALLED {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(url(&format!("stalled-{i}")), tcp)
            .await
            .unwrap();
        stalled.push(ws); // never read again
    }
    eprintln!("{STALLED} stalled clients connected");
    let mut readers = Vec::new();
    for i in 0..3 {
        let (ws, _) = tokio_tungstenite::connect_async(url(&format!("reader-{i}")))
            .await
            .unwrap();
        readers.push(tokio::spawn(async move {
            let (_sink, mut stream) = ws.split();
            let mut got = Vec::new();
            while got.len() < (SECONDS * RATE) as usize {
                match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        if let Some(text) = t.as_str().strip_prefix("Client #sender says: ") {
                            got.push(text.to_owned());
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    other => panic!("reader-{i} after {} messages: {other:?}", got.len()),
                }
            }
            got
        }));
    }
    let (sender, _) = tokio_tungstenite::connect_async(url("sender"))
        .await
        .unwrap();
    let (mut sink, mut stream) = sender.split();
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss(pid)));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let started = Instant::now();
    let mut sent = Vec::new();
    for i in 0..SECONDS * RATE {
        let text = format!("{i:05}:{}", "x".repeat(60 * 1024 - 6));
        if let Err(e) = sink.send(Message::text(text.clone())).await {
            let logs = server.logs.lock().unwrap();
            let tail: Vec<_> = logs.iter().rev().take(5).collect();
            panic!("sender: {e} after {i} messages; last log lines: {tail:#?}");
        }
        sent.push(text);
        // Paced by the clock, inside the 20-a-second limit.
        let next = started + Duration::from_millis((i + 1) * 1000 / RATE);
        tokio::time::sleep_until(next.into()).await;
    }
    eprintln!("sent {} messages in {:?}", sent.len(), started.elapsed());
    for r in readers {
        assert!(r.await.unwrap() == sent, "every broadcast, in order");
    }
    let shed = process::metric(
        addr,
        "websocket_server_connections_closed_total{close_reason=\"slow_consumer\",close_initiator=\"server\"}",
    )
    .await;
    assert_eq!(shed, STALLED as f64, "every stalled reader shed");
    sampler.abort();
    drain.abort();
    let grew = peak.load(std::sync::atomic::Ordering::Relaxed) - baseline;
    eprintln!(
        "peak RSS {} MiB over a baseline of {} MiB, ceiling {} MiB",
        grew >> 20,
        baseline >> 20,
        CEILING >> 20
    );
    assert!(
        grew <= CEILING as u64,
        "resident memory grew {} MiB, over the {} MiB ceiling",
        grew >> 20,
        CEILING >> 20
    );
    drop(stalled);
    process::sigterm_and_wait(server);
}
