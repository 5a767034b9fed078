//! Mail through the mote, end to end, with real peers: swaks and Python
//! smtplib submit, aiosmtpd receives. The mote is the real binary with a
//! loopback config (`[tor] mode = "direct"`, relay to the sink).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A body meant to break naive handling: dot-stuffing cases, 8-bit text,
/// an mbox "From " line, trailing blanks, a line of 998 octets, empty lines.
fn tricky_body() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"Hello Bob,\r\n");
    b.extend_from_slice(b".a line with a leading dot\r\n");
    b.extend_from_slice(b"..two dots\r\n");
    b.extend_from_slice(b".\tdot tab\r\n");
    b.extend_from_slice("caf\u{e9} \u{2014} na\u{ef}ve \u{1F600}\r\n".as_bytes());
    b.extend_from_slice(b"From the desk of Alice\r\n");
    b.extend_from_slice(b"trailing blanks   \r\n");
    b.extend_from_slice(&[b'y'; 998]);
    b.extend_from_slice(b"\r\n\r\n\r\nend\r\n");
    b
}

const DIRTY_HEADER: &str = "Received: from laptop.home (laptop.home [192.0.2.7])\r\n\
\tby mail.example.org; Mon, 2 Nov 2026 10:00:00 +0100\r\n\
From: Alice <alice@example.org>\r\n\
To: Bob <bob@example.net>\r\n\
Bcc: carol@example.com\r\n\
Subject: =?utf-8?q?Caf=C3=A9?= plans\r\n\
Date: Mon, 2 Nov 2026 10:00:00 +0100\r\n\
Message-ID: <1234.laptop@laptop.home>\r\n\
X-Mailer: Thunderbird 128.3\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n\
X-Originating-IP: [192.0.2.7]\r\n\
DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=k; b=AAAA\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n";

fn write_message(
    dir: &std::path::Path,
    name: &str,
    header: &str,
    body: &[u8],
) -> std::path::PathBuf {
    let p = dir.join(name);
    let mut m = header.as_bytes().to_vec();
    m.extend_from_slice(body);
    std::fs::write(&p, m).unwrap();
    p
}

/// Byte equality with a readable report (position of the first difference).
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        let show = |b: &[u8]| {
            String::from_utf8_lossy(&b[at.saturating_sub(20)..(at + 20).min(b.len())]).into_owned()
        };
        panic!(
            "{what}: {} bytes delivered, {} expected; first difference at byte {at}: got {:?}, want {:?}",
            got.len(),
            want.len(),
            show(got),
            show(want)
        );
    }
}

fn assert_sanitized(header: &str) {
    let lower = header.to_ascii_lowercase();
    for gone in [
        "received:",
        "bcc:",
        "carol",
        "x-mailer",
        "user-agent",
        "x-originating-ip",
        "dkim-signature",
        "laptop",
        "192.0.2.7",
        "+0100",
    ] {
        assert!(
            !lower.contains(gone),
            "{gone:?} leaked into the delivered header:\n{header}"
        );
    }
    for kept in [
        "From: Alice <alice@example.org>\r\n",
        "To: Bob <bob@example.net>\r\n",
        "Subject: =?utf-8?q?Caf=C3=A9?= plans\r\n",
        "MIME-Version: 1.0\r\n",
        "Content-Type: text/plain; charset=utf-8\r\n",
        "Content-Transfer-Encoding: 8bit\r\n",
    ] {
        assert!(
            header.contains(kept),
            "{kept:?} missing from the delivered header:\n{header}"
        );
    }
    let ids: Vec<&str> = header
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with("message-id:"))
        .collect();
    assert_eq!(ids.len(), 1, "exactly one Message-ID:\n{header}");
    assert!(ids[0].ends_with("@dustmote.invalid>"), "{}", ids[0]);
    let dates: Vec<&str> = header
        .split("\r\n")
        .filter(|l| l.starts_with("Date: "))
        .collect();
    assert_eq!(dates.len(), 1, "exactly one Date:\n{header}");
    assert!(
        dates[0].ends_with(" +0000"),
        "Date is set at send time in UTC: {}",
        dates[0]
    );
}

fn assert_private_log(log: &str) {
    for secret in [
        "alice@",
        "bob@",
        "carol@",
        "example.org",
        "example.net",
        "Caf",
        "Hello Bob",
    ] {
        assert!(
            !log.contains(secret),
            "{secret:?} appears in the mote's log:\n{log}"
        );
    }
}

