//! wsmon-load: a load generator that speaks the chat contract, for benchmarks. One JSON object
//! per run on stdout, with the client's own CPU time so a saturated client is visible.
//! Only loopback targets; every loop is bounded in count and in time (`--max-secs`).
//!
//! Run: `cargo run --release --example wsmon-load -- --target 127.0.0.1:8000 echo`.
//!
//!   wsmon-load echo      --clients N --messages M --size S
//!   wsmon-load broadcast --receivers R --messages M [--sender-target ADDR]
//!   wsmon-load idle      --connections N --hold-secs T [--server-pid P]
//!   wsmon-load churn     [--warmup W] --cycles C --abrupt-share F [--server-pid P]
//!   wsmon-load scale     --connections N --requests R --round-trips T
//!   wsmon-load departure --connections N [--server-pid P]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

#[derive(Parser)]
#[command(about = "Load generator for wsmon and servers with the same chat contract")]
struct Cli {
    /// Server address (loopback only).
    #[arg(long, default_value = "127.0.0.1:8000")]
    target: SocketAddr,
    /// Stop any run after this many seconds.
    #[arg(long, default_value_t = 120)]
    max_secs: u64,
    /// Label copied into the output.
    #[arg(long, default_value = "")]
    label: String,
    /// The server's pid (same machine): its CPU time over the run is reported
    /// (`server_cpu_s`), and its RSS where a mode reads it.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// N clients each send M messages of S bytes and await their personal reply (closed loop).
    Echo {
        #[arg(long, default_value_t = 1)]
        clients: usize,
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        #[arg(long, default_value_t = 32)]
        size: usize,
    },
    /// R receivers; one sender sends M timestamped messages, each once every receiver has the
    /// previous one (closed loop).
    Broadcast {
        #[arg(long, default_value_t = 1_000)]
        receivers: usize,
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Connect the sender to this server instead (another node of a cluster), so every
        /// message crosses nodes before it fans out.
        #[arg(long)]
        sender_target: Option<SocketAddr>,
    },
    /// Open and hold N connections; report the connect rate and the server's RSS per connection.
    Idle {
        #[arg(long, default_value_t = 5_000)]
        connections: usize,
        #[arg(long, default_value_t = 3)]
        hold_secs: u64,
    },
    /// Connect, chat once, disconnect; a share of the disconnects are abrupt (no close frame).
    /// RSS is read after `warmup` cycles and again after `cycles` more.
    Churn {
        #[arg(long, default_value_t = 0)]
        warmup: usize,
        #[arg(long, default_value_t = 2_000)]
        cycles: usize,
        #[arg(long, default_value_t = 0.3)]
        abrupt_share: f64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Hold N connections, then time `/ws-stats`, a page of 100 and `/metrics` (R requests
    /// each) alone and while a pair chats, and the pair's round trips with and without polling.
    Scale {
        #[arg(long, default_value_t = 15_000)]
        connections: usize,
        #[arg(long, default_value_t = 200)]
        requests: usize,
        #[arg(long, default_value_t = 100)]
        round_trips: usize,
    },
    /// Hold N chat members, then drop them all at once (TCP reset): N × (N-1) leave notices.
    /// Reports the server's peak RSS and how long until `/ws-stats` answers in 5 ms again.
    Departure {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
    },
}

type Ws = WebSocketStream<tokio::net::TcpStream>;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// User plus system CPU time of process `pid` (from /proc), in seconds.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on a zeroed struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Connects from 127.0.0.(1 + n % 8), so ephemeral ports last for tens of thousands of sockets.
async fn connect(target: SocketAddr, client: &str, n: usize) -> std::io::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    if target.ip().is_loopback() {
        socket.bind(SocketAddr::new(
            IpAddr::from([127, 0, 0, 1 + (n % 8) as u8]),
            0,
        ))?;
    }
    let tcp = socket.connect(target).await?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{target}/ws/{client}");
    // tungstenite zero-fills its read buffer before every read: the default 128 KiB made that
    // memset most of the client's CPU time.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .map_err(std::io::Error::other)?;
    Ok(ws)
}

async fn next_text(ws: &mut Ws) -> Option<Utf8Bytes> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return Some(t),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn echo(
    target: SocketAddr,
    clients: usize,
    messages: usize,
    size: usize,
    deadline: Instant,
) -> serde_json::Value {
    let payload = "x".repeat(size);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = connect(target, &format!("echo{i}"), i).await.unwrap();
            let want = format!("You sent: {payload}");
            let mut rtts = Vec::with_capacity(messages);
            for _ in 0..messages {
                if Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                ws.send(Message::text(payload.clone())).await.unwrap();
                loop {
                    match next_text(&mut ws).await {
                        Some(text) if text == want => break,
                        Some(_) => {}
                        None => return rtts,
                    }
                }
                rtts.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let _ = ws.close(None).await;
            rtts
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    json!({
        "mode": "echo", "clients": clients, "messages": all.len(), "size": size,
        "secs": secs, "round_trips_per_s": all.len() as f64 / secs,
        "rtt_us": { "p50": percentile(&all, 0.5), "p95": percentile(&all, 0.95), "p99": percentile(&all, 0.99) },
    })
}

async fn broadcast(
    target: SocketAddr,
    sender_target: SocketAddr,
    receivers: usize,
    messages: usize,
    deadline: Instant,
) -> serde_json::Value {
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(receivers.max(1));
    // Receivers leave together once all are done: an early leaver's notice must not fill the
    // queues of receivers still reading (that is the mass-departure workload, not this one).
    let done = Arc::new(tokio::sync::Barrier::new(receivers));
    // Deliveries so far; the receiver completing a message wakes the sender.
    let received = Arc::new(AtomicUsize::new(0));
    let complete = Arc::new(tokio::sync::Notify::new());
    let stop = tokio_util::sync::CancellationToken::new();
    for i in 0..receivers {
        let ready = ready_tx.clone();
        let done = done.clone();
        let (received, complete, stop) = (received.clone(), complete.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut ws = connect(target, &format!("recv{i}"), i).await.unwrap();
            let _ = ready.send(()).await;
            let mut latencies = Vec::with_capacity(messages);
            let mut last = None;
            // One timer for the whole run, not one per message: the client's CPU goes to
            // reading, and a lost message ends the run through `stop`.
            let read = async {
                while latencies.len() < messages {
                    let Some(text) = next_text(&mut ws).await else {
                        break;
                    };
                    if let Some(ts) = text.strip_prefix("Client #sender says: ") {
                        let sent: u128 = ts.parse().unwrap_or(0);
                        latencies.push((now_ns().saturating_sub(sent)) as f64 / 1e6);
                        last = Some(Instant::now());
                        if (received.fetch_add(1, Ordering::Relaxed) + 1) % receivers == 0 {
                            complete.notify_one();
                        }
                    }
                }
            };
            let _ = tokio::time::timeout_at(deadline.into(), async {
                tokio::select! {
                    () = read => {}
                    () = stop.cancelled() => {}
                }
            })
            .await;
            let _ = tokio::time::timeout_at(deadline.into(), done.wait()).await;
            let _ = ws.close(None).await;
            (latencies, last)
        }));
    }
    for _ in 0..receivers {
        ready_rx.recv().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // every receiver is a member
    let mut sender = connect(sender_target, "sender", receivers).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // the sender is a member everywhere
    let started = Instant::now();
    // Closed on every receiver: the next message is sent once all have the previous one, so
    // each message's fan-out is measured whole, whatever order the server writes in.
    'send: for sent in 1..=messages {
        if Instant::now() > deadline {
            break;
        }
        let ts = now_ns().to_string();
        sender.send(Message::text(ts.clone())).await.unwrap();
        while let Some(text) = next_text(&mut sender).await {
            if text.starts_with("You sent: ") {
                break;
            }
        }
        while received.load(Ordering::Relaxed) < sent * receivers {
            // A receiver that lost the message (or the server) ends the run.
            if tokio::time::timeout(Duration::from_secs(10), complete.notified())
                .await
                .is_err()
            {
                break 'send;
            }
        }
    }
    stop.cancel();
    let mut all = Vec::new();
    let mut last_delivery = started;
    for t in tasks {
        let (latencies, last) = t.await.unwrap();
        all.extend(latencies);
        last_delivery = last_delivery.max(last.unwrap_or(started));
    }
    // Until the last delivery: with the sender on another node, its own loop ends earlier.
    let secs = (last_delivery - started).as_secs_f64();
    let _ = sender.close(None).await;
    all.sort_by(f64::total_cmp);
    json!({
        "mode": "broadcast", "receivers": receivers, "messages": messages, "deliveries": all.len(),
        "cross_node": sender_target != target,
        "expected_deliveries": receivers * messages, "secs": secs,
        "deliveries_per_s": all.len() as f64 / secs,
        "fanout_ms": { "p50": percentile(&all, 0.5), "p99": percentile(&all, 0.99) },
    })
}

