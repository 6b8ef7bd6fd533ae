//! Self-checkout lanes for scenarios, the demo and benches: a lane's simulated devices on
//! pseudo-terminals (scanner, bagging scale, receipt printer), the agent's `[checkout]` section
//! for them, barcodes, and a lane screen client over the agent's WebSocket.
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use aisle_drivers::scale::ScaleProtocol;
use aisle_drivers::scanner::{ScanSuffix, Symbology};
use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::printer_sim::{Printed, PrinterSim};
use crate::scale_sim::{ScaleSim, ScaleSimConfig};
use crate::scanner_sim::{Command as ScanCommand, ScannerSim, ScannerSimConfig};

/// Variable-measure layouts of the virtual store (CNY): prefix 21 carries the net weight in
/// grams (priced per kg from the ledger), 20 and 22-29 the price in fen.
pub const STORE_LAYOUTS: &str = r#"country = "CN (Aisle demo)"
currency = "CNY"

[[layout]]
prefixes = ["21"]
layout = "FFIIIIIWWWWWC"
note = "net weight in grams; priced per kg"

[[layout]]
prefixes = ["02", "20", "22", "23", "24", "25", "26", "27", "28", "29"]
layout = "FFIIIIIPPPPPC"
note = "price in fen"
"#;

/// The EAN-13 (with its check digit) of 12 digits.
pub fn ean13(first12: &str) -> String {
    let sum: u32 = first12
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 3 } else { 1 })
        .sum();
    format!("{first12}{}", (10 - sum % 10) % 10)
}

/// A deli scale's label for `item` (5 digits) weighing `grams`: prefix 21.
pub fn weighed_barcode(item: u32, grams: u32) -> String {
    ean13(&format!("21{item:05}{grams:05}"))
}

/// The GTIN-14 a weighed item is priced under (its barcode with the weight zeroed).
pub fn weighed_item_gtin(item: u32) -> String {
    format!("0{}", ean13(&format!("21{item:05}00000")))
}

/// The EAN-13 a scanner reads for a GTIN-14 that starts with 0.
pub fn ean13_of(gtin14: &str) -> String {
    gtin14.strip_prefix('0').unwrap_or(gtin14).to_string()
}

/// One lane's devices, each on its own pseudo-terminal.
pub struct LaneRig {
    pub id: String,
    pub scanner: ScannerSim,
    /// The bagging area (MT-SICS).
    pub scale: ScaleSim,
    pub printer: PrinterSim,
    /// Receipts the printer printed.
    pub printed: std::sync::Mutex<Receiver<Printed>>,
}

impl std::fmt::Debug for LaneRig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneRig")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl LaneRig {
    pub fn start(id: &str) -> Result<LaneRig> {
        let scanner = ScannerSim::start(ScannerSimConfig::new(ScanSuffix::Cr, false))?;
        let scale = ScaleSim::start(ScaleSimConfig::new(ScaleProtocol::MtSics))?;
        let (printer, printed) = PrinterSim::start(None)?;
        Ok(LaneRig {
            id: id.into(),
            scanner,
            scale,
            printer,
            printed: std::sync::Mutex::new(printed),
        })
    }

    /// The shopper scans an EAN-13 at the scanner.
    pub fn scan(&self, ean13: &str) -> Result<()> {
        self.scanner
            .command(ScanCommand::Scan {
                symbology: Symbology::Ean13,
                data: ean13.as_bytes().to_vec(),
            })
            .map(drop)
    }

    /// What lies in the bagging area now, in grams.
    pub fn bag_holds(&self, grams: u32) -> Result<()> {
        self.scale
            .run_script(&format!("weight {}.{:03} kg", grams / 1000, grams % 1000))
    }

    /// The next printed receipt's bytes.
    pub fn receipt(&self, timeout: Duration) -> Result<Vec<u8>> {
        let printed = self
            .printed
            .lock()
            .map_err(|_| anyhow!("printer receiver poisoned"))?;
        match printed.recv_timeout(timeout) {
            Ok(Printed::Receipt(b)) => Ok(b),
            Ok(Printed::Overlong(n)) => bail!("the printer got {n} bytes without a cut"),
            Err(_) => bail!("no receipt printed within {timeout:?}"),
        }
    }

    /// This lane's `[[checkout.lanes]]` entry.
    pub fn toml(&self) -> String {
        format!(
            "[[checkout.lanes]]\nid = \"{}\"\nscanner = {{ path = \"{}\" }}\nscale = {{ path = \"{}\", protocol = \"mt-sics\" }}\nprinter = {{ path = \"{}\", width = 42, encoding = \"gbk\" }}\n",
            self.id,
            self.scanner.path(),
            self.scale.path(),
            self.printer.path()
        )
    }
}

