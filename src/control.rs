//! `dustmote queue`, `status` and `reload`, and the control socket that
//! answers them while the mote runs (sled holds an exclusive lock on the
//! database, so a second process cannot open it then).
//!
//! The socket is `control.sock` in the data directory, mode 0600. A client
//! writes one line, `queue`, `queue addresses`, `status` or `reload`, and
//! reads one JSON object: a [`QueueReport`], a [`Status`], a [`Reloaded`],
//! or `{"error": "..."}`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use dust_mixer::{ItemKind, QueueStats, HELD};
use dust_proxies::access::accounts::{Accounts, Invite};
use dust_proxies::item::mail::StoredMail;
use dust_proxies::onion::Onions;
use dust_proxies::status::{Status, StatusFn};
use dust_storage::{ItemState, Store};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Release times listed by `dustmote queue` and the status.
pub const NEXT_RELEASES: usize = 10;

/// Re-read the configuration and apply the mixer settings: a message on
/// success, the reason on refusal.
pub type ReloadFn = Arc<dyn Fn() -> anyhow::Result<String> + Send + Sync>;

/// The answer to `queue` (and `queue addresses`).
#[derive(Debug, Serialize, Deserialize)]
pub struct QueueReport {
    /// Counts and the next release times.
    #[serde(flatten)]
    pub stats: QueueStats,
    /// Each item, with envelope addresses (only for `queue addresses`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<QueueItem>>,
}

/// One item of `dustmote queue --show-addresses`.
#[derive(Debug, Serialize, Deserialize)]
pub struct QueueItem {
    /// The item id (hex).
    pub id: String,
    /// `mail` or `fetch`.
    pub kind: String,
    /// `queued` or `in-flight`.
    pub state: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Release time (ms since the epoch), or [`HELD`].
    pub release_ms: u64,
    /// Envelope sender (mail only).
    pub from: String,
    /// Envelope recipients (mail only).
    pub rcpts: Vec<String>,
}

/// The answer to `reload`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reloaded {
    /// What was applied.
    pub reloaded: String,
}

/// The answer to a request that failed.
#[derive(Debug, Serialize, Deserialize)]
struct Refused {
    error: String,
}

