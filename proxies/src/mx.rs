//! MX delivery support: DNS over TCP *through the connector* (so through
//! Tor) to a configured resolver, and the onion MX map.
//!
//! Nothing here uses the system resolver: queries are DNS messages written
//! on a stream that the [`Connector`] opened to the resolver's address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::tor::{Connector, Target};

/// Settings of `[delivery.mail] mode = "mx"`.
#[derive(Debug, Clone)]
pub struct MxConfig {
    /// The DNS resolver, reached through the connector over TCP.
    pub resolver: (String, u16),
    /// The SMTP port of mail exchangers (25; tests use another).
    pub port: u16,
    /// Recipient domains (lower case) whose mail goes to a given onion host
    /// instead of their MX (onion MX).
    pub onion_map: HashMap<String, String>,
    /// Bound on one DNS exchange.
    pub dns_timeout: Duration,
}

/// What a lookup found out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    /// The domain does not exist, or has no usable mail host: permanent.
    #[error("{0}")]
    Permanent(String),
    /// The resolver could not be reached or answered with a failure: retry.
    #[error("{0}")]
    Temporary(String),
}

/// One DNS exchange over a fresh stream (its own circuit).
async fn query(
    connector: &dyn Connector,
    cfg: &MxConfig,
    isolation: u64,
    name: &Name,
    rtype: RecordType,
) -> Result<Message, LookupError> {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(name.clone(), rtype));
    let bytes = msg
        .to_vec()
        .map_err(|e| LookupError::Temporary(format!("encoding a DNS query: {e}")))?;
    let target = Target {
        host: cfg.resolver.0.clone(),
        port: cfg.resolver.1,
        isolation,
    };
    let exchange = async {
        let mut s = connector
            .connect(&target)
            .await
            .map_err(|e| LookupError::Temporary(format!("DNS resolver: {e}")))?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        framed.extend_from_slice(&bytes);
        let io = |e: std::io::Error| LookupError::Temporary(format!("DNS over TCP: {e}"));
        s.write_all(&framed).await.map_err(io)?;
        s.flush().await.map_err(io)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.map_err(io)?;
        let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut answer).await.map_err(io)?;
        Message::from_vec(&answer).map_err(|e| LookupError::Temporary(format!("DNS answer: {e}")))
    };
    let answer = tokio::time::timeout(cfg.dns_timeout, exchange)
        .await
        .map_err(|_| {
            LookupError::Temporary(format!("DNS query timed out after {:?}", cfg.dns_timeout))
        })??;
    if answer.metadata.id != msg.metadata.id {
        return Err(LookupError::Temporary("DNS answer with a wrong id".into()));
    }
    match answer.metadata.response_code {
        ResponseCode::NoError => Ok(answer),
        ResponseCode::NXDomain => Err(LookupError::Permanent(format!("no such domain: {name}"))),
        other => Err(LookupError::Temporary(format!(
            "DNS error {other} for {name}"
        ))),
    }
}

/// The hosts to try for `domain`, best first: its MX hosts by preference,
/// or the domain itself if it has no MX (RFC 5321 5.1). Onion-mapped
/// domains give their onion host.
pub async fn mail_hosts(
    connector: &dyn Connector,
    cfg: &MxConfig,
    isolation: u64,
    domain: &str,
) -> Result<Vec<String>, LookupError> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if let Some(onion) = cfg.onion_map.get(&domain) {
        return Ok(vec![onion.clone()]);
    }
    if domain.ends_with(".onion") {
        return Ok(vec![domain]);
    }
    let name = Name::from_ascii(format!("{domain}."))
        .map_err(|e| LookupError::Permanent(format!("bad domain {domain:?}: {e}")))?;
    let answer = query(connector, cfg, isolation, &name, RecordType::MX).await?;
    let mut mx: Vec<(u16, String)> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::MX(m) => Some((
                m.preference,
                m.exchange.to_ascii().trim_end_matches('.').to_string(),
            )),
            _ => None,
        })
        .collect();
    if mx.is_empty() {
        return Ok(vec![domain]);
    }
    if mx.len() == 1 && mx[0].1.is_empty() {
        // A "null MX" (RFC 7505): the domain accepts no mail.
        return Err(LookupError::Permanent(format!(
            "{domain} accepts no mail (null MX)"
        )));
    }
    mx.sort_by_key(|(pref, _)| *pref);
    Ok(mx.into_iter().map(|(_, h)| h).collect())
}

/// Addresses of `host` (A records) from the configured resolver; an address
/// literal or an onion address is returned as it is, for Tor to handle.
pub async fn addresses(
    connector: &dyn Connector,
    cfg: &MxConfig,
    isolation: u64,
    host: &str,
) -> Result<Vec<String>, LookupError> {
    if host.parse::<IpAddr>().is_ok() || host.ends_with(".onion") {
        return Ok(vec![host.to_string()]);
    }
    let name = Name::from_ascii(format!("{host}."))
        .map_err(|e| LookupError::Permanent(format!("bad host {host:?}: {e}")))?;
    let answer = query(connector, cfg, isolation, &name, RecordType::A).await?;
    let addrs: Vec<String> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    if addrs.is_empty() {
        return Err(LookupError::Permanent(format!(
            "mail host {host} has no address"
        )));
    }
    Ok(addrs)
}
