//! The download fetcher: each release of a fetch item fetches one randomly
//! sized `Range` chunk of its job through the [`Connector`], stores it, and
//! asks the mixer to release the item again (after a fresh random delay)
//! until the content is complete.
//!
//! Consistency between chunks: the first response's `ETag` (or
//! `Last-Modified`) is kept and sent as `If-Range` with every later request;
//! an origin whose object changed answers `200` with the whole new object,
//! and the job restarts cleanly from it. An origin that ignores `Range`
//! (`200` to the first request) gets its full response stored once.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use dust_mixer::{
    wall_ms, ContentWriter, DeliveryError, ErrorKind, HasKind, Item, ItemId, Outcome, StorageError,
    Store,
};
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rand::Rng;

use crate::access::accounts::{Accounts, Charged};
use crate::access::quota::{Counter, Counters};
use crate::egress::addr::is_private;
use crate::egress::tls::{TlsClient, TlsError};
use crate::item::job::{is_http_url, records, Job, JobState};
use crate::tor::{BoxStream, ConnectError, Connector, Target};

/// The reason a job fails when its user's downloads would be too large.
const USER_CAP: &str = "the user's downloads would exceed the per-user limit";

/// The reason a job fails when its object is larger than `max_job_bytes`.
/// Why a download fails that its account could never fetch in one day.
const DAY_CAP: &str =
    "the whole object (the origin ignores Range) is larger than the account's daily download quota";
/// Why a whole-object answer waits for another day.
const DAY_ROOM: &str =
    "the whole object (the origin ignores Range) exceeds what the account may download today";
const JOB_CAP: &str = "object larger than the per-job limit";

/// Why a chunk could not be fetched or stored. A [`ErrorKind::Permanent`]
/// one ends the job, with this error as the reason its user sees, and
/// removes what it stored.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The job cannot succeed (a refused address, a bad URL, too large, an
    /// origin's 4xx, too many redirects, its deadline).
    #[error("{0}")]
    Refused(String),
    /// The origin's answer was unusable this time (a 5xx, a wrong range, a
    /// short body).
    #[error("{0}")]
    Origin(String),
    /// No stream to the origin.
    #[error("connecting to the origin: {0}")]
    Connect(#[from] ConnectError),
    /// No TLS session with the origin.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (an unusable stored validator).
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    /// The origin's name did not resolve (clearnet mode only).
    #[error("looking up the origin: {0}")]
    Resolve(std::io::Error),
    /// The request or its body took longer than `[fetch] timeout`.
    #[error("chunk request timed out after {0:?}")]
    Timeout(Duration),
    /// Storing the content or the job failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A blocking storage task did not finish.
    #[error("storage task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl HasKind for FetchError {
    fn kind(&self) -> ErrorKind {
        match self {
            FetchError::Refused(_) => ErrorKind::Permanent,
            FetchError::Connect(e) => e.kind(),
            FetchError::Tls(e) => e.kind(),
            FetchError::Origin(_)
            | FetchError::Http(_)
            | FetchError::Request(_)
            | FetchError::Resolve(_)
            | FetchError::Timeout(_) => ErrorKind::Temporary,
            FetchError::Storage(_) | FetchError::Task(_) => ErrorKind::Storage,
        }
    }
}

/// Run blocking storage I/O on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, FetchError> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

/// One chunk request in progress.
struct Chunk {
    /// The job's id.
    id: ItemId,
    /// Bytes already stored (the chunk starts here).
    have: u64,
    /// The last byte asked for.
    last: u64,
    /// The bound on the request and its body.
    deadline: tokio::time::Instant,
}

/// The origin's answer to a chunk request, before its status is looked at.
struct Answer {
    /// The request it answers.
    chunk: Chunk,
    headers: http::HeaderMap,
    body: Incoming,
    /// What the job's account may still download today, this chunk's
    /// reservation included (`u64::MAX`: no limit).
    day_room: u64,
}

