//! `[[peers]]`: other motes this one hands items to or takes items from
//! (the dust cloud; see `dust_proxies::item::wire`).

use std::collections::HashMap;

use dust_proxies::access::auth::Users;
use dust_proxies::access::peers::{PeerLimits, Peers};
use dust_proxies::egress::hop::PeerTarget;
use serde::Deserialize;

use super::units::{parse_rate, plain_name, split_host_port, users, Size};
use super::{invalid, Invalid};

/// Default largest item from a peer: a message at the default SMTP limit
/// with room for its envelope.
const DEFAULT_MAX_ITEM: u64 = 32 << 20;

/// One `[[peers]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The peer's name (in logs, `dustmote status`, and as the name in the
    /// token it sends: `NAME:TOKEN`).
    pub name: String,
    /// The peer's HTTP API, to send to: an onion address in production
    /// (`http://…onion`), `http://127.0.0.1:PORT` in `direct` test mode.
    #[serde(default)]
    pub url: Option<String>,
    /// What this mote sends to the peer: `NAME:SECRET`, where NAME is this
    /// mote's name in the peer's `[[peers]]` and the peer keeps the
    /// SECRET's hash as its `token_hash`.
    #[serde(default)]
    pub token: Option<String>,
    /// argon2 hash (`dustmote passwd`) of the token the peer sends here;
    /// without it the peer cannot hand items to this mote.
    #[serde(default)]
    pub token_hash: Option<String>,
    /// Largest item accepted from the peer.
    #[serde(default)]
    pub max_item_bytes: Option<Size>,
    /// Items accepted from the peer on average, e.g. "600/min" (429 beyond).
    #[serde(default)]
    pub rate: Option<String>,
    /// Items accepted at once before `rate` applies.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// Default rate from a peer: a successor taking over a full queue at the
/// drain point should not be throttled much, a stranger with a stolen token
/// should not fill the disk in a minute.
const DEFAULT_RATE_PER_S: f64 = 100.0;
const DEFAULT_BURST: u32 = 1000;

/// Why a peer cannot be sent to.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// No `[[peers]]` entry has the name.
    #[error("no [[peers]] entry named {0:?}")]
    Unknown(String),
    /// The entry has no `url` or no `token`.
    #[error("peer {0:?} needs url and token to be sent to")]
    NotReachable(String),
}

/// Where to send to the peer `name` (it needs `url` and `token`).
pub fn target(peers: &[Peer], name: &str) -> Result<PeerTarget, TargetError> {
    let p = peers
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| TargetError::Unknown(name.to_string()))?;
    let (Some(url), Some(token)) = (&p.url, &p.token) else {
        return Err(TargetError::NotReachable(name.to_string()));
    };
    let rest = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/');
    let (host, port) = match split_host_port(rest) {
        Some((h, p)) => (h, p),
        None => (rest.to_string(), 80),
    };
    Ok(PeerTarget {
        name: name.to_string(),
        host,
        port,
        credential: token.clone(),
    })
}

