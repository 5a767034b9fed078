//! The link between motes, receiving side: `POST /v1/peer/items` admits one
//! item another mote hands over (a cascade's next hop, or a successor that
//! takes a queue before its sender expires). The request and its answers
//! are defined in [`crate::item::wire`]; the sending side is
//! [`crate::egress::hop`].
//!
//! A download job keeps its id, so the user's job URL and token work at
//! the successor (which must have the same user, by name). For a job,
//! `Dust-Item-Id` is the job's id (the record's `id`; anything else is
//! `400`): the transfer is bound to (peer, job id). A job that exists here
//! is never replaced: a resend of the same peer's transfer is recognized
//! (`200`), any other transfer naming it gets `409` and writes nothing.
//!
//! The answer comes only after the item is durably admitted (fsynced):
//! `201` for a new item, `200` for one admitted before (same peer, same
//! id). The receiving side keeps a keyed digest of (peer, id), written in
//! one transaction with the item, for `TRANSFER_WINDOW`: a sender that got
//! no answer (a crash, a lost connection) sends again and its item is
//! stored once.
//!
//! The item gets a fresh delay from this mote's own strategy: nothing of
//! the sender's timing (its remaining delay, its attempts) crosses the
//! link, so the link carries no timing through.

// Refusals are ready responses, as in the rest of the API.
#![allow(clippy::result_large_err)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use bytes::Bytes;
use dust_mixer::{ItemId, ItemKind, Store};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, StatusCode};
use serde_json::json;

use super::response::{bearer, error, json_response, retry_after, Resp};
use super::Conn;
use crate::access::auth::Verdict;
use crate::access::peers::{PeerLimits, Peers};
use crate::intake::smtp::SmtpConfig;
use crate::intake::{IntakeError, Transfer};
use crate::item::job::{is_http_url, store_body, Job, JobState, StoreBodyError};
use crate::item::mail::{sanitize, SanitizeOptions, StoredMail};
use crate::item::wire::{self, JobTransfer, MAX_JOB_RECORD};

/// How long a received item's (peer, id) digest is kept: longer than any
/// mote lives, so a resend is always recognized.
pub const TRANSFER_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a mail item's body may take to arrive (a job's: this plus
/// [`BODY_TIME_PER_MIB`]).
const BODY_TIMEOUT: Duration = Duration::from_secs(120);
/// The time a job transfer's body may take on top of [`BODY_TIMEOUT`], per
/// MiB: twice what the sender allows itself (it gives up first).
const BODY_TIME_PER_MIB: Duration = Duration::from_secs(2);

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
    pub sanitize: SanitizeOptions,
}

impl Default for MailRules {
    fn default() -> Self {
        Self::of(&SmtpConfig::default())
    }
}

impl MailRules {
    /// The rules of an SMTP configuration.
    pub fn of(smtp: &SmtpConfig) -> Self {
        Self {
            max_recipients: smtp.max_recipients,
            max_message_bytes: smtp.max_message_bytes,
            sanitize: SanitizeOptions {
                keep_own_message_id: true,
                ..smtp.sanitize
            },
        }
    }

    /// `payload` as this mote stores it (sanitized again), or the refusal.
    fn take(&self, payload: &[u8]) -> Result<Vec<u8>, Resp> {
        let bad = |what: String| error(StatusCode::BAD_REQUEST, "bad_item", &what);
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
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "item_too_large",
                &format!("messages are at most {} bytes here", self.max_message_bytes),
            ));
        }
        let mut rng = rand::rng();
        mail.message = sanitize(&mail.message, self.sanitize, &mut rng)
            .map_err(|e| bad(format!("the message is refused: {e}")))?;
        Ok(mail.encode())
    }
}

/// The receiving end of the link: who may send ([`Peers`]), what this mote
/// takes from them, and the jobs being received now.
#[derive(Debug)]
pub struct PeerLink {
    peers: Peers,
    /// This mote's own intake rules, applied to mail from peers too.
    mail: MailRules,
    /// The HTTP users of this mote: a download job is taken over only for
    /// one of them (by name), so that its owner can fetch it here.
    job_users: HashSet<String>,
    /// Jobs being received now: a second transfer of one of them gets 503
    /// (with `Retry-After`) at once. Two transfers of one job cannot both
    /// find it missing, and a slow one holds nobody else up.
    receiving: parking_lot::Mutex<HashSet<ItemId>>,
}

impl PeerLink {
    /// Take items from `peers`, mail within `mail`'s rules, and download
    /// jobs of `job_users` (HTTP users, by name).
    pub fn new(peers: Peers, mail: MailRules, job_users: impl IntoIterator<Item = String>) -> Self {
        Self {
            peers,
            mail,
            job_users: job_users.into_iter().collect(),
            receiving: parking_lot::Mutex::new(HashSet::new()),
        }
    }

