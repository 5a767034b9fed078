//! `[mixer]`: when items leave. Defaults come from
//! [`MixerConfig::default`] and Mixmaster's pool constants.

use std::time::Duration;

use dust_mixer::delay::humantime_serde_compat as hts;
use dust_mixer::strategy;
use dust_mixer::{CoverConfig, DelaySpec, ItemKind, Lifetime, MixerConfig, RetryPolicy, Strategy};
use serde::Deserialize;

use super::{invalid, Invalid};

/// `[mixer] strategy` (and `dustmote simulate --strategy`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StrategyName {
    /// Each message gets an independent random delay (a Poisson mix when
    /// delays are exponential).
    #[default]
    Poisson,
    /// Timed dynamic pool (Mixmaster), settings in `[mixer.pool]`.
    Pool,
    /// Binomial rounds (Mixminion), settings in `[mixer.binomial]`.
    Binomial,
}

/// `[mixer.pool]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSettings {
    /// Time between rounds.
    #[serde(with = "hts")]
    pub interval: Duration,
    /// Items always kept back.
    pub min_pool: u64,
    /// Largest fraction sent per round.
    pub rate: f64,
}

impl Default for PoolSettings {
    /// Mixmaster's defaults.
    fn default() -> Self {
        Self {
            interval: strategy::MIXMASTER_INTERVAL,
            min_pool: strategy::MIXMASTER_MIN_POOL,
            rate: strategy::MIXMASTER_RATE,
        }
    }
}

/// `[mixer.binomial]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BinomialSettings {
    /// Time between rounds.
    #[serde(with = "hts")]
    pub interval: Duration,
    /// Probability that a held item leaves in a round.
    pub rate: f64,
}

impl Default for BinomialSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(900),
            rate: 0.5,
        }
    }
}

/// `[mixer]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mixer {
    /// Mixing strategy.
    pub strategy: StrategyName,
    /// `[mixer.pool]`: used with `strategy = "pool"`.
    pub pool: PoolSettings,
    /// `[mixer.binomial]`: used with `strategy = "binomial"`.
    pub binomial: BinomialSettings,
    /// Delay distribution.
    pub delay: DelaySpec,
    /// Deliveries at once.
    pub max_in_flight: usize,
    /// First retry backoff (before jitter).
    #[serde(with = "hts")]
    pub retry_base: Duration,
    /// Largest retry backoff (before jitter).
    #[serde(with = "hts")]
    pub retry_max: Duration,
}

impl Default for Mixer {
    fn default() -> Self {
        let d = MixerConfig::default();
        Self {
            strategy: StrategyName::Poisson,
            pool: PoolSettings::default(),
            binomial: BinomialSettings::default(),
            delay: d.delay,
            max_in_flight: d.max_in_flight,
            retry_base: d.retry.base,
            retry_max: d.retry.max,
        }
    }
}

impl Mixer {
    /// The strategy `name` with this section's parameters.
    pub fn strategy(&self, name: StrategyName) -> Strategy {
        match name {
            StrategyName::Poisson => Strategy::Poisson,
            StrategyName::Pool => Strategy::Pool {
                interval: self.pool.interval,
                min_pool: self.pool.min_pool,
                rate: self.pool.rate,
            },
            StrategyName::Binomial => Strategy::Binomial {
                interval: self.binomial.interval,
                rate: self.binomial.rate,
            },
        }
    }

    /// Check the section; the mixer's settings, with the download chunks'
    /// delay (`[fetch] delay`), cover traffic and the lifetime added.
    pub fn check(
        &self,
        fetch_delay: &DelaySpec,
        cover: Option<CoverConfig>,
        lifetime: Option<Lifetime>,
    ) -> Result<MixerConfig, Invalid> {
        if self.max_in_flight == 0 {
            return Err(invalid("mixer.max_in_flight", "must be at least 1"));
        }
        self.delay
            .validate()
            .map_err(|e| invalid(format!("mixer.delay.{}", e.key), e.reason))?;
        let strategy = self.strategy(self.strategy);
        let section = match self.strategy {
            StrategyName::Poisson => "mixer",
            StrategyName::Pool => "mixer.pool",
            StrategyName::Binomial => "mixer.binomial",
        };
        strategy
            .validate()
            .map_err(|e| invalid(format!("{section}.{}", e.key), e.reason))?;
        if self.retry_base.is_zero() || self.retry_max < self.retry_base {
            return Err(invalid(
                "mixer.retry_max",
                "retry_base must be positive and retry_max >= retry_base",
            ));
        }
        Ok(MixerConfig {
            cover,
            strategy,
            lifetime,
            delay: self.delay.clone(),
            kind_delays: vec![(ItemKind::Fetch as u8, fetch_delay.clone())],
            retry: RetryPolicy {
                base: self.retry_base,
                max: self.retry_max,
            },
            max_in_flight: self.max_in_flight,
            // `[mote] hop`: set by the caller.
            hop_window: None,
        })
    }
}