async fn idle(
    target: SocketAddr,
    connections: usize,
    hold_secs: u64,
    pid: Option<u32>,
    deadline: Instant,
) -> serde_json::Value {
    let before = pid.and_then(rss_kib);
    let started = Instant::now();
    let held = hold(target, connections, deadline).await;
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    let during = pid.and_then(rss_kib);
    let per_conn = match (before, during) {
        (Some(b), Some(d)) if !held.is_empty() => {
            Some((d.saturating_sub(b)) as f64 * 1024.0 / held.len() as f64)
        }
        _ => None,
    };
    let n = held.len();
    drop(held);
    json!({
        "mode": "idle", "connections": n, "connects_per_s": n as f64 / connect_secs,
        "server_rss_kib_before": before, "server_rss_kib_held": during,
        "server_rss_bytes_per_connection": per_conn,
    })
}

async fn churn(
    target: SocketAddr,
    (warmup, cycles): (usize, usize),
    abrupt: f64,
    concurrency: usize,
    pid: Option<u32>,
    deadline: Instant,
) -> serde_json::Value {
    if warmup > 0 {
        churn_cycles(target, 0, warmup, abrupt, concurrency, deadline).await;
    }
    let before = settled_rss_kib(pid).await;
    let started = Instant::now();
    let done = churn_cycles(target, warmup, cycles, abrupt, concurrency, deadline).await;
    let secs = started.elapsed().as_secs_f64();
    let after = settled_rss_kib(pid).await;
    json!({
        "mode": "churn", "warmup": warmup, "cycles": done, "secs": secs,
        "cycles_per_s": done as f64 / secs, "abrupt_share": abrupt,
        "server_rss_kib_before": before, "server_rss_kib_after": after,
        "rss_change": match (before, after) {
            (Some(b), Some(a)) if b > 0 => Some(a as f64 / b as f64 - 1.0),
            _ => None,
        },
    })
}

