//! `dustmote serve`: wiring the parts together, signals, and the mote's
//! lifetime. Order of start: store, lifetime, listeners (control socket
//! first), transport, mixer, cover, control, HTTP API, SMTP; on a signal or
//! at the end of the lifetime everything stops in reverse.

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
use dust_proxies::onion::{OnionConfig, Onions};
use dust_proxies::status::{Executable, SharingStatus, Status, StatusFn};
use dust_proxies::tor::{arti_config, install_crypto_provider, Arti, Connector, Direct, Socks5};
use dust_storage::Store;
use tokio::sync::watch;

use crate::config::{self, Checked, TorMode};
use crate::{control, cover};

/// Bound on opening one outbound stream (a Tor circuit can take a while).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stop may take beyond the session and delivery grace periods
/// before the process exits anyway ([`arm_watchdog`]).
const STOP_MARGIN: Duration = Duration::from_secs(10);

/// How often the lifetime watcher looks at the wall clock, so that a clock
/// jump cannot postpone the end by much.
const LIFETIME_CHECK: Duration = Duration::from_secs(30);

/// The mote's mixer.
type MoteMixer = Mixer<TokioRt, Egress>;

/// Why `serve` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A stop signal.
    Stopped,
    /// The lifetime is over (or was over at the start): the process exits
    /// with [`EXPIRED_STATUS`], which tells the unit to power the VM off.
    Expired,
}

/// The exit status of a mote whose lifetime is over. `dustmote.service`
/// powers the VM off on this status only, so that `systemctl stop` or a
/// crash never does.
pub const EXPIRED_STATUS: u8 = 10;

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

/// Quiet time after a change of the cards' keys before the onion services
/// are published again (changes in a row make one publication).
const ONION_SETTLE: Duration = Duration::from_secs(1);
/// Least time between two publications of the onion services.
const ONION_REPUBLISH: Duration = Duration::from_secs(3);
/// First wait before trying again after a publication failed (tor not up
/// yet, its control port refusing or misbehaving); it doubles up to
/// [`ONION_RETRY_MAX`].
const ONION_RETRY_MIN: Duration = Duration::from_secs(1);
const ONION_RETRY_MAX: Duration = Duration::from_secs(60);
/// How often the control connection is checked while all is published
/// (tor removes the services when it closes, as when tor restarts).
const ONION_CHECK: Duration = Duration::from_secs(10);

/// The mote's onion services, published through tor's control port by a
/// task: for the cards' keys now, again whenever they change, and again
/// whenever the control connection is lost. The mote serves meanwhile: a
/// tor that is not up yet, or a control port that refuses, stalls or
/// misbehaves, delays the services (tried again with a backoff up to a
/// minute, each failure logged), never the start. Only a bad key file ends
/// the start.
fn publish_onions(cfg: OnionConfig, accounts: &Arc<Accounts>) -> anyhow::Result<Arc<Onions>> {
    let onions = Arc::new(Onions::new(cfg).context("reading the onion services' keys ([onion])")?);
    let mut keys = accounts.client_keys();
    let o = Arc::clone(&onions);
    tokio::spawn(async move {
        let mut retry = ONION_RETRY_MIN;
        let mut published_once = false;
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            if let Some(last) = last {
                // Each publication makes new introduction points and a new
                // descriptor; tor clients and directories cope badly with
                // descriptors replaced within the same seconds.
                tokio::time::sleep_until(last + ONION_REPUBLISH).await;
            }
            let now = keys.borrow_and_update().clone();
            let r = o.publish(&now, published_once).await;
            last = Some(tokio::time::Instant::now());
            if let Err(e) = r {
                tracing::warn!(
                    error = %e,
                    retry_in = ?retry,
                    "publishing the onion services ([onion]) failed; the mote serves without them \
                     and tries again"
                );
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    changed = keys.changed() => if changed.is_err() { return },
                }
                retry = (retry * 2).min(ONION_RETRY_MAX);
                continue;
            }
            retry = ONION_RETRY_MIN;
            if published_once {
                tracing::info!(clients = now.len(), "onion services published again");
            } else {
                tracing::info!(
                    smtp = o.smtp_address().as_deref().unwrap_or("-"),
                    http = o.http_address().as_deref().unwrap_or("-"),
                    client_auth = o.client_auth(),
                    "onion services published"
                );
                published_once = true;
            }
            // Until the cards' keys change (and have settled: changes in a
            // row make one publication) or the services are lost.
            loop {
                tokio::select! {
                    changed = keys.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        loop {
                            tokio::select! {
                                changed = keys.changed() => if changed.is_err() { return },
                                _ = tokio::time::sleep(ONION_SETTLE) => break,
                            }
                        }
                        break;
                    }
                    _ = tokio::time::sleep(ONION_CHECK) => {
                        if !o.still_published().await {
                            tracing::warn!(
                                "the control connection to tor was lost, and the onion services \
                                 with it: publishing them again"
                            );
                            break;
                        }
                    }
                }
            }
        }
    });
    Ok(onions)
}