#[test]
fn swaks_submission_is_delayed_sanitized_and_delivered_byte_for_byte() {
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.delay =
        r#"{ distribution = "exponential", mean = "500ms", min = "400ms", max = "2s" }"#.into();
    let mote = Mote::start(&cfg);
    let body = tricky_body();
    // swaks sends CRLF "." CRLF after the file's content, so the file leaves
    // out the final CRLF that the message as received then ends with.
    let file = write_message(
        mote.dir.path(),
        "m.eml",
        DIRTY_HEADER,
        &body[..body.len() - 2],
    );
    let t0 = now();
    let (ok, transcript) = swaks_auth(
        mote.port,
        PASSWORD,
        &[
            "--from",
            "alice@example.org",
            "--to",
            "bob@example.net,carol@example.com",
            "--data",
            file.to_str().unwrap(),
        ],
    );
    assert!(
        ok && transcript.contains("250 2.0.0 Ok: queued"),
        "{transcript}"
    );
    let m = sink.wait_messages(1, Duration::from_secs(30)).remove(0);
    // Admission happened after t0, and nothing is released before `min`.
    assert!(
        m.time - t0 >= 0.4,
        "delivered {:.3} s after submission, min is 0.4 s",
        m.time - t0
    );
    let (header, got_body) = m.split();
    assert_same_bytes(got_body, &body, "body must be copied byte for byte");
    assert_sanitized(&header);
    assert_eq!(m.mail_from, "alice@example.org");
    assert_eq!(
        m.helo, "[127.0.0.1]",
        "a neutral EHLO name, the same on every mote"
    );
    assert_eq!(
        m.rcpt_tos,
        ["bob@example.net", "carol@example.com"],
        "Bcc stays in the envelope"
    );
    assert_eq!(sink.messages().len(), 1);
    assert_private_log(&mote.log());
}

#[test]
fn smtplib_with_auth_plain_and_login_is_delivered() {
    let sink = Sink::start();
    let mote = Mote::start(&MoteConfig::new(sink.port));
    let body = tricky_body();
    let file = write_message(mote.dir.path(), "m.eml", DIRTY_HEADER, &body);
    for mech in ["plain", "login"] {
        // Two envelopes: the same message sent twice would be stored once
        // (replay suppression, tested on its own).
        let r = smtplib_send(
            mote.port,
            Some(mech),
            PASSWORD,
            &format!("alice+{mech}@example.org"),
            &["bob@example.net"],
            &file,
        );
        assert_eq!(r["ok"], true, "AUTH {mech}: {r}");
    }
    let msgs = sink.wait_messages(2, Duration::from_secs(30));
    assert_eq!(msgs.len(), 2);
    let mut ids = Vec::new();
    for m in &msgs {
        let (header, got_body) = m.split();
        assert_same_bytes(got_body, &body, "smtplib body");
        assert_sanitized(&header);
        assert_eq!(m.rcpt_tos, ["bob@example.net"]);
        ids.push(
            header
                .split("\r\n")
                .find(|l| l.starts_with("Message-ID"))
                .unwrap()
                .to_string(),
        );
    }
    assert_ne!(ids[0], ids[1], "every message gets its own Message-ID");
    assert_private_log(&mote.log());
}

