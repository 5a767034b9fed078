//! What users and peers hand the mote: mail over SMTP ([`smtp`]), download
//! jobs over the HTTP API ([`http`]), and items from other motes over the
//! peer link ([`http::peer`]).
//!
//! Every door enters the mix through one of the traits here, implemented
//! for the [`Mixer`] in this file, and is refused with one
//! [`IntakeError`]. Each door keeps its own reply table: SMTP codes in
//! `smtp::data`, HTTP statuses in `http` and `http::peer`.
//!
//! Every entry returns only once what it admitted is on stable storage:
//! the `250`, `202` or `201` a door then sends is a promise kept across a
//! crash.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dust_mixer::{Deliver, ItemId, ItemKind, Mixer, MixerError, Once, StorageError, Store};
use futures::task::Spawn;
use tor_rtcompat::{Blocking, SleepProvider};

pub mod http;
pub mod smtp;
mod strangers;

/// Why something handed to the mote was not admitted. Nothing of it is
/// stored.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The mote is stopping (SMTP 421, HTTP 503).
    #[error("shutting down")]
    ShuttingDown,
    /// The mote ends too soon for it to leave in time (SMTP 452, HTTP 503
    /// with `Retry-After`).
    #[error("expiring")]
    Expiring {
        /// Seconds until the mote has ended.
        retry_after_s: u64,
    },
    /// Free space is below the reserve (SMTP 452 4.3.1, a peer's 507).
    #[error("insufficient storage")]
    NoSpace,
    /// A download job with this id is here already, not from this transfer
    /// (a peer's 409).
    #[error("the job exists here")]
    Exists,
    /// Storage failed otherwise (SMTP 451, HTTP 5xx).
    #[error(transparent)]
    Failed(MixerError),
}

impl From<StorageError> for IntakeError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Full { .. } => IntakeError::NoSpace,
            e => IntakeError::Failed(MixerError::Storage(e)),
        }
    }
}

/// Durable admission of an encoded [`StoredMail`](crate::item::mail::StoredMail)
/// from SMTP. Must return only after the payload is on stable storage (or,
/// for a replay, the earlier copy).
pub trait Admission: Send + Sync + 'static {
    /// Store `payload`, once per `once` digest within its window if given.
    fn admit(
        &self,
        payload: Vec<u8>,
        once: Option<Once>,
    ) -> impl Future<Output = Result<(), IntakeError>> + Send;

    /// Whether a message of `size` bytes would fit above the free-space
    /// reserve now (checked at MAIL, so a client is not made to send a
    /// message that cannot be stored).
    fn has_room(&self, _size: u64) -> bool {
        true
    }
}

/// Puts a new download job's fetch item into the mix. Must return only once
/// the item is durably stored (the mixer's admission fsyncs), which also
/// makes the job record written before it durable.
pub trait Schedule: Send + Sync + 'static {
    /// Schedule job `id`, not to start before `not_before`.
    fn schedule(
        &self,
        id: ItemId,
        not_before: Option<SystemTime>,
    ) -> impl Future<Output = Result<(), IntakeError>> + Send;
}

/// Durable, exactly-once admission of an item another mote hands over.
pub trait Transfer: Send + Sync + 'static {
    /// Admit `payload` as a new item of `kind` with a fresh delay, unless
    /// `digest` was admitted within `window`. `true`: stored now.
    fn admit_transfer(
        &self,
        kind: ItemKind,
        payload: Vec<u8>,
        digest: [u8; 32],
        window: Duration,
    ) -> impl Future<Output = Result<bool, IntakeError>> + Send;

    /// Whether download job `id` may be taken over as `record` (before
    /// anything of it is written): `Ok(true)` if it is not here, or is
    /// here as this very transfer wrote it (the same peer's unchanged
    /// record: a resend after a crash between record and item);
    /// `Ok(false)` if `digest` was admitted before, within the transfer
    /// window (nothing is written: the job may have moved on here since);
    /// [`IntakeError::Exists`] if another job `id` is here (another
    /// peer's, a user's own, or one changed since): it is neither replaced
    /// nor given another item.
    fn may_take_job(
        &self,
        id: ItemId,
        record: &[u8],
        digest: [u8; 32],
    ) -> impl Future<Output = Result<bool, IntakeError>> + Send;

    /// The store a handed-over job's content is streamed into (between
    /// [`may_take_job`](Self::may_take_job) and
    /// [`admit_job`](Self::admit_job)).
    fn content_store(&self) -> &Arc<Store>;

    /// Take over download job `id`, whose content is stored already: its
    /// `record`, then its fetch item (as [`admit_transfer`]), checked again
    /// as [`may_take_job`](Self::may_take_job) does. `true`: stored now.
    ///
    /// [`admit_transfer`]: Self::admit_transfer
    fn admit_job(
        &self,
        id: ItemId,
        record: Vec<u8>,
        digest: [u8; 32],
        window: Duration,
    ) -> impl Future<Output = Result<bool, IntakeError>> + Send;
}

