//! Group commit: one thread calls sled's blocking `flush()`, and every writer
//! that asked for durability before that flush started is woken by it.
//!
//! Why a thread: `flush()` blocks on fsync (milliseconds), which must not
//! stall an async runtime's worker, and sled 0.34.7's `flush_async` deadlocks
//! when awaited concurrently. With one flusher, N sessions that finish their
//! writes while an fsync is running share the next one, so intake scales
//! with concurrency instead of being capped at one message per fsync.
//!
//! Correctness: a waiter registers *after* its write returned, and the
//! flusher takes the waiter list *before* it calls `flush()`, so every write
//! of every waiter it wakes is covered by that flush.
//!
//! sled's `flush()` alone is not an fsync on Linux: 0.34.7 writes its log
//! with `sync_file_range`, which neither flushes the disk's write cache nor
//! file metadata, and it never syncs the files of large values ("blobs") or
//! the directories. That survives kill -9 (the page cache does) but not a
//! power cut. So after each `flush()` the flusher also `fdatasync`s the log
//! file, `fsync`s every blob file it has not synced yet, and the directories
//! that gained entries ([`DiskSync`]). Only then are the waiters woken.
//!
//! Two kinds of waiters: a *journal* waiter (admissions, completions: its
//! writes are ops in the intake journal, see `journal.rs`) is answered once
//! the batch of ops is written and `fdatasync`ed; a *full* waiter (every
//! other durable write) makes the batch a checkpoint: sled's `flush()` and
//! the fsyncs above, after which the journal starts over. A batch whose ops
//! do not fit in the journal is a checkpoint too.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::PathBuf;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::journal::Journal;
use crate::{Result, StorageError};

type Waiter = oneshot::Sender<Result<(), FlushError>>;

/// Why a flush failed. Every waiter of the batch gets the same error (it
/// is shared, hence the `Arc`s).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FlushError {
    /// The flusher's thread could not start.
    #[error("starting the flusher: {0}")]
    Start(Arc<std::io::Error>),
    /// Writing the intake journal failed.
    #[error("journal: {0}")]
    Journal(Arc<std::io::Error>),
    /// sled's flush failed.
    #[error("{0}")]
    Database(Arc<sled::Error>),
    /// An fsync that sled leaves out failed.
    #[error("fsync: {0}")]
    Fsync(Arc<std::io::Error>),
    /// A checkpoint could not start a new journal generation, and then
    /// recording in the database that the old one is covered failed too.
    #[error("journal: {journal}; then the database: {database}")]
    Covered {
        /// The journal's error.
        journal: Arc<std::io::Error>,
        /// The database's.
        database: Arc<sled::Error>,
    },
}

/// Group commit among concurrent writers (the previous batch had more than
/// one, or some registered while it was being written): a batch of journal waiters smaller
/// than [`COMMIT_SIBLINGS`] waits up to [`COMMIT_DELAY`] for more, as
/// PostgreSQL's `commit_delay` / `commit_siblings`. One `fdatasync` per
/// message was what the flusher cost under `smtp-source` (≈ 44 µs of CPU a
/// message). A lone writer (nobody arrived during the last write) never
/// waits: it would only be slowed down.
const COMMIT_DELAY: Duration = Duration::from_micros(250);
const COMMIT_SIBLINGS: usize = 3;

#[derive(Default)]
struct State {
    /// Waiting for a checkpoint.
    waiters: Vec<Waiter>,
    /// Waiting for the journal (their ops are in `ops` or written).
    journal_waiters: Vec<Waiter>,
    /// Journal ops not written yet (see `journal.rs` for the encoding).
    ops: Vec<u8>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Held by the flusher around each `flush()`; a test can hold it to make
    /// waiters pile up deterministically (see `Store::hold_flushes`).
    gate: Mutex<()>,
    /// Number of flushes done, for metrics and the group-commit test.
    flushes: std::sync::atomic::AtomicU64,
    /// Waiters in the batch being flushed now (for the group-commit test).
    in_flush: std::sync::atomic::AtomicUsize,
    /// Checkpoints done (sled flushes), for metrics and tests.
    checkpoints: std::sync::atomic::AtomicU64,
    /// Whether there is a journal; without one every sync is a checkpoint
    /// and ops are not kept.
    journaling: bool,
    /// A tree the journal does not cover was written since the last
    /// checkpoint began: the next journal waiter needs a checkpoint.
    dirty: std::sync::atomic::AtomicBool,
}

