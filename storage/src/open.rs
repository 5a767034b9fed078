//! Opening a store: the format and key checks, the journal's replay,
//! recovery of the schedule, and the sweep of stale temporary stores.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::flusher::Flusher;
use super::seal::Sealer;
use super::space::Space;
use super::{accounts, fetch, flusher, journal, replay, seal};
use super::{
    db_err, private_dir, release_of, schedule_key, Counts, Item, ItemState, Result, SealKey,
    StorageError, Store, FORMAT_KEY, FORMAT_VERSION, HELD, LOCK_WAIT, SEAL_CHECK_KEY,
};

impl Store {
    /// Open (or create) the database in `dir`.
    ///
    /// Crash behaviour: items that were in flight when the process died are
    /// put back on the schedule at their old release time, which is in the
    /// past, so they are due at once (at-least-once delivery).
    ///
    /// sled releases its file lock from background threads a moment after
    /// the last handle is dropped, so reopening in the same process retries
    /// a lock conflict for up to [`LOCK_WAIT`] before reporting it (another
    /// process holding the database gets the error after that wait).
    ///
    /// Everything users gave is sealed under `key` (see `seal.rs`); a store
    /// made under another key is refused with [`StorageError::Key`]. `dir`
    /// is created with mode 0700 (and set to 0700 if it exists); content
    /// files are created 0600.
    pub fn open(dir: &Path, cache_bytes: u64, key: &SealKey) -> Result<Arc<Self>> {
        private_dir(dir).map_err(|source| StorageError::Io {
            doing: "creating the data directory",
            source,
        })?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // We flush explicitly (group commit); sled's timer flush would only
            // add fsyncs that nobody waits for.
            .flush_every_ms(None);
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(db_err("opening the database")(e)),
            }
        };
        Self::from_db(db, Some(dir.to_path_buf()), dir.join("content"), key)
    }

    /// A throw-away store in a temporary directory (under the system's
    /// temp dir, removed when the store is dropped), for tests and
    /// simulations. Its key is random: nothing in it outlives the process.
    ///
    /// Not sled's own `temporary` mode: that puts the database in
    /// `/dev/shm` (memory) and leaves it there when a process ends without
    /// dropping it, which piled up hundreds of MB of RAM over test runs.
    pub fn temporary() -> Result<Arc<Self>> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(sweep_temporary);
        let base = std::env::temp_dir().join(format!(
            "dust-temporary-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        private_dir(&base).map_err(|source| StorageError::Io {
            doing: "creating a temporary store",
            source,
        })?;
        let db = sled::Config::new()
            .path(base.join("db"))
            .temporary(true)
            .flush_every_ms(None)
            .open()
            .map_err(db_err("opening a temporary database"))?;
        Self::from_db(db, None, base.join("content"), &SealKey::random())
    }

    fn from_db(
        db: sled::Db,
        dir: Option<PathBuf>,
        content_dir: PathBuf,
        key: &SealKey,
    ) -> Result<Arc<Self>> {
        let temporary_content = dir.is_none();
        let space = Arc::new(Space::new(dir.clone()));
        fetch::open_content_dir(&content_dir).map_err(|source| StorageError::Io {
            doing: "creating the content directory",
            source,
        })?;
        let meta = db.open_tree("meta").map_err(db_err("opening tree meta"))?;
        match meta.get(FORMAT_KEY).map_err(db_err("reading the format"))? {
            Some(v) if v.as_ref() == [FORMAT_VERSION] => {}
            Some(v) => {
                return Err(StorageError::Format {
                    found: v.first().copied().unwrap_or(0),
                })
            }
            None => {
                meta.insert(FORMAT_KEY, &[FORMAT_VERSION])
                    .map_err(db_err("writing the format"))?;
            }
        }
        let sealer = Arc::new(Sealer::new(key));
        match meta
            .get(SEAL_CHECK_KEY)
            .map_err(db_err("reading the key check"))?
        {
            Some(v) if seal::key_matches(&sealer, &v) => {}
            Some(_) => return Err(StorageError::Key),
            None => {
                meta.insert(SEAL_CHECK_KEY, seal::check_value(&sealer))
                    .map_err(db_err("writing the key check"))?;
            }
        }
        let items = db
            .open_tree("items")
            .map_err(db_err("opening tree items"))?;
        let schedule = db
            .open_tree("schedule")
            .map_err(db_err("opening tree schedule"))?;
        let fetches = db
            .open_tree("fetches")
            .map_err(db_err("opening tree fetches"))?;
        let chunks = db
            .open_tree("chunks")
            .map_err(db_err("opening tree chunks"))?;
        let replay = replay::Replay::open(&db, key)?;
        let accounts = accounts::AccountTrees::open(&db, key)?;
        let covered = meta
            .get(journal::COVERED_KEY)
            .map_err(db_err("reading the journal's covered generation"))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0);
        // Once a store has had a journal with MACs, one without is never
        // replayed (recorded durably before the first such journal is
        // used).
        let first_format = meta
            .get(journal::V2_KEY)
            .map_err(db_err("reading the journal's format"))?
            .is_none();
        if first_format && dir.is_some() {
            meta.insert(journal::V2_KEY, &[1])
                .map_err(db_err("writing the journal's format"))?;
            db.flush().map_err(db_err("writing the journal's format"))?;
        }
        let (journal, replayed) = match &dir {
            None => (None, 0),
            Some(d) => {
                match journal::Journal::open(
                    d,
                    covered,
                    key.derive(b"dustmote journal mac"),
                    first_format,
                ) {
                    Ok(Some((j, ops))) => {
                        let n = ops.len();
                        replay_journal(&items, &replay, &accounts, ops)?;
                        (Some(j), n)
                    }
                    // No room for it (a restart on a nearly full disk): every
                    // durable write is then a sled flush, as without a journal.
                    Ok(None) => {
                        tracing::warn!("no room for the intake journal; every write is made durable by a full flush until a restart with space");
                        (None, 0)
                    }
                    Err(e) => {
                        return Err(StorageError::Io {
                            doing: "reading the intake journal",
                            source: e,
                        })
                    }
                }
            }
        };
        let flusher = Flusher::start(db.clone(), dir, journal)
            .map_err(|e| flusher::FlushError::Start(Arc::new(e)))?;
        let store = Self {
            db,
            meta,
            items,
            schedule,
            fetches,
            chunks,
            content_dir,
            temporary_content,
            counts: Counts::default(),
            replay,
            accounts,
            sealer,
            space,
            flusher,
        };
        if replayed > 0 {
            store.drop_stale_schedule()?;
        }
        store.count_schedule()?;
        store.recover()?;
        store.remove_orphan_content()?;
        if replayed > 0 {
            // Into sled and onto the disk; then the journal starts over.
            // Not awaited (`open` may run inside a runtime): until it is
            // done, a crash replays the same ops again.
            store.flusher.request_checkpoint()?;
            tracing::info!(ops = replayed, "intake journal replayed");
        }
        Ok(Arc::new(store))
    }

    /// After a crash (the journal had ops): remove schedule entries that
    /// point to no queued item at that time. The schedule is not in the
    /// journal; sled may have written an entry whose removal it had not,
    /// and the counts would show it until its time came.
    fn drop_stale_schedule(&self) -> Result<()> {
        for k in self.schedule.iter().keys() {
            let k = k.map_err(db_err("checking the schedule after a crash"))?;
            let mut id = [0u8; 16];
            id.copy_from_slice(&k[8..24]);
            let live = match self
                .items
                .get(id)
                .map_err(db_err("checking the schedule after a crash"))?
            {
                None => false,
                Some(v) => {
                    let item = Item::decode(&id, &v, &self.sealer)?;
                    schedule_key(item.release_ms, &item.id) == k.as_ref()
                }
            };
            if !live {
                self.schedule
                    .remove(&k)
                    .map_err(db_err("checking the schedule after a crash"))?;
            }
        }
        Ok(())
    }

    /// Count the schedule's entries (keys only). Runs once at open.
    fn count_schedule(&self) -> Result<()> {
        let (mut all, mut held) = (0, 0);
        for k in self.schedule.iter().keys() {
            let k = k.map_err(db_err("counting the schedule"))?;
            all += 1;
            if release_of(&k) == HELD {
                held += 1;
            }
        }
        self.counts.scheduled.store(all, Ordering::Relaxed);
        self.counts.held.store(held, Ordering::Relaxed);
        Ok(())
    }

    /// Put in-flight items back on the schedule, and repair any queued item
    /// whose schedule entry is missing. Runs once at open; counts the items.
    fn recover(&self) -> Result<()> {
        let mut count = 0;
        for kv in self.items.iter() {
            let (k, v) = kv.map_err(db_err("scanning items at recovery"))?;
            count += 1;
            self.counts.items.store(count, Ordering::Relaxed);
            let item = Item::decode(&k, &v, &self.sealer)?;
            let key = schedule_key(item.release_ms, &item.id);
            if item.state == ItemState::InFlight {
                let mut queued = item.clone();
                queued.state = ItemState::Queued;
                self.put(&queued)?;
            } else if !self
                .schedule
                .contains_key(key)
                .map_err(db_err("checking the schedule at recovery"))?
            {
                self.insert_schedule(key, "repairing the schedule")?;
            }
        }
        Ok(())
    }
}

