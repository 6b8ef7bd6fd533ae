//! `aisle-agent enroll`: make the gateway's key, redeem the one-time code at the hub, pin the
//! hub's certificate and write the configuration, all or nothing.
//!
//! Order (each step can fail with a message for the technician, and none leaves a gateway
//! half-enrolled):
//! 1. The URL, code and fingerprint are checked offline; an existing enrolment is kept unless
//!    `force`.
//! 2. The key file and the configuration are written under temporary names, the configuration
//!    with room for the longest gateway id, so a full disk shows before the code is spent.
//! 3. `GET /healthz` over TLS: the certificate is checked against `--hub-fingerprint` (or
//!    recorded: trust on first use), and the gateway's clock against the hub's. A wrong hub or
//!    a wrong clock stops here, with the code not sent.
//! 4. `POST /v1/enrol` on a connection pinned to the certificate seen in 3. The hub's answer
//!    must name that same certificate.
//! 5. Key and configuration are renamed into place (the previous ones put back if that fails).
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aisle_protocol::auth::{
    ENROL_PATH, EnrolRequest, EnrolResponse, EnrolmentCode, MAX_CLOCK_SKEW_MS,
    MAX_GATEWAY_NAME_CHARS,
};
use aisle_protocol::sync::{ErrorBody, SERVER_TIME_HEADER};
use aisle_protocol::{GatewayId, StoreId};

use super::files::{StagedFile, commit_all};
use super::key::{GatewayKey, KEY_FILE_MODE, KEY_FILE_NAME};
use super::pin::{HubFingerprint, PinPolicy, PinVerifier, hub_http};
use crate::clock::{WallClock, rfc3339};
use crate::config::{AgentConfig, GatewayIdentity};

/// The configuration's file name in the data directory when `--config` is not given.
pub const CONFIG_FILE_NAME: &str = "agent.toml";
/// Where the local API listens in a new configuration.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7401";
/// Largest hub answer read during enrolment.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Largest existing configuration merged into.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// What the technician asked for.
#[derive(Clone)]
pub struct EnrolOptions {
    pub hub_url: String,
    /// As typed; never logged.
    pub code: String,
    pub data_dir: PathBuf,
    /// Default: `<data_dir>/agent.toml`.
    pub config_path: Option<PathBuf>,
    /// The fingerprint HQ gave the technician; without it the first certificate seen is pinned.
    pub hub_fingerprint: Option<String>,
    /// A name for people at HQ; default: the host name.
    pub name: Option<String>,
    /// Replace an existing enrolment.
    pub force: bool,
}

impl std::fmt::Debug for EnrolOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrolOptions")
            .field("hub_url", &self.hub_url)
            .field("code", &"<redacted>")
            .field("data_dir", &self.data_dir)
            .field("config_path", &self.config_path)
            .field("hub_fingerprint", &self.hub_fingerprint)
            .field("name", &self.name)
            .field("force", &self.force)
            .finish()
    }
}

/// A completed enrolment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolled {
    pub gateway_id: GatewayId,
    pub store: StoreId,
    pub config_path: PathBuf,
    pub key_path: PathBuf,
    /// `None` for a plain-HTTP hub.
    pub hub_fingerprint: Option<HubFingerprint>,
    /// Whether the pin came from the first certificate seen rather than `--hub-fingerprint`.
    pub trusted_on_first_use: bool,
}

