//! The cluster metadata every shard reads: topics, their ids, partition → shard placement
//! and effective configs. Built by the controller on shard 0 and handed to every shard as
//! an immutable `Arc` snapshot; a shard swaps its pointer when a new one arrives and never
//! takes a lock to read it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use crate::topic_config::TopicConfig;

/// A topic-partition, the unit of ownership. Cheap to clone and `Send`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// One topic as every shard sees it.
#[derive(Debug)]
pub struct TopicMetadata {
    pub name: Arc<str>,
    /// The same name as shared bytes: a Fetch or Produce by topic id (v13+) names the topic
    /// with a reference count, not a new string per topic per request.
    pub name_bytes: Bytes,
    pub id: Uuid,
    /// `partition_shards[p]` is the shard of THIS broker a request for partition `p` is
    /// routed to: the shard of this broker's replica (of the first replica when this broker
    /// holds none; such a request finds no log there and is refused).
    pub partition_shards: Vec<usize>,
    /// Replicas, leadership and Raft group of each partition, by partition index. Same
    /// length as `partition_shards`.
    pub partitions: Vec<PartitionMetadata>,
    /// The overrides as set by the user (what `DescribeConfigs` reports as topic-level).
    pub overrides: BTreeMap<String, String>,
    pub config: TopicConfig,
}

/// One partition as the controller placed it and as its leader last reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    /// Node ids of the replicas; the first is the preferred leader.
    pub replicas: Vec<i32>,
    /// The partition's Raft group (unique in the cluster's life).
    pub group_id: u64,
    /// Node id of the leader, -1 none (no live replica, or the reported leader fenced).
    pub leader: i32,
    /// The leader's epoch (its Raft term; 0 before any leader was reported).
    pub leader_epoch: i32,
    /// In-sync replicas, by node id (fenced brokers left out).
    pub isr: Vec<i32>,
    /// Replicas on fenced brokers.
    pub offline_replicas: Vec<i32>,
    /// This broker holds one of the replicas, or a replica a move added (on
    /// `partition_shards[p]`).
    pub hosted_here: bool,
    /// A move in progress (`controller::reassignment`): the voters its leader moves the
    /// group to (empty: no move), and the brokers hosting a replica for it beyond
    /// `replicas` (they open the group as learners).
    pub target: Vec<i32>,
    pub learners: Vec<i32>,
}

impl TopicMetadata {
    pub fn partition_count(&self) -> i32 {
        self.partition_shards.len() as i32
    }

    fn partition(&self, partition: i32) -> Option<&PartitionMetadata> {
        self.partitions.get(usize::try_from(partition).ok()?)
    }

    /// The node ids of `partition`'s replicas, the preferred leader first (empty for a
    /// partition that does not exist).
    pub fn replicas(&self, partition: i32) -> &[i32] {
        self.partition(partition)
            .map_or(&[], |partition| partition.replicas.as_slice())
    }

    /// `partition`'s Raft group id (0, the controller's, for a partition that does not
    /// exist).
    /// `partition`'s move in progress: (target voters, brokers hosting a learner for it);
    /// both empty when it is not moving.
    pub fn moving(&self, partition: i32) -> (&[i32], &[i32]) {
        self.partition(partition).map_or((&[], &[]), |partition| {
            (partition.target.as_slice(), partition.learners.as_slice())
        })
    }

    pub fn group_id(&self, partition: i32) -> u64 {
        self.partition(partition)
            .map_or(0, |partition| partition.group_id)
    }

    /// `partition`'s leader, -1 when it has none (or does not exist).
    pub fn leader(&self, partition: i32) -> i32 {
        self.partition(partition)
            .map_or(-1, |partition| partition.leader)
    }

