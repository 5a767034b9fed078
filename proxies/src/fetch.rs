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
    wall_ms, ContentWriter, DeliveryError, Item, ItemId, Outcome, StorageError, Store,
};
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rand::Rng;

use crate::delivery::TlsClient;
use crate::http::{Job, JobState};
use crate::tor::{BoxStream, Connector, Target};

/// The reason a job fails when its user's downloads would be too large.
const USER_CAP: &str = "the user's downloads would exceed the per-user limit";

/// Bytes of a response body collected before they are written to the
/// content file (one blocking write each).
const WRITE_BATCH: usize = 1 << 20;

/// Why a body could not be stored.
enum BodyError {
    /// More bytes than allowed.
    TooLarge,
    /// The connection or the store failed.
    Other(DeliveryError),
}

impl From<DeliveryError> for BodyError {
    fn from(e: DeliveryError) -> Self {
        BodyError::Other(e)
    }
}

/// Run blocking storage I/O on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, DeliveryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| temp(format!("storage task: {e}")))?
        .map_err(temp)
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
}

/// Whether `ip` is private, loopback, link-local, unspecified or a cloud
/// metadata address.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            v.is_private()
                || v.is_loopback()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || v.octets()[0] == 100 && (v.octets()[1] & 0xc0) == 64 // 100.64/10
        }
        IpAddr::V6(v) => {
            v.is_loopback()
                || v.is_unspecified()
                || (v.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v.to_ipv4_mapped().is_some_and(|m| is_private(IpAddr::V4(m)))
        }
    }
}

