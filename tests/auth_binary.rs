//! Authentication through the real binary: the refusal to serve a non-loopback
//! address without a key, `--insecure-no-auth`, `talus-tally token` and
//! `talus-tally grant` for projects created before authentication was on.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use talus_tally::auth::{AuthConfig, Verifier};

const SECRET: &str = "a-shared-secret-for-the-binary";

/// The binary with no authentication settings inherited from the environment.
fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_talus-tally"));
    for var in [
        "TALUS_JWT_SECRET",
        "TALUS_JWT_PUBLIC_KEY",
        "TALUS_INSECURE_NO_AUTH",
        "TALUS_ADDR",
    ] {
        command.env_remove(var);
    }
    command
}

#[test]
fn serving_a_non_loopback_address_without_a_key_is_refused_with_how_to_configure_one() {
    let dir = tempfile::tempdir().unwrap();
    let output = binary()
        .args(["serve", "--in-memory", "--addr", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("the binary runs");
    assert!(!output.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for hint in ["--jwt-secret", "--jwt-public-key", "--insecure-no-auth"] {
        assert!(text.contains(hint), "the message names {hint}: {text}");
    }
}

/// The binary inside a network namespace of its own (`unshare -rn`: a user
/// namespace, so no privilege is needed), where the only interface is a
/// loopback that is down: an address such as 0.0.0.0 binds there and is
/// reachable from nowhere. `None` where namespaces are not available.
fn binary_in_own_network() -> Option<Command> {
    let works = Command::new("unshare")
        .args(["-rn", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        return None;
    }
    let plain = binary();
    let mut command = Command::new("unshare");
    command.args(["-rn"]).arg(plain.get_program());
    for (var, _) in plain.get_envs() {
        command.env_remove(var);
    }
    Some(command)
}

#[test]
fn insecure_no_auth_starts_on_a_non_loopback_address_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    // Servers under test listen on loopback only: this one binds 0.0.0.0 in
    // a network namespace of its own, and is stopped as soon as it says it listens.
    let Some(mut command) = binary_in_own_network() else {
        eprintln!(
            "skipped: `unshare -rn` (util-linux, user namespaces) is not available here, \
             and this test does not bind 0.0.0.0 on the machine's own network"
        );
        return;
    };
    let mut child = command
        .args([
            "serve",
            "--in-memory",
            "--insecure-no-auth",
            "--addr",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut warned = false;
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server logs within 30 s");
        warned |= line.contains("WARN") && line.contains("--insecure-no-auth");
        if line.contains("listening on") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        warned,
        "a warning names --insecure-no-auth before the server listens"
    );
}

#[test]
fn the_token_command_prints_a_hs256_token_the_server_accepts() {
    let output = binary()
        .args([
            "token",
            "--jwt-secret",
            SECRET,
            "--sub",
            "alice",
            "--name",
            "Alice",
            "--ttl",
            "1h",
        ])
        .output()
        .expect("the binary runs");
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap();
    let verifier = Verifier::from_config(&AuthConfig {
        secret: Some(SECRET.into()),
        leeway_secs: 0,
        ..AuthConfig::default()
    })
    .unwrap()
    .unwrap();
    let user = verifier.verify(token.trim()).expect("the token verifies");
    assert_eq!(user.id, "alice");
    assert_eq!(user.name.as_deref(), Some("Alice"));
    let remaining = user.remaining(0).as_secs();
    assert!((3590..=3600).contains(&remaining), "{remaining}");
}

#[tokio::test]
async fn grant_gives_an_owner_to_a_project_created_before_authentication_was_on() {
    // A project made with authentication off has no members.
    let app = common::App::start().await;
    let (_, _) = app.create_project("project", "Old").await;
    let projects = app.projects().await;
    let project = projects[0].0.clone();
    let dir = app.restart().await;
    let data_dir = dir.path().join("data");
    assert!(grant_alice_owner(&project, &data_dir).status.success());
    // An unknown project is refused.
    let unknown = grant_alice_owner("292b9e11-45c7-94f4-20db-7f6085266a4f", &data_dir);
    assert!(!unknown.status.success());
    let app = common::App::start_in(dir, |c| {
        c.auth = AuthConfig {
            secret: Some(SECRET.into()),
            ..AuthConfig::default()
        };
    })
    .await;
    let ttl = Duration::from_secs(600);
    for (user, expected) in [
        ("alice", json!([{ "id": project, "myRole": "OWNER" }])),
        ("bob", json!([])),
    ] {
        let token = talus_tally::auth::mint_hs256(SECRET, user, None, ttl).unwrap();
        let body: serde_json::Value = reqwest::Client::new()
            .post(app.url("/graphql"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(json!({ "query": "{ projects { id myRole } }" }).to_string())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["data"]["projects"], expected, "{user}: {body}");
    }
}

/// `talus-tally grant --project PROJECT --user alice --role owner --data-dir DIR`.
fn grant_alice_owner(project: &str, data_dir: &std::path::Path) -> std::process::Output {
    binary()
        .args([
            "grant",
            "--project",
            project,
            "--user",
            "alice",
            "--role",
            "owner",
            "--data-dir",
        ])
        .arg(data_dir)
        .output()
        .expect("the binary runs")
}
