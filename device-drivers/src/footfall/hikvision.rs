//! Hikvision `EventNotificationAlert` XML with eventType PeopleCounting. `statisticalMethods` is
//! `realTime` (running totals) or `timeRange` (one interval with start and end); `enter` and
//! `exit` are visitors, `pass` (people walking by outside) is not needed for conversion and is
//! ignored. Elements are matched by local name only, because the namespace differs between
//! firmware versions (ver10, ver20, isapi.org, or none at all).
use quick_xml::Reader;
use quick_xml::events::Event;

use super::{
    CameraId, CameraReading, Counts, FootfallError, ReadingKind, admit, privacy, time_text,
};
use aisle_protocol::UtcMillis;

/// Deeper than any real alert; a bound so hostile nesting is refused early.
const MAX_DEPTH: usize = 16;
/// A counting interval longer than a day is not a footfall interval.
const MAX_INTERVAL_MS: i64 = 24 * 60 * 60 * 1000;

/// The elements we read, each found by (parent, element) local names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    EventType,
    DateTime,
    Channel,
    Method,
    Enter,
    Exit,
    RangeStart,
    RangeEnd,
    RealTime,
}

const FIELDS: &[(&str, &str, Field)] = &[
    ("EventNotificationAlert", "eventType", Field::EventType),
    ("EventNotificationAlert", "dateTime", Field::DateTime),
    ("EventNotificationAlert", "channelID", Field::Channel),
    ("peopleCounting", "statisticalMethods", Field::Method),
    ("peopleCounting", "enter", Field::Enter),
    ("peopleCounting", "exit", Field::Exit),
    ("TimeRange", "startTime", Field::RangeStart),
    ("TimeRange", "endTime", Field::RangeEnd),
    ("RealTime", "time", Field::RealTime),
];

const FIELD_NAMES: [&str; 9] = [
    "eventType",
    "dateTime",
    "channelID",
    "statisticalMethods",
    "enter",
    "exit",
    "startTime",
    "endTime",
    "time",
];

fn field_of(parent: &str, name: &str) -> Option<Field> {
    FIELDS
        .iter()
        .find(|(p, n, _)| p.eq_ignore_ascii_case(parent) && n.eq_ignore_ascii_case(name))
        .map(|(_, _, f)| *f)
}

