//! `dustmote cloud-init`: the user data that turns a VM with dustmote and
//! tor installed (the image from `deploy/image/build.sh`, or a stock Debian
//! cloud image with the `.deb`) into a mote. One `#cloud-config` on stdout:
//! `write_files` with the mote's `mote.toml` and the torrcs, a `runcmd`
//! that fixes the end time from the boot time and starts everything.
//!
//! Two tor processes, never one: Debian's multi-instance `tor@dustmote`
//! hosts the onion services (keys under /run, a tmpfs: never on the disk)
//! and the SocksPort dustmote sends through; `tor@default` is the relay.
//! Tor itself warns against a relay and an onion service in one process
//! (tor#8742: the relay's public address and the onion service would share
//! one process, one uptime, one set of failures).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine as _;
use toml::{Table, Value};

/// Where the onion-service tor instance keeps its services: /run is a tmpfs,
/// so the onion keys never reach the disk and die with the VM.
pub const ONION_DIR: &str = "/run/tor-instances/dustmote";
/// The SocksPort of the onion-service instance; dustmote sends through it.
pub const SOCKS: &str = "127.0.0.1:9050";
/// dustmote's listeners inside the VM (the onion services point here).
const SMTP_LISTEN: &str = "127.0.0.1:2525";
const HTTP_LISTEN: &str = "127.0.0.1:8080";
/// The placeholder the boot script replaces with boot time + lifetime.
const EXPIRES_PLACEHOLDER: &str = "@EXPIRES_AT@";
/// The VM powers off this long after `expires_at` even if dustmote never
/// exited (a crash loop, a stuck disk): the mote dies on time regardless.
const BACKSTOP: Duration = Duration::from_secs(10 * 60);

/// What `dustmote cloud-init` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Print {
    /// The whole `#cloud-config`.
    CloudConfig,
    /// The mote's configuration file alone (`expires_at` still the placeholder).
    MoteToml,
    /// The torrc of the onion-service instance (`tor@dustmote`).
    OnionTorrc,
    /// The torrc of the relay (`tor@default`); empty with `--no-relay`.
    RelayTorrc,
}

/// Mixer delay presets (all Poisson: each item gets its own delay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Mean 5 min (30 s – 30 min): for motes that live an hour or two.
    Quick,
    /// Mean 30 min (2 min – 3 h): the default, for a mote of several hours.
    Standard,
    /// Mean 2 h (10 min – 8 h): for a mote of a day.
    Long,
}

impl Profile {
    /// (mean, min, max)
    fn delays(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Profile::Quick => ("5m", "30s", "30m"),
            Profile::Standard => ("30m", "2m", "3h"),
            Profile::Long => ("2h", "10m", "8h"),
        }
    }
}

/// `[delivery.mail] tls` for `--mail-tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MailTls {
    None,
    Starttls,
    Implicit,
}

