//! The container files cannot be run here (no Docker engine), so this test
//! holds them to what can be checked: the compose file's services,
//! volumes, healthchecks and secrets; every `HALLMARK_*` setting in either
//! file is a real configuration key; the Dockerfile copies what the build
//! needs and builds with the lock file as it is; and its ENTRYPOINT + CMD,
//! with its ENV, run the real binary, whose readiness its HEALTHCHECK
//! command (run with bash, as in the image) sees.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The compose file as JSON, through PyYAML (python3-yaml).
fn compose() -> Option<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(repo().join("docker-compose.yml"))
        .output();
    match out {
        Ok(o) if o.status.success() => Some(serde_json::from_slice(&o.stdout).unwrap()),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but python3 with PyYAML (python3-yaml) is not installed")
        }
        _ => {
            eprintln!("note: python3-yaml is not installed; skipping the compose checks");
            None
        }
    }
}

/// The Dockerfile's instructions, continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        if let Some((op, rest)) = current.trim().split_once(' ') {
            joined.push((op.to_owned(), rest.trim().to_owned()));
        }
        current.clear();
    }
    joined
}

/// `KEY=VALUE` pairs of the Dockerfile's ENV lines.
fn dockerfile_env(lines: &[(String, String)]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|(op, _)| op == "ENV")
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_compose_file_has_its_services_volumes_healthchecks_and_secrets() {
    let Some(c) = compose() else { return };
    let services = c["services"].as_object().unwrap();
    assert_eq!(
        services.keys().collect::<Vec<_>>(),
        ["db", "hallmark"],
        "{c}"
    );
    let (db, hm) = (&c["services"]["db"], &c["services"]["hallmark"]);
    // Named volumes, mounted where each keeps its data.
    let volumes = c["volumes"].as_object().unwrap();
    assert!(volumes.contains_key("db-data") && volumes.contains_key("ca-data"));
    assert!(db["volumes"]
        .as_array()
        .unwrap()
        .contains(&Value::from("db-data:/var/lib/postgresql/data")));
    assert!(hm["volumes"]
        .as_array()
        .unwrap()
        .contains(&Value::from("ca-data:/data")));
    // Both have healthchecks; hallmark waits for a healthy database.
    assert_eq!(db["healthcheck"]["test"][1], "pg_isready", "{db}");
    assert_eq!(hm["depends_on"]["db"]["condition"], "service_healthy");
    let check = hm["healthcheck"]["test"].as_array().unwrap();
    assert_eq!(check[0], "CMD");
    // The root passphrase is a secret file, never an environment value.
    assert_eq!(
        c["secrets"]["root_passphrase"]["file"],
        "./root-passphrase.txt"
    );
    assert!(hm["secrets"]
        .as_array()
        .unwrap()
        .contains(&Value::from("root_passphrase")));
    let env = hm["environment"].as_object().unwrap();
    assert_eq!(
        env["HALLMARK_ROOT_PASSPHRASE_FILE"],
        "/run/secrets/root_passphrase"
    );
    assert!(!env.contains_key("HALLMARK_ROOT_PASSPHRASE"));
    assert!(
        env["DATABASE_URL"]
            .as_str()
            .unwrap()
            .starts_with("postgres://hallmark:${POSTGRES_PASSWORD}@db:5432/hallmark"),
        "{env:?}"
    );
    // Only the loopback of the host sees the ports.
    for port in hm["ports"].as_array().unwrap() {
        assert!(port.as_str().unwrap().starts_with("127.0.0.1:"), "{port}");
    }

    // Every HALLMARK_* setting of both files is a configuration key the
    // binary accepts (a misspelt one would fail here, not in production).
    let mut pairs: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("HALLMARK_") && k.contains("__"))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    pairs.extend(
        dockerfile_env(&dockerfile())
            .into_iter()
            .filter(|(k, _)| k.starts_with("HALLMARK_") && k.contains("__")),
    );
    assert!(pairs.len() >= 5, "{pairs:?}");
    let dir = tempfile::tempdir().unwrap();
    hallmark::config::Config::load(None, dir.path(), pairs.clone())
        .unwrap_or_else(|e| panic!("{e}: {pairs:?}"));
    // The healthcheck is the Dockerfile's.
    let lines = dockerfile();
    let health = &lines.iter().find(|(op, _)| op == "HEALTHCHECK").unwrap().1;
    assert!(health.contains("GET /readyz"), "{health}");
    assert!(check[3].as_str().unwrap().contains("GET /readyz HTTP/1.0"));
}

