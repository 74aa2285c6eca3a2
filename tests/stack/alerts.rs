//! Alerting end to end: wsmon → collector → Prometheus (remote write, the shipped rules) →
//! Alertmanager (the shipped routing) → a webhook receiver here. Prometheus and Alertmanager
//! run for this test alone, with the repository's files and only the evaluation and grouping
//! intervals shortened, so no other test's traffic can fire or hold an alert.
//!
//! Also the path from a spike to one example trace: the collector's span metrics carry
//! exemplars, Prometheus stores them, and Jaeger resolves the trace id; and Jaeger's Monitor
//! tab reads those span metrics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::routing::post;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use super::*;

/// A file of `otel/` with each `(from, to)` replaced; every `from` must be there.
fn render(file: &str, replacements: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(Path::new(ROOT).join("otel").join(file)).unwrap();
    for (from, to) in replacements {
        assert!(text.contains(from), "{file} no longer holds {from:?}");
        text = text.replace(from, to);
    }
    text
}

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prometheus and Alertmanager for one test, delivering to `webhook`.
struct AlertStack {
    prometheus: String,
    _children: Vec<Running>,
    _dir: tempfile::TempDir,
}

impl AlertStack {
    /// With `ALERT_TEST_SHIPPED_INTERVALS=1` the files run as shipped (to measure the real
    /// delay by hand; the test then takes about ten minutes).
    fn shipped_intervals() -> bool {
        std::env::var("ALERT_TEST_SHIPPED_INTERVALS").is_ok_and(|v| v == "1")
    }

