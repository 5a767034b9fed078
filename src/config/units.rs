//! Values that several sections share: sizes, rates, `host:port`, CA
//! files, user lists.

use std::path::Path;

use dust_proxies::access::auth::Users;
use serde::Deserialize;

use super::{invalid, Invalid};

/// A size in bytes: an integer, or a string like `"64KiB"`, `"1MiB"`,
/// `"2GiB"`, `"500kB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => parse_size(&s).map(Size).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size {s:?} (e.g. \"64KiB\", \"1MiB\", 4096)"
                ))
            }),
        }
    }
}

/// `"64KiB"` → 65536; `None` if it is not a size.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A rate that is not `COUNT/UNIT`; the message says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRate(String);

/// `"1/min"`, `"30/h"`, `"0.5/s"`, `"2/d"` → items per second.
pub fn parse_rate(s: &str) -> Result<f64, BadRate> {
    let bad = |why: String| BadRate(format!("rate {s:?}: {why}"));
    let (n, unit) = s
        .split_once('/')
        .ok_or_else(|| bad("expected COUNT/UNIT, e.g. 1/min, 30/h, 0.5/s".into()))?;
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| bad(format!("{n:?} is not a number")))?;
    let per = match unit.trim() {
        "s" | "sec" => 1.0,
        "min" | "m" => 60.0,
        "h" | "hour" => 3600.0,
        "d" | "day" => 86400.0,
        u => return Err(bad(format!("unknown unit {u:?} (s, min, h, d)"))),
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(bad("must be > 0".into()));
    }
    Ok(n / per)
}

/// `host:port` or `[v6]:port`.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(':') && !s.starts_with('[') {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

/// The PEM bytes of an extra CA file (`ca_file` keys), checked to hold a
/// certificate.
pub fn read_ca(path: Option<&Path>) -> Result<Option<Vec<u8>>, String> {
    let Some(p) = path else { return Ok(None) };
    let pem = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(format!("{}: no PEM certificate in it", p.display()));
    }
    Ok(Some(pem))
}

/// A name for a user or a peer: letters, digits, '-', '_' or '.' (safe in
/// a `NAME:TOKEN` credential, a log line and a shell), not empty.
pub fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Users from (name, argon2 PHC string) pairs; a bad hash is reported
/// under `key`.
pub fn users<'a>(
    key: &str,
    entries: impl Iterator<Item = (&'a String, &'a String)>,
) -> Result<Users, Invalid> {
    Users::new(entries.map(|(name, hash)| (name.clone(), hash.clone())))
        .map_err(|e| invalid(key, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("127.0.0.1:2526"),
            Some(("127.0.0.1".into(), 2526))
        );
        assert_eq!(split_host_port("[::1]:25"), Some(("::1".into(), 25)));
        assert_eq!(
            split_host_port("smtp.example.org:587"),
            Some(("smtp.example.org".into(), 587))
        );
        assert_eq!(split_host_port("::1:25"), None);
        assert_eq!(split_host_port("host:x"), None);
    }

    #[test]
    fn sizes_and_rates_parse() {
        assert_eq!(parse_size("64KiB"), Some(65_536));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("500kB"), Some(500_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1.5MiB"), None);
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_rate("1/min"), Ok(1.0 / 60.0));
        assert!(parse_rate("0/h").is_err());
    }
}
