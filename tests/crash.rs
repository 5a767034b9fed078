//! Crash test: kill -9 the mote at random moments, during intake and during
//! delivery, ten rounds, restarting it each time. Every message that got
//! `250` must reach the sink; a message may arrive twice only if its
//! delivery was in flight at a kill (a delivered item's removal is on disk
//! before its delivery slot is freed), so the duplicates are at most
//! `max_in_flight` per kill.
//!
//! Load: Postfix's `smtp-source` (several sessions, hundreds of 2 KiB
//! messages per intake round) plus a tracked smtplib client
//! (`tests/peers/submit.py track`) that records a message's token only after
//! the mote answered 250. smtp-source cannot say which of its messages got
//! 250 (its counter counts a message when the final "." is *sent*), so for its
//! messages the check is the lower bound `counter - sessions` per run.
//!
//! The kill moments come from a seeded RNG; set `DUSTMOTE_CRASH_SEED` to
//! replay a run. The seed is printed.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROUNDS: usize = 10;
/// `[mixer] max_in_flight` here: the most deliveries in flight at a kill.
const MAX_IN_FLIGHT: usize = 4;
const SOURCE_SESSIONS: usize = 5;
const SOURCE_MESSAGES: usize = 600;
const TRACKED: usize = 400;

/// Run smtp-source once; returns the child (counter output in `out`).
fn smtp_source(port: u16, round: usize, messages: usize, out: &std::path::Path) -> Proc {
    let child = Command::new("smtp-source")
        .args([
            "-c",
            "-N",
            "-s",
            &SOURCE_SESSIONS.to_string(),
            "-m",
            &messages.to_string(),
            "-l",
            "2048",
        ])
        .args([
            "-M",
            "[127.0.0.1]",
            "-f",
            &format!("load{round}@example.org"),
            "-t",
            "sink@example.net",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("smtp-source (postfix; run tests/install-deps.sh)");
    Proc(child)
}

/// The last value of smtp-source's running counter.
fn last_count(out: &std::path::Path) -> usize {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    text.split(['\r', '\n'])
        .filter_map(|s| s.trim().parse().ok())
        .next_back()
        .unwrap_or(0)
}

#[test]
fn every_accepted_message_survives_kill_9_during_intake_and_delivery() {
    let seed: u64 = std::env::var("DUSTMOTE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test seed: {seed} (DUSTMOTE_CRASH_SEED={seed} replays the kill moments)");
    let mut rng = StdRng::seed_from_u64(seed);

    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.require_auth = false; // smtp-source cannot authenticate
    cfg.delay =
        r#"{ distribution = "exponential", mean = "300ms", min = "50ms", max = "1500ms" }"#.into();
    cfg.retry_base = "100ms".into();
    cfg.mixer_extra = format!("max_in_flight = {MAX_IN_FLIGHT}");
    let mut mote = Mote::start(&cfg);
    let work = tempfile::tempdir().unwrap();
    let accepted_file = work.path().join("accepted.txt");

    let tracker = Command::new("python3")
        .arg(peer("submit.py"))
        .args(["track", "--port", &mote.port.to_string(), "--sessions", "4"])
        .args([
            "--count",
            &TRACKED.to_string(),
            "--deadline",
            "150",
            "--out",
        ])
        .arg(&accepted_file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut tracker = Proc(tracker);

    let mut source_lower_bound: HashMap<String, usize> = HashMap::new();
    let mut replays = 0;
    for round in 0..ROUNDS {
        let out = work.path().join(format!("source-{round}.txt"));
        let sender = format!("load{round}@example.org");
        if round % 2 == 0 {
            // Kill during intake: smtp-source and the tracker are sending.
            let mut source = smtp_source(mote.port, round, SOURCE_MESSAGES, &out);
            let wait = Duration::from_millis(rng.random_range(200..1200));
            std::thread::sleep(wait); // the kill moment, drawn at random
            let before = mote.queue_counts();
            mote.kill9();
            let status = wait_for(Duration::from_secs(30), || source.0.try_wait().unwrap());
            let count = last_count(&out);
            // Exit 0: every message got its 250. Otherwise the last
            // `SOURCE_SESSIONS` counted messages may not have.
            let lower = match status {
                Some(s) if s.success() => count,
                _ => count.saturating_sub(SOURCE_SESSIONS),
            };
            println!(
                "round {round}: kill -9 during intake after {wait:?}; queue before kill {before:?}; \
                 smtp-source counter {count}"
            );
            source_lower_bound.insert(sender, lower);
        } else {
            // Kill during delivery: intake from smtp-source completed, the
            // queue is draining into the sink.
            let mut source = smtp_source(mote.port, round, SOURCE_MESSAGES / 2, &out);
            let status = wait_for(Duration::from_secs(60), || source.0.try_wait().unwrap())
                .expect("smtp-source finished");
            assert!(
                status.success(),
                "smtp-source failed against a running mote"
            );
            source_lower_bound.insert(sender, last_count(&out));
            let wait = Duration::from_millis(rng.random_range(50..600));
            std::thread::sleep(wait); // the kill moment, drawn at random
            let before = mote.queue_counts().expect("queue readable");
            let delivered = sink.messages().len();
            mote.kill9();
            println!(
                "round {round}: kill -9 during delivery after {wait:?}; queued {} in flight {} at kill; \
                 {delivered} delivered so far",
                before.0, before.1
            );
            assert!(
                before.0 + before.1 > 0,
                "the kill must hit a non-empty queue"
            );
        }
        mote.spawn();
        // What was acknowledged since the last checkpoint came back from
        // the intake journal (storage/src/journal.rs).
        if let Some(line) = mote
            .log()
            .lines()
            .find(|l| l.contains("intake journal replayed"))
        {
            println!("round {round}: restart: {}", line.trim());
            replays += 1;
        }
    }

    // Let the tracker finish (it stops by count or deadline), then drain.
    let status = wait_for(Duration::from_secs(200), || tracker.0.try_wait().unwrap())
        .expect("tracker finished");
    assert!(status.success());
    let mut stats = String::new();
    std::io::Read::read_to_string(tracker.0.stdout.as_mut().unwrap(), &mut stats).unwrap();
    println!("tracker: {}", stats.trim());
    let drained = wait_for(Duration::from_secs(120), || {
        (mote.queue_counts() == Some((0, 0))).then_some(())
    });
    assert!(
        drained.is_some(),
        "queue did not drain: {:?}",
        mote.queue_counts()
    );

    let accepted: Vec<String> = std::fs::read_to_string(&accepted_file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        accepted.len() >= TRACKED / 4,
        "too few tracked messages accepted: {}",
        accepted.len()
    );
    let started = Instant::now();
    let mut tokens: HashMap<String, usize> = HashMap::new();
    let mut source_seen: HashMap<(String, String), usize> = HashMap::new();
    let messages = sink.messages();
    for m in &messages {
        let body = String::from_utf8_lossy(m.split().1).into_owned();
        if let Some(tok) = body.lines().next().filter(|l| l.starts_with("tok-")) {
            *tokens.entry(tok.to_string()).or_default() += 1;
        } else if m.mail_from.starts_with("load") {
            for r in &m.rcpt_tos {
                *source_seen
                    .entry((m.mail_from.clone(), r.clone()))
                    .or_default() += 1;
            }
        }
    }
    let missing: Vec<&String> = accepted
        .iter()
        .filter(|t| !tokens.contains_key(*t))
        .collect();
    assert!(
        missing.is_empty(),
        "{} messages got 250 but never arrived: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    for (sender, lower) in &source_lower_bound {
        let unique = source_seen.keys().filter(|(s, _)| s == sender).count();
        assert!(
            unique >= *lower,
            "{sender}: {unique} distinct messages arrived, at least {lower} got 250"
        );
    }
    let tracked_dups: usize = tokens.values().map(|n| n - 1).sum();
    let source_dups: usize = source_seen.values().map(|n| n - 1).sum();
    let source_unique = source_seen.len();
    println!(
        "crash test: {ROUNDS} kill -9 rounds; tracked: {} accepted, all arrived, {tracked_dups} duplicates; \
         smtp-source: {source_unique} distinct arrived (lower bounds {:?}), {source_dups} duplicates; \
         {} messages at the sink; checked in {:?}",
        accepted.len(),
        source_lower_bound,
        messages.len(),
        started.elapsed()
    );
    // Each kill falls between two checkpoints, which come at most every
    // 2 s (the store check) while the mote takes or delivers mail, so the
    // restarts find journal ops to replay; the check above is what shows
    // that replaying them loses and repeats nothing.
    assert!(
        replays * 2 >= ROUNDS,
        "only {replays} of {ROUNDS} restarts replayed the intake journal"
    );
    assert!(
        tracked_dups + source_dups <= ROUNDS * MAX_IN_FLIGHT,
        "{} duplicates after {ROUNDS} kills with at most {MAX_IN_FLIGHT} deliveries in flight each",
        tracked_dups + source_dups
    );
}

/// Issue 22, finding 10: someone who can write the journal but has no
/// sealing key (tests/peers/forge_journal.py) appends a well-framed batch
/// that removes every acknowledged message it can find, then the mote
/// restarts (after kill -9, so the journal is what it replays). The forged
/// batch does not verify: the replay stops there, the mote starts, says
/// so, and every message is delivered. Then the same with the journal
/// claiming the first format (CRC-32 batches, which anyone can compute):
/// its header's MAC still verifies, so it is replayed as what it is, and
/// the CRC-framed batch stops the replay like the first.
#[test]
fn a_forged_journal_batch_removes_nothing_and_the_mote_still_starts() {
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.delay = r#"{ distribution = "constant", value = "4s" }"#.into();
    let mut mote = Mote::start(&cfg);
    for i in 0..3 {
        submit(mote.port, "bob@example.net", &format!("kept {i}"));
    }
    let journal = files_under(&mote.data_dir())
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "journal"))
        .expect("the intake journal");
    for (round, how, said) in [
        (1, None, "replay stopped at a batch that does not verify"),
        (2, Some("--downgrade"), "header was altered (its magic)"),
    ] {
        // The queued messages' ids, as the operator's listing shows them.
        let queued: Vec<String> = mote
            .queue_text(&["--show-addresses"])
            .split(|c: char| !c.is_ascii_hexdigit())
            .filter(|w| w.len() == 32)
            .map(str::to_string)
            .collect();
        assert_eq!(
            queued.len(),
            3,
            "{}",
            mote.queue_text(&["--show-addresses"])
        );
        mote.kill9();
        let forged = json_of(
            Command::new("python3")
                .arg(peer("forge_journal.py"))
                .arg(&journal)
                .args(how)
                .args(["--ids", &queued.join(",")]),
        );
        println!("forged: {forged}");
        mote.spawn();
        let got = sink.wait_messages(3 * round, Duration::from_secs(30));
        assert_eq!(got.len(), 3 * round);
        assert!(mote.log().contains(said), "{}", mote.log());
        if round == 1 {
            for i in 3..6 {
                submit(mote.port, "bob@example.net", &format!("kept {i}"));
            }
        }
    }
}
