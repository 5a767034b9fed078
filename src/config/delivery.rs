//! `[delivery.mail]`: where mail goes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use dust_mixer::delay::humantime_serde_compat as hts;
use dust_proxies::egress::mail::{MxRoute, RelayConfig, Route, TlsMode};
use dust_proxies::egress::mx::MxConfig;
use dust_proxies::egress::MailNext;
use serde::Deserialize;

use super::units::{read_ca, split_host_port};
use super::{invalid, Invalid};

/// Bound on one DNS exchange through Tor (mode `mx`).
const DNS_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// To another mote (a cascade): the `[[peers]]` entry named by `peer`.
    Peer,
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
    pub onion_mx: HashMap<String, String>,
    /// TLS to the smarthost.
    #[serde(default)]
    pub tls: TlsMode,
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
    /// The `[[peers]]` name mail goes to (mode `peer`).
    #[serde(default)]
    pub peer: Option<String>,
}

fn default_mx_port() -> u16 {
    25
}

fn default_delivery_timeout() -> Duration {
    Duration::from_secs(120)
}

impl Delivery {
    /// Check the section; the mail route and the per-attempt timeout, if
    /// mail delivery is configured.
    pub fn check(
        &self,
        peers: &[super::peers::Peer],
        warnings: &mut Vec<String>,
    ) -> Result<Option<(MailNext, Duration)>, Invalid> {
        let Some(d) = &self.mail else {
            warnings.push(
                "no [delivery.mail]: mail is accepted and kept queued but not delivered".into(),
            );
            return Ok(None);
        };
        d.check(peers).map(Some)
    }
}

impl MailDelivery {
    fn check(&self, peers: &[super::peers::Peer]) -> Result<(MailNext, Duration), Invalid> {
        let auth = match (&self.user, &self.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "delivery.mail.user",
                    "user and password go together",
                ))
            }
        };
        if self.timeout.is_zero() {
            return Err(invalid("delivery.mail.timeout", "must be positive"));
        }
        let extra_ca_pem = read_ca(self.ca_file.as_deref())
            .map_err(|reason| invalid("delivery.mail.ca_file", reason))?;
        if self.peer.is_some() && self.mode != MailMode::Peer {
            return Err(invalid("delivery.mail.peer", "only with mode = \"peer\""));
        }
        let route = match self.mode {
            MailMode::Peer => {
                let name = self.peer.as_deref().ok_or_else(|| {
                    invalid(
                        "delivery.mail.peer",
                        "required with mode = \"peer\" (a [[peers]] name)",
                    )
                })?;
                let target = super::peers::target(peers, name)
                    .map_err(|e| invalid("delivery.mail.peer", e.to_string()))?;
                MailNext::Mote(target)
            }
            MailMode::Relay => {
                let relay = self.relay.as_deref().ok_or_else(|| {
                    invalid("delivery.mail.relay", "required with mode = \"relay\"")
                })?;
                let (host, port) = split_host_port(relay).ok_or_else(|| {
                    invalid(
                        "delivery.mail.relay",
                        "expected host:port, e.g. \"smtp.example.org:587\"",
                    )
                })?;
                MailNext::Smtp(Route::Relay(RelayConfig {
                    host,
                    port,
                    tls: self.tls,
                    auth,
                    timeout: self.timeout,
                    extra_ca_pem,
                }))
            }
            MailMode::Mx => {
                let resolver = self.resolver.as_deref().ok_or_else(|| {
                    invalid(
                        "delivery.mail.resolver",
                        "required with mode = \"mx\" (e.g. \"9.9.9.9:53\")",
                    )
                })?;
                let resolver = split_host_port(resolver).ok_or_else(|| {
                    invalid(
                        "delivery.mail.resolver",
                        "expected host:port, e.g. \"9.9.9.9:53\"",
                    )
                })?;
                if self.tls == TlsMode::Implicit {
                    return Err(invalid(
                        "delivery.mail.tls",
                        "mode = \"mx\" takes \"none\" or \"starttls\"",
                    ));
                }
                if auth.is_some() {
                    return Err(invalid(
                        "delivery.mail.user",
                        "mail exchangers take no AUTH; user/password are for mode = \"relay\"",
                    ));
                }
                let mut onion_map = HashMap::new();
                for (domain, host) in &self.onion_mx {
                    if !host.ends_with(".onion") {
                        return Err(invalid(
                            "delivery.mail.onion_mx",
                            format!("{domain:?} maps to {host:?}, which is not an .onion host"),
                        ));
                    }
                    onion_map.insert(domain.to_ascii_lowercase(), host.to_ascii_lowercase());
                }
                MailNext::Smtp(Route::Mx(MxRoute {
                    mx: MxConfig {
                        resolver,
                        port: self.mx_port,
                        onion_map,
                        dns_timeout: DNS_TIMEOUT,
                    },
                    tls: self.tls,
                    extra_ca_pem,
                }))
            }
        };
        Ok((route, self.timeout))
    }
}
