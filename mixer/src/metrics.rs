//! What the mixer reports about itself: counters since start and the mix's
//! status (strategy, pool, anonymity, latency), typed here once and
//! serialized at the edges (`dustmote status`, `/status`) or rendered to
//! `/metrics` from these fields.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::anonymity::{AnonymityStats, LATENCY_BUCKETS_S};
use crate::{CoverConfig, MixerConfig, Strategy};

/// Counters since start.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Items durably admitted.
    pub admitted: u64,
    /// Items delivered.
    pub delivered: u64,
    /// Items dropped after a permanent failure (not bounced).
    pub dropped_permanent: u64,
    /// Temporary failures (each one rescheduled).
    pub retries: u64,
    /// Steps of multi-step items ([`Outcome::Again`](crate::Outcome::Again)).
    pub steps: u64,
    /// Cover (dummy) items added.
    pub cover: u64,
    /// Items handed to the successor mote (hop at drain).
    #[serde(default)]
    pub handed_off: u64,
    /// Items the hand-off gave up on and released here instead.
    #[serde(default)]
    pub hop_fallbacks: u64,
}

/// The live counters behind [`Metrics`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) admitted: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped_permanent: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) steps: AtomicU64,
    pub(crate) cover: AtomicU64,
    pub(crate) handed_off: AtomicU64,
    pub(crate) hop_fallbacks: AtomicU64,
}

impl Counters {
    /// Add one to `counter`.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot.
    pub(crate) fn snapshot(&self) -> Metrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Metrics {
            admitted: get(&self.admitted),
            delivered: get(&self.delivered),
            dropped_permanent: get(&self.dropped_permanent),
            retries: get(&self.retries),
            steps: get(&self.steps),
            cover: get(&self.cover),
            handed_off: get(&self.handed_off),
            hop_fallbacks: get(&self.hop_fallbacks),
        }
    }
}

/// The strategy in force, as the status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum StrategyStatus {
    /// Independent delays.
    Poisson {
        /// The delay distribution (its debug form).
        delay: String,
    },
    /// Timed dynamic pool.
    Pool {
        /// Seconds between rounds.
        interval_s: f64,
        /// Items always kept back.
        min_pool: u64,
        /// Largest fraction sent per round.
        rate: f64,
    },
    /// Binomial rounds.
    Binomial {
        /// Seconds between rounds.
        interval_s: f64,
        /// Probability that a held item leaves in a round.
        rate: f64,
    },
}

impl Default for StrategyStatus {
    fn default() -> Self {
        StrategyStatus::from(&MixerConfig::default())
    }
}

impl From<&MixerConfig> for StrategyStatus {
    fn from(cfg: &MixerConfig) -> Self {
        match &cfg.strategy {
            Strategy::Poisson => StrategyStatus::Poisson {
                delay: format!("{:?}", cfg.delay),
            },
            Strategy::Pool {
                interval,
                min_pool,
                rate,
            } => StrategyStatus::Pool {
                interval_s: interval.as_secs_f64(),
                min_pool: *min_pool,
                rate: *rate,
            },
            Strategy::Binomial { interval, rate } => StrategyStatus::Binomial {
                interval_s: interval.as_secs_f64(),
                rate: *rate,
            },
        }
    }
}

/// A histogram bucket's upper bound in seconds: a number, or `+Inf` for
/// the last bucket (serialized as the string `"+Inf"`, as JSON has no
/// infinity).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Bound {
    /// A finite bound.
    Finite(f64),
    /// Above every finite bound.
    Infinite(PlusInf),
}

/// The `+Inf` of [`Bound::Infinite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlusInf {
    /// `"+Inf"`.
    #[serde(rename = "+Inf")]
    PlusInf,
}

impl Bound {
    /// The bound as a number (`f64::INFINITY` for `+Inf`).
    pub fn seconds(self) -> f64 {
        match self {
            Bound::Finite(s) => s,
            Bound::Infinite(_) => f64::INFINITY,
        }
    }
}

impl From<f64> for Bound {
    fn from(s: f64) -> Self {
        if s.is_finite() {
            Bound::Finite(s)
        } else {
            Bound::Infinite(PlusInf::PlusInf)
        }
    }
}