/// Why enrolment stopped. Every message says what to do; none contains the code or the key.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("{0}")]
    BadInput(String),
    #[error(
        "this gateway is already enrolled ({0}); to replace that enrolment run enroll again \
         with --force (the old gateway should then be revoked at HQ)"
    )]
    AlreadyEnrolled(String),
    #[error("{0}")]
    Disk(String),
    #[error(
        "cannot reach the hub at {url}: {detail}. Check the URL, the network and that the hub \
         is running; the code was not used"
    )]
    Unreachable { url: String, detail: String },
    #[error(
        "the hub at {url} presented certificate {presented}, not {expected} as given with \
         --hub-fingerprint; the code was not sent. Check the URL and the fingerprint with HQ \
         (`aisle-hub tls fingerprint`); if they are right, something is intercepting the \
         connection"
    )]
    UnexpectedCertificate {
        url: String,
        expected: String,
        presented: String,
    },
    #[error(
        "this gateway's clock reads {local}, the hub's {hub} (off by {off}); certificates and \
         signed requests need the right time. Set the clock (`timedatectl set-ntp true`, or \
         `date -u -s ...`) and run enroll again; the code was not used"
    )]
    ClockOff {
        local: String,
        hub: String,
        off: String,
    },
    #[error("the hub refused the code: {0}")]
    Refused(String),
    #[error(
        "the hub answered something unusable ({0}); nothing was written. Check that the URL is \
         the Aisle hub; the code may have been used, so ask HQ for a new one if retrying fails"
    )]
    BadAnswer(String),
    #[error(
        "the connection presented certificate {presented} but the hub says its certificate is \
         {stated}: something between this gateway and the hub terminates TLS. Nothing was \
         written here. Ask HQ to revoke gateway {gateway} (`aisle-hub gateway revoke \
         {gateway}`) and for a new code, and enrol over a direct connection"
    )]
    Intercepted {
        presented: String,
        stated: String,
        gateway: GatewayId,
    },
    #[error(
        "the hub registered gateway {gateway} but this gateway could not save it ({detail}); \
         nothing was kept. Ask HQ to revoke {gateway} and for a new code, fix the problem and \
         enrol again"
    )]
    NotSaved { gateway: GatewayId, detail: String },
}

fn bad(m: impl Into<String>) -> EnrolError {
    EnrolError::BadInput(m.into())
}

/// A hub base URL as enroll accepts it: http(s)://host[:port], no credentials, path, query.
pub fn check_hub_url(text: &str) -> Result<String, EnrolError> {
    let hint = "give the hub as https://HOST[:PORT] (for example https://hub.example.com:7400)";
    let t = text.trim();
    if t.is_empty() || t.len() > 2048 {
        return Err(bad(format!("the hub URL is empty or too long; {hint}")));
    }
    let url =
        reqwest::Url::parse(t).map_err(|e| bad(format!("'{t}' is not a URL ({e}); {hint}")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(bad(format!("'{t}' is not an http(s) URL; {hint}")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad(format!("'{t}' names no host; {hint}")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(format!(
            "the hub URL must not carry a user name or password; {hint}"
        )));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad(format!("'{t}' has a path, query or fragment; {hint}")));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> EnrolError {
    use rustix::io::Errno;
    // ENOSPC, EDQUOT, and EFBIG (a file size limit): the disk, for the technician.
    let full = [Errno::NOSPC, Errno::DQUOT, Errno::FBIG]
        .iter()
        .any(|n| e.raw_os_error() == Some(n.raw_os_error()));
    if full {
        EnrolError::Disk(format!(
            "not enough disk space to write {what} in {}: free some space (or choose another \
             --data) and run enroll again; the code was not used",
            path.parent().unwrap_or(path).display()
        ))
    } else {
        EnrolError::Disk(format!(
            "cannot write {what} {}: {e}; fix that and run enroll again; the code was not used",
            path.display()
        ))
    }
}

/// The host name, as the gateway's default name at HQ.
fn default_name() -> String {
    let name = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !s.chars().any(char::is_control))
        .unwrap_or_else(|| "aisle gateway".to_string());
    name.chars().take(MAX_GATEWAY_NAME_CHARS).collect()
}

/// The existing configuration as a TOML table (empty when there is none), and what enrolment
/// it holds, if any.
fn existing_config(path: &Path) -> Result<(toml::Table, Option<String>), EnrolError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((toml::Table::new(), None));
        }
        Err(e) => {
            return Err(bad(format!(
                "cannot read the existing configuration {}: {e}",
                path.display()
            )));
        }
    };
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(bad(format!(
            "{} is over {MAX_CONFIG_BYTES} bytes",
            path.display()
        )));
    }
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        bad(format!(
            "the existing configuration {} is not valid TOML ({}); fix it or move it away",
            path.display(),
            e.message().trim()
        ))
    })?;
    let holds = if let Some(g) = table.get("gateway").and_then(|g| g.get("id")) {
        Some(format!(
            "gateway {} in {}",
            g.as_str().unwrap_or("?"),
            path.display()
        ))
    } else if table.get("credential").is_some() {
        Some(format!("a gateway credential in {}", path.display()))
    } else {
        None
    };
    Ok((table, holds))
}

