//! The free-space reserve (like Postfix's `queue_minfree`): new work is
//! refused while the store's filesystem has less than the reserve free, so
//! the mote's own writes stop well before the disk is full. sled 0.34.7
//! cannot recover from a failed log write (a full disk left it spinning in
//! `Log::reserve` and its flush blocked forever), so it must never get
//! there; what is already stored keeps moving (deliveries mark items in
//! flight and remove them, which frees space).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Result, StorageError};

pub(crate) struct Space {
    /// The store's directory (`None`: a temporary store, no reserve).
    dir: Option<PathBuf>,
    reserve: AtomicU64,
}

impl Space {
    pub(crate) fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            reserve: AtomicU64::new(0),
        }
    }

    pub(crate) fn set_reserve(&self, bytes: u64) {
        self.reserve.store(bytes, Ordering::Relaxed);
    }

    /// Bytes an unprivileged writer may still use.
    pub(crate) fn free(&self) -> Option<u64> {
        let dir = self.dir.as_ref()?;
        let s = rustix::fs::statvfs(dir).ok()?;
        Some(s.f_bavail.saturating_mul(s.f_frsize))
    }

    /// `Ok` if `extra` bytes can be written and the reserve stays free.
    pub(crate) fn check(&self, extra: u64) -> Result<()> {
        let reserve = self.reserve.load(Ordering::Relaxed);
        if reserve == 0 {
            return Ok(());
        }
        // If statvfs itself fails, let the write try (and fail cleanly).
        let Some(free) = self.free() else {
            return Ok(());
        };
        let need = reserve.saturating_add(extra);
        if free < need {
            return Err(StorageError::Full {
                free,
                reserve: need,
            });
        }
        Ok(())
    }
}
