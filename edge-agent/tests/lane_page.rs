//! The self-checkout lane screen (`GET /lane/{lane}`) end to end, in a real headless Chromium
//! driven over WebDriver (`chromedriver`, Debian's `chromium` and `chromium-driver`;
//! `scripts/test` installs them). A real agent (hub down) runs one lane with its simulated card
//! terminal; the page takes typed barcodes, shows the lines and the total, pays, shows the
//! receipt link, and the link opens the receipt page with the lines and the total. The ledger is
//! checked after.
//!
//! Without chromedriver the browser test fails (it does not skip): set `CHROMEDRIVER` and
//! `CHROMIUM` to use other binaries than `/usr/bin/chromedriver` and `/usr/bin/chromium`. The
//! lane screen is saved as `/tmp/lane-page.png` and the receipt as `/tmp/lane-receipt.png`.
#![allow(clippy::unwrap_used)]

mod browser;

use std::net::TcpListener;
use std::sync::Arc;

use aisle_agent::clock::SystemClock;
use aisle_agent::config::{AgentConfig, ClockConfig, SyncConfig};
use aisle_agent::{Agent, AgentHandle};
use aisle_protocol::sync::PriceChange;
use aisle_protocol::{BatchId, Currency, Gtin, Money, SaleId, UtcMillis};
use anyhow::{Context, ensure};
use fantoccini::Client;

use browser::*;

/// A product name that would be markup if a page ever put data in the DOM as HTML.
const MARKUP_NAME: &str = "Chili oil <b>extra hot</b>";
/// The kiosk display.
const VIEWPORT: (u32, u32) = (1280, 800);

fn gtin(n: u64) -> Gtin {
    Gtin::from_index(690_123_450_000 + n).unwrap()
}

fn price(g: Gtin, minor: i64, name: &str) -> PriceChange {
    PriceChange {
        gtin: g,
        version: 1,
        price: Money::new(minor, Currency::parse("GBP").unwrap()),
        name: name.into(),
        effective_at: UtcMillis(UtcMillis::now().0 - 60_000),
        batch_id: BatchId::parse("b-1").unwrap(),
    }
}

struct Store {
    agent: AgentHandle,
    base: String,
    _dir: tempfile::TempDir,
}

async fn start_store() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let hub_port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let checkout: toml::Table = r#"
currency = "GBP"
header = ["Aisle Market", "1 High Street"]

[[lanes]]
id = "1"
"#
    .parse()
    .unwrap();
    let config = AgentConfig {
        store: "S001".parse().unwrap(),
        hub_url: format!("http://127.0.0.1:{hub_port}"),
        credential: format!("gw-S001-1a2b3c4d.{}", "ab".repeat(32)),
        gateway: None,
        status_panel: None,
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        sync: SyncConfig {
            backoff_base_ms: 20,
            backoff_cap_ms: 200,
            ..SyncConfig::default()
        },
        clock: ClockConfig::default(),
        labels: None,
        checkout: Some(checkout),
        footfall: None,
        pickup: None,
    };
    let agent = Agent::start(config, Arc::new(SystemClock)).await.unwrap();
    agent
        .ledger()
        .stage_prices(vec![
            price(gtin(1), 350, "Oolong tea 500ml"),
            price(gtin(2), 1_275, MARKUP_NAME),
        ])
        .await
        .unwrap();
    let base = format!("http://{}", agent.local_addr());
    Store {
        agent,
        base,
        _dir: dir,
    }
}

