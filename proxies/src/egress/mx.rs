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

use dust_mixer::{ErrorKind, HasKind};

use crate::tor::{ConnectError, Connector, Target};

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

/// Why a lookup found no mail host.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The name is not a DNS name.
    #[error("bad name {name:?}: {source}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// The domain does not exist (NXDOMAIN).
    #[error("no such domain: {0}")]
    NoSuchDomain(String),
    /// The domain says it accepts no mail (a null MX, RFC 7505).
    #[error("{0} accepts no mail (null MX)")]
    NullMx(String),
    /// The mail host has no address.
    #[error("mail host {0} has no address")]
    NoAddress(String),
    /// The resolver could not be reached.
    #[error("DNS resolver: {0}")]
    Connect(#[from] ConnectError),
    /// The exchange with the resolver broke off.
    #[error("DNS over TCP: {0}")]
    Io(#[from] std::io::Error),
    /// The query could not be encoded.
    #[error("encoding a DNS query: {0}")]
    Encode(hickory_proto::ProtoError),
    /// The answer could not be decoded.
    #[error("DNS answer: {0}")]
    Decode(hickory_proto::serialize::binary::DecodeError),
    /// The answer did not match the query, or reported a server failure.
    #[error("DNS answer: {0}")]
    Answer(String),
    /// The resolver did not answer in time.
    #[error("DNS query timed out after {0:?}")]
    Timeout(Duration),
}

impl HasKind for LookupError {
    fn kind(&self) -> ErrorKind {
        match self {
            LookupError::BadName { .. }
            | LookupError::NoSuchDomain(_)
            | LookupError::NullMx(_)
            | LookupError::NoAddress(_) => ErrorKind::Permanent,
            LookupError::Connect(e) => e.kind(),
            LookupError::Io(_)
            | LookupError::Encode(_)
            | LookupError::Decode(_)
            | LookupError::Answer(_)
            | LookupError::Timeout(_) => ErrorKind::Temporary,
        }
    }
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
    let bytes = msg.to_vec().map_err(LookupError::Encode)?;
    let target = Target {
        host: cfg.resolver.0.clone(),
        port: cfg.resolver.1,
        isolation,
    };
    let exchange = async {
        let mut s = connector.connect(&target).await?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        framed.extend_from_slice(&bytes);
        s.write_all(&framed).await?;
        s.flush().await?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await?;
        let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut answer).await?;
        Message::from_vec(&answer).map_err(LookupError::Decode)
    };
    let answer = tokio::time::timeout(cfg.dns_timeout, exchange)
        .await
        .map_err(|_| LookupError::Timeout(cfg.dns_timeout))??;
    if answer.metadata.id != msg.metadata.id {
        return Err(LookupError::Answer("an answer with a wrong id".into()));
    }
    match answer.metadata.response_code {
        ResponseCode::NoError => Ok(answer),
        ResponseCode::NXDomain => Err(LookupError::NoSuchDomain(name.to_string())),
        other => Err(LookupError::Answer(format!("error {other} for {name}"))),
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
    let name = Name::from_ascii(format!("{domain}.")).map_err(|source| LookupError::BadName {
        name: domain.clone(),
        source,
    })?;
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
        return Err(LookupError::NullMx(domain));
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
    let name = Name::from_ascii(format!("{host}.")).map_err(|source| LookupError::BadName {
        name: host.to_string(),
        source,
    })?;
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
        return Err(LookupError::NoAddress(host.to_string()));
    }
    Ok(addrs)
}
