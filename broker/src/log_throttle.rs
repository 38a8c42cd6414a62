//! Repeating warnings, logged at most once per interval with a count of the ones skipped, so
//! a client that keeps hitting the same failure (a connection flood, a consumer retrying a
//! corrupt batch twice a second) cannot flood the log.

use std::time::{Duration, Instant};

/// How often one repeating warning may be logged.
pub const REPEAT_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct LogThrottle {
    last_logged: Option<Instant>,
    skipped: u64,
}

impl LogThrottle {
    /// Call on every occurrence. `Some(skipped)` means log this one now; `skipped` is how
    /// many occurrences since the last logged one were not logged.
    pub fn occurrence(&mut self, now: Instant) -> Option<u64> {
        if self
            .last_logged
            .is_some_and(|last| now.duration_since(last) < REPEAT_LOG_INTERVAL)
        {
            self.skipped += 1;
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_then_once_per_interval_with_the_skipped_count() {
        let mut throttle = LogThrottle::default();
        let start = Instant::now();
        assert_eq!(throttle.occurrence(start), Some(0));
        assert_eq!(throttle.occurrence(start + Duration::from_secs(1)), None);
        assert_eq!(throttle.occurrence(start + Duration::from_secs(2)), None);
        assert_eq!(
            throttle.occurrence(start + REPEAT_LOG_INTERVAL + Duration::from_secs(1)),
            Some(2)
        );
        assert_eq!(
            throttle.occurrence(start + REPEAT_LOG_INTERVAL + Duration::from_secs(2)),
            None
        );
    }
}