#[test]
fn refusals_use_the_right_codes_and_store_nothing() {
    let sink = Sink::start();
    let mote = Mote::start(&MoteConfig::new(sink.port)); // 1 MiB, 10 recipients
    let dir = mote.dir.path();
    let small = write_message(
        dir,
        "small.eml",
        "From: a@example.org\r\nSubject: s\r\n\r\n",
        b"hi\r\n",
    );

    // No AUTH: 530, from swaks and from smtplib.
    let (ok, t) = swaks(
        mote.port,
        &[
            "--from",
            "a@example.org",
            "--to",
            "b@example.net",
            "--data",
            small.to_str().unwrap(),
        ],
    );
    assert!(!ok && t.contains("530 5.7.0"), "{t}");
    let r = smtplib_send(
        mote.port,
        None,
        "",
        "a@example.org",
        &["b@example.net"],
        &small,
    );
    assert_refused(&r, "mail", 530);

    // Wrong password: 535.
    let r = smtplib_send(
        mote.port,
        Some("plain"),
        "wrong",
        "a@example.org",
        &["b@example.net"],
        &small,
    );
    assert_refused(&r, "auth", 535);
    let (ok, t) = swaks(
        mote.port,
        &[
            "--auth",
            "LOGIN",
            "--auth-user",
            USER,
            "--auth-password",
            "nope",
            "--to",
            "b@example.net",
        ],
    );
    assert!(!ok && t.contains("535 5.7.8"), "{t}");

    // Oversize: smtplib declares SIZE= and is refused at MAIL; swaks does
    // not declare it and is refused after DATA. Both 552.
    let big_body = vec![b'z'; 76]
        .into_iter()
        .chain(*b"\r\n")
        .cycle()
        .take(2 * 1024 * 1024)
        .collect::<Vec<u8>>();
    let big = write_message(
        dir,
        "big.eml",
        "From: a@example.org\r\nSubject: big\r\n\r\n",
        &big_body,
    );
    let r = smtplib_send(
        mote.port,
        Some("plain"),
        PASSWORD,
        "a@example.org",
        &["b@example.net"],
        &big,
    );
    assert_refused(&r, "mail", 552);
    let (ok, t) = swaks_auth(
        mote.port,
        PASSWORD,
        &["--to", "b@example.net", "--data", big.to_str().unwrap()],
    );
    assert!(
        !ok && t.contains("552 5.3.4"),
        "{}",
        &t[t.len().saturating_sub(2000)..]
    );

    // A text line over 1000 octets: 500 after DATA.
    let mut long = b"x".repeat(1500);
    long.extend_from_slice(b"\r\n");
    let long = write_message(dir, "long.eml", "Subject: l\r\n\r\n", &long);
    let (ok, t) = swaks_auth(
        mote.port,
        PASSWORD,
        &["--to", "b@example.net", "--data", long.to_str().unwrap()],
    );
    assert!(!ok && t.contains("500 5.5.2"), "{t}");

    // Nothing refused was stored.
    let q = mote.queue(&[]);
    let text = String::from_utf8_lossy(&q.stdout);
    assert!(
        q.status.success() && text.contains("queued:    0") && text.contains("in flight: 0"),
        "{text}"
    );
    assert!(sink.messages().is_empty());
    // Too many recipients: the 11th RCPT gets 452.
    let rcpts: Vec<String> = (0..11).map(|i| format!("r{i}@example.net")).collect();
    let (_, t) = swaks_auth(
        mote.port,
        PASSWORD,
        &["--to", &rcpts.join(","), "--data", small.to_str().unwrap()],
    );
    assert!(t.contains("452 4.5.3"), "{t}");
    // The session goes on with the ten accepted recipients.
    let m = sink.wait_messages(1, Duration::from_secs(30));
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].rcpt_tos, rcpts[..10]);
}

#[test]
fn a_pipelined_swaks_session_works() {
    let sink = Sink::start();
    let mote = Mote::start(&MoteConfig::new(sink.port));
    let (ok, t) = swaks(
        mote.port,
        &[
            "--pipeline",
            "--auth",
            "PLAIN",
            "--auth-user",
            USER,
            "--auth-password",
            PASSWORD,
            "--from",
            "alice@example.org",
            "--to",
            "bob@example.net,dave@example.net",
            "--body",
            "pipelined body",
        ],
    );
    assert!(ok, "{t}");
    assert!(t.contains("250-PIPELINING"), "{t}");
    // swaks sends MAIL, both RCPTs and DATA in one batch and then reads the
    // four replies.
    assert!(
        t.contains("250 2.1.0 Ok") && t.matches("250 2.1.5 Ok").count() == 2 && t.contains("354 "),
        "{t}"
    );
    let m = sink.wait_messages(1, Duration::from_secs(30)).remove(0);
    assert_eq!(m.rcpt_tos, ["bob@example.net", "dave@example.net"]);
    assert!(m.split().1.starts_with(b"pipelined body\r\n"));
}

