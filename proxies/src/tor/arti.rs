//! The embedded Arti connector (`[tor] mode = "arti"`).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arti_client::config::{CfgPath, TorClientConfigBuilder};
use arti_client::{BootstrapBehavior, DataStream, IsolationToken, StreamPrefs, TorClient};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tor_proto::client::stream::ClientStreamCtrl;
use tor_rtcompat::PreferredRuntime;

use super::{BoxStream, ConnectError, Connector, Outcomes, Target, TransportStatus};

/// Why Arti could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ArtiSetupError {
    /// The `arti_config` file could not be read or parsed.
    #[error("{file}: {reason}")]
    Config {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// Arti refused the configuration or could not start.
    #[error("starting Arti: {0}")]
    Start(String),
}

/// Build Arti's configuration: dustmote's defaults (state and cache under
/// `data_dir`), with the operator's `arti_config` file (Arti's own format)
/// on top. The file's storage settings win if it has any.
pub fn arti_config(
    data_dir: &Path,
    file: Option<&Path>,
) -> Result<arti_client::TorClientConfig, ArtiSetupError> {
    let (mut builder, sets_storage) = match file {
        None => (TorClientConfigBuilder::default(), (false, false)),
        Some(f) => {
            let err = |reason: String| ArtiSetupError::Config {
                file: f.display().to_string(),
                reason,
            };
            let text = std::fs::read_to_string(f).map_err(|e| err(e.to_string()))?;
            let value: toml::Value = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
            let storage = value.get("storage");
            let sets = |k: &str| storage.and_then(|s| s.get(k)).is_some();
            let sets_storage = (sets("state_dir"), sets("cache_dir"));
            let builder: TorClientConfigBuilder =
                toml::from_str(&text).map_err(|e| err(e.to_string()))?;
            (builder, sets_storage)
        }
    };
    let dir: PathBuf = data_dir.join("arti");
    if !sets_storage.0 {
        builder
            .storage()
            .state_dir(CfgPath::new_literal(dir.join("state")));
    }
    if !sets_storage.1 {
        builder
            .storage()
            .cache_dir(CfgPath::new_literal(dir.join("cache")));
    }
    builder
        .build()
        .map_err(|e| ArtiSetupError::Start(format!("configuration: {e}")))
}

/// Streams through an embedded Arti client. Every stream gets its own
/// [`IsolationToken`], so no two items share a circuit. Arti bootstraps in
/// the background; until it is ready, connections fail temporarily and
/// items stay queued.
pub struct Arti {
    client: Arc<TorClient<PreferredRuntime>>,
    outcomes: Outcomes,
}

impl std::fmt::Debug for Arti {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arti").finish_non_exhaustive()
    }
}

impl Arti {
    /// Create the client on the current tokio runtime and start
    /// bootstrapping in the background.
    pub fn start(config: arti_client::TorClientConfig) -> Result<Self, ArtiSetupError> {
        let rt = PreferredRuntime::current().map_err(|e| ArtiSetupError::Start(e.to_string()))?;
        let client = TorClient::with_runtime(rt)
            .config(config)
            .bootstrap_behavior(BootstrapBehavior::Manual)
            .create_unbootstrapped()
            .map_err(|e| ArtiSetupError::Start(e.to_string()))?;
        let c = Arc::clone(&client);
        tokio::spawn(async move {
            if let Err(e) = c.bootstrap().await {
                tracing::warn!(error = %e, "Arti bootstrap failed; it keeps trying on demand");
            }
        });
        Ok(Self {
            client,
            outcomes: Outcomes::default(),
        })
    }
}

impl Connector for Arti {
    fn name(&self) -> &'static str {
        "arti"
    }

    fn connect<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<BoxStream, ConnectError>> {
        Box::pin(async move {
            let r = if !self.client.bootstrap_status().ready_for_traffic() {
                Err(ConnectError::NotReady(format!(
                    "Arti is bootstrapping ({})",
                    self.client.bootstrap_status()
                )))
            } else {
                let mut prefs = StreamPrefs::new();
                prefs.set_isolation(IsolationToken::new());
                // (&str, u16) is handed to Tor as a hostname (or an address
                // literal); Arti never resolves it locally.
                match self
                    .client
                    .connect_with_prefs((target.host.as_str(), target.port), &prefs)
                    .await
                {
                    Ok(s) => {
                        // The circuit's id (not an address) shows that every
                        // item gets a circuit of its own.
                        let circuit = s
                            .client_stream_ctrl()
                            .and_then(|c| c.tunnel())
                            .map(|t| t.unique_id().to_string())
                            .unwrap_or_default();
                        tracing::debug!(%circuit, "Arti stream opened");
                        Ok(Box::new(SyncStream(Mutex::new(s))) as BoxStream)
                    }
                    Err(e) => Err(ConnectError::Io(std::io::Error::other(format!(
                        "through Arti to port {}: {e}{}",
                        target.port,
                        port_hint(target.port)
                    )))),
                }
            };
            self.outcomes.record(&r);
            r
        })
    }

    fn status(&self) -> TransportStatus {
        let b = self.client.bootstrap_status();
        let mut st = self.outcomes.status("arti");
        st.bootstrap_percent = Some((b.as_frac() * 100.0).round().clamp(0.0, 100.0) as u8);
        if !b.ready_for_traffic() {
            st.ready = Some(false);
            if let Some(blocked) = b.blocked() {
                st.last_error = Some(format!("bootstrap blocked: {blocked}"));
            } else if st.last_error.is_none() {
                st.last_error = Some(format!("bootstrapping: {b}"));
            }
        }
        st
    }
}

/// `DataStream` is `Send` but not `Sync`; lettre wants both. Access always
/// goes through `&mut` (Pin<&mut Self>), so the mutex is never contended.
#[derive(Debug)]
struct SyncStream(Mutex<DataStream>);

impl SyncStream {
    fn inner(self: Pin<&mut Self>) -> Pin<&mut DataStream> {
        Pin::new(Pin::into_inner(self).0.get_mut())
    }
}

impl AsyncRead for SyncStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.inner().poll_read(cx, buf)
    }
}

impl AsyncWrite for SyncStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.inner().poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner().poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner().poll_shutdown(cx)
    }
}

/// Install rustls's ring provider as the process default. Arti (with its
/// `rustls` feature) panics without one; call this once before starting
/// Arti. Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

/// A hint for ports that Tor's default exit policy rejects.
pub(crate) fn port_hint(port: u16) -> &'static str {
    if port == 25 {
        " (Tor's default exit policy rejects port 25: few exits, if any, carry SMTP to MX hosts; consider mode = \"relay\" on 465/587)"
    } else {
        ""
    }
}
