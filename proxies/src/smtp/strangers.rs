//! Sessions that have not authenticated yet, and which of them makes room
//! when every slot is taken (see [`Strangers`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// How long a newcomer waits for the slot of a stranger it evicted.
pub(super) const EVICT_WAIT: Duration = Duration::from_secs(2);
/// A session is not evicted before it is this old: long enough for a real
/// client to authenticate, even when strangers arrive in a burst.
const EVICT_MIN_AGE: Duration = Duration::from_secs(2);

/// Sessions that have not authenticated yet, oldest first. When every slot
/// is taken, a newcomer makes one of them close and takes its slot: first
/// one that failed to authenticate (it has shown what it is), else the
/// oldest one that had [`EVICT_MIN_AGE`] to authenticate. Strangers cannot
/// keep a real user out by holding or churning connections, and a real
/// user, who authenticates within moments of connecting, is the last to
/// go.
#[derive(Default)]
pub(super) struct Strangers {
    next: u64,
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
    /// Tell the session that makes room to close; `false` if none may.
    pub(super) fn make_room(&mut self) -> bool {
        match self.victim() {
            Some(v) => {
                v.evict.notify_one();
                true
            }
            None => false,
        }
    }

    /// Take the session that makes room, if any.
    fn victim(&mut self) -> Option<Stranger> {
        let i = match self.oldest_first.iter().position(|s| s.failed) {
            Some(i) => i,
            None => {
                let oldest = self.oldest_first.front()?;
                if oldest.since.elapsed() < EVICT_MIN_AGE {
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
pub(super) struct Ticket {
    id: u64,
    list: Arc<parking_lot::Mutex<Strangers>>,
    pub(super) evict: Arc<Notify>,
}

impl Ticket {
    pub(super) fn new(list: &Arc<parking_lot::Mutex<Strangers>>) -> Self {
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
    pub(super) fn failed(&self) {
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
