//! Mixing strategies, delay distributions, live reconfiguration, the
//! mote's lifetime and wall-clock jumps, in simulated time
//! (tor_rtmock::MockRuntime). Every time asserted is exact simulated time;
//! the statistical checks use fixed seeds.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use dust_mixer::{DelaySpec, ItemKind, Lifetime, Mixer, MixerConfig, MixerError, Store, Strategy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tor_rtcompat::{SleepProvider, ToplevelBlockOn};
use tor_rtmock::MockRuntime;

const MIN: Duration = Duration::from_secs(60);

fn pool(interval: Duration, min_pool: u64, rate: f64) -> MixerConfig {
    let mut c = cfg(DelaySpec::Constant { value: MIN });
    c.strategy = Strategy::Pool {
        interval,
        min_pool,
        rate,
    };
    c
}

/// Deliveries per distinct time, in time order: (seconds after t0, count).
fn per_time(rec: &Recorder, t0: SystemTime) -> Vec<(u64, usize)> {
    let mut out: Vec<(u64, usize)> = Vec::new();
    let mut times: Vec<u64> = rec
        .attempts()
        .iter()
        .map(|(_, at)| at.duration_since(t0).unwrap().as_millis() as u64)
        .collect();
    times.sort();
    for t in times {
        match out.last_mut() {
            Some((last, n)) if *last == t => *n += 1,
            _ => out.push((t, 1)),
        }
    }
    out.into_iter().map(|(ms, n)| (ms / 1000, n)).collect()
}

#[test]
fn pool_rounds_send_exactly_min_of_size_minus_kept_and_rate_share() {
    each_runtime(|rt| async move {
        let (rec, mixer) = start(&rt, Answer::Ok, pool(15 * MIN, 3, 0.5), 1);
        let t0 = rt.wallclock();
        for _ in 0..10 {
            let (_, at) = mixer.admit(ItemKind::Mail, b"m".to_vec()).await.unwrap();
            assert_eq!(at, None, "held, no release time");
        }
        assert_eq!(mixer.held(), 10);
        rt.advance_by(15 * MIN - Duration::from_millis(1)).await;
        assert!(rec.attempts().is_empty(), "nothing before the first round");
        // Round 1: 10 held → min(10 − 3, ⌈5⌉) = 5. Round 2: 5 → min(2, 3) = 2.
        // Round 3: 3 held, not more than min_pool → none.
        rt.advance_by(30 * MIN + Duration::from_millis(1)).await;
        assert_eq!(per_time(&rec, t0), [(900, 5), (1800, 2)]);
        assert_eq!(mixer.held(), 3);
        // 4 more: 7 held → min(4, ⌈3.5⌉) = 4 at the next round (60 min).
        for _ in 0..4 {
            mixer.admit(ItemKind::Mail, b"m".to_vec()).await.unwrap();
        }
        rt.advance_by(15 * MIN).await;
        assert_eq!(per_time(&rec, t0), [(900, 5), (1800, 2), (3600, 4)]);
        assert_eq!(mixer.held(), 3);
        assert_eq!(mixer.store().stats(0).unwrap().held, 3);
        // Every item that left was in the pool with others: none unmixed,
        // and the entropy of the first round is log2(10) bits.
        let a = mixer.anonymity();
        assert_eq!((a.outputs, a.unmixed, a.pool), (11, 0, 3));
    });
}

#[test]
fn binomial_rounds_send_each_item_with_probability_rate() {
    each_runtime(|rt| async move {
        let mut c = cfg(DelaySpec::Constant { value: MIN });
        c.strategy = Strategy::Binomial {
            interval: 10 * MIN,
            rate: 0.3,
        };
        let (rec, mixer) = start(&rt, Answer::Ok, c, 2);
        let t0 = rt.wallclock();
        const N: usize = 2000;
        for _ in 0..N {
            mixer.admit(ItemKind::Mail, b"m".to_vec()).await.unwrap();
        }
        rt.advance_by(20 * MIN).await;
        let rounds = per_time(&rec, t0);
        assert_eq!(rounds.iter().map(|r| r.0).collect::<Vec<_>>(), [600, 1200]);
        // Binomial(2000, 0.3): mean 600, sd 20.5; then Binomial(rest, 0.3).
        let first = rounds[0].1 as f64;
        assert!((first - 600.0).abs() < 4.0 * 20.5, "{first}");
        let rest = N as f64 - first;
        let sd = (rest * 0.3 * 0.7).sqrt();
        assert!(
            (rounds[1].1 as f64 - 0.3 * rest).abs() < 4.0 * sd,
            "{rounds:?}"
        );
        // A binomial round is not a pool round with rate 0.3: that would
        // send exactly ⌈0.3·2000⌉ = 600.
        assert_ne!(
            rounds[0].1, 600,
            "{rounds:?} (seeded; a coincidence would show here)"
        );
    });
}

