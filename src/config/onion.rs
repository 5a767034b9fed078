//! `[onion]`: the mote's own onion services, published through a tor
//! daemon's control port (needed for access cards; with `client_auth`,
//! only card holders can find them).

use std::net::SocketAddr;
use std::path::PathBuf;

use dust_proxies::onion::{ControlAddr, OnionConfig};
use serde::Deserialize;

use super::{invalid, Invalid};

/// `[onion]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Onion {
    /// tor's control port: `"127.0.0.1:9051"` or a `ControlSocket` path.
    /// Unset: the mote publishes no onion service itself.
    pub control: Option<String>,
    /// The password of tor's `HashedControlPassword`, if tor asks for one
    /// (otherwise its cookie file is read, or no authentication is used,
    /// as tor's PROTOCOLINFO says).
    pub control_password: Option<String>,
    /// tor's control cookie file (`CookieAuthentication 1`; Debian's tor:
    /// `/run/tor/control.authcookie`): the mote authenticates with
    /// SAFECOOKIE, in which the control port must first prove it knows the
    /// cookie. Only this file is read, never one the control port names.
    pub control_cookie: Option<PathBuf>,
    /// Virtual port of the SMTP onion service (`0`: none).
    pub smtp_port: u16,
    /// Virtual port of the HTTP onion service (`0`: none).
    pub http_port: u16,
    /// Restricted discovery: descriptors readable only with a card's key.
    pub client_auth: bool,
    /// Tor's proof-of-work defence for the services (`PoWDefensesEnabled=1`):
    /// under a flood of introductions, clients whose tor solves a puzzle
    /// are served first.
    pub pow: bool,
    /// Where the services' keys are kept. Unset: in memory, beside the
    /// sealing key (the addresses survive a restart, not a reboot).
    pub key_file: Option<PathBuf>,
}

impl Default for Onion {
    fn default() -> Self {
        Self {
            control: None,
            control_password: None,
            control_cookie: None,
            smtp_port: 587,
            http_port: 80,
            client_auth: false,
            pow: true,
            key_file: None,
        }
    }
}

impl Onion {
    /// Check the section: the services' settings (the key file still
    /// unset when it is the default), or `None` without `control`.
    pub fn check(
        &self,
        smtp: SocketAddr,
        http: SocketAddr,
    ) -> Result<Option<OnionConfig>, Invalid> {
        let Some(control) = &self.control else {
            if self.client_auth {
                return Err(invalid(
                    "onion.client_auth",
                    "needs [onion] control: the mote publishes its services itself to restrict them",
                ));
            }
            return Ok(None);
        };
        let control = if control.starts_with('/') {
            ControlAddr::Unix(PathBuf::from(control))
        } else {
            ControlAddr::Tcp(control.parse().map_err(|_| {
                invalid(
                    "onion.control",
                    "expected \"127.0.0.1:9051\" or the absolute path of a ControlSocket",
                )
            })?)
        };
        if self
            .control_password
            .as_deref()
            .is_some_and(|p| p.contains(['\r', '\n']))
        {
            return Err(invalid("onion.control_password", "one line (no CR or LF)"));
        }
        if self
            .control_cookie
            .as_ref()
            .is_some_and(|c| self.key_file.as_ref() == Some(c))
        {
            return Err(invalid(
                "onion.control_cookie",
                "is the onion key file: tor's cookie is a file of tor's",
            ));
        }
        if self.smtp_port == 0 && self.http_port == 0 {
            return Err(invalid("onion.smtp_port", "both services are off (port 0)"));
        }
        // The services point at the listeners; one on 0.0.0.0 is reached
        // on loopback.
        let local = |a: SocketAddr| {
            if a.ip().is_unspecified() {
                SocketAddr::from(([127, 0, 0, 1], a.port()))
            } else {
                a
            }
        };
        Ok(Some(OnionConfig {
            control,
            password: self.control_password.clone(),
            cookie: self.control_cookie.clone(),
            smtp: (self.smtp_port != 0).then(|| (self.smtp_port, local(smtp))),
            http: (self.http_port != 0).then(|| (self.http_port, local(http))),
            client_auth: self.client_auth,
            pow: self.pow,
            key_file: self.key_file.clone().unwrap_or_default(),
        }))
    }
}