/// Check the list; the peers allowed to send here.
pub fn check(peers: &[Peer]) -> Result<Peers, Invalid> {
    let mut limits = HashMap::new();
    let mut hashes = Vec::new();
    for p in peers {
        if !plain_name(&p.name) {
            return Err(invalid(
                "peers.name",
                format!("{:?}: letters, digits, '-', '_' or '.'", p.name),
            ));
        }
        if peers.iter().filter(|q| q.name == p.name).count() > 1 {
            return Err(invalid("peers.name", format!("{:?} given twice", p.name)));
        }
        match (&p.url, &p.token) {
            (Some(url), Some(token)) => {
                if !token
                    .split_once(':')
                    .is_some_and(|(n, s)| !n.is_empty() && !s.is_empty())
                {
                    return Err(invalid(
                        "peers.token",
                        format!(
                            "peer {:?}: expected NAME:SECRET (this mote's name at the peer, and the secret)",
                            p.name
                        ),
                    ));
                }
                let rest = url.strip_prefix("http://").ok_or_else(|| {
                    invalid(
                        "peers.url",
                        format!(
                            "{url:?}: expected http://HOST[:PORT] (an onion service is \
                             encrypted end to end; the link goes through the mote's transport)"
                        ),
                    )
                })?;
                if rest.is_empty() || rest.trim_end_matches('/').contains('/') {
                    return Err(invalid(
                        "peers.url",
                        format!("{url:?}: expected http://HOST[:PORT], no path"),
                    ));
                }
            }
            (None, None) => {}
            _ => {
                return Err(invalid(
                    "peers.token",
                    format!("peer {:?}: url and token go together", p.name),
                ))
            }
        }
        if p.url.is_none() && p.token_hash.is_none() {
            return Err(invalid(
                "peers.token_hash",
                format!(
                    "peer {:?} has neither a url (to send to) nor a token_hash (to accept from)",
                    p.name
                ),
            ));
        }
        let max = p.max_item_bytes.map_or(DEFAULT_MAX_ITEM, |s| s.0);
        if max == 0 {
            return Err(invalid("peers.max_item_bytes", "must be at least 1"));
        }
        let rate_per_s = match &p.rate {
            Some(r) => parse_rate(r).map_err(|e| invalid("peers.rate", e.to_string()))?,
            None => DEFAULT_RATE_PER_S,
        };
        let burst = p.burst.unwrap_or(DEFAULT_BURST);
        if burst == 0 {
            return Err(invalid("peers.burst", "must be at least 1"));
        }
        if let Some(h) = &p.token_hash {
            hashes.push((&p.name, h));
            limits.insert(
                p.name.clone(),
                PeerLimits {
                    max_item_bytes: usize::try_from(max).unwrap_or(usize::MAX),
                    rate_per_s,
                    burst,
                },
            );
        }
    }
    let users: Users = users("peers.token_hash", hashes.into_iter())?;
    Ok(Peers::new(users, limits))
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$4BXGL8y+A5keOWuO5oRgyg$1z7nhn+JgIQ2X6gNJNQEBXxXV57ihdRwYpZHR1c9mVA";

    fn key_of(text: &str) -> String {
        parse(text, "t.toml")
            .map(|_| String::new())
            .unwrap_or_else(|e| e.key)
    }

    #[test]
    fn peers_are_checked() {
        let ok = format!(
            "[[peers]]\nname = \"b\"\nurl = \"http://abc.onion\"\ntoken = \"a:t\"\n\
             [[peers]]\nname = \"a\"\ntoken_hash = \"{HASH}\"\nmax_item_bytes = \"1MiB\"\n"
        );
        let c = parse(&ok, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(format!("{:?}", c.peers), "Peers { names: [\"a\"] }");
        for (text, key) in [
            ("[[peers]]\nname = \"a b\"\ntoken_hash = \"x\"\n".to_string(), "peers.name"),
            (format!("[[peers]]\nname = \"a\"\ntoken_hash = \"{HASH}\"\n[[peers]]\nname = \"a\"\ntoken_hash = \"{HASH}\"\n"), "peers.name"),
            ("[[peers]]\nname = \"a\"\nurl = \"http://x.onion\"\n".to_string(), "peers.token"),
            ("[[peers]]\nname = \"a\"\nurl = \"https://x.onion\"\ntoken = \"m:t\"\n".to_string(), "peers.url"),
            ("[[peers]]\nname = \"a\"\nurl = \"http://x.onion\"\ntoken = \"t\"\n".to_string(), "peers.token"),
            ("[[peers]]\nname = \"a\"\nurl = \"http://x.onion/api\"\ntoken = \"m:t\"\n".to_string(), "peers.url"),
            ("[[peers]]\nname = \"a\"\n".to_string(), "peers.token_hash"),
            ("[[peers]]\nname = \"a\"\ntoken_hash = \"not a hash\"\n".to_string(), "peers.token_hash"),
            (format!("[[peers]]\nname = \"a\"\ntoken_hash = \"{HASH}\"\nmax_item_bytes = 0\n"), "peers.max_item_bytes"),
            (format!("[[peers]]\nname = \"a\"\ntoken_hash = \"{HASH}\"\nrate = \"fast\"\n"), "peers.rate"),
            (format!("[[peers]]\nname = \"a\"\ntoken_hash = \"{HASH}\"\nburst = 0\n"), "peers.burst"),
        ] {
            assert_eq!(key_of(&text), key, "{text}");
        }
    }
}
