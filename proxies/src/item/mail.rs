//! The stored form of a mail item and the header sanitizer.
//!
//! A message is sanitized once, at admission: its header is rebuilt from an
//! allowlist and gets a fresh random Message-ID, and the body is copied byte
//! for byte. The `Date:` field is added only when the message is sent (see
//! [`with_date`]): a submit-time Date would reveal how long the mote held it.

use std::time::{SystemTime, UNIX_EPOCH};

use mail_parser::{MessageParser, MimeHeaders};
use rand::Rng;

/// The domain of generated Message-IDs: the same on every mote, so it says
/// nothing about which mote (or machine) a message passed.
pub const MESSAGE_ID_DOMAIN: &str = "dustmote.invalid";

/// Header fields kept when `keep_threading` is off (compared ignoring case).
const ALLOWED: &[&str] = &["from", "to", "cc", "subject", "reply-to", "mime-version"];
/// The `Content-*` fields kept: what a reader needs to decode and show the
/// body. Others (`Content-ID`, `Content-Language`, invented ones) are
/// dropped: they can name the sender's machine or locale.
const CONTENT: &[&str] = &[
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
];
/// Kept only with `keep_threading`: they link a reply to its thread.
const THREADING: &[&str] = &["in-reply-to", "references"];

/// Format tag of a [`StoredMail`] without flags (still read).
const STORED_MAIL_V1: u8 = 1;
/// Format tag of [`StoredMail::encode`]: v1 with a flags byte after it.
const STORED_MAIL_V2: u8 = 2;
/// Flag: the client sent `MAIL FROM:<...> SMTPUTF8`.
const FLAG_SMTPUTF8: u8 = 1;

/// A message as it waits in the queue: envelope plus sanitized message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMail {
    /// Envelope sender (may be empty: the null reverse-path `<>`).
    pub from: String,
    /// Envelope recipients, including Bcc recipients.
    pub rcpts: Vec<String>,
    /// Sanitized header, empty line, body; CRLF line endings; no Date field.
    pub message: Vec<u8>,
    /// Submitted with `SMTPUTF8` (RFC 6531): internationalized addresses or
    /// UTF-8 header fields, to be sent on only to a next hop that supports
    /// it.
    pub smtputf8: bool,
}

/// The stored bytes could not be decoded (a bug or a corrupt record).
#[derive(Debug, thiserror::Error)]
#[error("stored mail record is malformed")]
pub struct DecodeError;