/// `[fetch]` settings.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Smallest chunk in bytes.
    pub chunk_min: u64,
    /// Largest chunk in bytes.
    pub chunk_max: u64,
    /// Largest download (per job).
    pub max_job_bytes: u64,
    /// Largest sum of all of one user's downloads.
    pub max_user_bytes: u64,
    /// Redirects followed per job.
    pub max_redirects: u32,
    /// Allow origins on private, loopback, link-local and metadata
    /// addresses (only with a clearnet connector; tests).
    pub allow_private_addresses: bool,
    /// Extra CA for https origins (tests).
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Bound on one chunk request.
    pub timeout: Duration,
    /// The typical delay between chunks (for the expected ready time).
    pub typical_delay: Duration,
}

/// Fetches download chunks.
pub struct Fetcher {
    store: Arc<Store>,
    connector: Arc<dyn Connector>,
    cfg: FetchConfig,
    /// Whether the connector is clearnet (`direct`): then addresses are
    /// checked here; through Tor the exit decides.
    direct: bool,
    isolation: AtomicU64,
    tls: TlsClient,
    /// The mote's accounts (their daily download bytes).
    accounts: Option<Arc<Accounts>>,
}

/// `bytes a-b/total` → (a, b inclusive, total).
fn content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    Some((a.parse().ok()?, b.parse().ok()?, total))
}

impl Fetcher {
    /// A fetcher storing into `store`, connecting through `connector`.
    pub fn new(store: Arc<Store>, connector: Arc<dyn Connector>, cfg: FetchConfig) -> Self {
        let direct = connector.name() == "direct";
        Self {
            store,
            connector,
            cfg,
            direct,
            isolation: AtomicU64::new(rand::random()),
            tls: TlsClient::default(),
            accounts: None,
        }
    }

    /// Count downloaded bytes against `accounts`.
    pub fn with_accounts(mut self, accounts: Arc<Accounts>) -> Self {
        self.accounts = Some(accounts);
        self
    }

    /// Reserve up to `size` bytes of `user`'s downloads today: the bytes
    /// reserved (`None`: no account or no limit; `Some(0)`: none left)
    /// and the room today with them.
    fn reserve(&self, user: &str, size: u64) -> Result<(Option<Charged>, u64, u64), FetchError> {
        let Some(a) = &self.accounts else {
            return Ok((None, size, u64::MAX));
        };
        let room = a.room(user, Counter::FetchBytes)?;
        if room == u64::MAX {
            return Ok((None, size, u64::MAX));
        }
        let size = size.min(room);
        if size == 0 {
            return Ok((None, 0, 0));
        }
        match a.charge(user, Counters::one(Counter::FetchBytes, size))? {
            Ok(c) => Ok((c, size, room)),
            // Another chunk of the same account took it meanwhile.
            Err(_) => Ok((None, 0, 0)),
        }
    }

    /// Settle a reservation of `reserved` bytes of which `used` were
    /// stored: the rest is given back, more is counted (an origin that
    /// ignores Range sends the whole object, bounded by the day's room).
    fn settle(&self, user: &str, charged: Option<Charged>, reserved: u64, used: u64) {
        let Some(a) = &self.accounts else { return };
        if used > reserved {
            if let Err(e) = a.charge_over(user, Counters::one(Counter::FetchBytes, used - reserved))
            {
                tracing::warn!(error = %e, "could not count downloaded bytes");
            }
        }
        if used < reserved {
            a.refund_part(charged, Counters::one(Counter::FetchBytes, reserved - used));
        }
    }

    /// Write the job record and wait until it (and every chunk stored
    /// before it) is on disk: a chunk once stored is never fetched again,
    /// even after kill -9.
    async fn save(&self, id: &ItemId, job: &Job) -> Result<(), FetchError> {
        self.store.put_job(id, &job.encode())?;
        Ok(self.store.sync().await?)
    }

    /// One release of a fetch item: fetch and store the next chunk. A
    /// permanent failure ends the job, with its reason.
    pub async fn step(&self, item: &Item) -> Result<Outcome, DeliveryError> {
        let id = ItemId(
            item.payload
                .as_slice()
                .try_into()
                .map_err(|_| DeliveryError::permanent("fetch item without a job id"))?,
        );
        let Some(mut job) = Job::load(&self.store, &id)? else {
            return Ok(Outcome::Done); // deleted meanwhile
        };
        match self.advance(id, &mut job).await {
            Ok(outcome) => Ok(outcome),
            Err(e) if e.kind() == ErrorKind::Permanent => {
                // What it stored goes (a failed job holds no disk space; the
                // limits count only live jobs), the reason stays.
                self.store.clear_chunks(&id).await?;
                job.state = JobState::Failed;
                job.reason = Some(e.to_string());
                self.save(&id, &job).await.map_err(DeliveryError::wrap)?;
                Err(DeliveryError::wrap(e))
            }
            Err(e) => Err(DeliveryError::wrap(e)),
        }
    }

