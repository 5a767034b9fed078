//! `[storage]`: where the queue lives.

use std::path::PathBuf;

use serde::Deserialize;

/// `[storage]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Data directory (the sled database and the control socket).
    pub dir: PathBuf,
    /// sled page cache size in bytes.
    pub cache_bytes: u64,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./dustmote-data"),
            cache_bytes: dust_storage::DEFAULT_CACHE_BYTES,
        }
    }
}
