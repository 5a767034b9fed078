//! Hop at drain, in simulated time (tor_rtmock::MockRuntime): at the hop
//! point everything still queued or held goes to the successor instead of
//! being released; what cannot be handed over is released here, spread
//! out, before the drain point; nothing is lost, nothing leaves twice.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

mod common;

use common::*;
use dust_mixer::{
    DelaySpec, Deliver, DeliveryError, Item, ItemId, ItemKind, Lifetime, Mixer, MixerConfig,
    Outcome, Store, Strategy,
};
use rand::SeedableRng;
use tor_rtcompat::SleepProvider;
use tor_rtmock::MockRuntime;

/// What happened to an item: released here or handed over, and when.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Left {
    Released(SystemTime),
    HandedOff(SystemTime),
}

/// A deliverer with a successor that can be switched on and made to fail.
struct Egress {
    rt: MockRuntime,
    successor: AtomicBool,
    /// The successor refuses this many tries of each item (temporarily).
    refuse: u32,
    tries: Mutex<HashMap<ItemId, u32>>,
    left: Mutex<Vec<(ItemId, Left)>>,
    hand_off_tries: AtomicU32,
}

impl Egress {
    fn new(rt: &MockRuntime, successor: bool, refuse: u32) -> Arc<Self> {
        Arc::new(Self {
            rt: rt.clone(),
            successor: AtomicBool::new(successor),
            refuse,
            tries: Mutex::new(HashMap::new()),
            left: Mutex::new(Vec::new()),
            hand_off_tries: AtomicU32::new(0),
        })
    }

    fn left(&self) -> Vec<(ItemId, Left)> {
        self.left.lock().unwrap().clone()
    }
}

impl Deliver for Egress {
    async fn deliver(&self, item: &Item) -> Result<Outcome, DeliveryError> {
        let now = self.rt.wallclock();
        self.left
            .lock()
            .unwrap()
            .push((item.id, Left::Released(now)));
        Ok(Outcome::Done)
    }

    fn has_successor(&self) -> bool {
        self.successor.load(Ordering::SeqCst)
    }

    async fn hand_off(&self, item: &Item) -> Result<(), DeliveryError> {
        self.hand_off_tries.fetch_add(1, Ordering::SeqCst);
        let n = {
            let mut t = self.tries.lock().unwrap();
            let n = t.entry(item.id).or_default();
            *n += 1;
            *n
        };
        if n <= self.refuse {
            return Err(DeliveryError::temporary("503 successor unavailable"));
        }
        let now = self.rt.wallclock();
        self.left
            .lock()
            .unwrap()
            .push((item.id, Left::HandedOff(now)));
        Ok(())
    }
}

const LIFE: Duration = Duration::from_secs(4000);
const MARGIN: Duration = Duration::from_secs(300);
const WINDOW: Duration = Duration::from_secs(600);

/// A mote living `LIFE` from now: drain point at 3700 s, hop point at
/// 3100 s; delays uniform in [0, 8000 s], so more than half of the items
/// would outlive the mote.
fn hop_cfg(t0: SystemTime) -> MixerConfig {
    let mut c = cfg(DelaySpec::Uniform {
        min: Duration::ZERO,
        max: Duration::from_secs(8000),
    });
    c.lifetime = Some(Lifetime {
        expires_at: t0 + LIFE,
        drain_margin: MARGIN,
    });
    c.hop_window = Some(WINDOW);
    c
}

fn start(rt: &MockRuntime, egress: &Arc<Egress>, c: MixerConfig) -> Mixer<MockRuntime, Egress> {
    Mixer::start_with_rng(
        rt.clone(),
        Store::temporary().unwrap(),
        Arc::clone(egress),
        c,
        rand::rngs::StdRng::seed_from_u64(7),
    )
    .unwrap()
}

async fn admit(mixer: &Mixer<MockRuntime, Egress>, n: usize) -> Vec<ItemId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let (id, _) = mixer
            .admit(ItemKind::Mail, format!("m{i}").into_bytes())
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

