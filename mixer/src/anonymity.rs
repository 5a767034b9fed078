//! Live anonymity metrics of the mix: pool size ρ, an online estimate of
//! the sender-anonymity entropy of each output, the fraction of items that
//! left unmixed, and the latency distribution.
//!
//! **Entropy.** The adversary sees every item enter and leave the mote and
//! wants to link an output to its input. Model (as in the Loopix paper and
//! Nym's simulator): every item in the pool carries a probability
//! distribution over the inputs it may be; an item that just arrived is its
//! own input with certainty. When items leave, each output is equally
//! likely to be any item in the pool, so every output gets the average of
//! the pool's distributions — and so does every item that stays (by
//! symmetry the adversary cannot tell which ones left). The entropy of that
//! average is the output's anonymity in bits.
//!
//! After any departure all items in the pool therefore share one
//! distribution D, and new arrivals are point masses. So the state is one
//! number, H(D), and two counts: `mixed` items with distribution D and
//! `fresh` arrivals since. With N = mixed + fresh, the average has entropy
//!
//! ```text
//! H' = (mixed/N) · (H(D) − log2(mixed/N)) + (fresh/N) · log2(N)
//! ```
//!
//! which needs no per-item vectors and is exact under the model. The model
//! holds exactly for exponential delays (memoryless: every pooled item is
//! equally likely to be the next out) and for `pool`/`binomial` rounds
//! (uniform choice); for other delay distributions an adversary who knows
//! the distribution can do better, so the estimate is an upper bound.
//!
//! **Unmixed.** An item left unmixed if no other item was in the pool at any
//! moment of its stay: it arrived to an empty pool and left before anything
//! else arrived. For a Poisson mix that happens with probability
//! e^(−ρ)/(1+ρ).

use std::time::SystemTime;

use dust_storage::ItemId;

/// Upper bounds of the latency histogram buckets, in seconds (Prometheus
/// `le` labels); the last bucket is +Inf.
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0,
    86400.0,
];

/// Weight of the newest output in the moving average of entropy.
const EWMA_WEIGHT: f64 = 0.01;

/// A snapshot of the anonymity metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct AnonymityStats {
    /// Items in the pool now (ρ).
    pub pool: u64,
    /// Time-averaged pool size since the statistics were last reset.
    pub mean_pool: f64,
    /// Outputs since the reset.
    pub outputs: u64,
    /// Mean entropy of those outputs, in bits.
    pub mean_entropy_bits: f64,
    /// Moving average of the entropy of recent outputs, in bits (weight 1 %
    /// per output): the live value.
    pub recent_entropy_bits: f64,
    /// Outputs since the reset that left unmixed.
    pub unmixed: u64,
    /// Latency histogram since the reset: counts per bucket of
    /// [`LATENCY_BUCKETS_S`] (not cumulative), the last one for +Inf.
    pub latency_buckets: [u64; LATENCY_BUCKETS_S.len() + 1],
    /// Sum of the latencies since the reset, in seconds.
    pub latency_sum_s: f64,
}

impl AnonymityStats {
    /// Fraction of outputs that left unmixed (0 without outputs).
    pub fn p_unmixed(&self) -> f64 {
        if self.outputs == 0 {
            0.0
        } else {
            self.unmixed as f64 / self.outputs as f64
        }
    }
}

/// The online tracker (see the module doc). Fed by the mixer: arrivals when
/// an item enters the pool, departures when items are taken for delivery.
#[derive(Debug)]
pub struct Tracker {
    /// H(D), bits.
    h_mixed: f64,
    mixed: u64,
    fresh: u64,
    /// The item alone in the pool since it arrived, if any.
    lone: Option<ItemId>,
    /// Statistics since the last reset.
    since: SystemTime,
    last_change: SystemTime,
    pool_time: f64,
    outputs: u64,
    entropy_sum: f64,
    recent: f64,
    unmixed: u64,
    buckets: [u64; LATENCY_BUCKETS_S.len() + 1],
    latency_sum_s: f64,
    /// Every latency and output entropy, when asked for (the simulator).
    samples: Option<Samples>,
}

/// One output, as kept for the simulator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Output {
    /// The item.
    pub id: ItemId,
    /// Its time in the mix, seconds.
    pub latency_s: f64,
    /// Its entropy, bits.
    pub entropy_bits: f64,
    /// Whether it left unmixed.
    pub unmixed: bool,
}

/// Per-output records kept for the simulator.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Every output since the samples were started or reset, in order.
    pub outputs: Vec<Output>,
}

impl Tracker {
    /// An empty pool at `now`.
    pub fn new(now: SystemTime) -> Self {
        Self {
            h_mixed: 0.0,
            mixed: 0,
            fresh: 0,
            lone: None,
            since: now,
            last_change: now,
            pool_time: 0.0,
            outputs: 0,
            entropy_sum: 0.0,
            recent: 0.0,
            unmixed: 0,
            buckets: [0; LATENCY_BUCKETS_S.len() + 1],
            latency_sum_s: 0.0,
            samples: None,
        }
    }

    /// Items in the pool now.
    pub fn pool(&self) -> u64 {
        self.mixed + self.fresh
    }

    fn tick(&mut self, now: SystemTime) {
        if let Ok(dt) = now.duration_since(self.last_change) {
            self.pool_time += self.pool() as f64 * dt.as_secs_f64();
            self.last_change = now;
        }
    }

    /// `n` items are in the pool whose history is unknown (at start):
    /// count them as fresh arrivals.
    pub fn assume_pool(&mut self, n: u64) {
        self.fresh += n;
        self.lone = None;
    }

    /// An item entered the pool.
    pub fn arrive(&mut self, id: ItemId, now: SystemTime) {
        self.tick(now);
        self.lone = if self.pool() == 0 { Some(id) } else { None };
        self.fresh += 1;
    }

