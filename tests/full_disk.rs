//! Full disk: the data directory on a small tmpfs, filled from outside.
//! Below the `[storage] min_free` reserve new mail gets `452 4.3.1` and new
//! downloads `507`; SIGTERM works; a restart on the nearly full disk opens
//! and drains what was queued; once space returns the mote takes mail again
//! without a restart. Every message that got 250 reaches the sink.
//!
//! Needs root (it mounts a tmpfs); CI runs as root.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1024 * 1024;
const TMPFS: u64 = 48 * MIB;
const RESERVE: u64 = 16 * MIB;

fn free_bytes(dir: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Fill the filesystem of `dir` with a file until `leave` bytes are free.
fn fill(dir: &std::path::Path, leave: u64) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let block = vec![0xa5u8; 256 * 1024];
    let mut free = free_bytes(dir);
    while free > leave {
        let n = (free - leave).min(block.len() as u64) as usize;
        f.write_all(&block[..n]).unwrap();
        f.flush().unwrap();
        free = free_bytes(dir);
    }
    path
}

/// swaks with the standard test user; returns whether it got 250 and its
/// transcript.
fn send(port: u16, n: usize) -> (bool, String) {
    swaks_auth(
        port,
        PASSWORD,
        &[
            "--to",
            "sink@example.net",
            "--body",
            &format!("full-disk message {n}"),
        ],
    )
}

fn post_fetch(http_port: u16) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {PASSWORD}"))
        .args(["-X", "POST", "-d", r#"{"url":"http://127.0.0.1:9/x"}"#])
        .arg(format!("http://127.0.0.1:{http_port}/v1/fetches"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

#[test]
fn full_disk_refuses_then_recovers_without_loss() {
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.tmpfs_bytes = Some(TMPFS);
    cfg.storage_extra = format!("min_free = {RESERVE}\ncache_bytes = 4194304");
    // Held long enough that a stop and restart happen while they wait.
    cfg.delay = r#"{ distribution = "constant", value = "3s" }"#.into();
    cfg.extra = "[fetch]\nallow_private_addresses = true\n".into();
    let mut mote = Mote::start(&cfg);
    let data = mote.data_dir();
    let mut accepted = Vec::new();
    for n in 0..5 {
        let (ok, t) = send(mote.port, n);
        assert!(ok, "{t}");
        accepted.push(n);
    }

    // Nearly full (from outside the mote): below the reserve, above zero.
    let filler = fill(&data, RESERVE / 2);
    println!("free after filling: {} MiB", free_bytes(&data) / MIB);
    let (ok, t) = send(mote.port, 100);
    assert!(!ok && t.contains("452 4.3.1"), "{t}");
    let (code, body) = post_fetch(mote.http_port);
    assert_eq!(code, 507, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "insufficient_storage", "{body}");

    // SIGTERM is honoured on the full disk, promptly.
    let t0 = Instant::now();
    assert!(mote.terminate().success(), "{}", mote.log());
    println!("stopped in {:?} on a nearly full disk", t0.elapsed());
    // A restart on the nearly full disk opens and drains the queue.
    mote.spawn();
    let got = sink.wait_messages(accepted.len(), Duration::from_secs(60));
    assert_eq!(got.len(), accepted.len(), "{}", mote.log());
    mote.wait_drained(Duration::from_secs(30));
    let (ok, t) = send(mote.port, 101);
    assert!(
        !ok && t.contains("452 4.3.1"),
        "still below the reserve: {t}"
    );

    // Space returns: mail and downloads are taken again, no restart.
    std::fs::remove_file(&filler).unwrap();
    let pid = mote.pid();
    for n in 5..8 {
        let (ok, t) = send(mote.port, n);
        assert!(ok, "{t}");
        accepted.push(n);
    }
    let (code, body) = post_fetch(mote.http_port);
    assert_eq!(code, 202, "{body}");
    assert_eq!(mote.pid(), pid, "the same process");
    let got = sink.wait_messages(accepted.len(), Duration::from_secs(60));
    let mut bodies: Vec<String> = got
        .iter()
        .map(|m| {
            let (_, b) = m.split();
            String::from_utf8_lossy(b).trim().to_string()
        })
        .collect();
    bodies.sort();
    bodies.dedup();
    let want: Vec<String> = accepted
        .iter()
        .map(|n| format!("full-disk message {n}"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(bodies, want, "every acknowledged message arrived");

    // SIGTERM once more, with the disk filled to the last byte meanwhile:
    // the stop is bounded even if a write cannot be made.
    fill(&data, 0);
    let t0 = Instant::now();
    let _ = mote.terminate();
    assert!(t0.elapsed() < Duration::from_secs(30));
}

#[test]
fn disk_filled_to_the_last_byte_from_outside_loses_nothing() {
    // No reserve: the worst case, sled's own writes fail. sled 0.34 cannot
    // go on after that; the mote must stop by itself (its supervisor
    // restarts it) and every message that got 250 must be delivered after
    // the restart.
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.tmpfs_bytes = Some(TMPFS);
    cfg.storage_extra = "min_free = 0\ncache_bytes = 4194304".into();
    cfg.delay = r#"{ distribution = "constant", value = "2s" }"#.into();
    let mut mote = Mote::start(&cfg);
    let data = mote.data_dir();
    let mut accepted = Vec::new();
    for n in 0..3 {
        let (ok, t) = send(mote.port, n);
        assert!(ok, "{t}");
        accepted.push(n);
    }
    let filler = fill(&data, 0);
    // Top up byte by byte: nothing at all is left.
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&filler)
            .unwrap();
        while f.write_all(&[0]).and_then(|_| f.flush()).is_ok() && free_bytes(&data) > 0 {}
    }
    let mut refused = 0;
    for n in 10..20 {
        match send(mote.port, n) {
            (true, _) => accepted.push(n),
            (false, t) if t.contains("451") || t.contains("452") || t.contains("421") => {
                refused += 1;
            }
            // The mote stops by itself at any moment here (checked below):
            // before this connection, or during its session.
            (false, t) if t.contains("Connection refused") || !port_open(mote.port) => break,
            (false, t) => panic!("neither a temporary refusal nor a stop: {t}"),
        }
        if !port_open(mote.port) {
            break;
        }
    }
    println!(
        "on the full disk: {} accepted in all, {refused} refused",
        accepted.len()
    );
    let exited = mote.wait_exit(Duration::from_secs(60));
    let status =
        exited.unwrap_or_else(|| panic!("the mote did not stop by itself:\n{}", mote.log()));
    assert!(!status.success());
    assert!(
        mote.log().contains("the store cannot write any more"),
        "{}",
        mote.log()
    );
    // Space returns; the supervisor (here: the test) starts it again.
    std::fs::remove_file(&filler).unwrap();
    mote.spawn();
    let got = sink.wait_messages(accepted.len(), Duration::from_secs(60));
    let bodies: std::collections::BTreeSet<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(m.split().1).trim().to_string())
        .collect();
    for n in &accepted {
        assert!(
            bodies.contains(&format!("full-disk message {n}")),
            "message {n} got 250 and was lost; got {bodies:?}"
        );
    }
    let (ok, t) = send(mote.port, 99);
    assert!(ok, "{t}");
}
