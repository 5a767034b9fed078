//! Accounts made while the mote runs, so that a mote can be shared: `dustmote
//! invite` makes one (an SMTP password and/or an HTTP bearer token, shown
//! once; only argon2 hashes are kept, sealed in the store), `revoke` ends one
//! at once (its open SMTP sessions are closed), and each has quotas per day
//! and on concurrent sessions. Accounts live beside the configuration's
//! users (whose names they cannot take) and never outlive the mote.
//!
//! Usage is counted before the work it pays for is acknowledged, in the
//! same flush (see `dust_storage::accounts`): after any crash it is never
//! under-counted.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dust_mixer::{from_wall_ms, wall_ms, StorageError, Store};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::access::auth::{new_secret, Verifier};
use crate::access::quota::{day_of, Counter, Counters, Exceeded, Quota};

/// Random letters of a password (131 bits) and of a token (190 bits),
/// after [`crate::access::auth::GENERATED_PREFIX`]: generated secrets, stored as
/// fast digests and verified in microseconds.
const PASSWORD_LEN: usize = crate::access::auth::GENERATED_MIN_LETTERS;
const TOKEN_LEN: usize = crate::access::auth::SECRET_LETTERS;

/// An account as stored (sealed).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Account {
    name: String,
    #[serde(default)]
    smtp_hash: Option<String>,
    #[serde(default)]
    http_hash: Option<String>,
    #[serde(default)]
    quota: Quota,
    created_ms: u64,
    /// When it ends (at the latest the mote's end).
    #[serde(default)]
    expires_ms: Option<u64>,
    /// The x25519 public key (base32) of its card, for the onion
    /// services' client authorization; the private key is on the card.
    #[serde(default)]
    client_key: Option<String>,
    /// It has ended (revoked or expired); its record stays until its
    /// downloads are gone, so that a crash in between finishes its end at
    /// the next start instead of bringing it back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    ended: bool,
}

/// An account as a session or request found it when it authenticated: it
/// stands while the account lives with the same credential (revoke,
/// expiry and a new card end it).
pub struct Holder {
    accounts: Arc<Accounts>,
    name: String,
    credential: String,
    http: bool,
    /// The account's making (the same across new cards; another for the
    /// name invited anew).
    created_ms: u64,
}

impl Holder {
    /// The account's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The account still lives, whatever its credentials are now (a card
    /// gives new ones): the name was not ended and invited anew.
    pub fn same_account(&self) -> bool {
        self.accounts
            .live
            .read()
            .get(&self.name)
            .is_some_and(|a| a.created_ms == self.created_ms)
    }

    /// The account still lives with this credential.
    pub fn stands(&self) -> bool {
        self.accounts.credential(&self.name, self.http).as_ref() == Some(&self.credential)
    }

    /// Completes when the holder no longer [`stands`](Self::stands).
    pub fn ended(&self) -> impl Future<Output = ()> + Send + 'static {
        let (accounts, name, credential, http) = (
            Arc::clone(&self.accounts),
            self.name.clone(),
            self.credential.clone(),
            self.http,
        );
        let mut ended = accounts.ended();
        async move {
            while accounts.credential(&name, http).as_ref() == Some(&credential) {
                if ended.changed().await.is_err() {
                    return futures::future::pending().await;
                }
            }
        }
    }
}

/// What `dustmote invite` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Invite {
    /// The account's name (letters, digits, `.`, `_`, `-`; at most 64).
    pub name: String,
    /// Its limits.
    #[serde(default)]
    pub quota: Quota,
    /// How long it lasts (at most until the mote ends; default: that).
    #[serde(with = "humantime_serde_opt")]
    pub expires_in: Option<Duration>,
    /// An SMTP password.
    pub smtp: bool,
    /// An HTTP bearer token.
    pub http: bool,
}

