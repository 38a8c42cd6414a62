//! What one shard counts ([`ShardMetrics`]) and the latency histograms it keeps. See the
//! module docs of `metrics` for who writes and who reads it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use kafka_protocol::messages::ApiKey;

use crate::registry::SUPPORTED_APIS;
use crate::storage::FdatasyncObserver;

/// Upper bounds (seconds) of the exported latency histogram buckets: 50 µs to 10 s, about
/// three per decade, so one set serves produce (sub-millisecond with acks=1), fetch (up to
/// the long-poll wait) and fdatasync (milliseconds). Above the last bound is `+Inf`.
pub const LATENCY_BUCKET_BOUNDS_SECONDS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Largest latency the histograms resolve (1 hour, in microseconds); longer ones are
/// recorded as this (a Fetch long poll is capped at `fetch_wait_max`, far below it).
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Two significant digits: a 1 % bucket error, far finer than the exported buckets, at
/// about 25 KiB per histogram (three per shard).
const LATENCY_SIGNIFICANT_DIGITS: u8 = 2;

/// A latency histogram in microseconds with the exact sum kept beside it (hdrhistogram keeps
/// counts per value range only; Prometheus wants the sum).
#[derive(Clone)]
pub struct LatencyHistogram {
    histogram: Histogram<u64>,
    sum_us: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid"),
            sum_us: 0,
        }
    }
}

impl LatencyHistogram {
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(micros.max(1));
        self.sum_us = self.sum_us.saturating_add(micros);
    }

    /// The histogram cut at `LATENCY_BUCKET_BOUNDS_SECONDS`.
    pub fn buckets(&self) -> HistogramBuckets {
        let mut counts = Vec::with_capacity(LATENCY_BUCKET_BOUNDS_SECONDS.len());
        let mut below = 0;
        for bound_seconds in LATENCY_BUCKET_BOUNDS_SECONDS {
            let bound_us = (bound_seconds * 1e6) as u64;
            let cumulative = self.histogram.count_between(0, bound_us);
            counts.push(cumulative - below);
            below = cumulative;
        }
        HistogramBuckets {
            counts,
            count: self.histogram.len(),
            sum_seconds: self.sum_us as f64 / 1e6,
        }
    }
}

/// A histogram as exported: the count in each bucket of `LATENCY_BUCKET_BOUNDS_SECONDS`
/// (not cumulative; the last, `+Inf`, is `count` minus their sum), the total count and sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramBuckets {
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl HistogramBuckets {
    /// Adds another shard's histogram (same bounds) to this one.
    pub fn add(&mut self, other: &HistogramBuckets) {
        if self.counts.is_empty() {
            self.counts = vec![0; other.counts.len()];
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_seconds += other.sum_seconds;
    }
}

/// Counters of one served API on one shard.
#[derive(Default)]
pub(super) struct ApiCounters {
    /// (error code, requests answered with it); a handful of entries at most.
    pub(super) answered: RefCell<Vec<(i16, u64)>>,
    pub(super) request_bytes: Cell<u64>,
    pub(super) response_bytes: Cell<u64>,
}

/// The APIs whose latency is kept as a histogram (`ringfeed_request_latency_seconds`): the
/// data path, and the requests a transaction's client waits on one after another (where a
/// transaction's time goes). A short list: a histogram per API per shard is dozens of series.
pub const TIMED_APIS: [ApiKey; 6] = [
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::AddPartitionsToTxn,
    ApiKey::AddOffsetsToTxn,
    ApiKey::TxnOffsetCommit,
    ApiKey::EndTxn,
];

/// Everything one shard counts. Owned and written by that shard only; see the module docs.
pub struct ShardMetrics {
    /// By position in `registry::SUPPORTED_APIS`.
    pub(super) apis: Vec<ApiCounters>,
    /// By position in [`TIMED_APIS`].
    pub(super) request_latency: Vec<RefCell<LatencyHistogram>>,
    /// Shared with every partition log of the shard (see `fdatasync_observer`).
    pub(super) fdatasync_latency: Rc<RefCell<LatencyHistogram>>,
    /// The one observer every partition log of the shard holds a clone of: one closure per
    /// log cost an allocation per partition (issue 16 item 3).
    pub(super) fdatasync_observer: FdatasyncObserver,
    pub(super) connections_open: Cell<u64>,
    pub(super) connections_accepted: Cell<u64>,
    /// SASL sessions renewed on their connection, and connections closed because their
    /// session ended without renewal (KIP-368).
    pub(super) sasl_reauthentications: Cell<u64>,
    pub(super) sasl_sessions_expired: Cell<u64>,
    /// The most fetch-budget bytes reserved at once since start (`fetch_budget_reserved`).
    pub(super) fetch_budget_reserved_bytes_peak: Cell<u64>,
    /// The log cleaner (`compaction`): passes, bytes of segments it rewrote, when it last
    /// finished a pass (Unix ms, 0 never), and the largest dirty ratio among the shard's
    /// compacted logs at its last look (Kafka's `max-dirty-percent`).
    pub(super) cleaner_passes: Cell<u64>,
    pub(super) cleaner_bytes_cleaned: Cell<u64>,
    pub(super) cleaner_last_pass_ms: Cell<u64>,
    pub(super) cleaner_max_dirty_percent: Cell<u64>,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        let fdatasync_latency: Rc<RefCell<LatencyHistogram>> = Rc::default();
        let histogram = Rc::clone(&fdatasync_latency);
        Self {
            apis: SUPPORTED_APIS
                .iter()
                .map(|_| ApiCounters::default())
                .collect(),
            request_latency: TIMED_APIS.iter().map(|_| RefCell::default()).collect(),
            fdatasync_latency,
            fdatasync_observer: Rc::new(move |latency| histogram.borrow_mut().record(latency)),
            connections_open: Cell::new(0),
            connections_accepted: Cell::new(0),
            sasl_reauthentications: Cell::new(0),
            sasl_sessions_expired: Cell::new(0),
            fetch_budget_reserved_bytes_peak: Cell::new(0),
            cleaner_passes: Cell::new(0),
            cleaner_bytes_cleaned: Cell::new(0),
            cleaner_last_pass_ms: Cell::new(0),
            cleaner_max_dirty_percent: Cell::new(0),
        }
    }
}