impl StoredMail {
    /// Serialize: tag, flags, u16-length-prefixed sender, u16 count of
    /// u16-prefixed recipients, then the message bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.message.len() + 64);
        out.push(STORED_MAIL_V2);
        out.push(if self.smtputf8 { FLAG_SMTPUTF8 } else { 0 });
        put_str(&mut out, &self.from);
        out.extend_from_slice(&(self.rcpts.len() as u16).to_be_bytes());
        for r in &self.rcpts {
            put_str(&mut out, r);
        }
        out.extend_from_slice(&self.message);
        out
    }

    /// Inverse of [`StoredMail::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (&tag, mut rest) = bytes.split_first().ok_or(DecodeError)?;
        let flags = match tag {
            STORED_MAIL_V1 => 0,
            STORED_MAIL_V2 => take(&mut rest, 1)?[0],
            _ => return Err(DecodeError),
        };
        let from = take_str(&mut rest)?;
        let n = u16::from_be_bytes(take(&mut rest, 2)?.try_into().map_err(|_| DecodeError)?);
        let mut rcpts = Vec::with_capacity(n as usize);
        for _ in 0..n {
            rcpts.push(take_str(&mut rest)?);
        }
        Ok(Self {
            from,
            rcpts,
            message: rest.to_vec(),
            smtputf8: flags & FLAG_SMTPUTF8 != 0,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Addresses are limited to far less than 64 KiB by the SMTP line limit.
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if rest.len() < n {
        return Err(DecodeError);
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn take_str(rest: &mut &[u8]) -> Result<String, DecodeError> {
    let len = u16::from_be_bytes(take(rest, 2)?.try_into().map_err(|_| DecodeError)?);
    let b = take(rest, len as usize)?;
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError)
}

/// What makes two submissions the same message for replay suppression: a
/// BLAKE2b-256 digest of the envelope and the message as received (before
/// sanitizing, which adds a random Message-ID). The store keeps only a
/// keyed digest of this.
pub fn replay_digest(from: &str, rcpts: &[String], raw: &[u8]) -> [u8; 32] {
    use blake2::digest::consts::U32;
    use blake2::{Blake2b, Digest};
    let mut h = Blake2b::<U32>::new();
    h.update(b"dustmote replay v1\0");
    h.update(from.as_bytes());
    for r in rcpts {
        h.update(b"\0");
        h.update(r.as_bytes());
    }
    h.update(b"\0\0");
    h.update(raw);
    h.finalize().into()
}

/// Why a message was refused at sanitizing (SMTP `550 5.6.0`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SanitizeError {
    /// A header field's name is not printable US-ASCII (RFC 5322 2.2).
    #[error("a header field name is not printable US-ASCII")]
    BadFieldName,
    /// NUL, or a CR that does not end a line (RFC 5321 2.3.8; also not
    /// allowed in 8BITMIME data): a bare CR inside a header could smuggle a
    /// field past the allowlist at a next hop that ends lines at CR.
    #[error("the message contains NUL or a bare CR")]
    BareCrOrNul,
}

/// Sanitizer settings (`[smtp] keep_threading_headers`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SanitizeOptions {
    /// Keep In-Reply-To and References.
    pub keep_threading: bool,
    /// Keep a Message-ID that this sanitizer made (`<32 hex
    /// digits@dustmote.invalid>`) instead of making a new one: for mail a
    /// mote before this one sanitized (a cascade), whose id is set once at
    /// the entry and must stay the same to the exit (the next hop tells a
    /// resend from a new message by it).
    pub keep_own_message_id: bool,
}

/// How deep nested multiparts get their boundaries renewed; deeper ones
/// keep theirs (a message nested this deep is crafted, not written).
const MAX_MIME_DEPTH: usize = 16;

/// One header field: its name and its bytes (continuation lines and the
/// final CRLF included) at `start..end` of the entity.
struct Field<'a> {
    name: &'a [u8],
    start: usize,
    end: usize,
}

/// An entity's header fields and where its body starts.
struct Head<'a> {
    fields: Vec<Field<'a>>,
    body_start: usize,
}

/// Split an entity into header fields and body. The header ends at the
/// first empty line (which is not part of the body), or at the first line
/// that is neither a field nor a continuation (which is): a message with no
/// header at all is all body. A field whose name is not printable US-ASCII
/// is refused.
fn split_header(raw: &[u8]) -> Result<Head<'_>, SanitizeError> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    for lines in crlf_lines(raw) {
        let (pos, end) = (lines.start, lines.end);
        let line = &raw[lines];
        if line == b"\r\n" {
            return Ok(Head {
                fields,
                body_start: end,
            });
        }
        if matches!(line[0], b' ' | b'\t') {
            match fields.last_mut() {
                Some(f) => {
                    f.end = end;
                    continue;
                }
                None => {
                    return Ok(Head {
                        fields,
                        body_start: pos,
                    })
                }
            }
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Ok(Head {
                fields,
                body_start: pos,
            });
        };
        let name = trim_wsp_end(&line[..colon]);
        if name.is_empty() || name.iter().any(|&b| b == b' ' || b == b'\t') {
            return Ok(Head {
                fields,
                body_start: pos,
            });
        }
        if !name.iter().all(|&b| (33..=126).contains(&b)) {
            return Err(SanitizeError::BadFieldName);
        }
        fields.push(Field {
            name,
            start: pos,
            end,
        });
    }
    Ok(Head {
        fields,
        body_start: raw.len(),
    })
}

/// The lines of `buf` as `start..end` ranges, each with its CRLF (the last
/// one may lack it).
fn crlf_lines(buf: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= buf.len() {
            return None;
        }
        let end = buf[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(buf.len(), |i| pos + i + 2);
        let line = pos..end;
        pos = end;
        Some(line)
    })
}

fn trim_wsp_end(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .rposition(|&c| c != b' ' && c != b'\t')
        .map_or(0, |i| i + 1);
    &b[..n]
}

