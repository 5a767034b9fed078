//! `dustmote serve`: wiring the parts together, and nothing else. Order of
//! start: store, lifetime, listeners (control socket first), transport,
//! accounts, egress and mixer, cover, onion services, control, stops
//! ([`crate::lifetime`]), HTTP API, SMTP; on a signal or at the end of the
//! lifetime everything stops in reverse.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use dust_mixer::tokio_rt::TokioRt;
use dust_mixer::{Lifetime, Mixer};
use dust_proxies::access::accounts::Accounts;
use dust_proxies::access::auth::Verifier;
use dust_proxies::egress::fetch::Fetcher;
use dust_proxies::egress::hop::Hop;
use dust_proxies::egress::Egress;
use dust_proxies::intake::http::{Api, MailRules, PeerLink};
use dust_proxies::intake::smtp::Server;
use dust_proxies::item::job::FetchCounts;
use dust_proxies::onion::Onions;
use dust_proxies::status::{Executable, SharingStatus, Status, StatusFn};
use dust_proxies::tor::{arti_config, install_crypto_provider, Arti, Connector, Direct, Socks5};
use dust_storage::Store;
use tokio::sync::watch;

use crate::config::{self, Checked, TorMode};
use crate::lifetime::{lifetime_from, Ended, Stops, STOP_MARGIN};
use crate::onions::{end_expired_accounts, publish_onions};
use crate::{control, cover};

/// Bound on opening one outbound stream (a Tor circuit can take a while).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The mote's mixer.
type MoteMixer = Mixer<TokioRt, Egress>;

/// Run the mote until SIGINT/SIGTERM or the end of its lifetime.
pub fn serve(config: Option<PathBuf>) -> anyhow::Result<Ended> {
    // Everything the mote creates (the data directory, sled's files, content
    // files, the key, the control socket) is its owner's only, from the
    // moment it exists: no chmod afterwards, no race.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let checked = config::load(config.as_deref())?;
    for w in &checked.warnings {
        tracing::warn!("{w}");
    }
    // Arti's TLS (rustls) needs a process-wide crypto provider.
    install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = runtime.block_on(run(checked, config));
    // Blocking-pool work that still hangs (a stuck disk) must not hold the
    // exit; what matters was made durable before it was acknowledged.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// Open the queue in the data directory (made private: mode 0700), sealed
/// under its key (made at the first start).
fn open_store(storage: &config::Storage) -> anyhow::Result<Arc<Store>> {
    let dir = &storage.dir;
    dust_storage::private_dir(dir)
        .with_context(|| format!("creating {} (private)", dir.display()))?;
    let key = crate::key::load(storage, crate::key::Missing::Create)?;
    Store::open(&dir.join("queue"), storage.cache_bytes, &key).with_context(|| {
        format!(
            "opening the queue in {} (is another dustmote running on it?)",
            dir.display()
        )
    })
}

/// The transport the configuration asks for.
fn connector(config: &config::Config) -> anyhow::Result<Arc<dyn Connector>> {
    Ok(match config.tor.mode {
        TorMode::Direct => Arc::new(Direct::new(CONNECT_TIMEOUT)),
        TorMode::Socks5 => Arc::new(Socks5::new(config.tor.socks_addr(), CONNECT_TIMEOUT)),
        TorMode::Arti => {
            let cfg = arti_config(&config.storage.dir, config.tor.arti_config.as_deref())?;
            Arc::new(Arti::start(cfg)?)
        }
    })
}

/// The running executable's version and SHA-256 (read from
/// `/proc/self/exe`, so it is the file that runs even if the path was
/// replaced since), logged when known: a user or an abuse desk compares it
/// with the published reproducible build. Hashed on a thread of its own so
/// that the start does not wait for it (a debug build is 300 MB); until it
/// is known, the status shows the version with an empty hash.
fn executable() -> Arc<std::sync::OnceLock<Executable>> {
    let cell = Arc::new(std::sync::OnceLock::new());
    let out = Arc::clone(&cell);
    let hashed = std::thread::Builder::new()
        .name("dust-self-hash".into())
        .spawn(move || {
            use sha2::{Digest, Sha256};
            // Streamed: reading the file whole would add its size (27 MB
            // in a release build) to the mote's peak memory.
            let sha256 = std::fs::File::open("/proc/self/exe")
                .or_else(|_| std::env::current_exe().and_then(std::fs::File::open))
                .and_then(|mut f| {
                    let mut hasher = Sha256::new();
                    std::io::copy(&mut f, &mut hasher)?;
                    Ok(hasher.finalize())
                })
                .map(|digest| digest.iter().map(|b| format!("{b:02x}")).collect())
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "could not read the executable to hash it");
                    String::new()
                });
            let e = Executable {
                version: env!("CARGO_PKG_VERSION").to_string(),
                sha256,
            };
            tracing::info!(version = %e.version, sha256 = %e.sha256, "dustmote executable");
            let _ = out.set(e);
        });
    if hashed.is_err() {
        tracing::warn!("could not start hashing the executable");
    }
    cell
}

