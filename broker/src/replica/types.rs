//! What a shard hands the replica manager and what it gets back. Plain data, `Send`.

use bytes::Bytes;
use uuid::Uuid;

use crate::metadata::TopicPartition;
use crate::storage::LogConfig;

/// One partition replica placed on this shard, as the shard's metadata apply sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostedReplica {
    pub topic: TopicPartition,
    /// A recreated topic is a new group (and a new log).
    pub topic_id: Uuid,
    /// The partition's Raft group (`TopicMetadata::group_id`): the same on every replica.
    pub group_id: u64,
    /// The brokers (`node.id`) holding a replica, this one included: the group's voters.
    pub voters: Vec<u64>,
    /// Brokers hosting a replica a move in progress added (learners of the group until it
    /// ends); a replica that opens the group anew starts with these as learners
    /// (`ringfeed_replication::driver::membership`).
    pub learners: Vec<u64>,
    /// The voters a move in progress takes the group to (empty: none); the group's leader
    /// drives the change.
    pub target: Vec<u64>,
    /// The topic's log settings.
    pub config: LogConfig,
    /// `min.insync.replicas`: an acks=all produce needs this many replicas in sync.
    pub min_insync_replicas: u32,
}

/// A change of a local group's leadership, for the controller to commit: the controller's
/// own report type (`controller::leadership`). The leader reports its term and in-sync set
/// whenever one changes; a replica that stops leading reports the leader it knows (0: none)
/// with an empty in-sync set. The consumer keeps, per group, the report of the highest term
/// (of equal terms, the latest).
pub use crate::controller::leadership::LeadershipChange;

/// A produce call's answer on a replicated partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaProduce {
    pub error_code: i16,
    /// The offset the log stamped on the call's first batch; -1 on an error (and acks=0).
    pub base_offset: i64,
    pub log_start_offset: i64,
}

/// A fetch's answer on a replicated partition: batches below the high watermark only
/// (`read_committed`: below the last stable offset).
#[derive(Debug, Default)]
pub struct ReplicaFetch {
    pub error_code: i16,
    /// The Kafka end offset of the committed prefix.
    pub high_watermark: i64,
    /// Below it every committed transaction is complete (`replica::txns`).
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    pub batches: Vec<Bytes>,
    /// `read_committed`: the aborted transactions overlapping the batches, as (producer id,
    /// first offset).
    pub aborted_transactions: Vec<(i64, i64)>,
}

/// A list-offsets answer on a replicated partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaOffset {
    pub error_code: i16,
    pub offset: i64,
    pub timestamp_ms: i64,
}

/// What an internal topic's coordinator (groups, transactions) may do on a replicated
/// partition of that topic hosted here (`ReplicaManager::coordinator_role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordinatorRole {
    /// Another replica leads, or none does: `NOT_COORDINATOR`.
    NotLeader,
    /// This replica leads in `term`. `caught_up`: it committed an entry of its term and
    /// applied everything committed, so a replay up to the committed end sees every entry
    /// of earlier terms; until then a coordinator that has not loaded the partition in this
    /// term answers `COORDINATOR_LOAD_IN_PROGRESS` (retriable).
    Leader { term: u64, caught_up: bool },
}
