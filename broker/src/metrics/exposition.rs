//! Turns the shards' snapshots into the Prometheus text exposition format (version 0.0.4),
//! encoded by `prometheus-client`, the official Prometheus Rust client. Every metric name,
//! type and label is listed in `docs/OBSERVABILITY.md`; keep the two in step.
//!
//! Series with a `shard` label are per shard; the broker-wide figure is their sum. The
//! per-partition and per-group series are capped (`Limits::metrics_partition_series_max`,
//! `Limits::metrics_group_lag_series_max`) and the number left out is exported, so a host
//! with many partitions cannot blow up the scrape.

use std::collections::HashMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::error_code::error_name;
use super::snapshot::{CrossShardCount, PartitionSnapshot, ShardSnapshot};
use super::{HistogramBuckets, LATENCY_BUCKET_BOUNDS_SECONDS, TIMED_APIS};
use crate::cluster::transport::TransportCounts;
use crate::replica::handover::ReplicationSnapshot;

/// The `Content-Type` of what `encode` returns.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What one scrape exports, besides the snapshots.
#[derive(Clone, Copy, Debug)]
pub struct ScrapeContext {
    /// Shards the broker runs; a shard that did not answer in time is missing from the
    /// snapshots and counted in `ringfeed_scrape_shards_missing`.
    pub shard_count: usize,
    pub ready: bool,
    pub partition_series_max: usize,
    pub group_lag_series_max: usize,
}

/// Encodes one scrape.
pub fn encode(context: ScrapeContext, mut shards: Vec<ShardSnapshot>) -> String {
    shards.sort_unstable_by_key(|snapshot| snapshot.shard);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape { context, shards }));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

/// One scrape's data, handed to `prometheus-client` as a collector.
#[derive(Debug)]
struct Scrape {
    context: ScrapeContext,
    shards: Vec<ShardSnapshot>,
}