/// The mix now: strategy, pool and anonymity metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MixStatus {
    /// The strategy in force.
    pub strategy: StrategyStatus,
    /// Items held for the next pool/binomial round.
    pub held: u64,
    /// Items in the mix now (ρ).
    pub pool: u64,
    /// Time-averaged pool size since start.
    pub mean_pool: f64,
    /// Items that left the mix.
    pub outputs: u64,
    /// Mean entropy of all outputs since start, bits.
    pub entropy_bits_mean: f64,
    /// Entropy of recent outputs (moving average), bits.
    pub entropy_bits_recent: f64,
    /// Items that left without sharing the pool with another.
    pub unmixed: u64,
    /// `unmixed / outputs` (0 without outputs).
    pub p_unmixed: f64,
    /// Latency histogram: (upper bound, cumulative count), the last bound
    /// `+Inf`.
    pub latency_buckets_s: Vec<(Bound, u64)>,
    /// Sum of the latencies, seconds.
    pub latency_sum_s: f64,
    /// Cover settings in force, if any.
    pub cover: Option<CoverConfig>,
    /// Cover items added since start.
    pub cover_items: u64,
}

impl MixStatus {
    /// The status of a mixer with settings `cfg`, `held` items held for
    /// rounds, `cover_items` dummies added, and anonymity statistics `a`.
    pub fn new(cfg: &MixerConfig, held: usize, cover_items: u64, a: &AnonymityStats) -> Self {
        let bounds = LATENCY_BUCKETS_S.iter().copied().chain([f64::INFINITY]);
        let latency_buckets_s = bounds
            .zip(a.latency_buckets)
            .scan(0, |cumulative, (le, n)| {
                *cumulative += n;
                Some((Bound::from(le), *cumulative))
            })
            .collect();
        MixStatus {
            strategy: StrategyStatus::from(cfg),
            held: held as u64,
            pool: a.pool,
            mean_pool: a.mean_pool,
            outputs: a.outputs,
            entropy_bits_mean: a.mean_entropy_bits,
            entropy_bits_recent: a.recent_entropy_bits,
            unmixed: a.unmixed,
            p_unmixed: a.p_unmixed(),
            latency_buckets_s,
            latency_sum_s: a.latency_sum_s,
            cover: cfg.cover,
            cover_items,
        }
    }

    /// The strategy's name.
    pub fn strategy_name(&self) -> &'static str {
        match self.strategy {
            StrategyStatus::Poisson { .. } => "poisson",
            StrategyStatus::Pool { .. } => "pool",
            StrategyStatus::Binomial { .. } => "binomial",
        }
    }

    /// The latency histogram's per-bucket (not cumulative) counts.
    pub fn latency_counts(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let mut before = 0;
        self.latency_buckets_s.iter().map(move |(le, cum)| {
            let n = cum.saturating_sub(before);
            before = *cum;
            (le.seconds(), n)
        })
    }

    /// The bucket bound at or below which half of the outputs' latencies
    /// fall (`None` without outputs; `+Inf` if beyond the last finite bound).
    pub fn median_bound(&self) -> Option<f64> {
        let total = self.latency_buckets_s.last()?.1;
        if total == 0 {
            return None;
        }
        self.latency_buckets_s
            .iter()
            .find(|(_, cum)| cum * 2 >= total)
            .map(|(le, _)| le.seconds())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_round_trip() {
        let a = AnonymityStats {
            pool: 0,
            mean_pool: 0.0,
            outputs: 3,
            mean_entropy_bits: 1.0,
            recent_entropy_bits: 1.0,
            unmixed: 0,
            latency_buckets: {
                let mut b = [0; LATENCY_BUCKETS_S.len() + 1];
                b[1] = 2;
                b[LATENCY_BUCKETS_S.len()] = 1;
                b
            },
            latency_sum_s: 1e6,
        };
        let s = MixStatus::new(&MixerConfig::default(), 0, 0, &a);
        assert_eq!(s.latency_buckets_s[0], (Bound::Finite(1.0), 0));
        assert_eq!(s.latency_buckets_s[1], (Bound::Finite(5.0), 2));
        assert_eq!(
            s.latency_buckets_s.last(),
            Some(&(Bound::from(f64::INFINITY), 3))
        );
        assert_eq!(s.median_bound(), Some(5.0));
        let counts: Vec<u64> = s.latency_counts().map(|(_, n)| n).collect();
        assert_eq!(counts.iter().sum::<u64>(), 3);
        assert_eq!((counts[1], counts[LATENCY_BUCKETS_S.len()]), (2, 1));
        let json = serde_json::to_value(&s).expect("serialize");
        assert_eq!(
            json["latency_buckets_s"][14],
            serde_json::json!(["+Inf", 3])
        );
        assert_eq!(json["strategy"]["name"], "poisson");
        let back: MixStatus = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, s);
    }
}
