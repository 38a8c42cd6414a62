//! A shard's side of quota enforcement: the quotas as shard 0 last installed them, the
//! usage this shard measured (one `SampledRate` per sensor, `precedence::SensorKey`), the
//! usage the other shards last published, and the connections muted for a throttle.
//!
//! Owner: the shard's thread; nothing here is shared (`RefCell`/`Cell`, no lock).
//!
//! Sharing usage between shards: a client's connections can land on several shards, and
//! the quota is per broker. Each shard records what its own connections use, and every
//! `PUBLISH_INTERVAL` (100 ms) sends its current rate per sensor to every other shard
//! (`publish_usage_periodically`, a typed job over the mesh, off the data path). A request
//! is checked against its shard's own rate plus the rates the others last published.
//! Error bound: a remote rate is at most 100 ms plus one mesh hop old; as rates are averaged
//! over at least 10 s (`rate`), what another shard recorded in that last ~100 ms is missing
//! from the sum, at most `quota x 0.1 s / 10 s` = 1% of the quota per shard the client uses,
//! plus the one request each shard lets through before it sees the overrun. Shards measure
//! over windows of their own sensors' ages, which differ by at most the publish interval
//! once sensors are 10 s old.
//!
//! Cost without quotas (the common case): `enabled` is one `Cell` read per request, the
//! reader's mute check is one `RefCell` length read per frame, and the publisher wakes
//! every 100 ms to find nothing to send.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::quotas::model::{QuotaKey, QuotaSet};
use crate::quotas::precedence::{resolve, SensorKey};
use crate::quotas::rate::{throttle_ms, SampledRate, SAMPLE_WINDOW_MS};

/// How often a shard publishes its usage to the others.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);
/// Sensors a shard keeps at most (Kafka keeps one per active client for an hour); a
/// request that would need one more while all are in use is not limited, and logged.
pub const SENSORS_MAX: usize = 10_000;

/// The usage one shard published: rate per sensor.
pub type PublishedUsage = Arc<HashMap<SensorKey, f64>>;

/// The enforced keys; `controller_mutation_rate` is stored but not enforced.
const ENFORCED: [QuotaKey; 3] = [
    QuotaKey::ProducerByteRate,
    QuotaKey::ConsumerByteRate,
    QuotaKey::RequestPercentage,
];

/// See the module docs.
pub struct ShardQuotas {
    set: RefCell<Arc<QuotaSet>>,
    /// Per enforced key (in `ENFORCED` order): whether any entity has a value for it.
    keys: Cell<[bool; 3]>,
    sensors: RefCell<HashMap<SensorKey, SampledRate>>,
    /// What each other shard last published (indexed by shard; empty for this one).
    remote: RefCell<Vec<PublishedUsage>>,
    /// Connections muted for a throttle: connection id to the end of the mute (clock ms).
    mutes: RefCell<HashMap<u64, u64>>,
    /// Whether the last publish sent any usage (then the next sends even an empty set,
    /// so the others forget it).
    published_some: Cell<bool>,
}

impl ShardQuotas {
    pub fn new(shard_count: usize) -> Self {
        Self {
            set: RefCell::new(Arc::default()),
            keys: Cell::new([false; 3]),
            sensors: RefCell::default(),
            remote: RefCell::new(vec![Arc::default(); shard_count]),
            mutes: RefCell::default(),
            published_some: Cell::new(false),
        }
    }

    /// Installs the quotas shard 0 hands out; the usage measured so far is kept.
    pub fn install(&self, set: Arc<QuotaSet>) {
        self.keys.set(ENFORCED.map(|key| set.has_key(key)));
        *self.set.borrow_mut() = set;
    }

    pub fn current(&self) -> Arc<QuotaSet> {
        self.set.borrow().clone()
    }

    /// Whether any enforced quota is set (else a request records nothing).
    pub fn enabled(&self) -> bool {
        self.keys.get().iter().any(|enforced| *enforced)
    }

    fn enforces(&self, key: QuotaKey) -> bool {
        let index = ENFORCED.iter().position(|known| *known == key);
        index.is_some_and(|index| self.keys.get()[index])
    }