    /// Ask for the next chunk of `job` and handle the answer by its status.
    async fn advance(&self, id: ItemId, job: &mut Job) -> Result<Outcome, FetchError> {
        if matches!(job.state, JobState::Ready | JobState::Failed) {
            return Ok(Outcome::Done);
        }
        let now = wall_ms(SystemTime::now());
        if job.deadline_ms.is_some_and(|d| now > d) {
            return Err(FetchError::Refused("deadline passed".into()));
        }
        if job.not_before_ms.is_some_and(|t| now < t) {
            return Ok(Outcome::Again);
        }
        // The content so far is one contiguous prefix (stored front to back).
        let have = self.store.content_len(&id)?;
        if job.total.is_some_and(|t| have >= t) {
            return self.ready(id, job, have).await;
        }
        let size = rand::rng()
            .random_range(self.cfg.chunk_min..=self.cfg.chunk_max.max(self.cfg.chunk_min));
        // An account's downloaded bytes today bound the chunk; with none
        // left it waits (a later release, a new day).
        let (charged, size, day_room) = if job.cover {
            (None, size, u64::MAX)
        } else {
            self.reserve(&job.user, size)?
        };
        if size == 0 {
            return Ok(Outcome::Again);
        }
        let user = job.user.clone();
        let mut used = 0;
        let outcome = self.chunk(id, job, have, size, day_room, &mut used).await;
        self.settle(&user, charged, size, used);
        outcome
    }

    /// Ask for `size` bytes of `job` from `have` on and handle the answer.
    async fn chunk(
        &self,
        id: ItemId,
        job: &mut Job,
        have: u64,
        size: u64,
        day_room: u64,
        used: &mut u64,
    ) -> Result<Outcome, FetchError> {
        let chunk = Chunk {
            id,
            have,
            last: have + size - 1,
            deadline: tokio::time::Instant::now() + self.cfg.timeout,
        };
        let (status, headers, body) = self
            .timed(&chunk, self.request(job, chunk.have, chunk.last))
            .await??;
        // Deleted while we were asking: store nothing (and do not bring
        // the job record back).
        if self.store.job(&id)?.is_none() {
            return Ok(Outcome::Done);
        }
        if job.cover {
            // A dummy download: the request was the point. Read (at most a
            // chunk of) the answer like a real one, keep nothing.
            let _ = tokio::time::timeout_at(chunk.deadline, discard(body, size)).await;
            self.store.delete_job(&id).await?;
            return Ok(Outcome::Done);
        }
        let answer = Answer {
            chunk,
            headers,
            body,
            day_room,
        };
        match status {
            StatusCode::PARTIAL_CONTENT => self.partial(job, answer, used).await,
            StatusCode::OK => self.full(job, answer, used).await,
            StatusCode::RANGE_NOT_SATISFIABLE
                if unsatisfiable_length(&answer.headers) == Some(answer.chunk.have) =>
            {
                // We asked from the end (an empty object, or one whose size
                // is a multiple of our chunks): what we have is everything.
                self.ready(id, job, answer.chunk.have).await
            }
            s if s.is_redirection() => self.redirect(job, s, &answer).await,
            s if s.is_client_error() => Err(FetchError::Refused(format!("origin answered {s}"))),
            s => Err(FetchError::Origin(format!("origin answered {s}"))),
        }
    }

    /// `f` within the chunk's time bound.
    async fn timed<T>(
        &self,
        chunk: &Chunk,
        f: impl std::future::Future<Output = T>,
    ) -> Result<T, FetchError> {
        tokio::time::timeout_at(chunk.deadline, f)
            .await
            .map_err(|_| FetchError::Timeout(self.cfg.timeout))
    }

