//! Storage behaviour: durability across reopen, schedule order, in-flight
//! recovery, group commit, and a model test of random operation sequences.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use dust_storage::{Item, ItemId, ItemState, Store, DEFAULT_CACHE_BYTES, HELD};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn item(n: u8, release_ms: u64) -> Item {
    Item {
        id: ItemId([n; 16]),
        kind: 1,
        state: ItemState::Queued,
        attempts: 0,
        release_ms,
        entered_ms: 1_000,
        payload: vec![n; 100 + n as usize],
    }
}

#[tokio::test]
async fn admitted_items_survive_reopen_and_inflight_is_due_again() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(
            dir.path(),
            DEFAULT_CACHE_BYTES,
            &dust_storage::SealKey::from_bytes([7; 32]),
        )
        .unwrap();
        store.admit(&item(1, 5_000)).await.unwrap();
        store.admit(&item(2, 1_000)).await.unwrap();
        store.admit(&item(3, 9_000)).await.unwrap();
        // Item 2 is due at t=2000 and goes in flight; the "process" then dies.
        let due = store.take_due(2_000, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].id, ItemId([2; 16]));
        assert_eq!(due[0].state, ItemState::InFlight);
        assert_eq!(store.next_release().unwrap(), Some(5_000));
        store.sync().await.unwrap();
    }
    let store = Store::open(
        dir.path(),
        DEFAULT_CACHE_BYTES,
        &dust_storage::SealKey::from_bytes([7; 32]),
    )
    .unwrap();
    // In-flight item 2 is back on the schedule at its (past) release time.
    assert_eq!(store.next_release().unwrap(), Some(1_000));
    let stats = store.stats(5).unwrap();
    assert_eq!(stats.queued, 3);
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.next_releases, vec![1_000, 5_000, 9_000]);
    let due = store.take_due(10_000, 10).unwrap();
    let ids: Vec<u8> = due.iter().map(|i| i.id.0[0]).collect();
    assert_eq!(ids, vec![2, 1, 3], "released in schedule order");
    assert_eq!(due[1].payload, item(1, 0).payload);
}

#[tokio::test]
async fn take_due_respects_time_and_limit_and_reschedule_moves_items() {
    let store = Store::temporary().unwrap();
    for n in 0..10u8 {
        store.admit(&item(n, 100 * n as u64)).await.unwrap();
    }
    assert!(store.take_due(0, 10).unwrap().len() == 1); // only item 0 at t=0
    let due = store.take_due(450, 2).unwrap();
    assert_eq!(due.len(), 2, "limit bounds the batch");
    assert_eq!(store.stats(0).unwrap().in_flight, 3);
    store.reschedule(&due[0].id, 10_000, 1, None).unwrap();
    store.complete(&due[1].id).unwrap();
    let s = store.stats(0).unwrap();
    assert_eq!((s.queued, s.in_flight), (8, 1));
    let again = store.get(&due[0].id).unwrap().unwrap();
    assert_eq!((again.release_ms, again.attempts), (10_000, 1));
    assert!(store.get(&due[1].id).unwrap().is_none());
}

/// Many writers waiting while one fsync runs share the next fsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard deliberately blocks the flusher *thread* while tasks pile up;
// no task ever waits for it.
#[allow(clippy::await_holding_lock)]
async fn concurrent_admissions_share_one_flush() {
    let store = Store::temporary().unwrap();
    let before = store.flush_count();
    let gate = store.hold_flushes();
    let mut tasks = Vec::new();
    for n in 0..50u8 {
        let s = Arc::clone(&store);
        tasks.push(tokio::spawn(async move { s.admit(&item(n, 1)).await }));
    }
    // Wait (bounded) until every writer waits: some in the batch the flusher
    // holds (blocked by the gate), the rest queued behind it.
    let waiting = || store.pending_syncs() + store.syncs_in_flush();
    for _ in 0..1000 {
        if waiting() == 50 && store.pending_syncs() > 0 {
            break;
        }
        tokio::task::yield_now().await;
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_eq!(waiting(), 50, "writers did not pile up");
    drop(gate);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let flushes = store.flush_count() - before;
    assert!(flushes <= 2, "50 admissions took {flushes} flushes");
    assert_eq!(store.stats(0).unwrap().queued, 50);
}

/// Random operations against an in-memory model: the store must agree with
/// the model after every step and after a reopen (which requeues in-flight).
#[tokio::test]
async fn model_test_random_operations() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    // model: id -> (release_ms, in_flight)
    let mut model: BTreeMap<u8, (u64, bool)> = BTreeMap::new();
    let mut store = Store::open(
        dir.path(),
        DEFAULT_CACHE_BYTES,
        &dust_storage::SealKey::from_bytes([7; 32]),
    )
    .unwrap();
    let mut now = 0u64;
    for step in 0..600 {
        match rng.random_range(0..7) {
            0 | 1 => {
                let n: u8 = rng.random_range(0..64);
                if let std::collections::btree_map::Entry::Vacant(e) = model.entry(n) {
                    // A quarter are held for a pool round.
                    let r = if rng.random_bool(0.25) {
                        HELD
                    } else {
                        now + rng.random_range(0..1000)
                    };
                    store.admit(&item(n, r)).await.unwrap();
                    e.insert((r, false));
                }
            }
            2 => {
                now += rng.random_range(0..300);
                let limit = rng.random_range(1..5);
                let got = store.take_due(now, limit).unwrap();
                let mut want: Vec<(u64, u8)> = model
                    .iter()
                    .filter(|(_, (r, f))| !f && *r <= now)
                    .map(|(n, (r, _))| (*r, *n))
                    .collect();
                want.sort();
                want.truncate(limit);
                let got_ids: Vec<u8> = got.iter().map(|i| i.id.0[0]).collect();
                let want_ids: Vec<u8> = want.iter().map(|(_, n)| *n).collect();
                assert_eq!(got_ids, want_ids, "step {step}");
                for n in want_ids {
                    model.get_mut(&n).unwrap().1 = true;
                }
            }
            3 => {
                if let Some((&n, _)) = model.iter().find(|(_, (_, f))| *f) {
                    store.complete(&ItemId([n; 16])).unwrap();
                    model.remove(&n);
                }
            }
            4 => {
                if let Some((&n, _)) = model.iter().find(|(_, (_, f))| *f) {
                    let r = now + 500;
                    store.reschedule(&ItemId([n; 16]), r, 1, None).unwrap();
                    model.insert(n, (r, false));
                }
            }
            5 => {
                if let Some((&n, _)) = model.iter().find(|(_, (r, f))| *r == HELD && !f) {
                    assert!(store.release_held(&ItemId([n; 16]), now).unwrap());
                    model.insert(n, (now, false));
                }
            }
            _ => {
                store.sync().await.unwrap();
                drop(store);
                store = Store::open(
                    dir.path(),
                    DEFAULT_CACHE_BYTES,
                    &dust_storage::SealKey::from_bytes([7; 32]),
                )
                .unwrap();
                for v in model.values_mut() {
                    v.1 = false;
                }
            }
        }
        let s = store.stats(usize::MAX).unwrap();
        let in_flight = model.values().filter(|v| v.1).count() as u64;
        assert_eq!(s.in_flight, in_flight, "step {step}");
        assert_eq!(s.queued, model.len() as u64 - in_flight, "step {step}");
        let held = model.values().filter(|v| v.0 == HELD && !v.1).count() as u64;
        assert_eq!(s.held, held, "step {step}");
        assert_eq!(store.queued_count(), s.queued, "step {step}");
        let mut want: Vec<u64> = model
            .values()
            .filter(|v| !v.1 && v.0 != HELD)
            .map(|v| v.0)
            .collect();
        want.sort();
        assert_eq!(s.next_releases, want, "step {step}");
    }
}

