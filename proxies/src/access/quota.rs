//! An account's quotas: its daily counters ([`Counters`]: messages, mail
//! bytes, downloads, downloaded bytes), its limits per UTC day
//! ([`Quota`]), and the refusal when one would be passed ([`Exceeded`]).

use std::time::SystemTime;

use dust_mixer::from_wall_ms;
use dust_storage::accounts::{Usage, USAGE_FIELDS};
use serde::{Deserialize, Serialize};

/// One of an account's daily counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Mail messages.
    Mail,
    /// Mail bytes.
    MailBytes,
    /// Downloads queued.
    Fetches,
    /// Downloaded bytes.
    FetchBytes,
}

impl Counter {
    /// Every counter, in the store's order.
    const ALL: [Counter; USAGE_FIELDS] = [
        Counter::Mail,
        Counter::MailBytes,
        Counter::Fetches,
        Counter::FetchBytes,
    ];
}

/// An account's counters for a day: what it used, its limits, or what one
/// piece of work adds. In JSON (`dustmote accounts`) an array in the
/// order of [`Counter`], as the store keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Usage", into = "Usage")]
pub struct Counters {
    /// Mail messages.
    pub mail: u64,
    /// Mail bytes.
    pub mail_bytes: u64,
    /// Downloads queued.
    pub fetches: u64,
    /// Downloaded bytes.
    pub fetch_bytes: u64,
}

impl Counters {
    /// `n` of `counter`, the others 0.
    pub fn one(counter: Counter, n: u64) -> Self {
        let mut c = Counters::default();
        *c.get_mut(counter) = n;
        c
    }

    /// No limit on any counter.
    pub const UNLIMITED: Counters = Counters {
        mail: u64::MAX,
        mail_bytes: u64::MAX,
        fetches: u64::MAX,
        fetch_bytes: u64::MAX,
    };

    /// The value of `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        match counter {
            Counter::Mail => self.mail,
            Counter::MailBytes => self.mail_bytes,
            Counter::Fetches => self.fetches,
            Counter::FetchBytes => self.fetch_bytes,
        }
    }

    fn get_mut(&mut self, counter: Counter) -> &mut u64 {
        match counter {
            Counter::Mail => &mut self.mail,
            Counter::MailBytes => &mut self.mail_bytes,
            Counter::Fetches => &mut self.fetches,
            Counter::FetchBytes => &mut self.fetch_bytes,
        }
    }

    /// The first counter `self` (a delta) adds to that passes its limit in
    /// `limits`, with `used` counted already.
    pub(super) fn passed(&self, used: &Counters, limits: &Counters) -> Option<Counter> {
        Counter::ALL
            .into_iter()
            .find(|&c| self.get(c) > 0 && used.get(c).saturating_add(self.get(c)) > limits.get(c))
    }
}

impl From<Usage> for Counters {
    fn from(u: Usage) -> Self {
        let mut c = Counters::default();
        for (counter, v) in Counter::ALL.into_iter().zip(u) {
            *c.get_mut(counter) = v;
        }
        c
    }
}

impl From<Counters> for Usage {
    fn from(c: Counters) -> Self {
        Counter::ALL.map(|counter| c.get(counter))
    }
}

/// Concurrent sessions of an account unless its invitation said otherwise
/// (SMTP sessions and HTTP requests, counted apart).
pub const DEFAULT_SESSIONS: u32 = 4;

/// A day in milliseconds.
pub(super) const DAY_MS: u64 = 86_400_000;

/// An account's limits per UTC day (`None`: none) and on sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Mail messages per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<u64>,
    /// Mail bytes per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_bytes: Option<u64>,
    /// Downloads queued per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetches: Option<u64>,
    /// Downloaded bytes per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_bytes: Option<u64>,
    /// Concurrent SMTP sessions, and concurrent HTTP requests (apart);
    /// `None`: [`DEFAULT_SESSIONS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u32>,
}

/// A quota that a request would pass: which, and when it is reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// The counter.
    pub which: Counter,
    /// The start of the next UTC day.
    pub resets_at: SystemTime,
}

/// The UTC day of a time in milliseconds since the epoch.
pub(super) fn day_of(ms: u64) -> u32 {
    u32::try_from(ms / DAY_MS).unwrap_or(u32::MAX)
}

impl Quota {
    /// The limits as counters (`u64::MAX`: none).
    pub(super) fn limits(&self) -> Counters {
        let l = |v: Option<u64>| v.unwrap_or(u64::MAX);
        Counters {
            mail: l(self.mail),
            mail_bytes: l(self.mail_bytes),
            fetches: l(self.fetches),
            fetch_bytes: l(self.fetch_bytes),
        }
    }

    /// Concurrent sessions allowed.
    pub(super) fn sessions(&self) -> u32 {
        self.sessions.unwrap_or(DEFAULT_SESSIONS)
    }
}

impl Exceeded {
    /// `which` is used up until the next UTC day after `now_ms`.
    pub(super) fn today(which: Counter, now_ms: u64) -> Self {
        Exceeded {
            which,
            resets_at: from_wall_ms((u64::from(day_of(now_ms)) + 1) * DAY_MS),
        }
    }

    /// Seconds until the reset (at least 1), for `Retry-After`.
    pub fn retry_after_secs(&self) -> u64 {
        self.resets_at
            .duration_since(SystemTime::now())
            .map_or(1, |d| d.as_secs().max(1))
    }

    /// The reset time, for replies.
    pub fn resets(&self) -> String {
        humantime::format_rfc3339_seconds(self.resets_at).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_keep_the_stores_order_and_name_what_passes() {
        let c = Counters {
            mail: 1,
            mail_bytes: 2,
            fetches: 3,
            fetch_bytes: 4,
        };
        assert_eq!(Usage::from(c), [1, 2, 3, 4]);
        assert_eq!(Counters::from([1, 2, 3, 4]), c);
        assert_eq!(serde_json::to_string(&c).unwrap_or_default(), "[1,2,3,4]");
        let limits = Counters {
            mail_bytes: 10,
            ..Counters::UNLIMITED
        };
        let used = Counters::one(Counter::MailBytes, 8);
        let delta = Counters {
            mail: 1,
            mail_bytes: 3,
            ..Counters::default()
        };
        assert_eq!(delta.passed(&used, &limits), Some(Counter::MailBytes));
        assert_eq!(Counters::one(Counter::Mail, 1).passed(&used, &limits), None);
    }
}