    /// The current leader epoch of `partition`: what `Metadata` (v7+) and
    /// `DescribeTopicPartitions` answer, what the `current_leader_epoch` checks of Fetch,
    /// `ListOffsets` and `OffsetForLeaderEpoch` compare with, and the epoch of the leader that
    /// Produce and Fetch name when they refuse (KIP-951). The one place the epoch is read, so
    /// they all agree: the epoch the controller recorded from the leader's report (its Raft
    /// term), 0 until a leader reported. -1 for a partition the topic does not have.
    pub fn leader_epoch(&self, partition: i32) -> i32 {
        self.partition(partition)
            .map_or(NO_LEADER_EPOCH, |partition| partition.leader_epoch)
    }

    /// `partition`'s in-sync replicas.
    pub fn isr(&self, partition: i32) -> &[i32] {
        self.partition(partition)
            .map_or(&[], |partition| partition.isr.as_slice())
    }

    /// `partition`'s replicas on fenced brokers.
    pub fn offline_replicas(&self, partition: i32) -> &[i32] {
        self.partition(partition)
            .map_or(&[], |partition| partition.offline_replicas.as_slice())
    }

    /// Whether this broker holds a replica of `partition`.
    pub fn hosted_here(&self, partition: i32) -> bool {
        self.partition(partition)
            .is_some_and(|partition| partition.hosted_here)
    }
}

/// A partition as clients are told about it (`MetadataSnapshot::describe_partition`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    pub error_code: i16,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline_replicas: Vec<i32>,
}

/// Kafka's check of a request's `current_leader_epoch` against the partition's `current`
/// epoch (`Partition.checkCurrentLeaderEpoch`): -1 asks for no check; an older epoch is
/// `FENCED_LEADER_EPOCH` (the client's metadata is stale), a newer one
/// `UNKNOWN_LEADER_EPOCH` (this broker's is). `NONE` when they agree.
pub fn current_leader_epoch_error(requested: i32, current: i32) -> i16 {
    use crate::error_codes as codes;
    if requested == NO_LEADER_EPOCH {
        return codes::NONE;
    }
    match requested.cmp(&current) {
        std::cmp::Ordering::Less => codes::FENCED_LEADER_EPOCH,
        std::cmp::Ordering::Greater => codes::UNKNOWN_LEADER_EPOCH,
        std::cmp::Ordering::Equal => codes::NONE,
    }
}

/// A request's `current_leader_epoch` that asks for no check (`RecordBatch.NO_PARTITION_LEADER_EPOCH`).
pub const NO_LEADER_EPOCH: i32 = -1;

/// An immutable view of the cluster at one controller epoch. Shared across shards.
#[derive(Debug, Default)]
pub struct MetadataSnapshot {
    /// Increases with every controller change; a shard ignores an older snapshot.
    pub epoch: u64,
    /// None on a broker among several voters until it holds a state committed in group 0:
    /// its own fresh id would be replaced by the first leader's, and a client that saw both
    /// would believe it had met two clusters.
    pub cluster_id: Option<String>,
    /// The broker that leads the controller group (this broker in a one-node cluster), -1
    /// while none is known: what `Metadata` and `DescribeCluster` answer as `controller_id`.
    pub controller_id: i32,
    pub topics: BTreeMap<Arc<str>, Arc<TopicMetadata>>,
    /// Partitions whose owning shard cannot serve them (log damaged or fenced).
    pub offline_partitions: BTreeSet<TopicPartition>,
    /// This broker's `node.id`: it holds and serves only the partitions placed on it.
    pub local_node: i32,
    /// The registered brokers that are alive (not fenced), by node id; empty on a one-node
    /// broker, whose only broker is itself (handlers describe it from its own config).
    pub brokers: Vec<BrokerEndpoints>,
    /// Partition moves in progress (`ListPartitionReassignments`), in topic then partition
    /// order.
    pub reassignments: Vec<PartitionMove>,
}

/// A partition's move as `ListPartitionReassignments` shows it (Kafka's KIP-455): its
/// replicas (the target's, then the leaving ones), the adding and the removing ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMove {
    pub topic: String,
    pub partition: i32,
    pub replicas: Vec<i32>,
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

