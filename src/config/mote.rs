//! `[mote]` (the mote's life) and `[shutdown]` (how it stops).

use std::time::Duration;

use dust_mixer::delay::humantime_serde_compat as hts;
use dust_mixer::Lifetime;
use serde::Deserialize;

use super::{invalid, Invalid};

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

impl Mote {
    /// Check the section; the lifetime if `expires_at` fixes it (with
    /// `lifetime`, `serve` sets it once it knows the first start).
    pub fn check(&self) -> Result<Option<Lifetime>, Invalid> {
        if self.expires_at.is_some() && self.lifetime.is_some() {
            return Err(invalid(
                "mote.lifetime",
                "give either expires_at or lifetime, not both",
            ));
        }
        if self.lifetime.is_some_and(|l| l <= self.drain_margin) {
            return Err(invalid(
                "mote.lifetime",
                "the lifetime must be longer than drain_margin",
            ));
        }
        let Some(t) = &self.expires_at else {
            return Ok(None);
        };
        let expires_at = humantime::parse_rfc3339_weak(t)
            .map_err(|e| invalid("mote.expires_at", format!("expected an RFC 3339 time: {e}")))?;
        Ok(Some(Lifetime {
            expires_at,
            drain_margin: self.drain_margin,
        }))
    }
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
