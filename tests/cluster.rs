//! Several real wsmon processes sharing one real Redis (`redis-server`, started here on a free
//! loopback port): chat crosses nodes with the contract's exact texts and in order, the
//! cluster view lists the nodes, a connection on another node is listed and kicked through
//! this one, a Redis restart never stops local chat and cross-node chat resumes by itself, a
//! SIGKILLed node leaves the view within its presence expiry, garbage on the channels is
//! counted and ignored, and two live nodes sharing an id still chat and are warned about.
//!
//! Run with `cargo test --features cluster-tests --test cluster` (needs `redis-server` on the
//! PATH; `.ci/run` installs it).

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "support/process.rs"]
mod process;
#[path = "cluster/production.rs"]
mod production;
#[path = "support/redis.rs"]
mod redis_server;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use helpers::{Client, RECV_TIMEOUT};
use redis_server::Redis;
use serde_json::Value;

/// Presence timing used by every node here: fast, so expiry can be observed quickly.
const HEARTBEAT_MS: u64 = 200;
const PRESENCE_TTL_MS: u64 = 1_000;

/// One wsmon node in the cluster.
struct Node {
    server: process::Server,
    http: reqwest::Client,
}

impl Node {
    fn start(redis_url: &str, id: &str) -> Self {
        Self::start_with(redis_url, id, &[])
    }