type Labels = Vec<(&'static str, String)>;

/// Picks one gauge value out of a partition's snapshot.
type PartitionGauge = fn(&PartitionSnapshot) -> i64;

/// A per-shard figure of the replication snapshot.
type ReplicaPick = fn(&ReplicationSnapshot) -> u64;

/// The gauge families of `Scrape::encode_replication`: (name, help, figure).
#[rustfmt::skip]
const REPLICA_GAUGES: &[(&str, &str, ReplicaPick)] = &[
    ("ringfeed_replica_groups", "Replicated partitions with a replica on the shard.", |r| r.groups),
    ("ringfeed_replica_groups_led", "Replicated partitions the shard leads.", |r| r.groups_led),
    ("ringfeed_replica_under_replicated_partitions", "Partitions led by the shard with fewer replicas in sync than replicas.", |r| r.under_replicated),
    ("ringfeed_replica_under_min_isr_partitions", "Partitions led by the shard with fewer replicas in sync than min.insync.replicas (acks=all refused).", |r| r.under_min_isr),
    ("ringfeed_replica_follower_lag_entries", "Raft entries (batches) the followers of partitions led by the shard are behind, summed.", |r| r.follower_lag_entries),
    ("ringfeed_replica_follower_lag_entries_max", "The most Raft entries (batches) one follower of a partition led by the shard is behind.", |r| r.follower_lag_entries_max),
    ("ringfeed_replica_store_bytes", "Bytes of Raft entry data the shard's partition groups hold in memory (recent entries, catch-up reads).", |r| r.store_bytes),
    ("ringfeed_replica_groups_quiet", "Replicated partitions on the shard whose Raft group is quiet (idle: ticks once in ten, its leader heartbeats every 2 s).", |r| r.groups_quiet),
];

/// The counter families of `Scrape::encode_replication` (`_total` is added on encoding).
const REPLICA_COUNTERS: &[(&str, &str, ReplicaPick)] = &[
    (
        "ringfeed_replica_leader_elections",
        "Times a replica on the shard became its partition's leader (a new term).",
        |r| r.counts.leader_elections,
    ),
    (
        "ringfeed_replica_isr_shrinks",
        "Changes of a led partition's in-sync replicas that removed some.",
        |r| r.counts.isr_shrinks,
    ),
    (
        "ringfeed_replica_isr_expands",
        "Changes of a led partition's in-sync replicas that added some.",
        |r| r.counts.isr_expands,
    ),
    (
        "ringfeed_replica_leadership_transfers",
        "Leadership transfers the shard started (controlled shutdown, leader balancing).",
        |r| r.counts.transfers_started,
    ),
    (
        "ringfeed_replica_leadership_transfers_abandoned",
        "Leadership transfers the shard gave up (not done within 500 ms).",
        |r| r.counts.transfers_aborted,
    ),
    (
        "ringfeed_replica_leadership_refused",
        "Leadership transfers to the shard refused while shutting down.",
        |r| r.leadership_refused,
    ),
    (
        "ringfeed_replica_catch_up_reads",
        "Reads of a led partition's log for a follower behind what the leader keeps in memory (up to 1 MiB each).",
        |r| r.counts.entries_fetches,
    ),
    (
        "ringfeed_replica_snapshots_installed",
        "Replicas on the shard rebuilt from their leader's first entry (too far behind its log start).",
        |r| r.counts.snapshots_installed,
    ),
    (
        "ringfeed_replica_offset_mismatches",
        "Applied entries whose end disagreed with the log's end (a defect: the high watermark is off).",
        |r| r.counts.offset_mismatches,
    ),
    (
        "ringfeed_replica_frames_dropped",
        "Frames of the shard's partition groups dropped on a full queue (Raft resends appends, not votes).",
        |r| r.frames_dropped,
    ),
    (
        "ringfeed_replica_durability_rounds",
        "Rounds of the shard's durability worker: staged Raft writes written, fdatasync'd and hard states saved.",
        |r| r.durability.rounds,
    ),
    (
        "ringfeed_replica_durability_stores_synced",
        "Partition group stores written and synced by the shard's durability rounds, summed over the rounds.",
        |r| r.durability.stores_synced,
    ),
    (
        "ringfeed_replica_groups_quieted",
        "Times a partition's Raft group on the shard went quiet (idle).",
        |r| r.groups_quieted,
    ),
    (
        "ringfeed_replica_groups_woken",
        "Times a quiet partition group on the shard was woken (a write, a vote, a peer broker's liveness change).",
        |r| r.groups_woken,
    ),
];

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        self.encode_process(&mut encoder)?;
        self.encode_requests(&mut encoder)?;
        self.encode_latencies(&mut encoder)?;
        self.encode_shards(&mut encoder)?;
        self.encode_partitions(&mut encoder)?;
        self.encode_consumer_groups(&mut encoder)?;
        self.encode_group_lag(&mut encoder)
    }
}

impl Scrape {
    fn shard_label(shard: &ShardSnapshot) -> Labels {
        vec![("shard", shard.shard.to_string())]
    }

    fn encode_process(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let missing = self.context.shard_count.saturating_sub(self.shards.len());
        gauges(
            encoder,
            "ringfeed_ready",
            "1 once every shard listens and has opened its partitions, 0 before and during shutdown.",
            [(Labels::new(), i64::from(self.context.ready))],
        )?;
        gauges(
            encoder,
            "ringfeed_scrape_shards_missing",
            "Shards that did not answer this scrape in time; their series are absent from it.",
            [(Labels::new(), missing as i64)],
        )
    }

