//! The intake journal: a redo log of the `items` tree (and the replay
//! digests written with admissions) that makes an admission or a
//! completion durable with one `pwrite` + `fdatasync` of a preallocated
//! file, instead of a sled `flush()`.
//!
//! Why: sled 0.34.7's `flush()` hands the write of its log buffer to its
//! own thread pool, whose queue wakes all seven idle pool threads for every
//! job (`notify_all`). Measured under `smtp-source` (10 sessions, 2 KiB
//! messages): those wake-ups cost the mote ≈ 78 µs of CPU and ≈ 4.5 context
//! switches per message, a fifth of its CPU. The journal is written by the
//! flusher thread itself; sled is flushed only at a *checkpoint* (when a
//! caller asks for a full [`sync`](crate::Store::sync), or when the journal
//! is full), after which the journal starts over.
//!
//! Correctness:
//! - Every write to the `items` tree appends an op here *after* it was made
//!   in sled, by the item's one owner at a time (admission, the schedule
//!   loop, one delivery task), so for each key the journal's order is
//!   sled's order.
//! - A writer appends its ops before it registers as a waiter, and the
//!   flusher takes the waiters and the pending ops in one critical section:
//!   every op of every waiter it wakes was written by then (or by an
//!   earlier batch).
//! - A checkpoint's sled flush starts after the ops it covers were
//!   appended, hence after their sled writes: once it (and the fsyncs sled
//!   leaves out) finished, the journal's records are redundant, and a new
//!   generation starts (the header is rewritten and synced; records of an
//!   older generation are ignored).
//! - A checkpoint still writes its batch's ops when they fit: if it then
//!   fails to start a new generation, the journal is still a complete log
//!   of its generation, and a replay cannot undo a later write.
//! - A checkpoint whose sled flush succeeded but whose new generation
//!   could not be started (the header write failed) leaves the file naming
//!   a generation that is all in sled, and whose log may have a gap (a
//!   batch that did not fit, or whose write failed): replaying it could
//!   undo a later write (bring back a delivered item). The checkpoint then
//!   records in sled's `meta` tree, with a second flush, that generations
//!   below the next one are covered ([`COVERED_KEY`]); `open` ignores them
//!   and starts at least there. Only this failure path pays the flush.
//! - At open, the records of the current generation are replayed in order
//!   (puts and removes are idempotent as a sequence), then a checkpoint
//!   runs. A torn batch at the tail fails its MAC and is ignored: none of
//!   its writers was answered.
//!
//! Integrity: each batch carries a MAC (BLAKE2b-MAC-128, keyed with a
//! subkey of the sealing key) over its generation, offset, length and
//! body, and the header one over its generation. Without the key nobody can
//! write a batch the replay applies: a forged op (a `Remove` of an
//! acknowledged message, a record that does not open) is never replayed.
//! A batch that does not verify ends the replay there, exactly like a torn
//! tail, and the batches before it are kept: the store opens, never
//! bricked by a bad journal (a warning says the replay stopped early). A
//! header that does not verify means nothing of the file is trusted: it is
//! made anew (zeroed), with a warning. What a MAC cannot stop: whoever can
//! write the file can cut it short or put an older copy of it back (their
//! writers' work is then lost, or delivered twice); the data directory is
//! 0700 and the file 0600 for that.
//!
//! Also journaled: an account's usage counters after each update (the
//! value after it, written under a lock with the update so that the
//! journal's order is sled's), so that an account user's admission, which
//! counts usage first, needs no checkpoint either.
//!
//! File: a 4 KiB header (`MAGIC`, generation, MAC), then batches, each
//! framed as generation (u64 LE), length (u32 LE), MAC (16 bytes), body.
//! A journal of the first format (`MAGIC_V1`: a CRC-32 instead of a MAC)
//! left by an older build is replayed once as it is, then replaced; only
//! on a store that never had one of this format ([`V2_KEY`]): otherwise
//! anyone could write CRC-32 batches and claim that format. The file is preallocated and zero-filled once, so that
//! an `fdatasync` flushes data only (no file-size metadata to commit). What
//! it holds is what sled holds: sealed item records and keyed digests.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Set in sled's `meta` tree once the store has had a journal of this
/// format: from then on a first-format journal (no MAC) is never replayed
/// (a downgrade is a forgery).
pub(crate) const V2_KEY: &[u8] = b"journal_v2";

