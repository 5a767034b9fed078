//! The link between motes, receiving side: `POST /v1/peer/items` admits one
//! item another mote hands over (a cascade's next hop, or a successor that
//! takes a queue before its sender expires).
//!
//! The request: `Authorization: Bearer NAME:TOKEN` (a peer from
//! `[[peers]]` with a `token_hash`: peers and users are separate, a user's
//! token cannot push items and a peer's cannot queue downloads),
//! `Dust-Item-Id: <32 hex digits>` (the sender's id of the item),
//! `Dust-Item-Kind: mail`, and the item's payload as the body; or
//! `Dust-Item-Kind: fetch` for a download job handed to a successor:
//! `Dust-Job-Length: N`, and as the body the job's record (N bytes of
//! JSON: URL, owner, state, size, validators) followed by the content
//! stored so far (a prefix of the object). The job keeps its id, so the
//! user's job URL and token work at the successor (which must have the
//! same user, by name). For a job, `Dust-Item-Id` is the job's id (the
//! record's `id`; anything else is `400`): the transfer is bound to (peer,
//! job id). A job that exists here is never replaced: a resend of the same
//! peer's transfer is recognized (`200`), any other transfer naming it gets
//! `409` and writes nothing.
//!
//! The answer comes only after the item is durably admitted (fsynced):
//! `201` for a new item, `200` for one admitted before (same peer, same
//! id). The receiving side keeps a keyed digest of (peer, id), written in
//! one transaction with the item, for `TRANSFER_WINDOW`: a sender that got
//! no answer (a crash, a lost connection) sends again and its item is
//! stored once. The sender deletes its copy only after a 2xx.
//!
//! The item gets a fresh delay from this mote's own strategy: nothing of
//! the sender's timing (its remaining delay, its attempts) crosses the
//! link, so the link carries no timing through.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use bytes::Bytes;
use dust_mixer::{Deliver, ItemId, ItemKind, Mixer, MixerError, Once, StorageError};
use futures::task::Spawn;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{header, HeaderMap, Request, StatusCode};
use tor_rtcompat::{Blocking, SleepProvider};

use crate::access::auth::{Users, Verdict, Verifier};
use crate::item::mail::StoredMail;

/// How long a received item's (peer, id) digest is kept: longer than any
/// mote lives, so a resend is always recognized.
pub const TRANSFER_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a mail item's body may take to arrive (a job's: this plus
/// [`BODY_TIME_PER_MIB`]).
const BODY_TIMEOUT: Duration = Duration::from_secs(120);

/// Largest job record accepted (the JSON before the content).
const MAX_JOB_RECORD: usize = 64 * 1024;

/// Pieces in which a job's content is read and sent.
const SEND_PIECE: u64 = 1024 * 1024;

/// Limits of one peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerLimits {
    /// Largest item body accepted (413 beyond).
    pub max_item_bytes: usize,
    /// Items per second accepted on average (429 beyond)…
    pub rate_per_s: f64,
    /// …with bursts of this many.
    pub burst: u32,
}

/// A token bucket: `tokens` refill at the peer's rate up to its burst.
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

/// The peers allowed to hand items to this mote.
pub struct Peers {
    verifier: Verifier,
    limits: HashMap<String, PeerLimits>,
    buckets: parking_lot::Mutex<HashMap<String, Bucket>>,
    /// The HTTP users of this mote: a download job is taken over only for
    /// one of them (by name), so that its owner can fetch it here.
    job_users: std::collections::HashSet<String>,
    /// Jobs being received now: a second transfer of one of them gets 503
    /// (with `Retry-After`) at once. Two transfers of one job cannot both
    /// find it missing, and a slow one holds nobody else up.
    receiving: parking_lot::Mutex<std::collections::HashSet<ItemId>>,
    /// This mote's own intake rules, applied to mail from peers too.
    mail: MailRules,
}

/// What this mote takes as mail, whoever hands it over: a peer's mail meets
/// the same limits and sanitizer as a submission over SMTP (a peer is
/// another mote, but its operator, its provider or a bug may send anything).
#[derive(Debug, Clone, Copy)]
pub struct MailRules {
    /// `[smtp] max_recipients`.
    pub max_recipients: usize,
    /// `[smtp] max_message_bytes`.
    pub max_message_bytes: usize,
    /// `[smtp]`'s sanitizer settings; the Message-ID the entry mote set is
    /// kept.
    pub sanitize: crate::item::mail::SanitizeOptions,
}

impl Default for MailRules {
    fn default() -> Self {
        let smtp = crate::intake::smtp::SmtpConfig::default();
        Self::of(&smtp)
    }
}

