//! The receiving side of the link between motes (issue 12, part 1), with
//! the real binary and curl: `POST /v1/peer/items` admits a message from a
//! configured peer durably, once per (peer, item id) — across a kill -9 —
//! and the mote delivers it with a fresh delay; everything else gets a
//! clear 4xx with a JSON body, and peers and users are kept apart.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    header_names, json_of, metric, password_hash, retry_after, Mote, MoteConfig, Sink, PASSWORD,
};
use dust_proxies::item::mail::StoredMail;

/// (status, JSON body, headers) of a POST to the peer endpoint.
fn post(
    mote: &Mote,
    token: &str,
    id: &str,
    kind: &str,
    body: &[u8],
) -> (u16, serde_json::Value, String) {
    post_with(mote, token, id, kind, &[], body)
}

/// A download job handed over: its record (JSON) then its content.
fn post_job(
    mote: &Mote,
    token: &str,
    id: &str,
    record: &serde_json::Value,
    content: &[u8],
) -> (u16, serde_json::Value, String) {
    let mut body = serde_json::to_vec(record).unwrap();
    let len = format!("Dust-Job-Length: {}", body.len());
    body.extend_from_slice(content);
    post_with(mote, token, id, "fetch", &[&len], &body)
}

fn post_with(
    mote: &Mote,
    token: &str,
    id: &str,
    kind: &str,
    extra: &[&str],
    body: &[u8],
) -> (u16, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("item");
    std::fs::write(&file, body).unwrap();
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-X", "POST"])
        // No `Expect: 100-continue` (its interim answer would come first).
        .args(["-H", "Expect:"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", &format!("Dust-Item-Id: {id}")])
        .args(["-H", &format!("Dust-Item-Kind: {kind}")])
        .args(extra.iter().flat_map(|h| ["-H", h]))
        .args(["-H", "Content-Type: application/octet-stream"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("http://127.0.0.1:{}/v1/peer/items", mote.http_port))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let json = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, json, head.to_ascii_lowercase())
}

/// The Message-ID the entry mote set (the form its sanitizer makes, which
/// every mote after it keeps).
const SET_ONCE: &str = "5e70cec0ffee5e70cec0ffee5e70cec0@dustmote.invalid";

fn message(body: &str) -> Vec<u8> {
    StoredMail {
        from: "alice@example.org".into(),
        rcpts: vec!["bob@example.net".into()],
        message: format!(
            "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: via a peer\r\n\
             Message-ID: <{SET_ONCE}>\r\n\r\n{body}\r\n"
        )
        .into_bytes(),
        smtputf8: false,
    }
    .encode()
}

fn config(sink: &Sink) -> MoteConfig {
    let mut cfg = MoteConfig::new(sink.port);
    // Long enough to kill the mote while the item waits.
    cfg.delay = r#"{ distribution = "constant", value = "3s" }"#.into();
    cfg.extra = format!(
        "[[peers]]\nname = \"upstream\"\ntoken_hash = \"{}\"\nmax_item_bytes = \"64KiB\"\n",
        password_hash()
    );
    cfg
}

#[test]
fn a_peers_item_is_admitted_once_across_a_crash_and_delivered_once() {
    let sink = Sink::start();
    let mut mote = Mote::start(&config(&sink));
    let token = format!("upstream:{PASSWORD}");
    let id = "00112233445566778899aabbccddeeff";
    let item = message("handed over");

    let (status, v, _) = post(&mote, &token, id, "mail", &item);
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["admitted"], true);
    // The same transfer again (the sender never saw the answer): 200, and
    // nothing more is stored.
    let (status, v, _) = post(&mote, &token, id, "mail", &item);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["admitted"], false);
    assert_eq!(mote.queue_counts(), Some((1, 0)));

    // kill -9 while it waits, start again: still there, and a resend after
    // the restart is still recognized.
    mote.kill9();
    mote.spawn();
    let (status, v, _) = post(&mote, &token, id, "mail", &item);
    assert_eq!(status, 200, "{v}");
    mote.wait_drained(Duration::from_secs(30));
    let got = sink.wait_messages(1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "delivered once");
    let (header, body) = got[0].split();
    assert_eq!(String::from_utf8_lossy(body), "handed over\r\n");
    assert!(
        header.contains(&format!("Message-ID: <{SET_ONCE}>")),
        "{header}"
    );
    assert_eq!(got[0].rcpt_tos, ["bob@example.net"]);
    // And after delivery: still once.
    let (status, _, _) = post(&mote, &token, id, "mail", &item);
    assert_eq!(status, 200);
    assert_eq!(mote.queue_counts(), Some((0, 0)));
    // A different id from the same peer is a different item.
    let (status, _, _) = post(
        &mote,
        &token,
        "ffeeddccbbaa99887766554433221100",
        "mail",
        &message("second"),
    );
    assert_eq!(status, 201);
    mote.wait_drained(Duration::from_secs(30));
    assert_eq!(sink.wait_messages(2, Duration::from_secs(10)).len(), 2);
    // Nothing about the item in the log at info level.
    let log = mote.log();
    assert!(
        !log.contains("bob@example.net") && !log.contains("handed over"),
        "{log}"
    );
}

