//! The peers allowed to hand items to this mote (`[[peers]]` with a
//! `token_hash`): their tokens, and each one's limits with a token bucket.
//! Peers and users are apart: a user's token cannot push items and a
//! peer's cannot queue downloads.

use std::collections::HashMap;

use crate::access::auth::{Users, Verdict, Verifier};

/// Limits of one peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerLimits {
    /// Largest item body accepted (413 beyond).
    pub max_item_bytes: usize,
    /// Items per second accepted on average (429 beyond)…
    pub rate_per_s: f64,
    /// …with bursts of this many.
    pub burst: u32,
}

/// A token bucket: `tokens` refill at the peer's rate up to its burst.
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

/// The peers allowed to hand items to this mote.
pub struct Peers {
    verifier: Verifier,
    limits: HashMap<String, PeerLimits>,
    buckets: parking_lot::Mutex<HashMap<String, Bucket>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.limits.keys().collect();
        names.sort();
        f.debug_struct("Peers").field("names", &names).finish()
    }
}

impl Peers {
    /// `users`: peer name → argon2 hash of its token; `limits` per name.
    pub fn new(users: Users, limits: HashMap<String, PeerLimits>) -> Self {
        Self {
            verifier: Verifier::new(users),
            limits,
            buckets: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// No peer may send.
    pub fn none() -> Self {
        Self::new(Users::default(), HashMap::new())
    }

    /// Whether no peer may send.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Check peer `name`'s `secret` (bounded work, as for users).
    pub async fn verify(&self, name: &str, secret: &[u8]) -> Verdict {
        self.verifier.verify(name, secret).await
    }

    /// The limits of peer `name`.
    pub fn limits(&self, name: &str) -> Option<PeerLimits> {
        self.limits.get(name).copied()
    }

    /// Take one item from `peer`'s bucket: `Err(seconds)` until the next
    /// item is allowed.
    pub fn take(&self, peer: &str, limits: PeerLimits) -> Result<(), u64> {
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock();
        let b = buckets.entry(peer.to_string()).or_insert(Bucket {
            tokens: f64::from(limits.burst),
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * limits.rate_per_s;
        b.tokens = (b.tokens + refill).min(f64::from(limits.burst));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / limits.rate_per_s).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    #[test]
    fn a_peers_bucket_allows_its_burst_then_its_rate() {
        let limits = PeerLimits {
            max_item_bytes: 1,
            rate_per_s: 0.5,
            burst: 3,
        };
        let peers = Peers::new(Users::default(), HashMap::new());
        for _ in 0..3 {
            assert_eq!(peers.take("a", limits), Ok(()));
        }
        // Empty: the next item in 2 s (rate 0.5/s); another peer is not
        // affected.
        assert_eq!(peers.take("a", limits), Err(2));
        assert_eq!(peers.take("b", limits), Ok(()));
        // Two seconds later, one more.
        peers.buckets.lock().get_mut("a").unwrap().at -= Duration::from_secs(2);
        assert_eq!(peers.take("a", limits), Ok(()));
        assert!(peers.take("a", limits).is_err());
    }
}
