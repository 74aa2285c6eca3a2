//! The backplane on the Redis production runs: TLS with a CA and client certificates made
//! here, the ACL user the README lists (and nothing more), and a Sentinel failover.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use super::helpers::Client;
use super::redis_server::{Redis, Sentinel};
use super::{node_ids, Node};

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
struct Certificates {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Certificates {
    fn generate(dir: &Path, name: &str) -> Self {
        let file = |what: &str, pem: String| {
            let path = dir.join(format!("{name}-{what}.pem"));
            std::fs::write(&path, pem).unwrap();
            path
        };
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("wsmon test CA {name}"));
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf = |names: Vec<String>| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
        let (client_cert, client_key) = leaf(vec!["wsmon-node".into()]);
        Self {
            ca: file("ca", ca.pem()),
            server_cert: file("server", server_cert),
            server_key: file("server-key", server_key),
            client_cert: file("client", client_cert),
            client_key: file("client-key", client_key),
        }
    }
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// The next text within `wait`, if any (pings skipped).
async fn try_recv(client: &mut Client, wait: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, client.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(t.to_string()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("{}: expected text, got {other:?}", client.id),
            Err(_) => return None,
        }
    }
}

/// The first log line whose message or error mentions `needle`, as text.
fn log_mentioning(node: &Node, needle: &str) -> Option<String> {
    node.server
        .log_lines()
        .into_iter()
        .map(|l| l.to_string())
        .find(|l| l.contains(needle))
}

/// alice on `a` and bob on `b` say one thing each, heard across; returns them, all read.
async fn chat_crosses(a: &Node, b: &Node) -> (Client, Client) {
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    alice.send("over the backplane").await;
    assert_eq!(
        bob.recv_text().await,
        "Client #alice says: over the backplane"
    );
    bob.send("and back").await;
    assert_eq!(bob.recv_text().await, "You sent: and back");
    assert_eq!(bob.recv_text().await, "Client #bob says: and back");
    // alice: her echo and her own broadcast first, then bob's.
    assert_eq!(alice.recv_text().await, "You sent: over the backplane");
    assert_eq!(
        alice.recv_text().await,
        "Client #alice says: over the backplane"
    );
    assert_eq!(alice.recv_text().await, "Client #bob says: and back");
    (alice, bob)
}

#[tokio::test]
async fn two_nodes_chat_over_mutual_tls_and_a_node_that_cannot_verify_the_server_refuses_to_join() {
    let dir = tempfile::tempdir().unwrap();
    let good = Certificates::generate(dir.path(), "good");
    let other = Certificates::generate(dir.path(), "other");
    let redis = Redis::start_with(
        "rediss",
        &[
            "--tls-cert-file",
            &path(&good.server_cert),
            "--tls-key-file",
            &path(&good.server_key),
            "--tls-ca-cert-file",
            &path(&good.ca),
            "--tls-auth-clients",
            "yes",
        ],
    );
    let tls = |certs: &Certificates, client: Option<&Certificates>| {
        let mut env = vec![("WSMON_CLUSTER__REDIS_CA_FILE", path(&certs.ca))];
        if let Some(c) = client {
            env.push((
                "WSMON_CLUSTER__REDIS_CLIENT_CERT_FILE",
                path(&c.client_cert),
            ));
            env.push(("WSMON_CLUSTER__REDIS_CLIENT_KEY_FILE", path(&c.client_key)));
        }
        env
    };
    let a = Node::start_with(&redis.url(), "node-a", &tls(&good, Some(&good)));
    let b = Node::start_with(&redis.url(), "node-b", &tls(&good, Some(&good)));
    a.wait_ready(2).await;
    b.wait_ready(2).await;
    let _clients = chat_crosses(&a, &b).await;

    // Trusting another CA: the server's certificate does not verify. No plaintext fallback
    // exists, so this node never joins; it says why and counts it.
    let wrong_ca = Node::start_with(&redis.url(), "wrong-ca", &tls(&other, Some(&good)));
    // Trusting the CA but without a client certificate: the server refuses the handshake.
    let no_client_cert = Node::start_with(&redis.url(), "no-client-cert", &tls(&good, None));
    let connect_errors = "websocket_server_backplane_errors_total{operation=\"connect\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    for node in [&wrong_ca, &no_client_cert] {
        while node.metric(connect_errors).await < 2.0 {
            assert!(
                Instant::now() < deadline,
                "{}: no connect error counted",
                node.addr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(node.metric("websocket_server_backplane_up").await, 0.0);
        let view = node.cluster().await;
        assert_eq!(view["backplane"]["up"], false);
        assert_eq!(node_ids(&view).len(), 1, "{view:#}");
    }
    let why = log_mentioning(&wrong_ca, "UnknownIssuer")
        .expect("the log names the certificate that did not verify");
    assert!(why.contains("Redis backplane failing"), "{why}");
    assert!(
        log_mentioning(&no_client_cert, "Redis backplane failing").is_some(),
        "the refused handshake is logged"
    );
    // The good nodes never saw them.
    tokio::time::sleep(Duration::from_millis(2 * super::HEARTBEAT_MS)).await;
    assert_eq!(node_ids(&a.cluster().await), ["node-a", "node-b"]);
    for node in [&a, &b] {
        assert_eq!(node.metric(connect_errors).await, 0.0);
    }
}

/// The shipped ACL file with `password` in place of its placeholder.
fn shipped_acl(password: &str) -> String {
    let acl = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/redis/users.acl"
    ))
    .unwrap();
    assert!(acl.contains(">WSMON_REDIS_PASSWORD "), "{acl}");
    acl.replace("WSMON_REDIS_PASSWORD", password)
}

