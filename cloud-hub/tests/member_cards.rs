//! Loyalty member cards: `POST /v1/members/{member}/card` and `aisle-hub member card`, on SQLite
//! and on PostgreSQL (a throw-away database from `TempPostgres`). A card is judged the way a
//! lane judges it: `MemberClaims::verify` against the public key the store's changefeed hands
//! its gateway.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;

use aisle_hub::api::members::CardIssued;
use aisle_hub::security::{Actor, NewApiToken, Role};
use aisle_hub::storage::{self, HubStorage, NewStore};
use aisle_hub::testsupport::TempPostgres;
use aisle_hub::timefmt::format_rfc3339;
use aisle_hub::{HqToken, HubHandle, HubServer};
use aisle_protocol::member::{MemberClaims, MemberError};
use aisle_protocol::pickup::PickupKey;
use aisle_protocol::sync::{ChangeBody, ChangePage, ErrorBody, PROTOCOL_HEADER};
use aisle_protocol::{Currency, StoreId, UtcMillis};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const HQ: &str = "hq-bootstrap-token-0123456789";
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

#[derive(Clone, Copy, Debug)]
enum Db {
    Sqlite,
    Postgres,
}

/// Runs a test on both backends as `<name>::sqlite` and `<name>::postgres`.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Db::Postgres).await
            }
        }
    };
}

fn sid(s: &str) -> StoreId {
    StoreId::parse(s).unwrap()
}

/// A database with stores S001 and S002 (and no pickup key yet).
struct TestDb {
    url: String,
    storage: Arc<dyn HubStorage>,
    pg: Option<TempPostgres>,
    _dir: Option<tempfile::TempDir>,
}

async fn test_db(db: Db) -> TestDb {
    let (url, dir, pg) = match db {
        Db::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("hub.db").display());
            (url, Some(dir), None)
        }
        Db::Postgres => {
            let pg = TempPostgres::create().await.expect("PostgreSQL for tests");
            (pg.url().to_owned(), None, Some(pg))
        }
    };
    let storage = storage::open(&url).await.unwrap();
    for id in ["S001", "S002"] {
        let store = NewStore::new(sid(id), id, Currency::parse("CNY").unwrap()).unwrap();
        storage.create_store(&store).await.unwrap();
    }
    TestDb {
        url,
        storage,
        pg,
        _dir: dir,
    }
}

impl TestDb {
    /// The pickup keys `store`'s changefeed carries, as its gateway receives them.
    async fn keys_sent_to(&self, store: &str) -> Vec<PickupKey> {
        let page = self
            .storage
            .changes_after(&sid(store), 0, 1_000)
            .await
            .unwrap();
        pickup_keys(&page)
    }

    async fn token(&self, name: &str, role: Role) -> String {
        let t = NewApiToken::generate();
        self.storage
            .create_api_token(&t, name, role, &Actor::cli())
            .await
            .unwrap();
        t.secret().to_owned()
    }

    async fn card_audits(&self) -> Vec<aisle_hub::security::AuditEntry> {
        self.storage
            .audit_entries(1, 1_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "member_card_issued")
            .collect()
    }

    async fn cleanup(self) {
        drop(self.storage);
        if let Some(pg) = self.pg {
            pg.cleanup().await.unwrap();
        }
    }
}

fn pickup_keys(page: &ChangePage) -> Vec<PickupKey> {
    page.changes
        .iter()
        .filter_map(|c| match &c.body {
            ChangeBody::PickupKey(k) => Some(k.clone()),
            _ => None,
        })
        .collect()
}

/// Verifies `token` as a lane holding `keys` would at `now`.
fn verify(token: &str, keys: &[PickupKey], now: UtcMillis) -> Result<MemberClaims, MemberError> {
    MemberClaims::verify(token, now, |id| {
        keys.iter()
            .find(|k| k.key_id == id)
            .and_then(PickupKey::verifying_key)
    })
}

struct Hub {
    handle: HubHandle,
    http: reqwest::Client,
    base: String,
    /// Bearer credential of a gateway of S001.
    gw: String,
}

async fn start(db: &TestDb) -> Hub {
    let gw = db.storage.create_gateway(&sid("S001")).await.unwrap();
    let handle = HubServer::new(db.storage.clone(), HqToken::new(HQ).unwrap())
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Hub {
        base: handle.base_url(),
        handle,
        http: reqwest::Client::new(),
        gw: gw.to_string(),
    }
}

impl Hub {
    async fn card(&self, member: &str, body: Value, token: Option<&str>) -> reqwest::Response {
        let r = self
            .http
            .request(
                Method::POST,
                format!("{}/v1/members/{member}/card", self.base),
            )
            .json(&body);
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
        .send()
        .await
        .unwrap()
    }