/// End accounts when their time is over (their sessions are closed and
/// their downloads deleted), after finishing the ends of accounts that
/// ended while the mote was down (or whose end a crash cut short).
async fn end_expired_accounts(accounts: Arc<Accounts>, mut stop: watch::Receiver<bool>) {
    match accounts.finish_ending().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(accounts = n, "finished the ends of accounts that had ended"),
        Err(e) => tracing::warn!(error = %e, "could not finish the ends of accounts"),
    }
    loop {
        let next = accounts.end_expired().await;
        // Accounts made meanwhile are looked at within the minute.
        let wait = next
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = accounts.invited() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
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
        // Counted from the first start, recorded in the store: a restart
        // does not extend the mote's life.
        let first = store
            .first_start_ms(dust_mixer::wall_ms(SystemTime::now()))
            .await?;
        mixer_cfg.lifetime = Some(Lifetime {
            expires_at: dust_mixer::from_wall_ms(first) + lifetime,
            drain_margin: config.mote.drain_margin,
        });
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
    // The configuration's users, and accounts added while the mote runs
    // (opened first: the fetcher counts downloads against them).
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
        Arc::clone(&store),
        Arc::clone(&smtp_verifier),
        Arc::clone(&http_verifier),
        configured,
        lifetime.map(|l| l.expires_at),
    )?;
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
    let expired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(l) = lifetime {
        tokio::spawn(stop_at_end(
            l,
            Arc::clone(&store),
            Arc::clone(&stop_tx),
            Arc::clone(&expired),
            stop_limit,
        ));
    }
    let peer_link = PeerLink::new(peers, MailRules::of(&smtp), job_users);
    let api = Api::new(
        Arc::clone(&store),
        http_verifier,
        status,
        Arc::new(mixer.clone()),
    )
    .only_user(http_only)
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
    let store_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(watch_store(
        Arc::clone(&store),
        Arc::clone(&stop_tx),
        Arc::clone(&store_failed),
        stop_limit,
    ));
    let stop_on_signal = Arc::clone(&stop_tx);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(
            "stopping: no new connections; open sessions and deliveries get a grace period"
        );
        let _ = stop_on_signal.send(true);
        arm_watchdog(stop_limit);
        // A second signal: stop now.
        wait_for_signal().await;
        tracing::warn!("second stop signal: exiting at once");
        std::process::exit(1);
    });
    let server =
        Server::new(smtp, Arc::new(mixer.clone())).accounts(smtp_verifier, Arc::clone(&accounts));
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
    let stats = store.stats(0)?;
    tracing::info!(
        queued = stats.queued,
        in_flight_returned = left,
        "stopped; everything not delivered stays queued for the next start"
    );
    if store_failed.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!(
            "stopped because the store failed a write (disk full?); start again once there is \
             space: everything acknowledged is on disk and will be delivered"
        );
    }
    if expired.load(std::sync::atomic::Ordering::SeqCst) {
        tracing::info!(
            queued = stats.queued,
            "the mote's lifetime is over; exiting"
        );
        return Ok(Ended::Expired);
    }
    Ok(Ended::Stopped)
}

/// How often [`watch_store`] checks that the store can still write.
const STORE_CHECK: Duration = Duration::from_secs(2);

/// sled 0.34.7 does not recover from a failed log write (a disk filled to
/// the last byte from outside, past the `min_free` reserve): every later
/// write fails with the same error. Such a store is found by a periodic
/// flush (cheap when nothing is pending), and the mote then stops and exits
/// with an error, so that its supervisor (`Restart=on-failure`) starts it
/// again; the start reopens the store from what is on disk.
async fn watch_store(
    store: Arc<Store>,
    stop: Arc<watch::Sender<bool>>,
    failed: Arc<std::sync::atomic::AtomicBool>,
    stop_limit: Duration,
) {
    loop {
        tokio::time::sleep(STORE_CHECK).await;
        if *stop.borrow() {
            return;
        }
        if let Err(e) = store.sync().await {
            tracing::error!(
                error = %e,
                "the store cannot write any more; stopping so that a restart reopens it"
            );
            failed.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = stop.send(true);
            arm_watchdog(stop_limit);
            return;
        }
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

/// At the end of its life the mote stops by itself (the deploy layer then
/// shuts the VM down). Checked against the wall clock every
/// [`LIFETIME_CHECK`], so a clock jump cannot postpone it by much.
async fn stop_at_end(
    l: Lifetime,
    store: Arc<Store>,
    stop: Arc<watch::Sender<bool>>,
    expired: Arc<std::sync::atomic::AtomicBool>,
    stop_limit: Duration,
) {
    while let Ok(left) = l.expires_at.duration_since(SystemTime::now()) {
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(LIFETIME_CHECK)).await;
    }
    let queued = store.stats(0).map(|s| s.queued).unwrap_or(0);
    if queued > 0 {
        tracing::warn!(
            queued,
            "the mote's lifetime is over with items still queued"
        );
    }
    tracing::info!("the mote's lifetime is over; stopping");
    expired.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = stop.send(true);
    arm_watchdog(stop_limit);
}

/// Once a stop has begun, the process exits within `limit` whatever
/// happens (a disk that hangs an fsync, a peer that never answers): every
/// acknowledged item was fsynced before its acknowledgement, so the orderly
/// part of a stop only saves work, never data.
fn arm_watchdog(limit: Duration) {
    let spawned = std::thread::Builder::new()
        .name("dust-stop-watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            tracing::error!(
                after_s = limit.as_secs(),
                "the orderly stop did not finish in time; exiting now (nothing acknowledged is lost)"
            );
            std::process::exit(1);
        });
    if spawned.is_err() {
        tracing::warn!("could not start the stop watchdog");
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
