//! The link between motes, sending side, and the whole hop hand-off.
//!
//! An item goes to another mote's `POST /v1/peer/items`
//! ([`crate::item::wire`]) through a [`Connector`]: mail to a cascade's
//! next mote ([`send_mail`]), and at a hop the queue and the downloads to
//! the successor ([`Hop`]). The sender removes its copy only after a 2xx,
//! i.e. once the receiver stored the item durably; the receiver recognizes
//! a resend (same sender, same id), so an item is stored once whoever
//! crashes when.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use dust_mixer::{Deliver, DeliveryError, Item, ItemId, ItemKind, Mixer, StorageError, Store};
use futures::task::Spawn;
use http_body_util::{BodyExt, Limited};
use hyper::{header, Request, StatusCode};
use tor_rtcompat::{Blocking, SleepProvider};

use crate::item::job::{records, Job, JobState, LoadError};
use crate::item::wire::{self, JobTransfer};
use crate::status::{HopState, HopStatus};
use crate::tor::{Connector, Target};

/// Pieces in which a job's content is read and sent.
const SEND_PIECE: u64 = 1024 * 1024;

/// How long one hand-off to the successor may take (connect, send, the
/// successor's fsync); a download gets a second more per MiB.
const HAND_OFF_TIMEOUT: Duration = Duration::from_secs(120);

/// How often finished downloads are looked at for the hand-off.
const JOB_HOP_ROUND: Duration = Duration::from_secs(2);

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

/// The hop: the successor (`[mote] successor`, replaced by `dustmote
/// reload`) and the hand-off of the queue and the downloads to it, from
/// the hop point to the drain point.
pub struct Hop {
    successor: parking_lot::Mutex<Option<PeerTarget>>,
    connector: Arc<dyn Connector>,
    store: Arc<Store>,
    /// One Tor circuit for the whole hand-off: the successor learns that
    /// the items come from one mote anyway (it is that mote's successor),
    /// and a circuit per item would make a 10,000-item hand-off take hours.
    isolation: u64,
    /// Kept connections on that circuit.
    pool: Pool,
}

impl Hop {
    /// A hop to `successor` (none: nobody named yet) through `connector`,
    /// of what is in `store`.
    pub fn new(
        connector: Arc<dyn Connector>,
        store: Arc<Store>,
        successor: Option<PeerTarget>,
    ) -> Arc<Self> {
        Arc::new(Self {
            successor: parking_lot::Mutex::new(successor),
            connector,
            store,
            isolation: rand::random(),
            pool: Pool::default(),
        })
    }

    /// The successor named now.
    pub fn successor(&self) -> Option<PeerTarget> {
        self.successor.lock().clone()
    }

    /// Name another successor (or none).
    pub fn set_successor(&self, successor: Option<PeerTarget>) {
        *self.successor.lock() = successor;
    }

    /// Where the hop stands at `now`, for a mote whose hop point is
    /// `hop_at` and whose last release is at `last_release`.
    pub fn state(&self, now: SystemTime, hop_at: SystemTime, last_release: SystemTime) -> HopState {
        if now >= last_release {
            HopState::Over
        } else if now < hop_at {
            HopState::Waiting
        } else if self.successor.lock().is_some() {
            HopState::HandingOff
        } else {
            HopState::NoSuccessor
        }
    }

    /// The hop as the status shows it (`None`: the mote does not hop).
    pub fn status<R, D>(&self, mixer: &Mixer<R, D>) -> Option<HopStatus>
    where
        R: SleepProvider + Spawn + Blocking,
        D: Deliver,
    {
        let cfg = mixer.config();
        let (at, l) = cfg.hop_point().zip(cfg.lifetime)?;
        let m = mixer.metrics();
        Some(HopStatus {
            successor: self.successor().map(|s| s.name),
            hop_at: humantime::format_rfc3339_seconds(at).to_string(),
            state: self.state(SystemTime::now(), at, l.last_release()),
            handed_off: m.handed_off,
            fallbacks: m.hop_fallbacks,
        })
    }

    /// Hand a due `item` to the successor (the mixer's
    /// [`Deliver::hand_off`]): a mail item as it is stored; for a fetch
    /// item, its download job. `Ok` once the successor stored it.
    pub async fn hand_off(&self, item: &Item) -> Result<(), DeliveryError> {
        let Some(peer) = self.successor() else {
            return Err(DeliveryError::temporary("no successor named"));
        };
        match ItemKind::try_from(item.kind) {
            Ok(ItemKind::Mail) => {
                let link = self.link(&peer);
                let send = link.send_mail(&item.id, &item.payload);
                tokio::time::timeout(HAND_OFF_TIMEOUT, send)
                    .await
                    .unwrap_or_else(|_| Err(timed_out(&peer)))
            }
            // A download job: its record and content go; the record stays
            // here marked moved, so that its user is sent to the successor
            // (a cover download stays: `send_job` refuses it).
            Ok(ItemKind::Fetch) => self.hand_off_job(&peer, job_of(item)?).await,
            Err(kind) => Err(DeliveryError::permanent(format!(
                "an item of unknown kind {kind} is not handed over"
            ))),
        }
    }

