//! Shelf labels at the store: bindings (all or nothing, every refused row named), confirmations
//! and "not updated" recorded once and replayed by `ledger verify`, and price integrity (a lane
//! never charges more than a confirmed label shows).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use aisle_agent::clock::ManualClock;
use aisle_agent::ledger::{
    BindLabel, BindProblem, DB_FILE, LabelRefusal, LabelShown, LabelStatus, LabelUpdate, Ledger,
    verify,
};
use aisle_protocol::esl::{DynamicFields, LabelId, LayerHash, Panel, content_hash};
use aisle_protocol::{BatchId, Gtin, Money};
use common::{T0, cny, gtin, price, sale};

async fn open(dir: &Path) -> (Ledger, Arc<ManualClock>) {
    let clock = ManualClock::new(T0);
    let l = Ledger::open(dir, clock.clone()).await.unwrap();
    (l, clock)
}

fn bind(label: u32, g: Gtin, shelf: &str) -> BindLabel {
    BindLabel {
        label: LabelId(label),
        gtin: g,
        shelf: shelf.into(),
        panel: Panel::Bw290,
        by: Some("Ana".into()),
    }
}

fn shown(minor: i64, name: &str) -> LabelShown {
    let price = Money::new(minor, cny());
    let fields = DynamicFields::from_money(price).unwrap();
    let layer = LayerHash([7; 8]);
    LabelShown {
        price,
        name: name.into(),
        panel: Panel::Bw290,
        layer,
        fields,
        content: content_hash(Some(layer), Some(&fields)).unwrap(),
    }
}

fn confirmed(label: u32, g: Gtin, version: u64, minor: i64) -> LabelUpdate {
    LabelUpdate::Confirmed {
        label: LabelId(label),
        gtin: g,
        version,
        batch_id: BatchId::parse(&format!("b-{version}")).unwrap(),
        shown: shown(minor, &format!("Oolong tea 500ml #{g}")),
    }
}

#[tokio::test]
async fn an_import_binds_every_row_or_none_and_names_each_refused_row() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = open(dir.path()).await;
    l.stage_prices(vec![price(gtin(1), 1, 350, T0), price(gtin(2), 1, 990, T0)])
        .await
        .unwrap();
    let rows = vec![
        (2, bind(0xA1, gtin(1), "A1-01")),
        (3, bind(0xA2, gtin(9), "A1-02")),
        (4, bind(0xA1, gtin(2), "A1-03")),
        (5, bind(0xA3, gtin(2), "")),
        (6, bind(0xA4, gtin(2), "A1-04")),
    ];
    let Err(LabelRefusal::Rows(errors)) = l.bind_labels(rows).await else {
        panic!("an import with bad rows must be refused");
    };
    let lines: Vec<(usize, BindProblem)> = errors.iter().map(|e| (e.line, e.problem)).collect();
    assert_eq!(
        lines,
        vec![
            (3, BindProblem::NoPrice),
            (4, BindProblem::Duplicate),
            (5, BindProblem::Shelf)
        ]
    );
    assert!(errors[1].message.contains("line 2"), "{errors:?}");
    // Nothing was bound, no event written.
    assert!(l.labels(None, 100).await.unwrap().is_empty());
    assert_eq!(l.view().last_seq, 4);

    let good = vec![
        (2, bind(0xA1, gtin(1), "A1-01")),
        (3, bind(0xA2, gtin(2), "A1-02")),
    ];
    let out = l.bind_labels(good.clone()).await.unwrap();
    assert_eq!((out.bound, out.unchanged), (2, 0));
    // The same import again changes nothing.
    let again = l.bind_labels(good).await.unwrap();
    assert_eq!((again.bound, again.unchanged), (0, 2));
    let all = l.labels(None, 100).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].binding.shelf, "A1-01");
    assert_eq!(all[0].binding.bound_by.as_deref(), Some("Ana"));
    assert_eq!(all[0].status(), LabelStatus::Pending);
    assert_eq!(all[0].wanted.as_ref().unwrap().price.minor, 350);

    let b = l
        .unbind_label(LabelId(0xA1), Some("Ana".into()))
        .await
        .unwrap();
    assert_eq!(b.gtin, gtin(1));
    assert!(matches!(
        l.unbind_label(LabelId(0xA1), None).await,
        Err(LabelRefusal::NotBound(_))
    ));
    assert!(l.label(LabelId(0xA1)).await.unwrap().is_none());
    l.close().await;
    let report = verify(dir.path()).unwrap();
    assert_eq!(report.label_bindings, 1);
}

