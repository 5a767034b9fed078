//! Users, their argon2 password hashes, and a [`Verifier`] that bounds the
//! work anyone can cause before authenticating.

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

/// Hash `password` with argon2id (the crate's default parameters) and a
/// random salt from the OS CSPRNG.
pub fn hash_password(password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    let salt_bytes: [u8; 16] = rand::rng().random();
    let salt = SaltString::encode_b64(&salt_bytes)?;
    Ok(Argon2::default()
        .hash_password(password, &salt)?
        .to_string())
}

/// The configured users. Verification is deliberately slow (argon2): call it
/// on a blocking thread.
#[derive(Debug, Clone, Default)]
pub struct Users {
    by_name: HashMap<String, String>,
    /// A valid hash to verify against when the user does not exist, so that
    /// a wrong user name costs as much time as a wrong password.
    decoy: Option<String>,
}

impl Users {
    /// Build from (name, PHC hash) pairs; every hash is checked to parse.
    pub fn new(users: impl IntoIterator<Item = (String, String)>) -> Result<Self, BadHash> {
        let mut by_name = HashMap::new();
        let mut decoy = None;
        for (user, hash) in users {
            if let Err(e) = PasswordHash::new(&hash) {
                return Err(BadHash {
                    user,
                    reason: e.to_string(),
                });
            }
            decoy.get_or_insert_with(|| hash.clone());
            by_name.insert(user, hash);
        }
        Ok(Self { by_name, decoy })
    }

    /// Add `name` or replace its hash (checked to parse).
    pub fn set(&mut self, name: &str, hash: String) -> Result<(), BadHash> {
        if let Err(e) = PasswordHash::new(&hash) {
            return Err(BadHash {
                user: name.to_string(),
                reason: e.to_string(),
            });
        }
        self.decoy.get_or_insert_with(|| hash.clone());
        self.by_name.insert(name.to_string(), hash);
        Ok(())
    }

    /// Remove `name`; whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        self.by_name.remove(name).is_some()
    }

    /// `name`'s hash, or the decoy (`false`: `name` is no user), or `None`
    /// when there is no user at all.
    fn hash_for(&self, name: &str) -> Option<(String, bool)> {
        match self.by_name.get(name) {
            Some(h) => Some((h.clone(), true)),
            None => self.decoy.clone().map(|h| (h, false)),
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

    /// Check a user name and password. Blocking (argon2).
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        self.verify_with(user, password, &mut Vec::new())
    }

    /// [`verify`](Self::verify) with argon2's working memory in `memory`
    /// (grown once, reused by the caller): verifying in a fresh 19 MiB
    /// allocation each time makes the allocator keep freed blocks, and
    /// memory grows by tens of MiB per thread.
    pub fn verify_with(&self, user: &str, password: &[u8], memory: &mut Vec<Block>) -> bool {
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
    let diff = out
        .iter()
        .zip(expected.as_bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    diff == 0 && out.len() == expected.len()
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

    /// Check `name`'s `secret`: at most one argon2 run, none for
    /// credentials that verified before.
    pub async fn verify(&self, name: &str, secret: &[u8]) -> Verdict {
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
        if users.by_name.get(name).map(String::as_str) != Some(hash) {
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
    fn malformed_hashes_are_rejected_naming_the_user() {
        let e = Users::new([(
            "mallory".to_string(),
            "<output of dustmote passwd>".to_string(),
        )])
        .expect_err("must fail");
        assert_eq!(e.user, "mallory");
    }
}
