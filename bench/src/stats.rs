//! Everything counted while a workload runs: latency histograms (`HdrHistogram`, nanoseconds,
//! 3 significant digits), message and byte counters, and the client's own cost per thread.
//!
//! Each thread owns its [`ThreadStats`] and hands it back when it ends; the workload merges
//! them. The only shared state is [`LiveCounters`] (relaxed atomics) for the progress line.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The longest latency a histogram holds: one hour; longer samples are clamped to it.
const LATENCY_NS_MAX: u64 = 3_600 * 1_000_000_000;

/// Percentiles reported for every latency as (figure suffix, quantile). The names match
/// `ringfeed-perf` (`p999` = 99.9th) so `ringfeed-perf report` can pair them with ceilings.
pub const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p999", 0.999),
    ("p9999", 0.9999),
];

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("constant bounds are valid")
}

pub fn record_ns(histogram: &mut Histogram<u64>, latency_ns: u64) {
    // Zero (a coarse clock) is recorded as 1 ns; the bounds start there.
    histogram
        .record(latency_ns.clamp(1, LATENCY_NS_MAX))
        .expect("value is clamped into range");
}

/// A latency histogram boiled down to microseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    /// One per [`PERCENTILES`], same order.
    pub percentiles_us: [f64; PERCENTILES.len()],
    pub max_us: f64,
}

impl LatencySummary {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let to_us = |ns: u64| ns as f64 / 1_000.0;
        let mut percentiles_us = [0.0; PERCENTILES.len()];
        for (slot, (_, quantile)) in percentiles_us.iter_mut().zip(PERCENTILES) {
            *slot = to_us(histogram.value_at_quantile(quantile));
        }
        Self {
            count: histogram.len(),
            mean_us: histogram.mean() / 1_000.0,
            percentiles_us,
            max_us: to_us(histogram.max()),
        }
    }

    /// Adds `{prefix}_count`, `{prefix}_us_mean`, `_us_p50` … `_us_p9999`, `_us_max`.
    pub fn insert_into(&self, prefix: &str, out: &mut serde_json::Map<String, serde_json::Value>) {
        out.insert(format!("{prefix}_count"), self.count.into());
        out.insert(format!("{prefix}_us_mean"), round3(self.mean_us).into());
        for ((name, _), value_us) in PERCENTILES.iter().zip(self.percentiles_us) {
            out.insert(format!("{prefix}_us_{name}"), round3(value_us).into());
        }
        out.insert(format!("{prefix}_us_max"), round3(self.max_us).into());
    }
}

pub fn round3(value: f64) -> f64 {
    (value * 1_000.0).round() / 1_000.0
}

/// What one bench thread did and what it cost. Times are nanoseconds since the run's epoch.
#[derive(Debug)]
pub struct ThreadStats {
    pub role: &'static str,
    /// Measured messages and value bytes (acknowledged for producers, received for consumers).
    pub messages: u64,
    pub bytes: u64,
    /// Messages outside the measured window (warm-up, fill).
    pub unmeasured_messages: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// When the last measured message was acknowledged or received.
    pub last_measured_ns: u64,
    /// Send → acknowledgement, from the intended send time.
    pub publish: Histogram<u64>,
    /// Intended send time carried in the record → fetch response read.
    pub end_to_end: Histogram<u64>,
    /// How late the client sent compared with the schedule (its own lag, fixed-rate mode).
    pub send_delay: Histogram<u64>,
    /// Time spent building record batches and requests, or decoding fetched batches.
    pub codec_ns: u64,
    pub cpu: Duration,
    pub wall: Duration,
    /// When the thread finished, since the run's epoch.
    pub stopped_ns: u64,
}

impl ThreadStats {
    pub fn new(role: &'static str) -> Self {
        Self {
            role,
            messages: 0,
            bytes: 0,
            unmeasured_messages: 0,
            errors: 0,
            first_error: None,
            last_measured_ns: 0,
            publish: new_histogram(),
            end_to_end: new_histogram(),
            send_delay: new_histogram(),
            codec_ns: 0,
            cpu: Duration::ZERO,
            wall: Duration::ZERO,
            stopped_ns: 0,
        }
    }

    pub fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }
}

/// Merged figures of one role (producers or consumers).
#[derive(Debug)]
pub struct RoleStats {
    pub messages: u64,
    pub bytes: u64,
    pub unmeasured_messages: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub last_measured_ns: u64,
    /// When the role's last thread finished.
    pub stopped_ns: u64,
    pub publish: Histogram<u64>,
    pub end_to_end: Histogram<u64>,
    pub send_delay: Histogram<u64>,
    pub codec_ns: u64,
    pub threads: Vec<ThreadCost>,
}

