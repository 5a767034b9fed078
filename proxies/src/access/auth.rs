//! Users, their stored credentials, and a [`Verifier`] that bounds the
//! work anyone can cause before authenticating.
//!
//! Two kinds of credentials, told apart by the secret itself:
//! - **Generated secrets** ([`new_secret`]: invitations, cards,
//!   `cloud-init --user NAME`, `dustmote secret` for peer tokens) start with
//!   [`GENERATED_PREFIX`] and carry at least 128 random bits. They are stored
//!   as a fast salted digest ([`GENERATED_ID`]) and verified inline in
//!   about a microsecond: no queue, no throttle; guessing them is hopeless at
//!   any rate, so nothing about them needs slowing down.
//! - **Human-chosen passwords** (`dustmote passwd`, any other hash) keep
//!   argon2 behind the bounded, throttled verifier below.
//!
//! Which path runs depends only on what the client presents (whether it has
//! the shape of a generated secret), never on whether the name exists or
//! which kind it holds, so neither timing nor throttling tells an attacker
//! anything about a name; on each path an unknown name is checked against
//! a decoy of that path's kind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::Rng;

/// A password hash in PHC string format (`$argon2id$v=19$...`).
#[derive(Debug, thiserror::Error)]
#[error("invalid password hash for user {user:?}: {reason}")]
pub struct BadHash {
    /// The user whose hash is malformed.
    pub user: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Every generated secret starts with this; `.` is in neither the letters
/// of [`new_secret`] nor URL-safe base64, so no earlier generated password
/// or token has it, and `dustmote passwd` refuses passwords that do.
pub const GENERATED_PREFIX: &str = "dust.";
/// Random letters after the prefix at the least: 22 of 62 letters carry
/// 131 bits (at least 128, what makes a fast digest as safe as argon2).
pub const GENERATED_MIN_LETTERS: usize = 22;
/// Random letters of a generated token or of a password nobody types
/// (190 bits).
pub const SECRET_LETTERS: usize = 32;
/// Letters of generated secrets (62: 5.95 bits each; no look-alikes are
/// left out, they are pasted, not typed).
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// The PHC identifier of a generated secret's stored digest:
/// `$dust-secret$v=1$SALT$DIGEST`, the digest BLAKE2b-256 of the secret in
/// keyed mode (key: the 16-byte random salt, personalisation
/// [`GENERATED_PERSONA`]). Python makes the same with
/// `hashlib.blake2b(secret, key=salt, person=b"dustmote-secret1", digest_size=32)`.
pub const GENERATED_ID: &str = "dust-secret";
/// BLAKE2b personalisation of [`GENERATED_ID`] digests (domain separation).
const GENERATED_PERSONA: &[u8; 16] = b"dustmote-secret1";

/// A generated secret and its stored hash.
#[derive(Debug, Clone)]
pub struct Secret {
    /// [`GENERATED_PREFIX`] and `letters` random letters from the OS CSPRNG;
    /// shown once, never stored.
    pub secret: String,
    /// Its [`GENERATED_ID`] hash, for configuration and account records.
    pub hash: String,
}

/// A new generated secret of `letters` random letters (at least
/// [`GENERATED_MIN_LETTERS`]) and its hash.
pub fn new_secret(letters: usize) -> Secret {
    let mut rng = rand::rng();
    let letters = letters.max(GENERATED_MIN_LETTERS);
    let mut secret = String::with_capacity(GENERATED_PREFIX.len() + letters);
    secret.push_str(GENERATED_PREFIX);
    secret.extend((0..letters).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char));
    let hash = Generated::new(secret.as_bytes(), rng.random()).to_phc();
    Secret { secret, hash }
}

/// Whether `secret` has the shape of a generated secret (and so is checked
/// on the fast path only).
pub fn is_generated(secret: &[u8]) -> bool {
    secret
        .strip_prefix(GENERATED_PREFIX.as_bytes())
        .is_some_and(|rest| {
            rest.len() >= GENERATED_MIN_LETTERS && rest.iter().all(|b| b.is_ascii_alphanumeric())
        })
}

