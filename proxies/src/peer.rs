//! The link between motes, receiving side: `POST /v1/peer/items` admits one
//! item another mote hands over (a cascade's next hop, or a successor that
//! takes a queue before its sender expires).
//!
//! The request: `Authorization: Bearer NAME:TOKEN` (a peer from
//! `[[peers]]` with a `token_hash`: peers and users are separate, a user's
//! token cannot push items and a peer's cannot queue downloads),
//! `Dust-Item-Id: <32 hex digits>` (the sender's id of the item),
//! `Dust-Item-Kind: mail`, and the item's payload as the body.
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

use crate::auth::{Users, Verdict, Verifier};
use crate::mail::StoredMail;

/// How long a received item's (peer, id) digest is kept: longer than any
/// mote lives, so a resend is always recognized.
pub const TRANSFER_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long the whole body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(120);

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
        }
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
            Err(MixerError::Storage(StorageError::Full { .. })) => Err(TransferError::NoSpace),
            Err(e) => Err(TransferError::Other(e)),
        }
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
    let token = crate::http::bearer(headers).ok_or_else(unauthorized)?;
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
    let peer = match authenticate(peers, req.headers()).await {
        Ok(p) => p,
        Err(a) => return a,
    };
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
    let id = req
        .headers()
        .get("dust-item-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<ItemId>().ok());
    let Some(id) = id else {
        return Answer::err(
            StatusCode::BAD_REQUEST,
            "bad_item_id",
            "Dust-Item-Id must be the item's id, 32 hex digits",
        );
    };
    let kind = match req.headers().get("dust-item-kind").map(|v| v.as_bytes()) {
        Some(b"mail") => ItemKind::Mail,
        _ => {
            return Answer::err(
                StatusCode::BAD_REQUEST,
                "bad_item_kind",
                "Dust-Item-Kind must be \"mail\"",
            )
        }
    };
    let read = Limited::new(req.into_body(), limits.max_item_bytes).collect();
    let body: Bytes = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            return Answer::err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "item_too_large",
                format!(
                    "items from this peer are at most {} bytes",
                    limits.max_item_bytes
                ),
            )
        }
        Err(_) => {
            return Answer::err(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the item did not arrive in time",
            )
        }
    };
    // Nothing that could not be delivered is stored: the payload must be
    // a message this mote can send on.
    if let Err(e) = StoredMail::decode(&body) {
        return Answer::err(
            StatusCode::BAD_REQUEST,
            "bad_item",
            format!("not a stored message: {e}"),
        );
    }
    match transfer
        .admit_transfer(
            kind,
            body.to_vec(),
            transfer_digest(&peer, &id),
            TRANSFER_WINDOW,
        )
        .await
    {
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
    use dust_mixer::DeliveryError;
    use http_body_util::Full;
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
    let kind_name = match kind {
        ItemKind::Mail => "mail",
        ItemKind::Fetch => {
            return Err(DeliveryError::permanent(
                "downloads cannot be handed to a peer yet",
            ))
        }
    };
    let host = if peer.port == 80 {
        peer.host.clone()
    } else {
        format!("{}:{}", peer.host, peer.port)
    };
    let req = Request::post("/v1/peer/items")
        .header(header::HOST, host)
        .header(header::AUTHORIZATION, format!("Bearer {}", peer.credential))
        .header("dust-item-id", id.to_string())
        .header("dust-item-kind", kind_name)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Full::new(Bytes::from(payload)))
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
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE
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
