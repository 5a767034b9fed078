//! The configuration file (TOML). Every key is documented in the README;
//! unknown keys are errors, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dust_mixer::delay::humantime_serde_compat as hts;
use dust_mixer::{DelaySpec, ItemKind, MixerConfig, RetryPolicy};
use dust_proxies::auth::Users;
use dust_proxies::delivery::{MxRoute, RelayConfig, Route, TlsMode};
use dust_proxies::fetch::FetchConfig;
use dust_proxies::mail::SanitizeOptions;
use dust_proxies::mx::MxConfig;
use dust_proxies::smtp::SmtpConfig;
use serde::Deserialize;

/// A configuration error, naming the file, the key and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The file (or "embedded defaults").
    pub file: String,
    /// The offending key, as `section.key`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[storage]`
    pub storage: Storage,
    /// `[smtp]`
    pub smtp: Smtp,
    /// `[mixer]`
    pub mixer: Mixer,
    /// `[delivery]`
    pub delivery: Delivery,
    /// `[tor]`
    pub tor: Tor,
    /// `[http]`
    pub http: Http,
    /// `[fetch]`
    pub fetch: Fetch,
    /// `[mote]`
    pub mote: Mote,
    /// `[shutdown]`
    pub shutdown: Shutdown,
    /// `[cover]`
    pub cover: Cover,
}

/// `[cover]`: dummy items that keep the pool filled when real traffic is low.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cover {
    /// The most dummy items per time unit, e.g. `"30/h"`; none: no cover.
    pub rate: Option<String>,
    /// Dummies are added only while fewer items than this are in the mix.
    pub target_pool: u64,
    /// Dummy mail goes to this address (a sink you control).
    pub mail_to: Option<String>,
    /// Envelope and `From:` sender of dummy mail.
    pub mail_from: Option<String>,
    /// Dummy downloads fetch one random chunk of one of these URLs.
    pub fetch_urls: Vec<String>,
}

impl Default for Cover {
    fn default() -> Self {
        Self {
            rate: None,
            target_pool: 4,
            mail_to: None,
            mail_from: None,
            fetch_urls: Vec::new(),
        }
    }
}

/// Where cover items go (from `[cover]`).
#[derive(Debug, Clone)]
pub struct CoverTargets {
    /// Dummy mail: (sender, recipient).
    pub mail: Option<(String, String)>,
    /// Dummy download URLs.
    pub fetch_urls: Vec<String>,
}

/// `"1/min"`, `"30/h"`, `"0.5/s"`, `"2/d"` → items per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let (n, unit) = s
        .split_once('/')
        .ok_or_else(|| format!("rate {s:?}: expected COUNT/UNIT, e.g. 1/min, 30/h, 0.5/s"))?;
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("rate {s:?}: {n:?} is not a number"))?;
    let per = match unit.trim() {
        "s" | "sec" => 1.0,
        "min" | "m" => 60.0,
        "h" | "hour" => 3600.0,
        "d" | "day" => 86400.0,
        u => return Err(format!("rate {s:?}: unknown unit {u:?} (s, min, h, d)")),
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("rate {s:?}: must be > 0"));
    }
    Ok(n / per)
}

/// `[storage]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Data directory (the sled database and the control socket).
    pub dir: PathBuf,
    /// sled page cache size in bytes.
    pub cache_bytes: u64,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./dustmote-data"),
            cache_bytes: dust_storage::DEFAULT_CACHE_BYTES,
        }
    }
}

/// One `[[smtp.users]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name.
    pub name: String,
    /// argon2 PHC string from `dustmote passwd`.
    pub password_hash: String,
}

/// `[smtp]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    /// Listen address.
    pub listen: SocketAddr,
    /// Name in the greeting and EHLO reply.
    pub hostname: String,
    /// Largest message in bytes (552 beyond).
    pub max_message_bytes: usize,
    /// Recipients per message (452 beyond).
    pub max_recipients: usize,
    /// Longest line, CRLF included (500 beyond).
    pub max_line_bytes: usize,
    /// Idle limit while waiting for a command.
    #[serde(with = "hts")]
    pub command_timeout: Duration,
    /// Idle limit inside DATA.
    #[serde(with = "hts")]
    pub data_timeout: Duration,
    /// Sessions at once.
    pub max_connections: usize,
    /// Refuse mail from unauthenticated sessions (530).
    pub require_auth: bool,
    /// Keep In-Reply-To and References.
    pub keep_threading_headers: bool,
    /// Users allowed to submit.
    pub users: Vec<User>,
}