impl MailRules {
    /// The rules of an SMTP configuration.
    pub fn of(smtp: &crate::intake::smtp::SmtpConfig) -> Self {
        Self {
            max_recipients: smtp.max_recipients,
            max_message_bytes: smtp.max_message_bytes,
            sanitize: crate::item::mail::SanitizeOptions {
                keep_own_message_id: true,
                ..smtp.sanitize
            },
        }
    }

    /// `payload` as this mote stores it (sanitized again), or the refusal.
    fn take(&self, payload: &[u8]) -> Result<Vec<u8>, Answer> {
        let bad = |what: String| Answer::err(StatusCode::BAD_REQUEST, "bad_item", what);
        let mut mail =
            StoredMail::decode(payload).map_err(|e| bad(format!("not a stored message: {e}")))?;
        if mail.rcpts.is_empty() || mail.rcpts.len() > self.max_recipients {
            return Err(bad(format!(
                "a message goes to 1 to {} recipients here, not {}",
                self.max_recipients,
                mail.rcpts.len()
            )));
        }
        if mail.message.len() > self.max_message_bytes {
            return Err(Answer::err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "item_too_large",
                format!("messages are at most {} bytes here", self.max_message_bytes),
            ));
        }
        let mut rng = rand::rng();
        mail.message = crate::item::mail::sanitize(&mail.message, self.sanitize, &mut rng)
            .map_err(|e| bad(format!("the message is refused: {e}")))?;
        Ok(mail.encode())
    }
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.limits.keys().collect();
        names.sort();
        f.debug_struct("Peers").field("names", &names).finish()
    }
}

impl Peers {
    /// `users`: peer name → argon2 hash of its token; `limits` per name.
    pub fn new(users: Users, limits: HashMap<String, PeerLimits>) -> Self {
        Self {
            verifier: Verifier::new(users),
            limits,
            buckets: parking_lot::Mutex::new(HashMap::new()),
            job_users: std::collections::HashSet::new(),
            receiving: parking_lot::Mutex::new(std::collections::HashSet::new()),
            mail: MailRules::default(),
        }
    }

    /// Apply these intake rules to mail from peers (those of `[smtp]`).
    pub fn with_mail_rules(mut self, rules: MailRules) -> Self {
        self.mail = rules;
        self
    }

    /// Take over download jobs of these HTTP users (by name).
    pub fn accept_jobs_of(mut self, users: impl IntoIterator<Item = String>) -> Self {
        self.job_users = users.into_iter().collect();
        self
    }

    /// Take one item from `peer`'s bucket: `Err(seconds)` until the next
    /// item is allowed.
    fn take(&self, peer: &str, limits: PeerLimits) -> Result<(), u64> {
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock();
        let b = buckets.entry(peer.to_string()).or_insert(Bucket {
            tokens: f64::from(limits.burst),
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * limits.rate_per_s;
        b.tokens = (b.tokens + refill).min(f64::from(limits.burst));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / limits.rate_per_s).ceil().max(1.0) as u64)
        }
    }

    /// No peer may send.
    pub fn none() -> Self {
        Self::new(Users::default(), HashMap::new())
    }

    fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Mark job `id` as being received until the guard drops; `None` if
    /// it is already.
    fn receiving(&self, id: ItemId) -> Option<Receiving<'_>> {
        // (`then`, not `then_some`: a guard made and dropped here would
        // take the lock again, and remove the other transfer's entry.)
        let new = self.receiving.lock().insert(id);
        new.then(|| Receiving { peers: self, id })
    }
}

/// A job being received (see [`Peers::receiving`]).
struct Receiving<'a> {
    peers: &'a Peers,
    id: ItemId,
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        self.peers.receiving.lock().remove(&self.id);
    }
}

/// Why a transfer was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The mote is stopping or too near its end (503).
    #[error("not accepting: {0}")]
    Unavailable(&'static str),
    /// The disk is nearly full (507).
    #[error("insufficient storage")]
    NoSpace,
    /// A download job with this id is here already, not from this transfer
    /// (409).
    #[error("the job exists here")]
    Exists,
    /// Anything else (500).
    #[error(transparent)]
    Other(MixerError),
}

/// Durable, exactly-once admission of a transferred item.
pub trait Transfer: Send + Sync + 'static {
    /// Admit `payload` as a new item of `kind` with a fresh delay, unless
    /// `digest` was admitted within `window`. `true`: stored now.
    fn admit_transfer(
        &self,
        kind: ItemKind,
        payload: Vec<u8>,
        digest: [u8; 32],
        window: Duration,
    ) -> impl Future<Output = Result<bool, TransferError>> + Send;

    /// Whether download job `id` may be taken over as `record` (before
    /// anything of it is written): `Ok(true)` if it is not here, or is
    /// here as this very transfer wrote it (the same peer's unchanged
    /// record: a resend after a crash between record and item);
    /// `Ok(false)` if `digest` was admitted before, within the transfer
    /// window (nothing is written: the job may have moved on here since);
    /// [`TransferError::Exists`] if another job `id` is here (another
    /// peer's, a user's own, or one changed since): it is neither replaced
    /// nor given another item.
    fn may_take_job(
        &self,
        id: ItemId,
        record: &[u8],
        digest: [u8; 32],
    ) -> impl Future<Output = Result<bool, TransferError>> + Send;

    /// The store a handed-over job's content is streamed into (between
    /// [`may_take_job`](Self::may_take_job) and
    /// [`admit_job`](Self::admit_job)).
    fn content_store(&self) -> &std::sync::Arc<dust_mixer::Store>;

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
    ) -> impl Future<Output = Result<bool, TransferError>> + Send;
}