#[derive(Debug, clap::Args)]
pub struct CloudInitArgs {
    /// How long the mote lives, counted from the VM's boot.
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    pub lifetime: Duration,
    /// Everything must have left this long before the end.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub drain_margin: Duration,
    /// A user of the mote's SMTP and HTTP endpoints: `NAME` (a password is
    /// generated and shown once on stderr) or `NAME=ARGON2_HASH` (from
    /// `dustmote passwd`). The password is also the HTTP bearer token.
    #[arg(long = "user", required = true)]
    pub users: Vec<String>,
    /// Where generated passwords go as JSON (mode 0600) instead of stderr.
    #[arg(long)]
    pub secrets: Option<PathBuf>,
    /// Send mail through this smarthost (`host:port`, reached through Tor).
    #[arg(long, conflicts_with = "mail_mx")]
    pub mail_relay: Option<String>,
    /// TLS to the smarthost.
    #[arg(long, value_enum, default_value = "starttls")]
    pub mail_tls: MailTls,
    /// AUTH user at the smarthost (the password is read from $DUSTMOTE_MAIL_PASSWORD).
    #[arg(long, requires = "mail_relay")]
    pub mail_user: Option<String>,
    /// Deliver to each recipient's MX (DNS over TCP through Tor). Tor exits
    /// refuse port 25: this reaches only onion mail exchangers in practice.
    #[arg(long)]
    pub mail_mx: bool,
    /// DNS resolver for `--mail-mx`.
    #[arg(long, default_value = "9.9.9.9:53")]
    pub resolver: String,
    /// The mixer's delays.
    #[arg(long, value_enum, default_value = "standard")]
    pub profile: Profile,
    /// Be a Tor relay (the default).
    #[arg(long, conflicts_with = "no_relay")]
    pub relay: bool,
    /// Do not be a relay: only the onion services and the client tor.
    #[arg(long)]
    pub no_relay: bool,
    /// The relay's ORPort.
    #[arg(long, default_value_t = 9001)]
    pub or_port: u16,
    /// Make the relay an exit with these accepted targets, e.g.
    /// "accept *:80,accept *:443". Port 25 is always refused before them.
    #[arg(long)]
    pub exit_policy: Option<String>,
    /// Relay traffic cap per day, e.g. "20 GBytes" (Tor's AccountingMax).
    #[arg(long)]
    pub accounting_max: Option<String>,
    /// Relay bandwidth rate, e.g. "1 MBytes" (RelayBandwidthRate).
    #[arg(long)]
    pub bandwidth_rate: Option<String>,
    /// Relay bandwidth burst (RelayBandwidthBurst; default: the rate).
    #[arg(long)]
    pub bandwidth_burst: Option<String>,
    /// The relay's nickname (default: Tor's "Unnamed", like many relays).
    #[arg(long)]
    pub nickname: Option<String>,
    /// The relay's ContactInfo.
    #[arg(long)]
    pub contact: Option<String>,
    /// A TOML file merged over the rendered mote.toml, table by table (for
    /// settings without a flag). The result is checked like any config.
    #[arg(long)]
    pub merge: Option<PathBuf>,
    /// Print one part instead of the whole cloud-config.
    #[arg(long, value_enum, default_value = "cloud-config")]
    pub print: Print,
}

/// A user with the secret shown to them once (none if they gave a hash).
struct User {
    name: String,
    hash: String,
    password: Option<String>,
}

/// The rendered parts.
pub struct Rendered {
    pub mote_toml: String,
    pub onion_torrc: String,
    pub relay_torrc: Option<String>,
    pub cloud_config: String,
}

/// `dustmote cloud-init`.
pub fn command(args: CloudInitArgs) -> anyhow::Result<()> {
    let users = users(&args.users)?;
    let rendered = render(&args, &users)?;
    let out = match args.print {
        Print::CloudConfig => rendered.cloud_config,
        Print::MoteToml => rendered.mote_toml,
        Print::OnionTorrc => rendered.onion_torrc,
        Print::RelayTorrc => rendered.relay_torrc.unwrap_or_default(),
    };
    std::io::stdout().lock().write_all(out.as_bytes())?;
    report_secrets(&args, &users)
}