/// Refuse NUL and bare CR anywhere in the message.
fn check_octets(raw: &[u8]) -> Result<(), SanitizeError> {
    let bare_cr = raw
        .iter()
        .enumerate()
        .any(|(i, &b)| b == 0 || (b == b'\r' && raw.get(i + 1) != Some(&b'\n')));
    if bare_cr {
        return Err(SanitizeError::BareCrOrNul);
    }
    Ok(())
}

/// Whether the top-level header keeps a field named `name`.
fn keep_field(name: &[u8], opts: SanitizeOptions) -> bool {
    let is = |list: &[&str]| list.iter().any(|a| name.eq_ignore_ascii_case(a.as_bytes()));
    is(ALLOWED) || is(CONTENT) || (opts.keep_threading && is(THREADING))
}

/// Rebuild `raw`'s header from the allowlist, add a fresh Message-ID, and
/// give every multipart a fresh random boundary (the client's boundaries,
/// preambles and epilogues identify the client); everything else in the
/// body is copied byte for byte, including the headers of body parts and
/// attached `message/rfc822` messages, which are the user's content. `raw`
/// must use CRLF line endings (the SMTP server normalizes them).
pub fn sanitize<G: Rng + ?Sized>(
    raw: &[u8],
    opts: SanitizeOptions,
    rng: &mut G,
) -> Result<Vec<u8>, SanitizeError> {
    check_octets(raw)?;
    let head = split_header(raw)?;
    // The kept fields, a fresh Message-ID, the empty line, the body: one
    // copy of the message, and a second only for a multipart.
    let mut entity = Vec::with_capacity(raw.len() + 128);
    for f in head.fields.iter().filter(|f| keep_field(f.name, opts)) {
        entity.extend_from_slice(&raw[f.start..f.end]);
        if !entity.ends_with(b"\r\n") {
            entity.extend_from_slice(b"\r\n");
        }
    }
    let own = head
        .fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(b"message-id"))
        .map(|f| &raw[f.start..f.end])
        .filter(|f| opts.keep_own_message_id && is_own_message_id(f));
    match own {
        Some(field) => {
            entity.extend_from_slice(field);
            if !entity.ends_with(b"\r\n") {
                entity.extend_from_slice(b"\r\n");
            }
            entity.extend_from_slice(b"\r\n");
        }
        None => {
            let id: [u8; 16] = rng.random();
            entity.extend_from_slice(b"Message-ID: <");
            for b in id {
                entity.extend_from_slice(format!("{b:02x}").as_bytes());
            }
            entity.extend_from_slice(b"@");
            entity.extend_from_slice(MESSAGE_ID_DOMAIN.as_bytes());
            entity.extend_from_slice(b">\r\n\r\n");
        }
    }
    entity.extend_from_slice(&raw[head.body_start..]);
    Ok(renew_boundaries(&entity, rng, 0).unwrap_or(entity))
}

/// Whether a `Message-ID` field (name, value, CRLF) is one [`sanitize`]
/// makes: exactly `Message-ID: <32 lowercase hex digits@dustmote.invalid>`.
fn is_own_message_id(field: &[u8]) -> bool {
    let field = field.strip_suffix(b"\r\n").unwrap_or(field);
    let Some(value) = field.get(b"Message-ID: ".len()..) else {
        return false;
    };
    let Some(inner) = value.strip_prefix(b"<").and_then(|v| v.strip_suffix(b">")) else {
        return false;
    };
    let Some((id, domain)) = inner.split_at_checked(32) else {
        return false;
    };
    field[..b"Message-ID: ".len()].eq_ignore_ascii_case(b"Message-ID: ")
        && id.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && domain.strip_prefix(b"@") == Some(MESSAGE_ID_DOMAIN.as_bytes())
}

