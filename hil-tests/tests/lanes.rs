//! Self-checkout lanes end to end: the real hub and agent binaries, the lanes' scanners, bagging
//! scales and receipt printers simulated on real pseudo-terminals, a lane screen on the agent's
//! WebSocket, and the store's WAN switched off and on by the fault proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use aisle_hil::harness::{Backend, VirtualStore, gtin, wait_for};
use aisle_hil::lanes::{
    ItemRule, LaneRig, LaneScreen, checkout_section, ean13_of, weighed_barcode, weighed_item_gtin,
};
use aisle_hil::pickup::pin_hash;
use aisle_hil::scanner_sim::Command as ScanCommand;
use anyhow::{Result, bail};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);
const STAFF_PIN: &str = "4711";

fn staff_section() -> Result<String> {
    Ok(format!(
        "[pickup]\n\n[[pickup.staff]]\nname = \"Ana\"\npin_hash = \"{}\"\n",
        pin_hash(STAFF_PIN)?
    ))
}

/// Waits until the lane's view says payment may start (the bagging scale is weighed about once
/// a second).
async fn until_can_pay(screen: &mut LaneScreen) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while screen.view["can_pay"] != true {
        if Instant::now() > deadline {
            bail!("the lane never allowed payment: {}", screen.view);
        }
        screen.next(WAIT).await?;
    }
    Ok(())
}

async fn store_with_lanes(backend: Backend, rigs: &[&LaneRig]) -> Result<VirtualStore> {
    let dir = tempfile::tempdir()?;
    let items = [
        ItemRule {
            gtin: gtin(1),
            age_min: None,
            weight_g: Some(300),
        },
        ItemRule {
            gtin: gtin(5),
            age_min: Some(18),
            weight_g: Some(750),
        },
    ];
    let extra = format!(
        "{}\n{}",
        staff_section()?,
        checkout_section(dir.path(), rigs, &[], &items, "")?
    );
    let store = VirtualStore::start_configured(backend, 0, extra).await?;
    // The layouts file must outlive the agent's start only (read once).
    drop(dir);
    let apples = weighed_item_gtin(1);
    store
        .push_prices(&[(&gtin(1), 1280), (&gtin(5), 5990), (&apples, 1299)], None)
        .await?;
    let api = store.agent.api();
    api.wait_price(&gtin(1), 1280, WAIT).await?;
    api.wait_price(&apples, 1299, WAIT).await?;
    Ok(store)
}