#[tokio::test]
async fn confirmations_and_not_updated_are_recorded_once_and_replayed_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = open(dir.path()).await;
    l.stage_prices(vec![price(gtin(1), 1, 350, T0)])
        .await
        .unwrap();
    l.bind_labels(vec![(0, bind(0xB1, gtin(1), "B1"))])
        .await
        .unwrap();
    let late = LabelUpdate::NotUpdated {
        label: LabelId(0xB1),
        gtin: gtin(1),
        version: 1,
        batch_id: BatchId::parse("b-1").unwrap(),
        reason: "the tag did not answer".into(),
    };
    let out = l
        .commit_label_updates(vec![late.clone(), late.clone()])
        .await
        .unwrap();
    assert_eq!((out.not_updated, out.ignored), (1, 1));
    let rec = l.label(LabelId(0xB1)).await.unwrap().unwrap();
    assert_eq!(rec.status(), LabelStatus::NotUpdated);

    let out = l
        .commit_label_updates(vec![
            confirmed(0xB1, gtin(1), 1, 350),
            confirmed(0xB1, gtin(1), 1, 350),
            // About a label bound to another product: ignored.
            confirmed(0xB1, gtin(2), 1, 350),
            // Not bound at all: ignored.
            confirmed(0xB9, gtin(1), 1, 350),
        ])
        .await
        .unwrap();
    assert_eq!((out.confirmed, out.ignored), (1, 3));
    let rec = l.label(LabelId(0xB1)).await.unwrap().unwrap();
    assert_eq!(rec.status(), LabelStatus::Confirmed);
    assert!(rec.not_updated.is_none(), "a confirmation clears it");
    assert_eq!(
        rec.confirmed.unwrap().shown,
        shown(350, &format!("Oolong tea 500ml #{}", gtin(1)))
    );
    // A "not updated" for a version the label already confirmed changes nothing.
    let out = l.commit_label_updates(vec![late]).await.unwrap();
    assert_eq!(out.ignored, 1);

    let events = l.events_after(0, 100).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.body.kind()).collect();
    assert_eq!(
        kinds,
        vec![
            "price_staged",
            "price_activated",
            "label_bound",
            "label_not_updated",
            "label_confirmed"
        ]
    );
    l.close().await;
    verify(dir.path()).unwrap();

    // An edited confirmation (a lower price than the label showed) is caught.
    let c = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    c.execute("UPDATE label_shown SET price_minor = 1", [])
        .unwrap();
    drop(c);
    let err = verify(dir.path()).unwrap_err().to_string();
    assert!(err.contains("label_shown"), "{err}");
}

