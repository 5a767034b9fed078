//! The HTTP API of delayed downloads: queue a fetch, see its state, retrieve
//! the cached content (resumable, with `Range`), delete it; `/status` and
//! `/metrics` for operators.
//!
//! Jobs ([`crate::item::job`]) and content live in the store. A `202` for a new
//! job is sent only after the job record is fsynced. The fetcher
//! ([`crate::egress::fetch`]) fills the content in random Range chunks through Tor.

// Handlers return a ready error response as their `Err`; it is large, but
// built once per failed request.
#![allow(clippy::result_large_err)]

pub mod peer;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use dust_mixer::{from_wall_ms, wall_ms, ItemId, Store};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::access::accounts::{one, Accounts, Exceeded, FETCHES, FETCH_BYTES};
use crate::access::auth::{Users, Verdict, Verifier};
use crate::item::job::{is_http_url, Job, JobState, Schedule, ScheduleError};
use crate::status::{StatusFn, OPENMETRICS_TYPE};
use crate::intake::strangers::{self, Strangers, Ticket};

/// Largest request body accepted (job requests are small JSON objects).
const MAX_BODY: usize = 16 * 1024;
/// Largest multi-range response, which is built in memory (single ranges
/// and whole files are streamed): the sum of its ranges. Beyond it: 416
/// (overlapping ranges would otherwise multiply one file many times over).
const MAX_RESPONSE: u64 = 64 << 20;
/// Most ranges in one multi-range request (each is a store read); beyond
/// it: 416.
const MAX_RANGES: usize = 64;
/// Bound on a request's header, and on an idle keep-alive connection.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Bound on reading a request body ([`MAX_BODY`] in this time is a minimum
/// rate of about 0.5 KiB/s): a body trickled slower holds no connection.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The API server; new jobs enter the mix through `S`.
pub struct Api<S> {
    store: Arc<Store>,
    /// Users who see the mix's counts (`/metrics`, the full `/status`).
    operators: Vec<String>,
    /// Checks bearer tokens with bounded work (shared with the accounts,
    /// which add and remove users while the mote runs).
    verifier: Arc<Verifier>,
    /// The configuration's only user, if it has one: a bare `TOKEN` is
    /// theirs (accounts always use `NAME:TOKEN`).
    only: Option<String>,
    /// Accounts made while the mote runs (quotas, sessions).
    accounts: Option<Arc<Accounts>>,
    status: StatusFn,
    schedule: Arc<S>,
    /// `POST /v1/peer/items` (none: 404).
    peer: Option<crate::intake::http::peer::Endpoint>,
}

/// Response bodies: small ones in memory, content streamed from the store.
type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;
type Resp = Response<Body>;

/// One connection's standing, in each of its requests' extensions. Between
/// requests it is among the [`Strangers`] and may be closed to make room
/// when every slot is taken (first if it presented a wrong token); while a
/// request is served, response body included, it is not. A peer's
/// connection moves to the peer link's own slots and is never evicted.
pub struct Conn {
    inner: parking_lot::Mutex<Standing>,
    peer_slots: Arc<Semaphore>,
    strangers: Arc<parking_lot::Mutex<Strangers>>,
}

struct Standing {
    /// Its place among the strangers (none for a peer's connection).
    ticket: Option<Ticket>,
    /// Its slot: an API slot, or a peer slot once a peer authenticated.
    _slot: OwnedSemaphorePermit,
    peer: bool,
    /// Requests being served (their responses not sent yet).
    busy: u32,
}

impl Conn {
    /// A request on this connection presented a wrong credential: it is
    /// the first to make room.
    pub fn failed(&self) {
        if let Some(t) = &self.inner.lock().ticket {
            t.failed();
        }
    }

    /// A peer authenticated on this connection: it gives back its API slot
    /// and holds one of the peer link's instead. `false`: every peer slot
    /// is taken.
    pub fn peer(&self) -> bool {
        let mut s = self.inner.lock();
        if !s.peer {
            match Arc::clone(&self.peer_slots).try_acquire_owned() {
                Ok(p) => {
                    s._slot = p;
                    s.peer = true;
                }
                Err(_) => return false,
            }
        }
        s.ticket = None;
        true
    }

    /// A request is being served until the guard (kept with its response
    /// body) drops.
    fn serving(self: &Arc<Self>) -> Serving {
        let mut s = self.inner.lock();
        s.busy += 1;
        if let Some(t) = &s.ticket {
            t.busy(true);
        }
        Serving(Arc::clone(self))
    }