impl Default for Smtp {
    fn default() -> Self {
        let d = SmtpConfig::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2525)),
            hostname: d.hostname,
            max_message_bytes: d.max_message_bytes,
            max_recipients: d.max_recipients,
            max_line_bytes: d.max_line_bytes,
            command_timeout: d.command_timeout,
            data_timeout: d.data_timeout,
            max_connections: d.max_connections,
            require_auth: d.require_auth,
            keep_threading_headers: false,
            users: Vec::new(),
        }
    }
}

/// `[mote]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mote {
    /// When the mote dies (RFC 3339); none: no end.
    pub expires_at: Option<String>,
    /// Or: how long the mote lives, counted from its first start (recorded
    /// in the data directory, so a restart does not extend it).
    #[serde(default, with = "hts::option")]
    pub lifetime: Option<Duration>,
    /// Everything must have left this long before `expires_at`.
    #[serde(with = "hts")]
    pub drain_margin: Duration,
}

impl Default for Mote {
    fn default() -> Self {
        Self {
            expires_at: None,
            lifetime: None,
            drain_margin: Duration::from_secs(600),
        }
    }
}

/// A size in bytes: an integer, or a string like `"64KiB"`, `"1MiB"`,
/// `"2GiB"`, `"500kB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => parse_size(&s).map(Size).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size {s:?} (e.g. \"64KiB\", \"1MiB\", 4096)"
                ))
            }),
        }
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `[fetch] chunk`
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkBounds {
    /// Smallest chunk.
    pub min: Size,
    /// Largest chunk.
    pub max: Size,
}

/// `[fetch]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fetch {
    /// Chunk size bounds (each chunk's size is uniform between them).
    pub chunk: ChunkBounds,
    /// Delay before each chunk (including the first).
    pub delay: DelaySpec,
    /// Let the fetcher reach private, loopback and link-local origins
    /// (only with `[tor] mode = "direct"`; loopback tests).
    pub allow_private_addresses: bool,
    /// Largest download.
    pub max_job_bytes: Size,
    /// Largest sum of one user's downloads.
    pub max_user_bytes: Size,
    /// Redirects followed per job.
    pub max_redirects: u32,
    /// Bound on one chunk request.
    #[serde(with = "hts")]
    pub timeout: Duration,
    /// PEM file of an extra CA for https origins.
    pub ca_file: Option<PathBuf>,
}

impl Default for Fetch {
    fn default() -> Self {
        Self {
            chunk: ChunkBounds {
                min: Size(256 << 10),
                max: Size(4 << 20),
            },
            delay: DelaySpec::Exponential {
                mean: Duration::from_secs(5 * 60),
                min: Some(Duration::from_secs(10)),
                max: Some(Duration::from_secs(3600)),
            },
            allow_private_addresses: false,
            max_job_bytes: Size(4 << 30),
            max_user_bytes: Size(8 << 30),
            max_redirects: 5,
            timeout: Duration::from_secs(300),
            ca_file: None,
        }
    }
}

/// One `[[http.users]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpUser {
    /// Name (jobs belong to it).
    pub name: String,
    /// argon2 PHC string of the user's bearer token (`dustmote passwd`).
    pub token_hash: String,
    /// May see the queue and mix counts (`/metrics`, the full `/status`).
    #[serde(default)]
    pub operator: bool,
}

/// `[http]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Listen address of the download API, `/status` and `/metrics`.
    pub listen: SocketAddr,
    /// Who may queue and retrieve downloads.
    pub users: Vec<HttpUser>,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            users: Vec::new(),
        }
    }
}

/// `[mixer] strategy`
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Each message gets an independent random delay (a Poisson mix when
    /// delays are exponential).
    #[default]
    Poisson,
    /// Timed dynamic pool (Mixmaster), settings in `[mixer.pool]`.
    Pool,
    /// Binomial rounds (Mixminion), settings in `[mixer.binomial]`.
    Binomial,
}

/// `[mixer.pool]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSettings {
    /// Time between rounds.
    #[serde(with = "hts")]
    pub interval: Duration,
    /// Items always kept back.
    pub min_pool: u64,
    /// Largest fraction sent per round.
    pub rate: f64,
}

impl Default for PoolSettings {
    /// Mixmaster's defaults: 15 min rounds, 45 kept back, 65 %.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15 * 60),
            min_pool: 45,
            rate: 0.65,
        }
    }
}

/// `[mixer.binomial]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BinomialSettings {
    /// Time between rounds.
    #[serde(with = "hts")]
    pub interval: Duration,
    /// Probability that a held item leaves in a round.
    pub rate: f64,
}

impl Default for BinomialSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(900),
            rate: 0.5,
        }
    }
}

