//! The API's answers: JSON errors (`{"error": CODE, "message": …}`) and the
//! few responses with headers of their own, shared by every route and by
//! the peer link.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use serde_json::Value;

use super::schema::ApiError;

use crate::access::quota::{Counter, Exceeded};

/// Response bodies: small ones in memory, content streamed from the store.
pub(super) type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// A response of the API.
pub(super) type Resp = Response<Body>;

/// A minimal answer for a connection that found no slot (hyper is not
/// involved: nothing of the request has been read).
pub(super) const NO_SLOT: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n\
Content-Type: application/json\r\nContent-Length: 67\r\nConnection: close\r\n\r\n\
{\"error\":\"busy\",\"message\":\"too many connections; try again later\"}\n";

pub(super) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// `v` as a JSON response (its keys in order, as `serde_json` writes a
/// value's).
pub(super) fn json_of(status: StatusCode, v: &impl Serialize) -> Resp {
    json_response(status, &serde_json::to_value(v).unwrap_or_default())
}

pub(super) fn json_response(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A refusal ([`ApiError`]).
pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Resp {
    json_of(status, &ApiError::new(code, message))
}

/// A job handed to the successor mote (hop at drain): `308` to it, the
/// same id and the same token there; the JSON says so for clients that do
/// not follow redirects (curl sends no `Authorization` to another host).
pub(super) fn moved(to: &str) -> Resp {
    let moved = ApiError::new(
        "moved",
        "this download moved to the successor mote; same id and token there",
    );
    let mut r = json_of(StatusCode::PERMANENT_REDIRECT, &moved.moved_to(to));
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// `404` for a path the API does not have.
pub(super) fn not_found() -> Resp {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// `401` asking for a bearer token.
pub(super) fn unauthorized(message: &str) -> Resp {
    let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// `503` for a storage failure (the client may try again).
pub(super) fn unavailable(e: &dyn std::fmt::Display) -> Resp {
    error(StatusCode::SERVICE_UNAVAILABLE, "storage", &e.to_string())
}

/// `429` for a daily quota, with `Retry-After` until it is reset.
pub(super) fn quota_exceeded(over: &Exceeded) -> Resp {
    let what = if over.which == Counter::Fetches {
        "downloads"
    } else {
        "downloaded bytes"
    };
    let message = format!("this account's daily quota of {what} is used up");
    let refusal = ApiError::new("quota", &message).resets_at(over.resets());
    retry_after(
        json_of(StatusCode::TOO_MANY_REQUESTS, &refusal),
        over.retry_after_secs(),
    )
}

/// The token of an `Authorization: Bearer …` header (users and peers).
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// `r` with `Retry-After: seconds`.
pub(super) fn retry_after(mut r: Resp, seconds: u64) -> Resp {
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn the_no_slot_answer_is_a_whole_response() {
        let text = std::str::from_utf8(super::NO_SLOT).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}
