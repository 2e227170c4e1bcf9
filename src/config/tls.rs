//! The public TLS listener's certificate: read and checked with the rest of the config, so a
//! bad pair is refused before start or on reload; the listener picks the pair of the config in
//! force at each handshake, so a reload swaps it without dropping a connection.

use super::file::TlsSection;
use super::Config;
use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub h2: bool,
    pub cert: Arc<CertifiedKey>,
}

pub(super) fn tls_listener(
    section: &TlsSection,
    base_dir: &Path,
    problems: &mut Vec<String>,
) -> Option<TlsListener> {
    let listen = match section.listen.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.push(format!(
                "server.tls.listen: {:?} is not an ip:port address",
                section.listen
            ));
            None
        }
    };
    let cert = load_pair(
        &base_dir.join(&section.cert_file),
        &base_dir.join(&section.key_file),
    )
    .map_err(|e| problems.push(format!("server.tls: {e}")))
    .ok();
    Some(TlsListener {
        listen: listen?,
        h2: section.h2,
        cert: Arc::new(cert?),
    })
}

fn load_pair(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, String> {
    for path in [cert_path, key_path] {
        std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let (cert, key_name) = (cert_path.to_string_lossy(), key_path.to_string_lossy());
    let (chain, key) = pingora::tls::load_certs_and_key_files(&cert, &key_name)
        .ok()
        .flatten()
        .ok_or_else(|| {
            format!("{cert} and {key_name} must hold a PEM certificate chain and a PEM private key")
        })?;
    pingora::tls::install_default_crypto_provider();
    let provider =
        pingora::tls::CryptoProvider::get_default().ok_or("no TLS crypto provider is installed")?;
    // Also checks that the key belongs to the leaf certificate.
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("{cert} with {key_name}: {e} (does the key match the certificate?)"))
}

/// Hands each TLS handshake the certificate of the config in force.
#[derive(Debug)]
pub struct CertFromConfig(pub Arc<ArcSwap<Config>>);

impl ResolvesServerCert for CertFromConfig {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().tls.as_ref().map(|t| t.cert.clone())
    }
}
