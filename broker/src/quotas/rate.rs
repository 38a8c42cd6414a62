//! Kafka's rate measurement and throttle formula, as its client quotas use them
//! (`org.apache.kafka.common.metrics.stats.Rate` over a `SampledStat`, and
//! `QuotaUtils.throttleTime`):
//!
//! - usage is summed into `quota.window.num` = 11 samples of `quota.window.size.seconds`
//!   = 1 s; a record starts a new sample (recycling the oldest) once the current one is a
//!   window old; samples older than 11 windows count as empty;
//! - the rate is the retained total divided by the time since the oldest sample started,
//!   but never less than 10 windows (so a new sensor's first burst is averaged over 10 s,
//!   not over the milliseconds it has existed);
//! - over the quota, the client waits `(rate - quota) / quota * window` ms: the time after
//!   which the same total over the longer window is back at the quota.
//!
//! Times are milliseconds of a monotonic clock, given by the caller (pure, testable).

/// `quota.window.num`.
pub const SAMPLES: usize = 11;
/// `quota.window.size.seconds`, in ms.
pub const SAMPLE_WINDOW_MS: u64 = 1000;

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    started_ms: u64,
    value: f64,
}

/// One sensor's samples (Kafka's `SampledStat` of a `Rate`).
#[derive(Clone, Debug)]
pub struct SampledRate {
    samples: Vec<Sample>,
    current: usize,
}

impl SampledRate {
    /// A sensor created at `now_ms`, with one empty sample starting then.
    pub fn new(now_ms: u64) -> Self {
        let mut samples = Vec::with_capacity(SAMPLES);
        samples.push(Sample {
            started_ms: now_ms,
            value: 0.0,
        });
        Self {
            samples,
            current: 0,
        }
    }

    /// Adds `value` at `now_ms` (Kafka's `SampledStat.record`).
    pub fn record(&mut self, value: f64, now_ms: u64) {
        let current = self.samples[self.current];
        if now_ms.saturating_sub(current.started_ms) >= SAMPLE_WINDOW_MS {
            self.current = (self.current + 1) % SAMPLES;
            let fresh = Sample {
                started_ms: now_ms,
                value: 0.0,
            };
            if self.current == self.samples.len() {
                self.samples.push(fresh);
            } else {
                self.samples[self.current] = fresh;
            }
        }
        self.samples[self.current].value += value;
    }

    /// Resets samples that ended more than `SAMPLES` windows ago (`purgeObsoleteSamples`).
    fn purge(&mut self, now_ms: u64) {
        let expire_ms = SAMPLES as u64 * SAMPLE_WINDOW_MS;
        for sample in &mut self.samples {
            if now_ms.saturating_sub(sample.started_ms) >= expire_ms {
                *sample = Sample {
                    started_ms: now_ms,
                    value: 0.0,
                };
            }
        }
    }

    /// The window the rate is measured over, in ms (Kafka's `Rate.windowSize`).
    pub fn window_ms(&mut self, now_ms: u64) -> u64 {
        self.purge(now_ms);
        let oldest = self
            .samples
            .iter()
            .map(|sample| sample.started_ms)
            .min()
            .unwrap_or(now_ms);
        let mut elapsed_ms = now_ms.saturating_sub(oldest);
        let full_windows = elapsed_ms / SAMPLE_WINDOW_MS;
        let full_windows_min = SAMPLES as u64 - 1;
        if full_windows < full_windows_min {
            elapsed_ms += (full_windows_min - full_windows) * SAMPLE_WINDOW_MS;
        }
        elapsed_ms.max(1)
    }

    /// Usage per second at `now_ms` (Kafka's `Rate.measure`).
    #[allow(clippy::cast_precision_loss)]
    pub fn rate(&mut self, now_ms: u64) -> f64 {
        let window_ms = self.window_ms(now_ms);
        let total: f64 = self.samples.iter().map(|sample| sample.value).sum();
        total / (window_ms as f64 / 1000.0)
    }

    /// Whether every retained sample is empty or older than the whole window: a sensor
    /// that can be dropped.
    pub fn idle(&self, now_ms: u64) -> bool {
        let expire_ms = SAMPLES as u64 * SAMPLE_WINDOW_MS;
        self.samples.iter().all(|sample| {
            sample.value == 0.0 || now_ms.saturating_sub(sample.started_ms) >= expire_ms
        })
    }
}

