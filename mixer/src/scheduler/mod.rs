//! The schedule loop: one task owns "what is due next"; deliveries run as
//! separate tasks, at most `max_in_flight` at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dust_storage::{Item, ItemId, StorageError, Store, HELD};
use futures::future::select;
use futures::task::{Spawn, SpawnExt};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokio::sync::Notify;
use tor_rtcompat::{Blocking, SleepProvider, SleepProviderExt};

use crate::anonymity::{AnonymityStats, Samples, Tracker};
mod admit;
pub mod cover;
mod hop;

pub use admit::Once;
use hop::Hop;

use crate::metrics::{Counters, Metrics, MixStatus};
use crate::{
    from_wall_ms, wall_ms, wall_ms_ceil, Deliver, DeliveryError, ErrorKind, HasKind, MixerConfig,
    MixerError, Outcome,
};
use cover::CoverSource;

/// Items taken from the schedule per scan. Bounds the work done between two
/// checks for shutdown; overdue items beyond it are taken on the next scan.
const RELEASE_BATCH: usize = 64;

/// After a storage error in the loop, wait this long before trying again
/// (a full disk does not heal in microseconds; nothing is lost meanwhile).
const STORAGE_RETRY: Duration = Duration::from_secs(1);

/// While handing off, the schedule is looked at at least this often (items
/// waiting for their next try become ready without any other event).
const HOP_POLL: Duration = Duration::from_secs(1);

/// Items held for rounds (`pool` and `binomial`), and when the next round is
/// (monotonic time: a wall-clock jump neither skips nor bunches rounds).
#[derive(Default)]
struct Pool {
    held: Vec<ItemId>,
    next_round: Option<std::time::Instant>,
}

pub(crate) struct Inner<R, D> {
    pub(crate) rt: R,
    pub(crate) store: Arc<Store>,
    pub(crate) deliver: Arc<D>,
    /// Replaced as a whole by [`Mixer::reconfigure`].
    pub(crate) cfg: Mutex<Arc<MixerConfig>>,
    pool: Mutex<Pool>,
    hop: Mutex<Hop>,
    pub(crate) tracker: Mutex<Tracker>,
    /// Makes dummy items (set by the owner; see [`Mixer::set_cover_source`]).
    pub(crate) cover_source: Mutex<Option<CoverSource>>,
    pub(crate) cover_running: AtomicBool,
    pub(crate) rng: Mutex<StdRng>,
    /// Something changed: an item was admitted or a delivery finished.
    pub(crate) wake: Notify,
    /// A delivery finished (for shutdown).
    pub(crate) idle: Notify,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) stopping: AtomicBool,
    pub(crate) counters: Counters,
}

/// The mixer. Cheap to clone; all clones share one schedule loop.
pub struct Mixer<R, D> {
    inner: Arc<Inner<R, D>>,
}

