//! TLS for the hub's listeners (the devices' MQTT, the HTTP API): a certificate chain and its
//! key from PEM files, read at start and again when they change, so that a renewed certificate
//! is served without a restart. Devices still log in with their id and secret; TLS
//! keeps the secret, the telemetry and the packages private on the way and proves the hub is
//! the hub. Also the hub's side as a client, to an external broker over `mqtts://`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take over its TLS handshake.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// A listener's certificate chain (the server's first) and private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The provider is named: a build holding both of rustls' providers has no process default.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client's TLS settings trusting the PEM certificates in `ca_cert`, or the system's roots
/// when it is empty.
pub fn client_config(ca_cert: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let (certs, origin) = if ca_cert.as_os_str().is_empty() {
        (rustls_native_certs::load_native_certs().certs, "the system's roots".to_string())
    } else {
        (read_certs(ca_cert)?, ca_cert.display().to_string())
    };
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    anyhow::ensure!(added > 0, "no usable CA certificate in {origin}");
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The acceptor for `files`, offering `alpn` protocols (none for MQTT). The files are read now
/// (an error names them) and again when they change.
pub fn acceptor(files: &TlsFiles, alpn: &[&[u8]]) -> anyhow::Result<TlsAcceptor> {
    let resolver = Reloading::new(files.clone())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How often a handshake looks at the files' modification times.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The certificate and key a listener serves, read again from their files when either file's
/// modification time changes (looked at, at most every [`RELOAD_CHECK`], by a handshake). A
/// pair that does not load (say the certificate renewed before its key) is not served: the one
/// in use stays until the files change again and load.
#[derive(Debug)]
struct Reloading {
    files: TlsFiles,
    state: std::sync::Mutex<Served>,
}

#[derive(Debug)]
struct Served {
    key: Arc<rustls::sign::CertifiedKey>,
    /// The files' modification times when last read, whether or not they loaded.
    seen: [Option<std::time::SystemTime>; 2],
    checked: std::time::Instant,
}

impl Reloading {
    fn new(files: TlsFiles) -> anyhow::Result<Reloading> {
        let seen = modified(&files);
        let key = certified_key(&files)?;
        Ok(Reloading { files, state: std::sync::Mutex::new(Served { key, seen, checked: std::time::Instant::now() }) })
    }
}

impl rustls::server::ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let mut served = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if served.checked.elapsed() >= RELOAD_CHECK {
            served.checked = std::time::Instant::now();
            let now = modified(&self.files);
            if now != served.seen {
                served.seen = now;
                match certified_key(&self.files) {
                    Ok(key) => {
                        served.key = key;
                        tracing::info!(cert = %self.files.cert.display(), "certificate changed on disk: serving the new one");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "certificate files changed but do not load; still serving the previous certificate")
                    }
                }
            }
        }
        Some(served.key.clone())
    }
}

fn modified(files: &TlsFiles) -> [Option<std::time::SystemTime>; 2] {
    [&files.cert, &files.key].map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

fn certified_key(files: &TlsFiles) -> anyhow::Result<Arc<rustls::sign::CertifiedKey>> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| anyhow::anyhow!("{}: no private key in PEM: {e}", files.key.display()))?;
    let key = rustls::sign::CertifiedKey::from_der(certs, key, &provider()).with_context(|| {
        format!("{} and {} do not make a certificate and its key", files.cert.display(), files.key.display())
    })?;
    Ok(Arc::new(key))
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate chain: {e}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: no certificate in it", path.display());
    Ok(certs)
}

/// A TCP listener whose connections come out after their TLS handshake, for `axum::serve`.
/// Each handshake runs in a task of its own, so a slow or silent client holds up no other.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (socket, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors, usually: wait rather than spin.
                        tracing::warn!(%error, "cannot accept an https connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, ready) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_WAIT, acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => {
                            let _ = ready.send((stream, peer)).await;
                        }
                        Ok(Err(why)) => tracing::debug!(%peer, %why, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "no TLS handshake within {HANDSHAKE_WAIT:?}"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task ends only once this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
