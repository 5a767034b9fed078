//! Protocol edge cases of the SMTP server, byte for byte, against a capturing
//! admission (real clients are exercised in the workspace's `tests/`).
//! Timeouts run in tokio's paused (simulated) time.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use dust_mixer::Once;
use dust_proxies::access::auth::{hash_password, Users};
use dust_proxies::intake::smtp::{Server, SmtpConfig};
use dust_proxies::intake::{Admission, IntakeError};
use dust_proxies::item::mail::StoredMail;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Default)]
struct Capture {
    stored: Mutex<Vec<StoredMail>>,
    fail: Mutex<Option<fn() -> IntakeError>>,
}

impl Admission for Capture {
    async fn admit(&self, payload: Vec<u8>, _once: Option<Once>) -> Result<(), IntakeError> {
        if let Some(f) = *self.fail.lock().unwrap() {
            return Err(f());
        }
        self.stored
            .lock()
            .unwrap()
            .push(StoredMail::decode(&payload).unwrap());
        Ok(())
    }
}

fn users() -> Users {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let h = HASH.get_or_init(|| hash_password(b"pw").unwrap()).clone();
    Users::new([("u".to_string(), h)]).unwrap()
}

fn config() -> SmtpConfig {
    SmtpConfig {
        users: users(),
        max_message_bytes: 4096,
        max_recipients: 3,
        ..SmtpConfig::default()
    }
}

struct Running {
    port: u16,
    capture: Arc<Capture>,
    stop: watch::Sender<bool>,
}

async fn start(cfg: SmtpConfig) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let capture = Arc::new(Capture::default());
    let (stop, rx) = watch::channel(false);
    let server = Server::new(cfg, Arc::clone(&capture));
    tokio::spawn(async move { server.serve(listener, rx, Duration::from_secs(1)).await });
    Running {
        port,
        capture,
        stop,
    }
}

struct Client {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(port: u16) -> (Self, String) {
        let (rd, wr) = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap()
            .into_split();
        let mut c = Self {
            rd: BufReader::new(rd),
            wr,
        };
        let greeting = c.reply().await;
        (c, greeting)
    }

    async fn send(&mut self, s: &str) {
        self.wr.write_all(s.as_bytes()).await.unwrap();
    }

    /// One whole (possibly multi-line) reply, or "" at EOF.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.rd.read_line(&mut line).await.unwrap() == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    async fn cmd(&mut self, s: &str) -> String {
        self.send(s).await;
        self.reply().await
    }

    async fn login(&mut self) {
        assert!(self
            .cmd("EHLO c\r\n")
            .await
            .contains("250 ENHANCEDSTATUSCODES"));
        let creds = base64::engine::general_purpose::STANDARD.encode(b"\0u\0pw");
        assert!(self
            .cmd(&format!("AUTH PLAIN {creds}\r\n"))
            .await
            .starts_with("235 "));
    }
}

fn body_of(m: &StoredMail) -> &[u8] {
    let i = m.message.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    &m.message[i + 4..]
}

#[tokio::test]
async fn only_crlf_dot_crlf_ends_data_dots_are_unstuffed_bare_lf_is_normalized() {
    let r = start(config()).await;
    let (mut c, greeting) = Client::connect(r.port).await;
    assert!(
        greeting.starts_with("220 dustmote.invalid ESMTP"),
        "{greeting}"
    );
    c.login().await;
    assert!(c
        .cmd("MAIL FROM:<a@example.org>\r\n")
        .await
        .starts_with("250 "));
    assert!(c
        .cmd("RCPT TO:<b@example.net>\r\n")
        .await
        .starts_with("250 "));
    assert!(c.cmd("DATA\r\n").await.starts_with("354 "));
    // "\n.\n" and "\n.\r\n" (a dot line after a bare LF) do not end DATA.
    let reply = c
        .cmd("Subject: t\r\n\r\nbare lf\n.\nafter\n.\r\n..stuffed\r\n.x\r\nlast\r\n.\r\n")
        .await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let stored = r.capture.stored.lock().unwrap().clone();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        String::from_utf8_lossy(body_of(&stored[0])),
        "bare lf\r\n\r\nafter\r\n\r\n.stuffed\r\nx\r\nlast\r\n"
    );
    assert_eq!(
        (stored[0].from.as_str(), stored[0].rcpts.as_slice()),
        ("a@example.org", &["b@example.net".to_string()][..])
    );
}