#[test]
fn an_unreachable_next_hop_means_retries_not_loss() {
    let relay_port = free_port();
    let mut cfg = MoteConfig::new(relay_port);
    cfg.delay = r#"{ distribution = "constant", value = "100ms" }"#.into();
    let mote = Mote::start(&cfg);
    submit_from(
        mote.port,
        "alice@example.org",
        "bob@example.net",
        "kept safe",
    );
    // Nothing listens on the relay port: the item stays queued, retried.
    let q = wait_for(Duration::from_secs(10), || {
        let out = mote.queue(&[]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("queued:    1").then_some(text)
    })
    .expect("the message stays queued while the relay is down");
    assert!(
        !q.contains("example"),
        "no addresses without --show-addresses: {q}"
    );
    let shown = mote.queue_text(&["--show-addresses"]);
    assert!(
        shown.contains("from=<alice@example.org> to=bob@example.net"),
        "{shown}"
    );
    // The relay comes up but answers 451 once (a temporary refusal), then accepts.
    let sink = Sink::start_with(1, relay_port);
    let m = sink.wait_messages(1, Duration::from_secs(30));
    assert!(m[0].split().1.starts_with(b"kept safe"));
    let q = wait_for(Duration::from_secs(10), || {
        let text = mote.queue_text(&[]);
        text.contains("queued:    0").then_some(())
    });
    assert!(q.is_some(), "queue drained after delivery");
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn sigterm_keeps_the_queue_and_a_restart_delivers_it() {
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.delay = r#"{ distribution = "constant", value = "3s" }"#.into();
    let mut mote = Mote::start(&cfg);
    for i in 0..3 {
        submit(mote.port, "bob@example.net", &format!("message {i}"));
    }
    let status = mote.terminate();
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status:?}\n{}",
        mote.log()
    );
    assert!(sink.messages().is_empty(), "nothing was due yet");
    let q = mote.queue_text(&[]);
    assert!(q.contains("queued:    3"), "{q}");
    mote.spawn();
    let msgs = sink.wait_messages(3, Duration::from_secs(30));
    assert_eq!(
        sorted_bodies(&msgs),
        ["message 0", "message 1", "message 2"]
    );
}

#[test]
fn config_check_names_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[tor]\nmode = \"direct\"\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("{}: tor.mode: ", bad.display())) && err.contains("allow_clearnet"),
        "{err}"
    );
    // The same refusal from `serve`: the mote does not start.
    let out = std::process::Command::new(bin())
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_clearnet"));
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/loopback.toml");
    let out = std::process::Command::new(bin())
        .args(["config", "check"])
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn relay_delivery_over_starttls_and_implicit_tls_with_auth() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(certs.path());
    for (mode, flag) in [("starttls", "--starttls"), ("implicit", "--implicit-tls")] {
        let port = free_port();
        let args: Vec<String> = [flag, &cert, &key, "--auth", "relayuser:relay pw"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let sink = Sink::start_args(port, &args);
        let mut cfg = MoteConfig::new(port);
        cfg.tls = mode.into();
        cfg.delivery_extra =
            format!("user = \"relayuser\"\npassword = \"relay pw\"\nca_file = \"{ca}\"\n");
        let mote = Mote::start(&cfg);
        submit(mote.port, "bob@example.net", &format!("over {mode}"));
        let got = wait_for(Duration::from_secs(30), || sink.messages().pop());
        let m =
            got.unwrap_or_else(|| panic!("{mode}: nothing delivered; mote log:\n{}", mote.log()));
        assert!(
            m.split().1.starts_with(format!("over {mode}").as_bytes()),
            "{mode}"
        );
        assert_eq!(m.rcpt_tos, ["bob@example.net"]);
    }
}

#[test]
fn a_relay_with_an_untrusted_certificate_gets_nothing() {
    let certs = tempfile::tempdir().unwrap();
    let (_ca, cert, key) = make_certs(certs.path());
    let port = free_port();
    let args: Vec<String> = ["--implicit-tls", &cert, &key]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let sink = Sink::start_args(port, &args);
    let mut cfg = MoteConfig::new(port);
    cfg.tls = "implicit".into(); // no ca_file: the private CA is not trusted
    let mote = Mote::start(&cfg);
    submit(mote.port, "bob@example.net", "secret");
    // The message stays queued and is retried; it never reaches the sink.
    let retried = wait_for(Duration::from_secs(15), || {
        let out = mote.queue_text(&["--show-addresses"]);
        out.lines()
            .any(|l| l.contains("attempts=") && !l.contains("attempts=0"))
            .then_some(out)
    })
    .expect("delivery attempts are made and fail");
    assert!(retried.contains("queued:    1"), "{retried}");
    assert!(sink.messages().is_empty());
}