/// A storage error as a transfer's refusal.
fn storage_refusal(e: StorageError) -> TransferError {
    match e {
        StorageError::Full { .. } => TransferError::NoSpace,
        e => TransferError::Other(MixerError::Storage(e)),
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
    ) -> Result<bool, TransferError> {
        let once = Once {
            digest,
            window,
            exact: true,
        };
        match self.admit_once(kind, payload, once).await {
            Ok(new) => Ok(new.is_some()),
            Err(MixerError::ShuttingDown) => Err(TransferError::Unavailable("shutting down")),
            Err(MixerError::Expiring) => Err(TransferError::Unavailable("expiring")),
            Err(MixerError::Storage(e)) => Err(storage_refusal(e)),
            Err(e) => Err(TransferError::Other(e)),
        }
    }

    async fn may_take_job(
        &self,
        id: ItemId,
        record: &[u8],
        digest: [u8; 32],
    ) -> Result<bool, TransferError> {
        let store = self.store();
        let now = dust_mixer::wall_ms(std::time::SystemTime::now());
        if store.digest_seen(&digest, now).map_err(storage_refusal)? {
            // Taken over before (the sender never saw the answer): what is
            // here now is newer than what was sent.
            store.sync().await.map_err(storage_refusal)?;
            return Ok(false);
        }
        match store.job(&id).map_err(storage_refusal)? {
            Some(here) if here != record => Err(TransferError::Exists),
            _ => Ok(true),
        }
    }

    fn content_store(&self) -> &std::sync::Arc<dust_mixer::Store> {
        self.store()
    }

    async fn admit_job(
        &self,
        id: ItemId,
        record: Vec<u8>,
        digest: [u8; 32],
        window: Duration,
    ) -> Result<bool, TransferError> {
        if !self.may_take_job(id, &record, digest).await? {
            return Ok(false);
        }
        // The content first (its frame fdatasynced, its index entry durable
        // with the admission's flush), then the record, then the item: a
        // crash before the item leaves nothing a resend would not replace.
        self.store()
            .put_job(&id, &record)
            .map_err(storage_refusal)?;
        self.admit_transfer(ItemKind::Fetch, id.0.to_vec(), digest, window)
            .await
    }
}

/// The digest that makes a transfer unique: the peer's name and its id.
fn transfer_digest(peer: &str, id: &ItemId) -> [u8; 32] {
    Blake2b::<U32>::new()
        .chain_update(b"dustmote transfer\0")
        .chain_update(peer.as_bytes())
        .chain_update([0])
        .chain_update(id.0)
        .finalize()
        .into()
}

/// What a `POST /v1/peer/items` answers: status, error code (none for a
/// success) and message.
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The error code of the JSON body (`None`: a success).
    pub code: Option<&'static str>,
    /// A sentence for people.
    pub detail: String,
    /// `Retry-After` in seconds, for temporary refusals.
    pub retry_after_s: Option<u64>,
}

impl Answer {
    fn err(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code: Some(code),
            detail: detail.into(),
            retry_after_s: None,
        }
    }
}

/// The peer a request's `Authorization: Bearer NAME:TOKEN` belongs to.
async fn authenticate(peers: &Peers, headers: &HeaderMap) -> Result<String, Answer> {
    let unauthorized = || {
        Answer::err(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a peer's bearer token is required (NAME:TOKEN)",
        )
    };
    let token = crate::intake::http::bearer(headers).ok_or_else(unauthorized)?;
    let (name, secret) = token.split_once(':').ok_or_else(unauthorized)?;
    match peers.verifier.verify(name, secret.as_bytes()).await {
        Verdict::Ok => Ok(name.to_string()),
        Verdict::Wrong => Err(unauthorized()),
        Verdict::Busy(wait) => Err(Answer {
            retry_after_s: Some(wait.as_secs().max(1)),
            ..Answer::err(
                StatusCode::TOO_MANY_REQUESTS,
                "busy",
                "too many authentication attempts; try again later",
            )
        }),
    }
}