/// `[mixer]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mixer {
    /// Mixing strategy.
    pub strategy: Strategy,
    /// `[mixer.pool]`: used with `strategy = "pool"`.
    pub pool: PoolSettings,
    /// `[mixer.binomial]`: used with `strategy = "binomial"`.
    pub binomial: BinomialSettings,
    /// Delay distribution.
    pub delay: DelaySpec,
    /// Deliveries at once.
    pub max_in_flight: usize,
    /// First retry backoff (before jitter).
    #[serde(with = "hts")]
    pub retry_base: Duration,
    /// Largest retry backoff (before jitter).
    #[serde(with = "hts")]
    pub retry_max: Duration,
}

impl Default for Mixer {
    fn default() -> Self {
        let d = MixerConfig::default();
        Self {
            strategy: Strategy::Poisson,
            pool: PoolSettings::default(),
            binomial: BinomialSettings::default(),
            delay: d.delay,
            max_in_flight: d.max_in_flight,
            retry_base: d.retry.base,
            retry_max: d.retry.max,
        }
    }
}

/// `[delivery]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// `[delivery.mail]`; without it mail is queued but not delivered.
    pub mail: Option<MailDelivery>,
}

/// `[delivery.mail] mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailMode {
    /// Everything to one smarthost.
    Relay,
    /// Each recipient domain to its MX (DNS over TCP through Tor), or to
    /// its onion host from `onion_mx`.
    Mx,
}

/// `[delivery.mail] tls`
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// Plain text.
    None,
    /// STARTTLS (port 587).
    #[default]
    Starttls,
    /// Implicit TLS (port 465).
    Implicit,
}

/// `[delivery.mail]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailDelivery {
    /// Egress mode.
    pub mode: MailMode,
    /// `host:port` of the smarthost (mode `relay`).
    #[serde(default)]
    pub relay: Option<String>,
    /// `host:port` of the DNS resolver asked over TCP through Tor (mode `mx`).
    #[serde(default)]
    pub resolver: Option<String>,
    /// SMTP port of mail exchangers (mode `mx`).
    #[serde(default = "default_mx_port")]
    pub mx_port: u16,
    /// Recipient domain → onion host that takes its mail (mode `mx`).
    #[serde(default)]
    pub onion_mx: std::collections::HashMap<String, String>,
    /// TLS to the smarthost.
    #[serde(default)]
    pub tls: Tls,
    /// AUTH user at the smarthost.
    #[serde(default)]
    pub user: Option<String>,
    /// AUTH password at the smarthost.
    #[serde(default)]
    pub password: Option<String>,
    /// Bound on one delivery attempt.
    #[serde(default = "default_delivery_timeout", with = "hts")]
    pub timeout: Duration,
    /// PEM file of an extra CA to trust for the relay's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_mx_port() -> u16 {
    25
}

fn default_delivery_timeout() -> Duration {
    Duration::from_secs(120)
}

/// `[tor] mode`
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TorMode {
    /// Embedded Arti (the default).
    #[default]
    Arti,
    /// A tor daemon's SocksPort.
    Socks5,
    /// Clearnet; needs `allow_clearnet = true`.
    Direct,
}

impl Tor {
    /// The SocksPort address (checked by `check`).
    pub fn socks_addr(&self) -> SocketAddr {
        self.socks
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9050)))
    }
}

/// `[tor]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tor {
    /// How traffic leaves the mote.
    pub mode: TorMode,
    /// Must be true for `mode = "direct"`.
    pub allow_clearnet: bool,
    /// SocksPort for `mode = "socks5"` (default 127.0.0.1:9050).
    pub socks: Option<String>,
    /// Arti configuration file for `mode = "arti"`.
    pub arti_config: Option<PathBuf>,
}

/// `[shutdown]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    /// How long open SMTP sessions may take to finish after SIGTERM.
    #[serde(with = "hts")]
    pub session_grace: Duration,
    /// How long running deliveries may take to finish; the rest go back to
    /// the queue and are retried at the next start.
    #[serde(with = "hts")]
    pub delivery_grace: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            session_grace: Duration::from_secs(10),
            delivery_grace: Duration::from_secs(20),
        }
    }
}

