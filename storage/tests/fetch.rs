//! Fetch jobs and chunked content.

#![allow(clippy::unwrap_used)]

use dust_storage::{ItemId, Store, DEFAULT_CACHE_BYTES};
use rand::{Rng, SeedableRng};

fn id(n: u8) -> ItemId {
    ItemId([n; 16])
}

#[test]
fn content_reads_across_chunks_and_reports_gaps() {
    let store = Store::temporary().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let data: Vec<u8> = (0..300_000).map(|_| rng.random()).collect();
    // Random chunk sizes, stored out of order, like a fetcher would.
    let mut cuts = vec![0usize];
    while *cuts.last().unwrap() < data.len() {
        let next = (cuts.last().unwrap() + rng.random_range(1..70_000)).min(data.len());
        cuts.push(next);
    }
    let mut pieces: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
    let last = pieces.pop().unwrap();
    pieces.reverse();
    for (a, b) in &pieces {
        store.put_chunk(&id(1), *a as u64, &data[*a..*b]).unwrap();
    }
    // The last piece is missing: anything touching it is not available.
    let n = data.len() as u64;
    assert_eq!(store.read_content(&id(1), last.0 as u64, n).unwrap(), None);
    assert_eq!(store.read_content(&id(1), 0, n).unwrap(), None);
    let (a, b) = (17u64, last.0 as u64);
    assert_eq!(
        store.read_content(&id(1), a, b).unwrap().unwrap(),
        &data[a as usize..b as usize]
    );
    assert!(!store.content_stored(&id(1), 0, n).unwrap());
    assert!(store.content_stored(&id(1), a, b).unwrap());
    store
        .put_chunk(&id(1), last.0 as u64, &data[last.0..last.1])
        .unwrap();
    assert_eq!(store.read_content(&id(1), 0, n).unwrap().unwrap(), data);
    assert!(store.content_stored(&id(1), 0, n).unwrap());
    assert_eq!(store.content_len(&id(1)).unwrap(), n);
    assert_eq!(store.content_len(&id(2)).unwrap(), 0);
    for _ in 0..200 {
        let a = rng.random_range(0..n);
        let b = rng.random_range(a..=n);
        assert_eq!(
            store.read_content(&id(1), a, b).unwrap().unwrap(),
            &data[a as usize..b as usize]
        );
    }
    let ranges = store.chunk_ranges(&id(1)).unwrap();
    assert_eq!(ranges.first().unwrap().0, 0);
    assert_eq!(ranges.iter().map(|r| r.1).sum::<u64>(), n);
    // Another job's content is separate.
    assert_eq!(store.read_content(&id(2), 0, 1).unwrap(), None);
    assert_eq!(store.read_content(&id(2), 0, 0).unwrap(), Some(vec![]));
}

#[tokio::test]
async fn jobs_survive_reopen_and_delete_removes_content() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(
            dir.path(),
            DEFAULT_CACHE_BYTES,
            &dust_storage::SealKey::from_bytes([7; 32]),
        )
        .unwrap();
        store.put_job(&id(7), b"job seven").unwrap();
        store.put_job(&id(8), b"job eight").unwrap();
        store.put_chunk(&id(7), 0, &[1; 1000]).unwrap();
        store.put_chunk(&id(7), 1000, &[2; 200_000]).unwrap();
        store.put_chunk(&id(8), 0, b"eight").unwrap();
        // Written but never committed: not part of the content.
        let mut w = store.content_writer(&id(8), 5).unwrap();
        w.write(b"uncommitted").unwrap();
        drop(w);
        store.sync().await.unwrap();
    }
    let store = Store::open(
        dir.path(),
        DEFAULT_CACHE_BYTES,
        &dust_storage::SealKey::from_bytes([7; 32]),
    )
    .unwrap();
    let jobs: Vec<_> = store.jobs().map(|j| j.unwrap()).collect();
    assert_eq!(
        jobs,
        vec![
            (id(7), b"job seven".to_vec()),
            (id(8), b"job eight".to_vec())
        ]
    );
    let c = store.read_content(&id(7), 990, 1010).unwrap().unwrap();
    assert_eq!(c, [vec![1u8; 10], vec![2u8; 10]].concat());
    let file7 = dir.path().join("content").join(id(7).to_string());
    // Sealed frames: each 64 KiB block adds a nonce and a tag; one block
    // for the first chunk, four for the second.
    let sealed_len = |plain: u64, blocks: u64| plain + blocks * dust_storage::SEAL_OVERHEAD as u64;
    assert_eq!(
        std::fs::metadata(&file7).unwrap().len(),
        sealed_len(201_000, 5)
    );
    // The uncommitted frame of job 8 was cut off when its writer was dropped.
    let file8 = dir.path().join("content").join(id(8).to_string());
    assert_eq!(std::fs::metadata(&file8).unwrap().len(), sealed_len(5, 1));
    store.delete_job(&id(7)).await.unwrap();
    assert_eq!(store.job(&id(7)).unwrap(), None);
    assert!(store.chunk_ranges(&id(7)).unwrap().is_empty());
    assert!(!file7.exists(), "the content file is removed with the job");
    assert_eq!(store.read_content(&id(8), 0, 5).unwrap().unwrap(), b"eight");
    assert_eq!(store.content_len(&id(8)).unwrap(), 5);
    assert_eq!(store.read_content(&id(8), 0, 6).unwrap(), None);
    store.clear_chunks(&id(8)).await.unwrap();
    assert!(store.chunk_ranges(&id(8)).unwrap().is_empty());
    assert_eq!(store.read_content(&id(8), 0, 1).unwrap(), None);
    assert_eq!(store.job(&id(8)).unwrap().unwrap(), b"job eight");
}

#[tokio::test]
async fn content_files_without_a_job_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(
            dir.path(),
            DEFAULT_CACHE_BYTES,
            &dust_storage::SealKey::from_bytes([7; 32]),
        )
        .unwrap();
        store.put_job(&id(1), b"kept").unwrap();
        store.put_chunk(&id(1), 0, b"kept bytes").unwrap();
        store.sync().await.unwrap();
    }
    // What a crash between a job's removal and its unlink leaves behind.
    let orphan = dir.path().join("content").join(id(2).to_string());
    std::fs::write(&orphan, b"left over").unwrap();
    let store = Store::open(
        dir.path(),
        DEFAULT_CACHE_BYTES,
        &dust_storage::SealKey::from_bytes([7; 32]),
    )
    .unwrap();
    assert!(!orphan.exists());
    assert_eq!(
        store.read_content(&id(1), 0, 10).unwrap().unwrap(),
        b"kept bytes"
    );
}

#[test]
fn content_needs_little_memory() {
    // 256 MiB of content in 4 MiB chunks: the process grows by far less
    // than that (with sled values it grew by more than the content).
    let store = Store::temporary().unwrap();
    let before = rss_kib();
    let chunk = vec![0x5a_u8; 4 << 20];
    for i in 0..64u64 {
        store.put_chunk(&id(3), i * (4 << 20), &chunk).unwrap();
    }
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert_eq!(store.content_len(&id(3)).unwrap(), 256 << 20);
    assert!(
        grown_mib < 64,
        "RSS grew by {grown_mib} MiB for 256 MiB of content"
    );
}

/// The current resident set of this process (VmRSS), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