/// Remove the temporary stores of processes that are gone (a process that
/// exits without dropping its store, e.g. a test that panics or is killed,
/// leaves its directory behind). A directory is `dust-temporary-PID-…`; it
/// is left alone while a process with that PID exists.
fn sweep_temporary() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("dust-temporary-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Apply the intake journal's ops (see `journal.rs`) to sled, in order, at
/// open: what was acknowledged since the last checkpoint.
fn replay_journal(
    items: &sled::Tree,
    replay: &replay::Replay,
    accounts: &accounts::AccountTrees,
    ops: Vec<journal::Op>,
) -> Result<()> {
    for op in ops {
        match op {
            journal::Op::Put { id, value } => {
                items
                    .insert(id, value)
                    .map_err(db_err("replaying the journal"))?;
            }
            journal::Op::Remove { id } => {
                items.remove(id).map_err(db_err("replaying the journal"))?;
            }
            journal::Op::Digest { key, expiry } => replay.restore(&key, expiry)?,
            journal::Op::Usage { key, value } => accounts.restore_usage(&key, &value)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod sweep_tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn stale_temporary_stores_are_removed_live_ones_kept() {
        // Above Linux's largest pid_max (2^22): no such process can exist.
        let dead = std::env::temp_dir().join("dust-temporary-4194305-0-1");
        let live =
            std::env::temp_dir().join(format!("dust-temporary-{}-999999-1", std::process::id()));
        for d in [&dead, &live] {
            std::fs::create_dir_all(d.join("db")).unwrap();
        }
        super::sweep_temporary();
        assert!(!dead.exists());
        assert!(live.exists());
        std::fs::remove_dir_all(&live).unwrap();
    }
}