/// The journal's file name in the data directory.
pub(crate) const FILE: &str = "journal";
/// Size of the journal (header included). A checkpoint runs when a batch
/// would not fit: at 2 KiB messages, about every 1,800 admissions.
pub(crate) const CAPACITY: u64 = 4 * 1024 * 1024;
const HEADER: u64 = 4096;
const MAGIC: &[u8; 8] = b"dustjnl2";
/// The first format: batches checked by a CRC-32 only.
const MAGIC_V1: &[u8; 8] = b"dustjnl1";
/// A batch's frame: generation, length, MAC.
const FRAME: usize = 8 + 4 + MAC_BYTES;
const FRAME_V1: usize = 16;
const MAC_BYTES: usize = 16;
/// The header: magic, generation, MAC.
const HEADER_USED: usize = 8 + 8 + MAC_BYTES;
/// Key in sled's `meta` tree: generations below this one (u64 LE) are all
/// in sled, whatever the journal's header says (see the module's notes).
pub(crate) const COVERED_KEY: &[u8] = b"journal_covered";

/// Journal I/O operations still to fail, for tests of the failure paths
/// (set through [`fail_io`]).
static FAIL_IO: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Make the journal's next `n` writes (batches or headers) fail as an I/O
/// error would. For tests of what a failing disk does; process-wide.
#[doc(hidden)]
pub fn fail_io(n: u32) {
    FAIL_IO.store(n, std::sync::atomic::Ordering::SeqCst);
}

/// An injected failure, if one is due.
fn injected() -> std::io::Result<()> {
    let due = FAIL_IO
        .fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| n.checked_sub(1),
        )
        .is_ok();
    if due {
        Err(std::io::Error::other("injected journal I/O failure"))
    } else {
        Ok(())
    }
}

const PUT: u8 = 1;
const REMOVE: u8 = 2;
const DIGEST: u8 = 3;
const USAGE: u8 = 4;

/// One write to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// `items[id] = value` (a sealed item record).
    Put { id: [u8; 16], value: Vec<u8> },
    /// `items.remove(id)`.
    Remove { id: [u8; 16] },
    /// `replay[key] = expiry` (big-endian ms).
    Digest { key: [u8; 32], expiry: [u8; 8] },
    /// `usage[key] = counters` (an account's day, after an update).
    Usage { key: [u8; 36], value: [u8; 32] },
}

/// Append the encoding of a put to `buf`.
pub(crate) fn put(buf: &mut Vec<u8>, id: &[u8; 16], value: &[u8]) {
    buf.push(PUT);
    buf.extend_from_slice(id);
    buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
    buf.extend_from_slice(value);
}

/// Append the encoding of a removal to `buf`.
pub(crate) fn remove(buf: &mut Vec<u8>, id: &[u8; 16]) {
    buf.push(REMOVE);
    buf.extend_from_slice(id);
}

/// Append the encoding of a replay digest to `buf`.
pub(crate) fn digest(buf: &mut Vec<u8>, key: &[u8; 32], expiry: [u8; 8]) {
    buf.push(DIGEST);
    buf.extend_from_slice(key);
    buf.extend_from_slice(&expiry);
}

/// Append the encoding of an account's usage counters to `buf`.
pub(crate) fn usage(buf: &mut Vec<u8>, key: &[u8; 36], value: &[u8; 32]) {
    buf.push(USAGE);
    buf.extend_from_slice(key);
    buf.extend_from_slice(value);
}

/// Decode a batch body; `None` if it is malformed (then nothing of it is
/// applied: a verified batch we cannot parse is a bug).
pub(crate) fn decode(mut body: &[u8]) -> Option<Vec<Op>> {
    let mut ops = Vec::new();
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Some(h)
    }
    while let Some(kind) = take(&mut body, 1) {
        match kind[0] {
            PUT => {
                let id = take(&mut body, 16)?.try_into().ok()?;
                let len = u32::from_le_bytes(take(&mut body, 4)?.try_into().ok()?) as usize;
                let value = take(&mut body, len)?.to_vec();
                ops.push(Op::Put { id, value });
            }
            REMOVE => ops.push(Op::Remove {
                id: take(&mut body, 16)?.try_into().ok()?,
            }),
            DIGEST => ops.push(Op::Digest {
                key: take(&mut body, 32)?.try_into().ok()?,
                expiry: take(&mut body, 8)?.try_into().ok()?,
            }),
            USAGE => ops.push(Op::Usage {
                key: take(&mut body, 36)?.try_into().ok()?,
                value: take(&mut body, 32)?.try_into().ok()?,
            }),
            _ => return None,
        }
    }
    Some(ops)
}

