//! `dustmote simulate --cascade N` and `--drain`: several real mixers in
//! a dust cloud (a cascade of motes, or a mote that drains into its
//! successor), on one simulated clock, and what an observer of the edges
//! can tell.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dust_mixer::{Deliver, DeliveryError, Item, ItemKind, Mixer, MixerConfig, Outcome, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tor_rtcompat::ToplevelBlockOn;
use tor_rtmock::MockRuntime;

use super::{fmt_secs, scaled, Latency, Params, START};

/// Where an item leaving a mote of a simulated cloud goes: into the next
/// mote (a cascade's next hop, or the successor taking a queue at the hop
/// point), or out of the cloud, where its departure time is recorded. The
/// payload carries the item's arrival number (8 bytes; cover items have
/// none), so that the end-to-end latency is known.
///
/// Items reach the next mote over a channel, admitted there by a task of
/// the simulation (an admission's future is not `Send` on the simulated
/// runtime, so a delivery cannot await it).
struct CloudHop {
    /// The next mote of a cascade (`None`: the last one).
    next: Option<Link>,
    /// The successor that takes the queue at the hop point.
    successor: Option<Link>,
    rt: MockRuntime,
    /// (arrival number, simulated seconds since the start) of each item
    /// that left the cloud.
    exits: Passages,
    /// The same for items leaving the cascade's first mote, if this is it.
    left_first: Option<Passages>,
}

/// (arrival number, simulated seconds) of items passing a point.
type Passages = Arc<std::sync::Mutex<Vec<(u64, f64)>>>;

/// The way into the next mote.
type Link = futures::channel::mpsc::UnboundedSender<Vec<u8>>;

/// Admit everything that arrives on `rx` into `into`, until every sender
/// is gone.
async fn forward(
    mut rx: futures::channel::mpsc::UnboundedReceiver<Vec<u8>>,
    into: Mixer<MockRuntime, CloudHop>,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    while let Some(payload) = rx.next().await {
        into.admit(ItemKind::Mail, payload).await?;
    }
    Ok(())
}

