//! Structural checks of the operator stack's files (the stack tests run every query against a
//! real Prometheus, and promtool runs the alert rules' unit tests): dashboards, alert rules and
//! their test files, Alertmanager routing, datasources, compose image pins.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use wsmon::telemetry::names::METRICS;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn yaml(path: &str) -> Yaml {
    serde_yaml::from_str(&std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap()).unwrap()
}

fn dashboards() -> Vec<(String, Json)> {
    let dir = Path::new(ROOT).join("grafana/dashboards");
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let json = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (p.display().to_string(), json)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty());
    out
}

fn datasource_uids() -> HashSet<String> {
    yaml("grafana/provisioning/datasources/datasources.yaml")["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|d| d["uid"].as_str().unwrap().to_owned())
        .collect()
}

/// Every `websocket_server_*` name in `expr`, with histogram suffixes removed.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("websocket_server_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

fn documented() -> HashSet<&'static str> {
    METRICS.iter().map(|m| m.prometheus).collect()
}

#[test]
fn dashboards_have_unique_ids_no_overlaps_known_datasources_and_documented_metrics() {
    let uids = datasource_uids();
    for (path, d) in dashboards() {
        assert!(
            d["uid"].as_str().is_some_and(|u| !u.is_empty()),
            "{path}: fixed uid"
        );
        let vars: Vec<_> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].clone())
            .collect();
        assert!(
            vars.contains(&Json::from("instance")),
            "{path}: instance variable"
        );
        let panels = d["panels"].as_array().unwrap();
        let ids: HashSet<_> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
        assert_eq!(ids.len(), panels.len(), "{path}: unique panel ids");
        let boxes: Vec<(u64, u64, u64, u64)> = panels
            .iter()
            .map(|p| {
                let g = &p["gridPos"];
                (
                    g["x"].as_u64().unwrap(),
                    g["y"].as_u64().unwrap(),
                    g["w"].as_u64().unwrap(),
                    g["h"].as_u64().unwrap(),
                )
            })
            .collect();
        for (i, a) in boxes.iter().enumerate() {
            assert!(a.0 + a.2 <= 24, "{path}: panel {i} fits the 24-column grid");
            for b in &boxes[i + 1..] {
                let overlap =
                    a.0 < b.0 + b.2 && b.0 < a.0 + a.2 && a.1 < b.1 + b.3 && b.1 < a.1 + a.3;
                assert!(!overlap, "{path}: panels overlap: {a:?} {b:?}");
            }
        }
        for p in panels {
            let ds = p["datasource"]["uid"].as_str().unwrap();
            assert!(uids.contains(ds), "{path}: unknown datasource {ds}");
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                let names = metric_names(expr);
                // Span metrics come from the collector (otel/collector.yaml), not from wsmon.
                assert!(
                    !names.is_empty() || expr.contains("traces_span_metrics_"),
                    "{path}: {expr}"
                );
                for n in names {
                    assert!(
                        documented().contains(n.as_str()),
                        "{path}: undocumented metric {n}"
                    );
                }
            }
        }
    }
}

#[test]
fn alert_rules_are_prometheus_rules_with_annotations_documented_metrics_and_unit_tests() {
    assert!(
        !Path::new(ROOT)
            .join("grafana/provisioning/alerting")
            .exists(),
        "alerts live in otel/alert-rules.yml only, not as Grafana-managed copies"
    );
    let rules = yaml("otel/alert-rules.yml");
    let mut names = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        let group_name = group["name"].as_str().unwrap();
        assert!(
            group["interval"].is_null(),
            "{group_name}: takes the global evaluation_interval, so tests can shorten it"
        );
        let tests = group_tests(group_name);
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap().to_owned();
            for key in ["summary", "description", "runbook"] {
                assert!(
                    rule["annotations"][key]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{name}: {key}"
                );
            }
            let severity = rule["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("warning" | "critical")),
                "{name}: severity {severity:?}"
            );
            let expr = rule["expr"].as_str().unwrap();
            let metrics = metric_names(expr);
            assert!(!metrics.is_empty(), "{name}: {expr}");
            for n in metrics {
                assert!(
                    documented().contains(n.as_str()),
                    "{name}: undocumented {n}"
                );
            }
            // The group's promtool file both expects this alert firing and expects it quiet.
            let cases: Vec<&Yaml> = tests
                .iter()
                .flat_map(|t| t["alert_rule_test"].as_sequence().unwrap())
                .filter(|c| c["alertname"].as_str() == Some(&name))
                .collect();
            assert!(
                cases
                    .iter()
                    .any(|c| c["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty())),
                "{name}: a unit test where it fires"
            );
            assert!(
                cases
                    .iter()
                    .filter(|c| c["exp_alerts"].as_sequence().is_some_and(|a| a.is_empty()))
                    .count()
                    >= 2,
                "{name}: unit tests where it stays quiet"
            );
            names.push(name);
        }
    }
    for needed in ["WsmonIdleSpike", "WsmonErrorSpike", "WsmonBackplaneDown"] {
        assert!(names.iter().any(|t| t == needed), "{needed} rule");
    }
}

