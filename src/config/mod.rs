//! The configuration file (TOML). Every key is documented in the README;
//! unknown keys are errors, so a typo never silently falls back to a default.
//!
//! One module per section; each section's type deserializes its table
//! (defaults from the runtime types where they exist) and checks itself,
//! returning the runtime settings or an [`Invalid`] naming its key. [`check`]
//! runs them in order and adds the file name: errors read `FILE: key:
//! reason`. Values several sections share (sizes, rates, `host:port`, CA
//! files) are in [`units`].

mod cover;
mod delivery;
mod fetch;
mod http;
mod mixer;
mod mote;
mod onion;
mod peers;
mod smtp;
mod storage;
mod tor;
pub mod units;

use std::path::{Path, PathBuf};
use std::time::Duration;

use dust_mixer::MixerConfig;
use dust_proxies::access::auth::Users;
use dust_proxies::egress::fetch::FetchConfig;
use dust_proxies::egress::MailNext;
use dust_proxies::intake::smtp::SmtpConfig;
use serde::Deserialize;

pub use cover::{Cover, CoverTargets};
pub use delivery::Delivery;
pub use fetch::Fetch;
pub use http::Http;
pub use mixer::{Mixer, StrategyName};
pub use mote::{Mote, Shutdown};
pub use smtp::Smtp;
pub use storage::Storage;
pub use tor::{Tor, TorMode};
pub use units::parse_rate;

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

/// A key whose value is wrong and why; [`check`] adds the file.
#[derive(Debug)]
pub struct Invalid {
    key: String,
    reason: String,
}

/// An [`Invalid`] for `key`.
pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        reason: reason.into(),
    }
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
    /// `[[peers]]`
    pub peers: Vec<peers::Peer>,
    /// `[onion]`
    pub onion: onion::Onion,
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
    pub route: Option<(MailNext, Duration)>,
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
    /// The `[[peers]]` that may hand items to this mote.
    pub peers: dust_proxies::access::peers::Peers,
    /// `[mote] successor`: where the queue goes at the hop point.
    pub successor: Option<dust_proxies::egress::hop::PeerTarget>,
    /// `[onion]`: the onion services the mote publishes (the key file
    /// empty when it is the default, which `serve` knows).
    pub onion: Option<dust_proxies::onion::OnionConfig>,
}

/// Parse `text` (from `file`) and check it.
#[cfg(test)]
pub fn parse(text: &str, file: &str) -> Result<Checked, ConfigError> {
    parse_at(text, file, None)
}

