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
    /// `partition_shards[p]` is the shard that owns partition `p` (on its broker).
    pub partition_shards: Vec<usize>,
    /// `partition_brokers[p]` is the broker (`node.id`) partition `p` is placed on: its
    /// leader and only replica (replication factor 1). Same length as `partition_shards`.
    pub partition_brokers: Vec<i32>,
    /// The overrides as set by the user (what `DescribeConfigs` reports as topic-level).
    pub overrides: BTreeMap<String, String>,
    pub config: TopicConfig,
}

impl TopicMetadata {
    pub fn partition_count(&self) -> i32 {
        self.partition_shards.len() as i32
    }

    /// The brokers (`node.id`) holding a replica of `partition`, its placed leader first;
    /// empty when the partition does not exist. A partition with one replica is served as
    /// before, one with several is a Raft group (`replica`).
    ///
    /// Stand-in until the controller's placement carries replica lists (issue 12, h2):
    /// today every partition has one replica, `partition_brokers[p]`.
    pub fn replicas(&self, partition: i32) -> &[i32] {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.partition_brokers.get(p))
            .map_or(&[], std::slice::from_ref)
    }

    /// The Raft group of `partition` (the same on every broker; a recreated topic gets new
    /// ids), 0 when the partition does not exist (group 0 is the controller's, never a
    /// partition's).
    ///
    /// Stand-in until the placement stores group ids (issue 12, h2): derived from the topic
    /// id and the partition, the topic's 40 bits above the partition's 24.
    pub fn group_id(&self, partition: i32) -> u64 {
        let Some(p) = u64::try_from(partition)
            .ok()
            .filter(|p| *p < self.partition_shards.len() as u64)
        else {
            return 0;
        };
        let (high, low) = self.id.as_u64_pair();
        let topic_bits = (high ^ low) & ((1 << 40) - 1);
        let id = (topic_bits << 24) | (p & ((1 << 24) - 1));
        // Never the controller's group (0) nor the registry mailbox (u64::MAX).
        id.clamp(1, u64::MAX - 1)
    }
}

/// An immutable view of the cluster at one controller epoch. Shared across shards.
#[derive(Debug, Default)]
pub struct MetadataSnapshot {
    /// Increases with every controller change; a shard ignores an older snapshot.
    pub epoch: u64,
    pub cluster_id: String,
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

    /// The broker a partition is placed on (its leader), or `None` when the topic or
    /// partition does not exist.
    pub fn broker_of(&self, topic: &str, partition: i32) -> Option<i32> {
        let topic = self.topics.get(topic)?;
        topic
            .partition_brokers
            .get(usize::try_from(partition).ok()?)
            .copied()
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

    /// Every partition placed on this broker's `shard`, with its topic.
    pub fn partitions_on(
        &self,
        shard: usize,
    ) -> impl Iterator<Item = (TopicPartition, &Arc<TopicMetadata>)> + '_ {
        self.topics.values().flat_map(move |topic| {
            topic
                .partition_shards
                .iter()
                .zip(&topic.partition_brokers)
                .enumerate()
                .filter(move |(_, (owner, broker))| **owner == shard && **broker == self.local_node)
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

    fn topic(id: Uuid, partitions: usize) -> TopicMetadata {
        TopicMetadata {
            name: "t".into(),
            name_bytes: Bytes::from_static(b"t"),
            id,
            partition_shards: vec![0; partitions],
            partition_brokers: (0..partitions as i32).collect(),
            overrides: BTreeMap::new(),
            config: crate::settings::Effective::defaults().topic_defaults(),
        }
    }

    #[test]
    fn group_ids_differ_per_partition_and_topic_and_are_never_reserved() {
        let first = topic(Uuid::from_u128(1), 100);
        let second = topic(Uuid::from_u128(2), 100);
        let mut seen = BTreeSet::new();
        for t in [&first, &second] {
            for partition in 0..100 {
                let id = t.group_id(partition);
                assert!(id != 0 && id != u64::MAX);
                assert!(seen.insert(id), "group id {id} twice");
                assert_eq!(id, t.group_id(partition), "stable");
            }
        }
        assert_eq!(first.group_id(100), 0, "no such partition");
        assert_eq!(first.group_id(-1), 0);
        assert_eq!(
            topic(Uuid::nil(), 1).group_id(0),
            1,
            "never the controller's 0"
        );
    }

    #[test]
    fn replicas_are_the_placed_broker_until_the_placement_has_lists() {
        let t = topic(Uuid::from_u128(3), 3);
        assert_eq!(t.replicas(2), [2]);
        assert!(t.replicas(3).is_empty());
        assert!(t.replicas(-1).is_empty());
    }
}
