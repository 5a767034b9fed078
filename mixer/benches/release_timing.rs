//! Release-timing accuracy on the real clock: about RATE releases per second
//! (default 1,000) for SECONDS (default 10) from a real, durable store, and
//! how late each release is (actual − scheduled), against tokio's own timers
//! (one `sleep_until` per release time, the same number in the same window)
//! measured in the same run.
//!
//!   cargo bench -p dust-mixer --bench release_timing [-- RATE SECONDS]

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use dust_mixer::tokio_rt::TokioRt;
use dust_mixer::{
    DelaySpec, Deliver, DeliveryError, Item, ItemKind, Mixer, MixerConfig, Outcome, Store,
};
use rand::Rng;

/// Records how late each item is handed over, in microseconds.
struct Lateness(Mutex<Vec<f64>>);

impl Deliver for Lateness {
    async fn deliver(&self, item: &Item) -> Result<Outcome, DeliveryError> {
        let now_us = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros() as f64;
        self.0
            .lock()
            .unwrap()
            .push(now_us - item.release_ms as f64 * 1000.0);
        Ok(Outcome::Done)
    }
}

fn quantiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1] / 1000.0;
    (q(0.5), q(0.99), v[v.len() - 1] / 1000.0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let rate: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let secs: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let n = rate * secs as usize;
    let lead = Duration::from_secs(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // The peer: tokio timers alone.
    let peer = rt.block_on(async move {
        let start = tokio::time::Instant::now() + lead;
        let late = Arc::new(Mutex::new(Vec::with_capacity(n)));
        let mut tasks = Vec::new();
        for _ in 0..n {
            let at = start + Duration::from_micros(rand::rng().random_range(0..secs * 1_000_000));
            let late = Arc::clone(&late);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let l = tokio::time::Instant::now().duration_since(at);
                late.lock().unwrap().push(l.as_micros() as f64);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(late).unwrap().into_inner().unwrap()
    });

    // The mixer: items admitted durably, released at uniform times in the
    // same window.
    let dir = tempfile::tempdir().unwrap();
    let rec = Arc::new(Lateness(Mutex::new(Vec::with_capacity(n))));
    let rec2 = Arc::clone(&rec);
    let admitted_in = rt.block_on(async move {
        let store = Store::open(
            dir.path(),
            dust_storage_cache(),
            &dust_mixer::SealKey::from_bytes([7; 32]),
        )
        .unwrap();
        let cfg = MixerConfig {
            delay: DelaySpec::Uniform {
                min: lead,
                max: lead + Duration::from_secs(secs),
            },
            max_in_flight: 64,
            ..MixerConfig::default()
        };
        let mixer = Mixer::start(TokioRt::current(), store, rec2, cfg).unwrap();
        let t0 = Instant::now();
        // 32 concurrent writers: admissions share fsyncs.
        let mut writers = Vec::new();
        for w in 0..32 {
            let mixer = mixer.clone();
            writers.push(tokio::spawn(async move {
                for _ in (w..n).step_by(32) {
                    mixer.admit(ItemKind::Mail, vec![b'x'; 256]).await.unwrap();
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let admitted_in = t0.elapsed();
        assert!(
            admitted_in < lead,
            "admission took {admitted_in:?}, longer than the lead"
        );
        while mixer.metrics().delivered < n as u64 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        mixer.shutdown(Duration::from_secs(1)).await;
        drop(dir);
        admitted_in
    });
    let mixed = rec.0.lock().unwrap().clone();
    let (p50, p99, max) = quantiles(mixed);
    let (q50, q99, qmax) = quantiles(peer);
    println!(
        "{n} releases over {secs} s ({rate}/s; admitted durably in {:.2} s)",
        admitted_in.as_secs_f64()
    );
    println!("lateness, ms:        p50      p99      max");
    println!("  mixer        {p50:8.3} {p99:8.3} {max:8.3}");
    println!("  tokio timers {q50:8.3} {q99:8.3} {qmax:8.3}");
    println!(
        "ratio mixer/tokio: p50 {:.2}, p99 {:.2}",
        p50 / q50.max(1e-3),
        p99 / q99.max(1e-3)
    );
}

fn dust_storage_cache() -> u64 {
    64 << 20
}
