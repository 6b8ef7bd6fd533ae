//! HTTP to the hub: the two sync calls, with the protocol header, the gateway credential,
//! bounded answers and clock-skew measurement. Every answer is checked before it is believed.
use std::sync::Arc;
use std::time::Duration;

use aisle_protocol::UtcMillis;
use aisle_protocol::sync::{
    ChangePage, ErrorBody, EventUpload, LedgerEvent, MAX_BODY_BYTES, PROTOCOL_HEADER,
    PROTOCOL_VERSION, SERVER_TIME_HEADER, UploadAck, error_code, path, version_compatible,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use super::skew::{self, SkewSample};
use crate::clock::WallClock;

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
    authorization: String,
    /// The gateway id alone, for Debug.
    gateway: String,
    local: Arc<dyn WallClock>,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("base", &self.base)
            .field("authorization", &format!("Bearer {}", self.gateway))
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl HubClient {
    /// `credential` must already be validated (config does): it goes into a header.
    pub fn new(
        hub_url: &str,
        credential: &str,
        local: Arc<dyn WallClock>,
    ) -> Result<HubClient, SyncError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .map_err(|e| SyncError::Transport(format!("cannot build HTTP client: {e}")))?;
        Ok(HubClient {
            http,
            base: hub_url.trim_end_matches('/').to_string(),
            authorization: format!("Bearer {credential}"),
            gateway: crate::config::redacted(credential),
            local,
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
        let mut resp = req
            .header(PROTOCOL_HEADER, PROTOCOL_VERSION.to_string())
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .send()
            .await
            .map_err(|e| SyncError::Transport(describe(&e)))?;
        let received = self.local.now_ms();
        let status = resp.status();
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
