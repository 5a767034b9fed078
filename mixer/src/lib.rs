#![doc = include_str!("../README.md")]

pub mod anonymity;
mod config;

pub mod delay;
mod error;
pub mod metrics;
mod scheduler;
pub mod strategy;
pub mod tokio_rt;

pub use anonymity::{AnonymityStats, Output, Samples};
pub use config::{CoverConfig, Lifetime, MixerConfig, RetryPolicy};
pub use delay::{DelayError, DelaySpec};
pub use dust_storage::{
    ContentWriter, Item, ItemId, QueueStats, SealKey, StorageError, Store, HELD,
};
pub use error::{DeliveryError, ErrorKind, HasKind, MixerError};
pub use metrics::{Metrics, MixStatus};
pub use scheduler::cover::CoverSource;
pub use scheduler::{Mixer, Once};
pub use strategy::Strategy;

use std::future::Future;
use std::time::{Duration, SystemTime};

/// What kind of thing an item is; stored as the item's kind byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ItemKind {
    /// An e-mail message (payload: see `dust_proxies::item::mail::StoredMail`).
    Mail = 1,
    /// A download job; each delivery fetches one chunk (payload: the job id).
    Fetch = 2,
}

impl TryFrom<u8> for ItemKind {
    /// The byte itself: a kind this build does not know.
    type Error = u8;

    fn try_from(b: u8) -> Result<Self, u8> {
        match b {
            1 => Ok(ItemKind::Mail),
            2 => Ok(ItemKind::Fetch),
            b => Err(b),
        }
    }
}

/// What a successful delivery call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The item has left the mote: remove it.
    Done,
    /// One step of a multi-step item is done (a download chunk): keep the
    /// item and release it again after a fresh delay drawn from its kind's
    /// distribution.
    Again,
}

/// Sends one item onward. Implemented in `dust-proxies`; the mixer calls it
/// for each due item, with at most `MixerConfig::max_in_flight` calls at once.
pub trait Deliver: Send + Sync + 'static {
    /// Deliver `item`. Must not log addresses or content at info or above.
    fn deliver(&self, item: &Item) -> impl Future<Output = Result<Outcome, DeliveryError>> + Send;

    /// Whether a successor mote is named now (hop at drain: see
    /// [`MixerConfig::hop_window`]). Asked each time the schedule is
    /// looked at, so a successor named at run time takes effect at once.
    fn has_successor(&self) -> bool {
        false
    }

    /// Hand `item` to the successor mote: `Ok` only once the successor has
    /// stored it durably (the mixer then removes it here). An error makes
    /// the mixer try again a few times, then release the item itself.
    fn hand_off(&self, item: &Item) -> impl Future<Output = Result<(), DeliveryError>> + Send {
        let _ = item;
        async { Err(DeliveryError::permanent("no successor")) }
    }
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn wall_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, rounded up, so that a release time
/// computed as `now + delay` is never earlier than `now + delay`.
pub fn wall_ms_ceil(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos().div_ceil(1_000_000).min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

/// The inverse of [`wall_ms`].
pub fn from_wall_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod kind_tests {
    use super::ItemKind;

    #[test]
    fn a_kind_byte_is_read_back_and_an_unknown_one_is_no_kind() {
        for kind in [ItemKind::Mail, ItemKind::Fetch] {
            assert_eq!(ItemKind::try_from(kind as u8), Ok(kind));
        }
        for b in [0u8, 3, 255] {
            assert_eq!(ItemKind::try_from(b), Err(b));
        }
    }
}
