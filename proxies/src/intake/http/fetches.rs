//! `/v1/fetches`: queue a download (`POST`), see its state (`GET`),
//! delete it (`DELETE`). A `202` for a new job is sent only once the job
//! record and its fetch item are fsynced.

use std::time::SystemTime;

use bytes::Bytes;
use dust_mixer::{from_wall_ms, wall_ms, ItemId};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::response::{
    error, full, json_of, moved, quota_exceeded, unauthorized, unavailable, Resp,
};
use super::schema::{FetchView, NewFetch, Queued};
use super::Api;
use crate::access::quota::{Counter, Counters};
use crate::intake::{IntakeError, Schedule};
use crate::item::job::{is_http_url, Job, JobState, LoadError};

/// Largest request body accepted (job requests are small JSON objects).
const MAX_BODY: usize = 16 * 1024;

/// Bound on reading a request body ([`MAX_BODY`] in this time is a minimum
/// rate of about 0.5 KiB/s): a body trickled slower holds no connection.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub(super) fn parse_id(s: &str) -> Option<ItemId> {
    s.parse().ok()
}

fn parse_time(v: Option<&str>, field: &str) -> Result<Option<u64>, Resp> {
    match v {
        None => Ok(None),
        Some(s) => humantime::parse_rfc3339_weak(s)
            .map(|t| Some(wall_ms(t)))
            .map_err(|e| {
                error(
                    StatusCode::BAD_REQUEST,
                    "bad_time",
                    &format!("{field}: {e}"),
                )
            }),
    }
}

/// A checked `POST /v1/fetches` body: the URL, `not_before` and `deadline`
/// (ms since the epoch), or the 400 response that says what is wrong.
pub(super) fn new_fetch(body: &[u8]) -> Result<(http::Uri, Option<u64>, Option<u64>), Resp> {
    let new: NewFetch = serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_json", &e.to_string()))?;
    let url = match http::Uri::try_from(new.url.as_str()) {
        Ok(u) if is_http_url(&new.url) => u,
        _ => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "bad_url",
                "url must be an absolute http or https URL",
            ))
        }
    };
    let not_before_ms = parse_time(new.not_before.as_deref(), "not_before")?;
    let deadline_ms = parse_time(new.deadline.as_deref(), "deadline")?;
    Ok((url, not_before_ms, deadline_ms))
}

impl<S: Schedule> Api<S> {
    pub(super) fn load(&self, user: &str, id: &str) -> Result<(ItemId, Job), Resp> {
        let not_found = || error(StatusCode::NOT_FOUND, "no_such_fetch", "no such fetch");
        let id = parse_id(id).ok_or_else(not_found)?;
        let job = match Job::load(&self.store, &id) {
            Ok(job) => job.ok_or_else(not_found)?,
            Err(LoadError::Storage(e)) => return Err(unavailable(&e)),
            Err(LoadError::Unreadable) => {
                return Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "corrupt",
                    "unreadable job",
                ))
            }
        };
        // Another user's job does not exist for this user.
        if job.user != user {
            return Err(not_found());
        }
        Ok((id, job))
    }

    pub(super) async fn create(
        &self,
        user: &str,
        req: Request<Incoming>,
        holder: Option<&crate::access::accounts::Holder>,
    ) -> Resp {
        let read = Limited::new(req.into_body(), MAX_BODY).collect();
        let body = match tokio::time::timeout(BODY_TIMEOUT, read).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "request body too large",
                )
            }
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "the request body did not arrive in time",
                )
            }
        };
        let (url, not_before_ms, deadline_ms) = match new_fetch(&body) {
            Ok(v) => v,
            Err(r) => return r,
        };
        if let Err(e) = self.store.check_room(MAX_BODY as u64) {
            tracing::warn!(error = %e, "new fetch job refused: disk space below the reserve");
            let mut r = error(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                "the mote's disk is nearly full; try again later",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            return r;
        }
        // Counted before the job is stored (durable with its fsync below),
        // taken back if it is refused.
        let charged = match self
            .accounts
            .as_ref()
            .map(|a| a.charge(user, Counters::one(Counter::Fetches, 1)))
        {
            None => None,
            Some(Ok(Ok(c))) => c,
            Some(Ok(Err(over))) => return quota_exceeded(&over),
            Some(Err(e)) => return unavailable(&e),
        };
        let refund = || {
            if let Some(a) = &self.accounts {
                a.refund(charged);
            }
        };
        // Nothing more may be downloaded today: say so now.
        if let Some(a) = &self.accounts {
            if a.room(user, Counter::FetchBytes).is_ok_and(|r| r == 0) {
                refund();
                return quota_exceeded(&a.exceeded(Counter::FetchBytes));
            }
        }
        let id = ItemId(rand::random());
        let job = Job::new(
            url.to_string(),
            user.to_string(),
            SystemTime::now(),
            not_before_ms,
            deadline_ms,
        );
        let refused = || {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage",
                "could not store the job; try again later",
            )
        };
        if let Err(e) = self.store.put_job(&id, &job.encode()) {
            tracing::error!(error = %e, "storing a fetch job failed");
            refund();
            return refused();
        }
        // 202 only once the job and its fetch item are on disk (the
        // admission's fsync covers the job record written before it).
        match self
            .schedule
            .schedule(id, not_before_ms.map(from_wall_ms))
            .await
        {
            Ok(()) => {}
            Err(IntakeError::Expiring { retry_after_s }) => {
                let _ = self.store.delete_job(&id).await;
                refund();
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "expiring",
                    "this mote ends too soon to fetch anything new; use another mote",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
                return r;
            }
            Err(e) => {
                tracing::error!(error = %e, "scheduling a fetch job failed");
                let _ = self.store.delete_job(&id).await;
                refund();
                let mut r = refused();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
                return r;
            }
        }
        // The account ended while the job was stored: its end may have
        // looked for its jobs before this one was there. (A new card is
        // not an end.)
        if holder.is_some_and(|h| !h.same_account()) {
            if let Err(e) = self.store.delete_job(&id).await {
                tracing::warn!(error = %e, "could not delete the job of an account that ended");
            }
            refund();
            return unauthorized("this account has ended");
        }
        json_of(
            StatusCode::ACCEPTED,
            &Queued {
                id: id.to_string(),
                state: JobState::Queued,
            },
        )
    }

    pub(super) fn show(&self, user: &str, id: &str) -> Resp {
        let (id, job) = match self.load(user, id) {
            Ok(j) => j,
            Err(r) => return r,
        };
        if let Some(to) = &job.moved_to {
            return moved(to);
        }
        let stored = match self.store.content_len(&id) {
            Ok(n) => n,
            Err(e) => return unavailable(&e),
        };
        json_of(
            StatusCode::OK,
            &FetchView {
                id: id.to_string(),
                url: job.url,
                state: job.state,
                reason: job.reason,
                bytes_stored: stored,
                total: job.total,
                expected_ready_ms: job.expected_ready_ms,
            },
        )
    }

    pub(super) async fn delete(&self, user: &str, id: &str) -> Resp {
        let (id, _) = match self.load(user, id) {
            Ok(j) => j,
            Err(r) => return r,
        };
        // 204 once the removal is on disk (and the content file gone).
        if let Err(e) = self.store.delete_job(&id).await {
            return unavailable(&e);
        }
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ids_parse_only_as_32_hex_digits() {
        let id = ItemId([0xab; 16]);
        assert_eq!(parse_id(&id.to_string()), Some(id));
        assert_eq!(parse_id("zz"), None);
        assert_eq!(parse_id(&"g".repeat(32)), None);
    }
}
