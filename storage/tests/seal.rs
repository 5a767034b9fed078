//! Sealing at rest: nothing a user gave is readable in the store's files,
//! the store opens only with its key, and everything is private to its
//! owner.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use dust_storage::{Item, ItemId, ItemState, SealKey, StorageError, Store, DEFAULT_CACHE_BYTES};

const MARKERS: [&[u8]; 4] = [
    b"Subject: sealed-subject-4711",
    b"alice.sealed@example.org",
    b"https://origin.example/sealed-path",
    b"SEALED-CONTENT-MARKER",
];

/// Every file under `dir` (sled's log and blobs, content files).
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn found(dir: &Path) -> Vec<String> {
    let mut hits = Vec::new();
    for f in files(dir) {
        let data = std::fs::read(&f).unwrap();
        for m in MARKERS {
            if data.windows(m.len()).any(|w| w == m) {
                hits.push(format!("{} in {}", String::from_utf8_lossy(m), f.display()));
            }
        }
    }
    hits
}

#[tokio::test]
async fn nothing_readable_on_disk_and_only_the_key_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("queue");
    let key = SealKey::random();
    {
        let store = Store::open(&data, DEFAULT_CACHE_BYTES, &key).unwrap();
        let mut payload = Vec::new();
        payload.extend_from_slice(MARKERS[0]);
        payload.extend_from_slice(MARKERS[1]);
        // Small and large (sled stores values over a few KiB as blobs).
        for (n, pad) in [(1u8, 0usize), (2, 100_000)] {
            let mut p = payload.clone();
            p.resize(p.len() + pad, b'x');
            let item = Item {
                id: ItemId([n; 16]),
                kind: 1,
                state: ItemState::Queued,
                attempts: 0,
                release_ms: 1_000,
                entered_ms: 1_000,
                payload: p,
            };
            store.admit(&item).await.unwrap();
        }
        let job = ItemId([9; 16]);
        store.put_job(&job, MARKERS[2]).unwrap();
        let mut content = MARKERS[3].repeat(20_000); // crosses many blocks
        content.extend_from_slice(MARKERS[3]);
        store.put_chunk(&job, 0, &content[..70_000]).unwrap();
        store.put_chunk(&job, 70_000, &content[70_000..]).unwrap();
        store.sync().await.unwrap();
        assert_eq!(found(&data), Vec::<String>::new(), "while queued");
        // Reads give the plaintext back, across block and chunk boundaries.
        assert_eq!(
            store.read_content(&job, 65_000, 140_000).unwrap().unwrap(),
            &content[65_000..140_000]
        );
        assert_eq!(store.job(&job).unwrap().unwrap(), MARKERS[2]);
        assert_eq!(
            store.get(&ItemId([1; 16])).unwrap().unwrap().payload,
            payload
        );
        // Delivered and deleted: still nothing (sled's log keeps old
        // values until it compacts, so they must have been sealed too).
        assert_eq!(store.take_due(2_000, 10).unwrap().len(), 2);
        store.complete(&ItemId([1; 16])).unwrap();
        store.complete(&ItemId([2; 16])).unwrap();
        store.delete_job(&job).await.unwrap();
        store.sync().await.unwrap();
        assert_eq!(found(&data), Vec::<String>::new(), "after delivery");
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("content")), 0o700);

    match Store::open(&data, DEFAULT_CACHE_BYTES, &SealKey::random()) {
        Err(StorageError::Key) => {}
        other => panic!("opened with a wrong key: {other:?}"),
    }
    let store = Store::open(&data, DEFAULT_CACHE_BYTES, &key).unwrap();
    assert_eq!(store.stats(0).unwrap().queued, 0);
}

#[tokio::test]
async fn content_files_are_private_and_an_open_data_dir_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("queue");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = Store::open(&data, DEFAULT_CACHE_BYTES, &SealKey::random()).unwrap();
    let job = ItemId([3; 16]);
    store.put_chunk(&job, 0, b"bytes").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("content").join(job.to_string())), 0o600);
}