/// Generated passwords: to `--secrets` as JSON, else to stderr. Shown once:
/// only their hashes are in the user data.
fn report_secrets(args: &CloudInitArgs, users: &[User]) -> anyhow::Result<()> {
    let generated: Vec<&User> = users.iter().filter(|u| u.password.is_some()).collect();
    if let Some(path) = &args.secrets {
        let json = serde_json::json!({
            "users": generated.iter().map(|u| serde_json::json!({
                "name": u.name, "password": u.password,
            })).collect::<Vec<_>>(),
            "lifetime_s": args.lifetime.as_secs(),
        });
        // A new file, 0600 from its creation, renamed over whatever was
        // there (never written through a link, never keeping a looser mode).
        dust_proxies::onion::write_private(path, &serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    } else {
        let mut err = std::io::stderr().lock();
        for u in generated {
            writeln!(
                err,
                "user {}: password (SMTP AUTH and HTTP bearer token), shown once: {}",
                u.name,
                u.password.as_deref().unwrap_or_default()
            )?;
        }
    }
    Ok(())
}

fn users(specs: &[String]) -> anyhow::Result<Vec<User>> {
    let mut out: Vec<User> = Vec::new();
    for spec in specs {
        let (name, hash) = match spec.split_once('=') {
            Some((n, h)) => (n, Some(h)),
            None => (spec.as_str(), None),
        };
        if !crate::config::units::plain_name(name) {
            bail!("--user {spec:?}: a name is letters, digits, '-', '_' or '.'");
        }
        if out.iter().any(|u| u.name == name) {
            bail!("--user {name}: given twice");
        }
        let (hash, password) = match hash {
            Some(h) => (h.to_string(), None),
            None => {
                // A generated secret (190 bits from the CSPRNG, letters
                // and digits that survive shells, URIs and mail clients'
                // password fields): stored as a fast digest, verified in
                // microseconds, never throttled.
                let s = dust_proxies::access::auth::new_secret(
                    dust_proxies::access::auth::SECRET_LETTERS,
                );
                (s.hash, Some(s.secret))
            }
        };
        out.push(User {
            name: name.to_string(),
            hash,
            password,
        });
    }
    Ok(out)
}

/// Render every part and check the mote's configuration as `serve` would.
fn render(args: &CloudInitArgs, users: &[User]) -> anyhow::Result<Rendered> {
    if args.lifetime <= args.drain_margin {
        bail!("--lifetime must be longer than --drain-margin");
    }
    let mote_toml = mote_toml(args, users)?;
    // The placeholder is replaced at boot; check with a real time instead.
    let sample = mote_toml.replace(EXPIRES_PLACEHOLDER, "2030-01-01T00:00:00Z");
    let checked = crate::config::parse_at(&sample, "the rendered mote.toml", None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &checked.warnings {
        eprintln!("warning (mote.toml): {w}");
    }
    let relay = !args.no_relay;
    let onion_torrc = onion_torrc();
    let relay_torrc = if relay {
        Some(relay_torrc(args)?)
    } else {
        None
    };
    if !relay && (args.exit_policy.is_some() || args.accounting_max.is_some()) {
        bail!("--exit-policy and --accounting-max need the relay (drop --no-relay)");
    }
    let cloud_config = cloud_config(args, &mote_toml, &onion_torrc, relay_torrc.as_deref())?;
    Ok(Rendered {
        mote_toml,
        onion_torrc,
        relay_torrc,
        cloud_config,
    })
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

fn table(entries: &[(&str, Value)]) -> Value {
    Value::Table(
        entries
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect(),
    )
}

fn mote_toml(args: &CloudInitArgs, users: &[User]) -> anyhow::Result<String> {
    let mut root = Table::new();
    root.insert("storage".into(), table(&[("dir", s("/var/lib/dustmote"))]));
    let smtp_users: Vec<Value> = users
        .iter()
        .map(|u| table(&[("name", s(&u.name)), ("password_hash", s(&u.hash))]))
        .collect();
    root.insert(
        "smtp".into(),
        table(&[
            ("listen", s(SMTP_LISTEN)),
            ("users", Value::Array(smtp_users)),
        ]),
    );
    let http_users: Vec<Value> = users
        .iter()
        .map(|u| table(&[("name", s(&u.name)), ("token_hash", s(&u.hash))]))
        .collect();
    root.insert(
        "http".into(),
        table(&[
            ("listen", s(HTTP_LISTEN)),
            ("users", Value::Array(http_users)),
        ]),
    );
    let (mean, min, max) = args.profile.delays();
    root.insert(
        "mixer".into(),
        table(&[
            ("strategy", s("poisson")),
            (
                "delay",
                table(&[
                    ("distribution", s("exponential")),
                    ("mean", s(mean)),
                    ("min", s(min)),
                    ("max", s(max)),
                ]),
            ),
        ]),
    );
    let mail = if let Some(relay) = &args.mail_relay {
        let tls = match args.mail_tls {
            MailTls::None => "none",
            MailTls::Starttls => "starttls",
            MailTls::Implicit => "implicit",
        };
        let mut m = vec![("mode", s("relay")), ("relay", s(relay)), ("tls", s(tls))];
        if let Some(user) = &args.mail_user {
            let password = std::env::var("DUSTMOTE_MAIL_PASSWORD")
                .context("--mail-user needs the smarthost's password in $DUSTMOTE_MAIL_PASSWORD")?;
            m.push(("user", s(user)));
            m.push(("password", s(&password)));
        }
        table(&m)
    } else if args.mail_mx {
        table(&[("mode", s("mx")), ("resolver", s(&args.resolver))])
    } else {
        bail!("say where mail goes: --mail-relay HOST:PORT or --mail-mx");
    };
    root.insert("delivery".into(), table(&[("mail", mail)]));
    root.insert(
        "tor".into(),
        table(&[("mode", s("socks5")), ("socks", s(SOCKS))]),
    );
    root.insert(
        "mote".into(),
        table(&[
            ("expires_at", s(EXPIRES_PLACEHOLDER)),
            (
                "drain_margin",
                s(&humantime::format_duration(args.drain_margin).to_string()),
            ),
        ]),
    );
    if let Some(path) = &args.merge {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let extra: Table =
            toml::from_str(&text).with_context(|| format!("{}: not TOML", path.display()))?;
        merge(&mut root, extra);
    }
    let body = toml::to_string(&root).context("writing mote.toml")?;
    Ok(format!(
        "# /etc/dustmote/mote.toml, rendered by `dustmote cloud-init` ({}).\n\
         # expires_at is set at boot: the VM's boot time + the lifetime ({}).\n\n{body}",
        env!("CARGO_PKG_VERSION"),
        humantime::format_duration(args.lifetime)
    ))
}

/// `extra` over `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut Table, extra: Table) {
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(e)) => merge(b, e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Every onion service's defences against floods of introductions: tor's
/// proof of work (a client's tor solves a puzzle whose effort rises with
/// the load and is served first; tor's default queue rate and burst) and
/// the introduction points' rate limit (tor's defaults: 25/s, burst 200).
const FLOOD_DEFENCES: &str = "HiddenServicePoWDefensesEnabled 1\n\
                              HiddenServiceEnableIntroDoSDefense 1\n";

/// The onion-service instance: a Tor client with a SocksPort for dustmote
/// and the two onion services, keys in /run (tmpfs).
fn onion_torrc() -> String {
    format!(
        "## /etc/tor/instances/dustmote/torrc, rendered by `dustmote cloud-init`.\n\
         ## tor@dustmote: the mote's onion services and the SocksPort dustmote\n\
         ## sends through. A client only: never a relay (that is tor@default).\n\
         SocksPort {SOCKS}\n\
         SocksPolicy accept 127.0.0.1\n\
         SocksPolicy reject *\n\
         ## Onion keys live in a tmpfs: never on the disk, gone with the VM.\n\
         ## SMTP submission: <onion>:587 (and :25) reach dustmote's SMTP.\n\
         HiddenServiceDir {ONION_DIR}/smtp\n\
         HiddenServicePort 587 {SMTP_LISTEN}\n\
         HiddenServicePort 25 {SMTP_LISTEN}\n\
         {FLOOD_DEFENCES}\
         ## The HTTP API (downloads, /status): <onion>:80.\n\
         HiddenServiceDir {ONION_DIR}/http\n\
         HiddenServicePort 80 {HTTP_LISTEN}\n\
         {FLOOD_DEFENCES}"
    )
}

/// The relay instance (`/etc/tor/torrc`, Debian's `tor@default`).
fn relay_torrc(args: &CloudInitArgs) -> anyhow::Result<String> {
    let mut t = String::from(
        "## /etc/tor/torrc, rendered by `dustmote cloud-init`: tor@default is\n\
         ## this mote's Tor relay. The onion services run in tor@dustmote.\n\
         SocksPort 0\n",
    );
    let _ = writeln!(t, "ORPort {}", args.or_port);
    if let Some(n) = &args.nickname {
        if n.is_empty() || n.len() > 19 || !n.bytes().all(|b| b.is_ascii_alphanumeric()) {
            bail!("--nickname: 1 to 19 letters and digits (Tor's rule)");
        }
        let _ = writeln!(t, "Nickname {n}");
    }
    if let Some(c) = &args.contact {
        let _ = writeln!(t, "ContactInfo {}", torrc_value("--contact", c)?);
    }
    match &args.exit_policy {
        None => t.push_str("ExitRelay 0\nExitPolicy reject *:*\n"),
        Some(policy) => {
            t.push_str(
                "ExitRelay 1\nIPv6Exit 0\n## Never port 25: exits that carry SMTP carry spam.\nExitPolicy reject *:25\n",
            );
            for entry in exit_policy(policy)? {
                let _ = writeln!(t, "ExitPolicy {entry}");
            }
            t.push_str("ExitPolicy reject *:*\n");
        }
    }
    if let Some(max) = &args.accounting_max {
        let _ = writeln!(t, "AccountingMax {}", amount("--accounting-max", max)?);
        t.push_str("AccountingStart day 00:00\n");
    }
    if let Some(rate) = &args.bandwidth_rate {
        let rate = amount("--bandwidth-rate", rate)?;
        let burst = match &args.bandwidth_burst {
            Some(b) => amount("--bandwidth-burst", b)?,
            None => rate.clone(),
        };
        let _ = writeln!(t, "RelayBandwidthRate {rate}");
        let _ = writeln!(t, "RelayBandwidthBurst {burst}");
    } else if args.bandwidth_burst.is_some() {
        bail!("--bandwidth-burst needs --bandwidth-rate");
    }
    Ok(t)
}

/// "accept *:80, accept *:443" → its entries, each checked to be one
/// accept/reject of a target: no other torrc line can ride in.
fn exit_policy(policy: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in policy.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let mut words = entry.split_whitespace();
        let (Some(verb), Some(target), None) = (words.next(), words.next(), words.next()) else {
            bail!(
                "--exit-policy {entry:?}: expected \"accept ADDR:PORTS\" or \"reject ADDR:PORTS\""
            );
        };
        if !matches!(verb, "accept" | "reject" | "accept6" | "reject6")
            || !target
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":.*/-[]".contains(&b))
        {
            bail!(
                "--exit-policy {entry:?}: expected \"accept ADDR:PORTS\" or \"reject ADDR:PORTS\""
            );
        }
        out.push(format!("{verb} {target}"));
    }
    if out.is_empty() {
        bail!("--exit-policy: no entries");
    }
    Ok(out)
}

/// A Tor byte amount such as "20 GBytes" or "1 MB", checked.
fn amount(flag: &str, v: &str) -> anyhow::Result<String> {
    let mut words = v.split_whitespace();
    let (Some(n), Some(unit), None) = (words.next(), words.next(), words.next()) else {
        bail!("{flag} {v:?}: expected a number and a unit, e.g. \"20 GBytes\"");
    };
    const UNITS: [&str; 12] = [
        "bytes", "KBytes", "MBytes", "GBytes", "TBytes", "KB", "MB", "GB", "TB", "KBits", "MBits",
        "GBits",
    ];
    if n.parse::<u64>().is_err() || !UNITS.contains(&unit) {
        bail!("{flag} {v:?}: expected a number and one of {UNITS:?}");
    }
    Ok(format!("{n} {unit}"))
}

/// A YAML literal block holding `text`, indented by `indent` spaces; `None`
/// unless `text` is printable ASCII in lines. YAML also breaks lines at
/// U+0085, U+2028 and U+2029 and refuses or folds other control characters,
/// so such a character in a value would end the block and let the value
/// write YAML of its own (a `bootcmd` that runs as root at boot).
fn block(text: &str, indent: usize) -> Option<String> {
    if !text
        .bytes()
        .all(|b| b == b'\n' || (b' '..=b'~').contains(&b))
    {
        return None;
    }
    let pad = " ".repeat(indent);
    let mut out = String::from("|\n");
    for line in text.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "{pad}{line}");
        }
    }
    Some(out)
}

