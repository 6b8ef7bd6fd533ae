//! HTTP to the hub: the two sync calls, with the protocol header, the gateway's identity,
//! bounded answers and clock-skew measurement. Every answer is checked before it is believed.
//!
//! An enrolled gateway signs every request with its key (`aisle_protocol::auth`) and talks to
//! an https:// hub only through the pinned certificate ([`crate::provisioning::pin`]); a
//! `gateway add` gateway sends its bearer credential. Signatures carry the hub's time as this
//! client last learned it (every hub answer, refusals included, states the hub's clock), so a
//! gateway whose clock is off still gets in after one refused request.
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use aisle_protocol::auth::sign_request;
use aisle_protocol::sync::{
    ChangePage, ErrorBody, EventUpload, LedgerEvent, MAX_BODY_BYTES, PROTOCOL_HEADER,
    PROTOCOL_VERSION, SERVER_TIME_HEADER, UploadAck, error_code, path, version_compatible,
};
use aisle_protocol::{GatewayId, UtcMillis};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use super::skew::{self, SkewSample};
use crate::clock::WallClock;
use crate::config::AgentConfig;
use crate::provisioning::key::GatewayKey;
use crate::provisioning::pin::{HubFingerprint, PinPolicy, PinVerifier, hub_http};

/// Time allowed on top of a long-poll's wait for the answer to arrive.
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// Why a sync call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("hub unreachable: {0}")]
    Transport(String),
    #[error("hub speaks protocol {}, this agent speaks {PROTOCOL_VERSION}", hub.map_or("?".to_string(), |v| v.to_string()))]
    Incompatible { hub: Option<u16> },
    #[error("hub no longer holds our changefeed cursor (410 cursor_expired)")]
    CursorExpired,
    #[error("hub needs events from seq {expected_from} (409 seq_gap)")]
    SeqGap { expected_from: u64 },
    #[error("hub answered {status} {error}: {message}")]
    Refused {
        status: u16,
        error: String,
        message: String,
    },
    #[error("hub answer unusable: {0}")]
    BadAnswer(String),
    /// The hub presented another certificate than the pinned one; nothing was sent.
    #[error("{0}")]
    CertificateChanged(String),
    #[error("gateway identity: {0}")]
    Identity(String),
}

/// How this gateway proves who it is to the hub.
#[derive(Clone)]
pub enum HubAuth {
    /// `Authorization: Bearer <gateway_id>.<secret>` (`aisle-hub gateway add`).
    Bearer(String),
    /// Requests signed with the enrolled gateway's key.
    Signed {
        gateway: GatewayId,
        key: Box<GatewayKey>,
    },
}

impl std::fmt::Debug for HubAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HubAuth::Bearer(c) => write!(f, "Bearer {}", crate::config::redacted(c)),
            HubAuth::Signed { gateway, .. } => write!(f, "Signed({gateway})"),
        }
    }
}

/// A successful answer with what it tells about the hub's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T> {
    pub body: T,
    pub server_time: UtcMillis,
    pub skew: Option<SkewSample>,
}

