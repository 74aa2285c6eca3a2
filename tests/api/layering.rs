//! The layering the README's module graph states, checked on the source: the monitoring core
//! (`monitor`, with `reasons` and `telemetry` below it) never reaches up into the chat, the
//! cluster or HTTP, telemetry never into the core, and the core-only example uses none of them.
//! A `use` that breaks it fails here, not in a review.

use std::path::{Path, PathBuf};

fn sources(path: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    if root.is_file() {
        return vec![root];
    }
    let mut files = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// Lines of the sources under `path` that name one of `modules` (as `crate::m` or `wsmon::m`).
fn reaches(path: &str, modules: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for file in sources(path) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for m in modules {
                if line.contains(&format!("crate::{m}::"))
                    || line.contains(&format!("crate::{m};"))
                    || line.contains(&format!("wsmon::{m}::"))
                    || line.contains(&format!("wsmon::{m}}}"))
                {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn the_monitoring_core_reaches_neither_chat_nor_cluster_nor_http() {
    let above = ["chat", "cluster", "http", "error", "startup"];
    for path in ["src/monitor", "src/reasons.rs", "src/telemetry"] {
        assert_eq!(reaches(path, &above), Vec::<String>::new(), "{path}");
    }
}

#[test]
fn telemetry_does_not_reach_back_into_the_core() {
    assert_eq!(reaches("src/telemetry", &["monitor"]), Vec::<String>::new());
}

#[test]
fn the_core_only_example_uses_the_core_alone() {
    let found = reaches(
        "examples/echo-core.rs",
        &["chat", "cluster", "http", "startup"],
    );
    assert_eq!(found, Vec::<String>::new());
    assert!(!reaches("examples/echo-core.rs", &["monitor"]).is_empty());
}