/// A generated secret's stored digest.
#[derive(Clone, PartialEq, Eq)]
struct Generated {
    salt: [u8; 16],
    digest: [u8; 32],
}

impl Generated {
    fn new(secret: &[u8], salt: [u8; 16]) -> Self {
        Self {
            salt,
            digest: generated_digest(&salt, secret),
        }
    }

    fn to_phc(&self) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        format!(
            "${GENERATED_ID}$v=1${}${}",
            b64.encode(self.salt),
            b64.encode(self.digest)
        )
    }

    /// Parse a `$dust-secret$v=1$…` string.
    fn parse(h: &PasswordHash<'_>) -> Result<Self, String> {
        if h.version != Some(1) || h.params.iter().next().is_some() {
            return Err(format!("{GENERATED_ID}: only v=1 without parameters"));
        }
        let (Some(salt), Some(digest)) = (h.salt, h.hash) else {
            return Err(format!("{GENERATED_ID}: salt and digest are needed"));
        };
        let mut buf = [0u8; 16];
        let salt = salt.decode_b64(&mut buf).map_err(|e| e.to_string())?;
        let (Ok(salt), Ok(digest)) = (
            <[u8; 16]>::try_from(salt),
            <[u8; 32]>::try_from(digest.as_bytes()),
        ) else {
            return Err(format!(
                "{GENERATED_ID}: a 16-byte salt and a 32-byte digest"
            ));
        };
        Ok(Self { salt, digest })
    }

    /// Whether `secret` is the one digested, in constant time.
    fn matches(&self, secret: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        generated_digest(&self.salt, secret)
            .ct_eq(&self.digest)
            .into()
    }
}

fn generated_digest(salt: &[u8; 16], secret: &[u8]) -> [u8; 32] {
    use blake2::digest::consts::U32;
    use blake2::digest::Mac;
    let Ok(mac) =
        blake2::Blake2bMac::<U32>::new_with_salt_and_personal(salt, &[], GENERATED_PERSONA)
    else {
        // A 16-byte key and persona are always accepted.
        return [0; 32];
    };
    mac.chain_update(secret).finalize().into_bytes().into()
}

/// A stored credential, parsed.
#[derive(Clone, PartialEq, Eq)]
enum Stored {
    /// An argon2 PHC string (checked by [`check`] on a verification thread).
    Slow(String),
    /// A generated secret's digest (checked inline).
    Fast(Generated),
}

impl Stored {
    fn parse(user: &str, hash: &str) -> Result<Self, BadHash> {
        let bad = |reason: String| BadHash {
            user: user.to_string(),
            reason,
        };
        let h = PasswordHash::new(hash).map_err(|e| bad(e.to_string()))?;
        if h.algorithm.as_str() == GENERATED_ID {
            return Generated::parse(&h).map(Stored::Fast).map_err(bad);
        }
        Ok(Stored::Slow(hash.to_string()))
    }
}

/// Hash `password` with argon2id (the crate's default parameters) and a
/// random salt from the OS CSPRNG.
pub fn hash_password(password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    let salt_bytes: [u8; 16] = rand::rng().random();
    let salt = SaltString::encode_b64(&salt_bytes)?;
    Ok(Argon2::default()
        .hash_password(password, &salt)?
        .to_string())
}

/// The configured users. Verification of a human password is deliberately
/// slow (argon2): call [`verify`](Self::verify) on a blocking thread.
#[derive(Clone)]
pub struct Users {
    by_name: HashMap<String, Stored>,
    /// A valid argon2 hash to verify against when the user does not exist
    /// (or holds a generated secret), so that a wrong user name costs as
    /// much time as a wrong password.
    decoy: Option<String>,
    /// What a generated secret is checked against for such names: random,
    /// never matches (2^-256), costs what a real digest costs.
    fast_decoy: Generated,
}

