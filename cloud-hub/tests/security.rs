//! The hub's security matrix: HQ token roles, enrolment, signed gateway requests, the audit
//! log, HTTPS, and secrets kept out of the logs. Storage-backed tests run on SQLite and on
//! PostgreSQL (a throw-away database from `TempPostgres`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aisle_hub::security::{Actor, NewApiToken, NewEnrolment, Role};
use aisle_hub::storage::{self, HubStorage, NewStore};
use aisle_hub::testsupport::TempPostgres;
use aisle_hub::{HqToken, HubHandle, HubServer};
use aisle_protocol::auth::{self, EnrolResponse, public_key_hex, sign_request};
use aisle_protocol::sync::{ErrorBody, PROTOCOL_HEADER};
use aisle_protocol::{Currency, GatewayId, StoreId, UtcMillis};
use ed25519_dalek::SigningKey;
use rand::RngCore;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const HQ: &str = "hq-bootstrap-token-0123456789";
const G1: &str = "9501101531000";

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

struct Env {
    handle: HubHandle,
    http: reqwest::Client,
    base: String,
    /// Bearer credential of S001's `gateway add` gateway.
    gw: String,
    db_url: String,
    pg: Option<TempPostgres>,
    _dir: Option<tempfile::TempDir>,
}

async fn env(db: Db) -> Env {
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
    let gw = storage
        .create_gateway(&sid("S001"))
        .await
        .unwrap()
        .to_string();
    let handle = HubServer::new(storage, HqToken::new(HQ).unwrap())
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Env {
        base: handle.base_url(),
        handle,
        http: reqwest::Client::new(),
        gw,
        db_url: url,
        pg,
        _dir: dir,
    }
}

impl Env {
    fn storage(&self) -> Arc<dyn HubStorage> {
        self.handle.storage()
    }

