//! Field provisioning against a real `aisle-hub` serving HTTPS with `tls init` certificates:
//! `aisle-agent enroll` (the real binary), signed sync over the pinned certificate, revocation,
//! a hub whose certificate changed, and every bad input the technician can meet, each leaving
//! no half-enrolled gateway. Secrets are checked absent from the agent's own log output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aisle_agent::Agent;
use aisle_agent::clock::{OffsetClock, SystemClock};
use aisle_agent::config::AgentConfig;
use aisle_agent::provisioning::enrol::{EnrolError, EnrolOptions, enrol};
use aisle_agent::provisioning::pin::{HubFingerprint, PinPolicy, PinVerifier, hub_http};
use aisle_hil::harness::{StoreApi, binary, free_port, gtin, wait_for};
use aisle_hub::security::tls::{self, TlsIdentity, TlsListener};
use aisle_hub::security::{Actor, NewEnrolment};
use aisle_hub::storage::{self, NewStore};
use aisle_hub::{HqToken, HubHandle, HubServer};
use aisle_protocol::{Currency, GatewayId, StoreId, UtcMillis};
use serde_json::json;

const HQ: &str = "hq-provisioning-token-0123456789";

fn sid(s: &str) -> StoreId {
    StoreId::parse(s).unwrap()
}

/// A hub serving HTTPS with a fresh private CA and certificate, on SQLite.
struct TlsHub {
    handle: HubHandle,
    fingerprint: String,
    _dir: tempfile::TempDir,
}

