//! The JSON the download API reads and writes, as types: the server
//! writes them and `dustmote fetch` reads them, so the two cannot drift
//! apart.

use serde::{Deserialize, Serialize};

use crate::item::job::JobState;

/// The body of `POST /v1/fetches`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewFetch {
    /// The absolute `http` or `https` URL to download.
    pub url: String,
    /// Not before this time (RFC 3339; absent or `null`: now).
    pub not_before: Option<String>,
    /// Ready by this time (RFC 3339; absent or `null`: none).
    pub deadline: Option<String>,
}

/// `202` to a new fetch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Queued {
    /// The job's id (32 hex digits): its URL is `/v1/fetches/{id}`.
    pub id: String,
    /// Always `queued`.
    pub state: JobState,
}

/// `GET /v1/fetches/{id}`: a job as its owner sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchView {
    /// The job's id.
    pub id: String,
    /// What it downloads.
    pub url: String,
    /// Where it stands.
    pub state: JobState,
    /// Why it failed.
    pub reason: Option<String>,
    /// Bytes of content stored so far.
    pub bytes_stored: u64,
    /// The object's length, once known.
    pub total: Option<u64>,
    /// When it is expected to be ready (ms since the epoch).
    pub expected_ready_ms: Option<u64>,
}

/// Every refusal: a code for programs and a sentence for people.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// The code (`unauthorized`, `no_such_fetch`, `quota`, …).
    #[serde(default)]
    pub error: String,
    /// What went wrong.
    pub message: String,
    /// `moved`: the job's URL at the successor mote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<String>,
    /// `quota`: when the day's quota is reset (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,
}

impl ApiError {
    /// Refusal `error` saying `message`.
    pub fn new(error: &str, message: &str) -> Self {
        Self {
            error: error.to_string(),
            message: message.to_string(),
            moved_to: None,
            resets_at: None,
        }
    }

    /// With the job's URL at the successor.
    pub fn moved_to(self, url: &str) -> Self {
        Self {
            moved_to: Some(url.to_string()),
            ..self
        }
    }

    /// With the time the quota is reset.
    pub fn resets_at(self, at: String) -> Self {
        Self {
            resets_at: Some(at),
            ..self
        }
    }
}