#[tokio::test]
async fn a_pipelined_batch_gets_its_replies_in_order() {
    let r = start(config()).await;
    let (mut c, _) = Client::connect(r.port).await;
    let creds = base64::engine::general_purpose::STANDARD.encode(b"\0u\0pw");
    c.send(&format!(
        "EHLO c\r\nAUTH PLAIN {creds}\r\nMAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<bad address>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n"
    ))
    .await;
    let mut replies = Vec::new();
    for _ in 0..7 {
        replies.push(c.reply().await);
    }
    let codes: Vec<&str> = replies
        .iter()
        .map(|r| &r.lines().last().unwrap()[..3])
        .collect();
    assert_eq!(
        codes,
        ["250", "235", "250", "250", "501", "250", "354"],
        "{replies:?}"
    );
    assert!(c
        .cmd("Subject: p\r\n\r\nx\r\n.\r\nQUIT\r\n")
        .await
        .starts_with("250 "));
    assert!(c.reply().await.starts_with("221 "));
    assert_eq!(
        r.capture.stored.lock().unwrap()[0].rcpts,
        ["b@example.net", "c@example.net"]
    );
}

#[tokio::test]
async fn limits_and_sequence_errors_get_the_right_codes() {
    let r = start(config()).await;
    let (mut c, _) = Client::connect(r.port).await;
    assert!(
        c.cmd("MAIL FROM:<a@example.org>\r\n")
            .await
            .starts_with("503 5.5.1"),
        "HELO first"
    );
    assert!(c
        .cmd("EHLO c\r\n")
        .await
        .contains("250-AUTH PLAIN LOGIN\r\n"));
    assert!(c
        .cmd("MAIL FROM:<a@example.org>\r\n")
        .await
        .starts_with("530 5.7.0"));
    c.login().await;
    assert!(c
        .cmd("RCPT TO:<b@example.net>\r\n")
        .await
        .starts_with("503 "));
    assert!(c.cmd("DATA\r\n").await.starts_with("503 "));
    assert!(c
        .cmd("MAIL FROM:<a@example.org> SIZE=5000\r\n")
        .await
        .starts_with("552 5.3.4"));
    assert!(c
        .cmd("MAIL FROM:<a@example.org> SMTPUTF8=yes\r\n")
        .await
        .starts_with("555 "));
    // A non-ASCII character right after the keyword once panicked the
    // session (a str slice inside a character); now it is a syntax error.
    assert!(c
        .cmd("MAIL FROM\u{24601}<a@example.org>\r\n")
        .await
        .starts_with("501 "));
    // A non-ASCII address needs SMTPUTF8 (RFC 6531 3.6.1).
    assert!(c
        .cmd("MAIL FROM:<j\u{f6}rg@example.org>\r\n")
        .await
        .starts_with("553 5.6.7"));
    assert!(c
        .cmd("MAIL FROM:<not an address>\r\n")
        .await
        .starts_with("501 5.1.7"));
    assert!(
        c.cmd("MAIL FROM:<>\r\n").await.starts_with("250 "),
        "null sender"
    );
    assert!(c.cmd("DATA\r\n").await.starts_with("554 "), "no recipients");
    for i in 0..3 {
        assert!(c
            .cmd(&format!("RCPT TO:<r{i}@example.net>\r\n"))
            .await
            .starts_with("250 "));
    }
    assert!(c
        .cmd("RCPT TO:<r3@example.net>\r\n")
        .await
        .starts_with("452 4.5.3"));
    let long = format!("NOOP {}\r\n", "x".repeat(1200));
    assert!(c.cmd(&long).await.starts_with("500 5.5.2"));
    assert!(
        c.cmd("NOOP\r\n").await.starts_with("250 "),
        "the session survives a long line"
    );
    // Oversize without a SIZE declaration: 552 after DATA, nothing stored.
    assert!(c.cmd("DATA\r\n").await.starts_with("354 "));
    let mut data = String::from("Subject: b\r\n\r\n");
    while data.len() < 5000 {
        data.push_str(&"y".repeat(70));
        data.push_str("\r\n");
    }
    data.push_str(".\r\n");
    assert!(c.cmd(&data).await.starts_with("552 5.3.4"));
    assert!(r.capture.stored.lock().unwrap().is_empty());
    assert!(c.cmd("RSET\r\n").await.starts_with("250 "));
    assert!(c.cmd("QUIT\r\n").await.starts_with("221 "));
}

