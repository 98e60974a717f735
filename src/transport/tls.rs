//! TLS for ASAP and ENRP over the TCP mapping (RFC 5355: mandatory to implement, with
//! mutual authentication between PEs and registrars and between registrars).
//!
//! One deployment CA: every role presents a certificate issued by it (`rserpool cert`),
//! and believes a peer only as far as the peer's certificate chains to it. Host names
//! are not checked: peers are found by address (configuration, announces, ENRP server
//! information), and what a peer may do is what its certificate's `rserpool:` URIs grant
//! ([`super::identity`]); the engines enforce that. Certificates reload on SIGHUP for
//! new associations; open ones go on.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rserpool_proto::auth::{Access, Authentication, PeerIdentity, PlainPeers};
use rserpool_proto::engine::PeerInfo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::identity::{self, Validity};
use crate::logging::RateLimitedLog;

/// How long a TLS handshake (and, with plain peers allowed, the first byte that tells
/// TLS from plain) may take.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate expiring within this is warned about (and shown in a metric).
pub(crate) const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// The first byte of a TLS record carrying a handshake; no ASAP or ENRP message type
/// has this value, so a listener can tell a TLS client from a plain one.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Where a role's TLS material is (public: the PE library takes it, as
/// `rserpool::service::TlsFiles`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM), leaf first (`rserpool cert issue`).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The deployment CA's certificate(s) (PEM).
    pub ca: PathBuf,
}

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{path}: the certificate {reason}")]
    Validity { path: String, reason: String },
    #[error("{path}: {error}")]
    Identity {
        path: String,
        error: identity::IdentityError,
    },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS setup: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The loaded material: configurations for both directions and the own identity.
#[derive(Debug)]
struct Material {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    identity: PeerIdentity,
    validity: Validity,
}

/// A role's TLS: what it presents, whom it trusts, and what plain peers may do.
#[derive(Debug)]
pub(crate) struct ControlTls {
    files: TlsFiles,
    plain: PlainPeers,
    current: RwLock<Arc<Material>>,
}

/// An accepted connection: TLS with the peer's proven identity, or a plain one (only
/// where plain peers are allowed).
pub(crate) enum Secured {
    Tls(Box<ServerStream<TcpStream>>, Authentication),
    Plain(TcpStream),
}

/// The server side of a TLS session over `S`.
pub(crate) type ServerStream<S> = tokio_rustls::server::TlsStream<Unvectored<S>>;
/// The client side of a TLS session over `S`.
pub(crate) type ClientStream<S> = tokio_rustls::client::TlsStream<Unvectored<S>>;

/// A stream that offers rustls no vectored writes. rustls hands its queued records to
/// `write_vectored`, which on a socket is `writev`: the file-position lock and the VFS
/// layer cost about 0.7 us more per message than `send` (perf, registrations in a
/// closed loop), and there is one record to write almost every time.
#[derive(Debug)]
pub(crate) struct Unvectored<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for Unvectored<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Unvectored<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Why a connection did not become an association.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
    #[error("a plain (non-TLS) peer, and plain peers are refused")]
    PlainRefused,
    #[error("the peer's certificate: {0}")]
    Identity(identity::IdentityError),
    #[error("the peer sent no certificate")]
    NoCertificate,
}

/// Certificates are valid between two calendar dates: the one place a role needs the
/// wall clock (the protocol's timers run on the monotonic one).
#[allow(
    clippy::disallowed_methods,
    reason = "certificate validity is wall-clock time"
)]
fn wall_clock() -> SystemTime {
    SystemTime::now()
}

/// ring's suites with AES-128-GCM ahead of AES-256-GCM in TLS 1.3 (as Go's crypto/tls
/// orders them): four fewer AES rounds per block for the control plane's many small
/// records, and a security margin (128-bit keys) that RFC 8446 §9.1 makes mandatory.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

