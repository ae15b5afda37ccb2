//! TLS configuration shared by the TLS transports (pooled TCP with the `tls` feature, QUIC).
//!
//! Two modes:
//!
//! - [`TlsMode::SelfSigned`]: each node makes a self-signed certificate at start; any
//!   certificate is accepted (its handshake signature is still checked), and the peer is
//!   authenticated by the cookie handshake, which is bound to the TLS session with the TLS
//!   exporter ([`EXPORTER_LABEL`]) so that a man in the middle without the cookie fails.
//! - [`TlsMode::Mutual`]: certificate-based mutual TLS. Each node presents a certificate signed
//!   by the operator's CA; a peer without a valid certificate from that CA is refused during
//!   the TLS handshake, before the cookie handshake; the node name (its host) must be in the
//!   certificate's subject alternative names ([`check_peer_name`]). The cookie still applies.

use std::path::Path;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// Label of the TLS exporter value that binds the cookie handshake to the TLS session.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-conc-cookie-handshake-v1";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {detail}")]
    Pem {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(String),
    /// The peer's certificate does not name the node it claims to be.
    #[error("peer certificate is not valid for node {0}")]
    NameMismatch(String),
}

/// A node's certificate chain and key, and the CA that peers' certificates must chain to.
#[derive(Debug)]
pub struct TlsIdentity {
    /// The CA certificates peers must chain to.
    pub ca: Vec<CertificateDer<'static>>,
    /// This node's certificate chain (leaf first).
    pub chain: Vec<CertificateDer<'static>>,
    /// This node's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// Loads PEM files: the CA certificate(s), this node's certificate chain, its private key.
    pub fn from_pem_files(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsIdentity, TlsError> {
        fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
            let pem = |detail: String| TlsError::Pem {
                path: path.display().to_string(),
                detail,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| pem(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem(e.to_string()))?;
            if certs.is_empty() {
                return Err(pem("no certificate found".into()));
            }
            Ok(certs)
        }
        let key_path = key.as_ref();
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Pem {
            path: key_path.display().to_string(),
            detail: e.to_string(),
        })?;
        Ok(TlsIdentity {
            ca: certs(ca.as_ref())?,
            chain: certs(cert.as_ref())?,
            key,
        })
    }
}

/// How a TLS transport authenticates peers at the TLS level.
#[derive(Clone, Debug, Default)]
pub enum TlsMode {
    /// Self-signed certificates; peers are authenticated by the bound cookie handshake.
    #[default]
    SelfSigned,
    /// Mutual TLS with certificates from a CA (and the cookie handshake as well).
    Mutual(TlsIdentity),
}

/// The crypto provider used everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The host part of a node name (`host:port`, `[v6]:port`).
pub fn host_of(node: &str) -> &str {
    node.rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']))
        .unwrap_or(node)
}

/// A fresh self-signed certificate for `node` and its key.
pub fn self_signed(
    node: &str,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let names = vec![host_of(node).to_string(), "conc-node".to_string()];
    let ck =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Rustls(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    Ok((ck.cert.der().clone(), key))
}

fn roots(ca: &[CertificateDer<'static>]) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for c in ca {
        store
            .add(c.clone())
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
    }
    Ok(Arc::new(store))
}

/// The server side configuration for `node` (TLS 1.3 only), with the given ALPN protocols.
pub fn server_config(
    mode: &TlsMode,
    node: &str,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut cfg = match mode {
        TlsMode::SelfSigned => {
            let (cert, key) = self_signed(node)?;
            builder
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
        }
        TlsMode::Mutual(id) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots(&id.ca)?,
                provider,
            )
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(id.chain.clone(), id.key.clone_key())
        }
    }
    .map_err(|e| TlsError::Rustls(e.to_string()))?;
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// The client side configuration (TLS 1.3 only), with the given ALPN protocols.
pub fn client_config(mode: &TlsMode, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut cfg = match mode {
        TlsMode::SelfSigned => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth(),
        TlsMode::Mutual(id) => builder
            .with_root_certificates(roots(&id.ca)?)
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| TlsError::Rustls(e.to_string()))?,
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// The name a client asks for when connecting to `node`: its host in mutual TLS (checked
/// against the server's certificate), a fixed name with self-signed certificates.
pub fn server_name(mode: &TlsMode, node: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match mode {
        TlsMode::SelfSigned => "conc-node",
        TlsMode::Mutual(_) => host_of(node),
    };
    ServerName::try_from(host.to_string()).map_err(|_| TlsError::NameMismatch(node.to_string()))
}

/// In mutual TLS, checks that the peer's (already CA-verified) certificate names the node it
/// proved to be in the cookie handshake. Always passes in self-signed mode.
pub fn check_peer_name(
    mode: &TlsMode,
    peer_cert: Option<&CertificateDer<'_>>,
    node: &str,
) -> Result<(), TlsError> {
    if let TlsMode::SelfSigned = mode {
        return Ok(());
    }
    let cert = peer_cert.ok_or_else(|| TlsError::NameMismatch(node.to_string()))?;
    let parsed = rustls::server::ParsedCertificate::try_from(cert)
        .map_err(|_| TlsError::NameMismatch(node.to_string()))?;
    let name = ServerName::try_from(host_of(node).to_string())
        .map_err(|_| TlsError::NameMismatch(node.to_string()))?;
    rustls::client::verify_server_name(&parsed, &name)
        .map_err(|_| TlsError::NameMismatch(node.to_string()))
}

/// Accepts any server certificate, but verifies that the server holds its key.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