/// The key of the journal's MACs (a subkey of the sealing key).
pub(crate) type MacKey = [u8; 32];

type Blake2bMac128 = blake2::Blake2bMac<blake2::digest::consts::U16>;

/// The MAC of a batch at `offset` of `generation`, or (`offset` 0) of the
/// header, before its last step: `finalize` makes it, `verify_slice`
/// checks one (in constant time).
fn mac(key: &MacKey, generation: u64, offset: u64, body: &[u8]) -> Blake2bMac128 {
    use blake2::digest::Mac;
    let mut m = <Blake2bMac128 as Mac>::new_from_slice(key).expect("BLAKE2b takes a 32-byte key");
    m.update(&generation.to_le_bytes());
    m.update(&offset.to_le_bytes());
    m.update(&(body.len() as u64).to_le_bytes());
    m.update(body);
    m
}

/// The first format's check of a batch.
fn crc(generation: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&generation.to_le_bytes());
    h.update(&(body.len() as u32).to_le_bytes());
    h.update(body);
    h.finalize()
}

/// The open journal file (owned by the flusher thread).
pub(crate) struct Journal {
    file: File,
    key: MacKey,
    generation: u64,
    /// Where the next batch goes.
    offset: u64,
    /// A write failed: the next batch must checkpoint (an op may be
    /// missing from the file, so later records must not be relied on).
    broken: bool,
}

