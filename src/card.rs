//! Access cards: `dustmote card NAME` issues new credentials and a new
//! client-authorization key for an account and prints everything another
//! person needs to use the mote, as one `dustmote:` URI and as a QR code;
//! `dustmote card import URI` turns a card into a tor client-auth
//! configuration and ready-to-use client settings.
//!
//! A card holds the mote's onion addresses, the account's name, password,
//! token and card key, and when the account ends: nothing about the mote's
//! owner or its other accounts.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};

use crate::control::{ask_required, Issued};

/// `dustmote card …`
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CardArgs {
    #[command(subcommand)]
    pub command: Option<CardCommand>,
    /// The account to issue a card for (its earlier credentials and card
    /// stop working).
    pub name: Option<String>,
    /// Print only the URI (for scripts).
    #[arg(long)]
    pub uri: bool,
    /// Configuration file (for the data directory).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum CardCommand {
    /// Write a card's client-authorization key for tor and print client
    /// settings for it.
    Import {
        /// The `dustmote:card?…` URI.
        uri: String,
        /// tor's `ClientOnionAuthDir` (made 0700 if missing; default
        /// `~/.dustmote/onion-auth`).
        #[arg(long)]
        auth_dir: Option<PathBuf>,
        /// The SOCKS port of the tor that will use it, for the printed
        /// commands.
        #[arg(long, default_value = "127.0.0.1:9050")]
        socks: String,
    },
}

/// A card's contents.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Card {
    pub name: String,
    pub smtp: Option<String>,
    pub http: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// x25519 private key, base32 (client authorization), if the services
    /// need one.
    pub key: Option<String>,
    pub expires: Option<String>,
}

const PREFIX: &str = "dustmote:card?v=1";

/// Characters a card's values are made of (none needs escaping in a URI).
fn plain(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

impl Card {
    /// The `dustmote:` URI.
    pub fn uri(&self) -> String {
        let mut s = format!("{PREFIX}&name={}", self.name);
        for (k, v) in [
            ("smtp", &self.smtp),
            ("http", &self.http),
            ("pass", &self.password),
            ("token", &self.token),
            ("key", &self.key),
            ("expires", &self.expires),
        ] {
            if let Some(v) = v {
                s.push_str(&format!("&{k}={v}"));
            }
        }
        s
    }

    /// Parse a URI made by [`uri`](Self::uri).
    pub fn parse(uri: &str) -> anyhow::Result<Self> {
        let rest = uri
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| anyhow!("not a dustmote card (it starts with {PREFIX})"))?;
        let mut c = Card::default();
        for pair in rest.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| anyhow!("card field without a value: {pair:?}"))?;
            if !plain(v) {
                bail!("card field {k} has characters a card never has");
            }
            let name = v.to_string();
            let v = Some(name.clone());
            match k {
                "name" => c.name = name,
                "smtp" => c.smtp = v,
                "http" => c.http = v,
                "pass" => c.password = v,
                "token" => c.token = v,
                "key" => c.key = v,
                "expires" => c.expires = v,
                _ => bail!("unknown card field {k:?} (a newer dustmote's card?)"),
            }
        }
        if c.name.is_empty() || (c.smtp.is_none() && c.http.is_none()) {
            bail!("the card names no account or no service");
        }
        for addr in [&c.smtp, &c.http].into_iter().flatten() {
            onion_id(addr)?;
        }
        Ok(c)
    }
}

/// The 56-letter service id of `host.onion:port`.
fn onion_id(addr: &str) -> anyhow::Result<&str> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let id = host
        .strip_suffix(".onion")
        .ok_or_else(|| anyhow!("{addr} is not an onion address"))?;
    if id.len() != 56
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
    {
        bail!("{addr} is not a v3 onion address");
    }
    Ok(id)
}

/// The QR code of `text` for a terminal: two modules per character, dark
/// modules as blanks (reads on dark and light terminals alike once the
/// quiet zone is there).
pub fn qr(text: &str) -> anyhow::Result<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::L)
        .context("the card is too long for a QR code")?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// `dustmote card …`
pub fn command(args: CardArgs) -> anyhow::Result<()> {
    match (args.command, args.name) {
        (
            Some(CardCommand::Import {
                uri,
                auth_dir,
                socks,
            }),
            _,
        ) => import(&uri, auth_dir, &socks),
        (None, Some(name)) => issue(args.config.as_deref(), &name, args.uri),
        (None, None) => bail!("give an account name (dustmote card NAME) or `card import URI`"),
    }
}

fn issue(config: Option<&Path>, name: &str, uri_only: bool) -> anyhow::Result<()> {
    if !plain(name) {
        bail!("not an account name: {name:?}");
    }
    let i: Issued = ask_required(config, &format!("card {name}\n"))?;
    let c = &i.credentials;
    let card = Card {
        name: c.name.clone(),
        smtp: i.smtp.clone(),
        http: i.http.clone(),
        password: c.smtp_password.clone(),
        token: c.http_token.clone(),
        key: c.client_auth_key.clone(),
        expires: c.expires_at.clone(),
    };
    let uri = card.uri();
    let mut out = std::io::stdout().lock();
    if uri_only {
        if card.key.is_some() && !i.published {
            eprintln!("warning: tor has not yet published the onion services with this card's key");
        }
        writeln!(out, "{uri}")?;
        return Ok(());
    }
    writeln!(out, "{}", qr(&uri)?)?;
    writeln!(out, "{uri}")?;
    writeln!(
        out,
        "\nAccess card for {name}: give it (the QR code or the line above) to the person who \
         will use the mote; they run `dustmote card import '<the line>'`. It is shown once: \
         the mote keeps only hashes, and a new card for {name} ends this one."
    )?;
    if card.key.is_none() {
        writeln!(
            out,
            "(The mote's onion services are open to anyone: the card has no key.)"
        )?;
    }
    Ok(())
}

