//! The `aisle-hub` binary as an operator uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use aisle_hub::storage;

fn hub_cmd(args: &[&str], db: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aisle-hub"))
        .args(args)
        .args(["--db", db])
        .env_remove("AISLE_HQ_TOKEN")
        .env_remove("AISLE_HUB_DB")
        .output()
        .unwrap()
}

#[tokio::test]
async fn store_gateway_and_compact_commands() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("hub.db").display());

    let out = hub_cmd(&["store", "add", "S001", "--name", "Pudong 1"], &db);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = hub_cmd(&["store", "add", "S001", "--name", "Pudong 1"], &db);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("store S001 already exists"), "{err}");
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");

    let out = hub_cmd(&["gateway", "add", "--store", "S001"], &db);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout:?}");
    let (id, secret) = lines[0].rsplit_once('.').unwrap();
    assert!(
        id.starts_with("gw-S001-") && id.len() == "gw-S001-".len() + 8,
        "{id}"
    );
    assert!(
        id["gw-S001-".len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
    );
    assert_eq!(secret.len(), 64);
    // The credential works, and the database does not hold the secret itself.
    let s = storage::open(&db).await.unwrap();
    assert_eq!(
        s.authenticate_gateway(lines[0])
            .await
            .unwrap()
            .store
            .as_str(),
        "S001"
    );
    drop(s);
    let raw = std::fs::read(dir.path().join("hub.db")).unwrap();
    let wal = std::fs::read(dir.path().join("hub.db-wal")).unwrap_or_default();
    let needle = secret.as_bytes();
    for bytes in [&raw, &wal] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "the secret is stored in clear"
        );
    }

    let unknown = hub_cmd(&["gateway", "add", "--store", "S404"], &db);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown store S404"));

    let out = hub_cmd(&["changes", "compact"], &db);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "removed 0 superseded changes"
    );
}

#[test]
fn serve_refuses_to_start_without_an_hq_token() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("hub.db").display());
    let out = hub_cmd(&["serve", "--listen", "127.0.0.1:0"], &db);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AISLE_HQ_TOKEN is not set"), "{err}");
}

#[tokio::test]
async fn serve_answers_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("hub.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_aisle-hub"))
        .args(["serve", "--listen", "127.0.0.1:0", "--db", &db])
        .env("AISLE_HQ_TOKEN", "cli-test-token-0123456789")
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        lines
            .find_map(|l| l.ok().filter(|l| l.contains("listening on")))
            .unwrap()
    })
    .await
    .unwrap();
    let url = line.rsplit(' ').next().unwrap().to_owned();
    let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        None
    })
    .await
    .unwrap();
    assert!(status.expect("stopped within 5 s of SIGTERM").success());
}
