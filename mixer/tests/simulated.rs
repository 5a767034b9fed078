//! The mixer in simulated time (tor_rtmock::MockRuntime): delay distribution,
//! retries with backoff, permanent failures, and restart with overdue and
//! in-flight items. Every duration asserted here is exact simulated time.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

mod common;

use common::*;
use dust_mixer::{DelaySpec, ItemId, ItemKind, Lifetime, Mixer, MixerError, Store};
use tor_rtcompat::{SleepProvider, ToplevelBlockOn};
use tor_rtmock::MockRuntime;

fn exp(mean_ms: u64, min_ms: u64, max_ms: u64) -> DelaySpec {
    DelaySpec::Exponential {
        mean: Duration::from_millis(mean_ms),
        min: Some(Duration::from_millis(min_ms)),
        max: Some(Duration::from_millis(max_ms)),
    }
}

/// CDF of an exponential(mean) clamped to [min, max], in seconds.
fn clamped_exp_cdf(x: f64, mean: f64, min: f64, max: f64) -> f64 {
    if x < min {
        0.0
    } else if x >= max {
        1.0
    } else {
        1.0 - (-x / mean).exp()
    }
}

/// The left limit F(x-) of [`clamped_exp_cdf`]: the clamps put atoms at `min`
/// and `max`, so the CDF jumps there.
fn clamped_exp_cdf_left(x: f64, mean: f64, min: f64, max: f64) -> f64 {
    if x <= min {
        0.0
    } else if x > max {
        1.0
    } else {
        1.0 - (-x / mean).exp()
    }
}

#[test]
fn delays_follow_the_configured_exponential() {
    each_runtime(|rt| async move {
        const N: usize = 2000;
        let (rec, mixer) = start(&rt, Answer::Ok, cfg(exp(2000, 100, 10_000)), 7);
        let t0 = rt.wallclock();
        let mut release = HashMap::new();
        for _ in 0..N {
            let (id, at) = mixer.admit(ItemKind::Mail, b"x".to_vec()).await.unwrap();
            release.insert(id, at);
        }
        rt.advance_until_stalled().await;
        let attempts = rec.attempts();
        assert_eq!(attempts.len(), N, "every item delivered exactly once");
        let mut delays = Vec::new();
        for (id, at) in &attempts {
            // Released exactly at its scheduled time (simulated, ms precision).
            assert_eq!(Some(*at), release[id]);
            let d = at.duration_since(t0).unwrap().as_secs_f64();
            assert!((0.1..=10.0).contains(&d), "delay {d} outside the clamps");
            delays.push(d);
        }
        // Critical KS value for n = 2000 at alpha = 0.001 is 1.95/sqrt(n) = 0.0436.
        let crit = 1.95 / (N as f64).sqrt();
        let d = ks_distance(
            &mut delays,
            |x| clamped_exp_cdf(x, 2.0, 0.1, 10.0),
            |x| clamped_exp_cdf_left(x, 2.0, 0.1, 10.0),
        );
        assert!(
            d < crit,
            "KS distance {d} >= {crit}: not the configured distribution"
        );
        // Power check: the same sample must be rejected against a 25 % larger mean.
        let wrong = ks_distance(
            &mut delays,
            |x| clamped_exp_cdf(x, 2.5, 0.1, 10.0),
            |x| clamped_exp_cdf_left(x, 2.5, 0.1, 10.0),
        );
        assert!(
            wrong > crit,
            "KS cannot tell mean 2 s from 2.5 s (d = {wrong})"
        );
        let mean = delays.iter().sum::<f64>() / N as f64;
        // Clamped mean: 2 s * (1 - e^-5) + 0.1 s-ish correction; well within 10 %.
        assert!((mean - 2.0).abs() < 0.2, "mean delay {mean}");
        assert_eq!(mixer.metrics().delivered, N as u64);
        assert_eq!(mixer.store().stats(0).unwrap().queued, 0);
    });
}