impl<R, D> Clone for Mixer<R, D> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<R, D> Mixer<R, D>
where
    R: SleepProvider + Spawn + Blocking,
    D: Deliver,
{
    /// Start the schedule loop on `rt`, with randomness from the OS CSPRNG.
    pub fn start(
        rt: R,
        store: Arc<Store>,
        deliver: Arc<D>,
        cfg: MixerConfig,
    ) -> Result<Self, MixerError> {
        Self::start_with_rng(rt, store, deliver, cfg, StdRng::from_os_rng())
    }

    /// Start with a given RNG (tests use a fixed seed).
    pub fn start_with_rng(
        rt: R,
        store: Arc<Store>,
        deliver: Arc<D>,
        cfg: MixerConfig,
        rng: StdRng,
    ) -> Result<Self, MixerError> {
        cfg.validate()?;
        let now = rt.wallclock();
        // What is already queued: items held for rounds come back into the
        // pool; the tracker counts everything queued as fresh arrivals.
        let held = store.held_ids()?;
        let mut tracker = Tracker::new(now);
        tracker.assume_pool(store.queued_count());
        let next_round = cfg.strategy.interval().map(|i| rt.now() + i);
        let rounds = next_round.is_some();
        let inner = Arc::new(Inner {
            rt,
            store,
            deliver,
            cfg: Mutex::new(Arc::new(cfg)),
            pool: Mutex::new(Pool {
                held: if rounds { held.clone() } else { Vec::new() },
                next_round,
            }),
            hop: Mutex::new(Hop::default()),
            tracker: Mutex::new(tracker),
            cover_source: Mutex::new(None),
            cover_running: AtomicBool::new(false),
            rng: Mutex::new(rng),
            wake: Notify::new(),
            idle: Notify::new(),
            in_flight: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            counters: Counters::default(),
        });
        if !rounds && !held.is_empty() {
            // Held under a strategy with rounds before a restart with
            // `poisson`: they get their (first) delay now.
            inner.time_held(&held)?;
        }
        let task = Arc::clone(&inner);
        inner
            .rt
            .spawn(async move { task.run().await })
            .map_err(|_| MixerError::ShuttingDown)?;
        Ok(Self { inner })
    }

    /// Replace the mixer settings (SIGHUP / `dustmote reload`). Items
    /// already scheduled keep their release times; items admitted from now
    /// on get the new settings. Switching to `poisson` gives every held item
    /// a delay from the new distribution now; switching to a strategy with
    /// rounds holds new items, and the first round is one interval from now.
    /// The lifetime is not changed (`[mote]` is fixed at start). An invalid
    /// configuration is refused and the old one stays in force.
    /// Cover traffic starts or stops with the new settings.
    pub fn reconfigure(&self, mut cfg: MixerConfig) -> Result<(), MixerError> {
        cfg.validate()?;
        let inner = &self.inner;
        let old = inner.cfg();
        cfg.lifetime = old.lifetime;
        let interval = cfg.strategy.interval();
        let changed_rounds = interval != old.strategy.interval();
        *inner.cfg.lock() = Arc::new(cfg);
        let released = {
            let mut pool = inner.pool.lock();
            match interval {
                None => {
                    pool.next_round = None;
                    std::mem::take(&mut pool.held)
                }
                Some(i) => {
                    if changed_rounds {
                        pool.next_round = Some(inner.rt.now() + i);
                    }
                    Vec::new()
                }
            }
        };
        inner.time_held(&released)?;
        inner.wake.notify_one();
        inner.ensure_cover();
        Ok(())
    }

    /// Where cover items come from (the owner builds their payloads: a
    /// dummy message to the configured sink, a dummy download). Cover runs
    /// while `MixerConfig::cover` is set.
    pub fn set_cover_source(&self, source: CoverSource) {
        *self.inner.cover_source.lock() = Some(source);
        self.inner.ensure_cover();
    }

    /// The settings in force.
    pub fn config(&self) -> Arc<MixerConfig> {
        self.inner.cfg()
    }

    /// Anonymity metrics now (pool size, entropy, unmixed, latency).
    pub fn anonymity(&self) -> AnonymityStats {
        let now = self.inner.rt.wallclock();
        self.inner.tracker.lock().stats(now)
    }

    /// Start the anonymity statistics afresh (the simulator drops its
    /// warm-up).
    pub fn reset_anonymity_stats(&self) {
        let now = self.inner.rt.wallclock();
        self.inner.tracker.lock().reset_stats(now);
    }

    /// Keep every output's latency and entropy (the simulator).
    pub fn keep_samples(&self) {
        self.inner.tracker.lock().keep_samples();
    }

    /// The samples kept since [`keep_samples`](Self::keep_samples).
    pub fn samples(&self) -> Option<Samples> {
        self.inner.tracker.lock().samples().cloned()
    }

    /// Items held for the next rounds.
    pub fn held(&self) -> usize {
        self.inner.pool.lock().held.len()
    }

    /// Durably admit an item: draw its release time (or hold it for the
    /// rounds), store it (fsynced), and wake the scheduler. Returns the id
    /// and the release time (`None`: held until a round picks it).
    ///
    /// Only when this returns `Ok` may the caller acknowledge (SMTP 250).
    pub async fn admit(
        &self,
        kind: crate::ItemKind,
        payload: Vec<u8>,
    ) -> Result<(ItemId, Option<SystemTime>), MixerError> {
        self.admit_after(kind, payload, None).await
    }

    /// Like [`admit`](Self::admit), but the delay starts counting at
    /// `not_before` if that is later than now (a download the user wants
    /// started no earlier than a given time). Under a strategy with rounds
    /// the item is held at once: the rounds ignore `not_before`, so the
    /// deliverer must check it (the fetcher does, and asks to be released
    /// again).
    pub async fn admit_after(
        &self,
        kind: crate::ItemKind,
        payload: Vec<u8>,
        not_before: Option<SystemTime>,
    ) -> Result<(ItemId, Option<SystemTime>), MixerError> {
        let admitted = self
            .inner
            .admit_after(kind, payload, not_before, None)
            .await?;
        admitted.ok_or(MixerError::ShuttingDown)
    }

    /// Like [`admit`](Self::admit), once per `once.digest` within
    /// `once.window`: an admission whose digest was admitted before and
    /// whose window has not ended stores nothing and returns `None`, after
    /// a flush (so the earlier copy is on disk when the caller
    /// acknowledges this one too).
    pub async fn admit_once(
        &self,
        kind: crate::ItemKind,
        payload: Vec<u8>,
        once: Once,
    ) -> Result<Option<(ItemId, Option<SystemTime>)>, MixerError> {
        self.inner
            .admit_after(kind, payload, None, Some(once))
            .await
    }

    /// [`admit`](Self::admit) (`once`: [`admit_once`](Self::admit_once))
    /// without a blocking thread: the writes are made on the calling task
    /// (sled's are in memory) and the intake journal's `fdatasync` is
    /// awaited, so an admission costs two thread wake-ups fewer. Only for a
    /// production runtime: simulated time cannot see a wait on the flusher
    /// thread (use `admit` there).
    pub async fn admit_direct(
        &self,
        kind: crate::ItemKind,
        payload: Vec<u8>,
        once: Option<Once>,
    ) -> Result<Option<(ItemId, Option<SystemTime>)>, MixerError> {
        let inner = &self.inner;
        let (item, rounds) = inner.new_item(kind, payload, None)?;
        let (id, release_ms) = (item.id, item.release_ms);
        let now = inner.rt.wallclock();
        let stored = match once {
            None => inner.store.admit(&item).await.map(|()| true),
            Some(o) => inner.store.admit_once(&item, o.at(now)).await,
        }?;
        Ok(inner.admitted(stored, id, rounds, release_ms))
    }

    /// Counters since start.
    pub fn metrics(&self) -> Metrics {
        self.inner.counters.snapshot()
    }

    /// The mix now, for `dustmote status`, `/status` and `/metrics`.
    pub fn status(&self) -> MixStatus {
        MixStatus::new(
            &self.config(),
            self.held(),
            self.metrics().cover,
            &self.anonymity(),
        )
    }

    /// Deliveries running now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// The store behind this mixer.
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// Stop: accept nothing new, release nothing new, wait up to `grace` for
    /// running deliveries, then flush. Deliveries still running after `grace`
    /// stay marked in flight on disk and are due again at the next start.
    /// Returns the number of deliveries that were still running.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        let inner = &self.inner;
        inner.stopping.store(true, Ordering::SeqCst);
        inner.wake.notify_one();
        let deadline = inner.rt.now() + grace;
        loop {
            let idle = inner.idle.notified();
            futures::pin_mut!(idle);
            idle.as_mut().enable();
            if inner.in_flight.load(Ordering::SeqCst) == 0 {
                break;
            }
            let left = deadline.saturating_duration_since(inner.rt.now());
            if left.is_zero() {
                break;
            }
            let sleep = inner.rt.sleep(left);
            futures::pin_mut!(sleep);
            select(idle, sleep).await;
        }
        let left = inner.in_flight.load(Ordering::SeqCst);
        if let Err(e) = inner.store.sync().await {
            tracing::error!(error = %e, "final flush failed; in-flight items will be retried at next start");
        }
        left
    }
}

