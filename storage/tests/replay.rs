//! Replay suppression: an admission whose digest was admitted within its
//! window stores nothing; the window ends; digests survive a reopen; old
//! ones are pruned; no content in the digest tree.
#![allow(clippy::unwrap_used)]

use dust_storage::{Item, ItemId, ItemState, OnceAt, Store, DEFAULT_CACHE_BYTES};

/// Admit `item` once per `digest` (at `now_ms`, remembered until
/// `expires_ms`; in one transaction if `exact`): whether it was new.
fn once(
    store: &Store,
    item: &Item,
    digest: &[u8],
    now_ms: u64,
    expires_ms: u64,
    exact: bool,
) -> bool {
    store
        .admit_once_blocking(
            item,
            OnceAt {
                digest,
                now_ms,
                expires_ms,
                exact,
            },
        )
        .unwrap()
}

fn item(n: u16) -> Item {
    let b = n.to_be_bytes();
    Item {
        id: ItemId([b[0], b[1], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        kind: 1,
        state: ItemState::Queued,
        attempts: 0,
        release_ms: 5_000,
        entered_ms: 1_000,
        payload: b"Subject: secret subject marker".to_vec(),
    }
}

#[test]
fn a_digest_admits_once_per_window_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2) = ([1u8; 32], [2u8; 32]);
    {
        let store = Store::open(
            dir.path(),
            DEFAULT_CACHE_BYTES,
            &dust_storage::SealKey::from_bytes([7; 32]),
        )
        .unwrap();
        assert!(once(&store, &item(1), &d1, 1_000, 61_000, false));
        assert!(!once(&store, &item(2), &d1, 2_000, 62_000, false));
        assert!(once(&store, &item(3), &d2, 2_000, 62_000, false));
        assert_eq!(store.stats(0).unwrap().queued, 2);
        assert!(
            store.get(&item(2).id).unwrap().is_none(),
            "the replay was not stored"
        );
    }
    let store = Store::open(
        dir.path(),
        DEFAULT_CACHE_BYTES,
        &dust_storage::SealKey::from_bytes([7; 32]),
    )
    .unwrap();
    assert!(
        !once(&store, &item(4), &d1, 3_000, 63_000, false),
        "still within the window after a restart"
    );
    // After the window the same digest is a new message.
    assert!(once(&store, &item(5), &d1, 61_001, 121_001, false));
    assert_eq!(store.stats(0).unwrap().queued, 3);
    // The digest tree holds keyed digests, not the caller's digest or content.
    let files: Vec<u8> = walk(dir.path());
    assert!(!contains(&files, &[1u8; 32]));
}

#[test]
fn expired_digests_are_pruned() {
    let store = Store::temporary().unwrap();
    for n in 0..1100u16 {
        let mut d = [0u8; 32];
        d[..2].copy_from_slice(&n.to_be_bytes());
        // Each digest's window ends right away (at 10), before the next
        // admission's "now".
        once(
            &store,
            &item(n),
            &d,
            10 + u64::from(n),
            11 + u64::from(n),
            false,
        );
    }
    assert!(
        store.replay_digests() < 200,
        "{} digests kept",
        store.replay_digests()
    );
}

fn walk(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.extend(std::fs::read(&p).unwrap());
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The exact variant (peer transfers): the same answers, both halves
/// written together, and the item due for delivery like any other; a digest
/// admitted by one variant is seen by the other.
#[test]
fn the_exact_variant_admits_once_and_schedules_the_item() {
    let dir = tempfile::tempdir().unwrap();
    let key = dust_storage::SealKey::from_bytes([7; 32]);
    let d = [9u8; 32];
    {
        let store = Store::open(dir.path(), DEFAULT_CACHE_BYTES, &key).unwrap();
        assert!(once(&store, &item(1), &d, 1_000, 61_000, true));
        assert!(!once(&store, &item(2), &d, 2_000, 62_000, true));
        assert!(!once(&store, &item(3), &d, 2_000, 62_000, false));
        let stats = store.stats(5).unwrap();
        assert_eq!(stats.queued, 1, "{stats:?}");
        assert_eq!(stats.next_releases, [5_000], "{stats:?}");
        assert!(store.get(&item(2).id).unwrap().is_none());
    }
    let store = Store::open(dir.path(), DEFAULT_CACHE_BYTES, &key).unwrap();
    assert!(!once(&store, &item(4), &d, 3_000, 63_000, true));
    // Due at its release time (5 s), through the schedule entry.
    let due = store.take_due(5_000, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, item(1).id);
    assert_eq!(due[0].payload, item(1).payload);
}