    fn start_with(redis_url: &str, id: &str, extra: &[(&'static str, String)]) -> Self {
        let env = |k: &'static str, v: &str| (k, v.to_owned());
        let mut settings = vec![
            env("WSMON_CLUSTER__REDIS_URL", redis_url),
            env("WSMON_CLUSTER__NODE_ID", id),
            env("WSMON_CLUSTER__HEARTBEAT_MS", &HEARTBEAT_MS.to_string()),
            env(
                "WSMON_CLUSTER__PRESENCE_TTL_MS",
                &PRESENCE_TTL_MS.to_string(),
            ),
            env("WSMON_LIMITS__MESSAGES_PER_SECOND", "1000000"),
            env("WSMON_LIMITS__MESSAGE_BURST", "1000000"),
            env("WSMON_WEBSOCKET__OUTBOUND_QUEUE", "4096"),
        ];
        settings.extend(extra.iter().cloned());
        let server = process::start(&settings);
        Self {
            server,
            http: reqwest::Client::new(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    async fn connect(&self, client_id: &str) -> Client {
        let url = format!("ws://{}/ws/{client_id}", self.addr());
        let (ws, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        Client {
            id: client_id.to_owned(),
            ws,
        }
    }

    async fn request(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("http://{}{path}", self.addr()))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.request(reqwest::Method::GET, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    async fn cluster(&self) -> Value {
        self.get("/api/v1/cluster").await
    }

    /// Polls the cluster view until `check` holds; returns it.
    async fn wait_view(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.cluster().await;
            if check(&view) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}; view: {view:#}",
                self.addr()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the backplane is up here and `n` nodes are alive.
    async fn wait_ready(&self, n: usize) {
        self.wait_view(&format!("{n} alive nodes"), Duration::from_secs(10), |v| {
            v["backplane"]["up"] == true && v["totals"]["alive_nodes"] == n
        })
        .await;
    }

    /// The value of one Prometheus series (name with labels, as printed) on `/metrics`.
    async fn metric(&self, series: &str) -> f64 {
        process::metric(self.addr(), series).await
    }

    /// Asserts no backplane error of these operations was counted.
    async fn assert_no_backplane_errors(&self, operations: &[&str]) {
        for op in operations {
            let series = format!("websocket_server_backplane_errors_total{{operation=\"{op}\"}}");
            assert_eq!(self.metric(&series).await, 0.0, "{}: {series}", self.addr());
        }
    }
}

/// `node-a` and `node-b` on `redis`, both seeing both.
async fn two_nodes(redis: &Redis) -> (Node, Node) {
    let (a, b) = (
        Node::start(&redis.url(), "node-a"),
        Node::start(&redis.url(), "node-b"),
    );
    a.wait_ready(2).await;
    b.wait_ready(2).await;
    (a, b)
}

fn node_ids(view: &Value) -> Vec<String> {
    view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn chat_crosses_nodes_with_exact_texts_in_order_and_the_view_lists_both() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis).await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;

    const N: usize = 300;
    for i in 0..N {
        alice.send(&format!("m{i}")).await;
    }
    for i in 0..N {
        assert_eq!(alice.recv_text().await, format!("You sent: m{i}"));
        assert_eq!(alice.recv_text().await, format!("Client #alice says: m{i}"));
    }
    for i in 0..N {
        assert_eq!(bob.recv_text().await, format!("Client #alice says: m{i}"));
    }
    bob.send("hello from b").await;
    assert_eq!(bob.recv_text().await, "You sent: hello from b");
    assert_eq!(bob.recv_text().await, "Client #bob says: hello from b");
    assert_eq!(alice.recv_text().await, "Client #bob says: hello from b");
    drop(bob);
    assert_eq!(alice.recv_text().await, "Client #bob left the chat");
    alice.expect_silence(Duration::from_millis(300)).await;

    let view = a
        .wait_view("alice alone", Duration::from_secs(5), |v| {
            v["totals"]["active_connections"] == 1
        })
        .await;
    assert_eq!(view["node_id"], "node-a");
    assert_eq!(node_ids(&view), ["node-a", "node-b"]);
    let nodes = view["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["self"], true);
    assert_eq!(nodes[1]["self"], false);
    assert!(nodes
        .iter()
        .all(|n| n["status"] == "alive" && n["version"] == env!("CARGO_PKG_VERSION")));
    assert_eq!(nodes[1]["address"], format!("http://{}", b.addr()));
    assert!(nodes[1]["heartbeat_age_ms"].as_u64().unwrap() < PRESENCE_TTL_MS);
    // /ws-stats stays node-local.
    let stats = b.get("/ws-stats").await;
    assert_eq!(stats["node"], "node-b");
    assert_eq!(stats["global_stats"]["active_connections"], 0);

    let published = "websocket_server_backplane_messages_total{direction=\"published\"}";
    let received = "websocket_server_backplane_messages_total{direction=\"received\"}";
    // alice's N messages and bob's one plus his leave notice.
    assert_eq!(a.metric(published).await, N as f64);
    assert_eq!(b.metric(received).await, N as f64);
    assert_eq!(b.metric(published).await, 2.0);
    assert_eq!(a.metric(received).await, 2.0);
    assert_eq!(a.metric("websocket_server_backplane_up").await, 1.0);
    assert_eq!(a.metric("websocket_server_cluster_nodes").await, 2.0);
    assert_eq!(
        b.metric("websocket_server_backplane_dropped_total{reason=\"lost\"}")
            .await,
        0.0
    );
    // A steady link: no reconnects after several heartbeats (pings answered).
    tokio::time::sleep(Duration::from_millis(3 * HEARTBEAT_MS)).await;
    for node in [&a, &b] {
        node.assert_no_backplane_errors(&["connect", "publish", "subscribe", "presence", "decode"])
            .await;
    }
}

#[tokio::test]
async fn a_connection_on_another_node_is_listed_shown_and_kicked_through_this_one() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis).await;
    let mut carol = b.connect("carol").await;
    let mut dave = a.connect("dave").await;

    let page = a
        .get("/api/v1/connections?node=node-b&client_id=carol")
        .await;
    assert_eq!(page["node"], "node-b");
    let rows = page["connections"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["client_id"], "carol");
    let id = rows[0]["connection_id"].as_str().unwrap().to_owned();
    // A bad query is judged by the owning node, with the same 400 as locally.
    let (status, body) = a
        .request(
            reqwest::Method::GET,
            "/api/v1/connections?node=node-b&limit=0",
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));

    let shown = a
        .get(&format!("/api/v1/connections/{id}?node=node-b"))
        .await;
    assert_eq!(shown["client_id"], "carol");
    // Not on node-a itself.
    let (status, _) = a
        .request(reqwest::Method::GET, &format!("/api/v1/connections/{id}"))
        .await;
    assert_eq!(status, 404);
    let (status, body) = a
        .request(reqwest::Method::GET, "/api/v1/connections?node=node-z")
        .await;
    assert_eq!(status, 404, "{body}");

    let (status, body) = a
        .request(
            reqwest::Method::DELETE,
            &format!("/api/v1/connections/{id}?node=node-b"),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["node"], "node-b");
    assert_eq!(body["closing"], "admin_kick");
    assert_eq!(carol.expect_close().await, (4003, "admin_kick".into()));
    assert_eq!(dave.recv_text().await, "Client #carol left the chat");
    let (status, _) = a
        .request(
            reqwest::Method::DELETE,
            &format!("/api/v1/connections/{id}?node=node-b"),
        )
        .await;
    assert_eq!(status, 404, "the connection is gone");

    // The audit lines name both nodes: the one asked and the one holding the connection.
    let forwarded = a
        .server
        .log_lines()
        .into_iter()
        .find(|l| l["audit"] == true && l["node.target"] == "node-b")
        .expect("an audit line on node-a");
    assert_eq!(forwarded["connection.id"], id);
    assert_eq!(forwarded["node.id"], "node-a");
    let done = b
        .server
        .log_lines()
        .into_iter()
        .find(|l| l["audit"] == true && l["connection.id"] == id)
        .expect("an audit line on node-b");
    assert_eq!(done["node.id"], "node-b");
    assert_eq!(done["node.requested_via"], "node-a");
    assert_eq!(done["client.id"], "carol");
}

#[tokio::test]
async fn when_redis_restarts_local_chat_never_stops_and_cross_node_chat_resumes() {
    let mut redis = Redis::start();
    let (a, b) = two_nodes(&redis).await;
    let mut a1 = a.connect("a1").await;
    let mut a2 = a.connect("a2").await;
    let mut b1 = b.connect("b1").await;

    redis.kill();
    let view = a
        .wait_view("the backplane down", Duration::from_secs(10), |v| {
            v["backplane"]["publishing"] == false && v["backplane"]["subscribed"] == false
        })
        .await;
    assert_eq!(view["backplane"]["up"], false, "{view:#}");
    let view = a
        .wait_view("node-b unknown", Duration::from_secs(10), |v| {
            v["totals"]["unknown_nodes"] == 1
        })
        .await;
    assert_eq!(view["totals"]["complete"], false);
    let b_row = &view["nodes"][1];
    assert_eq!(
        (b_row["id"].as_str(), b_row["status"].as_str()),
        (Some("node-b"), Some("unknown"))
    );

    // Local chat goes on during the outage; node-b's client gets nothing of it.
    for i in 0..20 {
        a1.send(&format!("during {i}")).await;
        assert_eq!(a1.recv_text().await, format!("You sent: during {i}"));
        assert_eq!(a1.recv_text().await, format!("Client #a1 says: during {i}"));
        assert_eq!(a2.recv_text().await, format!("Client #a1 says: during {i}"));
    }
    b1.expect_silence(Duration::from_millis(300)).await;
    let down = "websocket_server_backplane_dropped_total{reason=\"backplane_down\"}";
    assert!(a.metric(down).await >= 20.0);
    assert_eq!(a.metric("websocket_server_backplane_up").await, 0.0);

    redis.spawn();
    a.wait_ready(2).await;
    b.wait_ready(2).await;
    a1.send("after").await;
    assert_eq!(a1.recv_text().await, "You sent: after");
    assert_eq!(a1.recv_text().await, "Client #a1 says: after");
    assert_eq!(a2.recv_text().await, "Client #a1 says: after");
    assert_eq!(b1.recv_text().await, "Client #a1 says: after");
    b1.send("back").await;
    assert_eq!(a1.recv_text().await, "Client #b1 says: back");
    let errors = "websocket_server_backplane_errors_total{operation=\"subscribe\"}";
    assert!(a.metric(errors).await >= 1.0);
}

#[tokio::test]
async fn a_stalled_redis_fills_the_publish_queue_by_bytes_and_the_overflow_is_counted() {
    let redis = Redis::start();
    // Room for about four 10 KB messages, though 8,192 messages would fit by count.
    let a = Node::start_with(
        &redis.url(),
        "node-a",
        &[("WSMON_CLUSTER__PUBLISH_QUEUE_BYTES", "40000".to_owned())],
    );
    a.wait_ready(1).await;
    let mut a1 = a.connect("a1").await;
    // Redis stops answering writes (PUBLISH among them) for a second: the publisher's pipeline
    // waits, and what the node publishes meanwhile waits in its queue.
    let paused = std::process::Command::new("redis-cli")
        .args(["-u", &redis.url(), "CLIENT", "PAUSE", "1000", "WRITE"])
        .output()
        .expect("redis-cli (Debian: redis-tools, with redis-server)");
    assert!(paused.status.success(), "{paused:?}");
    let text = "y".repeat(10_000);
    for _ in 0..30 {
        a1.send(&text).await;
        assert_eq!(a1.recv_text().await, format!("You sent: {text}"));
        assert_eq!(a1.recv_text().await, format!("Client #a1 says: {text}"));
    }
    let full = "websocket_server_backplane_dropped_total{reason=\"queue_full\"}";
    let dropped = a.metric(full).await;
    assert!(
        (20.0..30.0).contains(&dropped),
        "most of the burst overflowed the 40,000-byte queue: {dropped}"
    );
    // Redis answers again: the node publishes again, and its queue holds nothing stale.
    a.wait_ready(1).await;
    a1.send("after").await;
    assert_eq!(a1.recv_text().await, "You sent: after");
    let published = "websocket_server_backplane_messages_total{direction=\"published\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.metric(published).await < 30.0 - dropped + 1.0 {
        assert!(Instant::now() < deadline, "the rest was published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_killed_node_leaves_the_view_within_its_presence_expiry() {
    let redis = Redis::start();
    let a = Node::start(&redis.url(), "node-a");
    let mut b = Node::start(&redis.url(), "node-b");
    let c = Node::start(&redis.url(), "node-c");
    a.wait_ready(3).await;
    b.server.child.kill().unwrap(); // SIGKILL: no chance to delete its key.
    b.server.child.wait().unwrap();
    let killed = Instant::now();
    let bound = Duration::from_millis(PRESENCE_TTL_MS + 2 * HEARTBEAT_MS + 500);
    let view = a
        .wait_view("node-b gone", bound, |v| v["totals"]["nodes"] == 2)
        .await;
    assert_eq!(node_ids(&view), ["node-a", "node-c"]);
    eprintln!("node-b left the view {:?} after SIGKILL", killed.elapsed());
    // A clean stop deletes the key at once instead.
    let stopped = Instant::now();
    process::sigterm_and_wait(c.server);
    a.wait_view(
        "node-c gone",
        Duration::from_millis(3 * HEARTBEAT_MS + 500),
        |v| v["totals"]["nodes"] == 1,
    )
    .await;
    eprintln!("node-c left the view {:?} after SIGTERM", stopped.elapsed());
    assert_eq!(a.metric("websocket_server_cluster_nodes").await, 1.0);
}

#[tokio::test]
async fn garbage_on_the_channels_is_counted_and_ignored() {
    let redis = Redis::start();
    let a = Node::start(&redis.url(), "node-a");
    a.wait_ready(1).await;
    let mut alice = a.connect("alice").await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for payload in [
        "not json",
        r#"{"type":"chat"}"#,
        r#"{"type":"unknown","node":"x"}"#,
        r#"{"type":"reply","node":"x","id":12345,"status":200,"body":{}}"#,
    ] {
        for channel in ["wsmon:chat", "wsmon:ctl:node-a"] {
            let _: i64 = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
    // A forged chat message from a "node" is delivered like any other node's (Redis is
    // trusted: see README), and its text arrives as is.
    let forged =
        r#"{"type":"chat","node":"x","epoch":1,"seq":1,"sent_at":0,"text":"Client #x says: <b>"}"#;
    let _: i64 = redis::cmd("PUBLISH")
        .arg("wsmon:chat")
        .arg(forged)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(alice.recv_text().await, "Client #x says: <b>");
    // A text longer than any node could have produced is refused, not fanned out.
    let huge = serde_json::json!({
        "type": "chat", "node": "x", "epoch": 1, "seq": 2, "sent_at": 0,
        "text": "y".repeat(1024 * 1024),
    });
    let _: i64 = redis::cmd("PUBLISH")
        .arg("wsmon:chat")
        .arg(huge.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let decode = "websocket_server_backplane_errors_total{operation=\"decode\"}";
    let deadline = Instant::now() + RECV_TIMEOUT;
    while a.metric(decode).await < 7.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.metric(decode).await, 7.0);
    alice.send("still here").await;
    assert_eq!(alice.recv_text().await, "You sent: still here");
    assert_eq!(a.cluster().await["backplane"]["up"], true);
}

#[tokio::test]
async fn a_node_whose_redis_is_unreachable_serves_its_own_clients() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", closed.local_addr().unwrap());
    drop(closed);
    let a = Node::start(&url, "node-a");
    let (status, _) = a.request(reqwest::Method::GET, "/readyz").await;
    assert_eq!(status, 200);
    let mut x = a.connect("x").await;
    let mut y = a.connect("y").await;
    x.send("hi").await;
    assert_eq!(x.recv_text().await, "You sent: hi");
    assert_eq!(x.recv_text().await, "Client #x says: hi");
    assert_eq!(y.recv_text().await, "Client #x says: hi");
    let view = a.cluster().await;
    assert_eq!(view["backplane"]["configured"], true);
    assert_eq!(view["backplane"]["up"], false);
    assert_eq!(node_ids(&view), ["node-a"]);
    let (status, body) = a
        .request(reqwest::Method::GET, "/api/v1/connections?node=node-b")
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        a.metric("websocket_server_backplane_errors_total{operation=\"connect\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn two_nodes_given_the_same_id_still_chat_and_the_clash_is_logged() {
    let redis = Redis::start();
    let (a, b) = (
        Node::start(&redis.url(), "twin"),
        Node::start(&redis.url(), "twin"),
    );
    a.wait_view("the backplane up", Duration::from_secs(10), |v| {
        v["backplane"]["up"] == true
    })
    .await;
    b.wait_view("the backplane up", Duration::from_secs(10), |v| {
        v["backplane"]["up"] == true
    })
    .await;
    let mut x = a.connect("x").await;
    let mut y = b.connect("y").await;
    x.send("same id").await;
    assert_eq!(y.recv_text().await, "Client #x says: same id");
    let deadline = Instant::now() + Duration::from_secs(5);
    let clash = |node: &Node| {
        node.server.log_lines().iter().any(|l| {
            l["message"]
                .as_str()
                .unwrap_or("")
                .contains("uses this node's id")
        })
    };
    while !(clash(&a) || clash(&b)) {
        assert!(Instant::now() < deadline, "no warning about the shared id");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_node_restarted_under_its_id_before_its_key_expires_is_not_taken_for_a_twin() {
    let redis = Redis::start();
    let mut first = Node::start(&redis.url(), "phoenix");
    first.wait_ready(1).await;
    first.server.child.kill().unwrap(); // its key stays until it expires
    first.server.child.wait().unwrap();
    let again = Node::start(&redis.url(), "phoenix");
    again.wait_ready(1).await;
    tokio::time::sleep(Duration::from_millis(5 * HEARTBEAT_MS)).await;
    let lines = again.server.log_lines();
    assert!(
        !lines.iter().any(|l| l["message"]
            .as_str()
            .unwrap_or("")
            .contains("uses this node's id")),
        "a restart is not a twin"
    );
}

#[tokio::test]
async fn a_reader_on_another_node_hears_every_leave_notice_of_a_mass_departure() {
    let redis = Redis::start();
    // Far fewer queue slots than departures.
    let small = [
        ("WSMON_WEBSOCKET__OUTBOUND_QUEUE", "16".to_owned()),
        ("WSMON_LIMITS__MAX_CONNECTIONS_PER_IP", "1000".to_owned()),
    ];
    let a = Node::start_with(&redis.url(), "node-a", &small);
    let b = Node::start_with(&redis.url(), "node-b", &small);
    a.wait_ready(2).await;
    b.wait_ready(2).await;
    let mut reader = b.connect("reader").await;
    const N: usize = 300;
    let mut leaving = Vec::with_capacity(N);
    for i in 0..N {
        leaving.push(a.connect(&format!("gone-{i}")).await);
    }
    a.wait_view("all connected", Duration::from_secs(10), |v| {
        v["totals"]["active_connections"] == N as u64 + 1
    })
    .await;
    drop(leaving);
    reader.hear_leaves("gone-", N).await;
    reader.send("still here").await;
    assert_eq!(reader.recv_text().await, "You sent: still here");
    let stats = b.get("/ws-stats").await;
    assert_eq!(stats["global_stats"]["disconnects"]["slow_consumer"], 0);
}