    /// Records `value` of `key` used by `principal` (`User:name`) with `client_id` at
    /// `now_ms`, and answers how long the client must be throttled (ms), 0 within its
    /// quota or without one.
    pub fn record(
        &self,
        key: QuotaKey,
        principal: &str,
        client_id: Option<&str>,
        value: f64,
        now_ms: u64,
    ) -> u64 {
        if !self.enforces(key) {
            return 0;
        }
        let user: Arc<str> = Arc::from(principal.strip_prefix("User:").unwrap_or(principal));
        let client_id: Arc<str> = Arc::from(client_id.unwrap_or(""));
        let Some((sensor_key, quota)) = resolve(&self.set.borrow(), key, &user, &client_id) else {
            return 0;
        };
        let mut sensors = self.sensors.borrow_mut();
        if !sensors.contains_key(&sensor_key) && sensors.len() >= SENSORS_MAX {
            sensors.retain(|_, sensor| !sensor.idle(now_ms));
            if sensors.len() >= SENSORS_MAX {
                tracing::warn!(
                    sensors = SENSORS_MAX,
                    "quota sensors full: a client is not limited"
                );
                return 0;
            }
        }
        let sensor = sensors
            .entry(sensor_key.clone())
            .or_insert_with(|| SampledRate::new(now_ms));
        sensor.record(value, now_ms);
        let local = sensor.rate(now_ms);
        let window_ms = sensor.window_ms(now_ms);
        let remote: f64 = self
            .remote
            .borrow()
            .iter()
            .filter_map(|usage| usage.get(&sensor_key))
            .sum();
        // The request quota is bounded by one window, as Kafka's `ClientRequestQuotaManager`
        // bounds it; a byte quota only by what `throttle_time_ms` holds.
        let max_ms = if key == QuotaKey::RequestPercentage {
            SAMPLE_WINDOW_MS
        } else {
            i32::MAX as u64
        };
        throttle_ms(local + remote, quota, window_ms, max_ms)
    }

    /// Mutes `connection` until `until_ms` (clock ms), or later if it is muted longer.
    pub fn mute(&self, connection: u64, until_ms: u64, now_ms: u64) {
        let mut mutes = self.mutes.borrow_mut();
        if mutes.len() >= 64 {
            mutes.retain(|_, until| *until > now_ms);
        }
        let until = mutes.entry(connection).or_insert(until_ms);
        *until = (*until).max(until_ms);
    }

    /// Whether any connection of the shard may be muted (a cheap check before `muted_for`).
    pub fn any_muted(&self) -> bool {
        !self.mutes.borrow().is_empty()
    }

    /// How long `connection` stays muted from `now_ms`, if it is.
    pub fn muted_for(&self, connection: u64, now_ms: u64) -> Option<Duration> {
        if self.mutes.borrow().is_empty() {
            return None;
        }
        let mut mutes = self.mutes.borrow_mut();
        let until = *mutes.get(&connection)?;
        if until <= now_ms {
            mutes.remove(&connection);
            return None;
        }
        Some(Duration::from_millis(until - now_ms))
    }

    /// This shard's current rate per sensor, to publish; drops the idle sensors. `None`
    /// when there is nothing to tell (no usage now, none told last time).
    pub fn usage_to_publish(&self, now_ms: u64) -> Option<PublishedUsage> {
        let mut sensors = self.sensors.borrow_mut();
        sensors.retain(|_, sensor| !sensor.idle(now_ms));
        if sensors.is_empty() && !self.published_some.get() {
            return None;
        }
        self.published_some.set(!sensors.is_empty());
        let usage = sensors
            .iter_mut()
            .map(|(key, sensor)| (key.clone(), sensor.rate(now_ms)))
            .collect();
        Some(Arc::new(usage))
    }

