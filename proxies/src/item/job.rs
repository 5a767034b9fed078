//! Download jobs: the record the HTTP API creates, the fetcher fills and
//! cover traffic fakes (its one encoding and decoding), and the content
//! a job's body streams into the store.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use dust_mixer::{wall_ms, ContentWriter, ItemId, StorageError, Store};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

/// Whether `url` is an absolute `http` or `https` URL with a host: the only
/// URLs a job fetches (or is redirected to).
pub fn is_http_url(url: &str) -> bool {
    url.parse::<http::Uri>()
        .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
}

/// Bytes stored per write on the blocking pool by [`store_body`] (sealed
/// there): memory per transfer stays about twice this, whatever its size.
const WRITE_BATCH: usize = 1 << 20;

/// Why [`store_body`] stopped.
#[derive(Debug)]
pub(crate) enum StoreBodyError {
    /// More than its limit.
    TooLarge,
    /// Reading the body failed (the peer went away).
    Body(hyper::Error),
    /// Storing failed.
    Storage(StorageError),
    /// A blocking storage task did not finish.
    Task(tokio::task::JoinError),
}

impl From<StorageError> for StoreBodyError {
    fn from(e: StorageError) -> Self {
        Self::Storage(e)
    }
}

impl From<tokio::task::JoinError> for StoreBodyError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Task(e)
    }
}

/// Stream `first` and then `body` into job `id`'s content at `offset`, in
/// batches of [`WRITE_BATCH`] bytes sealed and written on a blocking
/// thread while the next batch arrives; at most `limit` bytes. Returns the
/// (uncommitted) writer and the byte count: the caller commits it
/// ([`Store::commit_chunk`]) or drops it (its frame is cut off). The
/// fetcher stores an origin's answer with it, the peer link a handed-over
/// download.
pub(crate) async fn store_body(
    store: &Arc<Store>,
    id: &ItemId,
    offset: u64,
    first: Bytes,
    mut body: Incoming,
    limit: u64,
) -> Result<(ContentWriter, u64), StoreBodyError> {
    let s = Arc::clone(store);
    let job = *id;
    let writer = tokio::task::spawn_blocking(move || s.content_writer(&job, offset)).await??;
    // Double buffering: while one batch is sealed and written on a
    // blocking thread, the next one is received. The writer and the
    // emptied buffer come back from each write.
    type Write = tokio::task::JoinHandle<Result<(ContentWriter, Vec<u8>), StorageError>>;
    let mut idle = Some((writer, Vec::with_capacity(WRITE_BATCH)));
    let mut writing: Option<Write> = None;
    let mut buf = Vec::with_capacity(WRITE_BATCH);
    let mut got = 0u64;
    let mut first = (!first.is_empty()).then_some(first);
    loop {
        let data = match first.take() {
            Some(b) => Some(b),
            None => body
                .frame()
                .await
                .transpose()
                .map_err(StoreBodyError::Body)?
                .map(|f| f.into_data().unwrap_or_default()),
        };
        let end = data.is_none();
        if let Some(data) = data {
            got += data.len() as u64;
            if got > limit {
                if let Some(w) = writing.take() {
                    let _ = w.await; // the writer's drop cuts its frame off
                }
                return Err(StoreBodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
        if buf.len() >= WRITE_BATCH || (end && !buf.is_empty()) {
            let (mut writer, spare) = match (writing.take(), idle.take()) {
                (Some(w), _) => w.await??,
                (None, Some(idle)) => idle,
                (None, None) => unreachable!("the writer is either idle or writing"),
            };
            let full = std::mem::replace(&mut buf, spare);
            writing = Some(tokio::task::spawn_blocking(move || {
                let mut full = full;
                writer.write(&full)?;
                full.clear();
                Ok((writer, full))
            }));
        }
        if end {
            let writer = match (writing.take(), idle.take()) {
                (Some(w), _) => w.await??.0,
                (None, Some((w, _))) => w,
                (None, None) => unreachable!("the writer is either idle or writing"),
            };
            return Ok((writer, got));
        }
    }
}

/// State of a fetch job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for its chunks' release times.
    Queued,
    /// Some chunks are stored.
    Fetching,
    /// All content is stored.
    Ready,
    /// Gave up (see `reason`).
    Failed,
}

/// A fetch job, as stored (JSON) in the `fetches` tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// What to fetch.
    pub url: String,
    /// Who asked (only they can see it).
    pub user: String,
    /// Current state.
    pub state: JobState,
    /// Why it failed.
    pub reason: Option<String>,
    /// When it was queued (ms since the epoch).
    pub created_ms: u64,
    /// Do not start before (ms since the epoch).
    pub not_before_ms: Option<u64>,
    /// Give up after (ms since the epoch).
    pub deadline_ms: Option<u64>,
    /// Total size, once known.
    pub total: Option<u64>,
    /// The origin's ETag, once known.
    pub etag: Option<String>,
    /// Expected ready time (ms since the epoch), once scheduled.
    pub expected_ready_ms: Option<u64>,
    /// Redirects followed so far.
    #[serde(default)]
    pub redirects: u32,
    /// A cover (dummy) download: one chunk is fetched, then the job is
    /// dropped. It belongs to no user.
    #[serde(default)]
    pub cover: bool,
    /// The origin's `Content-Type`, served with the content. Only a
    /// plausible one ([`media_type`]) is ever kept, whoever wrote the
    /// record (the fetcher, or a peer handing the job over): it goes into
    /// response headers and multipart part headers.
    #[serde(default, deserialize_with = "plausible_media_type")]
    pub content_type: Option<String>,
    /// When the content was complete (ms since the epoch): its
    /// `Last-Modified` here.
    #[serde(default)]
    pub ready_ms: Option<u64>,
    /// Handed to the successor mote (hop at drain): the job's URL there.
    /// The record stays here (without its content) so that the user who
    /// asks this mote is sent there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<String>,
    /// The peer that handed this job over (its name here), set by the
    /// receiving side: a resend of that transfer may complete it, no other
    /// transfer may touch the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_peer: Option<String>,
}

impl Job {
    /// A new, queued job of `user` for `url`, created `now`.
    pub fn new(
        url: String,
        user: String,
        now: SystemTime,
        not_before_ms: Option<u64>,
        deadline_ms: Option<u64>,
    ) -> Self {
        Job {
            url,
            user,
            state: JobState::Queued,
            reason: None,
            created_ms: wall_ms(now),
            not_before_ms,
            deadline_ms,
            total: None,
            etag: None,
            expected_ready_ms: None,
            redirects: 0,
            cover: false,
            content_type: None,
            ready_ms: None,
            moved_to: None,
            from_peer: None,
        }
    }

    /// The job is complete at `now`.
    pub fn set_ready(&mut self, now: SystemTime) {
        self.state = JobState::Ready;
        self.ready_ms = Some(wall_ms(now));
    }

    /// The name the content is offered under: the URL's last path segment,
    /// reduced to `[A-Za-z0-9._-]` (`download` if nothing is left).
    pub fn file_name(&self) -> String {
        let path = self.url.split(['?', '#']).next().unwrap_or_default();
        let last = path.rsplit('/').next().unwrap_or_default();
        let name: String = last
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = name.trim_matches('.').to_string();
        if name.is_empty() || name.chars().all(|c| c == '_') {
            "download".into()
        } else {
            name
        }
    }

    /// A cover (dummy) download of `url`, created `now`: it belongs to no
    /// user.
    pub fn cover(url: String, now: SystemTime) -> Self {
        Job {
            cover: true,
            ..Job::new(url, String::new(), now, None, None)
        }
    }

    /// Serialize for the store.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Inverse of [`Job::encode`]: the one place a job record is read
    /// (the store's records through [`Job::load`] and [`records`]).
    pub fn decode(b: &[u8]) -> Option<Self> {
        serde_json::from_slice(b).ok()
    }

    /// Job `id` in `store` (`Ok(None)`: there is none).
    pub fn load(store: &Store, id: &ItemId) -> Result<Option<Self>, LoadError> {
        match store.job(id)? {
            None => Ok(None),
            Some(rec) => Job::decode(&rec).map(Some).ok_or(LoadError::Unreadable),
        }
    }
}

/// Why a job could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The record is not a job this build reads.
    #[error("unreadable job")]
    Unreadable,
}