    /// The link to `peer` on the hand-off's circuit and kept connections.
    fn link<'a>(&'a self, peer: &'a PeerTarget) -> LinkTo<'a> {
        LinkTo {
            connector: &*self.connector,
            peer,
            isolation: self.isolation,
            pool: Some(&self.pool),
        }
    }

    /// Hand download job `job` to `peer` (under the job's id, whether its
    /// fetch item or the finished-jobs round sends it) and mark it moved
    /// here.
    async fn hand_off_job(&self, peer: &PeerTarget, job: ItemId) -> Result<(), DeliveryError> {
        let link = self.link(peer);
        let send = link.send_job(&self.store, job);
        // A large download over Tor takes longer than a message: a second
        // more per MiB.
        let mib = self.store.content_len(&job).unwrap_or(0) / (1024 * 1024);
        let limit = HAND_OFF_TIMEOUT + Duration::from_secs(mib);
        match tokio::time::timeout(limit, send).await {
            Ok(r) => r?,
            Err(_) => return Err(timed_out(peer)),
        }
        mark_moved(&self.store, &job, peer)
            .await
            .map_err(DeliveryError::from)
    }

    /// Downloads that are complete (or failed) have no item in the mix;
    /// from the hop point they are handed over here, each under its job id,
    /// until the drain point (a failure is tried again on the next round).
    pub async fn hand_off_finished_jobs<R, D>(self: Arc<Self>, mixer: Mixer<R, D>)
    where
        R: SleepProvider + Spawn + Blocking,
        D: Deliver,
    {
        loop {
            let cfg = mixer.config();
            let (Some(hop_at), Some(l)) = (cfg.hop_point(), cfg.lifetime) else {
                // No hopping (a reload may turn it on).
                tokio::time::sleep(JOB_HOP_ROUND).await;
                continue;
            };
            let now = SystemTime::now();
            if now >= l.last_release() {
                return;
            }
            if let Ok(wait) = hop_at.duration_since(now) {
                tokio::time::sleep(wait.min(JOB_HOP_ROUND)).await;
                continue;
            }
            if let Some(peer) = self.successor() {
                for id in self.finished_jobs() {
                    match self.hand_off_job(&peer, id).await {
                        Ok(()) => {
                            tracing::debug!("a finished download was handed to the successor")
                        }
                        Err(e) => {
                            tracing::info!(
                                "handing a finished download to the successor failed; trying \
                                 again"
                            );
                            tracing::debug!(reason = %e, "hand-off failure reason");
                        }
                    }
                }
            }
            tokio::time::sleep(JOB_HOP_ROUND).await;
        }
    }

    /// The users' downloads that are over here (ready or failed) and not
    /// moved yet.
    fn finished_jobs(&self) -> Vec<ItemId> {
        records(&self.store)
            .flatten()
            .filter_map(|(id, job)| {
                let job = job?;
                let finished = matches!(job.state, JobState::Ready | JobState::Failed);
                (finished && !job.cover && job.moved_to.is_none()).then_some(id)
            })
            .collect()
    }
}

/// The job a fetch item carries (its payload is the job's id).
fn job_of(item: &Item) -> Result<ItemId, DeliveryError> {
    Ok(ItemId(item.payload.as_slice().try_into().map_err(
        |_| DeliveryError::permanent("fetch item without a job id"),
    )?))
}

fn timed_out(peer: &PeerTarget) -> DeliveryError {
    DeliveryError::temporary(format!("hand-off to {} timed out", peer.name))
}

/// A response body of the link, read up to this (the answers are short
/// JSON).
const MAX_ANSWER: usize = 4096;

/// Most kept connections: one per hand-off in flight (the mixer hands
/// off 16 at once, and a peer has 16 connection slots for the link).
const MAX_IDLE: usize = 16;

/// A kept connection unused this long is closed rather than reused: it
/// holds one of the peer's link slots.
const KEEP_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// A request body on the link: a mail item in memory, or a job's record
/// and content streamed from the store.
type LinkBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// One HTTP/1.1 connection to a peer.
type Sender = hyper::client::conn::http1::SendRequest<LinkBody>;

/// Connections kept open (HTTP/1.1 keep-alive) between hand-offs, by the
/// peer's address: a hand-off of many items opens a stream and a
/// connection per item in flight, not per item.
#[derive(Default)]
pub struct Pool {
    idle: parking_lot::Mutex<Vec<Idle>>,
}