impl Default for Users {
    fn default() -> Self {
        let mut rng = rand::rng();
        Self {
            by_name: HashMap::new(),
            decoy: None,
            fast_decoy: Generated {
                salt: rng.random(),
                digest: rng.random(),
            },
        }
    }
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("count", &self.by_name.len())
            .finish_non_exhaustive()
    }
}

impl Users {
    /// Build from (name, PHC hash) pairs; every hash is checked to parse.
    pub fn new(users: impl IntoIterator<Item = (String, String)>) -> Result<Self, BadHash> {
        let mut out = Self::default();
        for (user, hash) in users {
            out.set(&user, hash)?;
        }
        Ok(out)
    }

    /// Add `name` or replace its hash (checked to parse).
    pub fn set(&mut self, name: &str, hash: String) -> Result<(), BadHash> {
        let stored = Stored::parse(name, &hash)?;
        if let Stored::Slow(h) = &stored {
            self.decoy.get_or_insert_with(|| h.clone());
        }
        self.by_name.insert(name.to_string(), stored);
        Ok(())
    }

    /// Remove `name`; whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        self.by_name.remove(name).is_some()
    }

    /// `name`'s argon2 hash, or the decoy (`false`: `name` is no user or
    /// holds a generated secret), or `None` when there is no argon2 hash
    /// at all.
    fn hash_for(&self, name: &str) -> Option<(String, bool)> {
        match self.by_name.get(name) {
            Some(Stored::Slow(h)) => Some((h.clone(), true)),
            _ => self.decoy.clone().map(|h| (h, false)),
        }
    }

    /// Check a generated secret for `name`: one keyed digest and a
    /// constant-time compare, the same work for an unknown name or one
    /// with a human password (against a decoy). Microseconds.
    fn check_generated(&self, name: &str, secret: &[u8]) -> bool {
        match self.by_name.get(name) {
            Some(Stored::Fast(g)) => g.matches(secret),
            _ => {
                let _ = self.fast_decoy.matches(secret);
                false
            }
        }
    }

    /// No users configured.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The users' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The only user, if there is exactly one.
    pub fn only(&self) -> Option<&str> {
        let mut names = self.by_name.keys();
        match (names.next(), names.next()) {
            (Some(n), None) => Some(n),
            _ => None,
        }
    }

    /// Check a user name and password. Blocking (argon2) unless the
    /// password has the shape of a generated secret.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        self.verify_with(user, password, &mut Vec::new())
    }

    /// [`verify`](Self::verify) with argon2's working memory in `memory`
    /// (grown once, reused by the caller): verifying in a fresh 19 MiB
    /// allocation each time makes the allocator keep freed blocks, and
    /// memory grows by tens of MiB per thread.
    pub fn verify_with(&self, user: &str, password: &[u8], memory: &mut Vec<Block>) -> bool {
        if is_generated(password) {
            return self.check_generated(user, password);
        }
        match self.hash_for(user) {
            Some((hash, exists)) => check(&hash, password, memory) && exists,
            None => false,
        }
    }
}

/// Whether `password` matches the PHC string `hash` (argon2 of any variant
/// and version), computed in `memory`, compared in constant time.
fn check(hash: &str, password: &[u8], memory: &mut Vec<Block>) -> bool {
    let Ok(h) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(h.algorithm), Params::try_from(&h))
    else {
        return false;
    };
    let version = match h.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    memory.resize(params.block_count(), Block::default());
    let argon2 = Argon2::new(algorithm, version, params);
    if argon2
        .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..])
        .is_err()
    {
        return false;
    }
    use subtle::ConstantTimeEq;
    out.ct_eq(expected.as_bytes()).into()
}