/// Every admitted item left exactly once; returns what happened to each.
fn once_each(egress: &Egress, ids: &[ItemId]) -> HashMap<ItemId, Left> {
    let left = egress.left();
    let mut by_id = HashMap::new();
    for (id, how) in &left {
        assert!(by_id.insert(*id, *how).is_none(), "{id} left twice");
    }
    assert_eq!(by_id.len(), ids.len(), "every item left");
    for id in ids {
        assert!(by_id.contains_key(id), "{id} never left");
    }
    by_id
}

#[test]
fn at_the_hop_point_everything_queued_moves_to_the_successor() {
    each_runtime(|rt| async move {
        let t0 = rt.wallclock();
        let egress = Egress::new(&rt, true, 0);
        let mixer = start(&rt, &egress, hop_cfg(t0));
        let ids = admit(&mixer, 200).await;
        rt.advance_by(LIFE).await;
        let left = once_each(&egress, &ids);
        let hop = t0 + LIFE - MARGIN - WINDOW;
        let (mut released, mut moved) = (0, 0);
        for how in left.values() {
            match *how {
                // Released here only on their own time, before the hop.
                Left::Released(at) => {
                    assert!(at < hop, "released at {at:?}, after the hop point");
                    released += 1;
                }
                // Everything else, at the hop point, not later.
                Left::HandedOff(at) => {
                    assert_eq!(at, hop);
                    moved += 1;
                }
            }
        }
        println!("released here {released}, handed off {moved}");
        // Delays uniform in [0, 8000 s] and the hop at 3100 s: about 61 %
        // move (binomial, 200 items: far from either bound).
        assert!((90..170).contains(&moved), "{moved} handed off");
        let m = mixer.metrics();
        assert_eq!((m.handed_off, m.hop_fallbacks), (moved, 0));
        assert_eq!(m.delivered, released);
        assert_eq!(mixer.store().stats(0).unwrap(), Default::default());
    });
}

#[test]
fn an_unreachable_successor_means_release_here_spread_before_the_drain_point() {
    each_runtime(|rt| async move {
        let t0 = rt.wallclock();
        // The successor never takes anything.
        let egress = Egress::new(&rt, true, u32::MAX);
        let mixer = start(&rt, &egress, hop_cfg(t0));
        let ids = admit(&mixer, 200).await;
        rt.advance_by(LIFE).await;
        let left = once_each(&egress, &ids);
        let hop = t0 + LIFE - MARGIN - WINDOW;
        let drain = t0 + LIFE - MARGIN;
        let mut late: Vec<SystemTime> = Vec::new();
        for how in left.values() {
            let Left::Released(at) = *how else {
                panic!("handed off to an unreachable successor");
            };
            assert!(at <= drain, "released after the drain point");
            if at >= hop {
                late.push(at);
            }
        }
        let m = mixer.metrics();
        assert_eq!(m.hop_fallbacks, late.len() as u64);
        assert!(m.hop_fallbacks > 50, "{} fell back", m.hop_fallbacks);
        // Each was tried a bounded number of times.
        let tries = egress.hand_off_tries.load(Ordering::SeqCst);
        assert!(u64::from(tries) <= 5 * m.hop_fallbacks, "{tries} tries");
        // Spread out, not a burst: no second of the fallback window holds
        // more than 10 % of the fallbacks, and none sits at the drain point
        // itself in a heap.
        let mut per_s: HashMap<u64, usize> = HashMap::new();
        for at in &late {
            *per_s
                .entry(at.duration_since(t0).unwrap().as_secs())
                .or_default() += 1;
        }
        let worst = per_s.values().max().copied().unwrap_or(0);
        println!(
            "{} fell back, {tries} tries, at most {worst} in one second",
            late.len()
        );
        assert!(worst * 10 <= late.len(), "a burst of {worst} in one second");
        assert_eq!(mixer.store().stats(0).unwrap(), Default::default());
    });
}