/// A torrc value given on the command line (`flag`): printable ASCII on one
/// line, not ending in `\` (tor would join the next line to it).
fn torrc_value<'v>(flag: &str, v: &'v str) -> anyhow::Result<&'v str> {
    if v.is_empty() || !v.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        bail!("{flag}: printable ASCII on one line");
    }
    if v.ends_with('\\') {
        bail!("{flag}: must not end with a backslash (tor would read the next line as part of it)");
    }
    Ok(v)
}

fn cloud_config(
    args: &CloudInitArgs,
    mote_toml: &str,
    onion_torrc: &str,
    relay_torrc: Option<&str>,
) -> anyhow::Result<String> {
    let lifetime = args.lifetime.as_secs();
    let backstop = BACKSTOP.as_secs();
    let mut files: BTreeMap<&str, (&str, &str, &str)> = BTreeMap::new();
    files.insert(
        "/etc/dustmote/mote.toml",
        ("root:dustmote", "0640", mote_toml),
    );
    files.insert(
        "/etc/tor/instances/dustmote/torrc",
        ("root:root", "0644", onion_torrc),
    );
    if let Some(r) = relay_torrc {
        files.insert("/etc/tor/torrc", ("root:root", "0644", r));
    }
    let mut y = String::from("#cloud-config\n");
    let _ = writeln!(
        y,
        "# A dust mote, rendered by `dustmote cloud-init` {}: lives {} from boot,\n\
         # then drains, exits and powers the VM off.",
        env!("CARGO_PKG_VERSION"),
        humantime::format_duration(args.lifetime)
    );
    // C.UTF-8 is in every Debian image; cloud-init's default (en_US.UTF-8)
    // needs the locales package, and its module fails without it.
    y.push_str("locale: C.UTF-8\n");
    // Deferred: written after packages are installed, so that the
    // `dustmote` group exists on a stock image that installs the .deb.
    y.push_str("write_files:\n");
    for (path, (owner, mode, content)) in &files {
        let _ = write!(
            y,
            "  - path: {path}\n    owner: {owner}\n    permissions: '{mode}'\n    defer: true\n"
        );
        // Readable where it is plain text; anything else (a password or a
        // host with characters beyond ASCII) in base64, which YAML cannot
        // misread.
        match block(content, 6) {
            Some(b) => {
                let _ = write!(y, "    content: {b}");
            }
            None => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(content);
                let _ = writeln!(y, "    encoding: b64\n    content: {b64}");
            }
        }
    }
    let relay_cmd = if relay_torrc.is_some() {
        "systemctl restart tor@default"
    } else {
        // Debian starts tor@default whenever /etc/tor/torrc exists.
        "systemctl mask --now tor@default"
    };
    // One shell script, `set -e`: a failed step fails cloud-init (visible
    // in `cloud-init status`) instead of leaving half a mote.
    let script = format!(
        "set -eu\n\
         boot=$(awk '/^btime/ {{print $2}}' /proc/stat)\n\
         end=$((boot + {lifetime}))\n\
         sed -i \"s/{EXPIRES_PLACEHOLDER}/$(date -u -d \"@$end\" +%Y-%m-%dT%H:%M:%SZ)/\" /etc/dustmote/mote.toml\n\
         # Dies on time even if dustmote never gets to power it off.\n\
         systemd-run --quiet --unit=dustmote-backstop --on-calendar=\"$(date -u -d \"@$((end + {backstop}))\" '+%Y-%m-%d %H:%M:%S UTC')\" /bin/systemctl poweroff\n\
         id -u _tor-dustmote >/dev/null 2>&1 || tor-instance-create dustmote\n\
         {relay_cmd}\n\
         systemctl daemon-reload\n\
         systemctl enable tor.service\n\
         systemctl restart tor@dustmote\n\
         systemctl enable dustmote.service\n\
         systemctl restart dustmote.service\n\
         for i in $(seq 120); do [ -s {ONION_DIR}/smtp/hostname ] && [ -s {ONION_DIR}/http/hostname ] && break; sleep 1; done\n\
         echo \"dustmote: smtp $(cat {ONION_DIR}/smtp/hostname):587 http $(cat {ONION_DIR}/http/hostname):80 expires $(date -u -d \"@$end\" +%Y-%m-%dT%H:%M:%SZ)\"\n"
    );
    let Some(script) = block(&script, 4) else {
        bail!("the boot script is not plain ASCII");
    };
    let _ = write!(y, "runcmd:\n  - {script}");
    Ok(y)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn exit_policy_entries_are_checked_one_by_one() {
        assert_eq!(
            exit_policy("accept *:80, accept *:443").unwrap(),
            ["accept *:80", "accept *:443"]
        );
        assert!(exit_policy("accept *:80\nSocksPort 0.0.0.0:9050").is_err());
        assert!(exit_policy("accept *:80 ORPort").is_err());
        assert!(exit_policy("allow *:80").is_err());
        assert!(exit_policy(" , ").is_err());
    }

    #[test]
    fn amounts_are_a_number_and_a_tor_unit() {
        assert_eq!(amount("x", "20  GBytes").unwrap(), "20 GBytes");
        assert!(amount("x", "20").is_err());
        assert!(amount("x", "20 GBytes\nExitRelay 1").is_err());
        assert!(amount("x", "lots GB").is_err());
    }

    #[test]
    fn merge_is_table_by_table() {
        let mut base: Table = toml::from_str("[a]\nx = 1\ny = 2\n[b]\nz = 3\n").unwrap();
        let extra: Table = toml::from_str("[a]\ny = 5\n[c]\nw = 1\n").unwrap();
        merge(&mut base, extra);
        let want: Table = toml::from_str("[a]\nx = 1\ny = 5\n[b]\nz = 3\n[c]\nw = 1\n").unwrap();
        assert_eq!(base, want);
    }
}
