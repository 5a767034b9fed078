//! TLS towards origins and mail relays that speak TLS from the first byte
//! (https, SMTP on 465): one rustls client configuration per owner (the
//! mail deliverer, the fetcher), built on first use.

use std::sync::{Arc, OnceLock};

use dust_mixer::{ErrorKind, HasKind};

use crate::tor::BoxStream;

/// Why no TLS session could be set up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    /// The client configuration could not be built (an unusable extra CA).
    #[error("TLS setup: {0}")]
    Setup(String),
    /// The host is not something a certificate can name.
    #[error("{0:?} is not a TLS server name")]
    ServerName(String),
    /// The handshake failed (a certificate that does not verify, a
    /// connection that broke off).
    #[error("TLS handshake: {0}")]
    Handshake(Arc<std::io::Error>),
}

impl HasKind for TlsError {
    fn kind(&self) -> ErrorKind {
        match self {
            TlsError::Setup(_) => ErrorKind::Config,
            TlsError::ServerName(_) => ErrorKind::Permanent,
            TlsError::Handshake(_) => ErrorKind::Temporary,
        }
    }
}

/// The rustls client configuration for implicit TLS (Web PKI roots plus an
/// optional extra CA), built on first use and then shared by every
/// connection of its owner, instead of rebuilding the root store per
/// connection.
#[derive(Debug, Default)]
pub(crate) struct TlsClient(OnceLock<Result<Arc<tokio_rustls::rustls::ClientConfig>, TlsError>>);

impl TlsClient {
    fn build(
        extra_ca_pem: Option<&[u8]>,
    ) -> Result<Arc<tokio_rustls::rustls::ClientConfig>, TlsError> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::CertificateDer;
        use tokio_rustls::rustls::{self};
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = extra_ca_pem {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let ca = |e: &dyn std::fmt::Display| {
                    TlsError::Setup(format!("extra CA certificate: {e}"))
                };
                let cert = cert.map_err(|e| ca(&e))?;
                roots.add(cert).map_err(|e| ca(&e))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// TLS from the first byte on `stream`, checking `host`'s certificate.
    /// `extra_ca_pem` is read on the first call only (it is fixed per owner).
    pub(crate) async fn connect(
        &self,
        stream: BoxStream,
        host: &str,
        extra_ca_pem: Option<&[u8]>,
    ) -> Result<tokio_rustls::client::TlsStream<BoxStream>, TlsError> {
        use tokio_rustls::rustls::pki_types::ServerName;
        let config = self.0.get_or_init(|| Self::build(extra_ca_pem)).clone()?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| TlsError::ServerName(host.to_string()))?;
        tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| TlsError::Handshake(Arc::new(e)))
    }
}
