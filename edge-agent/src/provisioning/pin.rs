//! The hub's TLS identity as the gateway pins it: the SHA-256 of the hub's certificate (DER),
//! the same 64 hex digits `aisle-hub tls fingerprint` prints and `POST /v1/enrol` answers.
//!
//! Why a pin and not a CA: a store gateway talks to exactly one hub. A pin needs no name
//! matching (a hub reached by IP, a changed DNS name), no root store on the gateway, and no
//! dates, so a gateway that boots with its clock years off (no RTC) still knows its hub; the
//! clock is checked against the hub's own time instead. The handshake's signature is still
//! verified against the pinned certificate's key, so presenting a copy of the certificate is not
//! enough. A renewed hub certificate means re-pinning (`aisle-agent enroll --force` with a new
//! code, or editing `[gateway] hub_fingerprint` to the new `aisle-hub tls fingerprint`).
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

/// Hex digits in a pin.
pub const FINGERPRINT_HEX_DIGITS: usize = 64;

/// A validated certificate fingerprint: 64 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HubFingerprint(String);

impl HubFingerprint {
    /// Accepts 64 hex digits, either case, optionally in `AB:CD:...` pairs or with a `sha256:`
    /// prefix (how other tools print fingerprints).
    pub fn parse(text: &str) -> Result<HubFingerprint, String> {
        let t = text.trim();
        let t = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .unwrap_or(t);
        if t.len() > 2 * FINGERPRINT_HEX_DIGITS {
            return Err(bad_fingerprint());
        }
        let digits: String = t.chars().filter(|c| *c != ':').collect();
        if digits.len() != FINGERPRINT_HEX_DIGITS || !digits.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(bad_fingerprint());
        }
        Ok(HubFingerprint(digits.to_ascii_lowercase()))
    }

    /// The fingerprint of a certificate.
    pub fn of_certificate(der: &[u8]) -> HubFingerprint {
        HubFingerprint(hex::encode(Sha256::digest(der)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 16 digits, for messages people compare by eye.
    pub fn short(&self) -> &str {
        &self.0[..16]
    }
}

fn bad_fingerprint() -> String {
    format!(
        "a hub fingerprint is {FINGERPRINT_HEX_DIGITS} hex digits (the SHA-256 `aisle-hub tls fingerprint` prints)"
    )
}

impl fmt::Display for HubFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HubFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HubFingerprint({})", self.short())
    }
}

/// What the verifier accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinPolicy {
    /// Only this certificate.
    Pinned(HubFingerprint),
    /// Any certificate (trust on first use, enrolment only): the one presented is recorded and
    /// the caller decides.
    FirstUse,
}

/// What the last handshake presented, shared between the verifier and its owner.
#[derive(Debug, Default)]
struct Seen {
    presented: Option<HubFingerprint>,
    /// Set when the last certificate presented was not the pinned one.
    mismatch: bool,
}

/// A rustls verifier that checks the hub's certificate against the pin, and the handshake's
/// signature against that certificate's key.
#[derive(Debug)]
pub struct PinVerifier {
    policy: PinPolicy,
    provider: Arc<CryptoProvider>,
    seen: Mutex<Seen>,
}

/// Why the hub's certificate was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "hub certificate changed: this gateway pinned {pinned} but the hub presented {presented}; \
     if HQ renewed the hub's certificate, re-enrol (aisle-agent enroll --force) or set [gateway] \
     hub_fingerprint to what `aisle-hub tls fingerprint` prints; otherwise something is \
     intercepting the connection"
)]
pub struct CertificateChanged {
    pub pinned: String,
    pub presented: String,
}

impl PinVerifier {
    pub fn new(policy: PinPolicy) -> Arc<PinVerifier> {
        Arc::new(PinVerifier {
            policy,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            seen: Mutex::new(Seen::default()),
        })
    }

