//! Mail egress: lettre over a stream from a [`Connector`].

use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use dust_mixer::{Deliver, DeliveryError, ErrorKind, HasKind, Item, Outcome};
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters,
};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::Address;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::egress::mx::{addresses, mail_hosts, MxConfig};
use crate::egress::tls::TlsClient;
use crate::item::mail::{with_date, StoredMail};
use crate::tor::{BoxStream, Connector, Target};

/// The EHLO name on egress: an address literal that is the same for every
/// mote and says nothing about this machine.
pub fn hello_name() -> ClientId {
    ClientId::Ipv4(std::net::Ipv4Addr::LOCALHOST)
}

/// TLS towards the next hop (`[delivery.mail] tls`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain text (loopback tests, or a relay reached as an onion service).
    None,
    /// STARTTLS after EHLO (submission port 587).
    #[default]
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
    route: Route,
    timeout: Duration,
    isolation: AtomicU64,
    tls: TlsClient,
}

/// Where mail goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// Everything to one smarthost.
    Relay(RelayConfig),
    /// Each recipient domain to its mail exchangers (or onion MX).
    Mx(MxRoute),
}

/// `[delivery.mail] mode = "mx"`.
#[derive(Debug, Clone)]
pub struct MxRoute {
    /// DNS and onion map.
    pub mx: MxConfig,
    /// TLS towards the exchangers (`None` or `Starttls`; implicit TLS is
    /// not a thing on port 25).
    pub tls: TlsMode,
    /// Extra CA to trust (tests).
    pub extra_ca_pem: Option<Vec<u8>>,
}

/// One SMTP session's parameters.
struct Hop<'a> {
    target: Target,
    /// The name the certificate must match.
    tls_name: &'a str,
    tls: TlsMode,
    extra_ca_pem: Option<&'a [u8]>,
    auth: Option<&'a (String, String)>,
    /// The message needs the next hop's SMTPUTF8 (RFC 6531).
    smtputf8: bool,
}

impl MailDelivery {
    /// Deliver through `connector` along `route`; each attempt is bounded by
    /// `timeout`.
    pub fn new(connector: Arc<dyn Connector>, route: Route, timeout: Duration) -> Self {
        Self {
            connector,
            route,
            timeout,
            isolation: AtomicU64::new(rand::random()),
            tls: TlsClient::default(),
        }
    }

    fn next_isolation(&self) -> u64 {
        self.isolation.fetch_add(1, Ordering::Relaxed)
    }