    /// Mark job `id` as being received until the guard drops; `None` if
    /// it is already.
    fn receiving(&self, id: ItemId) -> Option<Receiving<'_>> {
        // (`then`, not `then_some`: a guard made and dropped here would
        // take the lock again, and remove the other transfer's entry.)
        let new = self.receiving.lock().insert(id);
        new.then(|| Receiving { link: self, id })
    }
}

/// A job being received (see [`PeerLink::receiving`]).
struct Receiving<'a> {
    link: &'a PeerLink,
    id: ItemId,
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        self.link.receiving.lock().remove(&self.id);
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

fn bad_item(what: &str) -> Resp {
    error(StatusCode::BAD_REQUEST, "bad_item", what)
}

/// The peer a request's `Authorization: Bearer NAME:TOKEN` belongs to.
async fn authenticate(peers: &Peers, headers: &HeaderMap) -> Result<String, Resp> {
    let unauthorized = || {
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a peer's bearer token is required (NAME:TOKEN)",
        )
    };
    let token = bearer(headers).ok_or_else(unauthorized)?;
    let (name, secret) = token.split_once(':').ok_or_else(unauthorized)?;
    match peers.verify(name, secret.as_bytes()).await {
        Verdict::Ok => Ok(name.to_string()),
        Verdict::Wrong => Err(unauthorized()),
        Verdict::Busy(wait) => Err(retry_after(
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "busy",
                "too many authentication attempts; try again later",
            ),
            wait.as_secs().max(1),
        )),
    }
}

/// Handle one `POST /v1/peer/items`, admitting through `transfer`.
pub(super) async fn receive<T: Transfer>(
    link: &PeerLink,
    transfer: &T,
    req: Request<Incoming>,
) -> Resp {
    match admit(link, transfer, req).await {
        Ok(r) | Err(r) => r,
    }
}

/// [`receive`], with every refusal as the `Err`.
async fn admit<T: Transfer>(
    link: &PeerLink,
    transfer: &T,
    req: Request<Incoming>,
) -> Result<Resp, Resp> {
    let peers = &link.peers;
    if peers.is_empty() {
        return Err(error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint",
        ));
    }
    let conn = req.extensions().get::<Arc<Conn>>();
    let peer = authenticate(peers, req.headers()).await.inspect_err(|r| {
        if let Some(conn) = conn.filter(|_| r.status() == StatusCode::UNAUTHORIZED) {
            conn.failed();
        }
    })?;
    // The connection now holds one of the peer link's own slots.
    if conn.is_some_and(|c| !c.peer()) {
        return Err(retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "every connection slot of the peer link is taken; try again later",
            ),
            1,
        ));
    }
    let Some(limits) = peers.limits(&peer) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown peer",
        ));
    };
    if let Err(wait_s) = peers.take(&peer, limits) {
        return Err(retry_after(
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "this peer's item rate is exceeded; try again later",
            ),
            wait_s,
        ));
    }
    let (id, kind, job_len) = item_headers(req.headers())?;
    let digest = transfer_digest(&peer, &id);
    let admitted = match kind {
        ItemKind::Fetch => {
            let job = JobHeaders {
                peer: &peer,
                id,
                job_len,
                limits,
                digest,
            };
            receive_job(link, transfer, job, req.into_body()).await?
        }
        ItemKind::Mail => {
            let read = Limited::new(req.into_body(), limits.max_item_bytes).collect();
            let body: Bytes = match tokio::time::timeout(BODY_TIMEOUT, read).await {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(_)) => return Err(too_large(limits)),
                Err(_) => return Err(late()),
            };
            // Nothing that could not be delivered is stored: the payload
            // must be a message this mote can send on, within its own
            // rules.
            let payload = link.mail.take(&body)?;
            transfer
                .admit_transfer(kind, payload, digest, TRANSFER_WINDOW)
                .await
        }
    };
    answer(admitted)
}

/// The answer to an admission.
fn answer(admitted: Result<bool, IntakeError>) -> Result<Resp, Resp> {
    let unavailable = |why: &str| {
        retry_after(
            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why),
            60,
        )
    };
    match admitted {
        Ok(true) => {
            tracing::debug!("admitted an item from a peer");
            Ok(json_response(
                StatusCode::CREATED,
                &json!({ "admitted": true, "message": "admitted" }),
            ))
        }
        Ok(false) => Ok(json_response(
            StatusCode::OK,
            &json!({ "admitted": false, "message": "admitted before" }),
        )),
        Err(IntakeError::ShuttingDown) => Err(unavailable("shutting down")),
        Err(IntakeError::Expiring { .. }) => Err(unavailable("expiring")),
        Err(IntakeError::Exists) => Err(error(
            StatusCode::CONFLICT,
            "job_exists",
            "a download job with this id is here already",
        )),
        Err(IntakeError::NoSpace) => Err(retry_after(
            error(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                "the mote's disk is nearly full; try again later",
            ),
            60,
        )),
        Err(IntakeError::Failed(e)) => {
            tracing::error!(error = %e, "admitting a transferred item failed");
            Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the item could not be stored",
            ))
        }
    }
}