#[tokio::test]
async fn nodes_as_the_readme_acl_user_chat_list_each_other_and_reach_each_others_connections() {
    // The README lists the same user line as the file the test runs with.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let user_line = shipped_acl("WSMON_REDIS_PASSWORD")
        .lines()
        .find(|l| l.starts_with("user wsmon "))
        .unwrap()
        .to_owned();
    assert!(
        readme.contains(&user_line),
        "README must list the ACL as config/redis/users.acl has it:\n{user_line}"
    );

    let dir = tempfile::tempdir().unwrap();
    let password = "acl-test-password-3f9a";
    let acl_file = dir.path().join("users.acl");
    std::fs::write(&acl_file, shipped_acl(password)).unwrap();
    let redis = Redis::start_with("redis", &["--aclfile", &path(&acl_file)]);
    let port = redis.port();

    // One node takes the password from a file, the other the whole URL from a file.
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let url_file = dir.path().join("url");
    std::fs::write(
        &url_file,
        format!("redis://wsmon:{password}@127.0.0.1:{port}\n"),
    )
    .unwrap();
    let a = Node::start_with(
        &format!("redis://wsmon@127.0.0.1:{port}"),
        "node-a",
        &[("WSMON_CLUSTER__REDIS_PASSWORD_FILE", path(&password_file))],
    );
    let b = Node::start_with(
        "",
        "node-b",
        &[("WSMON_CLUSTER__REDIS_URL_FILE", path(&url_file))],
    );
    a.wait_ready(2).await;
    b.wait_ready(2).await;
    assert_eq!(node_ids(&b.cluster().await), ["node-a", "node-b"]);
    // A connections-API request crosses on the control channel and comes back.
    let _clients = chat_crosses(&a, &b).await;
    let _carol = b.connect("carol").await;
    let page = a.get("/api/v1/connections?node=node-b").await;
    let listed: Vec<&str> = page["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&"carol"), "{page:#}");
    // Several heartbeats: nothing the user may not do was tried.
    tokio::time::sleep(Duration::from_millis(4 * super::HEARTBEAT_MS)).await;
    for node in [&a, &b] {
        node.assert_no_backplane_errors(&["connect", "publish", "subscribe", "presence", "decode"])
            .await;
    }
    // The password never reaches the logs.
    for node in [&a, &b] {
        assert!(log_mentioning(node, password).is_none());
    }

    // The default user is off: a node without the credentials is refused.
    let anonymous = Node::start(&redis.url(), "anonymous");
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_mentioning(&anonymous, "Redis backplane failing").is_none() {
        assert!(Instant::now() < deadline, "the refused node did not say so");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(anonymous.metric("websocket_server_backplane_up").await, 0.0);
}

/// Sentinel's `down-after-milliseconds` in the failover test.
const DOWN_AFTER_MS: u64 = 1_000;

async fn sentinel_query(address: &str, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(format!("redis://{address}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd("SENTINEL");
    for a in args {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

fn len(v: &redis::Value) -> usize {
    match v {
        redis::Value::Array(items) => items.len(),
        _ => 0,
    }
}

#[tokio::test]
async fn a_sentinel_failover_is_followed_without_a_restart_and_the_gap_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut primary = Redis::start();
    let primary_port = primary.port().to_string();
    let _replica = Redis::start_with("redis", &["--replicaof", "127.0.0.1", &primary_port]);
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start(dir.path(), primary.port(), "wsmon", 2, DOWN_AFTER_MS))
        .collect();
    // Each Sentinel must know the replica and the two other Sentinels before a failover can
    // be agreed on (they learn them from the primary's INFO and its hello channel).
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in &sentinels {
        loop {
            let replicas = sentinel_query(&s.address(), &["replicas", "wsmon"]).await;
            let peers = sentinel_query(&s.address(), &["sentinels", "wsmon"]).await;
            if len(&replicas) == 1 && len(&peers) == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinels did not find each other"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let addresses: Vec<String> = sentinels
        .iter()
        .map(|s| format!("\"{}\"", s.address()))
        .collect();
    let env = [
        (
            "WSMON_CLUSTER__SENTINELS",
            format!("[{}]", addresses.join(",")),
        ),
        ("WSMON_CLUSTER__SENTINEL_MASTER", "wsmon".to_owned()),
    ];
    let a = Node::start_with("", "node-a", &env);
    let b = Node::start_with("", "node-b", &env);
    a.wait_ready(2).await;
    b.wait_ready(2).await;
    let (mut alice, mut bob) = chat_crosses(&a, &b).await;
    // The heartbeat with Sentinel is ROLE: answered `master`, the link stays up.
    tokio::time::sleep(Duration::from_millis(4 * super::HEARTBEAT_MS)).await;
    for node in [&a, &b] {
        node.assert_no_backplane_errors(&["connect", "publish", "subscribe", "sentinel"])
            .await;
    }

    primary.kill();
    let killed = Instant::now();
    // When Sentinel names the replica (for the report: how long after it chat resumed).
    let watched = sentinels[0].address();
    let old_port = primary.port().to_string();
    let promoted = tokio::spawn(async move {
        loop {
            let addr = sentinel_query(&watched, &["get-master-addr-by-name", "wsmon"]).await;
            let port = match addr {
                redis::Value::Array(v) => redis::from_redis_value::<String>(v[1].clone()).unwrap(),
                other => panic!("{other:?}"),
            };
            if port != old_port {
                return killed.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    // alice keeps talking every 50 ms; her own node answers her every time (local chat never
    // stops), and bob hears her again once both nodes follow Sentinel to the new primary.
    let mut sent = 0usize;
    let mut received: Vec<usize> = Vec::new();
    let mut resumed = None;
    while resumed.is_none_or(|at: Duration| killed.elapsed() < at + Duration::from_secs(1)) {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "cross-node chat did not resume within 30 s of the failover"
        );
        let text = format!("n{sent}");
        alice.send(&text).await;
        sent += 1;
        assert_eq!(alice.recv_text().await, format!("You sent: {text}"));
        assert_eq!(
            alice.recv_text().await,
            format!("Client #alice says: {text}")
        );
        while let Some(t) = try_recv(&mut bob, Duration::from_millis(50)).await {
            let n: usize = t
                .strip_prefix("Client #alice says: n")
                .unwrap_or_else(|| panic!("bob got {t:?}"))
                .parse()
                .unwrap();
            received.push(n);
            resumed.get_or_insert(killed.elapsed());
        }
    }
    // What bob hears once it resumed: the rest, in order, never a replay.
    for _ in 0..10 {
        let text = format!("n{sent}");
        alice.send(&text).await;
        sent += 1;
        assert_eq!(alice.recv_text().await, format!("You sent: {text}"));
        alice.recv_text().await;
        let got = bob.recv_text().await;
        received.push(got.rsplit('n').next().unwrap().parse().unwrap());
    }
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "at most once and in order: {received:?}"
    );
    let missed = sent - received.len();
    let resumed = resumed.unwrap();
    let promoted = promoted.await.unwrap();
    eprintln!(
        "failover: Sentinel named the replica {} ms and cross-node chat resumed {} ms after the \
         primary was killed (down-after-milliseconds {DOWN_AFTER_MS}); {missed} of {sent} \
         messages did not cross",
        promoted.as_millis(),
        resumed.as_millis()
    );
    assert!(
        missed > 0,
        "the gap lost nothing: the failover was not exercised"
    );
    // Every message that did not cross is counted: by the sender (the link was down, or the
    // pipeline failed) or by the receiver (a gap in the sequence). A pipeline that failed
    // after its numbers were taken is seen by both, so the sum may exceed what was missed.
    let mut counted = 0.0;
    for reason in ["backplane_down", "publish_failed", "queue_full"] {
        counted += a
            .metric(&format!(
                "websocket_server_backplane_dropped_total{{reason=\"{reason}\"}}"
            ))
            .await;
    }
    counted += b
        .metric("websocket_server_backplane_dropped_total{reason=\"lost\"}")
        .await;
    assert!(
        counted >= missed as f64,
        "{missed} missed, {counted} counted"
    );
    for node in [&a, &b] {
        node.wait_ready(2).await;
        assert_eq!(
            node.metric("websocket_server_backplane_primary_switches_total")
                .await,
            1.0
        );
        assert!(
            log_mentioning(node, "Sentinel names a new primary").is_some(),
            "the switch is logged"
        );
    }
}