/// The entity (header, empty line, body) with its multipart boundary, and
/// those of every multipart inside it, replaced by fresh random ones, and
/// the preambles and epilogues dropped (MIME readers ignore them; clients
/// fill them with their own text). `None` (nothing to copy) for entities
/// that are not multipart, whose delimiters cannot be found or whose
/// header does not parse, and for `message/rfc822` parts (not multipart).
fn renew_boundaries<G: Rng + ?Sized>(entity: &[u8], rng: &mut G, depth: usize) -> Option<Vec<u8>> {
    if depth >= MAX_MIME_DEPTH {
        return None;
    }
    let head = split_header(entity).ok()?;
    let ct = head
        .fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(b"content-type"))?;
    let renewal = multipart_field(&entity[ct.start..ct.end], rng)?;
    let parts = split_parts(&entity[head.body_start..], renewal.old.as_bytes())?;
    let mut out = Vec::with_capacity(entity.len() + 64);
    for f in &head.fields {
        if std::ptr::eq(f, ct) {
            out.extend_from_slice(&renewal.field);
        } else {
            out.extend_from_slice(&entity[f.start..f.end]);
        }
    }
    // The empty line that ends the header.
    out.extend_from_slice(b"\r\n");
    let delimiter = format!("--{}", renewal.new);
    for (i, part) in parts.iter().enumerate() {
        // The CRLF before a delimiter belongs to the delimiter.
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(delimiter.as_bytes());
        out.extend_from_slice(b"\r\n");
        match renew_boundaries(part, rng, depth + 1) {
            Some(renewed) => out.extend_from_slice(&renewed),
            None => out.extend_from_slice(part),
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(delimiter.as_bytes());
    out.extend_from_slice(b"--\r\n");
    Some(out)
}

/// A multipart's Content-Type field rebuilt with a fresh boundary.
struct Renewal {
    /// The new field (CRLF included).
    field: Vec<u8>,
    /// The boundary the body uses now.
    old: String,
    /// The one it gets.
    new: String,
}

/// If `field` (a Content-Type field) names a multipart with a boundary:
/// the field rebuilt with a fresh random boundary, its other parameters
/// (`type`, `protocol`, `micalg`, ...) kept.
fn multipart_field<G: Rng + ?Sized>(field: &[u8], rng: &mut G) -> Option<Renewal> {
    let parsed = MessageParser::new().parse_headers(field)?;
    let ct = parsed.content_type()?;
    if !ct.ctype().eq_ignore_ascii_case("multipart") {
        return None;
    }
    let old = ct.attribute("boundary")?.to_string();
    let hex: [u8; 16] = rng.random();
    // "=_" cannot occur in base64 or quoted-printable text.
    let new: String = std::iter::once("=_".to_string())
        .chain(hex.iter().map(|b| format!("{b:02x}")))
        .collect();
    let mut out = format!(
        "Content-Type: multipart/{}",
        ct.subtype().unwrap_or("mixed")
    );
    for a in ct.attributes().unwrap_or_default() {
        let value = if a.name == "boundary" {
            &new
        } else {
            &*a.value
        };
        push_param(&mut out, &a.name, value);
    }
    out.push_str("\r\n");
    Some(Renewal {
        field: out.into_bytes(),
        old,
        new,
    })
}

/// `; name="value"`, or `; name*=utf-8''...` (RFC 2231) if the value is not
/// printable ASCII.
fn push_param(out: &mut String, name: &str, value: &str) {
    if value.bytes().all(|b| (32..=126).contains(&b)) {
        out.push_str(&format!("; {name}=\""));
        for c in value.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(&format!("; {name}*=utf-8''"));
        for b in value.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
}

/// The parts of a multipart body between its `--boundary` lines (without
/// the CRLF before each delimiter, which belongs to the delimiter); `None`
/// if there is no delimiter. A missing close delimiter ends the last part
/// at the end of the body.
fn split_parts<'a>(body: &'a [u8], boundary: &[u8]) -> Option<Vec<&'a [u8]>> {
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    for lines in crlf_lines(body) {
        let (pos, end) = (lines.start, lines.end);
        let line = &body[lines];
        let line = line.strip_suffix(b"\r\n").unwrap_or(line);
        let rest = line
            .strip_prefix(b"--")
            .and_then(|l| l.strip_prefix(boundary))
            .map(trim_wsp_end);
        if let Some(rest @ (b"" | b"--")) = rest {
            if let Some(s) = start {
                let part = &body[s..pos];
                parts.push(part.strip_suffix(b"\r\n").unwrap_or(part));
            }
            if rest == b"--" {
                return Some(parts);
            }
            start = Some(end);
        }
    }
    parts.push(&body[start?..]);
    Some(parts)
}

