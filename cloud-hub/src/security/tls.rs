//! HTTPS for a self-hosted HQ: a private CA and a server certificate (`aisle-hub tls init`),
//! loading them for `serve --tls-cert --tls-key`, the certificate fingerprint gateways pin, and
//! the listener that serves TLS with rustls (ring provider: no C toolchain beyond `cc`).
//!
//! TLS handshakes run on their own tasks, with a timeout, so a client that connects and stays
//! silent never holds up the accept loop.
use std::fmt;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

/// File names `tls init` writes in its directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server-key.pem";

/// Why TLS material could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists; move it away or choose another --dir")]
    Exists(PathBuf),
    #[error("give at least one --host (a DNS name or IP address the hub is reached by)")]
    NoHosts,
    #[error("making the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: no {what} found (expected PEM)")]
    Pem { path: PathBuf, what: &'static str },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// What `tls init` wrote.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// SHA-256 of the server certificate's DER, hex.
    pub fingerprint: String,
}

/// SHA-256 of a certificate's DER as 64 lowercase hex digits: what gateways pin.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to a new file (never overwrites) with `mode`.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                TlsError::Exists(path.to_path_buf())
            } else {
                TlsError::Io {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?;
    f.write_all(contents).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    // The umask may have narrowed the mode, never widened it; set it exactly.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    Ok(())
}

/// Makes a private CA (10 years) and a server certificate for `hosts` (DNS names or IP
/// addresses; about 2 years) in `dir`: `ca.pem`, `ca-key.pem`, `server.pem` (the server
/// certificate, then the CA's), `server-key.pem`. Keys are written mode 0600, certificates
/// 0644. Refuses to overwrite any file.
pub fn init(dir: &Path, hosts: &[String]) -> Result<TlsFiles, TlsError> {
    if hosts.is_empty() {
        return Err(TlsError::NoHosts);
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let files = [CA_CERT_FILE, CA_KEY_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE].map(|f| dir.join(f));
    if let Some(existing) = files.iter().find(|p| p.exists()) {
        return Err(TlsError::Exists(existing.clone()));
    }
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Aisle hub private CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = now - time::Duration::days(1);
    ca_params.not_after = now + time::Duration::days(3650);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, hosts[0].as_str());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(825);
    let server_cert = params.signed_by(&server_key, &issuer)?;

    let [ca_cert_path, ca_key_path, server_cert_path, server_key_path] = files;
    write_new(&ca_key_path, ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_new(
        &server_key_path,
        server_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_new(&ca_cert_path, ca_cert.pem().as_bytes(), 0o644)?;
    let chain = format!("{}{}", server_cert.pem(), ca_cert.pem());
    write_new(&server_cert_path, chain.as_bytes(), 0o644)?;
    Ok(TlsFiles {
        ca_cert: ca_cert_path,
        ca_key: ca_key_path,
        server_cert: server_cert_path,
        server_key: server_key_path,
        fingerprint: fingerprint(server_cert.der()),
    })
}

/// Reads the certificate chain of a PEM file (the server's certificate first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The fingerprint of the first certificate in a PEM file.
pub fn fingerprint_of_file(path: &Path) -> Result<String, TlsError> {
    Ok(fingerprint(load_certs(path)?[0].as_ref()))
}

/// A certificate chain and key ready to serve, with the fingerprint gateways pin.
#[derive(Clone)]
pub struct TlsIdentity {
    config: Arc<ServerConfig>,
    fingerprint: String,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Loads PEM files. A key file readable by others is served but warned about.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let certs = load_certs(cert)?;
        let key_bytes = fs::read(key).map_err(io_err(key))?;
        let meta = fs::metadata(key).map_err(io_err(key))?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %key.display(),
                "the TLS key file is readable by others; chmod 600 it"
            );
        }
        let private = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|_| TlsError::Pem {
            path: key.to_path_buf(),
            what: "private key",
        })?;
        let fingerprint = fingerprint(certs[0].as_ref());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, private)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsIdentity {
            config: Arc::new(config),
            fingerprint,
        })
    }

    /// SHA-256 of the served certificate's DER, hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// Accepts TCP connections and hands on those that completed a TLS handshake.
#[derive(Debug)]
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, identity: &TlsIdentity) -> std::io::Result<Self> {
        let local_addr = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(identity.config.clone());
        let (tx, ready) = mpsc::channel(64);
        let accept_task = tokio::spawn(accept_loop(tcp, acceptor, tx));
        Ok(TlsListener {
            local_addr,
            ready,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (stream, addr) = match tcp.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, as axum does.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let sender = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = sender.send((tls, addr)).await;
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
            }
        });
        if tx.is_closed() {
            return;
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when the listener is dropped; wait for shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn init_writes_keys_0600_refuses_to_overwrite_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let files = init(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        for key in [&files.ca_key, &files.server_key] {
            let mode = fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        assert_eq!(load_certs(&files.server_cert).unwrap().len(), 2);
        let id = TlsIdentity::load(&files.server_cert, &files.server_key).unwrap();
        assert_eq!(id.fingerprint(), files.fingerprint);
        assert_eq!(
            fingerprint_of_file(&files.server_cert).unwrap(),
            files.fingerprint
        );
        assert!(matches!(
            init(dir.path(), &["localhost".into()]),
            Err(TlsError::Exists(_))
        ));
        assert!(matches!(init(dir.path(), &[]), Err(TlsError::NoHosts)));
        // A key file that holds no key is refused with its name.
        let err = TlsIdentity::load(&files.server_cert, &files.server_cert).unwrap_err();
        assert!(err.to_string().contains("private key"), "{err}");
    }
}