    fn encode_requests(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let per_api = || {
            self.shards.iter().flat_map(|shard| {
                shard
                    .apis
                    .iter()
                    .map(move |api| (Self::shard_label(shard), api))
            })
        };
        let answered = per_api().flat_map(|(labels, api)| {
            api.answered.iter().map(move |(code, count)| {
                let mut labels = labels.clone();
                labels.push(("api", api.api.clone()));
                labels.push(("error", error_name(*code)));
                (labels, *count)
            })
        });
        counters(
            encoder,
            "ringfeed_requests",
            "Requests answered, by API and the error code the response carries (NONE: success).",
            answered,
        )?;
        let with_api = |(mut labels, api): (Labels, &super::snapshot::ApiSnapshot), bytes| {
            labels.push(("api", api.api.clone()));
            (labels, bytes)
        };
        counters(
            encoder,
            "ringfeed_request_bytes",
            "Bytes of request frames received (size prefix included), by API.",
            per_api().map(|entry| {
                let bytes = entry.1.request_bytes;
                with_api(entry, bytes)
            }),
        )?;
        counters(
            encoder,
            "ringfeed_response_bytes",
            "Bytes of response frames sent (size prefix included), by API.",
            per_api().map(|entry| {
                let bytes = entry.1.response_bytes;
                with_api(entry, bytes)
            }),
        )
    }

    fn encode_latencies(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let requests = self.shards.iter().flat_map(|shard| {
            TIMED_APIS
                .iter()
                .zip(&shard.request_latency)
                .map(|(api, buckets)| {
                    let mut labels = Self::shard_label(shard);
                    labels.push(("api", format!("{api:?}")));
                    (labels, buckets)
                })
        });
        histograms(
            encoder,
            "ringfeed_request_latency_seconds",
            "Time from a decoded request to its encoded response, for Produce (includes the fdatasync for acks=all), Fetch (includes the long-poll wait) and the transactional requests a producer waits on (AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn: each includes its durable write).",
            requests,
        )?;
        histograms(
            encoder,
            "ringfeed_fdatasync_latency_seconds",
            "Latency of each completed fdatasync of a partition log.",
            self.shards
                .iter()
                .map(|shard| (Self::shard_label(shard), &shard.fdatasync_latency)),
        )
    }

    fn encode_shards(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        gauges(
            encoder,
            "ringfeed_connections",
            "Client connections open.",
            self.shards
                .iter()
                .map(|shard| (Self::shard_label(shard), shard.connections_open as i64)),
        )?;
        counters(
            encoder,
            "ringfeed_connections_accepted",
            "Client connections accepted and served (refused ones are not counted).",
            self.shards
                .iter()
                .map(|shard| (Self::shard_label(shard), shard.connections_accepted)),
        )?;
        counters(
            encoder,
            "ringfeed_sasl_reauthentications",
            "SASL sessions renewed on their connection (KIP-368, connections.max.reauth.ms).",
            self.shards
                .iter()
                .map(|shard| (Self::shard_label(shard), shard.sasl_reauthentications)),
        )?;
        counters(
            encoder,
            "ringfeed_sasl_sessions_expired",
            "Connections closed because their SASL session ended without re-authentication \
             (Kafka's expired-connections-killed-count).",
            self.shards
                .iter()
                .map(|shard| (Self::shard_label(shard), shard.sasl_sessions_expired)),
        )?;
        let partitions = self.shards.iter().flat_map(|shard| {
            let state = |name: &str, count: u64| {
                let mut labels = Self::shard_label(shard);
                labels.push(("state", name.to_string()));
                (labels, count as i64)
            };
            [
                state("online", shard.partitions.len() as u64),
                state("offline", shard.partitions_offline),
            ]
        });
        gauges(
            encoder,
            "ringfeed_partitions",
            "Partitions the shard owns, online or offline (log failed to open or fenced).",
            partitions,
        )?;
        for (name, help, pick) in [
            (
                "ringfeed_cross_shard_calls_sent",
                "Calls this shard sent to other shards over the channel mesh, by kind.",
                (|count: &CrossShardCount| count.sent) as fn(&CrossShardCount) -> u64,
            ),
            (
                "ringfeed_cross_shard_calls_received",
                "Calls this shard received from other shards over the channel mesh, by kind.",
                |count| count.received,
            ),
        ] {
            let series = self.shards.iter().flat_map(|shard| {
                shard.cross_shard.iter().map(move |count| {
                    let mut labels = Self::shard_label(shard);
                    labels.push(("kind", count.kind.to_string()));
                    (labels, pick(count))
                })
            });
            counters(encoder, name, help, series)?;
        }
        self.encode_cluster_transport(encoder)?;
        self.encode_replication(encoder)?;
        self.encode_fetch(encoder)
    }