    /// The job is complete at `total` bytes.
    async fn ready(&self, id: ItemId, job: &mut Job, total: u64) -> Result<Outcome, FetchError> {
        job.total = Some(total);
        job.set_ready(SystemTime::now());
        self.save(&id, job).await?;
        Ok(Outcome::Done)
    }

    /// `206`: the chunk we asked for; store it and go on. Sets `used` to
    /// the bytes stored (the caller settles the account's reservation).
    async fn partial(
        &self,
        job: &mut Job,
        answer: Answer,
        used: &mut u64,
    ) -> Result<Outcome, FetchError> {
        let (chunk, headers) = (&answer.chunk, &answer.headers);
        let (id, have) = (chunk.id, chunk.have);
        let (a, b, total) = headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(content_range)
            .ok_or_else(|| FetchError::Origin("206 without a usable Content-Range".into()))?;
        if a != have || b < a || b > chunk.last {
            return Err(FetchError::Origin(
                "206 for a range we did not ask for".into(),
            ));
        }
        let want = b + 1 - a;
        // The object's size, or, while the origin does not say (`/*`), what
        // we would have after this chunk: the limits hold either way.
        let size = total.unwrap_or(have + want);
        if size > self.cfg.max_job_bytes {
            return Err(FetchError::Refused(JOB_CAP.into()));
        }
        if size > self.user_room(job, &id) {
            return Err(FetchError::Refused(USER_CAP.into()));
        }
        let longer = || FetchError::Origin("206 body longer than its Content-Range".into());
        let (writer, got) = self
            .timed(chunk, self.store_body(&id, have, answer.body, want, longer))
            .await??;
        if got != want {
            return Err(FetchError::Origin(format!(
                "206 body of {got} bytes for a range of {want}"
            )));
        }
        *used = got;
        if have == 0 {
            job.etag = validator(headers);
            job.content_type = content_type(headers);
        }
        if !self.commit(&id, writer).await? {
            return Ok(Outcome::Done);
        }
        job.total = total.or(job.total);
        let stored = have + want;
        let done = job.total.is_some_and(|t| stored >= t);
        if let Some(t) = job.total {
            let avg = (self.cfg.chunk_min + self.cfg.chunk_max.max(self.cfg.chunk_min)) / 2;
            let chunks_left = t.saturating_sub(stored).div_ceil(avg.max(1));
            let wait = self
                .cfg
                .typical_delay
                .saturating_mul(chunks_left.min(u32::MAX as u64) as u32);
            job.expected_ready_ms = Some(wall_ms(SystemTime::now() + wait));
        }
        if done {
            job.set_ready(SystemTime::now());
        } else {
            job.state = JobState::Fetching;
        }
        self.save(&id, job).await?;
        Ok(if done { Outcome::Done } else { Outcome::Again })
    }

    /// `200`: the whole object. The origin ignores Range, or (with our
    /// If-Range) the object changed. Either way it replaces what we have,
    /// as one chunk, and `used` is set as in [`partial`](Self::partial).
    /// An account's daily download quota bounds the object: larger than
    /// the whole quota fails the job; larger than what is left today waits
    /// for a later release.
    async fn full(
        &self,
        job: &mut Job,
        answer: Answer,
        used: &mut u64,
    ) -> Result<Outcome, FetchError> {
        let (chunk, headers) = (&answer.chunk, &answer.headers);
        let id = chunk.id;
        if chunk.have > 0 {
            tracing::info!(
                "origin object changed or Range ignored; download restarted from the full response"
            );
        }
        let limit = self.cfg.max_job_bytes.min(self.user_room(job, &id));
        let too_large = |n: u64| {
            FetchError::Refused(if n > self.cfg.max_job_bytes {
                JOB_CAP.into()
            } else {
                USER_CAP.into()
            })
        };
        let announced = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = announced.filter(|n| *n > limit) {
            return Err(too_large(n));
        }
        let quota = self
            .accounts
            .as_ref()
            .map_or(u64::MAX, |a| a.limit(&job.user, Counter::FetchBytes));
        if announced.is_some_and(|n| n > quota) {
            return Err(FetchError::Refused(DAY_CAP.into()));
        }
        if announced.is_some_and(|n| n > answer.day_room) {
            return Ok(Outcome::Again);
        }
        let (limit, over) = if answer.day_room < limit {
            (answer.day_room, FetchError::Origin(DAY_ROOM.into()))
        } else {
            (limit, too_large(limit + 1))
        };
        // The old content's index goes first (durably), so a crash while
        // the new object is written cannot mix the two.
        self.store.clear_chunks(&id).await?;
        let (writer, got) = self
            .timed(chunk, self.store_body(&id, 0, answer.body, limit, || over))
            .await??;
        *used = got;
        if !self.commit(&id, writer).await? {
            return Ok(Outcome::Done);
        }
        job.etag = validator(headers);
        job.content_type = content_type(headers);
        self.ready(id, job, got).await
    }

