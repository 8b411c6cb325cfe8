//! TLS to the hub: `mqtts://` for the broker, `https://` for package downloads. The hub's
//! certificate must chain to the CA in `hub.ca_cert`, or else to one of the system's roots.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The certificates the hub's must chain to: those of the PEM file `ca_cert`, or the system's
/// roots when it is empty.
#[derive(Debug, Clone)]
pub struct HubRoots(Arc<Vec<CertificateDer<'static>>>);

impl HubRoots {
    pub fn load(ca_cert: &Path) -> anyhow::Result<HubRoots> {
        let certs = if ca_cert.as_os_str().is_empty() {
            rustls_native_certs::load_native_certs().certs
        } else {
            CertificateDer::pem_file_iter(ca_cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("hub.ca_cert {}: not a PEM certificate file", ca_cert.display()))?
        };
        let origin = if ca_cert.as_os_str().is_empty() { "the system".into() } else { ca_cert.display().to_string() };
        anyhow::ensure!(!certs.is_empty(), "no CA certificate found in {origin}: set hub.ca_cert");
        Ok(HubRoots(Arc::new(certs)))
    }

    /// rumqttc's transport for `mqtts://`.
    pub fn mqtt(&self) -> anyhow::Result<rumqttc::Transport> {
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(self.0.iter().cloned());
        anyhow::ensure!(added > 0, "none of the CA certificates could be used");
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(config))))
    }

    /// ureq's TLS settings for `https://` (plain `http://` ignores them).
    pub fn http(&self) -> ureq::tls::TlsConfig {
        let certs = self.0.iter().map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned());
        ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(ureq::tls::RootCerts::from(certs))
            .unversioned_rustls_crypto_provider(provider())
            .build()
    }
}

/// ring: small and portable. Named, not taken from rustls' process default, which a build
/// holding both of rustls' providers (the workspace's, with the hub's) does not have.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
