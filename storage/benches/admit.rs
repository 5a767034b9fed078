//! Durable admission throughput of the store, against the peer it is built
//! on, measured in the same run:
//!
//! - `sled insert+flush`: one thread, a plain `insert` then `flush()` per
//!   item — the obvious way to get "durable before acknowledging" from sled
//!   (and still *less* durable than ours: sled's flush is not an fsync, see
//!   `flusher.rs`);
//! - `store admit xC`: `Store::admit_blocking` from C threads at once, which
//!   share group commits (each followed by fdatasync of the log).
//!
//! Run: `cargo bench -p dust-storage --bench admit [-- ITEMS]` (default 4000
//! items per case, 2 KiB payloads). Prints items/s, items per flush, and the
//! ratio to the sled baseline.

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use dust_storage::{Item, ItemId, ItemState, Store};

fn item(n: u64) -> Item {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id[8..].copy_from_slice(&rand::random::<[u8; 8]>());
    Item {
        id: ItemId(id),
        kind: 1,
        state: ItemState::Queued,
        attempts: 0,
        release_ms: 4_000_000_000_000 + n,
        entered_ms: 0,
        payload: vec![b'x'; 2048],
    }
}

fn sled_baseline(items: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(dir.path())
        .flush_every_ms(None)
        .open()
        .unwrap();
    let t = db.open_tree("items").unwrap();
    let start = Instant::now();
    for n in 0..items {
        let it = item(n);
        t.insert(it.id.0, it.payload.as_slice()).unwrap();
        db.flush().unwrap();
    }
    items as f64 / start.elapsed().as_secs_f64()
}

fn store_admit(items: u64, threads: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        dust_storage::DEFAULT_CACHE_BYTES,
        &dust_storage::SealKey::from_bytes([7; 32]),
    )
    .unwrap();
    let flushes0 = store.flush_count();
    let start = Instant::now();
    let per = items / threads;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for n in 0..per {
                    store.admit_blocking(&item(t * per + n)).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let flushes = (store.flush_count() - flushes0) as f64;
    (
        (per * threads) as f64 / secs,
        (per * threads) as f64 / flushes,
    )
}

fn main() {
    let items: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(4000);
    let base = sled_baseline(items);
    println!("sled insert+flush x1   {base:8.0} items/s");
    for threads in [1, 10, 32] {
        let (rate, per_flush) = store_admit(items, threads);
        println!(
            "store admit x{threads:<2}        {rate:8.0} items/s  {per_flush:5.1} items/flush  {:5.2}x sled",
            rate / base
        );
    }
}
