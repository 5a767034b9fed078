//! `dustmote simulate`: the real mixer (`dust_mixer::Mixer`, its storage
//! and its anonymity tracker) on simulated time (`tor_rtmock::MockRuntime`),
//! fed with synthetic arrivals, so that an operator sees the latency and
//! anonymity a setting buys before choosing it. A simulated day takes
//! seconds: nothing sleeps, and the throw-away store skips fsyncs.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dust_mixer::{
    Deliver, DeliveryError, Item, ItemKind, Mixer, MixerConfig, Outcome, Store, Strategy,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tor_rtcompat::ToplevelBlockOn;
use tor_rtmock::MockRuntime;

use crate::config::{self, StrategyName};

mod cloud;

use cloud::{cascade, drain};

/// A fixed simulated start (whole seconds, so ms release times are exact).
pub(super) const START: Duration = Duration::from_secs(1_800_000_000);

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Params {
    /// The mixer settings (strategy and delays; the lifetime is ignored).
    pub cfg: MixerConfig,
    /// Real items per second.
    pub rate_per_s: f64,
    /// Simulated time.
    pub duration: Duration,
    /// Simulated time before measuring (the pool fills up).
    pub warmup: Duration,
    /// Arrivals at fixed intervals instead of a Poisson process.
    pub constant_arrivals: bool,
    /// Seed of the arrivals and of the mixer's randomness.
    pub seed: u64,
}

/// The results, as printed with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The strategy simulated.
    pub strategy: String,
    /// Real items admitted (whole run).
    pub items: u64,
    /// Real items that left during the measured part.
    pub outputs: u64,
    /// Their latency.
    #[serde(flatten)]
    pub latency: Latency,
    /// Time-averaged number of items in the pool (ρ).
    pub mean_pool: f64,
    /// Mean sender-anonymity entropy of the outputs, bits.
    pub entropy_bits: f64,
    /// Fraction of the outputs that left unmixed.
    pub p_unmixed: f64,
    /// Dummy items generated (cover traffic), whole run.
    pub cover_items: u64,
    /// Dummy items per hour of simulated time.
    pub cover_per_hour: f64,
    /// Simulated seconds (measured part).
    pub measured_s: f64,
    /// Real seconds the simulation took.
    pub wall_s: f64,
}

/// Latency quantiles and mean of a run's outputs, seconds (in the JSON:
/// `latency_p50_s`, …).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Median.
    #[serde(rename = "latency_p50_s")]
    pub p50_s: f64,
    /// 90th percentile.
    #[serde(rename = "latency_p90_s")]
    pub p90_s: f64,
    /// 99th percentile.
    #[serde(rename = "latency_p99_s")]
    pub p99_s: f64,
    /// Largest.
    #[serde(rename = "latency_max_s")]
    pub max_s: f64,
    /// Mean.
    #[serde(rename = "latency_mean_s")]
    pub mean_s: f64,
}

impl Latency {
    /// Of latencies `sorted` in ascending order (all zero if none).
    fn of(sorted: &[f64]) -> Self {
        let q = |q: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[i]
        };
        Latency {
            p50_s: q(0.5),
            p90_s: q(0.9),
            p99_s: q(0.99),
            max_s: sorted.last().copied().unwrap_or(0.0),
            mean_s: sorted.iter().sum::<f64>() / sorted.len().max(1) as f64,
        }
    }

    /// "p50 … p90 … p99 … max …" in whole seconds.
    fn text(&self) -> String {
        format!(
            "p50 {} p90 {} p99 {} max {}",
            fmt_secs(self.p50_s),
            fmt_secs(self.p90_s),
            fmt_secs(self.p99_s),
            fmt_secs(self.max_s),
        )
    }
}

/// Delivers instantly (the simulation is about timing, not transport).
struct Instant0;

impl Deliver for Instant0 {
    async fn deliver(&self, _item: &Item) -> Result<Outcome, DeliveryError> {
        Ok(Outcome::Done)
    }
}

