//! HQ price to shelf, end to end: the real hub and the real `aisle-agent` binary, whose label
//! planner drives the simulated access point (`aisle_hil::esl_sim`, firmware tags behind a real
//! pseudo-terminal). A batch from HQ reaches every bound label, the tags confirm, the ledger holds
//! `label_confirmed` (and verifies), and the agent's preview is the tag's screen pixel for pixel;
//! a dead tag is reported "not updated" after the deadline without holding up the others; garbage
//! from the access point's port does not bring the agent down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

use serialport::SerialPort;
use std::path::Path;
use std::time::Duration;

use aisle_hil::esl_sim::{EslSim, EslSimConfig, png_path};
use aisle_hil::harness::{Backend, VirtualStore, gtin, wait_for};
use aisle_protocol::esl::LabelId;
use serde_json::{Value, json};

const FIRST: LabelId = LabelId(0x00C0_0001);
const PIN: &str = "2468";

fn label(i: usize) -> LabelId {
    LabelId(FIRST.0 + u32::try_from(i).unwrap())
}

fn labels_config(access_point: &str) -> String {
    let params = argon2::Params::new(8, 1, 1, None).unwrap();
    let hash = aisle_agent::pickup::staff::hash_pin_with(PIN, params).unwrap();
    format!(
        "[pickup]\n[[pickup.staff]]\nname = \"Tech\"\npin_hash = \"{hash}\"\n\n\
         [labels]\naccess_point = \"{access_point}\"\nretry_base_ms = 400\nretry_cap_ms = 2000\n\
         not_updated_after_ms = 4000\n"
    )
}