/// Kafka's `QuotaUtils.throttleTime`: how long a client measured at `rate` over a window
/// of `window_ms` must wait for its rate to be back at `quota`, in ms; 0 within the quota.
/// Bounded by `max_ms` (the request quota bounds it by one window; the byte quotas do not
/// bound it, beyond what fits a response's `throttle_time_ms`).
#[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
pub fn throttle_ms(rate: f64, quota: f64, window_ms: u64, max_ms: u64) -> u64 {
    if rate <= quota || quota <= 0.0 {
        return 0;
    }
    let throttle = (rate - quota) / quota * window_ms as f64;
    // Non-negative and finite here; `as` saturates.
    (throttle.round() as u64).min(max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_new_sensor_averages_over_ten_windows() {
        let mut rate = SampledRate::new(0);
        rate.record(10_000.0, 0);
        assert_eq!(rate.window_ms(0), 10_000);
        assert!((rate.rate(0) - 1000.0).abs() < 1e-9);
        // 500 ms later: still 10 full windows assumed, plus the half.
        assert_eq!(rate.window_ms(500), 10_500);
    }

    #[test]
    fn old_samples_expire_after_eleven_windows() {
        let mut rate = SampledRate::new(0);
        rate.record(5000.0, 0);
        rate.record(5000.0, 1000);
        assert!(rate.rate(1500) > 0.0);
        assert!(rate.rate(13_000).abs() < f64::EPSILON);
        assert!(rate.idle(13_000));
    }

    #[test]
    fn a_steady_rate_is_measured_as_such() {
        // 1000 bytes every 10 ms = 100,000 B/s for 30 s.
        let mut rate = SampledRate::new(0);
        for step in 0..3000 {
            rate.record(1000.0, step * 10);
        }
        let measured = rate.rate(29_990);
        assert!(
            (measured - 100_000.0).abs() / 100_000.0 < 0.02,
            "{measured}"
        );
    }

    #[test]
    fn the_throttle_formula_is_kafkas() {
        // Kafka's QuotaUtilsTest: observed 16.5 at quota 16.5 is not throttled; 50% over a
        // 1 s window waits 500 ms.
        assert_eq!(throttle_ms(16.5, 16.5, 1000, u64::MAX), 0);
        assert_eq!(throttle_ms(15.0, 10.0, 1000, u64::MAX), 500);
        assert_eq!(throttle_ms(30.0, 10.0, 11_000, u64::MAX), 22_000);
        assert_eq!(throttle_ms(30.0, 10.0, 11_000, 1000), 1000);
    }

    proptest! {
        /// A client that records, then waits the throttle time it is given, each time,
        /// holds the quota: over a minute its average rate is within the bounds Kafka's
        /// measurement gives. Not exactly the quota: a new sensor lets a burst of 10 s x
        /// quota through (the rate of its first samples is averaged over 10 windows), and
        /// that burst's sample expiring 11 s later lets another through; in between the
        /// rate settles about 10% over the quota (the retained samples span up to 11
        /// windows, the rate divides by the time since the oldest began). Requests are at
        /// most a tenth of a second of the quota, as a producer's batches are.
        #[test]
        fn obeying_the_throttle_holds_the_quota(
            quota in 10_000_u32..10_000_000,
            request_share_permille in 1_u32..100,
        ) {
            let quota = f64::from(quota);
            let request = quota * f64::from(request_share_permille) / 1000.0;
            let mut rate = SampledRate::new(0);
            let mut now = 0_u64;
            let mut sent = 0.0;
            let run_ms = 60_000;
            while now < run_ms {
                rate.record(request, now);
                sent += request;
                let measured = rate.rate(now);
                let window = rate.window_ms(now);
                now += throttle_ms(measured, quota, window, u64::MAX).max(1);
            }
            #[allow(clippy::cast_precision_loss)]
            let average = sent / (now as f64 / 1000.0);
            prop_assert!(average <= quota * 1.25, "average {} quota {}", average, quota);
            prop_assert!(average >= quota * 0.9, "average {} quota {}", average, quota);
        }
    }
}
