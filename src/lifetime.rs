//! The mote's lifetime and how it stops: at the end of its life, when its
//! store fails a write, or on a signal, each with a watchdog that ends the
//! process if the stop takes too long.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dust_mixer::Lifetime;
use dust_storage::Store;
use tokio::sync::watch;

/// How long a stop may take beyond the session and delivery grace periods
/// before the process exits anyway ([`arm_watchdog`]).
pub const STOP_MARGIN: Duration = Duration::from_secs(10);

/// How often the lifetime watcher looks at the wall clock, so that a clock
/// jump cannot postpone the end by much.
const LIFETIME_CHECK: Duration = Duration::from_secs(30);

/// Why `serve` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A stop signal.
    Stopped,
    /// The lifetime is over (or was over at the start): the process exits
    /// with [`EXPIRED_STATUS`], which tells the unit to power the VM off.
    Expired,
}

/// The exit status of a mote whose lifetime is over. `dustmote.service`
/// powers the VM off on this status only, so that `systemctl stop` or a
/// crash never does.
pub const EXPIRED_STATUS: u8 = 10;

/// When a mote whose life is `lifetime` from its first start ends: counted
/// from the first start, recorded in the store, so that a restart does not
/// extend it.
pub async fn lifetime_from(
    store: &Store,
    lifetime: Duration,
    drain_margin: Duration,
) -> anyhow::Result<Lifetime> {
    let first = store
        .first_start_ms(dust_mixer::wall_ms(SystemTime::now()))
        .await?;
    Ok(Lifetime {
        expires_at: dust_mixer::from_wall_ms(first) + lifetime,
        drain_margin,
    })
}

/// What stops the mote besides its SMTP server ending: the end of its
/// lifetime, a store that fails a write, and signals (each with a
/// watchdog of `stop_limit`).
pub struct Stops {
    expired: Arc<AtomicBool>,
    store_failed: Arc<AtomicBool>,
}

/// How often [`watch_store`] checks that the store can still write.
const STORE_CHECK: Duration = Duration::from_secs(2);

/// sled 0.34.7 does not recover from a failed log write (a disk filled to
/// the last byte from outside, past the `min_free` reserve): every later
/// write fails with the same error. Such a store is found by a periodic
/// flush (cheap when nothing is pending), and the mote then stops and exits
/// with an error, so that its supervisor (`Restart=on-failure`) starts it
/// again; the start reopens the store from what is on disk.
async fn watch_store(
    store: Arc<Store>,
    stop: Arc<watch::Sender<bool>>,
    failed: Arc<AtomicBool>,
    stop_limit: Duration,
) {
    loop {
        tokio::time::sleep(STORE_CHECK).await;
        if *stop.borrow() {
            return;
        }
        if let Err(e) = store.sync().await {
            tracing::error!(
                error = %e,
                "the store cannot write any more; stopping so that a restart reopens it"
            );
            failed.store(true, Ordering::SeqCst);
            let _ = stop.send(true);
            arm_watchdog(stop_limit);
            return;
        }
    }
}

/// At the end of its life the mote stops by itself (the deploy layer then
/// shuts the VM down). Checked against the wall clock every
/// [`LIFETIME_CHECK`], so a clock jump cannot postpone it by much.
async fn stop_at_end(
    l: Lifetime,
    store: Arc<Store>,
    stop: Arc<watch::Sender<bool>>,
    expired: Arc<AtomicBool>,
    stop_limit: Duration,
) {
    while let Ok(left) = l.expires_at.duration_since(SystemTime::now()) {
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(LIFETIME_CHECK)).await;
    }
    let queued = store.stats(0).map(|s| s.queued).unwrap_or(0);
    if queued > 0 {
        tracing::warn!(
            queued,
            "the mote's lifetime is over with items still queued"
        );
    }
    tracing::info!("the mote's lifetime is over; stopping");
    expired.store(true, Ordering::SeqCst);
    let _ = stop.send(true);
    arm_watchdog(stop_limit);
}

/// Once a stop has begun, the process exits within `limit` whatever
/// happens (a disk that hangs an fsync, a peer that never answers): every
/// acknowledged item was fsynced before its acknowledgement, so the orderly
/// part of a stop only saves work, never data.
fn arm_watchdog(limit: Duration) {
    let spawned = std::thread::Builder::new()
        .name("dust-stop-watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            tracing::error!(
                after_s = limit.as_secs(),
                "the orderly stop did not finish in time; exiting now (nothing acknowledged is lost)"
            );
            std::process::exit(1);
        });
    if spawned.is_err() {
        tracing::warn!("could not start the stop watchdog");
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

impl Stops {
    pub fn watch(
        store: &Arc<Store>,
        stop_tx: &Arc<watch::Sender<bool>>,
        lifetime: Option<Lifetime>,
        stop_limit: Duration,
    ) -> Self {
        let expired = Arc::new(AtomicBool::new(false));
        if let Some(l) = lifetime {
            tokio::spawn(stop_at_end(
                l,
                Arc::clone(store),
                Arc::clone(stop_tx),
                Arc::clone(&expired),
                stop_limit,
            ));
        }
        let store_failed = Arc::new(AtomicBool::new(false));
        tokio::spawn(watch_store(
            Arc::clone(store),
            Arc::clone(stop_tx),
            Arc::clone(&store_failed),
            stop_limit,
        ));
        let stop_on_signal = Arc::clone(stop_tx);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!(
                "stopping: no new connections; open sessions and deliveries get a grace period"
            );
            let _ = stop_on_signal.send(true);
            arm_watchdog(stop_limit);
            // A second signal: stop now.
            wait_for_signal().await;
            tracing::warn!("second stop signal: exiting at once");
            std::process::exit(1);
        });
        Self {
            expired,
            store_failed,
        }
    }

    /// Why the mote stopped, once everything has (`left`: items in flight
    /// returned to the queue).
    pub fn ended(&self, store: &Store, left: usize) -> anyhow::Result<Ended> {
        let stats = store.stats(0)?;
        tracing::info!(
            queued = stats.queued,
            in_flight_returned = left,
            "stopped; everything not delivered stays queued for the next start"
        );
        if self.store_failed.load(Ordering::SeqCst) {
            anyhow::bail!(
                "stopped because the store failed a write (disk full?); start again once there \
                 is space: everything acknowledged is on disk and will be delivered"
            );
        }
        if self.expired.load(Ordering::SeqCst) {
            tracing::info!(
                queued = stats.queued,
                "the mote's lifetime is over; exiting"
            );
            return Ok(Ended::Expired);
        }
        Ok(Ended::Stopped)
    }
}