/// argon2 verifications running at once, each on a thread of its own that
/// lives as long as the verifier. argon2id with the crate's default
/// parameters takes 19 MiB and tens of milliseconds of a core; two keep a
/// 2-core mote responsive, and fixed threads keep its memory flat (the
/// allocator keeps a freed 19 MiB block in the arena of the thread that
/// used it: on a pool of changing threads, that adds up).
const MAX_VERIFYING: usize = 2;
/// Verifications waiting for a slot; more are refused at once
/// ([`Verdict::Busy`]) instead of queueing memory and threads.
const MAX_WAITING: usize = 16;
/// Failures in a row for one user name that cost nothing (typos).
const FAIL_FREE: u32 = 3;
/// After `n > FAIL_FREE` failures for one user name, attempts for it are
/// refused for `FAIL_BASE · 2^(n−FAIL_FREE−1)`, at most [`FAIL_MAX`]
/// (credentials that verified before still pass); a success resets it.
const FAIL_BASE: Duration = Duration::from_secs(1);
/// See [`FAIL_BASE`].
const FAIL_MAX: Duration = Duration::from_secs(300);
/// Failed verifications allowed in a burst across all names, refilled at
/// [`FAIL_RATE`] per second; while none is left, verifications that are
/// not already known good are refused at once.
const FAIL_BURST: f64 = 30.0;
/// See [`FAIL_BURST`].
const FAIL_RATE: f64 = 2.0;
/// Names whose failures are remembered; the oldest are forgotten first.
const MAX_TRACKED_NAMES: usize = 4096;
/// Known-good credentials remembered (as keyed digests).
const MAX_KNOWN: usize = 1024;

/// The outcome of a [`Verifier::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The credentials are right.
    Ok,
    /// They are wrong.
    Wrong,
    /// Not checked now (too many verifications at once, or too many recent
    /// failures): try again after this long. SMTP `454 4.7.0`, HTTP `429`.
    Busy(Duration),
}

/// Failure bookkeeping.
#[derive(Default)]
struct Throttle {
    /// Per name: failures in a row and when the name may be tried again.
    names: HashMap<String, (u32, Instant)>,
    /// The global failure bucket: tokens left and when it was last filled.
    bucket: Option<(f64, Instant)>,
}

/// Checks passwords and tokens with bounded work (see the constants):
/// at most [`MAX_VERIFYING`] argon2 runs at once and [`MAX_WAITING`]
/// waiting; failures slow down further attempts per name and globally;
/// credentials already verified once are recognized by a keyed digest
/// without argon2, so a real user stays prompt while strangers guess.
pub struct Verifier {
    /// The users: those of the configuration, and accounts added and
    /// removed while the mote runs ([`set`](Self::set), [`remove`](Self::remove)).
    users: parking_lot::RwLock<Users>,
    /// Work for the verification threads; bounded at [`MAX_WAITING`].
    jobs: std::sync::mpsc::SyncSender<Job>,
    throttle: parking_lot::Mutex<Throttle>,
    /// Keyed digests of (name, secret) that verified, with the name (so a
    /// removed user's are forgotten with it).
    known: parking_lot::Mutex<HashMap<[u8; 32], String>>,
    /// The key of those digests (random per process, never stored).
    key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

/// One verification for a verification thread.
struct Job {
    /// The hash to check against (the user's, or the decoy).
    hash: String,
    secret: Vec<u8>,
    answer: tokio::sync::oneshot::Sender<bool>,
}

impl Verifier {
    /// A verifier for `users`, with its [`MAX_VERIFYING`] threads (they
    /// end when it is dropped).
    pub fn new(users: Users) -> Self {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(MAX_WAITING);
        let rx = Arc::new(parking_lot::Mutex::new(rx));
        for i in 0..MAX_VERIFYING {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("verify-{i}"))
                .spawn(move || {
                    // argon2's working memory, reused by every verification
                    // on this thread.
                    let mut memory = Vec::new();
                    loop {
                        let job = rx.lock().recv();
                        let Ok(job) = job else { return };
                        let ok = check(&job.hash, &job.secret, &mut memory);
                        let _ = job.answer.send(ok);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a verification thread");
            }
        }
        Self {
            users: parking_lot::RwLock::new(users),
            jobs,
            throttle: parking_lot::Mutex::new(Throttle::default()),
            known: parking_lot::Mutex::new(HashMap::new()),
            key: rand::rng().random(),
        }
    }

    /// The users now.
    pub fn users(&self) -> parking_lot::RwLockReadGuard<'_, Users> {
        self.users.read()
    }

