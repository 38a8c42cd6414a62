//! Topic configuration: the keys Ringfeed honours, validation of overrides, and the
//! translation into the storage crate's `LogConfig`. The defaults are the broker's settings
//! (`log.retention.ms` for `retention.ms`, ...: see `settings::SETTINGS`).

use std::collections::BTreeMap;

use crate::recompress::CompressionType;
use crate::storage::{FlushPolicy, LogConfig};

/// Key of Ringfeed's own per-topic flush policy: `always` (fdatasync after every append),
/// `interval` (every `flush.ms`), or `on-demand` (only when an acks=all producer waits).
pub const FLUSH_POLICY_KEY: &str = "ringfeed.flush.policy";

/// The keys a topic may override, in the order `DescribeConfigs` lists them.
pub const TOPIC_CONFIG_KEYS: [&str; 14] = [
    "cleanup.policy",
    "compression.type",
    "delete.retention.ms",
    "flush.ms",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
    FLUSH_POLICY_KEY,
];

/// The effective configuration of one topic: defaults with the topic's overrides applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicConfig {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub segment_bytes: i64,
    pub segment_ms: i64,
    pub max_message_bytes: i64,
    pub flush_policy: String,
    pub flush_ms: i64,
    /// `compression.type`: the codec batches are stored in (`recompress`).
    pub compression: CompressionType,
    /// `min.insync.replicas`: in-sync replicas an acks=all produce needs.
    pub min_insync_replicas: i64,
    /// Broker-wide, not a topic key: see `Limits::segment_preallocate_bytes`.
    pub segment_preallocate_bytes: u64,
    /// `cleanup.policy`, canonical: `delete`, `compact` or `compact,delete`.
    pub cleanup_policy: String,
    /// `delete.retention.ms`: how long the cleaner keeps tombstones after a segment's first
    /// clean.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms` and `max.compaction.lag.ms`: a segment is cleanable once its
    /// newest record is this old, and must be cleaned once its dirty records are that old.
    pub min_compaction_lag_ms: i64,
    pub max_compaction_lag_ms: i64,
    /// `min.cleanable.dirty.ratio`, in millionths: the dirty share of a log's cleanable
    /// bytes at which the cleaner takes it.
    pub min_cleanable_dirty_ratio_ppm: i64,
}

/// A `cleanup.policy` value in its canonical spelling (the words in Kafka's list, sorted,
/// duplicates and spaces dropped); `None` if it names something else or nothing.
pub fn canonical_cleanup_policy(value: &str) -> Option<&'static str> {
    let mut compact = false;
    let mut delete = false;
    for word in value.split(',').map(str::trim) {
        match word {
            "compact" => compact = true,
            "delete" => delete = true,
            _ => return None,
        }
    }
    Some(match (compact, delete) {
        (true, true) => "compact,delete",
        (true, false) => "compact",
        (false, true) => "delete",
        (false, false) => return None,
    })
}

/// A ratio from 0 to 1 in millionths; `None` if `value` is not one.
fn ratio_ppm(value: &str) -> Option<i64> {
    let ratio: f64 = value.trim().parse().ok()?;
    (0.0..=1.0)
        .contains(&ratio)
        .then(|| (ratio * 1_000_000.0).round() as i64)
}