    fn start(webhook: &str) -> Self {
        let shipped = Self::shipped_intervals();
        let shorten =
            |pairs: Vec<(&'static str, &'static str)>| if shipped { vec![] } else { pairs };
        let dir = tempfile::tempdir().unwrap();
        let prometheus = format!("127.0.0.1:{}", free_port());
        let alertmanager = format!("127.0.0.1:{}", free_port());
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "prometheus.yml",
            render(
                "prometheus.yml",
                &[
                    shorten(vec![(
                        "evaluation_interval: 15s",
                        "evaluation_interval: 1s",
                    )]),
                    vec![("\"alertmanager:9093\"", &format!("\"{alertmanager}\""))],
                ]
                .concat(),
            ),
        );
        write("alert-rules.yml", render("alert-rules.yml", &[]));
        write(
            "alertmanager.yml",
            render(
                "alertmanager.yml",
                &[
                    shorten(vec![
                        ("group_wait: 30s", "group_wait: 1s"),
                        ("group_interval: 5m", "group_interval: 2s"),
                    ]),
                    vec![("${ALERT_WEBHOOK_URL}", webhook)],
                ]
                .concat(),
            ),
        );
        let path = |name: &str| dir.path().join(name).display().to_string();
        let prom = Command::new("prometheus")
            .arg(format!("--config.file={}", path("prometheus.yml")))
            .arg(format!("--storage.tsdb.path={}", path("prometheus-data")))
            .arg(format!("--web.listen-address={prometheus}"))
            .args([
                "--web.enable-remote-write-receiver",
                "--enable-feature=exemplar-storage",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let am = Command::new(env("ALERTMANAGER_BIN"))
            .arg(format!("--config.file={}", path("alertmanager.yml")))
            .arg(format!("--storage.path={}", path("alertmanager-data")))
            .arg(format!("--web.listen-address={alertmanager}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stack = Self {
            prometheus,
            _children: vec![Running(prom), Running(am)],
            _dir: dir,
        };
        for addr in [&stack.prometheus, &alertmanager] {
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(addr.as_str()).is_err() {
                assert!(Instant::now() < deadline, "{addr} did not start");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        stack
    }
}

/// Every notification the webhook received, in order.
#[derive(Clone, Default)]
struct Webhook(Arc<Mutex<Vec<(Instant, Value)>>>);

impl Webhook {
    async fn serve() -> (Self, String) {
        let hook = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/alerts", listener.local_addr().unwrap());
        let store = hook.clone();
        let app = axum::Router::new().route(
            "/alerts",
            post(move |axum::Json(body): axum::Json<Value>| {
                let store = store.clone();
                async move {
                    store.0.lock().unwrap().push((Instant::now(), body));
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (hook, url)
    }

    /// The first alert named `name` with `status`, and when its notification arrived.
    fn find(&self, name: &str, status: &str) -> Option<(Instant, Value)> {
        self.0.lock().unwrap().iter().find_map(|(at, body)| {
            body["alerts"]
                .as_array()?
                .iter()
                .find(|a| a["labels"]["alertname"] == name && a["status"] == status)
                .map(|a| (*at, a.clone()))
        })
    }

    fn alert_names(&self) -> BTreeMap<String, usize> {
        let mut names = BTreeMap::new();
        for (_, body) in self.0.lock().unwrap().iter() {
            for a in body["alerts"].as_array().into_iter().flatten() {
                let name = a["labels"]["alertname"].as_str().unwrap_or("?").to_owned();
                *names.entry(name).or_default() += 1;
            }
        }
        names
    }
}

/// Waits for the webhook to receive `name` with `status`, up to `patience`.
async fn notified(
    hook: &Webhook,
    name: &str,
    status: &str,
    patience: Duration,
) -> (Instant, Value) {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(found) = hook.find(name, status) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {status} {name} within {patience:?}; received {:?}",
            hook.alert_names()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The shipped rule's labels and annotations, as a notification must carry them.
fn assert_carries_the_rule(alert: &Value, name: &str, severity: &str) {
    assert_eq!(alert["labels"]["alertname"], name, "{alert}");
    assert_eq!(alert["labels"]["severity"], severity, "{alert}");
    for key in ["summary", "description", "runbook"] {
        assert!(
            alert["annotations"][key]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{name}: annotation {key}: {alert}"
        );
    }
}

/// A client that is connected and reads everything (so it is never a slow consumer) but sends
/// nothing until told to: its sending half.
async fn quiet_client(
    server: &process::Server,
    client: &str,
) -> futures_util::stream::SplitSink<Ws, Message> {
    let (sink, mut stream) = connect(server, client).await.split();
    tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    sink
}

#[tokio::test]
async fn error_and_idle_spikes_reach_the_webhook_with_their_annotations_then_resolve() {
    let (hook, url) = Webhook::serve().await;
    let alerting = AlertStack::start(&url);
    let collector =
        Collector::start_writing_to(free_port(), free_port(), free_port(), &alerting.prometheus);
    let run = instance_id("alerting");
    let server = wsmon(
        &collector,
        &run,
        &[
            ("WSMON_MONITOR__IDLE_AFTER_SECS", "2".into()),
            ("WSMON_LIMITS__IDLE_CLOSE_AFTER_SECS", "600".into()),
        ],
    );

    // Idle spike: six clients connect and say nothing.
    let mut quiet = Vec::new();
    for i in 0..6 {
        quiet.push(quiet_client(&server, &format!("quiet{i}-{run}")).await);
    }
    // Error spike: a client every 400 ms sends a binary frame (refused, 1003) until the alert
    // fires.
    let bad = format!("bad-{run}-");
    let spike_started = Instant::now();
    let errors = {
        let addr = server.addr;
        let bad = bad.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let url = format!("ws://{addr}/ws/{bad}{i}");
                if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await {
                    let _ = ws.send(Message::binary(vec![0u8; 8])).await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };

    let shipped_for = Duration::from_secs(60);
    let patience = |secs: u64| {
        Duration::from_secs(if AlertStack::shipped_intervals() {
            secs * 4
        } else {
            secs
        })
    };
    let (fired_at, error_alert) = notified(&hook, "WsmonErrorSpike", "firing", patience(240)).await;
    let sustained = exemplars(&alerting.prometheus, &run, 60).await.len();
    errors.abort();
    let to_fire = fired_at - spike_started;
    eprintln!("error spike: first refused frame to the webhook's firing notification: {to_fire:?}");
    eprintln!("exemplars of the spike's series in Prometheus over its last minute: {sustained}");
    assert!(
        to_fire >= shipped_for,
        "fired before its `for` of 1m: {to_fire:?}"
    );
    assert_carries_the_rule(&error_alert, "WsmonErrorSpike", "critical");

    // The alert's link to Jaeger lists this spike's disconnects (asked through Jaeger's API with
    // the link's own query).
    let link = error_alert["annotations"]["traces"].as_str().unwrap();
    let query = link
        .strip_prefix("http://localhost:16686/search?")
        .unwrap_or_else(|| panic!("{link}"));
    let api = format!("http://{}/api/traces?{query}", env("STACK_JAEGER_QUERY"));
    eventually(
        "the spike's disconnects behind the alert's Jaeger link",
        || async {
            let body = get_json(&api, &[]).await?;
            body["data"].as_array()?.iter().find_map(|trace| {
                trace["spans"].as_array()?.iter().find(|s| {
                    s["operationName"] == "websocket.connection"
                        && tag(s, "client.id")
                            .as_str()
                            .is_some_and(|c| c.starts_with(&bad))
                        && tag(s, "close.reason") == "unsupported_data"
                })?;
                Some(())
            })
        },
    )
    .await;

    let (_, idle_alert) = notified(&hook, "WsmonIdleSpike", "firing", patience(180)).await;
    assert_carries_the_rule(&idle_alert, "WsmonIdleSpike", "warning");

    // The spikes end: no more bad frames (already), and the quiet clients talk.
    let talk = tokio::spawn(async move {
        loop {
            for (i, q) in quiet.iter_mut().enumerate() {
                q.send(Message::text(format!("back {i}"))).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let (_, resolved) = notified(&hook, "WsmonIdleSpike", "resolved", patience(120)).await;
    assert_carries_the_rule(&resolved, "WsmonIdleSpike", "warning");
    let (resolved_at, resolved) =
        notified(&hook, "WsmonErrorSpike", "resolved", patience(180)).await;
    assert_carries_the_rule(&resolved, "WsmonErrorSpike", "critical");
    eprintln!(
        "error spike: resolved notification {:?} after the firing one",
        resolved_at - fired_at
    );
    talk.abort();

    // Nothing else fired: no storm, no slow consumers, no telemetry trouble.
    let names = hook.alert_names();
    assert!(
        names
            .keys()
            .all(|n| n == "WsmonErrorSpike" || n == "WsmonIdleSpike"),
        "{names:?}"
    );
    process::sigterm_and_wait(server);
}

/// Exemplars of the abnormal-disconnect series for one instance over the last `secs` seconds,
/// from the Prometheus at `prometheus`: (trace id, close reason).
async fn exemplars(prometheus: &str, instance: &str, secs: u64) -> Vec<(String, String)> {
    let url = format!("http://{prometheus}/api/v1/query_exemplars");
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let query = format!(
        "traces_span_metrics_calls_total{{instance=\"{instance}\",span_name=\"websocket.connection\",status_code=\"STATUS_CODE_ERROR\"}}"
    );
    let (start, end) = ((end - secs).to_string(), end.to_string());
    let body = get_json(&url, &[("query", &query), ("start", &start), ("end", &end)])
        .await
        .unwrap();
    let mut found = Vec::new();
    for series in body["data"].as_array().into_iter().flatten() {
        let reason = series["seriesLabels"]["close_reason"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        for e in series["exemplars"].as_array().into_iter().flatten() {
            if let Some(id) = e["labels"]["trace_id"].as_str() {
                found.push((id.to_owned(), reason.clone()));
            }
        }
    }
    found
}

#[tokio::test]
async fn an_abnormal_disconnect_spike_leads_by_exemplar_to_its_trace_and_feeds_jaeger_monitor() {
    let collector = Collector::start();
    let run = instance_id("exemplars");
    let server = wsmon(&collector, &run, &[]);
    let prefix = format!("gone-{run}-");
    let clients = connect_all(&server, &prefix, 20).await;
    vanish_all(&server, clients).await;

    // Prometheus holds exemplars of the client_gone series, and each trace id is a
    // disconnect of this run in Jaeger, with that reason.
    let (trace_id, reason) = eventually("an exemplar of the abnormal disconnects", || async {
        exemplars(&env("STACK_PROMETHEUS"), &run, 900)
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(reason, "client_gone");
    let url = format!("http://{}/api/traces/{trace_id}", env("STACK_JAEGER_QUERY"));
    let span = eventually("the exemplar's trace in Jaeger", || async {
        let body = get_json(&url, &[]).await?;
        body["data"][0]["spans"]
            .as_array()?
            .iter()
            .find(|s| s["operationName"] == "websocket.connection")
            .cloned()
    })
    .await;
    assert_eq!(tag(&span, "close.reason"), "client_gone");
    let client = tag(&span, "client.id");
    assert!(
        client.as_str().is_some_and(|c| c.starts_with(&prefix)),
        "{client}"
    );

    // Jaeger's Monitor tab: its metrics API answers with data for the wsmon service.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let calls = format!(
        "http://{}/api/metrics/calls?service=wsmon&spanKind=server&endTs={}&lookback=900000&step=15000&ratePer=60000",
        env("STACK_JAEGER_QUERY"),
        now_ms + 60_000
    );
    let points = eventually("call rates in Jaeger's Monitor tab", || async {
        let body = get_json(&calls, &[]).await?;
        let points: Vec<f64> = body["metrics"]
            .as_array()?
            .iter()
            .flat_map(|m| m["metricPoints"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["gaugeValue"]["doubleValue"].as_f64())
            .filter(|v| *v > 0.0)
            .collect();
        (!points.is_empty()).then_some(points)
    })
    .await;
    assert!(points.iter().all(|v| v.is_finite()), "{points:?}");
    process::sigterm_and_wait(server);
}