/// The endpoint as the HTTP API calls it (a boxed future: the API stays
/// generic over its scheduler only).
pub type Endpoint = std::sync::Arc<
    dyn Fn(Request<Incoming>) -> std::pin::Pin<Box<dyn Future<Output = Answer> + Send>>
        + Send
        + Sync,
>;

/// `POST /v1/peer/items` for `peers`, admitting through `transfer`.
pub fn endpoint<T: Transfer>(peers: Peers, transfer: std::sync::Arc<T>) -> Endpoint {
    let peers = std::sync::Arc::new(peers);
    std::sync::Arc::new(move |req| {
        let (peers, transfer) = (
            std::sync::Arc::clone(&peers),
            std::sync::Arc::clone(&transfer),
        );
        Box::pin(async move { receive(&peers, &*transfer, req).await })
    })
}

/// Handle one `POST /v1/peer/items`.
pub async fn receive<T: Transfer>(peers: &Peers, transfer: &T, req: Request<Incoming>) -> Answer {
    if peers.is_empty() {
        return Answer::err(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
    }
    let conn = req.extensions().get::<std::sync::Arc<crate::intake::http::Conn>>();
    let peer = match authenticate(peers, req.headers()).await {
        Ok(p) => p,
        Err(a) => {
            if let Some(conn) = conn.filter(|_| a.status == StatusCode::UNAUTHORIZED) {
                conn.failed();
            }
            return a;
        }
    };
    // The connection now holds one of the peer link's own slots.
    if conn.is_some_and(|c| !c.peer()) {
        return Answer {
            retry_after_s: Some(1),
            ..Answer::err(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "every connection slot of the peer link is taken; try again later",
            )
        };
    }
    let Some(limits) = peers.limits.get(&peer).copied() else {
        return Answer::err(StatusCode::UNAUTHORIZED, "unauthorized", "unknown peer");
    };
    if let Err(wait_s) = peers.take(&peer, limits) {
        return Answer {
            retry_after_s: Some(wait_s),
            ..Answer::err(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "this peer's item rate is exceeded; try again later",
            )
        };
    }
    let (id, kind, job_len) = match item_headers(req.headers()) {
        Ok(h) => h,
        Err(a) => return a,
    };
    let digest = transfer_digest(&peer, &id);
    let admitted = if kind == ItemKind::Fetch {
        match receive_job(
            peers,
            transfer,
            &peer,
            id,
            job_len,
            limits,
            req.into_body(),
            digest,
        )
        .await
        {
            Ok(r) => r,
            Err(a) => return a,
        }
    } else {
        let read = Limited::new(req.into_body(), limits.max_item_bytes).collect();
        let body: Bytes = match tokio::time::timeout(BODY_TIMEOUT, read).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => return too_large(limits),
            Err(_) => return late(),
        };
        // Nothing that could not be delivered is stored: the payload must
        // be a message this mote can send on, within its own rules.
        let payload = match peers.mail.take(&body) {
            Ok(p) => p,
            Err(a) => return a,
        };
        transfer
            .admit_transfer(kind, payload, digest, TRANSFER_WINDOW)
            .await
    };
    match admitted {
        Ok(true) => {
            tracing::debug!("admitted an item from a peer");
            Answer {
                status: StatusCode::CREATED,
                code: None,
                detail: "admitted".into(),
                retry_after_s: None,
            }
        }
        Ok(false) => Answer {
            status: StatusCode::OK,
            code: None,
            detail: "admitted before".into(),
            retry_after_s: None,
        },
        Err(TransferError::Unavailable(why)) => Answer {
            retry_after_s: Some(60),
            ..Answer::err(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why)
        },
        Err(TransferError::Exists) => Answer::err(
            StatusCode::CONFLICT,
            "job_exists",
            "a download job with this id is here already",
        ),
        Err(TransferError::NoSpace) => Answer {
            retry_after_s: Some(60),
            ..Answer::err(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                "the mote's disk is nearly full; try again later",
            )
        },
        Err(TransferError::Other(e)) => {
            tracing::error!(error = %e, "admitting a transferred item failed");
            Answer::err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the item could not be stored",
            )
        }
    }
}

/// The item's headers: its id, its kind and (for a job) its record's
/// length; or the refusal.
fn item_headers(headers: &HeaderMap) -> Result<(ItemId, ItemKind, Option<usize>), Answer> {
    let Some(id) = header_value::<ItemId>(headers, "dust-item-id") else {
        return Err(Answer::err(
            StatusCode::BAD_REQUEST,
            "bad_item_id",
            "Dust-Item-Id must be the item's id, 32 hex digits",
        ));
    };
    let kind = match headers.get("dust-item-kind").map(|v| v.as_bytes()) {
        Some(b"mail") => ItemKind::Mail,
        Some(b"fetch") => ItemKind::Fetch,
        _ => {
            return Err(Answer::err(
                StatusCode::BAD_REQUEST,
                "bad_item_kind",
                "Dust-Item-Kind must be \"mail\" or \"fetch\"",
            ))
        }
    };
    Ok((id, kind, header_value::<usize>(headers, "dust-job-length")))
}