/// Like `parse`; relative paths in the file (`tor.arti_config`,
/// `delivery.mail.ca_file`) are taken relative to `base`.
pub(crate) fn parse_at(
    text: &str,
    file: &str,
    base: Option<&Path>,
) -> Result<Checked, ConfigError> {
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
    let at = |Invalid { key, reason }| ConfigError {
        file: file.to_string(),
        key,
        reason,
    };
    let mut warnings = Vec::new();
    let smtp = config.smtp.check(&mut warnings).map_err(at)?;
    let (http_users, http_operators) = config.http.check().map_err(at)?;
    let direct = config.tor.mode == TorMode::Direct;
    let fetch = config.fetch.check(direct, &mut warnings).map_err(at)?;
    config
        .tor
        .check(&config.storage.dir, &mut warnings)
        .map_err(at)?;
    let route = config
        .delivery
        .check(&config.peers, &mut warnings)
        .map_err(at)?;
    let lifetime = config.mote.check().map_err(at)?;
    let (cover, cover_targets) = config.cover.check(route.is_some()).map_err(at)?.unzip();
    let mut mixer = config
        .mixer
        .check(&config.fetch.delay, cover, lifetime)
        .map_err(at)?;
    mixer.hop_window = config.mote.hop_window();
    let peers = peers::check(&config.peers).map_err(at)?;
    let successor = config
        .mote
        .successor
        .as_deref()
        .map(|name| peers::target(&config.peers, name))
        .transpose()
        .map_err(|e| at(invalid("mote.successor", e.to_string())))?;
    let onion = config
        .onion
        .check(config.smtp.listen, config.http.listen)
        .map_err(at)?;
    Ok(Checked {
        cover: cover_targets,
        lifetime_from_first_start: config.mote.lifetime,
        smtp,
        mixer,
        route,
        http_users,
        http_operators,
        fetch,
        warnings,
        peers,
        successor,
        onion,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dust_mixer::{DelaySpec, ItemKind};
    use dust_proxies::egress::mail::TlsMode;

    proptest::proptest! {
        /// Any text: a configuration or an error naming file and key, never
        /// a panic (error locations slice the text).
        #[test]
        fn any_text_is_checked_without_a_panic(
            text in "(\\[[a-z.]{0,12}\\]\n|[a-z_]{1,12} = (\"[^\"\n]{0,20}\"|[0-9]{1,6}|true|\\{ [^}\n]{0,30} \\})\n|[^\n]{0,20}\n){0,8}"
        ) {
            if let Err(e) = parse(&text, "p.toml") {
                proptest::prop_assert_eq!(e.file.as_str(), "p.toml");
                proptest::prop_assert!(!e.key.is_empty());
            }
        }
    }

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
    fn the_loopback_example_parses_unchanged() {
        let text = include_str!("../../deploy/examples/loopback.toml");
        let c = parse(text, "loopback.toml").expect("example config");
        let Some((MailNext::Smtp(dust_proxies::egress::mail::Route::Relay(relay)), _)) = c.route
        else {
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
        assert!(c.http_users.verify("alice", b"alice-example-token"));
        assert_eq!(c.http_users.only(), Some("alice"));
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
    fn chunk_bounds_are_checked() {
        let e = parse(
            "[fetch]\nchunk = { min = \"1MiB\", max = \"64KiB\" }\n",
            "f.toml",
        )
        .expect_err("min > max");
        assert_eq!(e.key, "fetch.chunk");
    }

    #[test]
    fn hopping_is_checked() {
        let key = |text: &str| parse(text, "t.toml").expect_err(text).key;
        let peer = "[[peers]]\nname = \"b\"\nurl = \"http://127.0.0.1:9\"\ntoken = \"a:x\"\n";
        // Hopping needs an end; a window that fits in the lifetime; a
        // successor that is a peer one can send to; a successor only
        // with hopping.
        assert_eq!(key("[mote]\nhop = \"at_drain\"\n"), "mote.hop");
        assert_eq!(
            key("[mote]\nlifetime = \"15m\"\nhop = \"at_drain\"\n"),
            "mote.hop_window"
        );
        assert_eq!(
            key("[mote]\nlifetime = \"1h\"\nhop = \"at_drain\"\nhop_window = \"0s\"\n"),
            "mote.hop_window"
        );
        assert_eq!(
            key("[mote]\nlifetime = \"1h\"\nhop = \"at_drain\"\nsuccessor = \"c\"\n"),
            "mote.successor"
        );
        assert_eq!(
            key(&format!(
                "[mote]\nlifetime = \"1h\"\nsuccessor = \"b\"\n{peer}"
            )),
            "mote.successor"
        );
        let c = parse(
            &format!("[mote]\nlifetime = \"1h\"\nhop = \"at_drain\"\nhop_window = \"5m\"\nsuccessor = \"b\"\n{peer}"),
            "t.toml",
        )
        .expect("a hopping mote");
        assert_eq!(c.mixer.hop_window, Some(Duration::from_secs(300)));
        let s = c.successor.expect("a successor");
        assert_eq!(
            (s.name.as_str(), s.host.as_str(), s.port),
            ("b", "127.0.0.1", 9)
        );
        // Off by default.
        assert_eq!(
            parse("", "t.toml").map(|c| c.mixer.hop_window).ok(),
            Some(None)
        );
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
    }
}
