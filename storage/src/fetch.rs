//! Fetch jobs and their content.
//!
//! - the `fetches` tree: job id → an opaque job record owned by the HTTP proxy;
//! - the `chunks` tree: job id ‖ big-endian offset → the chunk's length
//!   (8 bytes, big-endian): the index of what is stored;
//! - the bytes themselves: one plain file per job under `content/`, each
//!   chunk written at its offset.
//!
//! Why not the bytes in sled: sled 0.34 keeps written values in memory far
//! beyond its `cache_bytes` (a 1 GiB download cost the process 1.1 GiB of
//! RSS) and copies each value through its log, which held a download to a
//! quarter of the speed of curl writing the same file. A file written at
//! the chunk's offset costs one copy into the page cache.
//!
//! Durability order (the index is the truth; the file may hold more):
//! a chunk's bytes are written and `fdatasync`ed *before* its index entry
//! is inserted, so an index entry never names bytes that a crash could
//! lose. Removing content goes the other way: the index entries are
//! removed and that removal is made durable *before* the file is truncated
//! or unlinked. Bytes in the file that the index does not name (a chunk cut
//! off by a crash) are never read and are overwritten by the next attempt.
//!
//! Index writes are not durable by themselves: callers that acknowledge
//! something wait for [`Store::sync`] first.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{db_err, ItemId, Result, StorageError, Store};

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

fn len_of(value: &[u8]) -> Result<u64> {
    let b: [u8; 8] = value.try_into().map_err(|_| StorageError::Corrupt {
        doing: "reading the chunk index",
        what: format!("chunk length of {} bytes", value.len()),
    })?;
    Ok(u64::from_be_bytes(b))
}

fn io_err(doing: &'static str) -> impl FnOnce(std::io::Error) -> StorageError {
    move |e| StorageError::Io { doing, source: e }
}

/// The directory holding content files, created (and its entry made
/// durable) if missing.
pub(crate) fn open_content_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// Writes one chunk of a job's content at its offset. Nothing it writes is
/// visible to readers until [`Store::commit_chunk`] has synced it and
/// entered it in the index. Blocking I/O: call it from a blocking thread.
#[derive(Debug)]
pub struct ContentWriter {
    id: ItemId,
    file: File,
    offset: u64,
    written: u64,
}

impl ContentWriter {
    /// Append `buf` to the chunk.
    pub fn write(&mut self, buf: &[u8]) -> Result<()> {
        self.file
            .write_all_at(buf, self.offset + self.written)
            .map_err(io_err("writing content"))?;
        self.written += buf.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl Store {
    fn content_path(&self, id: &ItemId) -> PathBuf {
        self.content_dir.join(id.to_string())
    }

    /// Write (or replace) a job record.
    pub fn put_job(&self, id: &ItemId, record: &[u8]) -> Result<()> {
        self.fetches
            .insert(id.0, record)
            .map_err(db_err("writing a fetch job"))?;
        Ok(())
    }

    /// A job record.
    pub fn job(&self, id: &ItemId) -> Result<Option<Vec<u8>>> {
        Ok(self
            .fetches
            .get(id.0)
            .map_err(db_err("reading a fetch job"))?
            .map(|v| v.to_vec()))
    }

    /// Every job (id, record).
    pub fn jobs(&self) -> impl Iterator<Item = Result<(ItemId, Vec<u8>)>> + '_ {
        self.fetches.iter().map(|kv| {
            let (k, v) = kv.map_err(db_err("scanning fetch jobs"))?;
            let id: [u8; 16] = k.as_ref().try_into().map_err(|_| StorageError::Corrupt {
                doing: "scanning fetch jobs",
                what: "job key is not 16 bytes".into(),
            })?;
            Ok((ItemId(id), v.to_vec()))
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
        Ok(())
    }

    /// Remove a job and all its content. Returns once the removal is on
    /// disk (the content file is unlinked only after that).
    pub async fn delete_job(&self, id: &ItemId) -> Result<()> {
        self.remove_index(id)?;
        self.fetches
            .remove(id.0)
            .map_err(db_err("removing a fetch job"))?;
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
    pub fn content_writer(&self, id: &ItemId, offset: u64) -> Result<ContentWriter> {
        let path = self.content_path(id);
        let file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => {
                // A new file: its directory entry must be durable before
                // any index entry can point into it.
                File::open(&self.content_dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err("syncing the content directory"))?;
                f
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err("opening a content file"))?,
            Err(e) => return Err(io_err("creating a content file")(e)),
        };
        Ok(ContentWriter {
            id: *id,
            file,
            offset,
            written: 0,
        })
    }

    /// Make a written chunk part of the content: `fdatasync` its bytes,
    /// then enter it in the index (durable with the next [`Store::sync`]).
    /// Blocking. An empty chunk changes nothing.
    pub fn commit_chunk(&self, w: ContentWriter) -> Result<()> {
        if w.written == 0 {
            return Ok(());
        }
        w.file.sync_data().map_err(io_err("syncing content"))?;
        self.chunks
            .insert(chunk_key(&w.id, w.offset), &w.written.to_be_bytes())
            .map_err(db_err("writing a chunk index entry"))?;
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

    /// The stored chunks of a job's content as (offset, length), in order.
    pub fn chunk_ranges(&self, id: &ItemId) -> Result<Vec<(u64, u64)>> {
        self.chunks
            .range(chunk_key(id, 0)..=chunk_key(id, u64::MAX))
            .map(|kv| {
                let (k, v) = kv.map_err(db_err("scanning chunks"))?;
                Ok((offset_of(&k), len_of(&v)?))
            })
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
            Some((k, v)) => Ok(offset_of(&k) + len_of(&v)?),
            None => Ok(0),
        }
    }

    /// Whether all of bytes `start..end` of a job's content are stored.
    /// Reads the index from the chunk that holds `start` on.
    pub fn content_stored(&self, id: &ItemId, start: u64, end: u64) -> Result<bool> {
        let mut pos = start;
        let first = self
            .chunks
            .range(chunk_key(id, 0)..=chunk_key(id, start))
            .next_back()
            .transpose()
            .map_err(db_err("reading the chunk index"))?
            .map(|(k, _)| offset_of(&k))
            .unwrap_or(start);
        for kv in self
            .chunks
            .range(chunk_key(id, first)..=chunk_key(id, u64::MAX))
        {
            if pos >= end {
                break;
            }
            let (k, v) = kv.map_err(db_err("reading the chunk index"))?;
            let off = offset_of(&k);
            if off > pos {
                return Ok(false); // a gap
            }
            pos = pos.max(off + len_of(&v)?);
        }
        Ok(pos >= end)
    }

    /// Bytes `start..end` of a job's content, or `None` if some of them are
    /// not stored. Blocking (a read from the content file).
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
        file.read_exact_at(&mut out, start)
            .map_err(io_err("reading a content file"))?;
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
