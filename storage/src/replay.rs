//! Replay suppression: the same admission (same digest, computed by the
//! caller from the envelope and the message) seen again within a window is
//! acknowledged without being stored a second time. A client that resends
//! because it never saw our 250 (a timeout, a dropped connection) must not
//! make the message leave twice: two copies with one Message-ID are a
//! linkable signal, and recipients notice.
//!
//! Only keyed digests are kept (tree `replay`: BLAKE2b-256 of a key derived
//! from the sealing key and the caller's digest → expiry, ms since the
//! epoch, big endian); no content. Without the sealing key, a digest on the
//! disk cannot be tested against a guessed message. Expired entries are
//! ignored, and pruned a few at a time: each admission looks at the next
//! [`PRUNE_STEP`] entries after the last one looked at, wrapping around, so
//! no admission pays for a scan of the whole tree (SMTP admits on an async
//! task) and the tree stays within 4/3 of the digests in their window.

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use parking_lot::Mutex;

use crate::{db_err, journal, Item, Result, SealKey, Store};

/// Entries looked at (and removed if expired) per new admission: more
/// than the one each admission adds.
const PRUNE_STEP: usize = 4;

/// The replay state of a store.
pub(crate) struct Replay {
    tree: sled::Tree,
    key: [u8; 32],
    /// Serializes check-and-insert; the last key pruning looked at (`None`:
    /// start from the first).
    lock: Mutex<Option<sled::IVec>>,
}

impl Replay {
    /// Open the `replay` tree; its digest key is derived from the sealing key.
    pub(crate) fn open(db: &sled::Db, key: &SealKey) -> Result<Self> {
        let tree = db
            .open_tree("replay")
            .map_err(db_err("opening tree replay"))?;
        let key = key.derive(b"dustmote replay digests");
        Ok(Self {
            tree,
            key,
            lock: Mutex::new(None),
        })
    }

    fn keyed(&self, digest: &[u8]) -> [u8; 32] {
        Blake2b::<U32>::new()
            .chain_update(self.key)
            .chain_update(digest)
            .finalize()
            .into()
    }

    /// A digest from the intake journal, at open.
    pub(crate) fn restore(&self, key: &[u8; 32], expiry: [u8; 8]) -> Result<()> {
        self.tree
            .insert(key, &expiry)
            .map_err(db_err("replaying a digest"))?;
        Ok(())
    }

    /// Look at the next [`PRUNE_STEP`] entries after `cursor`.
    fn prune_step(&self, cursor: &mut Option<sled::IVec>, now_ms: u64) -> Result<()> {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = match cursor.take() {
            Some(k) => Excluded(k),
            None => Unbounded,
        };
        for kv in self
            .tree
            .range::<sled::IVec, _>((from, Unbounded))
            .take(PRUNE_STEP)
        {
            let (k, v) = kv.map_err(db_err("scanning replay digests"))?;
            if expiry(&v) <= now_ms {
                self.tree
                    .remove(&k)
                    .map_err(db_err("pruning a replay digest"))?;
            }
            *cursor = Some(k);
        }
        Ok(())
    }
}

/// An admission's replay digest, its time and the end of its window (ms
/// since the epoch), and whether item and digest go in one transaction
/// (see [`Store::admit_once_blocking`]).
#[derive(Debug, Clone, Copy)]
pub struct OnceAt<'a> {
    /// The caller's digest of the admission.
    pub digest: &'a [u8],
    /// Now.
    pub now_ms: u64,
    /// When the digest is forgotten.
    pub expires_ms: u64,
    /// Item and digest in one transaction.
    pub exact: bool,
}