/// A checked configuration, ready to run.
#[derive(Debug)]
pub struct Checked {
    /// The parsed file.
    pub config: Config,
    /// SMTP settings with parsed users.
    pub smtp: SmtpConfig,
    /// Mixer settings.
    pub mixer: MixerConfig,
    /// Mail route and per-attempt timeout, if mail delivery is configured.
    pub route: Option<(Route, Duration)>,
    /// HTTP API users (token hashes).
    pub http_users: Users,
    /// The `[[http.users]]` with `operator = true`.
    pub http_operators: Vec<String>,
    /// Fetcher settings.
    pub fetch: FetchConfig,
    /// Things the operator should know (printed as warnings at startup).
    pub warnings: Vec<String>,
    /// `[mote] lifetime`: the mote ends this long after its first start
    /// (`mixer.lifetime` is then set by `serve`, which knows that start).
    pub lifetime_from_first_start: Option<Duration>,
    /// Where cover items go, when `[cover]` is on.
    pub cover: Option<CoverTargets>,
}

/// Parse `text` (from `file`) and check it.
#[cfg(test)]
pub fn parse(text: &str, file: &str) -> Result<Checked, ConfigError> {
    parse_at(text, file, None)
}

/// Like `parse`; relative paths in the file (`tor.arti_config`,
/// `delivery.mail.ca_file`) are taken relative to `base`.
fn parse_at(text: &str, file: &str, base: Option<&Path>) -> Result<Checked, ConfigError> {
    let err = |key: &str, reason: String| ConfigError {
        file: file.to_string(),
        key: key.to_string(),
        reason,
    };
    let mut config: Config = toml::from_str(text).map_err(|e| {
        let key = e
            .span()
            .map(|s| locate(text, s.start))
            .unwrap_or_else(|| "(file)".into());
        err(&key, e.message().to_string())
    })?;
    if let Some(base) = base {
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = config.tor.arti_config.as_mut() {
            rebase(p);
        }
        if let Some(p) = config
            .delivery
            .mail
            .as_mut()
            .and_then(|m| m.ca_file.as_mut())
        {
            rebase(p);
        }
    }
    check(config, file)
}

/// Load and check a file; `None` means the embedded defaults.
pub fn load(path: Option<&Path>) -> Result<Checked, ConfigError> {
    match path {
        None => check(Config::default(), "embedded defaults"),
        Some(p) => {
            let name = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                file: name.clone(),
                key: "(file)".into(),
                reason: e.to_string(),
            })?;
            parse_at(&text, &name, p.parent())
        }
    }
}

/// "line N" plus the nearest `[section]` above a byte offset, for parse errors.
fn locate(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let section = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .unwrap_or("(top level)");
    format!("{section} line {line}")
}