/// The promtool test cases of one rule group: `otel/alert-tests/<group without wsmon->.yml`.
fn group_tests(group: &str) -> Vec<Yaml> {
    let file = format!(
        "otel/alert-tests/{}.yml",
        group.trim_start_matches("wsmon-")
    );
    let doc = yaml(&file);
    assert_eq!(
        doc["rule_files"],
        serde_yaml::from_str::<Yaml>("[../alert-rules.yml]").unwrap(),
        "{file}"
    );
    doc["tests"].as_sequence().unwrap().clone()
}

#[test]
fn one_value_routes_alerts_and_every_image_is_pinned_in_env() {
    let env = std::fs::read_to_string(Path::new(ROOT).join(".env")).unwrap();
    let defined: HashSet<&str> = env
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    // Alertmanager: every alert to one webhook receiver, resolutions included.
    let am = yaml("otel/alertmanager.yml");
    let receivers = am["receivers"].as_sequence().unwrap();
    assert_eq!(receivers.len(), 1);
    assert_eq!(am["route"]["receiver"], receivers[0]["name"]);
    assert!(am["route"]["routes"].is_null(), "no other route");
    let hook = &receivers[0]["webhook_configs"][0];
    assert_eq!(hook["url"].as_str(), Some("${ALERT_WEBHOOK_URL}"));
    assert_eq!(hook["send_resolved"].as_bool(), Some(true));
    assert!(defined.contains("ALERT_WEBHOOK_URL"));
    // Prometheus loads the rules and sends to Alertmanager; compose mounts both files.
    let prometheus = yaml("otel/prometheus.yml");
    assert_eq!(
        prometheus["rule_files"][0].as_str(),
        Some("alert-rules.yml")
    );
    assert_eq!(
        prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0].as_str(),
        Some("alertmanager:9093")
    );
    let mut compose = yaml("docker-compose.yml");
    compose.apply_merge().unwrap(); // the second node extends the first with `<<:`
    let mounts = |service: &str| -> Vec<String> {
        compose["services"][service]["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert!(mounts("prometheus")
        .contains(&"./otel/alert-rules.yml:/etc/prometheus/alert-rules.yml:ro".to_owned()));
    assert!(mounts("alertmanager")
        .contains(&"./otel/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro".to_owned()));
    let command = compose["services"]["alertmanager"]["command"][0]
        .as_str()
        .unwrap();
    assert!(
        command.contains(r#"sed "s|\$${ALERT_WEBHOOK_URL}|$$ALERT_WEBHOOK_URL|""#),
        "{command}"
    );
    for (name, service) in compose["services"].as_mapping().unwrap() {
        let image = service["image"].as_str().unwrap();
        let var = image.trim_start_matches("${").trim_end_matches('}');
        assert!(
            defined.contains(var),
            "{name:?}: image {image} pinned in .env"
        );
    }
}

#[test]
fn compose_has_no_default_secrets_and_publishes_on_loopback_by_default() {
    let env = std::fs::read_to_string(Path::new(ROOT).join(".env")).unwrap();
    assert!(
        env.lines().any(|l| l == "WSMON_PUBLISH_ADDRESS=127.0.0.1"),
        ".env publishes on loopback"
    );
    assert!(
        !env.contains("TOKEN=") && !env.contains("PASSWORD="),
        "no secret in .env"
    );
    let mut compose = yaml("docker-compose.yml");
    compose.apply_merge().unwrap();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().unwrap();
            assert!(
                port.starts_with("${WSMON_PUBLISH_ADDRESS:-127.0.0.1}:"),
                "{name:?}: {port} is published on every interface"
            );
        }
        for (key, value) in service["environment"].as_mapping().into_iter().flatten() {
            let (key, value) = (key.as_str().unwrap(), value.as_str().unwrap_or(""));
            if key.contains("TOKEN") || key.contains("PASSWORD") {
                assert!(
                    value.contains(":?") && !value.contains(":-"),
                    "{name:?}: {key} must be required, with no default: {value}"
                );
            }
        }
    }
    let grafana = &compose["services"]["grafana"]["environment"];
    assert!(
        grafana["GF_SECURITY_ADMIN_PASSWORD"].is_string(),
        "Grafana's admin password is set"
    );
}