/// A kept connection: to whom, since when.
struct Idle {
    addr: String,
    since: std::time::Instant,
    sender: Sender,
}

impl Pool {
    /// A kept connection to `addr` that is still open (those closed or
    /// kept too long are dropped, which closes them).
    fn take(&self, addr: &str) -> Option<Sender> {
        let mut idle = self.idle.lock();
        idle.retain(|i| !i.sender.is_closed() && i.since.elapsed() < KEEP_IDLE);
        let i = idle.iter().position(|i| i.addr == addr)?;
        Some(idle.swap_remove(i).sender)
    }

    /// Keep `sender` to `addr` for the next item.
    fn put(&self, addr: String, sender: Sender) {
        let mut idle = self.idle.lock();
        if !sender.is_closed() && idle.len() < MAX_IDLE {
            idle.push(Idle {
                addr,
                since: std::time::Instant::now(),
                sender,
            });
        }
    }
}

/// The sending end of the link to one peer: through `connector`, on the
/// circuit `isolation` names, with connections kept in `pool` (`None`: a
/// connection per item, as a cascade's next hop gets, each on a circuit of
/// its own).
pub struct LinkTo<'a> {
    /// The transport.
    pub connector: &'a dyn Connector,
    /// The peer.
    pub peer: &'a PeerTarget,
    /// The circuit.
    pub isolation: u64,
    /// Kept connections, if any.
    pub pool: Option<&'a Pool>,
}

impl LinkTo<'_> {
    /// Hand mail item `id` (its stored form, `payload`) to the peer; `Ok`
    /// once the peer answered 2xx, i.e. stored it durably (or had it
    /// already). Only then may the caller remove its copy. The item goes
    /// as it is stored: the next mote adds no Date (the last one does when
    /// it speaks SMTP) and keeps the Message-ID.
    ///
    /// A refusal the item can never get past (400, 409, 413: the peer will
    /// not take this item) is permanent; anything else — no route, a
    /// timeout, 401/404 (a configuration to fix), 429, 503, 507, 5xx — is
    /// temporary: the item stays and is tried again.
    pub async fn send_mail(&self, id: &ItemId, payload: &[u8]) -> Result<(), DeliveryError> {
        let payload = Bytes::copy_from_slice(payload);
        let body = || {
            http_body_util::Full::new(payload.clone())
                .map_err(|never| match never {})
                .boxed_unsync()
        };
        self.post_item(id, ItemKind::Mail, None, &body).await
    }

    /// Hand download job `job_id` to the peer, under the job's id: its
    /// record and the content stored so far, read from `store` and
    /// streamed in 1 MiB pieces. `Ok` once the peer stored it durably; the
    /// caller then marks the job moved ([`mark_moved`]) and drops its item.
    pub async fn send_job(&self, store: &Arc<Store>, job_id: ItemId) -> Result<(), DeliveryError> {
        let job = Job::load(store, &job_id)?
            .ok_or_else(|| DeliveryError::permanent("the job is gone"))?;
        if job.cover {
            // It belongs to no one: it is released here.
            return Err(DeliveryError::permanent(
                "a cover download is not handed over",
            ));
        }
        let head = Bytes::from(
            serde_json::to_vec(&JobTransfer::new(job_id, job))
                .map_err(|e| DeliveryError::permanent(format!("encoding the job: {e}")))?,
        );
        let len = store.content_len(&job_id)?;
        let head_len = head.len();
        let body = || job_body(head.clone(), Arc::clone(store), job_id, len);
        // The transfer names the job (the receiver binds it to this peer
        // and the job's id), not the fetch item that may carry it here.
        let job = Some((head_len, head_len as u64 + len));
        self.post_item(&job_id, ItemKind::Fetch, job, &body).await
    }

    /// POST one item to the peer's [`wire::ITEMS_PATH`]; `job`: (record
    /// length, whole body length) of a download job; `body` makes the
    /// request's body (twice if a kept connection turns out closed).
    async fn post_item(
        &self,
        id: &ItemId,
        kind: ItemKind,
        job: Option<(usize, u64)>,
        body: &(dyn Fn() -> LinkBody + Sync),
    ) -> Result<(), DeliveryError> {
        let peer = self.peer;
        let temporary =
            |what: String| DeliveryError::temporary(format!("peer {}: {what}", peer.name));
        let addr = format!("{}:{}", peer.host, peer.port);
        let request = || self.request(id, kind, job, body());
        let kept = self.pool.and_then(|p| p.take(&addr));
        let (resp, sender) = match kept {
            Some(mut sender) => match send(&mut sender, request()?).await {
                Ok(resp) => (resp, sender),
                Err(e) => {
                    // The peer closed a kept connection meanwhile (its idle
                    // timeout): once more on a new one. The peer recognizes
                    // a resend (exactly once by peer and id).
                    tracing::debug!(error = %e, "a kept connection failed; opening another");
                    let mut sender = self.connect().await?;
                    let resp = send(&mut sender, request()?)
                        .await
                        .map_err(|e| temporary(format!("HTTP: {e}")))?;
                    (resp, sender)
                }
            },
            None => {
                let mut sender = self.connect().await?;
                let resp = send(&mut sender, request()?)
                    .await
                    .map_err(|e| temporary(format!("HTTP: {e}")))?;
                (resp, sender)
            }
        };
        let status = resp.status();
        let answer = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned());
        // Kept only once its answer was read whole.
        if let (Ok(_), Some(pool)) = (&answer, self.pool) {
            pool.put(addr, sender);
        }
        if status.is_success() {
            return Ok(());
        }
        let what = format!("{status}: {}", answer.unwrap_or_default().trim());
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

    /// A new connection to the peer.
    async fn connect(&self) -> Result<Sender, DeliveryError> {
        let temporary =
            |what: String| DeliveryError::temporary(format!("peer {}: {what}", self.peer.name));
        let stream = self
            .connector
            .connect(&Target {
                host: self.peer.host.clone(),
                port: self.peer.port,
                isolation: self.isolation,
            })
            .await
            .map_err(|e| temporary(format!("no stream: {e}")))?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| temporary(format!("HTTP: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// The request that hands item `id` over with `body`.
    fn request(
        &self,
        id: &ItemId,
        kind: ItemKind,
        job: Option<(usize, u64)>,
        body: LinkBody,
    ) -> Result<Request<LinkBody>, DeliveryError> {
        let host = self
            .peer
            .api_base()
            .trim_start_matches("http://")
            .to_string();
        let mut req = Request::post(wire::ITEMS_PATH)
            .header(header::HOST, host)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.peer.credential),
            )
            .header(wire::ITEM_ID, id.to_string())
            .header(wire::ITEM_KIND, wire::kind_name(kind))
            .header(header::CONTENT_TYPE, "application/octet-stream");
        if let Some((record, total)) = job {
            req = req
                .header(wire::JOB_LENGTH, record)
                .header(header::CONTENT_LENGTH, total);
        }
        req.body(body)
            .map_err(|e| DeliveryError::permanent(format!("building the request: {e}")))
    }
}

