//! Hop at drain (issue 12, part 3) with the real binary on loopback: a mote
//! near its end hands its queue to a successor named at run time (`dustmote
//! reload`) instead of releasing it at the drain point; with the successor
//! unreachable it releases everything itself, spread before the drain
//! point; a kill -9 in the middle of the hand-off loses and duplicates
//! nothing. Every message is counted at a real SMTP sink by Message-ID.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::{password_hash, wait_for, Delivered, Mote, MoteConfig, Sink, PASSWORD};

/// `[mote]` for a mote ending `life` from now: drain margin 4 s, hand-off
/// window 8 s (so the hand-off begins at `life - 12 s`).
fn mote_section(life: Duration, successor: Option<&str>) -> String {
    let end = humantime::format_rfc3339_seconds(SystemTime::now() + life);
    let successor = successor.map_or(String::new(), |s| format!("successor = \"{s}\"\n"));
    format!(
        "[mote]\nexpires_at = \"{end}\"\ndrain_margin = \"4s\"\nhop = \"at_drain\"\n\
         hop_window = \"8s\"\n{successor}"
    )
}

/// A's `[[peers]]` entry for its successor at `port`.
fn successor_peer(port: u16) -> String {
    format!(
        "[[peers]]\nname = \"b\"\nurl = \"http://127.0.0.1:{port}\"\ntoken = \"a:{PASSWORD}\"\n"
    )
}

/// The successor B: accepts items from "a", delivers to the sink after
/// `delay`.
fn successor(sink: &Sink, delay: &str) -> Mote {
    let mut cb = MoteConfig::new(sink.port);
    cb.delay = delay.into();
    cb.extra = format!(
        "[[peers]]\nname = \"a\"\ntoken_hash = \"{}\"\n",
        password_hash()
    );
    Mote::start(&cb)
}

/// The mote A: no authentication (smtp-source), everything held for an
/// hour (so without hopping it would all leave at the drain point).
fn predecessor(sink: &Sink, mote: &str, peers: &str) -> Mote {
    let mut ca = MoteConfig::new(sink.port);
    ca.require_auth = false;
    ca.delay = r#"{ distribution = "constant", value = "1h" }"#.into();
    ca.extra = format!("{mote}{peers}");
    Mote::start(&ca)
}