    /// Add a user or replace its hash, while the mote runs: credentials
    /// of `name` that verified before must verify again.
    pub fn set(&self, name: &str, hash: String) -> Result<(), BadHash> {
        self.users.write().set(name, hash)?;
        self.forget(name);
        Ok(())
    }

    /// Remove a user while the mote runs: its credentials stop working at
    /// once (also those that verified before). Whether it was a user.
    pub fn remove(&self, name: &str) -> bool {
        let was = self.users.write().remove(name);
        self.forget(name);
        was
    }

    fn forget(&self, name: &str) {
        self.known.lock().retain(|_, n| n != name);
    }

    fn digest(&self, name: &str, secret: &[u8]) -> [u8; 32] {
        use blake2::digest::consts::U32;
        use blake2::{Blake2b, Digest};
        Blake2b::<U32>::new()
            .chain_update(self.key)
            .chain_update((name.len() as u64).to_be_bytes())
            .chain_update(name.as_bytes())
            .chain_update(secret)
            .finalize()
            .into()
    }

    /// Check `name`'s `secret`. A generated secret is checked inline
    /// (microseconds, never throttled, never [`Verdict::Busy`]); anything
    /// else costs at most one argon2 run, none for credentials that
    /// verified before.
    pub async fn verify(&self, name: &str, secret: &[u8]) -> Verdict {
        if is_generated(secret) {
            return match self.users.read().check_generated(name, secret) {
                true => Verdict::Ok,
                false => Verdict::Wrong,
            };
        }
        let digest = self.digest(name, secret);
        if self.known.lock().contains_key(&digest) {
            return Verdict::Ok;
        }
        // The attempt is counted as a failure before it runs (so that
        // attempts at once cannot pass the bounds), and taken back if the
        // credentials are right or it does not run.
        if let Err(wait) = self.admit(name, Instant::now()) {
            return Verdict::Busy(wait);
        }
        let Some((hash, exists)) = self.users.read().hash_for(name) else {
            return Verdict::Wrong;
        };
        let (answer, verdict) = tokio::sync::oneshot::channel();
        let job = Job {
            hash: hash.clone(),
            secret: secret.to_vec(),
            answer,
        };
        if self.jobs.try_send(job).is_err() {
            self.unadmit(name);
            return Verdict::Busy(Duration::from_secs(1));
        }
        // Waited for on the blocking pool (a cheap thread: the argon2 work
        // and its memory stay on the verification threads), which also lets
        // tests in paused time see that work is under way.
        let ok = tokio::task::spawn_blocking(move || verdict.blocking_recv().unwrap_or(false))
            .await
            .unwrap_or(false)
            && exists;
        if ok && self.succeeded(name, digest, &hash) {
            Verdict::Ok
        } else {
            Verdict::Wrong
        }
    }

    /// Let an attempt for `name` be verified now, counting it as a failure
    /// (of the name, and from the global bucket) until it succeeds; or how
    /// long attempts are refused.
    fn admit(&self, name: &str, now: Instant) -> Result<(), Duration> {
        let mut t = self.throttle.lock();
        if let Some((_, until)) = t.names.get(name) {
            if *until > now {
                return Err(*until - now);
            }
        }
        let (tokens, at) = fill(&mut t.bucket, now);
        if tokens < 1.0 {
            return Err(Duration::from_secs_f64((1.0 - tokens) / FAIL_RATE));
        }
        t.bucket = Some((tokens - 1.0, at));
        if t.names.len() >= MAX_TRACKED_NAMES && !t.names.contains_key(name) {
            // Forget the name that may be tried again soonest.
            if let Some(k) = t
                .names
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(k, _)| k.clone())
            {
                t.names.remove(&k);
            }
        }
        let entry = t.names.entry(name.to_string()).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        if entry.0 > FAIL_FREE {
            let backoff = FAIL_BASE
                .saturating_mul(1 << (entry.0 - FAIL_FREE - 1).min(16))
                .min(FAIL_MAX);
            entry.1 = now + backoff;
        }
        Ok(())
    }

