//! `dustmote queue`, and the control socket that answers it while the mote
//! runs (sled holds an exclusive lock on the database, so a second process
//! cannot open it then).
//!
//! The socket is `control.sock` in the data directory, mode 0600. A client
//! writes one line, `queue`, `queue addresses`, `status` or `reload`, and
//! reads one JSON object.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use dust_mixer::anonymity::LATENCY_BUCKETS_S;
use dust_mixer::{AnonymityStats, MixerConfig, Strategy, HELD};
use dust_proxies::mail::StoredMail;
use dust_proxies::tor::Connector;
use dust_storage::{ItemState, Store};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Release times listed by `dustmote queue`.
const NEXT_RELEASES: usize = 10;

fn socket_path(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

/// Remove the socket file (at shutdown).
pub fn remove_socket(dir: &Path) {
    let _ = std::fs::remove_file(socket_path(dir));
}

/// The queue report; addresses only when asked.
fn report(store: &Store, addresses: bool) -> Result<Value, String> {
    let stats = store.stats(NEXT_RELEASES).map_err(|e| e.to_string())?;
    let mut v = json!({
        "queued": stats.queued,
        "in_flight": stats.in_flight,
        "next_releases_ms": stats.next_releases,
    });
    if addresses {
        let mut items = Vec::new();
        for item in store.items() {
            let item = item.map_err(|e| e.to_string())?;
            let is_fetch = item.kind == dust_mixer::ItemKind::Fetch as u8;
            let (from, rcpts) = if is_fetch {
                // The payload is the job id; the URL stays in the job.
                (String::new(), Vec::new())
            } else {
                match StoredMail::decode(&item.payload) {
                    Ok(m) => (m.from, m.rcpts),
                    Err(_) => ("(undecodable)".to_string(), Vec::new()),
                }
            };
            items.push(json!({
                "id": item.id.to_string(),
                "kind": if is_fetch { "fetch" } else { "mail" },
                "state": if item.state == ItemState::InFlight { "in-flight" } else { "queued" },
                "attempts": item.attempts,
                "release_ms": item.release_ms,
                "from": from,
                "rcpts": rcpts,
            }));
        }
        v["items"] = Value::Array(items);
    }
    Ok(v)
}

/// Bind the control socket (`control.sock` in the data directory, mode
/// 0600). Done with the other listeners, before anything slow starts, so a
/// mote that answers on its ports also answers `dustmote status`.
pub fn bind(dir: &Path) -> Result<tokio::net::UnixListener, String> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(dir);
    // A socket left by a killed mote; we hold the database lock, so no live
    // mote owns it.
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .map_err(|e| format!("binding {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    Ok(listener)
}

/// The full status (see `status_json`, plus the mix).
pub type StatusFn = Arc<dyn Fn() -> Value + Send + Sync>;

/// Re-read the configuration and apply the mixer settings: a message on
/// success, the reason on refusal.
pub type ReloadFn = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Answer requests on `listener` (from [`bind`]) until `stop`.
pub fn serve(
    listener: tokio::net::UnixListener,
    store: Arc<Store>,
    status: StatusFn,
    reload: ReloadFn,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = stop.wait_for(|s| *s) => return,
            };
            let Ok((sock, _)) = conn else { continue };
            let store = Arc::clone(&store);
            let (status, reload) = (Arc::clone(&status), Arc::clone(&reload));
            tokio::spawn(async move {
                let (rd, mut wr) = sock.into_split();
                let mut line = String::new();
                let mut rd = BufReader::new(rd.take(256));
                if rd.read_line(&mut line).await.is_err() {
                    return;
                }
                let answer = match line.trim() {
                    "queue" => report(&store, false),
                    "queue addresses" => report(&store, true),
                    "status" => Ok(status()),
                    "reload" => reload().map(|m| json!({ "reloaded": m })),
                    _ => Err("unknown request".to_string()),
                };
                let v = answer.unwrap_or_else(|e| json!({ "error": e }));
                let _ = wr.write_all(v.to_string().as_bytes()).await;
                let _ = wr.shutdown().await;
            });
        }
    })
}

/// What `/status` and the control socket's `status` report.
pub fn status_json(store: &Store, connector: &dyn Connector, expires_at: Option<&str>) -> Value {
    let mut v = report(store, false).unwrap_or_else(|e| json!({ "error": e }));
    let queue = json!({ "queued": v["queued"], "in_flight": v["in_flight"], "next_releases_ms": v["next_releases_ms"] });
    v["queue"] = queue;
    v["transport"] = transport_json(connector);
    v["expires_at"] = json!(expires_at);
    v
}

