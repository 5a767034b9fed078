//! The intake journal alone carries acknowledged writes across a crash: a
//! child process admits and completes items (each acknowledged only after
//! its journal batch was fdatasynced), checks that no checkpoint (sled
//! flush) ran, and aborts without any cleanup; the parent reopens the store
//! and finds exactly what was acknowledged, and the usage an account's
//! admissions counted. (The crash test in `tests/`
//! does the same with kill -9 of a running mote under load.) A write the
//! journal does not cover makes the next journal wait a checkpoint.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::process::Command;

use dust_storage::{Item, ItemId, ItemState, SealKey, Store, DEFAULT_CACHE_BYTES};

const CHILD: &str = "DUST_JOURNAL_TEST_CHILD";
const ADMITTED: u16 = 300;
const COMPLETED: u16 = 120;
const DAY: u32 = 20_000;

fn item(n: u16) -> Item {
    let b = n.to_be_bytes();
    Item {
        id: ItemId([b[0], b[1], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
        kind: 1,
        state: ItemState::Queued,
        attempts: 0,
        release_ms: 5_000 + u64::from(n),
        entered_ms: 1_000,
        payload: vec![b'x'; 2048],
    }
}

fn key() -> SealKey {
    SealKey::from_bytes([9; 32])
}

/// In the child: admit, complete some, then die like kill -9 would leave
/// it (no destructors, no flush).
fn child(dir: &str) -> ! {
    let store = Store::open(std::path::Path::new(dir), DEFAULT_CACHE_BYTES, &key()).unwrap();
    for n in 0..ADMITTED {
        // An account's message is counted before it is admitted.
        store
            .add_usage("bea", DAY, [1, 2048, 0, 0], [u64::MAX; 4])
            .unwrap()
            .unwrap();
        store.admit_blocking(&item(n)).unwrap();
    }
    // Delivered as the mixer does it: taken (in flight), then removed.
    let taken = store
        .take_due(u64::MAX - 1, usize::from(COMPLETED))
        .unwrap();
    assert_eq!(taken.len(), usize::from(COMPLETED));
    for it in taken {
        store.complete(&it.id).unwrap();
    }
    store.sync_items_blocking().unwrap();
    println!(
        "child: admitted {ADMITTED}, completed {COMPLETED}, batches {}, checkpoints {}",
        store.flush_count(),
        store.checkpoint_count()
    );
    // A write the journal does not cover (a fetch job's record), then an
    // admission: its wait must be a checkpoint, or the job's 202 would be
    // sent before the record is on disk.
    store.put_job(&item(ADMITTED).id, b"job record").unwrap();
    store.admit_blocking(&item(ADMITTED)).unwrap();
    println!(
        "child: after a job record and an admission, checkpoints {}",
        store.checkpoint_count()
    );
    std::process::abort();
}

#[test]
fn acknowledged_admissions_and_completions_survive_an_abort_through_the_journal() {
    if let Ok(dir) = std::env::var(CHILD) {
        child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_admissions_and_completions_survive_an_abort_through_the_journal",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(!out.status.success(), "the child must have aborted");
    // Every acknowledgement came from a journal write: sled was never
    // flushed (it may have written full log segments, unsynced, into the
    // page cache; the last writes were only in its memory).
    assert!(
        stdout.contains(&format!(
            "child: admitted {ADMITTED}, completed {COMPLETED}"
        )) && stdout.contains("checkpoints 0")
            && stdout.contains("after a job record and an admission, checkpoints 1"),
        "child output: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let store = Store::open(dir.path(), DEFAULT_CACHE_BYTES, &key()).unwrap();
    assert_eq!(
        store.job(&item(ADMITTED).id).unwrap().as_deref(),
        Some(&b"job record"[..])
    );
    assert_eq!(
        store.usage("bea", DAY).unwrap(),
        [u64::from(ADMITTED), 2048 * u64::from(ADMITTED), 0, 0],
        "usage counted with the admissions"
    );
    let stats = store.stats(0).unwrap();
    assert_eq!(stats.queued, u64::from(ADMITTED + 1 - COMPLETED));
    for n in 0..=ADMITTED {
        let got = store.get(&item(n).id).unwrap();
        if n < COMPLETED {
            assert!(got.is_none(), "completed item {n} came back");
        } else {
            assert_eq!(got.unwrap().payload, item(n).payload, "item {n}");
        }
    }
    // The queue works on: the next due item is the first not completed.
    let due = store.take_due(u64::MAX - 1, 1).unwrap();
    assert_eq!(due[0].id, item(COMPLETED).id);
    // After the replay's checkpoint the journal starts over: a second
    // reopen finds the same queue without replaying anything twice.
    store.sync_blocking().unwrap();
    assert!(store.checkpoint_count() >= 1);
    drop(store);
    let again = Store::open(dir.path(), DEFAULT_CACHE_BYTES, &key());
    let again = match again {
        Ok(s) => s,
        Err(e) => panic!("reopen: {e}"),
    };
    assert_eq!(
        again.stats(0).unwrap().queued,
        u64::from(ADMITTED + 1 - COMPLETED)
    );
}

const FAILING: &str = "DUST_JOURNAL_TEST_FAILING_DISK";

/// In the child: a failing disk. A completion's journal write fails (the
/// completion is in sled's memory, not in the journal), then the
/// checkpoint that makes it durable cannot start a new journal generation:
/// the journal still holds the item's admission. Phase 2 admits one more
/// item through the journal after the reopen. Both end like kill -9.
fn failing_child(arg: &str) -> ! {
    let (phase, dir) = arg.split_once(':').unwrap();
    let store = Store::open(std::path::Path::new(dir), DEFAULT_CACHE_BYTES, &key()).unwrap();
    if phase == "1" {
        for n in 0..3 {
            store.admit_blocking(&item(n)).unwrap();
        }
        let taken = store.take_due(u64::MAX - 1, 1).unwrap();
        assert_eq!(taken[0].id, item(0).id);
        dust_storage::fail_journal_io(2);
        store.complete(&taken[0].id).unwrap();
        let journal = store.sync_items_blocking();
        // The checkpoint: sled's flush works, the journal's header does not.
        let checkpoint = store.sync_blocking();
        println!(
            "child 1: journal write {}, checkpoint {}, checkpoints {}",
            if journal.is_err() { "failed" } else { "ok" },
            if checkpoint.is_ok() { "ok" } else { "failed" },
            store.checkpoint_count()
        );
    } else {
        store.admit_blocking(&item(3)).unwrap();
        println!("child 2: checkpoints {}", store.checkpoint_count());
    }
    std::process::abort();
}

/// Run the failing-disk child's `phase` on `dir`: its output.
fn run_failing(phase: &str, dir: &std::path::Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_checkpoint_that_cannot_restart_the_journal_leaves_nothing_to_undo",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FAILING, format!("{phase}:{}", dir.display()))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the child must have aborted");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    stdout + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn a_checkpoint_that_cannot_restart_the_journal_leaves_nothing_to_undo() {
    if let Ok(arg) = std::env::var(FAILING) {
        failing_child(&arg);
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run_failing("1", dir.path());
    assert!(
        out.contains("child 1: journal write failed, checkpoint ok, checkpoints 1"),
        "{out}"
    );
    // The journal still names the generation that admitted item 0; a
    // replay of it would bring the delivered item back.
    let store = Store::open(dir.path(), DEFAULT_CACHE_BYTES, &key()).unwrap();
    assert!(
        store.get(&item(0).id).unwrap().is_none(),
        "delivered item 0 came back"
    );
    for n in 1..3 {
        assert!(store.get(&item(n).id).unwrap().is_some(), "item {n}");
    }
    assert_eq!(store.stats(0).unwrap().queued, 2);
    drop(store);
    // The journal goes on in a generation a later open replays: an
    // admission acknowledged through it alone survives the next crash.
    let out = run_failing("2", dir.path());
    assert!(out.contains("child 2: checkpoints 0"), "{out}");
    let store = Store::open(dir.path(), DEFAULT_CACHE_BYTES, &key()).unwrap();
    assert!(store.get(&item(3).id).unwrap().is_some(), "item 3 was lost");
    assert!(
        store.get(&item(0).id).unwrap().is_none(),
        "item 0 came back"
    );
    assert_eq!(store.stats(0).unwrap().queued, 3);
}