    /// Take back an admitted attempt that did not run.
    fn unadmit(&self, name: &str) {
        let mut t = self.throttle.lock();
        t.give_back();
        if let Some(e) = t.names.get_mut(name) {
            e.0 = e.0.saturating_sub(1);
            if e.0 <= FAIL_FREE {
                e.1 = Instant::now();
            }
        }
    }

    /// Book a verification of `name` against `hash` that succeeded: its
    /// failures are forgiven (the global token back, the name's count
    /// reset) and the credentials are known from now on. Whether the
    /// success stands: not if the user was removed or given new
    /// credentials meanwhile.
    fn succeeded(&self, name: &str, digest: [u8; 32], hash: &str) -> bool {
        {
            let mut t = self.throttle.lock();
            t.names.remove(name);
            t.give_back();
        }
        // Under the users' lock: a removal either happened before (then
        // this success does not stand) or forgets it after.
        let users = self.users.read();
        if !matches!(users.by_name.get(name), Some(Stored::Slow(h)) if h == hash) {
            return false;
        }
        let mut known = self.known.lock();
        if known.len() >= MAX_KNOWN {
            known.clear();
        }
        known.insert(digest, name.to_string());
        true
    }
}

impl Throttle {
    /// Put back the global token of an attempt that does not count.
    fn give_back(&mut self) {
        if let Some((tokens, at)) = self.bucket {
            self.bucket = Some(((tokens + 1.0).min(FAIL_BURST), at));
        }
    }
}