/// The shopper's flow. Returns the sale id (an error, not a panic, so the browser is always
/// closed).
async fn shopper_flow(c: &Client, s: &Store) -> anyhow::Result<String> {
    c.goto(&format!("{}/lane/1", s.base)).await?;
    ensure!(c.title().await? == "Self-checkout");
    wait_text(c, "#phase", &["Ready"]).await?;
    wait_text(c, "#lane-name", &["1"]).await?;
    ensure!(
        !c.find(css("#pay")).await?.is_enabled().await?,
        "Pay with nothing scanned"
    );

    // A typed barcode (Enter adds it): the line, its price and the total.
    type_into(c, "#code", &format!("{}{ENTER}", gtin(1))).await?;
    wait_text(c, "#lines", &["Oolong tea 500ml", "1 × 3.50", "3.50"]).await?;
    wait_text(c, "#total", &["3.50 GBP"]).await?;
    wait_text(c, "#items", &["1 item"]).await?;
    wait_text(c, "#message", &["Oolong tea 500ml 3.50"]).await?;
    // The Add button too, and an unknown item is said in words.
    type_into(c, "#code", &gtin(9).to_string()).await?;
    click(c, "#scan").await?;
    wait_text(c, "#message", &["is not known here"]).await?;
    type_into(c, "#code", &format!("{}{ENTER}", gtin(2))).await?;
    let shown = wait_text(c, "#lines", &[MARKUP_NAME, "12.75"]).await?;
    ensure!(shown.contains("Oolong tea 500ml"), "{shown:?}");
    ensure!(
        c.find_all(css("#lines b")).await?.is_empty(),
        "a product name was put in the DOM as HTML"
    );
    wait_text(c, "#total", &["16.25 GBP"]).await?;
    wait_text(c, "#items", &["2 items"]).await?;
    ensure!(c.find_all(css("#lines li")).await?.len() == 2);

    // Pay: the receipt link.
    wait_enabled(c, "#pay").await?;
    click(c, "#pay").await?;
    wait_text(c, "#phase", &["Paid"]).await?;
    wait_text(c, "#receipt-box", &["Paid.", "Your digital receipt"]).await?;
    wait_text(c, "#total", &["16.25 GBP"]).await?;
    let href = c
        .find(css("#receipt"))
        .await?
        .attr("href")
        .await?
        .context("no receipt link")?;
    let prefix = format!("{}/receipts/", s.base);
    ensure!(href.starts_with(&prefix), "receipt link {href:?}");
    let sale_id = href[prefix.len()..]
        .split_once("?k=")
        .context("no key in the receipt link")?
        .0
        .to_string();
    ensure!(
        !c.find(css("#pay")).await?.is_enabled().await?,
        "Pay after paying"
    );
    shot(c, "/tmp/lane-page.png").await?;

    // Follow the link: the receipt page with the lines and the total.
    click(c, "#receipt").await?;
    wait_text(c, "#footer", &["Sale", sale_id.as_str(), "paid by card"]).await?;
    ensure!(c.title().await? == "Your receipt");
    wait_text(c, "#store", &["Aisle Market"]).await?;
    wait_text(c, "#address", &["1 High Street"]).await?;
    let receipt = wait_text(
        c,
        "#lines",
        &[
            "Oolong tea 500ml",
            "1 × 3.50",
            MARKUP_NAME,
            "12.75",
            "Total GBP",
            "16.25",
        ],
    )
    .await?;
    ensure!(
        receipt.find("Oolong tea") < receipt.find("Chili oil"),
        "{receipt:?}"
    );
    ensure!(
        c.find_all(css("#lines b")).await?.is_empty(),
        "a product name was put in the DOM as HTML on the receipt"
    );
    ensure!(c.current_url().await?.as_str() == href);
    shot(c, "/tmp/lane-receipt.png").await?;
    Ok(sale_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_pay_and_open_the_receipt_in_headless_chromium() {
    let driver = start_chromedriver().await;
    let store = start_store().await;
    let profile = tempfile::tempdir().unwrap();
    let kiosk = Device {
        width: VIEWPORT.0,
        height: VIEWPORT.1,
        touch: false,
    };
    let client = open_browser(&driver, profile.path(), kiosk).await;
    let outcome = shopper_flow(&client, &store).await;
    if outcome.is_err()
        && let Ok(png) = client.screenshot().await
    {
        let _ = std::fs::write("/tmp/lane-failure.png", png);
    }
    let closed = client.close().await;
    let sale_id = match outcome {
        Ok(id) => id,
        Err(e) => panic!("{e:#} (screenshot: /tmp/lane-failure.png)"),
    };
    closed.unwrap();

    // The sale the page paid is in the ledger, as the page showed it.
    let sale = store
        .agent
        .ledger()
        .sale(SaleId::parse(&sale_id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sale.record.total.minor, 1_625);
    let lines: Vec<(Gtin, u32)> = sale.record.lines.iter().map(|l| (l.gtin, l.qty)).collect();
    assert_eq!(lines, vec![(gtin(1), 1), (gtin(2), 1)]);
    assert_eq!(store.agent.ledger().stats().sales_committed, 1);
    store.agent.shutdown().await;
}
