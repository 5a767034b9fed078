//! `dustmote invite`, `accounts` and `revoke`: ask the running mote (over
//! its control socket) to make, list and end accounts.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::Args;
use dust_proxies::access::accounts::{AccountView, Credentials, Invite};
use dust_proxies::access::quota::{Quota, DEFAULT_SESSIONS};

use crate::config::units::parse_size;
use crate::control::{ask_required, Reloaded};

/// `dustmote invite NAME …`
#[derive(Args, Debug)]
pub struct InviteArgs {
    /// The account's name (letters, digits, '.', '_', '-'): its SMTP user
    /// name, and the NAME of its `NAME:TOKEN` bearer token.
    pub name: String,
    /// Mail messages per UTC day, e.g. `200/d`.
    #[arg(long, value_name = "N/d", value_parser = per_day_count)]
    pub quota_mail: Option<u64>,
    /// Mail bytes per UTC day, e.g. `2GiB/d`.
    #[arg(long, value_name = "SIZE/d", value_parser = per_day_size)]
    pub quota_bytes: Option<u64>,
    /// Downloads queued per UTC day, e.g. `20/d`.
    #[arg(long, value_name = "N/d", value_parser = per_day_count)]
    pub quota_fetches: Option<u64>,
    /// Downloaded bytes per UTC day, e.g. `4GiB/d`.
    #[arg(long, value_name = "SIZE/d", value_parser = per_day_size)]
    pub quota_fetch_bytes: Option<u64>,
    /// Concurrent SMTP sessions (and, apart, HTTP requests).
    #[arg(long, default_value_t = DEFAULT_SESSIONS)]
    pub sessions: u32,
    /// How long the account lasts, e.g. `12h` (at most until the mote
    /// ends, which is also the default).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub expires: Option<Duration>,
    /// An SMTP password (without --smtp and --http: both).
    #[arg(long)]
    pub smtp: bool,
    /// An HTTP bearer token (without --smtp and --http: both).
    #[arg(long)]
    pub http: bool,
    /// Print one JSON object {"name", "smtp_password", "http_token",
    /// "expires_at"} (the token as the whole `NAME:TOKEN`).
    #[arg(long)]
    pub json: bool,
    /// Configuration file (for the data directory).
    #[arg(long, short)]
    pub config: Option<std::path::PathBuf>,
}

/// `200/d`, `200/day` or `200` → 200.
fn per_day(s: &str) -> &str {
    s.strip_suffix("/day")
        .or_else(|| s.strip_suffix("/d"))
        .unwrap_or(s)
        .trim()
}

fn per_day_count(s: &str) -> Result<u64, String> {
    per_day(s)
        .parse()
        .map_err(|_| format!("expected a count per day such as 200/d, not {s:?}"))
}

fn per_day_size(s: &str) -> Result<u64, String> {
    parse_size(per_day(s))
        .ok_or_else(|| format!("expected a size per day such as 2GiB/d, not {s:?}"))
}

/// The bearer token as a client sends it.
fn bearer(c: &Credentials) -> Option<String> {
    c.http_token.as_ref().map(|t| format!("{}:{t}", c.name))
}

/// `dustmote invite`.
pub fn invite(args: InviteArgs) -> anyhow::Result<()> {
    let both = !args.smtp && !args.http;
    let invite = Invite {
        name: args.name,
        quota: Quota {
            mail: args.quota_mail,
            mail_bytes: args.quota_bytes,
            fetches: args.quota_fetches,
            fetch_bytes: args.quota_fetch_bytes,
            sessions: Some(args.sessions),
        },
        expires_in: args.expires,
        smtp: args.smtp || both,
        http: args.http || both,
    };
    let request = format!("invite {}\n", serde_json::to_string(&invite)?);
    let c: Credentials = ask_required(args.config.as_deref(), &request)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let j = serde_json::json!({
            "name": c.name,
            "smtp_password": c.smtp_password,
            "http_token": bearer(&c),
            "expires_at": c.expires_at,
        });
        writeln!(out, "{j}")?;
        return Ok(());
    }
    writeln!(out, "account:       {}", c.name)?;
    if let Some(p) = &c.smtp_password {
        writeln!(out, "SMTP user:     {}", c.name)?;
        writeln!(out, "SMTP password: {p}")?;
    }
    if let Some(t) = bearer(&c) {
        writeln!(out, "HTTP token:    {t}    (Authorization: Bearer …)")?;
    }
    match &c.expires_at {
        Some(e) => writeln!(out, "expires:       {e}")?,
        None => writeln!(out, "expires:       never (the mote has no lifetime)")?,
    }
    writeln!(
        out,
        "These secrets are shown once; the mote keeps only their hashes. \
         `dustmote card {}` issues new ones as an access card.",
        c.name
    )?;
    Ok(())
}

fn limit(v: Option<u64>, bytes: bool) -> String {
    match v {
        None => "-".into(),
        Some(n) if bytes => human_bytes(n),
        Some(n) => n.to_string(),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// `dustmote accounts`.
pub fn accounts(config: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let list: Vec<AccountView> = ask_required(config, "accounts\n")?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&list)?)?;
        return Ok(());
    }
    if list.is_empty() {
        writeln!(out, "no accounts (make one with `dustmote invite NAME`)")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<16} {:<9} {:>11} {:>19} {:>9} {:>19} {:>8}  expires (UTC)",
        "name", "access", "mail today", "mail bytes today", "fetches", "fetch bytes", "sessions"
    )?;
    for a in &list {
        let access = match (a.smtp, a.http) {
            (true, true) => "smtp+http",
            (true, false) => "smtp",
            _ => "http",
        };
        let q = &a.quota;
        writeln!(
            out,
            "{:<16} {:<9} {:>11} {:>19} {:>9} {:>19} {:>8}  {}",
            a.name,
            access,
            format!("{}/{}", a.today.mail, limit(q.mail, false)),
            format!(
                "{}/{}",
                human_bytes(a.today.mail_bytes),
                limit(q.mail_bytes, true)
            ),
            format!("{}/{}", a.today.fetches, limit(q.fetches, false)),
            format!(
                "{}/{}",
                human_bytes(a.today.fetch_bytes),
                limit(q.fetch_bytes, true)
            ),
            format!("{}/{}", a.sessions, q.sessions.unwrap_or(DEFAULT_SESSIONS)),
            a.expires_at.as_deref().unwrap_or("with the mote"),
        )?;
    }
    Ok(())
}

/// `dustmote revoke NAME`.
pub fn revoke(config: Option<&Path>, name: &str) -> anyhow::Result<()> {
    if name.contains(['\n', '\r']) {
        bail!("a name has no line breaks");
    }
    let r: Reloaded =
        ask_required(config, &format!("revoke {name}\n")).map_err(|e| anyhow!("{e:#}"))?;
    writeln!(std::io::stdout().lock(), "{}", r.reloaded)?;
    Ok(())
}