/// The item's headers: its id, its kind and (for a job) its record's
/// length; or the refusal.
fn item_headers(headers: &HeaderMap) -> Result<(ItemId, ItemKind, Option<usize>), Resp> {
    let Some(id) = header_value::<ItemId>(headers, wire::ITEM_ID) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_item_id",
            "Dust-Item-Id must be the item's id, 32 hex digits",
        ));
    };
    let Some(kind) = headers
        .get(wire::ITEM_KIND)
        .and_then(|v| wire::kind_named(v.as_bytes()))
    else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_item_kind",
            "Dust-Item-Kind must be \"mail\" or \"fetch\"",
        ));
    };
    Ok((id, kind, header_value::<usize>(headers, wire::JOB_LENGTH)))
}

/// Header `name`, parsed (`None` if missing or unparsable).
fn header_value<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

fn too_large(limits: PeerLimits) -> Resp {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "item_too_large",
        &format!(
            "items from this peer are at most {} bytes",
            limits.max_item_bytes
        ),
    )
}

fn late() -> Resp {
    error(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        "the item did not arrive in time",
    )
}

/// A download job's transfer as its headers announce it.
struct JobHeaders<'a> {
    /// The sending peer.
    peer: &'a str,
    /// `Dust-Item-Id`: must be the job's id.
    id: ItemId,
    /// `Dust-Job-Length`.
    job_len: Option<usize>,
    limits: PeerLimits,
    digest: [u8; 32],
}

/// Receive a download job: its record (the first `job_len` bytes, checked
/// before anything is written), then its content, streamed into the store
/// as it arrives (memory stays flat for any size), then the record and its
/// fetch item. The body's deadline grows with its length. `Ok`: the
/// admission's result; `Err`: the request is refused.
async fn receive_job<T: Transfer>(
    link: &PeerLink,
    transfer: &T,
    t: JobHeaders<'_>,
    mut body: Incoming,
) -> Result<Result<bool, IntakeError>, Resp> {
    let max = t.limits.max_item_bytes as u64;
    let declared = hyper::body::Body::size_hint(&body).exact();
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(t.limits));
    }
    let length = declared.unwrap_or(max);
    let mib = u32::try_from(length >> 20).unwrap_or(u32::MAX);
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT + BODY_TIME_PER_MIB * mib;
    let no_length = || bad_item("Dust-Job-Length must give the job record's length");
    let n = t
        .job_len
        .filter(|n| *n <= MAX_JOB_RECORD && *n <= t.limits.max_item_bytes)
        .ok_or_else(no_length)?;
    // The record, and what came with it of the content.
    let mut head = Vec::with_capacity(n);
    let mut rest = Bytes::new();
    while head.len() < n {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| late())?;
        let Some(data) = frame.transpose().map_err(|_| late())? else {
            return Err(no_length());
        };
        let Ok(mut data) = data.into_data() else {
            continue;
        };
        let take = (n - head.len()).min(data.len());
        head.extend_from_slice(&data.split_to(take));
        rest = data;
    }
    let (job_id, record, job) = take_job(link, t.peer, &head)?;
    if job_id != t.id {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_item_id",
            "for a download job, Dust-Item-Id must be the job's id",
        ));
    }
    let Some(_receiving) = link.receiving(job_id) else {
        // Temporary: the sender may be resending after a lost connection
        // whose transfer this mote has not given up yet.
        return Err(retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "job_in_transfer",
                "this download job is being received on another connection; try again later",
            ),
            10,
        ));
    };
    match transfer.may_take_job(job_id, &record, t.digest).await {
        Ok(true) => {}
        other => return Ok(other),
    }
    let store = transfer.content_store();
    let content = Content {
        job_id,
        job: &job,
        rest,
        deadline,
        limits: t.limits,
        record_len: n,
    };
    let r = match receive_content(store, content, body).await {
        Ok(()) => Ok(transfer
            .admit_job(job_id, record, t.digest, TRANSFER_WINDOW)
            .await),
        Err(e) => e,
    };
    // Content written for a job that did not come: gone again.
    let refused = !matches!(r, Ok(Ok(_)));
    if refused && store.job(&job_id).is_ok_and(|j| j.is_none()) {
        if let Err(e) = store.delete_job(&job_id).await {
            tracing::warn!(error = %e, "could not remove the content of a job not taken over");
        }
    }
    r
}

