//! Device discovery: which serial ports answer which protocol's identify or status command, and
//! which MQTT devices publish under the store's topics.
//!
//! Each port is asked, with a short timeout each: MT-SICS `I4` (serial number; `ES`/`EL`
//! answers are still MT-SICS), then `W\r` (a Toledo 8217 answers STX ... CR, an NCI/Avery
//! scale LF ... ETX), then the shelf-label access point's `StatusRequest` frame (any ESL frame
//! back, `Status` or `Refused`, identifies it). What a port answers is bounded and shown
//! escaped; nothing from a device is trusted beyond classifying it.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aisle_protocol::esl::{
    ApCommand, ApReport, FrameReader, Header, Seq, decode_packet, encode_frame_vec,
};
use serde::Serialize;

/// How long one probe waits for an answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// Most bytes kept of one answer.
const MAX_ANSWER: usize = 256;
/// Baud rate the scale probes use (the scales' factory default).
pub const SCALE_BAUD: u32 = 9_600;

/// What a port turned out to be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Found {
    /// A Mettler Toledo MT-SICS scale; its serial number when it gave one.
    MtSicsScale { serial: Option<String> },
    /// A scale answering the Toledo 8217 `W` command.
    ToledoScale,
    /// A scale answering the NCI / Avery `W<CR>` command.
    NciScale,
    /// A shelf-label access point.
    EslAccessPoint { status: Option<String> },
    /// Something answered, but none of the protocols.
    Unknown { answer: String },
    /// Nothing answered any probe (a scanner that only sends when it scans looks like this).
    Silent,
    /// The port could not be opened.
    Unavailable { error: String },
}

/// One scanned port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortReport {
    pub path: String,
    #[serde(flatten)]
    pub found: Found,
}