#[tokio::test]
async fn auth_login_cancel_bad_base64_and_too_many_failures() {
    let r = start(config()).await;
    let (mut c, _) = Client::connect(r.port).await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    c.cmd("EHLO c\r\n").await;
    assert!(c
        .cmd("AUTH LOGIN\r\n")
        .await
        .starts_with("334 VXNlcm5hbWU6"));
    assert!(c.cmd("*\r\n").await.starts_with("501 "), "cancelled");
    assert!(
        c.cmd("AUTH PLAIN !!!\r\n").await.starts_with("501 "),
        "bad base64"
    );
    assert!(c.cmd("AUTH CRAM-MD5\r\n").await.starts_with("504 "));
    assert!(c.cmd("AUTH LOGIN\r\n").await.starts_with("334 "));
    assert!(c
        .cmd(&format!("{}\r\n", b64("u")))
        .await
        .starts_with("334 UGFzc3dvcmQ6"));
    assert!(c
        .cmd(&format!("{}\r\n", b64("wrong")))
        .await
        .starts_with("535 5.7.8"));
    assert!(c
        .cmd(&format!("AUTH PLAIN {}\r\n", b64("\0nobody\0pw")))
        .await
        .starts_with("535 "));
    assert!(c
        .cmd(&format!("AUTH PLAIN {}\r\n", b64("\0u\0nope")))
        .await
        .starts_with("421 4.7.0"));
    assert_eq!(c.reply().await, "", "closed after three failures");
    // AUTH LOGIN done right.
    let (mut c, _) = Client::connect(r.port).await;
    c.cmd("EHLO c\r\n").await;
    assert!(c
        .cmd(&format!("AUTH LOGIN {}\r\n", b64("u")))
        .await
        .starts_with("334 UGFzc3dvcmQ6"));
    assert!(c
        .cmd(&format!("{}\r\n", b64("pw")))
        .await
        .starts_with("235 "));
    assert!(
        c.cmd("AUTH PLAIN x\r\n").await.starts_with("503 "),
        "already authenticated"
    );
}

#[tokio::test]
async fn storage_failure_is_451_and_shutdown_is_421() {
    let r = start(config()).await;
    *r.capture.fail.lock().unwrap() = Some(|| {
        IntakeError::Failed(dust_mixer::MixerError::Storage(
            dust_mixer::StorageError::Flush(dust_storage::flusher::FlushError::Fsync(Arc::new(
                std::io::Error::other("the disk failed"),
            ))),
        ))
    });
    let (mut c, _) = Client::connect(r.port).await;
    c.login().await;
    let tx = "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n";
    c.send(tx).await;
    for _ in 0..3 {
        c.reply().await;
    }
    assert!(c
        .cmd("Subject: s\r\n\r\nx\r\n.\r\n")
        .await
        .starts_with("451 4.3.0"));
    *r.capture.fail.lock().unwrap() = Some(|| IntakeError::ShuttingDown);
    c.send(tx).await;
    for _ in 0..3 {
        c.reply().await;
    }
    assert!(c
        .cmd("Subject: s\r\n\r\nx\r\n.\r\n")
        .await
        .starts_with("421 4.3.2"));
    assert_eq!(c.reply().await, "");
    // An idle session is told 421 when the server stops.
    let (mut idle, _) = Client::connect(r.port).await;
    r.stop.send(true).unwrap();
    assert!(idle.reply().await.starts_with("421 4.3.2"));
}