/// The status, assembled from its owners' parts.
fn status_source(
    store: Arc<Store>,
    connector: Arc<dyn Connector>,
    mixer: MoteMixer,
    expires_at: Option<String>,
    executable: Arc<std::sync::OnceLock<Executable>>,
    hop: Arc<Hop>,
    sharing: (Arc<Accounts>, Option<Arc<Onions>>),
) -> StatusFn {
    Arc::new(move || {
        let (accounts, onions) = &sharing;
        let (n, cards) = accounts.counts();
        let sharing = SharingStatus {
            accounts: n,
            cards,
            smtp_onion: onions.as_ref().and_then(|o| o.smtp_address()),
            http_onion: onions.as_ref().and_then(|o| o.http_address()),
            client_auth: onions.as_ref().is_some_and(|o| o.client_auth()),
        };
        let hop = hop.status(&mixer);
        Ok(Status {
            executable: executable.get().cloned().unwrap_or_else(|| Executable {
                version: env!("CARGO_PKG_VERSION").to_string(),
                sha256: String::new(),
            }),
            expires_at: expires_at.clone(),
            queue: store.stats(control::NEXT_RELEASES)?,
            transport: connector.status(),
            mix: mixer.status(),
            fetches: FetchCounts::count(&store),
            hop,
            sharing: Some(sharing),
        })
    })
}

/// Re-read the configuration and apply its mixer and cover settings.
fn reloader(
    config_path: Option<PathBuf>,
    mixer: MoteMixer,
    store: Arc<Store>,
    sanitize: dust_proxies::item::mail::SanitizeOptions,
    hop: Arc<Hop>,
) -> control::ReloadFn {
    Arc::new(move || {
        let checked = config::load(config_path.as_deref())?;
        // The successor first: the reconfiguration wakes the mixer, which
        // then sees it (a successor named after the hop point takes the
        // queue at once).
        let named = checked.successor.as_ref().map(|s| s.name.clone());
        hop.set_successor(checked.successor);
        mixer.reconfigure(checked.mixer)?;
        if let Some(targets) = checked.cover {
            mixer.set_cover_source(cover::source(targets, Arc::clone(&store), sanitize));
        }
        tracing::info!("mixer settings reloaded");
        let successor = match named {
            Some(n) => format!("; successor: {n}"),
            None => String::new(),
        };
        Ok(format!(
            "mixer settings reloaded ([mixer], [fetch] delay, [mote] hop, hop_window and \
             successor{successor}); items already scheduled keep their times; other sections \
             apply at the next start"
        ))
    })
}

