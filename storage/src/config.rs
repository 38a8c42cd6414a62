//! Per-partition settings. Defaults follow Kafka's topic defaults where Kafka has one.

/// When the log calls fdatasync for data that no acks=all producer is waiting on.
/// Acks=all always waits for an fdatasync, whatever the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// fdatasync after every write round: every append becomes durable as soon as it can.
    Always,
    /// fdatasync at most this often when there is unsynced data (bounds the loss window of
    /// acks=0/1 data on a power cut).
    IntervalMs(u64),
    /// fdatasync only when an acks=all producer waits for one.
    OnDemand,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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