/// smtp-source (Postfix): `count` messages over 4 sessions, numbered
/// recipients, so no two are replays of each other.
fn smtp_source(port: u16, count: usize) {
    let ok = Command::new("smtp-source")
        .args(["-c", "-N", "-s", "4", "-m", &count.to_string(), "-l", "512"])
        .args(["-M", "[127.0.0.1]", "-f", "hop@example.org"])
        .args(["-t", "sink@example.net"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("smtp-source (postfix)")
        .success();
    assert!(ok, "not every message got 250");
}

fn message_ids(got: &[Delivered]) -> Vec<String> {
    got.iter()
        .map(|m| {
            let (h, _) = m.split();
            h.lines()
                .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
                .unwrap_or_else(|| panic!("no Message-ID in {h}"))
                .to_string()
        })
        .collect()
}

/// Exactly `n` messages at the sink, each once.
fn exactly_once(sink: &Sink, n: usize, timeout: Duration) -> Vec<Delivered> {
    sink.wait_messages(n, timeout);
    // A duplicate would arrive shortly after the rest: give it the time.
    std::thread::sleep(Duration::from_millis(500));
    let got = sink.messages();
    let ids = message_ids(&got);
    let distinct: HashSet<&String> = ids.iter().collect();
    println!(
        "{} delivered, {} distinct, {n} acknowledged",
        got.len(),
        distinct.len()
    );
    assert_eq!(distinct.len(), n, "lost messages");
    assert_eq!(got.len(), n, "duplicates");
    got
}

fn hop_status(m: &Mote) -> serde_json::Value {
    m.status_json()["hop"].clone()
}

#[test]
fn at_the_hop_point_the_queue_moves_to_a_successor_named_at_run_time() {
    const N: usize = 40;
    let sink = Sink::start();
    let b = successor(&sink, r#"{ distribution = "constant", value = "2s" }"#);
    // A knows B as a peer, but no successor is named yet.
    let life = Duration::from_secs(30);
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut a = predecessor(
        &sink,
        &mote_section(life, None),
        &successor_peer(b.http_port),
    );
    smtp_source(a.port, N);
    let h = hop_status(&a);
    assert_eq!(h["state"], "waiting", "{h}");
    assert_eq!(h["successor"], serde_json::Value::Null, "{h}");

    // The launcher spawned B late: name it and reload.
    let text = std::fs::read_to_string(&a.config).unwrap();
    std::fs::write(
        &a.config,
        text.replace(
            "hop_window = \"8s\"\n",
            "hop_window = \"8s\"\nsuccessor = \"b\"\n",
        ),
    )
    .unwrap();
    let out = a.cli("reload");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("successor: b"),
        "{said}"
    );
    let status = String::from_utf8_lossy(&a.cli("status").stdout).into_owned();
    assert!(
        status.contains("hop:       waiting at") && status.contains(" to b ("),
        "{status}"
    );

    // At the hop point everything moves to B, which delivers it.
    let got = exactly_once(&sink, N, Duration::from_secs(60));
    let h = hop_status(&a);
    println!("A's hand-off: {h}");
    assert_eq!(h["handed_off"], N as u64, "{h}");
    assert_eq!(h["fallbacks"], 0, "{h}");
    assert_eq!(a.queue_counts(), Some((0, 0)));
    let am = a.metrics();
    assert_eq!(
        common::metric(&am, "dustmote_hop_handed_off_total "),
        N as u64,
        "{am}"
    );
    // B delivered everything (each message reached the sink once, and B
    // got only what A handed over), after its own delay: its latency
    // histogram has nothing under 1 s.
    let bm = b.metrics();
    assert_eq!(
        common::metric(&bm, "dustmote_mix_latency_seconds_count "),
        N as u64,
        "{bm}"
    );
    assert_eq!(
        common::metric(&bm, "dustmote_mix_latency_seconds_bucket{le=\"1.0\"} "),
        0,
        "{bm}"
    );
    // The hand-off began at the hop point, not before: nothing reached
    // the sink earlier than the hop point (life - drain 4 s - window 8 s
    // from the start) plus B's 2 s.
    let first = got.iter().map(|m| m.time).fold(f64::INFINITY, f64::min);
    let hop_at = started + (life - Duration::from_secs(12)).as_secs_f64();
    println!("first delivery {:.1} s after the hop point", first - hop_at);
    assert!(
        first >= hop_at + 2.0 - 1.0,
        "delivered before the hop point"
    );
    // A ends by itself at its expiry, with status 10 (the unit powers off).
    let end = a.wait_exit(life + Duration::from_secs(20));
    assert_eq!(end.and_then(|s| s.code()), Some(10), "{}", a.log());
}

#[test]
fn with_the_successor_unreachable_everything_is_released_here_before_the_end() {
    const N: usize = 40;
    let sink = Sink::start();
    // A successor that is named but not there: a port nobody listens on.
    let dead = common::free_port();
    let life = Duration::from_secs(30);
    let mut a = predecessor(&sink, &mote_section(life, Some("b")), &successor_peer(dead));
    smtp_source(a.port, N);
    let got = exactly_once(&sink, N, Duration::from_secs(60));
    let h = hop_status(&a);
    println!("A's hand-off: {h}");
    assert_eq!(h["handed_off"], 0, "{h}");
    assert_eq!(h["fallbacks"], N as u64, "{h}");
    // Released spread out over the rest of the window, not at once: the
    // sink saw them over more than a second.
    let times: Vec<f64> = got.iter().map(|m| m.time).collect();
    let spread = times.iter().cloned().fold(f64::MIN, f64::max)
        - times.iter().cloned().fold(f64::MAX, f64::min);
    println!("fallback releases spread over {spread:.1} s");
    assert!(spread > 1.0, "a burst: {spread} s");
    assert_eq!(a.queue_counts(), Some((0, 0)));
    let end = a.wait_exit(life + Duration::from_secs(20));
    assert_eq!(end.and_then(|s| s.code()), Some(10), "{}", a.log());
}

#[test]
fn kill_9_of_the_sender_in_the_middle_of_the_hand_off_loses_and_duplicates_nothing() {
    const N: usize = 300;
    let sink = Sink::start();
    let b = successor(&sink, r#"{ distribution = "constant", value = "1s" }"#);
    let life = Duration::from_secs(40);
    let mut a = predecessor(
        &sink,
        &mote_section(life, Some("b")),
        &successor_peer(b.http_port),
    );
    smtp_source(a.port, N);
    // Wait for the hand-off to be under way, then kill A in the middle.
    let moving = wait_for(Duration::from_secs(40), || {
        let n = hop_status(&a)["handed_off"].as_u64().unwrap_or(0);
        (n > 0).then_some(n)
    });
    a.kill9();
    println!("kill -9 of A after {moving:?} items moved");
    assert!(
        moving.is_some_and(|n| n < N as u64),
        "the kill must come while items are moving"
    );
    // A starts again (same end: its lifetime is fixed), takes up the
    // hand-off where it stood; B recognizes what it already has.
    a.spawn();
    exactly_once(&sink, N, Duration::from_secs(60));
    assert_eq!(a.queue_counts(), Some((0, 0)));
    let _ = b;
}