async fn run(checked: Checked, config_path: Option<PathBuf>) -> anyhow::Result<Ended> {
    let Checked {
        config,
        smtp,
        mixer: mut mixer_cfg,
        route,
        http_users,
        http_operators,
        fetch,
        lifetime_from_first_start,
        cover: cover_targets,
        peers,
        successor,
        onion,
        ..
    } = checked;
    let dir = config.storage.dir.clone();
    let job_users: Vec<String> = http_users.names().map(str::to_string).collect();
    let store = open_store(&config.storage)?;
    store.set_min_free(config.storage.min_free.0);
    let stats = store.stats(0)?;
    tracing::info!(
        queued = stats.queued,
        in_flight = stats.in_flight,
        "queue opened"
    );
    if let Some(lifetime) = lifetime_from_first_start {
        mixer_cfg.lifetime = Some(lifetime_from(&store, lifetime, config.mote.drain_margin).await?);
    }
    let lifetime = mixer_cfg.lifetime;
    let expires_at = lifetime.map(|l| humantime::format_rfc3339_seconds(l.expires_at).to_string());
    if let Some(e) = &expires_at {
        tracing::info!(expires_at = %e, "the mote ends at this time");
    }
    if lifetime.is_some_and(|l| l.expires_at <= SystemTime::now()) {
        tracing::info!(
            queued = stats.queued,
            "the mote's lifetime is over; not starting"
        );
        return Ok(Ended::Expired);
    }
    // Listen first: a mote that cannot take its ports must not start
    // delivering either. The control socket first of all, so that a mote
    // whose SMTP port answers also answers `dustmote status`.
    let control_listener = control::bind(&dir)?;
    let listener = tokio::net::TcpListener::bind(config.smtp.listen)
        .await
        .with_context(|| format!("listening on {}", config.smtp.listen))?;
    let http_listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("listening on {}", config.http.listen))?;
    let connector = connector(&config)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    // Opened first: the fetcher counts downloads against the accounts.
    let people = People::open(&store, &smtp, http_users, lifetime)?;
    let accounts = Arc::clone(&people.accounts);
    let hop = Hop::new(Arc::clone(&connector), Arc::clone(&store), successor);
    let fetcher = Fetcher::new(Arc::clone(&store), Arc::clone(&connector), fetch)
        .with_accounts(Arc::clone(&accounts));
    let egress = Egress::new(Arc::clone(&connector), route, fetcher, Arc::clone(&hop));
    let mixer = Mixer::start(
        TokioRt::current(),
        Arc::clone(&store),
        Arc::new(egress),
        mixer_cfg,
    )?;
    if let Some(targets) = cover_targets {
        mixer.set_cover_source(cover::source(targets, Arc::clone(&store), smtp.sanitize));
    }
    tokio::spawn(Arc::clone(&hop).hand_off_finished_jobs(mixer.clone()));
    let onions = match onion {
        Some(mut cfg) => {
            if cfg.key_file.as_os_str().is_empty() {
                cfg.key_file = crate::key::runtime_file(&dir, "onion")?;
            }
            Some(publish_onions(cfg, &accounts)?)
        }
        None => None,
    };
    tokio::spawn(end_expired_accounts(Arc::clone(&accounts), stop_rx.clone()));
    let status = status_source(
        Arc::clone(&store),
        Arc::clone(&connector),
        mixer.clone(),
        expires_at,
        executable(),
        Arc::clone(&hop),
        (Arc::clone(&accounts), onions.clone()),
    );
    let reload = reloader(
        config_path,
        mixer.clone(),
        Arc::clone(&store),
        smtp.sanitize,
        Arc::clone(&hop),
    );
    let control = control::serve(
        control_listener,
        control::Handlers {
            store: Arc::clone(&store),
            status: Arc::clone(&status),
            reload: Arc::clone(&reload),
            accounts: Arc::clone(&accounts),
            onions: onions.clone(),
        },
        stop_rx.clone(),
    );
    tokio::spawn(reload_on_sighup(reload));
    // However a stop begins, the process is gone this long after it.
    let stop_limit = config.shutdown.session_grace + config.shutdown.delivery_grace + STOP_MARGIN;
    let stops = Stops::watch(&store, &stop_tx, lifetime, stop_limit);
    let peer_link = PeerLink::new(peers, MailRules::of(&smtp), job_users);
    let api = Api::new(
        Arc::clone(&store),
        people.http_verifier,
        status,
        Arc::new(mixer.clone()),
    )
    .only_user(people.http_only)
    .operators(http_operators)
    .peer_link(peer_link)
    .accounts(Arc::clone(&accounts));
    let http_task = tokio::spawn(Arc::new(api).serve(
        http_listener,
        stop_rx.clone(),
        config.http.max_connections,
        config.http.peer_connections,
    ));
    tracing::info!(smtp = %config.smtp.listen, http = %config.http.listen, "dustmote is running");
    let server = Server::new(smtp, Arc::new(mixer.clone()))
        .accounts(people.smtp_verifier, Arc::clone(&accounts));
    // On a worker of the runtime, not on the thread that waits in
    // `block_on`: a session spawned by the accept loop then starts on the
    // worker that accepted it, without a wake-up of another thread.
    let grace = config.shutdown.session_grace;
    let smtp_task = tokio::spawn(async move { server.serve(listener, stop_rx, grace).await });
    if let Err(e) = smtp_task.await {
        tracing::error!(error = %e, "the SMTP server stopped abnormally");
    }
    let left = mixer.shutdown(config.shutdown.delivery_grace).await;
    let _ = http_task.await;
    control.abort();
    control::remove_socket(&dir);
    stops.ended(&store, left)
}

/// Who may use the mote: the configuration's users and the accounts added
/// while it runs, with one verifier per door (shared with the accounts,
/// which add and remove users in them).
struct People {
    smtp_verifier: Arc<Verifier>,
    http_verifier: Arc<Verifier>,
    /// The configuration's only HTTP user, if there is one.
    http_only: Option<String>,
    accounts: Arc<Accounts>,
}

impl People {
    fn open(
        store: &Arc<Store>,
        smtp: &dust_proxies::intake::smtp::SmtpConfig,
        http_users: dust_proxies::access::auth::Users,
        lifetime: Option<Lifetime>,
    ) -> anyhow::Result<Self> {
        let smtp_verifier = Arc::new(Verifier::new(smtp.users.clone()));
        let http_only = http_users.only().map(str::to_string);
        let configured: Vec<String> = smtp
            .users
            .names()
            .chain(http_users.names())
            .map(str::to_string)
            .collect();
        let http_verifier = Arc::new(Verifier::new(http_users));
        let accounts = Accounts::open(
            Arc::clone(store),
            Arc::clone(&smtp_verifier),
            Arc::clone(&http_verifier),
            configured,
            lifetime.map(|l| l.expires_at),
        )?;
        Ok(Self {
            smtp_verifier,
            http_verifier,
            http_only,
            accounts,
        })
    }
}

/// SIGHUP: reload as `dustmote reload` does.
async fn reload_on_sighup(reload: control::ReloadFn) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match reload() {
            Ok(m) => tracing::info!("SIGHUP: {m}"),
            Err(e) => {
                tracing::error!("SIGHUP: reload refused, the old settings stay in force: {e:#}")
            }
        }
    }
}
