//! The receiving side of the link between motes (issue 12, part 1), with
//! the real binary and curl: `POST /v1/peer/items` admits a message from a
//! configured peer durably, once per (peer, item id) — across a kill -9 —
//! and the mote delivers it with a fresh delay; everything else gets a
//! clear 4xx with a JSON body, and peers and users are kept apart.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{password_hash, Mote, MoteConfig, Sink, PASSWORD};
use dust_proxies::mail::StoredMail;

/// (status, JSON body, headers) of a POST to the peer endpoint.
fn post(
    mote: &Mote,
    token: &str,
    id: &str,
    kind: &str,
    body: &[u8],
) -> (u16, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("item");
    std::fs::write(&file, body).unwrap();
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-X", "POST"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", &format!("Dust-Item-Id: {id}")])
        .args(["-H", &format!("Dust-Item-Kind: {kind}")])
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

fn message(body: &str) -> Vec<u8> {
    StoredMail {
        from: "alice@example.org".into(),
        rcpts: vec!["bob@example.net".into()],
        message: format!(
            "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: via a peer\r\n\
             Message-ID: <set-once@dustmote.invalid>\r\n\r\n{body}\r\n"
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
        header.contains("Message-ID: <set-once@dustmote.invalid>"),
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
            "fetch",
            item.clone(),
            400,
            "bad_item_kind",
        ),
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