    fn with_seen<T>(&self, f: impl FnOnce(&mut Seen) -> T) -> T {
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// The fingerprint of the certificate the hub presented last.
    pub fn presented(&self) -> Option<HubFingerprint> {
        self.with_seen(|s| s.presented.clone())
    }

    /// When the last handshake failed because the certificate was not the pinned one.
    pub fn mismatch(&self) -> Option<CertificateChanged> {
        let (mismatch, presented) = self.with_seen(|s| (s.mismatch, s.presented.clone()));
        match (&self.policy, mismatch, presented) {
            (PinPolicy::Pinned(pin), true, Some(presented)) => Some(CertificateChanged {
                pinned: pin.to_string(),
                presented: presented.to_string(),
            }),
            _ => None,
        }
    }

    /// A rustls client configuration using this verifier (HTTP/1.1, as the hub serves).
    pub fn client_config(self: &Arc<Self>) -> Result<rustls::ClientConfig, rustls::Error> {
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = HubFingerprint::of_certificate(end_entity.as_ref());
        let ok = match &self.policy {
            PinPolicy::Pinned(pin) => *pin == presented,
            PinPolicy::FirstUse => true,
        };
        self.with_seen(|s| {
            s.presented = Some(presented.clone());
            s.mismatch = !ok;
        });
        if ok {
            Ok(ServerCertVerified::assertion())
        } else {
            let pinned = match &self.policy {
                PinPolicy::Pinned(p) => p.to_string(),
                PinPolicy::FirstUse => String::new(),
            };
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(CertificateChanged {
                    pinned,
                    presented: presented.to_string(),
                }))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An HTTP client for the hub: HTTPS through `verifier` when given, plain HTTP otherwise.
pub fn hub_http(
    verifier: Option<&Arc<PinVerifier>>,
    connect_timeout: Duration,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .no_proxy();
    match verifier {
        Some(v) => {
            let tls = v
                .client_config()
                .map_err(|e| format!("cannot configure TLS: {e}"))?;
            builder = builder.tls_backend_preconfigured(tls).https_only(true);
        }
        None => builder = builder.http1_only(),
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fingerprints_parse_in_the_usual_spellings_and_bad_ones_are_refused() {
        let hex = "ab".repeat(32);
        let fp = HubFingerprint::parse(&hex).unwrap();
        assert_eq!(fp.as_str(), hex);
        assert_eq!(HubFingerprint::parse(&hex.to_uppercase()).unwrap(), fp);
        let pairs = vec!["AB"; 32].join(":");
        assert_eq!(HubFingerprint::parse(&pairs).unwrap(), fp);
        assert_eq!(HubFingerprint::parse(&format!("sha256:{hex}")).unwrap(), fp);
        for bad in [
            "",
            "ab",
            &"g".repeat(64),
            &"a".repeat(65),
            &"a".repeat(1000),
        ] {
            let e = HubFingerprint::parse(bad).unwrap_err();
            assert!(e.contains("aisle-hub tls fingerprint"), "{e}");
        }
        assert_eq!(
            HubFingerprint::of_certificate(b"").as_str(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn the_verifier_accepts_only_the_pinned_certificate_and_remembers_what_it_saw() {
        let cert = CertificateDer::from(b"certificate one".to_vec());
        let other = CertificateDer::from(b"certificate two".to_vec());
        let pin = HubFingerprint::of_certificate(cert.as_ref());
        let name = ServerName::try_from("hub.example").unwrap();
        let v = PinVerifier::new(PinPolicy::Pinned(pin.clone()));
        let now = UnixTime::now();
        assert!(v.verify_server_cert(&cert, &[], &name, &[], now).is_ok());
        assert!(v.mismatch().is_none());
        let e = v
            .verify_server_cert(&other, &[], &name, &[], now)
            .unwrap_err();
        assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");
        let changed = v.mismatch().unwrap();
        assert_eq!(changed.pinned, pin.as_str());
        assert!(changed.to_string().starts_with("hub certificate changed"));
        // Trust on first use records whatever is presented.
        let tofu = PinVerifier::new(PinPolicy::FirstUse);
        assert!(
            tofu.verify_server_cert(&other, &[], &name, &[], now)
                .is_ok()
        );
        assert_eq!(
            tofu.presented(),
            Some(HubFingerprint::of_certificate(other.as_ref()))
        );
        assert!(tofu.mismatch().is_none());
    }
}
