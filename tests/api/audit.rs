//! Authentication against the real binary: it refuses to run open beyond loopback, never logs a
//! token (failed or accepted), and writes an audit line for every kick.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_wsmon");
const VIEWER: &str = "viewer-token-cccccccccccc";
const OPERATOR: &str = "operator-token-dddddddddddd";
const WRONG: &str = "wrong-token-eeeeeeeeeeee";

fn command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(env!("CARGO_TARGET_TMPDIR"))
        .env_remove("RUST_LOG");
    for (k, _) in
        std::env::vars().filter(|(k, _)| k.starts_with("WSMON_") || k.starts_with("OTEL_"))
    {
        cmd.env_remove(k);
    }
    cmd
}

#[test]
fn wsmon_refuses_to_listen_beyond_loopback_without_credentials() {
    let out = command()
        .env("WSMON_SERVER__LISTEN", "0.0.0.0:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("server.listen") && stderr.contains("WSMON_SERVER__LISTEN"),
        "{stderr}"
    );
    assert!(stderr.contains("auth.allow_unauthenticated"), "{stderr}");

    for extra in [
        ("WSMON_AUTH__ALLOW_UNAUTHENTICATED", "true".to_string()),
        ("WSMON_AUTH__OPERATOR_TOKENS", format!("[\"{OPERATOR}\"]")),
    ] {
        let out = command()
            .env("WSMON_SERVER__LISTEN", "0.0.0.0:0")
            .env(extra.0, &extra.1)
            .arg("--check-config")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(!printed.contains(OPERATOR), "--check-config redacts tokens");
    }
}

#[tokio::test]
async fn tokens_never_reach_the_log_and_kicks_are_audited() {
    let mut child = command()
        .env("WSMON_SERVER__LISTEN", "127.0.0.1:0")
        .env("WSMON_LOG__FORMAT", "json")
        .env("WSMON_AUTH__VIEWER_TOKENS", format!("[\"{VIEWER}\"]"))
        .env("WSMON_AUTH__OPERATOR_TOKENS", format!("[\"{OPERATOR}\"]"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Read the first lines for the address, keep the rest for later.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    let mut log = String::new();
    let addr = loop {
        log.push_str(&rx.recv_timeout(Duration::from_secs(10)).expect("logs"));
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("\"message\":\"listening\""))
        {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            break v["address"].as_str().unwrap().to_owned();
        }
    };
    let http = reqwest::Client::new();
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/victim"))
        .await
        .unwrap();
    let r = http
        .get(format!("http://{addr}/ws-stats"))
        .bearer_auth(WRONG)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let stats: serde_json::Value = http
        .get(format!("http://{addr}/ws-stats"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = stats["connections"][0]["connection_id"].as_str().unwrap();
    let r = http
        .delete(format!("http://{addr}/api/v1/connections/{id}"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    while let Ok(chunk) = rx.recv_timeout(Duration::from_secs(2)) {
        log.push_str(&chunk);
    }

    for token in [VIEWER, OPERATOR, WRONG] {
        assert!(!log.contains(token), "a token reached the log");
    }
    assert!(log.contains("authentication failed"), "failures are logged");
    let audit = log
        .lines()
        .find(|l| l.contains("\"audit\":true"))
        .expect("an audit line");
    let audit: serde_json::Value = serde_json::from_str(audit).unwrap();
    assert_eq!(audit["action"], "kick");
    assert_eq!(audit["who"], "operator#1");
    assert_eq!(audit["connection.id"], id);
    assert_eq!(audit["client.id"], "victim");
    assert!(audit["at"].as_str().unwrap().ends_with('Z'));
}