#[tokio::test]
async fn a_lane_charges_the_lower_of_the_active_price_and_the_shelf_label() {
    let dir = tempfile::tempdir().unwrap();
    let (l, clock) = open(dir.path()).await;
    l.stage_prices(vec![price(gtin(1), 1, 350, T0), price(gtin(2), 1, 500, T0)])
        .await
        .unwrap();
    l.bind_labels(vec![
        (0, bind(0xC1, gtin(1), "C1")),
        (0, bind(0xC2, gtin(1), "C2")),
    ])
    .await
    .unwrap();
    // No label confirmed yet: the active price.
    let r = l.record_sale(sale("s-1", &[(gtin(1), 1)])).await.unwrap();
    assert_eq!(r.record.lines[0].unit_price.minor, 350);
    l.commit_label_updates(vec![confirmed(0xC1, gtin(1), 1, 350)])
        .await
        .unwrap();
    // A price rise activates; the labels still show 3.50.
    l.stage_prices(vec![price(gtin(1), 2, 420, T0)])
        .await
        .unwrap();
    let r = l
        .record_sale(sale("s-2", &[(gtin(1), 2), (gtin(2), 1)]))
        .await
        .unwrap();
    assert_eq!(r.record.lines[0].unit_price.minor, 350);
    assert_eq!(
        r.record.lines[0].price_version, 1,
        "the version on the shelf"
    );
    assert_eq!(r.record.lines[0].line_total.minor, 700);
    assert_eq!(
        r.record.lines[1].unit_price.minor, 500,
        "no label: active price"
    );
    // One label confirms the new price; the other still shows the old one: still 3.50.
    l.commit_label_updates(vec![confirmed(0xC2, gtin(1), 2, 420)])
        .await
        .unwrap();
    let r = l.record_sale(sale("s-3", &[(gtin(1), 1)])).await.unwrap();
    assert_eq!(r.record.lines[0].unit_price.minor, 350);
    // Both show 4.20 now.
    l.commit_label_updates(vec![confirmed(0xC1, gtin(1), 2, 420)])
        .await
        .unwrap();
    let r = l.record_sale(sale("s-4", &[(gtin(1), 1)])).await.unwrap();
    assert_eq!(r.record.lines[0].unit_price.minor, 420);
    assert_eq!(r.record.lines[0].price_version, 2);
    // A price cut is charged at once, before any label shows it.
    clock.advance(1_000);
    l.stage_prices(vec![price(gtin(1), 3, 300, T0)])
        .await
        .unwrap();
    let r = l.record_sale(sale("s-5", &[(gtin(1), 1)])).await.unwrap();
    assert_eq!(r.record.lines[0].unit_price.minor, 300);
    // An unbound label no longer counts for the product.
    l.commit_label_updates(vec![confirmed(0xC1, gtin(1), 3, 250)])
        .await
        .unwrap();
    l.unbind_label(LabelId(0xC1), None).await.unwrap();
    let r = l.record_sale(sale("s-6", &[(gtin(1), 1)])).await.unwrap();
    assert_eq!(r.record.lines[0].unit_price.minor, 300);
    l.close().await;
    verify(dir.path()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The HTTP API of an agent without an access point: the technician's flow, the import, the list
// and the preview.

mod api {
    use super::*;
    use aisle_agent::clock::SystemClock;
    use aisle_agent::config::AgentConfig;
    use aisle_agent::{Agent, AgentHandle};
    use aisle_drivers::esl::{LabelFont, NameRenderer, NameText};
    use aisle_firmware::{FrameBuffer, render_label};
    use aisle_protocol::esl::LayerImage;
    use reqwest::StatusCode;
    use serde_json::{Value, json};

    pub struct TestAgent {
        pub _dir: tempfile::TempDir,
        pub agent: AgentHandle,
        pub base: String,
        pub http: reqwest::Client,
    }

    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    pub async fn start() -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let params = argon2::Params::new(8, 1, 1, None).unwrap();
        let hash = aisle_agent::pickup::staff::hash_pin_with("1234", params).unwrap();
        let toml = format!(
            "store = \"S001\"\nhub_url = \"http://127.0.0.1:{}\"\n\
             credential = \"gw-S001-1a2b3c4d.{}\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n\
             [pickup]\n[[pickup.staff]]\nname = \"Ana\"\npin_hash = \"{hash}\"\n\
             [labels]\npanel = \"bw290\"\n",
            closed_port(),
            "ab".repeat(32),
            dir.path().join("data").display()
        );
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, toml).unwrap();
        let config = AgentConfig::load(&file).unwrap();
        let agent = Agent::start(config, Arc::new(SystemClock)).await.unwrap();
        let base = format!("http://{}", agent.local_addr());
        TestAgent {
            _dir: dir,
            agent,
            base,
            http: reqwest::Client::new(),
        }
    }

    impl TestAgent {
        pub async fn sign_in(&self) -> String {
            let r: Value = self
                .http
                .post(format!("{}/v1/staff/sign-in", self.base))
                .json(&json!({ "pin": "1234" }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["token"].as_str().unwrap().to_string()
        }
    }

    async fn answer(r: reqwest::Response) -> (StatusCode, Value) {
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    fn pixels(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes.to_vec()));
        decoder.set_transformations(png::Transformations::EXPAND);
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    #[tokio::test]
    async fn a_technician_binds_by_scanning_and_bad_scans_are_refused_clearly() {
        let t = start().await;
        let l = t.agent.ledger();
        l.stage_prices(vec![
            price(gtin(1), 1, 350, T0),
            price(gtin(2), 1, 1_280, T0),
        ])
        .await
        .unwrap();
        let bind = |body: Value, token: Option<String>| {
            let mut r = t
                .http
                .post(format!("{}/v1/labels/bind", t.base))
                .json(&body);
            if let Some(tok) = token {
                r = r.bearer_auth(tok);
            }
            r.send()
        };
        let body = json!({ "label": "]C000A10001\r\n", "gtin": format!("(01){}", gtin(1)), "shelf": "A3-12" });
        // Binding is a privileged action.
        let (s, v) = answer(bind(body.clone(), None).await.unwrap()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
        let token = t.sign_in().await;
        let (s, v) = answer(bind(body.clone(), Some(token.clone())).await.unwrap()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["label"], "00A10001");
        assert_eq!(v["shelf"], "A3-12");
        assert_eq!(v["bound_by"], "Ana");
        assert_eq!(v["status"], "pending");
        assert_eq!(v["wanted"]["price"]["minor"], 350);
        assert_eq!(v["changed"], true);
        let (_, v) = answer(bind(body, Some(token.clone())).await.unwrap()).await;
        assert_eq!(v["changed"], false);

        for (body, status, code, words) in [
            (
                json!({"label": "00A1000", "gtin": gtin(1).as_str(), "shelf": "A"}),
                400,
                "bad_request",
                "8 hexadecimal",
            ),
            (
                json!({"label": "00A10002", "gtin": "4006381333932", "shelf": "A"}),
                400,
                "bad_request",
                "check digit",
            ),
            (
                json!({"label": "00A10002", "gtin": gtin(9).as_str(), "shelf": "A"}),
                422,
                "no_price",
                "no price",
            ),
            (
                json!({"label": "00A10002", "gtin": gtin(1).as_str(), "shelf": ""}),
                422,
                "bad_shelf",
                "shelf",
            ),
            (
                json!({"label": "00A10002", "gtin": gtin(1).as_str(), "shelf": "A", "panel": "bw999"}),
                400,
                "bad_request",
                "panel",
            ),
            (json!({"label": "00A10002"}), 400, "bad_request", "gtin"),
        ] {
            let (s, v) = answer(bind(body.clone(), Some(token.clone())).await.unwrap()).await;
            assert_eq!(s.as_u16(), status, "{body} -> {v}");
            assert_eq!(v["error"], code, "{body} -> {v}");
            assert!(
                v["message"]
                    .as_str()
                    .unwrap()
                    .to_lowercase()
                    .contains(words),
                "{body} -> {v}"
            );
        }

        // Unknown and malformed ids on the label's own routes.
        let get = |path: &str| t.http.get(format!("{}{path}", t.base)).send();
        assert_eq!(get("/v1/labels/00A1FFFF").await.unwrap().status(), 404);
        assert_eq!(get("/v1/labels/zz").await.unwrap().status(), 400);
        assert_eq!(
            get("/v1/labels/00A1FFFF/preview.png")
                .await
                .unwrap()
                .status(),
            404
        );
        let (s, v) = answer(
            t.http
                .delete(format!("{}/v1/labels/00A1FFFF", t.base))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, 404, "{v}");

        // The import: every bad row named by line, nothing bound; then all of it.
        let import = |csv: &'static str| {
            t.http
                .post(format!("{}/v1/labels/import", t.base))
                .bearer_auth(&token)
                .header("content-type", "text/csv")
                .body(csv)
                .send()
        };
        let bad = Box::leak(
            format!(
                "label,gtin,shelf\n00B00001,{g1},B1\n00B00002,{g9},B2\nnope,{g1},B3\n00B00001,{g2},B4\n",
                g1 = gtin(1),
                g2 = gtin(2),
                g9 = gtin(9)
            )
            .into_boxed_str(),
        );
        let (s, v) = answer(import(bad).await.unwrap()).await;
        assert_eq!(s, 422, "{v}");
        let lines: Vec<u64> = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["line"].as_u64().unwrap())
            .collect();
        assert_eq!(lines, vec![4], "parse errors first: {v}");
        let bad2 = Box::leak(
            format!(
                "label,gtin,shelf\n00B00001,{g1},B1\n00B00002,{g9},B2\n00B00001,{g2},B4\n",
                g1 = gtin(1),
                g2 = gtin(2),
                g9 = gtin(9)
            )
            .into_boxed_str(),
        );
        let (s, v) = answer(import(bad2).await.unwrap()).await;
        assert_eq!(s, 422, "{v}");
        let lines: Vec<u64> = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["line"].as_u64().unwrap())
            .collect();
        assert_eq!(lines, vec![3, 4], "{v}");
        assert_eq!(v["error"], "rows_refused");
        let (_, v) = answer(get("/v1/labels").await.unwrap()).await;
        assert_eq!(
            v["labels"].as_array().unwrap().len(),
            1,
            "nothing imported: {v}"
        );
        let good = Box::leak(
            format!(
                "shelf,label,gtin,panel\nB1,00B00001,{g1},\nB2,00B00002,{g2},bwr290\n",
                g1 = gtin(1),
                g2 = gtin(2)
            )
            .into_boxed_str(),
        );
        let (s, v) = answer(import(good).await.unwrap()).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (v["bound"].as_u64(), v["rows"].as_u64()),
            (Some(2), Some(2))
        );
        let (_, v) = answer(get("/v1/labels?limit=2").await.unwrap()).await;
        let ids: Vec<&str> = v["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["label"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec!["00A10001", "00B00001"]);
        assert_eq!(v["next_after"], "00B00001");
        let (_, v) = answer(get("/v1/labels?after=00B00001").await.unwrap()).await;
        assert_eq!(v["labels"][0]["panel"], "bwr290");
        assert_eq!(get("/v1/labels?status=bogus").await.unwrap().status(), 400);

        // Unbind.
        let (s, v) = answer(
            t.http
                .delete(format!("{}/v1/labels/00B00002", t.base))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (s.as_u16(), v["unbound"].as_bool()),
            (200, Some(true)),
            "{v}"
        );
        assert_eq!(get("/v1/labels/00B00002").await.unwrap().status(), 404);
        // Binding is privileged: the gateway's audit log names who did what.
        let log = aisle_agent::audit::list(&t._dir.path().join("data")).unwrap();
        let done: Vec<(&str, &str)> = log
            .iter()
            .filter(|e| e.action.starts_with("label"))
            .map(|e| (e.actor.as_str(), e.action.as_str()))
            .collect();
        assert_eq!(
            done,
            vec![
                ("staff:Ana", "label_bound"),
                ("staff:Ana", "labels_imported"),
                ("staff:Ana", "label_unbound")
            ]
        );
        t.agent.shutdown().await;
    }

    #[tokio::test]
    async fn the_preview_is_the_firmware_drawing_of_what_the_label_confirmed() {
        let t = start().await;
        let l = t.agent.ledger();
        l.stage_prices(vec![price(gtin(1), 1, 350, T0)])
            .await
            .unwrap();
        l.bind_labels(vec![(0, bind(0xD1, gtin(1), "D1"))])
            .await
            .unwrap();
        let url = format!("{}/v1/labels/000000D1/preview.png", t.base);
        let (s, v) = answer(t.http.get(&url).send().await.unwrap()).await;
        assert_eq!(
            (s.as_u16(), v["error"].as_str()),
            (404, Some("not_confirmed"))
        );
        let desired = t.http.get(format!("{url}?desired=1")).send().await.unwrap();
        assert_eq!(desired.status(), 200);
        assert_eq!(desired.headers()["content-type"], "image/png");
        let desired = desired.bytes().await.unwrap();

        // The label confirms 3.50 with the layer the gateway renders for the name.
        let name = format!("Oolong tea 500ml #{}", gtin(1));
        let renderer = NameRenderer::new(LabelFont::embedded().unwrap());
        let text = NameText {
            name: &name,
            brand: None,
            details: None,
            badge: None,
        };
        let layer = renderer.render_layer(Panel::Bw290, &text).unwrap();
        let money = Money::new(350, cny());
        let fields = DynamicFields::from_money(money).unwrap();
        l.commit_label_updates(vec![LabelUpdate::Confirmed {
            label: LabelId(0xD1),
            gtin: gtin(1),
            version: 1,
            batch_id: BatchId::parse("b-1").unwrap(),
            shown: LabelShown {
                price: money,
                name: name.clone(),
                panel: Panel::Bw290,
                layer: layer.hash,
                fields,
                content: content_hash(Some(layer.hash), Some(&fields)).unwrap(),
            },
        }])
        .await
        .unwrap();
        let shown = t
            .http
            .get(&url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let (w, h, got) = pixels(&shown);
        assert_eq!((w, h), (296, 128));
        // The firmware's own drawing of that content.
        let image = LayerImage::parse(&layer.bytes, Panel::Bw290).unwrap();
        let mut fb = FrameBuffer::new(Panel::Bw290, vec![0u8; Panel::Bw290.frame_bytes()]).unwrap();
        render_label(&mut fb, Some(&image), Some(&fields)).unwrap();
        let expected: Vec<u8> = (0..128u16)
            .flat_map(|y| (0..296u16).map(move |x| (x, y)))
            .flat_map(|(x, y)| aisle_agent::labels::preview::rgb(fb.pixel(x, y)))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(
            shown, desired,
            "confirmed = desired once the label shows it"
        );

        // A new price: the desired preview changes, the confirmed one does not.
        l.stage_prices(vec![price(gtin(1), 2, 299, T0)])
            .await
            .unwrap();
        let again = t
            .http
            .get(&url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(again, shown);
        let desired = t
            .http
            .get(format!("{url}?desired=1"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let (_, _, d) = pixels(&desired);
        assert!(d.iter().zip(&got).filter(|(a, b)| a != b).count() > 50);
        t.agent.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Price integrity as a property: whatever the order of price changes, pushes to labels, lost or
// late confirmations and lane sales, no line is ever charged above what a confirmed label of
// its product shows at that instant (and without labels, the active price).

mod integrity {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Clone, Debug)]
    enum Op {
        /// HQ changes the price of product `g` (active at once).
        Price { g: usize, minor: i64 },
        /// The planner hands label `l` its product's active price.
        Push { l: usize },
        /// The tag's confirmation of what it was last handed arrives (or is lost).
        Confirm { l: usize, lost: bool },
        /// A lane sells product `g`.
        Sale { g: usize, qty: u32 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize, 50..2_000i64).prop_map(|(g, minor)| Op::Price { g, minor }),
            (0..3usize).prop_map(|l| Op::Push { l }),
            (0..3usize, any::<bool>()).prop_map(|(l, lost)| Op::Confirm { l, lost }),
            (0..3usize, 1..4u32).prop_map(|(g, qty)| Op::Sale { g, qty }),
        ]
    }

    /// Labels 0 and 1 sit on product 0's shelf, label 2 on product 1's; product 2 has none.
    const LABEL_OF: [usize; 3] = [0, 0, 1];

    async fn run(ops: Vec<Op>) {
        let dir = tempfile::tempdir().unwrap();
        let (l, _) = open(dir.path()).await;
        let goods = [gtin(1), gtin(2), gtin(3)];
        // Versions and the active price per product, as the ledger has them.
        let mut version = [1u64; 3];
        let mut active = [300i64, 500, 700];
        l.stage_prices((0..3).map(|g| price(goods[g], 1, active[g], T0)).collect())
            .await
            .unwrap();
        l.bind_labels(
            (0..3)
                .map(|i| (0, bind(0xE0 + i as u32, goods[LABEL_OF[i]], "E")))
                .collect(),
        )
        .await
        .unwrap();
        // What each label was handed and what it confirmed.
        let mut handed: HashMap<usize, (u64, i64)> = HashMap::new();
        let mut shown: HashMap<usize, i64> = HashMap::new();
        let mut sales = 0;
        for op in ops {
            match op {
                Op::Price { g, minor } => {
                    version[g] += 1;
                    active[g] = minor;
                    l.stage_prices(vec![price(goods[g], version[g], minor, T0)])
                        .await
                        .unwrap();
                }
                Op::Push { l: i } => {
                    let g = LABEL_OF[i];
                    handed.insert(i, (version[g], active[g]));
                }
                Op::Confirm { l: i, lost } => {
                    let Some((v, minor)) = handed.get(&i).copied() else {
                        continue;
                    };
                    if lost {
                        continue;
                    }
                    let out = l
                        .commit_label_updates(vec![confirmed(
                            0xE0 + i as u32,
                            goods[LABEL_OF[i]],
                            v,
                            minor,
                        )])
                        .await
                        .unwrap();
                    assert_eq!(out.confirmed + out.ignored, 1);
                    shown.insert(i, minor);
                }
                Op::Sale { g, qty } => {
                    sales += 1;
                    let r = l
                        .record_sale(sale(&format!("p-{sales}"), &[(goods[g], qty)]))
                        .await
                        .unwrap();
                    let charged = r.record.lines[0].unit_price.minor;
                    let on_shelf = (0..3)
                        .filter(|i| LABEL_OF[*i] == g)
                        .filter_map(|i| shown.get(&i).copied())
                        .min();
                    if let Some(shelf) = on_shelf {
                        assert!(
                            charged <= shelf,
                            "product {g} charged {charged} but a label shows {shelf}"
                        );
                    }
                    assert_eq!(charged, on_shelf.map_or(active[g], |s| s.min(active[g])));
                    assert_eq!(r.record.lines[0].line_total.minor, charged * i64::from(qty));
                }
            }
        }
        l.close().await;
        verify(dir.path()).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn no_sale_is_charged_above_a_confirmed_label(ops in proptest::collection::vec(op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(run(ops));
        }
    }
}

/// `aisle-agent labels import` on a stopped agent's data dir: all rows or none, each refused row
/// named by line on stderr.
#[tokio::test]
async fn the_import_command_binds_a_file_or_names_every_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let (l, _) = open(&data).await;
        l.stage_prices(vec![price(gtin(1), 1, 350, T0), price(gtin(2), 1, 990, T0)])
            .await
            .unwrap();
        l.close().await;
    }
    let run = |csv: String| {
        let file = dir.path().join("labels.csv");
        std::fs::write(&file, csv).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_aisle-agent"))
            .args(["labels", "import", "--data"])
            .arg(&data)
            .arg(&file)
            .output()
            .unwrap()
    };
    let bad = run(format!(
        "label,gtin,shelf\n00F00001,{},F1\n00F00002,{},F2\nbroken,{},F3\n",
        gtin(1),
        gtin(9),
        gtin(1)
    ));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("line 4:"), "{err}");
    let bad = run(format!(
        "label,gtin,shelf\n00F00001,{},F1\n00F00002,{},F2\n",
        gtin(1),
        gtin(9)
    ));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(err.contains("line 3:") && err.contains("no price"), "{err}");
    let good = run(format!(
        "label,gtin,shelf,panel\n00F00001,{},F1,\n00F00002,{},F2,bwr420\n",
        gtin(1),
        gtin(2)
    ));
    let out = String::from_utf8_lossy(&good.stdout);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(out.contains("2 labels bound"), "{out}");
    let (l, _) = open(&data).await;
    let all = l.labels(None, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].binding.panel, Panel::Bwr420);
    assert!(
        all[0]
            .binding
            .bound_by
            .as_deref()
            .unwrap()
            .contains("labels.csv")
    );
    let log = aisle_agent::audit::list(&data).unwrap();
    assert_eq!(log.len(), 1, "only the import that bound: {log:?}");
    assert_eq!(
        (log[0].actor.as_str(), log[0].action.as_str()),
        ("technician", "labels_imported")
    );
    l.close().await;
    verify(&data).unwrap();
}

/// A "not updated" reason is cut to what the hub takes (64 characters, no control characters).
#[tokio::test]
async fn a_long_not_updated_reason_is_cut_to_what_the_hub_takes() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = open(dir.path()).await;
    l.stage_prices(vec![price(gtin(1), 1, 350, T0)])
        .await
        .unwrap();
    l.bind_labels(vec![(0, bind(0xF1, gtin(1), "F1"))])
        .await
        .unwrap();
    l.commit_label_updates(vec![LabelUpdate::NotUpdated {
        label: LabelId(0xF1),
        gtin: gtin(1),
        version: 1,
        batch_id: BatchId::parse("b-1").unwrap(),
        reason: format!("line\nbreak {}", "x".repeat(300)),
    }])
    .await
    .unwrap();
    let n = l
        .label(LabelId(0xF1))
        .await
        .unwrap()
        .unwrap()
        .not_updated
        .unwrap();
    assert_eq!(n.reason.chars().count(), 64, "{}", n.reason);
    assert!(n.reason.starts_with("linebreak xxx") && n.reason.ends_with('…'));
    l.close().await;
    verify(dir.path()).unwrap();
}