impl Journal {
    /// Open the journal in `dir`, creating and preallocating it if needed,
    /// and return it with the ops of its current generation, in order.
    /// `covered`: generations below it are all in sled (read from
    /// [`COVERED_KEY`]); their records are not returned, and the journal
    /// goes on at `covered` at least.
    /// `None`: there was none and there is no room to make one (a restart
    /// on a nearly full disk); the store then goes without. `key` makes and
    /// checks the MACs. `first_format`: a journal of the first format may
    /// be replayed (the store never had one of this format, see
    /// [`V2_KEY`]); otherwise one is treated like a header that does not
    /// verify.
    pub(crate) fn open(
        dir: &Path,
        covered: u64,
        key: MacKey,
        first_format: bool,
    ) -> std::io::Result<Option<(Self, Vec<Op>)>> {
        let path = dir.join(FILE);
        // Never through a symbolic link (it would have the journal
        // overwrite a file elsewhere with zeros), and only a regular file.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => {
                    std::io::Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "{} is a symbolic link; the journal is never written through one",
                            path.display()
                        ),
                    )
                }
                _ => e,
            })?;
        if !file.metadata()?.file_type().is_file() {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        let mut header = [0u8; HEADER_USED];
        let have = file.metadata()?.len();
        // A read error other than a short file is reported, not taken for
        // a missing journal (which would be zeroed).
        let read = match file.read_exact_at(&mut header, 0) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => false,
            Err(e) => return Err(e),
        };
        let generation = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        // What the header is: one of this format (its MAC verifies, so its
        // generation is this key's, whatever its magic says), or one of
        // the first format (on a store that never had this one), or
        // nothing to trust.
        let whole = have >= CAPACITY && read;
        let tag = &header[16..HEADER_USED];
        let verified = whole
            && blake2::digest::Mac::verify_slice(mac(&key, generation, 0, MAGIC), tag).is_ok();
        let v1 = whole && !verified && &header[..8] == MAGIC_V1 && first_format;
        let valid = verified || v1;
        if verified && &header[..8] != MAGIC {
            tracing::warn!(
                "the intake journal's header was altered (its magic), but its MAC verifies: it \
                 is replayed as what it is"
            );
        } else if whole && !valid && header.iter().any(|b| *b != 0) {
            tracing::warn!(
                "the intake journal's header does not verify (altered, made with another key, \
                 or claiming the first format on a store that has had this one): nothing of it \
                 is replayed, and it is made anew"
            );
        }
        if !valid {
            // New (or cut short by a crash while it was being made):
            // zero-fill it, then write the header, so that later writes
            // only overwrite allocated blocks.
            let zeros = vec![0u8; 1 << 20];
            let mut at = 0;
            let mut j = Self {
                file,
                key,
                generation: 0,
                offset: HEADER,
                broken: false,
            };
            let made = (|| {
                while at < CAPACITY {
                    j.file.write_all_at(&zeros, at)?;
                    at += zeros.len() as u64;
                }
                j.start_generation(covered.max(1))?;
                File::open(dir)?.sync_all()
            })();
            return match made {
                Ok(()) => Ok(Some((j, Vec::new()))),
                Err(e) if e.raw_os_error() == Some(28) => {
                    // ENOSPC: nothing was in it (no valid header before).
                    drop(j);
                    std::fs::remove_file(&path)?;
                    Ok(None)
                }
                Err(e) => Err(e),
            };
        }
        if generation < covered {
            let mut j = Self {
                file,
                key,
                generation,
                offset: HEADER,
                broken: false,
            };
            j.start_generation(covered)?;
            return Ok(Some((j, Vec::new())));
        }
        let mut ops = Vec::new();
        let mut offset = HEADER;
        let mut batches = 0usize;
        let mut stopped = false;
        let frame_len = if v1 { FRAME_V1 } else { FRAME };
        let mut reader = std::io::BufReader::with_capacity(1 << 20, &file);
        std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(HEADER))?;
        loop {
            let mut frame = [0u8; FRAME];
            match reader.read_exact(&mut frame[..frame_len]) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            let g = u64::from_le_bytes(frame[..8].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(frame[8..12].try_into().expect("4 bytes")) as u64;
            if g != generation || offset + frame_len as u64 + len > CAPACITY {
                break; // the end of this generation's batches
            }
            let mut body = vec![0u8; len as usize];
            reader.read_exact(&mut body)?;
            let good = if v1 {
                crc(g, &body) == u32::from_le_bytes(frame[12..16].try_into().expect("4 bytes"))
            } else {
                let tag = &frame[12..FRAME];
                blake2::digest::Mac::verify_slice(mac(&key, g, offset, &body), tag).is_ok()
            };
            let batch = if good { decode(&body) } else { None };
            let Some(batch) = batch else {
                // A batch cut by a crash (none of its writers was
                // answered), or one nobody with the key wrote: the replay
                // ends here, and keeps what came before.
                tracing::warn!(
                    batches,
                    "the intake journal's replay stopped at a batch that does not verify: a \
                     write cut by a crash, or (if the mote did not crash) an altered journal"
                );
                stopped = true;
                break;
            };
            ops.extend(batch);
            batches += 1;
            offset += frame_len as u64 + len;
        }
        Ok(Some((
            Self {
                file,
                key,
                generation,
                offset,
                // A journal of the first format takes no more batches:
                // the next one checkpoints, and the file goes on in this
                // format. Nor does one whose replay stopped early: batches
                // of this generation may follow the bad one, and a new
                // batch ending where one of them begins would bring it
                // back at the next replay.
                broken: v1 || stopped,
            },
            ops,
        )))
    }

    /// Whether a batch of `len` body bytes fits (and may be written).
    pub(crate) fn fits(&self, len: usize) -> bool {
        !self.broken && self.offset + (FRAME + len) as u64 <= CAPACITY
    }

    /// Write one batch and `fdatasync` it.
    pub(crate) fn write(&mut self, body: &[u8]) -> std::io::Result<()> {
        let tag = mac(&self.key, self.generation, self.offset, body);
        let mut frame = Vec::with_capacity(FRAME + body.len());
        frame.extend_from_slice(&self.generation.to_le_bytes());
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&blake2::digest::Mac::finalize(tag).into_bytes());
        frame.extend_from_slice(body);
        let written = injected()
            .and_then(|()| self.file.write_all_at(&frame, self.offset))
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.offset += frame.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// After a checkpoint: everything in the file is in sled and on disk;
    /// start the next generation at the beginning.
    pub(crate) fn restart(&mut self) -> std::io::Result<()> {
        self.start_generation(self.next_generation())
    }

    /// The generation the next [`restart`](Self::restart) starts: every
    /// one below it is in sled once a checkpoint's flush succeeded.
    pub(crate) fn next_generation(&self) -> u64 {
        self.generation + 1
    }

    fn start_generation(&mut self, generation: u64) -> std::io::Result<()> {
        let mut header = [0u8; HEADER_USED];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&generation.to_le_bytes());
        let tag = blake2::digest::Mac::finalize(mac(&self.key, generation, 0, MAGIC));
        header[16..].copy_from_slice(&tag.into_bytes());
        if let Err(e) = injected()
            .and_then(|()| self.file.write_all_at(&header, 0))
            .and_then(|()| self.file.sync_data())
        {
            // Nothing more is written to this generation: the next batch
            // checkpoints and tries again.
            self.broken = true;
            return Err(e);
        }
        self.generation = generation;
        self.offset = HEADER;
        self.broken = false;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn body(ops: &[Op]) -> Vec<u8> {
        let mut b = Vec::new();
        for op in ops {
            match op {
                Op::Put { id, value } => put(&mut b, id, value),
                Op::Remove { id } => remove(&mut b, id),
                Op::Digest { key, expiry } => digest(&mut b, key, *expiry),
                Op::Usage { key, value } => usage(&mut b, key, value),
            }
        }
        b
    }

    const KEY: MacKey = [7; 32];

    fn sample() -> Vec<Op> {
        vec![
            Op::Put {
                id: [1; 16],
                value: b"sealed".to_vec(),
            },
            Op::Digest {
                key: [2; 32],
                expiry: 7u64.to_be_bytes(),
            },
            Op::Remove { id: [1; 16] },
            Op::Usage {
                key: [3; 36],
                value: [4; 32],
            },
        ]
    }

    #[test]
    fn ops_round_trip_and_a_cut_batch_is_refused() {
        let ops = sample();
        let b = body(&ops);
        assert_eq!(decode(&b), Some(ops));
        assert_eq!(decode(&b[..b.len() - 1]), None);
        assert_eq!(decode(&[9]), None);
    }

    #[test]
    fn batches_replay_in_order_until_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, ops) = Journal::open(dir.path(), 0, KEY, false).unwrap().unwrap();
        assert!(ops.is_empty());
        let meta = std::fs::metadata(dir.path().join(FILE)).unwrap();
        assert_eq!(meta.len(), CAPACITY);
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600
        );
        let s = sample();
        j.write(&body(&s[..2])).unwrap();
        j.write(&body(&s[2..])).unwrap();
        drop(j);
        let (mut j, ops) = Journal::open(dir.path(), 0, KEY, false).unwrap().unwrap();
        assert_eq!(ops, s);
        // A checkpoint: the old records no longer count, even though their
        // bytes are still in the file.
        j.restart().unwrap();
        j.write(&body(&s[2..])).unwrap();
        drop(j);
        let (_, ops) = Journal::open(dir.path(), 0, KEY, false).unwrap().unwrap();
        assert_eq!(ops, s[2..].to_vec());
    }

    #[test]
    fn a_torn_tail_is_ignored_and_what_came_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 0, KEY, false).unwrap().unwrap();
        let s = sample();
        j.write(&body(&s[..1])).unwrap();
        let tail_at = j.offset;
        j.write(&body(&s[1..])).unwrap();
        drop(j);
        // Flip a byte in the second batch's body: its MAC fails.
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(FILE))
            .unwrap();
        f.write_all_at(&[0xAA], tail_at + FRAME as u64 + 3).unwrap();
        let (j, ops) = Journal::open(dir.path(), 0, KEY, false).unwrap().unwrap();
        assert_eq!(ops, s[..1].to_vec());
        // New batches go after the last good one.
        assert_eq!(j.offset, tail_at);
    }

    #[test]
    fn a_journal_that_is_a_link_or_no_file_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"not the journal's").unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join(FILE)).unwrap();
        let e = Journal::open(dir.path(), 0, KEY, false)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"not the journal's");
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        std::fs::create_dir(dir.path().join(FILE)).unwrap();
        assert!(Journal::open(dir.path(), 0, KEY, false).is_err());
    }

    #[test]
    fn generations_sled_covers_are_not_replayed_and_numbers_go_on_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 0, KEY, false).unwrap().unwrap();
        let s = sample();
        j.write(&body(&s)).unwrap();
        assert_eq!(j.next_generation(), 2);
        drop(j);
        // sled says generation 1 is in it: nothing to replay, and the
        // journal goes on at 2 (its records would otherwise be ignored at
        // the next open).
        let (mut j, ops) = Journal::open(dir.path(), 2, KEY, false).unwrap().unwrap();
        assert!(ops.is_empty());
        assert_eq!(j.generation, 2);
        j.write(&body(&s[..1])).unwrap();
        drop(j);
        let (_, ops) = Journal::open(dir.path(), 2, KEY, false).unwrap().unwrap();
        assert_eq!(ops, s[..1].to_vec());
        // A journal made anew (the file was lost) starts where sled says.
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        let (j, ops) = Journal::open(dir.path(), 7, KEY, false).unwrap().unwrap();
        assert!(ops.is_empty());
        assert_eq!(j.generation, 7);
    }

    /// Issue 22, finding 10: a batch written without the key (a forged
    /// `Remove`, well framed, after the real ones) is not replayed; nor is
    /// a real batch moved to another offset; the replay keeps what came
    /// before and the journal opens. With another key nothing verifies and
    /// the file is made anew.
    #[test]
    fn a_forged_batch_is_never_replayed_and_the_journal_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 0, KEY, false).unwrap().unwrap();
        let s = sample();
        j.write(&body(&s[..1])).unwrap();
        let forged_at = j.offset;
        let generation = j.generation;
        drop(j);
        let file = OpenOptions::new()
            .write(true)
            .open(dir.path().join(FILE))
            .unwrap();
        let forge = |at: u64, tag: [u8; MAC_BYTES], body: &[u8]| {
            let mut frame = generation.to_le_bytes().to_vec();
            frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
            frame.extend_from_slice(&tag);
            frame.extend_from_slice(body);
            file.write_all_at(&frame, at).unwrap();
        };
        let evil = body(&[Op::Remove { id: [1; 16] }]);
        // A guessed MAC, and one made with another key.
        for tag in [
            [0u8; MAC_BYTES],
            blake2::digest::Mac::finalize(mac(&[8; 32], generation, forged_at, &evil))
                .into_bytes()
                .into(),
        ] {
            forge(forged_at, tag, &evil);
            let (j, ops) = Journal::open(dir.path(), 0, KEY, false).unwrap().unwrap();
            assert_eq!(ops, s[..1].to_vec());
            assert!(!j.fits(1), "after a stop the next batch checkpoints");
        }
        // A real batch's frame copied to another offset does not verify
        // there.
        let real = body(&s[..1]);
        let tag = blake2::digest::Mac::finalize(mac(&KEY, generation, HEADER, &real));
        forge(forged_at, tag.into_bytes().into(), &real);
        let (_, ops) = Journal::open(dir.path(), 0, KEY, false).unwrap().unwrap();
        assert_eq!(ops, s[..1].to_vec());
        // Another key: even the header does not verify; nothing is
        // replayed and the file starts over (zeroed).
        let (j, ops) = Journal::open(dir.path(), 0, [9; 32], false)
            .unwrap()
            .unwrap();
        assert!(ops.is_empty());
        assert_eq!(j.offset, HEADER);
        drop(j);
        let (_, ops) = Journal::open(dir.path(), 0, KEY, false).unwrap().unwrap();
        assert!(ops.is_empty(), "the old key's batches are gone too");
    }

    /// A journal of the first format (CRC-32 batches) left by an older
    /// build is replayed, and the next batch checkpoints into the new one.
    #[test]
    fn a_journal_of_the_first_format_is_replayed_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample();
        let mut file = vec![0u8; CAPACITY as usize];
        file[..8].copy_from_slice(MAGIC_V1);
        file[8..16].copy_from_slice(&3u64.to_le_bytes());
        let b = body(&s);
        let mut frame = 3u64.to_le_bytes().to_vec();
        frame.extend_from_slice(&(b.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc(3, &b).to_le_bytes());
        frame.extend_from_slice(&b);
        let at = HEADER as usize;
        file[at..at + frame.len()].copy_from_slice(&frame);
        std::fs::write(dir.path().join(FILE), &file).unwrap();
        // A store that has had the current format: a downgrade is refused
        // (whoever can write the file could forge CRC-32 batches).
        let copy = dir.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        std::fs::write(copy.join(FILE), &file).unwrap();
        let (j, ops) = Journal::open(&copy, 0, KEY, false).unwrap().unwrap();
        assert!(ops.is_empty() && j.offset == HEADER);
        let (mut j, ops) = Journal::open(dir.path(), 0, KEY, true).unwrap().unwrap();
        assert_eq!(ops, s);
        assert!(!j.fits(1), "the next batch checkpoints");
        j.restart().unwrap();
        j.write(&body(&s[..1])).unwrap();
        drop(j);
        let (j, ops) = Journal::open(dir.path(), 0, KEY, false).unwrap().unwrap();
        assert_eq!((ops, j.generation), (s[..1].to_vec(), 4));
    }

    #[test]
    fn a_batch_that_does_not_fit_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 0, KEY, false).unwrap().unwrap();
        let big = (CAPACITY - HEADER) as usize - FRAME;
        assert!(j.fits(big));
        assert!(!j.fits(big + 1));
        j.write(&[0u8; 100]).ok();
        assert!(!j.fits(big));
    }
}