    async fn attempt(&self, mail: &StoredMail) -> Result<(), DeliveryError> {
        let from = if mail.from.is_empty() {
            None
        } else {
            Some(
                Address::from_str(&mail.from)
                    .map_err(|e| DeliveryError::permanent(format!("bad sender: {e}")))?,
            )
        };
        let rcpts = mail
            .rcpts
            .iter()
            .map(|r| Address::from_str(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DeliveryError::permanent(format!("bad recipient: {e}")))?;
        let message = with_date(&mail.message, SystemTime::now());
        // lettre always ends DATA with CRLF "." CRLF; the stored message
        // already ends with the CRLF of its last line, so leave that out or
        // the recipient gets an extra empty line.
        let message = message.strip_suffix(b"\r\n").unwrap_or(&message);
        match &self.route {
            Route::Relay(relay) => {
                let envelope = Envelope::new(from, rcpts)
                    .map_err(|e| DeliveryError::permanent(format!("bad envelope: {e}")))?;
                let hop = Hop {
                    target: Target {
                        host: relay.host.clone(),
                        port: relay.port,
                        isolation: self.next_isolation(),
                    },
                    tls_name: &relay.host,
                    tls: relay.tls,
                    extra_ca_pem: relay.extra_ca_pem.as_deref(),
                    auth: relay.auth.as_ref(),
                    smtputf8: mail.smtputf8,
                };
                self.session(&hop, &envelope, message).await
            }
            Route::Mx(route) => {
                self.deliver_mx(route, from, rcpts, message, mail.smtputf8)
                    .await
            }
        }
    }

    /// MX delivery: per recipient domain, try its mail hosts in order of
    /// preference and each host's addresses, until one accepts. Any domain
    /// that failed temporarily makes the whole item temporary (it is tried
    /// again for all its domains: at-least-once).
    async fn deliver_mx(
        &self,
        route: &MxRoute,
        from: Option<Address>,
        rcpts: Vec<Address>,
        message: &[u8],
        smtputf8: bool,
    ) -> Result<(), DeliveryError> {
        let mut by_domain: Vec<(String, Vec<Address>)> = Vec::new();
        for r in rcpts {
            let d = r.domain().to_ascii_lowercase();
            match by_domain.iter_mut().find(|(k, _)| *k == d) {
                Some((_, v)) => v.push(r),
                None => by_domain.push((d, vec![r])),
            }
        }
        let (mut temporary, mut permanent) = (Vec::new(), Vec::new());
        for (domain, rcpts) in by_domain {
            let envelope = Envelope::new(from.clone(), rcpts)
                .map_err(|e| DeliveryError::permanent(format!("bad envelope: {e}")))?;
            match self
                .deliver_domain(route, &domain, &envelope, message, smtputf8)
                .await
            {
                Ok(()) => {}
                Err(e) if e.kind().retry() => temporary.push(e.reason()),
                Err(e) => permanent.push(e.reason()),
            }
        }
        if !temporary.is_empty() {
            return Err(DeliveryError::temporary(temporary.join("; ")));
        }
        if !permanent.is_empty() {
            return Err(DeliveryError::permanent(permanent.join("; ")));
        }
        Ok(())
    }

    async fn deliver_domain(
        &self,
        route: &MxRoute,
        domain: &str,
        envelope: &Envelope,
        message: &[u8],
        smtputf8: bool,
    ) -> Result<(), DeliveryError> {
        let hosts = mail_hosts(&*self.connector, &route.mx, self.next_isolation(), domain)
            .await
            .map_err(DeliveryError::wrap)?;
        let mut last = DeliveryError::temporary(format!("no mail host for {domain}"));
        for host in &hosts {
            let addrs =
                match addresses(&*self.connector, &route.mx, self.next_isolation(), host).await {
                    Ok(a) => a,
                    Err(e) => {
                        last = DeliveryError::wrap(e);
                        continue;
                    }
                };
            for addr in addrs {
                let hop = Hop {
                    target: Target {
                        host: addr,
                        port: route.mx.port,
                        isolation: self.next_isolation(),
                    },
                    tls_name: host,
                    tls: route.tls,
                    extra_ca_pem: route.extra_ca_pem.as_deref(),
                    auth: None,
                    smtputf8,
                };
                match self.session(&hop, envelope, message).await {
                    Ok(()) => return Ok(()),
                    // A 5xx is the domain's answer: do not ask the next MX.
                    Err(e) if e.kind() == ErrorKind::Permanent => return Err(e),
                    Err(e) => last = e,
                }
            }
        }
        // Only unreachable or temporarily failing hosts: try again later
        // (when no exit allows port 25, this is where it ends up).
        match last.kind() {
            ErrorKind::Permanent if hosts.len() > 1 => Err(last.with_kind(ErrorKind::Temporary)),
            _ => Err(last),
        }
    }

    /// One SMTP session: connect, TLS as configured, AUTH if configured, send.
    async fn session(
        &self,
        hop: &Hop<'_>,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<(), DeliveryError> {
        let stream = self
            .connector
            .connect(&hop.target)
            .await
            .map_err(DeliveryError::wrap)?;
        let hello = hello_name();
        let stream: BoxStream = match hop.tls {
            TlsMode::Implicit => Box::new(
                self.tls
                    .connect(stream, hop.tls_name, hop.extra_ca_pem)
                    .await
                    .map_err(DeliveryError::wrap)?,
            ),
            _ => stream,
        };
        let mut conn =
            AsyncSmtpConnection::connect_with_transport(Box::new(Compat(stream)), &hello)
                .await
                .map_err(smtp_error)?;
        if hop.tls == TlsMode::Starttls {
            let mut builder = TlsParameters::builder(hop.tls_name.to_string());
            if let Some(pem) = hop.extra_ca_pem {
                let cert = Certificate::from_pem(pem)
                    .map_err(|e| DeliveryError::config(format!("extra CA certificate: {e}")))?;
                builder = builder.add_root_certificate(cert);
            }
            let params = builder
                .build_rustls()
                .map_err(|e| DeliveryError::config(format!("TLS setup: {e}")))?;
            conn.starttls(params, &hello).await.map_err(smtp_error)?;
        }
        if let Some((user, pass)) = hop.auth {
            let creds = Credentials::new(user.clone(), pass.clone());
            conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds)
                .await
                .map_err(smtp_error)?;
        }
        send(&mut conn, envelope, message, hop.smtputf8).await?;
        // The message is accepted; a failing QUIT does not change that.
        let _ = conn.quit().await;
        Ok(())
    }
}

