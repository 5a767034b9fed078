//! Fetch jobs and their content: the `fetches` tree (job id → an opaque job
//! record owned by the HTTP proxy) and the `chunks` tree (job id ‖
//! big-endian offset → bytes). Writes here are not durable by themselves:
//! callers that acknowledge something wait for [`Store::sync`] first.

use crate::{db_err, ItemId, Result, StorageError, Store};

/// Largest value stored for content (see [`Store::put_chunk`]).
pub const PIECE: usize = 64 * 1024;

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

impl Store {
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

    /// Remove a job and all its content.
    pub fn delete_job(&self, id: &ItemId) -> Result<()> {
        self.clear_chunks(id)?;
        self.fetches
            .remove(id.0)
            .map_err(db_err("removing a fetch job"))?;
        Ok(())
    }

    /// Store the bytes at `offset` of a job's content. Large chunks are
    /// kept as pieces of [`PIECE`] bytes: below sled's blob threshold, so they
    /// live in its log and page cache (bounded by `cache_bytes`) instead of
    /// one file per value.
    pub fn put_chunk(&self, id: &ItemId, offset: u64, bytes: &[u8]) -> Result<()> {
        for (i, piece) in bytes.chunks(PIECE).enumerate() {
            self.chunks
                .insert(chunk_key(id, offset + (i * PIECE) as u64), piece)
                .map_err(db_err("writing a chunk"))?;
        }
        Ok(())
    }

    /// Remove a job's content (its object changed at the origin).
    pub fn clear_chunks(&self, id: &ItemId) -> Result<()> {
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

    /// The stored pieces of a job's content as (offset, length), in order.
    pub fn chunk_ranges(&self, id: &ItemId) -> Result<Vec<(u64, u64)>> {
        self.chunks
            .range(chunk_key(id, 0)..=chunk_key(id, u64::MAX))
            .map(|kv| {
                let (k, v) = kv.map_err(db_err("scanning chunks"))?;
                Ok((offset_of(&k), v.len() as u64))
            })
            .collect()
    }

    /// Where a job's stored content ends: the end of its last piece (0 if
    /// none). For content stored front to back, as the fetcher does, this is
    /// the number of bytes stored; it reads one key, not all of them.
    pub fn content_len(&self, id: &ItemId) -> Result<u64> {
        Ok(self
            .chunks
            .range(chunk_key(id, 0)..=chunk_key(id, u64::MAX))
            .next_back()
            .transpose()
            .map_err(db_err("reading content"))?
            .map(|(k, v)| offset_of(&k) + v.len() as u64)
            .unwrap_or(0))
    }

    /// Walk the stored bytes of `start..end` piece by piece, handing each
    /// slice to `visit`; `false` if some bytes are not stored. Starts at the
    /// piece that holds `start`, so only the pieces in the range are read.
    fn walk_content(
        &self,
        id: &ItemId,
        start: u64,
        end: u64,
        mut visit: impl FnMut(&[u8]),
    ) -> Result<bool> {
        let mut pos = start;
        let first = self
            .chunks
            .range(chunk_key(id, 0)..=chunk_key(id, start))
            .next_back()
            .transpose()
            .map_err(db_err("reading content"))?
            .map(|(k, _)| offset_of(&k))
            .unwrap_or(start);
        for kv in self
            .chunks
            .range(chunk_key(id, first)..=chunk_key(id, u64::MAX))
        {
            if pos >= end {
                break;
            }
            let (k, v) = kv.map_err(db_err("reading content"))?;
            let off = offset_of(&k);
            let chunk_end = off + v.len() as u64;
            if off > pos {
                return Ok(false); // a gap
            }
            if chunk_end <= pos {
                continue;
            }
            let to = end.min(chunk_end);
            visit(&v[(pos - off) as usize..(to - off) as usize]);
            pos = to;
        }
        Ok(pos >= end)
    }

    /// Whether all of bytes `start..end` of a job's content are stored.
    pub fn content_stored(&self, id: &ItemId, start: u64, end: u64) -> Result<bool> {
        self.walk_content(id, start, end, |_| {})
    }

    /// Bytes `start..end` of a job's content, or `None` if some of them are
    /// not stored.
    pub fn read_content(&self, id: &ItemId, start: u64, end: u64) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::with_capacity(end.saturating_sub(start).min(64 << 20) as usize);
        let complete = self.walk_content(id, start, end, |piece| out.extend_from_slice(piece))?;
        Ok(complete.then_some(out))
    }
}
