//! `GET /pickup`: the staff pickup page (`assets/pickup.html`), one self-contained file with its
//! CSS and JavaScript inline, so it works in a store with no WAN.
//!
//! The page is served with a strict content-security-policy: nothing may load from anywhere but
//! the agent itself, and the page's one inline `<script>` and one inline `<style>` are allowed by
//! their SHA-256 hashes rather than `'unsafe-inline'`. An injected script or style (were any data
//! ever to reach the DOM as HTML) would not run. The hashes are computed from the served bytes, so
//! editing the page needs no hash update; a test checks the page keeps to what the policy allows.
use std::sync::LazyLock;

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The page as served.
pub const PICKUP_HTML: &str = include_str!("../../assets/pickup.html");

static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    HeaderValue::from_str(&content_security_policy(PICKUP_HTML))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
});

/// The policy for `html`: its inline script and style by hash, fetches and images from the
/// agent only, no plugins, no `<base>`, no form posts, no framing.
pub fn content_security_policy(html: &str) -> String {
    let script = inline_hash(html, "<script>", "</script>");
    let style = inline_hash(html, "<style>", "</style>");
    format!(
        "default-src 'self'; script-src {script}; style-src {style}; img-src 'self' data:; \
         connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

/// `'sha256-<base64>'` of the text between the first `open` and the next `close`, or `'none'`.
fn inline_hash(html: &str, open: &str, close: &str) -> String {
    let Some(start) = html.find(open).map(|i| i + open.len()) else {
        return "'none'".into();
    };
    let Some(len) = html[start..].find(close) else {
        return "'none'".into();
    };
    let digest = Sha256::digest(&html.as_bytes()[start..start + len]);
    format!("'sha256-{}'", base64(&digest))
}

/// Standard base64 with padding (what CSP hash sources use).
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(super) async fn page() -> Response {
    page_with(PICKUP_HTML, CSP.clone())
}

/// Another self-contained page (the setup page) served the same way, its policy computed from
/// its own bytes.
pub(super) fn html_page(html: &'static str) -> Response {
    let csp = HeaderValue::from_str(&content_security_policy(html))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    page_with(html, csp)
}

fn page_with(html: &'static str, csp: HeaderValue) -> Response {
    let mut r = html.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, csp);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// What every self-contained page must keep to under [`content_security_policy`]: one inline
/// script and one inline style, nothing loaded from elsewhere, no HTML built from data, no
/// inline event handlers.
#[cfg(test)]
pub(crate) fn assert_keeps_to_policy(html: &str) {
    for tag in ["<script", "</script>", "<style", "</style>"] {
        assert_eq!(html.matches(tag).count(), 1, "exactly one {tag}");
    }
    assert!(html.contains("<script>") && html.contains("<style>"));
    let lower = html.to_ascii_lowercase();
    for banned in [
        "style=\"",
        "javascript:",
        "http://",
        "https://",
        "src=",
        "innerhtml",
        "outerhtml",
        "insertadjacenthtml",
        "document.write",
        "eval(",
        "new function",
    ] {
        assert!(!lower.contains(banned), "the page contains `{banned}`");
    }
    // No inline event handler attributes (` onclick="..."` and the like).
    for (i, _) in lower.match_indices(" on") {
        let rest = &lower[i + 3..];
        let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
        assert!(
            !(name_len > 0 && rest[name_len..].starts_with('=')),
            "inline handler near: {}",
            &html[i..(i + 40).min(html.len())]
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        // sha256("") as CSP writes it.
        assert_eq!(
            base64(&Sha256::digest(b"")),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn policy_hashes_exactly_the_inline_script_and_style() {
        let html = "<style>a{}</style><p>x</p><script>alert(1)</script>";
        let csp = content_security_policy(html);
        let script = format!("'sha256-{}'", base64(&Sha256::digest(b"alert(1)")));
        let style = format!("'sha256-{}'", base64(&Sha256::digest(b"a{}")));
        assert!(csp.contains(&format!("script-src {script};")), "{csp}");
        assert!(csp.contains(&format!("style-src {style};")), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(content_security_policy("<p>no script</p>").contains("script-src 'none';"));
    }

    /// The policy allows one inline script and one inline style by hash and nothing else, so the
    /// page must not use what it would block, nor load anything from elsewhere.
    #[test]
    fn the_page_keeps_to_its_policy() {
        assert_keeps_to_policy(PICKUP_HTML);
        let csp = CSP.to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'self'; script-src 'sha256-"),
            "{csp}"
        );
        assert!(csp.contains("style-src 'sha256-"), "{csp}");
    }
}
