//! Footfall scenarios' building blocks: the agent's `[footfall]` config section for simulated
//! cameras, reading the agent's `/metrics`, and HQ's footfall report.
use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::camera_sim::{SimConfig, Transport, Vendor, XovisValues};
use crate::harness::HQ_TOKEN;

/// One `[[footfall.cameras]]` entry.
#[derive(Clone, Debug)]
pub struct CameraEntry {
    pub id: String,
    pub vendor: Vendor,
    pub zone: String,
    /// Axis only.
    pub utc_offset_minutes: Option<i16>,
    /// Xovis only.
    pub xovis_values: Option<XovisValues>,
}

impl CameraEntry {
    pub fn new(id: &str, vendor: Vendor, zone: &str) -> CameraEntry {
        CameraEntry {
            id: id.to_string(),
            vendor,
            zone: zone.to_string(),
            utc_offset_minutes: None,
            xovis_values: None,
        }
    }

    /// The entry the agent needs for a simulated camera, counting for `zone`.
    pub fn for_sim(sim: &SimConfig, zone: &str) -> CameraEntry {
        let p = &sim.profile;
        CameraEntry {
            id: p.camera.clone(),
            vendor: p.vendor,
            zone: zone.to_string(),
            utc_offset_minutes: (p.vendor == Vendor::Axis).then_some(p.utc_offset_minutes),
            xovis_values: (p.vendor == Vendor::Xovis).then_some(p.xovis_values),
        }
    }
}

/// The agent's `[footfall]` section.
#[derive(Clone, Debug)]
pub struct FootfallSection {
    pub mqtt: Option<String>,
    pub topic_prefix: String,
    pub silence_timeout_ms: u64,
    pub close_every_ms: u64,
    pub close_after_ms: Option<u64>,
    pub max_messages_per_minute: u32,
    pub cameras: Vec<CameraEntry>,
}

impl FootfallSection {
    /// Cameras on `broker` under `topic_prefix`, with the agent's defaults otherwise.
    pub fn new(broker: Option<&str>, topic_prefix: &str) -> FootfallSection {
        FootfallSection {
            mqtt: broker.map(str::to_string),
            topic_prefix: topic_prefix.to_string(),
            silence_timeout_ms: 120_000,
            close_every_ms: 10_000,
            close_after_ms: None,
            max_messages_per_minute: 600,
            cameras: Vec::new(),
        }
    }

    /// The section for these simulated cameras, each counting for its zone; MQTT settings from
    /// the first MQTT camera.
    pub fn for_sims(sims: &[(&SimConfig, &str)]) -> FootfallSection {
        let mqtt = sims.iter().find_map(|(s, _)| match &s.transport {
            Transport::Mqtt {
                broker,
                topic_prefix,
            } => Some((broker.clone(), topic_prefix.clone())),
            Transport::Http { .. } => None,
        });
        let mut section = match &mqtt {
            Some((broker, prefix)) => FootfallSection::new(Some(broker), prefix),
            None => FootfallSection::new(None, crate::camera_sim::DEFAULT_TOPIC_PREFIX),
        };
        section.cameras = sims
            .iter()
            .map(|(s, zone)| CameraEntry::for_sim(s, zone))
            .collect();
        section
    }

    pub fn toml(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut t = String::from("[footfall]\n");
        if let Some(m) = &self.mqtt {
            t.push_str(&format!("mqtt = {}\n", q(m)));
        }
        t.push_str(&format!("topic_prefix = {}\n", q(&self.topic_prefix)));
        t.push_str(&format!(
            "silence_timeout_ms = {}\n",
            self.silence_timeout_ms
        ));
        t.push_str(&format!("close_every_ms = {}\n", self.close_every_ms));
        if let Some(c) = self.close_after_ms {
            t.push_str(&format!("close_after_ms = {c}\n"));
        }
        t.push_str(&format!(
            "max_messages_per_minute = {}\n",
            self.max_messages_per_minute
        ));
        for c in &self.cameras {
            t.push_str(&format!(
                "\n[[footfall.cameras]]\nid = {}\nvendor = {}\nzone = {}\n",
                q(&c.id),
                q(c.vendor.name()),
                q(&c.zone)
            ));
            if let Some(off) = c.utc_offset_minutes {
                t.push_str(&format!("utc_offset_minutes = {off}\n"));
            }
            if let Some(v) = c.xovis_values {
                let v = match v {
                    XovisValues::Delta => "delta",
                    XovisValues::Absolute => "absolute",
                };
                t.push_str(&format!("values = {}\n", q(v)));
            }
        }
        t
    }
}