fn socket_path(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

/// Remove the socket file (at shutdown).
pub fn remove_socket(dir: &Path) {
    let _ = std::fs::remove_file(socket_path(dir));
}

/// The queue report; addresses only when asked.
fn report(store: &Store, addresses: bool) -> anyhow::Result<QueueReport> {
    let stats = store.stats(NEXT_RELEASES)?;
    let items = if addresses {
        let mut items = Vec::new();
        for item in store.items() {
            let item = item?;
            let kind = ItemKind::try_from(item.kind);
            let (from, rcpts) = match kind {
                // The payload is the job id; the URL stays in the job.
                Ok(ItemKind::Fetch) | Err(_) => (String::new(), Vec::new()),
                Ok(ItemKind::Mail) => match StoredMail::decode(&item.payload) {
                    Ok(m) => (m.from, m.rcpts),
                    Err(_) => ("(undecodable)".to_string(), Vec::new()),
                },
            };
            items.push(QueueItem {
                id: item.id.to_string(),
                kind: match kind {
                    Ok(k) => dust_proxies::item::wire::kind_name(k).into(),
                    Err(b) => format!("unknown ({b})"),
                },
                state: if item.state == ItemState::InFlight {
                    "in-flight"
                } else {
                    "queued"
                }
                .into(),
                attempts: item.attempts,
                release_ms: item.release_ms,
                from,
                rcpts,
            });
        }
        Some(items)
    } else {
        None
    };
    Ok(QueueReport { stats, items })
}

/// Bind the control socket (`control.sock` in the data directory, mode
/// 0600). Done with the other listeners, before anything slow starts, so a
/// mote that answers on its ports also answers `dustmote status`.
pub fn bind(dir: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(dir);
    // A socket left by a killed mote; we hold the database lock, so no live
    // mote owns it.
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

/// What the control socket answers with.
#[derive(Clone)]
pub struct Handlers {
    /// The queue.
    pub store: Arc<Store>,
    /// `status`.
    pub status: StatusFn,
    /// `reload`.
    pub reload: ReloadFn,
    /// `invite`, `accounts`, `revoke`, `card`.
    pub accounts: Arc<Accounts>,
    /// The onion services the mote publishes (their addresses go on cards).
    pub onions: Option<Arc<Onions>>,
}

/// The longest request line (an invitation's JSON fits easily).
const MAX_REQUEST: u64 = 4096;

/// One request's answer as JSON.
async fn answer(request: &str, h: &Handlers) -> String {
    fn json<T: Serialize>(r: anyhow::Result<T>) -> String {
        let r = r.and_then(|v| Ok(serde_json::to_string(&v)?));
        r.unwrap_or_else(|e| {
            serde_json::to_string(&Refused {
                error: format!("{e:#}"),
            })
            .unwrap_or_default()
        })
    }
    let (verb, arg) = request.split_once(' ').unwrap_or((request, ""));
    match (verb, arg) {
        ("queue", "") => json(report(&h.store, false)),
        ("queue", "addresses") => json(report(&h.store, true)),
        ("status", "") => json((h.status)().map_err(anyhow::Error::from)),
        ("reload", "") => json((h.reload)().map(|reloaded| Reloaded { reloaded })),
        ("invite", invite) => {
            let r = match serde_json::from_str::<Invite>(invite) {
                Ok(i) => h.accounts.invite(i).await.map_err(anyhow::Error::from),
                Err(e) => Err(anyhow!("bad invitation: {e}")),
            };
            json(r)
        }
        ("accounts", "") => json(h.accounts.list().map_err(anyhow::Error::from)),
        ("revoke", name) => {
            let r = match h.accounts.revoke(name).await {
                Ok(()) => {
                    let onion = if onions_caught_up(h).await {
                        ""
                    } else {
                        "; the onion services are not yet published without its key"
                    };
                    Ok(Reloaded {
                        reloaded: format!("account {name} revoked{onion}"),
                    })
                }
                Err(e) => Err(anyhow::Error::from(e)),
            };
            json(r)
        }
        ("card", name) => json(card(h, name).await),
        _ => json::<()>(Err(anyhow!("unknown request"))),
    }
}

/// What the running mote answers to `card NAME`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Issued {
    /// The account's new credentials.
    #[serde(flatten)]
    pub credentials: dust_proxies::access::accounts::Credentials,
    /// `host.onion:port` of the SMTP service.
    pub smtp: Option<String>,
    /// `host.onion:port` of the HTTP service.
    pub http: Option<String>,
    /// Whether the onion services are published with the card's key yet.
    #[serde(default)]
    pub published: bool,
}

/// `card NAME`: new credentials and card key, with the onion addresses.
async fn card(h: &Handlers, name: &str) -> anyhow::Result<Issued> {
    let Some(onions) = &h.onions else {
        bail!(
            "a card needs the mote's onion addresses: set [onion] control so that the mote \
             publishes its onion services itself"
        );
    };
    // Nothing changes for the account before the card can be made.
    if !onions.published() {
        bail!(
            "the onion services are not published yet (tor's control port does not answer as \
             it should; the mote's log says why, and it keeps trying): try again later"
        );
    }
    let credentials = h.accounts.reissue(name).await?;
    // The card works once the services are published with its key.
    let key = credentials
        .client_auth_key
        .as_deref()
        .and_then(dust_proxies::onion::client_public_key);
    let published = onions
        .wait_in_force(
            |clients| key.as_ref().is_none_or(|k| clients.contains(k)),
            PUBLISH_WAIT,
        )
        .await;
    Ok(Issued {
        credentials,
        smtp: onions.smtp_address(),
        http: onions.http_address(),
        published,
    })
}

/// How long `card` and `revoke` wait for the onion services to be
/// published for the new set of card keys.
const PUBLISH_WAIT: Duration = Duration::from_secs(90);

/// Wait until the onion services are published (and their descriptors
/// uploaded) without any key of an account that has ended; whether they
/// are (true at once without client authorization or onion services).
async fn onions_caught_up(h: &Handlers) -> bool {
    let Some(onions) = &h.onions else {
        return true;
    };
    let live = h.accounts.client_keys();
    onions
        .wait_in_force(
            |clients| {
                let live = live.borrow();
                clients.iter().all(|k| live.contains(k))
            },
            PUBLISH_WAIT,
        )
        .await
}

/// Answer requests on `listener` (from [`bind`]) until `stop`.
pub fn serve(
    listener: tokio::net::UnixListener,
    handlers: Handlers,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = stop.wait_for(|s| *s) => return,
            };
            let Ok((sock, _)) = conn else { continue };
            let h = handlers.clone();
            tokio::spawn(async move {
                let (rd, mut wr) = sock.into_split();
                let mut line = String::new();
                let mut rd = BufReader::new(rd.take(MAX_REQUEST));
                if rd.read_line(&mut line).await.is_err() {
                    return;
                }
                let out = answer(line.trim(), &h).await;
                let _ = wr.write_all(out.as_bytes()).await;
                let _ = wr.shutdown().await;
            });
        }
    })
}

