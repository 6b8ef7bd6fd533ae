//! The technician's setup page (`GET /setup`) end to end in a real headless Chromium driven over
//! WebDriver (`chromedriver`, as in tests/pickup_page.rs), and its API: who may sign in (a PIN
//! with the role technician; staff and manager PINs are refused with 403, no PIN with 401), the
//! self-check it shows (the very checks of `aisle-agent doctor`), the device list, the shared
//! lockout and the gateway audit log.
//!
//! The agent is a real one on a real ledger; its hub is down (a closed port), so the self-check
//! has a FAIL with what to do, as a technician would meet on a gateway whose network is not
//! plugged in yet.
//!
//! Without chromedriver the browser test fails (it does not skip): set `CHROMEDRIVER` and
//! `CHROMIUM` to use other binaries than `/usr/bin/chromedriver` and `/usr/bin/chromium`.
#![allow(clippy::unwrap_used)]

mod browser;

use std::net::TcpListener;
use std::sync::Arc;

use aisle_agent::clock::SystemClock;
use aisle_agent::config::{
    AgentConfig, CameraConfig, CameraVendor, ClockConfig, FootfallSettings, PickupSettings,
    StaffConfig, StaffRole, SyncConfig,
};
use aisle_agent::doctor::Verdict;
use aisle_agent::labels::LabelSettings;
use aisle_agent::{Agent, AgentHandle};
use anyhow::{Context, ensure};
use fantoccini::Client;
use serde_json::{Value, json};

use browser::*;

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const GATEWAY: &str = "gw-S001-1a2b3c4d";
const TECHNICIAN: &str = "Tess";
const TECH_PIN: &str = "8080";
const STAFF: &str = "Ana";
const STAFF_PIN: &str = "2468";
const MANAGER: &str = "Max";
const MANAGER_PIN: &str = "1357";
const CAMERA: &str = "door-1";
const ACCESS_POINT: &str = "/dev/serial/by-id/usb-aisle-ap-unplugged";

fn cheap_hash(pin: &str) -> String {
    let params = argon2::Params::new(8, 1, 1, None).unwrap();
    aisle_agent::pickup::staff::hash_pin_with(pin, params).unwrap()
}

fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Gateway {
    agent: AgentHandle,
    config: AgentConfig,
    base: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

fn staff(name: &str, pin: &str, role: StaffRole) -> StaffConfig {
    StaffConfig {
        name: name.into(),
        pin_hash: cheap_hash(pin),
        role,
    }
}

async fn start_gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        store: "S001".parse().unwrap(),
        hub_url: format!("http://127.0.0.1:{}", closed_port()),
        credential: format!("{GATEWAY}.{SECRET}"),
        gateway: None,
        status_panel: None,
        checkout: None,
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        sync: SyncConfig {
            long_poll_ms: 1_000,
            upload_batch: 100,
            backoff_base_ms: 50,
            backoff_cap_ms: 500,
            skew_alarm_ms: 5_000,
        },
        clock: ClockConfig::default(),
        // An access point whose cable is not plugged in.
        labels: Some(LabelSettings {
            access_point: Some(ACCESS_POINT.into()),
            ..LabelSettings::default()
        }),
        footfall: Some(FootfallSettings {
            cameras: vec![CameraConfig {
                id: CAMERA.into(),
                vendor: CameraVendor::Axis,
                zone: "Main entrance".into(),
                utc_offset_minutes: None,
                values: None,
                forward_is_in: None,
                lines: Default::default(),
            }],
            ..FootfallSettings::default()
        }),
        pickup: Some(PickupSettings {
            staff: vec![
                staff(STAFF, STAFF_PIN, StaffRole::Staff),
                staff(MANAGER, MANAGER_PIN, StaffRole::Manager),
                staff(TECHNICIAN, TECH_PIN, StaffRole::Technician),
            ],
        }),
    };
    let agent = Agent::start(config.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let base = format!("http://{}", agent.local_addr());
    Gateway {
        agent,
        config,
        base,
        http: reqwest::Client::new(),
        dir,
    }
}

impl Gateway {
    async fn sign_in(&self, path: &str, pin: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&json!({ "pin": pin }))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    fn audit(&self) -> Vec<aisle_agent::audit::AuditEntry> {
        aisle_agent::audit::list(self.dir.path()).unwrap()
    }
}