impl TopicConfig {
    /// Applies `overrides` (already validated) over `defaults`, the broker's topic defaults
    /// (`settings::Effective::topic_defaults`).
    pub fn resolve(overrides: &BTreeMap<String, String>, defaults: &TopicConfig) -> Self {
        let long = |key: &str, default: i64| {
            overrides
                .get(key)
                .and_then(|value| value.parse().ok())
                .unwrap_or(default)
        };
        Self {
            retention_ms: long("retention.ms", defaults.retention_ms),
            retention_bytes: long("retention.bytes", defaults.retention_bytes),
            segment_bytes: long("segment.bytes", defaults.segment_bytes),
            segment_ms: long("segment.ms", defaults.segment_ms),
            max_message_bytes: long("max.message.bytes", defaults.max_message_bytes),
            flush_policy: overrides
                .get(FLUSH_POLICY_KEY)
                .cloned()
                .unwrap_or_else(|| defaults.flush_policy.clone()),
            flush_ms: long("flush.ms", defaults.flush_ms),
            compression: overrides
                .get("compression.type")
                .and_then(|name| CompressionType::parse(name))
                .unwrap_or(defaults.compression),
            min_insync_replicas: long("min.insync.replicas", defaults.min_insync_replicas),
            segment_preallocate_bytes: defaults.segment_preallocate_bytes,
            cleanup_policy: overrides
                .get("cleanup.policy")
                .and_then(|value| canonical_cleanup_policy(value))
                .map_or_else(|| defaults.cleanup_policy.clone(), str::to_string),
            delete_retention_ms: long("delete.retention.ms", defaults.delete_retention_ms),
            min_compaction_lag_ms: long("min.compaction.lag.ms", defaults.min_compaction_lag_ms),
            max_compaction_lag_ms: long("max.compaction.lag.ms", defaults.max_compaction_lag_ms),
            min_cleanable_dirty_ratio_ppm: overrides
                .get("min.cleanable.dirty.ratio")
                .and_then(|value| ratio_ppm(value))
                .unwrap_or(defaults.min_cleanable_dirty_ratio_ppm),
        }
    }

    /// Whether the log cleaner compacts this topic (`cleanup.policy` includes `compact`).
    pub fn is_compacted(&self) -> bool {
        self.cleanup_policy.contains("compact")
    }

    /// Whether retention deletes old segments (`cleanup.policy` includes `delete`).
    pub fn deletes_old_segments(&self) -> bool {
        self.cleanup_policy.contains("delete")
    }

    /// `min.cleanable.dirty.ratio` as a fraction.
    pub fn min_cleanable_dirty_ratio(&self) -> f64 {
        self.min_cleanable_dirty_ratio_ppm as f64 / 1_000_000.0
    }

