//! `[storage]`: where the queue lives.

use std::path::PathBuf;

use serde::Deserialize;

use super::units::Size;

/// `[storage]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Data directory (the sled database and the control socket).
    pub dir: PathBuf,
    /// sled page cache size in bytes.
    pub cache_bytes: u64,
    /// Where the sealing key lives. Unset (the default): in memory, a file
    /// in `$RUNTIME_DIRECTORY`, `$XDG_RUNTIME_DIR` or `/dev/shm` (which must
    /// be a tmpfs), made at the first start; it survives a restart of the
    /// process, not a reboot. Set: the operator's own key file (32 bytes or
    /// 64 hex digits), made there if missing — on a disk, if the operator
    /// says so.
    pub key_file: Option<PathBuf>,
    /// Free space kept on the data directory's filesystem (like Postfix's
    /// `queue_minfree`): below it, new mail gets `452 4.3.1`, new downloads
    /// `507`, and downloads in progress pause; deliveries go on and free
    /// space. `0` turns the reserve off.
    pub min_free: Size,
}

/// Default of `[storage] min_free`.
pub const DEFAULT_MIN_FREE: u64 = 64 * 1024 * 1024;

impl Default for Storage {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./dustmote-data"),
            cache_bytes: dust_storage::DEFAULT_CACHE_BYTES,
            key_file: None,
            min_free: Size(DEFAULT_MIN_FREE),
        }
    }
}