    /// The partition groups of each shard (`replica`, families in `REPLICA_GAUGES` and
    /// `REPLICA_COUNTERS`); no series on a one-node broker.
    fn encode_replication(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        for &(name, help, pick) in REPLICA_GAUGES {
            let series = self.shards.iter().filter_map(|shard| {
                let replication = shard.replication.as_ref()?;
                Some((
                    Self::shard_label(shard),
                    i64::try_from(pick(replication)).unwrap_or(i64::MAX),
                ))
            });
            gauges(encoder, name, help, series)?;
        }
        for &(name, help, pick) in REPLICA_COUNTERS {
            let series = self.shards.iter().filter_map(|shard| {
                let replication = shard.replication.as_ref()?;
                Some((Self::shard_label(shard), pick(replication)))
            });
            counters(encoder, name, help, series)?;
        }
        Ok(())
    }

    /// The broker-to-broker transport's counts, from the shard that runs it (shard 0 of a
    /// broker among several voters); no series on a one-node broker.
    fn encode_cluster_transport(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        type Pick = fn(&TransportCounts) -> u64;
        let families: [(&str, &str, Pick); 11] = [
            ("ringfeed_cluster_frames_sent", "Frames written to peer brokers.", |c| c.frames_sent),
            ("ringfeed_cluster_bytes_sent", "Bytes of frames written to peer brokers.", |c| c.bytes_sent),
            ("ringfeed_cluster_frames_received", "Frames received from peer brokers.", |c| c.frames_received),
            ("ringfeed_cluster_bytes_received", "Bytes of frames received from peer brokers.", |c| c.bytes_received),
            ("ringfeed_cluster_connections_opened", "Connections opened to peer brokers (reconnects included).", |c| c.connections_opened),
            ("ringfeed_cluster_connection_failures", "Connection attempts to peer brokers that failed, and connections that broke.", |c| c.connection_failures),
            ("ringfeed_cluster_frames_dropped_queue_full", "Frames dropped because their peer's send queue was full (Raft retries).", |c| c.frames_dropped_queue_full),
            ("ringfeed_cluster_frames_dropped_send_failed", "Frames lost because their connection broke while they were written.", |c| c.frames_dropped_send_failed),
            ("ringfeed_cluster_keepalives_sent", "Empty frames sent to a peer broker after 200 ms with nothing else for it (liveness; not in frames_sent).", |c| c.keepalives_sent),
            ("ringfeed_cluster_keepalives_received", "Empty frames received from peer brokers (liveness; not in frames_received).", |c| c.keepalives_received),
            ("ringfeed_cluster_connections_refused", "Inbound peer connections closed for a bad or misaddressed frame, above the connection limit, or (TLS between brokers) for a failed handshake or a certificate that is not a broker's.", |c| c.connections_refused_bad_frame + c.connections_refused_too_many + c.connections_refused_unauthenticated),
        ];
        for (name, help, pick) in families {
            let series = self.shards.iter().filter_map(|shard| {
                let counts = shard.cluster_transport.as_ref()?;
                Some((Self::shard_label(shard), pick(counts)))
            });
            counters(encoder, name, help, series)?;
        }
        let gauge_families: [(&str, &str, Pick); 2] = [
            (
                "ringfeed_cluster_send_queue_bytes",
                "Bytes of frames waiting in the peers' send queues now.",
                |c| c.queued_bytes,
            ),
            (
                "ringfeed_cluster_peers_live",
                "Peer brokers heard from (any frame, keepalives included) within the last second.",
                |c| c.peers_live,
            ),
        ];
        for (name, help, pick) in gauge_families {
            let series = self.shards.iter().filter_map(|shard| {
                let counts = shard.cluster_transport.as_ref()?;
                Some((
                    Self::shard_label(shard),
                    i64::try_from(pick(counts)).unwrap_or(i64::MAX),
                ))
            });
            gauges(encoder, name, help, series)?;
        }
        Ok(())
    }

