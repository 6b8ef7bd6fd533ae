//! The local setup page for field technicians: `GET /setup` (`assets/setup.html`, served like
//! the pickup page: self-contained, strict content-security-policy), `POST /v1/setup/sign-in`
//! (a PIN with the role `technician`; the same lockout as staff sign-in, shared per client
//! address; a staff or manager PIN is answered 403 without a session), and behind a
//! technician's session (bearer token or cookie `aisle_setup`; none → 401, a staff session →
//! 403):
//!
//! * `GET /v1/setup/checklist`: the self-check, the very checks and words of
//!   `aisle-agent doctor --json` (`{ok, checks: [{name, verdict, detail, fix}]}`), except that
//!   the label access point the agent holds open is judged by its driver's live link rather
//!   than probed ([`crate::doctor::run_in_agent`]);
//! * `GET /v1/setup/devices`: what the agent knows of its devices right now: cameras, the label
//!   access point, the MQTT broker, the status panel, and the hub link.
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::Extensions;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use super::staff::{SETUP_COOKIE, SignInFor, forbidden, live_session, sign_in_for};
use crate::clock::WallClock;
use crate::config::{AgentConfig, StaffRole};
use crate::status_panel::PanelView;

/// The page as served.
pub const SETUP_HTML: &str = include_str!("../../assets/setup.html");

/// What the setup API needs beyond the rest of the agent: the configuration the agent runs
/// with (for the self-check) and the status panel, if any.
#[derive(Debug)]
pub struct SetupContext {
    pub config: AgentConfig,
    pub clock: Arc<dyn WallClock>,
    pub panel: Option<Arc<PanelView>>,
}

/// A signed-in technician. Extracting it answers 401 without a live session and 403 for a
/// session of any other role.
#[derive(Clone, Debug)]
pub struct TechnicianSession {
    pub technician: String,
}

impl FromRequestParts<AppState> for TechnicianSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Response> {
        let (_, s) = live_session(&parts.headers, st, SETUP_COOKIE, "POST /v1/setup/sign-in")
            .map_err(|r| *r)?;
        if s.role != StaffRole::Technician {
            return Err(forbidden(&format!(
                "this is a {} session: the setup page needs a PIN with the role technician",
                s.role
            )));
        }
        Ok(TechnicianSession {
            technician: s.staff,
        })
    }
}

pub(super) async fn page() -> Response {
    super::pickup_page::html_page(SETUP_HTML)
}

pub(super) async fn sign_in(
    State(st): State<AppState>,
    ext: Extensions,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    sign_in_for(st, &ext, body, SignInFor::Setup).await
}

pub(super) async fn checklist(_who: TechnicianSession, State(st): State<AppState>) -> Response {
    let report =
        crate::doctor::run_in_agent(&st.setup.config, st.setup.clock.clone(), st.labels.link())
            .await;
    Json(report).into_response()
}

/// One line of the device list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceJson {
    /// `camera`, `label access point`, `MQTT broker`, `status panel`, `hub`.
    pub kind: &'static str,
    pub name: String,
    /// Working as it should right now.
    pub ok: bool,
    /// One word: `online`, `offline`, `connected`, `down`, ...
    pub status: String,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DevicesJson {
    pub devices: Vec<DeviceJson>,
}

pub(super) async fn devices(_who: TechnicianSession, State(st): State<AppState>) -> Response {
    Json(device_list(&st)).into_response()
}

fn device_list(st: &AppState) -> DevicesJson {
    let mut devices = Vec::new();
    let sync = st.sync.status(&st.ledger);
    let enrolled = st.setup.config.is_enrolled();
    let link_up = sync.link == crate::sync::Link::Up;
    devices.push(DeviceJson {
        kind: "hub",
        name: st.setup.config.hub_url.clone(),
        ok: enrolled && link_up,
        status: if !enrolled {
            "not enrolled"
        } else if link_up {
            "up"
        } else {
            "down"
        }
        .to_string(),
        detail: sync.last_error.unwrap_or_else(|| {
            sync.last_contact
                .map_or_else(String::new, |t| format!("last answer {t}"))
        }),
    });
    let cameras = st.footfall.view();
    if cameras.mqtt != "off" {
        devices.push(DeviceJson {
            kind: "MQTT broker",
            name: st
                .setup
                .config
                .footfall
                .as_ref()
                .and_then(|f| f.mqtt.clone())
                .unwrap_or_default(),
            ok: cameras.mqtt == "up",
            status: cameras.mqtt.clone(),
            detail: String::new(),
        });
    }
    for c in cameras.cameras {
        let detail = match (&c.last_seen, &c.offline_since) {
            (None, _) => "never heard".to_string(),
            (Some(seen), Some(since)) if !c.online => {
                format!("silent since {since} (last heard {seen})")
            }
            (Some(seen), _) => format!("last heard {seen}"),
        };
        let detail = match &c.last_refusal {
            Some(r) => format!("{detail}; last refused: {r}"),
            None => detail,
        };
        devices.push(DeviceJson {
            kind: "camera",
            name: format!("{} ({}, {})", c.id, c.vendor, c.zone),
            ok: c.online,
            status: if c.online { "online" } else { "offline" }.to_string(),
            detail,
        });
    }
    if let Some(link) = st.labels.link() {
        let stats = st.labels.stats();
        let connected = link.is_connected();
        devices.push(DeviceJson {
            kind: "label access point",
            name: link.path.clone(),
            ok: connected,
            status: if connected { "connected" } else { "down" }.to_string(),
            detail: match (&link.last_error, connected) {
                (Some(e), false) => e.clone(),
                _ => format!(
                    "{} labels: {} confirmed, {} pending, {} not updated",
                    stats.labels, stats.confirmed, stats.pending, stats.not_updated
                ),
            },
        });
    } else if let Some(path) = st
        .setup
        .config
        .labels
        .as_ref()
        .and_then(|l| l.access_point.clone())
    {
        devices.push(DeviceJson {
            kind: "label access point",
            name: path,
            ok: false,
            status: "starting".to_string(),
            detail: "the driver has not reported yet".to_string(),
        });
    }
    if let Some(panel) = st.setup.panel.as_ref().and_then(|p| p.status()) {
        devices.push(DeviceJson {
            kind: "status panel",
            name: "LED, buzzer and reset button".to_string(),
            ok: panel.pin_faults == 0,
            status: panel.state.clone(),
            detail: match &panel.last_fault {
                Some(f) => format!(
                    "{}; {} pin faults, last: {f}",
                    panel.meaning, panel.pin_faults
                ),
                None => panel.meaning.clone(),
            },
        });
    }
    DevicesJson { devices }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The setup page keeps to the same policy as the pickup page.
    #[test]
    fn the_page_keeps_to_its_policy() {
        crate::api::pickup_page::assert_keeps_to_policy(SETUP_HTML);
    }
}
