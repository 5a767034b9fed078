//! Hostile load (tests/peers/hostile.py) against the real binary on
//! 127.0.0.1, phase by phase — junk bearer tokens, wrong AUTH, connections
//! that hold slots, trickled request bodies — while a real user keeps
//! submitting mail. The mote must stay small and the real user served.
//! The bounds asserted here are generous (a debug build, a busy CI
//! machine); the exact numbers come from `benches/hostile.sh` on a release
//! build. Each phase is bounded in time and in count.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Peak resident memory allowed in any phase (the goal on a release build
/// is 256 MiB).
const MAX_RSS_KIB: u64 = 512 * 1024;
/// The real user's slowest submission allowed (goal: 2 s).
const MAX_LATENCY_S: f64 = 5.0;
/// Threads allowed (tokio workers, the blocking pool, sled, the flusher).
const MAX_THREADS: u64 = 64;

#[test]
fn attacks_without_credentials_neither_exhaust_the_mote_nor_lock_out_its_user() {
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.delay = r#"{ distribution = "constant", value = "1s" }"#.into();
    let mote = Mote::start(&cfg);
    let v = json_of(
        Command::new("python3")
            .arg(peer("hostile.py"))
            .args(["--pid", &mote.pid().to_string()])
            .args(["--smtp", &mote.port.to_string()])
            .args(["--http", &mote.http_port.to_string()])
            .args(["--user", USER, "--password", PASSWORD, "--seconds", "6"]),
    );
    println!("hostile load: {v}");
    assert!(
        v["before"]["failures"].as_array().unwrap().is_empty(),
        "{v}"
    );
    for phase in ["junk_tokens", "wrong_auth", "idle_slots", "slow_bodies"] {
        let p = &v[phase];
        let lat: Vec<f64> = p["latency"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let failures = p["failures"].as_array().unwrap();
        assert!(failures.is_empty(), "{phase}: the real user failed: {p}");
        assert!(lat.len() >= 3, "{phase}: too few submissions: {p}");
        let worst = lat.iter().copied().fold(0.0, f64::max);
        assert!(worst <= MAX_LATENCY_S, "{phase}: {worst:.2} s: {p}");
        let rss = p["peak_rss_kib"].as_u64().unwrap();
        assert!(rss <= MAX_RSS_KIB, "{phase}: {rss} KiB: {p}");
        let threads = p["peak_threads"].as_u64().unwrap();
        assert!(threads <= MAX_THREADS, "{phase}: {threads} threads: {p}");
    }
    // Everything the real user sent arrives.
    let sent: usize = [
        "before",
        "junk_tokens",
        "wrong_auth",
        "idle_slots",
        "slow_bodies",
    ]
    .iter()
    .map(|p| v[*p]["latency"].as_array().unwrap().len())
    .sum();
    sink.wait_messages(sent, Duration::from_secs(60));
}