#[tokio::test]
async fn held_items_wait_for_a_round_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(
            dir.path(),
            DEFAULT_CACHE_BYTES,
            &dust_storage::SealKey::from_bytes([7; 32]),
        )
        .unwrap();
        store.admit(&item(1, HELD)).await.unwrap();
        store.admit(&item(2, HELD)).await.unwrap();
        store.admit(&item(3, 5_000)).await.unwrap();
        // Held items have no time: never due, not the next release.
        assert_eq!(store.next_release().unwrap(), Some(5_000));
        let due = store.take_due(u64::MAX - 1, 10).unwrap();
        assert_eq!(
            due.iter().map(|i| i.id).collect::<Vec<_>>(),
            [ItemId([3; 16])]
        );
        let st = store.stats(5).unwrap();
        assert_eq!((st.queued, st.held, st.in_flight), (2, 2, 1));
        assert!(st.next_releases.is_empty());
        // A round picks item 2.
        assert!(store.release_held(&ItemId([2; 16]), 7_000).unwrap());
        assert!(
            !store.release_held(&ItemId([2; 16]), 8_000).unwrap(),
            "not held any more"
        );
        assert_eq!(store.next_release().unwrap(), Some(7_000));
        store.sync().await.unwrap();
    }
    let store = Store::open(
        dir.path(),
        DEFAULT_CACHE_BYTES,
        &dust_storage::SealKey::from_bytes([7; 32]),
    )
    .unwrap();
    assert_eq!(store.held_ids().unwrap(), [ItemId([1; 16])]);
    let due = store.take_due(7_000, 10).unwrap();
    let mut ids: Vec<_> = due.iter().map(|i| i.id).collect();
    ids.sort();
    // Item 3 was in flight at the "crash": due again; item 2 at its time.
    assert_eq!(ids, [ItemId([2; 16]), ItemId([3; 16])]);
    // A step puts an item back in the pool.
    store
        .reschedule(&ItemId([3; 16]), HELD, 0, Some(9_000))
        .unwrap();
    assert_eq!(store.held_ids().unwrap().len(), 2);
    assert_eq!(
        store.get(&ItemId([3; 16])).unwrap().unwrap().entered_ms,
        9_000
    );
}

#[tokio::test]
async fn below_the_reserve_new_work_is_refused_and_stored_work_moves() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        DEFAULT_CACHE_BYTES,
        &dust_storage::SealKey::from_bytes([7; 32]),
    )
    .unwrap();
    store.admit(&item(1, 1_000)).await.unwrap();
    let free = store.free_bytes().unwrap();
    // A reserve larger than what is free: the disk counts as full.
    store.set_min_free(free + (1 << 40));
    match store.admit(&item(2, 1_000)).await {
        Err(dust_storage::StorageError::Full { free: f, .. }) => assert!(f > 0),
        other => panic!("admitted below the reserve: {other:?}"),
    }
    assert!(matches!(
        store.put_chunk(&ItemId([5; 16]), 0, b"content"),
        Err(dust_storage::StorageError::Full { .. })
    ));
    assert!(store.check_room(0).is_err());
    // What is stored keeps moving: taken, completed, durably.
    let due = store.take_due(2_000, 10).unwrap();
    assert_eq!(due.len(), 1);
    store.complete(&due[0].id).unwrap();
    store.sync().await.unwrap();
    // Space back: taken again.
    store.set_min_free(0);
    store.admit(&item(2, 1_000)).await.unwrap();
    assert_eq!(store.stats(0).unwrap().queued, 1);
}
