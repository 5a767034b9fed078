//! `dustmote`: the mote's command-line entry point.

mod config;
mod control;
mod cover;
mod fetch_cli;
mod simulate;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use clap::{Parser, Subcommand};
use dust_mixer::{Deliver, DeliveryError, Item, ItemKind, Mixer, Outcome};
use dust_proxies::delivery::MailDelivery;
use dust_proxies::fetch::Fetcher;
use dust_proxies::smtp::Server;
use dust_proxies::tor::{arti_config, install_crypto_provider, Arti, Connector, Direct, Socks5};
use dust_storage::Store;

use crate::config::{Checked, TorMode};
use dust_mixer::tokio_rt::TokioRt;

#[derive(Parser)]
#[command(
    name = "dustmote",
    version,
    about = "A short-lived mix node: stores, delays and forwards mail into Tor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Bound on opening one outbound stream (a Tor circuit can take a while).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Subcommand)]
enum Command {
    /// Run the mote until SIGINT or SIGTERM.
    Serve {
        /// Configuration file; without it the embedded defaults are used.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Read a password from stdin and print its argon2 hash for [[smtp.users]].
    Passwd,
    /// Show queue counts and the next release times.
    Queue {
        /// Configuration file (for the data directory).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also list each item's envelope addresses.
        #[arg(long)]
        show_addresses: bool,
    },
    /// Re-read the configuration file and apply its mixer settings to the
    /// running mote (as SIGHUP does); an invalid file is refused and the old
    /// settings stay in force.
    Reload {
        /// Configuration file (the same one the mote runs with).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show the transport (Tor) state and the queue of the running mote.
    Status {
        /// Configuration file (for the data directory).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Queue downloads and retrieve them (a client of the HTTP API).
    Fetch {
        /// Configuration file (for `[http] listen`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// API address, instead of the config's `[http] listen`.
        #[arg(long)]
        api: Option<std::net::SocketAddr>,
        /// File with the bearer token (default: $DUSTMOTE_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        command: FetchCommand,
    },
    /// Run the real mixer on simulated time with synthetic arrivals and
    /// report latency and anonymity (see "Tuning the mix" in the README).
    Simulate(SimulateArgs),
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Configuration file whose `[mixer]` settings are simulated (default:
    /// the embedded defaults).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Arrival rate of real items: 1/min, 30/h, 0.5/s, 2/d.
    #[arg(long, default_value = "1/min")]
    rate: String,
    /// Simulated time.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    duration: std::time::Duration,
    /// Simulated time before measuring starts (default: a tenth of the
    /// duration).
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<std::time::Duration>,
    /// Strategy instead of the config's: poisson, pool, binomial.
    #[arg(long)]
    strategy: Option<String>,
    /// Poisson strategy: exponential delays with this mean instead of the
    /// config's distribution.
    #[arg(long, value_parser = humantime::parse_duration)]
    mean: Option<std::time::Duration>,
    /// Pool/binomial: time between rounds.
    #[arg(long, value_parser = humantime::parse_duration)]
    interval: Option<std::time::Duration>,
    /// Pool: items always kept back.
    #[arg(long)]
    min_pool: Option<u64>,
    /// Pool: largest fraction sent per round; binomial: probability of leaving.
    #[arg(long)]
    pool_rate: Option<f64>,
    /// Arrivals at fixed intervals instead of a Poisson process.
    #[arg(long)]
    constant_arrivals: bool,
    /// Seed (the same seed gives the same run).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Cover traffic: the most dummy items per time unit (e.g. 20/h),
    /// instead of the config's `[cover] rate`.
    #[arg(long)]
    cover_rate: Option<String>,
    /// Cover traffic: add dummies while fewer items than this are in the mix.
    #[arg(long)]
    cover_target: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Draw the latency histogram and the entropy-vs-latency curve (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Subcommand)]
enum FetchCommand {
    /// Queue a download; prints its id.
    Add {
        /// http:// or https:// URL.
        url: String,
    },
    /// Show a download's state.
    Status {
        /// The id from `fetch add`.
        id: String,
    },
    /// Retrieve a finished download (resumes a partial FILE).
    Get {
        /// The id from `fetch add`.
        id: String,
        /// Where to write it.
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a configuration file; errors name the file, key and reason.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

fn simulate(a: SimulateArgs) -> Result<(), String> {
    let checked = config::load(a.config.as_deref()).map_err(|e| e.to_string())?;
    // The flags override the file's (or the embedded) settings.
    let m = &checked.config.mixer;
    let name = match (a.strategy.as_deref(), m.strategy) {
        (Some(s), _) => s.to_ascii_lowercase(),
        (None, config::Strategy::Poisson) => "poisson".into(),
        (None, config::Strategy::Pool) => "pool".into(),
        (None, config::Strategy::Binomial) => "binomial".into(),
    };
    let strategy = match name.as_str() {
        "poisson" => dust_mixer::Strategy::Poisson,
        "pool" => dust_mixer::Strategy::Pool {
            interval: a.interval.unwrap_or(m.pool.interval),
            min_pool: a.min_pool.unwrap_or(m.pool.min_pool),
            rate: a.pool_rate.unwrap_or(m.pool.rate),
        },
        "binomial" => dust_mixer::Strategy::Binomial {
            interval: a.interval.unwrap_or(m.binomial.interval),
            rate: a.pool_rate.unwrap_or(m.binomial.rate),
        },
        other => {
            return Err(format!(
                "unknown strategy {other:?} (poisson, pool, binomial)"
            ))
        }
    };
    let mut cfg = checked.mixer;
    cfg.strategy = strategy;
    if let Some(mean) = a.mean {
        cfg.delay = dust_mixer::DelaySpec::Exponential {
            mean,
            min: None,
            max: None,
        };
    }
    if a.cover_rate.is_some() || a.cover_target.is_some() {
        let base = cfg.cover.unwrap_or(dust_mixer::CoverConfig {
            rate_per_s: 20.0 / 3600.0,
            target_pool: 4,
        });
        cfg.cover = Some(dust_mixer::CoverConfig {
            rate_per_s: match &a.cover_rate {
                Some(r) => config::parse_rate(r)?,
                None => base.rate_per_s,
            },
            target_pool: a.cover_target.unwrap_or(base.target_pool),
        });
    }
    cfg.validate().map_err(|e| e.to_string())?;
    let params = simulate::Params {
        cfg,
        rate_per_s: config::parse_rate(&a.rate)?,
        duration: a.duration,
        warmup: a.warmup.unwrap_or(a.duration / 10),
        constant_arrivals: a.constant_arrivals,
        seed: a.seed,
    };
    let (report, latencies) = simulate::run(&params)?;
    if let Some(path) = &a.plot {
        // The curve: the same arrivals at time scales from 1/8 to 8 times
        // the chosen one.
        let mut curve = Vec::new();
        for k in [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0] {
            let p = simulate::Params {
                cfg: simulate::scaled(&params.cfg, k),
                ..params.clone()
            };
            curve.push(simulate::run(&p)?.0);
        }
        simulate::plot(path, &latencies, &curve, &report)?;
    }
    let mut out = std::io::stdout().lock();
    let text = if a.json {
        serde_json::to_string(&report).map_err(|e| e.to_string())?
    } else {
        format!(
            "strategy {}: {} items at {} over {} (measured {}; simulated in {:.1} s)\n\
             latency p50 {} p90 {} p99 {} max {}\n\
             mean pool {:.2}, entropy {:.2} bits, unmixed {:.3} %, cover {:.1}/h",
            report.strategy,
            report.items,
            a.rate,
            humantime::format_duration(a.duration),
            humantime::format_duration(std::time::Duration::from_secs(report.measured_s as u64)),
            report.wall_s,
            fmt_secs(report.latency_p50_s),
            fmt_secs(report.latency_p90_s),
            fmt_secs(report.latency_p99_s),
            fmt_secs(report.latency_max_s),
            report.mean_pool,
            report.entropy_bits,
            report.p_unmixed * 100.0,
            report.cover_per_hour,
        )
    };
    writeln!(out, "{text}").map_err(|e| e.to_string())
}

/// Seconds, rounded to whole seconds, as "1h 2m 3s".
fn fmt_secs(s: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(s.round() as u64)).to_string()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Simulate(args) => simulate(args),
        Command::Passwd => passwd(),
        Command::Queue {
            config,
            show_addresses,
        } => control::queue(config.as_deref(), show_addresses),
        Command::Status { config } => control::status(config.as_deref()),
        Command::Reload { config } => control::reload(config.as_deref()),
        Command::Fetch {
            config,
            api,
            token_file,
            command,
        } => fetch(config, api, token_file, command),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config::load(Some(&file))
            .map_err(|e| e.to_string())
            .map(|c| {
                for w in &c.warnings {
                    eprintln!("warning: {w}");
                }
                eprintln!("{}: ok", file.display());
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dustmote: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fetch(
    config: Option<PathBuf>,
    api: Option<std::net::SocketAddr>,
    token_file: Option<PathBuf>,
    command: FetchCommand,
) -> Result<(), String> {
    let addr = match api {
        Some(a) => a,
        None => {
            config::load(config.as_deref())
                .map_err(|e| e.to_string())?
                .config
                .http
                .listen
        }
    };
    let api = fetch_cli::Api::new(addr, token_file.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        match command {
            FetchCommand::Add { url } => fetch_cli::add(&api, &url).await,
            FetchCommand::Status { id } => fetch_cli::status(&api, &id).await,
            FetchCommand::Get { id, output } => fetch_cli::get(&api, &id, &output).await,
        }
    })
}

fn passwd() -> Result<(), String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading the password from stdin: {e}"))?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(
            "empty password (give it on stdin, e.g. `echo secret | dustmote passwd`)".into(),
        );
    }
    let hash = dust_proxies::auth::hash_password(password.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{hash}").map_err(|e| e.to_string())
}

/// What the mixer hands due items to, by kind.
struct Egress {
    /// `None`: no `[delivery.mail]`, mail stays queued.
    mail: Option<MailDelivery>,
    fetch: Fetcher,
}

impl Deliver for Egress {
    async fn deliver(&self, item: &Item) -> Result<Outcome, DeliveryError> {
        if item.kind == ItemKind::Fetch as u8 {
            return self.fetch.step(item).await;
        }
        match &self.mail {
            Some(m) => m.deliver(item).await,
            None => Err(DeliveryError::Temporary(
                "no [delivery.mail] configured".into(),
            )),
        }
    }
}

fn serve(config: Option<PathBuf>) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let checked = config::load(config.as_deref()).map_err(|e| e.to_string())?;
    for w in &checked.warnings {
        tracing::warn!("{w}");
    }
    let config_path = config;
    // Arti's TLS (rustls) needs a process-wide crypto provider.
    install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(run(checked, config_path))
}

async fn run(checked: Checked, config_path: Option<PathBuf>) -> Result<(), String> {
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
        ..
    } = checked;
    let dir = config.storage.dir.clone();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let store = Store::open(&dir.join("queue"), config.storage.cache_bytes).map_err(|e| {
        format!(
            "opening the queue in {}: {e} (is another dustmote running on it?)",
            dir.display()
        )
    })?;
    let stats = store.stats(0).map_err(|e| e.to_string())?;
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
            .await
            .map_err(|e| e.to_string())?;
        mixer_cfg.lifetime = Some(dust_mixer::Lifetime {
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
        return Ok(());
    }
    // Listen first: a mote that cannot take its ports must not start
    // delivering either. The control socket first of all, so that a mote
    // whose SMTP port answers also answers `dustmote status`.
    let control_listener = control::bind(&dir)?;
    let listener = tokio::net::TcpListener::bind(config.smtp.listen)
        .await
        .map_err(|e| format!("listening on {}: {e}", config.smtp.listen))?;
    let http_listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|e| format!("listening on {}: {e}", config.http.listen))?;
    let connector: Arc<dyn Connector> = match config.tor.mode {
        TorMode::Direct => Arc::new(Direct::new(CONNECT_TIMEOUT)),
        TorMode::Socks5 => Arc::new(Socks5::new(config.tor.socks_addr(), CONNECT_TIMEOUT)),
        TorMode::Arti => {
            let cfg =
                arti_config(&dir, config.tor.arti_config.as_deref()).map_err(|e| e.to_string())?;
            Arc::new(Arti::start(cfg).map_err(|e| e.to_string())?)
        }
    };
    let egress = Egress {
        mail: route
            .map(|(r, timeout)| MailDelivery::with_route(Arc::clone(&connector), r, timeout)),
        fetch: Fetcher::new(Arc::clone(&store), Arc::clone(&connector), fetch),
    };
    let mixer = Mixer::start(
        TokioRt::current(),
        Arc::clone(&store),
        Arc::new(egress),
        mixer_cfg,
    )
    .map_err(|e| e.to_string())?;
    if let Some(targets) = cover_targets {
        mixer.set_cover_source(cover::source(targets, Arc::clone(&store), smtp.sanitize));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let status: control::StatusFn = {
        let (store, connector, mixer) = (Arc::clone(&store), Arc::clone(&connector), mixer.clone());
        Arc::new(move || {
            let mut v = control::status_json(&store, &*connector, expires_at.as_deref());
            v["mix"] = control::mix_json(
                &mixer.config(),
                mixer.held(),
                mixer.metrics().cover,
                &mixer.anonymity(),
            );
            v
        })
    };
    let reload: control::ReloadFn = {
        let (mixer, store, sanitize) = (mixer.clone(), Arc::clone(&store), smtp.sanitize);
        Arc::new(move || {
            let checked = config::load(config_path.as_deref()).map_err(|e| e.to_string())?;
            mixer
                .reconfigure(checked.mixer)
                .map_err(|e| e.to_string())?;
            if let Some(targets) = checked.cover {
                mixer.set_cover_source(cover::source(targets, Arc::clone(&store), sanitize));
            }
            tracing::info!("mixer settings reloaded");
            Ok(
                "mixer settings reloaded ([mixer] and [fetch] delay); items already scheduled \
                keep their times; other sections apply at the next start"
                    .into(),
            )
        })
    };
    let control = control::serve(
        control_listener,
        Arc::clone(&store),
        Arc::clone(&status),
        Arc::clone(&reload),
        stop_rx.clone(),
    );
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            match reload() {
                Ok(m) => tracing::info!("SIGHUP: {m}"),
                Err(e) => {
                    tracing::error!("SIGHUP: reload refused, the old settings stay in force: {e}")
                }
            }
        }
    });
    if let Some(l) = lifetime {
        // At the end of its life the mote stops by itself (the deploy layer
        // then shuts the VM down). Checked against the wall clock every
        // half minute, so a clock jump cannot postpone it by much.
        let stop_tx = Arc::clone(&stop_tx);
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            while let Ok(left) = l.expires_at.duration_since(SystemTime::now()) {
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(left.min(std::time::Duration::from_secs(30))).await;
            }
            let queued = store.stats(0).map(|s| s.queued).unwrap_or(0);
            if queued > 0 {
                tracing::warn!(
                    queued,
                    "the mote's lifetime is over with items still queued"
                );
            }
            tracing::info!("the mote's lifetime is over; stopping");
            let _ = stop_tx.send(true);
        });
    }
    let schedule: dust_proxies::http::ScheduleFn = {
        let mixer = mixer.clone();
        Arc::new(move |id, not_before_ms| {
            let mixer = mixer.clone();
            Box::pin(async move {
                mixer
                    .admit_after(
                        ItemKind::Fetch,
                        id.0.to_vec(),
                        not_before_ms.map(dust_mixer::from_wall_ms),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| match (e, lifetime) {
                        (dust_mixer::MixerError::Expiring, Some(l)) => {
                            dust_proxies::http::ScheduleError::Expiring {
                                retry_after_s: l
                                    .expires_at
                                    .duration_since(SystemTime::now())
                                    .map_or(1, |d| d.as_secs() + 1),
                            }
                        }
                        (e, _) => dust_proxies::http::ScheduleError::Failed(e.to_string()),
                    })
            })
        })
    };
    let api = dust_proxies::http::Api::new(
        Arc::clone(&store),
        http_users,
        http_operators,
        status,
        schedule,
    );
    let http_task = tokio::spawn(api.serve(http_listener, stop_rx.clone()));
    tracing::info!(smtp = %config.smtp.listen, http = %config.http.listen, "dustmote is running");
    let stop_on_signal = Arc::clone(&stop_tx);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(
            "stopping: no new connections; open sessions and deliveries get a grace period"
        );
        let _ = stop_on_signal.send(true);
    });
    let server = Server::new(smtp, Arc::new(mixer.clone()));
    server
        .serve(listener, stop_rx, config.shutdown.session_grace)
        .await;
    let left = mixer.shutdown(config.shutdown.delivery_grace).await;
    let _ = http_task.await;
    control.abort();
    control::remove_socket(&dir);
    let stats = store.stats(0).map_err(|e| e.to_string())?;
    tracing::info!(
        queued = stats.queued,
        in_flight_returned = left,
        "stopped; everything not delivered stays queued for the next start"
    );
    Ok(())
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