/// The server's RSS once it stops moving: readings a second apart stay within 1 % for 6 s
/// (longer than the upkeep that drains wsmon's Prometheus recorder's histogram buffers every
/// second, and the 1 s after which jemalloc purges freed pages), or the last of 30 readings.
async fn settled_rss_kib(pid: Option<u32>) -> Option<u64> {
    let pid = pid?;
    let mut window: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    for _ in 0..30 {
        window.push_back(rss_kib(pid)?);
        if window.len() > 7 {
            window.pop_front();
        }
        let (lo, hi) = (window.iter().min()?, window.iter().max()?);
        if window.len() == 7 && (hi - lo) * 100 <= *lo {
            return window.back().copied();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    window.back().copied()
}

/// Runs cycles `first..first + cycles` on `concurrency` tasks; returns how many completed.
async fn churn_cycles(
    target: SocketAddr,
    first: usize,
    cycles: usize,
    abrupt: f64,
    concurrency: usize,
    deadline: Instant,
) -> usize {
    let end = first + cycles;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(first));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= end || Instant::now() > deadline {
                    return done;
                }
                let Ok(mut ws) = connect(target, &format!("churn{i}"), i).await else {
                    continue;
                };
                let _ = ws.send(Message::text("hi")).await;
                while let Some(text) = next_text(&mut ws).await {
                    if text.starts_with("You sent: ") {
                        break;
                    }
                }
                if (i % 100) as f64 >= abrupt * 100.0 {
                    let _ = ws.close(None).await;
                } else {
                    let _ = ws.get_ref().set_zero_linger();
                }
                drop(ws);
                done += 1;
            }
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap();
    }
    done
}

/// `GET path` on a new connection: how long until the whole answer arrived, and the body.
async fn http_get(target: SocketAddr, path: &str) -> Option<(f64, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(target).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.ok()?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| (ms, body.to_owned()))
}

/// Opens `n` connections (fewer if the deadline passes or a connect fails).
async fn hold(target: SocketAddr, n: usize, deadline: Instant) -> Vec<Ws> {
    raise_fd_limit();
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        if Instant::now() > deadline {
            break;
        }
        match connect(target, &format!("held{i}"), i).await {
            Ok(ws) => held.push(ws),
            Err(e) => {
                eprintln!("connection {i} failed: {e}");
                break;
            }
        }
    }
    held
}

