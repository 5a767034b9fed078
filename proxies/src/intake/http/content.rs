//! `GET`/`HEAD /v1/fetches/{id}/content`: a job's stored content, whole or
//! by `Range` (RFC 9110 §14), conditional (`If-None-Match`,
//! `If-Modified-Since`, `If-Range`), streamed from the store.

use std::sync::Arc;

use bytes::Bytes;
use dust_mixer::{from_wall_ms, wall_ms, ItemId, Store};
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;

use super::response::{error, full, moved, unavailable, Body, Resp};
use super::Api;
use crate::intake::Schedule;
use crate::item::job::{Job, JobState};

/// Largest multi-range response, which is built in memory (single ranges
/// and whole files are streamed): the sum of its ranges. Beyond it: 416
/// (overlapping ranges would otherwise multiply one file many times over).
const MAX_RESPONSE: u64 = 64 << 20;

/// Most ranges in one multi-range request (each is a store read); beyond
/// it: 416.
const MAX_RANGES: usize = 64;

/// Bytes `start..end` of a job's content as a stream of pieces of at most
/// [`STREAM_PIECE`] bytes. A task reads (and opens) the pieces on the
/// blocking pool at most [`READ_AHEAD`] pieces ahead of the client, so
/// reading the next piece overlaps sending this one, and memory stays flat
/// for any size. The task stops when the client goes away.
fn stream_content(store: Arc<Store>, id: ItemId, start: u64, end: u64) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        let mut pos = start;
        while pos < end {
            let to = end.min(pos + STREAM_PIECE);
            let store = Arc::clone(&store);
            let read = tokio::task::spawn_blocking(move || store.read_content(&id, pos, to)).await;
            let piece = match read {
                Ok(Ok(Some(b))) => Ok(hyper::body::Frame::data(Bytes::from(b))),
                Ok(Ok(None)) => Err(std::io::Error::other("content missing")),
                Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            let failed = piece.is_err();
            if tx.send(piece).await.is_err() || failed {
                return; // the client went away, or the response ends here
            }
            pos = to;
        }
    });
    let pieces = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    });
    http_body_util::StreamBody::new(pieces).boxed_unsync()
}

/// Pieces read ahead of a client (see [`stream_content`]).
const READ_AHEAD: usize = 2;

/// Size of one piece of a streamed response.
const STREAM_PIECE: u64 = 1 << 20;

/// Whether a conditional GET/HEAD is answered `304`: `If-None-Match`
/// naming `etag` (or `*`), or, without it, `If-Modified-Since` at or after
/// the content's completion (`ready_ms`).
pub(super) fn not_modified(headers: &HeaderMap, etag: &str, ready_ms: Option<u64>) -> bool {
    let get = |h| headers.get(h).and_then(|v: &HeaderValue| v.to_str().ok());
    if let Some(inm) = get(header::IF_NONE_MATCH) {
        return inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag);
    }
    match (
        get(header::IF_MODIFIED_SINCE).map(httpdate::parse_http_date),
        ready_ms,
    ) {
        (Some(Ok(since)), Some(ready)) => wall_ms(since) / 1000 >= ready / 1000,
        _ => false,
    }
}

/// One byte range, inclusive of `start`, exclusive of `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ByteRange {
    pub(super) start: u64,
    pub(super) end: u64,
}

/// Parse a `Range` header against a representation of `len` bytes.
/// `None`: no usable Range (serve everything); `Some(vec![])`: none of the
/// ranges is satisfiable (416).
pub(super) fn parse_ranges(h: &str, len: u64) -> Option<Vec<ByteRange>> {
    let specs = h.trim().strip_prefix("bytes=")?;
    let mut out = Vec::new();
    for spec in specs.split(',') {
        let spec = spec.trim();
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        let r = if a.is_empty() {
            let n: u64 = b.parse().ok()?;
            // A suffix of nothing, or of an empty representation, selects
            // no byte (unsatisfiable; found by `cargo fuzz`: an empty range
            // 0..0 reached the response builder).
            if n == 0 || len == 0 {
                continue;
            }
            ByteRange {
                start: len.saturating_sub(n),
                end: len,
            }
        } else {
            let start: u64 = a.parse().ok()?;
            let last: u64 = if b.is_empty() {
                u64::MAX
            } else {
                b.parse().ok()?
            };
            if last < start {
                return None; // syntactically invalid: ignore the header
            }
            if start >= len {
                continue;
            }
            ByteRange {
                start,
                end: last.saturating_add(1).min(len),
            }
        };
        out.push(r);
    }
    Some(out)
}