    /// S001's changefeed as its gateway reads it over the sync API.
    async fn gateway_changes(&self) -> ChangePage {
        let res = self
            .http
            .get(format!("{}/v1/sync/changes?after=0", self.base))
            .bearer_auth(&self.gw)
            .header(PROTOCOL_HEADER, "1")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }
}

async fn refusal(res: reqwest::Response) -> (StatusCode, String) {
    let status = res.status();
    let body: ErrorBody = res.json().await.unwrap();
    (status, body.message)
}

async fn api_issues_cards_that_verify_with_the_gateways_key(db: Db) {
    let db = test_db(db).await;
    let hub = start(&db).await;
    let orders = db.token("loyalty", Role::Orders).await;
    let admin = db.token("ops", Role::Admin).await;
    assert!(db.storage.pickup_key().await.unwrap().is_none());

    let before = UtcMillis::now();
    let res = hub
        .card(
            "M-1001",
            json!({"discount_bp": 500, "days": 365}),
            Some(&orders),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let card: CardIssued = res.json().await.unwrap();
    let after = UtcMillis::now();
    assert_eq!(card.member, "M-1001");

    // The first card generated the key and sent it to every store, like a first order would.
    let keys = pickup_keys(&hub.gateway_changes().await);
    assert_eq!(keys.len(), 1);
    assert_eq!(db.keys_sent_to("S002").await, keys);
    assert_eq!(
        db.storage.pickup_key().await.unwrap().as_ref(),
        keys.first()
    );

    let claims = verify(&card.token, &keys, after).unwrap();
    assert_eq!(claims.member, "M-1001");
    assert_eq!(claims.discount_bp, 500);
    assert_eq!(claims.key_id, keys[0].key_id);
    assert!(before <= claims.issued_at && claims.issued_at <= after);
    assert_eq!(claims.expires_at.0 - claims.issued_at.0, 365 * DAY_MS);
    assert_eq!(card.expires_at, format_rfc3339(claims.expires_at));
    assert_eq!(
        verify(&card.token, &keys, claims.expires_at),
        Err(MemberError::Expired)
    );

    // An admin may too; days default to 365. The key is reused, never sent twice.
    let res = hub
        .card("M-2", json!({"discount_bp": 0}), Some(&admin))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let card2: CardIssued = res.json().await.unwrap();
    let claims2 = verify(&card2.token, &keys, UtcMillis::now()).unwrap();
    assert_eq!(claims2.expires_at.0 - claims2.issued_at.0, 365 * DAY_MS);
    assert_eq!(pickup_keys(&hub.gateway_changes().await), keys);
    assert_eq!(db.keys_sent_to("S002").await, keys);

    // Audited as the caller's, subject the member number, and the token is nowhere in it.
    let audits = db.card_audits().await;
    assert_eq!(audits.len(), 2);
    assert_eq!(audits[0].subject, "M-1001");
    assert_eq!(audits[0].actor, "token:loyalty(orders)");
    assert_eq!(audits[1].subject, "M-2");
    assert_eq!(audits[1].actor, "token:ops(admin)");
    let detail: Value = serde_json::from_str(&audits[0].detail).unwrap();
    assert_eq!(detail["discount_bp"], 500);
    assert_eq!(detail["expires_at"], claims.expires_at.0);
    let log = serde_json::to_string(&db.storage.audit_entries(1, 1_000).await.unwrap()).unwrap();
    for token in [&card.token, &card2.token] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "the audit log holds a token");
    }
    assert!(db.storage.verify_audit().await.unwrap().broken.is_none());

    hub.handle.shutdown().await.unwrap();
    db.cleanup().await;
}
both!(api_issues_cards_that_verify_with_the_gateways_key);

