//! One error scheme for everything that can go wrong while an item is
//! handled, after Arti's `tor-error`: each error type says which
//! [`ErrorKind`] it is ([`HasKind`]), and the mixer decides what happens to
//! the item from the kind alone ([`ErrorKind::retry`]), never from a
//! message. Errors keep their cause as their `source`.
//!
//! Adding an error: give the new type (a `thiserror` enum in its own
//! crate) a [`HasKind`] impl with one exhaustive `match`, and turn it into
//! a [`DeliveryError`] with [`DeliveryError::wrap`] where a deliverer meets
//! it. A new *kind* is only needed where the mixer must act differently.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// What kind of failure an error is; decides what happens to the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The next hop or the way there failed for now (connection refused,
    /// SMTP 4xx, Tor not ready, a timeout, a resolver that did not answer):
    /// the item is tried again after a backoff.
    Temporary,
    /// The next hop refused the item for good (SMTP 5xx, no such domain, a
    /// malformed address, an origin's 4xx): the item is dropped and counted,
    /// never bounced (a bounce would link sender and message).
    Permanent,
    /// This mote cannot handle the item as configured (no
    /// `[delivery.mail]`, an unusable CA file): the item is kept and tried
    /// again after a backoff, so that an operator who fixes the
    /// configuration and restarts loses nothing; logged as a warning.
    Config,
    /// Local storage failed while handling the item (disk full): tried
    /// again after a backoff.
    Storage,
}

impl ErrorKind {
    /// Whether an item that failed with this kind is tried again.
    pub fn retry(self) -> bool {
        match self {
            ErrorKind::Temporary | ErrorKind::Config | ErrorKind::Storage => true,
            ErrorKind::Permanent => false,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Temporary => "temporary",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Config => "configuration",
            ErrorKind::Storage => "storage",
        })
    }
}

/// An error that knows its [`ErrorKind`].
pub trait HasKind {
    /// The kind of this error.
    fn kind(&self) -> ErrorKind;
}

impl HasKind for dust_storage::StorageError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Storage
    }
}

/// Why a delivery attempt failed: a kind and the cause.
#[derive(Debug, Clone)]
pub struct DeliveryError {
    kind: ErrorKind,
    source: Arc<dyn StdError + Send + Sync>,
}

impl DeliveryError {
    /// A failure of `kind` caused by `source` (an error or a message).
    pub fn new(kind: ErrorKind, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self {
            kind,
            source: Arc::from(source.into()),
        }
    }

    /// A failure whose kind its cause knows.
    pub fn wrap<E: StdError + HasKind + Send + Sync + 'static>(e: E) -> Self {
        Self {
            kind: e.kind(),
            source: Arc::new(e),
        }
    }

    /// [`ErrorKind::Temporary`].
    pub fn temporary(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::new(ErrorKind::Temporary, source)
    }

    /// [`ErrorKind::Permanent`].
    pub fn permanent(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::new(ErrorKind::Permanent, source)
    }

    /// [`ErrorKind::Config`].
    pub fn config(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::new(ErrorKind::Config, source)
    }

    /// The cause's message, without the kind.
    pub fn reason(&self) -> String {
        self.source.to_string()
    }

    /// The same cause as another kind (a deliverer that knows better, e.g.
    /// a 5xx from one of several mail hosts is not the domain's answer).
    pub fn with_kind(self, kind: ErrorKind) -> Self {
        Self { kind, ..self }
    }
}

impl HasKind for DeliveryError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} delivery failure: {}", self.kind, self.source)
    }
}

impl StdError for DeliveryError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

impl From<dust_storage::StorageError> for DeliveryError {
    fn from(e: dust_storage::StorageError) -> Self {
        Self::wrap(e)
    }
}

/// Errors of admission.
#[derive(Debug, thiserror::Error)]
pub enum MixerError {
    /// Storage failed; nothing was acknowledged (SMTP 451).
    #[error(transparent)]
    Storage(#[from] dust_storage::StorageError),
    /// The mixer is shutting down and accepts nothing new (SMTP 421).
    #[error("the mixer is shutting down")]
    ShuttingDown,
    /// The mote expires too soon for a new item to leave in time
    /// (SMTP 452, HTTP 503).
    #[error("the mote expires too soon to accept new items")]
    Expiring,
    /// A configuration was refused (the key and the reason).
    #[error("invalid mixer setting {0}")]
    Invalid(String),
}

impl HasKind for MixerError {
    fn kind(&self) -> ErrorKind {
        match self {
            MixerError::Storage(_) => ErrorKind::Storage,
            MixerError::ShuttingDown | MixerError::Expiring => ErrorKind::Temporary,
            MixerError::Invalid(_) => ErrorKind::Config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_permanent_failures_drop_the_item() {
        for (kind, retry) in [
            (ErrorKind::Temporary, true),
            (ErrorKind::Permanent, false),
            (ErrorKind::Config, true),
            (ErrorKind::Storage, true),
        ] {
            assert_eq!(kind.retry(), retry, "{kind}");
        }
        let e = DeliveryError::permanent("550 no such user");
        assert_eq!(e.kind(), ErrorKind::Permanent);
        assert_eq!(
            e.to_string(),
            "permanent delivery failure: 550 no such user"
        );
        assert_eq!(
            e.source().map(ToString::to_string).as_deref(),
            Some("550 no such user")
        );
        let e = DeliveryError::from(dust_storage::StorageError::Closed);
        assert_eq!(e.kind(), ErrorKind::Storage);
    }
}
