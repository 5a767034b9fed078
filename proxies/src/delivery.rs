//! Mail egress: lettre over a stream from a [`Connector`].

use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use dust_mixer::{Deliver, DeliveryError, Item};
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use lettre::Address;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::mail::{with_date, StoredMail};
use crate::tor::{BoxStream, Connector, Target};

/// The EHLO name on egress: an address literal that is the same for every
/// mote and says nothing about this machine.
pub fn hello_name() -> ClientId {
    ClientId::Ipv4(std::net::Ipv4Addr::LOCALHOST)
}

/// TLS towards the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain text (loopback tests, or a relay reached as an onion service).
    None,
    /// STARTTLS after EHLO (submission port 587).
    Starttls,
    /// TLS from the first byte (submission port 465).
    Implicit,
}

/// The smarthost of `[delivery.mail] mode = "relay"`.
#[derive(Clone)]
pub struct RelayConfig {
    /// Hostname (handed to the connector unresolved) or address literal.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS mode.
    pub tls: TlsMode,
    /// Submission credentials (user, password), if the relay wants AUTH.
    pub auth: Option<(String, String)>,
    /// Bound on one whole delivery attempt (connect to QUIT).
    pub timeout: Duration,
    /// An extra CA certificate (PEM) to trust besides the Web PKI roots
    /// (a private relay; tests).
    pub extra_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("auth", &self.auth.as_ref().map(|(u, _)| (u, "<redacted>")))
            .field("timeout", &self.timeout)
            .field("extra_ca", &self.extra_ca_pem.is_some())
            .finish()
    }
}

/// Delivers mail items to the configured relay.
pub struct MailDelivery {
    connector: Arc<dyn Connector>,
    relay: RelayConfig,
    isolation: AtomicU64,
}

impl MailDelivery {
    /// Deliver through `connector` to `relay`.
    pub fn new(connector: Arc<dyn Connector>, relay: RelayConfig) -> Self {
        Self {
            connector,
            relay,
            isolation: AtomicU64::new(rand::random()),
        }
    }

    async fn attempt(&self, mail: &StoredMail) -> Result<(), DeliveryError> {
        let from = if mail.from.is_empty() {
            None
        } else {
            Some(
                Address::from_str(&mail.from)
                    .map_err(|e| DeliveryError::Permanent(format!("bad sender: {e}")))?,
            )
        };
        let rcpts = mail
            .rcpts
            .iter()
            .map(|r| Address::from_str(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DeliveryError::Permanent(format!("bad recipient: {e}")))?;
        let envelope = Envelope::new(from, rcpts)
            .map_err(|e| DeliveryError::Permanent(format!("bad envelope: {e}")))?;
        let target = Target {
            host: self.relay.host.clone(),
            port: self.relay.port,
            isolation: self.isolation.fetch_add(1, Ordering::Relaxed),
        };
        let stream = self
            .connector
            .connect(&target)
            .await
            .map_err(|e| DeliveryError::Temporary(e.to_string()))?;
        let hello = hello_name();
        let stream: BoxStream = match self.relay.tls {
            TlsMode::Implicit => Box::new(
                implicit_tls(stream, &self.relay.host, self.relay.extra_ca_pem.as_deref()).await?,
            ),
            _ => stream,
        };
        let mut conn =
            AsyncSmtpConnection::connect_with_transport(Box::new(Compat(stream)), &hello)
                .await
                .map_err(smtp_error)?;
        if self.relay.tls == TlsMode::Starttls {
            let mut builder = TlsParameters::builder(self.relay.host.clone());
            if let Some(pem) = &self.relay.extra_ca_pem {
                let cert = Certificate::from_pem(pem)
                    .map_err(|e| DeliveryError::Temporary(format!("extra CA certificate: {e}")))?;
                builder = builder.add_root_certificate(cert);
            }
            let params = builder
                .build_rustls()
                .map_err(|e| DeliveryError::Temporary(format!("TLS setup: {e}")))?;
            conn.starttls(params, &hello).await.map_err(smtp_error)?;
        }
        if let Some((user, pass)) = &self.relay.auth {
            let creds = Credentials::new(user.clone(), pass.clone());
            conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds)
                .await
                .map_err(smtp_error)?;
        }
        let message = with_date(&mail.message, SystemTime::now());
        // lettre always ends DATA with CRLF "." CRLF; the stored message
        // already ends with the CRLF of its last line, so leave that out or
        // the recipient gets an extra empty line.
        let message = message.strip_suffix(b"\r\n").unwrap_or(&message);
        conn.send(&envelope, message).await.map_err(smtp_error)?;
        // The message is accepted; a failing QUIT does not change that.
        let _ = conn.quit().await;
        Ok(())
    }
}

impl Deliver for MailDelivery {
    async fn deliver(&self, item: &Item) -> Result<(), DeliveryError> {
        let mail = StoredMail::decode(&item.payload)
            .map_err(|e| DeliveryError::Permanent(e.to_string()))?;
        match tokio::time::timeout(self.relay.timeout, self.attempt(&mail)).await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::Temporary(format!(
                "delivery timed out after {:?}",
                self.relay.timeout
            ))),
        }
    }
}

/// 5xx from the next hop is permanent; everything else (4xx, I/O, TLS,
/// protocol confusion) is worth another try later.
fn smtp_error(e: lettre::transport::smtp::Error) -> DeliveryError {
    if e.is_permanent() {
        DeliveryError::Permanent(e.to_string())
    } else {
        DeliveryError::Temporary(e.to_string())
    }
}

async fn implicit_tls(
    stream: BoxStream,
    host: &str,
    extra_ca_pem: Option<&[u8]>,
) -> Result<tokio_rustls::client::TlsStream<BoxStream>, DeliveryError> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{self};
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert =
                cert.map_err(|e| DeliveryError::Temporary(format!("extra CA certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| DeliveryError::Temporary(format!("extra CA certificate: {e}")))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| DeliveryError::Temporary(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| {
        DeliveryError::Permanent(format!("relay name {host:?} is not a TLS server name: {e}"))
    })?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(|e| DeliveryError::Temporary(format!("TLS handshake: {e}")))
}

/// Adapts a [`BoxStream`] to lettre's stream trait.
#[derive(Debug)]
struct Compat(BoxStream);

impl AsyncTokioStream for Compat {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        // A Tor stream has no meaningful peer address; lettre only uses it
        // for its own reporting.
        Err(std::io::Error::other("peer address not available"))
    }
}

impl AsyncRead for Compat {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Compat {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}
