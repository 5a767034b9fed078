//! One HTTP connection's standing: its slot, and whether it may be closed
//! to make room for a newcomer (see [`strangers`](crate::intake::strangers)).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::intake::strangers::{Strangers, Ticket};

/// One connection's standing, in each of its requests' extensions. Between
/// requests it is among the `Strangers` and may be closed to make room
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

/// A request being served on a [`Conn`] (see [`Conn::serving`]).
pub(super) struct Serving(Arc<Conn>);

impl Conn {
    /// A new connection holding `slot`, among `strangers` until a peer
    /// authenticates on it and it moves to one of `peer_slots`.
    pub(super) fn new(
        slot: OwnedSemaphorePermit,
        peer_slots: Arc<Semaphore>,
        strangers: Arc<parking_lot::Mutex<Strangers>>,
    ) -> Arc<Self> {
        Arc::new(Conn {
            inner: parking_lot::Mutex::new(Standing {
                ticket: Some(Ticket::new(&strangers)),
                _slot: slot,
                peer: false,
                busy: 0,
            }),
            peer_slots,
            strangers,
        })
    }

    /// What tells this connection to make room (none for a peer's: never
    /// told).
    pub(super) fn evict_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.inner
            .lock()
            .ticket
            .as_ref()
            .map(|t| Arc::clone(&t.evict))
    }

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
    pub(super) fn serving(self: &Arc<Self>) -> Serving {
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
    pub(super) fn evict(&self) -> bool {
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
