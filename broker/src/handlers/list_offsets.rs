//! `ListOffsets`: earliest (-2), latest (-1) or the first offset at or after a timestamp,
//! answered by each partition's owner.

use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::RequestContext;
use crate::error_codes as codes;
use crate::metadata::TopicPartition;
use crate::partition::{PartitionCall, PartitionReply};
use crate::shard::Shard;

pub async fn handle(
    shard: &Rc<Shard>,
    context: &RequestContext,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let snapshot = shard.metadata();
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let lookups = topic.partitions.iter().map(|partition| {
            let placement = snapshot
                .topic(topic.name.0.as_str())
                .zip(snapshot.owner_of(topic.name.0.as_str(), partition.partition_index));
            let tp = placement.map(|(metadata, owner)| {
                (
                    TopicPartition {
                        topic: metadata.name.clone(),
                        partition: partition.partition_index,
                    },
                    owner,
                )
            });
            let (partition_index, timestamp_ms) = (partition.partition_index, partition.timestamp);
            async move {
                let outcome = match tp {
                    None => None,
                    Some((tp, owner)) => match shard
                        .partition_call(owner, PartitionCall::ListOffsets { tp, timestamp_ms })
                        .await
                    {
                        Some(PartitionReply::Offset(outcome)) => Some(outcome),
                        _ => None,
                    },
                };
                let response =
                    ListOffsetsPartitionResponse::default().with_partition_index(partition_index);
                match outcome {
                    Some(outcome) => response
                        .with_error_code(outcome.error_code)
                        .with_offset(outcome.offset)
                        .with_timestamp(outcome.timestamp_ms)
                        .with_leader_epoch(if context.api_version >= 4 { 0 } else { -1 }),
                    None => response.with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION),
                }
            }
        });
        let partitions = join_all(lookups).await;
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}
