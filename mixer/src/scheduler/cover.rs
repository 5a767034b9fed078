//! Cover traffic: dummy items that keep the pool from running dry when
//! real traffic is low (the paper's §3.4). They are ordinary items — stored,
//! delayed and delivered through the same path as real ones — whose
//! payloads the owner builds (a message to a configured sink address, a
//! download of a configured URL), so nothing on the wire tells them apart.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::task::{Spawn, SpawnExt};
use tor_rtcompat::{Blocking, SleepProvider};

use super::Inner;
use crate::metrics::Counters;
use crate::{Deliver, ItemKind, MixerError};

/// Builds one dummy item: its kind and payload, or `None` to skip this one.
pub type CoverSource =
    std::sync::Arc<dyn Fn() -> BoxFuture<'static, Option<(ItemKind, Vec<u8>)>> + Send + Sync>;

/// The cover loop, run by the mixer beside its schedule loop.
impl<R, D> Inner<R, D>
where
    R: SleepProvider + Spawn + Blocking,
    D: Deliver,
{
    /// Add a cover item. Not waited for on disk: losing a dummy in a crash
    /// loses nothing, and the cover task must not block on the blocking
    /// pool (it is a spawned task).
    fn admit_cover(&self, kind: crate::ItemKind, payload: Vec<u8>) -> Result<(), MixerError> {
        let (item, rounds) = self.new_item(kind, payload, None)?;
        self.store.enqueue_unsynced(&item)?;
        Counters::bump(&self.counters.cover);
        self.entered(item.id, rounds)?;
        self.wake.notify_one();
        Ok(())
    }

    /// Start the cover-traffic task if cover is configured, a source is
    /// set, and it is not running yet.
    pub(crate) fn ensure_cover(self: &Arc<Self>) {
        if self.cfg().cover.is_none()
            || self.cover_source.lock().is_none()
            || self.cover_running.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let me = Arc::clone(self);
        if self.rt.spawn(async move { me.cover_loop().await }).is_err() {
            self.cover_running.store(false, Ordering::SeqCst);
        }
    }

    /// Cover traffic: candidate dummies at Poisson times (`rate`); each one
    /// is admitted only while fewer than `target_pool` items are in the
    /// mix, so dummies fill in when real traffic is low and stop when it is
    /// not. Ends when cover is switched off or the mixer stops.
    async fn cover_loop(self: Arc<Self>) {
        while let Some(cover) = self.cfg().cover {
            let gap = {
                let mut rng = self.rng.lock();
                cover.gap(&mut *rng)
            };
            self.rt.sleep(gap).await;
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            let Some(cover) = self.cfg().cover else {
                break;
            };
            let pool = self.tracker.lock().pool();
            if pool >= cover.target_pool {
                continue;
            }
            let source = self.cover_source.lock().clone();
            let Some(source) = source else {
                break;
            };
            let Some((kind, payload)) = source().await else {
                continue;
            };
            match self.admit_cover(kind, payload) {
                Ok(()) => tracing::debug!(pool, "cover item added"),
                Err(MixerError::ShuttingDown | MixerError::Expiring) => break,
                Err(e) => tracing::warn!(error = %e, "could not add a cover item"),
            }
        }
        self.cover_running.store(false, Ordering::SeqCst);
    }
}