/// Runs `n` items through the mixer with `delay` and returns their delays
/// in seconds (each released exactly at its scheduled time).
fn delays_through_the_mixer(delay: DelaySpec, n: usize, seed: u64) -> Vec<f64> {
    let rt = MockRuntime::builder()
        .starting_wallclock(SystemTime::UNIX_EPOCH + Duration::from_secs(START_SECS))
        .build();
    let rt2 = rt.clone();
    rt.block_on(async move {
        let (rec, mixer) = start(&rt2, Answer::Ok, cfg(delay), seed);
        let t0 = rt2.wallclock();
        for _ in 0..n {
            mixer.admit(ItemKind::Mail, b"x".to_vec()).await.unwrap();
        }
        rt2.advance_until_stalled().await;
        let a = rec.attempts();
        assert_eq!(a.len(), n);
        a.iter()
            .map(|(_, at)| at.duration_since(t0).unwrap().as_secs_f64())
            .collect()
    })
}

/// erf by Abramowitz and Stegun 7.1.26 (absolute error < 1.5e-7).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
            + 0.254829592)
            * t
            * (-x * x).exp();
    y.copysign(x)
}

fn lognormal_cdf(x: f64, mean: f64, sigma: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let mu = mean.ln() - sigma * sigma / 2.0;
    0.5 * (1.0 + erf((x.ln() - mu) / (sigma * std::f64::consts::SQRT_2)))
}

/// KS critical value at α = 0.001 for n samples.
fn ks_crit(n: usize) -> f64 {
    1.95 / (n as f64).sqrt()
}

#[test]
fn uniform_delays_fit_and_stay_in_their_bounds() {
    const N: usize = 2000;
    let mut d = delays_through_the_mixer(
        DelaySpec::Uniform {
            min: Duration::from_secs(10),
            max: Duration::from_secs(30),
        },
        N,
        11,
    );
    assert!(d.iter().all(|x| (10.0..=30.0).contains(x)));
    // Release times are whole milliseconds (rounded up): at most 1 ms off.
    let cdf = |lo: f64, hi: f64| move |x: f64| ((x - lo) / (hi - lo)).clamp(0.0, 1.0);
    let ks = ks_distance(&mut d, cdf(10.0, 30.0), cdf(10.0, 30.0));
    assert!(ks < ks_crit(N), "KS {ks}");
    let wrong = ks_distance(&mut d, cdf(10.0, 32.0), cdf(10.0, 32.0));
    assert!(
        wrong > ks_crit(N),
        "KS cannot tell [10, 30] from [10, 32]: {wrong}"
    );
}

#[test]
fn lognormal_delays_fit_and_their_clamps_put_atoms_at_the_bounds() {
    const N: usize = 2000;
    let mut d = delays_through_the_mixer(
        DelaySpec::Lognormal {
            mean: Duration::from_secs(60),
            sigma: 0.8,
            min: None,
            max: None,
        },
        N,
        12,
    );
    let f = |x: f64| lognormal_cdf(x, 60.0, 0.8);
    let ks = ks_distance(&mut d, f, f);
    assert!(ks < ks_crit(N), "KS {ks}");
    let g = |x: f64| lognormal_cdf(x, 60.0, 1.0);
    let wrong = ks_distance(&mut d, g, g);
    assert!(
        wrong > ks_crit(N),
        "KS cannot tell sigma 0.8 from 1.0: {wrong}"
    );
    let mean = d.iter().sum::<f64>() / N as f64;
    assert!((mean / 60.0 - 1.0).abs() < 0.06, "mean {mean}");

    // Clamped to [20 s, 120 s]: everything inside, and the mass below 20 s
    // and above 120 s sits exactly on the bounds.
    let d = delays_through_the_mixer(
        DelaySpec::Lognormal {
            mean: Duration::from_secs(60),
            sigma: 0.8,
            min: Some(Duration::from_secs(20)),
            max: Some(Duration::from_secs(120)),
        },
        N,
        13,
    );
    assert!(d.iter().all(|x| (20.0..=120.0).contains(x)));
    let at_min = d.iter().filter(|x| **x == 20.0).count() as f64 / N as f64;
    let at_max = d.iter().filter(|x| **x == 120.0).count() as f64 / N as f64;
    let (p_lo, p_hi) = (f(20.0), 1.0 - f(120.0));
    let sd = |p: f64| (p * (1.0 - p) / N as f64).sqrt();
    assert!((at_min - p_lo).abs() < 4.0 * sd(p_lo), "{at_min} vs {p_lo}");
    assert!((at_max - p_hi).abs() < 4.0 * sd(p_hi), "{at_max} vs {p_hi}");
}