#[test]
fn bad_transfers_get_a_clear_4xx_and_store_nothing() {
    let sink = Sink::start();
    let mote = Mote::start(&config(&sink));
    let token = format!("upstream:{PASSWORD}");
    let id = "0123456789abcdef0123456789abcdef";
    let item = message("x");
    for (token, id, kind, body, status, code) in [
        // A wrong token, a user's token (users are not peers), no name.
        (
            "upstream:wrong".to_string(),
            id,
            "mail",
            item.clone(),
            401,
            "unauthorized",
        ),
        (
            format!("{}:{PASSWORD}", common::USER),
            id,
            "mail",
            item.clone(),
            401,
            "unauthorized",
        ),
        (
            PASSWORD.to_string(),
            id,
            "mail",
            item.clone(),
            401,
            "unauthorized",
        ),
        (
            token.clone(),
            "123",
            "mail",
            item.clone(),
            400,
            "bad_item_id",
        ),
        (
            token.clone(),
            "+123456789abcdef0123456789abcdef",
            "mail",
            item.clone(),
            400,
            "bad_item_id",
        ),
        (
            token.clone(),
            id,
            "video",
            item.clone(),
            400,
            "bad_item_kind",
        ),
        // A download job without its record's length.
        (token.clone(), id, "fetch", item.clone(), 400, "bad_item"),
        (
            token.clone(),
            id,
            "mail",
            b"not a stored message".to_vec(),
            400,
            "bad_item",
        ),
        (
            token.clone(),
            id,
            "mail",
            message(&"y".repeat(70_000)),
            413,
            "item_too_large",
        ),
    ] {
        let (s, v, _) = post(&mote, &token, id, kind, &body);
        assert_eq!(
            (s, v["error"].as_str()),
            (status, Some(code)),
            "{token} {id} {kind}: {v}"
        );
    }
    // Download jobs: only for a user of this mote, only http(s), never
    // more content than the job's size.
    let job = |user: &str, url: &str, total: u64| {
        serde_json::json!({
            "id": "00000000000000000000000000000001",
            "job": {
                "url": url, "user": user, "state": "fetching", "reason": null,
                "created_ms": 1, "not_before_ms": null, "deadline_ms": null,
                "total": total, "etag": "\"x\"", "expected_ready_ms": null,
            }
        })
    };
    for (record, content, code) in [
        (
            job("nobody", "http://127.0.0.1:9/f", 10),
            &b"12345"[..],
            "unknown_user",
        ),
        (
            job(common::USER, "file:///etc/passwd", 10),
            &b"12345"[..],
            "bad_item",
        ),
        (
            job(common::USER, "http://127.0.0.1:9/f", 3),
            &b"12345"[..],
            "bad_item",
        ),
        (
            serde_json::json!({ "id": "1", "job": {} }),
            &b""[..],
            "bad_item",
        ),
        // A finished download without all of its content.
        (
            {
                let mut j = job(common::USER, "http://127.0.0.1:9/f", 10);
                j["job"]["state"] = "ready".into();
                j
            },
            &b"12345"[..],
            "bad_item",
        ),
    ] {
        let job_id = "00000000000000000000000000000001";
        let (s, v, _) = post_job(&mote, &token, job_id, &record, content);
        assert_eq!((s, v["error"].as_str()), (400, Some(code)), "{record}: {v}");
    }
    assert_eq!(mote.queue_counts(), Some((0, 0)));
    // A peer's token is not a user's: it cannot queue downloads.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-d", r#"{"url":"http://127.0.0.1:9/x"}"#])
        .arg(format!("http://127.0.0.1:{}/v1/fetches", mote.http_port))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
}