fn load(files: &TlsFiles, now: SystemTime) -> Result<Material, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_error(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&files.cert, e))?;
    let leaf = chain
        .first()
        .ok_or_else(|| file_error(&files.cert, "no certificate in the file"))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error(&files.key, e))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.ca).map_err(|e| file_error(&files.ca, e))? {
        roots
            .add(ca.map_err(|e| file_error(&files.ca, e))?)
            .map_err(|e| file_error(&files.ca, e))?;
    }
    if roots.is_empty() {
        return Err(file_error(&files.ca, "no CA certificate in the file"));
    }
    let cert_path = files.cert.display().to_string();
    let validity = identity::validity(leaf).map_err(|error| TlsError::Identity {
        path: cert_path.clone(),
        error,
    })?;
    check_validity(&cert_path, validity, now)?;
    let identity = identity::identity_of(leaf).map_err(|error| TlsError::Identity {
        path: cert_path.clone(),
        error,
    })?;
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let parsed = rustls::server::ParsedCertificate::try_from(leaf)?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        chain.get(1..).unwrap_or_default(),
        UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        ),
        algorithms.all,
    )
    .map_err(|e| TlsError::Validity {
        path: cert_path,
        reason: format!("does not chain to the CA in {}: {e}", files.ca.display()),
    })?;
    let roots = Arc::new(roots);
    let versions = &[&rustls::version::TLS13, &rustls::version::TLS12];
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    // The server's suite order decides (its CPU pays for most associations), whatever
    // order a client prefers.
    server.ignore_client_order = true;
    let client = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DeploymentCa { roots, algorithms }))
        .with_client_auth_cert(chain, key)?;
    Ok(Material {
        server: Arc::new(server),
        client: Arc::new(client),
        identity,
        validity,
    })
}

fn check_validity(path: &str, validity: Validity, now: SystemTime) -> Result<(), TlsError> {
    let date = |at: SystemTime| {
        let seconds = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("{} (Unix time {seconds})", httpdate::fmt_http_date(at))
    };
    if validity.not_after <= now {
        return Err(TlsError::Validity {
            path: path.to_owned(),
            reason: format!("expired on {}", date(validity.not_after)),
        });
    }
    if validity.not_before > now {
        return Err(TlsError::Validity {
            path: path.to_owned(),
            reason: format!("is not valid before {}", date(validity.not_before)),
        });
    }
    Ok(())
}

impl ControlTls {
    /// Loads the material; an unusable file, an expired or not yet valid certificate, or
    /// one that does not chain to the CA is an error that says which.
    pub(crate) fn load(files: TlsFiles, plain: PlainPeers) -> Result<Self, TlsError> {
        let material = load(&files, wall_clock())?;
        let tls = Self {
            files,
            plain,
            current: RwLock::new(Arc::new(material)),
        };
        tls.report_expiry();
        Ok(tls)
    }