    /// `3xx`: follow the redirect at the next release (before any content).
    async fn redirect(
        &self,
        job: &mut Job,
        status: StatusCode,
        answer: &Answer,
    ) -> Result<Outcome, FetchError> {
        let loc = answer
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| FetchError::Origin("redirect without Location".into()))?;
        let base: Uri = job
            .url
            .parse()
            .map_err(|e| FetchError::Refused(format!("bad url: {e}")))?;
        let next =
            resolve(&base, loc).ok_or_else(|| FetchError::Origin("unusable redirect".into()))?;
        if !is_http_url(&next) {
            return Err(FetchError::Refused(
                "redirect to a URL that is not http or https".into(),
            ));
        }
        let redirects = job.redirects + 1;
        if redirects > self.cfg.max_redirects || answer.chunk.have > 0 {
            return Err(FetchError::Refused(format!(
                "too many redirects or a redirect mid-download ({status})"
            )));
        }
        job.url = next;
        job.redirects = redirects;
        self.save(&answer.chunk.id, job).await?;
        Ok(Outcome::Again)
    }

    /// How many bytes `job` (id `id`) may have before its user's downloads
    /// (the other jobs' sizes, or what they stored while their size is
    /// unknown; failed ones aside) exceed `max_user_bytes`.
    fn user_room(&self, job: &Job, id: &ItemId) -> u64 {
        let others: u64 = records(&self.store)
            .flatten()
            .filter(|(other, _)| other != id)
            .filter_map(|(other, j)| Some((other, j?)))
            .filter(|(_, j)| j.user == job.user && j.state != JobState::Failed)
            .map(|(other, j)| {
                j.total
                    .unwrap_or_else(|| self.store.content_len(&other).unwrap_or(0))
            })
            .sum();
        self.cfg.max_user_bytes.saturating_sub(others)
    }

    /// [`store_body`](crate::item::job::store_body) into the job's content at
    /// `offset`: at most `limit` bytes, or the error `too_large` makes.
    async fn store_body(
        &self,
        id: &ItemId,
        offset: u64,
        body: Incoming,
        limit: u64,
        too_large: impl FnOnce() -> FetchError,
    ) -> Result<(ContentWriter, u64), FetchError> {
        use crate::item::job::StoreBodyError as E;
        crate::item::job::store_body(&self.store, id, offset, Bytes::new(), body, limit)
            .await
            .map_err(|e| match e {
                E::TooLarge => too_large(),
                E::Body(e) => e.into(),
                E::Storage(e) => e.into(),
                E::Task(e) => e.into(),
            })
    }

    /// Sync a written chunk and enter it in the index. `false` if the job
    /// was deleted meanwhile (then its content is removed again).
    async fn commit(&self, id: &ItemId, writer: ContentWriter) -> Result<bool, FetchError> {
        let store = Arc::clone(&self.store);
        blocking(move || store.commit_chunk(writer)).await?;
        if self.store.job(id)?.is_none() {
            self.store.delete_job(id).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// GET `job.url` bytes `first..=last` (with If-Range once validated).
    async fn request(
        &self,
        job: &Job,
        first: u64,
        last: u64,
    ) -> Result<(StatusCode, http::HeaderMap, Incoming), FetchError> {
        let uri: Uri = job
            .url
            .parse()
            .map_err(|e| FetchError::Refused(format!("bad url: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(FetchError::Refused(
                "only http and https URLs are fetched".into(),
            ));
        }
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .ok_or_else(|| FetchError::Refused("url without host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let connect_host = if self.direct {
            self.check_direct(&host, port).await?
        } else {
            host.clone()
        };
        let stream = self
            .connector
            .connect(&Target {
                host: connect_host,
                port,
                isolation: self.isolation.fetch_add(1, Ordering::Relaxed),
            })
            .await?;
        let stream: BoxStream = if https {
            Box::new(
                self.tls
                    .connect(stream, &host, self.cfg.extra_ca_pem.as_deref())
                    .await?,
            )
        } else {
            stream
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let host_header = match uri.port_u16() {
            Some(p) => format!("{}:{p}", uri.host().unwrap_or_default()),
            None => uri.host().unwrap_or_default().to_string(),
        };
        let mut req = Request::get(path)
            .header(header::HOST, host_header)
            .header(header::RANGE, format!("bytes={first}-{last}"))
            .header(header::USER_AGENT, "Mozilla/5.0")
            .header(header::ACCEPT, "*/*");
        if first > 0 {
            if let Some(v) = &job.etag {
                req = req.header(header::IF_RANGE, v);
            }
        }
        let req = req.body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        Ok((parts.status, parts.headers, body))
    }

    /// In direct (clearnet) mode: resolve and refuse private addresses
    /// unless allowed; returns the address to connect to.
    async fn check_direct(&self, host: &str, port: u16) -> Result<String, FetchError> {
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(FetchError::Resolve)?
                .map(|a| a.ip())
                .collect(),
        };
        let ip = *addrs
            .first()
            .ok_or_else(|| FetchError::Resolve(std::io::Error::other("no address")))?;
        if !self.cfg.allow_private_addresses && addrs.iter().any(|a| is_private(*a)) {
            return Err(FetchError::Refused(format!(
                "{host} is a private address; set [fetch] allow_private_addresses to allow it"
            )));
        }
        Ok(ip.to_string())
    }
}

/// The length in a `416`'s `Content-Range: bytes */LENGTH`.
fn unsatisfiable_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_RANGE)?
        .to_str()
        .ok()?
        .trim()
        .strip_prefix("bytes */")?
        .parse()
        .ok()
}