#[test]
fn without_peers_the_endpoint_does_not_exist() {
    let sink = Sink::start();
    let mote = Mote::start(&MoteConfig::new(sink.port));
    let (status, v, _) = post(
        &mote,
        &format!("upstream:{PASSWORD}"),
        "00112233445566778899aabbccddeeff",
        "mail",
        &message("x"),
    );
    assert_eq!(
        (status, v["error"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
}

/// A cascade on loopback (direct mode; the same over onion services is the
/// tornet test to come): A → B → C → sink. The message leaves C as a
/// direct one through C would (same body, same sanitized header fields, one
/// Message-ID, set at A), and each mote held it for at least its own
/// delay (each one's latency histogram: nothing under 1 s with a constant
/// 2 s delay).
#[test]
fn mail_through_a_cascade_of_three_motes_leaves_like_a_direct_message() {
    let sink = Sink::start();
    let delay = r#"{ distribution = "constant", value = "2s" }"#;
    let accept_from = |name: &str| {
        format!(
            "[[peers]]\nname = \"{name}\"\ntoken_hash = \"{}\"\n",
            password_hash()
        )
    };
    let send_to = |name: &str, me: &str, port: u16| {
        format!(
            "[[peers]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:{port}\"\ntoken = \"{me}:{PASSWORD}\"\n"
        )
    };
    let mut cc = MoteConfig::new(sink.port);
    cc.delay = delay.into();
    cc.extra = accept_from("b");
    let c = Mote::start(&cc);
    let mut cb = MoteConfig::new(sink.port);
    cb.delay = delay.into();
    cb.delivery_mode = "mode = \"peer\"\npeer = \"c\"".into();
    cb.extra = send_to("c", "b", c.http_port) + &accept_from("a");
    let b = Mote::start(&cb);
    let mut ca = MoteConfig::new(sink.port);
    ca.delay = delay.into();
    ca.delivery_mode = "mode = \"peer\"\npeer = \"b\"".into();
    ca.extra = send_to("b", "a", b.http_port);
    let a = Mote::start(&ca);

    // The same message into A (the cascade), then straight into C.
    let submit = |port: u16| {
        let (ok, t) = common::swaks_auth(
            port,
            PASSWORD,
            &[
                "--to",
                "bob@example.net",
                "--header",
                "Subject: through three motes",
                "--body",
                "cascaded body",
            ],
        );
        assert!(ok, "{t}");
    };
    submit(a.port);
    let got = sink.wait_messages(1, Duration::from_secs(60));
    submit(c.port);
    let got2 = sink.wait_messages(2, Duration::from_secs(60));
    let direct = got2.iter().find(|m| m.time != got[0].time).unwrap();
    let (h_cascade, b_cascade) = got[0].split();
    let (h_direct, b_direct) = direct.split();
    assert_eq!(b_cascade, b_direct);
    assert!(String::from_utf8_lossy(b_cascade).starts_with("cascaded body\r\n"));
    assert_eq!(
        header_names(&h_cascade),
        header_names(&h_direct),
        "{h_cascade}\n---\n{h_direct}"
    );
    assert_eq!(h_cascade.matches("Message-ID:").count(), 1, "{h_cascade}");
    assert!(h_cascade.contains("Subject: through three motes"));
    assert_eq!(got[0].rcpt_tos, ["bob@example.net"]);

    for (name, mote, outputs) in [("a", &a, 1), ("b", &b, 1), ("c", &c, 2)] {
        let m = mote.metrics();
        assert_eq!(
            metric(&m, "dustmote_mix_latency_seconds_count "),
            outputs,
            "{name}: {m}"
        );
        assert_eq!(
            metric(&m, "dustmote_mix_latency_seconds_bucket{le=\"1.0\"} "),
            0,
            "{name}: {m}"
        );
    }
    for m in [&a, &b, &c] {
        m.wait_drained(Duration::from_secs(10));
    }
}

/// kill -9 of the sender (two rounds) and of the receiver (one round) while
/// items move from A to C: every message A acknowledged reaches the sink
/// exactly once. C holds what it receives for 15 s, so that no kill hits
/// C's own SMTP delivery: a duplicate at the sink could only come from
/// the link.
#[test]
fn kill_9_during_hand_off_loses_nothing_and_duplicates_nothing() {
    const PER_ROUND: usize = 80;
    let sink = Sink::start();
    let mut cc = MoteConfig::new(sink.port);
    cc.delay = r#"{ distribution = "constant", value = "15s" }"#.into();
    cc.extra = format!(
        "[[peers]]\nname = \"a\"\ntoken_hash = \"{}\"\n",
        password_hash()
    );
    let mut c = Mote::start(&cc);
    let mut ca = MoteConfig::new(sink.port);
    ca.require_auth = false; // smtp-source cannot authenticate
    ca.delay =
        r#"{ distribution = "exponential", mean = "400ms", min = "20ms", max = "2s" }"#.into();
    ca.retry_base = "100ms".into();
    ca.mixer_extra = "max_in_flight = 4".into();
    ca.delivery_mode = "mode = \"peer\"\npeer = \"c\"".into();
    ca.extra = format!(
        "[[peers]]\nname = \"c\"\nurl = \"http://127.0.0.1:{}\"\ntoken = \"a:{PASSWORD}\"\n",
        c.http_port
    );
    let mut a = Mote::start(&ca);
    let mut rng = rand::rng();
    for (round, victim) in ["sender", "receiver", "sender"].iter().enumerate() {
        assert!(
            common::smtp_source(
                a.port,
                &format!("round{round}@example.org"),
                PER_ROUND,
                1024
            ),
            "round {round}: not every message got 250"
        );
        // The kill moment, drawn at random while A hands items over.
        let wait = Duration::from_millis(rand::Rng::random_range(&mut rng, 100..900));
        std::thread::sleep(wait);
        let before = a.queue_counts().unwrap();
        if *victim == "sender" {
            a.kill9();
            a.spawn();
        } else {
            c.kill9();
            c.spawn();
        }
        println!(
            "round {round}: kill -9 of the {victim} after {wait:?}; A's queue then {before:?}"
        );
        assert!(
            before.0 + before.1 > 0,
            "the kill must come while items are moving"
        );
    }
    a.wait_drained(Duration::from_secs(60));
    c.wait_drained(Duration::from_secs(60));
    let total = 3 * PER_ROUND;
    let got = sink.wait_messages(total, Duration::from_secs(10));
    let ids: std::collections::HashSet<String> = got.iter().map(|m| m.message_id()).collect();
    println!(
        "{} delivered, {} distinct, {total} acknowledged",
        got.len(),
        ids.len()
    );
    assert_eq!(ids.len(), total, "lost messages");
    assert_eq!(got.len(), total, "duplicates from the link");
}

/// Each peer has its own rate: beyond its burst, 429 with Retry-After, and
/// nothing stored.
#[test]
fn a_peer_beyond_its_rate_gets_429() {
    let sink = Sink::start();
    let mut cfg = config(&sink);
    cfg.extra = format!(
        "[[peers]]\nname = \"upstream\"\ntoken_hash = \"{}\"\nrate = \"1/min\"\nburst = 2\n",
        password_hash()
    );
    let mote = Mote::start(&cfg);
    let token = format!("upstream:{PASSWORD}");
    for (i, want) in [201, 201, 429].into_iter().enumerate() {
        let (status, v, head) = post(&mote, &token, &format!("{i:032x}"), "mail", &message("r"));
        assert_eq!(status, want, "{v}");
        if want == 429 {
            assert_eq!(v["error"], "rate_limited", "{v}");
            let retry = retry_after(&head);
            assert!((1..=60).contains(&retry), "{retry}");
        }
    }
    assert_eq!(mote.queue_counts(), Some((2, 0)));
}

/// A peer's job record is checked like the fetcher checks an origin's
/// answer (issue 22, finding 12): a `content_type` with CR LF in it is not
/// kept, so it can neither add header lines to the content's answer nor
/// part headers to a multipart Range answer; the content is served as
/// `application/octet-stream`.
#[test]
fn a_peers_content_type_cannot_add_header_lines() {
    let sink = Sink::start();
    let mote = Mote::start(&config(&sink));
    let token = format!("upstream:{PASSWORD}");
    let job_id = "00000000000000000000000000000c0f";
    let record = serde_json::json!({
        "id": job_id,
        "job": {
            "url": "http://127.0.0.1:9/page", "user": common::USER, "state": "ready",
            "reason": null, "created_ms": 1, "not_before_ms": null, "deadline_ms": null,
            "total": 10, "etag": "\"x\"", "expected_ready_ms": null, "ready_ms": 1,
            "content_type": "text/html\r\nX-Injected: yes\r\n\r\n<script>alert(1)</script>",
        }
    });
    let (s, v, _) = post_job(&mote, &token, job_id, &record, b"0123456789");
    assert_eq!(s, 201, "{v}");
    let url = format!(
        "http://127.0.0.1:{}/v1/fetches/{job_id}/content",
        mote.http_port
    );
    let get = |range: Option<&str>| -> String {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-D",
            "-",
            "-H",
            &format!("Authorization: Bearer {PASSWORD}"),
        ]);
        if let Some(r) = range {
            c.args(["-H", &format!("Range: {r}")]);
        }
        String::from_utf8_lossy(&c.arg(&url).output().unwrap().stdout).into_owned()
    };
    let whole = get(None);
    let multi = get(Some("bytes=0-1,4-5"));
    assert!(whole.starts_with("HTTP/1.1 200"), "{whole}");
    assert!(
        whole
            .to_ascii_lowercase()
            .contains("content-type: application/octet-stream\r\n"),
        "{whole}"
    );
    assert!(multi.starts_with("HTTP/1.1 206"), "{multi}");
    assert!(multi.contains("multipart/byteranges"), "{multi}");
    assert_eq!(
        multi
            .matches("Content-Type: application/octet-stream\r\n")
            .count(),
        2,
        "{multi}"
    );
    for answer in [&whole, &multi] {
        assert!(
            !answer.contains("X-Injected") && !answer.contains("<script>"),
            "{answer}"
        );
    }
}

/// A handed-over download job is bound to (peer, job id) (issue 22,
/// finding 1): `Dust-Item-Id` must be the job's id; a resend of the same
/// transfer is recognized and writes nothing; any other transfer naming a
/// job that is here — another peer's, a changed resend's, or a user's own
/// job whose id a peer learned — gets `409` and changes nothing: not the
/// owner, not the content, not the queue.
#[test]
fn a_peer_cannot_take_over_or_rewrite_a_job() {
    let sink = Sink::start();
    let mut cfg = config(&sink);
    cfg.extra.push_str(&format!(
        "[[peers]]\nname = \"other\"\ntoken_hash = \"{}\"\n",
        password_hash()
    ));
    let mote = Mote::start(&cfg);
    let api = format!("http://127.0.0.1:{}", mote.http_port);
    let auth = format!("Authorization: Bearer {PASSWORD}");
    // The user's own job, held an hour (never fetched during the test).
    let later =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3600));
    let (code, body) = common::curl(&[
        "-H",
        &auth,
        "-X",
        "POST",
        &format!("{api}/v1/fetches"),
        "-d",
        &format!(r#"{{"url": "http://example.org/own", "not_before": "{later}"}}"#),
    ]);
    assert_eq!(code, 202, "{}", String::from_utf8_lossy(&body));
    let own: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let own = own["id"].as_str().unwrap().to_string();
    let ready = |id: &str, url: &str, content: &[u8]| {
        serde_json::json!({
            "id": id,
            "job": {
                "url": url, "user": common::USER, "state": "ready", "reason": null,
                "created_ms": 1, "not_before_ms": null, "deadline_ms": null,
                "total": content.len(), "etag": "\"x\"", "expected_ready_ms": null,
                "ready_ms": 1,
            }
        })
    };
    let content =
        |id: &str| common::curl(&["-H", &auth, &format!("{api}/v1/fetches/{id}/content")]);
    let upstream = format!("upstream:{PASSWORD}");
    let other = format!("other:{PASSWORD}");
    let moved = "0000000000000000000000000000a001";
    let first = ready(moved, "http://example.org/moved", b"first");
    let (s, v, _) = post_job(&mote, &upstream, moved, &first, b"first");
    assert_eq!(s, 201, "{v}");
    let counts = mote.queue_counts();
    // The same transfer again (the sender saw no answer): recognized.
    let (s, v, _) = post_job(&mote, &upstream, moved, &first, b"first");
    assert_eq!(s, 200, "{v}");
    // Under an id that is not the job's: refused before anything is read.
    let (s, v, _) = post_job(
        &mote,
        &upstream,
        "0000000000000000000000000000b002",
        &first,
        b"first",
    );
    assert_eq!((s, v["error"].as_str()), (400, Some("bad_item_id")), "{v}");
    // Another peer, or the same peer with other content, naming a job that
    // is here: 409.
    let second = ready(moved, "http://example.org/elsewhere", b"other");
    let (s, v, _) = post_job(&mote, &other, moved, &second, b"other");
    assert_eq!((s, v["error"].as_str()), (409, Some("job_exists")), "{v}");
    // The user's own job, taken over by a peer that learned its id: 409.
    let takeover = ready(&own, "http://example.org/evil", b"evil!");
    for token in [&upstream, &other] {
        let (s, v, _) = post_job(&mote, token, &own, &takeover, b"evil!");
        assert_eq!((s, v["error"].as_str()), (409, Some("job_exists")), "{v}");
    }
    // Nothing changed: the contents, the user's job, the queue.
    assert_eq!(content(moved), (200, b"first".to_vec()));
    let (code, state) = common::curl(&["-H", &auth, &format!("{api}/v1/fetches/{own}")]);
    let state: serde_json::Value = serde_json::from_slice(&state).unwrap();
    assert_eq!(
        (code, state["state"].as_str()),
        (200, Some("queued")),
        "{state}"
    );
    assert_eq!(content(&own).0, 409, "not fetched yet");
    assert_eq!(mote.queue_counts(), counts);
}