#[test]
fn a_permanent_refusal_drops_the_message_and_sends_no_bounce() {
    let port = free_port();
    let args: Vec<String> = [
        "--reject-first",
        "1",
        "--reject-reply",
        "550 5.1.1 no such user",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sink = Sink::start_args(port, &args);
    let mote = Mote::start(&MoteConfig::new(port));
    submit_from(mote.port, "alice@example.org", "gone@example.net", "first");
    // Dropped: the queue empties although nothing was accepted downstream.
    let q = wait_for(Duration::from_secs(15), || {
        let text = mote.queue_text(&[]);
        text.contains("queued:    0").then_some(())
    });
    assert!(q.is_some(), "the refused message leaves the queue");
    // A second message goes through: the only message the sink ever sees.
    submit_from(mote.port, "alice@example.org", "bob@example.net", "second");
    let msgs = sink.wait_messages(1, Duration::from_secs(30));
    assert_eq!(
        msgs.len(),
        1,
        "no bounce or anything else reached the relay"
    );
    assert_eq!(msgs[0].rcpt_tos, ["bob@example.net"]);
    assert!(msgs[0].split().1.starts_with(b"second"));
    assert_private_log(&mote.log());
}

#[test]
fn the_http_api_runs_beside_smtp_with_status_and_durable_jobs() {
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.delay = r#"{ distribution = "constant", value = "1h" }"#.into();
    let mut mote = Mote::start(&cfg);
    let base = format!("http://127.0.0.1:{}", mote.http_port);
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse::<u16>().unwrap(), body.to_string())
    };
    submit(mote.port, "bob@example.net", "queued");
    let auth = format!("Authorization: Bearer {PASSWORD}");
    // Without a token only the end time and the executable are public.
    let (code, body) = curl(&[&format!("{base}/status")]);
    assert_eq!(code, 200);
    let public: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        public.get("queue").is_none() && public.get("transport").is_none(),
        "{body}"
    );
    assert_eq!(
        public["executable"]["version"],
        env!("CARGO_PKG_VERSION"),
        "{body}"
    );
    let (code, body) = curl(&["-H", &auth, &format!("{base}/status")]);
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["queue"]["queued"], 1, "{v}");
    assert_eq!(v["transport"]["mode"], "direct", "{v}");
    assert!(!body.contains("bob@"), "no addresses in /status");
    // The bearer token is checked against the hash from `dustmote passwd`.
    let (code, body) = curl(&[
        "-H",
        &auth,
        "-X",
        "POST",
        &format!("{base}/v1/fetches"),
        "-d",
        r#"{"url":"http://127.0.0.1:9/x"}"#,
    ]);
    assert_eq!(code, 202, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // kill -9 right after the 202: the job is still there after a restart.
    mote.kill9();
    mote.spawn();
    let base = format!("http://127.0.0.1:{}", mote.http_port);
    let (code, body) = curl(&["-H", &auth, &format!("{base}/v1/fetches/{id}")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"state\":\"queued\""), "{body}");
    // The mail and the download job's fetch item wait in the mix.
    let shown = mote.queue_text(&["--show-addresses"]);
    assert!(shown.contains(" fetch queued "), "{shown}");
    assert!(shown.contains("to=bob@example.net"), "{shown}");
    let (code, _) = curl(&[&format!("{base}/metrics")]);
    assert_eq!(code, 401);
    let (code, body) = curl(&["-H", &auth, &format!("{base}/metrics")]);
    assert_eq!(code, 200);
    assert!(
        body.contains("dustmote_queue_items{state=\"queued\"} 2"),
        "{body}"
    );
}

#[test]
fn an_expiring_mote_says_so_and_takes_no_new_mail() {
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    // Expires in 30 s with a 10 min drain margin: already past the drain point.
    let soon =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(30));
    cfg.extra = format!("[mote]\nexpires_at = \"{soon}\"\n");
    let mote = Mote::start(&cfg);
    let (ok, t) = swaks_auth(
        mote.port,
        PASSWORD,
        &["--to", "bob@example.net", "--body", "too late"],
    );
    assert!(!ok && t.contains("452 4.3.1"), "{t}");
    let out = mote.cli("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("expires at: {soon}")), "{text}");
    assert!(sink.messages().is_empty());
}

