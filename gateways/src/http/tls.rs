//! TLS termination for HTTP listeners (rustls with the ring provider): several
//! certificates chosen by SNI, ALPN offering h2 and http/1.1, and a reload (SIGHUP)
//! that swaps the certificates for new handshakes while open connections go on.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// One certificate: its PEM files and the names it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSource {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// SNI names (`*.example.com` for subdomains). The first certificate also serves
    /// clients whose name matches none (or that send none).
    pub names: Vec<String>,
}

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("no certificate configured")]
    Empty,
    #[error("server name {name:?}: {reason}")]
    ServerName { name: String, reason: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

struct Loaded {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// Picks a certificate by SNI; `reload` swaps the whole set.
#[derive(Debug)]
pub struct CertificateResolver {
    sources: Vec<CertificateSource>,
    loaded: RwLock<Arc<Vec<Loaded>>>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("names", &self.names)
            .finish()
    }
}

fn load(sources: &[CertificateSource]) -> Result<Vec<Loaded>, TlsError> {
    if sources.is_empty() {
        return Err(TlsError::Empty);
    }
    sources
        .iter()
        .map(|source| {
            let file_error = |path: &PathBuf, reason: String| TlsError::File {
                path: path.display().to_string(),
                reason,
            };
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&source.cert)
                .map_err(|e| file_error(&source.cert, e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| file_error(&source.cert, e.to_string()))?;
            if chain.is_empty() {
                return Err(file_error(
                    &source.cert,
                    "no certificate in the file".into(),
                ));
            }
            let key = PrivateKeyDer::from_pem_file(&source.key)
                .map_err(|e| file_error(&source.key, e.to_string()))?;
            let signing =
                any_supported_type(&key).map_err(|e| file_error(&source.key, e.to_string()))?;
            Ok(Loaded {
                names: source
                    .names
                    .iter()
                    .map(|n| n.to_ascii_lowercase())
                    .collect(),
                key: Arc::new(CertifiedKey::new(chain, signing)),
            })
        })
        .collect()
}

fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => name.strip_suffix(domain).is_some_and(|sub| {
            sub.ends_with('.') && sub.len() > 1 && !sub[..sub.len() - 1].contains('.')
        }),
        None => pattern == name,
    }
}

impl CertificateResolver {
    /// Loads every certificate; an error names the file.
    pub fn new(sources: Vec<CertificateSource>) -> Result<Self, TlsError> {
        let loaded = load(&sources)?;
        Ok(Self {
            sources,
            loaded: RwLock::new(Arc::new(loaded)),
        })
    }

    /// Reads the files again. On error the certificates in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = Arc::new(load(&self.sources)?);
        if let Ok(mut current) = self.loaded.write() {
            *current = loaded;
        }
        Ok(())
    }

    fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let loaded = self.loaded.read().ok()?.clone();
        let name = server_name.map(str::to_ascii_lowercase);
        name.as_deref()
            .and_then(|name| {
                loaded
                    .iter()
                    .find(|l| l.names.iter().any(|p| name_matches(p, name)))
            })
            .or_else(|| loaded.first())
            .map(|l| l.key.clone())
    }
}

impl ResolvesServerCert for CertificateResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(client_hello.server_name())
    }
}

/// A TLS server configuration over `resolver`, offering h2 and http/1.1.
pub fn server_config(resolver: Arc<CertificateResolver>) -> Result<rustls::ServerConfig, TlsError> {
    server_config_for(resolver, &[b"h2", b"http/1.1"])
}

/// A TLS server configuration over `resolver` offering the ALPN `protocols` (`dot` for
/// DNS over TLS).
pub fn server_config_for(
    resolver: Arc<CertificateResolver>,
    protocols: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("*.example.com", "www.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("example.com", "example.com"));
    }

    #[test]
    fn missing_files_are_named() {
        let error = CertificateResolver::new(vec![CertificateSource {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            names: vec![],
        }])
        .unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/cert.pem"),
            "{error}"
        );
        assert!(matches!(
            CertificateResolver::new(vec![]),
            Err(TlsError::Empty)
        ));
    }
}