/// Entry points for the fuzz targets (`fuzz/`).
pub mod fuzzing {
    use super::*;

    /// A peer's request as the endpoint takes it apart before any I/O:
    /// `data` is header lines (`Name: value`, up to an empty line) and the
    /// body. The headers are parsed; a job's record (the body's first
    /// `Dust-Job-Length` bytes) or a mail item is checked as the endpoint
    /// checks it. Asserts what is accepted: a job record that this mote
    /// reads back, for one of its users, with an http(s) URL, marked as
    /// the peer's; a mail item that decodes, with 1 to `max_recipients`
    /// recipients.
    /// `true` if the item would be taken.
    pub fn request(data: &[u8]) -> bool {
        let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
            Some(i) => (&data[..i], &data[i + 2..]),
            None => (data, &[][..]),
        };
        let mut headers = HeaderMap::new();
        for line in head.split(|b| *b == b'\n') {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if let (Ok(n), Ok(v)) = (
                hyper::header::HeaderName::from_bytes(name),
                hyper::header::HeaderValue::from_bytes(value),
            ) {
                headers.append(n, v);
            }
        }
        let Ok((id, kind, job_len)) = item_headers(&headers) else {
            return false;
        };
        let rules = MailRules {
            max_recipients: 4,
            max_message_bytes: 2048,
            ..MailRules::default()
        };
        let peers = Peers::none()
            .with_mail_rules(rules)
            .accept_jobs_of(["alice".to_string()]);
        match kind {
            ItemKind::Fetch => {
                let Some(n) = job_len.filter(|n| *n <= body.len() && *n <= MAX_JOB_RECORD) else {
                    return false;
                };
                let Ok((job_id, record, job)) = take_job(&peers, "fuzzer", &body[..n]) else {
                    return false;
                };
                if content_fits(&job, (body.len() - n) as u64).is_err() {
                    return false;
                }
                let back = crate::item::job::Job::decode(&record).expect("a taken record decodes");
                assert_eq!(back, job);
                assert_eq!(job.user, "alice");
                assert!(crate::item::job::is_http_url(&job.url), "{}", job.url);
                assert_eq!(job.from_peer.as_deref(), Some("fuzzer"));
                assert!(!job.cover && job.moved_to.is_none());
                job_id == id
            }
            _ => {
                let Ok(payload) = peers.mail.take(body) else {
                    return false;
                };
                let mail = StoredMail::decode(&payload).expect("a taken item decodes");
                assert!((1..=4).contains(&mail.rcpts.len()));
                true
            }
        }
    }
}

/// Header `name`, parsed (`None` if missing or unparsable).
fn header_value<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

fn too_large(limits: PeerLimits) -> Answer {
    Answer::err(
        StatusCode::PAYLOAD_TOO_LARGE,
        "item_too_large",
        format!(
            "items from this peer are at most {} bytes",
            limits.max_item_bytes
        ),
    )
}

fn late() -> Answer {
    Answer::err(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        "the item did not arrive in time",
    )
}

/// The time a job transfer's body may take on top of [`BODY_TIMEOUT`], per
/// MiB: twice what the sender allows itself (it gives up first).
const BODY_TIME_PER_MIB: Duration = Duration::from_secs(2);