/// Run one simulation: the report and the measured outputs' latencies
/// (seconds, sorted).
pub fn run(p: &Params) -> anyhow::Result<(Report, Vec<f64>)> {
    if !(p.rate_per_s.is_finite() && p.rate_per_s > 0.0) {
        anyhow::bail!("the arrival rate must be > 0");
    }
    if p.warmup >= p.duration {
        anyhow::bail!("the warm-up must be shorter than the duration");
    }
    let started = Instant::now();
    let rt = MockRuntime::builder()
        .starting_wallclock(SystemTime::UNIX_EPOCH + START)
        .build();
    let mut cfg = p.cfg.clone();
    cfg.lifetime = None;
    // Deliveries are instant: do not let the in-flight bound turn a round
    // into a queue.
    cfg.max_in_flight = usize::MAX / 2;
    let strategy = cfg.strategy.name();
    let params = p.clone();
    let rt2 = rt.clone();
    let (stats, samples, real, items, cover_items) = rt.block_on(async move {
        let rt = rt2;
        let store = Store::temporary()?;
        let mixer = Mixer::start_with_rng(
            rt.clone(),
            store,
            Arc::new(Instant0),
            cfg,
            StdRng::seed_from_u64(params.seed),
        )?;
        // Cover items (when `cfg.cover` is set) are empty mail items: the
        // simulation is about timing.
        mixer.set_cover_source(Arc::new(|| {
            Box::pin(async { Some((ItemKind::Mail, Vec::new())) })
        }));
        let mut rng = StdRng::seed_from_u64(params.seed ^ 0x5eed_5eed);
        let t0 = tor_rtcompat::SleepProvider::now(&rt);
        let mut t = 0.0f64;
        let warmup = params.warmup.as_secs_f64();
        let end = params.duration.as_secs_f64();
        let mut measuring = false;
        let mut real = HashSet::new();
        let mut items = 0u64;
        loop {
            let gap = if params.constant_arrivals {
                1.0 / params.rate_per_s
            } else {
                // Exponential gaps: a Poisson process.
                -(1.0 - rng.random::<f64>()).ln() / params.rate_per_s
            };
            let next = t + gap;
            if !measuring && next >= warmup {
                rt.advance_until(t0 + Duration::from_secs_f64(warmup)).await;
                mixer.reset_anonymity_stats();
                mixer.keep_samples();
                measuring = true;
            }
            if next >= end {
                break;
            }
            rt.advance_until(t0 + Duration::from_secs_f64(next)).await;
            t = next;
            let (id, _) = mixer.admit(ItemKind::Mail, Vec::new()).await?;
            items += 1;
            if measuring {
                real.insert(id);
            }
        }
        rt.advance_until(t0 + params.duration).await;
        Ok::<_, anyhow::Error>((
            mixer.anonymity(),
            mixer.samples().unwrap_or_default(),
            real,
            items,
            mixer.metrics().cover,
        ))
    })?;
    // Measure the real items admitted after the warm-up (the ones that
    // left before the end of the run).
    let outs: Vec<_> = samples
        .outputs
        .iter()
        .filter(|o| real.contains(&o.id))
        .collect();
    let mut lat: Vec<f64> = outs.iter().map(|o| o.latency_s).collect();
    lat.sort_by(f64::total_cmp);
    let n = outs.len().max(1) as f64;
    let report = Report {
        strategy: strategy.into(),
        items,
        outputs: outs.len() as u64,
        latency: Latency::of(&lat),
        mean_pool: stats.mean_pool,
        entropy_bits: outs.iter().map(|o| o.entropy_bits).sum::<f64>() / n,
        p_unmixed: outs.iter().filter(|o| o.unmixed).count() as f64 / n,
        cover_items,
        cover_per_hour: cover_items as f64 / (p.duration.as_secs_f64() / 3600.0),
        measured_s: (p.duration - p.warmup).as_secs_f64(),
        wall_s: started.elapsed().as_secs_f64(),
    };
    Ok((report, lat))
}

/// The same settings with the strategy's time scale multiplied by `k`
/// (the mean delay for `poisson`, the round interval otherwise).
pub fn scaled(cfg: &MixerConfig, k: f64) -> MixerConfig {
    let mut c = cfg.clone();
    match &mut c.strategy {
        Strategy::Poisson => {
            let mean = c.delay.typical().mul_f64(k).max(Duration::from_millis(1));
            c.delay = dust_mixer::DelaySpec::Exponential {
                mean,
                min: None,
                max: None,
            };
        }
        Strategy::Pool { interval, .. } | Strategy::Binomial { interval, .. } => {
            *interval = interval.mul_f64(k).max(Duration::from_millis(1));
        }
    }
    c
}