/// Sender-anonymity entropy (bits) of each departure as an observer of
/// the cloud's edges sees it: it knows every arrival time, every departure
/// time and the end-to-end delay distribution (here: the histogram of the
/// run's own latencies, 1-minute bins), and weighs each earlier arrival by
/// the density of the delay it implies. The mean over `departures`
/// (seconds), for arrivals `arrivals` (seconds, sorted). The same measure
/// for one mote and for a cascade, so the two compare.
pub fn edge_entropy_bits(arrivals: &[f64], departures: &[f64], latencies: &[f64]) -> f64 {
    const BIN_S: f64 = 60.0;
    let Some(max) = latencies.iter().copied().reduce(f64::max) else {
        return 0.0;
    };
    let bins = (max / BIN_S) as usize + 1;
    let mut density = vec![0.0f64; bins];
    for l in latencies {
        density[((l / BIN_S) as usize).min(bins - 1)] += 1.0;
    }
    let mut sum = 0.0;
    let mut n = 0usize;
    for &t in departures {
        // Arrivals in [t - max, t].
        let lo = arrivals.partition_point(|a| *a < t - max - BIN_S);
        let hi = arrivals.partition_point(|a| *a <= t);
        let w: Vec<f64> = arrivals[lo..hi]
            .iter()
            .map(|a| {
                density
                    .get(((t - a) / BIN_S) as usize)
                    .copied()
                    .unwrap_or(0.0)
            })
            .filter(|w| *w > 0.0)
            .collect();
        let total: f64 = w.iter().sum();
        if total <= 0.0 {
            continue;
        }
        sum -= w
            .iter()
            .map(|x| {
                let p = x / total;
                p * p.log2()
            })
            .sum::<f64>();
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// What a run of a simulated cloud gives: arrival times and, per item that
/// left, (arrival time, departure time), all in simulated seconds.
pub struct CloudRun {
    /// Every arrival, sorted.
    pub arrivals: Vec<f64>,
    /// (arrival, departure) of the items that left the cloud.
    pub trips: Vec<(f64, f64)>,
    /// A cascade: (time it left the first mote, departure) of the items
    /// that left the cloud, sorted.
    pub after_first: Vec<(f64, f64)>,
}

/// How the simulated cloud is built.
#[derive(Debug, Clone)]
pub enum Cloud {
    /// `n` motes in series, each with the same settings.
    Cascade(usize),
    /// One mote living `lifetime`, arrivals until its drain point; with
    /// `hop`, a successor with the same settings takes its queue at the
    /// hop point (`cfg.hop_window` before the drain point).
    Drain {
        /// From the start to the mote's end.
        lifetime: Duration,
        /// Whether the mote hops.
        hop: bool,
    },
}

/// Run arrivals at `rate_per_s` for `arrive_for` through a cloud of motes
/// with settings `cfg` (cover off), then let everything leave (up to
/// `settle` more).
pub fn run_cloud(
    cfg: &MixerConfig,
    cloud: &Cloud,
    rate_per_s: f64,
    arrive_for: Duration,
    settle: Duration,
    seed: u64,
) -> anyhow::Result<CloudRun> {
    let rt = MockRuntime::builder()
        .starting_wallclock(SystemTime::UNIX_EPOCH + START)
        .build();
    let mut cfg = cfg.clone();
    cfg.cover = None;
    cfg.max_in_flight = usize::MAX / 2;
    cfg.lifetime = None;
    cfg.hop_window = None;
    let exits = Arc::new(std::sync::Mutex::new(Vec::new()));
    let left_first = Arc::new(std::sync::Mutex::new(Vec::new()));
    let rt2 = rt.clone();
    let (exits2, left_first2) = (Arc::clone(&exits), Arc::clone(&left_first));
    let arrivals = rt.block_on(async move {
        let (exits, left_first) = (exits2, left_first2);
        let rt = rt2;
        let mut seeds = StdRng::seed_from_u64(seed);
        let mut start = |deliver: CloudHop, c: MixerConfig| {
            Mixer::start_with_rng(
                rt.clone(),
                Store::temporary()?,
                Arc::new(deliver),
                c,
                StdRng::seed_from_u64(seeds.random()),
            )
            .map_err(anyhow::Error::from)
        };
        let hop = |next, successor| CloudHop {
            next,
            successor,
            rt: rt.clone(),
            exits: Arc::clone(&exits),
            left_first: None,
        };
        // Each link: the channel into a mote, and that mote.
        let mut links = Vec::new();
        let first = match cloud {
            Cloud::Cascade(n) => {
                let mut m = start(hop(None, None), cfg.clone())?;
                for i in 1..(*n).max(1) {
                    let (tx, rx) = futures::channel::mpsc::unbounded();
                    links.push(forward(rx, m));
                    let mut h = hop(Some(tx), None);
                    if i + 1 == *n {
                        h.left_first = Some(Arc::clone(&left_first));
                    }
                    m = start(h, cfg.clone())?;
                }
                m
            }
            Cloud::Drain { lifetime, hop: h } => {
                let mut c = cfg.clone();
                let window = p_window(&cfg);
                c.lifetime = Some(dust_mixer::Lifetime {
                    expires_at: SystemTime::UNIX_EPOCH + START + *lifetime,
                    drain_margin: p_margin(&cfg),
                });
                let successor = if *h {
                    c.hop_window = Some(window);
                    let (tx, rx) = futures::channel::mpsc::unbounded();
                    links.push(forward(rx, start(hop(None, None), cfg.clone())?));
                    Some(tx)
                } else {
                    None
                };
                start(hop(None, successor), c)?
            }
        };
        // The links run beside the arrivals; they never end by themselves
        // (the motes keep their senders), the arrivals do.
        let links = async move {
            if links.is_empty() {
                // One mote: nothing to forward.
                futures::future::pending::<()>().await;
            }
            futures::future::try_join_all(links).await.map(|_| ())
        };
        let arrivals = arrive(&rt, &first, rate_per_s, arrive_for, settle, seed);
        futures::pin_mut!(links, arrivals);
        match futures::future::select(links, arrivals).await {
            futures::future::Either::Left((r, _)) => {
                r?;
                anyhow::bail!("a link between simulated motes closed")
            }
            futures::future::Either::Right((r, _)) => r,
        }
    })?;
    let exits = exits.lock().map(|e| e.clone()).unwrap_or_default();
    let trips = exits
        .iter()
        .filter_map(|(n, t)| arrivals.get(*n as usize).map(|a| (*a, *t)))
        .collect();
    let firsts: std::collections::HashMap<u64, f64> = left_first
        .lock()
        .map(|e| e.iter().copied().collect())
        .unwrap_or_default();
    let mut after_first: Vec<(f64, f64)> = exits
        .iter()
        .filter_map(|(n, t)| firsts.get(n).map(|f| (*f, *t)))
        .collect();
    after_first.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(CloudRun {
        arrivals,
        trips,
        after_first,
    })
}

/// Poisson arrivals into `first` for `arrive_for` (or until it refuses
/// them: its drain point), then `settle` more simulated time.
async fn arrive(
    rt: &MockRuntime,
    first: &Mixer<MockRuntime, CloudHop>,
    rate_per_s: f64,
    arrive_for: Duration,
    settle: Duration,
    seed: u64,
) -> anyhow::Result<Vec<f64>> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_5eed);
    let t0 = tor_rtcompat::SleepProvider::now(rt);
    let end = arrive_for.as_secs_f64();
    let mut t = 0.0f64;
    let mut arrivals = Vec::new();
    loop {
        t += -(1.0 - rng.random::<f64>()).ln() / rate_per_s;
        if t >= end {
            break;
        }
        rt.advance_until(t0 + Duration::from_secs_f64(t)).await;
        let n = arrivals.len() as u64;
        match first.admit(ItemKind::Mail, n.to_le_bytes().to_vec()).await {
            Ok(_) => arrivals.push(t),
            // Past the drain point: the mote takes nothing more.
            Err(dust_mixer::MixerError::Expiring) => break,
            Err(e) => return Err(e.into()),
        }
    }
    rt.advance_until(t0 + arrive_for + settle).await;
    Ok(arrivals)
}