/// A live broker as clients reach it: the advertised address of each of its listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEndpoints {
    pub node_id: i32,
    pub rack: Option<String>,
    /// (listener name, advertised host, advertised port).
    pub listeners: Vec<(String, String, i32)>,
}

impl BrokerEndpoints {
    /// The address of this broker's listener named `listener`, if it has one.
    pub fn address(&self, listener: &str) -> Option<(&str, i32)> {
        self.listeners
            .iter()
            .find(|(name, _, _)| name == listener)
            .map(|(_, host, port)| (host.as_str(), *port))
    }
}

impl MetadataSnapshot {
    pub fn topic(&self, name: &str) -> Option<&Arc<TopicMetadata>> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<&Arc<TopicMetadata>> {
        self.topics.values().find(|topic| topic.id == id)
    }

    /// The owning shard of a partition, or `None` when the topic or partition does not exist.
    pub fn owner_of(&self, topic: &str, partition: i32) -> Option<usize> {
        let topic = self.topics.get(topic)?;
        topic
            .partition_shards
            .get(usize::try_from(partition).ok()?)
            .copied()
    }

    /// A partition's leader (-1 when it has none), or `None` when the topic or partition
    /// does not exist.
    pub fn broker_of(&self, topic: &str, partition: i32) -> Option<i32> {
        let topic = self.topics.get(topic)?;
        topic.partition(partition).map(|partition| partition.leader)
    }

    /// Whether this broker may answer a leader's request (Fetch, `ListOffsets`,
    /// `OffsetForLeaderEpoch`) about `partition` of `topic` from a client that names
    /// `current_leader_epoch`: the epoch check first ([`current_leader_epoch_error`]), as
    /// Kafka's `Partition.getLocalLog` does, then leadership (`NOT_LEADER_OR_FOLLOWER` when
    /// another broker leads it). `NONE` when it may.
    pub fn leader_check(
        &self,
        topic: &TopicMetadata,
        partition: i32,
        current_leader_epoch: i32,
    ) -> i16 {
        let epoch_error =
            current_leader_epoch_error(current_leader_epoch, topic.leader_epoch(partition));
        if epoch_error != crate::error_codes::NONE {
            return epoch_error;
        }
        // Another broker leads it, or nobody does (no live replica).
        if topic.leader(partition) == self.local_node {
            crate::error_codes::NONE
        } else {
            crate::error_codes::NOT_LEADER_OR_FOLLOWER
        }
    }

    /// The leader of `partition` of `topic` and its epoch, for a refusal that tells the
    /// client where to go (KIP-951's `current_leader`); `None` while its broker is not alive.
    pub fn current_leader(&self, topic: &TopicMetadata, partition: i32) -> Option<(i32, i32)> {
        let leader = topic.leader(partition);
        (leader >= 0 && self.is_alive(leader)).then(|| (leader, topic.leader_epoch(partition)))
    }

    /// Whether clients can reach `node_id` now: this broker, or a registered one that is
    /// not fenced (on a one-node broker, only itself).
    pub fn is_alive(&self, node_id: i32) -> bool {
        node_id == self.local_node || self.brokers.iter().any(|broker| broker.node_id == node_id)
    }

    /// The live broker `node_id`'s endpoints, if it is registered and alive.
    pub fn broker(&self, node_id: i32) -> Option<&BrokerEndpoints> {
        self.brokers.iter().find(|broker| broker.node_id == node_id)
    }