/// Draw the latency histogram of `report`'s run and the entropy-vs-latency
/// curve (`curve`: one report per time scale) into an SVG file.
pub fn plot(path: &Path, lat: &[f64], curve: &[Report], current: &Report) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let e = |e: &dyn std::fmt::Display| anyhow::anyhow!("plotting: {e}");
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (left, right) = root.split_horizontally(500);

    // Histogram of latencies, in minutes.
    let mins: Vec<f64> = lat.iter().map(|s| s / 60.0).collect();
    let max = mins.iter().copied().fold(0.0f64, f64::max).max(1e-3);
    const BINS: usize = 40;
    let width = max / BINS as f64;
    let mut counts = [0u32; BINS];
    for m in &mins {
        counts[((m / width) as usize).min(BINS - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!("latency ({} strategy)", current.strategy),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..max, 0u32..top + top / 10 + 1)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("minutes in the mote")
        .y_desc("items")
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, c)| {
            let x0 = i as f64 * width;
            Rectangle::new([(x0, 0), (x0 + width, *c)], BLUE.mix(0.6).filled())
        }))
        .map_err(|x| e(&x))?;

    // Entropy against mean latency.
    let xs: Vec<f64> = curve.iter().map(|r| r.latency.mean_s / 60.0).collect();
    let ys: Vec<f64> = curve.iter().map(|r| r.entropy_bits).collect();
    let xmax = xs.iter().copied().fold(0.0f64, f64::max).max(1e-3) * 1.05;
    let ymax = ys.iter().copied().fold(0.0f64, f64::max).max(1.0) * 1.1;
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "entropy vs mean latency (same arrival rate)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("mean latency, minutes")
        .y_desc("entropy, bits")
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(LineSeries::new(
            xs.iter().copied().zip(ys.iter().copied()),
            &RED,
        ))
        .map_err(|x| e(&x))?;
    chart
        .draw_series(
            xs.iter()
                .zip(&ys)
                .map(|(x, y)| Circle::new((*x, *y), 3, RED.filled())),
        )
        .map_err(|x| e(&x))?;
    chart
        .draw_series(std::iter::once(Circle::new(
            (current.latency.mean_s / 60.0, current.entropy_bits),
            6,
            BLACK.stroke_width(2),
        )))
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// `dustmote simulate`'s flags.
#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Configuration file whose `[mixer]` settings are simulated (default:
    /// the embedded defaults).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Arrival rate of real items: 1/min, 30/h, 0.5/s, 2/d.
    #[arg(long, default_value = "1/min")]
    rate: String,
    /// Simulated time.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    duration: std::time::Duration,
    /// Simulated time before measuring starts (default: a tenth of the
    /// duration).
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<std::time::Duration>,
    /// Strategy instead of the config's.
    #[arg(long, value_enum, ignore_case = true)]
    strategy: Option<StrategyName>,
    /// Poisson strategy: exponential delays with this mean instead of the
    /// config's distribution.
    #[arg(long, value_parser = humantime::parse_duration)]
    mean: Option<std::time::Duration>,
    /// Pool/binomial: time between rounds.
    #[arg(long, value_parser = humantime::parse_duration)]
    interval: Option<std::time::Duration>,
    /// Pool: items always kept back.
    #[arg(long)]
    min_pool: Option<u64>,
    /// Pool: largest fraction sent per round; binomial: probability of leaving.
    #[arg(long)]
    pool_rate: Option<f64>,
    /// Arrivals at fixed intervals instead of a Poisson process.
    #[arg(long)]
    constant_arrivals: bool,
    /// Seed (the same seed gives the same run).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Cover traffic: the most dummy items per time unit (e.g. 20/h),
    /// instead of the config's `[cover] rate`.
    #[arg(long)]
    cover_rate: Option<String>,
    /// Cover traffic: add dummies while fewer items than this are in the mix.
    #[arg(long)]
    cover_target: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Draw the latency histogram and the entropy-vs-latency curve (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// A cascade of this many motes in series, each with these settings:
    /// end-to-end latency and entropy, beside one mote with the same total
    /// mean delay.
    #[arg(long, conflicts_with_all = ["plot", "hop_at_drain"])]
    hops: Option<usize>,
    /// One mote living `--lifetime`, with and without a successor taking
    /// its queue at the hop point: latency and the share of items leaving
    /// in the last drain margin before the drain point.
    #[arg(long, conflicts_with = "plot")]
    hop_at_drain: bool,
    /// The mote's lifetime for `--hop-at-drain` (default: the config's
    /// `[mote] lifetime`, else 6h).
    #[arg(long, value_parser = humantime::parse_duration)]
    lifetime: Option<std::time::Duration>,
}