/// Mail from a peer meets this mote's own intake rules (issue 22, finding
/// 11): the sanitizer's refusals (NUL, bare CR), `[smtp] max_recipients`
/// and `max_message_bytes`, each a `400`/`413` that stores nothing; and
/// what it takes is sanitized again (a `Received:` or `X-Originating-IP`
/// a peer added does not reach the next hop), keeping the entry mote's
/// Message-ID.
#[test]
fn a_peers_mail_meets_this_motes_intake_rules() {
    let sink = Sink::start();
    let mut cfg = config(&sink);
    cfg.delay = r#"{ distribution = "constant", value = "100ms" }"#.into();
    cfg.max_message_bytes = 16 * 1024;
    // Room for 10,000 recipients in one item (180 KB).
    cfg.extra = cfg.extra.replace("64KiB", "1MiB");
    let mote = Mote::start(&cfg);
    let token = format!("upstream:{PASSWORD}");
    let mail = |rcpts: Vec<String>, message: Vec<u8>| {
        StoredMail {
            from: "alice@example.org".into(),
            rcpts,
            message,
            smtputf8: false,
        }
        .encode()
    };
    let one = || vec!["bob@example.net".to_string()];
    let text = |extra: &str| {
        format!(
            "Received: from laptop.home (192.0.2.7)\r\nX-Originating-IP: 192.0.2.7\r\n\
             From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hi\r\n\
             Message-ID: <{SET_ONCE}>\r\n\r\n{extra}body\r\n"
        )
        .into_bytes()
    };
    let many: Vec<String> = (0..10_000).map(|i| format!("r{i}@example.net")).collect();
    let refused = [
        ("NUL", mail(one(), text("a\0b\r\n")), 400, "bad_item"),
        ("bare CR", mail(one(), text("a\rb\r\n")), 400, "bad_item"),
        ("10,000 recipients", mail(many, text("")), 400, "bad_item"),
        ("no recipient", mail(vec![], text("")), 400, "bad_item"),
    ];
    for (i, (what, item, status, code)) in refused.into_iter().enumerate() {
        let id = format!("{i:032x}");
        let (s, v, _) = post(&mote, &token, &id, "mail", &item);
        assert_eq!(
            (s, v["error"].as_str()),
            (status, Some(code)),
            "{what}: {v}"
        );
    }
    // Larger than [smtp] max_message_bytes (16 KiB here), within the
    // peer's max_item_bytes (1 MiB).
    let big = mail(one(), text(&"x".repeat(30_000)));
    let (s, v, _) = post(&mote, &token, &format!("{:032x}", 99), "mail", &big);
    assert_eq!(
        (s, v["error"].as_str()),
        (413, Some("item_too_large")),
        "{v}"
    );
    assert_eq!(mote.queue_counts(), Some((0, 0)), "nothing stored");
    // A good one: taken, sanitized again, the entry mote's id kept.
    let (s, v, _) = post(
        &mote,
        &token,
        &format!("{:032x}", 100),
        "mail",
        &mail(one(), text("")),
    );
    assert_eq!(s, 201, "{v}");
    let got = sink.wait_messages(1, Duration::from_secs(30));
    let (header, _) = got[0].split();
    assert!(
        !header.contains("192.0.2.7") && !header.contains("laptop"),
        "{header}"
    );
    assert!(
        header.contains(&format!("Message-ID: <{SET_ONCE}>")),
        "{header}"
    );
    assert_eq!(header.matches("Message-ID:").count(), 1, "{header}");
}