/// Candidate serial ports: the ones given, else `/dev/serial/by-id/*`, `/dev/ttyUSB*` and
/// `/dev/ttyACM*`, each device once (a by-id link and its target count once, by-id kept).
pub fn candidates(given: &[PathBuf], configured: &[String]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    if !given.is_empty() {
        out.extend(given.iter().cloned());
    } else {
        out.extend(configured.iter().map(PathBuf::from));
        out.extend(list("/dev/serial/by-id", |_| true));
        out.extend(list("/dev", |n| {
            n.starts_with("ttyUSB") || n.starts_with("ttyACM")
        }));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    out
}

fn list(dir: &str, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| keep(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Bytes shown to a person: printable ASCII as is, the rest escaped.
pub fn escaped(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

/// Classifies an answer to `I4\r\n`.
pub fn classify_mt_sics(answer: &[u8]) -> Option<Found> {
    let text = String::from_utf8_lossy(answer);
    let line = text.trim_start_matches(['\r', '\n']).lines().next()?.trim();
    if let Some(rest) = line.strip_prefix("I4 A") {
        let serial = rest
            .trim()
            .trim_matches('"')
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(32)
            .collect::<String>();
        return Some(Found::MtSicsScale {
            serial: (!serial.is_empty()).then_some(serial),
        });
    }
    // Syntax or logical error, or "busy": an MT-SICS device that did not take I4.
    matches!(line, "ES" | "EL" | "ET" | "I4 I").then_some(Found::MtSicsScale { serial: None })
}

/// Classifies an answer to `W\r`.
pub fn classify_weight(answer: &[u8]) -> Option<Found> {
    match answer.first()? {
        0x02 if answer.contains(&b'\r') => Some(Found::ToledoScale),
        b'\n' if answer.contains(&0x03) => Some(Found::NciScale),
        _ => None,
    }
}

/// Classifies an answer to the access point's `StatusRequest`.
pub fn classify_access_point(answer: &[u8]) -> Option<Found> {
    let mut reader: FrameReader = FrameReader::default();
    let mut found = None;
    for b in answer {
        if let Some(Ok(packet)) = reader.push(*b)
            && let Ok((_, report)) = decode_packet::<ApReport>(packet)
        {
            let status = match report {
                ApReport::Status(s) => Some(format!(
                    "access point {:?}, channel {}, {} tags heard",
                    s.id, s.channel, s.tags_heard
                )),
                _ => None,
            };
            if found.is_none() || status.is_some() {
                found = Some(Found::EslAccessPoint { status });
            }
        }
    }
    found
}

/// Writes `command` and collects what comes back within [`PROBE_TIMEOUT`] (or until `done`
/// says the answer is complete).
fn ask(
    port: &mut dyn serialport::SerialPort,
    command: &[u8],
    done: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let _ = port.clear(serialport::ClearBuffer::All);
    if port.write_all(command).and_then(|()| port.flush()).is_err() {
        return Vec::new();
    }
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let mut answer = Vec::new();
    let mut buf = [0u8; 64];
    while Instant::now() < deadline && answer.len() < MAX_ANSWER && !done(&answer) {
        match port.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => answer.extend_from_slice(&buf[..n.min(MAX_ANSWER - answer.len())]),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    answer
}

/// Sends the access point's `StatusRequest` and collects the answer.
fn ask_access_point(port: &mut dyn serialport::SerialPort) -> Vec<u8> {
    let Ok(frame) = encode_frame_vec(Header::new(0u32, Seq(1)), &ApCommand::StatusRequest) else {
        return Vec::new();
    };
    // A leading delimiter ends whatever an earlier probe left in the access point's reader.
    let mut command = vec![0u8];
    command.extend_from_slice(&frame);
    ask(port, &command, |a| {
        a.iter().filter(|b| **b == 0).count() >= 2
    })
}

/// Asks only whether an access point answers on `path` (what `doctor` checks). Blocking.
pub fn probe_access_point(path: &Path, baud: u32) -> Found {
    let port = serialport::new(path.to_string_lossy(), baud)
        .timeout(Duration::from_millis(50))
        .open();
    let mut port = match port {
        Ok(p) => p,
        Err(e) => {
            return Found::Unavailable {
                error: e.to_string(),
            };
        }
    };
    let a = ask_access_point(port.as_mut());
    match classify_access_point(&a) {
        Some(f) => f,
        None if a.is_empty() => Found::Silent,
        None => Found::Unknown {
            answer: escaped(&a[..a.len().min(MAX_ANSWER)]),
        },
    }
}

/// Probes one port. Blocking: call it off the async threads.
pub fn probe(path: &Path, access_point_baud: u32) -> Found {
    let open = |baud| {
        serialport::new(path.to_string_lossy(), baud)
            .timeout(Duration::from_millis(50))
            .open()
    };
    let mut port = match open(SCALE_BAUD) {
        Ok(p) => p,
        Err(e) => {
            return Found::Unavailable {
                error: e.to_string(),
            };
        }
    };
    let mut heard = Vec::new();
    let a = ask(port.as_mut(), b"I4\r\n", |a| a.ends_with(b"\r\n"));
    if let Some(f) = classify_mt_sics(&a) {
        return f;
    }
    heard.extend_from_slice(&a);
    let a = ask(port.as_mut(), b"W\r", |a| {
        a.ends_with(&[0x03]) || (a.first() == Some(&0x02) && a.ends_with(b"\r"))
    });
    if let Some(f) = classify_weight(&a) {
        return f;
    }
    heard.extend_from_slice(&a);
    if port.set_baud_rate(access_point_baud).is_err() {
        drop(port);
        port = match open(access_point_baud) {
            Ok(p) => p,
            Err(e) => {
                return Found::Unavailable {
                    error: e.to_string(),
                };
            }
        };
    }
    let a = ask_access_point(port.as_mut());
    if let Some(f) = classify_access_point(&a) {
        return f;
    }
    heard.extend_from_slice(&a);
    if heard.is_empty() {
        Found::Silent
    } else {
        heard.truncate(MAX_ANSWER);
        Found::Unknown {
            answer: escaped(&heard),
        }
    }
}

/// An MQTT device seen publishing under the store's topics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MqttDevice {
    pub kind: String,
    pub id: String,
    pub messages: u64,
    pub last_topic: String,
}

/// Listens on `<prefix>/<store>/#` for `listen` and lists who published.
pub async fn mqtt_devices(
    host: &str,
    port: u16,
    prefix: &str,
    store: &str,
    listen: Duration,
) -> Result<Vec<MqttDevice>, String> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new(format!("aisle-scan-{}", std::process::id()), host, port);
    options.set_keep_alive(Duration::from_secs(10));
    options.set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, mut events) = AsyncClient::new(options, 16);
    let base = format!("{prefix}/{store}/");
    client
        .subscribe(format!("{base}#"), QoS::AtMostOnce)
        .await
        .map_err(|e| e.to_string())?;
    let mut seen: BTreeMap<(String, String), MqttDevice> = BTreeMap::new();
    let mut connected = false;
    let end = tokio::time::Instant::now() + listen;
    loop {
        let event = match tokio::time::timeout_at(end, events.poll()).await {
            Err(_) => break,
            Ok(Err(e)) => return Err(format!("{host}:{port}: {e}")),
            Ok(Ok(e)) => e,
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => connected = true,
            Event::Incoming(Packet::Publish(p)) => {
                let Some(rest) = p.topic.strip_prefix(&base) else {
                    continue;
                };
                let mut levels = rest.split('/');
                let (Some(kind), Some(id)) = (levels.next(), levels.next()) else {
                    continue;
                };
                if seen.len() >= 1024 && !seen.contains_key(&(kind.to_string(), id.to_string())) {
                    continue;
                }
                let d = seen
                    .entry((kind.to_string(), id.to_string()))
                    .or_insert_with(|| MqttDevice {
                        kind: kind.chars().take(64).collect(),
                        id: id.chars().take(64).collect(),
                        messages: 0,
                        last_topic: String::new(),
                    });
                d.messages += 1;
                d.last_topic = p.topic.chars().take(256).collect();
            }
            _ => {}
        }
    }
    let _ = client.try_disconnect();
    if !connected {
        return Err(format!("{host}:{port}: no answer from the broker"));
    }
    Ok(seen.into_values().collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn answers_are_classified_by_their_shape() {
        assert_eq!(
            classify_mt_sics(b"I4 A \"B123456789\"\r\n"),
            Some(Found::MtSicsScale {
                serial: Some("B123456789".into())
            })
        );
        assert_eq!(
            classify_mt_sics(b"ES\r\n"),
            Some(Found::MtSicsScale { serial: None })
        );
        assert_eq!(classify_mt_sics(b"\x02garbage\r"), None);
        assert_eq!(classify_mt_sics(b""), None);
        assert_eq!(classify_weight(b"\x02  1.234\r"), Some(Found::ToledoScale));
        assert_eq!(
            classify_weight(b"\n  1.234kg\r\n\nS00\r\n\x03"),
            Some(Found::NciScale)
        );
        assert_eq!(classify_weight(b"hello"), None);
        assert_eq!(classify_access_point(b"\x00\x00junk\x00"), None);
        assert_eq!(escaped(b"I4\r\n\x02"), "I4\\r\\n\\x02");
    }
}