impl ShardMetrics {
    fn api(&self, api_key: ApiKey) -> &ApiCounters {
        let index = SUPPORTED_APIS
            .binary_search_by_key(&(api_key as i16), |spec| spec.key as i16)
            .expect("only admitted APIs are counted");
        &self.apis[index]
    }

    /// A request frame of `frame_bytes` was admitted and decoded.
    pub fn request_received(&self, api_key: ApiKey, frame_bytes: usize) {
        let counters = self.api(api_key);
        counters
            .request_bytes
            .set(counters.request_bytes.get() + frame_bytes as u64);
    }

    /// A handler finished: `response_bytes` is 0 when no response is sent (acks=0).
    pub fn request_answered(
        &self,
        api_key: ApiKey,
        error_code: i16,
        latency: Duration,
        response_bytes: usize,
    ) {
        let counters = self.api(api_key);
        counters
            .response_bytes
            .set(counters.response_bytes.get() + response_bytes as u64);
        let mut answered = counters.answered.borrow_mut();
        match answered.iter_mut().find(|(code, _)| *code == error_code) {
            Some((_, count)) => *count += 1,
            None => answered.push((error_code, 1)),
        }
        if let Some(timed) = TIMED_APIS.iter().position(|key| *key == api_key) {
            self.request_latency[timed].borrow_mut().record(latency);
        }
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub fn connection_opened(self: &Rc<Self>) -> OpenConnection {
        self.connections_open.set(self.connections_open.get() + 1);
        self.connections_accepted
            .set(self.connections_accepted.get() + 1);
        OpenConnection {
            metrics: self.clone(),
        }
    }

    /// A SASL session was renewed on its connection (KIP-368).
    pub fn sasl_reauthenticated(&self) {
        self.sasl_reauthentications
            .set(self.sasl_reauthentications.get() + 1);
    }

    /// A connection was closed because its SASL session ended without renewal.
    pub fn sasl_session_expired(&self) {
        self.sasl_sessions_expired
            .set(self.sasl_sessions_expired.get() + 1);
    }

    /// A fetch has just reserved budget: `reserved_bytes` of the shard's fetch budget are
    /// now reserved in all. Keeps the peak, which a scrape between two tasks would miss.
    pub fn fetch_budget_reserved(&self, reserved_bytes: u64) {
        let peak = &self.fetch_budget_reserved_bytes_peak;
        peak.set(peak.get().max(reserved_bytes));
    }

    /// The cleaner looked at the shard's compacted logs; the dirtiest has `max_dirty_ratio`.
    pub fn cleaner_scanned(&self, max_dirty_ratio: f64) {
        self.cleaner_max_dirty_percent
            .set((max_dirty_ratio.clamp(0.0, 1.0) * 100.0).round() as u64);
    }

    /// The cleaner finished a pass that rewrote `bytes` of segments, at `now_ms`.
    pub fn cleaner_pass(&self, bytes: u64, now_ms: i64) {
        self.cleaner_passes.set(self.cleaner_passes.get() + 1);
        self.cleaner_bytes_cleaned
            .set(self.cleaner_bytes_cleaned.get() + bytes);
        self.cleaner_last_pass_ms
            .set(u64::try_from(now_ms).unwrap_or(0));
    }

    /// What every partition log of this shard reports its fdatasync latencies to.
    pub fn fdatasync_observer(&self) -> FdatasyncObserver {
        Rc::clone(&self.fdatasync_observer)
    }
}

/// Decrements the open-connection gauge when the connection ends, however it ends.
pub struct OpenConnection {
    metrics: Rc<ShardMetrics>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let open = &self.metrics.connections_open;
        open.set(open.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_each_latency_once_under_the_first_bound_at_or_above_it() {
        let mut histogram = LatencyHistogram::default();
        for micros in [30, 70, 900, 1_000, 20_000_000] {
            histogram.record(Duration::from_micros(micros));
        }
        let buckets = histogram.buckets();
        assert_eq!(buckets.count, 5);
        assert_eq!(buckets.counts[0], 1, "30 µs ≤ 50 µs");
        assert_eq!(buckets.counts[1], 1, "70 µs ≤ 100 µs");
        assert_eq!(buckets.counts[4], 2, "900 µs and 1 ms ≤ 1 ms");
        assert_eq!(
            buckets.counts.iter().sum::<u64>(),
            4,
            "20 s lies above the last bound: only in +Inf"
        );
        assert!((buckets.sum_seconds - 20.002).abs() < 1e-9, "the exact sum");
    }

    #[test]
    fn shard_histograms_add_up() {
        let mut one = LatencyHistogram::default();
        one.record(Duration::from_millis(3));
        let mut total = HistogramBuckets::default();
        total.add(&one.buckets());
        total.add(&one.buckets());
        assert_eq!(total.count, 2);
        assert_eq!(total.counts[6], 2, "3 ms ≤ 5 ms");
    }

    #[test]
    fn requests_are_counted_by_api_and_error_code() {
        let metrics = ShardMetrics::default();
        metrics.request_received(ApiKey::Produce, 100);
        metrics.request_answered(ApiKey::Produce, 0, Duration::from_micros(80), 40);
        metrics.request_answered(ApiKey::Produce, 0, Duration::from_micros(80), 40);
        metrics.request_answered(ApiKey::Produce, 3, Duration::from_micros(80), 40);
        let produce = metrics.api(ApiKey::Produce);
        assert_eq!(*produce.answered.borrow(), vec![(0, 2), (3, 1)]);
        assert_eq!(produce.request_bytes.get(), 100);
        assert_eq!(produce.response_bytes.get(), 120);
        metrics.request_answered(ApiKey::EndTxn, 0, Duration::from_micros(900), 20);
        metrics.request_answered(ApiKey::Metadata, 0, Duration::from_micros(50), 200);
        let counts: Vec<(ApiKey, u64)> = TIMED_APIS
            .iter()
            .zip(&metrics.request_latency)
            .map(|(api, histogram)| (*api, histogram.borrow().buckets().count))
            .filter(|(_, count)| *count > 0)
            .collect();
        assert_eq!(counts, [(ApiKey::Produce, 3), (ApiKey::EndTxn, 1)]);
    }

    #[test]
    fn the_connection_gauge_follows_its_guards() {
        let metrics = Rc::new(ShardMetrics::default());
        let first = metrics.connection_opened();
        let second = metrics.connection_opened();
        drop(first);
        assert_eq!(metrics.connections_open.get(), 1);
        drop(second);
        assert_eq!(metrics.connections_open.get(), 0);
        assert_eq!(metrics.connections_accepted.get(), 2);
    }
}