/// A basket with a weighed item and an age-restricted one, sold at a lane with the WAN down:
/// scanner, bagging scale and printer on ptys; the sale reaches HQ exactly once when the WAN is
/// back, weighed line and all. The other lane meanwhile meets an unknown item, a bad check digit
/// and line noise, and says so in plain words.
async fn offline_basket(backend: Backend) -> Result<()> {
    let one = LaneRig::start("1")?;
    let two = LaneRig::start("2")?;
    let store = store_with_lanes(backend, &[&one, &two]).await?;
    let url = store.agent.url();
    let mut screen = LaneScreen::connect(&url, "1").await?;
    let mut other = LaneScreen::connect(&url, "2").await?;
    store.proxy.link_down();

    one.scan(&ean13_of(&gtin(1)))?;
    let u = screen.until(&["line_added"], WAIT).await?;
    assert_eq!(u["event"]["line"]["line_total"]["minor"], 1280);
    one.bag_holds(302)?;
    one.scan(&weighed_barcode(1, 1234))?;
    let u = screen.until(&["line_added"], WAIT).await?;
    // 1.234 kg at 12.99 per kg, rounded half up.
    assert_eq!(u["event"]["line"]["weight_g"], 1234);
    assert_eq!(u["event"]["line"]["line_total"]["minor"], 1603);
    one.bag_holds(302 + 1234)?;
    one.scan(&ean13_of(&gtin(5)))?;
    let u = screen.until(&["line_added"], WAIT).await?;
    // The age check (and, until the apples are in the bag, maybe the bagging weight).
    let alerts: Vec<&serde_json::Value> = u["view"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["alert"])
        .collect();
    assert!(alerts.contains(&&json!("age")), "{}", u["view"]);
    assert_eq!(u["view"]["can_pay"], false);
    one.bag_holds(302 + 1234 + 748)?;
    screen
        .send(json!({"type": "attendant", "pin": STAFF_PIN, "action": "approve"}))
        .await?;
    screen.until(&["approved"], WAIT).await?;
    until_can_pay(&mut screen).await?;
    assert_eq!(screen.view["total"]["minor"], 1280 + 1603 + 5990);

    // The other lane: an unknown product, a bad check digit, noise.
    two.scan("4006381333932")?;
    let u = other.until(&["scan_refused"], WAIT).await?;
    assert!(
        u["event"]["message"]
            .as_str()
            .unwrap()
            .contains("check digit"),
        "{u}"
    );
    two.scan(&ean13_of(&gtin(77)))?;
    let u = other.until(&["unknown_item"], WAIT).await?;
    assert!(
        u["event"]["message"]
            .as_str()
            .unwrap()
            .contains("not known")
    );
    two.scanner.command(ScanCommand::Noise(12))?;
    other.until(&["scan_refused"], WAIT).await?;
    assert_eq!(other.view["lines"].as_array().unwrap().len(), 0);

    screen.send(json!({"type": "pay"})).await?;
    let u = screen.until(&["sale_committed"], WAIT).await?;
    let sale_id = u["event"]["sale_id"].as_str().unwrap().to_string();
    assert_eq!(u["view"]["phase"], "paid");
    let receipt = one.receipt(WAIT)?;
    let text = String::from_utf8_lossy(&receipt);
    assert!(text.contains(&sale_id), "the receipt names the sale");
    assert!(
        text.contains("88.73"),
        "the receipt shows the total: {text}"
    );
    // The digital receipt link on the screen opens.
    let link = u["event"]["receipt_url"].as_str().unwrap();
    let json_link = link.replacen("/receipts/", "/v1/receipts/", 1);
    let r: serde_json::Value = reqwest::get(&json_link).await?.json().await?;
    assert_eq!(r["total"], "88.73");
    assert_eq!(r["lines"][1]["weight_g"], 1234);

    store.proxy.link_up();
    let api = store.agent.api();
    api.wait_drained(WAIT).await?;
    let sales = store.hq.sales(&store.store).await?;
    let ours: Vec<_> = sales.iter().filter(|s| s["sale_id"] == sale_id).collect();
    assert_eq!(ours.len(), 1, "HQ holds the lane's sale exactly once");
    let stock = wait_for("HQ stock of the weighed item", WAIT, || async {
        let s = store
            .hq
            .get(&format!(
                "/v1/stores/{}/stock?gtin={}",
                store.store,
                weighed_item_gtin(1)
            ))
            .await
            .ok()?;
        (s["on_hand"] == -1234).then_some(s)
    })
    .await?;
    // Sold by weight, stocked in grams.
    assert_eq!(stock["on_hand"], -1234);
    store.agent.verify_ledger()?;
    store.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_basket_with_a_weighed_item_sold_offline_reaches_hq_once_sqlite() -> Result<()> {
    offline_basket(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_basket_with_a_weighed_item_sold_offline_reaches_hq_once_postgres() -> Result<()> {
    offline_basket(Backend::Postgres).await
}

/// Something unscanned in the bagging area stops payment until it is taken out; a bagging scale
/// that answers garbage is reported to the attendant, who can let the shopper go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bagging_area_guards_the_basket() -> Result<()> {
    let one = LaneRig::start("1")?;
    let store = store_with_lanes(Backend::Sqlite, &[&one]).await?;
    let mut screen = LaneScreen::connect(&store.agent.url(), "1").await?;
    one.scan(&ean13_of(&gtin(1)))?;
    screen.until(&["line_added"], WAIT).await?;
    one.bag_holds(300)?;
    until_can_pay(&mut screen).await?;
    // An unscanned bottle goes into the bag.
    one.bag_holds(1_050)?;
    let u = screen.until(&["bagging"], WAIT).await?;
    assert_eq!(u["view"]["alerts"][0]["alert"], "weight");
    assert!(
        u["view"]["alerts"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Unexpected weight")
    );
    screen.send(json!({"type": "pay"})).await?;
    let u = screen.until(&["refused"], WAIT).await?;
    assert!(
        u["event"]["message"]
            .as_str()
            .unwrap()
            .contains("Unexpected weight"),
        "pay is refused while the weight is off: {u}"
    );
    // Taken out again.
    one.bag_holds(299)?;
    until_can_pay(&mut screen).await?;
    // The scale starts answering garbage: after a few tries the attendant is called.
    one.scale.run_script("garbage 40")?;
    let u = screen
        .until(&["device_alert"], Duration::from_secs(30))
        .await?;
    assert_eq!(u["view"]["alerts"][0]["alert"], "device");
    screen
        .send(json!({"type": "attendant", "pin": STAFF_PIN, "action": "approve"}))
        .await?;
    screen.until(&["approved"], WAIT).await?;
    store.finish().await
}