    /// Loads the files again for new associations (SIGHUP); on an error the material
    /// in use stays.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let material = load(&self.files, wall_clock())?;
        // A registrar runs under the ID its certificate granted at start: a new
        // certificate granting another would have every peer refuse its ENRP.
        let running = self.material().identity.registrar;
        if material.identity.registrar != running {
            return Err(TlsError::Validity {
                path: self.files.cert.display().to_string(),
                reason: format!(
                    "grants registrar {:?}, but the process runs as {:?}: restart to change it",
                    material.identity.registrar, running
                ),
            });
        }
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(material);
        self.report_expiry();
        Ok(())
    }

    fn material(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The time the certificate in use has left.
    fn time_left(&self) -> Duration {
        self.material()
            .validity
            .not_after
            .duration_since(wall_clock())
            .unwrap_or_default()
    }

    /// Sets the gauge `rserpool_tls_certificate_expiry_seconds`. Called once the
    /// process's metrics recorder is installed (with the admin listener), and on reload.
    pub(crate) fn publish_expiry(&self) {
        metrics::gauge!("rserpool_tls_certificate_expiry_seconds")
            .set(self.time_left().as_secs_f64());
    }

    /// The gauge, and a warning within 14 days.
    fn report_expiry(&self) {
        self.publish_expiry();
        let left = self.time_left();
        if left < EXPIRY_WARNING {
            tracing::warn!(
                cert = %self.files.cert.display(),
                days_left = left.as_secs() / 86_400,
                "the TLS certificate expires soon: issue a new one and reload (SIGHUP)"
            );
        }
    }

    /// The identity this role's own certificate proves.
    pub(crate) fn identity(&self) -> PeerIdentity {
        self.material().identity.clone()
    }

    /// What the engines enforce.
    pub(crate) fn access(&self) -> Access {
        Access::Enforced { plain: self.plain }
    }

    /// The files (for the ready line).
    pub(crate) fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Server side of an accepted connection. A client whose first byte is not a TLS
    /// handshake record is a plain one: it goes on in plain where plain peers are
    /// allowed, and is refused with a message that says so elsewhere.
    pub(crate) async fn accept(&self, stream: TcpStream) -> Result<Secured, HandshakeError> {
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first))
            .await
            .map_err(|_| HandshakeError::Timeout(HANDSHAKE_TIMEOUT))?
            .map_err(HandshakeError::Tls)?;
        if peeked == 1 && first[0] != TLS_HANDSHAKE_RECORD {
            return match self.plain {
                PlainPeers::Refused => Err(HandshakeError::PlainRefused),
                PlainPeers::PoolUsers | PlainPeers::Trusted => Ok(Secured::Plain(stream)),
            };
        }
        let (stream, peer) = self.handshake_as_server(stream).await?;
        Ok(Secured::Tls(Box::new(stream), peer))
    }

    /// The server's handshake on any byte stream: the session and who the client is.
    pub(crate) async fn handshake_as_server<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
    ) -> Result<(ServerStream<S>, Authentication), HandshakeError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.material().server.clone());
        finish_handshake(acceptor.accept(Unvectored(stream)), |stream| {
            authentication(stream.get_ref().1.peer_certificates())
        })
        .await
    }

    /// The client's handshake on any byte stream to `peer`: the session and who the
    /// server is.
    pub(crate) async fn handshake_as_client<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        peer: IpAddr,
    ) -> Result<(ClientStream<S>, Authentication), HandshakeError> {
        let connector = tokio_rustls::TlsConnector::from(self.material().client.clone());
        let name = ServerName::IpAddress(peer.into());
        finish_handshake(connector.connect(name, Unvectored(stream)), |stream| {
            authentication(stream.get_ref().1.peer_certificates())
        })
        .await
    }
}

/// Runs a handshake within [`HANDSHAKE_TIMEOUT`], then reads who the peer is.
async fn finish_handshake<T>(
    handshake: impl Future<Output = std::io::Result<T>>,
    peer: impl FnOnce(&T) -> Result<Authentication, HandshakeError>,
) -> Result<(T, Authentication), HandshakeError> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| HandshakeError::Timeout(HANDSHAKE_TIMEOUT))?
        .map_err(HandshakeError::Tls)?;
    let authentication = peer(&stream)?;
    Ok((stream, authentication))
}

/// Counts a failed handshake and logs it (rate-limited: anyone can cause one).
pub(crate) fn report_failure(direction: &'static str, peer: &PeerInfo, error: &HandshakeError) {
    static LOG: RateLimitedLog = RateLimitedLog::new(Duration::from_secs(1));
    metrics::counter!("rserpool_tls_handshake_failures_total", "direction" => direction)
        .increment(1);
    if let Some(suppressed) = LOG.permit() {
        let from = peer.endpoint();
        tracing::warn!(%from, direction, %error, suppressed, "TLS: association refused");
    }
}

/// The ready line's `tls` field: `off`, or `on (NAME)` with the certificate's name.
pub(crate) fn ready_field(tls: Option<&ControlTls>) -> String {
    match tls {
        Some(tls) => format!("on ({})", tls.identity().name),
        None => "off".to_owned(),
    }
}

fn authentication(
    certificates: Option<&[CertificateDer<'static>]>,
) -> Result<Authentication, HandshakeError> {
    let leaf = certificates
        .and_then(<[CertificateDer<'static>]>::first)
        .ok_or(HandshakeError::NoCertificate)?;
    identity::identity_of(leaf)
        .map(Authentication::Authenticated)
        .map_err(HandshakeError::Identity)
}

/// Verifies that a server's certificate chains to the deployment CA (and is valid now),
/// without a host-name check: what the server may do is what its certificate grants.
#[derive(Debug)]
struct DeploymentCa {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for DeploymentCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
