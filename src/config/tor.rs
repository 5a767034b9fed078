//! `[tor]`: how traffic leaves the mote.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{invalid, Invalid};

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

impl Tor {
    /// The SocksPort address (checked by [`Tor::check`]).
    pub fn socks_addr(&self) -> SocketAddr {
        self.socks
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9050)))
    }

    /// Check the section; Arti's file is read now so that its errors name
    /// this key (`data_dir`: where Arti's state goes).
    pub fn check(&self, data_dir: &Path, warnings: &mut Vec<String>) -> Result<(), Invalid> {
        match self.mode {
            TorMode::Direct if !self.allow_clearnet => {
                return Err(invalid(
                    "tor.mode",
                    "\"direct\" sends mail in the clear, outside Tor; the mote refuses to start unless \
                     [tor] allow_clearnet = true says this is intended",
                ));
            }
            TorMode::Direct => warnings.push(
                "[tor] mode = \"direct\": deliveries leave in the clear, not through Tor".into(),
            ),
            TorMode::Arti => {
                dust_proxies::tor::arti_config(data_dir, self.arti_config.as_deref())
                    .map_err(|e| invalid("tor.arti_config", e.to_string()))?;
            }
            TorMode::Socks5 => {}
        }
        if let Some(s) = &self.socks {
            if s.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    "tor.socks",
                    "expected an address and port such as \"127.0.0.1:9050\" (a name would need a DNS lookup outside Tor)",
                ));
            }
        }
        Ok(())
    }
}