#[tokio::test(start_paused = true)]
async fn beyond_the_limit_strangers_make_room_and_then_421() {
    let r = start(SmtpConfig {
        max_connections: 2,
        ..config()
    })
    .await;
    let (mut a, ga) = Client::connect(r.port).await;
    let (mut b, gb) = Client::connect(r.port).await;
    assert!(ga.starts_with("220 ") && gb.starts_with("220 "));
    b.login().await;
    // All slots taken, and the stranger has had less than 2 s to
    // authenticate: the newcomer is refused.
    let (_early, ge) = Client::connect(r.port).await;
    assert!(ge.starts_with("421 4.3.2"), "{ge}");
    // A stranger that failed to authenticate makes room at once.
    let wrong = base64::engine::general_purpose::STANDARD.encode(b"\0u\0wrong");
    assert!(a
        .cmd(&format!("EHLO a\r\nAUTH PLAIN {wrong}\r\n"))
        .await
        .starts_with("250"));
    assert!(a.reply().await.starts_with("535 "));
    let (mut c, gc) = Client::connect(r.port).await;
    assert!(gc.starts_with("220 "), "{gc}");
    let ra = a.reply().await;
    assert!(ra.starts_with("421 4.7.0"), "{ra}");
    // A young stranger that has not failed is left alone; once it had 2 s
    // to authenticate, it makes room.
    let (_d, gd) = Client::connect(r.port).await;
    assert!(gd.starts_with("421 4.3.2"), "{gd}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut e, ge) = Client::connect(r.port).await;
    assert!(ge.starts_with("220 "), "{ge}");
    let rc = c.reply().await;
    assert!(rc.starts_with("421 4.7.0"), "{rc}");
    e.login().await;
    // Every slot holds an authenticated session: nobody to evict.
    let (_f, gf) = Client::connect(r.port).await;
    assert!(gf.starts_with("421 4.3.2"), "{gf}");
}

#[tokio::test(start_paused = true)]
async fn idle_sessions_time_out_with_421() {
    let r = start(SmtpConfig {
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(180),
        ..config()
    })
    .await;
    // A stranger who does not authenticate is gone after a minute ...
    let (mut c, _) = Client::connect(r.port).await;
    let t0 = tokio::time::Instant::now();
    assert!(c.reply().await.starts_with("421 4.4.2"), "auth deadline");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(60) && waited < Duration::from_secs(61),
        "{waited:?}"
    );
    // ... a user after the command timeout.
    let (mut c, _) = Client::connect(r.port).await;
    c.login().await;
    let t0 = tokio::time::Instant::now();
    assert!(c.reply().await.starts_with("421 4.4.2"), "command timeout");
    assert!(t0.elapsed() >= Duration::from_secs(300));
    let (mut c, _) = Client::connect(r.port).await;
    c.login().await;
    c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        .await;
    for _ in 0..3 {
        c.reply().await;
    }
    c.send("Subject: half a message\r\n").await;
    let t0 = tokio::time::Instant::now();
    assert!(c.reply().await.starts_with("421 4.4.2"), "data timeout");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(180) && waited < Duration::from_secs(300),
        "{waited:?}"
    );
    assert!(r.capture.stored.lock().unwrap().is_empty());
}

