//! The stored form of a mail item and the header sanitizer.
//!
//! A message is sanitized once, at admission: its header is rebuilt from an
//! allowlist and gets a fresh random Message-ID, and the body is copied byte
//! for byte. The `Date:` field is added only when the message is sent (see
//! [`with_date`]): a submit-time Date would reveal how long the mote held it.

use std::time::{SystemTime, UNIX_EPOCH};

use mail_parser::MessageParser;
use rand::Rng;

/// The domain of generated Message-IDs: the same on every mote, so it says
/// nothing about which mote (or machine) a message passed.
pub const MESSAGE_ID_DOMAIN: &str = "dustmote.invalid";

/// Header fields kept when `keep_threading` is off (compared ignoring case);
/// every `Content-*` field is kept as well.
const ALLOWED: &[&str] = &["from", "to", "cc", "subject", "reply-to", "mime-version"];
/// Kept only with `keep_threading`: they link a reply to its thread.
const THREADING: &[&str] = &["in-reply-to", "references"];

/// Format tag of [`StoredMail::encode`].
const STORED_MAIL_V1: u8 = 1;

/// A message as it waits in the queue: envelope plus sanitized message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMail {
    /// Envelope sender (may be empty: the null reverse-path `<>`).
    pub from: String,
    /// Envelope recipients, including Bcc recipients.
    pub rcpts: Vec<String>,
    /// Sanitized header, empty line, body; CRLF line endings; no Date field.
    pub message: Vec<u8>,
}

/// The stored bytes could not be decoded (a bug or a corrupt record).
#[derive(Debug, thiserror::Error)]
#[error("stored mail record is malformed")]
pub struct DecodeError;

impl StoredMail {
    /// Serialize: tag, u16-length-prefixed sender, u16 count of u16-prefixed
    /// recipients, then the message bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.message.len() + 64);
        out.push(STORED_MAIL_V1);
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
        if tag != STORED_MAIL_V1 {
            return Err(DecodeError);
        }
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

/// Why a message was refused at sanitizing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SanitizeError {
    /// No header could be parsed at all.
    #[error("the message has no parseable header")]
    NoHeader,
}

/// Sanitizer settings (`[smtp] keep_threading_headers`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SanitizeOptions {
    /// Keep In-Reply-To and References.
    pub keep_threading: bool,
}

/// Rebuild `raw`'s header from the allowlist, add a fresh Message-ID, and
/// append the body unchanged. `raw` must use CRLF line endings (the SMTP
/// server normalizes them).
pub fn sanitize<G: Rng + ?Sized>(
    raw: &[u8],
    opts: SanitizeOptions,
    rng: &mut G,
) -> Result<Vec<u8>, SanitizeError> {
    let parsed = MessageParser::new()
        .parse(raw)
        .ok_or(SanitizeError::NoHeader)?;
    let body_start = (parsed.root_part().offset_body as usize).min(raw.len());
    let mut out = Vec::with_capacity(raw.len() + 64);
    for h in parsed.headers() {
        let name = h.name.as_str();
        let keep = ALLOWED.iter().any(|a| name.eq_ignore_ascii_case(a))
            || (name.len() > 8 && name[..8].eq_ignore_ascii_case("content-"))
            || (opts.keep_threading && THREADING.iter().any(|a| name.eq_ignore_ascii_case(a)));
        if !keep {
            continue;
        }
        let (start, end) = (
            h.offset_field as usize,
            (h.offset_end as usize).min(body_start),
        );
        if start >= end {
            continue;
        }
        let field = &raw[start..end];
        out.extend_from_slice(field);
        if !field.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    let id: [u8; 16] = rng.random();
    out.extend_from_slice(b"Message-ID: <");
    for b in id {
        out.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    out.extend_from_slice(b"@");
    out.extend_from_slice(MESSAGE_ID_DOMAIN.as_bytes());
    out.extend_from_slice(b">\r\n\r\n");
    out.extend_from_slice(body_of(raw, body_start));
    Ok(out)
}

/// The body: everything after the empty line that ends the header. The
/// parser's `offset_body` points just past that line.
fn body_of(raw: &[u8], body_start: usize) -> &[u8] {
    &raw[body_start..]
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

    #[test]
    fn stored_mail_round_trips_and_rejects_garbage() {
        let m = StoredMail {
            from: String::new(),
            rcpts: vec!["a@b".into(), "é@x".into()],
            message: b"Subject: x\r\n\r\nbody".to_vec(),
        };
        assert_eq!(StoredMail::decode(&m.encode()).expect("decode"), m);
        assert!(StoredMail::decode(&[]).is_err());
        assert!(StoredMail::decode(&[1, 0, 9, b'a']).is_err());
        assert!(StoredMail::decode(&[2]).is_err());
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