#[test]
fn temporary_failures_are_retried_with_randomised_exponential_backoff() {
    each_runtime(|rt| async move {
        let config = cfg(DelaySpec::Constant {
            value: Duration::from_secs(5),
        });
        let (rec, mixer) = start(&rt, Answer::FailTimes(4), config, 1);
        let t0 = rt.wallclock();
        mixer.admit(ItemKind::Mail, b"m".to_vec()).await.unwrap();
        rt.advance_until_stalled().await;
        let times: Vec<SystemTime> = rec.attempts().iter().map(|a| a.1).collect();
        assert_eq!(times.len(), 5, "4 failures then a success");
        assert_eq!(times[0].duration_since(t0).unwrap(), Duration::from_secs(5));
        // Gap k (k = 1..4) is 30 s * 2^(k-1), capped at 600 s, times [0.5, 1.5).
        let mut gaps = Vec::new();
        for k in 1..5u32 {
            let gap = times[k as usize]
                .duration_since(times[k as usize - 1])
                .unwrap();
            let raw = Duration::from_secs(30 * (1 << (k - 1))).min(Duration::from_secs(600));
            assert!(
                gap >= raw.mul_f64(0.5) && gap < raw.mul_f64(1.5) + Duration::from_millis(1),
                "gap {k} = {gap:?}, raw {raw:?}"
            );
            gaps.push(gap);
        }
        // Jitter: the gaps are not the bare doubling sequence.
        assert!(gaps
            .iter()
            .zip([30u64, 60, 120, 240])
            .any(|(g, s)| *g != Duration::from_secs(s)));
        let m = mixer.metrics();
        assert_eq!((m.retries, m.delivered, m.dropped_permanent), (4, 1, 0));
        assert_eq!(mixer.store().stats(0).unwrap(), Default::default());
    });
}

#[test]
fn permanent_failures_are_dropped_and_counted_not_retried() {
    each_runtime(|rt| async move {
        let store = Store::temporary().unwrap();
        let rec = Recorder::new(&rt, Answer::Permanent);
        let config = cfg(DelaySpec::Constant {
            value: Duration::from_secs(1),
        });
        let mixer = Mixer::start(rt.clone(), store, rec.clone(), config).unwrap();
        for _ in 0..3 {
            mixer.admit(ItemKind::Mail, b"m".to_vec()).await.unwrap();
        }
        rt.advance_until_stalled().await;
        rt.advance_by(Duration::from_secs(24 * 3600)).await;
        assert_eq!(rec.attempts().len(), 3, "one attempt each, no retry");
        let m = mixer.metrics();
        assert_eq!((m.dropped_permanent, m.delivered, m.retries), (3, 0, 0));
        let s = mixer.store().stats(0).unwrap();
        assert_eq!((s.queued, s.in_flight), (0, 0));
    });
}