#[test]
fn a_successor_that_refuses_twice_still_gets_everything_once() {
    each_runtime(|rt| async move {
        let t0 = rt.wallclock();
        let egress = Egress::new(&rt, true, 2);
        let mixer = start(&rt, &egress, hop_cfg(t0));
        let ids = admit(&mixer, 100).await;
        rt.advance_by(LIFE).await;
        let left = once_each(&egress, &ids);
        let hop = t0 + LIFE - MARGIN - WINDOW;
        let moved = left
            .values()
            .filter(|l| matches!(l, Left::HandedOff(at) if *at > hop))
            .count() as u64;
        let m = mixer.metrics();
        assert_eq!((m.handed_off, m.hop_fallbacks), (moved, 0));
        assert!(moved > 30);
        // Two refusals each, then taken: three tries per moved item.
        assert_eq!(
            u64::from(egress.hand_off_tries.load(Ordering::SeqCst)),
            3 * moved
        );
    });
}

#[test]
fn without_a_successor_the_mote_drains_as_before_and_one_named_late_takes_the_rest() {
    each_runtime(|rt| async move {
        let t0 = rt.wallclock();
        let egress = Egress::new(&rt, false, 0);
        let c = hop_cfg(t0);
        let mixer = start(&rt, &egress, c.clone());
        let ids = admit(&mixer, 100).await;
        let hop = t0 + LIFE - MARGIN - WINDOW;
        // Past the hop point, no successor: nothing moves.
        rt.advance_by(LIFE - MARGIN - WINDOW + Duration::from_secs(100))
            .await;
        assert!(egress
            .left()
            .iter()
            .all(|(_, l)| matches!(l, Left::Released(at) if *at < hop + Duration::from_secs(100))));
        let before = egress.left().len();
        // A successor is named at run time (`dustmote reload`): the rest
        // moves at once.
        egress.successor.store(true, Ordering::SeqCst);
        mixer.reconfigure(c).unwrap();
        let named = rt.wallclock();
        rt.advance_by(Duration::from_secs(1)).await;
        let left = once_each(&egress, &ids);
        let moved = left
            .values()
            .filter(|l| matches!(l, Left::HandedOff(at) if *at == named))
            .count();
        assert_eq!(before + moved, ids.len());
        assert!(moved > 30);
    });
}

#[test]
fn with_no_successor_ever_the_drain_point_gets_the_spike_it_always_had() {
    each_runtime(|rt| async move {
        let t0 = rt.wallclock();
        let egress = Egress::new(&rt, false, 0);
        let mixer = start(&rt, &egress, hop_cfg(t0));
        let ids = admit(&mixer, 100).await;
        rt.advance_by(LIFE).await;
        let left = once_each(&egress, &ids);
        let drain = t0 + LIFE - MARGIN;
        let at_drain = left
            .values()
            .filter(|l| **l == Left::Released(drain))
            .count();
        // Everything that would outlive the mote leaves at the drain point.
        assert!(at_drain > 30, "{at_drain}");
        assert_eq!(mixer.metrics().handed_off, 0);
    });
}

#[test]
fn items_held_for_rounds_move_too() {
    each_runtime(|rt| async move {
        let t0 = rt.wallclock();
        let egress = Egress::new(&rt, true, 0);
        let mut c = hop_cfg(t0);
        // One round a minute, each item leaving with probability 0.001:
        // nearly everything is still held at the hop point.
        c.strategy = Strategy::Binomial {
            interval: Duration::from_secs(60),
            rate: 0.001,
        };
        let mixer = start(&rt, &egress, c);
        let ids = admit(&mixer, 100).await;
        rt.advance_by(LIFE).await;
        let left = once_each(&egress, &ids);
        let hop = t0 + LIFE - MARGIN - WINDOW;
        // At the hop point itself, not at the next round (rounds fall on
        // multiples of 60 s; the hop point, 3100 s, does not).
        let moved = left
            .values()
            .filter(|l| matches!(l, Left::HandedOff(at) if *at == hop))
            .count();
        assert!(moved > 80, "{moved}");
        assert_eq!(mixer.held(), 0);
        assert_eq!(mixer.store().stats(0).unwrap(), Default::default());
    });
}
