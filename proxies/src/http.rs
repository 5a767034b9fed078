//! The HTTP API of delayed downloads: queue a fetch, see its state, retrieve
//! the cached content (resumable, with `Range`), delete it; `/status` and
//! `/metrics` for operators.
//!
//! Jobs and content live in the store (`fetches` and `chunks` trees). A
//! `202` for a new job is sent only after the job record is fsynced. The
//! fetcher that fills the content in random Range chunks through Tor is the
//! next part of this module (not built yet): until then jobs stay `queued`.

// Handlers return a ready error response as their `Err`; it is large, but
// built once per failed request.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;
use dust_mixer::{wall_ms, ItemId, Store};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::Users;

/// Largest request body accepted (job requests are small JSON objects).
const MAX_BODY: usize = 16 * 1024;
/// Largest response body built in memory for one request (ranges beyond
/// this get 416-like refusal until streaming is built).
const MAX_RESPONSE: u64 = 256 << 20;

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
}

impl Job {
    /// Serialize for the store.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Inverse of [`Job::encode`].
    pub fn decode(b: &[u8]) -> Option<Self> {
        serde_json::from_slice(b).ok()
    }
}

/// What `/status` reports besides fetch counts (queue, transport, expiry).
pub type StatusFn = Arc<dyn Fn() -> Value + Send + Sync>;

/// Puts a new job's fetch item into the mix; must return only once it is
/// durably stored (the mixer's admission fsyncs).
pub type ScheduleFn = Arc<
    dyn Fn(ItemId, Option<u64>) -> futures::future::BoxFuture<'static, Result<(), ScheduleError>>
        + Send
        + Sync,
>;

/// Why a job could not be put into the mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    /// The mote ends too soon for a new job (503 with `Retry-After`: the
    /// seconds until it has ended).
    Expiring {
        /// Seconds until the mote has ended.
        retry_after_s: u64,
    },
    /// Storage failed or the mixer is stopping (503).
    Failed(String),
}

impl std::fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScheduleError::Expiring { .. } => write!(f, "the mote expires too soon"),
            ScheduleError::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// The API server.
pub struct Api {
    store: Arc<Store>,
    users: Users,
    /// Users who see the mix's counts (`/metrics`, the full `/status`).
    operators: Vec<String>,
    /// Tokens already verified (argon2 is slow on purpose): token → user.
    verified: Mutex<HashMap<String, String>>,
    status: StatusFn,
    schedule: ScheduleFn,
}

