//! `[http]`: the download API and its users.

use std::net::SocketAddr;

use dust_proxies::access::auth::Users;
use serde::Deserialize;

use super::units::users;
use super::{invalid, Invalid};

/// One `[[http.users]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpUser {
    /// Name (jobs belong to it).
    pub name: String,
    /// argon2 PHC string of the user's bearer token (`dustmote passwd`).
    pub token_hash: String,
    /// May see the queue and mix counts (`/metrics`, the full `/status`).
    #[serde(default)]
    pub operator: bool,
}

/// `[http]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Listen address of the download API, `/status` and `/metrics`.
    pub listen: SocketAddr,
    /// Who may queue and retrieve downloads.
    pub users: Vec<HttpUser>,
    /// Connections served at once; when all are taken, a newcomer evicts
    /// one that has not authenticated.
    pub max_connections: usize,
    /// Connections of peers (the peer link) at once, beside
    /// `max_connections`.
    pub peer_connections: usize,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            users: Vec::new(),
            max_connections: 64,
            peer_connections: 16,
        }
    }
}

impl Http {
    /// Check the section: the users (token hashes) and the operators' names.
    pub fn check(&self) -> Result<(Users, Vec<String>), Invalid> {
        if self.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be at least 1"));
        }
        if self.peer_connections == 0 {
            return Err(invalid("http.peer_connections", "must be at least 1"));
        }
        if self.users.iter().any(|u| u.name.is_empty()) {
            // Jobs without a user are the mote's own (cover traffic).
            return Err(invalid("http.users.name", "a user needs a name"));
        }
        let users = users(
            "http.users.token_hash",
            self.users.iter().map(|u| (&u.name, &u.token_hash)),
        )?;
        let operators = self
            .users
            .iter()
            .filter(|u| u.operator)
            .map(|u| u.name.clone())
            .collect();
        Ok((users, operators))
    }
}