/// Receive a download job: its record (the first `job_len` bytes, checked
/// before anything is written), then its content, streamed into the store
/// as it arrives (memory stays flat for any size), then the record and its
/// fetch item. The body's deadline grows with its length.
#[allow(clippy::too_many_arguments)]
async fn receive_job<T: Transfer>(
    peers: &Peers,
    transfer: &T,
    peer: &str,
    id: ItemId,
    job_len: Option<usize>,
    limits: PeerLimits,
    mut body: Incoming,
    digest: [u8; 32],
) -> Result<Result<bool, TransferError>, Answer> {
    let max = limits.max_item_bytes as u64;
    let declared = hyper::body::Body::size_hint(&body).exact();
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(limits));
    }
    let length = declared.unwrap_or(max);
    let mib = u32::try_from(length >> 20).unwrap_or(u32::MAX);
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT + BODY_TIME_PER_MIB * mib;
    let bad = |what: &str| Answer::err(StatusCode::BAD_REQUEST, "bad_item", what.to_string());
    let n = job_len
        .filter(|n| *n <= MAX_JOB_RECORD && *n <= limits.max_item_bytes)
        .ok_or_else(|| bad("Dust-Job-Length must give the job record's length"))?;
    // The record, and what came with it of the content.
    let mut head = Vec::with_capacity(n);
    let mut rest = Bytes::new();
    while head.len() < n {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| late())?;
        let Some(data) = frame.transpose().map_err(|_| late())? else {
            return Err(bad("Dust-Job-Length must give the job record's length"));
        };
        let Ok(mut data) = data.into_data() else {
            continue;
        };
        let take = (n - head.len()).min(data.len());
        head.extend_from_slice(&data.split_to(take));
        rest = data;
    }
    let (job_id, record, job) = take_job(peers, peer, &head)?;
    if job_id != id {
        return Err(Answer::err(
            StatusCode::BAD_REQUEST,
            "bad_item_id",
            "for a download job, Dust-Item-Id must be the job's id",
        ));
    }
    let Some(_receiving) = peers.receiving(job_id) else {
        // Temporary: the sender may be resending after a lost connection
        // whose transfer this mote has not given up yet.
        return Err(Answer {
            retry_after_s: Some(10),
            ..Answer::err(
                StatusCode::SERVICE_UNAVAILABLE,
                "job_in_transfer",
                "this download job is being received on another connection; try again later",
            )
        });
    };
    match transfer.may_take_job(job_id, &record, digest).await {
        Ok(true) => {}
        other => return Ok(other),
    }
    let store = transfer.content_store();
    let r = receive_content(
        transfer, store, job_id, &job, record, rest, body, deadline, limits, n, digest,
    )
    .await;
    // Content written for a job that did not come: gone again.
    let refused = !matches!(r, Ok(Ok(_)));
    if refused && store.job(&job_id).is_ok_and(|j| j.is_none()) {
        if let Err(e) = store.delete_job(&job_id).await {
            tracing::warn!(error = %e, "could not remove the content of a job not taken over");
        }
    }
    r
}

/// The content part of [`receive_job`]: stream it into the store, check
/// its length, commit it, then admit the job.
#[allow(clippy::too_many_arguments)]
async fn receive_content<T: Transfer>(
    transfer: &T,
    store: &std::sync::Arc<dust_mixer::Store>,
    job_id: ItemId,
    job: &crate::item::job::Job,
    record: Vec<u8>,
    rest: Bytes,
    body: Incoming,
    deadline: tokio::time::Instant,
    limits: PeerLimits,
    record_len: usize,
    digest: [u8; 32],
) -> Result<Result<bool, TransferError>, Answer> {
    let bad = |what: &str| Answer::err(StatusCode::BAD_REQUEST, "bad_item", what.to_string());
    let room = (limits.max_item_bytes - record_len) as u64;
    let limit = job.total.map_or(room, |t| t.min(room));
    let stored = tokio::time::timeout_at(
        deadline,
        crate::item::job::store_body(store, &job_id, 0, rest, body, limit),
    )
    .await
    .map_err(|_| late())?;
    use crate::item::job::StoreBodyError as E;
    let (writer, got) = match stored {
        Ok(w) => w,
        Err(E::TooLarge) if limit < room => return Err(bad("more content than the job's size")),
        Err(E::TooLarge) => return Err(too_large(limits)),
        Err(E::Body(_)) => return Err(late()),
        Err(E::Storage(e)) => return Ok(Err(storage_refusal(e))),
        Err(E::Task(_)) => return Ok(Err(TransferError::Unavailable("shutting down"))),
    };
    content_fits(job, got)?;
    let s = std::sync::Arc::clone(store);
    match tokio::task::spawn_blocking(move || s.commit_chunk(writer)).await {
        Ok(Ok(())) => Ok(transfer
            .admit_job(job_id, record, digest, TRANSFER_WINDOW)
            .await),
        Ok(Err(e)) => Ok(Err(storage_refusal(e))),
        Err(_) => Ok(Err(TransferError::Unavailable("shutting down"))),
    }
}

/// Whether `got` bytes of content fit `job`: never more than its size, and
/// all of it for a finished download (this mote will not fetch it).
fn content_fits(job: &crate::item::job::Job, got: u64) -> Result<(), Answer> {
    let bad = |what: &str| Answer::err(StatusCode::BAD_REQUEST, "bad_item", what.to_string());
    if job.total.is_some_and(|t| got > t) {
        return Err(bad("more content than the job's size"));
    }
    if job.state == crate::item::job::JobState::Ready && job.total != Some(got) {
        return Err(bad("a finished download without all of its content"));
    }
    Ok(())
}

