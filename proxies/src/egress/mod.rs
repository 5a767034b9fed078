//! What leaves the mote: mail to its next SMTP hop ([`mail`]) or to a
//! cascade's next mote ([`hop`]), download chunks ([`fetch`]), and at a hop
//! the queue and the downloads to the successor ([`hop`]).
//!
//! [`Egress`] is what the mixer hands each due item to: it sends the item
//! on by its kind. Every outbound connection goes through a
//! [`Connector`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dust_mixer::{Deliver, DeliveryError, Item, ItemKind, Outcome};

pub mod addr;
pub mod fetch;
pub mod hop;
pub mod mail;
pub mod mx;
mod tls;

use crate::item::mail::StoredMail;
use crate::tor::Connector;
use fetch::Fetcher;
use hop::{Hop, PeerTarget};
use mail::{MailDelivery, Route};

/// Where mail goes next (`[delivery.mail]`).
#[derive(Debug, Clone)]
pub enum MailNext {
    /// An SMTP next hop: a smarthost, or the recipients' exchangers.
    Smtp(Route),
    /// Another mote (a cascade): its peer link.
    Mote(PeerTarget),
}

/// Mail to a cascade's next mote: each item on a circuit of its own.
struct Cascade {
    connector: Arc<dyn Connector>,
    peer: PeerTarget,
    timeout: Duration,
    isolation: AtomicU64,
}

impl Cascade {
    async fn deliver(&self, item: &Item) -> Result<Outcome, DeliveryError> {
        // Nothing that could not be delivered goes on.
        StoredMail::decode(&item.payload)
            .map_err(|e| DeliveryError::permanent(format!("unreadable mail item: {e}")))?;
        let isolation = self.isolation.fetch_add(1, Ordering::Relaxed);
        let link = hop::LinkTo {
            connector: &*self.connector,
            peer: &self.peer,
            isolation,
            pool: None,
        };
        let send = link.send_mail(&item.id, &item.payload);
        match tokio::time::timeout(self.timeout, send).await {
            Ok(r) => r.map(|()| Outcome::Done),
            Err(_) => Err(DeliveryError::temporary(format!(
                "hand-off to peer {} timed out after {:?}",
                self.peer.name, self.timeout
            ))),
        }
    }
}

/// How mail leaves.
enum MailOut {
    Smtp(MailDelivery),
    Mote(Cascade),
}

/// What the mixer hands due items to, by kind.
pub struct Egress {
    /// `None`: no `[delivery.mail]`, mail stays queued.
    mail: Option<MailOut>,
    fetch: Fetcher,
    hop: Arc<Hop>,
}

impl Egress {
    /// Mail along `mail` (each attempt bounded by its duration; `None`:
    /// mail stays queued), downloads through `fetch`, the hand-off through
    /// `hop`; mail leaves through `connector`.
    pub fn new(
        connector: Arc<dyn Connector>,
        mail: Option<(MailNext, Duration)>,
        fetch: Fetcher,
        hop: Arc<Hop>,
    ) -> Self {
        let mail = mail.map(|(next, timeout)| match next {
            MailNext::Smtp(route) => MailOut::Smtp(MailDelivery::new(connector, route, timeout)),
            MailNext::Mote(peer) => MailOut::Mote(Cascade {
                connector,
                peer,
                timeout,
                isolation: AtomicU64::new(rand::random()),
            }),
        });
        Self { mail, fetch, hop }
    }
}

impl Deliver for Egress {
    async fn deliver(&self, item: &Item) -> Result<Outcome, DeliveryError> {
        match ItemKind::try_from(item.kind) {
            Ok(ItemKind::Fetch) => self.fetch.step(item).await,
            Ok(ItemKind::Mail) => match &self.mail {
                Some(MailOut::Smtp(m)) => m.deliver(item).await,
                Some(MailOut::Mote(c)) => c.deliver(item).await,
                None => Err(DeliveryError::config("no [delivery.mail] configured")),
            },
            Err(kind) => Err(DeliveryError::permanent(format!(
                "an item of unknown kind {kind}"
            ))),
        }
    }

    fn has_successor(&self) -> bool {
        self.hop.successor().is_some()
    }

    async fn hand_off(&self, item: &Item) -> Result<(), DeliveryError> {
        self.hop.hand_off(item).await
    }
}