/// Ask the mote running on `dir`: `None` if none answers; the running
/// mote's refusal as an error.
fn ask_running<T: DeserializeOwned>(dir: &Path, req: &str) -> Option<anyhow::Result<T>> {
    let mut s = std::os::unix::net::UnixStream::connect(socket_path(dir)).ok()?;
    let mut out = String::new();
    let r = s
        .write_all(req.as_bytes())
        .and_then(|_| s.read_to_string(&mut out))
        .context("control socket")
        .and_then(|_| {
            if let Ok(Refused { error }) = serde_json::from_str(&out) {
                bail!("the running mote answered: {error}");
            }
            serde_json::from_str(&out).context("control socket")
        });
    Some(r)
}

/// The data directory of the configuration at `config`.
fn data_dir(config: Option<&Path>) -> anyhow::Result<PathBuf> {
    Ok(crate::config::load(config)?.config.storage.dir)
}

/// Ask the running mote; an error if none answers.
pub fn ask_required<T: DeserializeOwned>(config: Option<&Path>, req: &str) -> anyhow::Result<T> {
    let dir = data_dir(config)?;
    ask_running(&dir, req)
        .ok_or_else(|| anyhow!("no running mote answers on {}", socket_path(&dir).display()))?
}

fn when(ms: u64, now: SystemTime) -> String {
    if ms == HELD {
        return "held in the pool (leaves in a round)".into();
    }
    let t = dust_mixer::from_wall_ms(ms);
    let rel = match t.duration_since(now) {
        Ok(d) => format!(
            "in {}",
            humantime::format_duration(Duration::from_secs(d.as_secs()))
        ),
        Err(_) => "overdue".to_string(),
    };
    format!("{}  ({rel})", humantime::format_rfc3339_seconds(t))
}

/// `dustmote queue`.
pub fn queue(config: Option<&Path>, addresses: bool) -> anyhow::Result<()> {
    let checked = crate::config::load(config)?;
    let dir = checked.config.storage.dir.clone();
    let request = if addresses {
        "queue addresses\n"
    } else {
        "queue\n"
    };
    let r: QueueReport = match ask_running(&dir, request) {
        Some(r) => r?,
        None => {
            if !dir.join("queue").exists() {
                bail!("no queue in {} (has the mote run there?)", dir.display());
            }
            let key = crate::key::load(&checked.config.storage, crate::key::Missing::Refuse)?;
            let store = Store::open(&dir.join("queue"), checked.config.storage.cache_bytes, &key)
                .with_context(|| format!("opening the queue in {}", dir.display()))?;
            report(&store, addresses)?
        }
    };
    let now = SystemTime::now();
    let mut out = String::new();
    out.push_str(&format!("queued:    {}\n", r.stats.queued));
    out.push_str(&format!("in flight: {}\n", r.stats.in_flight));
    if !r.stats.next_releases.is_empty() {
        out.push_str("next releases (UTC):\n");
        for ms in &r.stats.next_releases {
            out.push_str(&format!("  {}\n", when(*ms, now)));
        }
    }
    if let Some(items) = &r.items {
        out.push_str("items:\n");
        for i in items {
            if i.kind == "fetch" {
                out.push_str(&format!(
                    "  {} fetch {} release={}\n",
                    i.id,
                    i.state,
                    when(i.release_ms, now),
                ));
                continue;
            }
            out.push_str(&format!(
                "  {} {} attempts={} release={} from=<{}> to={}\n",
                i.id,
                i.state,
                i.attempts,
                when(i.release_ms, now),
                i.from,
                i.rcpts.join(",")
            ));
        }
    }
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}