    /// `partition` of `topic` as `Metadata` and `DescribeTopicPartitions` describe it: the
    /// leader, epoch, replicas and ISR from the controller, replicas on fenced brokers
    /// offline; this broker's replica offline (and out of the ISR) when its log is, and the
    /// partition then `KAFKA_STORAGE_ERROR` if this broker leads it (Kafka's answer for a
    /// failed log directory); `LEADER_NOT_AVAILABLE` while it has no leader.
    pub fn describe_partition(&self, topic: &TopicMetadata, partition: i32) -> PartitionView {
        let tp = TopicPartition {
            topic: topic.name.clone(),
            partition,
        };
        let mut view = PartitionView {
            error_code: crate::error_codes::NONE,
            leader: topic.leader(partition),
            leader_epoch: topic.leader_epoch(partition),
            replicas: topic.replicas(partition).to_vec(),
            isr: topic.isr(partition).to_vec(),
            offline_replicas: topic.offline_replicas(partition).to_vec(),
        };
        if topic.hosted_here(partition) && self.offline_partitions.contains(&tp) {
            view.isr.retain(|node| *node != self.local_node);
            view.offline_replicas.push(self.local_node);
            if view.leader == self.local_node {
                view.error_code = crate::error_codes::KAFKA_STORAGE_ERROR;
            }
        }
        if view.leader < 0 {
            view.error_code = crate::error_codes::LEADER_NOT_AVAILABLE;
        }
        view
    }

    /// Every partition with a replica on this broker's `shard`, with its topic.
    pub fn partitions_on(
        &self,
        shard: usize,
    ) -> impl Iterator<Item = (TopicPartition, &Arc<TopicMetadata>)> + '_ {
        self.topics.values().flat_map(move |topic| {
            topic
                .partition_shards
                .iter()
                .zip(&topic.partitions)
                .enumerate()
                .filter(move |(_, (owner, partition))| **owner == shard && partition.hosted_here)
                .map(move |(partition, _)| {
                    (
                        TopicPartition {
                            topic: topic.name.clone(),
                            partition: partition as i32,
                        },
                        topic,
                    )
                })
        })
    }
}

/// Kafka's internal topic holding committed offsets; known to the controller (which refuses
/// user changes to it) and owned by the group coordinators (`groups`).
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Kafka's internal topic of transaction state; owned by the transaction coordinators
/// (`transactions`), refused to user changes like `OFFSETS_TOPIC`.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";

/// Whether `name` is one of the internal topics only the broker writes and whose partition
/// count placement depends on (`Metadata`'s `is_internal`).
pub fn is_internal_topic(name: &str) -> bool {
    name == OFFSETS_TOPIC || name == TRANSACTION_STATE_TOPIC
}

/// One shard's view of the metadata: the snapshot it serves from, the gate that opens once
/// the first snapshot is installed, and the turn that orders the applies. Owned by one shard
/// (`!Send`); the snapshots themselves are shared. Only the shard's services install a
/// snapshot (`shard::ShardServices`'s apply), one at a time, in arrival order.
pub struct MetadataView {
    current: std::cell::RefCell<Arc<MetadataSnapshot>>,
    /// Closed when the first snapshot has been installed.
    ready: glommio::sync::Semaphore,
    /// One permit: snapshots are applied one at a time, in arrival order (opening a
    /// partition awaits, and a second apply must not see it half-opened).
    one_apply_at_a_time: std::rc::Rc<glommio::sync::Semaphore>,
}

impl Default for MetadataView {
    fn default() -> Self {
        Self {
            current: std::cell::RefCell::new(Arc::new(MetadataSnapshot::default())),
            ready: glommio::sync::Semaphore::new(0),
            one_apply_at_a_time: std::rc::Rc::new(glommio::sync::Semaphore::new(1)),
        }
    }
}

impl MetadataView {
    pub fn current(&self) -> Arc<MetadataSnapshot> {
        self.current.borrow().clone()
    }

    /// Resolves once a first snapshot is installed.
    pub async fn wait_until_ready(&self) {
        let _ = self.ready.acquire(1).await;
    }

    /// Waits for the turn to apply a snapshot; the apply holds it until done.
    pub async fn apply_turn(&self) -> glommio::sync::StaticPermit {
        self.one_apply_at_a_time
            .acquire_static_permit(1)
            .await
            .expect("never closed")
    }

