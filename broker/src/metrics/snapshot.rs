//! A shard's metrics as one owned, `Send` value, built on the shard's thread when the admin
//! thread asks (see the module docs of `metrics`).

use std::rc::Weak;
use std::sync::mpsc::SyncSender;

use futures::channel::mpsc::Receiver;
use futures::StreamExt;

use super::{HistogramBuckets, ShardMetrics};
use crate::registry::SUPPORTED_APIS;
use crate::router::CrossShardCounts;
use crate::shard::Shard;

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

/// Everything one shard reports on a scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardSnapshot {
    pub shard: usize,
    /// APIs with at least one request.
    pub apis: Vec<ApiSnapshot>,
    pub produce_latency: HistogramBuckets,
    pub fetch_latency: HistogramBuckets,
    pub fdatasync_latency: HistogramBuckets,
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub partitions_offline: u64,
    /// Every online partition of the shard (the exporter caps the series, and needs all
    /// high watermarks to compute group lag).
    pub partitions: Vec<PartitionSnapshot>,
    /// The first `ScrapeRequest::committed_offsets_max` committed offsets of the shard's
    /// groups, and how many it holds in all.
    pub committed_offsets: Vec<CommittedOffsetSnapshot>,
    pub committed_offsets_total: u64,
    pub cross_shard: CrossShardCounts,
    /// Bytes of the shard's fetch budget reserved now, and the most reserved at once.
    pub fetch_budget_reserved_bytes: u64,
    pub fetch_budget_reserved_bytes_peak: u64,
    /// Long-poll waits parked on the shard's partitions now (local and other shards' fetches).
    pub fetch_waits_parked: u64,
    /// Waits answered at once because `Limits::shard_fetch_waits_parked_max` were parked.
    pub fetch_waits_refused: u64,
}

/// Answers scrape requests until the admin thread drops its sender (it never does while
/// the process serves) or the shard is gone. Holds the shard weakly so it never keeps a
/// stopped shard alive.
pub async fn serve_scrapes(shard: Weak<Shard>, mut requests: Receiver<ScrapeRequest>) {
    while let Some(request) = requests.next().await {
        let Some(shard) = shard.upgrade() else { return };
        // The admin thread may have given up waiting; then nobody wants the answer.
        let _ = request
            .reply
            .try_send(collect(&shard, request.committed_offsets_max));
    }
}

/// Copies this shard's metrics. Runs on the shard's thread; takes no await.
pub fn collect(shard: &Shard, committed_offsets_max: usize) -> ShardSnapshot {
    let metrics: &ShardMetrics = &shard.metrics;
    let online = shard.partitions.online_logs();
    let owned = shard.partitions.owned().len();
    let mut partitions: Vec<PartitionSnapshot> = online
        .iter()
        .map(|(tp, log)| PartitionSnapshot {
            topic: tp.topic.to_string(),
            partition: tp.partition,
            size_bytes: log.size_bytes(),
            log_start_offset: log.log_start_offset(),
            high_watermark: log.high_watermark(),
        })
        .collect();
    partitions.sort_unstable_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let (committed_offsets, committed_offsets_total) =
        shard.groups.committed_offsets(committed_offsets_max);
    let committed_offsets = committed_offsets
        .into_iter()
        .map(
            |(group, topic, partition, offset)| CommittedOffsetSnapshot {
                group,
                topic,
                partition,
                offset,
            },
        )
        .collect();
    ShardSnapshot {
        shard: shard.id,
        apis: api_snapshots(metrics),
        produce_latency: metrics.produce_latency.borrow().buckets(),
        fetch_latency: metrics.fetch_latency.borrow().buckets(),
        fdatasync_latency: metrics.fdatasync_latency.borrow().buckets(),
        connections_open: metrics.connections_open.get(),
        connections_accepted: metrics.connections_accepted.get(),
        partitions_offline: (owned - online.len()) as u64,
        partitions,
        committed_offsets,
        committed_offsets_total: committed_offsets_total as u64,
        cross_shard: shard.cross_shard_counts(),
        fetch_budget_reserved_bytes: shard.config.limits.shard_fetch_bytes_max as u64
            - shard.fetch_budget.available(),
        fetch_budget_reserved_bytes_peak: metrics.fetch_budget_reserved_bytes_peak.get(),
        fetch_waits_parked: shard.partitions.parked_waits().parked() as u64,
        fetch_waits_refused: shard.partitions.parked_waits().refused(),
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
