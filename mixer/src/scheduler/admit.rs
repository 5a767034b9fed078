//! Admission: a new item enters the store with its release time drawn
//! now, once per [`Once`] digest when asked.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dust_storage::{Item, ItemId, ItemState, HELD};
use futures::task::Spawn;
use rand::Rng;
use tor_rtcompat::{Blocking, SleepProvider};

use super::Inner;
use crate::metrics::Counters;
use crate::{from_wall_ms, wall_ms, wall_ms_ceil, Deliver, MixerError};

/// Replay suppression of an admission (see [`Mixer::admit_once`](crate::Mixer::admit_once)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Once {
    /// What makes two admissions the same (the caller's digest of them).
    pub digest: [u8; 32],
    /// How long a digest is remembered after its admission.
    pub window: Duration,
    /// Item and digest in one transaction, exact across crashes (transfers
    /// from another mote), instead of the faster SMTP path whose crash
    /// between the two writes can forget a digest.
    pub exact: bool,
}

impl Once {
    /// The store's view of this admission made at `now`.
    pub(super) fn at(&self, now: SystemTime) -> dust_storage::OnceAt<'_> {
        dust_storage::OnceAt {
            digest: &self.digest,
            now_ms: wall_ms(now),
            expires_ms: wall_ms(now + self.window),
            exact: self.exact,
        }
    }
}

impl<R, D> Inner<R, D>
where
    R: SleepProvider + Spawn + Blocking,
    D: Deliver,
{
    /// See [`Mixer::admit_after`] and [`Mixer::admit_once`]; `None` for a
    /// replay.
    pub(super) async fn admit_after(
        self: &Arc<Self>,
        kind: crate::ItemKind,
        payload: Vec<u8>,
        not_before: Option<SystemTime>,
        once: Option<Once>,
    ) -> Result<Option<(ItemId, Option<SystemTime>)>, MixerError> {
        let (item, rounds) = self.new_item(kind, payload, not_before)?;
        let (id, release_ms) = (item.id, item.release_ms);
        // The fsync wait runs on a blocking thread of the runtime: it shares
        // the flusher's group commit with every other admission in progress.
        let store = Arc::clone(&self.store);
        let now = self.rt.wallclock();
        let stored = self
            .rt
            .spawn_blocking(move || match once {
                None => store.admit_blocking(&item).map(|()| true),
                Some(o) => store.admit_once_blocking(&item, o.at(now)),
            })
            .await?;
        Ok(self.admitted(stored, id, rounds, release_ms))
    }

    /// After an admission's writes are durable (`stored`: it was new).
    pub(super) fn admitted(
        &self,
        stored: bool,
        id: ItemId,
        rounds: bool,
        release_ms: u64,
    ) -> Option<(ItemId, Option<SystemTime>)> {
        if !stored {
            return None;
        }
        Counters::bump(&self.counters.admitted);
        // The item is on disk: whatever happens now, the admission stands.
        if let Err(e) = self.entered(id, rounds) {
            tracing::warn!(error = %e, "storage error after an admission; the item waits for the next start");
        }
        self.wake.notify_one();
        Some((id, (!rounds).then(|| from_wall_ms(release_ms))))
    }

    /// A new item of `kind`: its id and release time (or held), checked
    /// against shutdown and the lifetime. Returns it and whether it is held.
    pub(crate) fn new_item(
        &self,
        kind: crate::ItemKind,
        payload: Vec<u8>,
        not_before: Option<SystemTime>,
    ) -> Result<(Item, bool), MixerError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(MixerError::ShuttingDown);
        }
        let cfg = self.cfg();
        let now = self.rt.wallclock();
        if cfg.lifetime.is_some_and(|l| now >= l.last_release()) {
            return Err(MixerError::Expiring);
        }
        let rounds = cfg.strategy.interval().is_some();
        let (id, delay) = {
            let mut rng = self.rng.lock();
            (
                ItemId(rng.random()),
                cfg.delay_for(kind as u8).sample(&mut *rng),
            )
        };
        let start = not_before.map_or(now, |t| t.max(now));
        let release_ms = if rounds {
            HELD
        } else {
            wall_ms_ceil(cfg.clamp(start + delay))
        };
        let item = Item {
            id,
            kind: kind as u8,
            state: ItemState::Queued,
            attempts: 0,
            release_ms,
            entered_ms: wall_ms(now),
            payload,
        };
        Ok((item, rounds))
    }
}