#[test]
fn the_dockerfile_copies_what_the_build_needs_and_its_lock_file_is_current() {
    let lines = dockerfile();
    for (op, rest) in &lines {
        if op == "COPY" && !rest.starts_with("--from") {
            let mut parts: Vec<&str> = rest.split_whitespace().collect();
            parts.pop(); // the destination
            for source in parts {
                assert!(
                    repo().join(source).exists(),
                    "Dockerfile copies {source}, which does not exist"
                );
            }
        }
    }
    let build = &lines
        .iter()
        .find(|(op, rest)| op == "RUN" && rest.contains("cargo build"))
        .unwrap()
        .1;
    assert!(
        build.contains("--release --locked --bin hallmark"),
        "{build}"
    );
    // `--locked` fails if Cargo.lock does not match Cargo.toml (resolved
    // for this platform, from what the test build already fetched).
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--locked",
            "--offline",
            "-e",
            "normal",
            "--depth",
            "0",
        ])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .current_dir(repo())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Splits a Dockerfile JSON-array instruction (`["a", "b"]`).
fn exec_form(rest: &str) -> Vec<String> {
    serde_json::from_str(rest).unwrap_or_else(|e| panic!("{rest}: {e}"))
}

#[tokio::test]
async fn the_images_command_runs_the_binary_and_its_healthcheck_sees_it_ready() {
    let lines = dockerfile();
    let find = |name: &str| {
        exec_form(
            &lines
                .iter()
                .find(|(op, _)| op == name)
                .unwrap_or_else(|| panic!("no {name}"))
                .1,
        )
    };
    let (entrypoint, cmd) = (find("ENTRYPOINT"), find("CMD"));
    assert_eq!(entrypoint[0], "hallmark");
    assert_eq!(cmd, ["serve"]);
    let health = find_health(&lines);

    // The image's command line, with /data a temporary directory and the
    // image's ENV, on free ports.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let (https, http) = (free_port(), free_port());
    let args: Vec<String> = entrypoint[1..]
        .iter()
        .chain(cmd.iter())
        .map(|a| a.replace("/data", &data.to_string_lossy()))
        .collect();
    let mut command = Command::new(env!("CARGO_BIN_EXE_hallmark"));
    command
        .args(&args)
        .current_dir(&data)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in dockerfile_env(&lines) {
        let v = match k.as_str() {
            "HALLMARK_SERVER__HTTPS_LISTEN" => format!("127.0.0.1:{https}"),
            "HALLMARK_SERVER__HTTP_LISTEN" => format!("127.0.0.1:{http}"),
            _ => v.replace("/data", &data.to_string_lossy()),
        };
        command.env(k, v);
    }
    std::fs::write(dir.path().join("passphrase"), format!("{PASSPHRASE}\n")).unwrap();
    command.env(
        "HALLMARK_ROOT_PASSPHRASE_FILE",
        dir.path().join("passphrase"),
    );
    let mut child = command.spawn().unwrap();

    // The HEALTHCHECK command itself, aimed at this port.
    let probe: Vec<String> = health
        .iter()
        .map(|a| a.replace("127.0.0.1/8080", &format!("127.0.0.1/{http}")))
        .collect();
    let mut healthy = false;
    for _ in 0..100 {
        let status = Command::new(&probe[0])
            .args(&probe[1..])
            .stderr(Stdio::null())
            .status();
        if status.is_ok_and(|s| s.success()) {
            healthy = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exited = child.wait().unwrap();
    assert!(healthy, "the HEALTHCHECK never passed");
    assert!(exited.success(), "{exited}");
    // The first password went to the file in the volume, as documented.
    assert!(data.join("initial-admin-password").exists());
}

/// The HEALTHCHECK's command (after `CMD`), as an argv.
fn find_health(lines: &[(String, String)]) -> Vec<String> {
    let rest = &lines.iter().find(|(op, _)| op == "HEALTHCHECK").unwrap().1;
    let json = &rest[rest.find("CMD [").unwrap() + 4..];
    exec_form(json)
}
