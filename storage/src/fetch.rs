//! Fetch jobs and their content.
//!
//! - the `fetches` tree: job id → an opaque job record owned by the HTTP proxy;
//! - the `chunks` tree: job id ‖ big-endian offset → the chunk's length and
//!   where its frame starts in the content file (8 + 8 bytes, big-endian):
//!   the index of what is stored;
//! - the bytes themselves: one file per job under `content/`, an append-only
//!   sequence of frames, one per chunk. A frame is the chunk cut into blocks
//!   of [`BLOCK`] bytes (the last one shorter), each sealed on its own
//!   (`nonce ‖ ciphertext ‖ tag`, bound to the job and the block's offset in
//!   the content), so a Range read opens only the blocks it needs.
//!
//! Job records are sealed too (they hold the URL).
//!
//! Why not the bytes in sled: sled 0.34 keeps written values in memory far
//! beyond its `cache_bytes` (a 1 GiB download cost the process 1.1 GiB of
//! RSS) and copies each value through its log, which held a download to a
//! quarter of the speed of curl writing the same file. A file written at
//! the chunk's offset costs one copy into the page cache.
//!
//! Durability order (the index is the truth; the file may hold more):
//! a chunk's frame is appended and `fdatasync`ed *before* its index entry
//! is inserted, so an index entry never names bytes that a crash could
//! lose, and a frame is never overwritten in place. Removing content goes
//! the other way: the index entries are removed and that removal is made
//! durable *before* the file is truncated or unlinked. Bytes in the file
//! that the index does not name (a chunk cut off by a crash) are never
//! read; a writer dropped without committing cuts its frame off again.
//!
//! Index writes are not durable by themselves: callers that acknowledge
//! something wait for [`Store::sync`] first.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::seal::{Sealer, OVERHEAD};
use crate::{db_err, ItemId, Result, StorageError, Store};

/// Plaintext bytes per sealed block of content.
pub const BLOCK: u64 = 64 * 1024;
/// Bytes a sealed block takes in the file.
const SEALED_BLOCK: u64 = BLOCK + OVERHEAD as u64;

/// Bytes a frame of `len` plaintext bytes takes in the file.
fn frame_len(len: u64) -> u64 {
    len + len.div_ceil(BLOCK) * OVERHEAD as u64
}

/// Associated data of the content block at plaintext `offset` of job `id`.
fn block_aad(id: &ItemId, offset: u64) -> [u8; 31] {
    let mut a = [0u8; 31];
    a[..7].copy_from_slice(b"content");
    a[7..23].copy_from_slice(&id.0);
    a[23..].copy_from_slice(&offset.to_be_bytes());
    a
}

/// Associated data of a job record.
fn job_aad(id: &ItemId) -> [u8; 19] {
    let mut a = [0u8; 19];
    a[..3].copy_from_slice(b"job");
    a[3..].copy_from_slice(&id.0);
    a
}

/// One entry of the chunk index.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    /// Plaintext offset in the content.
    offset: u64,
    /// Plaintext length.
    len: u64,
    /// Where its frame starts in the content file.
    pos: u64,
}

impl Chunk {
    fn from_kv(k: &[u8], v: &[u8]) -> Result<Self> {
        if v.len() != 16 {
            return Err(StorageError::Corrupt {
                doing: "reading the chunk index",
                what: format!("entry of {} bytes", v.len()),
            });
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&v[..8]);
        let len = u64::from_be_bytes(b);
        b.copy_from_slice(&v[8..]);
        Ok(Self {
            offset: offset_of(k),
            len,
            pos: u64::from_be_bytes(b),
        })
    }

    fn value(&self) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&self.len.to_be_bytes());
        v[8..].copy_from_slice(&self.pos.to_be_bytes());
        v
    }

    fn end(&self) -> u64 {
        self.offset + self.len
    }
}

fn chunk_key(id: &ItemId, offset: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&id.0);
    k[16..].copy_from_slice(&offset.to_be_bytes());
    k
}

fn offset_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[16..24]);
    u64::from_be_bytes(b)
}

fn io_err(doing: &'static str) -> impl FnOnce(std::io::Error) -> StorageError {
    move |e| StorageError::Io { doing, source: e }
}