    /// Told to make room: whether to close (`false`: a request began
    /// meanwhile, or it is a peer's; it stays, and may make room again
    /// once idle).
    fn evict(&self) -> bool {
        let mut s = self.inner.lock();
        if s.ticket.is_none() {
            return false;
        }
        if s.busy > 0 {
            // Its place was taken by the eviction: a new one.
            let t = Ticket::new(&self.strangers);
            t.busy(true);
            s.ticket = Some(t);
            return false;
        }
        true
    }
}

/// A request being served on a [`Conn`] (see [`Conn::serving`]).
struct Serving(Arc<Conn>);

impl Drop for Serving {
    fn drop(&mut self) {
        let mut s = self.0.inner.lock();
        s.busy = s.busy.saturating_sub(1);
        if s.busy == 0 {
            if let Some(t) = &s.ticket {
                t.busy(false);
            }
        }
    }
}

/// A minimal answer for a connection that found no slot (hyper is not
/// involved: nothing of the request has been read).
const NO_SLOT: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n\
Content-Type: application/json\r\nContent-Length: 67\r\nConnection: close\r\n\r\n\
{\"error\":\"busy\",\"message\":\"too many connections; try again later\"}\n";

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// Bytes `start..end` of a job's content as a stream of pieces of at most
/// [`STREAM_PIECE`] bytes. A task reads (and opens) the pieces on the
/// blocking pool at most [`READ_AHEAD`] pieces ahead of the client, so
/// reading the next piece overlaps sending this one, and memory stays flat
/// for any size. The task stops when the client goes away.
fn stream_content(store: Arc<Store>, id: ItemId, start: u64, end: u64) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        let mut pos = start;
        while pos < end {
            let to = end.min(pos + STREAM_PIECE);
            let store = Arc::clone(&store);
            let read = tokio::task::spawn_blocking(move || store.read_content(&id, pos, to)).await;
            let piece = match read {
                Ok(Ok(Some(b))) => Ok(hyper::body::Frame::data(Bytes::from(b))),
                Ok(Ok(None)) => Err(std::io::Error::other("content missing")),
                Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            let failed = piece.is_err();
            if tx.send(piece).await.is_err() || failed {
                return; // the client went away, or the response ends here
            }
            pos = to;
        }
    });
    let pieces = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    });
    http_body_util::StreamBody::new(pieces).boxed_unsync()
}

/// An account's response body: it holds the account's session `slot`
/// until its last byte, and is cut with an error (the connection closes
/// before the end) when `ended` completes: revoke, expiry or a new card
/// stop a download under way.
fn held_body(
    body: Body,
    slot: Option<crate::access::accounts::SessionSlot>,
    ended: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
) -> Body {
    use futures::StreamExt;
    let frames = http_body_util::BodyStream::new(body);
    let state = Some((frames, ended, slot));
    let cut = futures::stream::unfold(state, |state| async move {
        let (mut frames, mut ended, slot) = state?;
        tokio::select! {
            biased;
            _ = &mut ended => Some((Err(std::io::Error::other("the account has ended")), None)),
            frame = frames.next() => frame.map(|f| (f, Some((frames, ended, slot)))),
        }
    });
    http_body_util::StreamBody::new(cut).boxed_unsync()
}

/// Pieces read ahead of a client (see [`stream_content`]).
const READ_AHEAD: usize = 2;

/// Size of one piece of a streamed response.
const STREAM_PIECE: u64 = 1 << 20;