/// Debug is written by hand so the Authorization header (the gateway's secret) never reaches a
/// log.
#[derive(Clone)]
pub struct HubClient {
    http: reqwest::Client,
    base: String,
    auth: HubAuth,
    /// Checks the hub's certificate (https:// hubs).
    verifier: Option<Arc<PinVerifier>>,
    local: Arc<dyn WallClock>,
    /// Hub time minus local time as last stated by the hub (what signatures are stamped with).
    hub_offset_ms: Arc<AtomicI64>,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("base", &self.base)
            .field("authorization", &self.auth)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl HubClient {
    /// A bearer client for a plain-HTTP hub. `credential` must already be validated (config
    /// does): it goes into a header.
    pub fn new(
        hub_url: &str,
        credential: &str,
        local: Arc<dyn WallClock>,
    ) -> Result<HubClient, SyncError> {
        HubClient::with_auth(
            hub_url,
            HubAuth::Bearer(credential.to_string()),
            None,
            local,
        )
    }

    /// A client that authenticates with `auth`; with `pin`, over HTTPS accepting only the
    /// pinned certificate.
    pub fn with_auth(
        hub_url: &str,
        auth: HubAuth,
        pin: Option<HubFingerprint>,
        local: Arc<dyn WallClock>,
    ) -> Result<HubClient, SyncError> {
        let verifier = pin.map(|p| PinVerifier::new(PinPolicy::Pinned(p)));
        let http =
            hub_http(verifier.as_ref(), Duration::from_secs(5)).map_err(SyncError::Transport)?;
        Ok(HubClient {
            http,
            base: hub_url.trim_end_matches('/').to_string(),
            auth,
            verifier,
            local,
            hub_offset_ms: Arc::new(AtomicI64::new(0)),
        })
    }

    /// The client a configuration asks for: an enrolled gateway's key (read from its file) and
    /// pin, or the bearer credential.
    pub fn from_config(
        config: &AgentConfig,
        local: Arc<dyn WallClock>,
    ) -> Result<HubClient, SyncError> {
        let (auth, pin) = match &config.gateway {
            Some(g) => {
                let key = GatewayKey::load(&g.key_file)
                    .map_err(|e| SyncError::Identity(e.to_string()))?;
                let pin = g
                    .hub_fingerprint
                    .as_deref()
                    .map(HubFingerprint::parse)
                    .transpose()
                    .map_err(SyncError::Identity)?;
                let auth = HubAuth::Signed {
                    gateway: g.id.clone(),
                    key: Box::new(key),
                };
                (auth, pin)
            }
            None if !config.is_enrolled() => {
                return Err(SyncError::Identity(crate::config::NOT_ENROLLED.to_string()));
            }
            None => (HubAuth::Bearer(config.credential.clone()), None),
        };
        if pin.is_none() && config.hub_url.starts_with("https://") {
            return Err(SyncError::Identity(
                "an https:// hub needs [gateway] hub_fingerprint".into(),
            ));
        }
        HubClient::with_auth(&config.hub_url, auth, pin, local)
    }

    /// Starts from a known offset (hub time minus local time), e.g. the skew the ledger kept
    /// across a restart.
    pub fn set_hub_offset_ms(&self, offset_ms: i64) {
        self.hub_offset_ms.store(offset_ms, Ordering::Relaxed);
    }

    /// The hub's time as this client last learned it.
    pub fn hub_now(&self) -> UtcMillis {
        UtcMillis(
            self.local
                .now_ms()
                .saturating_add(self.hub_offset_ms.load(Ordering::Relaxed)),
        )
    }

    /// `GET /healthz` without credentials: whether the hub answers (through the pin), with its
    /// clock.
    pub async fn health(&self) -> Result<Answer<()>, SyncError> {
        let req = self
            .http
            .get(format!("{}/healthz", self.base))
            .timeout(Duration::from_secs(10));
        let sent = self.local.now_ms();
        let mut resp = self.send(req, false).await?;
        let received = self.local.now_ms();
        let server_time = header(&resp, SERVER_TIME_HEADER).and_then(|v| v.parse::<i64>().ok());
        let status = resp.status();
        let bytes = read_bounded(&mut resp).await?;
        if !status.is_success() {
            return Err(refusal(status, &bytes));
        }
        let server_time = server_time.ok_or_else(|| {
            SyncError::BadAnswer(format!("answer has no {SERVER_TIME_HEADER} header"))
        })?;
        Ok(Answer {
            body: (),
            server_time: UtcMillis(server_time),
            skew: skew::measure(sent, received, server_time, skew::MAX_SAMPLE_RTT_MS),
        })
    }

    /// `GET /v1/sync/changes?after=&wait_ms=&limit=`.
    pub async fn changes(
        &self,
        after: u64,
        wait_ms: u32,
        limit: Option<u32>,
    ) -> Result<Answer<ChangePage>, SyncError> {
        let mut url = format!(
            "{}{}?after={after}&wait_ms={wait_ms}",
            self.base,
            path::CHANGES
        );
        if let Some(l) = limit {
            url.push_str(&format!("&limit={l}"));
        }
        let req = self
            .http
            .get(url)
            .timeout(Duration::from_millis(u64::from(wait_ms)) + ANSWER_GRACE);
        self.call(req).await
    }

    /// `POST /v1/sync/events`.
    pub async fn upload(&self, events: &[LedgerEvent]) -> Result<Answer<UploadAck>, SyncError> {
        let body = serde_json::to_vec(&EventUpload {
            events: events.to_vec(),
        })
        .map_err(|e| SyncError::BadAnswer(format!("cannot encode upload: {e}")))?;
        let req = self
            .http
            .post(format!("{}{}", self.base, path::EVENTS))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(Duration::from_secs(60));
        self.call(req).await
    }

    async fn call<T: DeserializeOwned + ServerTime>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<Answer<T>, SyncError> {
        let sent = self.local.now_ms();
        let mut resp = self
            .send(
                req.header(PROTOCOL_HEADER, PROTOCOL_VERSION.to_string()),
                true,
            )
            .await?;
        let received = self.local.now_ms();
        let status = resp.status();
        if let Some(t) = header(&resp, SERVER_TIME_HEADER).and_then(|v| v.parse::<i64>().ok())
            && let Some(sample) = skew::measure(sent, received, t, skew::MAX_SAMPLE_RTT_MS)
        {
            self.hub_offset_ms.store(sample.skew_ms, Ordering::Relaxed);
        }
        let hub_version = header(&resp, PROTOCOL_HEADER).map(|v| {
            v.parse::<u16>()
                .map_err(|_| SyncError::BadAnswer(format!("protocol header '{v}' is not a number")))
        });
        let hub_version = hub_version.transpose()?;
        if hub_version.is_some_and(|v| !version_compatible(v))
            || status == StatusCode::UPGRADE_REQUIRED
        {
            // Stop here: nothing in an answer from an incompatible peer is believed.
            return Err(SyncError::Incompatible { hub: hub_version });
        }
        let header_time = header(&resp, SERVER_TIME_HEADER).and_then(|v| v.parse::<i64>().ok());
        let bytes = read_bounded(&mut resp).await?;
        if !status.is_success() {
            return Err(refusal(status, &bytes));
        }
        if hub_version.is_none() {
            return Err(SyncError::BadAnswer(format!(
                "answer has no {PROTOCOL_HEADER} header"
            )));
        }
        let body: T = serde_json::from_slice(&bytes)
            .map_err(|e| SyncError::BadAnswer(format!("cannot parse the answer: {e}")))?;
        // The header is stamped as the answer leaves the hub; the body's field is the fallback.
        let server_time = header_time.unwrap_or(body.server_time().0);
        Ok(Answer {
            body,
            server_time: UtcMillis(server_time),
            skew: skew::measure(sent, received, server_time, skew::MAX_SAMPLE_RTT_MS),
        })
    }
}

impl HubClient {
    /// Adds the gateway's credentials (a bearer header or the four signature headers over the
    /// exact path, query and body) and sends. A certificate other than the pinned one ends the
    /// handshake before anything is sent, as [`SyncError::CertificateChanged`].
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        authenticate: bool,
    ) -> Result<reqwest::Response, SyncError> {
        let mut request = req
            .build()
            .map_err(|e| SyncError::BadAnswer(format!("cannot build the request: {e}")))?;
        let auth = if authenticate { Some(&self.auth) } else { None };
        match auth {
            None => {}
            Some(HubAuth::Bearer(credential)) => {
                let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {credential}"))
                    .map_err(|_| SyncError::Identity("credential is not a header value".into()))?;
                request
                    .headers_mut()
                    .insert(reqwest::header::AUTHORIZATION, value);
            }
            Some(HubAuth::Signed { gateway, key }) => {
                let url = request.url();
                let path = match url.query() {
                    Some(q) => format!("{}?{q}", url.path()),
                    None => url.path().to_string(),
                };
                let body = request
                    .body()
                    .map(|b| b.as_bytes().map(<[u8]>::to_vec))
                    .unwrap_or(Some(Vec::new()))
                    .ok_or_else(|| SyncError::Identity("cannot sign a streamed body".into()))?;
                let signed = sign_request(
                    key.signing_key(),
                    gateway,
                    request.method().as_str(),
                    &path,
                    self.hub_now(),
                    &fresh_nonce(),
                    &body,
                )
                .map_err(|e| SyncError::Identity(e.to_string()))?;
                for (name, value) in signed.pairs() {
                    let value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                        SyncError::Identity(format!("{name} is not a header value"))
                    })?;
                    request.headers_mut().insert(name, value);
                }
            }
        }
        self.http.execute(request).await.map_err(|e| {
            match self.verifier.as_ref().and_then(|v| v.mismatch()) {
                Some(changed) => SyncError::CertificateChanged(changed.to_string()),
                None => SyncError::Transport(describe(&e)),
            }
        })
    }
}