// ---- the API -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_technician_session_opens_the_setup_data() {
    let g = start_gateway().await;
    let data = ["/v1/setup/checklist", "/v1/setup/devices"];

    // No session, or a token that names none: 401.
    for path in data {
        let (status, body) = g.get(path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["error"], "unauthorized");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("/v1/setup/sign-in")
        );
        let (status, _) = g.get(path, Some(&"ab".repeat(32))).await;
        assert_eq!(status, 401, "{path}");
    }
    // The pickup page's cookie is not the setup page's.
    let (status, signed) = g.sign_in("/v1/staff/sign-in", STAFF_PIN).await;
    assert_eq!(status, 200, "{signed}");
    assert_eq!(signed["role"], "staff");
    let staff_token = signed["token"].as_str().unwrap().to_string();
    let r = g
        .http
        .get(format!("{}/v1/setup/devices", g.base))
        .header("cookie", format!("aisle_staff={staff_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // A staff or manager session: 403, with why.
    let (status, signed) = g.sign_in("/v1/staff/sign-in", MANAGER_PIN).await;
    assert_eq!(status, 200, "{signed}");
    assert_eq!(signed["role"], "manager");
    let manager_token = signed["token"].as_str().unwrap().to_string();
    for token in [&staff_token, &manager_token] {
        for path in data {
            let (status, body) = g.get(path, Some(token)).await;
            assert_eq!(status, 403, "{path}: {body}");
            assert_eq!(body["error"], "forbidden");
            assert!(
                body["message"].as_str().unwrap().contains("technician"),
                "{body}"
            );
        }
    }

    // A staff or manager PIN at the setup sign-in: 403 and no session.
    for pin in [STAFF_PIN, MANAGER_PIN] {
        let (status, body) = g.sign_in("/v1/setup/sign-in", pin).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.get("token").is_none(), "{body}");
        assert!(body["message"].as_str().unwrap().contains("technician"));
    }
    // A technician's PIN does not open the pickup page's API.
    let (status, body) = g.sign_in("/v1/staff/sign-in", TECH_PIN).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("/setup"),
        "{body}"
    );

    // The technician: the checklist doctor prints, and the devices.
    let r = g
        .http
        .post(format!("{}/v1/setup/sign-in", g.base))
        .json(&json!({ "pin": TECH_PIN }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.starts_with("aisle_setup=") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let signed: Value = r.json().await.unwrap();
    assert_eq!(signed["staff"], TECHNICIAN);
    assert_eq!(signed["role"], "technician");
    let tech_token = signed["token"].as_str().unwrap().to_string();
    // Its session opens no staff route.
    let (status, _) = g.get("/v1/pickups", Some(&tech_token)).await;
    assert_eq!(status, 403);

    let (status, checklist) = g.get("/v1/setup/checklist", Some(&tech_token)).await;
    assert_eq!(status, 200, "{checklist}");
    let doctor = aisle_agent::doctor::run(&g.config, Arc::new(SystemClock)).await;
    let names = |v: &Value| -> Vec<(String, String, Option<String>)> {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["verdict"].as_str().unwrap().to_string(),
                    c["fix"].as_str().map(str::to_string),
                )
            })
            .collect()
    };
    let expected = serde_json::to_value(&doctor).unwrap();
    assert_eq!(
        names(&checklist),
        names(&expected),
        "the same checks as doctor"
    );
    assert_eq!(checklist["ok"], false);
    let hub = checklist["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "hub reachable")
        .unwrap();
    assert_eq!(hub["verdict"], "FAIL");
    assert!(
        hub["fix"].as_str().unwrap().contains("check the network"),
        "{hub}"
    );
    assert!(
        doctor
            .checks
            .iter()
            .any(|c| c.name == "ledger" && c.verdict == Verdict::Pass)
    );
    // The access point is judged by the agent's driver (it holds the port), with doctor's fix.
    let ap = checklist["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == format!("label access point {ACCESS_POINT}"))
        .unwrap();
    assert_eq!(ap["verdict"], "FAIL", "{ap}");
    assert!(ap["fix"].as_str().unwrap().contains("dialout"), "{ap}");

    // The cookie alone works too (what the page would send on a reload).
    let r = g
        .http
        .get(format!("{}/v1/setup/devices", g.base))
        .header("cookie", format!("aisle_setup={tech_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let devices: Value = r.json().await.unwrap();
    let list = devices["devices"].as_array().unwrap();
    let hub = list.iter().find(|d| d["kind"] == "hub").unwrap();
    assert_eq!(hub["ok"], false, "{hub}");
    assert_eq!(hub["status"], "down");
    let camera = list.iter().find(|d| d["kind"] == "camera").unwrap();
    assert_eq!(camera["name"], "door-1 (axis, Main entrance)");
    assert_eq!(camera["status"], "offline");
    assert_eq!(camera["detail"], "never heard");
    let ap = list
        .iter()
        .find(|d| d["kind"] == "label access point")
        .unwrap();
    assert_eq!(ap["name"], ACCESS_POINT);
    assert_eq!(ap["ok"], false, "{ap}");

    // Sign-ins, and the refusals by role, are in the gateway audit log; no PIN is.
    let audit = g.audit();
    let has =
        |actor: &str, action: &str| audit.iter().any(|e| e.actor == actor && e.action == action);
    assert!(has("technician:Tess", "technician_signed_in"), "{audit:#?}");
    assert!(has("staff:Ana", "sign_in_refused_role"), "{audit:#?}");
    assert!(has("staff:Max", "sign_in_refused_role"), "{audit:#?}");
    assert!(has("technician:Tess", "sign_in_refused_role"), "{audit:#?}");
    assert!(has("staff:Ana", "staff_signed_in"), "{audit:#?}");
    // What people wrote or did (not the hashes and times, where four digits turn up by chance).
    for pin in [TECH_PIN, STAFF_PIN, MANAGER_PIN] {
        for e in &audit {
            assert!(
                ![&e.actor, &e.action, &e.subject]
                    .iter()
                    .any(|f| f.contains(pin)),
                "a PIN reached the audit log: {e:?}"
            );
        }
    }
    aisle_agent::audit::verify(g.dir.path()).unwrap();

    // One lockout per address for both pages: five wrong PINs at the setup page, and the
    // right technician PIN is refused there and at the pickup sign-in alike.
    for _ in 0..5 {
        let (status, _) = g.sign_in("/v1/setup/sign-in", "0000").await;
        assert_eq!(status, 401);
    }
    let (status, body) = g.sign_in("/v1/setup/sign-in", TECH_PIN).await;
    assert_eq!(status, 429, "{body}");
    assert!(body["retry_after_s"].as_u64().unwrap() > 0);
    let (status, _) = g.sign_in("/v1/staff/sign-in", STAFF_PIN).await;
    assert_eq!(status, 429);
    assert!(
        g.audit()
            .iter()
            .any(|e| e.action == "staff_pin_refused" && e.subject == "at the setup page")
    );
    g.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_page_is_served_with_a_strict_policy() {
    let g = start_gateway().await;
    let r = g
        .http
        .get(format!("{}/setup", g.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    let header = |name: &str| h.get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(header("cache-control").as_deref(), Some("no-store"));
    let csp = header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    let body = r.text().await.unwrap();
    assert!(body.contains("<title>Aisle gateway setup</title>"));
    g.agent.shutdown().await;
}

// ---- the browser ---------------------------------------------------------------------------

/// Where the screenshots go (`/tmp/setup-<step>.png`).
const SCREENSHOTS: &str = "/tmp/setup";

/// The technician's visit. Returns an error (not a panic) so the browser is always closed.
async fn technician_flow(c: &Client, g: &Gateway) -> anyhow::Result<()> {
    c.goto(&format!("{}/setup", g.base)).await?;
    ensure!(c.title().await? == "Aisle gateway setup");
    ensure!(
        is_hidden(c, "#s-setup").await?,
        "the checklist showed before sign-in"
    );

    // 1. A wrong PIN, then a staff member's right PIN: both refused, nothing shown.
    type_into(c, "#pin", "1111").await?;
    click(c, "#signin-btn").await?;
    wait_text(c, "#signin-msg", &["Wrong PIN"]).await?;
    type_into(c, "#pin", &format!("{STAFF_PIN}{ENTER}")).await?;
    wait_text(c, "#signin-msg", &["not a technician's"]).await?;
    shot(c, &format!("{SCREENSHOTS}-refused.png")).await?;
    ensure!(
        is_hidden(c, "#s-setup").await?,
        "a staff PIN opened the setup page"
    );

    // 2. The technician: the self-check, each check with its verdict and what to do.
    type_into(c, "#pin", &format!("{TECH_PIN}{ENTER}")).await?;
    wait_text(c, "#who", &["Technician: Tess"]).await?;
    let summary = wait_text(c, "#check-summary", &["check(s) failed"]).await?;
    let doctor = aisle_agent::doctor::run(&g.config, Arc::new(SystemClock)).await;
    let failed = doctor
        .checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .count();
    ensure!(summary == format!("{failed} check(s) failed"), "{summary}");
    let rows = c.find_all(css("#checks li")).await?;
    ensure!(
        rows.len() == doctor.checks.len(),
        "{} rows for {} checks",
        rows.len(),
        doctor.checks.len()
    );
    for (row, check) in rows.iter().zip(&doctor.checks) {
        let text = row.text().await?;
        let verdict = row.attr("data-verdict").await?.unwrap_or_default();
        ensure!(verdict == check.verdict.to_string(), "{text}: {verdict}");
        ensure!(text.contains(&check.name), "{text} is not {}", check.name);
        if let Some(fix) = &check.fix {
            ensure!(text.contains(&format!("What to do: {fix}")), "{text}");
        }
    }
    let hub_row = wait_text(c, "#checks li[data-verdict='FAIL']", &["hub reachable"]).await?;
    ensure!(hub_row.contains("check the network"), "{hub_row}");

    // 3. The devices: the hub link down, the camera never heard.
    wait_text(
        c,
        "#devices",
        &["camera: door-1 (axis, Main entrance)", "never heard"],
    )
    .await?;
    let hub = wait_text(c, "#devices li[data-ok='false']", &["hub"]).await?;
    ensure!(hub.contains("down"), "{hub}");
    shot(c, &format!("{SCREENSHOTS}-checklist.png")).await?;

    // 4. Check again runs the checks again.
    click(c, "#recheck-btn").await?;
    wait_text(c, "#check-summary", &["check(s) failed"]).await?;

    // 5. Sign out: back to sign-in; the session and its cookie are gone.
    let cookies = c.get_all_cookies().await?;
    let session = cookies
        .iter()
        .find(|k| k.name() == "aisle_setup")
        .context("sign-in set no aisle_setup cookie")?
        .value()
        .to_string();
    ensure!(session.len() == 64, "{session}");
    let (status, _) = g.get("/v1/setup/checklist", Some(&session)).await;
    ensure!(status == 200, "the live session answers {status}");
    click(c, "#signout-btn").await?;
    wait_text(c, "#signin-msg", &["Signed out"]).await?;
    ensure!(is_hidden(c, "#s-setup").await?);
    let (status, _) = g.get("/v1/setup/checklist", Some(&session)).await;
    ensure!(
        status == 401,
        "the signed-out session still answers {status}"
    );
    let cookies = c.get_all_cookies().await?;
    ensure!(
        !cookies.iter().any(|k| k.name() == "aisle_setup"),
        "the cookie outlived the sign-out"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn technician_signs_in_and_reads_the_checklist_in_headless_chromium() {
    let driver = start_chromedriver().await;
    let g = start_gateway().await;
    let profile = tempfile::tempdir().unwrap();
    // A tablet: what a technician carries.
    let tablet = Device {
        width: 820,
        height: 1180,
        touch: false,
    };
    let client = open_browser(&driver, profile.path(), tablet).await;
    let outcome = technician_flow(&client, &g).await;
    if outcome.is_err()
        && let Ok(png) = client.screenshot().await
    {
        let _ = std::fs::write("/tmp/setup-failure.png", png);
    }
    let closed = client.close().await;
    if let Err(e) = outcome {
        panic!("{e:#} (screenshot: /tmp/setup-failure.png)");
    }
    closed.unwrap();
    // The browser's sign-ins are in the audit log: the refused staff PIN and the technician.
    let audit = g.audit();
    assert!(
        audit
            .iter()
            .any(|e| e.actor == "technician:Tess" && e.action == "technician_signed_in"),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|e| e.actor == "staff:Ana" && e.action == "sign_in_refused_role"),
        "{audit:#?}"
    );
    g.agent.shutdown().await;
}