/// The leaf parts of a message as Python's `email` package (a MIME parser we
/// did not write) reads them: (content type, decoded payload) in order.
fn mime_leaves(raw: &[u8]) -> Vec<(String, Vec<u8>)> {
    let script = r#"
import email, email.policy, json, sys
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.compat32)
out = []
for p in m.walk():
    if p.is_multipart():
        continue
    payload = p.get_payload(decode=True)
    if payload is None:
        payload = p.as_bytes()
    out.append([p.get_content_type(), payload.hex()])
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(raw).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: Vec<(String, String)> = serde_json::from_slice(&out.stdout).unwrap();
    v.into_iter()
        .map(|(t, hex)| {
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (t, bytes)
        })
        .collect()
}

/// Hostile or odd messages through smtplib to a real sink: a client's
/// multipart comes out with fresh boundaries and no preamble or epilogue but
/// the same parts (as Python's email parser reads them), top-level
/// `Content-*` fields other than type, encoding and disposition are dropped;
/// a bare CR in a header, a NUL, and a non-ASCII field name are refused with
/// 550 5.6.0 and reach nobody; a message without a header keeps its body.
#[test]
fn hostile_messages_are_sanitized_or_refused_on_the_wire() {
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.delay = r#"{ distribution = "constant", value = "200ms" }"#.into();
    let mote = Mote::start(&cfg);
    let dir = mote.dir.path();
    let send = |name: &str, raw: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, raw).unwrap();
        smtplib_send(
            mote.port,
            Some("plain"),
            PASSWORD,
            "alice@example.org",
            &["bob@example.net"],
            &p,
        )
    };
    let multipart: &[u8] = b"From: Alice <alice@example.org>\r\n\
To: bob@example.net\r\n\
Subject: multipart\r\n\
Content-ID: <part1.ABC@laptop.home>\r\n\
Content-Language: de-CH\r\n\
Content-X-Originating-IP: 192.0.2.7\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed;\r\n boundary=\"------------t8M0mVqk0XyZ\"\r\n\
\r\n\
This is a multi-part message in MIME format.\r\n\
--------------t8M0mVqk0XyZ\r\n\
Content-Type: multipart/alternative;\r\n boundary=\"------------alt7Q\"\r\n\
\r\n\
--------------alt7Q\r\n\
Content-Type: text/plain; charset=UTF-8; format=flowed\r\n\
Content-Transfer-Encoding: 7bit\r\n\
\r\n\
plain text\r\n\
--------------alt7Q\r\n\
Content-Type: text/html; charset=UTF-8\r\n\
Content-Transfer-Encoding: 7bit\r\n\
\r\n\
<p>html</p>\r\n\
--------------alt7Q--\r\n\
--------------t8M0mVqk0XyZ\r\n\
Content-Type: application/octet-stream; name=\"a.bin\"\r\n\
Content-Disposition: attachment; filename=\"a.bin\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
AAECAwQFBgcICQ==\r\n\
--------------t8M0mVqk0XyZ--\r\n\
epilogue\r\n";
    assert_eq!(send("multipart.eml", multipart)["ok"], true);
    for (name, raw) in [
        ("cr.eml", &b"Subject: a\rX-Injected: 1\r\n\r\nbody\r\n"[..]),
        ("nul.eml", b"Subject: n\r\n\r\nbo\x00dy\r\n"),
        (
            "name.eml",
            b"Subj\xc3\xa9ct: x\r\nSubject: y\r\n\r\nbody\r\n",
        ),
    ] {
        let r = send(name, raw);
        assert_refused(&r, "data", 550);
        assert!(r["text"].as_str().unwrap().starts_with("5.6.0"), "{r}");
    }
    assert_eq!(
        send("noheader.eml", b"just text, no header\r\n")["ok"],
        true
    );
    let got = sink.wait_messages(2, Duration::from_secs(30));
    let find = |needle: &[u8]| {
        got.iter()
            .find(|m| m.raw.windows(needle.len()).any(|w| w == needle))
            .unwrap_or_else(|| panic!("no message with {:?}", String::from_utf8_lossy(needle)))
    };
    let m = find(b"Subject: multipart");
    let text = String::from_utf8_lossy(&m.raw);
    for gone in [
        "t8M0mVqk0XyZ",
        "alt7Q",
        "laptop",
        "de-CH",
        "192.0.2.7",
        "multi-part message",
        "epilogue",
    ] {
        assert!(!text.contains(gone), "{gone:?} reached the sink:\n{text}");
    }
    assert_eq!(mime_leaves(&m.raw), mime_leaves(multipart));
    assert_eq!(mime_leaves(&m.raw).len(), 3);
    let m = find(b"just text, no header");
    assert_eq!(m.split().1, b"just text, no header\r\n");
    mote.wait_drained(Duration::from_secs(30));
    assert_eq!(sink.messages().len(), 2, "nothing refused was delivered");
    assert!(!mote.log().contains("panicked"), "{}", mote.log());
}