    /// A snapshot is being applied now (partitions may be half opened or removed).
    pub fn is_applying(&self) -> bool {
        self.one_apply_at_a_time.available() == 0
    }

    /// Installs `snapshot` (under the apply turn) and opens the ready gate.
    pub fn install(&self, snapshot: Arc<MetadataSnapshot>) {
        debug_assert!(
            self.is_applying(),
            "snapshots are installed under the apply turn"
        );
        let previous_epoch = self.current.borrow().epoch;
        assert!(
            snapshot.epoch > previous_epoch || previous_epoch == 0,
            "metadata epochs only grow: {} after {previous_epoch}",
            snapshot.epoch
        );
        *self.current.borrow_mut() = snapshot;
        self.ready.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_codes as codes;

    fn topic(partition_brokers: &[i32]) -> TopicMetadata {
        TopicMetadata {
            name: "t".into(),
            name_bytes: Bytes::from_static(b"t"),
            id: Uuid::nil(),
            partition_shards: vec![0; partition_brokers.len()],
            partitions: partition_brokers
                .iter()
                .map(|&broker| PartitionMetadata {
                    replicas: vec![broker],
                    group_id: 1,
                    leader: broker,
                    leader_epoch: 0,
                    isr: vec![broker],
                    offline_replicas: Vec::new(),
                    hosted_here: broker == 1,
                    target: Vec::new(),
                    learners: Vec::new(),
                })
                .collect(),
            overrides: BTreeMap::new(),
            config: crate::settings::Effective::defaults().topic_defaults(),
        }
    }

    #[test]
    fn current_leader_epoch_is_checked_as_kafka_does() {
        assert_eq!(current_leader_epoch_error(NO_LEADER_EPOCH, 3), codes::NONE);
        assert_eq!(current_leader_epoch_error(3, 3), codes::NONE);
        assert_eq!(current_leader_epoch_error(2, 3), codes::FENCED_LEADER_EPOCH);
        assert_eq!(
            current_leader_epoch_error(4, 3),
            codes::UNKNOWN_LEADER_EPOCH
        );
        assert_eq!(
            current_leader_epoch_error(-2, 0),
            codes::FENCED_LEADER_EPOCH,
            "only -1 means no check"
        );
        assert_eq!(
            (codes::FENCED_LEADER_EPOCH, codes::UNKNOWN_LEADER_EPOCH),
            (74, 75)
        );
    }

    #[test]
    fn leader_check_tests_the_epoch_then_leadership() {
        let topic = topic(&[1, 2]);
        let snapshot = MetadataSnapshot {
            local_node: 1,
            brokers: vec![BrokerEndpoints {
                node_id: 2,
                rack: None,
                listeners: Vec::new(),
            }],
            ..MetadataSnapshot::default()
        };
        let epoch = topic.leader_epoch(0);
        assert_eq!(topic.leader_epoch(2), NO_LEADER_EPOCH, "no partition 2");
        assert_eq!(snapshot.leader_check(&topic, 0, -1), codes::NONE);
        assert_eq!(snapshot.leader_check(&topic, 0, epoch), codes::NONE);
        assert_eq!(
            snapshot.leader_check(&topic, 0, epoch + 1),
            codes::UNKNOWN_LEADER_EPOCH
        );
        assert_eq!(
            snapshot.leader_check(&topic, 1, -1),
            codes::NOT_LEADER_OR_FOLLOWER
        );
        assert_eq!(
            snapshot.leader_check(&topic, 1, epoch + 1),
            codes::UNKNOWN_LEADER_EPOCH,
            "the epoch first, as Kafka's Partition.getLocalLog"
        );
        assert_eq!(snapshot.current_leader(&topic, 1), Some((2, epoch)));
        let fenced = MetadataSnapshot {
            local_node: 1,
            ..MetadataSnapshot::default()
        };
        assert_eq!(
            fenced.current_leader(&topic, 1),
            None,
            "broker 2 is not alive"
        );
    }
}
