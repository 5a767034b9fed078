//! Connections that have not authenticated yet, and which of them makes
//! room when every slot is taken (see [`Strangers`]). The SMTP server and
//! the HTTP API both take their slots through [`slot`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long a newcomer waits for the slot of a stranger it evicted.
const EVICT_WAIT: Duration = Duration::from_secs(2);
/// An SMTP session is not evicted before it is this old: long enough for
/// a real client to greet and authenticate (several round trips through
/// Tor), even when strangers arrive in a burst.
pub(crate) const SMTP_MIN_AGE: Duration = Duration::from_secs(2);
/// An HTTP connection is not evicted before it is this old: a request and
/// its credential come in one round trip. It is also about how long a
/// newcomer waits when strangers churn (each one closed reconnects at
/// once, so all of them are young).
pub(crate) const HTTP_MIN_AGE: Duration = Duration::from_secs(1);

/// Sessions that have not authenticated yet, oldest first. When every slot
/// is taken, a newcomer makes one of them close and takes its slot: first
/// one that failed to authenticate (it has shown what it is), else the
/// oldest one that had its minimum age to authenticate. Strangers cannot
/// keep a real user out by holding or churning connections, and a real
/// user, who authenticates within moments of connecting, is the last to
/// go.
pub(crate) struct Strangers {
    next: u64,
    /// How old a stranger must be before it is evicted (unless it failed).
    min_age: Duration,
    oldest_first: std::collections::VecDeque<Stranger>,
}

/// One session in [`Strangers`].
struct Stranger {
    id: u64,
    since: tokio::time::Instant,
    /// It failed to authenticate.
    failed: bool,
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

    /// Tell the session that makes room to close. `Err(wait)`: none may
    /// yet, the oldest one may after `wait` (`None`: there is no stranger).
    fn make_room(&mut self) -> Result<(), Option<Duration>> {
        match self.victim() {
            Some(v) => {
                v.evict.notify_one();
                Ok(())
            }
            None => Err(self
                .oldest_first
                .front()
                .map(|s| self.min_age.saturating_sub(s.since.elapsed()))),
        }
    }

    /// Take the session that makes room, if any.
    fn victim(&mut self) -> Option<Stranger> {
        let i = match self.oldest_first.iter().position(|s| s.failed) {
            Some(i) => i,
            None => {
                let oldest = self.oldest_first.front()?;
                if oldest.since.elapsed() < self.min_age {
                    return None;
                }
                0
            }
        };
        self.oldest_first.remove(i)
    }
}

/// A session's place among the [`Strangers`] until it authenticates or
/// ends.
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
            evict: Arc::clone(&evict),
        });
        Self {
            id,
            list: Arc::clone(list),
            evict,
        }
    }
}

impl Ticket {
    /// This session failed to authenticate: it goes first when room is
    /// needed.
    pub(crate) fn failed(&self) {
        let mut l = self.list.lock();
        if let Some(s) = l.oldest_first.iter_mut().find(|s| s.id == self.id) {
            s.failed = true;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.list.lock().oldest_first.retain(|s| s.id != self.id);
    }
}

/// A slot for a new connection: a free one, or the one of the stranger
/// that makes room (it is told to close). `None`: no slot.
///
/// When every stranger is younger than the minimum age, an SMTP newcomer
/// (`wait_for_age` false) is refused at once: mail clients try again after
/// a `421`. An HTTP newcomer waits until the oldest is old enough, since
/// HTTP clients do not try again: a burst of strangers delays it by at
/// most the minimum age. Either way `None` when every slot is held by an
/// authenticated connection.
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
        let left = give_up.saturating_duration_since(tokio::time::Instant::now());
        match made {
            Ok(()) => {
                let wait = left.min(EVICT_WAIT);
                return tokio::time::timeout(wait, Arc::clone(slots).acquire_owned())
                    .await
                    .ok()?
                    .ok();
            }
            Err(Some(young)) if wait_for_age && !left.is_zero() => {
                // A slot freed meanwhile is taken as well.
                tokio::select! {
                    p = Arc::clone(slots).acquire_owned() => return p.ok(),
                    _ = tokio::time::sleep(young.min(left).max(Duration::from_millis(1))) => {}
                }
            }
            Err(_) => return None,
        }
    }
}
