#![doc = include_str!("../README.md")]

pub mod accounts;
mod fetch;
pub mod flusher;
mod journal;
mod open;
mod private;
mod record;
mod replay;
mod seal;
mod space;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

pub use fetch::ContentWriter;
#[doc(hidden)]
pub use journal::fail_io as fail_journal_io;
pub use private::read_private;
pub use record::{Item, ItemId, ItemState};
pub use replay::OnceAt;
pub use seal::{SealKey, KEY_BYTES, OVERHEAD as SEAL_OVERHEAD};

use seal::Sealer;
use space::Space;

use flusher::Flusher;

/// On-disk format version, kept in the `meta` tree under [`FORMAT_KEY`].
/// Bump it whenever the record or key layout changes; `open` refuses a
/// database written in another format instead of misreading it.
pub const FORMAT_VERSION: u8 = 3;
const FORMAT_KEY: &[u8] = b"format";
/// When the mote first started (ms since the epoch, big-endian), for a
/// lifetime counted from the first start.
const FIRST_START_KEY: &[u8] = b"first_start";
/// A value sealed under the store's key, to recognise the key (`seal.rs`).
const SEAL_CHECK_KEY: &[u8] = b"seal_check";

/// The release time of an item held in a pool (mixing strategies `pool` and
/// `binomial`): it has a schedule entry at the very end, after every real
/// time, and leaves only when a round gives it a time
/// ([`Store::release_held`]).
pub const HELD: u64 = u64::MAX;