fn check(config: Config, file: &str) -> Result<Checked, ConfigError> {
    let err = |key: &str, reason: &str| ConfigError {
        file: file.to_string(),
        key: key.to_string(),
        reason: reason.to_string(),
    };
    let mut warnings = Vec::new();
    let s = &config.smtp;
    for (key, v) in [
        ("smtp.max_message_bytes", s.max_message_bytes),
        ("smtp.max_recipients", s.max_recipients),
        ("smtp.max_connections", s.max_connections),
        ("mixer.max_in_flight", config.mixer.max_in_flight),
    ] {
        if v == 0 {
            return Err(err(key, "must be at least 1"));
        }
    }
    if s.max_line_bytes < 512 {
        return Err(err(
            "smtp.max_line_bytes",
            "must be at least 512 (RFC 5321 command line length)",
        ));
    }
    if s.command_timeout.is_zero() || s.data_timeout.is_zero() {
        return Err(err("smtp.command_timeout", "timeouts must be positive"));
    }
    let users = Users::new(
        s.users
            .iter()
            .map(|u| (u.name.clone(), u.password_hash.clone())),
    )
    .map_err(|e| err("smtp.users.password_hash", &e.to_string()))?;
    if s.require_auth && users.is_empty() {
        warnings.push(
            "no [[smtp.users]] configured: every submission is refused (530); add a user with `dustmote passwd`"
                .into(),
        );
    }
    if !s.require_auth {
        warnings.push(
            "[smtp] require_auth = false: anyone who can reach the SMTP port can send mail through this mote; \
             use this only on loopback for tests and benchmarks"
                .into(),
        );
    }
    if config.http.users.iter().any(|u| u.name.is_empty()) {
        // Jobs without a user are the mote's own (cover traffic).
        return Err(err("http.users.name", "a user needs a name"));
    }
    let http_users = Users::new(
        config
            .http
            .users
            .iter()
            .map(|u| (u.name.clone(), u.token_hash.clone())),
    )
    .map_err(|e| err("http.users.token_hash", &e.to_string()))?;
    let http_operators = config
        .http
        .users
        .iter()
        .filter(|u| u.operator)
        .map(|u| u.name.clone())
        .collect();
    let f = &config.fetch;
    f.delay
        .validate()
        .map_err(|e| err(&format!("fetch.delay.{}", e.key), &e.reason))?;
    if f.chunk.min.0 == 0 || f.chunk.max.0 < f.chunk.min.0 {
        return Err(err(
            "fetch.chunk",
            "min must be at least 1 byte and max >= min",
        ));
    }
    if f.allow_private_addresses && config.tor.mode != TorMode::Direct {
        warnings.push(
            "[fetch] allow_private_addresses has no effect outside [tor] mode = \"direct\"".into(),
        );
    }
    let fetch_ca = read_ca(f.ca_file.as_deref()).map_err(|reason| err("fetch.ca_file", &reason))?;
    let fetch = FetchConfig {
        chunk_min: f.chunk.min.0,
        chunk_max: f.chunk.max.0,
        max_job_bytes: f.max_job_bytes.0,
        max_user_bytes: f.max_user_bytes.0,
        max_redirects: f.max_redirects,
        allow_private_addresses: f.allow_private_addresses,
        extra_ca_pem: fetch_ca,
        timeout: f.timeout,
        typical_delay: f.delay.typical(),
    };
    let m = &config.mixer;
    m.delay
        .validate()
        .map_err(|e| err(&format!("mixer.delay.{}", e.key), &e.reason))?;
    let (strategy, strategy_key) = match m.strategy {
        Strategy::Poisson => (dust_mixer::Strategy::Poisson, "mixer"),
        Strategy::Pool => (
            dust_mixer::Strategy::Pool {
                interval: m.pool.interval,
                min_pool: m.pool.min_pool,
                rate: m.pool.rate,
            },
            "mixer.pool",
        ),
        Strategy::Binomial => (
            dust_mixer::Strategy::Binomial {
                interval: m.binomial.interval,
                rate: m.binomial.rate,
            },
            "mixer.binomial",
        ),
    };
    strategy
        .validate()
        .map_err(|e| err(&format!("{strategy_key}.{}", e.key), &e.reason))?;
    if m.retry_base.is_zero() || m.retry_max < m.retry_base {
        return Err(err(
            "mixer.retry_max",
            "retry_base must be positive and retry_max >= retry_base",
        ));
    }
    let t = &config.tor;
    match t.mode {
        TorMode::Direct if !t.allow_clearnet => {
            return Err(err(
                "tor.mode",
                "\"direct\" sends mail in the clear, outside Tor; the mote refuses to start unless \
                 [tor] allow_clearnet = true says this is intended",
            ));
        }
        TorMode::Direct => warnings
            .push("[tor] mode = \"direct\": deliveries leave in the clear, not through Tor".into()),
        TorMode::Arti => {
            // Resolve and check the Arti file now, so errors name this file's key.
            dust_proxies::tor::arti_config(&config.storage.dir, t.arti_config.as_deref())
                .map_err(|e| err("tor.arti_config", &e.to_string()))?;
        }
        TorMode::Socks5 => {}
    }
    if let Some(s) = &t.socks {
        if s.parse::<SocketAddr>().is_err() {
            return Err(err(
                "tor.socks",
                "expected an address and port such as \"127.0.0.1:9050\" (a name would need a DNS lookup outside Tor)",
            ));
        }
    }
    let route = match &config.delivery.mail {
        None => {
            warnings.push(
                "no [delivery.mail]: mail is accepted and kept queued but not delivered".into(),
            );
            None
        }
        Some(d) => {
            let auth = match (&d.user, &d.password) {
                (Some(u), Some(p)) => Some((u.clone(), p.clone())),
                (None, None) => None,
                _ => return Err(err("delivery.mail.user", "user and password go together")),
            };
            if d.timeout.is_zero() {
                return Err(err("delivery.mail.timeout", "must be positive"));
            }
            let extra_ca_pem = read_ca(d.ca_file.as_deref())
                .map_err(|reason| err("delivery.mail.ca_file", &reason))?;
            let tls = match d.tls {
                Tls::None => TlsMode::None,
                Tls::Starttls => TlsMode::Starttls,
                Tls::Implicit => TlsMode::Implicit,
            };
            let route = match d.mode {
                MailMode::Relay => {
                    let relay = d.relay.as_deref().ok_or_else(|| {
                        err("delivery.mail.relay", "required with mode = \"relay\"")
                    })?;
                    let (host, port) = split_host_port(relay).ok_or_else(|| {
                        err(
                            "delivery.mail.relay",
                            "expected host:port, e.g. \"smtp.example.org:587\"",
                        )
                    })?;
                    Route::Relay(RelayConfig {
                        host,
                        port,
                        tls,
                        auth,
                        timeout: d.timeout,
                        extra_ca_pem,
                    })
                }
                MailMode::Mx => {
                    let resolver = d.resolver.as_deref().ok_or_else(|| {
                        err(
                            "delivery.mail.resolver",
                            "required with mode = \"mx\" (e.g. \"9.9.9.9:53\")",
                        )
                    })?;
                    let resolver = split_host_port(resolver).ok_or_else(|| {
                        err(
                            "delivery.mail.resolver",
                            "expected host:port, e.g. \"9.9.9.9:53\"",
                        )
                    })?;
                    if tls == TlsMode::Implicit {
                        return Err(err(
                            "delivery.mail.tls",
                            "mode = \"mx\" takes \"none\" or \"starttls\"",
                        ));
                    }
                    if auth.is_some() {
                        return Err(err(
                            "delivery.mail.user",
                            "mail exchangers take no AUTH; user/password are for mode = \"relay\"",
                        ));
                    }
                    let mut onion_map = std::collections::HashMap::new();
                    for (domain, host) in &d.onion_mx {
                        if !host.ends_with(".onion") {
                            return Err(err(
                                "delivery.mail.onion_mx",
                                &format!(
                                    "{domain:?} maps to {host:?}, which is not an .onion host"
                                ),
                            ));
                        }
                        onion_map.insert(domain.to_ascii_lowercase(), host.to_ascii_lowercase());
                    }
                    Route::Mx(MxRoute {
                        mx: MxConfig {
                            resolver,
                            port: d.mx_port,
                            onion_map,
                            dns_timeout: Duration::from_secs(60),
                        },
                        tls,
                        extra_ca_pem,
                    })
                }
            };
            Some((route, d.timeout))
        }
    };
    let smtp = SmtpConfig {
        hostname: s.hostname.clone(),
        max_message_bytes: s.max_message_bytes,
        max_recipients: s.max_recipients,
        max_line_bytes: s.max_line_bytes,
        command_timeout: s.command_timeout,
        data_timeout: s.data_timeout,
        max_connections: s.max_connections,
        require_auth: s.require_auth,
        users,
        sanitize: SanitizeOptions {
            keep_threading: s.keep_threading_headers,
        },
    };
    if config.mote.expires_at.is_some() && config.mote.lifetime.is_some() {
        return Err(err(
            "mote.lifetime",
            "give either expires_at or lifetime, not both",
        ));
    }
    if config
        .mote
        .lifetime
        .is_some_and(|l| l <= config.mote.drain_margin)
    {
        return Err(err(
            "mote.lifetime",
            "the lifetime must be longer than drain_margin",
        ));
    }
    let lifetime = match &config.mote.expires_at {
        None => None,
        Some(t) => Some(dust_mixer::Lifetime {
            expires_at: humantime::parse_rfc3339_weak(t).map_err(|e| {
                err(
                    "mote.expires_at",
                    &format!("expected an RFC 3339 time: {e}"),
                )
            })?,
            drain_margin: config.mote.drain_margin,
        }),
    };
    let c = &config.cover;
    let (cover, cover_targets) = match &c.rate {
        None => (None, None),
        Some(rate) => {
            let rate_per_s = parse_rate(rate).map_err(|e| err("cover.rate", &e))?;
            let cover = dust_mixer::CoverConfig {
                rate_per_s,
                target_pool: c.target_pool,
            };
            cover
                .validate()
                .map_err(|e| err(&format!("cover.{}", e.key), &e.reason))?;
            let mail = match (&c.mail_to, &c.mail_from) {
                (None, _) => None,
                (Some(_), None) => {
                    return Err(err(
                        "cover.mail_from",
                        "dummy mail needs a sender (mail_from)",
                    ))
                }
                (Some(to), Some(from)) => {
                    if route.is_none() {
                        return Err(err("cover.mail_to", "dummy mail needs [delivery.mail]"));
                    }
                    Some((from.clone(), to.clone()))
                }
            };
            for u in &c.fetch_urls {
                let ok = u.parse::<http::Uri>().is_ok_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
                });
                if !ok {
                    return Err(err(
                        "cover.fetch_urls",
                        &format!("{u:?} is not an absolute http(s) URL"),
                    ));
                }
            }
            if mail.is_none() && c.fetch_urls.is_empty() {
                return Err(err(
                    "cover.rate",
                    "cover traffic needs mail_to or fetch_urls",
                ));
            }
            (
                Some(cover),
                Some(CoverTargets {
                    mail,
                    fetch_urls: c.fetch_urls.clone(),
                }),
            )
        }
    };
    let mixer = MixerConfig {
        cover,
        strategy,
        lifetime,
        delay: m.delay.clone(),
        kind_delays: vec![(ItemKind::Fetch as u8, config.fetch.delay.clone())],
        retry: RetryPolicy {
            base: m.retry_base,
            max: m.retry_max,
        },
        max_in_flight: m.max_in_flight,
    };
    Ok(Checked {
        cover: cover_targets,
        lifetime_from_first_start: config.mote.lifetime,
        config,
        smtp,
        mixer,
        route,
        http_users,
        http_operators,
        fetch,
        warnings,
    })
}