/// The one job a transfer may find here: its own, left by a crash of this
/// mote after the record and before the item (issue 22, finding 1: "unless
/// this same peer handed it over and it is untouched"). That state is
/// written into the stopped mote's store as the receiving side writes it
/// (record with `from_peer`, content, no item, no transfer digest); then
/// the same peer's resend completes the job (201, one fetch item, the
/// content served), while another peer, or the same peer with another
/// record, gets 409.
#[test]
fn a_resend_after_a_crash_between_record_and_item_completes_the_job() {
    let sink = Sink::start();
    let mut cfg = config(&sink);
    cfg.extra.push_str(&format!(
        "[[peers]]\nname = \"other\"\ntoken_hash = \"{}\"\n",
        password_hash()
    ));
    let mut mote = Mote::start(&cfg);
    mote.terminate();
    let job_id = "0000000000000000000000000000c4a5";
    let envelope = |url: &str| {
        serde_json::json!({
            "id": job_id,
            "job": {
                "url": url, "user": common::USER, "state": "ready", "reason": null,
                "created_ms": 1, "not_before_ms": null, "deadline_ms": null,
                "total": 5, "etag": "\"x\"", "expected_ready_ms": 7, "ready_ms": 1,
            }
        })
    };
    let sent = envelope("http://example.org/crash");
    {
        let mut job: dust_proxies::item::job::Job =
            serde_json::from_value(sent["job"].clone()).unwrap();
        job.expected_ready_ms = None;
        job.from_peer = Some("upstream".into());
        let key_path = common::files_under(mote.runtime.path())
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "key"))
            .expect("the sealing key");
        let key = dust_storage::SealKey::read(&key_path).unwrap().unwrap();
        let store =
            dust_storage::Store::open(&mote.data_dir().join("queue"), 8 << 20, &key).unwrap();
        let id: dust_storage::ItemId = job_id.parse().unwrap();
        store.put_chunk(&id, 0, b"crash").unwrap();
        store.put_job(&id, &job.encode()).unwrap();
        store.flush_blocking().unwrap();
    }
    mote.spawn();
    let before = mote.queue_counts().unwrap();
    let other = format!("other:{PASSWORD}");
    let upstream = format!("upstream:{PASSWORD}");
    let (s, v, _) = post_job(&mote, &other, job_id, &sent, b"crash");
    assert_eq!((s, v["error"].as_str()), (409, Some("job_exists")), "{v}");
    let changed = envelope("http://example.org/changed");
    let (s, v, _) = post_job(&mote, &upstream, job_id, &changed, b"crash");
    assert_eq!((s, v["error"].as_str()), (409, Some("job_exists")), "{v}");
    let (s, v, _) = post_job(&mote, &upstream, job_id, &sent, b"crash");
    assert_eq!(s, 201, "{v}");
    let after = mote.queue_counts().unwrap();
    assert_eq!(after.0 + after.1, before.0 + before.1 + 1, "one fetch item");
    let (code, body) = common::curl(&[
        "-H",
        &format!("Authorization: Bearer {PASSWORD}"),
        &format!(
            "http://127.0.0.1:{}/v1/fetches/{job_id}/content",
            mote.http_port
        ),
    ]);
    assert_eq!((code, body), (200, b"crash".to_vec()));
}

