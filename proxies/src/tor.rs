//! Where outbound connections come from.
//!
//! Delivery code never opens a socket itself: it asks a [`Connector`] for a
//! stream to a *hostname* and port. The Tor connectors (next issue) hand the
//! hostname to Tor unresolved; [`Direct`] is the clearnet connector, which the
//! binary only builds when the operator set `[tor] mode = "direct"` together
//! with `allow_clearnet = true`.

use std::fmt::Debug;
use std::io;
use std::time::Duration;

use futures::future::BoxFuture;
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

/// Opens streams to the next hop.
pub trait Connector: Send + Sync + 'static {
    /// A short name for logs and status (`direct`, `arti`, `socks5`).
    fn name(&self) -> &'static str;
    /// Open a stream to `target`.
    fn connect<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<BoxStream, ConnectError>>;
}

/// Plain TCP from this machine: no anonymity at all. Only for operators who
/// explicitly allow clearnet, and for loopback tests.
#[derive(Debug, Clone)]
pub struct Direct {
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
}

impl Connector for Direct {
    fn name(&self) -> &'static str {
        "direct"
    }

    fn connect<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<BoxStream, ConnectError>> {
        Box::pin(async move {
            let addr = (target.host.as_str(), target.port);
            let s =
                tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(|_| ConnectError::Timeout(self.connect_timeout))??;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as BoxStream)
        })
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
}