/// One job's stored content as the answers about it describe it.
struct Representation<'a> {
    id: ItemId,
    job: &'a Job,
    /// Its length.
    total: u64,
    /// Whole and final (a ready job's content never changes under its
    /// ETag).
    ready: bool,
    etag: String,
    /// `HEAD`: the headers without the body.
    head: bool,
}

impl Representation<'_> {
    /// What every answer about this content says: it can be resumed, how
    /// to tell versions apart, what it is (the origin's type, not to be
    /// second-guessed), its name, and that no shared cache may keep it.
    fn describe(&self, h: &mut HeaderMap) {
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Ok(v) = HeaderValue::from_str(&self.etag) {
            h.insert(header::ETAG, v);
        }
        if let Some(v) = self
            .job
            .ready_ms
            .map(|ms| httpdate::fmt_http_date(from_wall_ms(ms)))
            .and_then(|d| HeaderValue::from_str(&d).ok())
        {
            h.insert(header::LAST_MODIFIED, v);
        }
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        // Fetched content is someone else's, served on the API's own
        // origin: a page must not run scripts there (they could use the
        // API as the reader, with the browser's stored token), and other
        // sites must not embed it.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        );
        h.insert(
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("same-origin"),
        );
        let disposition = format!("inline; filename=\"{}\"", self.job.file_name());
        if let Ok(v) = HeaderValue::from_str(&disposition) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
    }

    /// The origin's media type (or `application/octet-stream`).
    fn media_type(&self) -> &str {
        self.job
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream")
    }

    /// An answer with `body` of `len` bytes (none for `HEAD`), described.
    fn answer(&self, status: StatusCode, body: Body, len: u64) -> Resp {
        let mut r = Response::new(if self.head { full(Bytes::new()) } else { body });
        *r.status_mut() = status;
        let h = r.headers_mut();
        self.describe(h);
        let media_type = HeaderValue::from_str(self.media_type())
            .unwrap_or(HeaderValue::from_static("application/octet-stream"));
        h.insert(header::CONTENT_TYPE, media_type);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        r
    }

    /// `304` (RFC 9110 13.2.2).
    fn not_modified(&self) -> Resp {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        self.describe(r.headers_mut());
        r
    }
}

/// `416` when no range overlaps the content.
fn unsatisfiable(total: u64) -> Resp {
    let mut resp = error(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "range_not_satisfiable",
        "no requested range overlaps the content",
    );
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
        resp.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    resp
}

impl<S: Schedule> Api<S> {
    pub(super) fn content(&self, user: &str, id_s: &str, headers: &HeaderMap, head: bool) -> Resp {
        let (id, job) = match self.load(user, id_s) {
            Ok(j) => j,
            Err(r) => return r,
        };
        if let Some(to) = &job.moved_to {
            return moved(&format!("{to}/content"));
        }
        let Some(total) = job.total else {
            return error(
                StatusCode::CONFLICT,
                "not_ready",
                "no content is stored yet",
            );
        };
        let rep = Representation {
            id,
            total,
            ready: job.state == JobState::Ready,
            etag: format!("\"{}-{total}\"", &id_s[..16.min(id_s.len())]),
            job: &job,
            head,
        };
        if rep.ready && not_modified(headers, &rep.etag, job.ready_ms) {
            return rep.not_modified();
        }
        // If-Range with anything but our current ETag means "send it all".
        let header = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let if_range_ok = header(header::IF_RANGE).is_none_or(|v| v == rep.etag);
        let ranges = match header(header::RANGE) {
            Some(h) if if_range_ok => parse_ranges(h, total),
            _ => None,
        };
        match ranges {
            Some(r) if r.is_empty() => unsatisfiable(total),
            Some(r) if r.len() == 1 => self.one_range(&rep, r[0]),
            Some(r) => self.ranges(&rep, &r),
            None if !rep.ready => error(
                StatusCode::CONFLICT,
                "not_ready",
                "the download is not complete yet; a Range that is already stored can be fetched",
            ),
            None => {
                let body = stream_content(Arc::clone(&self.store), id, 0, total);
                rep.answer(StatusCode::OK, body, total)
            }
        }
    }