/// Half-open connections on every HTTP slot (tests/peers/half_open.py: 64
/// connections that send the start of a request and then nothing, opened
/// again as soon as the mote closes them) keep out neither a user nor a
/// peer: each is served within 2 s, because a newcomer evicts a connection
/// that has not authenticated, and the peer's connection moves to the peer
/// link's own slots.
#[test]
fn half_open_connections_keep_out_neither_users_nor_peers() {
    let sink = Sink::start();
    let mote = Mote::start(&config(&sink));
    let dir = tempfile::tempdir().unwrap();
    let item = dir.path().join("item");
    std::fs::write(&item, message("past the half-open")).unwrap();
    let v = json_of(
        Command::new("python3")
            .arg(common::peer("half_open.py"))
            .args(["--http", &mote.http_port.to_string()])
            .args(["--user-token", &format!("{}:{PASSWORD}", common::USER)])
            .args(["--peer-token", &format!("upstream:{PASSWORD}")])
            .arg("--item")
            .arg(&item),
    );
    println!("half-open: {v}");
    for (side, want) in [("user", 404), ("peer", 201)] {
        let rounds = v[side].as_array().unwrap();
        assert_eq!(rounds.len(), 5, "{v}");
        for r in rounds {
            assert_eq!(r[0], want, "{side}: {v}");
            assert!(r[1].as_f64().unwrap() < 2.0, "{side}: {v}");
        }
    }
    // Every slot was held (64 and more opened), and the mote made room by
    // closing half-open ones, one per newcomer at least.
    assert!(v["opened"].as_u64().unwrap() >= 64 + 10, "{v}");
    assert!(v["closed_by_mote"].as_u64().unwrap() >= 10, "{v}");
    // The peer's five items are delivered.
    assert_eq!(sink.wait_messages(5, Duration::from_secs(30)).len(), 5);
}