/// Read and drop up to `limit` bytes of `body`.
async fn discard(mut body: Incoming, limit: u64) {
    let mut got = 0u64;
    while got <= limit {
        match body.frame().await {
            Some(Ok(f)) => got += f.data_ref().map_or(0, |d| d.len() as u64),
            _ => return,
        }
    }
}

/// The origin's `Content-Type`, if it is a plausible media type (printable
/// ASCII, short): it is served with the content later.
fn content_type(h: &http::HeaderMap) -> Option<String> {
    crate::item::job::media_type(h.get(header::CONTENT_TYPE)?.to_str().ok()?)
}

/// The validator to send as If-Range: a strong ETag, else Last-Modified.
fn validator(h: &http::HeaderMap) -> Option<String> {
    if let Some(e) = h.get(header::ETAG).and_then(|v| v.to_str().ok()) {
        if !e.starts_with("W/") {
            return Some(e.to_string());
        }
    }
    h.get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Resolve a Location header against the request URL.
fn resolve(base: &Uri, loc: &str) -> Option<String> {
    if let Ok(u) = loc.parse::<Uri>() {
        if u.scheme().is_some() && u.host().is_some() {
            return Some(u.to_string());
        }
    }
    if loc.starts_with('/') {
        let scheme = base.scheme_str()?;
        let auth = base.authority()?;
        return Some(format!("{scheme}://{auth}{loc}"));
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_and_redirects() {
        assert_eq!(content_range("bytes 0-99/1000"), Some((0, 99, Some(1000))));
        assert_eq!(content_range("bytes 5-9/*"), Some((5, 9, None)));
        assert_eq!(content_range("bytes */1000"), None);
        let base: Uri = "http://h:8/a/b?c".parse().unwrap();
        assert_eq!(resolve(&base, "/x").as_deref(), Some("http://h:8/x"));
        assert_eq!(
            resolve(&base, "https://o/y").as_deref(),
            Some("https://o/y")
        );
        assert_eq!(resolve(&base, "rel"), None);
    }
}