#[test]
fn constant_delays_are_exact() {
    let d = delays_through_the_mixer(
        DelaySpec::Constant {
            value: Duration::from_millis(2500),
        },
        50,
        14,
    );
    assert!(d.iter().all(|x| *x == 2.5), "{d:?}");
}

#[test]
fn invalid_settings_name_their_key() {
    let bad = [
        (
            DelaySpec::Exponential {
                mean: Duration::ZERO,
                min: None,
                max: None,
            },
            "delay.mean: mean must be > 0",
        ),
        (
            DelaySpec::Uniform {
                min: Duration::from_secs(2),
                max: Duration::from_secs(1),
            },
            "delay.min: min > max",
        ),
        (
            DelaySpec::Lognormal {
                mean: Duration::from_secs(1),
                sigma: 0.0,
                min: None,
                max: None,
            },
            "delay.sigma",
        ),
    ];
    for (delay, want) in bad {
        let e = cfg(delay).validate().unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    let e = pool(Duration::ZERO, 1, 0.5)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("strategy.interval"), "{e}");
    let e = pool(MIN, 1, 1.5).validate().unwrap_err().to_string();
    assert!(e.contains("strategy.rate"), "{e}");
}

#[test]
fn reconfiguring_keeps_scheduled_times_and_refuses_invalid_settings() {
    each_runtime(|rt| async move {
        let (rec, mixer) = start(
            &rt,
            Answer::Ok,
            cfg(DelaySpec::Constant { value: 60 * MIN }),
            3,
        );
        let t0 = rt.wallclock();
        let (old, _) = mixer.admit(ItemKind::Mail, b"old".to_vec()).await.unwrap();
        // An invalid change is refused; the old settings stay.
        let mut bad = cfg(DelaySpec::Constant { value: MIN });
        bad.delay = DelaySpec::Exponential {
            mean: Duration::ZERO,
            min: None,
            max: None,
        };
        assert!(matches!(
            mixer.reconfigure(bad),
            Err(MixerError::Invalid(_))
        ));
        assert_eq!(
            mixer.config().delay,
            DelaySpec::Constant { value: 60 * MIN }
        );
        // A valid change: new items get it, the old one keeps its time.
        mixer
            .reconfigure(cfg(DelaySpec::Constant { value: MIN }))
            .unwrap();
        let (new, _) = mixer.admit(ItemKind::Mail, b"new".to_vec()).await.unwrap();
        rt.advance_until_stalled().await;
        let at = |id| {
            rec.attempts()
                .iter()
                .find(|a| a.0 == id)
                .unwrap()
                .1
                .duration_since(t0)
                .unwrap()
        };
        assert_eq!(at(old), 60 * MIN, "not re-timed");
        assert_eq!(at(new), MIN);

        // To a pool: new items are held; back to poisson: held items get a
        // delay from the new distribution, counted from the change.
        mixer.reconfigure(pool(15 * MIN, 100, 0.5)).unwrap();
        let t1 = rt.wallclock();
        let (held, at_held) = mixer.admit(ItemKind::Mail, b"held".to_vec()).await.unwrap();
        assert_eq!(at_held, None);
        rt.advance_by(40 * MIN).await;
        assert_eq!(mixer.held(), 1, "min_pool 100 keeps it");
        mixer
            .reconfigure(cfg(DelaySpec::Constant { value: 2 * MIN }))
            .unwrap();
        assert_eq!(mixer.held(), 0);
        rt.advance_until_stalled().await;
        assert_eq!(at(held) - t1.duration_since(t0).unwrap(), 42 * MIN);
    });
}

