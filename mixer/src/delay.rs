//! Delay distributions: what an operator writes in `delay = { ... }`, its
//! validation, and sampling.

use std::time::Duration;

use rand::Rng;
use rand_distr::{Distribution, Exp};
use serde::Deserialize;

/// A delay distribution as configured, e.g.
/// `{ distribution = "exponential", mean = "2s", min = "100ms", max = "10s" }`.
///
/// A sample is clamped: `min(max(sample, min), max)`. Clamping at `max` puts
/// a small atom of probability at `max` (e^(−max/mean) for the exponential);
/// clamping at `min` one at `min` (1 − e^(−min/mean)).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "distribution", rename_all = "lowercase", deny_unknown_fields)]
pub enum DelaySpec {
    /// Exponential with the given mean (memoryless: Loopix/Nym's choice, the
    /// best anonymity for a given mean latency in a continuous-time mix).
    Exponential {
        /// Mean of the unclamped distribution.
        #[serde(with = "humantime_serde_compat")]
        mean: Duration,
        /// Lower clamp.
        #[serde(default, with = "humantime_serde_compat::option")]
        min: Option<Duration>,
        /// Upper clamp.
        #[serde(default, with = "humantime_serde_compat::option")]
        max: Option<Duration>,
    },
    /// Always the same delay (tests and benchmarks; mixes nothing by itself).
    Constant {
        /// The delay.
        #[serde(with = "humantime_serde_compat")]
        value: Duration,
    },
}

/// A configuration error naming the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct DelayError {
    /// The key, relative to the delay table (`mean`, `min`, ...).
    pub key: &'static str,
    /// Why it is wrong.
    pub reason: String,
}

/// Longest delay we accept: a mote lives for days, not years; larger values
/// are almost certainly a unit mistake.
pub const MAX_CONFIGURED_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);

impl DelaySpec {
    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), DelayError> {
        let too_big = |key, d: Duration| {
            if d > MAX_CONFIGURED_DELAY {
                Err(DelayError {
                    key,
                    reason: format!(
                        "must be at most 30 days, got {}",
                        humantime::format_duration(d)
                    ),
                })
            } else {
                Ok(())
            }
        };
        match self {
            DelaySpec::Exponential { mean, min, max } => {
                if mean.is_zero() {
                    return Err(DelayError {
                        key: "mean",
                        reason: "must be > 0".into(),
                    });
                }
                too_big("mean", *mean)?;
                if let Some(m) = min {
                    too_big("min", *m)?;
                }
                if let Some(m) = max {
                    too_big("max", *m)?;
                }
                if let (Some(lo), Some(hi)) = (min, max) {
                    if lo > hi {
                        return Err(DelayError {
                            key: "min",
                            reason: "min > max".into(),
                        });
                    }
                }
                Ok(())
            }
            DelaySpec::Constant { value } => too_big("value", *value),
        }
    }

    /// The typical delay (the distribution's mean before clamping), for
    /// estimates shown to users.
    pub fn typical(&self) -> Duration {
        match self {
            DelaySpec::Exponential { mean, .. } => *mean,
            DelaySpec::Constant { value } => *value,
        }
    }

    /// Draw one delay. `self` must have passed [`validate`](Self::validate).
    pub fn sample<G: Rng + ?Sized>(&self, rng: &mut G) -> Duration {
        match self {
            DelaySpec::Exponential { mean, min, max } => {
                let secs = match Exp::new(1.0 / mean.as_secs_f64()) {
                    Ok(exp) => exp.sample(rng),
                    Err(_) => mean.as_secs_f64(),
                };
                let mut d = Duration::try_from_secs_f64(secs).unwrap_or(MAX_CONFIGURED_DELAY);
                if let Some(lo) = min {
                    d = d.max(*lo);
                }
                d.min(max.unwrap_or(MAX_CONFIGURED_DELAY))
            }
            DelaySpec::Constant { value } => *value,
        }
    }
}

/// serde helpers for human-readable durations ("2s", "100ms", "1h 30m").
pub mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Deserialize a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }

    /// Optional durations.
    pub mod option {
        use super::*;

        /// Deserialize an optional duration string.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}
