//! The real browser for the page tests (pickup, setup, lane): chromedriver on a free port and a
//! headless Debian Chromium it drives, and the waits and gestures a person makes. Without
//! chromedriver or Chromium a test fails (it never skips); `scripts/test` installs both.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// How long a page may take to show what a test waits for.
pub const UI_WAIT: Duration = Duration::from_secs(15);

pub const ENTER: &str = "\u{e007}";
pub const TAB: &str = "\u{e004}";
pub const CONTROL: &str = "\u{e009}";
/// Releases held modifier keys.
pub const RELEASE: &str = "\u{e000}";

/// chromedriver on a free port, killed on drop.
pub struct Chromedriver {
    child: Child,
    pub url: String,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

pub async fn start_chromedriver() -> Chromedriver {
    let driver = binary("CHROMEDRIVER", "/usr/bin/chromedriver");
    assert!(
        driver.is_file(),
        "chromedriver not found at {}: this test needs Debian's `chromium` and `chromium-driver` \
         (apt-get install -y chromium chromium-driver; scripts/test installs them), or \
         CHROMEDRIVER=/path/to/chromedriver",
        driver.display()
    );
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", driver.display()));
    let d = Chromedriver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d
}

/// The device a page is looked at on.
#[derive(Clone, Copy, Debug)]
pub struct Device {
    pub width: u32,
    pub height: u32,
    /// A phone: touch, and twice the pixels.
    pub touch: bool,
}

/// A headless Chromium the size of `device`, with its own profile in `profile`.
pub async fn open_browser(driver: &Chromedriver, profile: &Path, device: Device) -> Client {
    let Device {
        width,
        height,
        touch,
    } = device;
    let chromium = binary("CHROMIUM", "/usr/bin/chromium");
    assert!(
        chromium.is_file(),
        "chromium not found at {}: apt-get install -y chromium chromium-driver, or set CHROMIUM",
        chromium.display()
    );
    let mut options = json!({
        "binary": chromium.to_string_lossy(),
        "args": [
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--lang=en-US",
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.display()),
        ],
    });
    if touch {
        options["mobileEmulation"] = json!({
            "deviceMetrics": { "width": width, "height": height, "pixelRatio": 2.0, "touch": true }
        });
    }
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert("goog:chromeOptions".into(), options);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("chromedriver at {} did not start Chromium: {e}", driver.url))
}

pub fn css(s: &str) -> Locator<'_> {
    Locator::Css(s)
}

/// Waits until the element at `selector` is displayed and its text contains every one of `parts`.
pub async fn wait_text(c: &Client, selector: &str, parts: &[&str]) -> anyhow::Result<String> {
    let deadline = Instant::now() + UI_WAIT;
    let mut last = String::new();
    loop {
        if let Ok(e) = c.find(css(selector)).await
            && e.is_displayed().await.unwrap_or(false)
        {
            last = e.text().await.unwrap_or_default();
            if parts.iter().all(|p| last.contains(p)) {
                return Ok(last);
            }
        }
        ensure!(
            Instant::now() < deadline,
            "`{selector}` never showed {parts:?}; it shows: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_shown(
    c: &Client,
    selector: &str,
) -> anyhow::Result<fantoccini::elements::Element> {
    let deadline = Instant::now() + UI_WAIT;
    loop {
        if let Ok(e) = c.find(css(selector)).await
            && e.is_displayed().await.unwrap_or(false)
        {
            return Ok(e);
        }
        ensure!(Instant::now() < deadline, "`{selector}` never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the button at `selector` can be pressed.
pub async fn wait_enabled(c: &Client, selector: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + UI_WAIT;
    loop {
        let e = wait_shown(c, selector).await?;
        if e.is_enabled().await.unwrap_or(false) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "`{selector}` never enabled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks like a finger: the element first scrolled to the middle of the screen (WebDriver's own
/// scrolling puts it at the top, under a page's sticky header).
pub async fn click(c: &Client, selector: &str) -> anyhow::Result<()> {
    let e = wait_shown(c, selector).await?;
    c.execute(
        "arguments[0].scrollIntoView({block: 'center', inline: 'nearest'})",
        vec![serde_json::to_value(&e)?],
    )
    .await?;
    e.click().await.with_context(|| format!("click {selector}"))
}

/// Types over whatever the field holds, as a person would (select all, type): WebDriver's clear
/// would fire a change event of its own.
pub async fn type_into(c: &Client, selector: &str, text: &str) -> anyhow::Result<()> {
    let e = wait_shown(c, selector).await?;
    e.send_keys(&format!("{CONTROL}a{RELEASE}{text}"))
        .await
        .with_context(|| format!("type into {selector}"))
}

pub async fn is_hidden(c: &Client, selector: &str) -> anyhow::Result<bool> {
    Ok(!c.find(css(selector)).await?.is_displayed().await?)
}

/// Writes a screenshot to `file` (to look at after a run).
pub async fn shot(c: &Client, file: &str) -> anyhow::Result<()> {
    let png = c.screenshot().await?;
    std::fs::write(file, &png).with_context(|| format!("writing {file}"))
}