struct Shop {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Shop {
    async fn new(base: String) -> Shop {
        let http = reqwest::Client::new();
        let r: Value = http
            .post(format!("{base}/v1/staff/sign-in"))
            .json(&json!({ "pin": PIN }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Shop {
            http,
            base,
            token: r["token"].as_str().unwrap().to_string(),
        }
    }

    async fn bind(&self, label: LabelId, gtin: &str, shelf: &str) {
        let r = self
            .http
            .post(format!("{}/v1/labels/bind", self.base))
            .bearer_auth(&self.token)
            .json(&json!({ "label": label.to_string(), "gtin": gtin, "shelf": shelf }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    async fn label(&self, label: LabelId) -> Value {
        self.http
            .get(format!("{}/v1/labels/{label}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until `label` confirmed `minor` as its product's active price.
    async fn wait_confirmed(&self, label: LabelId, minor: i64, within: Duration) -> Value {
        wait_for(
            &format!("label {label} confirms {minor}"),
            within,
            || async {
                let v = self.label(label).await;
                let ok = v["status"] == "confirmed" && v["confirmed"]["price"]["minor"] == minor;
                ok.then_some(v)
            },
        )
        .await
        .unwrap()
    }

    async fn preview(&self, label: LabelId) -> Vec<u8> {
        let r = self
            .http
            .get(format!("{}/v1/labels/{label}/preview.png", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap().to_vec()
    }
}

fn pixels(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes.to_vec()));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn screen(dir: &Path, label: LabelId) -> Vec<u8> {
    std::fs::read(png_path(dir, label)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hq_batch_reaches_every_label_and_a_dead_tag_is_reported_not_updated() {
    let screens = tempfile::tempdir().unwrap();
    let sim = EslSim::start(EslSimConfig {
        checkin: Duration::from_millis(40),
        radio_bytes_per_s: 50_000,
        png_dir: Some(screens.path().to_path_buf()),
        expire_after: Duration::from_secs(2),
        seed: 5,
        ..EslSimConfig::new(FIRST, 3)
    })
    .unwrap();
    let store = VirtualStore::start_configured(Backend::Sqlite, 0, labels_config(sim.path()))
        .await
        .unwrap();
    let api = store.agent.api();
    let goods: Vec<String> = (1..=3).map(gtin).collect();
    store
        .push_prices(
            &[(&goods[0], 350), (&goods[1], 1_280), (&goods[2], 990)],
            None,
        )
        .await
        .unwrap();
    for (g, minor) in goods.iter().zip([350, 1_280, 990]) {
        api.wait_price(g, minor, Duration::from_secs(15))
            .await
            .unwrap();
    }
    let shop = Shop::new(store.agent.url()).await;
    for (i, g) in goods.iter().enumerate() {
        shop.bind(label(i), g, &format!("A1-{i:02}")).await;
    }
    // First content: layer (the product's name) and price.
    for (i, minor) in [350, 1_280, 990].into_iter().enumerate() {
        shop.wait_confirmed(label(i), minor, Duration::from_secs(20))
            .await;
    }

    // HQ changes every price: price-only frames, confirmed by every tag.
    let frames_before = sim.stats().radio.frames_down;
    let batch = store
        .push_prices(
            &[(&goods[0], 299), (&goods[1], 1_190), (&goods[2], 890)],
            None,
        )
        .await
        .unwrap();
    for (i, minor) in [299, 1_190, 890].into_iter().enumerate() {
        let v = shop
            .wait_confirmed(label(i), minor, Duration::from_secs(20))
            .await;
        assert_eq!(v["confirmed"]["batch_id"], batch.as_str(), "{v}");
        assert_eq!(v["wanted"]["version"], v["confirmed"]["version"], "{v}");
    }
    let stats = sim.stats();
    assert!(
        stats.radio.frames_down - frames_before < 3 * 6,
        "a price change is a Fields frame per tag (plus acks): {stats:?}"
    );
    // The preview is the tag's screen, pixel for pixel, and shows the new price.
    for i in 0..3 {
        let (w, h, from_agent) = pixels(&shop.preview(label(i)).await);
        let on_tag = wait_for("the tag's screen", Duration::from_secs(5), || async {
            let (_, _, tag) = pixels(&screen(screens.path(), label(i)));
            (tag == from_agent).then_some(tag)
        })
        .await
        .unwrap();
        assert_eq!((w, h), (296, 128));
        assert_eq!(on_tag, from_agent);
    }

    // A tag dies; the next change reaches the others, and after the deadline the dead one is
    // recorded "not updated" (once) while the lane keeps charging what its shelf shows.
    let dead = label(2);
    sim.set_offline(dead, true).unwrap();
    store
        .push_prices(&[(&goods[0], 279), (&goods[2], 990)], None)
        .await
        .unwrap();
    shop.wait_confirmed(label(0), 279, Duration::from_secs(20))
        .await;
    let v = wait_for(
        "the dead tag is not updated",
        Duration::from_secs(20),
        || async {
            let v = shop.label(dead).await;
            (v["status"] == "not_updated").then_some(v)
        },
    )
    .await
    .unwrap();
    assert!(
        v["not_updated"]["reason"]
            .as_str()
            .unwrap()
            .contains("confirm")
            || v["not_updated"]["reason"]
                .as_str()
                .unwrap()
                .contains("never heard"),
        "{v}"
    );
    assert_eq!(v["confirmed"]["price"]["minor"], 890, "{v}");
    let (status, sale) = api.sell("lane-1:1", &[(&goods[2], 1)]).await.unwrap();
    assert_eq!(status, 201, "{sale}");
    assert_eq!(
        sale["lines"][0]["unit_price"]["minor"], 890,
        "charged what the shelf shows, not the new 9.90: {sale}"
    );
    let label1 = shop.label(label(1)).await;
    assert_eq!(label1["status"], "confirmed", "{label1}");

    // Back online, it catches up and the record clears.
    sim.set_offline(dead, false).unwrap();
    shop.wait_confirmed(dead, 990, Duration::from_secs(20))
        .await;
    let v = shop.label(dead).await;
    assert!(v["not_updated"].is_null(), "{v}");

    // Every label event went up to the hub and was taken.
    api.wait_drained(Duration::from_secs(20)).await.unwrap();
    let verified = store.agent.verify_ledger().unwrap();
    assert!(verified.contains("3 label bindings"), "{verified}");
    sim.shutdown();
    store.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_access_point_port_does_not_bring_the_agent_down() {
    // Our own pseudo-terminal: whatever we write on its master reaches the agent's driver.
    let (mut master, slave) = serialport::TTYPort::pair().unwrap();
    let path = slave.name().unwrap();
    let store = VirtualStore::start_configured(Backend::Sqlite, 0, labels_config(&path))
        .await
        .unwrap();
    let api = store.agent.api();
    let g = gtin(7);
    store.push_prices(&[(&g, 500)], None).await.unwrap();
    api.wait_price(&g, 500, Duration::from_secs(15))
        .await
        .unwrap();
    let shop = Shop::new(store.agent.url()).await;
    shop.bind(label(0), &g, "Z9").await;

    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut noise = Vec::new();
    for round in 0..40 {
        noise.clear();
        for _ in 0..512 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            noise.push(rng.to_le_bytes()[0]);
        }
        if round % 5 == 0 {
            // An oversized run without a delimiter, then one.
            noise.extend(std::iter::repeat_n(0x41, 2_000));
            noise.push(0);
        }
        master.write_all(&noise).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Still serving, the label still planned, and the link counted what it dropped.
    let v = shop.label(label(0)).await;
    assert_eq!(v["status"], "pending", "{v}");
    let metrics = wait_for("dropped frames counted", Duration::from_secs(5), || async {
        let text = reqwest::get(format!("{}/metrics", store.agent.url()))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let dropped = text
            .lines()
            .find(|l| l.starts_with("aisle_label_link_dropped_frames "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        (dropped > 0).then_some(text)
    })
    .await
    .unwrap();
    assert!(metrics.contains("aisle_labels_pending 1"), "{metrics}");
    let (status, _) = api.sell("lane-1:1", &[(&g, 1)]).await.unwrap();
    assert_eq!(status, 201);
    drop(slave);
    store.finish().await.unwrap();
}