/// The message as sent: a `Date:` field for `now` (UTC) in front of the
/// stored message.
pub fn with_date(message: &[u8], now: SystemTime) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 40);
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(rfc5322_date(now).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(message);
    out
}

/// `now` as an RFC 5322 date-time in UTC, e.g. `Wed, 25 Nov 2026 21:20:05 +0000`:
/// the HTTP date form (RFC 9110's IMF-fixdate, the same fields) with the
/// numeric zone RFC 5322 prefers over the obsolete `GMT`.
pub fn rfc5322_date(now: SystemTime) -> String {
    let http = httpdate::fmt_http_date(now.max(UNIX_EPOCH));
    match http.strip_suffix(" GMT") {
        Some(date) => format!("{date} +0000"),
        None => http,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::time::Duration;

    const RAW: &[u8] = b"Received: from laptop.home (1.2.3.4)\r\n\
From: Alice <alice@example.org>\r\n\
To: bob@example.net\r\n\
Bcc: carol@example.com\r\n\
Subject: hello\r\n =?utf-8?q?folded?=\r\n\
Date: Mon, 1 Jan 2026 10:00:00 +0100\r\n\
Message-ID: <laptop-123@laptop.home>\r\n\
X-Mailer: Thunderbird 128\r\n\
User-Agent: Mozilla/5.0\r\n\
X-Originating-IP: [1.2.3.4]\r\n\
DKIM-Signature: v=1; a=rsa-sha256; d=example.org\r\n\
In-Reply-To: <parent@example.net>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
content-transfer-encoding: 8bit\r\n\
\r\n\
Body line 1\r\n\
From: not a header\r\n\
\r\n\
\xc3\xa9 tail without newline";

    fn header_and_body(m: &[u8]) -> (String, &[u8]) {
        let split = m
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("blank line");
        (
            String::from_utf8(m[..split + 2].to_vec()).expect("ascii"),
            &m[split + 4..],
        )
    }

    #[test]
    fn only_a_message_id_of_its_own_making_is_kept_when_asked() {
        let mut rng = rand::rng();
        let keep = SanitizeOptions {
            keep_own_message_id: true,
            ..SanitizeOptions::default()
        };
        let first = sanitize(
            b"Subject: x\r\nMessage-ID: <client@laptop>\r\n\r\nhi\r\n",
            keep,
            &mut rng,
        )
        .expect("sanitize");
        let id_of = |m: &[u8]| {
            String::from_utf8_lossy(m)
                .lines()
                .find(|l| l.starts_with("Message-ID: "))
                .map(str::to_string)
                .expect("an id")
        };
        let id = id_of(&first);
        assert!(!id.contains("client@laptop"), "{id}");
        // Sanitized again at the next mote: the same id.
        let again = sanitize(&first, keep, &mut rng).expect("sanitize");
        assert_eq!(id_of(&again), id);
        assert_eq!(
            String::from_utf8_lossy(&again)
                .matches("Message-ID:")
                .count(),
            1
        );
        // Not asked: a new one.
        let fresh = sanitize(&first, SanitizeOptions::default(), &mut rng).expect("sanitize");
        assert_ne!(id_of(&fresh), id);
        for not_own in [
            "Message-ID: <0123456789abcdef0123456789abcdeg@dustmote.invalid>",
            "Message-ID: <0123456789abcdef0123456789abcdef@example.org>",
            "Message-ID: <0123456789abcdef0123456789abcde@dustmote.invalid>",
            "Message-ID: <0123456789abcdef0123456789abcdef@dustmote.invalid> x",
        ] {
            assert!(
                !is_own_message_id(format!("{not_own}\r\n").as_bytes()),
                "{not_own}"
            );
        }
        assert!(is_own_message_id(
            b"Message-ID: <0123456789abcdef0123456789abcdef@dustmote.invalid>\r\n"
        ));
    }

    #[test]
    fn header_is_rebuilt_from_the_allowlist_and_the_body_is_untouched() {
        let mut rng = StdRng::seed_from_u64(1);
        let out = sanitize(RAW, SanitizeOptions::default(), &mut rng).expect("sanitize");
        let (header, body) = header_and_body(&out);
        assert_eq!(
            body,
            &RAW[RAW.windows(4).position(|w| w == b"\r\n\r\n").expect("x") + 4..]
        );
        for kept in [
            "From: Alice <alice@example.org>\r\n",
            "To: bob@example.net\r\n",
            "Subject: hello\r\n =?utf-8?q?folded?=\r\n",
            "MIME-Version: 1.0\r\n",
            "Content-Type: text/plain; charset=utf-8\r\n",
            "content-transfer-encoding: 8bit\r\n",
        ] {
            assert!(header.contains(kept), "{kept:?} missing from {header:?}");
        }
        let lower = header.to_ascii_lowercase();
        for gone in [
            "received:",
            "bcc:",
            "carol",
            "date:",
            "laptop",
            "x-mailer",
            "user-agent",
            "x-originating-ip",
            "dkim",
            "in-reply-to",
        ] {
            assert!(!lower.contains(gone), "{gone:?} survived in {header:?}");
        }
        let ids: Vec<&str> = header
            .lines()
            .filter(|l| l.starts_with("Message-ID: <"))
            .collect();
        assert_eq!(ids.len(), 1);
        assert!(
            ids[0].ends_with("@dustmote.invalid>")
                && ids[0].len() == "Message-ID: <>".len() + 32 + 17
        );
        // A second sanitizing of the same input gets a different Message-ID.
        let again = sanitize(RAW, SanitizeOptions::default(), &mut rng).expect("sanitize");
        assert_ne!(out, again);
    }

    #[test]
    fn threading_headers_are_kept_only_when_asked() {
        let mut rng = StdRng::seed_from_u64(2);
        let opts = SanitizeOptions {
            keep_threading: true,
            ..SanitizeOptions::default()
        };
        let out = sanitize(RAW, opts, &mut rng).expect("sanitize");
        assert!(header_and_body(&out)
            .0
            .contains("In-Reply-To: <parent@example.net>\r\n"));
    }

    #[test]
    fn a_message_without_a_body_gets_an_empty_body() {
        let mut rng = StdRng::seed_from_u64(3);
        let out = sanitize(b"Subject: x\r\n", SanitizeOptions::default(), &mut rng).expect("ok");
        assert!(out.starts_with(b"Subject: x\r\nMessage-ID: <"));
        assert!(out.ends_with(b"@dustmote.invalid>\r\n\r\n"));
    }

    fn clean(raw: &[u8]) -> Result<Vec<u8>, SanitizeError> {
        sanitize(
            raw,
            SanitizeOptions::default(),
            &mut StdRng::seed_from_u64(9),
        )
    }

    #[test]
    fn only_three_content_fields_pass() {
        let out = clean(
            b"Subject: s\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 7bit\r\n\
              Content-Disposition: inline\r\nContent-ID: <part1.ABC@laptop.home>\r\n\
              Content-Language: de-CH\r\nContent-X-Originating-IP: 192.0.2.7\r\n\
              Content-Description: x\r\n\r\nbody\r\n",
        )
        .expect("ok");
        let text = String::from_utf8(out).expect("ascii");
        for kept in [
            "Content-Type: text/plain\r\n",
            "Content-Transfer-Encoding: 7bit\r\n",
            "Content-Disposition: inline\r\n",
        ] {
            assert!(text.contains(kept), "{kept:?} missing: {text}");
        }
        for gone in ["laptop", "de-CH", "192.0.2.7", "Content-Description"] {
            assert!(!text.contains(gone), "{gone:?} passed: {text}");
        }
    }

    #[test]
    fn bare_cr_nul_and_bad_field_names_are_refused_without_a_panic() {
        assert_eq!(
            clean(b"Subject: a\rX-Injected: 1\r\n\r\nbody\r\n"),
            Err(SanitizeError::BareCrOrNul)
        );
        assert_eq!(
            clean(b"Subject: a\r\n\r\nbo\0dy\r\n"),
            Err(SanitizeError::BareCrOrNul)
        );
        assert_eq!(
            clean(b"Subject: a\r\n\r\nend\r"),
            Err(SanitizeError::BareCrOrNul)
        );
        for name in [&b"Subj\xc3\xa9ct"[..], b"Content-\xc3\xa9", b"X\x01Y"] {
            let mut raw = name.to_vec();
            raw.extend_from_slice(b": x\r\nSubject: y\r\n\r\nbody\r\n");
            assert_eq!(clean(&raw), Err(SanitizeError::BadFieldName), "{name:?}");
        }
        // A non-ASCII byte in a body line is content, not a field name.
        assert!(clean(b"Subject: y\r\n\r\nGr\xc3\xbc\xc3\x9fe: hallo\r\n").is_ok());
    }

    #[test]
    fn a_message_without_a_header_keeps_its_body() {
        for (raw, body) in [
            (
                &b"just text\r\nmore: text\r\n"[..],
                &b"just text\r\nmore: text\r\n"[..],
            ),
            (b"\r\nbody only\r\n", b"body only\r\n"),
            // A line that is not a field ends the header and starts the body.
            (
                b"Subject: s\r\nno colon line\r\nmore\r\n",
                b"no colon line\r\nmore\r\n",
            ),
        ] {
            let out = clean(raw).expect("ok");
            let (_, got) = header_and_body(&out);
            assert_eq!(got, body, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    /// A Thunderbird-like message: nested multiparts with the client's own
    /// boundaries, preamble and epilogue, and an attached message.
    const MULTIPART: &[u8] = b"From: a@example.org\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed;\r\n boundary=\"------------t8M0mVqk0XyZ\"\r\n\
\r\n\
This is a multi-part message in MIME format.\r\n\
--------------t8M0mVqk0XyZ\r\n\
Content-Type: multipart/alternative;\r\n boundary=\"------------alt7Q\"\r\n\
\r\n\
--------------alt7Q\r\n\
Content-Type: text/plain; charset=UTF-8\r\n\
\r\n\
plain text\r\n\
--------------alt7Q\r\n\
Content-Type: text/html; charset=UTF-8\r\n\
\r\n\
<p>html</p>\r\n\
--------------alt7Q--\r\n\
\r\n\
--------------t8M0mVqk0XyZ\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
Subject: inner\r\n\
Content-Type: multipart/mixed; boundary=\"inner-b\"\r\n\
\r\n\
--inner-b\r\n\
\r\n\
inner part\r\n\
--inner-b--\r\n\
\r\n\
--------------t8M0mVqk0XyZ--\r\n\
epilogue from the client\r\n";

    #[test]
    fn multipart_boundaries_are_renewed_at_every_level() {
        let out = clean(MULTIPART).expect("ok");
        let text = String::from_utf8(out).expect("ascii");
        for gone in ["t8M0mVqk0XyZ", "alt7Q", "multi-part message", "epilogue"] {
            assert!(!text.contains(gone), "{gone:?} survived:\n{text}");
        }
        // The attached message is content: its boundary stays.
        assert!(
            text.contains("--inner-b\r\n\r\ninner part\r\n--inner-b--"),
            "{text}"
        );
        // Two fresh boundaries, each declared once and used as delimiters.
        let declared: Vec<&str> = text
            .match_indices("boundary=\"=_")
            .map(|(i, _)| &text[i + 10..i + 10 + 34])
            .collect();
        assert_eq!(declared.len(), 2, "{text}");
        assert_ne!(declared[0], declared[1]);
        let (outer, inner) = (declared[0], declared[1]);
        assert_eq!(text.matches(&format!("--{outer}\r\n")).count(), 2, "{text}");
        assert_eq!(
            text.matches(&format!("--{outer}--\r\n")).count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches(&format!("--{inner}\r\n")).count(), 2, "{text}");
        assert_eq!(
            text.matches(&format!("--{inner}--\r\n")).count(),
            1,
            "{text}"
        );
        // Parts are byte for byte what they were.
        for part in [
            "Content-Type: text/plain; charset=UTF-8\r\n\r\nplain text\r\n--",
            "Content-Type: text/html; charset=UTF-8\r\n\r\n<p>html</p>\r\n--",
        ] {
            assert!(text.contains(part), "{part:?}:\n{text}");
        }
        // mail-parser reads the same structure from the result as from the
        // original.
        let before = MessageParser::new().parse(MULTIPART).expect("parses");
        let after = MessageParser::new().parse(text.as_bytes()).expect("parses");
        assert_eq!(after.body_text(0).as_deref(), Some("plain text"));
        assert_eq!(after.body_html(0).as_deref(), Some("<p>html</p>"));
        assert_eq!(after.body_text(0), before.body_text(0));
        assert_eq!(after.body_html(0), before.body_html(0));
        assert_eq!(after.attachment_count(), before.attachment_count());
        assert_eq!(after.attachment_count(), 1);
        assert_eq!(
            after.attachment(0).map(|a| a.contents()),
            before.attachment(0).map(|a| a.contents())
        );
    }

    #[test]
    fn a_multipart_without_its_delimiters_is_left_alone() {
        let raw = b"Content-Type: multipart/mixed; boundary=\"nowhere\"\r\n\r\nplain\r\n";
        let out = clean(raw).expect("ok");
        assert!(out.starts_with(b"Content-Type: multipart/mixed; boundary=\"nowhere\"\r\n"));
        assert!(out.ends_with(b"\r\n\r\nplain\r\n"));
    }

    proptest::proptest! {
        /// Any bytes: no panic; what is accepted has no NUL or bare CR, one
        /// Message-ID, and only allowlisted fields in its top-level header.
        #[test]
        fn any_message_is_sanitized_or_refused_without_a_panic(
            raw in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"\r\n:-= \t\0\"abcCDX;/".to_vec()),
                    proptest::num::u8::ANY,
                ],
                0..400,
            ),
            multipart in proptest::bool::ANY,
        ) {
            let mut input = Vec::new();
            if multipart {
                input.extend_from_slice(b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n");
            }
            input.extend_from_slice(&raw);
            let mut rng = StdRng::seed_from_u64(5);
            if let Ok(out) = sanitize(&input, SanitizeOptions::default(), &mut rng) {
                proptest::prop_assert!(check_octets(&out).is_ok());
                let head = split_header(&out).expect("own output parses");
                let names: Vec<String> = head
                    .fields
                    .iter()
                    .map(|f| String::from_utf8_lossy(f.name).to_ascii_lowercase())
                    .collect();
                proptest::prop_assert_eq!(names.iter().filter(|n| *n == "message-id").count(), 1);
                for n in &names {
                    proptest::prop_assert!(
                        n == "message-id" || keep_field(n.as_bytes(), SanitizeOptions::default()),
                        "{n} passed"
                    );
                }
            }
        }
    }

    #[test]
    fn stored_mail_round_trips_and_rejects_garbage() {
        let m = StoredMail {
            from: String::new(),
            rcpts: vec!["a@b".into(), "é@x".into()],
            message: b"Subject: x\r\n\r\nbody".to_vec(),
            smtputf8: true,
        };
        assert_eq!(StoredMail::decode(&m.encode()).expect("decode"), m);
        assert!(StoredMail::decode(&[]).is_err());
        assert!(StoredMail::decode(&[1, 0, 9, b'a']).is_err());
        assert!(StoredMail::decode(&[2]).is_err());
        assert!(StoredMail::decode(&[3, 0, 0, 0, 0]).is_err());
        // A record written before the flags byte existed still reads.
        let v1 = [&[1u8, 0, 1, b'a', 0, 1, 0, 1, b'b'][..], b"m"].concat();
        let old = StoredMail::decode(&v1).expect("v1");
        assert_eq!((old.from.as_str(), old.smtputf8), ("a", false));
    }

    #[test]
    fn dates_are_rfc5322_in_utc() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_987_205); // 2026-11-29 21:20:05
        assert_eq!(rfc5322_date(t), "Sun, 29 Nov 2026 21:20:05 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // leap day 2000
        assert_eq!(rfc5322_date(t), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert!(with_date(b"X: y\r\n\r\n", t)
            .starts_with(b"Date: Tue, 29 Feb 2000 00:00:00 +0000\r\nX: y"));
    }
}
