//! Mixing strategies: when an item leaves.
//!
//! - `Poisson`: every item gets its own random delay from its kind's
//!   distribution (a continuous-time mix; with exponential delays a Poisson
//!   mix, as in Loopix and Nym).
//! - `Pool`: a timed dynamic pool (Mixmaster): every `interval`, if more
//!   than `min_pool` items are held, `min(size − min_pool, ⌈size · rate⌉)` of
//!   them, chosen uniformly at random, leave.
//! - `Binomial`: every `interval`, each held item leaves independently with
//!   probability `rate` (Mixminion's binomial mix).
//!
//! Under `pool` and `binomial` the delay distributions are not used for
//! new items: an item waits for the rounds instead. Download steps go back
//! into the pool too.

use std::time::Duration;

use rand::seq::index::sample;
use rand::Rng;

use crate::delay::{DelayError, MAX_CONFIGURED_DELAY};

/// A mixing strategy and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// Independent delay per item.
    Poisson,
    /// Timed dynamic pool.
    Pool {
        /// Time between rounds.
        interval: Duration,
        /// Items always kept back.
        min_pool: u64,
        /// Largest fraction of the pool sent per round, in (0, 1].
        rate: f64,
    },
    /// Binomial rounds.
    Binomial {
        /// Time between rounds.
        interval: Duration,
        /// Probability that an item leaves in a round, in (0, 1].
        rate: f64,
    },
}

/// Mixmaster's pool round interval: 15 min.
pub const MIXMASTER_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Mixmaster's pool: items always kept back.
pub const MIXMASTER_MIN_POOL: u64 = 45;
/// Mixmaster's pool: largest fraction sent per round.
pub const MIXMASTER_RATE: f64 = 0.65;

impl Strategy {
    /// Mixmaster's pool defaults: 15 min rounds, 45 kept back, 65 %.
    pub fn mixmaster() -> Self {
        Strategy::Pool {
            interval: MIXMASTER_INTERVAL,
            min_pool: MIXMASTER_MIN_POOL,
            rate: MIXMASTER_RATE,
        }
    }

    /// The strategy's name, as in the configuration.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Poisson => "poisson",
            Strategy::Pool { .. } => "pool",
            Strategy::Binomial { .. } => "binomial",
        }
    }

    /// The round interval, for strategies with rounds.
    pub fn interval(&self) -> Option<Duration> {
        match self {
            Strategy::Poisson => None,
            Strategy::Pool { interval, .. } | Strategy::Binomial { interval, .. } => {
                Some(*interval)
            }
        }
    }

    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), DelayError> {
        let rate_ok = |rate: f64| {
            if rate.is_finite() && rate > 0.0 && rate <= 1.0 {
                Ok(())
            } else {
                Err(DelayError {
                    key: "rate",
                    reason: format!("rate must be > 0 and <= 1, got {rate}"),
                })
            }
        };
        let interval_ok = |d: Duration| {
            if d.is_zero() {
                Err(DelayError {
                    key: "interval",
                    reason: "interval must be > 0".into(),
                })
            } else if d > MAX_CONFIGURED_DELAY {
                Err(DelayError {
                    key: "interval",
                    reason: "interval must be at most 30 days".into(),
                })
            } else {
                Ok(())
            }
        };
        match self {
            Strategy::Poisson => Ok(()),
            Strategy::Pool { interval, rate, .. } => {
                interval_ok(*interval)?;
                rate_ok(*rate)
            }
            Strategy::Binomial { interval, rate } => {
                interval_ok(*interval)?;
                rate_ok(*rate)
            }
        }
    }

    /// One round over a pool of `size` items: the positions (indices into
    /// the pool) of the items that leave, in random order. Empty for
    /// `Poisson`.
    pub fn pick<G: Rng + ?Sized>(&self, size: usize, rng: &mut G) -> Vec<usize> {
        match self {
            Strategy::Poisson => Vec::new(),
            Strategy::Pool { min_pool, rate, .. } => {
                let n = pool_round_count(size as u64, *min_pool, *rate) as usize;
                sample(rng, size, n).into_vec()
            }
            Strategy::Binomial { rate, .. } => {
                (0..size).filter(|_| rng.random_bool(*rate)).collect()
            }
        }
    }
}

/// How many of `size` held items a timed dynamic pool sends in one round:
/// none unless more than `min_pool` are held, else
/// `min(size − min_pool, ⌈size · rate⌉)`.
pub fn pool_round_count(size: u64, min_pool: u64, rate: f64) -> u64 {
    if size <= min_pool {
        return 0;
    }
    let share = (size as f64 * rate).ceil() as u64;
    (size - min_pool).min(share)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixmaster_counts() {
        // Nothing until more than 45 are held.
        assert_eq!(pool_round_count(45, 45, 0.65), 0);
        assert_eq!(pool_round_count(46, 45, 0.65), 1);
        // size − min_pool binds below ~129, the rate above.
        assert_eq!(pool_round_count(100, 45, 0.65), 55);
        assert_eq!(pool_round_count(128, 45, 0.65), 83);
        assert_eq!(pool_round_count(129, 45, 0.65), 84);
        assert_eq!(pool_round_count(200, 45, 0.65), 130);
        assert_eq!(pool_round_count(0, 0, 1.0), 0);
        assert_eq!(pool_round_count(3, 0, 1.0), 3);
    }
}
