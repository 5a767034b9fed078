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
    /// `"at_drain"`: hand what is still queued to `successor` before the
    /// end instead of releasing it at the drain point. `"off"`: never.
    pub hop: Hop,
    /// The hand-off begins this long before the drain point (what cannot
    /// be handed over is released here in that time).
    #[serde(with = "hts")]
    pub hop_window: Duration,
    /// The `[[peers]]` entry (with `url` and `token`) to hand over to; may
    /// be named later with `dustmote reload`.
    pub successor: Option<String>,
}

/// `[mote] hop`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hop {
    /// Release everything here before the end.
    #[default]
    Off,
    /// Hand the queue to the successor before the drain point.
    AtDrain,
}

impl Default for Mote {
    fn default() -> Self {
        Self {
            expires_at: None,
            lifetime: None,
            drain_margin: Duration::from_secs(600),
            hop: Hop::Off,
            hop_window: Duration::from_secs(600),
            successor: None,
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
        if self.hop == Hop::AtDrain {
            if self.expires_at.is_none() && self.lifetime.is_none() {
                return Err(invalid(
                    "mote.hop",
                    "hopping at the drain point needs an end: expires_at or lifetime",
                ));
            }
            if self.hop_window.is_zero() {
                return Err(invalid("mote.hop_window", "must be positive"));
            }
            if self
                .lifetime
                .is_some_and(|l| l <= self.drain_margin + self.hop_window)
            {
                return Err(invalid(
                    "mote.hop_window",
                    "the lifetime must be longer than drain_margin + hop_window",
                ));
            }
        } else if self.successor.is_some() {
            return Err(invalid(
                "mote.successor",
                "a successor is only used with hop = \"at_drain\"",
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

impl Mote {
    /// How long before the drain point the hand-off begins, if hopping.
    pub fn hop_window(&self) -> Option<Duration> {
        (self.hop == Hop::AtDrain).then_some(self.hop_window)
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
