//! TLS for the load generators: the certificate and key `rserpool cert` issued in a
//! directory, presented to the registrar under test. The server is not checked: the
//! load generator measures the registrar, and what it believes of it changes nothing
//! on the registrar's side of the handshake.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use super::Association;

/// A TLS client identity.
pub(crate) struct Client {
    connector: tokio_rustls::TlsConnector,
}

impl Client {
    /// DIR/NAME.pem and DIR/NAME-key.pem.
    pub(crate) fn load(dir: &Path, name: &str) -> Self {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join(format!("{name}.pem")))
                .expect("the certificate")
                .map(|c| c.expect("a PEM certificate"))
                .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}-key.pem")))
            .expect("the private key");
        // The registrar picks the cipher suite (it ignores the client's order).
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
            .with_client_auth_cert(chain, key)
            .expect("the client certificate");
        Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    /// The handshake on a connected stream.
    pub(crate) async fn connect(&self, stream: TcpStream) -> Option<Association> {
        let address = stream.peer_addr().ok()?;
        let name = ServerName::IpAddress(address.ip().into());
        let stream = self.connector.connect(name, stream).await.ok()?;
        Some(Box::new(stream))
    }
}

#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