impl TlsHub {
    async fn start() -> TlsHub {
        let dir = tempfile::tempdir().unwrap();
        let files = tls::init(
            &dir.path().join("tls"),
            &["localhost".into(), "127.0.0.1".into()],
        )
        .unwrap();
        let identity = TlsIdentity::load(&files.server_cert, &files.server_key).unwrap();
        let url = format!("sqlite://{}", dir.path().join("hub.db").display());
        let storage = storage::open(&url).await.unwrap();
        for id in ["S001", "S002"] {
            let store = NewStore::new(sid(id), id, Currency::parse("CNY").unwrap()).unwrap();
            storage.create_store(&store).await.unwrap();
        }
        let handle = HubServer::new(storage, HqToken::new(HQ).unwrap())
            .with_tls(Some(identity))
            .start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        assert!(handle.base_url().starts_with("https://"));
        TlsHub {
            handle,
            fingerprint: files.fingerprint,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        self.handle.base_url()
    }

    /// A one-time code for `store` (as `aisle-hub enrolment create` makes), shown form.
    async fn code(&self, store: &str, expires_at: UtcMillis) -> String {
        let e = NewEnrolment::generate(&sid(store), expires_at);
        self.handle
            .storage()
            .create_enrolment(&e, &Actor::cli())
            .await
            .unwrap();
        e.code.display()
    }

    async fn fresh_code(&self, store: &str) -> String {
        self.code(store, UtcMillis::now().saturating_add_ms(3_600_000))
            .await
    }

    /// HQ's client: HTTPS pinned to the hub's certificate.
    fn hq(&self) -> reqwest::Client {
        let pin = HubFingerprint::parse(&self.fingerprint).unwrap();
        hub_http(
            Some(&PinVerifier::new(PinPolicy::Pinned(pin))),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    async fn push_price(&self, g: &str, price: &str) {
        let r = self
            .hq()
            .post(format!("{}/v1/price-batches", self.url()))
            .bearer_auth(HQ)
            .json(&json!({"stores": "all", "prices": [
                {"gtin": g, "price": price, "currency": "CNY", "name": "Oolong tea 500ml"}]}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
}

/// `aisle-agent enroll` with `args`, debug logging on, stdout and stderr captured.
fn enroll(args: &[&str]) -> Output {
    Command::new(binary("aisle-agent").unwrap())
        .arg("enroll")
        .args(args)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Files in `dir`, temporary ones included.
fn files_in(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn assert_nothing_written(dir: &Path, out: &Output) {
    assert!(!out.status.success(), "{}", text(out));
    assert_eq!(files_in(dir), BTreeSet::new(), "{}", text(out));
}

fn key_secret(data: &Path) -> String {
    let text = std::fs::read_to_string(data.join("gateway.key")).unwrap();
    text.lines()
        .find(|l| !l.starts_with('#'))
        .unwrap()
        .trim()
        .to_string()
}

/// The configuration enroll wrote, with the API moved to a free port.
fn enrolled_config(path: &Path) -> AgentConfig {
    let mut config = AgentConfig::load(path).unwrap();
    config.listen = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    config.sync.backoff_cap_ms = 300;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_gateway_syncs_signed_over_the_pinned_certificate_until_revoked() {
    let hub = TlsHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The technician's config template: its other settings survive enrolment.
    let port = free_port().unwrap();
    let config_path = dir.path().join("agent.toml");
    std::fs::write(
        &config_path,
        format!("listen = \"127.0.0.1:{port}\"\n\n[sync]\nbackoff_cap_ms = 300\n"),
    )
    .unwrap();
    let code = hub.fresh_code("S001").await;
    let out = enroll(&[
        "--hub",
        &hub.url(),
        "--code",
        &code.to_lowercase(),
        "--data",
        data.to_str().unwrap(),
        "--config",
        config_path.to_str().unwrap(),
        "--hub-fingerprint",
        &hub.fingerprint.to_uppercase(),
        "--name",
        "back office pi",
    ]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("enrolled: gateway gw-S001"), "{shown}");
    assert!(shown.contains(&format!("hub certificate pinned: {}", hub.fingerprint)));
    let mode = std::fs::metadata(data.join("gateway.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        files_in(&data),
        BTreeSet::from(["audit.log".to_string(), "gateway.key".to_string()])
    );

    let config = AgentConfig::load(&config_path).unwrap();
    assert_eq!(config.store.as_str(), "S001");
    assert_eq!(config.listen.port(), port, "the template's listen is kept");
    assert_eq!(config.sync.backoff_cap_ms, 300);
    assert!(config.credential.is_empty());
    let identity = config.gateway.clone().unwrap();
    assert_eq!(
        identity.hub_fingerprint.as_deref(),
        Some(hub.fingerprint.as_str())
    );
    let gateways = hub.handle.storage().list_gateways().await.unwrap();
    let at_hub = gateways
        .iter()
        .find(|g| g.gateway_id == identity.id)
        .unwrap();
    assert_eq!(at_hub.store.as_str(), "S001");
    assert_eq!(at_hub.enrolled_name.as_deref(), Some("back office pi"));
    // The gateway's own audit log names the enrolment (not the code).
    let audited = aisle_agent::audit::list(&data).unwrap();
    assert_eq!(audited.len(), 1);
    assert_eq!(
        audited[0].action,
        aisle_agent::audit::action::GATEWAY_ENROLLED
    );
    assert!(
        audited[0].subject.contains(identity.id.as_str()),
        "{audited:?}"
    );
    assert!(audited[0].subject.contains("(as given)"), "{audited:?}");
    let audit_text = std::fs::read_to_string(data.join("audit.log")).unwrap();

    // The agent as a process, its log captured.
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut agent = Command::new(binary("aisle-agent").unwrap())
        .args(["run", "--config", config_path.to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let store = StoreApi::new(&format!("http://127.0.0.1:{port}"));
    let g = gtin(7);
    hub.push_price(&g, "3.50").await;
    let result = async {
        store.wait_price(&g, 350, Duration::from_secs(20)).await?;
        let (status, body) = store.sell("sale-prov-1", &[(&g, 2)]).await?;
        anyhow::ensure!(status == 201 || status == 200, "sale {status}: {body}");
        store.wait_drained(Duration::from_secs(20)).await?;
        // Revoked at HQ: the very next request is refused and the store sees why.
        hub.handle
            .storage()
            .revoke_gateway_by(&identity.id, &Actor::cli())
            .await?;
        hub.push_price(&g, "3.60").await;
        let error = wait_for(
            "the revocation to show",
            Duration::from_secs(20),
            || async {
                let s = store.status().await.ok()?;
                s["last_error"]
                    .as_str()
                    .filter(|e| e.contains("revoked"))
                    .map(str::to_string)
            },
        )
        .await?;
        anyhow::ensure!(error.contains("401"), "{error}");
        // From now on nothing reaches it (a long-poll already answered before the revocation
        // may have brought 3.60).
        hub.push_price(&g, "3.70").await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let price = store.price(&g).await?.unwrap_or_default();
        anyhow::ensure!(
            price["price"]["minor"].as_i64() != Some(370),
            "a revoked gateway got a new price: {price}"
        );
        Ok(())
    }
    .await;
    let _ = agent.kill();
    let _ = agent.wait();
    let agent_log = std::fs::read_to_string(&log_path).unwrap();
    result.unwrap_or_else(|e| panic!("{e:#}\n--- agent log ---\n{agent_log}"));

    // No secret in anything the agent printed or logged.
    let secret = key_secret(&data);
    let canonical: String = code.chars().filter(|c| *c != '-').collect();
    for (what, output) in [
        ("enroll output", &shown),
        ("agent log", &agent_log),
        ("audit log", &audit_text),
    ] {
        assert!(output.len() > 100, "{what} is too short to mean anything");
        for needle in [
            &secret,
            &secret[..16],
            &code,
            &canonical,
            &code.to_lowercase(),
        ] {
            assert!(!output.contains(needle), "{what} shows a secret");
        }
    }
    assert!(agent_log.contains("aisle-agent started"));
}

/// A TLS endpoint with another certificate that counts the connections that got past the
/// handshake (none should: the gateway refuses the certificate before sending anything).
async fn impostor() -> (String, Arc<AtomicUsize>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let files = tls::init(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
    let identity = TlsIdentity::load(&files.server_cert, &files.server_key).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let mut listener = TlsListener::new(tcp, &identity).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let _conn = axum::serve::Listener::accept(&mut listener).await;
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    (format!("https://{addr}"), accepted, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_with_another_certificate_is_refused_before_anything_is_sent() {
    let hub = TlsHub::start().await;
    let (impostor_url, accepted, _impostor_dir) = impostor().await;
    let dir = tempfile::tempdir().unwrap();

    // Enrolment given HQ's fingerprint, pointed at the impostor: refused, code not spent.
    let data = dir.path().join("data");
    let code = hub.fresh_code("S001").await;
    let out = enroll(&[
        "--hub",
        &impostor_url,
        "--code",
        &code,
        "--data",
        data.to_str().unwrap(),
        "--hub-fingerprint",
        &hub.fingerprint,
    ]);
    let shown = text(&out);
    assert_nothing_written(&data, &out);
    assert!(shown.contains("presented certificate"), "{shown}");
    assert!(shown.contains("the code was not sent"), "{shown}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);

    // The same code then works at the real hub, pinned on first use.
    let out = enroll(&[
        "--hub",
        &hub.url(),
        "--code",
        &code,
        "--data",
        data.to_str().unwrap(),
    ]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains(&format!(
            "hub certificate pinned on first use: {}",
            hub.fingerprint
        )),
        "{shown}"
    );

    // The hub "changes" its certificate: the agent refuses it and says so.
    let mut config = enrolled_config(&data.join("agent.toml"));
    config.hub_url = impostor_url;
    let agent = Agent::start(config, Arc::new(SystemClock)).await.unwrap();
    let error = wait_for(
        "the certificate refusal",
        Duration::from_secs(15),
        || async { agent.sync_status().last_error },
    )
    .await
    .unwrap();
    agent.shutdown().await;
    assert!(error.starts_with("hub certificate changed"), "{error}");
    assert!(error.contains(&hub.fingerprint), "{error}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "no connection got past the handshake, so no request was sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_at_enrolment_says_what_to_do_and_leaves_no_half_enrolled_gateway() {
    let hub = TlsHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let url = hub.url();
    let run = |hub_url: &str, code: &str| {
        let out = enroll(&["--hub", hub_url, "--code", code, "--data", d]);
        assert_nothing_written(&data, &out);
        // The message for the technician is the last line, whole.
        let shown = String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        assert!(shown.starts_with("aisle-agent: "), "{}", text(&out));
        shown
    };
    let good = hub.fresh_code("S001").await;

    let e = run(&url, "ABCD-EFGH");
    assert!(e.contains("not an enrolment code"), "{e}");
    let e = run(&url, "ABCD-EFGH-JKMU");
    assert!(e.contains("check what you typed"), "{e}");
    for bad_url in ["hub.example:7400", "ftp://hub", "https://hub.example/v1"] {
        let e = run(bad_url, &good);
        assert!(e.contains("https://HOST"), "{e}");
    }
    let closed = format!("https://127.0.0.1:{}", free_port().unwrap());
    let e = run(&closed, &good);
    assert!(
        e.contains("cannot reach the hub") && e.contains("not used"),
        "{e}"
    );
    let e = run(&url, "0000-0000-0000");
    assert!(e.contains("not valid"), "{e}");
    let expired = hub
        .code("S001", UtcMillis::now().saturating_add_ms(-60_000))
        .await;
    let e = run(&url, &expired);
    assert!(e.contains("expired") && e.contains("new code"), "{e}");

    // A clock three days behind: refused before the code is sent.
    let opts = EnrolOptions {
        hub_url: url.clone(),
        code: good.clone(),
        data_dir: data.clone(),
        config_path: None,
        hub_fingerprint: None,
        name: None,
        force: false,
    };
    let behind = Arc::new(OffsetClock::new(Arc::new(SystemClock), -3 * 86_400_000));
    let e = enrol(&opts, behind).await.unwrap_err();
    assert!(matches!(e, EnrolError::ClockOff { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("3 days behind") && e.contains("Set the clock"),
        "{e}"
    );
    assert!(e.contains("the code was not used"), "{e}");
    assert!(files_in(&data).is_empty());

    // A full disk (a 1 KiB file size limit): refused before the code is sent.
    let shell = format!(
        "trap '' XFSZ; ulimit -f 2; exec \"$0\" enroll --hub {url} --code {good} --data {d}"
    );
    let out = Command::new("sh")
        .args([
            "-c",
            &shell,
            binary("aisle-agent").unwrap().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let shown = text(&out);
    assert_nothing_written(&data, &out);
    assert!(shown.contains("not enough disk space"), "{shown}");
    assert!(shown.contains("the code was not used"), "{shown}");

    // After all that the code still works, once.
    let out = enroll(&["--hub", &url, "--code", &good, "--data", d]);
    assert!(out.status.success(), "{}", text(&out));
    let first_key = std::fs::read(data.join("gateway.key")).unwrap();
    let first_config = std::fs::read(data.join("agent.toml")).unwrap();
    let other = dir.path().join("other");
    let out = enroll(&[
        "--hub",
        &url,
        "--code",
        &good,
        "--data",
        other.to_str().unwrap(),
    ]);
    assert_nothing_written(&other, &out);
    assert!(text(&out).contains("already used"), "{}", text(&out));

    // Enrolling again over an enrolled gateway needs --force; nothing changes without it.
    let second = hub.fresh_code("S002").await;
    let out = enroll(&["--hub", &url, "--code", &second, "--data", d]);
    assert!(!out.status.success());
    assert!(text(&out).contains("already enrolled"), "{}", text(&out));
    assert_eq!(std::fs::read(data.join("gateway.key")).unwrap(), first_key);
    assert_eq!(
        std::fs::read(data.join("agent.toml")).unwrap(),
        first_config
    );
    let out = enroll(&["--hub", &url, "--code", &second, "--data", d, "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(std::fs::read(data.join("gateway.key")).unwrap(), first_key);
    let config = AgentConfig::load(&data.join("agent.toml")).unwrap();
    assert_eq!(config.store.as_str(), "S002");
    assert_eq!(
        files_in(&data),
        BTreeSet::from([
            "agent.toml".to_string(),
            "audit.log".to_string(),
            "gateway.key".to_string()
        ])
    );
    let ids: Vec<GatewayId> = hub
        .handle
        .storage()
        .list_gateways()
        .await
        .unwrap()
        .into_iter()
        .filter(|g| g.enrolled_name.is_some())
        .map(|g| g.gateway_id)
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_clock_drifts_after_enrolment_still_signs_within_the_hubs_window() {
    let hub = TlsHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let code = hub.fresh_code("S001").await;
    let out = enroll(&[
        "--hub",
        &hub.url(),
        "--code",
        &code,
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let config = enrolled_config(&data.join("agent.toml"));
    // Twenty minutes fast: the first signed request is refused (clock_skew), the hub's answer
    // states its time, and the next one is stamped with it.
    let fast = Arc::new(OffsetClock::new(Arc::new(SystemClock), 20 * 60_000));
    let agent = Agent::start(config.clone(), fast).await.unwrap();
    let store = StoreApi::new(&format!("http://{}", agent.local_addr()));
    let g = gtin(9);
    hub.push_price(&g, "2.10").await;
    let got = store.wait_price(&g, 210, Duration::from_secs(20)).await;
    let status = agent.sync_status();
    agent.shutdown().await;
    got.unwrap_or_else(|e| panic!("{e:#}: {status:?}"));
}

/// `aisle-agent doctor` with `args`; (exit success, stdout).
fn doctor(config: &Path, json: bool) -> (bool, String) {
    let mut cmd = Command::new(binary("aisle-agent").unwrap());
    cmd.args(["doctor", "--config", config.to_str().unwrap()]);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_an_enrolled_gateway_and_says_what_to_do_about_each_failure() {
    let hub = TlsHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let code = hub.fresh_code("S001").await;
    // Enrolled from the URI in HQ's QR code (hub, code and fingerprint in one scan).
    let uri =
        aisle_hub::security::qr::enrolment_uri(&code, Some(&hub.url()), Some(&hub.fingerprint));
    let out = enroll(&["--code", &uri, "--data", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("hub certificate pinned: {}", hub.fingerprint)),
        "{}",
        text(&out)
    );
    let config_path = data.join("agent.toml");
    let enrolled = std::fs::read_to_string(&config_path).unwrap();
    // The shelf-label access point: the simulator on a pseudo-terminal.
    let ap = aisle_hil::esl_sim::EslSim::start(aisle_hil::esl_sim::EslSimConfig::new(
        aisle_protocol::esl::LabelId(0x00A1_0001),
        1,
    ))
    .unwrap();
    std::fs::write(
        &config_path,
        format!(
            "{enrolled}\n[footfall]\nmqtt = \"{}\"\n\n[labels]\naccess_point = \"{}\"\n",
            aisle_hil::mqtt::broker(),
            ap.path()
        ),
    )
    .unwrap();

    let (ok, shown) = doctor(&config_path, false);
    assert!(ok, "{shown}");
    for line in [
        "PASS  gateway identity",
        "PASS  hub reachable",
        "PASS  hub TLS identity",
        "PASS  clock skew",
        "PASS  hub accepts this gateway",
        "PASS  disk space",
        "PASS  ledger",
        "PASS  MQTT broker",
        "PASS  label access point",
    ] {
        assert!(shown.contains(line), "{line}: {shown}");
    }
    assert!(shown.trim_end().ends_with("all checks passed"), "{shown}");

    // Revoked at HQ, and the label access point unplugged: two FAILs, each with what to do.
    let id = AgentConfig::load(&config_path).unwrap().gateway.unwrap().id;
    hub.handle
        .storage()
        .revoke_gateway_by(&id, &Actor::cli())
        .await
        .unwrap();
    let with_labels = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace(ap.path(), "/dev/serial/by-id/usb-aisle-ap-unplugged");
    std::fs::write(&config_path, with_labels).unwrap();
    let (ok, json) = doctor(&config_path, true);
    assert!(!ok, "{json}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["ok"], false);
    let verdict = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"].as_str().unwrap().starts_with(name))
            .unwrap_or_else(|| panic!("no check {name}: {json}"))
            .clone()
    };
    let auth = verdict("hub accepts this gateway");
    assert_eq!(auth["verdict"], "FAIL", "{json}");
    assert!(
        auth["detail"].as_str().unwrap().contains("revoked"),
        "{json}"
    );
    assert!(auth["fix"].as_str().unwrap().contains("re-enrol"), "{json}");
    let ap = verdict("label access point");
    assert_eq!(ap["verdict"], "FAIL", "{json}");
    assert!(ap["fix"].as_str().unwrap().contains("dialout"), "{json}");
    assert_eq!(verdict("hub reachable")["verdict"], "PASS");
    assert_eq!(verdict("disk space")["verdict"], "PASS");

    // A hub presenting another certificate: the TLS line fails and says what to do.
    let (impostor_url, accepted, _impostor_dir) = impostor().await;
    let moved = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace(&hub.url(), &impostor_url);
    std::fs::write(&config_path, moved).unwrap();
    let (ok, shown) = doctor(&config_path, false);
    assert!(!ok, "{shown}");
    assert!(
        shown.contains("FAIL  hub TLS identity")
            && shown.contains("hub certificate changed")
            && shown.contains("aisle-hub tls fingerprint"),
        "{shown}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

/// The reset button's effect, end to end: an enrolled gateway's enrolment set aside (as the
/// button held at boot does), the agent then running for the store but refusing to sync and
/// saying why, `doctor` saying to enrol, and `aisle-agent enroll` with a new code taking it
/// without `--force`, after which the gateway syncs again under its new identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_gateway_waits_unenrolled_until_enrolled_again() {
    let hub = TlsHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap().to_string();
    let code = hub.fresh_code("S001").await;
    let out = enroll(&[
        "--hub",
        &hub.url(),
        "--code",
        &code,
        "--data",
        &data_arg,
        "--hub-fingerprint",
        &hub.fingerprint,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let config_path = data.join("agent.toml");
    let first = AgentConfig::load(&config_path).unwrap();
    let first_id = first.gateway.clone().unwrap().id;

    let done =
        aisle_agent::status_panel::set_aside_enrolment(&config_path, &first, UtcMillis::now())
            .unwrap();
    assert_eq!(done.gateway.as_deref(), Some(first_id.as_str()));
    assert!(!data.join("gateway.key").exists());
    let reset = enrolled_config(&config_path);
    assert!(!reset.is_enrolled());
    let (ok, shown) = doctor(&config_path, false);
    assert!(!ok, "{shown}");
    assert!(shown.contains("FAIL  gateway identity"), "{shown}");
    assert!(shown.contains("aisle-agent enroll"), "{shown}");

    // Unenrolled: the agent runs (it sells), but never talks to the hub.
    let agent = Agent::start(reset, Arc::new(SystemClock)).await.unwrap();
    let status = agent.sync_status();
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("not enrolled")),
        "{status:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(agent.sync_status().link, aisle_agent::sync::Link::Down);
    agent.shutdown().await;

    // A new code enrols it again, no --force needed; it syncs as a new gateway.
    let code = hub.fresh_code("S001").await;
    let out = enroll(&[
        "--hub",
        &hub.url(),
        "--code",
        &code,
        "--data",
        &data_arg,
        "--hub-fingerprint",
        &hub.fingerprint,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let again = enrolled_config(&config_path);
    let second_id = again.gateway.clone().unwrap().id;
    assert_ne!(second_id, first_id);
    let agent = Agent::start(again, Arc::new(SystemClock)).await.unwrap();
    let up = wait_for("the link to come up", Duration::from_secs(15), || async {
        (agent.sync_status().link == aisle_agent::sync::Link::Up).then_some(())
    })
    .await;
    let status = agent.sync_status();
    agent.shutdown().await;
    up.unwrap_or_else(|e| panic!("{e}: {status:?}"));
    let audit = aisle_agent::audit::list(&data).unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["gateway_enrolled", "gateway_reset", "gateway_enrolled"],
        "{audit:#?}"
    );
}