/// A client that resends the same message (same envelope, same text) gets
/// 250 both times, and it leaves once; another recipient is another message.
#[test]
fn a_resent_message_is_stored_once() {
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.delay = r#"{ distribution = "constant", value = "300ms" }"#.into();
    let mote = Mote::start(&cfg);
    let file = write_message(
        mote.dir.path(),
        "resend.eml",
        "From: a@example.org\r\nSubject: resent\r\n\r\n",
        b"the same text\r\n",
    );
    let send = |to: &str| {
        let r = smtplib_send(
            mote.port,
            Some("plain"),
            PASSWORD,
            "a@example.org",
            &[to],
            &file,
        );
        assert_eq!(r["ok"], true, "{r}");
    };
    send("b@example.net");
    send("b@example.net");
    send("c@example.net");
    sink.wait_messages(2, Duration::from_secs(30));
    mote.wait_drained(Duration::from_secs(30));
    let got: Vec<Vec<String>> = sink.messages().iter().map(|m| m.rcpt_tos.clone()).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.contains(&vec!["b@example.net".to_string()]));
    assert!(got.contains(&vec!["c@example.net".to_string()]));
    assert!(mote.log().contains("resent message was acknowledged"));
}

/// SMTPUTF8 (RFC 6531): an internationalized address and UTF-8 header
/// fields pass intact to a next hop that offers SMTPUTF8, with the
/// parameter on its MAIL; where the next hop lacks it the message is
/// dropped as a permanent failure (no bounce), not retried.
#[test]
fn smtputf8_passes_intact_or_is_dropped_where_the_next_hop_lacks_it() {
    let from = "j\u{f6}rg@b\u{fc}cher.example";
    let to = "\u{7528}\u{6237}@\u{4f8b}\u{5b50}.example";
    let text = format!(
        "From: J\u{f6}rg <{from}>\r\nTo: <{to}>\r\nSubject: Gr\u{fc}\u{df}e\r\n\r\nHallo\r\n"
    );
    for sink_utf8 in [true, false] {
        let args: Vec<String> = if sink_utf8 {
            Vec::new()
        } else {
            vec!["--no-smtputf8".into()]
        };
        let sink = Sink::start_args(free_port(), &args);
        let mut cfg = MoteConfig::new(sink.port);
        cfg.delay = r#"{ distribution = "constant", value = "200ms" }"#.into();
        let mote = Mote::start(&cfg);
        let file = mote.dir.path().join("utf8.eml");
        std::fs::write(&file, &text).unwrap();
        let r = smtplib_send_with(
            mote.port,
            Some("plain"),
            PASSWORD,
            from,
            &[to],
            &file,
            &["--smtputf8"],
        );
        assert_eq!(r["ok"], true, "{r}");
        if sink_utf8 {
            let m = sink.wait_messages(1, Duration::from_secs(30)).remove(0);
            assert_eq!(m.mail_from, from);
            assert_eq!(m.rcpt_tos, [to]);
            assert!(
                m.mail_options.iter().any(|o| o == "SMTPUTF8"),
                "{:?}",
                m.mail_options
            );
            let header = String::from_utf8(m.split().0.into_bytes()).unwrap();
            assert!(header.contains("Subject: Gr\u{fc}\u{df}e\r\n"), "{header}");
            assert!(header.contains(&format!("To: <{to}>")), "{header}");
        } else {
            mote.wait_drained(Duration::from_secs(30));
            assert!(sink.messages().is_empty());
            assert!(
                mote.log()
                    .contains("dropped after a permanent delivery failure"),
                "{}",
                mote.log()
            );
        }
    }
}