impl Deliver for MailDelivery {
    async fn deliver(&self, item: &Item) -> Result<Outcome, DeliveryError> {
        let mail = StoredMail::decode(&item.payload)
            .map_err(|e| DeliveryError::permanent(format!("unreadable mail item: {e}")))?;
        match tokio::time::timeout(self.timeout, self.attempt(&mail)).await {
            Ok(r) => r.map(|()| Outcome::Done),
            Err(_) => Err(DeliveryError::temporary(format!(
                "delivery timed out after {:?}",
                self.timeout
            ))),
        }
    }
}

/// MAIL (with SMTPUTF8 and BODY=8BITMIME as the message needs them), RCPT,
/// DATA. A next hop without an extension the message needs refuses it for
/// good (RFC 6531 3.4: the message cannot be sent on without changing it),
/// which drops it; lettre would call that a client error and retry forever.
async fn send(
    conn: &mut AsyncSmtpConnection,
    envelope: &Envelope,
    message: &[u8],
    smtputf8: bool,
) -> Result<(), DeliveryError> {
    let info = conn.server_info();
    let mut params = Vec::new();
    let non_ascii = |a: &Address| !AsRef::<str>::as_ref(a).is_ascii();
    if smtputf8 || envelope.from().is_some_and(non_ascii) || envelope.to().iter().any(non_ascii) {
        if !info.supports_feature(Extension::SmtpUtfEight) {
            return Err(DeliveryError::permanent(
                "5.6.7 the next hop does not support SMTPUTF8, which this message needs",
            ));
        }
        params.push(MailParameter::SmtpUtfEight);
    }
    if !message.is_ascii() {
        if !info.supports_feature(Extension::EightBitMime) {
            return Err(DeliveryError::permanent(
                "5.6.3 the next hop does not support 8BITMIME, which this message needs",
            ));
        }
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    conn.command(Mail::new(envelope.from().cloned(), params))
        .await
        .map_err(smtp_error)?;
    for to in envelope.to() {
        conn.command(Rcpt::new(to.clone(), Vec::new()))
            .await
            .map_err(smtp_error)?;
    }
    conn.command(Data).await.map_err(smtp_error)?;
    conn.message(message).await.map_err(smtp_error)?;
    Ok(())
}

/// 5xx from the next hop is permanent; everything else (4xx, I/O, TLS,
/// protocol confusion) is worth another try later.
fn smtp_error(e: lettre::transport::smtp::Error) -> DeliveryError {
    let kind = if e.is_permanent() {
        ErrorKind::Permanent
    } else {
        ErrorKind::Temporary
    };
    DeliveryError::new(kind, e)
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