/// A job's content as it comes after its record.
struct Content<'a> {
    job_id: ItemId,
    job: &'a Job,
    /// What came of it with the record.
    rest: Bytes,
    deadline: tokio::time::Instant,
    limits: PeerLimits,
    record_len: usize,
}

/// The content part of [`receive_job`]: stream it into the store, check
/// its length and commit it. `Err`: what [`receive_job`] returns instead of
/// admitting the job.
async fn receive_content(
    store: &Arc<Store>,
    c: Content<'_>,
    body: Incoming,
) -> Result<(), Result<Result<bool, IntakeError>, Resp>> {
    let room = (c.limits.max_item_bytes - c.record_len) as u64;
    let limit = c.job.total.map_or(room, |t| t.min(room));
    let stored = tokio::time::timeout_at(
        c.deadline,
        store_body(store, &c.job_id, 0, c.rest, body, limit),
    )
    .await
    .map_err(|_| Err(late()))?;
    let refused = |e: IntakeError| Ok(Err(e));
    let (writer, got) = match stored {
        Ok(w) => w,
        Err(StoreBodyError::TooLarge) if limit < room => {
            return Err(Err(bad_item("more content than the job's size")))
        }
        Err(StoreBodyError::TooLarge) => return Err(Err(too_large(c.limits))),
        Err(StoreBodyError::Body(_)) => return Err(Err(late())),
        Err(StoreBodyError::Storage(e)) => return Err(refused(e.into())),
        Err(StoreBodyError::Task(_)) => return Err(refused(IntakeError::ShuttingDown)),
    };
    content_fits(c.job, got).map_err(Err)?;
    let s = Arc::clone(store);
    match tokio::task::spawn_blocking(move || s.commit_chunk(writer)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(refused(e.into())),
        Err(_) => Err(refused(IntakeError::ShuttingDown)),
    }
}

/// Whether `got` bytes of content fit `job`: never more than its size, and
/// all of it for a finished download (this mote will not fetch it).
fn content_fits(job: &Job, got: u64) -> Result<(), Resp> {
    if job.total.is_some_and(|t| got > t) {
        return Err(bad_item("more content than the job's size"));
    }
    if job.state == JobState::Ready && job.total != Some(got) {
        return Err(bad_item("a finished download without all of its content"));
    }
    Ok(())
}

/// A job record handed over: the job's id (from the record's `id`), the
/// record as it is stored here and the job; or the refusal.
fn take_job(link: &PeerLink, peer: &str, head: &[u8]) -> Result<(ItemId, Vec<u8>, Job), Resp> {
    let envelope: JobTransfer =
        serde_json::from_slice(head).map_err(|e| bad_item(&format!("not a job record: {e}")))?;
    let id: ItemId = envelope
        .id
        .parse()
        .map_err(|_| bad_item("the job's id must be 32 hex digits"))?;
    let mut job = envelope.job;
    if job.cover || job.moved_to.is_some() {
        return Err(bad_item("a cover or moved job is not handed over"));
    }
    if !is_http_url(&job.url) {
        return Err(bad_item("the job's URL is not http(s)"));
    }
    if !link.job_users.contains(&job.user) {
        return Err(error(
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
        let link = PeerLink::new(Peers::none(), rules, ["alice".to_string()]);
        match kind {
            ItemKind::Fetch => {
                let Some(n) = job_len.filter(|n| *n <= body.len() && *n <= MAX_JOB_RECORD) else {
                    return false;
                };
                let Ok((job_id, record, job)) = take_job(&link, "fuzzer", &body[..n]) else {
                    return false;
                };
                if content_fits(&job, (body.len() - n) as u64).is_err() {
                    return false;
                }
                let back = Job::decode(&record).expect("a taken record decodes");
                assert_eq!(back, job);
                assert_eq!(job.user, "alice");
                assert!(is_http_url(&job.url), "{}", job.url);
                assert_eq!(job.from_peer.as_deref(), Some("fuzzer"));
                assert!(!job.cover && job.moved_to.is_none());
                job_id == id
            }
            ItemKind::Mail => {
                let Ok(payload) = link.mail.take(body) else {
                    return false;
                };
                let mail = StoredMail::decode(&payload).expect("a taken item decodes");
                assert!((1..=4).contains(&mail.rcpts.len()));
                true
            }
        }
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
    fn the_digest_depends_on_peer_and_id() {
        let (a, b) = (ItemId([1; 16]), ItemId([2; 16]));
        assert_ne!(transfer_digest("x", &a), transfer_digest("x", &b));
        assert_ne!(transfer_digest("x", &a), transfer_digest("y", &a));
        assert_eq!(transfer_digest("x", &a), transfer_digest("x", &a));
    }
}
