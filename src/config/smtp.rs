//! `[smtp]`: the submission endpoint. Defaults come from
//! [`SmtpConfig::default`].

use std::net::SocketAddr;
use std::time::Duration;

use dust_mixer::delay::humantime_serde_compat as hts;
use dust_proxies::intake::smtp::SmtpConfig;
use dust_proxies::item::mail::SanitizeOptions;
use serde::Deserialize;

use super::units::users;
use super::{invalid, Invalid};

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
    /// The same message resent within this time is stored once; `"0s"`: off.
    #[serde(with = "hts")]
    pub replay_window: Duration,
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
            keep_threading_headers: d.sanitize.keep_threading,
            users: Vec::new(),
            replay_window: d.replay_window.unwrap_or_default(),
        }
    }
}

impl Smtp {
    /// Check the section; the server's settings with parsed users.
    pub fn check(&self, warnings: &mut Vec<String>) -> Result<SmtpConfig, Invalid> {
        for (key, v) in [
            ("smtp.max_message_bytes", self.max_message_bytes),
            ("smtp.max_recipients", self.max_recipients),
            ("smtp.max_connections", self.max_connections),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.max_line_bytes < 512 {
            return Err(invalid(
                "smtp.max_line_bytes",
                "must be at least 512 (RFC 5321 command line length)",
            ));
        }
        if self.command_timeout.is_zero() || self.data_timeout.is_zero() {
            return Err(invalid("smtp.command_timeout", "timeouts must be positive"));
        }
        let users = users(
            "smtp.users.password_hash",
            self.users.iter().map(|u| (&u.name, &u.password_hash)),
        )?;
        if self.require_auth && users.is_empty() {
            warnings.push(
                "no [[smtp.users]] configured: submissions are refused (530) until `dustmote invite` makes an account; add a user with `dustmote passwd`"
                    .into(),
            );
        }
        if !self.require_auth {
            warnings.push(
                "[smtp] require_auth = false: anyone who can reach the SMTP port can send mail through this mote; \
                 use this only on loopback for tests and benchmarks"
                    .into(),
            );
        }
        Ok(SmtpConfig {
            hostname: self.hostname.clone(),
            max_message_bytes: self.max_message_bytes,
            max_recipients: self.max_recipients,
            max_line_bytes: self.max_line_bytes,
            command_timeout: self.command_timeout,
            data_timeout: self.data_timeout,
            max_connections: self.max_connections,
            require_auth: self.require_auth,
            users,
            sanitize: SanitizeOptions {
                keep_threading: self.keep_threading_headers,
                keep_own_message_id: false,
            },
            replay_window: (!self.replay_window.is_zero()).then_some(self.replay_window),
        })
    }
}