/// curl uploading a job's transfer body (its record of `head_len` bytes,
/// then its content) from `file` as a stream (`-T`), as peer `upstream`.
fn upload_job(mote: &Mote, file: &std::path::Path, id: &str, head_len: usize) -> Command {
    let mut c = Command::new("curl");
    c.args(["-s", "-X", "POST", "-T"])
        .arg(file)
        .args(["-H", &format!("Authorization: Bearer upstream:{PASSWORD}")])
        .args(["-H", &format!("Dust-Item-Id: {id}")])
        .args(["-H", "Dust-Item-Kind: fetch"])
        .args(["-H", &format!("Dust-Job-Length: {head_len}")])
        .args(["-H", "Content-Type: application/octet-stream"])
        .arg(format!("http://127.0.0.1:{}/v1/peer/items", mote.http_port));
    c
}

/// `VmHWM` (peak resident memory) of process `pid`, in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Byte `i` of the large job's content.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8 ^ (i >> 20) as u8
}

/// A 300 MiB download handed over by a peer (issue 22, finding 5; curl
/// uploads it from a file, as a stream) is streamed into the store: the
/// receiving mote's peak resident memory stays under 128 MiB (it held the
/// body in memory before: 895 MiB measured), and the user reads back every
/// byte.
#[test]
fn a_300_mib_hand_off_is_streamed_to_the_store() {
    const SIZE: u64 = 300 << 20;
    let sink = Sink::start();
    let mut cfg = config(&sink);
    cfg.extra = cfg.extra.replace("64KiB", "400MiB");
    let mote = Mote::start(&cfg);
    let id = "0123456789abcdef0123456789abcdef";
    let record = serde_json::json!({
        "id": id,
        "job": {
            "url": "http://127.0.0.1:9/big.bin", "user": common::USER, "state": "ready",
            "reason": null, "created_ms": 1, "not_before_ms": null, "deadline_ms": null,
            "total": SIZE, "etag": "\"x\"", "expected_ready_ms": null,
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("item");
    let head = serde_json::to_vec(&record).unwrap();
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        f.write_all(&head).unwrap();
        let mut piece = vec![0u8; 1 << 20];
        for at in (0..SIZE).step_by(1 << 20) {
            for (j, b) in piece.iter_mut().enumerate() {
                *b = pattern(at + j as u64);
            }
            f.write_all(&piece).unwrap();
        }
    }
    let before = peak_rss_kib(mote.pid());
    let t0 = std::time::Instant::now();
    let out = upload_job(&mote, &file, id, head.len())
        .args(["-w", "\n%{http_code}"])
        .output()
        .unwrap();
    let took = t0.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n201"), "{text}");
    let peak = peak_rss_kib(mote.pid());
    println!("300 MiB hand-off in {took:?}: peak RSS {before} KiB before, {peak} KiB after");
    assert!(peak < 128 * 1024, "peak RSS {peak} KiB");
    // Every byte is there for the user.
    let got = dir.path().join("got");
    let out = Command::new("curl")
        .args(["-s", "-o"])
        .arg(&got)
        .args(["-w", "%{http_code}"])
        .args([
            "-H",
            &format!("Authorization: Bearer {}:{PASSWORD}", common::USER),
        ])
        .arg(format!(
            "http://127.0.0.1:{}/v1/fetches/{id}/content",
            mote.http_port
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let mut f = std::io::BufReader::new(std::fs::File::open(&got).unwrap());
    let mut piece = vec![0u8; 1 << 20];
    for at in (0..SIZE).step_by(1 << 20) {
        std::io::Read::read_exact(&mut f, &mut piece).unwrap();
        let bad = piece
            .iter()
            .enumerate()
            .find(|(j, b)| **b != pattern(at + *j as u64));
        assert!(bad.is_none(), "byte {} differs", at + bad.unwrap().0 as u64);
    }
    assert_eq!(std::fs::metadata(&got).unwrap().len(), SIZE);
}

/// A second transfer of a job that is still being received (the sender
/// resends after a lost connection the receiver has not given up yet) gets
/// `503 job_in_transfer` with `Retry-After`, which the sender takes as
/// temporary; once the first is in, a resend gets `200`.
#[test]
fn a_job_being_received_is_not_received_twice_at_once() {
    let sink = Sink::start();
    let mut cfg = config(&sink);
    cfg.extra = cfg.extra.replace("64KiB", "8MiB");
    let mote = Mote::start(&cfg);
    let id = "00000000000000000000000000000abc";
    let content = vec![7u8; 2 << 20];
    let record = serde_json::json!({
        "id": id,
        "job": {
            "url": "http://127.0.0.1:9/f", "user": common::USER, "state": "ready",
            "reason": null, "created_ms": 1, "not_before_ms": null, "deadline_ms": null,
            "total": content.len(), "etag": "\"x\"", "expected_ready_ms": null,
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("item");
    let mut body = serde_json::to_vec(&record).unwrap();
    let head_len = body.len();
    body.extend_from_slice(&content);
    std::fs::write(&file, &body).unwrap();
    // The first, at 256 KiB/s: about 8 s.
    let slow = upload_job(&mote, &file, id, head_len)
        .args([
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--limit-rate",
            "256k",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Under way once its content file exists (made after the job was
    // marked as being received).
    let started = common::wait_for(Duration::from_secs(20), || {
        common::files_under(&mote.data_dir())
            .iter()
            .any(|p| p.file_name().is_some_and(|n| n == id))
            .then_some(())
    });
    assert!(started.is_some(), "the first transfer did not start");
    let token = format!("upstream:{PASSWORD}");
    let (status, v, head) = post_job(&mote, &token, id, &record, &content);
    assert_eq!(
        (status, v["error"].as_str()),
        (503, Some("job_in_transfer")),
        "{v}"
    );
    assert!(retry_after(&head) >= 1, "{head}");
    let out = slow.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201");
    let (status, v, _) = post_job(&mote, &token, id, &record, &content);
    assert_eq!(status, 200, "{v}");
}