async fn api_refuses_callers_without_the_orders_role_and_bad_inputs(db: Db) {
    let db = test_db(db).await;
    let hub = start(&db).await;
    let orders = db.token("loyalty", Role::Orders).await;
    let pricing = db.token("pricing-tool", Role::Pricing).await;
    let good = json!({"discount_bp": 500, "days": 365});

    let (status, msg) = refusal(hub.card("M-1001", good.clone(), None).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{msg}");
    let (status, msg) = refusal(
        hub.card("M-1001", good.clone(), Some("aisle_hq_nope"))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{msg}");
    let (status, msg) = refusal(hub.card("M-1001", good.clone(), Some(&pricing)).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(msg.contains("orders role"), "{msg}");
    let (status, msg) = refusal(hub.card("M-1001", good.clone(), Some(&hub.gw)).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{msg}");

    for (member, body, says) in [
        ("M%201001", good.clone(), "member number"),
        (&"M".repeat(33), good.clone(), "member number"),
        ("M-1001", json!({"discount_bp": 5001}), "at most 50 %"),
        ("M-1001", json!({"discount_bp": -1}), "0 to 5000"),
        (
            "M-1001",
            json!({"discount_bp": 500, "days": 0}),
            "1 to 3650 days",
        ),
        (
            "M-1001",
            json!({"discount_bp": 500, "days": 3651}),
            "1 to 3650 days",
        ),
    ] {
        let (status, msg) = refusal(hub.card(member, body.clone(), Some(&orders)).await).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{member} {body}: {msg}"
        );
        assert!(msg.contains(says), "{member} {body}: {msg}");
    }
    let (status, msg) = refusal(hub.card("M-1001", json!({"days": 5}), Some(&orders)).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(msg.contains("discount_bp"), "{msg}");
    let (status, _) = refusal(
        hub.card("M-1001", json!({"discount_bp": 1, "pin": 1}), Some(&orders))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Nothing was signed: no key was generated, no card audited.
    assert!(db.storage.pickup_key().await.unwrap().is_none());
    assert!(db.card_audits().await.is_empty());

    hub.handle.shutdown().await.unwrap();
    db.cleanup().await;
}
both!(api_refuses_callers_without_the_orders_role_and_bad_inputs);

fn hub_cmd(args: &[&str], db: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aisle-hub"))
        .args(args)
        .args(["--db", db])
        .env_remove("AISLE_HQ_TOKEN")
        .env_remove("AISLE_HUB_DB")
        .output()
        .unwrap()
}

async fn cli_prints_a_card_that_verifies_and_refuses_bad_inputs(db: Db) {
    let db = test_db(db).await;
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("card.png");
    let png_arg = png.to_str().unwrap();

    let before = UtcMillis::now();
    let out = hub_cmd(
        &[
            "member",
            "card",
            "--member",
            "M-1001",
            "--discount-bp",
            "500",
            "--days",
            "30",
            "--qr",
            png_arg,
        ],
        &db.url,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let token = stdout.trim();
    assert!(!stderr.contains(token), "the token went to the log stream");

    let keys = db.keys_sent_to("S001").await;
    assert_eq!(keys.len(), 1);
    assert_eq!(db.keys_sent_to("S002").await, keys);
    let claims = verify(token, &keys, UtcMillis::now()).unwrap();
    assert_eq!(
        (claims.member.as_str(), claims.discount_bp),
        ("M-1001", 500)
    );
    assert!(claims.issued_at >= before);
    assert_eq!(claims.expires_at.0 - claims.issued_at.0, 30 * DAY_MS);
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
    let audits = db.card_audits().await;
    assert_eq!(audits.len(), 1);
    assert_eq!(
        (audits[0].actor.as_str(), audits[0].subject.as_str()),
        ("cli", "M-1001")
    );

    // Without --days the card is valid for 365 days, signed with the same key.
    let out = hub_cmd(
        &["member", "card", "--member", "M-7", "--discount-bp", "5000"],
        &db.url,
    );
    assert!(out.status.success());
    let claims = verify(
        String::from_utf8(out.stdout).unwrap().trim(),
        &keys,
        UtcMillis::now(),
    )
    .unwrap();
    assert_eq!(claims.expires_at.0 - claims.issued_at.0, 365 * DAY_MS);
    assert_eq!(db.keys_sent_to("S001").await, keys);

    let refused = dir.path().join("refused.png");
    for (args, says) in [
        (
            vec!["--member", "M 1001", "--discount-bp", "500"],
            "member number",
        ),
        (
            vec!["--member", "", "--discount-bp", "500"],
            "member number",
        ),
        (
            vec!["--member", "M-1", "--discount-bp", "5001"],
            "at most 50 %",
        ),
        (vec!["--member", "M-1", "--discount-bp", "-5"], "0 to 5000"),
        (
            vec!["--member", "M-1", "--discount-bp", "5", "--days", "0"],
            "1 to 3650 days",
        ),
        (
            vec!["--member", "M-1", "--discount-bp", "5", "--days", "3651"],
            "1 to 3650 days",
        ),
    ] {
        let mut all = vec!["member", "card"];
        all.extend(&args);
        all.extend(["--qr", refused.to_str().unwrap()]);
        let out = hub_cmd(&all, &db.url);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert!(!refused.exists());
    assert_eq!(db.card_audits().await.len(), 2);

    db.cleanup().await;
}
both!(cli_prints_a_card_that_verifies_and_refuses_bad_inputs);