/// Handle to the flusher thread; dropping it stops the thread after a last
/// flush of whatever is pending.
pub(crate) struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Start the flusher for `db`, whose files are in `dir` (`None` for a
    /// temporary database: nothing to make durable).
    /// `journal`: the open intake journal, if the store has one.
    pub(crate) fn start(
        db: sled::Db,
        dir: Option<PathBuf>,
        mut journal: Option<Journal>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            gate: Mutex::new(()),
            flushes: std::sync::atomic::AtomicU64::new(0),
            in_flush: std::sync::atomic::AtomicUsize::new(0),
            checkpoints: std::sync::atomic::AtomicU64::new(0),
            journaling: journal.is_some(),
            dirty: std::sync::atomic::AtomicBool::new(false),
        });
        let mut disk = DiskSync::new(dir)?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("dust-flusher".into())
            .spawn(move || run(&s, &db, &mut disk, journal.as_mut()))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Resolve once a checkpoint that started after this call has finished.
    pub(crate) async fn sync(&self) -> Result<()> {
        match self.register(false)?.await {
            Ok(r) => r.map_err(StorageError::Flush),
            Err(_) => Err(StorageError::Closed),
        }
    }

    /// Like [`sync`](Self::sync), blocking the calling thread.
    pub(crate) fn sync_blocking(&self) -> Result<()> {
        match self.register(false)?.blocking_recv() {
            Ok(r) => r.map_err(StorageError::Flush),
            Err(_) => Err(StorageError::Closed),
        }
    }

    /// Resolve once every journal op appended before this call is durable.
    pub(crate) async fn sync_journal(&self) -> Result<()> {
        match self.register(true)?.await {
            Ok(r) => r.map_err(StorageError::Flush),
            Err(_) => Err(StorageError::Closed),
        }
    }

    /// Block until every journal op appended before this call is durable
    /// (in the journal, or covered by a checkpoint).
    pub(crate) fn sync_journal_blocking(&self) -> Result<()> {
        match self.register(true)?.blocking_recv() {
            Ok(r) => r.map_err(StorageError::Flush),
            Err(_) => Err(StorageError::Closed),
        }
    }

    /// A write the journal does not cover (fetch jobs and their index,
    /// account records, meta) was made: the next wait for the
    /// journal is a checkpoint, so that whatever it acknowledges (a `202`
    /// for a job, a `250` whose usage was counted) is on disk with it.
    /// Call after the write.
    pub(crate) fn mark_dirty(&self) {
        self.shared
            .dirty
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Ask for a checkpoint without waiting for it (at open, after the
    /// journal was replayed: until it is done, a crash replays it again).
    pub(crate) fn request_checkpoint(&self) -> Result<()> {
        self.register(false).map(drop)
    }

    /// Queue journal ops (encoded by `journal::put` and friends) written
    /// with `add`; nothing without a journal.
    pub(crate) fn append(&self, add: impl FnOnce(&mut Vec<u8>)) {
        if self.shared.journaling {
            add(&mut self.shared.state.lock().ops);
        }
    }

    fn register(&self, journal: bool) -> Result<oneshot::Receiver<Result<(), FlushError>>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.state.lock();
            if st.shutdown || self.thread.is_none() {
                return Err(StorageError::Closed);
            }
            // The flag is cleared when a checkpoint's flush is about to
            // start, which then covers the write that set it; a writer
            // that finds it cleared is answered after that checkpoint.
            if journal
                && self.shared.journaling
                && !self.shared.dirty.load(std::sync::atomic::Ordering::SeqCst)
            {
                st.journal_waiters.push(tx);
            } else {
                st.waiters.push(tx);
            }
        }
        self.shared.wake.notify_one();
        Ok(rx)
    }
}

impl Flusher {
    pub(crate) fn flushes(&self) -> u64 {
        self.shared
            .flushes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn in_flush(&self) -> usize {
        self.shared
            .in_flush
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn checkpoints(&self) -> u64 {
        self.shared
            .checkpoints
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn pending(&self) -> usize {
        let st = self.shared.state.lock();
        st.waiters.len() + st.journal_waiters.len()
    }

    pub(crate) fn hold(&self) -> MutexGuard<'_, ()> {
        self.shared.gate.lock()
    }
}

/// The fsyncs sled leaves out (see the module doc).
struct DiskSync {
    dir: Option<PathBuf>,
    log: Option<File>,
    synced_blobs: HashSet<OsString>,
}

impl DiskSync {
    fn new(dir: Option<PathBuf>) -> std::io::Result<Self> {
        let log = match &dir {
            Some(d) => {
                // The database directory's entries (db, conf, blobs/) are
                // made durable once; the log file is synced after each flush.
                File::open(d)?.sync_all()?;
                Some(File::open(d.join("db"))?)
            }
            None => None,
        };
        Ok(Self {
            dir,
            log,
            synced_blobs: HashSet::new(),
        })
    }

    fn sync(&mut self) -> std::io::Result<()> {
        let (Some(dir), Some(log)) = (&self.dir, &self.log) else {
            return Ok(());
        };
        log.sync_data()?;
        let blobs = dir.join("blobs");
        let entries = match std::fs::read_dir(&blobs) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut present = HashSet::new();
        let mut new = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_all()?,
                    // Removed by sled's garbage collection meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new = true;
            }
            present.insert(name);
        }
        if new {
            File::open(&blobs)?.sync_all()?;
        }
        self.synced_blobs = present;
        Ok(())
    }
}