fn latency_summary(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    json!({ "n": ms.len(), "p50": percentile(&ms, 0.5), "p99": percentile(&ms, 0.99),
            "max": ms.last().copied() })
}

/// Two chat members: `a` sends, `b` receives.
struct Pair {
    a: Ws,
    b: Ws,
}

impl Pair {
    async fn connect(target: SocketAddr) -> Self {
        let a = connect(target, "pair-a", 0).await.expect("pair connects");
        let b = connect(target, "pair-b", 1).await.expect("pair connects");
        Self { a, b }
    }

    /// `round_trips` messages from `a`, each awaited by `b`; round trips in ms. The same pair
    /// is measured in every phase: its place in the fan-out order stays the same.
    async fn chat(&mut self, round_trips: usize, tag: &str) -> Vec<f64> {
        let mut rtts = Vec::with_capacity(round_trips);
        for i in 0..round_trips {
            let text = format!("{tag}{i}");
            let expected = format!("Client #pair-a says: {text}");
            let started = Instant::now();
            if self.a.send(Message::text(text)).await.is_err() {
                break;
            }
            while let Some(got) = next_text(&mut self.b).await {
                if got == expected {
                    break;
                }
            }
            rtts.push(started.elapsed().as_secs_f64() * 1e3);
            // a's own reply and broadcast copy, read so its queue never fills.
            for _ in 0..2 {
                if next_text(&mut self.a).await.is_none() {
                    break;
                }
            }
        }
        rtts
    }
}

async fn scale(
    target: SocketAddr,
    connections: usize,
    requests: usize,
    round_trips: usize,
    deadline: Instant,
) -> serde_json::Value {
    let held = hold(target, connections, deadline).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut pair = Pair::connect(target).await;
    let quiet = pair.chat(round_trips, "quiet").await;
    let paths = ["/ws-stats", "/api/v1/connections?limit=100", "/metrics"];
    let poll = || async {
        let mut out = Vec::new();
        for path in paths {
            let mut ms = Vec::with_capacity(requests);
            for _ in 0..requests {
                if let Some((t, _)) = http_get(target, path).await {
                    ms.push(t);
                }
            }
            out.push(latency_summary(ms));
        }
        out
    };
    // The stats alone, then again while the pair chats (every message fans out to all N).
    let alone = poll().await;
    let (during, busy) = tokio::join!(poll(), pair.chat(round_trips, "busy"));
    let n = held.len();
    drop(held);
    let by_path = |v: &[serde_json::Value]| json!({ "ws_stats_ms": v[0], "page_of_100_ms": v[1], "metrics_ms": v[2] });
    json!({
        "mode": "scale", "connections": n,
        "stats_alone": by_path(&alone), "stats_while_chatting": by_path(&during),
        "chat_rtt_ms_quiet": latency_summary(quiet), "chat_rtt_ms_while_polled": latency_summary(busy),
    })
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `websocket_server_telemetry_spans_total` by outcome, from `/metrics`.
async fn span_counts(target: SocketAddr) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    if let Some((_, body)) = http_get(target, "/metrics").await {
        for line in body.lines() {
            let Some(rest) = line.strip_prefix("websocket_server_telemetry_spans_total{outcome=\"")
            else {
                continue;
            };
            if let Some((outcome, value)) = rest.split_once("\"} ") {
                if let Ok(v) = value.trim().parse::<f64>() {
                    out.insert(outcome.to_owned(), json!(v));
                }
            }
        }
    }
    out
}