/// Credentials, shown once (`dustmote invite`, `dustmote card`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    /// The account's name (the SMTP user name; the token is `NAME:TOKEN`).
    pub name: String,
    /// Its SMTP password.
    pub smtp_password: Option<String>,
    /// Its HTTP bearer token (the part after `NAME:`).
    pub http_token: Option<String>,
    /// When it ends (RFC 3339), if ever.
    pub expires_at: Option<String>,
    /// The card's x25519 private key (base32) for the onion services'
    /// client authorization, if one was made.
    #[serde(default)]
    pub client_auth_key: Option<String>,
}

/// One line of `dustmote accounts` (never a secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountView {
    /// The name.
    pub name: String,
    /// Whether it has an SMTP password.
    pub smtp: bool,
    /// Whether it has an HTTP token.
    pub http: bool,
    /// Its limits.
    pub quota: Quota,
    /// Used today (UTC): mail messages, mail bytes, downloads, download bytes.
    pub today: Counters,
    /// SMTP sessions open now.
    pub sessions: u32,
    /// When it ends (RFC 3339), if ever.
    pub expires_at: Option<String>,
}

/// Why an account operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The name is taken (by an account or a configured user).
    #[error("{0:?} is taken (an account or a user of the configuration)")]
    Taken(String),
    /// No such account.
    #[error("no account {0:?}")]
    Unknown(String),
    /// The name has characters a name cannot have.
    #[error("an account name is 1 to 64 letters, digits, '.', '_' or '-'")]
    BadName,
    /// Neither SMTP nor HTTP.
    #[error("an account needs SMTP or HTTP access")]
    Nothing,
    /// The mote is over (or ends before the account would start).
    #[error("the mote has ended")]
    MoteOver,
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Usage added for one admission; [`refund`](Accounts::refund) it if the
/// admission fails.
#[derive(Debug)]
pub struct Charged {
    name: String,
    day: u32,
    delta: Counters,
}

/// A session of an account (dropped: the session ended).
pub struct SessionSlot {
    accounts: Arc<Accounts>,
    name: String,
    http: bool,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut open = self.accounts.open.lock();
        let key = (self.name.clone(), self.http);
        if let Some(n) = open.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&key);
            }
        }
    }
}

