//! Configuration: the shipped file, the README table, layering, and exit status 64 for bad
//! settings (run against the real binary).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use wsmon::config::Settings;

const BIN: &str = env!("CARGO_BIN_EXE_wsmon");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

fn shipped_defaults() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("config/default.toml")).unwrap();
    let mut out = BTreeMap::new();
    flatten("", &text.parse::<toml::Table>().unwrap().into(), &mut out);
    out
}

#[test]
fn the_shipped_default_toml_holds_every_setting_at_its_builtin_default() {
    let mut builtin = BTreeMap::new();
    flatten(
        "",
        &toml::Value::try_from(Settings::default()).unwrap(),
        &mut builtin,
    );
    assert_eq!(shipped_defaults(), builtin);
}

#[test]
fn the_readme_configuration_table_matches_default_toml() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let start = readme
        .find("<!-- config-table:start -->")
        .expect("table start marker");
    let end = readme
        .find("<!-- config-table:end -->")
        .expect("table end marker");
    let mut table = BTreeMap::new();
    for line in readme[start..end].lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let key = cells[1].trim_matches('`').to_owned();
        let value = cells[2].trim_matches('`').to_owned();
        table.insert(key, value);
    }
    assert_eq!(table, shipped_defaults());
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).args(args).env_remove("RUST_LOG");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("WSMON_")) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn settings_layer_defaults_then_default_toml_then_config_file_then_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/default.toml"),
        "[websocket]\noutbound_queue = 11\n[monitor]\npage_max_limit = 500\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("extra.toml"),
        "[websocket]\noutbound_queue = 22\n[monitor]\nidle_after_secs = 7\n",
    )
    .unwrap();

    let out = run(
        dir.path(),
        &["--config", "extra.toml", "--check-config"],
        &[("WSMON_MONITOR__IDLE_AFTER_SECS", "9")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let effective: Settings = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let mut expected = Settings::default();
    expected.websocket.outbound_queue = 22;
    expected.monitor.page_max_limit = 500;
    expected.monitor.idle_after_secs = 9;
    assert_eq!(effective, expected);
}

/// Arguments, environment, and what stderr must mention.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);

#[test]
fn bad_settings_exit_64_naming_the_key_and_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("unknown.toml", "[websocket]\nmax_mesage_size = 10\n");
    write("type.toml", "[websocket]\noutbound_queue = \"many\"\n");
    write("zero.toml", "[monitor]\npage_max_limit = 0\n");
    write(
        "proxy.toml",
        "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
    );
    write("syntax.toml", "[websocket\n");

    let cases: &[Case] = &[
        (
            &[],
            &[("WSMON_WEBSOCKET__MAX_MESSAGE_SIZE", "0")],
            &[
                "websocket.max_message_size",
                "WSMON_WEBSOCKET__MAX_MESSAGE_SIZE",
                "greater than 0",
            ],
        ),
        (
            &[],
            &[("WSMON_SERVER__LISTEN", "nowhere")],
            &["server.listen", "WSMON_SERVER__LISTEN"],
        ),
        (&[], &[("WSMON_LOG__LEVEL", "[[[")], &["log.level"]),
        (&[], &[("WSMON_TYPO", "1")], &["typo", "unknown key"]),
        (
            &["--config", "unknown.toml"],
            &[],
            &["websocket.max_mesage_size", "unknown.toml", "unknown key"],
        ),
        (
            &["--config", "type.toml"],
            &[],
            &["websocket.outbound_queue", "type.toml"],
        ),
        (
            &["--config", "zero.toml"],
            &[],
            &["monitor.page_max_limit", "zero.toml"],
        ),
        (
            &["--config", "proxy.toml"],
            &[],
            &["server.trusted_proxies", "10.0.0.0/33"],
        ),
        (&["--config", "syntax.toml"], &[], &["syntax.toml"]),
        (
            &[],
            &[
                ("WSMON_CLUSTER__REDIS_URL", "rediss://redis:6380"),
                ("WSMON_CLUSTER__REDIS_CA_FILE", "no-such-ca.pem"),
            ],
            &["cluster.redis_ca_file", "no-such-ca.pem"],
        ),
        (
            &["--config", "missing.toml"],
            &[],
            &["missing.toml", "not found"],
        ),
    ];
    for (args, env, needles) in cases {
        // Without --check-config: a bad setting must stop wsmon before it binds anything.
        let out = run(dir.path(), args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?} {env:?}: {stderr}");
        for needle in *needles {
            assert!(
                stderr.contains(needle),
                "{args:?} {env:?}: `{needle}` missing in {stderr}"
            );
        }
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
}

#[test]
fn check_config_names_secret_files_but_never_prints_what_they_hold_or_a_url_password() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("url"),
        "redis://wsmon:url-file-secret@redis:6379\n",
    )
    .unwrap();
    for (key, value) in [
        ("WSMON_CLUSTER__REDIS_URL_FILE", "url"),
        (
            "WSMON_CLUSTER__REDIS_URL",
            "redis://wsmon:inline-secret@redis:6379",
        ),
    ] {
        let out = run(dir.path(), &["--check-config"], &[(key, value)]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!stdout.contains("secret"), "{stdout}");
        if key.ends_with("URL_FILE") {
            assert!(stdout.contains("redis_url_file = \"url\""), "{stdout}");
        } else {
            assert!(
                stdout.contains("redis://wsmon:<redacted>@redis:6379"),
                "{stdout}"
            );
        }
    }
}

#[test]
fn help_lists_the_config_flag() {
    let out = run(Path::new(ROOT), &["--help"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config <FILE>"));
}

#[tokio::test]
async fn settings_built_in_code_are_checked_by_build_and_the_error_names_the_key() {
    let build = |configure: fn(&mut Settings)| async move {
        let mut settings = Settings::default();
        settings.server.listen = "127.0.0.1:0".parse().unwrap();
        configure(&mut settings);
        wsmon::startup::Application::build(settings, wsmon::telemetry::metrics::build(None))
            .await
            .err()
    };
    let key = |e: Option<wsmon::startup::StartError>| match e {
        Some(wsmon::startup::StartError::Config(e)) => e.key,
        other => panic!("{other:?}"),
    };
    // Skipped by the old build, which trusted settings not made by `config::load`.
    assert_eq!(
        key(build(|s| s.telemetry.brief_disconnect_share = 2.0).await),
        "telemetry.brief_disconnect_share"
    );
    assert_eq!(
        key(build(|s| s.security.allowed_origins = vec!["not an origin".into()]).await),
        "security.allowed_origins"
    );
    assert_eq!(
        key(build(|s| s.limits.max_connections = 0).await),
        "limits.max_connections"
    );
    assert!(build(|_| {}).await.is_none(), "the defaults build");
}
