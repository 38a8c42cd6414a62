//! `DeleteRecords`: move each partition's log start forward (-1 = to the high watermark).

use futures::future::join_all;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::handlers::context::{PartitionAccess, RequestContext};
use crate::metadata::TopicPartition;
use crate::partition;

pub async fn handle(
    shard: &PartitionAccess<'_>,
    context: &RequestContext,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let snapshot = shard.metadata.current();
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let may_delete = context.authorize_topic(Operation::Delete, topic.name.0.as_str());
        let deletions = topic.partitions.iter().map(|partition| {
            let name = topic.name.0.as_str();
            let placement = snapshot
                .topic(name)
                .zip(snapshot.owner_of(name, partition.partition_index));
            let tp = placement.map(|(metadata, owner)| {
                (
                    TopicPartition {
                        topic: metadata.name.clone(),
                        partition: partition.partition_index,
                    },
                    owner,
                )
            });
            let (partition_index, offset) = (partition.partition_index, partition.offset);
            async move {
                let result = DeleteRecordsPartitionResult::default()
                    .with_partition_index(partition_index)
                    .with_low_watermark(-1);
                if !may_delete {
                    return result.with_error_code(codes::TOPIC_AUTHORIZATION_FAILED);
                }
                let Some((tp, owner)) = tp else {
                    return result.with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION);
                };
                match partition::delete_records_on(shard.router, owner, tp, offset).await {
                    Some(outcome) => result
                        .with_error_code(outcome.error_code)
                        .with_low_watermark(outcome.offset),
                    None => result.with_error_code(codes::NOT_LEADER_OR_FOLLOWER),
                }
            }
        });
        let partitions = join_all(deletions).await;
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