/// 128 random bits as 32 hex digits (a nonce the hub accepts once).
fn fresh_nonce() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Answers that carry the hub's time in their body too.
pub trait ServerTime {
    fn server_time(&self) -> UtcMillis;
}

impl ServerTime for ChangePage {
    fn server_time(&self) -> UtcMillis {
        self.server_time
    }
}

impl ServerTime for UploadAck {
    fn server_time(&self) -> UtcMillis {
        self.server_time
    }
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// Reads the body, refusing more than the protocol's limit.
async fn read_bounded(resp: &mut reqwest::Response) -> Result<Vec<u8>, SyncError> {
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(SyncError::BadAnswer(format!(
            "answer is over {MAX_BODY_BYTES} bytes"
        )));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| SyncError::Transport(describe(&e)))?
    {
        if out.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(SyncError::BadAnswer(format!(
                "answer is over {MAX_BODY_BYTES} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn refusal(status: StatusCode, bytes: &[u8]) -> SyncError {
    let body: Option<ErrorBody> = serde_json::from_slice(bytes).ok();
    match (&body, status) {
        (Some(b), StatusCode::GONE) if b.error == error_code::CURSOR_EXPIRED => {
            SyncError::CursorExpired
        }
        (Some(b), StatusCode::CONFLICT) if b.error == error_code::SEQ_GAP => {
            match b.expected_from {
                Some(expected_from) => SyncError::SeqGap { expected_from },
                None => SyncError::BadAnswer("seq_gap without expected_from".into()),
            }
        }
        (Some(b), _) => SyncError::Refused {
            status: status.as_u16(),
            error: b.error.chars().take(64).collect(),
            message: b.message.chars().take(300).collect(),
        },
        (None, _) => SyncError::Refused {
            status: status.as_u16(),
            error: String::new(),
            message: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        },
    }
}

/// reqwest's Display hides the cause (e.g. "connection refused"); walk the chain.
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::clock::SystemClock;

    #[test]
    fn debug_never_shows_the_secret() {
        let secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let client = HubClient::new(
            "http://127.0.0.1:7400",
            &format!("gw-S001-1a2b3c4d.{secret}"),
            Arc::new(SystemClock),
        )
        .unwrap();
        let text = format!("{client:?}");
        assert!(!text.contains(secret), "{text}");
        assert!(
            text.contains("Bearer gw-S001-1a2b3c4d.<redacted>"),
            "{text}"
        );
        assert!(text.contains("http://127.0.0.1:7400"), "{text}");
    }
}