/// A mote that was down for an hour: everything overdue (queued or in flight
/// when it died) leaves promptly after the restart, nothing is dropped.
#[test]
fn restart_releases_overdue_and_in_flight_items_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(START_SECS);
    let config = cfg(exp(60_000, 1_000, 600_000));
    let crashed = tempfile::tempdir().unwrap();
    let admitted: Vec<ItemId> = {
        let rt = MockRuntime::builder().starting_wallclock(start).build();
        let store = Store::open(
            dir.path(),
            1 << 24,
            &dust_mixer::SealKey::from_bytes([7; 32]),
        )
        .unwrap();
        let on_disk = store.clone();
        let rec = Recorder::new(&rt, Answer::Hang);
        let (rt1, cfg1) = (rt.clone(), config.clone());
        let ids = rt.block_on(async move {
            let mixer = Mixer::start(rt1.clone(), store, rec.clone(), cfg1).unwrap();
            let mut ids = Vec::new();
            for _ in 0..40 {
                ids.push(mixer.admit(ItemKind::Mail, vec![1; 10]).await.unwrap().0);
            }
            // Some items go in flight (and hang); then the mote "dies".
            rt1.advance_by(Duration::from_secs(60)).await;
            let in_flight = rec.attempts().len();
            assert!(in_flight > 0 && in_flight < 40, "{in_flight} in flight");
            assert_eq!(mixer.in_flight(), in_flight);
            ids
        });
        // "kill -9": take the files as they are on disk after the last flush
        // (the in-flight marks included) and never touch this store again.
        on_disk.flush_blocking().unwrap();
        copy_dir(dir.path(), crashed.path());
        ids
    };
    let later = start + Duration::from_secs(3600);
    let rt = MockRuntime::builder().starting_wallclock(later).build();
    let store = Store::open(
        crashed.path(),
        1 << 24,
        &dust_mixer::SealKey::from_bytes([7; 32]),
    )
    .unwrap();
    assert_eq!(
        store.stats(0).unwrap().queued,
        40,
        "all 40 back on the schedule"
    );
    let rec = Recorder::new(&rt, Answer::Ok);
    let rt2 = rt.clone();
    rt.block_on(async move {
        let mixer = Mixer::start(rt2.clone(), store, rec.clone(), config).unwrap();
        rt2.progress_until_stalled().await;
        let attempts = rec.attempts();
        assert_eq!(
            attempts.len(),
            40,
            "every overdue item released without time passing"
        );
        assert!(attempts.iter().all(|(_, at)| *at == later));
        let mut got: Vec<ItemId> = attempts.iter().map(|a| a.0).collect();
        got.sort();
        let mut want = admitted.clone();
        want.sort();
        assert_eq!(got, want);
        // Random order, not admission order.
        assert_ne!(attempts.iter().map(|a| a.0).collect::<Vec<_>>(), admitted);
        assert_eq!(mixer.metrics().delivered, 40);
    });
}

/// A delivered item's removal reaches the disk before its delivery slot is
/// freed: the files as they are after the deliveries, taken without a final
/// flush ("kill -9"), hold none of the delivered items, so a restart sends
/// nothing twice.
#[test]
fn completions_are_on_disk_before_the_slot_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(START_SECS);
    let rt = MockRuntime::builder().starting_wallclock(start).build();
    let store = Store::open(
        dir.path(),
        1 << 24,
        &dust_mixer::SealKey::from_bytes([7; 32]),
    )
    .unwrap();
    let rec = Recorder::new(&rt, Answer::Ok);
    let rt1 = rt.clone();
    let config = cfg(DelaySpec::Constant {
        value: Duration::from_secs(10),
    });
    let (from, to) = (dir.path().to_path_buf(), crashed.path().to_path_buf());
    rt.block_on(async move {
        let mixer = Mixer::start(rt1.clone(), store, rec.clone(), config).unwrap();
        for _ in 0..20 {
            mixer.admit(ItemKind::Mail, vec![2; 10]).await.unwrap();
        }
        rt1.advance_by(Duration::from_secs(11)).await;
        rt1.progress_until_stalled().await;
        assert_eq!(mixer.metrics().delivered, 20);
        assert_eq!(mixer.in_flight(), 0);
        // "kill -9" now: no shutdown, no flush.
        copy_dir(&from, &to);
    });
    let store = Store::open(
        crashed.path(),
        1 << 24,
        &dust_mixer::SealKey::from_bytes([7; 32]),
    )
    .unwrap();
    let s = store.stats(0).unwrap();
    assert_eq!((s.queued, s.in_flight), (0, 0), "nothing to deliver twice");
}