    /// `206` with one range, streamed; `409` if it is not all stored yet.
    fn one_range(&self, rep: &Representation<'_>, range: ByteRange) -> Resp {
        let ByteRange { start, end } = range;
        // A ready job has everything.
        if !rep.ready {
            match self.store.content_stored(&rep.id, start, end) {
                Ok(true) => {}
                Ok(false) => {
                    return error(
                        StatusCode::CONFLICT,
                        "not_ready",
                        "that range is not stored yet",
                    )
                }
                Err(e) => return unavailable(&e),
            }
        }
        let body = stream_content(Arc::clone(&self.store), rep.id, start, end);
        let mut resp = rep.answer(StatusCode::PARTIAL_CONTENT, body, end - start);
        let range = format!("bytes {start}-{}/{}", end - 1, rep.total);
        if let Ok(v) = HeaderValue::from_str(&range) {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        resp
    }

    /// `206` with several ranges, as `multipart/byteranges`.
    fn ranges(&self, rep: &Representation<'_>, ranges: &[ByteRange]) -> Resp {
        let boundary = format!("dustmote-{:016x}", rand::random::<u64>());
        let body = match self.multipart(rep.id, rep.total, ranges, &boundary, rep.media_type()) {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let len = body.len() as u64;
        let mut resp = rep.answer(StatusCode::PARTIAL_CONTENT, full(body), len);
        if let Ok(v) = HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}"))
        {
            resp.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        resp
    }

    /// The body of a `multipart/byteranges` answer (built in memory: at
    /// most [`MAX_RANGES`] parts of at most [`MAX_RESPONSE`] bytes in all).
    fn multipart(
        &self,
        id: ItemId,
        total: u64,
        ranges: &[ByteRange],
        boundary: &str,
        part_type: &str,
    ) -> Result<Vec<u8>, Resp> {
        let sum: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        if ranges.len() > MAX_RANGES || sum > MAX_RESPONSE {
            return Err(error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "too_large",
                "ask for fewer or smaller ranges",
            ));
        }
        let mut body = Vec::new();
        for &ByteRange { start, end } in ranges {
            let part = self
                .store
                .read_content(&id, start, end)
                .map_err(|e| unavailable(&e))?
                .ok_or_else(|| {
                    error(
                        StatusCode::CONFLICT,
                        "not_ready",
                        "a requested range is not stored yet",
                    )
                })?;
            body.extend_from_slice(
                format!(
                    "\r\n--{boundary}\r\nContent-Type: {part_type}\r\nContent-Range: bytes {start}-{}/{total}\r\n\r\n",
                    end - 1
                )
                .as_bytes(),
            );
            body.extend_from_slice(&part);
        }
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        let r = |a, b| ByteRange { start: a, end: b };
        assert_eq!(parse_ranges("bytes=0-99", 1000), Some(vec![r(0, 100)]));
        assert_eq!(parse_ranges("bytes=900-", 1000), Some(vec![r(900, 1000)]));
        assert_eq!(parse_ranges("bytes=-100", 1000), Some(vec![r(900, 1000)]));
        assert_eq!(parse_ranges("bytes=-5000", 1000), Some(vec![r(0, 1000)]));
        assert_eq!(
            parse_ranges("bytes=990-2000", 1000),
            Some(vec![r(990, 1000)])
        );
        assert_eq!(
            parse_ranges("bytes=0-0, 5-9", 1000),
            Some(vec![r(0, 1), r(5, 10)])
        );
        assert_eq!(
            parse_ranges("bytes=1000-", 1000),
            Some(vec![]),
            "unsatisfiable"
        );
        assert_eq!(parse_ranges("bytes=5-1", 1000), None, "invalid: ignored");
        assert_eq!(parse_ranges("items=0-1", 1000), None);
        assert_eq!(parse_ranges("bytes=x-1", 1000), None);
        assert_eq!(parse_ranges("bytes=0-", 0), Some(vec![]));
        // Found by cargo fuzz: a suffix of an empty representation.
        assert_eq!(parse_ranges("bytes=0-0,-89,-9", 0), Some(vec![]));
    }

    proptest::proptest! {
        /// Any Range header, against any length: no panic, and every range
        /// returned lies inside the content.
        #[test]
        fn any_range_header_gives_ranges_inside_the_content(
            h in "(bytes=)?[0-9 ,=-]{0,40}",
            len in proptest::prop_oneof![proptest::strategy::Just(0u64), 0u64..10_000],
        ) {
            if let Some(ranges) = parse_ranges(&h, len) {
                for r in ranges {
                    proptest::prop_assert!(r.start < r.end && r.end <= len, "{h:?} {len}: {r:?}");
                }
            }
        }
    }
}
