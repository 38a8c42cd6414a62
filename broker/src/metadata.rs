//! The cluster metadata every shard reads: topics, their ids, partition → shard placement
//! and effective configs. Built by the controller on shard 0 and handed to every shard as
//! an immutable `Arc` snapshot; a shard swaps its pointer when a new one arrives and never
//! takes a lock to read it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

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
    pub id: Uuid,
    /// `partition_shards[p]` is the shard that owns partition `p`.
    pub partition_shards: Vec<usize>,
    /// The overrides as set by the user (what `DescribeConfigs` reports as topic-level).
    pub overrides: BTreeMap<String, String>,
    pub config: TopicConfig,
}

impl TopicMetadata {
    pub fn partition_count(&self) -> i32 {
        self.partition_shards.len() as i32
    }
}

/// An immutable view of the cluster at one controller epoch. Shared across shards.
#[derive(Debug, Default)]
pub struct MetadataSnapshot {
    /// Increases with every controller change; a shard ignores an older snapshot.
    pub epoch: u64,
    pub cluster_id: String,
    pub topics: BTreeMap<Arc<str>, Arc<TopicMetadata>>,
    /// Partitions whose owning shard cannot serve them (log damaged or fenced).
    pub offline_partitions: BTreeSet<TopicPartition>,
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

    /// Every partition placed on `shard`, with its topic.
    pub fn partitions_on(
        &self,
        shard: usize,
    ) -> impl Iterator<Item = (TopicPartition, &Arc<TopicMetadata>)> + '_ {
        self.topics.values().flat_map(move |topic| {
            topic
                .partition_shards
                .iter()
                .enumerate()
                .filter(move |(_, owner)| **owner == shard)
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