/// Response bodies: small ones in memory, content streamed from the store.
type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;
type Resp = Response<Body>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// Bytes `start..end` of a job's content as a stream of pieces of at most
/// [`STREAM_PIECE`] bytes, each read from the store when the client is
/// ready for it (so memory stays flat for any size).
fn stream_content(store: Arc<Store>, id: ItemId, start: u64, end: u64) -> Body {
    let pieces = futures::stream::unfold(start, move |pos| {
        let store = Arc::clone(&store);
        async move {
            if pos >= end {
                return None;
            }
            let to = end.min(pos + STREAM_PIECE);
            // A file read (from disk if not cached): on the blocking pool.
            let read = tokio::task::spawn_blocking(move || store.read_content(&id, pos, to)).await;
            let piece = match read {
                Ok(Ok(Some(b))) => Ok(hyper::body::Frame::data(Bytes::from(b))),
                Ok(Ok(None)) => Err(std::io::Error::other("content missing")),
                Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            Some((piece, to))
        }
    });
    http_body_util::StreamBody::new(pieces).boxed_unsync()
}

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
            if n == 0 {
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

impl Api {
    /// An API over `store` for `users` (name, token hash); the users named
    /// in `operators` also see the full `/status` and `/metrics`.
    pub fn new(
        store: Arc<Store>,
        users: Users,
        operators: Vec<String>,
        status: StatusFn,
        schedule: ScheduleFn,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            users,
            operators,
            verified: Mutex::new(HashMap::new()),
            status,
            schedule,
        })
    }

    /// Serve until `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
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
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let api = Arc::clone(&api);
                    async move { Ok::<_, Infallible>(api.handle(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(30))
                    .serve_connection(TokioIo::new(sock), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
            });
        }
    }

    /// The user a request's bearer token belongs to.
    async fn user(&self, headers: &HeaderMap) -> Option<String> {
        let token = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?
            .trim()
            .to_string();
        if let Some(u) = self
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&token)
        {
            return Some(u.clone());
        }
        let users = self.users.clone();
        let t = token.clone();
        let user = tokio::task::spawn_blocking(move || users.find(t.as_bytes()))
            .await
            .ok()??;
        self.verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token, user.clone());
        Some(user)
    }

    /// Route one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method.clone(), segs.as_slice()) {
            (Method::GET, ["status"]) => {
                let operator = self.operator(req.headers()).await;
                return self.status_page(operator);
            }
            (Method::GET, ["metrics"]) => {
                if !self.operator(req.headers()).await {
                    let mut r = error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "/metrics needs an operator's bearer token",
                    );
                    r.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    return r;
                }
                return self.metrics();
            }
            (_, ["v1", "fetches", ..]) => {}
            _ => return error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        }
        let Some(user) = self.user(req.headers()).await else {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        };
        match (method, segs.as_slice()) {
            (Method::POST, ["v1", "fetches"]) => self.create(&user, req).await,
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
        }
    }

    fn load(&self, user: &str, id: &str) -> Result<(ItemId, Job), Resp> {
        let not_found = || error(StatusCode::NOT_FOUND, "no_such_fetch", "no such fetch");
        let id = parse_id(id).ok_or_else(not_found)?;
        let rec = self
            .store
            .job(&id)
            .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, "storage", &e.to_string()))?
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

    async fn create(&self, user: &str, req: Request<Incoming>) -> Resp {
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "request body too large",
                )
            }
        };
        let new: NewFetch = match serde_json::from_slice(&body) {
            Ok(n) => n,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_json", &e.to_string()),
        };
        let url = match http::Uri::try_from(new.url.as_str()) {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => u,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_url",
                    "url must be an absolute http or https URL",
                )
            }
        };
        let not_before_ms = match parse_time(new.not_before.as_deref(), "not_before") {
            Ok(t) => t,
            Err(r) => return r,
        };
        let deadline_ms = match parse_time(new.deadline.as_deref(), "deadline") {
            Ok(t) => t,
            Err(r) => return r,
        };
        let id = ItemId(rand::random());
        let job = Job {
            url: url.to_string(),
            user: user.to_string(),
            state: JobState::Queued,
            reason: None,
            created_ms: wall_ms(SystemTime::now()),
            not_before_ms,
            deadline_ms,
            total: None,
            etag: None,
            expected_ready_ms: None,
            redirects: 0,
            cover: false,
        };
        let refused = || {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage",
                "could not store the job; try again later",
            )
        };
        if let Err(e) = self.store.put_job(&id, &job.encode()) {
            tracing::error!(error = %e, "storing a fetch job failed");
            return refused();
        }
        // 202 only once the job and its fetch item are on disk (the
        // admission's fsync covers the job record written before it).
        match (self.schedule)(id, not_before_ms).await {
            Ok(()) => {}
            Err(ScheduleError::Expiring { retry_after_s }) => {
                let _ = self.store.delete_job(&id).await;
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
                let mut r = refused();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
                return r;
            }
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
        let stored = match self.store.content_len(&id) {
            Ok(n) => n,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "storage", &e.to_string()),
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
            return error(StatusCode::SERVICE_UNAVAILABLE, "storage", &e.to_string());
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
        let read = |a: u64, b: u64| -> Result<Option<Vec<u8>>, Resp> {
            if b - a > MAX_RESPONSE {
                return Err(error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "too_large",
                    "ask for smaller ranges",
                ));
            }
            self.store
                .read_content(&id, a, b)
                .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, "storage", &e.to_string()))
        };
        let with_headers = |status: StatusCode, body: Body, len: u64| {
            let mut r = Response::new(if head { full(Bytes::new()) } else { body });
            *r.status_mut() = status;
            let h = r.headers_mut();
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            if let Ok(v) = HeaderValue::from_str(&etag) {
                h.insert(header::ETAG, v);
            }
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
                .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, "storage", &e.to_string()))
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
                let mut body = Vec::new();
                for ByteRange { start, end } in r {
                    let part = match read(start, end) {
                        Ok(Some(b)) => b,
                        Ok(None) => {
                            return error(
                                StatusCode::CONFLICT,
                                "not_ready",
                                "a requested range is not stored yet",
                            )
                        }
                        Err(resp) => return resp,
                    };
                    body.extend_from_slice(
                        format!(
                            "\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {start}-{}/{total}\r\n\r\n",
                            end - 1
                        )
                        .as_bytes(),
                    );
                    body.extend_from_slice(&part);
                }
                body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
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

    fn counts(&self) -> (u64, u64, u64, u64) {
        let (mut q, mut f, mut r, mut x) = (0, 0, 0, 0);
        for j in self.store.jobs().flatten() {
            match Job::decode(&j.1).map(|j| j.state) {
                Some(JobState::Queued) => q += 1,
                Some(JobState::Fetching) => f += 1,
                Some(JobState::Ready) => r += 1,
                Some(JobState::Failed) | None => x += 1,
            }
        }
        (q, f, r, x)
    }

    /// Whether the request carries an operator's token.
    async fn operator(&self, headers: &HeaderMap) -> bool {
        match self.user(headers).await {
            Some(u) => self.operators.contains(&u),
            None => false,
        }
    }

    /// `/status`. Queue sizes and the mix's counts change when a user
    /// submits and when an item leaves: anyone who could poll them could
    /// link the two, which is what the mix exists to prevent. So without an
    /// operator's token only the mote's end time is shown.
    fn status_page(&self, operator: bool) -> Resp {
        let mut v = (self.status)();
        if !operator {
            return json_response(
                StatusCode::OK,
                &json!({ "expires_at": v["expires_at"], "detail": "queue and mix counts need an operator's bearer token" }),
            );
        }
        let (q, f, r, x) = self.counts();
        v["fetches"] = json!({ "queued": q, "fetching": f, "ready": r, "failed": x });
        json_response(StatusCode::OK, &v)
    }

    fn metrics(&self) -> Resp {
        let v = (self.status)();
        let (q, f, r, x) = self.counts();
        let mut out = String::new();
        out.push_str(
            "# HELP dustmote_fetch_jobs Fetch jobs by state.\n# TYPE dustmote_fetch_jobs gauge\n",
        );
        for (s, n) in [("queued", q), ("fetching", f), ("ready", r), ("failed", x)] {
            out.push_str(&format!("dustmote_fetch_jobs{{state=\"{s}\"}} {n}\n"));
        }
        out.push_str("# HELP dustmote_queue_items Items in the mix queue.\n# TYPE dustmote_queue_items gauge\n");
        for s in ["queued", "in_flight"] {
            let n = v["queue"][s].as_u64().unwrap_or(0);
            out.push_str(&format!("dustmote_queue_items{{state=\"{s}\"}} {n}\n"));
        }
        let ready = u8::from(v["transport"]["ready"].as_bool() == Some(true));
        out.push_str("# HELP dustmote_transport_ready Whether the last outbound connection worked.\n# TYPE dustmote_transport_ready gauge\n");
        out.push_str(&format!("dustmote_transport_ready {ready}\n"));
        mix_metrics(&v["mix"], &mut out);
        let mut r = Response::new(full(out));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        r
    }
}