/// The drain margin and hop window a drain simulation uses (the config's,
/// or 10 minutes each).
fn p_margin(cfg: &MixerConfig) -> Duration {
    cfg.lifetime
        .map_or(Duration::from_secs(600), |l| l.drain_margin)
}

fn p_window(cfg: &MixerConfig) -> Duration {
    cfg.hop_window.unwrap_or(Duration::from_secs(600))
}

/// One side of a cloud comparison, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct CloudReport {
    /// Items that arrived.
    pub items: u64,
    /// Items that left the cloud.
    pub outputs: u64,
    /// End-to-end latency.
    #[serde(flatten)]
    pub latency: Latency,
    /// Mean entropy of the departures for an observer of the cloud's edges
    /// ([`edge_entropy_bits`]), bits.
    pub entropy_bits: f64,
    /// A cascade: the entropy left for the provider of its first mote (who
    /// sees inside that VM: which item left it when) together with an
    /// observer of the cloud's edges, bits. For one mote: 0 (its provider
    /// links every item).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_entropy_bits: Option<f64>,
    /// `--hop-at-drain`: the share of the items that left in the last
    /// drain margin before the mote's drain point.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_last_margin: Option<f64>,
    /// `--hop-at-drain`: the most items that left in one minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_per_minute: Option<u64>,
}

/// `--hops N`: the cascade, one mote of it, and one mote with the
/// cascade's total mean delay (exponential delays: the memoryless mix),
/// on the same arrivals.
pub(super) fn cascade(params: &Params, n: usize, json: bool) -> anyhow::Result<String> {
    let (rate, seed) = (params.rate_per_s, params.seed);
    let arrive = params.duration;
    let settle = params.duration;
    let from = params.warmup.as_secs_f64();
    let chain_run = run_cloud(&params.cfg, &Cloud::Cascade(n), rate, arrive, settle, seed)?;
    let mut chain = CloudReport::of(&chain_run, from);
    chain.provider_entropy_bits = Some(if n > 1 {
        // The first mote's provider knows when each item left it: what is
        // left is the rest of the cascade's mixing.
        let starts: Vec<f64> = chain_run.after_first.iter().map(|(f, _)| *f).collect();
        let departures: Vec<f64> = chain_run
            .after_first
            .iter()
            .map(|(_, d)| *d)
            .filter(|d| *d >= from)
            .collect();
        let mut lat: Vec<f64> = chain_run.after_first.iter().map(|(f, d)| d - f).collect();
        lat.sort_by(f64::total_cmp);
        edge_entropy_bits(&starts, &departures, &lat)
    } else {
        0.0
    });
    let one = CloudReport::of(
        &run_cloud(&params.cfg, &Cloud::Cascade(1), rate, arrive, settle, seed)?,
        from,
    );
    let k = chain.latency.mean_s / one.latency.mean_s.max(1e-9);
    let mut same_mean = CloudReport::of(
        &run_cloud(
            &scaled(&params.cfg, k),
            &Cloud::Cascade(1),
            rate,
            arrive,
            settle,
            seed,
        )?,
        from,
    );
    same_mean.provider_entropy_bits = Some(0.0);
    if json {
        return Ok(serde_json::to_string(&serde_json::json!({
            "hops": n,
            "cascade": chain,
            "one_mote_of_the_cascade": one,
            "one_mote_same_total_mean": same_mean,
        }))?);
    }
    Ok(format!(
        "{n} motes in series, {}:\n  end to end:                 {}\n\
         one mote of the cascade:      {}\n\
         one mote, same total mean:    {}\n\
         (entropy: an observer of the cloud's edges who knows the delay distribution)\n\
         against the first mote's provider plus that observer: {:.2} bits through the \
         cascade, 0 bits through one mote (its provider sees every item leave)",
        params.cfg.strategy.name(),
        chain.line(),
        one.line(),
        same_mean.line(),
        chain.provider_entropy_bits.unwrap_or(0.0),
    ))
}

