//! A shard's metrics as one owned, `Send` value, built on the shard's thread when the admin
//! thread asks (see the module docs of `metrics`).

use std::sync::mpsc::SyncSender;

use crate::fetch_sessions::SessionCounters;
use crate::metrics::shard::{HistogramBuckets, ShardMetrics};
use crate::registry::SUPPORTED_APIS;

/// The admin thread's request for one shard's snapshot; the answer goes to `reply`.
pub struct ScrapeRequest {
    pub reply: SyncSender<ShardSnapshot>,
    /// At most this many committed offsets go into the snapshot (the lag series cap).
    pub committed_offsets_max: usize,
}

/// One served API's counters on one shard.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApiSnapshot {
    /// Kafka's name of the API (`Produce`).
    pub api: String,
    /// (error code, requests answered with it).
    pub answered: Vec<(i16, u64)>,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// One partition's log, as its owner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionSnapshot {
    pub topic: String,
    pub partition: i32,
    pub size_bytes: u64,
    pub log_start_offset: i64,
    pub high_watermark: i64,
}

/// One consumer group's committed offset on one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffsetSnapshot {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Cross-shard calls of one kind that one shard has sent and received (the router counts
/// them; the kinds are the services' `shard::CALL_KINDS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrossShardCount {
    pub kind: &'static str,
    pub sent: u64,
    pub received: u64,
}

/// Everything one shard reports on a scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardSnapshot {
    pub shard: usize,
    /// APIs with at least one request.
    pub apis: Vec<ApiSnapshot>,
    /// Per API of `shard::TIMED_APIS`, in its order (an empty histogram for one not served).
    pub request_latency: Vec<HistogramBuckets>,
    pub fdatasync_latency: HistogramBuckets,
    pub connections_open: u64,
    pub connections_accepted: u64,
    /// SASL sessions renewed, and connections closed for an ended session (KIP-368).
    pub sasl_reauthentications: u64,
    pub sasl_sessions_expired: u64,
    pub partitions_offline: u64,
    /// Every online partition of the shard (the exporter caps the series, and needs all
    /// high watermarks to compute group lag).
    pub partitions: Vec<PartitionSnapshot>,
    /// The first `ScrapeRequest::committed_offsets_max` committed offsets of the shard's
    /// groups, and how many it holds in all.
    pub committed_offsets: Vec<CommittedOffsetSnapshot>,
    pub committed_offsets_total: u64,
    /// Per call kind, in the order of the kinds.
    pub cross_shard: Vec<CrossShardCount>,
    /// Bytes of the shard's fetch budget reserved now, and the most reserved at once.
    pub fetch_budget_reserved_bytes: u64,
    pub fetch_budget_reserved_bytes_peak: u64,
    /// The shard's tail caches together (`storage::cache`).
    pub tail_cache: crate::storage::ShardTailCacheStats,
    /// Long-poll waits parked on the shard's partitions now (local and other shards' fetches).
    pub fetch_waits_parked: u64,
    /// Waits answered at once because `Limits::shard_fetch_waits_parked_max` were parked.
    pub fetch_waits_refused: u64,
    /// Incremental fetch sessions the shard keeps, the partitions they cache, and what its
    /// cache did (`fetch_sessions`).
    pub fetch_sessions: u64,
    pub fetch_session_partitions: u64,
    pub fetch_session_counters: SessionCounters,
    /// KIP-848 group epoch bumps of the groups this shard coordinates, and how long their
    /// members took from a new target assignment to reaching it.
    pub consumer_group_rebalances: u64,
    pub consumer_group_reconciliation: HistogramBuckets,
    /// The cluster transport's counts, on the shard that runs it (shard 0 among voters).
    pub cluster_transport: Option<crate::cluster::transport::TransportCounts>,
    /// The shard's partition groups (`replica`), on a broker among several voters.
    pub replication: Option<crate::replica::handover::ReplicationSnapshot>,
    /// The log cleaner: passes, bytes rewritten, last pass (Unix ms), max dirty percent.
    pub cleaner_passes: u64,
    pub cleaner_bytes_cleaned: u64,
    pub cleaner_last_pass_ms: u64,
    pub cleaner_max_dirty_percent: u64,
}

impl ShardMetrics {
    /// What this shard counts itself; the shard's services add what their parts hold
    /// (partitions, groups, cross-shard calls, budgets). Takes no await.
    pub fn snapshot(&self) -> ShardSnapshot {
        ShardSnapshot {
            apis: api_snapshots(self),
            request_latency: self
                .request_latency
                .iter()
                .map(|histogram| histogram.borrow().buckets())
                .collect(),
            fdatasync_latency: self.fdatasync_latency.borrow().buckets(),
            connections_open: self.connections_open.get(),
            connections_accepted: self.connections_accepted.get(),
            sasl_reauthentications: self.sasl_reauthentications.get(),
            sasl_sessions_expired: self.sasl_sessions_expired.get(),
            fetch_budget_reserved_bytes_peak: self.fetch_budget_reserved_bytes_peak.get(),
            cleaner_passes: self.cleaner_passes.get(),
            cleaner_bytes_cleaned: self.cleaner_bytes_cleaned.get(),
            cleaner_last_pass_ms: self.cleaner_last_pass_ms.get(),
            cleaner_max_dirty_percent: self.cleaner_max_dirty_percent.get(),
            ..ShardSnapshot::default()
        }
    }
}

fn api_snapshots(metrics: &ShardMetrics) -> Vec<ApiSnapshot> {
    SUPPORTED_APIS
        .iter()
        .zip(&metrics.apis)
        .filter(|(_, counters)| {
            counters.request_bytes.get() > 0 || !counters.answered.borrow().is_empty()
        })
        .map(|(spec, counters)| ApiSnapshot {
            api: format!("{:?}", spec.key),
            answered: counters.answered.borrow().clone(),
            request_bytes: counters.request_bytes.get(),
            response_bytes: counters.response_bytes.get(),
        })
        .collect()
}