fn default_auth_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("no $HOME: give --auth-dir"))?;
    Ok(PathBuf::from(home).join(".dustmote").join("onion-auth"))
}

fn import(uri: &str, auth_dir: Option<PathBuf>, socks: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let card = Card::parse(uri)?;
    let mut out = std::io::stdout().lock();
    let name = &card.name;
    if let Some(key) = &card.key {
        let dir = match auth_dir {
            Some(d) => d,
            None => default_auth_dir()?,
        };
        // tor refuses a ClientOnionAuthDir others can read: a directory
        // made here is 0700 from the start; one that was there is left as
        // it is (it may be shared, or a link to somewhere else), with a
        // word if tor will refuse it.
        match std::fs::metadata(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .with_context(|| format!("making {}", dir.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("checking {}", dir.display())),
            Ok(m) if !m.is_dir() => bail!("{} is not a directory", dir.display()),
            Ok(m) if m.permissions().mode() & 0o077 != 0 => eprintln!(
                "warning: {} is open to others (mode {:04o}); tor refuses such a \
                 ClientOnionAuthDir: use a directory of your own (mode 0700)",
                dir.display(),
                m.permissions().mode() & 0o7777
            ),
            Ok(_) => {}
        }
        for (service, addr) in [("smtp", &card.smtp), ("http", &card.http)] {
            let Some(addr) = addr else { continue };
            let id = onion_id(addr)?;
            let file = dir.join(format!("dustmote-{name}-{service}.auth_private"));
            dust_proxies::onion::write_private(&file, &format!("{id}:descriptor:x25519:{key}\n"))
                .with_context(|| format!("writing {}", file.display()))?;
        }
        let dir = std::fs::canonicalize(&dir)?;
        writeln!(
            out,
            "Tor: the card's key is in {}; add this line to your torrc and reload tor",
            dir.display()
        )?;
        writeln!(out, "  (Tor Browser has its own: about:preferences#privacy, Onion Services Authentication):")?;
        writeln!(out, "ClientOnionAuthDir {}", dir.display())?;
        writeln!(out)?;
    }
    if let (Some(smtp), Some(pass)) = (&card.smtp, &card.password) {
        let (host, port) = smtp.rsplit_once(':').unwrap_or((smtp, "587"));
        writeln!(out, "SMTP (mail):")?;
        writeln!(out, "  Thunderbird: outgoing server {host}, port {port}, connection security None, authentication Normal password, user name {name}, password {pass}; Thunderbird must use Tor's SOCKS proxy ({socks}, remote DNS)")?;
        writeln!(out, "  swaks:  torsocks swaks --server {host}:{port} --auth PLAIN --auth-user {name} --auth-password {pass} --from you@example.org --to someone@example.net")?;
        writeln!(out, "  curl:   curl --socks5-hostname {socks} smtp://{host}:{port} --user {name}:{pass} --login-options AUTH=PLAIN --mail-from you@example.org --mail-rcpt someone@example.net --upload-file message.eml")?;
    }
    if let (Some(http), Some(token)) = (&card.http, &card.token) {
        let (host, port) = http.rsplit_once(':').unwrap_or((http, "80"));
        writeln!(out, "HTTP (delayed downloads):")?;
        writeln!(out, "  curl --socks5-hostname {socks} -H 'Authorization: Bearer {name}:{token}' -d '{{\"url\": \"https://example.org/file\"}}' http://{host}:{port}/v1/fetches")?;
    }
    match &card.expires {
        Some(e) => writeln!(out, "The account ends at {e}.")?,
        None => writeln!(out, "The account ends with the mote.")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> Card {
        let onion = |c: char| format!("{}.onion", c.to_string().repeat(56));
        Card {
            name: "bea".into(),
            smtp: Some(format!("{}:587", onion('a'))),
            http: Some(format!("{}:80", onion('b'))),
            password: Some("Pw0rd".into()),
            token: Some("T0ken".into()),
            key: Some("KEY234".into()),
            expires: Some("2026-12-01T00:00:00Z".into()),
        }
    }

    #[test]
    fn cards_round_trip_and_refuse_what_they_never_hold() {
        let c = card();
        assert_eq!(Card::parse(&c.uri()).expect("parse"), c);
        assert!(Card::parse("https://example.org").is_err());
        assert!(Card::parse(&c.uri().replace("bea", "b&x=1")).is_err());
        assert!(Card::parse(&format!("{}&owner=x", c.uri())).is_err());
        let mut bad = c.clone();
        bad.smtp = Some("example.org:25".into());
        assert!(Card::parse(&bad.uri()).is_err(), "only onion addresses");
    }

    #[test]
    fn a_card_fits_a_qr_code() {
        let q = qr(&card().uri()).expect("qr");
        assert!(q.lines().count() > 20);
        let width = q.lines().next().map(|l| l.chars().count());
        assert!(q.lines().all(|l| Some(l.chars().count()) == width));
    }
}