/// The failure bucket filled up to `now`: (tokens, when).
fn fill(bucket: &mut Option<(f64, Instant)>, now: Instant) -> (f64, Instant) {
    let (tokens, at) = bucket.get_or_insert((FAIL_BURST, now));
    let refilled =
        (*tokens + now.saturating_duration_since(*at).as_secs_f64() * FAIL_RATE).min(FAIL_BURST);
    *tokens = refilled;
    *at = now;
    (refilled, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_the_right_password_and_user() {
        let h = hash_password(b"correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert_ne!(h, hash_password(b"correct horse").expect("hash"), "salted");
        let users = Users::new([("alice".to_string(), h)]).expect("users");
        assert!(users.verify("alice", b"correct horse"));
        assert!(!users.verify("alice", b"correct horsf"));
        assert!(!users.verify("bob", b"correct horse"));
        assert!(!Users::default().verify("alice", b"correct horse"));
    }

    fn alice() -> Verifier {
        let h = hash_password(b"right").expect("hash");
        Verifier::new(Users::new([("alice".to_string(), h)]).expect("users"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failures_throttle_a_name_but_known_credentials_still_pass() {
        let v = alice();
        assert_eq!(v.verify("alice", b"right").await, Verdict::Ok);
        for _ in 0..=FAIL_FREE {
            assert_eq!(v.verify("alice", b"wrong").await, Verdict::Wrong);
        }
        // Guessing alice's password is now refused without argon2 ...
        assert!(matches!(
            v.verify("alice", b"guess").await,
            Verdict::Busy(_)
        ));
        // ... but alice, whose password verified before, gets in at once,
        // and another name is not affected.
        assert_eq!(v.verify("alice", b"right").await, Verdict::Ok);
        assert_eq!(v.verify("bob", b"x").await, Verdict::Wrong);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failures_across_names_are_bounded_globally() {
        let v = alice();
        assert_eq!(v.verify("alice", b"right").await, Verdict::Ok);
        let mut wrong = 0;
        for i in 0..(FAIL_BURST as usize + 5) {
            match v.verify(&format!("n{i}"), b"x").await {
                Verdict::Wrong => wrong += 1,
                Verdict::Busy(_) => break,
                Verdict::Ok => panic!("n{i} verified"),
            }
        }
        // The burst (a little more: the bucket refills while argon2 runs).
        assert!(
            (FAIL_BURST as usize..FAIL_BURST as usize + 5).contains(&wrong),
            "{wrong}"
        );
        assert!(matches!(v.verify("fresh", b"x").await, Verdict::Busy(_)));
        assert_eq!(v.verify("alice", b"right").await, Verdict::Ok);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verifications_at_once_are_bounded() {
        let v = std::sync::Arc::new(alice());
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let v = std::sync::Arc::clone(&v);
                tokio::spawn(async move { v.verify(&format!("m{i}"), b"x").await })
            })
            .collect();
        let mut busy = 0;
        for t in tasks {
            match t.await.expect("task") {
                Verdict::Busy(_) => busy += 1,
                Verdict::Wrong => {}
                Verdict::Ok => panic!("a wrong password verified"),
            }
        }
        // At most MAX_VERIFYING running and MAX_WAITING waiting: the rest
        // were refused at once.
        assert!(busy >= 40 - MAX_VERIFYING - MAX_WAITING, "{busy} busy");
    }

    #[test]
    fn generated_secrets_have_their_shape_and_a_fast_hash_of_their_own() {
        let s = new_secret(SECRET_LETTERS);
        assert!(s.secret.starts_with(GENERATED_PREFIX), "{}", s.secret);
        assert_eq!(s.secret.len(), GENERATED_PREFIX.len() + SECRET_LETTERS);
        assert!(is_generated(s.secret.as_bytes()));
        assert!(s.hash.starts_with("$dust-secret$v=1$"), "{}", s.hash);
        // At least 128 bits even when fewer letters are asked for.
        let short = new_secret(4);
        assert_eq!(
            short.secret.len(),
            GENERATED_PREFIX.len() + GENERATED_MIN_LETTERS
        );
        assert!((GENERATED_MIN_LETTERS as f64) * (ALPHABET.len() as f64).log2() >= 128.0);
        // Neither an earlier generated password (letters only, or URL-safe
        // base64) nor a short or decorated one has the shape.
        for not in [
            "AbCdEfGhIjKlMnOpQrStUvWx",
            "dust.short",
            "dust.ABCDEFGHIJKLMNOPQRSTU-",
            "Dust.ABCDEFGHIJKLMNOPQRSTUV",
            "x_dust.ABCDEFGHIJKLMNOPQRSTUV",
        ] {
            assert!(!is_generated(not.as_bytes()), "{not}");
        }
        let users = Users::new([("bea".to_string(), s.hash.clone())]).expect("parses");
        assert!(users.verify("bea", s.secret.as_bytes()));
        assert!(!users.verify("bea", new_secret(SECRET_LETTERS).secret.as_bytes()));
        assert!(!users.verify("carl", s.secret.as_bytes()));
        // A salt of its own each time.
        assert_ne!(
            s.hash,
            Generated::new(s.secret.as_bytes(), rand::rng().random()).to_phc()
        );
    }

    #[test]
    fn a_digest_made_by_pythons_hashlib_verifies() {
        // What a launcher written in Python makes from a secret it
        // generated: the format is BLAKE2b as documented on GENERATED_ID.
        let secret = new_secret(SECRET_LETTERS).secret;
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import base64, hashlib, os, sys\n\
                 salt = os.urandom(16)\n\
                 d = hashlib.blake2b(sys.argv[1].encode(), key=salt, person=b'dustmote-secret1', digest_size=32).digest()\n\
                 b = lambda x: base64.b64encode(x).decode().rstrip('=')\n\
                 print(f'$dust-secret$v=1${b(salt)}${b(d)}')",
                &secret,
            ])
            .output()
            .expect("python3");
        assert!(out.status.success(), "{out:?}");
        let hash = String::from_utf8(out.stdout).expect("utf-8");
        let users = Users::new([("dora".to_string(), hash.trim().to_string())]).expect("parses");
        assert!(users.verify("dora", secret.as_bytes()));
        assert!(!users.verify("dora", new_secret(SECRET_LETTERS).secret.as_bytes()));
    }

    #[test]
    fn malformed_generated_hashes_are_rejected() {
        let good = new_secret(SECRET_LETTERS).hash;
        let parts: Vec<&str> = good.split('$').collect();
        for bad in [
            good.replace("v=1", "v=2"),
            format!("$dust-secret$v=1$m=1${}${}", parts[3], parts[4]),
            format!("$dust-secret$v=1${}", parts[3]),
            format!("$dust-secret$v=1${}${}", parts[3], &parts[4][..20]),
            format!("$dust-secret$v=1$AAAAAAAA${}", parts[4]),
        ] {
            let e = Users::new([("mo".to_string(), bad.clone())]).expect_err(&bad);
            assert_eq!(e.user, "mo");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn guessing_never_throttles_a_generated_secret() {
        let bea = new_secret(GENERATED_MIN_LETTERS);
        let v = Verifier::new(
            Users::new([
                ("bea".to_string(), bea.hash.clone()),
                ("alice".to_string(), hash_password(b"right").expect("hash")),
            ])
            .expect("users"),
        );
        // Human-shaped guesses for bea's name and for many others use up
        // the name's and the global allowance of argon2 work ...
        for _ in 0..=FAIL_FREE {
            assert_eq!(v.verify("bea", b"guess").await, Verdict::Wrong);
        }
        assert!(matches!(v.verify("bea", b"guess").await, Verdict::Busy(_)));
        let mut drained = false;
        for i in 0..FAIL_BURST as usize * 4 {
            if matches!(v.verify(&format!("n{i}"), b"guess").await, Verdict::Busy(_)) {
                drained = true;
                break;
            }
        }
        assert!(drained, "the global allowance was never used up");
        assert!(matches!(
            v.verify("alice", b"right").await,
            Verdict::Busy(_)
        ));
        // ... and 10,000 wrong generated secrets for bea are answered at
        // once, none verifies, never Busy; bea's first login ever works
        // in the middle of them and after.
        for i in 0..10_000 {
            let wrong = new_secret(GENERATED_MIN_LETTERS).secret;
            assert_eq!(v.verify("bea", wrong.as_bytes()).await, Verdict::Wrong);
            if i % 1000 == 500 {
                assert_eq!(v.verify("bea", bea.secret.as_bytes()).await, Verdict::Ok);
            }
        }
        assert_eq!(v.verify("bea", bea.secret.as_bytes()).await, Verdict::Ok);
        // A generated secret is never right for another name, nor for a
        // name with a human password (checked against the fast decoy).
        assert_eq!(v.verify("zed", bea.secret.as_bytes()).await, Verdict::Wrong);
        assert_eq!(
            v.verify("alice", bea.secret.as_bytes()).await,
            Verdict::Wrong
        );
        // Removing bea stops her secret at once.
        assert!(v.remove("bea"));
        assert_eq!(v.verify("bea", bea.secret.as_bytes()).await, Verdict::Wrong);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_human_shaped_secret_never_matches_a_generated_hash() {
        // bea's secret without its prefix goes the argon2 way, where bea
        // has no hash: checked against the decoy and refused, like an
        // unknown name.
        let bea = new_secret(SECRET_LETTERS);
        let v = Verifier::new(
            Users::new([
                ("alice".to_string(), hash_password(b"right").expect("hash")),
                ("bea".to_string(), bea.hash.clone()),
            ])
            .expect("users"),
        );
        let bare = &bea.secret[GENERATED_PREFIX.len()..];
        assert_eq!(v.verify("bea", bare.as_bytes()).await, Verdict::Wrong);
        assert_eq!(v.verify("alice", b"right").await, Verdict::Ok);
    }

    #[test]
    fn malformed_hashes_are_rejected_naming_the_user() {
        let e = Users::new([(
            "mallory".to_string(),
            "<output of dustmote passwd>".to_string(),
        )])
        .expect_err("must fail");
        assert_eq!(e.user, "mallory");
    }
}
