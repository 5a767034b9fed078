//! The mote's status, typed once: what `dustmote status` and the control
//! socket show, what `/status` serializes for an operator, and what
//! `/metrics` renders (OpenMetrics text, with `prometheus-client`) from the
//! same fields.
//!
//! Adding a status field: add it to [`Status`] (or to the part it belongs
//! to: [`MixStatus`] in the mixer, [`QueueStats`] in storage,
//! [`TransportStatus`] with the connectors, [`FetchCounts`] with the jobs),
//! fill it where the binary assembles the status (`src/serve.rs`), and, if
//! it is a number an operator would graph, add one `put(...)` line to
//! `Snapshot::encode` below.

use std::fmt;
use std::sync::Arc;

use dust_mixer::{MixStatus, QueueStats, StorageError};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::item::job::FetchCounts;
use crate::tor::TransportStatus;

/// The whole status of a running mote.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The running executable: its version and SHA-256, for comparing
    /// with a published build.
    #[serde(default)]
    pub executable: Executable,
    /// When the mote ends (RFC 3339), if it has an end.
    pub expires_at: Option<String>,
    /// The mix queue.
    pub queue: QueueStats,
    /// The outbound transport (Tor).
    pub transport: TransportStatus,
    /// The mix: strategy, pool, anonymity, latency, cover.
    pub mix: MixStatus,
    /// Download jobs by state.
    pub fetches: FetchCounts,
    /// Hop at drain (`[mote] hop = "at_drain"`), if on.
    #[serde(default)]
    pub hop: Option<HopStatus>,
    /// Accounts and the onion services cards point to.
    #[serde(default)]
    pub sharing: Option<SharingStatus>,
}

/// Sharing the mote (accounts, cards, onion services), as the status shows
/// it: counts and the mote's own addresses, never a name or a secret.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SharingStatus {
    /// Accounts made with `dustmote invite` that have not ended.
    pub accounts: usize,
    /// Of them, those with a card key (client authorization).
    pub cards: usize,
    /// The SMTP onion service the mote publishes (`host.onion:port`).
    pub smtp_onion: Option<String>,
    /// The HTTP onion service the mote publishes.
    pub http_onion: Option<String>,
    /// Whether the services are restricted to the cards' keys.
    pub client_auth: bool,
}

/// The hand-off to a successor, as the status shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HopStatus {
    /// The successor's `[[peers]]` name, if one is named.
    pub successor: Option<String>,
    /// When the hand-off begins (RFC 3339).
    pub hop_at: String,
    /// Where the hop stands.
    pub state: HopState,
    /// Items handed to the successor so far.
    pub handed_off: u64,
    /// Items the hand-off gave up on (released here instead).
    pub fallbacks: u64,
}

/// Where a mote's hop stands, as [`HopStatus`] shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HopState {
    /// Before the hop point.
    #[default]
    Waiting,
    /// Past the hop point, handing the queue and downloads to the
    /// successor.
    HandingOff,
    /// Past the hop point with no successor named: everything is released
    /// here.
    NoSuccessor,
    /// Past the drain point.
    Over,
}

impl HopState {
    /// The state's name, as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            HopState::Waiting => "waiting",
            HopState::HandingOff => "handing_off",
            HopState::NoSuccessor => "no_successor",
            HopState::Over => "over",
        }
    }
}

impl std::fmt::Display for HopState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What runs: read once at startup from `/proc/self/exe`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Executable {
    /// The package version.
    pub version: String,
    /// SHA-256 of the executable file, lowercase hex (empty if it could not
    /// be read).
    pub sha256: String,
}

/// Builds the current [`Status`] (the binary's wiring provides it).
pub type StatusFn = Arc<dyn Fn() -> Result<Status, StorageError> + Send + Sync>;

/// The media type of [`Status::metrics_text`].
pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Status {
    /// The status as OpenMetrics text (each metric with HELP and TYPE,
    /// ending in `# EOF`).
    pub fn metrics_text(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Snapshot(self.clone())));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// A status rendered as metrics at one scrape.
#[derive(Debug)]
struct Snapshot(Status);

/// A sample's value: counts stay integers.
#[derive(Clone, Copy)]
enum Value {
    Count(u64),
    Real(f64),
}

/// One metric without labels whose value is already known.
struct Known {
    kind: MetricType,
    value: Value,
}