/// Parses one alert. Other event types (e.g. the `videoloss` heartbeat) are
/// [`FootfallError::NotACount`], so the caller can still use them as a sign of life.
pub fn parse_alert(
    camera: &CameraId,
    bytes: &[u8],
    max_bytes: usize,
) -> Result<CameraReading, FootfallError> {
    admit(bytes, max_bytes)?;
    let text = std::str::from_utf8(bytes).map_err(|_| FootfallError::NotUtf8)?;
    let mut values: [Option<String>; 9] = Default::default();
    let mut stack: Vec<String> = Vec::new();
    let mut current: Option<Field> = None;
    let mut saw_root = false;
    let mut reader = Reader::from_str(text);
    loop {
        let event = reader
            .read_event()
            .map_err(|e| FootfallError::Xml(e.to_string()))?;
        match event {
            Event::Start(e) | Event::Empty(e) if stack.is_empty() && saw_root => {
                let name = e.local_name();
                return Err(FootfallError::Xml(format!(
                    "element <{}> after the root element",
                    name.as_ref()
                )));
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                let name = e.local_name().as_ref().to_owned();
                privacy::screen_field(&name)?;
                if stack.is_empty() {
                    if !name.eq_ignore_ascii_case("EventNotificationAlert") {
                        return Err(FootfallError::NotACount(format!(
                            "root element is <{name}>, not <EventNotificationAlert>"
                        )));
                    }
                    saw_root = true;
                }
                let field = stack.last().and_then(|parent| field_of(parent, &name));
                if let Some(f) = field {
                    let slot = &mut values[f as usize];
                    if slot.is_some() {
                        return Err(FootfallError::Xml(format!("<{name}> appears twice")));
                    }
                    *slot = Some(String::new());
                }
                if matches!(event, Event::Start(_)) {
                    if stack.len() >= MAX_DEPTH {
                        return Err(FootfallError::Xml(format!(
                            "nested deeper than {MAX_DEPTH} elements"
                        )));
                    }
                    stack.push(name);
                    current = field;
                }
            }
            Event::End(_) => {
                stack.pop();
                current = None;
            }
            Event::Text(t) => {
                if let Some(f) = current
                    && let Some(slot) = values[f as usize].as_mut()
                {
                    slot.push_str(&t);
                }
            }
            Event::CData(t) => {
                if let Some(f) = current
                    && let Some(slot) = values[f as usize].as_mut()
                {
                    slot.push_str(&t);
                }
            }
            Event::GeneralRef(_) => {
                if current.is_some() {
                    return Err(FootfallError::Xml(
                        "entity reference inside a count or time field".to_owned(),
                    ));
                }
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !saw_root {
        return Err(FootfallError::Xml("no root element".to_owned()));
    }
    let get = |f: Field| values[f as usize].as_deref().map(str::trim);
    let need = |f: Field| {
        get(f).ok_or(FootfallError::MissingField {
            field: FIELD_NAMES[f as usize],
        })
    };
    let event_type = need(Field::EventType)?;
    if !event_type.eq_ignore_ascii_case("PeopleCounting") {
        return Err(FootfallError::NotACount(format!(
            "eventType is {event_type:?}"
        )));
    }
    let count = |f: Field| -> Result<u64, FootfallError> {
        let v = need(f)?;
        v.parse::<u64>().map_err(|_| FootfallError::InvalidField {
            field: FIELD_NAMES[f as usize],
            detail: format!("expected a non-negative whole number, got {v:?}"),
        })
    };
    let time = |f: Field| -> Result<UtcMillis, FootfallError> {
        time_text::parse_iso(need(f)?).map_err(|detail| FootfallError::InvalidField {
            field: FIELD_NAMES[f as usize],
            detail,
        })
    };
    let counts = Counts::new(count(Field::Enter)?, count(Field::Exit)?);
    let method = need(Field::Method)?;
    let (kind, at) = if method.eq_ignore_ascii_case("realTime") {
        let at = if get(Field::RealTime).is_some() {
            time(Field::RealTime)?
        } else {
            time(Field::DateTime)?
        };
        (
            ReadingKind::Cumulative {
                counts,
                since: None,
            },
            at,
        )
    } else if method.eq_ignore_ascii_case("timeRange") {
        let start = time(Field::RangeStart)?;
        let end = time(Field::RangeEnd)?;
        let len = end.millis_since(start);
        if len <= 0 || len > MAX_INTERVAL_MS {
            return Err(FootfallError::InvalidField {
                field: "endTime",
                detail: format!("interval of {len} ms; expected more than 0 and at most a day"),
            });
        }
        let at = if get(Field::DateTime).is_some() {
            time(Field::DateTime)?
        } else {
            end
        };
        (ReadingKind::Interval { start, end, counts }, at)
    } else {
        return Err(FootfallError::InvalidField {
            field: "statisticalMethods",
            detail: format!("expected realTime or timeRange, got {method:?}"),
        });
    };
    let line = get(Field::Channel)
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    Ok(CameraReading {
        camera: camera.clone(),
        line,
        at,
        kind,
        occupancy: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{DEFAULT_MAX_PAYLOAD, time_text::parse_iso};
    use super::*;
    use proptest::prelude::*;

    const REAL_TIME_V20: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<EventNotificationAlert version="2.0" xmlns="http://www.hikvision.com/ver20/XMLSchema">
<ipAddress>192.0.2.64</ipAddress>
<portNo>80</portNo>
<protocol>HTTP</protocol>
<macAddress>44:19:b6:00:00:01</macAddress>
<channelID>1</channelID>
<dateTime>2026-11-22T14:30:05+01:00</dateTime>
<activePostCount>1</activePostCount>
<eventType>PeopleCounting</eventType>
<eventState>active</eventState>
<eventDescription>peopleCounting alarm</eventDescription>
<channelName>Entrance</channelName>
<peopleCounting>
<statisticalMethods>realTime</statisticalMethods>
<RealTime><time>2026-11-22T14:30:00+01:00</time></RealTime>
<enter>236</enter>
<exit>198</exit>
<pass>1045</pass>
</peopleCounting>
</EventNotificationAlert>"#;

    const TIME_RANGE_V10: &str = r#"<EventNotificationAlert version="1.0" xmlns="http://www.hikvision.com/ver10/XMLSchema">
  <channelID>2</channelID>
  <dateTime>2026-11-22T14:15:02+01:00</dateTime>
  <eventType>PeopleCounting</eventType>
  <eventState>active</eventState>
  <peopleCounting>
    <statisticalMethods>timeRange</statisticalMethods>
    <TimeRange>
      <startTime>2026-11-22T14:00:00+01:00</startTime>
      <endTime>2026-11-22T14:15:00+01:00</endTime>
    </TimeRange>
    <enter>31</enter>
    <exit>27</exit>
    <pass>80</pass>
  </peopleCounting>
</EventNotificationAlert>"#;

    const PREFIXED_ISAPI: &str = r#"<hik:EventNotificationAlert xmlns:hik="http://www.isapi.org/ver20/XMLSchema">
<hik:dateTime>2026-11-22T13:30:00Z</hik:dateTime>
<hik:eventType>peopleCounting</hik:eventType>
<hik:peopleCounting><hik:statisticalMethods>realTime</hik:statisticalMethods>
<hik:enter>5</hik:enter><hik:exit>4</hik:exit></hik:peopleCounting>
</hik:EventNotificationAlert>"#;

    const NO_NAMESPACE: &str = "<EventNotificationAlert><dateTime>2026-11-22T14:30:00</dateTime>\
<eventType>PeopleCounting</eventType><peopleCounting><statisticalMethods>realTime</statisticalMethods>\
<enter>0</enter><exit>0</exit></peopleCounting></EventNotificationAlert>";

    fn cam() -> CameraId {
        CameraId::new("hik-door")
    }

    fn parse(s: &str) -> Result<CameraReading, FootfallError> {
        parse_alert(&cam(), s.as_bytes(), DEFAULT_MAX_PAYLOAD)
    }

    #[test]
    fn real_time_alert_is_cumulative() {
        let r = parse(REAL_TIME_V20).unwrap();
        assert_eq!(r.line.as_deref(), Some("1"));
        assert_eq!(r.at, parse_iso("2026-11-22T13:30:00Z").unwrap());
        assert_eq!(
            r.kind,
            ReadingKind::Cumulative {
                counts: Counts::new(236, 198),
                since: None
            }
        );
    }

    #[test]
    fn time_range_alert_is_an_interval() {
        let r = parse(TIME_RANGE_V10).unwrap();
        assert_eq!(r.line.as_deref(), Some("2"));
        assert_eq!(
            r.kind,
            ReadingKind::Interval {
                start: parse_iso("2026-11-22T13:00:00Z").unwrap(),
                end: parse_iso("2026-11-22T13:15:00Z").unwrap(),
                counts: Counts::new(31, 27),
            }
        );
    }

    #[test]
    fn any_namespace_or_none() {
        let r = parse(PREFIXED_ISAPI).unwrap();
        assert_eq!(r.line, None);
        assert_eq!(
            r.kind,
            ReadingKind::Cumulative {
                counts: Counts::new(5, 4),
                since: None
            }
        );
        assert_eq!(r.at, parse_iso("2026-11-22T13:30:00Z").unwrap());
        let r = parse(NO_NAMESPACE).unwrap();
        assert_eq!(r.at, parse_iso("2026-11-22T14:30:00Z").unwrap());
    }

    #[test]
    fn bad_alerts_name_the_problem() {
        let heartbeat = "<EventNotificationAlert><dateTime>2026-11-22T14:30:00Z</dateTime>\
<eventType>videoloss</eventType><eventState>inactive</eventState></EventNotificationAlert>";
        let cases: Vec<(String, &str)> = vec![
            (heartbeat.to_owned(), "not_a_count"),
            ("<html><body>hi</body></html>".to_owned(), "not_a_count"),
            (
                REAL_TIME_V20.replace("<enter>236</enter>", ""),
                "missing_field",
            ),
            (REAL_TIME_V20.replace("236", "-4"), "invalid_field"),
            (REAL_TIME_V20.replace("236", "lots"), "invalid_field"),
            (
                REAL_TIME_V20.replace("realTime<", "sometimes<"),
                "invalid_field",
            ),
            (
                REAL_TIME_V20.replace("<enter>236</enter>", "<enter>236</enter><enter>1</enter>"),
                "malformed_xml",
            ),
            (
                REAL_TIME_V20.replace("</peopleCounting>", ""),
                "malformed_xml",
            ),
            (
                TIME_RANGE_V10.replace("14:15:00+01:00</endTime>", "13:45:00+01:00</endTime>"),
                "invalid_field",
            ),
            (
                TIME_RANGE_V10.replace("<startTime>2026-11-22T14:00:00+01:00</startTime>", ""),
                "missing_field",
            ),
            (
                REAL_TIME_V20.replace("<channelName>", "<humanImage>x</humanImage><channelName>"),
                "personal_data",
            ),
            (
                format!("{REAL_TIME_V20}<EventNotificationAlert/>"),
                "malformed_xml",
            ),
            (
                format!("{}{}", "<a>".repeat(40), "</a>".repeat(40)),
                "not_a_count",
            ),
            (
                format!(
                    "<EventNotificationAlert>{}{}</EventNotificationAlert>",
                    "<a>".repeat(40),
                    "</a>".repeat(40)
                ),
                "malformed_xml",
            ),
            (
                REAL_TIME_V20.replace("<enter>236", "<enter>&#50;36"),
                "malformed_xml",
            ),
            // Entity tricks (billion laughs, external entities) are never expanded.
            (
                REAL_TIME_V20
                    .replace(
                        "<EventNotificationAlert ",
                        "<!DOCTYPE x [<!ENTITY lol \"999\">]><EventNotificationAlert ",
                    )
                    .replace("<enter>236", "<enter>&lol;"),
                "malformed_xml",
            ),
        ];
        for (payload, reason) in &cases {
            let err = parse(payload).unwrap_err();
            assert_eq!(err.reason(), *reason, "{payload}: {err}");
        }
        let err = parse_alert(&cam(), b"<a>\xff</a>", 100).unwrap_err();
        assert_eq!(err, FootfallError::NotUtf8);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_alert(&cam(), &bytes, 256);
        }

        #[test]
        fn mutated_alert_never_panics(at in 0usize..2000, byte in any::<u8>()) {
            let mut b = TIME_RANGE_V10.as_bytes().to_vec();
            let i = at % b.len();
            b[i] = byte;
            let _ = parse_alert(&cam(), &b, DEFAULT_MAX_PAYLOAD);
        }

        #[test]
        fn arbitrary_xmlish_text_never_panics(s in "[<>/a-zA-Z:=\" ]{0,200}") {
            let _ = parse_alert(&cam(), s.as_bytes(), DEFAULT_MAX_PAYLOAD);
        }
    }
}
