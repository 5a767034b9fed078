//! Helpers shared by the simulated-time tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dust_mixer::{
    DelaySpec, Deliver, DeliveryError, Item, ItemId, MixerConfig, Outcome, RetryPolicy, Strategy,
};
use rand::SeedableRng;
use tor_rtcompat::{SleepProvider, ToplevelBlockOn};
use tor_rtmock::task::SchedulingPolicy;
use tor_rtmock::MockRuntime;

/// How the test deliverer answers.
#[derive(Clone, Copy)]
pub enum Answer {
    Ok,
    /// Fail temporarily this many times, then succeed.
    FailTimes(u32),
    Permanent,
    /// Never finish (simulates a process that dies mid-delivery).
    Hang,
    /// Ask to be released again this many times (download chunks), then done.
    Steps(u32),
}

pub struct Recorder {
    pub rt: MockRuntime,
    pub answer: Answer,
    /// Every attempt: item id and simulated wall-clock time.
    pub attempts: Mutex<Vec<(ItemId, SystemTime)>>,
}

impl Recorder {
    pub fn new(rt: &MockRuntime, answer: Answer) -> Arc<Self> {
        Arc::new(Self {
            rt: rt.clone(),
            answer,
            attempts: Mutex::new(Vec::new()),
        })
    }
    pub fn attempts(&self) -> Vec<(ItemId, SystemTime)> {
        self.attempts.lock().unwrap().clone()
    }
}

impl Deliver for Recorder {
    async fn deliver(&self, item: &Item) -> Result<Outcome, DeliveryError> {
        let n = {
            let mut a = self.attempts.lock().unwrap();
            a.push((item.id, self.rt.wallclock()));
            a.iter().filter(|(id, _)| *id == item.id).count() as u32
        };
        match self.answer {
            Answer::Ok => Ok(Outcome::Done),
            Answer::FailTimes(k) if n <= k => Err(DeliveryError::temporary("421 try later")),
            Answer::FailTimes(_) => Ok(Outcome::Done),
            Answer::Steps(k) if n <= k => Ok(Outcome::Again),
            Answer::Steps(_) => Ok(Outcome::Done),
            Answer::Permanent => Err(DeliveryError::permanent("550 no such user")),
            Answer::Hang => futures::future::pending().await,
        }
    }
}

/// A whole-second start time, so that millisecond release times are exact.
pub const START_SECS: u64 = 1_800_000_000;

/// Run `test` once per scheduling policy (as `test_with_various` does), on a
/// runtime whose wall clock starts at [`START_SECS`].
pub fn each_runtime<F, Fut>(mut test: F)
where
    F: FnMut(MockRuntime) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for policy in [SchedulingPolicy::Stack, SchedulingPolicy::Queue] {
        let rt = MockRuntime::builder()
            .scheduling(policy)
            .starting_wallclock(SystemTime::UNIX_EPOCH + Duration::from_secs(START_SECS))
            .build();
        rt.block_on(test(rt.clone()));
    }
}

pub fn cfg(delay: DelaySpec) -> MixerConfig {
    MixerConfig {
        strategy: Strategy::Poisson,
        cover: None,
        delay,
        kind_delays: Vec::new(),
        lifetime: None,
        retry: RetryPolicy {
            base: Duration::from_secs(30),
            max: Duration::from_secs(600),
        },
        max_in_flight: 16,
        hop_window: None,
    }
}

/// Kolmogorov–Smirnov distance between the sample's empirical CDF and a CDF
/// that may have atoms: at each distinct sample value x the ECDF just below x
/// is compared with F(x-) and the ECDF at x with F(x).
pub fn ks_distance(
    sample: &mut [f64],
    cdf: impl Fn(f64) -> f64,
    cdf_left: impl Fn(f64) -> f64,
) -> f64 {
    sample.sort_by(f64::total_cmp);
    let n = sample.len() as f64;
    let mut d: f64 = 0.0;
    let mut i = 0;
    while i < sample.len() {
        let x = sample[i];
        let mut j = i;
        while j < sample.len() && sample[j] == x {
            j += 1;
        }
        d = d
            .max((cdf_left(x) - i as f64 / n).abs())
            .max((cdf(x) - j as f64 / n).abs());
        i = j;
    }
    d
}

/// Copy a database directory as it is on disk (what a kill -9 leaves).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A mixer on `rt` with a fresh temporary store, a recorder answering
/// `answer`, and a seeded RNG.
pub fn start(
    rt: &MockRuntime,
    answer: Answer,
    c: MixerConfig,
    seed: u64,
) -> (Arc<Recorder>, dust_mixer::Mixer<MockRuntime, Recorder>) {
    let rec = Recorder::new(rt, answer);
    let mixer = dust_mixer::Mixer::start_with_rng(
        rt.clone(),
        dust_mixer::Store::temporary().unwrap(),
        rec.clone(),
        c,
        rand::rngs::StdRng::seed_from_u64(seed),
    )
    .unwrap();
    (rec, mixer)
}