/// The PEM bytes of an extra CA file (`ca_file` keys), checked to hold a
/// certificate.
fn read_ca(path: Option<&Path>) -> Result<Option<Vec<u8>>, String> {
    let Some(p) = path else { return Ok(None) };
    let pem = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(format!("{}: no PEM certificate in it", p.display()));
    }
    Ok(Some(pem))
}

/// `host:port` or `[v6]:port`.
fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(':') && !s.starts_with('[') {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_safe() {
        let c = load(None).expect("defaults");
        assert_eq!(c.config.smtp.listen.to_string(), "127.0.0.1:2525");
        assert_eq!(c.config.storage.dir, PathBuf::from("./dustmote-data"));
        assert!(c.smtp.require_auth);
        assert_eq!(c.config.tor.mode, TorMode::Arti);
        assert!(c.route.is_none());
    }

    #[test]
    fn direct_needs_allow_clearnet() {
        let e = parse("[tor]\nmode = \"direct\"\n", "x.toml").expect_err("refused");
        assert_eq!(e.key, "tor.mode");
        assert!(e.to_string().starts_with("x.toml: tor.mode: "));
        assert!(parse(
            "[tor]\nmode = \"direct\"\nallow_clearnet = true\n",
            "x.toml"
        )
        .is_ok());
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let e = parse(
            "[smtp]\nlisten = \"127.0.0.1:1\"\nmax_mesage_bytes = 3\n",
            "f.toml",
        )
        .expect_err("typo");
        assert_eq!(e.file, "f.toml");
        assert!(e.key.contains("[smtp] line 3"), "{e}");
        assert!(e.reason.contains("unknown field `max_mesage_bytes`"), "{e}");
        let e = parse(
            "[mixer]\ndelay = { distribution = \"exponential\", mean = \"2s\", min = \"5s\", max = \"1s\" }\n",
            "f.toml",
        )
        .expect_err("min > max");
        assert!(e.key.starts_with("mixer.delay."), "{e}");
        let e = parse(
            "[delivery.mail]\nmode = \"relay\"\nrelay = \"nohost\"\n",
            "f.toml",
        )
        .expect_err("no port");
        assert_eq!(e.key, "delivery.mail.relay");
        let e = parse(
            "[[smtp.users]]\nname = \"a\"\npassword_hash = \"nope\"\n",
            "f.toml",
        )
        .expect_err("hash");
        assert_eq!(e.key, "smtp.users.password_hash");
    }

    #[test]
    fn the_tor_config_contract_parses_unchanged() {
        // The [tor] table of the Tor issue, verbatim, with an Arti file next
        // to the config (an empty one: Arti's defaults).
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("arti.toml"), "").expect("write");
        let text = r#"
[storage]
dir = "/tmp/dustmote-contract-test"
[tor]
mode = "arti"                 # default; or "socks5", or "direct" (needs allow_clearnet = true)
socks = "127.0.0.1:9050"      # used by mode = "socks5"
arti_config = "arti.toml"     # optional: a file in Arti's own configuration format, merged over
                              # dustmote's defaults (e.g. [tor_network] authorities and fallback_caches
                              # of a private network); Arti's state and cache live under [storage] dir
                              # unless that file sets them
"#;
        let c = parse_at(text, "contract.toml", Some(dir.path())).expect("contract");
        assert_eq!(c.config.tor.mode, TorMode::Arti);
        assert_eq!(c.config.tor.socks_addr().to_string(), "127.0.0.1:9050");
        assert_eq!(
            c.config.tor.arti_config.as_deref(),
            Some(dir.path().join("arti.toml").as_path())
        );
        // A broken Arti file is reported under its key.
        std::fs::write(dir.path().join("arti.toml"), "[tor_network\n").expect("write");
        let e = parse_at(text, "contract.toml", Some(dir.path())).expect_err("bad arti file");
        assert_eq!(e.key, "tor.arti_config");
        let e = parse(
            "[tor]\nmode = \"socks5\"\nsocks = \"localhost:9050\"\n",
            "f.toml",
        )
        .expect_err("name");
        assert_eq!(e.key, "tor.socks");
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("127.0.0.1:2526"),
            Some(("127.0.0.1".into(), 2526))
        );
        assert_eq!(split_host_port("[::1]:25"), Some(("::1".into(), 25)));
        assert_eq!(
            split_host_port("smtp.example.org:587"),
            Some(("smtp.example.org".into(), 587))
        );
        assert_eq!(split_host_port("::1:25"), None);
        assert_eq!(split_host_port("host:x"), None);
    }

    #[test]
    fn the_loopback_example_parses_unchanged() {
        let text = include_str!("../deploy/examples/loopback.toml");
        let c = parse(text, "loopback.toml").expect("example config");
        let Some((Route::Relay(relay), _)) = c.route else {
            panic!("relay route expected")
        };
        assert_eq!(
            (relay.host.as_str(), relay.port, relay.tls),
            ("127.0.0.1", 2526, TlsMode::None)
        );
        assert_eq!(c.smtp.max_message_bytes, 10_485_760);
        assert!(c.smtp.users.verify("alice", b"alice-example-password"));
        assert_eq!(c.config.tor.mode, TorMode::Direct);
        // The download issue's additions.
        assert_eq!(c.config.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.http_users.find(b"alice-example-token").as_deref(),
            Some("alice")
        );
        assert_eq!(c.http_operators, ["alice"]);
        assert_eq!((c.fetch.chunk_min, c.fetch.chunk_max), (64 << 10, 1 << 20));
        assert!(c.fetch.allow_private_addresses);
        assert_eq!(
            c.mixer.delay_for(ItemKind::Fetch as u8),
            &DelaySpec::Exponential {
                mean: Duration::from_secs(1),
                min: Some(Duration::from_millis(10)),
                max: Some(Duration::from_secs(5)),
            }
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64KiB"), Some(65_536));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("500kB"), Some(500_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1.5MiB"), None);
        assert_eq!(parse_size("MiB"), None);
        let e = parse(
            "[fetch]\nchunk = { min = \"1MiB\", max = \"64KiB\" }\n",
            "f.toml",
        )
        .expect_err("min > max");
        assert_eq!(e.key, "fetch.chunk");
    }

    #[test]
    fn strategies_lifetime_and_cover_are_checked() {
        let key = |text: &str| parse(text, "t.toml").expect_err(text).key;
        assert_eq!(
            key("[mixer]\nstrategy = \"pool\"\n[mixer.pool]\nrate = 2.0\n"),
            "mixer.pool.rate"
        );
        assert_eq!(
            key("[mixer]\nstrategy = \"binomial\"\nbinomial = { interval = \"0s\" }\n"),
            "mixer.binomial.interval"
        );
        assert_eq!(
            key("[mixer]\ndelay = { distribution = \"lognormal\", mean = \"1m\", sigma = 9.0 }\n"),
            "mixer.delay.sigma"
        );
        assert_eq!(
            key("[mote]\nlifetime = \"1h\"\nexpires_at = \"2030-01-01T00:00:00Z\"\n"),
            "mote.lifetime"
        );
        assert_eq!(key("[mote]\nlifetime = \"5m\"\n"), "mote.lifetime");
        assert_eq!(key("[cover]\nrate = \"5/h\"\n"), "cover.rate");
        assert_eq!(
            key("[[http.users]]\nname = \"\"\ntoken_hash = \"x\"\n"),
            "http.users.name"
        );
        assert_eq!(key("[cover]\nrate = \"5/fortnight\"\n"), "cover.rate");
        assert_eq!(
            key("[cover]\nrate = \"5/h\"\nmail_to = \"a@b.example\"\n"),
            "cover.mail_from"
        );
        assert_eq!(
            key("[cover]\nrate = \"5/h\"\nfetch_urls = [\"ftp://x/\"]\n"),
            "cover.fetch_urls"
        );
        let c = parse(
            "[mixer]\nstrategy = \"pool\"\n[mote]\nlifetime = \"24h\"\n\
             [cover]\nrate = \"30/h\"\ntarget_pool = 3\nfetch_urls = [\"https://example.org/a\"]\n",
            "t.toml",
        )
        .expect("valid");
        assert_eq!(c.mixer.strategy, dust_mixer::Strategy::mixmaster());
        assert_eq!(
            c.mixer.cover,
            Some(dust_mixer::CoverConfig {
                rate_per_s: 30.0 / 3600.0,
                target_pool: 3
            })
        );
        assert_eq!(
            c.lifetime_from_first_start,
            Some(Duration::from_secs(86400))
        );
        assert_eq!(parse_rate("1/min"), Ok(1.0 / 60.0));
        assert!(parse_rate("0/h").is_err());
    }
}