/// The directory holding content files, created (and its entry made
/// durable) if missing.
pub(crate) fn open_content_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// Writes one chunk of a job's content: seals it block by block and
/// appends the frame to the job's file. Nothing it writes is visible to
/// readers until [`Store::commit_chunk`] has synced it and entered it in
/// the index; dropped without that, it cuts its frame off the file again.
/// Blocking I/O: call it from a blocking thread.
pub struct ContentWriter {
    id: ItemId,
    file: File,
    sealer: Arc<Sealer>,
    space: Arc<crate::space::Space>,
    /// Plaintext offset of the chunk.
    offset: u64,
    /// Where the frame starts in the file.
    pos: u64,
    /// Plaintext bytes taken so far.
    written: u64,
    /// Plaintext not sealed yet (less than a block); the blocks sealed by
    /// one call, `nonce ‖ ciphertext ‖ tag` each, are built in `sealed`.
    pending: Vec<u8>,
    sealed: Vec<u8>,
    /// Plaintext bytes sealed and written so far.
    sealed_plain: u64,
    /// File bytes of the frame written so far.
    frame: u64,
    committed: bool,
}

impl std::fmt::Debug for ContentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentWriter")
            .field("id", &self.id)
            .field("offset", &self.offset)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl ContentWriter {
    /// Append `buf` to the chunk: whole blocks are sealed straight from
    /// `buf` (one copy) and written with one `pwrite` per call; a partial
    /// block waits for the next call or the commit.
    pub fn write(&mut self, mut buf: &[u8]) -> Result<()> {
        self.written += buf.len() as u64;
        self.sealed.clear();
        if !self.pending.is_empty() {
            let take = (BLOCK as usize - self.pending.len()).min(buf.len());
            self.pending.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.pending.len() == BLOCK as usize {
                self.seal_pending();
            }
        }
        while buf.len() >= BLOCK as usize {
            let (block, rest) = buf.split_at(BLOCK as usize);
            self.seal(block);
            buf = rest;
        }
        self.pending.extend_from_slice(buf);
        self.flush_sealed()
    }

    /// Seal `plain` as the next block, into `self.sealed`.
    fn seal(&mut self, plain: &[u8]) {
        let block_offset = self.offset + self.sealed_plain;
        self.sealer
            .seal_into(&block_aad(&self.id, block_offset), plain, &mut self.sealed);
        self.sealed_plain += plain.len() as u64;
    }

    /// Seal the pending bytes as the next block (keeping the buffer).
    fn seal_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.seal(&pending);
        self.pending = pending;
        self.pending.clear();
    }

    /// Write the sealed blocks out (after the frame written so far).
    fn flush_sealed(&mut self) -> Result<()> {
        if self.sealed.is_empty() {
            return Ok(());
        }
        // A download stops at the reserve (a temporary failure: the fetcher
        // tries the chunk again later), not at a full disk.
        self.space.check(self.sealed.len() as u64)?;
        self.file
            .write_all_at(&self.sealed, self.pos + self.frame)
            .map_err(io_err("writing content"))?;
        self.frame += self.sealed.len() as u64;
        self.sealed.clear();
        Ok(())
    }

    /// Seal and write the last, partial block (at the commit).
    fn seal_block(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.sealed.clear();
        self.seal_pending();
        self.flush_sealed()
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl Drop for ContentWriter {
    fn drop(&mut self) {
        if !self.committed && self.frame > 0 {
            // Best effort: the frame is not in the index, so it is never
            // read; cutting it off only saves the space.
            if self
                .file
                .metadata()
                .is_ok_and(|m| m.len() == self.pos + self.frame)
            {
                let _ = self.file.set_len(self.pos);
            }
        }
    }
}

impl Store {
    fn content_path(&self, id: &ItemId) -> PathBuf {
        self.content_dir.join(id.to_string())
    }

    /// Write (or replace) a job record.
    pub fn put_job(&self, id: &ItemId, record: &[u8]) -> Result<()> {
        self.fetches
            .insert(id.0, self.sealer.seal(&job_aad(id), record))
            .map_err(db_err("writing a fetch job"))?;
        self.flusher.mark_dirty();
        Ok(())
    }

    /// A job record.
    pub fn job(&self, id: &ItemId) -> Result<Option<Vec<u8>>> {
        self.fetches
            .get(id.0)
            .map_err(db_err("reading a fetch job"))?
            .map(|v| self.sealer.open(&job_aad(id), &v, "opening a fetch job"))
            .transpose()
    }

    /// Every job (id, record).
    pub fn jobs(&self) -> impl Iterator<Item = Result<(ItemId, Vec<u8>)>> + '_ {
        self.fetches.iter().map(|kv| {
            let (k, v) = kv.map_err(db_err("scanning fetch jobs"))?;
            let id: [u8; 16] = k.as_ref().try_into().map_err(|_| StorageError::Corrupt {
                doing: "scanning fetch jobs",
                what: "job key is not 16 bytes".into(),
            })?;
            let id = ItemId(id);
            Ok((
                id,
                self.sealer.open(&job_aad(&id), &v, "opening a fetch job")?,
            ))
        })
    }

    fn remove_index(&self, id: &ItemId) -> Result<()> {
        let keys: Vec<_> = self
            .chunks
            .range(chunk_key(id, 0)..=chunk_key(id, u64::MAX))
            .keys()
            .collect::<std::result::Result<_, _>>()
            .map_err(db_err("scanning chunks"))?;
        for k in keys {
            self.chunks.remove(k).map_err(db_err("removing a chunk"))?;
        }
        self.flusher.mark_dirty();
        Ok(())
    }

    /// Remove a job and all its content. Returns once the removal is on
    /// disk (the content file is unlinked only after that).
    pub async fn delete_job(&self, id: &ItemId) -> Result<()> {
        self.remove_index(id)?;
        self.fetches
            .remove(id.0)
            .map_err(db_err("removing a fetch job"))?;
        self.flusher.mark_dirty();
        self.sync().await?;
        match std::fs::remove_file(self.content_path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing a content file")(e)),
        }
    }

    /// Remove a job's content (its object changed at the origin), durably:
    /// when this returns, no index entry of the old content survives a
    /// crash, and the file is empty.
    pub async fn clear_chunks(&self, id: &ItemId) -> Result<()> {
        self.remove_index(id)?;
        self.sync().await?;
        match OpenOptions::new().write(true).open(self.content_path(id)) {
            Ok(f) => f.set_len(0).map_err(io_err("truncating a content file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("opening a content file")(e)),
        }
    }

    /// Start writing the chunk at `offset` of a job's content. Blocking.
    /// [`StorageError::Full`] (here or from a write) below the reserve.
    pub fn content_writer(&self, id: &ItemId, offset: u64) -> Result<ContentWriter> {
        self.space.check(SEALED_BLOCK)?;
        let path = self.content_path(id);
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => {
                // A new file: its directory entry must be durable before
                // any index entry can point into it.
                File::open(&self.content_dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err("syncing the content directory"))?;
                f
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err("opening a content file"))?,
            Err(e) => return Err(io_err("creating a content file")(e)),
        };
        // Frames are appended: whatever the file holds (committed frames,
        // or the tail of one cut off by a crash) is never overwritten.
        let pos = file
            .metadata()
            .map_err(io_err("reading a content file's size"))?
            .len();
        Ok(ContentWriter {
            id: *id,
            file,
            sealer: Arc::clone(&self.sealer),
            space: Arc::clone(&self.space),
            offset,
            pos,
            written: 0,
            pending: Vec::with_capacity(BLOCK as usize),
            sealed: Vec::new(),
            sealed_plain: 0,
            frame: 0,
            committed: false,
        })
    }

    /// Make a written chunk part of the content: seal its last block,
    /// `fdatasync` the frame, then enter it in the index (durable with the
    /// next [`Store::sync`]). Blocking. An empty chunk changes nothing.
    pub fn commit_chunk(&self, mut w: ContentWriter) -> Result<()> {
        if w.written == 0 {
            return Ok(());
        }
        w.seal_block()?;
        w.file.sync_data().map_err(io_err("syncing content"))?;
        let chunk = Chunk {
            offset: w.offset,
            len: w.written,
            pos: w.pos,
        };
        self.chunks
            .insert(chunk_key(&w.id, w.offset), &chunk.value())
            .map_err(db_err("writing a chunk index entry"))?;
        self.flusher.mark_dirty();
        w.committed = true;
        Ok(())
    }

    /// Store the bytes at `offset` of a job's content ([`content_writer`]
    /// and [`commit_chunk`] in one call). Blocking.
    ///
    /// [`content_writer`]: Self::content_writer
    /// [`commit_chunk`]: Self::commit_chunk
    pub fn put_chunk(&self, id: &ItemId, offset: u64, bytes: &[u8]) -> Result<()> {
        let mut w = self.content_writer(id, offset)?;
        w.write(bytes)?;
        self.commit_chunk(w)
    }

    /// The index entries of a job from the one that holds `from` (or the
    /// first after it) on, in offset order.
    fn chunks_from(&self, id: &ItemId, from: u64) -> Result<impl Iterator<Item = Result<Chunk>>> {
        let first = self
            .chunks
            .range(chunk_key(id, 0)..=chunk_key(id, from))
            .next_back()
            .transpose()
            .map_err(db_err("reading the chunk index"))?
            .map(|(k, _)| offset_of(&k))
            .unwrap_or(from);
        Ok(self
            .chunks
            .range(chunk_key(id, first)..=chunk_key(id, u64::MAX))
            .map(|kv| {
                let (k, v) = kv.map_err(db_err("reading the chunk index"))?;
                Chunk::from_kv(&k, &v)
            }))
    }

    /// The stored chunks of a job's content as (offset, length), in order.
    pub fn chunk_ranges(&self, id: &ItemId) -> Result<Vec<(u64, u64)>> {
        self.chunks_from(id, 0)?
            .map(|c| c.map(|c| (c.offset, c.len)))
            .collect()
    }

    /// Where a job's stored content ends: the end of its last chunk (0 if
    /// none). For content stored front to back, as the fetcher does, this is
    /// the number of bytes stored; it reads one index entry.
    pub fn content_len(&self, id: &ItemId) -> Result<u64> {
        match self
            .chunks
            .range(chunk_key(id, 0)..=chunk_key(id, u64::MAX))
            .next_back()
            .transpose()
            .map_err(db_err("reading the chunk index"))?
        {
            Some((k, v)) => Ok(Chunk::from_kv(&k, &v)?.end()),
            None => Ok(0),
        }
    }

    /// Whether all of bytes `start..end` of a job's content are stored.
    /// Reads the index from the chunk that holds `start` on.
    pub fn content_stored(&self, id: &ItemId, start: u64, end: u64) -> Result<bool> {
        let mut pos = start;
        for c in self.chunks_from(id, start)? {
            if pos >= end {
                break;
            }
            let c = c?;
            if c.offset > pos {
                return Ok(false); // a gap
            }
            pos = pos.max(c.end());
        }
        Ok(pos >= end)
    }

    /// Bytes `start..end` of a job's content, or `None` if some of them are
    /// not stored. Blocking (reads and opens the blocks that hold them).
    pub fn read_content(&self, id: &ItemId, start: u64, end: u64) -> Result<Option<Vec<u8>>> {
        if start >= end {
            return Ok(Some(Vec::new()));
        }
        if !self.content_stored(id, start, end)? {
            return Ok(None);
        }
        let file = File::open(self.content_path(id)).map_err(io_err("opening a content file"))?;
        let len = usize::try_from(end - start).map_err(|_| StorageError::Corrupt {
            doing: "reading content",
            what: "range larger than memory".into(),
        })?;
        let mut out = vec![0u8; len];
        let mut sealed = Vec::new();
        for c in self.chunks_from(id, start)? {
            let c = c?;
            if c.offset >= end {
                break;
            }
            let (a, b) = (start.max(c.offset), end.min(c.end()));
            if a >= b {
                continue;
            }
            // The blocks of this chunk that hold a..b, read in one go.
            let (first, last) = ((a - c.offset) / BLOCK, (b - c.offset - 1) / BLOCK);
            let from = c.pos + first * SEALED_BLOCK;
            let to = c.pos + frame_len((last + 1).saturating_mul(BLOCK).min(c.len));
            sealed.resize(usize::try_from(to - from).unwrap_or(usize::MAX), 0);
            file.read_exact_at(&mut sealed, from)
                .map_err(io_err("reading a content file"))?;
            for (i, block) in sealed.chunks_mut(SEALED_BLOCK as usize).enumerate() {
                let block_start = c.offset + (first + i as u64) * BLOCK;
                let plain = self.sealer.open_in_place(
                    &block_aad(id, block_start),
                    block,
                    "opening stored content",
                )?;
                let (pa, pb) = (a.max(block_start), b.min(block_start + plain.len() as u64));
                if pa < pb {
                    out[(pa - start) as usize..(pb - start) as usize].copy_from_slice(
                        &plain[(pa - block_start) as usize..(pb - block_start) as usize],
                    );
                }
            }
        }
        Ok(Some(out))
    }

    /// Remove content files of jobs that no longer exist (a crash between
    /// a deletion and its unlink). Runs once at open.
    pub(crate) fn remove_orphan_content(&self) -> Result<()> {
        let entries = std::fs::read_dir(&self.content_dir).map_err(io_err("listing content"))?;
        for entry in entries {
            let entry = entry.map_err(io_err("listing content"))?;
            let name = entry.file_name();
            let known = name
                .to_str()
                .and_then(|n| n.parse::<ItemId>().ok())
                .map(|id| self.fetches.contains_key(id.0))
                .transpose()
                .map_err(db_err("checking a content file's job"))?;
            if known != Some(true) {
                std::fs::remove_file(entry.path()).map_err(io_err("removing orphan content"))?;
            }
        }
        Ok(())
    }
}