fn temp(e: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::Temporary(e.to_string())
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
        }
    }

    /// Write the job record and wait until it (and every chunk stored
    /// before it) is on disk: a chunk once stored is never fetched again,
    /// even after kill -9.
    async fn save(&self, id: &ItemId, job: &Job) -> Result<(), DeliveryError> {
        self.store.put_job(id, &job.encode()).map_err(temp)?;
        self.store.sync().await.map_err(temp)
    }

    async fn fail(
        &self,
        id: &ItemId,
        job: &mut Job,
        reason: String,
    ) -> Result<Outcome, DeliveryError> {
        job.state = JobState::Failed;
        job.reason = Some(reason.clone());
        self.save(id, job).await?;
        Err(DeliveryError::Permanent(reason))
    }

    /// One release of a fetch item: fetch and store the next chunk.
    pub async fn step(&self, item: &Item) -> Result<Outcome, DeliveryError> {
        let id = ItemId(
            item.payload
                .as_slice()
                .try_into()
                .map_err(|_| DeliveryError::Permanent("fetch item without a job id".into()))?,
        );
        let Some(rec) = self.store.job(&id).map_err(temp)? else {
            return Ok(Outcome::Done); // deleted meanwhile
        };
        let Some(mut job) = Job::decode(&rec) else {
            return Err(DeliveryError::Permanent("unreadable job".into()));
        };
        if matches!(job.state, JobState::Ready | JobState::Failed) {
            return Ok(Outcome::Done);
        }
        let now = wall_ms(SystemTime::now());
        if job.deadline_ms.is_some_and(|d| now > d) {
            return self.fail(&id, &mut job, "deadline passed".into()).await;
        }
        if job.not_before_ms.is_some_and(|t| now < t) {
            return Ok(Outcome::Again);
        }
        // The content so far is one contiguous prefix (stored front to back).
        let have = self.store.content_len(&id).map_err(temp)?;
        if job.total.is_some_and(|t| have >= t) {
            job.state = JobState::Ready;
            self.save(&id, &job).await?;
            return Ok(Outcome::Done);
        }
        let size = rand::rng()
            .random_range(self.cfg.chunk_min..=self.cfg.chunk_max.max(self.cfg.chunk_min));
        let last = have + size - 1;
        // One bound for the request and its body.
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        let timed_out = || {
            temp(format!(
                "chunk request timed out after {:?}",
                self.cfg.timeout
            ))
        };
        let resp = tokio::time::timeout_at(deadline, self.request(&job, have, last))
            .await
            .map_err(|_| timed_out())?;
        let (status, headers, body) = match resp {
            Ok(r) => r,
            // A permanent problem (a refused address, a bad URL) ends the
            // job with its reason.
            Err(DeliveryError::Permanent(reason)) => return self.fail(&id, &mut job, reason).await,
            Err(e) => return Err(e),
        };
        // Deleted while we were asking: store nothing (and do not bring
        // the job record back).
        if self.store.job(&id).map_err(temp)?.is_none() {
            return Ok(Outcome::Done);
        }
        if job.cover {
            // A dummy download: the request was the point. Read (at most a
            // chunk of) the answer like a real one, keep nothing.
            let _ = tokio::time::timeout_at(deadline, discard(body, size)).await;
            self.store.delete_job(&id).await.map_err(temp)?;
            return Ok(Outcome::Done);
        }
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let (a, b, total) = headers
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range)
                    .ok_or_else(|| temp("206 without a usable Content-Range"))?;
                if a != have || b < a || b > last {
                    return Err(temp("206 for a range we did not ask for"));
                }
                if total.is_some_and(|t| t > self.cfg.max_job_bytes) {
                    return self
                        .fail(&id, &mut job, "object larger than the per-job limit".into())
                        .await;
                }
                if have == 0 && total.is_some_and(|t| self.over_user_cap(&job, &id, t)) {
                    return self.fail(&id, &mut job, USER_CAP.into()).await;
                }
                let want = b + 1 - a;
                let (writer, got) =
                    tokio::time::timeout_at(deadline, self.store_body(&id, have, body, want))
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(|e| match e {
                            BodyError::TooLarge => temp("206 body longer than its Content-Range"),
                            BodyError::Other(e) => e,
                        })?;
                if got != want {
                    return Err(temp(format!(
                        "206 body of {got} bytes for a range of {want}"
                    )));
                }
                if have == 0 {
                    job.etag = validator(&headers);
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
                job.state = if done {
                    JobState::Ready
                } else {
                    JobState::Fetching
                };
                self.save(&id, &job).await?;
                Ok(if done { Outcome::Done } else { Outcome::Again })
            }
            StatusCode::OK => {
                // The whole object: the origin ignores Range, or (with our
                // If-Range) the object changed. Either way it replaces what
                // we have, as one chunk.
                if have > 0 {
                    tracing::info!("origin object changed or Range ignored; download restarted from the full response");
                }
                let user_room = self.user_room(&job, &id);
                let limit = self.cfg.max_job_bytes.min(user_room);
                let too_large = |n: u64| {
                    if n > self.cfg.max_job_bytes {
                        "object larger than the per-job limit".to_string()
                    } else {
                        USER_CAP.to_string()
                    }
                };
                let announced = headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if let Some(n) = announced.filter(|n| *n > limit) {
                    return self.fail(&id, &mut job, too_large(n)).await;
                }
                // The old content's index goes first (durably), so a crash
                // while the new object is written cannot mix the two.
                self.store.clear_chunks(&id).await.map_err(temp)?;
                let (writer, got) =
                    match tokio::time::timeout_at(deadline, self.store_body(&id, 0, body, limit))
                        .await
                        .map_err(|_| timed_out())?
                    {
                        Ok(r) => r,
                        Err(BodyError::TooLarge) => {
                            return self.fail(&id, &mut job, too_large(limit + 1)).await
                        }
                        Err(BodyError::Other(e)) => return Err(e),
                    };
                if !self.commit(&id, writer).await? {
                    return Ok(Outcome::Done);
                }
                job.total = Some(got);
                job.etag = validator(&headers);
                job.state = JobState::Ready;
                self.save(&id, &job).await?;
                Ok(Outcome::Done)
            }
            StatusCode::RANGE_NOT_SATISFIABLE
                if headers
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().strip_prefix("bytes */"))
                    .and_then(|n| n.parse::<u64>().ok())
                    == Some(have) =>
            {
                // We asked from the end (an empty object, or one whose size
                // is a multiple of our chunks): what we have is everything.
                job.total = Some(have);
                job.state = JobState::Ready;
                self.save(&id, &job).await?;
                Ok(Outcome::Done)
            }
            s if s.is_redirection() => {
                let loc = headers
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| temp("redirect without Location"))?;
                let base: Uri = job.url.parse().map_err(temp)?;
                let next = resolve(&base, loc).ok_or_else(|| temp("unusable redirect"))?;
                let redirects = job.redirects + 1;
                if redirects > self.cfg.max_redirects || have > 0 {
                    return self
                        .fail(
                            &id,
                            &mut job,
                            format!("too many redirects or a redirect mid-download ({s})"),
                        )
                        .await;
                }
                job.url = next;
                job.redirects = redirects;
                self.save(&id, &job).await?;
                Ok(Outcome::Again)
            }
            s if s.is_client_error() => {
                self.fail(&id, &mut job, format!("origin answered {s}"))
                    .await
            }
            s => Err(temp(format!("origin answered {s}"))),
        }
    }

    /// How many bytes `job` (id `id`) may have before its user's downloads
    /// (the other jobs' known sizes, failed ones aside) exceed
    /// `max_user_bytes`.
    fn user_room(&self, job: &Job, id: &ItemId) -> u64 {
        let others: u64 = self
            .store
            .jobs()
            .flatten()
            .filter(|(other, _)| other != id)
            .filter_map(|(_, rec)| Job::decode(&rec))
            .filter(|j| j.user == job.user && j.state != JobState::Failed)
            .map(|j| j.total.unwrap_or(0))
            .sum();
        self.cfg.max_user_bytes.saturating_sub(others)
    }

    /// Whether `job` at `size` bytes would take its user over the cap.
    fn over_user_cap(&self, job: &Job, id: &ItemId, size: u64) -> bool {
        size > self.user_room(job, id)
    }

    /// Stream `body` into the job's content at `offset`, in batches of
    /// [`WRITE_BATCH`] bytes written on a blocking thread; at most `limit`
    /// bytes. Returns the (uncommitted) writer and the byte count.
    async fn store_body(
        &self,
        id: &ItemId,
        offset: u64,
        mut body: Incoming,
        limit: u64,
    ) -> Result<(ContentWriter, u64), BodyError> {
        let store = Arc::clone(&self.store);
        let job = *id;
        let mut writer = blocking(move || store.content_writer(&job, offset)).await?;
        let mut buf = Vec::with_capacity(WRITE_BATCH);
        let mut got = 0u64;
        loop {
            let frame = body
                .frame()
                .await
                .transpose()
                .map_err(|e| BodyError::Other(temp(format!("response body: {e}"))))?;
            let end = frame.is_none();
            if let Some(data) = frame.and_then(|f| f.into_data().ok()) {
                got += data.len() as u64;
                if got > limit {
                    return Err(BodyError::TooLarge);
                }
                buf.extend_from_slice(&data);
            }
            if buf.len() >= WRITE_BATCH || (end && !buf.is_empty()) {
                (writer, buf) = blocking(move || {
                    writer.write(&buf)?;
                    buf.clear();
                    Ok((writer, buf))
                })
                .await?;
            }
            if end {
                return Ok((writer, got));
            }
        }
    }

    /// Sync a written chunk and enter it in the index. `false` if the job
    /// was deleted meanwhile (then its content is removed again).
    async fn commit(&self, id: &ItemId, writer: ContentWriter) -> Result<bool, DeliveryError> {
        let store = Arc::clone(&self.store);
        blocking(move || store.commit_chunk(writer)).await?;
        if self.store.job(id).map_err(temp)?.is_none() {
            self.store.delete_job(id).await.map_err(temp)?;
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
    ) -> Result<(StatusCode, http::HeaderMap, Incoming), DeliveryError> {
        let uri: Uri = job
            .url
            .parse()
            .map_err(|e| DeliveryError::Permanent(format!("bad url: {e}")))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .ok_or_else(|| DeliveryError::Permanent("url without host".into()))?
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
            .await
            .map_err(temp)?;
        let stream: BoxStream = if https {
            Box::new(
                self.tls
                    .connect(stream, &host, self.cfg.extra_ca_pem.as_deref())
                    .await?,
            )
        } else {
            stream
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(temp)?;
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
        let req = req.body(Empty::<Bytes>::new()).map_err(temp)?;
        let resp = sender.send_request(req).await.map_err(temp)?;
        let (parts, body) = resp.into_parts();
        Ok((parts.status, parts.headers, body))
    }

    /// In direct (clearnet) mode: resolve and refuse private addresses
    /// unless allowed; returns the address to connect to.
    async fn check_direct(&self, host: &str, port: u16) -> Result<String, DeliveryError> {
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(temp)?
                .map(|a| a.ip())
                .collect(),
        };
        let ip = *addrs.first().ok_or_else(|| temp("no address"))?;
        if !self.cfg.allow_private_addresses && addrs.iter().any(|a| is_private(*a)) {
            return Err(DeliveryError::Permanent(format!(
                "{host} is a private address; set [fetch] allow_private_addresses to allow it"
            )));
        }
        Ok(ip.to_string())
    }
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
    fn private_addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
        ] {
            assert!(is_private(a.parse().unwrap()), "{a}");
        }
        for a in ["93.184.216.34", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_private(a.parse().unwrap()), "{a}");
        }
    }

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