/// Every held connection vanishes at once (reset): how long until the server is empty and
/// fast again, what it recorded, what its telemetry did with the disconnect records.
async fn departure(
    target: SocketAddr,
    connections: usize,
    pid: Option<u32>,
    deadline: Instant,
) -> serde_json::Value {
    let held = hold(target, connections, deadline).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_held = pid.and_then(rss_kib);
    let peak_before = pid.and_then(peak_rss_kib);
    let baseline = http_get(target, "/ws-stats").await.map(|(ms, _)| ms);
    let spans_before = span_counts(target).await;
    let cpu_before = pid.and_then(process_cpu_seconds);
    let n = held.len();
    let dropped = Instant::now();
    for ws in held {
        let _ = ws.get_ref().set_zero_linger();
        drop(ws);
    }
    let drop_ms = dropped.elapsed().as_secs_f64() * 1e3;
    // Poll until the registry is empty and /ws-stats answers in 5 ms.
    let mut slowest: f64 = 0.0;
    let mut recovered_ms = None;
    while Instant::now() < deadline {
        if let Some((ms, body)) = http_get(target, "/ws-stats").await {
            slowest = slowest.max(ms);
            let empty = serde_json::from_str::<serde_json::Value>(&body)
                .is_ok_and(|v| v["global_stats"]["active_connections"] == 0);
            if empty && ms <= 5.0 {
                recovered_ms = Some(dropped.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_departure = pid
        .and_then(process_cpu_seconds)
        .zip(cpu_before)
        .map(|(a, b)| a - b);
    // With export on: until every ended span is exported, failed or dropped (at most 15 s).
    let settle = Instant::now() + Duration::from_secs(15);
    let mut spans_after = span_counts(target).await;
    while Instant::now() < settle && Instant::now() < deadline {
        let get = |k: &str| spans_after.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
        if get("ended") <= get("exported") + get("failed") + get("dropped") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        spans_after = span_counts(target).await;
    }
    let delta: serde_json::Map<_, _> = spans_after
        .iter()
        .map(|(k, v)| {
            let before = spans_before.get(k).and_then(|b| b.as_f64()).unwrap_or(0.0);
            (k.clone(), json!(v.as_f64().unwrap_or(0.0) - before))
        })
        .collect();
    let disconnects = match http_get(target, "/ws-stats").await {
        Some((_, body)) => serde_json::from_str::<serde_json::Value>(&body)
            .map(|v| v["global_stats"]["disconnects"].clone())
            .unwrap_or_default(),
        None => serde_json::Value::Null,
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    json!({
        "mode": "departure", "connections": n, "drop_ms": drop_ms,
        "ws_stats_ms_before": baseline, "ws_stats_slowest_ms": slowest,
        "until_ws_stats_fast_and_empty_ms": recovered_ms,
        "server_rss_kib_held": rss_held, "server_peak_rss_kib_before": peak_before,
        "server_peak_rss_kib": pid.and_then(peak_rss_kib),
        "server_rss_kib_after": pid.and_then(rss_kib),
        "server_cpu_s_departure": cpu_departure,
        "disconnects": disconnects, "spans_during": delta,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if !cli.target.ip().is_loopback() {
        eprintln!("wsmon-load: only loopback targets are allowed");
        std::process::exit(2);
    }
    let deadline = Instant::now() + Duration::from_secs(cli.max_secs);
    let cpu = cpu_seconds();
    let server_cpu = cli.server_pid.and_then(process_cpu_seconds);
    let mut out = match cli.mode {
        Mode::Echo {
            clients,
            messages,
            size,
        } => echo(cli.target, clients, messages, size, deadline).await,
        Mode::Broadcast {
            receivers,
            messages,
            sender_target,
        } => {
            let sender = sender_target.unwrap_or(cli.target);
            if !sender.ip().is_loopback() {
                eprintln!("wsmon-load: only loopback targets are allowed");
                std::process::exit(2);
            }
            broadcast(cli.target, sender, receivers, messages, deadline).await
        }
        Mode::Idle {
            connections,
            hold_secs,
        } => idle(cli.target, connections, hold_secs, cli.server_pid, deadline).await,
        Mode::Churn {
            warmup,
            cycles,
            abrupt_share,
            concurrency,
        } => {
            churn(
                cli.target,
                (warmup, cycles),
                abrupt_share,
                concurrency,
                cli.server_pid,
                deadline,
            )
            .await
        }
        Mode::Scale {
            connections,
            requests,
            round_trips,
        } => scale(cli.target, connections, requests, round_trips, deadline).await,
        Mode::Departure { connections } => {
            departure(cli.target, connections, cli.server_pid, deadline).await
        }
    };
    out["label"] = json!(cli.label);
    out["client_cpu_s"] = json!(cpu_seconds() - cpu);
    if let (Some(pid), Some(before)) = (cli.server_pid, server_cpu) {
        out["server_cpu_s"] = json!(process_cpu_seconds(pid).map(|now| now - before));
    }
    println!("{out}");
}