/// The accounts of a running mote.
pub struct Accounts {
    store: Arc<Store>,
    smtp: Arc<Verifier>,
    http: Arc<Verifier>,
    live: RwLock<HashMap<String, Account>>,
    /// Names of the configuration's users (SMTP and HTTP).
    configured: HashSet<String>,
    /// When the mote ends (ms since the epoch).
    mote_ends_ms: Option<u64>,
    /// Open sessions per (name, HTTP?).
    open: Mutex<HashMap<(String, bool), u32>>,
    /// Bumped whenever an account ends: sessions check whether theirs did.
    ended: watch::Sender<u64>,
    /// Accounts found ended at open whose downloads and record are still
    /// to go ([`finish_ending`](Self::finish_ending)).
    ending: Mutex<Vec<String>>,
    /// Serializes invite, reissue, revoke and the ends of accounts.
    changing: tokio::sync::Mutex<()>,
    /// Notified when an account is made (its end may be the next).
    invited: tokio::sync::Notify,
    /// The cards' client-authorization keys (public), whenever they change.
    clients: watch::Sender<Vec<String>>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").finish_non_exhaustive()
    }
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(from_wall_ms(ms)).to_string()
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Accounts {
    /// The accounts in `store` (expired ones are removed), added to the
    /// SMTP and HTTP verifiers. `configured`: the configuration's user
    /// names; `mote_ends`: the end of the mote's life, if it has one.
    pub fn open(
        store: Arc<Store>,
        smtp: Arc<Verifier>,
        http: Arc<Verifier>,
        configured: impl IntoIterator<Item = String>,
        mote_ends: Option<SystemTime>,
    ) -> Result<Arc<Self>, AccountError> {
        let now = wall_ms(SystemTime::now());
        let mut live = HashMap::new();
        let mut ending = Vec::new();
        for record in store.accounts()? {
            let a: Account =
                serde_json::from_slice(&record).map_err(|e| StorageError::Corrupt {
                    doing: "reading an account",
                    what: e.to_string(),
                })?;
            // Ended, or over while the mote was down: it does not work, and
            // `finish_ending` removes its downloads and then its record.
            if a.ended || a.expires_ms.is_some_and(|e| e <= now) {
                ending.push(a.name);
                continue;
            }
            live.insert(a.name.clone(), a);
        }
        // A user of the configuration keeps its name: an account stored
        // under it (the configuration gained that user since) is not
        // used. The name is user data: only at debug.
        let configured: HashSet<String> = configured.into_iter().collect();
        live.retain(|name, _| {
            let collides = configured.contains(name);
            if collides {
                tracing::debug!(name, "a stored account collides with a configured user");
                tracing::warn!(
                    "a stored account has the name of a user in the configuration: the \
                     configured user keeps it and the account is not used (`dustmote accounts` \
                     lists it no more; `dustmote revoke NAME` would not reach it: remove the \
                     configured user to get the account back)"
                );
            }
            !collides
        });
        let accounts = Arc::new(Self {
            store,
            smtp,
            http,
            live: RwLock::new(HashMap::new()),
            configured,
            mote_ends_ms: mote_ends.map(wall_ms),
            open: Mutex::new(HashMap::new()),
            ended: watch::Sender::new(0),
            ending: Mutex::new(ending),
            changing: tokio::sync::Mutex::new(()),
            invited: tokio::sync::Notify::new(),
            clients: watch::Sender::new(Vec::new()),
        });
        for a in live.into_values() {
            accounts.enter(a);
        }
        Ok(accounts)
    }

    /// Put `a` into the verifiers and the live set.
    fn enter(&self, a: Account) {
        let set = |v: &Verifier, h: &Option<String>| match h {
            Some(h) => {
                // (The error names the account: not logged at warn.)
                if let Err(e) = v.set(&a.name, h.clone()) {
                    tracing::debug!(error = %e, "an account's stored hash does not parse");
                    tracing::warn!("an account's stored hash does not parse; it cannot log in");
                }
            }
            None => {
                v.remove(&a.name);
            }
        };
        set(&self.smtp, &a.smtp_hash);
        set(&self.http, &a.http_hash);
        self.live.write().insert(a.name.clone(), a);
        self.clients_changed();
    }

    /// Tell the onion services the current set of card keys.
    fn clients_changed(&self) {
        let mut keys: Vec<String> = self
            .live
            .read()
            .values()
            .filter_map(|a| a.client_key.clone())
            .collect();
        keys.sort();
        self.clients.send_if_modified(|old| {
            let changed = *old != keys;
            *old = keys;
            changed
        });
    }

    /// The cards' client-authorization keys (x25519 public, base32), now
    /// and whenever they change.
    pub fn client_keys(&self) -> watch::Receiver<Vec<String>> {
        self.clients.subscribe()
    }

    /// Make an account; its credentials, shown once.
    pub async fn invite(&self, invite: Invite) -> Result<Credentials, AccountError> {
        if !valid_name(&invite.name) {
            return Err(AccountError::BadName);
        }
        if !invite.smtp && !invite.http {
            return Err(AccountError::Nothing);
        }
        let _changing = self.changing.lock().await;
        if self.configured.contains(&invite.name) || self.live.read().contains_key(&invite.name) {
            return Err(AccountError::Taken(invite.name));
        }
        // A name invited anew finds nothing of a former holder (one whose
        // end did not finish: a failure, or a crash before the start that
        // would have finished it).
        self.drop_jobs(|user| user == invite.name).await?;
        self.ending.lock().retain(|n| *n != invite.name);
        let now = wall_ms(SystemTime::now());
        let asked = invite
            .expires_in
            .map(|d| now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
        let expires_ms = match (asked, self.mote_ends_ms) {
            (Some(a), Some(m)) => Some(a.min(m)),
            (a, m) => a.or(m),
        };
        if expires_ms.is_some_and(|e| e <= now) {
            return Err(AccountError::MoteOver);
        }
        let mut a = Account {
            name: invite.name,
            smtp_hash: None,
            http_hash: None,
            quota: invite.quota,
            created_ms: now,
            expires_ms,
            client_key: None,
            ended: false,
        };
        // No card key yet: a card (`reissue`) makes one.
        let creds = self.issue(&mut a, invite.smtp, invite.http, false).await?;
        self.invited.notify_one();
        Ok(creds)
    }

    /// New credentials for `a` (those asked for), stored durably and put
    /// into force before they are returned.
    async fn issue(
        &self,
        a: &mut Account,
        smtp: bool,
        http: bool,
        card: bool,
    ) -> Result<Credentials, AccountError> {
        let password = smtp.then(|| new_secret(PASSWORD_LEN));
        let token = http.then(|| new_secret(TOKEN_LEN));
        let (client_private, client_public) = match card {
            true => {
                let (private, public) = crate::onion::client_auth_keys();
                (Some(private), Some(public))
            }
            false => (None, None),
        };
        a.client_key = client_public;
        a.smtp_hash = password.as_ref().map(|p| p.hash.clone());
        a.http_hash = token.as_ref().map(|t| t.hash.clone());
        let record = serde_json::to_vec(&*a).map_err(|e| StorageError::Corrupt {
            doing: "writing an account",
            what: e.to_string(),
        })?;
        self.store.put_account(&a.name, &record)?;
        self.store.sync().await?;
        self.enter(a.clone());
        Ok(Credentials {
            name: a.name.clone(),
            smtp_password: password.map(|p| p.secret),
            http_token: token.map(|t| t.secret),
            expires_at: a.expires_ms.map(rfc3339),
            client_auth_key: client_private,
        })
    }

    /// New credentials for account `name` (the ones it has) and a new
    /// card key; the old ones stop working at once. For an access card.
    pub async fn reissue(&self, name: &str) -> Result<Credentials, AccountError> {
        let _changing = self.changing.lock().await;
        let mut a = self
            .live
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| AccountError::Unknown(name.to_string()))?;
        let (smtp, http) = (a.smtp_hash.is_some(), a.http_hash.is_some());
        let issued = self.issue(&mut a, smtp, http, true).await?;
        // Sessions opened with the old credentials end with them.
        self.ended.send_modify(|n| *n += 1);
        Ok(issued)
    }

    /// End account `name` at once: its credentials stop working and its
    /// open SMTP sessions are closed.
    pub async fn revoke(&self, name: &str) -> Result<(), AccountError> {
        let _changing = self.changing.lock().await;
        if !self.live.read().contains_key(name) {
            return Err(AccountError::Unknown(name.to_string()));
        }
        self.end(name).await
    }

    async fn end(&self, name: &str) -> Result<(), AccountError> {
        // Out of force first: whatever the store does next, the account
        // no longer works, and its sessions and content streams end.
        let gone = self.live.write().remove(name);
        self.smtp.remove(name);
        self.http.remove(name);
        self.ended.send_modify(|n| *n += 1);
        self.clients_changed();
        // Then, durably, marked as ended: a crash or a failure from here on
        // does not bring it back; the next start finishes its end.
        if let Some(mut a) = gone {
            a.ended = true;
            let record = serde_json::to_vec(&a).map_err(|e| StorageError::Corrupt {
                doing: "writing an account",
                what: e.to_string(),
            })?;
            self.store.put_account(name, &record)?;
            self.store.sync().await?;
        }
        self.finish(name).await
    }

    /// The rest of an account's end: its downloads (records, content, and
    /// so their fetch items) and then its record.
    async fn finish(&self, name: &str) -> Result<(), AccountError> {
        self.drop_jobs(|user| user == name).await?;
        self.store.remove_account(name)?;
        self.store.sync().await?;
        Ok(())
    }

    /// Delete every download job whose user `ends` says has ended (a job
    /// being fetched stores nothing more: the fetcher checks the record
    /// after each request). How many were deleted.
    async fn drop_jobs(&self, ends: impl Fn(&str) -> bool) -> Result<usize, StorageError> {
        let mut gone = Vec::new();
        for job in crate::item::job::records(&self.store) {
            let (id, job) = job?;
            if job.is_some_and(|j| ends(&j.user)) {
                gone.push(id);
            }
        }
        for id in &gone {
            self.store.delete_job(id).await?;
        }
        Ok(gone.len())
    }

    /// Finish the ends of the accounts found ended at open (revoked before
    /// a crash, or over while the mote was down): their downloads, then
    /// their records. Once at start. How many.
    pub async fn finish_ending(&self) -> Result<usize, AccountError> {
        let _changing = self.changing.lock().await;
        let names = std::mem::take(&mut *self.ending.lock());
        for name in &names {
            self.finish(name).await?;
        }
        Ok(names.len())
    }

    /// Account `name` as a request or session finds it now (`http`: its
    /// download token, else its SMTP password); `None` for a configured
    /// user or a name that is no account. Take it before checking the
    /// credential: if a card replaces it meanwhile, the holder has ended.
    pub fn holder(self: &Arc<Self>, name: &str, http: bool) -> Option<Holder> {
        let credential = self.credential(name, http)?;
        let created_ms = self.live.read().get(name)?.created_ms;
        Some(Holder {
            accounts: Arc::clone(self),
            name: name.to_string(),
            credential,
            http,
            created_ms,
        })
    }

    fn credential(&self, name: &str, http: bool) -> Option<String> {
        let live = self.live.read();
        let a = live.get(name)?;
        if http {
            a.http_hash.clone()
        } else {
            a.smtp_hash.clone()
        }
    }

    /// End the accounts whose time is over; when the next one ends.
    pub async fn end_expired(&self) -> Option<SystemTime> {
        let now = wall_ms(SystemTime::now());
        let over: Vec<String> = self
            .live
            .read()
            .values()
            .filter(|a| a.expires_ms.is_some_and(|e| e <= now))
            .map(|a| a.name.clone())
            .collect();
        for name in over {
            let _changing = self.changing.lock().await;
            if let Err(e) = self.end(&name).await {
                tracing::warn!(error = %e, "could not remove an expired account");
            }
        }
        self.live
            .read()
            .values()
            .filter_map(|a| a.expires_ms)
            .min()
            .map(from_wall_ms)
    }

    /// Completes when an account is made (for the task that ends them).
    pub async fn invited(&self) {
        self.invited.notified().await;
    }

    /// Every account, with today's usage.
    pub fn list(&self) -> Result<Vec<AccountView>, AccountError> {
        let day = day_of(wall_ms(SystemTime::now()));
        let live = self.live.read();
        let open = self.open.lock();
        let mut out = live
            .values()
            .map(|a| {
                Ok(AccountView {
                    name: a.name.clone(),
                    smtp: a.smtp_hash.is_some(),
                    http: a.http_hash.is_some(),
                    quota: a.quota.clone(),
                    today: self.store.usage(&a.name, day)?.into(),
                    sessions: open.get(&(a.name.clone(), false)).copied().unwrap_or(0),
                    expires_at: a.expires_ms.map(rfc3339),
                })
            })
            .collect::<Result<Vec<_>, AccountError>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// How many accounts there are, and how many of them have a card key.
    pub fn counts(&self) -> (usize, usize) {
        let live = self.live.read();
        let cards = live.values().filter(|a| a.client_key.is_some()).count();
        (live.len(), cards)
    }

    /// Changes whenever an account ends or gets new credentials (see
    /// [`Holder::ended`]).
    fn ended(&self) -> watch::Receiver<u64> {
        self.ended.subscribe()
    }

    /// A session slot for `name` (`http`: an HTTP request, else an SMTP
    /// session): `Ok(None)` for a configured user (no limit), `Err(())`
    /// when the account has as many open as its quota allows.
    #[allow(clippy::result_unit_err)]
    pub fn open_session(
        self: &Arc<Self>,
        name: &str,
        http: bool,
    ) -> Result<Option<SessionSlot>, ()> {
        let Some(limit) = self.live.read().get(name).map(|a| a.quota.sessions()) else {
            return Ok(None);
        };
        let mut open = self.open.lock();
        let n = open.entry((name.to_string(), http)).or_insert(0);
        if *n >= limit {
            return Err(());
        }
        *n += 1;
        Ok(Some(SessionSlot {
            accounts: Arc::clone(self),
            name: name.to_string(),
            http,
        }))
    }

    /// Count `delta` against `name`'s quotas for today before the work is
    /// acknowledged (it becomes durable with the work's own flush).
    /// `Ok(Ok(None))` for a configured user; `Ok(Err(_))` when a quota
    /// would be passed (nothing counted).
    pub fn charge(
        &self,
        name: &str,
        delta: Counters,
    ) -> Result<Result<Option<Charged>, Exceeded>, StorageError> {
        let Some(limits) = self.live.read().get(name).map(|a| a.quota.limits()) else {
            return Ok(Ok(None));
        };
        let now = wall_ms(SystemTime::now());
        let day = day_of(now);
        match self
            .store
            .add_usage(name, day, delta.into(), limits.into())?
        {
            Ok(_) => Ok(Ok(Some(Charged {
                name: name.to_string(),
                day,
                delta,
            }))),
            Err(used) => {
                let which = delta.passed(&used.into(), &limits).unwrap_or(Counter::Mail);
                Ok(Err(self.exceeded(which)))
            }
        }
    }

    /// Take back a charge whose work was refused (not synced: a crash
    /// keeps the charge, an over-count).
    pub fn refund(&self, charged: Option<Charged>) {
        if let Some(c) = charged {
            if let Err(e) = self.store.refund_usage(&c.name, c.day, c.delta.into()) {
                tracing::warn!(error = %e, "could not refund usage");
            }
        }
    }

    /// Count `delta` for `name` today whatever the limits (bytes already
    /// stored that a reservation did not cover).
    pub fn charge_over(&self, name: &str, delta: Counters) -> Result<(), StorageError> {
        if self.live.read().contains_key(name) {
            let day = day_of(wall_ms(SystemTime::now()));
            self.store
                .add_usage(name, day, delta.into(), Counters::UNLIMITED.into())?
                .ok();
        }
        Ok(())
    }

    /// Give back `part` of a charge (a reservation not used in full).
    pub fn refund_part(&self, charged: Option<Charged>, part: Counters) {
        self.refund(charged.map(|c| Charged { delta: part, ..c }));
    }

    /// `which` is used up until the next UTC day.
    pub fn exceeded(&self, which: Counter) -> Exceeded {
        Exceeded::today(which, wall_ms(SystemTime::now()))
    }

    /// `name`'s daily limit of `which` (`u64::MAX`: none, or no account).
    pub fn limit(&self, name: &str, which: Counter) -> u64 {
        self.live
            .read()
            .get(name)
            .map_or(u64::MAX, |a| a.quota.limits().get(which))
    }

    /// Remaining room of `which` for `name` today (`u64::MAX`: no limit or
    /// no account).
    pub fn room(&self, name: &str, which: Counter) -> Result<u64, StorageError> {
        let Some(limits) = self.live.read().get(name).map(|a| a.quota.limits()) else {
            return Ok(u64::MAX);
        };
        if limits.get(which) == u64::MAX {
            return Ok(u64::MAX);
        }
        let used = self.store.usage(name, day_of(wall_ms(SystemTime::now())))?;
        Ok(limits
            .get(which)
            .saturating_sub(Counters::from(used).get(which)))
    }
}

/// `Option<Duration>` as a humantime string (`"12h"`) in JSON.
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One message of `bytes`.
    fn mail(bytes: u64) -> Counters {
        Counters {
            mail: 1,
            mail_bytes: bytes,
            ..Counters::default()
        }
    }
    use crate::access::auth::{Users, Verdict};

    fn accounts(store: Arc<Store>) -> (Arc<Accounts>, Arc<Verifier>, Arc<Verifier>) {
        let smtp = Arc::new(Verifier::new(Users::default()));
        let http = Arc::new(Verifier::new(Users::default()));
        let a = Accounts::open(
            store,
            Arc::clone(&smtp),
            Arc::clone(&http),
            ["owner".to_string()],
            None,
        )
        .expect("open");
        (a, smtp, http)
    }

    /// A revoke takes the account's downloads and nobody else's; an
    /// account whose end did not finish (marked ended, then a crash) does
    /// not come back at the next open, and its end is finished at start; a
    /// name invited anew finds no download of a former holder.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ended_accounts_leave_no_downloads() {
        let store = Store::temporary().expect("store");
        let (a, _, http) = accounts(Arc::clone(&store));
        let http_invite = |name: &str| Invite {
            name: name.into(),
            http: true,
            ..Invite::default()
        };
        a.invite(http_invite("bea")).await.expect("invite");
        a.invite(http_invite("cy")).await.expect("invite");
        let job = |user: &str| {
            let id = dust_mixer::ItemId(rand::random());
            let job = crate::item::job::Job::new(
                "https://origin.invalid/f".into(),
                user.into(),
                SystemTime::now(),
                None,
                None,
            );
            store.put_job(&id, &job.encode()).expect("job");
            id
        };
        let here = |id| store.job(&id).expect("read").is_some();
        let (owner, bea, cover, other) = (job("owner"), job("bea"), job(""), job("renamed"));
        a.revoke("bea").await.expect("revoke");
        assert!(here(owner) && !here(bea) && here(cover) && here(other));
        // cy's end is cut short after its mark (as by a crash).
        let cy = job("cy");
        let mut record: Account =
            serde_json::from_slice(&store.accounts().expect("list")[0]).expect("cy");
        assert_eq!(record.name, "cy");
        record.ended = true;
        store
            .put_account("cy", &serde_json::to_vec(&record).expect("json"))
            .expect("mark");
        let (b, _, http_b) = accounts(Arc::clone(&store));
        assert!(b.holder("cy", true).is_none(), "not back");
        assert!(b.list().expect("list").is_empty());
        assert_eq!(b.finish_ending().await.expect("finish"), 1);
        assert!(!here(cy) && here(owner) && here(other));
        assert!(store.accounts().expect("list").is_empty());
        // A name invited anew, after an end that left a download behind.
        let stale = job("cy");
        b.invite(http_invite("cy")).await.expect("invite again");
        assert!(!here(stale));
        drop((http, http_b));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invite_verify_reissue_revoke_and_reopen() {
        let store = Store::temporary().expect("store");
        let (a, smtp, http) = accounts(Arc::clone(&store));
        let invite = |name: &str| Invite {
            name: name.into(),
            smtp: true,
            http: true,
            ..Invite::default()
        };
        assert!(matches!(
            a.invite(invite("owner")).await,
            Err(AccountError::Taken(_))
        ));
        assert!(matches!(
            a.invite(invite("a:b")).await,
            Err(AccountError::BadName)
        ));
        let c = a.invite(invite("bea")).await.expect("invite");
        let (pw, tok) = (c.smtp_password.expect("pw"), c.http_token.expect("token"));
        let prefix = crate::access::auth::GENERATED_PREFIX.len();
        assert_eq!(
            (pw.len(), tok.len()),
            (prefix + PASSWORD_LEN, prefix + TOKEN_LEN)
        );
        // Generated secrets, stored as fast digests (the kind is in the hash).
        let stored = a
            .live
            .read()
            .get("bea")
            .map(|b| (b.smtp_hash.clone(), b.http_hash.clone()));
        let Some((Some(sh), Some(hh))) = stored else {
            panic!("bea's hashes: {stored:?}")
        };
        assert!(
            sh.starts_with("$dust-secret$") && hh.starts_with("$dust-secret$"),
            "{sh} {hh}"
        );
        assert_eq!(smtp.verify("bea", pw.as_bytes()).await, Verdict::Ok);
        assert_eq!(http.verify("bea", tok.as_bytes()).await, Verdict::Ok);
        assert_eq!(smtp.verify("bea", tok.as_bytes()).await, Verdict::Wrong);
        // A new card: the old password stops working at once.
        let c2 = a.reissue("bea").await.expect("reissue");
        assert_eq!(smtp.verify("bea", pw.as_bytes()).await, Verdict::Wrong);
        let pw2 = c2.smtp_password.expect("pw");
        assert_eq!(smtp.verify("bea", pw2.as_bytes()).await, Verdict::Ok);
        // Stored: a second mote process over the same store knows it.
        let (b, smtp_b, _) = accounts(Arc::clone(&store));
        assert_eq!(smtp_b.verify("bea", pw2.as_bytes()).await, Verdict::Ok);
        assert!(b.holder("bea", false).is_some_and(|h| h.stands()));
        let ended = a.ended();
        a.revoke("bea").await.expect("revoke");
        assert!(ended.has_changed().expect("watch"));
        assert_eq!(smtp.verify("bea", pw2.as_bytes()).await, Verdict::Wrong);
        assert!(matches!(
            a.revoke("bea").await,
            Err(AccountError::Unknown(_))
        ));
        assert!(store.accounts().expect("list").is_empty());
    }

    #[tokio::test]
    async fn quotas_and_sessions_are_counted() {
        let store = Store::temporary().expect("store");
        let (a, _, _) = accounts(store);
        a.invite(Invite {
            name: "q".into(),
            quota: Quota {
                mail: Some(2),
                mail_bytes: Some(1000),
                sessions: Some(1),
                ..Quota::default()
            },
            smtp: true,
            ..Invite::default()
        })
        .await
        .expect("invite");
        let one = a.charge("q", mail(400)).expect("store").expect("room");
        assert!(one.is_some());
        let too_big = a.charge("q", mail(700)).expect("store").expect_err("bytes");
        assert_eq!(too_big.which, Counter::MailBytes);
        assert!(too_big.retry_after_secs() <= 86_400);
        a.charge("q", mail(500)).expect("store").expect("room");
        assert_eq!(
            a.charge("q", mail(1))
                .expect("store")
                .expect_err("count")
                .which,
            Counter::Mail
        );
        a.refund(one);
        a.charge("q", mail(1))
            .expect("store")
            .expect("refunded room");
        assert_eq!(a.room("q", Counter::MailBytes).expect("room"), 499);
        // A configured user has no quota.
        assert!(a
            .charge("owner", mail(1 << 40))
            .expect("store")
            .expect("none")
            .is_none());
        let s = a
            .open_session("q", false)
            .expect("first")
            .expect("an account");
        assert!(a.open_session("q", false).is_err());
        assert!(a.open_session("q", true).expect("http apart").is_some());
        drop(s);
        assert!(a.open_session("q", false).is_ok());
        assert_eq!(
            a.list().expect("list")[0].today,
            Counters {
                mail: 2,
                mail_bytes: 501,
                ..Counters::default()
            }
        );
    }
}
