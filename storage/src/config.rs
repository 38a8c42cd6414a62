//! Per-partition settings. Defaults follow Kafka's topic defaults where Kafka has one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};

/// When the log calls fdatasync for data that no acks=all producer is waiting on.
/// Acks=all always waits for an fdatasync, whatever the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlushPolicy {
    /// fdatasync after every write round: every append becomes durable as soon as it can.
    Always,
    /// fdatasync at most this often when there is unsynced data (bounds the loss window of
    /// acks=0/1 data on a power cut).
    IntervalMs(u64),
    /// fdatasync only when an acks=all producer waits for one.
    OnDemand,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogConfig {
    /// Roll to a new segment before one grows past this (Kafka `segment.bytes`, 1 GiB).
    pub segment_bytes_max: u64,
    /// Roll a segment this long after its first append (Kafka `segment.ms`, 7 days).
    pub segment_age_max_ms: Option<u64>,
    /// Delete whole old segments while the rest still holds this much (`retention.bytes`).
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest timestamp is older than this (`retention.ms`, 7 days).
    pub retention_ms: Option<u64>,
    /// The largest batch accepted (`max.message.bytes`, 1 MiB + 12 bytes of log overhead).
    pub batch_bytes_max: usize,
    /// Bytes of batches between sparse index entries (`index.interval.bytes`, 4 KiB).
    pub index_interval_bytes: u32,
    /// The largest step the active segment is fallocated ahead of its data, so appends change
    /// no size metadata. Steps start at 256 KiB (or this, if smaller) for a new or recovered
    /// segment and double while the partition fills them within a second, up to this
    /// (see [`crate::preallocation`]).
    pub preallocate_step_bytes: u64,
    /// Recent batches kept in memory to serve tail reads without IO.
    pub tail_cache_bytes_max: usize,
    /// Size of the aligned buffers appends are copied into before their DMA write.
    pub write_chunk_bytes: usize,
    /// Appends wait when this many appended bytes are not yet written (backpressure).
    pub unwritten_bytes_max: usize,
    /// How often the recovery checkpoint is rewritten after an fdatasync.
    pub checkpoint_interval_ms: u64,
    pub flush: FlushPolicy,
}

impl Default for LogConfig {
    fn default() -> Self {
        const DAY_MS: u64 = 24 * 60 * 60 * 1000;
        LogConfig {
            segment_bytes_max: 1 << 30,
            segment_age_max_ms: Some(7 * DAY_MS),
            retention_bytes: None,
            retention_ms: Some(7 * DAY_MS),
            batch_bytes_max: (1 << 20) + 12,
            index_interval_bytes: 4096,
            preallocate_step_bytes: 32 << 20,
            tail_cache_bytes_max: 4 << 20,
            write_chunk_bytes: 256 << 10,
            unwritten_bytes_max: 8 << 20,
            checkpoint_interval_ms: 1000,
            flush: FlushPolicy::OnDemand,
        }
    }
}

/// One shared copy of each distinct [`LogConfig`] in use on a shard, so the partitions of a
/// topic (and of topics with equal settings) hold an `Rc` of 8 bytes instead of a 128-byte
/// copy each. Entries whose logs are all gone are dropped as the table grows: it holds at
/// most about twice the configs in use. Lives on one shard (`Rc`, `RefCell`).
#[derive(Default)]
pub struct SharedConfigs {
    configs: RefCell<HashMap<LogConfig, Weak<LogConfig>>>,
    /// Table size at which dead entries are next swept out.
    sweep_at: std::cell::Cell<usize>,
}

impl SharedConfigs {
    /// The shared copy of `config`, made if none is alive.
    pub fn share(&self, config: LogConfig) -> Rc<LogConfig> {
        let mut configs = self.configs.borrow_mut();
        if let Some(shared) = configs.get(&config).and_then(Weak::upgrade) {
            return shared;
        }
        if configs.len() >= self.sweep_at.get() {
            configs.retain(|_, weak| weak.strong_count() > 0);
            self.sweep_at.set((configs.len() * 2).max(16));
        }
        let shared = Rc::new(config.clone());
        configs.insert(config, Rc::downgrade(&shared));
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_configs_share_one_copy_and_dead_ones_are_swept() {
        let shared = SharedConfigs::default();
        let a = shared.share(LogConfig::default());
        let b = shared.share(LogConfig::default());
        assert!(Rc::ptr_eq(&a, &b));
        let other = shared.share(LogConfig {
            retention_bytes: Some(1),
            ..LogConfig::default()
        });
        assert!(!Rc::ptr_eq(&a, &other));
        drop(other);
        for bytes in 2..100 {
            drop(shared.share(LogConfig {
                retention_bytes: Some(bytes),
                ..LogConfig::default()
            }));
        }
        assert!(
            shared.configs.borrow().len() <= 32,
            "dead entries are swept"
        );
        assert!(Rc::ptr_eq(&a, &shared.share(LogConfig::default())));
    }
}