#[test]
fn multi_step_items_are_released_again_with_their_kinds_delay() {
    each_runtime(|rt| async move {
        let mut config = cfg(DelaySpec::Constant {
            value: Duration::from_secs(60),
        });
        // Fetch items use their own distribution (here: a constant 7 s).
        config.kind_delays = vec![(
            ItemKind::Fetch as u8,
            DelaySpec::Constant {
                value: Duration::from_secs(7),
            },
        )];
        let (rec, mixer) = start(&rt, Answer::Steps(3), config, 5);
        let t0 = rt.wallclock();
        let (fetch, _) = mixer.admit(ItemKind::Fetch, b"job".to_vec()).await.unwrap();
        let (mail, _) = mixer.admit(ItemKind::Mail, b"mail".to_vec()).await.unwrap();
        rt.advance_until_stalled().await;
        let attempts = rec.attempts();
        let secs = |id| -> Vec<u64> {
            attempts
                .iter()
                .filter(|(i, _)| *i == id)
                .map(|(_, at)| at.duration_since(t0).unwrap().as_secs())
                .collect()
        };
        // Admitted, then 3 steps that ask to go again, then done: every
        // release one delay of the item's kind after the previous one.
        assert_eq!(secs(fetch), [7, 14, 21, 28]);
        assert_eq!(secs(mail), [60, 120, 180, 240]);
        let m = mixer.metrics();
        assert_eq!((m.steps, m.delivered, m.retries), (6, 2, 0));
        assert_eq!(mixer.store().stats(0).unwrap(), Default::default());
    });
}

#[test]
fn nothing_is_released_after_the_drain_point_and_late_admissions_are_refused() {
    each_runtime(|rt| async move {
        let t0 = rt.wallclock();
        let mut config = cfg(DelaySpec::Constant {
            value: Duration::from_secs(500),
        });
        config.lifetime = Some(Lifetime {
            expires_at: t0 + Duration::from_secs(100),
            drain_margin: Duration::from_secs(10),
        });
        let (rec, mixer) = start(&rt, Answer::Ok, config, 2);
        let (_, at) = mixer.admit(ItemKind::Mail, b"m".to_vec()).await.unwrap();
        // A 500 s delay would outlive the mote: it leaves at the drain point.
        assert_eq!(
            at.unwrap().duration_since(t0).unwrap(),
            Duration::from_secs(90)
        );
        rt.advance_by(Duration::from_secs(95)).await;
        assert_eq!(rec.attempts().len(), 1);
        assert_eq!(
            rec.attempts()[0].1.duration_since(t0).unwrap(),
            Duration::from_secs(90)
        );
        // After the drain point nothing new is taken.
        assert!(matches!(
            mixer.admit(ItemKind::Mail, b"late".to_vec()).await,
            Err(MixerError::Expiring)
        ));
    });
}

#[test]
fn a_not_before_time_delays_the_first_release() {
    each_runtime(|rt| async move {
        let (rec, mixer) = start(
            &rt,
            Answer::Ok,
            cfg(DelaySpec::Constant {
                value: Duration::from_secs(3),
            }),
            3,
        );
        let t0 = rt.wallclock();
        let later = t0 + Duration::from_secs(3600);
        let (_, at) = mixer
            .admit_after(ItemKind::Fetch, b"j".to_vec(), Some(later))
            .await
            .unwrap();
        assert_eq!(
            at.unwrap().duration_since(t0).unwrap(),
            Duration::from_secs(3603)
        );
        // A not_before in the past changes nothing.
        let (_, at) = mixer
            .admit_after(
                ItemKind::Fetch,
                b"k".to_vec(),
                Some(t0 - Duration::from_secs(9)),
            )
            .await
            .unwrap();
        assert_eq!(
            at.unwrap().duration_since(t0).unwrap(),
            Duration::from_secs(3)
        );
        rt.advance_until_stalled().await;
        let mut times: Vec<u64> = rec
            .attempts()
            .iter()
            .map(|(_, t)| t.duration_since(t0).unwrap().as_secs())
            .collect();
        times.sort();
        assert_eq!(times, [3, 3603]);
    });
}
