//! The mote's tor control client trusts nothing a control port says
//! (issue 22, findings 2 and 9), against a hostile stand-in for tor's
//! control port (`tests/peers/fake_control.py`) with the real binary:
//! - a port that names a secret file as its COOKIEFILE never gets it, nor
//!   anything derived from it, nor from the configured cookie: SAFECOOKIE
//!   needs the port to prove it knows tor's cookie first, and only the
//!   configured cookie file is ever read;
//! - a ServiceID or PrivateKey out of tor's format is refused, and nothing
//!   is written to the onion key file;
//! - a port that stalls, or sends an endless line, is given up within
//!   seconds instead of a hang or a growing buffer;
//! - whatever the port does, the mote serves meanwhile (an SMTP greeting
//!   within seconds) and tries again later.
//!
//! A real tor's SAFECOOKIE is `tests/card.rs` (offline tor) and
//! `tests/tor_e2e.rs`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Fake {
    proc: Proc,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Fake {
    fn start(mode: &str, cookiefile: Option<&std::path::Path>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("received");
        let mut c = Command::new("python3");
        c.arg(peer("fake_control.py"))
            .args(["--port", &port.to_string(), "--mode", mode])
            .arg("--log")
            .arg(&log)
            .stdout(Stdio::piped());
        if let Some(f) = cookiefile {
            c.arg("--cookiefile").arg(f);
        }
        let mut child = c.spawn().unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert_eq!(first.trim(), "ready");
        Self {
            proc: Proc(child),
            port,
            log,
            _dir: dir,
        }
    }

    fn received(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What it printed after the ready line (the flood's count).
    fn output(mut self) -> String {
        let mut out = String::new();
        self.proc.signal("TERM");
        let mut stdout = self.proc.0.stdout.take().unwrap();
        std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
        out
    }
}

/// A mote whose `[onion]` is `onion`: it serves at once (an SMTP greeting
/// within 5 s) whatever the control port does. Its log once `want` is in
/// it, and how long that took.
fn serving_with(onion: &str, want: &str) -> (Mote, Sink, String, Duration) {
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.extra = format!("[onion]\n{onion}\n");
    let t0 = Instant::now();
    let mote = Mote::start(&cfg);
    let greeting = greeting(mote.port, Duration::from_secs(5));
    assert!(greeting.starts_with("220 "), "{greeting:?}\n{}", mote.log());
    let log = wait_for(Duration::from_secs(60), || {
        let log = mote.log();
        log.contains(want).then_some(log)
    })
    .unwrap_or_else(|| panic!("{want:?} not in the log:\n{}", mote.log()));
    let took = t0.elapsed();
    assert!(log.contains("tries again"), "{log}");
    (mote, sink, log, took)
}

fn hex(b: &[u8]) -> (String, String) {
    let lower: String = b.iter().map(|x| format!("{x:02x}")).collect();
    (lower.clone(), lower.to_uppercase())
}

/// A 32-byte file of `content`, mode 0600.
fn secret_file(dir: &std::path::Path, name: &str, content: [u8; 32]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn a_control_port_that_names_a_secret_file_never_gets_it() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "sealing.key", [0x5e; 32]);
    let cookie = secret_file(dir.path(), "control_auth_cookie", [0xc0; 32]);
    // With a configured cookie: SAFECOOKIE, and the port cannot prove it
    // knows the cookie.
    let fake = Fake::start("cookiefile", Some(&secret));
    serving_with(
        &format!(
            "control = \"127.0.0.1:{}\"\ncontrol_cookie = \"{}\"",
            fake.port,
            cookie.display()
        ),
        "does not know tor's cookie",
    );
    let got = fake.received();
    assert!(got.contains("AUTHCHALLENGE SAFECOOKIE "), "{got}");
    assert!(
        !got.contains("AUTHENTICATE"),
        "nothing derived from the cookie went out: {got}"
    );
    for b in [[0x5e; 32], [0xc0; 32]] {
        let (lo, up) = hex(&b);
        assert!(!got.contains(&lo) && !got.contains(&up), "{got}");
    }
    // Without one, a port that offers only cookie methods gets nothing.
    let fake = Fake::start("cookieonly", Some(&secret));
    serving_with(
        &format!("control = \"127.0.0.1:{}\"", fake.port),
        "no usable method",
    );
    let got = fake.received();
    assert!(
        !got.contains("AUTHENTICATE") && !got.contains("AUTHCHALLENGE"),
        "{got}"
    );
}

#[test]
fn identifiers_and_keys_out_of_tors_format_are_refused() {
    let fake = Fake::start("badid", None);
    let (mote, _sink, _, _) = serving_with(
        &format!("control = \"127.0.0.1:{}\"", fake.port),
        "ServiceID that is not a v3 onion id",
    );
    // No onion key file was written (they live beside the sealing key).
    let onion_files: Vec<_> = files_under(mote.runtime.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "onion"))
        .collect();
    assert!(onion_files.is_empty(), "{onion_files:?}");
}

#[test]
fn a_stalling_or_flooding_control_port_is_given_up_in_seconds() {
    let fake = Fake::start("stall", None);
    let (_m, _sink, _, took) =
        serving_with(&format!("control = \"127.0.0.1:{}\"", fake.port), "stalled");
    assert!(took < Duration::from_secs(30), "{took:?}");
    println!("stalling port: given up after {took:?}");
    let fake = Fake::start("flood", None);
    let (_m, _sink, _, took) = serving_with(
        &format!("control = \"127.0.0.1:{}\"", fake.port),
        "longer than the control protocol's",
    );
    let out = fake.output();
    let sent: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("flood: sent "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    println!("flooding port: {sent} bytes sent before the mote hung up, after {took:?}");
    assert!(sent < 32 << 20, "{sent} bytes taken in");
}
