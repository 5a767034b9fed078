//! The mixer's settings: strategy, distributions, retries, lifetime and
//! delivery concurrency. Built by the binary from `[mixer]`, `[fetch] delay`,
//! `[cover]` and `[mote]`; replaced as a whole by [`Mixer::reconfigure`](crate::Mixer::reconfigure).

use std::time::{Duration, SystemTime};

use rand::Rng;

use rand_distr::{Distribution, Exp};
use serde::{Deserialize, Serialize};

use crate::{DelayError, DelaySpec, MixerError, Strategy};

/// Randomised exponential backoff for temporary failures.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Backoff after the first failure (before the ±50 % jitter).
    pub base: Duration,
    /// Upper bound of the backoff (before jitter).
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(30),
            max: Duration::from_secs(30 * 60),
        }
    }
}

impl RetryPolicy {
    /// Backoff before attempt `attempts + 1`, given `attempts` failures so far
    /// (≥ 1): `min(max, base·2^(attempts−1))` times a uniform factor in
    /// [0.5, 1.5), so that retries of items that failed together spread out.
    pub fn backoff<G: Rng + ?Sized>(&self, attempts: u32, rng: &mut G) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let raw = self.base.saturating_mul(1u32 << exp).min(self.max);
        raw.mul_f64(rng.random_range(0.5..1.5))
    }
}

/// When the mote dies, and how long before that everything must have left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// The mote's end.
    pub expires_at: SystemTime,
    /// No release time falls later than `expires_at - drain_margin`, and no
    /// item is admitted once that point has passed.
    pub drain_margin: Duration,
}

impl Lifetime {
    /// The last release time allowed.
    pub fn last_release(&self) -> SystemTime {
        self.expires_at
            .checked_sub(self.drain_margin)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// When a hand-off to a successor begins: `window` before the last
    /// release time, so that what fails to move can still be released.
    pub fn hop_point(&self, window: Duration) -> SystemTime {
        self.last_release()
            .checked_sub(window)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// Mixer settings (from `[mixer]` in the config).
#[derive(Debug, Clone)]
pub struct MixerConfig {
    /// When items leave: per-item delays, or pool/binomial rounds.
    pub strategy: Strategy,
    /// Cover traffic, if any.
    pub cover: Option<CoverConfig>,
    /// Delay distribution for new items (`Poisson` strategy).
    pub delay: DelaySpec,
    /// Distributions for particular item kinds (by kind byte), e.g. the gaps
    /// between a download's chunks; other kinds use `delay`.
    pub kind_delays: Vec<(u8, DelaySpec)>,
    /// Retry policy for temporary failures.
    pub retry: RetryPolicy,
    /// The mote's lifetime, if it has one: release times are clamped to
    /// leave everything out before it ends.
    pub lifetime: Option<Lifetime>,
    /// Deliveries running at once. Each holds an outbound connection; more
    /// would not speed up a Tor-bound mote and would make a burst of releases
    /// visible as a burst of circuits.
    pub max_in_flight: usize,
    /// Hop at drain: `hop_window` before the lifetime's last release time,
    /// if the deliverer names a successor ([`Deliver::has_successor`](crate::Deliver::has_successor)),
    /// every item still queued or held is handed to it instead of being
    /// released here; an item that cannot be handed over after a few tries
    /// is released here before the last release time, at a random moment.
    /// `None`: no hopping (everything left is released at the drain point).
    pub hop_window: Option<Duration>,
}

impl MixerConfig {
    /// `t`, or the last release time the lifetime allows if that is earlier.
    pub fn clamp(&self, t: SystemTime) -> SystemTime {
        match &self.lifetime {
            Some(l) => t.min(l.last_release()),
            None => t,
        }
    }

    /// When the hand-off to a successor begins, if this mixer hops.
    pub fn hop_point(&self) -> Option<SystemTime> {
        Some(self.lifetime?.hop_point(self.hop_window?))
    }

    /// The delay distribution of items of `kind`.
    pub fn delay_for(&self, kind: u8) -> &DelaySpec {
        self.kind_delays
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, d)| d)
            .unwrap_or(&self.delay)
    }

    /// Check the strategy and every distribution; the error names the key
    /// (`strategy.rate`, `delay.mean`, `kind_delays.2.min`, ...).
    pub fn validate(&self) -> Result<(), MixerError> {
        let invalid = |what: &str, e: crate::DelayError| MixerError::Invalid(format!("{what}.{e}"));
        self.strategy
            .validate()
            .map_err(|e| invalid("strategy", e))?;
        if let Some(c) = &self.cover {
            c.validate().map_err(|e| invalid("cover", e))?;
        }
        self.delay.validate().map_err(|e| invalid("delay", e))?;
        for (kind, d) in &self.kind_delays {
            d.validate()
                .map_err(|e| invalid(&format!("kind_delays.{kind}"), e))?;
        }
        Ok(())
    }
}

impl Default for MixerConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Poisson,
            cover: None,
            delay: DelaySpec::Exponential {
                mean: Duration::from_secs(30 * 60),
                min: Some(Duration::from_secs(60)),
                max: Some(Duration::from_secs(6 * 3600)),
            },
            kind_delays: Vec::new(),
            retry: RetryPolicy::default(),
            lifetime: None,
            max_in_flight: 16,
            hop_window: None,
        }
    }
}

/// Cover settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CoverConfig {
    /// Candidate dummies per second (a Poisson process): the most cover
    /// the mote will ever send.
    pub rate_per_s: f64,
    /// A candidate is admitted only while fewer items than this are in the
    /// mix.
    pub target_pool: u64,
}

impl CoverConfig {
    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), DelayError> {
        if !(self.rate_per_s.is_finite() && self.rate_per_s > 0.0) {
            return Err(DelayError {
                key: "rate",
                reason: "rate must be > 0".into(),
            });
        }
        if self.target_pool == 0 {
            return Err(DelayError {
                key: "target_pool",
                reason: "target_pool must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// Time to the next candidate.
    pub fn gap<G: Rng + ?Sized>(&self, rng: &mut G) -> Duration {
        let secs = Exp::new(self.rate_per_s)
            .map(|e| e.sample(rng))
            .unwrap_or(1.0 / self.rate_per_s);
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::from_secs(3600))
    }
}