/// The mixer's refusal as an intake error.
fn refusal<R, D>(mixer: &Mixer<R, D>, e: MixerError) -> IntakeError
where
    R: SleepProvider + Spawn + Blocking + Send + Sync + 'static,
    D: Deliver,
{
    match e {
        MixerError::ShuttingDown => IntakeError::ShuttingDown,
        MixerError::Expiring => IntakeError::Expiring {
            retry_after_s: mixer.config().lifetime.map_or(1, |l| {
                l.expires_at
                    .duration_since(SystemTime::now())
                    .map_or(1, |d| d.as_secs() + 1)
            }),
        },
        MixerError::Storage(e) => e.into(),
        e => IntakeError::Failed(e),
    }
}

impl<R, D> Admission for Mixer<R, D>
where
    R: SleepProvider + Spawn + Blocking + Send + Sync + 'static,
    R::ThreadHandle<Result<bool, StorageError>>: Send,
    D: Deliver,
{
    async fn admit(&self, payload: Vec<u8>, once: Option<Once>) -> Result<(), IntakeError> {
        // The SMTP server runs on tokio (never in simulated time): the
        // direct admission, without a blocking thread.
        match Mixer::admit_direct(self, ItemKind::Mail, payload, once).await {
            Ok(new) => {
                if once.is_some() && new.is_none() {
                    tracing::info!("a resent message was acknowledged without storing it again");
                }
                Ok(())
            }
            Err(MixerError::Storage(StorageError::Full { free, reserve })) => {
                tracing::warn!(
                    free,
                    reserve,
                    "disk space below the reserve; client told 452"
                );
                Err(IntakeError::NoSpace)
            }
            Err(e) => Err(refusal(self, e)),
        }
    }

    fn has_room(&self, size: u64) -> bool {
        self.store().check_room(size).is_ok()
    }
}

impl<R, D> Schedule for Mixer<R, D>
where
    R: SleepProvider + Spawn + Blocking + Send + Sync + 'static,
    R::ThreadHandle<Result<bool, StorageError>>: Send,
    D: Deliver,
{
    async fn schedule(
        &self,
        id: ItemId,
        not_before: Option<SystemTime>,
    ) -> Result<(), IntakeError> {
        match self
            .admit_after(ItemKind::Fetch, id.0.to_vec(), not_before)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                // The storage error with its figures, before it becomes
                // the door's plain refusal.
                if let MixerError::Storage(s) = &e {
                    tracing::error!(error = %s, "storing a fetch job's item failed");
                }
                Err(refusal(self, e))
            }
        }
    }
}

impl<R, D> Transfer for Mixer<R, D>
where
    R: SleepProvider + Spawn + Blocking + Send + Sync + 'static,
    R::ThreadHandle<Result<bool, StorageError>>: Send,
    D: Deliver,
{
    async fn admit_transfer(
        &self,
        kind: ItemKind,
        payload: Vec<u8>,
        digest: [u8; 32],
        window: Duration,
    ) -> Result<bool, IntakeError> {
        let once = Once {
            digest,
            window,
            exact: true,
        };
        match self.admit_once(kind, payload, once).await {
            Ok(new) => Ok(new.is_some()),
            Err(e) => Err(refusal(self, e)),
        }
    }

    async fn may_take_job(
        &self,
        id: ItemId,
        record: &[u8],
        digest: [u8; 32],
    ) -> Result<bool, IntakeError> {
        let store = self.store();
        let now = dust_mixer::wall_ms(SystemTime::now());
        if store.digest_seen(&digest, now)? {
            // Taken over before (the sender never saw the answer): what is
            // here now is newer than what was sent.
            store.sync().await?;
            return Ok(false);
        }
        match store.job(&id)? {
            Some(here) if here != record => Err(IntakeError::Exists),
            _ => Ok(true),
        }
    }

    fn content_store(&self) -> &Arc<Store> {
        self.store()
    }

    async fn admit_job(
        &self,
        id: ItemId,
        record: Vec<u8>,
        digest: [u8; 32],
        window: Duration,
    ) -> Result<bool, IntakeError> {
        if !self.may_take_job(id, &record, digest).await? {
            return Ok(false);
        }
        // The content first (its frame fdatasynced, its index entry durable
        // with the admission's flush), then the record, then the item: a
        // crash before the item leaves nothing a resend would not replace.
        self.store().put_job(&id, &record)?;
        self.admit_transfer(ItemKind::Fetch, id.0.to_vec(), digest, window)
            .await
    }
}
