//! Latency summaries and throughput arithmetic shared by every probe.
//!
//! Every latency is recorded in nanoseconds into an HDR histogram (3 significant digits) and
//! reported in microseconds, so sub-microsecond loopback figures keep their precision while a
//! multi-second disk stall still fits.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Named figures of one probe run, `name → value`, units last in the name
/// (`write_mb_per_s`, `rtt_us_p99`). A flat map so any tool can read it without our types.
pub type Figures = BTreeMap<String, f64>;

/// The longest latency the histograms hold: one hour. Longer samples are clamped to it, which
/// only matters for a machine that is broken anyway.
const LATENCY_NS_MAX: u64 = 3_600 * 1_000_000_000;

/// Percentiles reported for every latency, as (figure suffix, quantile).
/// `p999` is the 99.9th percentile, `p9999` the 99.99th (no dots, so they are plain JSON keys);
/// the same names the bench uses, so `report` can pair them. A p99.99 needs 10^4+ samples to
/// mean anything; the count is reported next to it.
pub const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p999", 0.999),
    ("p9999", 0.9999),
];

/// Collects latency samples for one measured operation.
pub struct LatencyRecorder {
    histogram_ns: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    pub fn new() -> Self {
        // 3 significant digits: 0.1% value error, ~200 KiB per histogram over this range.
        let histogram_ns = Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3)
            .expect("constant histogram bounds are valid");
        Self { histogram_ns }
    }

    pub fn record(&mut self, elapsed: Duration) {
        let elapsed_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // The bounds start at 1 ns; a zero reading (coarse clock) is recorded as 1 ns.
        let clamped_ns = elapsed_ns.clamp(1, LATENCY_NS_MAX);
        self.histogram_ns
            .record(clamped_ns)
            .expect("value is clamped into the histogram's range");
    }

    pub fn summary(&self) -> LatencySummary {
        let h = &self.histogram_ns;
        let to_us = |ns: u64| ns as f64 / 1_000.0;
        if h.is_empty() {
            return LatencySummary::default();
        }
        let mut percentiles_us = [0.0; PERCENTILES.len()];
        for (slot, (_, quantile)) in percentiles_us.iter_mut().zip(PERCENTILES) {
            *slot = to_us(h.value_at_quantile(quantile));
        }
        LatencySummary {
            count: h.len(),
            min_us: to_us(h.min()),
            mean_us: h.mean() / 1_000.0,
            percentiles_us,
            max_us: to_us(h.max()),
        }
    }
}

/// What a latency histogram boils down to, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    /// One entry per [`PERCENTILES`], same order.
    pub percentiles_us: [f64; PERCENTILES.len()],
    pub max_us: f64,
}

impl LatencySummary {
    /// Adds `{prefix}_count`, `{prefix}_us_min`, `_us_mean`, `_us_p50` … `_us_p9999`, `_us_max`.
    pub fn insert_into(&self, prefix: &str, figures: &mut Figures) {
        figures.insert(format!("{prefix}_count"), self.count as f64);
        figures.insert(format!("{prefix}_us_min"), self.min_us);
        figures.insert(format!("{prefix}_us_mean"), self.mean_us);
        for ((name, _), value_us) in PERCENTILES.iter().zip(self.percentiles_us) {
            figures.insert(format!("{prefix}_us_{name}"), value_us);
        }
        figures.insert(format!("{prefix}_us_max"), self.max_us);
    }
}

/// Throughput in decimal megabytes (10^6 bytes) per second, the unit every Ringfeed figure uses.
/// Zero when nothing was timed, rather than infinity.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return 0.0;
    }
    bytes as f64 / 1e6 / seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_uniform_samples() {
        let mut recorder = LatencyRecorder::new();
        for us in 1..=1_000 {
            recorder.record(Duration::from_micros(us));
        }
        let summary = recorder.summary();
        assert_eq!(summary.count, 1_000);
        let [p50, p90, p99, p999, p9999] = summary.percentiles_us;
        // 3 significant digits: each figure is within 0.1% of the exact rank.
        assert!((p50 - 500.0).abs() <= 0.5, "p50 {p50}");
        assert!((p90 - 900.0).abs() <= 0.9, "p90 {p90}");
        assert!((p99 - 990.0).abs() <= 1.0, "p99 {p99}");
        assert!((p999 - 999.0).abs() <= 1.0, "p999 {p999}");
        assert!((p9999 - 1_000.0).abs() <= 1.0, "p9999 {p9999}");
        assert!((summary.min_us - 1.0).abs() < 0.01);
        assert!((summary.max_us - 1_000.0).abs() <= 1.0);
        assert!((summary.mean_us - 500.5).abs() <= 0.5);
    }

    #[test]
    fn one_outlier_shows_in_max_not_p99() {
        let mut recorder = LatencyRecorder::new();
        for _ in 0..999 {
            recorder.record(Duration::from_micros(10));
        }
        recorder.record(Duration::from_secs(2));
        let summary = recorder.summary();
        assert!((summary.percentiles_us[2] - 10.0).abs() < 0.1);
        assert!((summary.max_us - 2_000_000.0).abs() / 2_000_000.0 < 0.001);
    }

    #[test]
    fn extremes_are_clamped_not_lost() {
        let mut recorder = LatencyRecorder::new();
        recorder.record(Duration::ZERO);
        recorder.record(Duration::from_secs(10 * 3_600));
        let summary = recorder.summary();
        assert_eq!(summary.count, 2);
        assert!(summary.min_us > 0.0);
        assert!(summary.max_us <= 3_600.0 * 1e6 * 1.001);
    }

    #[test]
    fn empty_recorder_is_all_zero() {
        assert_eq!(LatencyRecorder::new().summary(), LatencySummary::default());
    }

    #[test]
    fn figure_names_carry_units_last() {
        let mut recorder = LatencyRecorder::new();
        recorder.record(Duration::from_micros(7));
        let mut figures = Figures::new();
        recorder.summary().insert_into("rtt", &mut figures);
        let names: Vec<&str> = figures.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "rtt_count",
                "rtt_us_max",
                "rtt_us_mean",
                "rtt_us_min",
                "rtt_us_p50",
                "rtt_us_p90",
                "rtt_us_p99",
                "rtt_us_p999",
                "rtt_us_p9999"
            ]
        );
    }

    #[test]
    fn throughput_in_decimal_megabytes() {
        assert!((mb_per_s(500_000_000, Duration::from_secs(2)) - 250.0).abs() < 1e-9);
        assert!((mb_per_s(1 << 20, Duration::from_secs(1)) - 1.048_576).abs() < 1e-9);
        assert!(mb_per_s(1, Duration::ZERO).abs() < f64::EPSILON);
    }
}