/// `dustmote simulate`: the flags override the file's (or the embedded)
/// `[mixer]` settings.
pub fn command(a: SimulateArgs) -> anyhow::Result<()> {
    let checked = config::load(a.config.as_deref())?;
    let m = &checked.config.mixer;
    let strategy = match a.strategy.unwrap_or(m.strategy) {
        StrategyName::Poisson => Strategy::Poisson,
        StrategyName::Pool => Strategy::Pool {
            interval: a.interval.unwrap_or(m.pool.interval),
            min_pool: a.min_pool.unwrap_or(m.pool.min_pool),
            rate: a.pool_rate.unwrap_or(m.pool.rate),
        },
        StrategyName::Binomial => Strategy::Binomial {
            interval: a.interval.unwrap_or(m.binomial.interval),
            rate: a.pool_rate.unwrap_or(m.binomial.rate),
        },
    };
    let mut cfg = checked.mixer;
    cfg.strategy = strategy;
    if let Some(mean) = a.mean {
        cfg.delay = dust_mixer::DelaySpec::Exponential {
            mean,
            min: None,
            max: None,
        };
    }
    if a.cover_rate.is_some() || a.cover_target.is_some() {
        let base = cfg.cover.unwrap_or(dust_mixer::CoverConfig {
            rate_per_s: 20.0 / 3600.0,
            target_pool: 4,
        });
        cfg.cover = Some(dust_mixer::CoverConfig {
            rate_per_s: match &a.cover_rate {
                Some(r) => config::parse_rate(r)?,
                None => base.rate_per_s,
            },
            target_pool: a.cover_target.unwrap_or(base.target_pool),
        });
    }
    cfg.validate()?;
    let params = Params {
        cfg,
        rate_per_s: config::parse_rate(&a.rate)?,
        duration: a.duration,
        warmup: a.warmup.unwrap_or(a.duration / 10),
        constant_arrivals: a.constant_arrivals,
        seed: a.seed,
    };
    if let Some(n) = a.hops {
        let text = cascade(&params, n.max(1), a.json)?;
        writeln!(std::io::stdout().lock(), "{text}")?;
        return Ok(());
    }
    if a.hop_at_drain {
        let lifetime = a
            .lifetime
            .or(checked.config.mote.lifetime)
            .unwrap_or(Duration::from_secs(6 * 3600));
        let mut p = params.clone();
        p.cfg.lifetime = Some(dust_mixer::Lifetime {
            expires_at: SystemTime::UNIX_EPOCH,
            drain_margin: checked.config.mote.drain_margin,
        });
        p.cfg.hop_window = Some(checked.config.mote.hop_window);
        let text = drain(&p, lifetime, a.json)?;
        writeln!(std::io::stdout().lock(), "{text}")?;
        return Ok(());
    }
    let (report, latencies) = run(&params)?;
    if let Some(path) = &a.plot {
        // The curve: the same arrivals at time scales from 1/8 to 8 times
        // the chosen one.
        let mut curve = Vec::new();
        for k in [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0] {
            let p = Params {
                cfg: scaled(&params.cfg, k),
                ..params.clone()
            };
            curve.push(run(&p)?.0);
        }
        plot(path, &latencies, &curve, &report)?;
    }
    let mut out = std::io::stdout().lock();
    let text = if a.json {
        serde_json::to_string(&report)?
    } else {
        format!(
            "strategy {}: {} items at {} over {} (measured {}; simulated in {:.1} s)\n\
             latency {}\n\
             mean pool {:.2}, entropy {:.2} bits, unmixed {:.3} %, cover {:.1}/h",
            report.strategy,
            report.items,
            a.rate,
            humantime::format_duration(a.duration),
            humantime::format_duration(Duration::from_secs(report.measured_s as u64)),
            report.wall_s,
            report.latency.text(),
            report.mean_pool,
            report.entropy_bits,
            report.p_unmixed * 100.0,
            report.cover_per_hour,
        )
    };
    writeln!(out, "{text}")?;
    Ok(())
}

/// Seconds, rounded to whole seconds, as "1h 2m 3s".
pub(super) fn fmt_secs(s: f64) -> String {
    humantime::format_duration(Duration::from_secs(s.round() as u64)).to_string()
}
