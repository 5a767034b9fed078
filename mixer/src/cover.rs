//! Cover traffic: dummy items that keep the pool from running dry when
//! real traffic is low (the paper's §3.4). They are ordinary items — stored,
//! delayed and delivered through the same path as real ones — whose
//! payloads the owner builds (a message to a configured sink address, a
//! download of a configured URL), so nothing on the wire tells them apart.

use std::time::Duration;

use futures::future::BoxFuture;
use rand::Rng;
use rand_distr::{Distribution, Exp};

use crate::delay::DelayError;
use crate::ItemKind;

/// Builds one dummy item: its kind and payload, or `None` to skip this one.
pub type CoverSource =
    std::sync::Arc<dyn Fn() -> BoxFuture<'static, Option<(ItemKind, Vec<u8>)>> + Send + Sync>;

/// Cover settings.
#[derive(Debug, Clone, Copy, PartialEq)]
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