    fn encode_fetch(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let per_shard = |value: fn(&ShardSnapshot) -> u64| {
            self.shards
                .iter()
                .map(move |shard| (Self::shard_label(shard), value(shard) as i64))
        };
        gauges(
            encoder,
            "ringfeed_fetch_budget_reserved_bytes",
            "Bytes of the shard's fetch budget reserved by fetches reading now.",
            per_shard(|shard| shard.fetch_budget_reserved_bytes),
        )?;
        gauges(
            encoder,
            "ringfeed_fetch_budget_reserved_bytes_peak",
            "The most bytes of the shard's fetch budget reserved at once since start.",
            per_shard(|shard| shard.fetch_budget_reserved_bytes_peak),
        )?;
        gauges(
            encoder,
            "ringfeed_tail_cache_bytes",
            "Bytes of recent batches the shard's partitions keep in memory for tail reads.",
            per_shard(|shard| shard.tail_cache.bytes),
        )?;
        counters(
            encoder,
            "ringfeed_tail_cache_shard_evictions",
            "Batches the shard's tail caches dropped because the shard's budget was full.",
            self.shards.iter().map(|shard| {
                (
                    Self::shard_label(shard),
                    shard.tail_cache.evicted_for_shard_budget,
                )
            }),
        )?;
        gauges(
            encoder,
            "ringfeed_fetch_waits_parked",
            "Fetch long-poll waits parked on the shard's partitions (its own fetches' and other shards').",
            per_shard(|shard| shard.fetch_waits_parked),
        )?;
        counters(
            encoder,
            "ringfeed_cleaner_passes",
            "Log cleaner passes finished (compacted topics).",
            self.shards
                .iter()
                .map(|shard| (Self::shard_label(shard), shard.cleaner_passes)),
        )?;
        counters(
            encoder,
            "ringfeed_cleaner_bytes_cleaned",
            "Bytes of segments the log cleaner rewrote (their size before cleaning).",
            self.shards
                .iter()
                .map(|shard| (Self::shard_label(shard), shard.cleaner_bytes_cleaned)),
        )?;
        gauges(
            encoder,
            "ringfeed_cleaner_last_pass_timestamp_ms",
            "When the log cleaner last finished a pass (Unix ms; 0: never).",
            per_shard(|shard| shard.cleaner_last_pass_ms),
        )?;
        gauges(
            encoder,
            "ringfeed_cleaner_max_dirty_percent",
            "The largest dirty share of a compacted log's cleanable bytes on the shard at the \
             cleaner's last look (Kafka's max-dirty-percent).",
            per_shard(|shard| shard.cleaner_max_dirty_percent),
        )?;
        counters(
            encoder,
            "ringfeed_fetch_waits_refused",
            "Fetch long-poll waits refused because the shard had its maximum parked.",
            self.shards
                .iter()
                .map(|shard| (Self::shard_label(shard), shard.fetch_waits_refused)),
        )?;
        self.encode_fetch_sessions(encoder)
    }