/// `--hop-at-drain`: one mote with a lifetime, without and with a
/// successor.
pub(super) fn drain(params: &Params, lifetime: Duration, json: bool) -> anyhow::Result<String> {
    let margin = p_margin(&params.cfg);
    let drain_s = lifetime.saturating_sub(margin).as_secs_f64();
    let settle = params.duration.max(lifetime);
    let mut sides = Vec::new();
    for hop in [false, true] {
        let run = run_cloud(
            &params.cfg,
            &Cloud::Drain { lifetime, hop },
            params.rate_per_s,
            lifetime,
            settle,
            params.seed,
        )?;
        let mut r = CloudReport::of(&run, 0.0);
        let window = drain_s - margin.as_secs_f64()..=drain_s;
        let last = run.trips.iter().filter(|(_, d)| window.contains(d)).count();
        r.share_last_margin = Some(last as f64 / run.trips.len().max(1) as f64);
        let mut per_min = std::collections::HashMap::<u64, u64>::new();
        for (_, d) in &run.trips {
            *per_min.entry((*d / 60.0) as u64).or_default() += 1;
        }
        r.max_per_minute = per_min.values().max().copied();
        sides.push(r);
    }
    let (off, on) = (&sides[0], &sides[1]);
    if json {
        return Ok(serde_json::to_string(&serde_json::json!({
            "lifetime_s": lifetime.as_secs_f64(),
            "drain_margin_s": margin.as_secs_f64(),
            "hop_window_s": p_window(&params.cfg).as_secs_f64(),
            "without_hopping": off,
            "with_hopping": on,
        }))?);
    }
    let pct = |r: &CloudReport| r.share_last_margin.unwrap_or(0.0) * 100.0;
    Ok(format!(
        "one mote living {}, {}, drain margin {}:\n\
         without hopping: {}\n  {:.1} % of the items leave in the last drain margin, \
         at most {} in one minute\n\
         with hopping:    {}\n  {:.1} % of the items leave in the last drain margin, \
         at most {} in one minute",
        humantime::format_duration(lifetime),
        params.cfg.strategy.name(),
        humantime::format_duration(margin),
        off.line(),
        pct(off),
        off.max_per_minute.unwrap_or(0),
        on.line(),
        pct(on),
        on.max_per_minute.unwrap_or(0),
    ))
}

impl CloudHop {
    fn record(&self, item: &Item, log: &std::sync::Mutex<Vec<(u64, f64)>>) {
        if let Ok(n) = <[u8; 8]>::try_from(item.payload.as_slice()) {
            let t = tor_rtcompat::SleepProvider::wallclock(&self.rt)
                .duration_since(SystemTime::UNIX_EPOCH + START)
                .unwrap_or_default()
                .as_secs_f64();
            if let Ok(mut e) = log.lock() {
                e.push((u64::from_le_bytes(n), t));
            }
        }
    }

    fn exit(&self, item: &Item) {
        self.record(item, &self.exits);
    }
}

impl Deliver for CloudHop {
    async fn deliver(&self, item: &Item) -> Result<Outcome, DeliveryError> {
        match &self.next {
            Some(next) => {
                if let Some(log) = &self.left_first {
                    self.record(item, log);
                }
                next.unbounded_send(item.payload.clone())
                    .map_err(|e| DeliveryError::temporary(e.to_string()))?
            }
            None => self.exit(item),
        }
        Ok(Outcome::Done)
    }

    fn has_successor(&self) -> bool {
        self.successor.is_some()
    }

    async fn hand_off(&self, item: &Item) -> Result<(), DeliveryError> {
        match &self.successor {
            Some(s) => s
                .unbounded_send(item.payload.clone())
                .map_err(|e| DeliveryError::temporary(e.to_string())),
            None => Err(DeliveryError::permanent("no successor")),
        }
    }
}

impl CloudReport {
    /// Summarize `run`, measuring departures after `from` s only (the
    /// cascade's warm-up).
    fn of(run: &CloudRun, from: f64) -> Self {
        let mut lat: Vec<f64> = run.trips.iter().map(|(a, d)| d - a).collect();
        lat.sort_by(f64::total_cmp);
        let departures: Vec<f64> = run
            .trips
            .iter()
            .map(|(_, d)| *d)
            .filter(|d| *d >= from)
            .collect();
        CloudReport {
            items: run.arrivals.len() as u64,
            outputs: run.trips.len() as u64,
            latency: Latency::of(&lat),
            entropy_bits: edge_entropy_bits(&run.arrivals, &departures, &lat),
            provider_entropy_bits: None,
            share_last_margin: None,
            max_per_minute: None,
        }
    }

    fn line(&self) -> String {
        format!(
            "latency {} mean {}; entropy {:.2} bits ({} of {} items left)",
            self.latency.text(),
            fmt_secs(self.latency.mean_s),
            self.entropy_bits,
            self.outputs,
            self.items,
        )
    }
}