    /// The value `DescribeConfigs` reports for `key`.
    pub fn value_of(&self, key: &str) -> Option<String> {
        Some(match key {
            "cleanup.policy" => self.cleanup_policy.clone(),
            "compression.type" => self.compression.name().into(),
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            "max.compaction.lag.ms" => self.max_compaction_lag_ms.to_string(),
            "min.cleanable.dirty.ratio" => self.min_cleanable_dirty_ratio().to_string(),
            "min.compaction.lag.ms" => self.min_compaction_lag_ms.to_string(),
            "flush.ms" => self.flush_ms.to_string(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "min.insync.replicas" => self.min_insync_replicas.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "retention.ms" => self.retention_ms.to_string(),
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            FLUSH_POLICY_KEY => self.flush_policy.clone(),
            _ => return None,
        })
    }

    pub fn log_config(&self) -> LogConfig {
        let optional = |value: i64| u64::try_from(value).ok();
        // A compact-only topic keeps its segments however old or large (Kafka's rule).
        let retention = |value: i64| optional(value).filter(|_| self.deletes_old_segments());
        LogConfig {
            segment_bytes_max: self.segment_bytes as u64,
            segment_age_max_ms: optional(self.segment_ms),
            retention_bytes: retention(self.retention_bytes),
            retention_ms: retention(self.retention_ms),
            batch_bytes_max: self.max_message_bytes as usize,
            flush: match self.flush_policy.as_str() {
                "always" => FlushPolicy::Always,
                "interval" => FlushPolicy::IntervalMs(self.flush_ms as u64),
                _ => FlushPolicy::OnDemand,
            },
            preallocate_step_bytes: self.segment_preallocate_bytes,
            ..LogConfig::default()
        }
    }
}

/// What a topic config accepts: the one place each key's bounds are written.
#[derive(Debug, Clone, Copy)]
enum Accepts {
    /// A whole number from `min` to `max`.
    Number { min: i64, max: i64 },
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A number from 0 to 1.
    Ratio,
    /// `cleanup.policy`: a comma-separated list of `compact` and `delete`.
    CleanupPolicy,
}

fn accepts(key: &str) -> Option<Accepts> {
    let at_least = |min| Accepts::Number { min, max: i64::MAX };
    Some(match key {
        "cleanup.policy" => Accepts::CleanupPolicy,
        "compression.type" => Accepts::OneOf(&CompressionType::NAMES),
        "retention.ms" | "retention.bytes" => at_least(-1),
        "min.cleanable.dirty.ratio" => Accepts::Ratio,
        "segment.bytes" => at_least(1024 * 1024),
        "segment.ms" | "max.compaction.lag.ms" => at_least(1),
        "max.message.bytes" => Accepts::Number {
            min: 0,
            max: i64::from(i32::MAX),
        },
        "flush.ms" | "delete.retention.ms" | "min.compaction.lag.ms" => at_least(0),
        "min.insync.replicas" => Accepts::Number {
            min: 1,
            max: i64::from(i16::MAX),
        },
        FLUSH_POLICY_KEY => Accepts::OneOf(&["always", "interval", "on-demand"]),
        _ => return None,
    })
}

/// The values `key` accepts, in words (for the docs of the broker settings that default it).
pub fn accepted_values(key: &str) -> String {
    match accepts(key) {
        Some(Accepts::Number { min, max: i64::MAX }) => format!("a whole number >= {min}"),
        Some(Accepts::Number { min, max }) => format!("{min} to {max}"),
        Some(Accepts::OneOf(words)) => words.join(", "),
        Some(Accepts::Ratio) => "a number from 0 to 1".into(),
        Some(Accepts::CleanupPolicy) => "delete, compact or compact,delete".into(),
        None => "nothing (not a topic config)".into(),
    }
}

/// Checks one override; the error text goes back to the client with `INVALID_CONFIG`.
pub fn validate_override(key: &str, value: &str) -> Result<(), String> {
    match accepts(key) {
        Some(Accepts::Number { min, max }) => match value.parse::<i64>() {
            Ok(parsed) if (min..=max).contains(&parsed) => Ok(()),
            _ => Err(format!(
                "{key} must be {}, got {value:?}",
                accepted_values(key)
            )),
        },
        Some(Accepts::OneOf(words)) if words.contains(&value) => Ok(()),
        Some(Accepts::OneOf(_)) => Err(format!(
            "{key}={value} is not supported; {key} must be {}",
            accepted_values(key)
        )),
        Some(Accepts::Ratio) if ratio_ppm(value).is_some() => Ok(()),
        Some(Accepts::CleanupPolicy) if canonical_cleanup_policy(value).is_some() => Ok(()),
        Some(Accepts::Ratio | Accepts::CleanupPolicy) => Err(format!(
            "{key} must be {}, got {value:?}",
            accepted_values(key)
        )),
        None => Err(format!("unknown or unsupported topic config {key}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Effective;

    #[test]
    fn overrides_replace_defaults_and_reach_the_log_config() {
        let overrides = BTreeMap::from([
            ("retention.bytes".to_string(), "5000000".to_string()),
            ("max.message.bytes".to_string(), "2000".to_string()),
            (FLUSH_POLICY_KEY.to_string(), "always".to_string()),
        ]);
        let defaults = TopicConfig {
            segment_preallocate_bytes: 1 << 20,
            ..Effective::defaults().topic_defaults()
        };
        let config = TopicConfig::resolve(&overrides, &defaults);
        assert_eq!(config.retention_ms, defaults.retention_ms);
        let log = config.log_config();
        assert_eq!(log.retention_bytes, Some(5_000_000));
        assert_eq!(log.batch_bytes_max, 2000);
        assert_eq!(log.flush, FlushPolicy::Always);
        assert_eq!(log.preallocate_step_bytes, 1 << 20);
        assert_eq!(
            TopicConfig::resolve(&BTreeMap::new(), &defaults)
                .log_config()
                .retention_bytes,
            None
        );
    }

    /// A compacted topic: the cleaner's settings resolve, and a compact-only topic has no
    /// retention by time or size (Kafka's rule), while `compact,delete` keeps both.
    #[test]
    fn compaction_settings_resolve_and_compact_only_turns_retention_off() {
        let defaults = Effective::defaults().topic_defaults();
        assert_eq!(defaults.cleanup_policy, "delete");
        assert!(!defaults.is_compacted());
        let overrides = BTreeMap::from([
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("min.cleanable.dirty.ratio".to_string(), "0.01".to_string()),
            ("delete.retention.ms".to_string(), "100".to_string()),
        ]);
        let config = TopicConfig::resolve(&overrides, &defaults);
        assert!(config.is_compacted());
        assert_eq!(
            config.value_of("min.cleanable.dirty.ratio").as_deref(),
            Some("0.01")
        );
        assert_eq!(config.delete_retention_ms, 100);
        assert_eq!(config.log_config().retention_ms, None);
        let both = BTreeMap::from([("cleanup.policy".to_string(), "delete,compact".to_string())]);
        let config = TopicConfig::resolve(&both, &defaults);
        assert_eq!(
            config.value_of("cleanup.policy").as_deref(),
            Some("compact,delete")
        );
        assert!(config.is_compacted());
        assert_eq!(
            config.log_config().retention_ms,
            Some(defaults.retention_ms as u64)
        );
    }

    #[test]
    fn a_topic_without_overrides_gets_the_broker_defaults() {
        let defaults = TopicConfig {
            retention_ms: 3_600_000,
            flush_policy: "always".into(),
            ..Effective::defaults().topic_defaults()
        };
        let config = TopicConfig::resolve(&BTreeMap::new(), &defaults);
        assert_eq!(config, defaults);
        assert_eq!(config.log_config().retention_ms, Some(3_600_000));
        assert_eq!(config.log_config().flush, FlushPolicy::Always);
    }

    #[test]
    fn invalid_overrides_are_refused_with_a_reason() {
        assert!(validate_override("cleanup.policy", "compacted").is_err());
        assert!(validate_override("cleanup.policy", "").is_err());
        assert!(validate_override("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(validate_override("min.cleanable.dirty.ratio", "half").is_err());
        assert!(validate_override("delete.retention.ms", "-1").is_err());
        assert!(validate_override("retention.ms", "-2").is_err());
        assert!(validate_override("retention.ms", "soon").is_err());
        assert!(validate_override("no.such.key", "1").is_err());
        assert!(validate_override(FLUSH_POLICY_KEY, "sometimes").is_err());
        assert!(validate_override("retention.ms", "-1").is_ok());
        assert!(validate_override(FLUSH_POLICY_KEY, "interval").is_ok());
        assert!(validate_override("segment.bytes", "1000").is_err());
        assert!(validate_override("max.message.bytes", "2147483648").is_err());
        assert!(validate_override("max.message.bytes", "2147483647").is_ok());
        assert!(validate_override("cleanup.policy", "delete").is_ok());
        for policy in ["compact", "compact,delete", "delete, compact"] {
            assert!(
                validate_override("cleanup.policy", policy).is_ok(),
                "{policy}"
            );
        }
        assert!(validate_override("min.cleanable.dirty.ratio", "0.01").is_ok());
        for codec in ["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"] {
            assert!(validate_override("compression.type", codec).is_ok());
        }
        assert!(validate_override("compression.type", "none").is_err());
        assert!(validate_override("compression.type", "LZ4").is_err());
    }
}