/// The mix part of the status: strategy, pool and anonymity metrics.
pub fn mix_json(cfg: &MixerConfig, held: usize, cover_items: u64, a: &AnonymityStats) -> Value {
    let strategy = match &cfg.strategy {
        Strategy::Poisson => json!({ "name": "poisson", "delay": format!("{:?}", cfg.delay) }),
        Strategy::Pool {
            interval,
            min_pool,
            rate,
        } => json!({
            "name": "pool",
            "interval_s": interval.as_secs_f64(),
            "min_pool": min_pool,
            "rate": rate,
        }),
        Strategy::Binomial { interval, rate } => json!({
            "name": "binomial",
            "interval_s": interval.as_secs_f64(),
            "rate": rate,
        }),
    };
    let mut cumulative = 0u64;
    let buckets: Vec<Value> = a
        .latency_buckets
        .iter()
        .enumerate()
        .map(|(i, n)| {
            cumulative += n;
            let le = LATENCY_BUCKETS_S
                .get(i)
                .map_or_else(|| json!("+Inf"), |le| json!(le));
            json!([le, cumulative])
        })
        .collect();
    json!({
        "strategy": strategy,
        "held": held,
        "pool": a.pool,
        "mean_pool": a.mean_pool,
        "outputs": a.outputs,
        "entropy_bits_mean": a.mean_entropy_bits,
        "entropy_bits_recent": a.recent_entropy_bits,
        "unmixed": a.unmixed,
        "p_unmixed": a.p_unmixed(),
        "latency_buckets_s": buckets,
        "latency_sum_s": a.latency_sum_s,
        "cover": cfg.cover.map(|c| json!({ "rate_per_s": c.rate_per_s, "target_pool": c.target_pool })),
        "cover_items": cover_items,
    })
}

fn transport_json(c: &dyn Connector) -> Value {
    let st = c.status();
    json!({
        "mode": st.mode,
        "ready": st.ready,
        "bootstrap_percent": st.bootstrap_percent,
        "last_error": st.last_error,
        "last_success_ms": st.last_success.map(dust_mixer::wall_ms),
    })
}

fn ask_running(dir: &Path, req: &str) -> Option<Result<Value, String>> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket_path(dir)).ok()?;
    let mut out = String::new();
    let r = s
        .write_all(req.as_bytes())
        .and_then(|_| s.read_to_string(&mut out))
        .map_err(|e| format!("control socket: {e}"))
        .and_then(|_| {
            serde_json::from_str::<Value>(&out).map_err(|e| format!("control socket: {e}"))
        });
    Some(r)
}

fn when(ms: u64, now: SystemTime) -> String {
    if ms == HELD {
        return "held in the pool (leaves in a round)".into();
    }
    let t = dust_mixer::from_wall_ms(ms);
    let rel = match t.duration_since(now) {
        Ok(d) => format!(
            "in {}",
            humantime::format_duration(std::time::Duration::from_secs(d.as_secs()))
        ),
        Err(_) => "overdue".to_string(),
    };
    format!("{}  ({rel})", humantime::format_rfc3339_seconds(t))
}