fn expiry(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

impl Store {
    /// [`admit_once_blocking`](Self::admit_once_blocking) without a
    /// blocking thread: the writes are made on the calling task (sled's
    /// writes are in memory) and the journal is awaited.
    pub async fn admit_once(&self, item: &Item, once: OnceAt<'_>) -> Result<bool> {
        let new = self.write_once(item, once)?;
        self.flusher.sync_journal().await?;
        Ok(new)
    }

    /// Like [`admit_blocking`](Self::admit_blocking), unless an admission
    /// with the same digest happened before `once.now_ms` and its window
    /// has not ended: then nothing is stored and this returns `false`
    /// (after a flush, so the earlier copy is on disk when the caller
    /// acknowledges). A new admission's digest is kept until
    /// `once.expires_ms`.
    ///
    /// Crash behaviour: without `once.exact`, the item is written before
    /// its digest, so a crash can lose a digest (a resend is then stored
    /// again) but never keeps a digest without its item. With it, item and
    /// digest are written in one sled transaction, so after any crash
    /// either both are on disk or neither is: for transfers between motes
    /// (a sender that got no answer sends again, and the second copy must
    /// be recognized even if the first was stored just before a crash);
    /// slower than the SMTP path.
    pub fn admit_once_blocking(&self, item: &Item, once: OnceAt<'_>) -> Result<bool> {
        let new = self.write_once(item, once)?;
        self.flusher.sync_journal_blocking()?;
        Ok(new)
    }

    /// The writes of an admission once per digest; whether it was new.
    fn write_once(&self, item: &Item, once: OnceAt<'_>) -> Result<bool> {
        let OnceAt {
            digest,
            now_ms,
            expires_ms,
            exact,
        } = once;
        let r = &self.replay;
        let key = r.keyed(digest);
        let new = {
            let mut cursor = r.lock.lock();
            let seen = r
                .tree
                .get(key)
                .map_err(db_err("reading a replay digest"))?
                .is_some_and(|v| expiry(&v) > now_ms);
            if !seen {
                self.space.check(item.payload.len() as u64)?;
                r.prune_step(&mut cursor, now_ms)?;
                if exact {
                    self.put_with_digest(item, &key, expires_ms)?;
                } else {
                    self.put(item)?;
                    r.tree
                        .insert(key, &expires_ms.to_be_bytes())
                        .map_err(db_err("writing a replay digest"))?;
                    self.flusher
                        .append(|ops| journal::digest(ops, &key, expires_ms.to_be_bytes()));
                }
            }
            !seen
        };
        Ok(new)
    }

    /// The item and its digest in one transaction, then its schedule
    /// entry: a crash before that leaves a queued item without one, which
    /// recovery at the next open repairs (as for every admission).
    fn put_with_digest(&self, item: &Item, key: &[u8; 32], expires_ms: u64) -> Result<()> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;
        let value = item.encode(&self.sealer);
        (&self.items, &self.replay.tree)
            .transaction(|(items, digests)| {
                items.insert(&item.id.0, value.as_slice())?;
                digests.insert(key, &expires_ms.to_be_bytes())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => db_err("writing an item and its digest")(e),
                TransactionError::Abort(()) => unreachable_abort(),
            })?;
        self.flusher.append(|ops| {
            journal::put(ops, &item.id.0, &value);
            journal::digest(ops, key, expires_ms.to_be_bytes());
        });
        self.counted_new_item();
        self.schedule_item(item)
    }

    /// Whether an admission with `digest` happened and its window has not
    /// ended at `now_ms` (a transfer that is about to write more than its
    /// item checks first).
    pub fn digest_seen(&self, digest: &[u8], now_ms: u64) -> Result<bool> {
        let key = self.replay.keyed(digest);
        Ok(self
            .replay
            .tree
            .get(key)
            .map_err(db_err("reading a replay digest"))?
            .is_some_and(|v| expiry(&v) > now_ms))
    }

    /// Replay digests kept now (expired ones not yet pruned included).
    pub fn replay_digests(&self) -> usize {
        self.replay.tree.len()
    }
}

/// The transaction above never aborts by itself.
fn unreachable_abort() -> crate::StorageError {
    crate::StorageError::Corrupt {
        doing: "writing an item and its digest",
        what: "a transaction aborted without a reason".into(),
    }
}
