//! The peer link's wire format: the one definition both ends read (the
//! receiving end, [`crate::intake::http::peer`], and the sending end,
//! [`crate::egress::hop`]).
//!
//! One item per request: `POST /v1/peer/items` with
//! - `Authorization: Bearer NAME:TOKEN`: the name the sender has at the
//!   receiver, and its token (a `[[peers]]` entry with a `token_hash`);
//! - `Dust-Item-Id: <32 hex digits>`: the sender's id of the item (for a
//!   download job, the job's id);
//! - `Dust-Item-Kind: mail`, and as the body the stored mail item
//!   ([`StoredMail`](crate::item::mail::StoredMail)); or
//!   `Dust-Item-Kind: fetch` for a download job handed to a successor, with
//!   `Dust-Job-Length: N` and as the body a [`JobTransfer`] (N bytes of
//!   JSON) followed by the content stored so far (a prefix of the object).
//!
//! The answer is `201` for an item stored now, `200` for one stored
//! before (same sender, same id), or a JSON error `{"error": CODE,
//! "message": …}`; `400`, `409` and `413` are refusals the item never gets
//! past, anything else is temporary.

use dust_mixer::{ItemId, ItemKind};
use serde::{Deserialize, Serialize};

use crate::item::job::Job;

/// The path items are posted to.
pub const ITEMS_PATH: &str = "/v1/peer/items";
/// The header with the item's id (32 hex digits).
pub const ITEM_ID: &str = "dust-item-id";
/// The header with the item's kind ([`kind_name`]).
pub const ITEM_KIND: &str = "dust-item-kind";
/// The header with the length of a job's record at the body's start.
pub const JOB_LENGTH: &str = "dust-job-length";
/// Largest job record accepted (the JSON before the content).
pub const MAX_JOB_RECORD: usize = 64 * 1024;

/// The name of `kind` in [`ITEM_KIND`].
pub fn kind_name(kind: ItemKind) -> &'static str {
    match kind {
        ItemKind::Mail => "mail",
        ItemKind::Fetch => "fetch",
    }
}

/// The kind an [`ITEM_KIND`] value names (`None`: no kind of the link).
pub fn kind_named(name: &[u8]) -> Option<ItemKind> {
    match name {
        b"mail" => Some(ItemKind::Mail),
        b"fetch" => Some(ItemKind::Fetch),
        _ => None,
    }
}

/// The JSON before a handed-over job's content.
#[derive(Serialize, Deserialize)]
pub struct JobTransfer {
    /// The job's id, 32 hex digits (kept: the user's URL and token stay
    /// valid at the receiver).
    pub id: String,
    /// The record.
    pub job: Job,
}

impl JobTransfer {
    /// The transfer of job `id`.
    pub fn new(id: ItemId, job: Job) -> Self {
        Self {
            id: id.to_string(),
            job,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_name_that_names_it() {
        for kind in [ItemKind::Mail, ItemKind::Fetch] {
            assert_eq!(kind_named(kind_name(kind).as_bytes()), Some(kind));
        }
        assert_eq!(kind_named(b"Mail"), None);
        assert_eq!(kind_named(b""), None);
    }
}
