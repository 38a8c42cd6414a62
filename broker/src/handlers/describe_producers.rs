//! `DescribeProducers` (KIP-664): the active idempotent producers of each named partition,
//! as `kafka-transactions.sh describe-producers` and hanging-transaction tooling read them.
//!
//! The answer comes from the partition's producer state (`producer_state.rs`) on its owning
//! shard, loaded from the log first if no idempotent batch reached the partition since the
//! start. Ringfeed has no transactions, so the coordinator epoch and the current
//! transaction's start offset are always -1. Errors are per partition, as Kafka's
//! (`ReplicaManager.activeProducerState`): a topic or partition that does not exist is
//! `UNKNOWN_TOPIC_OR_PARTITION`; one this broker does not host is `NOT_LEADER_OR_FOLLOWER`;
//! a topic the principal may not READ is `TOPIC_AUTHORIZATION_FAILED` (Kafka's check).

use futures::future::join_all;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::handlers::context::{PartitionAccess, RequestContext};
use crate::metadata::TopicPartition;
use crate::partition;
use crate::producer_state::ProducerSummary;

pub async fn handle(
    shard: &PartitionAccess<'_>,
    context: &RequestContext,
    request: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let snapshot = shard.metadata.current();
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.as_str();
        let may_read = context.authorize_topic(Operation::Read, name);
        // One call per partition, all in flight together; each answers for itself.
        let calls = topic.partition_indexes.iter().map(|&index| {
            let owner = snapshot
                .topic(name)
                .and_then(|_| snapshot.owner_of(name, index));
            let tp = snapshot.topic(name).map(|known| TopicPartition {
                topic: known.name.clone(),
                partition: index,
            });
            async move {
                if !may_read {
                    return Err(codes::TOPIC_AUTHORIZATION_FAILED);
                }
                let (Some(owner), Some(tp)) = (owner, tp) else {
                    return Err(codes::UNKNOWN_TOPIC_OR_PARTITION);
                };
                partition::describe_producers_on(shard.router, owner, tp)
                    .await
                    // The owner is gone only during shutdown.
                    .unwrap_or(Err(codes::NOT_LEADER_OR_FOLLOWER))
            }
        });
        let answers = join_all(calls).await;
        let partitions = topic
            .partition_indexes
            .iter()
            .zip(answers)
            .map(|(&index, answer)| partition_response(index, answer))
            .collect();
        topics.push(
            TopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    DescribeProducersResponse::default().with_topics(topics)
}

fn partition_response(index: i32, answer: Result<Vec<ProducerSummary>, i16>) -> PartitionResponse {
    let response = PartitionResponse::default().with_partition_index(index);
    match answer {
        Ok(producers) => response.with_error_code(codes::NONE).with_active_producers(
            producers
                .into_iter()
                .map(|producer| {
                    ProducerState::default()
                        .with_producer_id(ProducerId(producer.producer_id))
                        .with_producer_epoch(i32::from(producer.epoch))
                        .with_last_sequence(producer.last_sequence)
                        .with_last_timestamp(producer.last_timestamp)
                        .with_coordinator_epoch(producer.coordinator_epoch)
                        .with_current_txn_start_offset(producer.current_txn_start_offset)
                })
                .collect(),
        ),
        Err(code) => response.with_error_code(code),
    }
}
