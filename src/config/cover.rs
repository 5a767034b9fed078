//! `[cover]`: dummy items that keep the pool filled when real traffic is low.

use dust_mixer::CoverConfig;
use dust_proxies::item::job::is_http_url;
use serde::Deserialize;

use super::units::parse_rate;
use super::{invalid, Invalid};

/// `[cover]`
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

impl Cover {
    /// Check the section (`mail_delivery`: whether `[delivery.mail]` is
    /// set); the mixer's cover settings and where dummies go, if cover is on.
    pub fn check(
        &self,
        mail_delivery: bool,
    ) -> Result<Option<(CoverConfig, CoverTargets)>, Invalid> {
        let Some(rate) = &self.rate else {
            return Ok(None);
        };
        let rate_per_s = parse_rate(rate).map_err(|e| invalid("cover.rate", e.to_string()))?;
        let cover = CoverConfig {
            rate_per_s,
            target_pool: self.target_pool,
        };
        cover
            .validate()
            .map_err(|e| invalid(format!("cover.{}", e.key), e.reason))?;
        let mail = match (&self.mail_to, &self.mail_from) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "cover.mail_from",
                    "dummy mail needs a sender (mail_from)",
                ))
            }
            (Some(_), Some(_)) if !mail_delivery => {
                return Err(invalid("cover.mail_to", "dummy mail needs [delivery.mail]"))
            }
            (Some(to), Some(from)) => Some((from.clone(), to.clone())),
        };
        if let Some(u) = self.fetch_urls.iter().find(|u| !is_http_url(u)) {
            return Err(invalid(
                "cover.fetch_urls",
                format!("{u:?} is not an absolute http(s) URL"),
            ));
        }
        if mail.is_none() && self.fetch_urls.is_empty() {
            return Err(invalid(
                "cover.rate",
                "cover traffic needs mail_to or fetch_urls",
            ));
        }
        let targets = CoverTargets {
            mail,
            fetch_urls: self.fetch_urls.clone(),
        };
        Ok(Some((cover, targets)))
    }
}
