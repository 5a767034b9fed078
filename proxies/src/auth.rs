//! SMTP users and their argon2 password hashes.

use std::collections::HashMap;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
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

    /// No users configured.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The user whose secret (an HTTP bearer token) this is, trying every
    /// user's hash. Blocking (argon2, once per user).
    pub fn find(&self, secret: &[u8]) -> Option<String> {
        let mut found = None;
        for (name, hash) in &self.by_name {
            let ok = PasswordHash::new(hash)
                .map(|h| Argon2::default().verify_password(secret, &h).is_ok())
                .unwrap_or(false);
            if ok && found.is_none() {
                found = Some(name.clone());
            }
        }
        found
    }

    /// Check a user name and password. Blocking (argon2).
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let (hash, exists) = match self.by_name.get(user) {
            Some(h) => (h, true),
            None => match &self.decoy {
                Some(h) => (h, false),
                None => return false,
            },
        };
        let ok = PasswordHash::new(hash)
            .map(|h| Argon2::default().verify_password(password, &h).is_ok())
            .unwrap_or(false);
        ok && exists
    }
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