    /// Items left the pool together; `latencies_s` are their times in the
    /// mix. Returns the entropy each of them got, in bits.
    pub fn depart(&mut self, items: &[(ItemId, f64)], now: SystemTime) -> f64 {
        if items.is_empty() {
            return self.h_mixed;
        }
        self.tick(now);
        // Items the tracker never saw enter (it is behind after a restart):
        // count them as fresh arrivals.
        let n_out = items.len() as u64;
        if self.pool() < n_out {
            self.fresh += n_out - self.pool();
        }
        let n = self.pool() as f64;
        let (m, f) = (self.mixed as f64, self.fresh as f64);
        let h = if self.mixed == 0 {
            n.log2()
        } else {
            (m / n) * (self.h_mixed - (m / n).log2()) + (f / n) * n.log2()
        };
        self.h_mixed = h;
        self.mixed = self.pool() - n_out;
        self.fresh = 0;
        for (id, latency) in items {
            let unmixed = n_out == 1 && self.lone == Some(*id);
            if unmixed {
                self.unmixed += 1;
            }
            self.outputs += 1;
            self.entropy_sum += h;
            self.recent = if self.outputs == 1 {
                h
            } else {
                self.recent + EWMA_WEIGHT * (h - self.recent)
            };
            let b = LATENCY_BUCKETS_S
                .iter()
                .position(|le| *latency <= *le)
                .unwrap_or(LATENCY_BUCKETS_S.len());
            self.buckets[b] += 1;
            self.latency_sum_s += latency;
            if let Some(s) = &mut self.samples {
                s.outputs.push(Output {
                    id: *id,
                    latency_s: *latency,
                    entropy_bits: h,
                    unmixed,
                });
            }
        }
        if self
            .lone
            .is_some_and(|l| items.iter().any(|(id, _)| *id == l))
            || n_out > 1
        {
            self.lone = None;
        }
        h
    }

    /// Start the statistics (not the pool state) afresh at `now`: the
    /// simulator drops its warm-up this way.
    pub fn reset_stats(&mut self, now: SystemTime) {
        self.tick(now);
        self.since = now;
        self.pool_time = 0.0;
        self.outputs = 0;
        self.entropy_sum = 0.0;
        self.unmixed = 0;
        self.buckets = [0; LATENCY_BUCKETS_S.len() + 1];
        self.latency_sum_s = 0.0;
        if let Some(s) = &mut self.samples {
            *s = Samples::default();
        }
    }

    /// Keep every output's latency and entropy from now on.
    pub fn keep_samples(&mut self) {
        self.samples.get_or_insert_with(Samples::default);
    }

    /// The samples kept since [`keep_samples`](Self::keep_samples) or the
    /// last reset.
    pub fn samples(&self) -> Option<&Samples> {
        self.samples.as_ref()
    }

    /// The statistics at `now`.
    pub fn stats(&self, now: SystemTime) -> AnonymityStats {
        let elapsed = now
            .duration_since(self.since)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let open = now
            .duration_since(self.last_change)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let pool_time = self.pool_time + self.pool() as f64 * open;
        AnonymityStats {
            pool: self.pool(),
            mean_pool: if elapsed > 0.0 {
                pool_time / elapsed
            } else {
                self.pool() as f64
            },
            outputs: self.outputs,
            mean_entropy_bits: if self.outputs == 0 {
                0.0
            } else {
                self.entropy_sum / self.outputs as f64
            },
            recent_entropy_bits: self.recent,
            unmixed: self.unmixed,
            latency_buckets: self.buckets,
            latency_sum_s: self.latency_sum_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(n: u8) -> ItemId {
        ItemId([n; 16])
    }

    #[test]
    fn hand_computed_cases() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut t = Tracker::new(t0);
        // Alone in, alone out: 0 bits, unmixed.
        t.arrive(id(1), t0);
        assert_eq!(t.depart(&[(id(1), 1.0)], t0 + Duration::from_secs(1)), 0.0);
        assert_eq!(t.stats(t0).unmixed, 1);
        // Four in, one out: 2 bits; the three left share that distribution.
        for n in 2..=5 {
            t.arrive(id(n), t0 + Duration::from_secs(2));
        }
        let h = t.depart(&[(id(3), 1.0)], t0 + Duration::from_secs(3));
        assert!((h - 2.0).abs() < 1e-12);
        // One fresh arrival joins three items with 2 bits each: the average
        // over 4 gives 3/4·(2 + log2(4/3)) + 1/4·log2(4).
        t.arrive(id(6), t0 + Duration::from_secs(3));
        let h = t.depart(&[(id(6), 1.0)], t0 + Duration::from_secs(4));
        let want = 0.75 * (2.0 + (4.0f64 / 3.0).log2()) + 0.25 * 2.0;
        assert!((h - want).abs() < 1e-12, "{h} vs {want}");
        let s = t.stats(t0 + Duration::from_secs(4));
        assert_eq!((s.outputs, s.unmixed, s.pool), (3, 1, 3));
        // Pool over time: 1 item for 1 s, none for 1 s, 4 for 1 s, then 3 + 1
        // for 1 s.
        assert!(
            (s.mean_pool - (1.0 + 0.0 + 4.0 + 4.0) / 4.0).abs() < 1e-9,
            "{}",
            s.mean_pool
        );
    }

    #[test]
    fn an_item_that_saw_another_is_mixed() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut t = Tracker::new(t0);
        t.arrive(id(1), t0);
        t.arrive(id(2), t0);
        t.depart(&[(id(1), 0.0)], t0);
        t.depart(&[(id(2), 0.0)], t0);
        assert_eq!(t.stats(t0).unmixed, 0);
    }
}