    fn req(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn token(&self, name: &str, role: Role) -> (String, String) {
        let t = NewApiToken::generate();
        self.storage()
            .create_api_token(&t, name, role, &Actor::cli())
            .await
            .unwrap();
        (t.token_id.clone(), t.secret().to_owned())
    }

    async fn batch(&self, token: Option<&str>) -> reqwest::Response {
        self.req(Method::POST, "/v1/price-batches", token)
            .json(&json!({"stores": "all", "prices": [
                {"gtin": G1, "price": "3.50", "currency": "CNY", "name": "Oolong tea 500ml"}]}))
            .send()
            .await
            .unwrap()
    }

    async fn enrol(&self, code: &str, key: &str, name: &str) -> reqwest::Response {
        self.req(Method::POST, "/v1/enrol", None)
            .json(&json!({"code": code, "public_key": key, "name": name}))
            .send()
            .await
            .unwrap()
    }

    async fn enrolment(&self, store: &str, expires_at: UtcMillis) -> String {
        let e = NewEnrolment::generate(&sid(store), expires_at);
        self.storage()
            .create_enrolment(&e, &Actor::cli())
            .await
            .unwrap();
        e.code.display()
    }

    /// Enrols a fresh key for `store`; returns the gateway id and key.
    async fn enrolled(&self, store: &str) -> (GatewayId, SigningKey) {
        let key = signing_key();
        let code = self.enrolment(store, later()).await;
        let res = self
            .enrol(
                &code,
                &public_key_hex(&key.verifying_key()),
                "back office pi",
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: EnrolResponse = res.json().await.unwrap();
        (body.gateway_id, key)
    }

    /// A request signed as `gateway` at `at` with `nonce` over `signed_body`, sending `body`.
    #[allow(clippy::too_many_arguments)]
    fn signed(
        &self,
        method: Method,
        path: &str,
        gateway: &GatewayId,
        key: &SigningKey,
        at: UtcMillis,
        nonce: &str,
        signed_body: &[u8],
        body: &[u8],
    ) -> reqwest::RequestBuilder {
        let h = sign_request(key, gateway, method.as_str(), path, at, nonce, signed_body).unwrap();
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(PROTOCOL_HEADER, "1");
        for (name, value) in h.pairs() {
            r = r.header(name, value);
        }
        if !body.is_empty() {
            r = r
                .header("content-type", "application/json")
                .body(body.to_vec());
        }
        r
    }

    async fn audit_actions(&self) -> Vec<(String, String, String, Value)> {
        self.storage()
            .audit_entries(1, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| {
                (
                    e.action,
                    e.actor,
                    e.subject,
                    serde_json::from_str(&e.detail).unwrap(),
                )
            })
            .collect()
    }

    async fn finish(self) {
        self.handle.shutdown().await.unwrap();
        if let Some(pg) = self.pg {
            pg.cleanup().await.unwrap();
        }
    }
}

fn sid(s: &str) -> StoreId {
    StoreId::parse(s).unwrap()
}

fn later() -> UtcMillis {
    UtcMillis::now().saturating_add_ms(3_600_000)
}

fn signing_key() -> SigningKey {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    SigningKey::from_bytes(&seed)
}

fn nonce() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

async fn error_of(res: reqwest::Response) -> (StatusCode, ErrorBody) {
    let status = res.status();
    let text = res.text().await.unwrap();
    let body: ErrorBody =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {text}"));
    (status, body)
}

// ---- HQ tokens and roles ----

async fn roles(db: Db) {
    let env = env(db).await;
    let (_, pricing) = env.token("pricing-tool", Role::Pricing).await;
    let (_, orders) = env.token("oms", Role::Orders).await;
    let (admin_id, admin) = env.token("ops", Role::Admin).await;

    // No credential, or an unknown one: 401 everywhere.
    for (method, path) in [
        (Method::POST, "/v1/price-batches"),
        (Method::GET, "/v1/orders"),
        (Method::GET, "/v1/audit"),
        (Method::GET, "/v1/stores/S001/sales"),
        (Method::GET, "/v1/gateways"),
    ] {
        for token in [None, Some("aisle_hq_not-a-real-token"), Some("nonsense")] {
            let (status, err) =
                error_of(env.req(method.clone(), path, token).send().await.unwrap()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {token:?}"
            );
            assert_eq!(err.error, "unauthorized");
        }
    }

    // Pricing: batches yes, orders and admin no, reports yes.
    assert_eq!(
        env.batch(Some(&pricing)).await.status(),
        StatusCode::CREATED
    );
    let (status, err) = error_of(
        env.req(Method::GET, "/v1/orders", Some(&pricing))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        err.message.contains("needs the orders role"),
        "{}",
        err.message
    );
    assert!(err.message.contains("pricing-tool"), "{}", err.message);
    for (method, path) in [
        (Method::GET, "/v1/audit"),
        (Method::GET, "/v1/gateways"),
        (Method::POST, "/v1/stores/S001/stock-adjustments"),
        (Method::POST, "/v1/enrolments"),
    ] {
        let (status, err) = error_of(
            env.req(method.clone(), path, Some(&pricing))
                .json(&json!({"gtin": G1, "delta": 5, "reason": "count", "store": "S001"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
        assert!(
            err.message.contains("needs the admin role"),
            "{}",
            err.message
        );
    }
    for token in [&pricing, &orders, &admin] {
        for path in ["/v1/stores/S001/sales", "/v1/stores/S001/stock"] {
            let res = env
                .req(Method::GET, path, Some(token))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{path}");
        }
    }

    // Orders: orders yes, batches and admin no.
    let (status, err) = error_of(env.batch(Some(&orders)).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        err.message.contains("needs the pricing role"),
        "{}",
        err.message
    );
    let res = env
        .req(Method::GET, "/v1/orders", Some(&orders))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (status, _) = error_of(
        env.req(Method::GET, "/v1/audit", Some(&orders))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Admin and the bootstrap token may do everything.
    for token in [&admin, HQ] {
        assert_eq!(env.batch(Some(token)).await.status(), StatusCode::CREATED);
        for path in ["/v1/orders", "/v1/audit", "/v1/gateways"] {
            let res = env
                .req(Method::GET, path, Some(token))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{path}");
        }
    }

    // A gateway credential is no HQ token.
    let (status, _) = error_of(
        env.req(Method::GET, "/v1/orders", Some(&env.gw))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A revoked token is refused on its next request.
    env.storage()
        .revoke_api_token(&admin_id, &Actor::cli())
        .await
        .unwrap();
    let (status, err) = error_of(
        env.req(Method::GET, "/v1/audit", Some(&admin))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(err.message.contains("revoked"), "{}", err.message);
    let listed = env.storage().list_api_tokens().await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(
        listed
            .iter()
            .any(|t| t.token_id == admin_id && t.revoked_at.is_some())
    );

    // Audited: who created the batches, the tokens and the revocation.
    let audit = env.audit_actions().await;
    let batches: Vec<&String> = audit
        .iter()
        .filter(|a| a.0 == "price_batch.created")
        .map(|a| &a.1)
        .collect();
    assert_eq!(
        batches,
        [
            "token:pricing-tool(pricing)",
            "token:ops(admin)",
            "token:bootstrap(admin)"
        ]
    );
    assert_eq!(audit.iter().filter(|a| a.0 == "token.created").count(), 3);
    assert!(
        audit
            .iter()
            .any(|a| a.0 == "token.revoked" && a.2 == admin_id && a.1 == "cli")
    );
    // The log never holds a token.
    for a in &audit {
        for secret in [&pricing, &orders, &admin] {
            assert!(!a.3.to_string().contains(secret.as_str()));
        }
    }
    env.finish().await;
}
both!(roles);

// ---- enrolment ----

async fn enrolment(db: Db) {
    let env = env(db).await;
    let key = signing_key();
    let key_hex = public_key_hex(&key.verifying_key());

    // HQ makes a code over the API too (admin); it is shown XXXX-XXXX-XXXX.
    let res = env
        .req(Method::POST, "/v1/enrolments", Some(HQ))
        .json(&json!({"store": "S001", "ttl": "2h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    let api_code = created["code"].as_str().unwrap().to_owned();
    assert_eq!(api_code.len(), 14);
    assert_eq!(api_code.matches('-').count(), 2);
    assert!(created["hub_tls_fingerprint"].is_null());
    assert!(
        created["uri"]
            .as_str()
            .unwrap()
            .starts_with("aisle-enrol:?code=")
    );

    // A good code: 201, a gateway bound to its store, no TLS over plain HTTP.
    let code = env.enrolment("S001", later()).await;
    let res = env
        .enrol(&code.to_lowercase(), &key_hex, "back office pi")
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    let gateway_id = body["gateway_id"].as_str().unwrap().to_owned();
    assert!(gateway_id.starts_with("gw-S001-"), "{gateway_id}");
    assert_eq!(body["store"], "S001");
    assert!(body["hub_tls_fingerprint"].is_null());
    let gw = GatewayId::parse(&gateway_id).unwrap();
    let stored = env.storage().gateway_key(&gw).await.unwrap().unwrap();
    assert_eq!(stored.public_key, key_hex);
    assert_eq!(stored.store, sid("S001"));

    // The same code again: gone.
    let (status, err) = error_of(env.enrol(&code, &key_hex, "again").await).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(err.message.contains("already used"), "{}", err.message);

    // An expired code: gone, saying so.
    let expired = env
        .enrolment("S001", UtcMillis::now().saturating_add_ms(-1))
        .await;
    let (status, err) = error_of(env.enrol(&expired, &key_hex, "late").await).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(err.message.contains("expired"), "{}", err.message);

    // A well-formed code the hub never issued.
    let (status, err) = error_of(env.enrol("ABCD-EFGH-JKMN", &key_hex, "guess").await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(err.message.contains("not valid"), "{}", err.message);

    // Malformed code, malformed key: 400, and the code given with the bad key still works.
    let (status, err) = error_of(env.enrol("not a code!", &key_hex, "x").await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err.message.contains("enrolment code"), "{}", err.message);
    let (status, err) = error_of(env.enrol(&api_code, "abcd", "x").await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err.message.contains("public key"), "{}", err.message);
    let res = env.enrol(&api_code, &key_hex, "second pi").await;
    assert_eq!(res.status(), StatusCode::CREATED);

    // Every attempt is audited, with its reason; no code is in the log.
    let audit = env.audit_actions().await;
    let reasons: Vec<&str> = audit
        .iter()
        .filter(|a| a.0 == "enrolment.refused")
        .map(|a| a.3["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "code_used",
            "code_expired",
            "wrong_code",
            "malformed_code",
            "malformed_key"
        ]
    );
    assert!(
        audit
            .iter()
            .filter(|a| a.0 == "enrolment.refused")
            .all(|a| a.1 == "client:127.0.0.1" && a.2 == "127.0.0.1")
    );
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.0 == "enrolment.succeeded")
            .count(),
        2
    );
    assert!(
        audit
            .iter()
            .any(|a| a.0 == "enrolment.succeeded" && a.2 == gateway_id)
    );
    assert_eq!(
        audit.iter().filter(|a| a.0 == "enrolment.created").count(),
        3
    );
    let text = format!("{audit:?}");
    for c in [&code, &api_code, &expired] {
        assert!(!text.contains(c.as_str()) && !text.contains(&c.replace('-', "")));
    }

    // Brute force: five refusals so far; from the tenth on, 429, even for a good code.
    let good = env.enrolment("S002", later()).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let guess = format!("ZZZZ-ZZZZ-ZZ{:02}", i);
        statuses.push(env.enrol(&guess, &key_hex, "guess").await.status());
    }
    assert_eq!(statuses[..5], [StatusCode::UNAUTHORIZED; 5]);
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
    let (status, err) = error_of(env.enrol(&good, &key_hex, "real").await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(err.error, "rate_limited");
    env.finish().await;
}
both!(enrolment);

// ---- signed gateway requests ----

async fn signed_requests(db: Db) {
    let env = env(db).await;
    let (gw, key) = env.enrolled("S001").await;
    let now = UtcMillis::now();
    let changes = "/v1/sync/changes?after=0";

    // A signed request works.
    let n = nonce();
    let res = env
        .signed(Method::GET, changes, &gw, &key, now, &n, b"", b"")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );

    // The same request again (same nonce): replayed.
    let (status, err) = error_of(
        env.signed(Method::GET, changes, &gw, &key, now, &n, b"", b"")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(err.error, "replayed");
    assert!(err.message.contains("replayed"), "{}", err.message);

    // A replayed long-poll is refused at once, not after its wait: the read runs beside the
    // nonce check and is dropped when the nonce was seen (the client gives up long before the
    // 25 s wait would end, so a held answer fails here).
    let poll = "/v1/sync/changes?after=999999&wait_ms=25000";
    let n = nonce();
    let first = env.signed(Method::GET, poll, &gw, &key, now, &n, b"", b"");
    let replay = env
        .signed(Method::GET, poll, &gw, &key, now, &n, b"", b"")
        .timeout(Duration::from_secs(10));
    let first = tokio::spawn(first.timeout(Duration::from_secs(60)).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, err) =
        error_of(replay.send().await.expect("answered before the wait ended")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(err.error, "replayed");
    first.abort();

    // An upload and its replay: the upload is stored once, the replay refused.
    let upload = |seq: u64| {
        serde_json::to_vec(&json!({"events": [{
            "seq": seq,
            "id": format!("0190a0b000007000800{seq:013x}"),
            "hlc": {"wall_ms": 1_700_000_000_000u64, "counter": 0},
            "at": 1_795_334_400_000i64,
            "body": {"type": "sale_committed", "sale_id": format!("lane1-{seq:04}"),
                     "lines": [{"gtin": "09501101531000", "qty": 1,
                                "unit_price": {"minor": 250, "currency": "CNY"},
                                "price_version": 1,
                                "line_total": {"minor": 250, "currency": "CNY"}}],
                     "total": {"minor": 250, "currency": "CNY"},
                     "payment": {"method": "cash"}}
        }]}))
        .unwrap()
    };
    let events = aisle_protocol::sync::path::EVENTS;
    let body = upload(1);
    let n = nonce();
    let res = env
        .signed(Method::POST, events, &gw, &key, now, &n, &body, &body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
    let (status, err) = error_of(
        env.signed(Method::POST, events, &gw, &key, now, &n, &body, &body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(err.error, "replayed");
    let sales: Value = env
        .req(Method::GET, "/v1/stores/S001/sales?since=0", Some(HQ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sales["sales"].as_array().map(Vec::len), Some(1), "{sales}");

    // A stale timestamp (6 minutes old), and one from the future: the clock is off.
    for skew in [-6 * 60_000, 6 * 60_000] {
        let (status, err) = error_of(
            env.signed(
                Method::GET,
                changes,
                &gw,
                &key,
                now.saturating_add_ms(skew),
                &nonce(),
                b"",
                b"",
            )
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(err.error, "clock_skew");
        assert!(err.message.contains("clock is off"), "{}", err.message);
    }

    // An upload: the exact signed bytes pass; a signature over other bytes does not.
    let body = br#"{"events":[]}"#;
    let res = env
        .signed(
            Method::POST,
            "/v1/sync/events",
            &gw,
            &key,
            UtcMillis::now(),
            &nonce(),
            body,
            body,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
    let (status, err) = error_of(
        env.signed(
            Method::POST,
            "/v1/sync/events",
            &gw,
            &key,
            UtcMillis::now(),
            &nonce(),
            br#"{"events":[ ]}"#,
            body,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(err.message.contains("signature"), "{}", err.message);

    // Incomplete or malformed signed headers: 401 naming what is wrong.
    let h = sign_request(&key, &gw, "GET", changes, UtcMillis::now(), &nonce(), b"").unwrap();
    let (status, err) = error_of(
        env.http
            .get(format!("{}{changes}", env.base))
            .header(PROTOCOL_HEADER, "1")
            .header(auth::SIGNATURE_HEADER, &h.signature)
            .header(auth::GATEWAY_HEADER, &h.gateway)
            .header(auth::TIMESTAMP_HEADER, "yesterday")
            .header(auth::NONCE_HEADER, &h.nonce)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        err.message.contains(auth::TIMESTAMP_HEADER),
        "{}",
        err.message
    );
    let (status, err) = error_of(
        env.http
            .get(format!("{}{changes}", env.base))
            .header(PROTOCOL_HEADER, "1")
            .header(auth::SIGNATURE_HEADER, &h.signature)
            .header(auth::GATEWAY_HEADER, &h.gateway)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(err.message.contains("missing"), "{}", err.message);
    // A gateway id that never enrolled.
    let stranger = GatewayId::parse("gw-S001-ffffffff").unwrap();
    let (status, err) = error_of(
        env.signed(
            Method::GET,
            changes,
            &stranger,
            &key,
            UtcMillis::now(),
            &nonce(),
            b"",
            b"",
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(err.message.contains("not enrolled"), "{}", err.message);

    // Signed with another key: refused.
    let (status, _) = error_of(
        env.signed(
            Method::GET,
            changes,
            &gw,
            &signing_key(),
            UtcMillis::now(),
            &nonce(),
            b"",
            b"",
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Its own store only.
    for path in [
        "/v1/sync/changes?after=0&store=S002",
        "/v1/stores/S002/sales",
    ] {
        let (status, err) = error_of(
            env.signed(
                Method::GET,
                path,
                &gw,
                &key,
                UtcMillis::now(),
                &nonce(),
                b"",
                b"",
            )
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(err.message.contains("store S002"), "{}", err.message);
    }
    for path in [
        "/v1/sync/changes?after=0&store=S001",
        "/v1/stores/S001/sales",
    ] {
        let res = env
            .signed(
                Method::GET,
                path,
                &gw,
                &key,
                UtcMillis::now(),
                &nonce(),
                b"",
                b"",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    // Signed gateways are no HQ.
    let (status, _) = error_of(
        env.signed(
            Method::GET,
            "/v1/orders",
            &gw,
            &key,
            UtcMillis::now(),
            &nonce(),
            b"",
            b"",
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Revoked (by an admin over the API): refused on the very next request.
    let res = env
        .req(Method::POST, &format!("/v1/gateways/{gw}/revoke"), Some(HQ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (status, err) = error_of(
        env.signed(
            Method::GET,
            changes,
            &gw,
            &key,
            UtcMillis::now(),
            &nonce(),
            b"",
            b"",
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(err.message.contains("revoked"), "{}", err.message);
    // A revoked gateway's upload (which runs beside its nonce check) stores nothing.
    let body = upload(2);
    let (status, err) = error_of(
        env.signed(
            Method::POST,
            events,
            &gw,
            &key,
            UtcMillis::now(),
            &nonce(),
            &body,
            &body,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(err.message.contains("revoked"), "{}", err.message);
    let sales: Value = env
        .req(Method::GET, "/v1/stores/S001/sales?since=0", Some(HQ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sales["sales"].as_array().map(Vec::len), Some(1), "{sales}");

    // Today's bearer credentials keep working beside keys.
    let res = env
        .req(Method::GET, changes, Some(&env.gw))
        .header(PROTOCOL_HEADER, "1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let listed: Value = env
        .req(Method::GET, "/v1/gateways", Some(HQ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let auths: BTreeSet<(&str, bool)> = listed["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["auth"].as_str().unwrap(), g["revoked_at"].is_null()))
        .collect();
    assert_eq!(auths, BTreeSet::from([("bearer", true), ("key", false)]));
    let audit = env.audit_actions().await;
    assert!(audit.iter().any(|a| a.0 == "gateway.revoked"
        && a.1 == "token:bootstrap(admin)"
        && a.2 == gw.as_str()));
    env.finish().await;
}
both!(signed_requests);

// ---- the audit log ----

async fn audit_log(db: Db) {
    let env = env(db).await;
    let s = env.storage();
    // Every audited action once.
    assert_eq!(env.batch(Some(HQ)).await.status(), StatusCode::CREATED);
    let res = env
        .req(Method::POST, "/v1/stores/S001/stock-adjustments", Some(HQ))
        .json(&json!({"gtin": G1, "delta": 10, "reason": "goods received"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let pickup_by =
        aisle_hub::timefmt::format_rfc3339(UtcMillis::now().saturating_add_ms(86_400_000));
    let res = env
        .req(Method::POST, "/v1/orders", Some(HQ))
        .json(&json!({"order_id": "web-1", "store": "S001",
            "lines": [{"gtin": G1, "qty": 1}], "pickup_by": pickup_by}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "{}",
        res.text().await.unwrap()
    );
    let res = env
        .req(Method::POST, "/v1/orders/web-1/cancel", Some(HQ))
        .json(&json!({"reason": "customer called"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let added = s
        .create_gateway_by(&sid("S002"), &Actor::cli())
        .await
        .unwrap();
    s.revoke_gateway_by(&added.gateway_id, &Actor::cli())
        .await
        .unwrap();
    let (token_id, _) = env.token("reporting", Role::Orders).await;
    s.revoke_api_token(&token_id, &Actor::cli()).await.unwrap();
    let code = env.enrolment("S001", later()).await;
    let res = env
        .enrol(&code, &public_key_hex(&signing_key().verifying_key()), "pi")
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        env.enrol(&code, &public_key_hex(&signing_key().verifying_key()), "pi")
            .await
            .status(),
        StatusCode::GONE
    );

    let audit = env.audit_actions().await;
    let actions: BTreeSet<&str> = audit.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(
        actions,
        BTreeSet::from([
            "gateway.added",
            "price_batch.created",
            "order.cancelled",
            "gateway.revoked",
            "token.created",
            "token.revoked",
            "enrolment.created",
            "enrolment.succeeded",
            "enrolment.refused",
        ])
    );
    let cancel = audit.iter().find(|a| a.0 == "order.cancelled").unwrap();
    assert_eq!(cancel.2, "web-1");
    assert_eq!(cancel.3["reason"], "customer called");
    assert_eq!(cancel.1, "token:bootstrap(admin)");

    // Over the API, in pages.
    let page: Value = env
        .req(Method::GET, "/v1/audit?from=2&limit=3", Some(HQ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seqs: Vec<u64> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(page["next"], 5);

    let v = s.verify_audit().await.unwrap();
    assert_eq!(v.entries, audit.len() as u64);
    assert_eq!(v.broken, None);

    // The database refuses to change or delete an entry...
    let tamper = "UPDATE audit_log SET detail = '{\"items\":999}' WHERE seq = 2";
    match db {
        Db::Sqlite => {
            let path = env.db_url.strip_prefix("sqlite://").unwrap();
            let conn = rusqlite::Connection::open(path).unwrap();
            let err = conn.execute(tamper, []).unwrap_err();
            assert!(err.to_string().contains("append-only"), "{err}");
            let err = conn.execute("DELETE FROM audit_log", []).unwrap_err();
            assert!(err.to_string().contains("append-only"), "{err}");
            // ...unless someone drops the trigger: then verify finds the altered entry.
            conn.execute_batch("DROP TRIGGER audit_log_no_update")
                .unwrap();
            assert_eq!(conn.execute(tamper, []).unwrap(), 1);
        }
        Db::Postgres => {
            let (client, conn) = tokio_postgres::connect(&env.db_url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let err = client.execute(tamper, &[]).await.unwrap_err();
            assert!(format!("{err:?}").contains("append-only"), "{err:?}");
            let err = client
                .batch_execute("TRUNCATE audit_log")
                .await
                .unwrap_err();
            assert!(format!("{err:?}").contains("append-only"), "{err:?}");
            client
                .batch_execute("DROP TRIGGER audit_log_no_change ON audit_log")
                .await
                .unwrap();
            assert_eq!(client.execute(tamper, &[]).await.unwrap(), 1);
        }
    }
    let v = s.verify_audit().await.unwrap();
    let (seq, why) = v.broken.expect("tampering found");
    assert_eq!(seq, 2);
    assert!(why.contains("altered"), "{why}");
    assert_eq!(v.entries, 1);
    // And `aisle-hub audit verify` says so and fails.
    let out = Command::new(env!("CARGO_BIN_EXE_aisle-hub"))
        .args(["audit", "verify", "--db", &env.db_url])
        .env_remove("AISLE_HUB_DB")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken at entry 2"), "{err}");
    env.finish().await;
}
both!(audit_log);

/// Two hub processes on one database agree: a request replayed to the other process is
/// refused, and a revocation made through one is seen by the other on the next request (even
/// though that one has the gateway's key cached).
async fn hub_processes_agree(db: Db) {
    let env = env(db).await;
    let other = HubServer::new(
        storage::open(&env.db_url).await.unwrap(),
        HqToken::new(HQ).unwrap(),
    )
    .start("127.0.0.1:0".parse().unwrap())
    .await
    .unwrap();
    let (gw, key) = env.enrolled("S001").await;
    let path = "/v1/sync/changes?after=0";
    let at = UtcMillis::now();
    let n = nonce();
    let send = |base: String, n: String| {
        let h = sign_request(&key, &gw, "GET", path, at, &n, b"").unwrap();
        let mut r = env
            .http
            .get(format!("{base}{path}"))
            .header(PROTOCOL_HEADER, "1");
        for (k, v) in h.pairs() {
            r = r.header(k, v);
        }
        r.send()
    };
    assert_eq!(
        send(env.base.clone(), n.clone()).await.unwrap().status(),
        StatusCode::OK
    );
    let (status, err) = error_of(send(other.base_url(), n).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(err.error, "replayed");
    // The first process has the key cached now; revoke through the other.
    assert_eq!(
        send(env.base.clone(), nonce()).await.unwrap().status(),
        StatusCode::OK
    );
    let res = env
        .http
        .post(format!("{}/v1/gateways/{gw}/revoke", other.base_url()))
        .bearer_auth(HQ)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (status, err) = error_of(send(env.base.clone(), nonce()).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(err.message.contains("revoked"), "{}", err.message);
    other.shutdown().await.unwrap();
    env.finish().await;
}
both!(hub_processes_agree);

/// Audited writes from many tasks at once (several hub processes share one chain on
/// PostgreSQL): every entry lands, in one unbroken chain.
async fn audit_chain_under_concurrency(db: Db) {
    let env = env(db).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = env.storage();
        tasks.push(tokio::spawn(async move {
            let t = NewApiToken::generate();
            s.create_api_token(&t, &format!("t{i}"), Role::Orders, &Actor::cli())
                .await
                .unwrap();
            let e = NewEnrolment::generate(&sid("S002"), later());
            s.create_enrolment(&e, &Actor::cli()).await.unwrap();
        }));
    }
    for i in 0..4 {
        let base = env.base.clone();
        let http = env.http.clone();
        tasks.push(tokio::spawn(async move {
            let res = http
                .post(format!("{base}/v1/price-batches"))
                .bearer_auth(HQ)
                .json(&json!({"stores": "all", "prices": [
                    {"gtin": G1, "price": format!("3.{i}0"), "currency": "CNY", "name": "Tea"}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::CREATED);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = env.storage().verify_audit().await.unwrap();
    // The setup's gateway, 16 tokens, 16 codes, 4 batches.
    assert_eq!(v.entries, 37);
    assert_eq!(v.broken, None);
    env.finish().await;
}
both!(audit_chain_under_concurrency);

// ---- the binary: HTTPS, CLI, and logs without secrets ----

fn hub_cmd(args: &[&str], db: &str, log: &Mutex<String>) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_aisle-hub"))
        .args(args)
        .args(["--db", db])
        .env_remove("AISLE_HUB_DB")
        .env_remove("AISLE_TLS_CERT")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    log.lock().unwrap().push_str(&stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn field<'a>(stdout: &'a str, label: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no '{label}' in {stdout}"))
        .trim()
}

/// One HTTP/1.1 request over TLS, trusting only `ca`; the status, the body and the SHA-256 of
/// the certificate the server presented.
async fn https(
    addr: std::net::SocketAddr,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let presented = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        tls.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
    ));
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    // The server closes after answering (connection: close); a TLS close without
    // close_notify is not an error worth failing on here.
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body, presented)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_cli_and_no_secrets_in_logs() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("hub.db").display());
    let log = Mutex::new(String::new());

    // TLS material: keys 0600, the server fingerprint printed.
    let tls_dir = dir.path().join("tls");
    let out = hub_cmd(
        &[
            "tls",
            "init",
            "--dir",
            tls_dir.to_str().unwrap(),
            "--host",
            "localhost",
            "--host",
            "127.0.0.1",
        ],
        &db,
        &log,
    );
    let fingerprint = field(&out, "server sha256:").to_owned();
    assert_eq!(fingerprint.len(), 64);
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca-key.pem", "server-key.pem"] {
            let mode = std::fs::metadata(tls_dir.join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }
    let cert = tls_dir.join("server.pem");
    let key = tls_dir.join("server-key.pem");
    let ca = tls_dir.join("ca.pem");

    hub_cmd(
        &["store", "add", "S001", "--name", "Harbour Road"],
        &db,
        &log,
    );
    let gateway_credential = hub_cmd(&["gateway", "add", "--store", "S001"], &db, &log)
        .trim()
        .to_owned();
    let api_token = hub_cmd(
        &["token", "create", "--role", "admin", "--name", "ops"],
        &db,
        &log,
    )
    .trim()
    .to_owned();
    assert!(api_token.starts_with("aisle_hq_"), "{api_token}");
    assert!(api_token.len() >= 50);
    let pricing = hub_cmd(
        &[
            "token",
            "create",
            "--role",
            "pricing",
            "--name",
            "pricing-tool",
        ],
        &db,
        &log,
    )
    .trim()
    .to_owned();
    let listed = hub_cmd(&["token", "list"], &db, &log);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(!listed.contains(&api_token));
    let pricing_id = listed
        .lines()
        .find(|l| l.contains("pricing-tool"))
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_owned();
    hub_cmd(&["token", "revoke", &pricing_id], &db, &log);

    let qr = dir.path().join("enrol.png");
    let out = hub_cmd(
        &[
            "enrolment",
            "create",
            "--store",
            "S001",
            "--ttl",
            "1h",
            "--qr",
            qr.to_str().unwrap(),
            "--hub-url",
            "https://localhost:7400",
            "--tls-cert",
            cert.to_str().unwrap(),
        ],
        &db,
        &log,
    );
    let code = field(&out, "enrolment code:").to_owned();
    assert_eq!(field(&out, "hub TLS sha256:"), fingerprint);
    assert!(field(&out, "uri:").contains(&format!("tls={fingerprint}")));
    let png = std::fs::read(&qr).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // Serve HTTPS; the hub logs at debug level.
    let mut child = Command::new(env!("CARGO_BIN_EXE_aisle-hub"))
        .args(["serve", "--listen", "127.0.0.1:0", "--db", &db])
        .args(["--tls-cert", cert.to_str().unwrap()])
        .args(["--tls-key", key.to_str().unwrap()])
        .env("AISLE_HQ_TOKEN", HQ)
        .env("RUST_LOG", "debug")
        .env_remove("AISLE_HUB_DB")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let served_log = Arc::new(Mutex::new(String::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let reader = {
        let served_log = served_log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on https://").nth(1) {
                    let _ = addr_tx.send(rest.trim().to_owned());
                }
                let mut l = served_log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        })
    };
    let addr: std::net::SocketAddr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the hub said where it listens")
        .parse()
        .unwrap();

    let (status, body, presented) = https(addr, &ca, "GET", "/healthz", &[], b"").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(presented, fingerprint);

    let gateway_key = signing_key();
    let key_hex = public_key_hex(&gateway_key.verifying_key());
    let enrol_body =
        serde_json::to_vec(&json!({"code": code, "public_key": key_hex, "name": "pi"})).unwrap();
    let (status, body, _) = https(
        addr,
        &ca,
        "POST",
        "/v1/enrol",
        &[("content-type", "application/json")],
        &enrol_body,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let enrolled: EnrolResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(
        enrolled.hub_tls_fingerprint.as_deref(),
        Some(fingerprint.as_str())
    );
    // A wrong code is refused (and must not be logged either).
    let wrong =
        serde_json::to_vec(&json!({"code": "QQQQ-RRRR-SSSS", "public_key": key_hex, "name": "pi"}))
            .unwrap();
    let (status, _, _) = https(
        addr,
        &ca,
        "POST",
        "/v1/enrol",
        &[("content-type", "application/json")],
        &wrong,
    )
    .await;
    assert_eq!(status, 401);

    // A signed sync request over HTTPS.
    let n = nonce();
    let path = "/v1/sync/changes?after=0";
    let h = sign_request(
        &gateway_key,
        &enrolled.gateway_id,
        "GET",
        path,
        UtcMillis::now(),
        &n,
        b"",
    )
    .unwrap();
    let mut headers: Vec<(&str, &str)> = h.pairs().to_vec();
    headers.push((PROTOCOL_HEADER, "1"));
    let (status, body, _) = https(addr, &ca, "GET", path, &headers, b"").await;
    assert_eq!(status, 200, "{body}");

    let bearer_gw = format!("Bearer {gateway_credential}");
    let (status, body, _) = https(
        addr,
        &ca,
        "GET",
        path,
        &[("authorization", &bearer_gw), (PROTOCOL_HEADER, "1")],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let bearer_api = format!("Bearer {api_token}");
    let (status, body, _) = https(
        addr,
        &ca,
        "GET",
        "/v1/audit",
        &[("authorization", &bearer_api)],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let bearer_hq = format!("Bearer {HQ}");
    let (status, _, _) = https(
        addr,
        &ca,
        "GET",
        "/v1/gateways",
        &[("authorization", &bearer_hq)],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let bearer_pricing = format!("Bearer {pricing}");
    let (status, _, _) = https(
        addr,
        &ca,
        "GET",
        "/v1/stores/S001/stock",
        &[("authorization", &bearer_pricing)],
        b"",
    )
    .await;
    assert_eq!(status, 401, "a revoked token");

    // Stop the hub and read everything it logged.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    reader.join().unwrap();
    let served = served_log.lock().unwrap().clone();
    assert!(served.contains("aisle-hub listening"), "{served}");
    assert!(served.contains("gateway enrolled"), "{served}");
    let gateway_list = hub_cmd(&["gateway", "list"], &db, &log);
    assert_eq!(gateway_list.lines().count(), 2, "{gateway_list}");
    let verified = hub_cmd(&["audit", "verify"], &db, &log);
    assert!(verified.contains("intact"), "{verified}");
    let audit = hub_cmd(&["audit", "list", "--limit", "1000"], &db, &log);
    let all_logs = format!("{served}\n{}\n{audit}", log.lock().unwrap());

    let (_, gateway_secret) = gateway_credential.rsplit_once('.').unwrap();
    let private_hex = hex::encode(gateway_key.to_bytes());
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for (what, secret) in [
        ("bootstrap HQ token", HQ),
        ("API token", api_token.as_str()),
        ("revoked API token", pricing.as_str()),
        ("enrolment code", code.as_str()),
        ("enrolment code, canonical", &code.replace('-', "")),
        ("wrong enrolment code", "QQQQ-RRRR-SSSS"),
        ("gateway secret", gateway_secret),
        ("gateway private key", &private_hex),
        ("TLS key", &key_body[..40]),
    ] {
        assert!(
            !all_logs.contains(secret),
            "the {what} appears in a log line"
        );
    }
}

#[test]
fn auth_module_is_what_the_hub_verifies() {
    // The protocol helper and the hub agree on the message: a signature made with the helper
    // verifies with the helper (the hub uses the same function, tested end to end above).
    let key = signing_key();
    let gw = GatewayId::parse("gw-S001-0000abcd").unwrap();
    let at = UtcMillis(1_700_000_000_000);
    let h = sign_request(&key, &gw, "POST", "/v1/sync/events", at, &nonce(), b"{}").unwrap();
    auth::verify_request(
        &key.verifying_key(),
        "POST",
        "/v1/sync/events",
        auth::parse_timestamp(&h.timestamp).unwrap(),
        &h.nonce,
        &h.signature,
        b"{}",
    )
    .unwrap();
}