    /// The incremental fetch sessions (KIP-227) of each shard.
    fn encode_fetch_sessions(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let per_shard = |value: fn(&ShardSnapshot) -> u64| {
            self.shards
                .iter()
                .map(move |shard| (Self::shard_label(shard), value(shard) as i64))
        };
        let counted = |value: fn(&ShardSnapshot) -> u64| {
            self.shards
                .iter()
                .map(move |shard| (Self::shard_label(shard), value(shard)))
        };
        gauges(
            encoder,
            "ringfeed_fetch_sessions",
            "Incremental fetch sessions the shard keeps.",
            per_shard(|shard| shard.fetch_sessions),
        )?;
        gauges(
            encoder,
            "ringfeed_fetch_session_partitions",
            "Partitions cached in the shard's incremental fetch sessions.",
            per_shard(|shard| shard.fetch_session_partitions),
        )?;
        counters(
            encoder,
            "ringfeed_fetch_sessions_created",
            "Incremental fetch sessions created by full fetches (epoch 0).",
            counted(|shard| shard.fetch_session_counters.created),
        )?;
        counters(
            encoder,
            "ringfeed_fetch_sessions_evicted",
            "Incremental fetch sessions evicted to make room for a new one.",
            counted(|shard| shard.fetch_session_counters.evicted),
        )?;
        counters(
            encoder,
            "ringfeed_fetch_sessions_refused",
            "Full fetches that asked for a session and got none (the cache was full).",
            counted(|shard| shard.fetch_session_counters.refused),
        )?;
        counters(
            encoder,
            "ringfeed_fetch_session_incremental_requests",
            "Incremental fetches accepted (epoch > 0, known session, expected epoch).",
            counted(|shard| shard.fetch_session_counters.incremental),
        )?;
        counters(
            encoder,
            "ringfeed_fetch_session_errors",
            "Incremental fetches answered FETCH_SESSION_ID_NOT_FOUND or INVALID_FETCH_SESSION_EPOCH.",
            counted(|shard| shard.fetch_session_counters.errors),
        )
    }

    /// Every online partition, by topic and partition, at most `partition_series_max`.
    fn exported_partitions(&self) -> (Vec<(usize, &PartitionSnapshot)>, usize) {
        let mut all: Vec<(usize, &PartitionSnapshot)> = self
            .shards
            .iter()
            .flat_map(|shard| shard.partitions.iter().map(|p| (shard.shard, p)))
            .collect();
        all.sort_unstable_by(|(_, a), (_, b)| {
            (&a.topic, a.partition).cmp(&(&b.topic, b.partition))
        });
        let omitted = all.len().saturating_sub(self.context.partition_series_max);
        all.truncate(self.context.partition_series_max);
        (all, omitted)
    }

    fn encode_partitions(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let (exported, omitted) = self.exported_partitions();
        let labels = |shard: usize, partition: &PartitionSnapshot| -> Labels {
            vec![
                ("shard", shard.to_string()),
                ("topic", partition.topic.clone()),
                ("partition", partition.partition.to_string()),
            ]
        };
        let families: [(&str, &str, PartitionGauge); 3] = [
            (
                "ringfeed_partition_size_bytes",
                "Bytes of record batches in the partition's segments.",
                |p| p.size_bytes as i64,
            ),
            (
                "ringfeed_partition_log_start_offset",
                "First offset still in the partition's log (moves with retention and DeleteRecords).",
                |p| p.log_start_offset,
            ),
            (
                "ringfeed_partition_high_watermark",
                "Offset after the last record readable by consumers.",
                |p| p.high_watermark,
            ),
        ];
        for (name, help, pick) in families {
            let series = exported
                .iter()
                .map(|(shard, partition)| (labels(*shard, partition), pick(partition)));
            gauges(encoder, name, help, series)?;
        }
        gauges(
            encoder,
            "ringfeed_partition_series_omitted",
            "Partitions left out of the per-partition series by the cap (Limits::metrics_partition_series_max).",
            [(Labels::new(), omitted as i64)],
        )
    }

