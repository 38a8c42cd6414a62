//! One place for every bound the broker enforces. Pools and budgets are sized from
//! these numbers at start-up; nothing on a request path grows without a limit.

use std::time::Duration;

/// Every limit the broker enforces, per process unless the name says per shard or per
/// connection. Defaults follow Kafka's where Kafka has one.
#[derive(Clone, Debug)]
pub struct Limits {
    /// `socket.request.max.bytes`: a frame whose declared size exceeds this closes the
    /// connection before a single byte of it is allocated.
    pub request_frame_bytes_max: usize,
    /// `queued.max.request.bytes`, per shard (Kafka's is per broker): bytes of request
    /// frames a shard holds in memory at once (read but not yet answered).
    /// A connection waits for budget before it allocates the next frame body, so in-flight
    /// produce bytes per shard are bounded by this, whatever the number of connections.
    /// 256 MiB = room for two maximum-size frames plus many small ones.
    pub shard_inflight_request_bytes_max: usize,
    /// Requests one connection may have decoded but not yet answered (pipelining depth).
    /// Kafka clients default to 5 in flight; 64 leaves room for tools that pipeline harder.
    pub connection_inflight_requests_max: usize,
    /// `max.connections`: open client connections across all shards (one shared counter,
    /// touched only at accept and close). Further accepts are closed at once. Each
    /// connection holds two descriptors, so start-up lowers this to what `RLIMIT_NOFILE`
    /// allows, with a warning.
    pub connections_max: usize,
    /// `max.connections.per.ip`: open connections from one client address, across shards.
    pub connections_per_ip_max: usize,
    /// `connections.max.idle.ms`: a connection that sends nothing for this long is closed.
    /// Any received byte counts as activity, as in Kafka, so it does not catch a client that
    /// trickles a frame; `request_read_timeout` does.
    pub connection_idle_max: Duration,
    /// A request frame must arrive whole within this long of its first byte, or the
    /// connection is closed. Kafka has no such bound and relies on the idle timeout, which
    /// a client trickling one byte at a time never triggers while it holds a share of
    /// `shard_inflight_request_bytes_max` for its declared size. 60 s lets a 100 MiB frame
    /// arrive over a 14 Mbit/s link.
    pub request_read_timeout: Duration,
    /// `message.max.bytes` default for topics that do not set `max.message.bytes`.
    pub message_bytes_max_default: usize,
    /// Upper bound for a Fetch response, whatever `max_bytes` the client asks for.
    pub fetch_response_bytes_max: usize,
    /// Fetch response bytes a shard reads and assembles at once. A fetch round reserves,
    /// for the partitions that have data only, the sum of their partition `max_bytes`
    /// (capped by the request's `max_bytes` and `fetch_response_bytes_max`) while it reads,
    /// then keeps the bytes actually read until its response is assembled; a long poll
    /// holds nothing. So 256 MiB serves four maximum-size responses at once, or about 256
    /// partition reads in flight at Kafka's default 1 MiB `max.partition.fetch.bytes`.
    pub shard_fetch_bytes_max: usize,
    /// Upper bound on a Fetch long poll, whatever `max_wait_ms` the client asks for.
    pub fetch_wait_max: Duration,
    /// `ringfeed.fetch.waits.parked.max`: fetch long-poll waits parked on one shard's
    /// partitions at once (one per partition a parked fetch asks for, whichever shard the
    /// fetch runs on). Past it a wait is refused (counted in
    /// `ringfeed_fetch_waits_refused_total`, logged at most every few seconds) and that
    /// partition's data reaches the fetch at its `max_wait_ms`, not at once. A parked wait
    /// costs its task and timer, a few KiB (the callee's call future alone is about 2 KiB),
    /// so 10,000 bound them to tens of MiB per shard; that is 100 consumers each long-polling
    /// 100 of the shard's partitions. Waits end with their fetch (cancelled over the mesh), so
    /// only that many concurrent long polls reach the bound.
    pub shard_fetch_waits_parked_max: usize,
    /// `max.incremental.fetch.session.cache.slots`: incremental fetch sessions (KIP-227) one
    /// shard keeps (Kafka's bound is per broker; a session lives on the shard of the
    /// connection that created it). Past it a new session displaces one by Kafka's eviction
    /// rules or is not created (`fetch_sessions`).
    pub shard_fetch_session_slots_max: usize,
    /// Partitions cached in all of one shard's fetch sessions. A cached partition costs
    /// about 200 bytes (its request parameters, last offsets, two map entries), so 200,000
    /// bound a shard's sessions to about 40 MiB: 1,000 sessions of 200 partitions each.
    pub shard_fetch_session_partitions_max: usize,
    /// Partitions a single topic may have (`CreateTopics` / `CreatePartitions` beyond this get
    /// `INVALID_PARTITIONS`).
    pub topic_partitions_max: i32,
    /// Topics the cluster may hold.
    pub topics_max: usize,
    /// Slots in each channel of the cross-shard mesh. A full channel makes the sender wait,
    /// which is the back-pressure between shards.
    pub mesh_channel_slots: usize,
    /// How often each shard applies retention to the partitions it owns
    /// (`log.retention.check.interval.ms`).
    pub retention_check_interval: Duration,
    /// A partition log unused this long goes dormant (`ringfeed.log.dormant.after.ms`; the
    /// storage crate's `dormancy.rs`).
    pub log_dormant_after: Duration,
    /// Bytes of batches the tail caches of one shard's partitions hold together
    /// (`ringfeed.log.tail.cache.shard.bytes`; the storage crate's `cache.rs`).
    pub tail_cache_shard_bytes: usize,
    /// The log cleaner (`log.cleaner.*`): whether it runs, its IO budget per shard (bytes
    /// read and written per second), its key map per pass, and its sleep when idle.
    pub cleaner_enabled: bool,
    pub cleaner_io_bytes_per_second: u64,
    pub cleaner_map_bytes: usize,
    pub cleaner_backoff: Duration,
    /// `group.initial.rebalance.delay.ms`: the first rebalance of an empty group waits this
    /// long for more members, so consumers started together share one generation.
    pub group_initial_rebalance_delay: Duration,
    /// `group.min.session.timeout.ms` / `group.max.session.timeout.ms`: the session timeouts
    /// `JoinGroup` accepts (others are answered `INVALID_SESSION_TIMEOUT`).
    pub group_session_timeout_min: Duration,
    pub group_session_timeout_max: Duration,
    /// `group.consumer.session.timeout.ms` / `group.consumer.heartbeat.interval.ms`: the
    /// session of a consumer-protocol member (KIP-848; the broker, not the client, sets it)
    /// and how often its client is told to heartbeat.
    pub group_consumer_session_timeout: Duration,
    pub group_consumer_heartbeat_interval: Duration,
    /// `group.consumer.max.size`: members a consumer-protocol group may hold (at most
    /// `groups::GROUP_SIZE_MAX`).
    pub group_consumer_max_size: usize,
    /// `group.consumer.migration.policy`: bidirectional, upgrade, downgrade or disabled —
    /// which way a non-empty group may move between the classic and the consumer protocol
    /// (KIP-848's online migration; `groups::MigrationPolicy`).
    pub group_consumer_migration_policy: &'static str,
    /// `offsets.retention.minutes`: committed offsets of a group without members are
    /// deleted this long after it became empty (or after the commit, for simple consumers).
    pub offsets_retention: Duration,
    /// Records appended to a `__consumer_offsets` partition before it is checkpointed (its
    /// live offsets appended again, everything older deleted), bounding replay at start.
    pub offsets_checkpoint_records: usize,
    /// The largest step of disk space fallocated ahead of each partition's active segment,
    /// so appends change no size metadata (Redpanda's `segment_fallocation_step`). Steps
    /// adapt to each partition's write rate from 256 KiB up to this
    /// (`ringfeed_storage::preallocation`), so an idle partition holds 256 KiB unwritten.
    pub segment_preallocate_bytes: u64,
    /// Per-partition series (size, log start, high watermark) one `/metrics` scrape exports,
    /// in topic/partition order; the rest are counted in `ringfeed_partition_series_omitted`.
    /// 10,000 partitions × 3 series keeps a scrape near 3 MB.
    pub metrics_partition_series_max: usize,
    /// (group, topic, partition) series of consumer-group lag one scrape exports; the rest
    /// are counted in `ringfeed_consumer_group_lag_series_omitted`.
    pub metrics_group_lag_series_max: usize,
    /// Bytes of one admin HTTP request (request line, headers and body); a larger one is
    /// answered 413/431 and closed. The admin API takes no large bodies (a log filter).
    pub admin_request_bytes_max: usize,
    /// How long the admin listener gives one connection to send its request and take its
    /// response. Connections are served one at a time on the admin thread, so this bounds
    /// how long a slow client can hold the listener.
    pub admin_connection_time_max: Duration,
    /// Connections the kernel queues for the admin listener while it serves one (listen
    /// backlog); further connection attempts are refused by the kernel.
    pub admin_pending_connections_max: u32,
    /// `transaction.max.timeout.ms`: an `InitProducerId` asking a longer
    /// `transaction.timeout.ms` gets `INVALID_TRANSACTION_TIMEOUT` (Kafka's default 15 min).
    pub transaction_max_timeout: Duration,
    /// `transactional.id.expiration.ms`: an id with no transaction in progress and no
    /// change for this long is forgotten (Kafka's default 7 days).
    pub transactional_id_expiration: Duration,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`: how often each
    /// shard's coordinator looks for transactions past their timeout and idle ids (Kafka's
    /// default 10 s).
    pub transaction_abort_check_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_frame_bytes_max: 100 * 1024 * 1024,
            shard_inflight_request_bytes_max: 256 * 1024 * 1024,
            connection_inflight_requests_max: 64,
            connections_max: 100_000,
            connections_per_ip_max: 100_000,
            connection_idle_max: Duration::from_secs(600),
            request_read_timeout: Duration::from_secs(60),
            message_bytes_max_default: 1024 * 1024 + 12,
            fetch_response_bytes_max: 64 * 1024 * 1024,
            shard_fetch_bytes_max: 256 * 1024 * 1024,
            fetch_wait_max: Duration::from_secs(30),
            shard_fetch_waits_parked_max: 10_000,
            shard_fetch_session_slots_max: 1000,
            shard_fetch_session_partitions_max: 200_000,
            topic_partitions_max: 10_000,
            topics_max: 100_000,
            mesh_channel_slots: 1024,
            retention_check_interval: Duration::from_secs(300),
            log_dormant_after: Duration::from_secs(30),
            tail_cache_shard_bytes: 32 << 20,
            cleaner_enabled: true,
            cleaner_io_bytes_per_second: 50 << 20,
            cleaner_map_bytes: 16 << 20,
            cleaner_backoff: Duration::from_secs(15),
            group_initial_rebalance_delay: Duration::from_secs(3),
            group_session_timeout_min: Duration::from_secs(6),
            group_session_timeout_max: Duration::from_secs(30 * 60),
            group_consumer_session_timeout: Duration::from_secs(45),
            group_consumer_max_size: 1000,
            group_consumer_migration_policy: "bidirectional",
            group_consumer_heartbeat_interval: Duration::from_secs(5),
            offsets_retention: Duration::from_secs(7 * 24 * 60 * 60),
            offsets_checkpoint_records: 100_000,
            segment_preallocate_bytes: 32 * 1024 * 1024,
            metrics_partition_series_max: 10_000,
            metrics_group_lag_series_max: 10_000,
            admin_request_bytes_max: 16 * 1024,
            admin_connection_time_max: Duration::from_secs(5),
            admin_pending_connections_max: 16,
            transaction_max_timeout: Duration::from_secs(15 * 60),
            transactional_id_expiration: Duration::from_secs(7 * 24 * 60 * 60),
            transaction_abort_check_interval: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// Checks relations between limits that would make the broker unusable.
    pub fn validate(&self) -> Result<(), String> {
        if self.request_frame_bytes_max > self.shard_inflight_request_bytes_max {
            return Err(format!(
                "the in-flight request budget per shard ({} bytes) must hold at least one maximum-size frame ({} bytes)",
                self.shard_inflight_request_bytes_max, self.request_frame_bytes_max
            ));
        }
        if self.fetch_response_bytes_max > self.shard_fetch_bytes_max {
            return Err(format!(
                "the fetch budget per shard ({} bytes) must hold at least one maximum fetch response ({} bytes)",
                self.shard_fetch_bytes_max, self.fetch_response_bytes_max
            ));
        }
        if self.segment_preallocate_bytes % 4096 != 0 {
            return Err(format!(
                "the segment preallocation step ({} bytes) must be a multiple of 4096",
                self.segment_preallocate_bytes
            ));
        }
        if self.connections_max == 0 || self.connections_per_ip_max == 0 {
            return Err("max.connections and max.connections.per.ip must be at least 1".into());
        }
        if self.connection_idle_max.is_zero() || self.request_read_timeout.is_zero() {
            return Err("the idle and request read timeouts must be above zero".into());
        }
        if self.group_session_timeout_min > self.group_session_timeout_max {
            return Err(format!(
                "group.min.session.timeout.ms ({} ms) must not exceed group.max.session.timeout.ms ({} ms)",
                self.group_session_timeout_min.as_millis(),
                self.group_session_timeout_max.as_millis()
            ));
        }
        if self.request_frame_bytes_max < 64 {
            return Err("the maximum request frame must be at least 64 bytes".into());
        }
        Ok(())
    }
}