/// The sum of every sample of `name` in a Prometheus text exposition (all label sets).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One sample of `name` with exactly this label (`label="value"`), or 0.
pub fn metric_with(text: &str, name: &str, label: &str, value: &str) -> f64 {
    let want = format!("{label}=\"{value}\"");
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') && rest.contains(&want))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The agent's `/metrics` text.
pub async fn agent_metrics(client: &reqwest::Client, agent_url: &str) -> Result<String> {
    let r = client
        .get(format!("{}/metrics", agent_url.trim_end_matches('/')))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("GET /metrics: {}", r.status());
    }
    Ok(r.text().await?)
}

/// Camera messages the agent has finished with: readings (any outcome) plus refusals.
pub async fn messages_handled(client: &reqwest::Client, agent_url: &str) -> Result<u64> {
    let text = agent_metrics(client, agent_url).await?;
    Ok((metric_sum(&text, "aisle_footfall_readings_total")
        + metric_sum(&text, "aisle_footfall_refused_total")) as u64)
}

/// The agent's `GET /v1/cameras`.
pub async fn cameras(client: &reqwest::Client, agent_url: &str) -> Result<Value> {
    let r = client
        .get(format!("{}/v1/cameras", agent_url.trim_end_matches('/')))
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await.context("GET /v1/cameras")?;
    if !status.is_success() {
        bail!("GET /v1/cameras: {status}: {body}");
    }
    Ok(body)
}

/// HQ's footfall report, `GET /v1/stores/{store}/footfall?from=&to=&interval=`.
pub async fn report(
    client: &reqwest::Client,
    hub_url: &str,
    store: &str,
    from: &str,
    to: &str,
    interval: &str,
) -> Result<Value> {
    let r = client
        .get(format!(
            "{}/v1/stores/{store}/footfall?from={}&to={}&interval={}",
            hub_url.trim_end_matches('/'),
            query_value(from),
            query_value(to),
            query_value(interval)
        ))
        .bearer_auth(HQ_TOKEN)
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await.context("footfall report")?;
    if !status.is_success() {
        bail!("footfall report: {status}: {body}");
    }
    Ok(body)
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
pub fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Visitors in over all buckets of a report.
pub fn visitors_in(report: &Value) -> u64 {
    report["buckets"]
        .as_array()
        .map(|b| b.iter().filter_map(|x| x["visitors_in"].as_u64()).sum())
        .unwrap_or(0)
}

/// Transactions over all buckets of a report.
pub fn transactions(report: &Value) -> u64 {
    report["buckets"]
        .as_array()
        .map(|b| b.iter().filter_map(|x| x["transactions"].as_u64()).sum())
        .unwrap_or(0)
}

/// UTC ms as RFC 3339 (`2026-11-22T10:15:00Z`), as the hub's report parameters take it.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_over_labels() {
        let text = "# HELP aisle_footfall_readings Readings.\n\
# TYPE aisle_footfall_readings counter\n\
aisle_footfall_readings_total{outcome=\"counted\"} 12\n\
aisle_footfall_readings_total{outcome=\"baseline\"} 3\n\
aisle_footfall_readings_total_other 100\n\
aisle_footfall_refused_total{reason=\"flood\"} 2\n";
        assert_eq!(metric_sum(text, "aisle_footfall_readings_total"), 15.0);
        assert_eq!(metric_sum(text, "aisle_footfall_refused_total"), 2.0);
        assert_eq!(
            metric_with(text, "aisle_footfall_readings_total", "outcome", "baseline"),
            3.0
        );
        assert_eq!(metric_sum(text, "absent_total"), 0.0);
    }

    #[test]
    fn section_renders_toml_the_agent_reads() {
        let mut s = FootfallSection::new(Some("127.0.0.1:1883"), "aisle-test-1/v1");
        s.cameras.push(CameraEntry {
            utc_offset_minutes: Some(60),
            ..CameraEntry::new("door-1", Vendor::Axis, "Main \"front\" entrance")
        });
        s.cameras.push(CameraEntry {
            xovis_values: Some(XovisValues::Absolute),
            ..CameraEntry::new("x-1", Vendor::Xovis, "Side")
        });
        let t = s.toml();
        assert!(t.contains("mqtt = \"127.0.0.1:1883\"\n"), "{t}");
        assert!(
            t.contains("zone = \"Main \\\"front\\\" entrance\"\n"),
            "{t}"
        );
        assert!(t.contains("utc_offset_minutes = 60\n"), "{t}");
        assert!(t.contains("values = \"absolute\"\n"), "{t}");
        assert_eq!(rfc3339(1_795_342_500_000), "2026-11-22T10:15:00Z");
        assert_eq!(
            query_value("2026-11-22T10:15:00+01:00"),
            "2026-11-22T10%3A15%3A00%2B01%3A00"
        );
    }
}