    /// KIP-848 consumer groups, per coordinator shard.
    fn encode_consumer_groups(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        counters(
            encoder,
            "ringfeed_consumer_group_rebalances",
            "Group epoch bumps of the consumer-protocol (KIP-848) groups the shard coordinates.",
            self.shards
                .iter()
                .map(|shard| (Self::shard_label(shard), shard.consumer_group_rebalances)),
        )?;
        histograms(
            encoder,
            "ringfeed_consumer_group_reconciliation_seconds",
            "Time from a new target assignment of a consumer-protocol group to a member reaching it (its epoch at the target's, nothing left to revoke or wait for).",
            self.shards.iter().map(|shard| {
                (
                    Self::shard_label(shard),
                    &shard.consumer_group_reconciliation,
                )
            }),
        )
    }

    fn encode_group_lag(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let high_watermarks: HashMap<(&str, i32), i64> = self
            .shards
            .iter()
            .flat_map(|shard| &shard.partitions)
            .map(|p| ((p.topic.as_str(), p.partition), p.high_watermark))
            .collect();
        let mut committed: Vec<_> = self
            .shards
            .iter()
            .flat_map(|shard| &shard.committed_offsets)
            .collect();
        committed.sort_unstable_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        let held: u64 = self
            .shards
            .iter()
            .map(|shard| shard.committed_offsets_total)
            .sum();
        committed.truncate(self.context.group_lag_series_max);
        let omitted = held.saturating_sub(committed.len() as u64);
        let series = || {
            committed.iter().map(|offset| {
                let labels: Labels = vec![
                    ("group", offset.group.clone()),
                    ("topic", offset.topic.clone()),
                    ("partition", offset.partition.to_string()),
                ];
                (labels, *offset)
            })
        };
        gauges(
            encoder,
            "ringfeed_consumer_group_committed_offset",
            "The group's committed offset on the partition.",
            series().map(|(labels, offset)| (labels, offset.offset)),
        )?;
        let lags = series().filter_map(|(labels, offset)| {
            let high_watermark = high_watermarks.get(&(offset.topic.as_str(), offset.partition))?;
            Some((labels, (high_watermark - offset.offset).max(0)))
        });
        gauges(
            encoder,
            "ringfeed_consumer_group_lag",
            "Records between the group's committed offset and the partition's high watermark (absent when the partition is gone).",
            lags,
        )?;
        gauges(
            encoder,
            "ringfeed_consumer_group_lag_series_omitted",
            "Committed offsets left out of the group series by the cap (Limits::metrics_group_lag_series_max).",
            [(Labels::new(), omitted as i64)],
        )
    }
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, u64, f64>(&value, None)?;
    }
    Ok(())
}

fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, i64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

