//! The hand-off to a successor (hop at drain): from the hop point, due
//! items go to the successor instead of out; one that cannot be handed
//! over is released here before the drain point.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::task::Spawn;
use rand::Rng;
use tor_rtcompat::{Blocking, SleepProvider};

use super::{Inner, Left};
use crate::metrics::Counters;
use crate::{wall_ms, wall_ms_ceil, Deliver, DeliveryError, HasKind, Item, ItemId, MixerConfig};

/// Tries to hand an item to the successor before it is released here.
const HOP_ATTEMPTS: u32 = 5;

/// Wait after the first failed hand-off (doubling, ±50 % jitter).
const HOP_BACKOFF: Duration = Duration::from_secs(2);

/// The hand-off to a successor (hop at drain). In memory only: after a
/// restart the hand-off starts afresh with whatever is still queued (an
/// item the successor already took is recognized there by its id).
#[derive(Default)]
pub(super) struct Hop {
    /// Items the hand-off gave up on: they are released here.
    pub(super) given_up: HashSet<ItemId>,
    /// Failed tries so far, and when to try again.
    pub(super) retry: HashMap<ItemId, (u32, SystemTime)>,
}

impl<R, D> Inner<R, D>
where
    R: SleepProvider + Spawn + Blocking,
    D: Deliver,
{
    /// The hop point, if it is still to come and a successor is named.
    pub(super) fn coming_hop(&self, cfg: &MixerConfig, now: SystemTime) -> Option<SystemTime> {
        cfg.hop_point()
            .filter(|h| *h > now && self.deliver.has_successor())
    }

    /// Whether the hand-off to a successor is on now: past the hop point,
    /// before the drain point, a successor named, not stopping.
    pub(super) fn hopping(&self, cfg: &MixerConfig, now: SystemTime) -> bool {
        !self.stopping.load(Ordering::SeqCst)
            && cfg.hop_point().is_some_and(|h| now >= h)
            && cfg.lifetime.is_some_and(|l| now < l.last_release())
            && self.deliver.has_successor()
    }

    pub(super) async fn hand_off_one(self: Arc<Self>, item: Item) {
        let left = match self.deliver.hand_off(&item).await {
            Ok(()) => self.store.complete(&item.id).map(|()| {
                self.hop.lock().retry.remove(&item.id);
                Counters::bump(&self.counters.handed_off);
                tracing::debug!("item handed to the successor");
                Left::Yes
            }),
            Err(e) => self.hand_off_failed(&item, &e),
        };
        self.settle(left).await;
    }

    /// A hand-off failed: try again later, or give up on it and release it
    /// here at a random moment before the drain point (not all at once: a
    /// burst at a known time would be a signal of its own).
    fn hand_off_failed(
        &self,
        item: &Item,
        e: &DeliveryError,
    ) -> Result<Left, dust_storage::StorageError> {
        let cfg = self.cfg();
        let now = self.rt.wallclock();
        let last = cfg.lifetime.map(|l| l.last_release());
        let mut hop = self.hop.lock();
        let tries = hop.retry.get(&item.id).map_or(0, |r| r.0) + 1;
        let backoff = HOP_BACKOFF
            .saturating_mul(1 << (tries - 1).min(16))
            .mul_f64(self.rng.lock().random_range(0.5..1.5));
        let again = now + backoff;
        if e.kind().retry() && tries < HOP_ATTEMPTS && last.is_some_and(|l| again < l) {
            hop.retry.insert(item.id, (tries, again));
            drop(hop);
            // Back on the schedule at its own time: if the hand-off ends
            // before the next try (no successor any more), it is released
            // here as usual.
            self.store
                .reschedule(&item.id, item.release_ms, item.attempts, None)?;
            tracing::info!(
                tries,
                "handing an item to the successor failed; trying again"
            );
        } else {
            hop.retry.remove(&item.id);
            hop.given_up.insert(item.id);
            drop(hop);
            let at = match last {
                Some(l) if l > now => {
                    now + l
                        .duration_since(now)
                        .unwrap_or_default()
                        .mul_f64(self.rng.lock().random::<f64>())
                }
                _ => now,
            };
            self.store.reschedule(
                &item.id,
                wall_ms_ceil(at),
                item.attempts,
                Some(wall_ms(now)),
            )?;
            Counters::bump(&self.counters.hop_fallbacks);
            tracing::warn!(
                tries,
                "gave up handing an item to the successor; it is released here before the end"
            );
        }
        tracing::debug!(reason = %e, "hand-off failure reason");
        self.entered(item.id, false)?;
        Ok(Left::No)
    }
}