impl EncodeMetric for Known {
    fn encode(&self, mut e: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        match (self.kind, self.value) {
            (MetricType::Counter, Value::Count(n)) => {
                e.encode_counter::<NoLabelSet, _, u64>(&n, None)
            }
            (MetricType::Counter, Value::Real(x)) => {
                e.encode_counter::<NoLabelSet, _, u64>(&x, None)
            }
            (_, Value::Count(n)) => e.encode_gauge(&n),
            (_, Value::Real(x)) => e.encode_gauge(&x),
        }
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

/// One metric without labels.
fn put(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: Value,
) -> fmt::Result {
    let m = Known { kind, value };
    m.encode(e.encode_descriptor(name, help, None, m.metric_type())?)
}

/// A gauge with one label, one sample per `(label value, value)`.
fn put_by(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: &[(&str, u64)],
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (v, n) in samples {
        m.encode_family(&[(label, *v)])?.encode_gauge(n)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        use Value::{Count, Real};
        let s = &self.0;
        let f = &s.fetches;
        put_by(
            &mut e,
            "dustmote_fetch_jobs",
            "Fetch jobs by state.",
            "state",
            &[
                ("queued", f.queued),
                ("fetching", f.fetching),
                ("ready", f.ready),
                ("failed", f.failed),
                ("moved", f.moved),
            ],
        )?;
        put_by(
            &mut e,
            "dustmote_queue_items",
            "Items in the mix queue.",
            "state",
            &[("queued", s.queue.queued), ("in_flight", s.queue.in_flight)],
        )?;
        let ready = Value::Count(u64::from(s.transport.ready == Some(true)));
        put(
            &mut e,
            "dustmote_transport_ready",
            "Whether the last outbound connection worked.",
            Gauge,
            ready,
        )?;
        let m = &s.mix;
        for (name, help, kind, v) in [
            (
                "dustmote_mix_pool_items",
                "Items in the mix now (rho).",
                Gauge,
                Count(m.pool),
            ),
            (
                "dustmote_mix_held_items",
                "Items held for the next pool/binomial round.",
                Gauge,
                Count(m.held),
            ),
            (
                "dustmote_mix_pool_mean",
                "Time-averaged pool size since start.",
                Gauge,
                Real(m.mean_pool),
            ),
            (
                "dustmote_mix_entropy_bits",
                "Sender-anonymity entropy of recent outputs (moving average), bits.",
                Gauge,
                Real(m.entropy_bits_recent),
            ),
            (
                "dustmote_mix_entropy_bits_mean",
                "Mean entropy of all outputs since start, bits.",
                Gauge,
                Real(m.entropy_bits_mean),
            ),
            (
                "dustmote_mix_outputs",
                "Items that left the mix.",
                Counter,
                Count(m.outputs),
            ),
            (
                "dustmote_mix_unmixed",
                "Items that left without ever sharing the pool with another.",
                Counter,
                Count(m.unmixed),
            ),
            (
                "dustmote_mix_unmixed_ratio",
                "Fraction of outputs that left unmixed.",
                Gauge,
                Real(m.p_unmixed),
            ),
            (
                "dustmote_mix_cover_items",
                "Cover (dummy) items added since start.",
                Counter,
                Count(m.cover_items),
            ),
        ] {
            put(&mut e, name, help, kind, v)?;
        }
        if let Some(h) = &s.hop {
            put(
                &mut e,
                "dustmote_hop_handed_off",
                "Items handed to the successor mote.",
                Counter,
                Count(h.handed_off),
            )?;
            put(
                &mut e,
                "dustmote_hop_fallbacks",
                "Items the hand-off gave up on and released here.",
                Counter,
                Count(h.fallbacks),
            )?;
        }
        let buckets: Vec<(f64, u64)> = m.latency_counts().collect();
        let count = m.latency_buckets_s.last().map_or(0, |(_, c)| *c);
        e.encode_descriptor(
            "dustmote_mix_latency_seconds",
            "Time items spent in the mix.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(m.latency_sum_s, count, &buckets, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_and_type_and_counters_end_in_total() {
        let mut s = Status::default();
        s.queue.queued = 2;
        s.fetches.ready = 1;
        s.mix = MixStatus::new(
            &dust_mixer::MixerConfig::default(),
            0,
            5,
            &dust_mixer::AnonymityStats {
                pool: 1,
                mean_pool: 1.5,
                outputs: 3,
                mean_entropy_bits: 1.0,
                recent_entropy_bits: 1.2,
                unmixed: 1,
                latency_buckets: [0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                latency_sum_s: 6.0,
            },
        );
        let text = s.metrics_text();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).expect("name");
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        }
        for sample in [
            "dustmote_queue_items{state=\"queued\"} 2",
            "dustmote_fetch_jobs{state=\"ready\"} 1",
            "dustmote_mix_outputs_total 3",
            "dustmote_mix_cover_items_total 5",
            "dustmote_mix_latency_seconds_bucket{le=\"1.0\"} 0",
            "dustmote_mix_latency_seconds_bucket{le=\"5.0\"} 3",
            "dustmote_mix_latency_seconds_bucket{le=\"+Inf\"} 3",
            "dustmote_mix_latency_seconds_count 3",
        ] {
            assert!(
                text.lines().any(|l| l == sample),
                "{sample} missing:\n{text}"
            );
        }
    }
}