fn json_response(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Resp {
    json_response(status, &json!({ "error": code, "message": message }))
}

/// A peer endpoint's answer as a response: `{"admitted": …}` or an error.
fn peer_answer(a: crate::intake::http::peer::Answer) -> Resp {
    let mut r = match a.code {
        None => json_response(
            a.status,
            &json!({ "admitted": a.status == StatusCode::CREATED, "message": a.detail }),
        ),
        Some(code) => error(a.status, code, &a.detail),
    };
    if let Some(s) = a.retry_after_s {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

/// Whether a conditional GET/HEAD is answered `304`: `If-None-Match`
/// naming `etag` (or `*`), or, without it, `If-Modified-Since` at or after
/// the content's completion (`ready_ms`).
fn not_modified(headers: &HeaderMap, etag: &str, ready_ms: Option<u64>) -> bool {
    let get = |h| headers.get(h).and_then(|v: &HeaderValue| v.to_str().ok());
    if let Some(inm) = get(header::IF_NONE_MATCH) {
        return inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag);
    }
    match (
        get(header::IF_MODIFIED_SINCE).map(httpdate::parse_http_date),
        ready_ms,
    ) {
        (Some(Ok(since)), Some(ready)) => wall_ms(since) / 1000 >= ready / 1000,
        _ => false,
    }
}

/// `401` asking for a bearer token.
/// A job handed to the successor mote (hop at drain): `308` to it, the
/// same id and the same token there; the JSON says so for clients that do
/// not follow redirects (curl sends no `Authorization` to another host).
fn moved(to: &str) -> Resp {
    let mut r = json_response(
        StatusCode::PERMANENT_REDIRECT,
        &json!({
            "error": "moved",
            "message": "this download moved to the successor mote; same id and token there",
            "moved_to": to,
        }),
    );
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn unauthorized(message: &str) -> Resp {
    let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// `503` for a storage failure (the client may try again).
fn unavailable(e: &dyn std::fmt::Display) -> Resp {
    error(StatusCode::SERVICE_UNAVAILABLE, "storage", &e.to_string())
}

/// `429` for a daily quota, with `Retry-After` until it is reset.
fn quota_exceeded(over: &Exceeded) -> Resp {
    let what = if over.which == FETCHES {
        "downloads"
    } else {
        "downloaded bytes"
    };
    let mut r = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        &json!({
            "error": "quota",
            "message": format!("this account's daily quota of {what} is used up"),
            "resets_at": over.resets(),
        }),
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(over.retry_after_secs()),
    );
    r
}

/// The token of an `Authorization: Bearer …` header (users and peers).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn parse_id(s: &str) -> Option<ItemId> {
    s.parse().ok()
}

fn parse_time(v: Option<&str>, field: &str) -> Result<Option<u64>, Resp> {
    match v {
        None => Ok(None),
        Some(s) => humantime::parse_rfc3339_weak(s)
            .map(|t| Some(wall_ms(t)))
            .map_err(|e| {
                error(
                    StatusCode::BAD_REQUEST,
                    "bad_time",
                    &format!("{field}: {e}"),
                )
            }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewFetch {
    url: String,
    not_before: Option<String>,
    deadline: Option<String>,
}

/// A checked `POST /v1/fetches` body: the URL, `not_before` and `deadline`
/// (ms since the epoch), or the 400 response that says what is wrong.
fn new_fetch(body: &[u8]) -> Result<(http::Uri, Option<u64>, Option<u64>), Resp> {
    let new: NewFetch = serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_json", &e.to_string()))?;
    let url = match http::Uri::try_from(new.url.as_str()) {
        Ok(u) if is_http_url(&new.url) => u,
        _ => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "bad_url",
                "url must be an absolute http or https URL",
            ))
        }
    };
    let not_before_ms = parse_time(new.not_before.as_deref(), "not_before")?;
    let deadline_ms = parse_time(new.deadline.as_deref(), "deadline")?;
    Ok((url, not_before_ms, deadline_ms))
}

/// Entry points for `cargo fuzz` (see `fuzz/`): the request parsers of the
/// API, as the server calls them.
#[doc(hidden)]
pub mod fuzzing {
    /// Parse a `POST /v1/fetches` body; `true` if it was accepted.
    pub fn new_fetch(body: &[u8]) -> bool {
        super::new_fetch(body).is_ok()
    }

    /// Parse a `Range` header against `len` bytes; the ranges found, each
    /// checked to lie within the representation.
    pub fn parse_ranges(h: &str, len: u64) -> usize {
        let ranges = super::parse_ranges(h, len).unwrap_or_default();
        for r in &ranges {
            assert!(r.start < r.end && r.end <= len, "{r:?} outside 0..{len}");
        }
        ranges.len()
    }
}

/// One byte range, inclusive of `start`, exclusive of `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ByteRange {
    start: u64,
    end: u64,
}

/// Parse a `Range` header against a representation of `len` bytes.
/// `None`: no usable Range (serve everything); `Some(vec![])`: none of the
/// ranges is satisfiable (416).
fn parse_ranges(h: &str, len: u64) -> Option<Vec<ByteRange>> {
    let specs = h.trim().strip_prefix("bytes=")?;
    let mut out = Vec::new();
    for spec in specs.split(',') {
        let spec = spec.trim();
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        let r = if a.is_empty() {
            let n: u64 = b.parse().ok()?;
            // A suffix of nothing, or of an empty representation, selects
            // no byte (unsatisfiable; found by `cargo fuzz`: an empty range
            // 0..0 reached the response builder).
            if n == 0 || len == 0 {
                continue;
            }
            ByteRange {
                start: len.saturating_sub(n),
                end: len,
            }
        } else {
            let start: u64 = a.parse().ok()?;
            let last: u64 = if b.is_empty() {
                u64::MAX
            } else {
                b.parse().ok()?
            };
            if last < start {
                return None; // syntactically invalid: ignore the header
            }
            if start >= len {
                continue;
            }
            ByteRange {
                start,
                end: last.saturating_add(1).min(len),
            }
        };
        out.push(r);
    }
    Some(out)
}

impl<S: Schedule> Api<S> {
    /// An API over `store` for `users` (name, token hash); the users named
    /// in `operators` also see the full `/status` and `/metrics`.
    pub fn new(
        store: Arc<Store>,
        users: Users,
        operators: Vec<String>,
        status: StatusFn,
        schedule: Arc<S>,
    ) -> Arc<Self> {
        Self::with_peers(store, users, operators, status, schedule, None)
    }

    /// [`new`](Self::new), with the endpoint other motes hand items to.
    pub fn with_peers(
        store: Arc<Store>,
        users: Users,
        operators: Vec<String>,
        status: StatusFn,
        schedule: Arc<S>,
        peer: Option<crate::intake::http::peer::Endpoint>,
    ) -> Arc<Self> {
        let only = users.only().map(str::to_string);
        let verifier = Arc::new(Verifier::new(users));
        Self::with_accounts(
            store, verifier, only, operators, status, schedule, peer, None,
        )
    }

    /// [`with_peers`](Self::with_peers) with a verifier shared with
    /// `accounts` (made with the configuration's users, `only` the one of
    /// them if there is exactly one).
    #[allow(clippy::too_many_arguments)]
    pub fn with_accounts(
        store: Arc<Store>,
        verifier: Arc<Verifier>,
        only: Option<String>,
        operators: Vec<String>,
        status: StatusFn,
        schedule: Arc<S>,
        peer: Option<crate::intake::http::peer::Endpoint>,
        accounts: Option<Arc<Accounts>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            operators,
            verifier,
            only,
            accounts,
            status,
            schedule,
            peer,
        })
    }

    /// Serve until `shutdown` turns true: at most `max_connections`
    /// connections at once, and `peer_connections` more for the peer link
    /// (a peer's connection moves there when it authenticates). When every
    /// slot is taken, a newcomer evicts an idle connection (see [`Conn`]
    /// and [`strangers`]): clients that connect and send nothing, or hold
    /// keep-alive connections open, cannot keep users and peers out, and a
    /// request being served is never cut.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
        max_connections: usize,
        peer_connections: usize,
    ) {
        let slots = Arc::new(Semaphore::new(max_connections));
        let peer_slots = Arc::new(Semaphore::new(peer_connections));
        let strangers = Arc::new(parking_lot::Mutex::new(Strangers::new(
            strangers::HTTP_MIN_AGE,
        )));
        // Connections waiting for a slot: beyond four times as many as
        // there are slots, a newcomer is answered 503 at once (each waits
        // at most a few seconds, so this bounds what waiting costs).
        let waiting = Arc::new(Semaphore::new(max_connections.saturating_mul(4)));
        loop {
            let (sock, _peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
                c = listener.accept() => match c {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            };
            let api = Arc::clone(&self);
            let (slots, peer_slots, strangers, waiting) = (
                Arc::clone(&slots),
                Arc::clone(&peer_slots),
                Arc::clone(&strangers),
                Arc::clone(&waiting),
            );
            tokio::spawn(async move {
                let mut sock = sock;
                let slot = match Arc::clone(&waiting).try_acquire_owned() {
                    Ok(_waiting) => strangers::slot(&slots, &strangers, true).await,
                    Err(_) => None,
                };
                let Some(slot) = slot else {
                    use tokio::io::AsyncWriteExt;
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        sock.write_all(NO_SLOT),
                    )
                    .await;
                    return;
                };
                let conn = Arc::new(Conn {
                    inner: parking_lot::Mutex::new(Standing {
                        ticket: Some(Ticket::new(&strangers)),
                        _slot: slot,
                        peer: false,
                        busy: 0,
                    }),
                    peer_slots,
                    strangers,
                });
                let c = Arc::clone(&conn);
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    let api = Arc::clone(&api);
                    let serving = c.serving();
                    req.extensions_mut().insert(Arc::clone(&c));
                    async move {
                        let resp = api.handle(req).await;
                        // Served until the last byte of the body is out.
                        let resp = resp.map(|body| {
                            body.map_frame(move |frame| {
                                let _serving = &serving;
                                frame
                            })
                            .boxed_unsync()
                        });
                        Ok::<_, Infallible>(resp)
                    }
                });
                let serve = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(sock), svc);
                tokio::pin!(serve);
                loop {
                    // (A peer's connection has no ticket: never told.)
                    let evicted = conn
                        .inner
                        .lock()
                        .ticket
                        .as_ref()
                        .map(|t| Arc::clone(&t.evict));
                    let evicted = async move {
                        match evicted {
                            Some(e) => e.notified().await,
                            None => futures::future::pending().await,
                        }
                    };
                    tokio::select! {
                        r = &mut serve => {
                            if let Err(e) = r {
                                tracing::debug!(error = %e, "HTTP connection ended with an error");
                            }
                            break;
                        }
                        _ = evicted => if conn.evict() {
                            tracing::debug!("closed an idle connection to make room");
                            break;
                        },
                    }
                }
            });
        }
    }

    /// The user a request's bearer token belongs to: `NAME:TOKEN`, or a
    /// bare `TOKEN` when there is exactly one user. At most one argon2 run
    /// (none for a token that verified before), bounded by the verifier.
    async fn user(&self, headers: &HeaderMap) -> Result<String, Resp> {
        let unauthorized = || {
            unauthorized(
                "a valid bearer token is required (NAME:TOKEN, or TOKEN on a one-user mote)",
            )
        };
        let token = bearer(headers).ok_or_else(unauthorized)?;
        let (name, secret) = match (token.split_once(':'), self.only.as_deref()) {
            (Some((name, secret)), _) => (name, secret),
            (None, Some(only)) => (only, token),
            (None, None) => return Err(unauthorized()),
        };
        match self.verifier.verify(name, secret.as_bytes()).await {
            Verdict::Ok => Ok(name.to_string()),
            Verdict::Wrong => Err(unauthorized()),
            Verdict::Busy(wait) => {
                let mut r = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "busy",
                    "too many authentication attempts; try again later",
                );
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(wait.as_secs().max(1)),
                );
                Err(r)
            }
        }
    }

    /// [`user`](Self::user), telling the request's connection when it
    /// failed: a connection with a wrong credential is the first to make
    /// room.
    async fn authenticated(&self, req: &Request<Incoming>) -> Result<String, Resp> {
        let user = self.user(req.headers()).await;
        if let Some(conn) = req.extensions().get::<Arc<Conn>>() {
            if user
                .as_ref()
                .is_err_and(|r| r.status() == StatusCode::UNAUTHORIZED)
            {
                conn.failed();
            }
        }
        user
    }

    /// Route one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method.clone(), segs.as_slice()) {
            (Method::GET, ["status"]) => {
                let operator = self.operator(&req).await;
                return self.status_page(operator);
            }
            (Method::GET, ["metrics"]) => {
                if !self.operator(&req).await {
                    return unauthorized("/metrics needs an operator's bearer token");
                }
                return self.metrics();
            }
            (Method::POST, ["v1", "peer", "items"]) => {
                let Some(peer) = &self.peer else {
                    return error(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
                };
                return peer_answer(peer(req).await);
            }
            (_, ["v1", "fetches", ..]) => {}
            _ => return error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        }
        // The account as it stands before its token is checked (a card
        // replacing the token meanwhile ends this request).
        let holder = self.accounts.as_ref().and_then(|a| {
            let (name, _) = bearer(req.headers())?.split_once(':')?;
            a.holder(name, true)
        });
        let user = match self.authenticated(&req).await {
            Ok(u) => u,
            Err(r) => return r,
        };
        let holder = holder.filter(|h| h.name() == user);
        // An account's requests at once are bounded by its quota; the slot
        // lives as long as the response body (a content download holds it
        // until the last byte is sent).
        let slot = match self.accounts.as_ref().map(|a| a.open_session(&user, true)) {
            Some(Err(())) => {
                let mut r = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_sessions",
                    "this account has as many requests under way as its quota allows",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
            Some(Ok(slot)) => slot,
            None => None,
        };
        let resp = match (method, segs.as_slice()) {
            (Method::POST, ["v1", "fetches"]) => self.create(&user, req, holder.as_ref()).await,
            (Method::GET, ["v1", "fetches", id]) => self.show(&user, id),
            (Method::DELETE, ["v1", "fetches", id]) => self.delete(&user, id).await,
            (m @ (Method::GET | Method::HEAD), ["v1", "fetches", id, "content"]) => {
                self.content(&user, id, req.headers(), m == Method::HEAD)
            }
            _ => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "not allowed here",
            ),
        };
        match (holder, slot) {
            (None, None) => resp,
            (holder, slot) => {
                let ended: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match holder {
                    Some(h) => Box::pin(h.ended()),
                    None => Box::pin(futures::future::pending()),
                };
                resp.map(|body| held_body(body, slot, ended))
            }
        }
    }

    fn load(&self, user: &str, id: &str) -> Result<(ItemId, Job), Resp> {
        let not_found = || error(StatusCode::NOT_FOUND, "no_such_fetch", "no such fetch");
        let id = parse_id(id).ok_or_else(not_found)?;
        let rec = self
            .store
            .job(&id)
            .map_err(|e| unavailable(&e))?
            .ok_or_else(not_found)?;
        let job = Job::decode(&rec).ok_or_else(|| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "corrupt",
                "unreadable job",
            )
        })?;
        // Another user's job does not exist for this user.
        if job.user != user {
            return Err(not_found());
        }
        Ok((id, job))
    }

    async fn create(
        &self,
        user: &str,
        req: Request<Incoming>,
        holder: Option<&crate::access::accounts::Holder>,
    ) -> Resp {
        let read = Limited::new(req.into_body(), MAX_BODY).collect();
        let body = match tokio::time::timeout(BODY_TIMEOUT, read).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "request body too large",
                )
            }
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "the request body did not arrive in time",
                )
            }
        };
        let (url, not_before_ms, deadline_ms) = match new_fetch(&body) {
            Ok(v) => v,
            Err(r) => return r,
        };
        if let Err(e) = self.store.check_room(MAX_BODY as u64) {
            tracing::warn!(error = %e, "new fetch job refused: disk space below the reserve");
            let mut r = error(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                "the mote's disk is nearly full; try again later",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            return r;
        }
        // Counted before the job is stored (durable with its fsync below),
        // taken back if it is refused.
        let charged = match self
            .accounts
            .as_ref()
            .map(|a| a.charge(user, one(FETCHES, 1)))
        {
            None => None,
            Some(Ok(Ok(c))) => c,
            Some(Ok(Err(over))) => return quota_exceeded(&over),
            Some(Err(e)) => return unavailable(&e),
        };
        let refund = || {
            if let Some(a) = &self.accounts {
                a.refund(charged);
            }
        };
        // Nothing more may be downloaded today: say so now.
        if let Some(a) = &self.accounts {
            if a.room(user, FETCH_BYTES).is_ok_and(|r| r == 0) {
                refund();
                return quota_exceeded(&a.exceeded(FETCH_BYTES));
            }
        }
        let id = ItemId(rand::random());
        let job = Job::new(
            url.to_string(),
            user.to_string(),
            SystemTime::now(),
            not_before_ms,
            deadline_ms,
        );
        let refused = || {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage",
                "could not store the job; try again later",
            )
        };
        if let Err(e) = self.store.put_job(&id, &job.encode()) {
            tracing::error!(error = %e, "storing a fetch job failed");
            refund();
            return refused();
        }
        // 202 only once the job and its fetch item are on disk (the
        // admission's fsync covers the job record written before it).
        match self
            .schedule
            .schedule(id, not_before_ms.map(from_wall_ms))
            .await
        {
            Ok(()) => {}
            Err(ScheduleError::Expiring { retry_after_s }) => {
                let _ = self.store.delete_job(&id).await;
                refund();
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "expiring",
                    "this mote ends too soon to fetch anything new; use another mote",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
                return r;
            }
            Err(e) => {
                tracing::error!(error = %e, "scheduling a fetch job failed");
                let _ = self.store.delete_job(&id).await;
                refund();
                let mut r = refused();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
                return r;
            }
        }
        // The account ended while the job was stored: its end may have
        // looked for its jobs before this one was there. (A new card is
        // not an end.)
        if holder.is_some_and(|h| !h.same_account()) {
            if let Err(e) = self.store.delete_job(&id).await {
                tracing::warn!(error = %e, "could not delete the job of an account that ended");
            }
            refund();
            return unauthorized("this account has ended");
        }
        json_response(
            StatusCode::ACCEPTED,
            &json!({ "id": id.to_string(), "state": "queued" }),
        )
    }

    fn show(&self, user: &str, id: &str) -> Resp {
        let (id, job) = match self.load(user, id) {
            Ok(j) => j,
            Err(r) => return r,
        };
        if let Some(to) = &job.moved_to {
            return moved(to);
        }
        let stored = match self.store.content_len(&id) {
            Ok(n) => n,
            Err(e) => return unavailable(&e),
        };
        json_response(
            StatusCode::OK,
            &json!({
                "id": id.to_string(),
                "url": job.url,
                "state": job.state,
                "reason": job.reason,
                "bytes_stored": stored,
                "total": job.total,
                "expected_ready_ms": job.expected_ready_ms,
            }),
        )
    }

    async fn delete(&self, user: &str, id: &str) -> Resp {
        let (id, _) = match self.load(user, id) {
            Ok(j) => j,
            Err(r) => return r,
        };
        // 204 once the removal is on disk (and the content file gone).
        if let Err(e) = self.store.delete_job(&id).await {
            return unavailable(&e);
        }
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    }

    fn content(&self, user: &str, id_s: &str, headers: &HeaderMap, head: bool) -> Resp {
        let (id, job) = match self.load(user, id_s) {
            Ok(j) => j,
            Err(r) => return r,
        };
        if let Some(to) = &job.moved_to {
            return moved(&format!("{to}/content"));
        }
        let ready = job.state == JobState::Ready;
        let Some(total) = job.total else {
            return error(
                StatusCode::CONFLICT,
                "not_ready",
                "no content is stored yet",
            );
        };
        let etag = format!("\"{}-{total}\"", &id_s[..16.min(id_s.len())]);
        let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
        // If-Range with anything but our current ETag means "send it all".
        let if_range_ok = match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
            None => true,
            Some(v) => v == etag,
        };
        let ranges = match range_header {
            Some(h) if if_range_ok => parse_ranges(h, total),
            _ => None,
        };
        let last_modified = job
            .ready_ms
            .map(|ms| httpdate::fmt_http_date(from_wall_ms(ms)));
        // What every answer about this content says: it can be resumed, how
        // to tell versions apart, what it is (the origin's type, not to be
        // second-guessed), its name, and that no shared cache may keep it.
        let describe = |h: &mut HeaderMap| {
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            if let Ok(v) = HeaderValue::from_str(&etag) {
                h.insert(header::ETAG, v);
            }
            if let Some(v) = last_modified
                .as_deref()
                .and_then(|d| HeaderValue::from_str(d).ok())
            {
                h.insert(header::LAST_MODIFIED, v);
            }
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            );
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            // Fetched content is someone else's, served on the API's own
            // origin: a page must not run scripts there (they could use
            // the API as the reader, with the browser's stored token), and
            // other sites must not embed it.
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("sandbox"),
            );
            h.insert(
                HeaderName::from_static("cross-origin-resource-policy"),
                HeaderValue::from_static("same-origin"),
            );
            let disposition = format!("inline; filename=\"{}\"", job.file_name());
            if let Ok(v) = HeaderValue::from_str(&disposition) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
        };
        // Conditional requests (RFC 9110 13.2.2): a ready job's content never
        // changes under its ETag.
        if ready && not_modified(headers, &etag, job.ready_ms) {
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            describe(r.headers_mut());
            return r;
        }
        let media_type = job
            .content_type
            .as_deref()
            .and_then(|t| HeaderValue::from_str(t).ok())
            .unwrap_or(HeaderValue::from_static("application/octet-stream"));
        let with_headers = |status: StatusCode, body: Body, len: u64| {
            let mut r = Response::new(if head { full(Bytes::new()) } else { body });
            *r.status_mut() = status;
            let h = r.headers_mut();
            describe(h);
            h.insert(header::CONTENT_TYPE, media_type.clone());
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            r
        };
        let base = |status: StatusCode, body: Vec<u8>| {
            let len = body.len() as u64;
            with_headers(status, full(body), len)
        };
        // Whether bytes a..b are all stored (a ready job has everything).
        let covered = |a: u64, b: u64| -> Result<bool, Resp> {
            if ready {
                return Ok(true);
            }
            self.store
                .content_stored(&id, a, b)
                .map_err(|e| unavailable(&e))
        };
        match ranges {
            Some(r) if r.is_empty() => {
                let mut resp = error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range_not_satisfiable",
                    "no requested range overlaps the content",
                );
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                resp
            }
            Some(r) if r.len() == 1 => {
                let ByteRange { start, end } = r[0];
                match covered(start, end) {
                    Ok(true) => {}
                    Ok(false) => {
                        return error(
                            StatusCode::CONFLICT,
                            "not_ready",
                            "that range is not stored yet",
                        )
                    }
                    Err(resp) => return resp,
                }
                let body = stream_content(Arc::clone(&self.store), id, start, end);
                let mut resp = with_headers(StatusCode::PARTIAL_CONTENT, body, end - start);
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{total}", end - 1))
                {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                resp
            }
            Some(r) => {
                let boundary = format!("dustmote-{:016x}", rand::random::<u64>());
                let part_type = job
                    .content_type
                    .as_deref()
                    .unwrap_or("application/octet-stream");
                let body = match self.multipart(id, total, &r, &boundary, part_type) {
                    Ok(b) => b,
                    Err(resp) => return resp,
                };
                let mut resp = base(StatusCode::PARTIAL_CONTENT, body);
                if let Ok(v) =
                    HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}"))
                {
                    resp.headers_mut().insert(header::CONTENT_TYPE, v);
                }
                resp
            }
            None => {
                if !ready {
                    return error(StatusCode::CONFLICT, "not_ready", "the download is not complete yet; a Range that is already stored can be fetched");
                }
                let body = stream_content(Arc::clone(&self.store), id, 0, total);
                with_headers(StatusCode::OK, body, total)
            }
        }
    }

    /// The body of a `multipart/byteranges` answer (built in memory: at
    /// most [`MAX_RANGES`] parts of at most [`MAX_RESPONSE`] bytes in all).
    fn multipart(
        &self,
        id: ItemId,
        total: u64,
        ranges: &[ByteRange],
        boundary: &str,
        part_type: &str,
    ) -> Result<Vec<u8>, Resp> {
        let sum: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        if ranges.len() > MAX_RANGES || sum > MAX_RESPONSE {
            return Err(error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "too_large",
                "ask for fewer or smaller ranges",
            ));
        }
        let mut body = Vec::new();
        for &ByteRange { start, end } in ranges {
            let part = self
                .store
                .read_content(&id, start, end)
                .map_err(|e| unavailable(&e))?
                .ok_or_else(|| {
                    error(
                        StatusCode::CONFLICT,
                        "not_ready",
                        "a requested range is not stored yet",
                    )
                })?;
            body.extend_from_slice(
                format!(
                    "\r\n--{boundary}\r\nContent-Type: {part_type}\r\nContent-Range: bytes {start}-{}/{total}\r\n\r\n",
                    end - 1
                )
                .as_bytes(),
            );
            body.extend_from_slice(&part);
        }
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        Ok(body)
    }

    /// Whether the request carries an operator's token.
    async fn operator(&self, req: &Request<Incoming>) -> bool {
        if !req.headers().contains_key(header::AUTHORIZATION) {
            return false;
        }
        match self.authenticated(req).await {
            Ok(u) => self.operators.contains(&u),
            Err(_) => false,
        }
    }

    /// `/status`. Queue sizes and the mix's counts change when a user
    /// submits and when an item leaves: anyone who could poll them could
    /// link the two, which is what the mix exists to prevent. So without an
    /// operator's token only the mote's end time and the executable's
    /// version and SHA-256 (public anyway: anyone may compare the running
    /// binary with the published build, an abuse desk included) are shown.
    fn status_page(&self, operator: bool) -> Resp {
        let status = match (self.status)() {
            Ok(s) => s,
            Err(e) => return unavailable(&e),
        };
        if !operator {
            return json_response(
                StatusCode::OK,
                &json!({
                    "expires_at": status.expires_at,
                    "executable": status.executable,
                    "detail": "queue and mix counts need an operator's bearer token",
                }),
            );
        }
        match serde_json::to_value(&status) {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &e.to_string(),
            ),
        }
    }

    /// `/metrics`: the status as OpenMetrics text.
    fn metrics(&self) -> Resp {
        let status = match (self.status)() {
            Ok(s) => s,
            Err(e) => return unavailable(&e),
        };
        let mut r = Response::new(full(status.metrics_text()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(OPENMETRICS_TYPE),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn the_no_slot_answer_is_a_whole_response() {
        let text = std::str::from_utf8(super::NO_SLOT).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        let r = |a, b| ByteRange { start: a, end: b };
        assert_eq!(parse_ranges("bytes=0-99", 1000), Some(vec![r(0, 100)]));
        assert_eq!(parse_ranges("bytes=900-", 1000), Some(vec![r(900, 1000)]));
        assert_eq!(parse_ranges("bytes=-100", 1000), Some(vec![r(900, 1000)]));
        assert_eq!(parse_ranges("bytes=-5000", 1000), Some(vec![r(0, 1000)]));
        assert_eq!(
            parse_ranges("bytes=990-2000", 1000),
            Some(vec![r(990, 1000)])
        );
        assert_eq!(
            parse_ranges("bytes=0-0, 5-9", 1000),
            Some(vec![r(0, 1), r(5, 10)])
        );
        assert_eq!(
            parse_ranges("bytes=1000-", 1000),
            Some(vec![]),
            "unsatisfiable"
        );
        assert_eq!(parse_ranges("bytes=5-1", 1000), None, "invalid: ignored");
        assert_eq!(parse_ranges("items=0-1", 1000), None);
        assert_eq!(parse_ranges("bytes=x-1", 1000), None);
        assert_eq!(parse_ranges("bytes=0-", 0), Some(vec![]));
        // Found by cargo fuzz: a suffix of an empty representation.
        assert_eq!(parse_ranges("bytes=0-0,-89,-9", 0), Some(vec![]));
    }

    proptest::proptest! {
        /// Any Range header, against any length: no panic, and every range
        /// returned lies inside the content.
        #[test]
        fn any_range_header_gives_ranges_inside_the_content(
            h in "(bytes=)?[0-9 ,=-]{0,40}",
            len in proptest::prop_oneof![proptest::strategy::Just(0u64), 0u64..10_000],
        ) {
            if let Some(ranges) = parse_ranges(&h, len) {
                for r in ranges {
                    proptest::prop_assert!(r.start < r.end && r.end <= len, "{h:?} {len}: {r:?}");
                }
            }
        }
    }

    #[test]
    fn ids_parse_only_as_32_hex_digits() {
        let id = ItemId([0xab; 16]);
        assert_eq!(parse_id(&id.to_string()), Some(id));
        assert_eq!(parse_id("zz"), None);
        assert_eq!(parse_id(&"g".repeat(32)), None);
    }
}
