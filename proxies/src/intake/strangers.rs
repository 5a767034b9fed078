//! Connections that may be closed to make room when every slot is taken
//! (see [`Strangers`]). The SMTP server and the HTTP API both take their
//! slots through [`slot`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long a newcomer waits for the slot of a connection it evicted.
const EVICT_WAIT: Duration = Duration::from_secs(2);
/// An SMTP session is not evicted before it is this old: long enough for
/// a real client to greet and authenticate (several round trips through
/// Tor), even when strangers arrive in a burst.
pub(crate) const SMTP_MIN_AGE: Duration = Duration::from_secs(2);
/// An idle HTTP connection is not evicted before it has been idle this
/// long: a request comes in one round trip. It is also about how long a
/// newcomer waits when connections churn (each one closed reconnects at
/// once, so all of them are young).
pub(crate) const HTTP_MIN_AGE: Duration = Duration::from_secs(1);

/// Connections that may make room, oldest first: SMTP sessions that have
/// not authenticated, and HTTP connections between requests (an HTTP
/// request is never cut to make room, nor is a response being sent). When
/// every slot is taken, a newcomer makes one of them close and takes its
/// slot: first one that presented a wrong credential (it has shown what it
/// is), else the oldest one that had its minimum age (idle for it, for
/// HTTP). Holding connections open without using them does not keep a
/// real client out; churning them (each one closed comes back at once)
/// delays it by about the minimum age, and a flood of newcomers faster
/// than the slots turn over is refused like anyone else (`421`, `503`).
pub(crate) struct Strangers {
    next: u64,
    /// How old (idle) one must be before it is evicted (unless it failed).
    min_age: Duration,
    oldest_first: std::collections::VecDeque<Stranger>,
}

/// One connection in [`Strangers`].
struct Stranger {
    id: u64,
    /// When it came, or when its last request ended.
    since: tokio::time::Instant,
    /// It presented a wrong credential.
    failed: bool,
    /// A request of it is being served: it is not evicted.
    busy: bool,
    evict: Arc<Notify>,
}

impl Strangers {
    /// None yet; each may be evicted once it is `min_age` old.
    pub(crate) fn new(min_age: Duration) -> Self {
        Self {
            next: 0,
            min_age,
            oldest_first: Default::default(),
        }
    }

    /// Tell the connection that makes room to close. `Err(wait)`: none may
    /// yet, the oldest idle one may after `wait` (`None`: none is idle).
    fn make_room(&mut self) -> Result<(), Option<Duration>> {
        match self.victim() {
            Some(v) => {
                v.evict.notify_one();
                Ok(())
            }
            None => Err(self
                .longest_idle()
                .map(|(_, s)| self.min_age.saturating_sub(s.since.elapsed()))),
        }
    }

    /// Take the connection that makes room, if any.
    fn victim(&mut self) -> Option<Stranger> {
        let i = match self.oldest_first.iter().position(|s| s.failed && !s.busy) {
            Some(i) => i,
            None => {
                let (i, oldest) = self.longest_idle()?;
                if oldest.since.elapsed() < self.min_age {
                    return None;
                }
                i
            }
        };
        self.oldest_first.remove(i)
    }

    /// The one idle longest, and where it is (`since` is reset when a
    /// request ends, so that is not always the first in the list).
    fn longest_idle(&self) -> Option<(usize, &Stranger)> {
        self.oldest_first
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.busy)
            .min_by_key(|(_, s)| s.since)
    }

    fn with(&mut self, id: u64, f: impl FnOnce(&mut Stranger)) {
        if let Some(s) = self.oldest_first.iter_mut().find(|s| s.id == id) {
            f(s);
        }
    }
}

/// A connection's place among the [`Strangers`] while it may make room.
pub(crate) struct Ticket {
    id: u64,
    list: Arc<parking_lot::Mutex<Strangers>>,
    pub(crate) evict: Arc<Notify>,
}

impl Ticket {
    pub(crate) fn new(list: &Arc<parking_lot::Mutex<Strangers>>) -> Self {
        let evict = Arc::new(Notify::new());
        let mut l = list.lock();
        l.next += 1;
        let id = l.next;
        l.oldest_first.push_back(Stranger {
            id,
            since: tokio::time::Instant::now(),
            failed: false,
            busy: false,
            evict: Arc::clone(&evict),
        });
        Self {
            id,
            list: Arc::clone(list),
            evict,
        }
    }

    /// This connection presented a wrong credential: it goes first when
    /// room is needed.
    pub(crate) fn failed(&self) {
        self.list.lock().with(self.id, |s| s.failed = true);
    }

    /// A request of this connection is being served (`true`: it is not
    /// evicted), or has been (`false`: idle from now on).
    pub(crate) fn busy(&self, busy: bool) {
        self.list.lock().with(self.id, |s| {
            s.busy = busy;
            if !busy {
                s.since = tokio::time::Instant::now();
            }
        });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.list.lock().oldest_first.retain(|s| s.id != self.id);
    }
}

/// A slot for a new connection: a free one, or the one of the connection
/// that makes room (it is told to close). `None`: no slot.
///
/// When none may make room yet (every idle one is younger than the
/// minimum age), an SMTP newcomer (`wait_for_age` false) is refused at
/// once: mail clients try again after a `421`. An HTTP newcomer waits until
/// the oldest is old enough, since HTTP clients do not try again: a burst
/// of connections delays it by at most the minimum age. Either way `None`
/// when every slot is held by connections that may not make room
/// (authenticated SMTP sessions, HTTP requests being served).
pub(crate) async fn slot(
    slots: &Arc<Semaphore>,
    strangers: &parking_lot::Mutex<Strangers>,
    wait_for_age: bool,
) -> Option<OwnedSemaphorePermit> {
    let min_age = strangers.lock().min_age;
    let give_up = tokio::time::Instant::now() + min_age + EVICT_WAIT;
    loop {
        if let Ok(p) = Arc::clone(slots).try_acquire_owned() {
            return Some(p);
        }
        let made = strangers.lock().make_room();
        match made {
            Ok(()) => {
                // The evicted one's slot (or another freed meanwhile).
                return tokio::time::timeout(EVICT_WAIT, Arc::clone(slots).acquire_owned())
                    .await
                    .ok()?
                    .ok();
            }
            Err(Some(young)) if wait_for_age => {
                let left = give_up.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return None;
                }
                // Not queued for a slot meanwhile: a slot freed by an
                // eviction goes to the one that evicted.
                tokio::time::sleep(young.min(left).max(Duration::from_millis(1))).await;
            }
            Err(_) => return None,
        }
    }
}