impl<R, D> Inner<R, D>
where
    R: SleepProvider + Spawn + Blocking,
    D: Deliver,
{
    pub(crate) fn cfg(&self) -> Arc<MixerConfig> {
        Arc::clone(&self.cfg.lock())
    }

    /// An item entered the pool (admitted, or back after a step or a
    /// failure); `held` if it was stored as held for the rounds.
    pub(crate) fn entered(&self, id: ItemId, held: bool) -> Result<(), StorageError> {
        self.tracker.lock().arrive(id, self.rt.wallclock());
        if held {
            let mut pool = self.pool.lock();
            if self.cfg().strategy.interval().is_some() {
                pool.held.push(id);
            } else {
                // The strategy changed to `poisson` meanwhile.
                drop(pool);
                self.time_held(&[id])?;
            }
        }
        Ok(())
    }

    /// Give held items a release time drawn from their kind's distribution.
    fn time_held(&self, ids: &[ItemId]) -> Result<(), StorageError> {
        let cfg = self.cfg();
        let now = self.rt.wallclock();
        for id in ids {
            let Some(item) = self.store.get(id)? else {
                continue;
            };
            let delay = {
                let mut rng = self.rng.lock();
                cfg.delay_for(item.kind).sample(&mut *rng)
            };
            self.store
                .release_held(id, wall_ms_ceil(cfg.clamp(now + delay)))?;
        }
        Ok(())
    }

    /// Run a round if one is due, and release everything held once the
    /// lifetime's drain point has come. Returns when to look again: the
    /// next round (monotonic) and the drain point (wall clock), if any.
    fn rounds(&self) -> Result<(Option<std::time::Instant>, Option<SystemTime>), StorageError> {
        let cfg = self.cfg();
        let now = self.rt.wallclock();
        let mono = self.rt.now();
        let drain = cfg.lifetime.map(|l| l.last_release());
        let hopping = self.hopping(&cfg, now);
        let mut pool = self.pool.lock();
        let draining = drain.is_some_and(|d| now >= d);
        let mut round_due = false;
        if let (Some(interval), Some(next)) = (cfg.strategy.interval(), pool.next_round) {
            if mono >= next {
                round_due = true;
                // The next round; after a stall, one round, not a burst.
                let mut n = next + interval;
                while n <= mono {
                    n += interval;
                }
                pool.next_round = Some(n);
            }
        }
        let mut out = Vec::new();
        if draining || hopping {
            // The lifetime's drain point (everything held leaves now), or
            // the hand-off to a successor (everything held moves on).
            out = std::mem::take(&mut pool.held);
        } else if round_due {
            let mut rng = self.rng.lock();
            let mut picks = cfg.strategy.pick(pool.held.len(), &mut *rng);
            // Descending, so each swap_remove moves an unpicked item.
            picks.sort_unstable_by(|a, b| b.cmp(a));
            out = picks
                .into_iter()
                .map(|i| pool.held.swap_remove(i))
                .collect();
            out.shuffle(&mut *rng);
        }
        let now_ms = wall_ms(now);
        for (i, id) in out.iter().enumerate() {
            if let Err(e) = self.store.release_held(id, now_ms) {
                // Not released: keep them held for the next round.
                pool.held.extend_from_slice(&out[i..]);
                return Err(e);
            }
        }
        // Wake at the drain point, and at the hop point, for what is held.
        let drain_wake = earliest(drain, self.coming_hop(&cfg, now))
            .filter(|d| *d > now && !pool.held.is_empty());
        Ok((pool.next_round, drain_wake))
    }

    /// The schedule loop. Cancel-safety: it only awaits `Notify::notified`
    /// and sleeps; storage calls are synchronous, so it never stops between
    /// taking an item and spawning its delivery.
    async fn run(self: Arc<Self>) {
        loop {
            let woken = self.wake.notified();
            futures::pin_mut!(woken);
            woken.as_mut().enable();
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let (round, wall) = match self.rounds().and_then(|(round, drain)| {
                let next = self.release_due()?;
                Ok((round, earliest(next, drain)))
            }) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "storage error in the schedule loop; retrying");
                    (None, Some(self.rt.wallclock() + STORAGE_RETRY))
                }
            };
            let wall_sleep = async {
                match wall {
                    Some(when) => self.rt.sleep_until_wallclock(when).await,
                    None => futures::future::pending().await,
                }
            };
            let round_sleep = async {
                match round {
                    Some(at) => {
                        self.rt
                            .sleep(at.saturating_duration_since(self.rt.now()))
                            .await
                    }
                    None => futures::future::pending().await,
                }
            };
            futures::pin_mut!(wall_sleep, round_sleep);
            select(woken, select(wall_sleep, round_sleep)).await;
        }
    }

    /// Spawn deliveries for everything due (as far as `max_in_flight`
    /// allows). Returns when to look again: the next release time, `None` if
    /// nothing is queued or every delivery slot is busy (a finishing delivery
    /// wakes the loop).
    fn release_due(self: &Arc<Self>) -> Result<Option<SystemTime>, dust_storage::StorageError> {
        loop {
            let free = self
                .cfg()
                .max_in_flight
                .saturating_sub(self.in_flight.load(Ordering::SeqCst));
            if free == 0 {
                return Ok(None);
            }
            let cfg = self.cfg();
            let now = self.rt.wallclock();
            let now_ms = wall_ms(now);
            let hopping = self.hopping(&cfg, now);
            let mut due = if hopping {
                // Everything queued moves to the successor, whatever its
                // release time; except items waiting for their next try,
                // and those the hand-off gave up on (released here, when
                // their time comes).
                let hop = self.hop.lock();
                self.store
                    .take_until(HELD - 1, free.min(RELEASE_BATCH), |id, release_ms| {
                        if hop.given_up.contains(id) {
                            release_ms <= now_ms
                        } else {
                            hop.retry.get(id).is_none_or(|(_, at)| *at <= now)
                        }
                    })?
            } else {
                self.store.take_due(now_ms, free.min(RELEASE_BATCH))?
            };
            if due.is_empty() {
                let next = self.store.next_release()?.map(from_wall_ms);
                if hopping {
                    // The next try of an item that failed, if sooner (an
                    // entry not in the future belongs to an item being
                    // tried now).
                    let retry = self
                        .hop
                        .lock()
                        .retry
                        .values()
                        .map(|r| r.1)
                        .filter(|at| *at > now)
                        .min();
                    return Ok(next.map(|_| earliest(Some(now + HOP_POLL), retry).unwrap_or(now)));
                }
                // Wake up for the hand-off if one is coming.
                let hop_at = next.and(self.coming_hop(&cfg, now));
                return Ok(earliest(next, hop_at));
            }
            let leaving: Vec<(ItemId, f64)> = due
                .iter()
                .map(|i| (i.id, now_ms.saturating_sub(i.entered_ms) as f64 / 1000.0))
                .collect();
            let entropy = self.tracker.lock().depart(&leaving, now);
            tracing::debug!(
                items = leaving.len(),
                entropy_bits = entropy,
                "items leave the mix"
            );
            // Overdue items (after a restart or a stall) leave in random
            // order, not in arrival order.
            due.shuffle(&mut *self.rng.lock());
            for item in due {
                self.in_flight.fetch_add(1, Ordering::SeqCst);
                let me = Arc::clone(self);
                let id = item.id;
                let attempts = item.attempts;
                let hand_off = hopping && !self.hop.lock().given_up.contains(&id);
                let spawned = if hand_off {
                    self.rt.spawn(async move { me.hand_off_one(item).await })
                } else {
                    self.rt.spawn(async move { me.deliver_one(item).await })
                };
                if spawned.is_err() {
                    // The executor is shutting down: leave the item for the next start.
                    self.in_flight.fetch_sub(1, Ordering::SeqCst);
                    self.store.reschedule(&id, now_ms, attempts, None)?;
                    return Ok(None);
                }
            }
            if self.stopping.load(Ordering::SeqCst) {
                return Ok(None);
            }
        }
    }

    async fn deliver_one(self: Arc<Self>, item: Item) {
        let result = self.deliver.deliver(&item).await;
        let left = self.finish(&item, result);
        self.settle(left).await;
    }

    /// After an attempt: make a departure durable, free the slot.
    async fn settle(self: &Arc<Self>, left: Result<Left, dust_storage::StorageError>) {
        match left {
            Ok(Left::Yes) if self.store.is_durable() => {
                // The item left the mote: its removal is made durable (one
                // journal write shared with admissions and other
                // completions) before
                // its delivery slot is freed, so that after a crash the only
                // deliveries repeated are the ones in flight at that moment.
                // The wait runs on a blocking thread of the runtime (which
                // simulated time sees); its handle is not `Send`, so the
                // answer comes back over a channel.
                let (tx, rx) = futures::channel::oneshot::channel();
                let store = Arc::clone(&self.store);
                drop(self.rt.spawn_blocking(move || {
                    let _ = tx.send(store.sync_items_blocking());
                }));
                if !matches!(rx.await, Ok(Ok(()))) {
                    tracing::warn!("flushing a completion failed; the item may be delivered again after a crash");
                }
            }
            Ok(_) => {}
            Err(e) => {
                // The item stays in flight on disk and is retried at the next start.
                tracing::error!(error = %e, "storage error after a delivery attempt");
            }
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.wake.notify_one();
        self.idle.notify_waiters();
    }

    /// Record a delivery attempt's result; whether the item left the mote.
    fn finish(
        &self,
        item: &Item,
        result: Result<Outcome, DeliveryError>,
    ) -> Result<Left, dust_storage::StorageError> {
        let cfg = self.cfg();
        let now = self.rt.wallclock();
        match result {
            Ok(Outcome::Again) => {
                let rounds = cfg.strategy.interval().is_some();
                let at = if rounds {
                    HELD
                } else {
                    let delay = {
                        let mut rng = self.rng.lock();
                        cfg.delay_for(item.kind).sample(&mut *rng)
                    };
                    wall_ms_ceil(cfg.clamp(now + delay))
                };
                self.store.reschedule(&item.id, at, 0, Some(wall_ms(now)))?;
                self.entered(item.id, rounds)?;
                Counters::bump(&self.counters.steps);
                tracing::debug!("item step done; released again later");
                return Ok(Left::No);
            }
            Ok(Outcome::Done) => {
                self.store.complete(&item.id)?;
                Counters::bump(&self.counters.delivered);
                tracing::debug!("item delivered");
                return Ok(Left::Yes);
            }
            Err(e) if !e.kind().retry() => {
                self.store.complete(&item.id)?;
                Counters::bump(&self.counters.dropped_permanent);
                // The reason is the next hop's reply text, which may quote an
                // address: keep it at debug.
                tracing::warn!(
                    "item dropped after a permanent delivery failure (no bounce is sent)"
                );
                tracing::debug!(reason = %e, "permanent failure reason");
                return Ok(Left::Yes);
            }
            Err(e) => {
                let attempts = item.attempts.saturating_add(1);
                let backoff = {
                    let mut rng = self.rng.lock();
                    cfg.retry.backoff(attempts, &mut *rng)
                };
                let at = wall_ms_ceil(cfg.clamp(now + backoff));
                self.store
                    .reschedule(&item.id, at, attempts, Some(wall_ms(now)))?;
                self.entered(item.id, false)?;
                Counters::bump(&self.counters.retries);
                match e.kind() {
                    ErrorKind::Temporary => {
                        tracing::info!(attempts, "temporary delivery failure; rescheduled")
                    }
                    kind => tracing::warn!(attempts, %kind, "delivery failure; rescheduled"),
                }
                tracing::debug!(reason = %e, "failure reason");
            }
        }
        Ok(Left::No)
    }
}

/// Whether a delivery attempt's item left the mote (delivered or dropped).
pub(super) enum Left {
    Yes,
    No,
}

/// The earlier of two optional times.
fn earliest(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