fn histograms<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, &'a HistogramBuckets)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, histogram) in series {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKET_BOUNDS_SECONDS
            .iter()
            .copied()
            .zip(histogram.counts.iter().copied().chain(std::iter::repeat(0)))
            .collect();
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(
                histogram.sum_seconds,
                histogram.count,
                &buckets,
                None,
            )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::snapshot::{ApiSnapshot, CommittedOffsetSnapshot};
    use kafka_protocol::messages::ApiKey;

    /// The lines of one metric.
    fn lines_of<'a>(text: &'a str, metric: &'a str) -> impl Iterator<Item = &'a str> {
        text.lines().filter(move |line| line.starts_with(metric))
    }

    fn context() -> ScrapeContext {
        ScrapeContext {
            shard_count: 2,
            ready: true,
            partition_series_max: 2,
            group_lag_series_max: 10,
        }
    }

    fn partition(topic: &str, partition: i32, high_watermark: i64) -> PartitionSnapshot {
        PartitionSnapshot {
            topic: topic.into(),
            partition,
            size_bytes: 4096,
            log_start_offset: 0,
            high_watermark,
        }
    }

    fn shard() -> ShardSnapshot {
        let mut latency = crate::metrics::LatencyHistogram::default();
        latency.record(std::time::Duration::from_micros(700));
        ShardSnapshot {
            shard: 1,
            apis: vec![ApiSnapshot {
                api: "Produce".into(),
                answered: vec![(0, 5), (3, 1)],
                request_bytes: 600,
                response_bytes: 300,
            }],
            request_latency: TIMED_APIS
                .iter()
                .map(|api| {
                    if *api == ApiKey::Produce {
                        latency.buckets()
                    } else {
                        HistogramBuckets::default()
                    }
                })
                .collect(),
            partitions: vec![
                partition("orders", 1, 40),
                partition("orders", 0, 10),
                partition("zeta", 0, 1),
            ],
            committed_offsets: vec![CommittedOffsetSnapshot {
                group: "billing".into(),
                topic: "orders".into(),
                partition: 0,
                offset: 7,
            }],
            committed_offsets_total: 1,
            ..ShardSnapshot::default()
        }
    }

    #[test]
    fn requests_are_exported_by_shard_api_and_error_name() {
        let text = encode(context(), vec![shard()]);
        let requests: Vec<&str> = lines_of(&text, "ringfeed_requests_total{").collect();
        assert_eq!(
            requests,
            [
                r#"ringfeed_requests_total{shard="1",api="Produce",error="NONE"} 5"#,
                r#"ringfeed_requests_total{shard="1",api="Produce",error="UNKNOWN_TOPIC_OR_PARTITION"} 1"#,
            ]
        );
        assert!(
            text.contains("# TYPE ringfeed_requests_total counter"),
            "{text}"
        );
        assert!(text.contains(r#"ringfeed_request_bytes_total{shard="1",api="Produce"} 600"#));
        assert!(
            text.contains("ringfeed_scrape_shards_missing 1"),
            "one of two shards answered"
        );
    }

    #[test]
    fn latency_histograms_have_cumulative_buckets_sum_and_count() {
        let text = encode(context(), vec![shard()]);
        let produce = r#"ringfeed_request_latency_seconds_bucket{shard="1",api="Produce",le="#;
        assert!(
            text.contains(&format!(r#"{produce}"0.0005"}} 0"#)),
            "{text}"
        );
        assert!(text.contains(&format!(r#"{produce}"0.001"}} 1"#)), "{text}");
        assert!(text.contains(&format!(r#"{produce}"+Inf"}} 1"#)), "{text}");
        assert!(
            text.contains(r#"ringfeed_request_latency_seconds_count{shard="1",api="Produce"} 1"#)
        );
        assert!(text
            .contains(r#"ringfeed_request_latency_seconds_sum{shard="1",api="Produce"} 0.0007"#));
    }

    #[test]
    fn partition_series_are_capped_in_name_order_and_the_rest_counted() {
        let text = encode(context(), vec![shard()]);
        let sizes: Vec<&str> = lines_of(&text, "ringfeed_partition_high_watermark{").collect();
        assert_eq!(
            sizes,
            [
                r#"ringfeed_partition_high_watermark{shard="1",topic="orders",partition="0"} 10"#,
                r#"ringfeed_partition_high_watermark{shard="1",topic="orders",partition="1"} 40"#,
            ]
        );
        assert!(text.contains("ringfeed_partition_series_omitted 1"));
    }

    #[test]
    fn group_lag_is_the_high_watermark_minus_the_committed_offset() {
        let text = encode(context(), vec![shard()]);
        assert!(
            text.contains(
                r#"ringfeed_consumer_group_lag{group="billing",topic="orders",partition="0"} 3"#
            ),
            "{text}"
        );
        assert!(text.contains("ringfeed_consumer_group_lag_series_omitted 0"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut snapshot = shard();
        snapshot.committed_offsets[0].group = "a\"b\\c\nd".into();
        let text = encode(context(), vec![snapshot]);
        assert!(
            text.contains(r#"group="a\"b\\c\nd""#),
            "quotes, backslashes and newlines in a group id are escaped: {text}"
        );
    }
}