/// sled's page cache. sled's default is 1 GiB, far more than a mote needs:
/// items are deleted soon after delivery, so the working set is the queue.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// How long [`Store::open`] waits for a database lock that is being released.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Errors of the storage layer. Every variant is a *temporary* failure from
/// the point of view of a client: the write was not acknowledged, so the
/// client may retry (SMTP 451, HTTP 503).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// sled reported an I/O or corruption error.
    #[error("database error while {doing}: {source}")]
    Db {
        /// What we were doing.
        doing: &'static str,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// The fsync that should make a write durable failed (disk full, I/O error).
    #[error("flush failed while making a write durable: {0}")]
    Flush(#[from] flusher::FlushError),
    /// A stored record could not be decoded.
    #[error("corrupt record while {doing}: {what}")]
    Corrupt {
        /// What we were doing.
        doing: &'static str,
        /// What was wrong.
        what: String,
    },
    /// The database was written in a format this build does not understand.
    #[error("database format {found} is not supported (this build reads format {FORMAT_VERSION})")]
    Format {
        /// The version found on disk.
        found: u8,
    },
    /// A content file could not be written, synced or read (disk full,
    /// I/O error).
    #[error("I/O error while {doing}: {source}")]
    Io {
        /// What we were doing.
        doing: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The store is sealed under another key than the one given (or the
    /// key was lost: keys live in a tmpfs and do not survive a reboot).
    #[error("the store is sealed under a different key: its items cannot be read without the key it was created with")]
    Key,
    /// Free space on the store's filesystem is below the reserve
    /// ([`Store::set_min_free`]): nothing new is taken until deliveries or
    /// the operator free some (SMTP 452 4.3.1, HTTP 507).
    #[error("free space on the store's filesystem ({free} bytes) is below the reserve of {reserve} bytes")]
    Full {
        /// Bytes free now (for an unprivileged writer).
        free: u64,
        /// The reserve plus what the write needed.
        reserve: u64,
    },
    /// The store is shutting down.
    #[error("storage is closed")]
    Closed,
}

fn db_err(doing: &'static str) -> impl FnOnce(sled::Error) -> StorageError {
    move |source| StorageError::Db { doing, source }
}

/// Result alias of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Counts and times of what is queued, for `dustmote queue` and `/status`
/// (serialized there as it is).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueStats {
    /// Items waiting: for their release time, or held in a pool.
    pub queued: u64,
    /// Of `queued`, the items held in a pool (no release time yet).
    pub held: u64,
    /// Items handed to a deliverer and not yet completed.
    pub in_flight: u64,
    /// The earliest release times (ms since the epoch), at most the number asked for.
    #[serde(rename = "next_releases_ms")]
    pub next_releases: Vec<u64>,
}

/// The durable queue. Share it with `Arc<Store>`.
pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    items: sled::Tree,
    schedule: sled::Tree,
    /// Fetch jobs (see `fetch.rs`).
    fetches: sled::Tree,
    /// The index of fetched content (see `fetch.rs`).
    chunks: sled::Tree,
    /// Where content files live: `content/` beside sled's files.
    content_dir: PathBuf,
    /// For a temporary store: its directory (the content directory's
    /// parent) is removed on drop.
    temporary_content: bool,
    /// Entry counts, kept exact from sled's own answers to each insert and
    /// remove (so that `stats` does not scan a million items).
    counts: Counts,
    /// Digests of recent admissions (see `replay.rs`).
    replay: replay::Replay,
    /// Accounts and their usage (see `accounts.rs`).
    accounts: accounts::AccountTrees,
    /// Seals payloads, job records and content (see `seal.rs`).
    sealer: Arc<Sealer>,
    /// The free-space reserve (see `space.rs`).
    space: Arc<Space>,
    flusher: Flusher,
}

/// See [`Store::stats`].
#[derive(Default)]
struct Counts {
    items: AtomicI64,
    scheduled: AtomicI64,
    held: AtomicI64,
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.temporary_content {
            // The whole temporary directory: content and sled's files.
            if let Some(base) = self.content_dir.parent() {
                let _ = std::fs::remove_dir_all(base);
            }
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn schedule_key(release_ms: u64, id: &ItemId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&release_ms.to_be_bytes());
    k[8..].copy_from_slice(&id.0);
    k
}

impl Store {
    fn insert_item(&self, item: &Item, doing: &'static str) -> Result<()> {
        let value = item.encode(&self.sealer);
        let old = self
            .items
            .insert(item.id.0, value.as_slice())
            .map_err(db_err(doing))?;
        self.flusher
            .append(|ops| journal::put(ops, &item.id.0, &value));
        if old.is_none() {
            self.counts.items.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Count an item written outside [`insert_item`](Self::insert_item).
    pub(crate) fn counted_new_item(&self) {
        self.counts.items.fetch_add(1, Ordering::Relaxed);
    }

    /// The schedule entry of a just-written item.
    pub(crate) fn schedule_item(&self, item: &Item) -> Result<()> {
        self.insert_schedule(
            schedule_key(item.release_ms, &item.id),
            "writing a schedule entry",
        )
    }

    fn insert_schedule(&self, key: [u8; 24], doing: &'static str) -> Result<()> {
        let old = self.schedule.insert(key, &[]).map_err(db_err(doing))?;
        if old.is_none() {
            self.counts.scheduled.fetch_add(1, Ordering::Relaxed);
            if release_of(&key) == HELD {
                self.counts.held.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn remove_schedule(&self, key: &[u8], doing: &'static str) -> Result<()> {
        let old = self.schedule.remove(key).map_err(db_err(doing))?;
        if old.is_some() {
            self.counts.scheduled.fetch_sub(1, Ordering::Relaxed);
            if release_of(key) == HELD {
                self.counts.held.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Write an item and its schedule entry. Not a sled transaction (those
    /// cost more than half of admission throughput): the item is written
    /// first, and a crash between the two writes leaves a queued item without
    /// a schedule entry, which `recover` repairs at the next open.
    fn put(&self, item: &Item) -> Result<()> {
        self.insert_item(item, "writing an item")?;
        self.schedule_item(item)
    }

    /// Store a new item and return once it is on disk (fsynced).
    ///
    /// Crash behaviour: if this returns `Ok`, the item survives any crash. If
    /// it returns `Err` or the process dies before it returns, the item may or
    /// may not be stored; the caller has not acknowledged it, so a stored copy
    /// is delivered once (a duplicate the client may resend), never lost.
    ///
    /// Refused with [`StorageError::Full`] (nothing written) while free
    /// space is below the reserve.
    pub async fn admit(&self, item: &Item) -> Result<()> {
        self.write_admission(item)?;
        self.flusher.sync_journal().await
    }

    /// The writes of an admission (refused below the free-space reserve),
    /// without waiting for them to be durable.
    fn write_admission(&self, item: &Item) -> Result<()> {
        self.space.check(item.payload.len() as u64)?;
        self.put(item)
    }

    /// Store a new item without waiting for it to reach the disk: for items
    /// whose loss in a crash costs nothing (cover traffic). It becomes
    /// durable with the next flush anyone waits for.
    /// Refused below the free-space reserve, like an admission.
    pub fn enqueue_unsynced(&self, item: &Item) -> Result<()> {
        self.space.check(item.payload.len() as u64)?;
        self.put(item)
    }

    /// [`admit`](Self::admit) for a blocking thread (the mixer runs it via
    /// its runtime's `spawn_blocking`, so simulated-time tests see the wait).
    pub fn admit_blocking(&self, item: &Item) -> Result<()> {
        self.write_admission(item)?;
        self.flusher.sync_journal_blocking()
    }

    /// Keep `bytes` free on the store's filesystem: admissions, new jobs and
    /// content writes are refused with [`StorageError::Full`] while less is
    /// free, so that the mote's own writes never fill the disk (sled 0.34
    /// does not recover from a failed log write). Updates of what is
    /// stored (in flight, completed, rescheduled) are always made.
    pub fn set_min_free(&self, bytes: u64) {
        self.space.set_reserve(bytes);
    }

    /// `Ok` if the free space is above the reserve by `extra` bytes (a
    /// cheap statvfs; a temporary store always has room).
    pub fn check_room(&self, extra: u64) -> Result<()> {
        self.space.check(extra)
    }

    /// Bytes free on the store's filesystem (`None`: a temporary store, or
    /// statvfs failed).
    pub fn free_bytes(&self) -> Option<u64> {
        self.space.free()
    }

    /// When this store was first opened by a mote (ms since the epoch):
    /// recorded (durably) as `now_ms` on the first call, read back on every
    /// later one, across restarts.
    pub async fn first_start_ms(&self, now_ms: u64) -> Result<u64> {
        let stored = self
            .meta
            .get(FIRST_START_KEY)
            .map_err(db_err("reading the first start"))?;
        if let Some(v) = stored {
            let b: [u8; 8] = v.as_ref().try_into().map_err(|_| StorageError::Corrupt {
                doing: "reading the first start",
                what: format!("{} bytes", v.len()),
            })?;
            return Ok(u64::from_be_bytes(b));
        }
        self.meta
            .insert(FIRST_START_KEY, &now_ms.to_be_bytes())
            .map_err(db_err("writing the first start"))?;
        self.flusher.mark_dirty();
        self.sync().await?;
        Ok(now_ms)
    }

    /// Wait until everything written before this call is on disk. Concurrent
    /// callers share one fsync.
    pub async fn sync(&self) -> Result<()> {
        self.flusher.sync().await
    }

    /// Whether anything written here survives the process (false for
    /// [`temporary`](Self::temporary) stores).
    pub fn is_durable(&self) -> bool {
        !self.temporary_content
    }

    /// [`sync`](Self::sync) for a blocking thread.
    pub fn sync_blocking(&self) -> Result<()> {
        self.flusher.sync_blocking()
    }

    /// Wait until every write to the queue's items made before this call
    /// (admissions, completions, reschedules) is on disk: one `fdatasync`
    /// of the intake journal, shared with concurrent callers, instead of a
    /// checkpoint. Writes to other trees need [`sync`](Self::sync).
    pub fn sync_items_blocking(&self) -> Result<()> {
        self.flusher.sync_journal_blocking()
    }

    /// How many checkpoints (sled flushes) the flusher has done; the rest
    /// of [`flush_count`](Self::flush_count) were journal writes.
    pub fn checkpoint_count(&self) -> u64 {
        self.flusher.checkpoints()
    }

    /// How many fsyncs the group-commit flusher has done (a metric: compare
    /// with the number of admissions to see how much batching happens).
    pub fn flush_count(&self) -> u64 {
        self.flusher.flushes()
    }

    /// Writers currently waiting for a flush.
    #[doc(hidden)]
    pub fn pending_syncs(&self) -> usize {
        self.flusher.pending()
    }

    /// Writers whose flush is running now.
    #[doc(hidden)]
    pub fn syncs_in_flush(&self) -> usize {
        self.flusher.in_flush()
    }

    /// Block the flusher while the guard lives (tests of group commit).
    #[doc(hidden)]
    pub fn hold_flushes(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.flusher.hold()
    }

    /// Blocking flush, for shutdown paths outside an async context.
    pub fn flush_blocking(&self) -> Result<()> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(db_err("flushing at shutdown"))
    }

    /// The earliest scheduled release time, if any item is queued with a
    /// time (held items have none).
    pub fn next_release(&self) -> Result<Option<u64>> {
        let first = self
            .schedule
            .first()
            .map_err(db_err("reading the schedule"))?;
        Ok(first.map(|(k, _)| release_of(&k)).filter(|t| *t != HELD))
    }

    /// Take up to `limit` items whose release time is `<= now_ms`, in release
    /// order, and mark them in flight.
    ///
    /// Crash behaviour: the in-flight mark is not flushed here; if the process
    /// dies before the next flush, the item is simply due again at restart.
    pub fn take_due(&self, now_ms: u64, limit: usize) -> Result<Vec<Item>> {
        self.take_until(now_ms, limit, |_, _| true)
    }

    /// Like [`take_due`](Self::take_due) up to `until_ms` (inclusive; at
    /// most the last time before [`HELD`]), taking only the entries for
    /// which `pick(id, release_ms)` is true; the others stay scheduled.
    /// Used by the hand-off to a successor, which takes items whatever
    /// their release time, except those it gave up on.
    pub fn take_until(
        &self,
        until_ms: u64,
        limit: usize,
        mut pick: impl FnMut(&ItemId, u64) -> bool,
    ) -> Result<Vec<Item>> {
        let end = schedule_key(until_ms.min(HELD - 1), &ItemId([0xff; 16]));
        let mut out = Vec::new();
        for kv in self.schedule.range(..=end.as_slice()) {
            if out.len() >= limit {
                break;
            }
            let (k, _) = kv.map_err(db_err("scanning due items"))?;
            let mut id = [0u8; 16];
            id.copy_from_slice(&k[8..24]);
            let id = ItemId(id);
            if !pick(&id, release_of(&k)) {
                continue;
            }
            // Each item has one owner at a time (the schedule loop while it
            // is queued, one delivery task while it is in flight), so these
            // writes need no transaction. Order: mark in flight, then drop
            // the schedule entry; a crash in between leaves an in-flight
            // item, which `recover` queues again.
            let taken = match self.items.get(id.0).map_err(db_err("reading a due item"))? {
                None => None,
                Some(v) => {
                    let mut item = Item::decode(&id.0, &v, &self.sealer)?;
                    if item.state == ItemState::InFlight
                        || schedule_key(item.release_ms, &id) != k.as_ref()
                    {
                        None // a stale entry: the item is elsewhere on the schedule or in flight
                    } else {
                        item.state = ItemState::InFlight;
                        self.insert_item(&item, "marking an item in flight")?;
                        Some(item)
                    }
                }
            };
            self.remove_schedule(&k, "removing a schedule entry")?;
            out.extend(taken);
        }
        Ok(out)
    }

    /// Remove an item after it left the mote (delivered, or dropped after a
    /// permanent failure).
    ///
    /// Crash behaviour: not flushed by itself; a crash before the next flush
    /// delivers the item again. The mixer waits for a flush after each
    /// completion (shared with other writers), so only deliveries in flight
    /// at a crash can be repeated.
    pub fn complete(&self, id: &ItemId) -> Result<()> {
        let old = self
            .items
            .remove(id.0)
            .map_err(db_err("removing a delivered item"))?;
        self.flusher.append(|ops| journal::remove(ops, &id.0));
        if old.is_some() {
            self.counts.items.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Put an in-flight item back on the schedule at `release_ms` (or
    /// [`HELD`]), with its attempt counter set to `attempts` (after a
    /// temporary failure, a step, or at shutdown); `entered_ms` is when it
    /// re-entered the mix (`None`: unchanged).
    pub fn reschedule(
        &self,
        id: &ItemId,
        release_ms: u64,
        attempts: u32,
        entered_ms: Option<u64>,
    ) -> Result<()> {
        let Some(mut item) = self.get(id)? else {
            return Ok(());
        };
        item.release_ms = release_ms;
        item.attempts = attempts;
        item.state = ItemState::Queued;
        if let Some(e) = entered_ms {
            item.entered_ms = e;
        }
        self.put(&item)
    }

    /// The ids of the items held in a pool, in id order (random). Reads
    /// only the schedule's keys; a stale held entry (a crash in the middle
    /// of [`release_held`](Self::release_held)) may be among them, and is
    /// removed when a round picks it.
    pub fn held_ids(&self) -> Result<Vec<ItemId>> {
        let mut out = Vec::new();
        for k in self
            .schedule
            .range(schedule_key(HELD, &ItemId([0; 16]))..)
            .keys()
        {
            let k = k.map_err(db_err("scanning held items"))?;
            let mut id = [0u8; 16];
            id.copy_from_slice(&k[8..24]);
            out.push(ItemId(id));
        }
        Ok(out)
    }

    /// Items waiting (scheduled or held): the schedule's size, without
    /// reading the items.
    pub fn queued_count(&self) -> u64 {
        self.counts.scheduled.load(Ordering::Relaxed).max(0) as u64
    }

    /// Give a held item its release time. Not flushed by itself: a crash
    /// before the next flush leaves it held (it is picked by a later round).
    ///
    /// Order: the item's new time, its new schedule entry, then the held
    /// entry is dropped; a crash in between leaves a stale held entry, which
    /// [`held_ids`](Self::held_ids) removes.
    pub fn release_held(&self, id: &ItemId, release_ms: u64) -> Result<bool> {
        let stale = || {
            self.remove_schedule(&schedule_key(HELD, id), "removing a stale held entry")
                .map(|_| false)
        };
        let Some(mut item) = self.get(id)? else {
            return stale();
        };
        if item.release_ms != HELD || item.state != ItemState::Queued {
            return stale();
        }
        item.release_ms = release_ms;
        self.put(&item)?;
        self.remove_schedule(&schedule_key(HELD, id), "removing a held entry")?;
        Ok(true)
    }

    /// One item by id.
    pub fn get(&self, id: &ItemId) -> Result<Option<Item>> {
        let v = self.items.get(id.0).map_err(db_err("reading an item"))?;
        v.map(|v| Item::decode(&id.0, &v, &self.sealer)).transpose()
    }

    /// Every stored item, in id order (for operator inspection).
    pub fn items(&self) -> impl Iterator<Item = Result<Item>> + '_ {
        self.items.iter().map(|kv| {
            let (k, v) = kv.map_err(db_err("scanning items"))?;
            Item::decode(&k, &v, &self.sealer)
        })
    }

    /// Counts and the `next` earliest release times.
    pub fn stats(&self, next: usize) -> Result<QueueStats> {
        let load = |c: &AtomicI64| c.load(Ordering::Relaxed).max(0) as u64;
        let queued = load(&self.counts.scheduled);
        let held = load(&self.counts.held);
        let total = load(&self.counts.items);
        let mut next_releases = Vec::new();
        for kv in self.schedule.iter().take(next) {
            let (k, _) = kv.map_err(db_err("scanning the schedule"))?;
            let t = release_of(&k);
            if t == HELD {
                break;
            }
            next_releases.push(t);
        }
        Ok(QueueStats {
            queued,
            held,
            in_flight: total.saturating_sub(queued),
            next_releases,
        })
    }
}

/// Create `dir` (and missing parents) readable by its owner only, or make
/// an existing one so (the store's directory, and the binary's data
/// directory around it).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn release_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[..8]);
    u64::from_be_bytes(b)
}