    /// Installs what shard `from` published.
    pub fn install_remote(&self, from: usize, usage: PublishedUsage) {
        if let Some(slot) = self.remote.borrow_mut().get_mut(from) {
            *slot = usage;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quotas::model::{Entity, QuotaOp};

    fn quotas_with(key: &str, entity: &[(&str, Option<&str>)], value: f64) -> ShardQuotas {
        let mut set = QuotaSet::default();
        let op = QuotaOp {
            key: key.into(),
            value,
            remove: false,
        };
        set.alter(&Entity::parse(entity).unwrap(), &[op]).unwrap();
        let quotas = ShardQuotas::new(2);
        quotas.install(Arc::new(set));
        quotas
    }

    #[test]
    fn without_quotas_nothing_is_recorded() {
        let quotas = ShardQuotas::new(1);
        assert!(!quotas.enabled());
        let throttle = quotas.record(QuotaKey::ProducerByteRate, "User:a", None, 1e12, 0);
        assert_eq!(throttle, 0);
        assert!(quotas.usage_to_publish(0).is_none());
    }

    #[test]
    fn a_client_over_its_quota_is_throttled_and_another_is_not() {
        let quotas = quotas_with("producer_byte_rate", &[("client-id", Some("slow"))], 1000.0);
        assert!(quotas.enabled());
        // 20,000 bytes at once over the 10 s minimum window: 2,000 B/s, twice the quota,
        // so a wait of (2000 - 1000) / 1000 x 10 s.
        let slow = quotas.record(
            QuotaKey::ProducerByteRate,
            "User:ANONYMOUS",
            Some("slow"),
            20_000.0,
            0,
        );
        assert_eq!(slow, 10_000);
        let fast = quotas.record(
            QuotaKey::ProducerByteRate,
            "User:ANONYMOUS",
            Some("fast"),
            20_000.0,
            0,
        );
        assert_eq!(fast, 0);
        let fetch = quotas.record(
            QuotaKey::ConsumerByteRate,
            "User:ANONYMOUS",
            Some("slow"),
            20_000.0,
            0,
        );
        assert_eq!(fetch, 0);
    }

    #[test]
    fn another_shards_published_usage_counts() {
        let quotas = quotas_with("producer_byte_rate", &[("user", Some("alice"))], 1000.0);
        let first = quotas.record(
            QuotaKey::ProducerByteRate,
            "User:alice",
            Some("x"),
            5000.0,
            0,
        );
        assert_eq!(first, 0);
        let published = quotas.usage_to_publish(0).unwrap();
        let other = quotas_with("producer_byte_rate", &[("user", Some("alice"))], 1000.0);
        other.install_remote(0, published);
        // 5,000 more here: 500 B/s locally, 1,000 B/s in all: at the quota, not over.
        assert_eq!(
            other.record(
                QuotaKey::ProducerByteRate,
                "User:alice",
                Some("y"),
                5000.0,
                0
            ),
            0
        );
        assert!(
            other.record(
                QuotaKey::ProducerByteRate,
                "User:alice",
                Some("y"),
                1000.0,
                0
            ) > 0
        );
    }

    #[test]
    fn a_request_time_throttle_is_at_most_one_window_and_a_byte_throttle_is_not() {
        let quotas = quotas_with("request_percentage", &[("user", None)], 10.0);
        // 50 s of thread time (5,000 percent-seconds) against 10%: far over, one window.
        let request = quotas.record(QuotaKey::RequestPercentage, "User:bob", None, 5000.0, 0);
        assert_eq!(request, SAMPLE_WINDOW_MS);
        let bytes = quotas_with("consumer_byte_rate", &[("user", None)], 10.0);
        let fetch = bytes.record(QuotaKey::ConsumerByteRate, "User:bob", None, 5000.0, 0);
        // 500 B/s over the 10 s window against 10 B/s: (500 - 10) / 10 x 10 s.
        assert_eq!(fetch, 490_000);
    }

    #[test]
    fn mutes_end_when_their_time_has_passed() {
        let quotas = ShardQuotas::new(1);
        assert_eq!(quotas.muted_for(7, 0), None);
        quotas.mute(7, 500, 0);
        quotas.mute(7, 300, 0);
        assert_eq!(quotas.muted_for(7, 100), Some(Duration::from_millis(400)));
        assert_eq!(quotas.muted_for(8, 100), None);
        assert_eq!(quotas.muted_for(7, 500), None);
        assert!(quotas.mutes.borrow().is_empty());
    }
}
