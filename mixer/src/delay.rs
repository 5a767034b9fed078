//! Delay distributions: what an operator writes in `delay = { ... }`, its
//! validation, and sampling.

use std::time::Duration;

use rand::Rng;
use rand_distr::{Distribution, Exp, LogNormal};
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
    /// Uniform between `min` and `max` (its bounds are its clamps).
    Uniform {
        /// Smallest delay.
        #[serde(with = "humantime_serde_compat")]
        min: Duration,
        /// Largest delay.
        #[serde(with = "humantime_serde_compat")]
        max: Duration,
    },
    /// Log-normal with the given mean and shape `sigma` (the standard
    /// deviation of the delay's logarithm): a long right tail with few very
    /// short delays.
    #[serde(alias = "log-normal")]
    Lognormal {
        /// Mean of the unclamped distribution.
        #[serde(with = "humantime_serde_compat")]
        mean: Duration,
        /// Shape, > 0 (1.0 is a common choice).
        sigma: f64,
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
        let clamps = |min: &Option<Duration>, max: &Option<Duration>| {
            if let Some(m) = min {
                too_big("min", *m)?;
            }
            if let Some(m) = max {
                too_big("max", *m)?;
            }
            match (min, max) {
                (Some(lo), Some(hi)) if lo > hi => Err(DelayError {
                    key: "min",
                    reason: "min > max".into(),
                }),
                _ => Ok(()),
            }
        };
        let positive_mean = |mean: &Duration| {
            if mean.is_zero() {
                return Err(DelayError {
                    key: "mean",
                    reason: "mean must be > 0".into(),
                });
            }
            too_big("mean", *mean)
        };
        match self {
            DelaySpec::Exponential { mean, min, max } => {
                positive_mean(mean)?;
                clamps(min, max)
            }
            DelaySpec::Uniform { min, max } => clamps(&Some(*min), &Some(*max)),
            DelaySpec::Lognormal {
                mean,
                sigma,
                min,
                max,
            } => {
                positive_mean(mean)?;
                if !(sigma.is_finite() && *sigma > 0.0 && *sigma <= 4.0) {
                    return Err(DelayError {
                        key: "sigma",
                        reason: format!("sigma must be > 0 and <= 4, got {sigma}"),
                    });
                }
                clamps(min, max)
            }
            DelaySpec::Constant { value } => too_big("value", *value),
        }
    }

    /// The typical delay (the distribution's mean before clamping), for
    /// estimates shown to users.
    pub fn typical(&self) -> Duration {
        match self {
            DelaySpec::Exponential { mean, .. } | DelaySpec::Lognormal { mean, .. } => *mean,
            DelaySpec::Uniform { min, max } => (*min + *max) / 2,
            DelaySpec::Constant { value } => *value,
        }
    }

    /// Draw one delay. `self` must have passed [`validate`](Self::validate).
    pub fn sample<G: Rng + ?Sized>(&self, rng: &mut G) -> Duration {
        let clamp = |secs: f64, min: &Option<Duration>, max: &Option<Duration>| {
            let mut d = Duration::try_from_secs_f64(secs).unwrap_or(MAX_CONFIGURED_DELAY);
            if let Some(lo) = min {
                d = d.max(*lo);
            }
            d.min(max.unwrap_or(MAX_CONFIGURED_DELAY))
        };
        match self {
            DelaySpec::Exponential { mean, min, max } => {
                let secs = match Exp::new(1.0 / mean.as_secs_f64()) {
                    Ok(exp) => exp.sample(rng),
                    Err(_) => mean.as_secs_f64(),
                };
                clamp(secs, min, max)
            }
            DelaySpec::Uniform { min, max } => {
                if min >= max {
                    *min
                } else {
                    rng.random_range(*min..=*max)
                }
            }
            DelaySpec::Lognormal {
                mean,
                sigma,
                min,
                max,
            } => {
                // E[X] = exp(mu + sigma²/2), so mu = ln(mean) − sigma²/2.
                let mu = mean.as_secs_f64().ln() - sigma * sigma / 2.0;
                let secs = match LogNormal::new(mu, *sigma) {
                    Ok(d) => d.sample(rng),
                    Err(_) => mean.as_secs_f64(),
                };
                clamp(secs, min, max)
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
