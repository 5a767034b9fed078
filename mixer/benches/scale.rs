//! Scheduler scale: N queued items (default 1,000,000, 512-byte payloads) in
//! a real store. Reports the resident memory per queued item with the mixer
//! running, and the time from opening the store to serving (recovery, the
//! mixer's start, one durable admission), against sled alone opening the
//! same database and reading every item in the same run; for the `poisson`
//! strategy (items with release times) and the `pool` strategy (items held).
//!
//!   cargo bench -p dust-mixer --bench scale [-- N]

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dust_mixer::tokio_rt::TokioRt;
use dust_mixer::{
    Deliver, DeliveryError, Item, ItemId, ItemKind, Mixer, MixerConfig, Outcome, Store, Strategy,
    HELD,
};

struct Never;

impl Deliver for Never {
    async fn deliver(&self, _item: &Item) -> Result<Outcome, DeliveryError> {
        Err(DeliveryError::temporary("benchmark"))
    }
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

const CACHE: u64 = 64 << 20;

fn fill(dir: &std::path::Path, n: u64, held: bool, rt: &tokio::runtime::Runtime) -> f64 {
    let t0 = Instant::now();
    let store = Store::open(dir, CACHE, &dust_mixer::SealKey::from_bytes([7; 32])).unwrap();
    let base = dust_mixer::wall_ms(SystemTime::now()) + 86_400_000;
    for i in 0..n {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&i.to_be_bytes());
        id[8..].copy_from_slice(&rand::random::<[u8; 8]>());
        let item = Item {
            id: ItemId(id),
            kind: ItemKind::Mail as u8,
            state: dust_storage_queued(),
            attempts: 0,
            release_ms: if held { HELD } else { base + i },
            entered_ms: base,
            payload: vec![b'x'; 512],
        };
        store.enqueue_unsynced(&item).unwrap();
    }
    rt.block_on(store.sync()).unwrap();
    t0.elapsed().as_secs_f64()
}

fn dust_storage_queued() -> dust_storage::ItemState {
    dust_storage::ItemState::Queued
}

/// sled alone: open the database and read every item.
fn sled_scan(dir: &std::path::Path) -> f64 {
    let t0 = Instant::now();
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE)
        .open()
        .unwrap();
    let items = db.open_tree("items").unwrap();
    let mut n = 0u64;
    for kv in items.iter() {
        let (_, v) = kv.unwrap();
        n += v.len() as u64;
    }
    assert!(n > 0);
    t0.elapsed().as_secs_f64()
}

/// One measured phase in a fresh process (so that its resident memory is
/// its own): prints `seconds rss_before_mib rss_after_mib`.
fn child(phase: &str, dir: &std::path::Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let before = rss_mib();
    let t0 = Instant::now();
    let keep = match phase {
        "sled" => {
            sled_scan(dir);
            None
        }
        _ => {
            let strategy = if phase == "pool" {
                Strategy::mixmaster()
            } else {
                Strategy::Poisson
            };
            Some(rt.block_on(async {
                let store =
                    Store::open(dir, CACHE, &dust_mixer::SealKey::from_bytes([7; 32])).unwrap();
                let cfg = MixerConfig {
                    strategy,
                    ..MixerConfig::default()
                };
                let mixer = Mixer::start(TokioRt::current(), store, Arc::new(Never), cfg).unwrap();
                mixer.admit(ItemKind::Mail, vec![b'y'; 512]).await.unwrap();
                mixer
            }))
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    let after = rss_mib();
    // What one `/status` or `dustmote queue` costs at this size.
    let stats_s = match &keep {
        Some(m) => {
            let t = Instant::now();
            assert!(m.store().stats(10).unwrap().queued > 1);
            t.elapsed().as_secs_f64()
        }
        None => 0.0,
    };
    println!("{secs} {before} {after} {stats_s}");
}

fn run_child(phase: &str, dir: &std::path::Path) -> (f64, f64, f64, f64) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("DUST_SCALE_PHASE", phase)
        .env("DUST_SCALE_DIR", dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{phase}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text
        .lines()
        .last()
        .unwrap()
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0], v[1], v[2], v[3])
}

fn main() {
    if let (Ok(phase), Ok(dir)) = (
        std::env::var("DUST_SCALE_PHASE"),
        std::env::var("DUST_SCALE_DIR"),
    ) {
        child(&phase, std::path::Path::new(&dir));
        return;
    }
    let n: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (name, held) in [("poisson", false), ("pool", true)] {
        let dir = tempfile::tempdir().unwrap();
        let fill_s = fill(dir.path(), n, held, &rt);
        // sled releases its lock a moment after the last handle goes.
        std::thread::sleep(Duration::from_secs(2));
        let (sled_s, sled_before, sled_after, _) = run_child("sled", dir.path());
        let (serve_s, before, after, stats_s) = run_child(name, dir.path());
        println!("{name}: {n} items queued (held: {held}), filled in {fill_s:.1} s");
        println!(
            "  restart to serving {serve_s:.2} s; sled alone opening and reading every item {sled_s:.2} s; ratio {:.2}",
            serve_s / sled_s
        );
        println!(
            "  resident memory of a fresh process: {before:.0} -> {after:.0} MiB serving = {:.0} bytes per queued item (sled alone after its scan: {:.0} MiB; sled cache {} MiB)",
            (after - before) * 1024.0 * 1024.0 / n as f64,
            sled_after - sled_before,
            CACHE >> 20
        );
        println!(
            "  one status query (queue counts, next releases): {:.3} ms",
            stats_s * 1000.0
        );
    }
}