/// The configuration to write: the existing one's other settings kept, identity replaced.
fn render_config(
    mut table: toml::Table,
    hub_url: &str,
    store: &str,
    data_dir: &Path,
    identity: &GatewayIdentity,
) -> Result<String, EnrolError> {
    use toml::Value;
    table.remove("credential");
    table.insert("store".into(), Value::String(store.into()));
    table.insert("hub_url".into(), Value::String(hub_url.into()));
    table.insert(
        "data_dir".into(),
        Value::String(data_dir.display().to_string()),
    );
    table
        .entry("listen")
        .or_insert_with(|| Value::String(DEFAULT_LISTEN.into()));
    let identity = Value::try_from(identity)
        .map_err(|e| bad(format!("cannot write the configuration: {e}")))?;
    table.insert("gateway".into(), identity);
    let body =
        toml::to_string(&table).map_err(|e| bad(format!("cannot write the configuration: {e}")))?;
    Ok(format!(
        "# Written by `aisle-agent enroll`. [gateway] is this gateway's identity: re-enrol \
         rather than editing it.\n{body}"
    ))
}

/// Reads at most `MAX_ANSWER_BYTES` of an answer.
async fn bounded_body(resp: &mut reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!("answer over {MAX_ANSWER_BYTES} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The hub's message from an error answer, cleaned for a terminal.
fn hub_message(bytes: &[u8]) -> String {
    let text = serde_json::from_slice::<ErrorBody>(bytes)
        .map(|b| b.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned());
    text.chars().filter(|c| !c.is_control()).take(300).collect()
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

/// A clock offset in the largest unit that reads well, rounded to the nearest (a clock three
/// days off measured a few milliseconds later still reads "3 days", not "2 days").
fn human_duration(ms: i64) -> String {
    let s = (ms.unsigned_abs() + 500) / 1000;
    let sign = if ms < 0 { "behind" } else { "ahead" };
    let nearest = |unit: u64| (s + unit / 2) / unit;
    match s {
        0..=119 => format!("{s} s {sign}"),
        120..=7199 => format!("{} min {sign}", nearest(60)),
        7200..=172_799 => format!("{} h {sign}", nearest(3600)),
        _ => format!("{} days {sign}", nearest(86_400)),
    }
}

/// The scheme of the URI in HQ's enrolment QR code: `aisle-enrol:?code=..&hub=..&tls=..`.
pub const ENROL_URI_SCHEME: &str = "aisle-enrol:";

/// What a scanned enrolment QR code holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnrolUri {
    pub code: Option<String>,
    pub hub: Option<String>,
    pub tls: Option<String>,
}

/// Parses `aisle-enrol:?code=..&hub=..&tls=..` (percent-encoded values); `None` when `text`
/// is not such a URI.
pub fn parse_enrol_uri(text: &str) -> Option<Result<EnrolUri, EnrolError>> {
    let rest = text.trim().strip_prefix(ENROL_URI_SCHEME)?;
    let bad_uri =
        || bad("the scanned enrolment URI is damaged; scan it again or type the code and --hub");
    if text.len() > 4096 {
        return Some(Err(bad_uri()));
    }
    let query = rest.strip_prefix('?').unwrap_or(rest);
    let mut uri = EnrolUri::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Some(Err(bad_uri()));
        };
        let Some(value) = percent_decode(value) else {
            return Some(Err(bad_uri()));
        };
        match key {
            "code" => uri.code = Some(value),
            "hub" => uri.hub = Some(value),
            "tls" => uri.tls = Some(value),
            _ => {}
        }
    }
    Some(Ok(uri))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The hub URL, code and fingerprint to use: as typed, or from a scanned enrolment URI (whose
/// fingerprint must agree with `--hub-fingerprint` when both are given).
fn resolve_input(opts: &EnrolOptions) -> Result<(String, String, Option<String>), EnrolError> {
    let Some(uri) = parse_enrol_uri(&opts.code) else {
        return Ok((
            opts.hub_url.clone(),
            opts.code.clone(),
            opts.hub_fingerprint.clone(),
        ));
    };
    let uri = uri?;
    let code = uri
        .code
        .ok_or_else(|| bad("the scanned enrolment URI holds no code; scan it again"))?;
    let hub = if opts.hub_url.trim().is_empty() {
        uri.hub.ok_or_else(|| {
            bad("the scanned enrolment URI names no hub; give it with --hub https://HOST[:PORT]")
        })?
    } else {
        opts.hub_url.clone()
    };
    let fingerprint = match (&opts.hub_fingerprint, uri.tls) {
        (Some(given), Some(scanned)) => {
            let same = HubFingerprint::parse(given).ok() == HubFingerprint::parse(&scanned).ok();
            if !same {
                return Err(bad(
                    "--hub-fingerprint and the fingerprint in the scanned code differ; check \
                     with HQ which one is the hub's",
                ));
            }
            Some(given.clone())
        }
        (given, scanned) => given.clone().or(scanned),
    };
    Ok((hub, code, fingerprint))
}

/// Enrols this gateway. `clock` is the gateway's clock (tests shift it).
pub async fn enrol(opts: &EnrolOptions, clock: Arc<dyn WallClock>) -> Result<Enrolled, EnrolError> {
    // 1. Offline checks.
    let (hub_url, code_text, fingerprint) = resolve_input(opts)?;
    let hub_url = check_hub_url(&hub_url)?;
    let code = EnrolmentCode::parse(&code_text).map_err(|e| {
        bad(format!(
            "that is not an enrolment code: {e}; check what you typed against what HQ gave you"
        ))
    })?;
    let https = hub_url.starts_with("https://");
    let expected = fingerprint
        .as_deref()
        .map(HubFingerprint::parse)
        .transpose()
        .map_err(|e| bad(format!("--hub-fingerprint: {e}")))?;
    if expected.is_some() && !https {
        return Err(bad(
            "--hub-fingerprint applies to an https:// hub only; give the hub's https:// URL",
        ));
    }
    let name = match &opts.name {
        Some(n) => {
            let n = n.trim();
            if n.is_empty()
                || n.chars().count() > MAX_GATEWAY_NAME_CHARS
                || n.chars().any(char::is_control)
            {
                return Err(bad(format!(
                    "--name must be 1 to {MAX_GATEWAY_NAME_CHARS} characters"
                )));
            }
            n.to_string()
        }
        None => default_name(),
    };
    std::fs::create_dir_all(&opts.data_dir)
        .map_err(|e| io_error("the data directory", &opts.data_dir, &e))?;
    let data_dir = std::fs::canonicalize(&opts.data_dir)
        .map_err(|e| io_error("the data directory", &opts.data_dir, &e))?;
    let key_path = data_dir.join(KEY_FILE_NAME);
    let config_path = match &opts.config_path {
        Some(p) => {
            let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = match parent {
                Some(d) => std::fs::canonicalize(d).map_err(|e| {
                    bad(format!(
                        "--config: cannot use the directory {}: {e}",
                        d.display()
                    ))
                })?,
                None => std::env::current_dir()
                    .map_err(|e| bad(format!("--config: no current directory: {e}")))?,
            };
            let file = p
                .file_name()
                .ok_or_else(|| bad("--config must name a file"))?;
            dir.join(file)
        }
        None => data_dir.join(CONFIG_FILE_NAME),
    };
    let (existing, holds) = existing_config(&config_path)?;
    if !opts.force {
        if key_path.exists() {
            return Err(EnrolError::AlreadyEnrolled(format!(
                "its key is {}",
                key_path.display()
            )));
        }
        if let Some(h) = holds {
            return Err(EnrolError::AlreadyEnrolled(h));
        }
    }

    // 2. Everything written under temporary names first, disk space claimed.
    let key = GatewayKey::generate();
    let mut key_file = StagedFile::create(&key_path, KEY_FILE_MODE)
        .map_err(|e| io_error("the gateway key", &key_path, &e))?;
    key_file
        .write(key.file_contents().as_bytes(), 0)
        .map_err(|e| io_error("the gateway key", &key_path, &e))?;
    let longest = GatewayIdentity {
        id: GatewayId::parse(&"g".repeat(64))
            .map_err(|e| bad(format!("internal: placeholder id: {e}")))?,
        key_file: key_path.clone(),
        hub_fingerprint: https.then(|| "0".repeat(64)),
    };
    let placeholder = render_config(
        existing.clone(),
        &hub_url,
        &"S".repeat(64),
        &data_dir,
        &longest,
    )?;
    let mut config_file = StagedFile::create(&config_path, 0o600)
        .map_err(|e| io_error("the configuration", &config_path, &e))?;
    config_file
        .write(placeholder.as_bytes(), placeholder.len() + 1024)
        .map_err(|e| io_error("the configuration", &config_path, &e))?;

    // 3. The hub's certificate and clock, before the code is sent.
    let first = PinVerifier::new(match &expected {
        Some(fp) => PinPolicy::Pinned(fp.clone()),
        None => PinPolicy::FirstUse,
    });
    let http = hub_http(https.then_some(&first), Duration::from_secs(10)).map_err(|detail| {
        EnrolError::Unreachable {
            url: hub_url.clone(),
            detail,
        }
    })?;
    let sent = clock.now_ms();
    let probe = http
        .get(format!("{hub_url}/healthz"))
        .timeout(Duration::from_secs(15))
        .send()
        .await;
    let received = clock.now_ms();
    let probe = match probe {
        Ok(r) => r,
        Err(e) => {
            if let Some(changed) = first.mismatch() {
                return Err(EnrolError::UnexpectedCertificate {
                    url: hub_url,
                    expected: changed.pinned,
                    presented: changed.presented,
                });
            }
            return Err(EnrolError::Unreachable {
                url: hub_url,
                detail: describe(&e),
            });
        }
    };
    let hub_time = probe
        .headers()
        .get(SERVER_TIME_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .ok_or_else(|| {
            EnrolError::BadAnswer(format!(
                "GET /healthz answered {} without {SERVER_TIME_HEADER}",
                probe.status()
            ))
        })?;
    let local_mid = sent + (received - sent) / 2;
    let off = local_mid.saturating_sub(hub_time);
    // Half the window: a gateway just inside it would be refused as soon as it drifts.
    if off.saturating_abs() > MAX_CLOCK_SKEW_MS / 2 {
        return Err(EnrolError::ClockOff {
            local: rfc3339(aisle_protocol::UtcMillis(local_mid)),
            hub: rfc3339(aisle_protocol::UtcMillis(hub_time)),
            off: human_duration(off),
        });
    }
    let presented = if https { first.presented() } else { None };

    // 4. The code, on a connection pinned to the certificate just seen.
    let pinned = presented
        .clone()
        .map(|p| PinVerifier::new(PinPolicy::Pinned(p)));
    let http = hub_http(pinned.as_ref(), Duration::from_secs(10)).map_err(|detail| {
        EnrolError::Unreachable {
            url: hub_url.clone(),
            detail,
        }
    })?;
    let request = EnrolRequest {
        code: code.canonical().to_string(),
        public_key: key.public_key_hex(),
        name,
    };
    let answer = http
        .post(format!("{hub_url}{ENROL_PATH}"))
        .json(&request)
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    drop(request);
    let mut answer = match answer {
        Ok(a) => a,
        Err(e) => {
            if let Some(changed) = pinned.as_ref().and_then(|v| v.mismatch()) {
                return Err(EnrolError::UnexpectedCertificate {
                    url: hub_url,
                    expected: changed.pinned,
                    presented: changed.presented,
                });
            }
            return Err(EnrolError::Unreachable {
                url: hub_url,
                detail: describe(&e),
            });
        }
    };
    let status = answer.status();
    let bytes = bounded_body(&mut answer)
        .await
        .map_err(EnrolError::BadAnswer)?;
    if status != reqwest::StatusCode::CREATED {
        let msg = hub_message(&bytes);
        return Err(match status.as_u16() {
            401 | 410 | 400 | 429 => EnrolError::Refused(msg),
            _ => EnrolError::BadAnswer(format!("{status}: {msg}")),
        });
    }
    let enrolled: EnrolResponse = serde_json::from_slice(&bytes)
        .map_err(|e| EnrolError::BadAnswer(format!("cannot read the enrolment answer: {e}")))?;
    if let (Some(presented), Some(stated)) = (&presented, &enrolled.hub_tls_fingerprint) {
        let stated_ok = HubFingerprint::parse(stated).ok();
        if stated_ok.as_ref() != Some(presented) {
            return Err(EnrolError::Intercepted {
                presented: presented.to_string(),
                stated: stated.chars().take(64).collect(),
                gateway: enrolled.gateway_id,
            });
        }
    }

    // 5. Into place.
    let identity = GatewayIdentity {
        id: enrolled.gateway_id.clone(),
        key_file: key_path.clone(),
        hub_fingerprint: presented.as_ref().map(|p| p.to_string()),
    };
    let not_saved = |detail: String| EnrolError::NotSaved {
        gateway: enrolled.gateway_id.clone(),
        detail,
    };
    let text = render_config(
        existing,
        &hub_url,
        enrolled.store.as_str(),
        &data_dir,
        &identity,
    )?;
    let parsed: AgentConfig = toml::from_str(&text).map_err(|e| {
        not_saved(format!(
            "the new configuration does not parse: {}",
            e.message()
        ))
    })?;
    parsed
        .validate()
        .map_err(|e| not_saved(format!("the new configuration is not valid: {e}")))?;
    config_file
        .write(text.as_bytes(), 0)
        .map_err(|e| not_saved(format!("writing {}: {e}", config_path.display())))?;
    commit_all(vec![key_file, config_file])
        .map_err(|e| not_saved(format!("renaming into place: {e}")))?;
    crate::audit::AuditLog::new(&data_dir).record(
        clock.now_ms(),
        "technician",
        crate::audit::action::GATEWAY_ENROLLED,
        &format!(
            "gateway {} for store {} at {hub_url}, hub certificate {}",
            enrolled.gateway_id,
            enrolled.store,
            match (&presented, expected.is_some()) {
                (Some(p), true) => format!("{p} (as given)"),
                (Some(p), false) => format!("{p} (pinned on first use)"),
                (None, _) => "none (plain HTTP)".to_string(),
            }
        ),
    );
    tracing::info!(
        gateway = %enrolled.gateway_id,
        store = %enrolled.store,
        hub = %hub_url,
        pin = presented.as_ref().map(HubFingerprint::as_str),
        config = %config_path.display(),
        "gateway enrolled"
    );
    Ok(Enrolled {
        gateway_id: enrolled.gateway_id,
        store: enrolled.store,
        config_path,
        key_path,
        hub_fingerprint: presented,
        trusted_on_first_use: https && expected.is_none(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hub_urls_are_checked_with_a_hint() {
        assert_eq!(
            check_hub_url("https://hub.example:7400/").unwrap(),
            "https://hub.example:7400"
        );
        assert_eq!(
            check_hub_url(" http://127.0.0.1:7400 ").unwrap(),
            "http://127.0.0.1:7400"
        );
        for bad in [
            "",
            "hub.example",
            "ftp://hub.example",
            "https://",
            "https://user:pw@hub.example",
            "https://hub.example/v1",
            "https://hub.example/?x=1",
            "https://hub example",
        ] {
            let e = check_hub_url(bad).unwrap_err().to_string();
            assert!(e.contains("https://HOST"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_scanned_enrolment_uri_gives_code_hub_and_fingerprint() {
        let fp = "ab".repeat(32);
        let opts = |code: &str, hub: &str, given: Option<&str>| EnrolOptions {
            hub_url: hub.into(),
            code: code.into(),
            data_dir: "/tmp".into(),
            config_path: None,
            hub_fingerprint: given.map(str::to_string),
            name: None,
            force: false,
        };
        let uri = format!(
            "aisle-enrol:?code=ABCD-EFGH-JKMN&hub=https%3A%2F%2Fhub.example%3A7400&tls={fp}"
        );
        assert_eq!(
            resolve_input(&opts(&uri, "", None)).unwrap(),
            (
                "https://hub.example:7400".to_string(),
                "ABCD-EFGH-JKMN".to_string(),
                Some(fp.clone())
            )
        );
        // --hub given wins over the URI's; a conflicting fingerprint is refused.
        let (hub, _, _) = resolve_input(&opts(&uri, "https://10.0.0.2:7400", None)).unwrap();
        assert_eq!(hub, "https://10.0.0.2:7400");
        let e = resolve_input(&opts(&uri, "", Some(&"cd".repeat(32)))).unwrap_err();
        assert!(e.to_string().contains("differ"), "{e}");
        let e = resolve_input(&opts("aisle-enrol:?code=ABCD-EFGH-JKMN", "", None)).unwrap_err();
        assert!(e.to_string().contains("--hub"), "{e}");
        let e = resolve_input(&opts("aisle-enrol:?code=%zz", "", None)).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
        // A typed code passes through as typed.
        assert_eq!(
            resolve_input(&opts("abcd efgh jkmn", "https://h", None))
                .unwrap()
                .1,
            "abcd efgh jkmn"
        );
    }

    #[test]
    fn a_new_configuration_keeps_other_settings_and_validates() {
        let existing: toml::Table = toml::from_str(
            "store = \"S009\"\nlisten = \"0.0.0.0:9000\"\ncredential = \"x.y\"\n[sync]\nlong_poll_ms = 1000\n",
        )
        .unwrap();
        let identity = GatewayIdentity {
            id: GatewayId::parse("gw-S001-0000abcd").unwrap(),
            key_file: "/var/lib/aisle/gateway.key".into(),
            hub_fingerprint: Some("ab".repeat(32)),
        };
        let text = render_config(
            existing,
            "https://hub.example:7400",
            "S001",
            Path::new("/var/lib/aisle"),
            &identity,
        )
        .unwrap();
        let c: AgentConfig = toml::from_str(&text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.store.as_str(), "S001");
        assert_eq!(c.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(c.sync.long_poll_ms, 1000);
        assert!(c.credential.is_empty());
        assert_eq!(c.gateway, Some(identity));
        assert_eq!(human_duration(-3 * 86_400_000), "3 days behind");
        // Measured a moment after the offset was set: still three days.
        assert_eq!(human_duration(-3 * 86_400_000 + 20), "3 days behind");
        assert_eq!(human_duration(3 * 86_400_000 - 20), "3 days ahead");
        assert_eq!(human_duration(600_000), "10 min ahead");
    }
}