/// A job record handed over: the job's id (from the record's `id`), the
/// record as it is stored here and the job; or the refusal.
fn take_job(
    peers: &Peers,
    peer: &str,
    head: &[u8],
) -> Result<(ItemId, Vec<u8>, crate::item::job::Job), Answer> {
    let bad = |what: String| Answer::err(StatusCode::BAD_REQUEST, "bad_item", what);
    let envelope: JobTransfer =
        serde_json::from_slice(head).map_err(|e| bad(format!("not a job record: {e}")))?;
    let id: ItemId = envelope
        .id
        .parse()
        .map_err(|_| bad("the job's id must be 32 hex digits".into()))?;
    let mut job = envelope.job;
    if job.cover || job.moved_to.is_some() {
        return Err(bad("a cover or moved job is not handed over".into()));
    }
    if !crate::item::job::is_http_url(&job.url) {
        return Err(bad("the job's URL is not http(s)".into()));
    }
    if !peers.job_users.contains(&job.user) {
        return Err(Answer::err(
            StatusCode::BAD_REQUEST,
            "unknown_user",
            "this mote has no HTTP user of that name to hand the download to",
        ));
    }
    // This mote estimates its own ready time.
    job.expected_ready_ms = None;
    job.from_peer = Some(peer.to_string());
    let record = job.encode();
    Ok((id, record, job))
}

/// The JSON before a handed-over job's content.
#[derive(serde::Serialize, serde::Deserialize)]
struct JobTransfer {
    /// The job's id, 32 hex digits (kept: the user's URL and token stay
    /// valid).
    id: String,
    /// The record.
    job: crate::item::job::Job,
}

/// Where this mote hands items to: a peer's API (`[[peers]] url`, `token`).
#[derive(Clone)]
pub struct PeerTarget {
    /// The peer's name here (logs).
    pub name: String,
    /// The API's host (an onion address in production) and port.
    pub host: String,
    /// The API's port.
    pub port: u16,
    /// Sent as `Bearer NAME:TOKEN`: the name this mote has at the peer.
    pub credential: String,
}