/// `dustmote reload`: ask the running mote to re-read its configuration.
pub fn reload(config: Option<&Path>) -> anyhow::Result<()> {
    let r: Reloaded = ask_required(config, "reload\n")
        .context("reload refused, the old settings stay in force")?;
    writeln!(std::io::stdout().lock(), "{}", r.reloaded)?;
    Ok(())
}

/// `dustmote status`: the running mote's transport state and queue counts.
pub fn status(config: Option<&Path>) -> anyhow::Result<()> {
    let s: Status = ask_required(config, "status\n")?;
    let t = &s.transport;
    let mut out = String::new();
    let state = match t.ready {
        Some(true) => "ready",
        Some(false) => "not ready",
        None => "no connection attempted yet",
    };
    out.push_str(&format!(
        "executable: dustmote {} sha256 {}\n",
        s.executable.version, s.executable.sha256
    ));
    if let Some(e) = &s.expires_at {
        out.push_str(&format!("expires at: {e}\n"));
    }
    out.push_str(&format!("transport: {} ({state})\n", t.mode));
    if let Some(p) = t.bootstrap_percent {
        out.push_str(&format!("bootstrap: {p}%\n"));
    }
    if let Some(e) = &t.last_error {
        out.push_str(&format!("last error: {e}\n"));
    }
    if let Some(ms) = t.last_success_ms {
        out.push_str(&format!(
            "last stream opened: {}\n",
            humantime::format_rfc3339_seconds(dust_mixer::from_wall_ms(ms))
        ));
    }
    out.push_str(&format!(
        "queued:    {}\nin flight: {}\n",
        s.queue.queued, s.queue.in_flight
    ));
    let m = &s.mix;
    out.push_str(&format!(
        "mix:       {} (held {}, pool {}, mean pool {:.1})\n",
        m.strategy_name(),
        m.held,
        m.pool,
        m.mean_pool,
    ));
    out.push_str(&format!(
        "anonymity: {:.2} bits recent, {:.2} bits mean over {} outputs, {:.2} % left unmixed\n",
        m.entropy_bits_recent,
        m.entropy_bits_mean,
        m.outputs,
        m.p_unmixed * 100.0,
    ));
    if let Some(h) = &s.hop {
        out.push_str(&format!(
            "hop:       {} at {} to {} ({} handed off, {} released here instead)\n",
            h.state,
            h.hop_at,
            h.successor.as_deref().unwrap_or("(no successor named)"),
            h.handed_off,
            h.fallbacks,
        ));
    }
    if let Some(sh) = &s.sharing {
        if sh.accounts > 0 || sh.smtp_onion.is_some() || sh.http_onion.is_some() {
            out.push_str(&format!(
                "sharing:   {} accounts, {} with a card; onion smtp {} http {}{}\n",
                sh.accounts,
                sh.cards,
                sh.smtp_onion.as_deref().unwrap_or("-"),
                sh.http_onion.as_deref().unwrap_or("-"),
                if sh.client_auth {
                    " (client authorization)"
                } else {
                    ""
                },
            ));
        }
    }
    if let Some(le) = m.median_bound() {
        let median = if le.is_finite() {
            humantime::format_duration(Duration::from_secs_f64(le)).to_string()
        } else {
            "more than a day".into()
        };
        out.push_str(&format!("latency:   median <= {median}\n"));
    }
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}
