//! TLS towards a route's PEs (rustls with the ring provider, TLS 1.3 and 1.2).
//!
//! A PE must prove who it is: its certificate chains to the route's CA bundle and
//! names the route's `server_name` (sent as SNI), or, without one, the PE's IP address
//! (an IP SAN: PEs register addresses, not names). A client certificate goes to PEs
//! that ask for one. SIGHUP reads the files again; connections open stay as they are.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::tls::TlsError;
use crate::logs::RateLimitedLog;

/// Where a route's trust in its PEs comes from (the configuration's `pe_tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeTlsSource {
    /// CA certificates (PEM) a PE's certificate must chain to.
    pub ca: PathBuf,
    /// The name PEs' certificates must carry, sent as SNI; `None`: each PE's IP
    /// address.
    pub server_name: Option<String>,
    /// A certificate chain and key (PEM) for PEs that ask for a client certificate.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
}

/// A route's TLS client towards its PEs.
pub struct PeTls {
    source: PeTlsSource,
    /// The route's pool, for logs and metrics.
    pool: String,
    server_name: Option<ServerName<'static>>,
    connectors: RwLock<Connectors>,
    refusals: metrics::Counter,
    log: RateLimitedLog,
}

impl std::fmt::Debug for PeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeTls")
            .field("source", &self.source)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// Two routes' PE TLS are the same when they come from the same files and name (a
/// reload of unchanged settings keeps the route's connections).
impl PartialEq for PeTls {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.pool == other.pool
    }
}

impl Eq for PeTls {}

/// The same client settings with the two ALPN offers.
#[derive(Clone)]
struct Connectors {
    /// `http/1.1` alone (an upgrade, or a route speaking HTTP/1.1).
    http1: TlsConnector,
    /// `h2` first, then `http/1.1`: the PE chooses.
    http2: TlsConnector,
}

const ALPN_HTTP1: &[u8] = b"http/1.1";
const ALPN_H2: &[u8] = b"h2";

impl PeTls {
    /// Reads the files; an error names the file or the name at fault. `pool`: the
    /// route's, for logs and metrics.
    pub fn new(source: PeTlsSource, pool: &str) -> Result<Self, TlsError> {
        let server_name = source
            .server_name
            .as_deref()
            .map(|name| {
                ServerName::try_from(name.to_owned()).map_err(|e| TlsError::ServerName {
                    name: name.to_owned(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        let connectors = RwLock::new(connectors(&source)?);
        Ok(Self {
            source,
            pool: pool.to_owned(),
            server_name,
            connectors,
            refusals: metrics::counter!("rserpool_http_pe_tls_failures_total", "pool" => pool.to_owned()),
            log: RateLimitedLog::new(std::time::Duration::from_secs(1)),
        })
    }

    /// Reads the files again (SIGHUP); on an error the ones in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let connectors = connectors(&self.source)?;
        if let Ok(mut current) = self.connectors.write() {
            *current = connectors;
        }
        Ok(())
    }

    /// The TLS handshake with the PE at `address` over `stream`, offering HTTP/2 by
    /// ALPN when `offer_h2`.
    pub(super) async fn connect(
        &self,
        stream: TcpStream,
        address: SocketAddr,
        offer_h2: bool,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(address.ip().into()));
        let connectors = self
            .connectors
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let connector = if offer_h2 {
            connectors.http2
        } else {
            connectors.http1
        };
        let secured = connector.connect(name, stream).await;
        if let Err(error) = &secured {
            self.refused(address, error);
        }
        secured
    }

    /// A PE failed the handshake: counted, and said at most once a second.
    fn refused(&self, address: SocketAddr, error: &std::io::Error) {
        self.refusals.increment(1);
        if let Some(suppressed) = self.log.permit() {
            tracing::warn!(
                pool = %self.pool,
                pe = %address,
                %error,
                ca = %self.source.ca.display(),
                server_name = self.source.server_name.as_deref().unwrap_or("(the PE's address)"),
                suppressed,
                "TLS handshake with a PE failed: its requests go to the next PE"
            );
        }
    }
}

fn file_error(path: &std::path::Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn connectors(source: &PeTlsSource) -> Result<Connectors, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&source.ca).map_err(|e| file_error(&source.ca, e))? {
        roots
            .add(ca.map_err(|e| file_error(&source.ca, e))?)
            .map_err(|e| file_error(&source.ca, e))?;
    }
    if roots.is_empty() {
        return Err(file_error(&source.ca, "no CA certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match &source.client_certificate {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_error(cert, e))?
                .collect::<Result<_, _>>()
                .map_err(|e| file_error(cert, e))?;
            if chain.is_empty() {
                return Err(file_error(cert, "no certificate in the file"));
            }
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    let http1 = TlsConnector::from(Arc::new(config.clone()));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(Connectors {
        http1,
        http2: TlsConnector::from(Arc::new(config)),
    })
}