/// The mix's anonymity metrics (the status's `mix` object) in the
/// Prometheus text format.
fn mix_metrics(m: &Value, out: &mut String) {
    if !m.is_object() {
        return;
    }
    let num = |k: &str| m[k].as_f64().unwrap_or(0.0);
    for (name, help, kind, v) in [
        (
            "dustmote_mix_pool_items",
            "Items in the mix now (rho).",
            "gauge",
            num("pool"),
        ),
        (
            "dustmote_mix_held_items",
            "Items held for the next pool/binomial round.",
            "gauge",
            num("held"),
        ),
        (
            "dustmote_mix_pool_mean",
            "Time-averaged pool size since start.",
            "gauge",
            num("mean_pool"),
        ),
        (
            "dustmote_mix_entropy_bits",
            "Sender-anonymity entropy of recent outputs (moving average), bits.",
            "gauge",
            num("entropy_bits_recent"),
        ),
        (
            "dustmote_mix_entropy_bits_mean",
            "Mean entropy of all outputs since start, bits.",
            "gauge",
            num("entropy_bits_mean"),
        ),
        (
            "dustmote_mix_outputs_total",
            "Items that left the mix.",
            "counter",
            num("outputs"),
        ),
        (
            "dustmote_mix_unmixed_total",
            "Items that left without ever sharing the pool with another.",
            "counter",
            num("unmixed"),
        ),
        (
            "dustmote_mix_unmixed_ratio",
            "Fraction of outputs that left unmixed.",
            "gauge",
            num("p_unmixed"),
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    }
    out.push_str("# HELP dustmote_mix_latency_seconds Time items spent in the mix.\n# TYPE dustmote_mix_latency_seconds histogram\n");
    let mut count = 0;
    for b in m["latency_buckets_s"].as_array().into_iter().flatten() {
        let le = match &b[0] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        count = b[1].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "dustmote_mix_latency_seconds_bucket{{le=\"{le}\"}} {count}\n"
        ));
    }
    out.push_str(&format!(
        "dustmote_mix_latency_seconds_sum {}\ndustmote_mix_latency_seconds_count {count}\n",
        num("latency_sum_s")
    ));
}

#[cfg(test)]
mod tests {
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
    }

    #[test]
    fn ids_parse_only_as_32_hex_digits() {
        let id = ItemId([0xab; 16]);
        assert_eq!(parse_id(&id.to_string()), Some(id));
        assert_eq!(parse_id("zz"), None);
        assert_eq!(parse_id(&"g".repeat(32)), None);
    }
}
