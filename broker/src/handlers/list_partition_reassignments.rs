//! `ListPartitionReassignments` (API 46, Kafka's KIP-455): the partition moves in progress,
//! all of them (null topics) or those of the named partitions, from this broker's copy of
//! the controller's committed state (the metadata snapshot), with each move's replicas,
//! adding and removing ones. A named partition that does not exist or is not moving is
//! left out, as Kafka does.

use std::collections::BTreeMap;

use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    BrokerId, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, RequestContext, TopicAdmin};

#[allow(clippy::unused_async)]
pub async fn handle(
    shard: &TopicAdmin<'_>,
    context: &RequestContext,
    request: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    // Kafka's rule: DESCRIBE on the cluster.
    if !context.authorize_cluster(Operation::Describe) {
        return ListPartitionReassignmentsResponse::default()
            .with_error_code(codes::CLUSTER_AUTHORIZATION_FAILED)
            .with_error_message(Some(str_bytes("DESCRIBE on the cluster is required")));
    }
    let snapshot = shard.metadata.current();
    let wanted = |topic: &str, partition: i32| {
        request.topics.as_ref().is_none_or(|topics| {
            topics.iter().any(|named| {
                named.name.0.as_str() == topic && named.partition_indexes.contains(&partition)
            })
        })
    };
    let ids = |brokers: &[i32]| brokers.iter().map(|id| BrokerId(*id)).collect::<Vec<_>>();
    let mut by_topic: BTreeMap<&str, Vec<OngoingPartitionReassignment>> = BTreeMap::new();
    for moving in &snapshot.reassignments {
        if !wanted(&moving.topic, moving.partition) {
            continue;
        }
        by_topic.entry(&moving.topic).or_default().push(
            OngoingPartitionReassignment::default()
                .with_partition_index(moving.partition)
                .with_replicas(ids(&moving.replicas))
                .with_adding_replicas(ids(&moving.adding))
                .with_removing_replicas(ids(&moving.removing)),
        );
    }
    let topics = by_topic
        .into_iter()
        .map(|(name, partitions)| {
            OngoingTopicReassignment::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(partitions)
        })
        .collect();
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}
