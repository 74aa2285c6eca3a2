//! Structural checks of the operator stack's files (the stack tests run every query against a
//! real Prometheus): dashboards, alert rules, datasources, compose image pins.

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
                assert!(!names.is_empty(), "{path}: {expr}");
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
fn alert_rules_are_complete_and_use_provisioned_datasources_and_documented_metrics() {
    let uids = datasource_uids();
    let rules = yaml("grafana/provisioning/alerting/rules.yaml");
    let mut titles = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let title = rule["title"].as_str().unwrap().to_owned();
            for key in ["summary", "description", "runbook"] {
                assert!(
                    rule["annotations"][key]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{title}: {key}"
                );
            }
            assert!(
                rule["labels"]["severity"].as_str().is_some(),
                "{title}: severity"
            );
            let condition = rule["condition"].as_str().unwrap();
            let data = rule["data"].as_sequence().unwrap();
            assert!(
                data.iter().any(|d| d["refId"].as_str() == Some(condition)),
                "{title}: condition"
            );
            for d in data {
                let ds = d["datasourceUid"].as_str().unwrap();
                assert!(
                    ds == "__expr__" || uids.contains(ds),
                    "{title}: datasource {ds}"
                );
                if let Some(expr) = d["model"]["expr"].as_str() {
                    for n in metric_names(expr) {
                        assert!(
                            documented().contains(n.as_str()),
                            "{title}: undocumented {n}"
                        );
                    }
                }
            }
            titles.push(title);
        }
    }
    for needed in ["Idle spike", "Error spike", "Cluster backplane down"] {
        assert!(titles.iter().any(|t| t == needed), "{needed} rule");
    }
}

#[test]
fn one_value_routes_alerts_and_every_image_is_pinned_in_env() {
    let env = std::fs::read_to_string(Path::new(ROOT).join(".env")).unwrap();
    let defined: HashSet<&str> = env
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    let contact = yaml("grafana/provisioning/alerting/contactpoints.yaml");
    let url = contact["contactPoints"][0]["receivers"][0]["settings"]["url"]
        .as_str()
        .unwrap();
    assert_eq!(url, "${ALERT_WEBHOOK_URL}");
    assert!(defined.contains("ALERT_WEBHOOK_URL"));
    let mut compose = yaml("docker-compose.yml");
    compose.apply_merge().unwrap(); // the second node extends the first with `<<:`
    for (name, service) in compose["services"].as_mapping().unwrap() {
        let image = service["image"].as_str().unwrap();
        let var = image.trim_start_matches("${").trim_end_matches('}');
        assert!(
            defined.contains(var),
            "{name:?}: image {image} pinned in .env"
        );
    }
}
