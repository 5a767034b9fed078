//! The HTTP API: a user's delayed downloads (`fetches`: queue one, see
//! its state, delete it; `content`: retrieve it, resumable with
//! `Range`), `/status` and `/metrics` for operators, and the peer link's
//! receiving end ([`peer`]). Every route is in `Route`; the answers'
//! JSON is typed in [`schema`].
//!
//! Jobs ([`crate::item::job`]) and content live in the store; the fetcher
//! ([`crate::egress::fetch`]) fills the content in random Range chunks
//! through Tor.

// Handlers return a ready error response as their `Err`; it is large, but
// built once per failed request.
#![allow(clippy::result_large_err)]

mod conn;
mod content;
mod fetches;
pub mod peer;
mod response;
pub mod schema;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use dust_mixer::Store;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub use conn::Conn;
pub use peer::{MailRules, PeerLink};

use crate::access::accounts::Accounts;
use crate::access::auth::{Verdict, Verifier};
use crate::intake::strangers::{self, Strangers};
use crate::intake::{Schedule, Transfer};
use crate::item::wire;
use crate::status::{StatusFn, OPENMETRICS_TYPE};
use response::{
    bearer, error, full, json_response, not_found, retry_after, unauthorized, unavailable, Body,
    Resp, NO_SLOT,
};

/// Bound on a request's header, and on an idle keep-alive connection.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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
    peer: Option<PeerLink>,
}

/// The API's routes: every method and path it serves.
enum Route<'p> {
    /// `GET /status`: the public status, or the full one for an operator.
    Status,
    /// `GET /metrics`: OpenMetrics, for operators.
    Metrics,
    /// `POST /v1/peer/items`: the peer link ([`peer`]).
    PeerItems,
    /// `/v1/fetches…`: a user's downloads.
    Fetches(FetchRoute<'p>),
}

/// The routes of a user's downloads (`/v1/fetches…`).
enum FetchRoute<'p> {
    /// `POST /v1/fetches`: queue a download ([`fetches`]).
    Create,
    /// `GET /v1/fetches/{id}`: its state.
    Show(&'p str),
    /// `DELETE /v1/fetches/{id}`.
    Delete(&'p str),
    /// `GET` or `HEAD /v1/fetches/{id}/content` ([`content`]).
    Content { id: &'p str, head: bool },
    /// Any other method or path under `/v1/fetches` (405, once the user is
    /// known).
    NotAllowed,
}

impl<'p> Route<'p> {
    /// The route of `method` on `path`, or the `404`.
    fn of(method: &Method, path: &'p str) -> Result<Self, Resp> {
        let trimmed = path.trim_matches('/');
        if trimmed == wire::ITEMS_PATH.trim_start_matches('/') && method == Method::POST {
            return Ok(Route::PeerItems);
        }
        let segs: Vec<&'p str> = trimmed.split('/').collect();
        let fetch = match (method, segs.as_slice()) {
            (&Method::GET, ["status"]) => return Ok(Route::Status),
            (&Method::GET, ["metrics"]) => return Ok(Route::Metrics),
            (&Method::POST, ["v1", "fetches"]) => FetchRoute::Create,
            (&Method::GET, ["v1", "fetches", id]) => FetchRoute::Show(id),
            (&Method::DELETE, ["v1", "fetches", id]) => FetchRoute::Delete(id),
            (m @ (&Method::GET | &Method::HEAD), ["v1", "fetches", id, "content"]) => {
                FetchRoute::Content {
                    id,
                    head: m == Method::HEAD,
                }
            }
            (_, ["v1", "fetches", ..]) => FetchRoute::NotAllowed,
            _ => return Err(not_found()),
        };
        Ok(Route::Fetches(fetch))
    }
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

/// Entry points for `cargo fuzz` (see `fuzz/`): the request parsers of the
/// API, as the server calls them.
#[doc(hidden)]
pub mod fuzzing {
    /// Parse a `POST /v1/fetches` body; `true` if it was accepted.
    pub fn new_fetch(body: &[u8]) -> bool {
        super::fetches::new_fetch(body).is_ok()
    }

    /// Parse a `Range` header against `len` bytes; the ranges found, each
    /// checked to lie within the representation.
    pub fn parse_ranges(h: &str, len: u64) -> usize {
        let ranges = super::content::parse_ranges(h, len).unwrap_or_default();
        for r in &ranges {
            assert!(r.start < r.end && r.end <= len, "{r:?} outside 0..{len}");
        }
        ranges.len()
    }
}

impl<S> Api<S> {
    /// An API over `store` whose users' bearer tokens `verifier` checks
    /// (shared with the accounts, which add and remove users while the
    /// mote runs); new jobs enter the mix through `schedule`. Nobody is an
    /// operator, no peer may hand items over, and there are no accounts
    /// until the methods below say otherwise.
    pub fn new(
        store: Arc<Store>,
        verifier: Arc<Verifier>,
        status: StatusFn,
        schedule: Arc<S>,
    ) -> Self {
        Self {
            store,
            operators: Vec::new(),
            verifier,
            only: None,
            accounts: None,
            status,
            schedule,
            peer: None,
        }
    }

    /// A bare `TOKEN` is `user`'s: the configuration's only user.
    pub fn only_user(mut self, user: Option<String>) -> Self {
        self.only = user;
        self
    }

    /// The users named here also see the full `/status` and `/metrics`.
    pub fn operators(mut self, names: Vec<String>) -> Self {
        self.operators = names;
        self
    }

    /// Other motes hand items to this one over `link`.
    pub fn peer_link(mut self, link: PeerLink) -> Self {
        self.peer = Some(link);
        self
    }

    /// The accounts made while the mote runs (quotas, sessions).
    pub fn accounts(mut self, accounts: Arc<Accounts>) -> Self {
        self.accounts = Some(accounts);
        self
    }
}

impl<S: Schedule + Transfer> Api<S> {
    /// Serve until `shutdown` turns true: at most `max_connections`
    /// connections at once, and `peer_connections` more for the peer link
    /// (a peer's connection moves there when it authenticates). When every
    /// slot is taken, a newcomer evicts an idle connection (see [`Conn`]
    /// and `strangers`): clients that connect and send nothing, or hold
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
                let conn = Conn::new(slot, peer_slots, strangers);
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
                    let evicted = conn.evict_signal();
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

    /// Serve one request: find its `Route`; a download's route only
    /// once the bearer token names a user.
    pub async fn handle(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_string();
        let route = match Route::of(req.method(), &path) {
            Ok(r) => r,
            Err(r) => return r,
        };
        let fetch = match route {
            Route::Status => {
                let operator = self.operator(&req).await;
                return self.status_page(operator);
            }
            Route::Metrics => {
                if !self.operator(&req).await {
                    return unauthorized("/metrics needs an operator's bearer token");
                }
                return self.metrics();
            }
            Route::PeerItems => {
                let Some(link) = &self.peer else {
                    return not_found();
                };
                return peer::receive(link, &*self.schedule, req).await;
            }
            Route::Fetches(f) => f,
        };
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
                return retry_after(
                    error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_sessions",
                        "this account has as many requests under way as its quota allows",
                    ),
                    1,
                );
            }
            Some(Ok(slot)) => slot,
            None => None,
        };
        let resp = match fetch {
            FetchRoute::Create => self.create(&user, req, holder.as_ref()).await,
            FetchRoute::Show(id) => self.show(&user, id),
            FetchRoute::Delete(id) => self.delete(&user, id).await,
            FetchRoute::Content { id, head } => self.content(&user, id, req.headers(), head),
            FetchRoute::NotAllowed => error(
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