/// Send `req` on `sender` once it is ready.
async fn send(
    sender: &mut Sender,
    req: Request<LinkBody>,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error> {
    sender.ready().await?;
    sender.send_request(req).await
}

/// A job's transfer body: `head` (its record), then its `len` bytes of
/// content read from `store` in pieces.
fn job_body(head: Bytes, store: Arc<Store>, job_id: ItemId, len: u64) -> LinkBody {
    use futures::StreamExt;
    let first =
        futures::stream::once(
            async move { Ok::<_, std::io::Error>(hyper::body::Frame::data(head)) },
        );
    let pieces = futures::stream::try_unfold(0u64, move |at| {
        let store = Arc::clone(&store);
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
    http_body_util::StreamBody::new(first.chain(pieces)).boxed_unsync()
}

/// Record that job `id` now lives at `peer` and drop its content here
/// (durably: when this returns, the user asking here is sent there).
pub async fn mark_moved(store: &Store, id: &ItemId, peer: &PeerTarget) -> Result<(), StorageError> {
    let mut job = match Job::load(store, id) {
        Ok(Some(job)) => job,
        // Gone, or unreadable (nothing to mark).
        Ok(None) | Err(LoadError::Unreadable) => return Ok(()),
        Err(LoadError::Storage(e)) => return Err(e),
    };
    job.moved_to = Some(format!("{}/v1/fetches/{id}", peer.api_base()));
    store.put_job(id, &job.encode())?;
    store.clear_chunks(id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hop_state_follows_the_clock_and_the_successor() {
        let hop = Hop::new(
            Arc::new(crate::tor::Direct::new(Duration::from_secs(1))),
            #[allow(clippy::unwrap_used)]
            Store::temporary().unwrap(),
            None,
        );
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let (at, end) = (t(100), t(200));
        assert_eq!(hop.state(t(99), at, end), HopState::Waiting);
        assert_eq!(hop.state(t(100), at, end), HopState::NoSuccessor);
        hop.set_successor(Some(PeerTarget {
            name: "next".into(),
            host: "127.0.0.1".into(),
            port: 1,
            credential: "a:b".into(),
        }));
        assert_eq!(hop.state(t(150), at, end), HopState::HandingOff);
        assert_eq!(hop.state(t(200), at, end), HopState::Over);
        assert_eq!(HopState::HandingOff.to_string(), "handing_off");
    }
}