/// A product's store-local rules for `[[checkout.items]]`.
#[derive(Clone, Debug)]
pub struct ItemRule {
    pub gtin: String,
    pub age_min: Option<u8>,
    pub weight_g: Option<u32>,
}

/// The agent's `[checkout]` section for `rigs` (and lanes without devices named in `bare`).
/// `layouts` is written next to the config.
pub fn checkout_section(
    dir: &Path,
    rigs: &[&LaneRig],
    bare: &[&str],
    items: &[ItemRule],
    extra: &str,
) -> Result<String> {
    std::fs::create_dir_all(dir)?;
    let layouts = dir.join("layouts.toml");
    std::fs::write(&layouts, STORE_LAYOUTS)?;
    let mut t = format!(
        "[checkout]\ncurrency = \"CNY\"\nheader = [\"Aisle Harbour Road\", \"1 Harbour Road\"]\nlayouts = \"{}\"\npayment_timeout_ms = 5000\n{extra}\n",
        layouts.display()
    );
    for it in items {
        t.push_str(&format!("\n[[checkout.items]]\ngtin = \"{}\"\n", it.gtin));
        if let Some(a) = it.age_min {
            t.push_str(&format!("age_min = {a}\n"));
        }
        if let Some(w) = it.weight_g {
            t.push_str(&format!("weight_g = {w}\n"));
        }
    }
    for r in rigs {
        t.push('\n');
        t.push_str(&r.toml());
    }
    for id in bare {
        t.push_str(&format!("\n[[checkout.lanes]]\nid = \"{id}\"\n"));
    }
    Ok(t)
}

/// A lane screen: the agent's lane WebSocket.
pub struct LaneScreen {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The view of the latest update.
    pub view: Value,
}

impl std::fmt::Debug for LaneScreen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneScreen").finish_non_exhaustive()
    }
}

impl LaneScreen {
    /// Connects to lane `lane` of the agent at `agent_url` (`http://...`); reads the first
    /// update (the lane's current view).
    pub async fn connect(agent_url: &str, lane: &str) -> Result<LaneScreen> {
        let url = format!(
            "{}/v1/lanes/{lane}/ws",
            agent_url.replacen("http://", "ws://", 1)
        );
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .with_context(|| format!("connect {url}"))?;
        let mut s = LaneScreen {
            ws,
            view: Value::Null,
        };
        s.next(Duration::from_secs(10)).await?;
        Ok(s)
    }

    /// The next update.
    pub async fn next(&mut self, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.ws.next())
                .await
                .map_err(|_| anyhow!("no lane update within {timeout:?}"))?
                .ok_or_else(|| anyhow!("the lane closed the WebSocket"))??;
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t)?;
                if !v["view"].is_null() {
                    self.view = v["view"].clone();
                }
                return Ok(v);
            }
        }
    }

    /// Reads updates until one whose event kind is in `kinds`; fails on a kind in
    /// `["scan_refused", "unknown_item", "refused", "error", "payment_failed",
    /// "payment_unresolved"]` that was not asked for.
    pub async fn until(&mut self, kinds: &[&str], timeout: Duration) -> Result<Value> {
        const TROUBLE: &[&str] = &[
            "scan_refused",
            "unknown_item",
            "refused",
            "error",
            "payment_failed",
            "payment_unresolved",
            "attendant_refused",
        ];
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no {kinds:?} update within {timeout:?}");
            }
            let u = self.next(left).await?;
            let kind = u["event"]["kind"].as_str().unwrap_or_default();
            if kinds.contains(&kind) {
                return Ok(u);
            }
            if TROUBLE.contains(&kind) {
                bail!("the lane said {kind}: {}", u["event"]);
            }
        }
    }

    /// Sends one request (JSON).
    pub async fn send(&mut self, request: Value) -> Result<()> {
        self.ws
            .send(Message::Text(request.to_string().into()))
            .await?;
        Ok(())
    }
}
