//! Where outbound connections come from.
//!
//! Delivery code never opens a socket itself: it asks a [`Connector`] for a
//! stream to a *hostname* and port. The Tor connectors hand the hostname to
//! Tor unresolved ([`Socks5`] sends it as a SOCKS5 domain name; there is no
//! DNS code on that path at all). [`Direct`] is the clearnet connector, which
//! the binary only builds when the operator set `[tor] mode = "direct"`
//! together with `allow_clearnet = true`.

use std::fmt::Debug;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use dust_mixer::{ErrorKind, HasKind};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};

/// A bidirectional byte stream to the next hop.
pub trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + Debug {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + Debug> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Box<dyn Stream>;

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Hostname or address literal; Tor connectors never resolve it locally.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Streams with different isolation tokens must not share a circuit.
    /// Every item gets its own token.
    pub isolation: u64,
}

/// Why no stream could be opened. All of these are temporary for the item.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The transport is not ready (Tor bootstrapping, or not available).
    #[error("transport not ready: {0}")]
    NotReady(String),
    /// Connecting failed.
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
    /// Connecting took too long.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
}

impl HasKind for ConnectError {
    fn kind(&self) -> ErrorKind {
        match self {
            ConnectError::NotReady(_) | ConnectError::Io(_) | ConnectError::Timeout(_) => {
                ErrorKind::Temporary
            }
        }
    }
}

/// What `dustmote status` shows about the transport.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportStatus {
    /// `direct`, `socks5`, `arti`.
    pub mode: String,
    /// Whether the last connection attempt worked (`None`: none made yet).
    pub ready: Option<bool>,
    /// Bootstrap progress in percent, where the transport reports one.
    pub bootstrap_percent: Option<u8>,
    /// The last connection error, if the last attempt failed.
    pub last_error: Option<String>,
    /// When a stream was last opened successfully (ms since the epoch).
    pub last_success_ms: Option<u64>,
}

/// Opens streams to the next hop.
pub trait Connector: Send + Sync + 'static {
    /// A short name for logs and status (`direct`, `arti`, `socks5`).
    fn name(&self) -> &'static str;
    /// Open a stream to `target`.
    fn connect<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<BoxStream, ConnectError>>;
    /// Current state, for `dustmote status`.
    fn status(&self) -> TransportStatus;
}

/// Records the outcome of connection attempts for [`TransportStatus`].
#[derive(Debug, Default)]
struct Outcomes {
    last: Mutex<(Option<bool>, Option<String>, Option<SystemTime>)>,
}

impl Outcomes {
    fn record<T>(&self, r: &Result<T, ConnectError>) {
        let mut l = self.last.lock();
        match r {
            Ok(_) => *l = (Some(true), None, Some(SystemTime::now())),
            Err(e) => {
                l.0 = Some(false);
                l.1 = Some(e.to_string());
            }
        }
    }

    fn status(&self, mode: &str) -> TransportStatus {
        let l = self.last.lock();
        TransportStatus {
            mode: mode.to_string(),
            ready: l.0,
            bootstrap_percent: None,
            last_error: l.1.clone(),
            last_success_ms: l.2.map(dust_mixer::wall_ms),
        }
    }
}

/// Streams through an existing tor daemon's SocksPort. Every [`Target`]'s
/// isolation token becomes a distinct SOCKS username, so with tor's default
/// `IsolateSOCKSAuth` no two items share a circuit.
#[derive(Debug)]
pub struct Socks5 {
    proxy: SocketAddr,
    connect_timeout: Duration,
    outcomes: Outcomes,
}

impl Socks5 {
    /// Use the SocksPort at `proxy` (an address, never a name to resolve).
    pub fn new(proxy: SocketAddr, connect_timeout: Duration) -> Self {
        Self {
            proxy,
            connect_timeout,
            outcomes: Outcomes::default(),
        }
    }
}

impl Connector for Socks5 {
    fn name(&self) -> &'static str {
        "socks5"
    }

    fn connect<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<BoxStream, ConnectError>> {
        Box::pin(async move {
            let user = format!("dustmote-{:016x}", target.isolation);
            // (&str, u16) becomes a SOCKS5 domain name unless it is an IP
            // literal: the name is resolved by the exit, never here.
            let fut = tokio_socks::tcp::Socks5Stream::connect_with_password(
                self.proxy,
                (target.host.as_str(), target.port),
                &user,
                "dustmote",
            );
            let r = match tokio::time::timeout(self.connect_timeout, fut).await {
                Err(_) => Err(ConnectError::Timeout(self.connect_timeout)),
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(Box::new(s.into_inner()) as BoxStream)
                }
                Ok(Err(
                    e @ (tokio_socks::Error::Io(_) | tokio_socks::Error::ProxyServerUnreachable),
                )) => Err(ConnectError::NotReady(format!(
                    "tor SocksPort {} unreachable: {e}",
                    self.proxy
                ))),
                Ok(Err(e)) => Err(ConnectError::Io(io::Error::other(format!(
                    "through tor to port {}: {e}{}",
                    target.port,
                    arti::port_hint(target.port)
                )))),
            };
            self.outcomes.record(&r);
            r
        })
    }

    fn status(&self) -> TransportStatus {
        self.outcomes.status("socks5")
    }
}

/// Plain TCP from this machine: no anonymity at all. Only for operators who
/// explicitly allow clearnet, and for loopback tests.
#[derive(Debug)]
pub struct Direct {
    connect_timeout: Duration,
    outcomes: Outcomes,
}

impl Direct {
    /// Give up connecting after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            outcomes: Outcomes::default(),
        }
    }
}

impl Connector for Direct {
    fn name(&self) -> &'static str {
        "direct"
    }

    fn connect<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<BoxStream, ConnectError>> {
        Box::pin(async move {
            let addr = (target.host.as_str(), target.port);
            let r = match tokio::time::timeout(
                self.connect_timeout,
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                Err(_) => Err(ConnectError::Timeout(self.connect_timeout)),
                Ok(Err(e)) => Err(ConnectError::Io(e)),
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(Box::new(s) as BoxStream)
                }
            };
            self.outcomes.record(&r);
            r
        })
    }

    fn status(&self) -> TransportStatus {
        self.outcomes.status("direct")
    }
}

/// A connector for a transport this build cannot provide yet: every connect
/// fails temporarily, so items stay queued and nothing leaves in the clear.
#[derive(Debug, Clone)]
pub struct Unavailable {
    /// The configured mode.
    pub mode: &'static str,
    /// Why it is unavailable (shown in logs and status).
    pub reason: String,
}

impl Connector for Unavailable {
    fn name(&self) -> &'static str {
        self.mode
    }

    fn connect<'a>(&'a self, _: &'a Target) -> BoxFuture<'a, Result<BoxStream, ConnectError>> {
        let reason = self.reason.clone();
        Box::pin(async move { Err(ConnectError::NotReady(reason)) })
    }

    fn status(&self) -> TransportStatus {
        TransportStatus {
            mode: self.mode.to_string(),
            ready: Some(false),
            bootstrap_percent: None,
            last_error: Some(self.reason.clone()),
            last_success_ms: None,
        }
    }
}

mod arti;
pub use arti::{arti_config, install_crypto_provider, Arti, ArtiSetupError};