impl PeerTarget {
    /// The peer's API as a URL (`http://HOST[:PORT]`), for users sent there.
    pub fn api_base(&self) -> String {
        if self.port == 80 {
            format!("http://{}", self.host)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Debug for PeerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credential.
        f.debug_struct("PeerTarget")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Hand item `id` (`payload`, of `kind`) to `peer` through `connector`;
/// `Ok` once the peer answered 2xx, i.e. stored it durably (or had it
/// already). Only then may the caller remove its copy.
///
/// A refusal the item can never get past (400, 413: the peer will not take
/// this item) is permanent; anything else — no route, a timeout, 401/404 (a
/// configuration to fix), 429, 503, 507, 5xx — is temporary: the item
/// stays and is tried again.
pub async fn send(
    connector: &dyn crate::tor::Connector,
    peer: &PeerTarget,
    isolation: u64,
    id: &ItemId,
    kind: ItemKind,
    payload: Vec<u8>,
) -> Result<(), dust_mixer::DeliveryError> {
    if kind != ItemKind::Mail {
        return Err(dust_mixer::DeliveryError::permanent(
            "a download is handed over with send_job",
        ));
    }
    let body = http_body_util::Full::new(Bytes::from(payload));
    post_item(connector, peer, isolation, id, "mail", None, body).await
}

/// Hand download job `job_id` to `peer`, under the job's id: its record and
/// the content stored so far, read from `store` and streamed in 1 MiB
/// pieces. `Ok` once the peer stored it durably; the caller then marks the
/// job moved ([`mark_moved`]) and drops its item.
pub async fn send_job(
    connector: &dyn crate::tor::Connector,
    peer: &PeerTarget,
    isolation: u64,
    store: &std::sync::Arc<dust_mixer::Store>,
    job_id: ItemId,
) -> Result<(), dust_mixer::DeliveryError> {
    use dust_mixer::DeliveryError;
    let record = store
        .job(&job_id)?
        .ok_or_else(|| DeliveryError::permanent("the job is gone"))?;
    let job = crate::item::job::Job::decode(&record)
        .ok_or_else(|| DeliveryError::permanent("unreadable job"))?;
    if job.cover {
        // It belongs to no one: it is released here.
        return Err(DeliveryError::permanent(
            "a cover download is not handed over",
        ));
    }
    let head = serde_json::to_vec(&JobTransfer {
        id: job_id.to_string(),
        job,
    })
    .map_err(|e| DeliveryError::permanent(format!("encoding the job: {e}")))?;
    let len = store.content_len(&job_id)?;
    let head_len = head.len();
    let first = futures::stream::once(async move {
        Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(head)))
    });
    let store = std::sync::Arc::clone(store);
    let pieces = futures::stream::try_unfold(0u64, move |at| {
        let store = std::sync::Arc::clone(&store);
        async move {
            if at >= len {
                return Ok(None);
            }
            let to = (at + SEND_PIECE).min(len);
            let bytes = tokio::task::spawn_blocking(move || store.read_content(&job_id, at, to))
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?
                .ok_or_else(|| std::io::Error::other("stored content has a gap"))?;
            Ok(Some((hyper::body::Frame::data(Bytes::from(bytes)), to)))
        }
    });
    use futures::StreamExt;
    let body = http_body_util::StreamBody::new(first.chain(pieces));
    // The transfer names the job (the receiver binds it to this peer and
    // the job's id), not the fetch item that may carry it here.
    post_item(
        connector,
        peer,
        isolation,
        &job_id,
        "fetch",
        Some((head_len, head_len as u64 + len)),
        body,
    )
    .await
}

/// Record that job `id` now lives at `peer` and drop its content here
/// (durably: when this returns, the user asking here is sent there).
pub async fn mark_moved(
    store: &dust_mixer::Store,
    id: &ItemId,
    peer: &PeerTarget,
) -> Result<(), StorageError> {
    let Some(mut job) = store.job(id)?.as_deref().and_then(crate::item::job::Job::decode) else {
        return Ok(());
    };
    job.moved_to = Some(format!("{}/v1/fetches/{id}", peer.api_base()));
    store.put_job(id, &job.encode())?;
    store.clear_chunks(id).await
}

/// POST one item to a peer's `/v1/peer/items`; `job`: (record length,
/// whole body length) of a download job.
async fn post_item<B>(
    connector: &dyn crate::tor::Connector,
    peer: &PeerTarget,
    isolation: u64,
    id: &ItemId,
    kind_name: &str,
    job: Option<(usize, u64)>,
    body: B,
) -> Result<(), dust_mixer::DeliveryError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use dust_mixer::DeliveryError;
    let temporary = |what: String| DeliveryError::temporary(format!("peer {}: {what}", peer.name));
    let stream = connector
        .connect(&crate::tor::Target {
            host: peer.host.clone(),
            port: peer.port,
            isolation,
        })
        .await
        .map_err(|e| temporary(format!("no stream: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| temporary(format!("HTTP: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let host = peer.api_base().trim_start_matches("http://").to_string();
    let mut req = Request::post("/v1/peer/items")
        .header(header::HOST, host)
        .header(header::AUTHORIZATION, format!("Bearer {}", peer.credential))
        .header("dust-item-id", id.to_string())
        .header("dust-item-kind", kind_name)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some((record, total)) = job {
        req = req
            .header("dust-job-length", record)
            .header(header::CONTENT_LENGTH, total);
    }
    let req = req
        .body(body)
        .map_err(|e| DeliveryError::permanent(format!("building the request: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| temporary(format!("HTTP: {e}")))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), 4096)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    if status.is_success() {
        return Ok(());
    }
    let what = format!("{status}: {}", body.trim());
    if matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::CONFLICT
    ) {
        Err(DeliveryError::permanent(format!(
            "peer {} refused the item: {what}",
            peer.name
        )))
    } else {
        Err(temporary(what))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    /// The fuzz target's seeds (fuzz/seeds/peer_request) on stable: what
    /// each must come to.
    #[test]
    fn the_fuzz_seeds_are_taken_or_refused_as_they_should() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/peer_request");
        let taken: Vec<bool> = (0..12)
            .map(|i| {
                super::fuzzing::request(&std::fs::read(dir.join(format!("seed-{i:02}"))).unwrap())
            })
            .collect();
        // 0: a message; 4: SMTPUTF8; 5: a job for alice. 1: 6 recipients;
        // 3: none; 7: file URL; 8: another user; 9: no record; 10: cover;
        // 11: bad headers.
        for (i, want) in [
            (0, true),
            (1, false),
            (3, false),
            (4, true),
            (5, true),
            (7, false),
            (8, false),
            (9, false),
            (10, false),
            (11, false),
        ] {
            assert_eq!(taken[i], want, "seed {i}");
        }
    }
    use super::*;

    #[test]
    fn a_peers_bucket_allows_its_burst_then_its_rate() {
        let limits = PeerLimits {
            max_item_bytes: 1,
            rate_per_s: 0.5,
            burst: 3,
        };
        let peers = Peers::new(Users::default(), HashMap::new());
        for _ in 0..3 {
            assert_eq!(peers.take("a", limits), Ok(()));
        }
        // Empty: the next item in 2 s (rate 0.5/s); another peer is not
        // affected.
        assert_eq!(peers.take("a", limits), Err(2));
        assert_eq!(peers.take("b", limits), Ok(()));
        // Two seconds later, one more.
        peers.buckets.lock().get_mut("a").unwrap().at -= Duration::from_secs(2);
        assert_eq!(peers.take("a", limits), Ok(()));
        assert!(peers.take("a", limits).is_err());
    }

    #[test]
    fn the_digest_depends_on_peer_and_id() {
        let (a, b) = (ItemId([1; 16]), ItemId([2; 16]));
        assert_ne!(transfer_digest("x", &a), transfer_digest("x", &b));
        assert_ne!(transfer_digest("x", &a), transfer_digest("y", &a));
        assert_eq!(transfer_digest("x", &a), transfer_digest("x", &a));
    }
}