/// An over-long line that ends in a bare LF does not make the next `.` line
/// the end of DATA (so the lines after it are never run as commands); one
/// that ends in CRLF does.
#[tokio::test]
async fn a_dot_after_an_over_long_bare_lf_line_does_not_end_data() {
    let r = start(config()).await;
    let (mut c, _) = Client::connect(r.port).await;
    c.login().await;
    for (end, dot_ends_data) in [("\n", false), ("\r\n", true)] {
        assert!(c
            .cmd("MAIL FROM:<a@example.org>\r\n")
            .await
            .starts_with("250 "));
        assert!(c
            .cmd("RCPT TO:<b@example.net>\r\n")
            .await
            .starts_with("250 "));
        assert!(c.cmd("DATA\r\n").await.starts_with("354 "));
        let long = "x".repeat(1200);
        let reply = c
            .cmd(&format!("Subject: t\r\n\r\n{long}{end}.\r\nQUIT\r\n.\r\n"))
            .await;
        assert!(reply.starts_with("500 5.5.2"), "{reply}");
        assert!(r.capture.stored.lock().unwrap().is_empty());
        // If the first "." ended DATA, QUIT ran (221) and the last "." is a
        // command (500 5.5.1 or a closed connection).
        let next = c.cmd("NOOP\r\n").await;
        if dot_ends_data {
            assert!(next.starts_with("221 "), "{next}");
            return;
        }
        assert!(next.starts_with("250 "), "{next}");
    }
    unreachable!("the CRLF case returns");
}

/// Strangers cannot hold a slot by chatting: at most 10 commands before
/// AUTH; and no session lasts longer than 30 minutes, however busy.
#[tokio::test(start_paused = true)]
async fn sessions_have_command_and_length_limits() {
    let r = start(config()).await;
    let (mut c, _) = Client::connect(r.port).await;
    for i in 0..10 {
        assert!(c.cmd("NOOP\r\n").await.starts_with("250 "), "NOOP {i}");
    }
    let last = c.cmd("NOOP\r\n").await;
    assert!(last.starts_with("421 4.7.0"), "{last}");
    // An authenticated session that keeps talking is closed at 30 min.
    let (mut c, _) = Client::connect(r.port).await;
    c.login().await;
    let t0 = tokio::time::Instant::now();
    let end = loop {
        tokio::time::sleep(Duration::from_secs(100)).await;
        let reply = c.cmd("NOOP\r\n").await;
        if !reply.starts_with("250 ") {
            break reply;
        }
        assert!(t0.elapsed() < Duration::from_secs(1900), "never closed");
    };
    assert!(end.starts_with("421 4.4.2"), "{end}");
    assert!(
        t0.elapsed() >= Duration::from_secs(1700),
        "{:?}",
        t0.elapsed()
    );
}

/// SMTPUTF8 is offered; with it, internationalized addresses are taken and
/// the stored message remembers that it needs SMTPUTF8 on the way out.
#[tokio::test]
async fn smtputf8_is_offered_and_remembered() {
    let r = start(config()).await;
    let (mut c, _) = Client::connect(r.port).await;
    assert!(c.cmd("EHLO c\r\n").await.contains("250-SMTPUTF8\r\n"));
    c.login().await;
    let steps = [
        (
            "MAIL FROM:<j\u{f6}rg@b\u{fc}cher.example> SMTPUTF8\r\n",
            "250 ",
        ),
        ("RCPT TO:<\u{7528}\u{6237}@example.net>\r\n", "250 "),
        ("DATA\r\n", "354 "),
        ("Subject: Gr\u{fc}\u{df}e\r\n\r\nHallo\r\n.\r\n", "250 "),
    ];
    for (cmd, want) in steps {
        let got = c.cmd(cmd).await;
        assert!(got.starts_with(want), "{cmd:?}: {got}");
    }
    let stored = r.capture.stored.lock().unwrap().clone();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].smtputf8);
    assert_eq!(stored[0].rcpts, ["\u{7528}\u{6237}@example.net"]);
}