/// One thread's CPU cost, for the client-overhead section.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadCost {
    pub role: &'static str,
    pub cpu_s: f64,
    pub wall_s: f64,
    /// cpu / wall: 1.0 means the thread never waited, so the client may be the bottleneck.
    pub busy_fraction: f64,
}

impl RoleStats {
    pub fn merge(stats: Vec<ThreadStats>) -> Self {
        let mut merged = Self {
            messages: 0,
            bytes: 0,
            unmeasured_messages: 0,
            errors: 0,
            first_error: None,
            last_measured_ns: 0,
            stopped_ns: 0,
            publish: new_histogram(),
            end_to_end: new_histogram(),
            send_delay: new_histogram(),
            codec_ns: 0,
            threads: Vec::new(),
        };
        for thread in stats {
            merged.messages += thread.messages;
            merged.bytes += thread.bytes;
            merged.unmeasured_messages += thread.unmeasured_messages;
            merged.errors += thread.errors;
            merged.first_error = merged.first_error.or(thread.first_error);
            merged.last_measured_ns = merged.last_measured_ns.max(thread.last_measured_ns);
            merged.stopped_ns = merged.stopped_ns.max(thread.stopped_ns);
            merged.publish.add(&thread.publish).expect("same bounds");
            merged
                .end_to_end
                .add(&thread.end_to_end)
                .expect("same bounds");
            merged
                .send_delay
                .add(&thread.send_delay)
                .expect("same bounds");
            merged.codec_ns += thread.codec_ns;
            let wall_s = thread.wall.as_secs_f64();
            merged.threads.push(ThreadCost {
                role: thread.role,
                cpu_s: round3(thread.cpu.as_secs_f64()),
                wall_s: round3(wall_s),
                busy_fraction: if wall_s > 0.0 {
                    round3(thread.cpu.as_secs_f64() / wall_s)
                } else {
                    0.0
                },
            });
        }
        merged
    }
}

/// Counters every thread bumps so the progress line can show live rates, and the flag that
/// tells every thread to stop early (run timeout, or a producer that failed).
#[derive(Debug, Default)]
pub struct LiveCounters {
    pub produced_messages: AtomicU64,
    pub produced_bytes: AtomicU64,
    pub consumed_messages: AtomicU64,
    pub consumed_bytes: AtomicU64,
    /// Producers still running; consumers of an e2e run drain after it reaches zero.
    pub producers_running: AtomicU64,
    pub abort: AtomicBool,
}

impl LiveCounters {
    pub fn add_produced(&self, messages: u64, bytes: u64) {
        self.produced_messages
            .fetch_add(messages, Ordering::Relaxed);
        self.produced_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_consumed(&self, messages: u64, bytes: u64) {
        self.consumed_messages
            .fetch_add(messages, Ordering::Relaxed);
        self.consumed_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_percentiles_of_uniform_samples() {
        let mut histogram = new_histogram();
        for us in 1..=1_000 {
            record_ns(&mut histogram, us * 1_000);
        }
        let summary = LatencySummary::of(&histogram);
        assert_eq!(summary.count, 1_000);
        assert!((summary.percentiles_us[0] - 500.0).abs() <= 0.5);
        assert!((summary.percentiles_us[2] - 990.0).abs() <= 1.0);
        assert!((summary.max_us - 1_000.0).abs() <= 1.0);
    }

    #[test]
    fn figure_names_carry_units_last() {
        let mut histogram = new_histogram();
        record_ns(&mut histogram, 0);
        let mut out = serde_json::Map::new();
        LatencySummary::of(&histogram).insert_into("publish_latency", &mut out);
        let names: Vec<&str> = out.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "publish_latency_count",
                "publish_latency_us_max",
                "publish_latency_us_mean",
                "publish_latency_us_p50",
                "publish_latency_us_p90",
                "publish_latency_us_p99",
                "publish_latency_us_p999",
                "publish_latency_us_p9999",
            ]
        );
    }

    #[test]
    fn merge_adds_counts_and_keeps_first_error() {
        let mut a = ThreadStats::new("producer");
        a.messages = 3;
        a.error("first".into());
        let mut b = ThreadStats::new("producer");
        b.messages = 4;
        b.error("second".into());
        record_ns(&mut b.publish, 5_000);
        let merged = RoleStats::merge(vec![a, b]);
        assert_eq!(merged.messages, 7);
        assert_eq!(merged.errors, 2);
        assert_eq!(merged.first_error.as_deref(), Some("first"));
        assert_eq!(merged.publish.len(), 1);
        assert_eq!(merged.threads.len(), 2);
    }
}
