//! `OffsetForLeaderEpoch` (KIP-101, KIP-320): for each partition, the end offset of the
//! requested leader epoch, answered by the partition's owner from its leader-epoch cache
//! (`storage::epochs`, Kafka's `LeaderEpochFileCache.endOffsetFor`). Consumers send it after
//! a leader change to find whether their position was truncated away.
//!
//! Authorization as in Kafka's `KafkaApis`: `CLUSTER_ACTION` on the cluster answers every
//! topic; without it a topic needs DESCRIBE. A request that says it comes from a replica
//! (`replica_id` ≥ 0, v3+) without `CLUSTER_ACTION` is `CLUSTER_AUTHORIZATION_FAILED`: only
//! brokers replicate, and Ringfeed's replicas use the internal address, not this API.
//!
//! Each partition: unknown → `UNKNOWN_TOPIC_OR_PARTITION`; `current_leader_epoch` checked
//! (v2+, -1 none) and leadership (`MetadataSnapshot::leader_check`); then the owner's cache.
//! An epoch the cache cannot place is answered `NONE` with epoch and offset -1, as Kafka does.

use futures::future::join_all;
use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderPartition;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::handlers::context::{PartitionAccess, RequestContext};
use crate::metadata::{MetadataSnapshot, TopicPartition};
use crate::partition;

pub async fn handle(
    shard: &PartitionAccess<'_>,
    context: &RequestContext,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let snapshot = shard.metadata.current();
    let cluster_action = context.authorize_cluster(Operation::ClusterAction);
    let from_replica = request.replica_id.0 >= 0;
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let refusal = if cluster_action {
            None
        } else if from_replica {
            Some(codes::CLUSTER_AUTHORIZATION_FAILED)
        } else if !context.authorize_topic(Operation::Describe, topic.topic.0.as_str()) {
            Some(codes::TOPIC_AUTHORIZATION_FAILED)
        } else {
            None
        };
        let snapshot = &snapshot;
        let name = topic.topic.0.as_str();
        let lookups = topic.partitions.iter().map(|asked| async move {
            let answer = EpochEndOffset::default().with_partition(asked.partition);
            if let Some(error_code) = refusal {
                return answer.with_error_code(error_code);
            }
            match end_offset(shard, snapshot, name, asked).await {
                Ok((leader_epoch, end_offset)) => answer
                    .with_leader_epoch(leader_epoch)
                    .with_end_offset(end_offset),
                Err(error_code) => answer.with_error_code(error_code),
            }
        });
        let partitions = join_all(lookups).await;
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

/// One partition's (epoch, end offset), or the error code to answer with.
async fn end_offset(
    shard: &PartitionAccess<'_>,
    snapshot: &MetadataSnapshot,
    topic: &str,
    asked: &OffsetForLeaderPartition,
) -> Result<(i32, i64), i16> {
    let (Some(metadata), Some(owner)) = (
        snapshot.topic(topic),
        snapshot.owner_of(topic, asked.partition),
    ) else {
        return Err(codes::UNKNOWN_TOPIC_OR_PARTITION);
    };
    let checked = snapshot.leader_check(metadata, asked.partition, asked.current_leader_epoch);
    if checked != codes::NONE {
        return Err(checked);
    }
    let tp = TopicPartition {
        topic: metadata.name.clone(),
        partition: asked.partition,
    };
    partition::end_offset_for_leader_epoch_on(shard.router, owner, tp, asked.leader_epoch)
        .await
        .unwrap_or(Err(codes::NOT_LEADER_OR_FOLLOWER))
}