/// `dustmote queue`.
pub fn queue(config: Option<&Path>, addresses: bool) -> Result<(), String> {
    let checked = crate::config::load(config).map_err(|e| e.to_string())?;
    let dir = checked.config.storage.dir;
    let v = match ask_running(
        &dir,
        if addresses {
            "queue addresses\n"
        } else {
            "queue\n"
        },
    ) {
        Some(r) => r?,
        None => {
            if !dir.join("queue").exists() {
                return Err(format!(
                    "no queue in {} (has the mote run there?)",
                    dir.display()
                ));
            }
            let store = Store::open(&dir.join("queue"), checked.config.storage.cache_bytes)
                .map_err(|e| format!("opening the queue in {}: {e}", dir.display()))?;
            report(&store, addresses)?
        }
    };
    if let Some(e) = v.get("error") {
        return Err(format!("the running mote answered: {e}"));
    }
    let now = SystemTime::now();
    let mut out = String::new();
    out.push_str(&format!("queued:    {}\n", v["queued"]));
    out.push_str(&format!("in flight: {}\n", v["in_flight"]));
    let next: Vec<u64> = v["next_releases_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    if !next.is_empty() {
        out.push_str("next releases (UTC):\n");
        for ms in next {
            out.push_str(&format!("  {}\n", when(ms, now)));
        }
    }
    if let Some(items) = v.get("items").and_then(Value::as_array) {
        out.push_str("items:\n");
        for i in items {
            let rcpts: Vec<&str> = i["rcpts"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if i["kind"] == "fetch" {
                out.push_str(&format!(
                    "  {} fetch {} release={}\n",
                    i["id"].as_str().unwrap_or("?"),
                    i["state"].as_str().unwrap_or("?"),
                    when(i["release_ms"].as_u64().unwrap_or(0), now),
                ));
                continue;
            }
            out.push_str(&format!(
                "  {} {} attempts={} release={} from=<{}> to={}\n",
                i["id"].as_str().unwrap_or("?"),
                i["state"].as_str().unwrap_or("?"),
                i["attempts"],
                when(i["release_ms"].as_u64().unwrap_or(0), now),
                i["from"].as_str().unwrap_or(""),
                rcpts.join(",")
            ));
        }
    }
    use std::io::Write;
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .map_err(|e| e.to_string())
}

/// The bucket bound below which half of the outputs' latencies fall.
fn median_bucket(buckets: &Value) -> Option<String> {
    let b = buckets.as_array()?;
    let total = b.last()?.get(1)?.as_u64()?;
    if total == 0 {
        return None;
    }
    let hit = b
        .iter()
        .find(|x| x.get(1).and_then(Value::as_u64).unwrap_or(0) * 2 >= total)?;
    Some(match hit.get(0)?.as_f64() {
        Some(s) => humantime::format_duration(std::time::Duration::from_secs_f64(s)).to_string(),
        None => "more than a day".into(),
    })
}

/// `dustmote reload`: ask the running mote to re-read its configuration.
pub fn reload(config: Option<&Path>) -> Result<(), String> {
    let checked = crate::config::load(config).map_err(|e| e.to_string())?;
    let dir = checked.config.storage.dir;
    let v = ask_running(&dir, "reload\n")
        .ok_or_else(|| format!("no running mote answers on {}", socket_path(&dir).display()))??;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(format!(
            "reload refused, the old settings stay in force: {e}"
        ));
    }
    use std::io::Write;
    writeln!(
        std::io::stdout().lock(),
        "{}",
        v["reloaded"].as_str().unwrap_or("reloaded")
    )
    .map_err(|e| e.to_string())
}

/// `dustmote status`: the running mote's transport state and queue counts.
pub fn status(config: Option<&Path>) -> Result<(), String> {
    let checked = crate::config::load(config).map_err(|e| e.to_string())?;
    let dir = checked.config.storage.dir;
    let v = ask_running(&dir, "status\n")
        .ok_or_else(|| format!("no running mote answers on {}", socket_path(&dir).display()))??;
    let t = &v["transport"];
    let mut out = String::new();
    let state = match t["ready"].as_bool() {
        Some(true) => "ready",
        Some(false) => "not ready",
        None => "no connection attempted yet",
    };
    if let Some(e) = v["expires_at"].as_str() {
        out.push_str(&format!("expires at: {e}\n"));
    }
    out.push_str(&format!(
        "transport: {} ({state})\n",
        t["mode"].as_str().unwrap_or("?")
    ));
    if let Some(p) = t["bootstrap_percent"].as_u64() {
        out.push_str(&format!("bootstrap: {p}%\n"));
    }
    if let Some(e) = t["last_error"].as_str() {
        out.push_str(&format!("last error: {e}\n"));
    }
    if let Some(ms) = t["last_success_ms"].as_u64() {
        out.push_str(&format!(
            "last stream opened: {}\n",
            humantime::format_rfc3339_seconds(dust_mixer::from_wall_ms(ms))
        ));
    }
    out.push_str(&format!(
        "queued:    {}\nin flight: {}\n",
        v["queued"], v["in_flight"]
    ));
    let m = &v["mix"];
    if m.is_object() {
        out.push_str(&format!(
            "mix:       {} (held {}, pool {}, mean pool {:.1})\n",
            m["strategy"]["name"].as_str().unwrap_or("?"),
            m["held"],
            m["pool"],
            m["mean_pool"].as_f64().unwrap_or(0.0),
        ));
        out.push_str(&format!(
            "anonymity: {:.2} bits recent, {:.2} bits mean over {} outputs, {:.2} % left unmixed\n",
            m["entropy_bits_recent"].as_f64().unwrap_or(0.0),
            m["entropy_bits_mean"].as_f64().unwrap_or(0.0),
            m["outputs"],
            m["p_unmixed"].as_f64().unwrap_or(0.0) * 100.0,
        ));
        if let Some(median) = median_bucket(&m["latency_buckets_s"]) {
            out.push_str(&format!("latency:   median <= {median}\n"));
        }
    }
    use std::io::Write;
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .map_err(|e| e.to_string())
}
