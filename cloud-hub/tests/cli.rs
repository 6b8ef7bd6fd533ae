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

#[tokio::test]
async fn orders_and_webhook_commands() {
    use aisle_hub::pickup::{NewOrder, OrderLineRequest};
    use aisle_hub::price_batch::{BatchStores, ItemOrigin, PriceBatch, PriceItem};
    use aisle_hub::storage::NewStockAdjustment;
    use aisle_protocol::{Currency, Gtin, Money, OrderId, StoreId, UtcMillis};

    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("hub.db").display());
    let cmd = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_aisle-hub"))
            .args(args)
            .args(["--db", &db])
            .env_remove("AISLE_HUB_DB")
            .env_remove("AISLE_WEBHOOK_SECRET")
            .output()
            .unwrap()
    };
    assert!(
        cmd(&["store", "add", "S001", "--name", "Pudong 1"])
            .status
            .success()
    );
    let out = cmd(&["orders", "key"]);
    assert!(out.status.success() && out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("generated with the first order"));

    let s = storage::open(&db).await.unwrap();
    let store = StoreId::parse("S001").unwrap();
    let gtin = Gtin::parse("9501101531000").unwrap();
    let cny = Currency::parse("CNY").unwrap();
    let item = PriceItem {
        origin: ItemOrigin::Row(1),
        gtin,
        price: Money::new(350, cny),
        name: "Oolong tea 500ml".into(),
    };
    s.create_price_batch(&PriceBatch::new(BatchStores::All, None, vec![item]).unwrap())
        .await
        .unwrap();
    s.add_stock_adjustment(
        &store,
        &NewStockAdjustment::new(None, gtin, 5, "goods received").unwrap(),
    )
    .await
    .unwrap();
    let now = UtcMillis::now();
    let order = NewOrder::new(
        OrderId::parse("web-10042").unwrap(),
        store,
        vec![OrderLineRequest { gtin, qty: 2 }],
        UtcMillis(now.0 + 3_600_000),
        None,
    )
    .unwrap();
    let placed = s.create_order(&order, now).await.unwrap().order;
    let key = s.pickup_key().await.unwrap().unwrap();
    drop(s);

    let out = cmd(&["orders", "list", "--status", "placed"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let fields: Vec<&str> = stdout.trim_end().split('\t').collect();
    assert_eq!(
        (fields[0], fields[1], fields[2], fields[5]),
        ("web-10042", "S001", "placed", "1")
    );
    assert!(
        cmd(&["orders", "list", "--status", "ready"])
            .stdout
            .is_empty()
    );
    let bad = cmd(&["orders", "list", "--status", "done"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("status must be one of"));

    let out = cmd(&["orders", "show", "web-10042"]);
    assert!(out.status.success());
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["status"], "placed");
    assert_eq!(shown["lines"][0]["name"], "Oolong tea 500ml");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains(placed.code.as_str()) && !text.contains(&placed.qr),
        "no token or code in the order's view"
    );
    let missing = cmd(&["orders", "show", "web-404"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("unknown order web-404"));

    let out = cmd(&["orders", "key"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{} {}", key.key_id, key.public_key)
    );

    let first = cmd(&["webhook", "secret"]);
    assert!(first.status.success());
    let secret = String::from_utf8(first.stdout).unwrap();
    assert_eq!(secret.trim().len(), 64);
    assert_eq!(cmd(&["webhook", "secret"]).stdout, secret.as_bytes());

    // Neither the fallback code nor the QR token is stored in clear.
    let raw = std::fs::read(dir.path().join("hub.db")).unwrap();
    let wal = std::fs::read(dir.path().join("hub.db-wal")).unwrap_or_default();
    for needle in [placed.code.as_str().as_bytes(), placed.qr.as_bytes()] {
        if needle.iter().all(u8::is_ascii_digit) {
            // An all-digit code could turn up in any number stored; nothing to learn from it.
            continue;
        }
        for bytes in [&raw, &wal] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        }
    }
}

#[test]
fn serve_refuses_a_weak_webhook_secret() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("hub.db").display());
    let out = Command::new(env!("CARGO_BIN_EXE_aisle-hub"))
        .args(["serve", "--listen", "127.0.0.1:0", "--db", &db])
        .env("AISLE_HQ_TOKEN", "cli-test-token-0123456789")
        .env("AISLE_WEBHOOK_SECRET", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("AISLE_WEBHOOK_SECRET must be 16 to 512"),
        "{err}"
    );
}