fn run(shared: &Shared, db: &sled::Db, disk: &mut DiskSync, mut journal: Option<&mut Journal>) {
    // Whether writers arrived while the last batch was written.
    let mut concurrent = false;
    loop {
        let (full, light, ops) = {
            let mut st = shared.state.lock();
            while st.waiters.is_empty() && st.journal_waiters.is_empty() && !st.shutdown {
                shared.wake.wait(&mut st);
            }
            if st.waiters.is_empty() && st.journal_waiters.is_empty() {
                return; // shutdown and nothing pending
            }
            if st.waiters.is_empty() && !st.shutdown && disk.dir.is_some() && concurrent {
                let until = Instant::now() + COMMIT_DELAY;
                while st.journal_waiters.len() < COMMIT_SIBLINGS
                    && st.waiters.is_empty()
                    && !shared.wake.wait_until(&mut st, until).timed_out()
                {}
            }
            // Waiters first, then their ops, in one critical section (see
            // the module doc of `journal.rs`).
            let full = std::mem::take(&mut st.waiters);
            let light = std::mem::take(&mut st.journal_waiters);
            let ops = std::mem::take(&mut st.ops);
            shared.in_flush.store(
                full.len() + light.len(),
                std::sync::atomic::Ordering::SeqCst,
            );
            (full, light, ops)
        };
        let result = {
            let _gate = shared.gate.lock();
            if disk.dir.is_none() {
                // A temporary database: nothing outlives the process, so
                // there is nothing to make durable (simulations admit
                // millions of items through here).
                Ok(())
            } else {
                match journal.as_deref_mut() {
                    Some(j) if full.is_empty() && j.fits(ops.len()) => {
                        if ops.is_empty() {
                            Ok(()) // written by an earlier batch
                        } else {
                            j.write(&ops).map_err(|e| FlushError::Journal(Arc::new(e)))
                        }
                    }
                    // A checkpoint covers the ops (their sled writes came
                    // before its flush). They are still written if they
                    // fit, so that the journal stays a log without gaps if
                    // the checkpoint cannot start a new generation (a gap
                    // would let a replay undo a later write).
                    mut j => {
                        if let Some(j) = j.as_deref_mut() {
                            if !ops.is_empty() && j.fits(ops.len()) {
                                let _ = j.write(&ops);
                            }
                        }
                        checkpoint(shared, db, disk, j)
                    }
                }
            }
        };
        shared
            .flushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shared
            .in_flush
            .store(0, std::sync::atomic::Ordering::SeqCst);
        // Looked at here, before the waiters are woken: a lone writer
        // registers its next wait as soon as it is woken, often before the
        // loop locks again, and would look concurrent there (tried: `admit
        // x1` fell from ≈ 6000 to 2785 items/s).
        {
            let st = shared.state.lock();
            concurrent = full.len() + light.len() > 1
                || !st.journal_waiters.is_empty()
                || !st.waiters.is_empty();
        }
        for w in full.into_iter().chain(light) {
            // A waiter that went away (its session was dropped) is fine.
            let _ = w.send(result.clone());
        }
    }
}

/// sled's flush, the fsyncs it leaves out, then a new journal generation.
fn checkpoint(
    shared: &Shared,
    db: &sled::Db,
    disk: &mut DiskSync,
    journal: Option<&mut Journal>,
) -> Result<(), FlushError> {
    shared
        .dirty
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let flushed = db
        .flush()
        .map_err(|e| FlushError::Database(Arc::new(e)))
        .and_then(|_| disk.sync().map_err(|e| FlushError::Fsync(Arc::new(e))));
    if let Err(e) = flushed {
        // What set the flag is not on disk yet.
        shared
            .dirty
            .store(true, std::sync::atomic::Ordering::SeqCst);
        return Err(e);
    }
    shared
        .checkpoints
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match journal {
        Some(j) => j.restart().or_else(|e| {
            // The header still names a generation that is all in sled now
            // and whose log may have a gap: say so in sled (`journal.rs`).
            // Then what the waiters wrote is on disk, and replaying the
            // old generation can no longer undo any of it.
            let covered = j.next_generation();
            tracing::warn!(error = %e, "the intake journal could not start a new generation; recording in the database that its records are covered");
            db.open_tree("meta")
                .and_then(|meta| meta.insert(crate::journal::COVERED_KEY, &covered.to_le_bytes()))
                .and_then(|_| db.flush())
                .map(|_| ())
                .map_err(|f| FlushError::Covered {
                    journal: Arc::new(e),
                    database: Arc::new(f),
                })
        }),
        None => Ok(()),
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.state.lock().shutdown = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