impl From<LoadError> for dust_mixer::DeliveryError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Storage(e) => e.into(),
            LoadError::Unreadable => dust_mixer::DeliveryError::permanent("unreadable job"),
        }
    }
}

/// Every job in `store`, with its id; `None` for a record that does not
/// read.
pub fn records(
    store: &Store,
) -> impl Iterator<Item = Result<(ItemId, Option<Job>), StorageError>> + '_ {
    store
        .jobs()
        .map(|r| r.map(|(id, rec)| (id, Job::decode(&rec))))
}

/// `v` as a media type to serve, if it is a plausible one: printable ASCII
/// (no CR or LF that could end a header line), with a `/`, at most 200
/// bytes.
pub fn media_type(v: &str) -> Option<String> {
    let v = v.trim();
    let plausible = v.len() <= 200 && v.contains('/') && v.bytes().all(|b| (32..=126).contains(&b));
    plausible.then(|| v.to_string())
}

/// Deserialize a [`Job::content_type`], keeping only a [`media_type`].
fn plausible_media_type<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    use serde::Deserialize;
    Ok(Option::<String>::deserialize(d)?.and_then(|v| media_type(&v)))
}

/// Fetch jobs by state, for `/status` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchCounts {
    /// Waiting for their first chunk.
    pub queued: u64,
    /// Some content stored.
    pub fetching: u64,
    /// Complete.
    pub ready: u64,
    /// Given up, or unreadable.
    pub failed: u64,
    /// Handed to the successor mote.
    #[serde(default)]
    pub moved: u64,
}

impl FetchCounts {
    /// Count the jobs in `store`.
    pub fn count(store: &Store) -> Self {
        let mut c = FetchCounts::default();
        for (_, job) in records(store).flatten() {
            if job.as_ref().is_some_and(|j| j.moved_to.is_some()) {
                c.moved += 1;
                continue;
            }
            match job.map(|j| j.state) {
                Some(JobState::Queued) => c.queued += 1,
                Some(JobState::Fetching) => c.fetching += 1,
                Some(JobState::Ready) => c.ready += 1,
                Some(JobState::Failed) | None => c.failed += 1,
            }
        }
        c
    }
}