/// A mote that lives 24 h with steady traffic: nothing leaves after the
/// drain point, late admissions are refused, and the queue is empty when
/// the mote dies — under each strategy.
#[test]
fn a_day_long_life_ends_with_an_empty_queue() {
    let strategies = [
        Strategy::Poisson,
        Strategy::mixmaster(),
        Strategy::Binomial {
            interval: 15 * MIN,
            rate: 0.2,
        },
    ];
    for strategy in strategies {
        let rt = MockRuntime::builder()
            .starting_wallclock(SystemTime::UNIX_EPOCH + Duration::from_secs(START_SECS))
            .build();
        let rt2 = rt.clone();
        let name = format!("{strategy:?}");
        rt.block_on(async move {
            let rt = rt2;
            let t0 = rt.wallclock();
            let expires = t0 + 24 * 60 * MIN;
            let margin = 30 * MIN;
            let mut c = cfg(DelaySpec::Exponential {
                mean: 30 * MIN,
                min: Some(MIN),
                max: Some(6 * 60 * MIN),
            });
            c.strategy = strategy;
            c.lifetime = Some(Lifetime {
                expires_at: expires,
                drain_margin: margin,
            });
            let (rec, mixer) = start(&rt, Answer::Ok, c, 4);
            // One item every 2 minutes on average, until the mote refuses.
            let mut rng = StdRng::seed_from_u64(5);
            let (mut admitted, mut refused) = (0, 0);
            while rt.wallclock() < expires {
                let gap = -(1.0 - rng.random::<f64>()).ln() * 120.0;
                rt.advance_by(Duration::from_secs_f64(gap)).await;
                match mixer.admit(ItemKind::Mail, b"m".to_vec()).await {
                    Ok(_) => {
                        admitted += 1;
                        assert!(rt.wallclock() < expires - margin, "{name}");
                    }
                    Err(MixerError::Expiring) => {
                        refused += 1;
                        assert!(rt.wallclock() >= expires - margin, "{name}");
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(
                admitted > 600 && refused > 0,
                "{name}: {admitted} / {refused}"
            );
            let attempts = rec.attempts();
            assert_eq!(attempts.len(), admitted, "{name}: every item left");
            assert!(
                attempts.iter().all(|(_, at)| *at <= expires - margin),
                "{name}: a release after the drain point"
            );
            let st = mixer.store().stats(0).unwrap();
            assert_eq!((st.queued, st.in_flight), (0, 0), "{name}");
        });
    }
}

/// The mote restarts after its clock jumped forward by 3 hours (a
/// suspended VM): items whose time passed leave at once, in random order;
/// the others keep their absolute times; pool rounds restart one interval
/// after the start (they run on the monotonic clock).
#[test]
fn restart_across_a_wall_clock_jump() {
    let dir = tempfile::tempdir().unwrap();
    let copy = tempfile::tempdir().unwrap();
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(START_SECS);
    let times;
    {
        let rt = MockRuntime::builder().starting_wallclock(start).build();
        let store = Store::open(
            dir.path(),
            1 << 24,
            &dust_mixer::SealKey::from_bytes([7; 32]),
        )
        .unwrap();
        let rec = Recorder::new(&rt, Answer::Ok);
        let rt2 = rt.clone();
        let c = cfg(DelaySpec::Uniform {
            min: 60 * MIN,
            max: 300 * MIN,
        });
        let on_disk = store.clone();
        times = rt.block_on(async move {
            let mixer = Mixer::start(rt2.clone(), store, rec, c).unwrap();
            let mut t = Vec::new();
            for _ in 0..30 {
                let (id, at) = mixer.admit(ItemKind::Mail, vec![1]).await.unwrap();
                t.push((id, at.unwrap()));
            }
            t
        });
        // The process stops: what is on disk is what the next start sees.
        on_disk.flush_blocking().unwrap();
        copy_dir(dir.path(), copy.path());
        assert_eq!(times.len(), 30);
    }
    let jumped = start + 180 * MIN;
    let rt = MockRuntime::builder().starting_wallclock(jumped).build();
    let store = Store::open(
        copy.path(),
        1 << 24,
        &dust_mixer::SealKey::from_bytes([7; 32]),
    )
    .unwrap();
    let rec = Recorder::new(&rt, Answer::Ok);
    let rt2 = rt.clone();
    let times2 = times.clone();
    rt.block_on(async move {
        let rt = rt2;
        let mixer = Mixer::start(rt.clone(), store, rec.clone(), pool(15 * MIN, 0, 1.0)).unwrap();
        rt.progress_until_stalled().await;
        let overdue = times2.iter().filter(|(_, at)| *at <= jumped).count();
        assert!(overdue > 5 && overdue < 25, "{overdue}");
        assert_eq!(rec.attempts().len(), overdue, "overdue items leave at once");
        assert!(rec.attempts().iter().all(|(_, at)| *at == jumped));
        // A new item under the pool strategy: the first round is 15 min
        // after this start.
        mixer.admit(ItemKind::Mail, vec![2]).await.unwrap();
        // (Rounds always have a next timer: advance by time, not to a stall.)
        rt.advance_by(300 * MIN).await;
        let a = rec.attempts();
        assert_eq!(a.len(), 31);
        for (id, at) in &times2 {
            let got = a.iter().find(|x| x.0 == *id).unwrap().1;
            assert_eq!(got, (*at).max(jumped), "absolute times kept");
        }
        let pooled = a
            .iter()
            .find(|x| !times2.iter().any(|t| t.0 == x.0))
            .unwrap();
        assert_eq!(pooled.1, jumped + 15 * MIN);
    });
}
