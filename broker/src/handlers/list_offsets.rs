//! `ListOffsets`: earliest (-2), latest (-1) or the first offset at or after a timestamp,
//! answered by each partition's owner. A partition named twice in one request is answered
//! `INVALID_REQUEST` for every copy, as Kafka does: answering each copy lets clients pair
//! the answers with the wrong queries (librdkafka gives every copy the last answer).

use std::collections::{HashMap, HashSet};

use futures::future::join_all;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::error_codes as codes;
use crate::handlers::context::{PartitionAccess, RequestContext};
use crate::metadata::TopicPartition;
use crate::partition;

pub async fn handle(
    shard: &PartitionAccess<'_>,
    context: &RequestContext,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let snapshot = shard.metadata.current();
    let duplicated = duplicated_partitions(&request);
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let lookups = topic.partitions.iter().map(|partition| {
            let named_twice =
                duplicated.contains(&(topic.name.0.to_string(), partition.partition_index));
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
                if named_twice {
                    return ListOffsetsPartitionResponse::default()
                        .with_partition_index(partition_index)
                        .with_error_code(codes::INVALID_REQUEST);
                }
                let outcome = match tp {
                    None => None,
                    Some((tp, owner)) => {
                        partition::list_offset_on(shard.router, owner, tp, timestamp_ms).await
                    }
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

/// The (topic, partition) pairs named more than once in `request`.
fn duplicated_partitions(request: &ListOffsetsRequest) -> HashSet<(String, i32)> {
    let mut named: HashMap<(&str, i32), usize> = HashMap::new();
    for topic in &request.topics {
        for partition in &topic.partitions {
            *named
                .entry((topic.name.0.as_str(), partition.partition_index))
                .or_default() += 1;
        }
    }
    named
        .into_iter()
        .filter(|(_, count)| *count > 1)
        .map(|((topic, partition), _)| (topic.to_string(), partition))
        .collect()
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::TopicName;

    use super::*;

    fn topic(name: &'static str, partitions: &[i32]) -> ListOffsetsTopic {
        ListOffsetsTopic::default()
            .with_name(TopicName(name.into()))
            .with_partitions(
                partitions
                    .iter()
                    .map(|&index| ListOffsetsPartition::default().with_partition_index(index))
                    .collect(),
            )
    }

    #[test]
    fn a_partition_named_twice_is_found_within_and_across_topic_entries() {
        let request = ListOffsetsRequest::default().with_topics(vec![
            topic("a", &[0, 1, 0]),
            topic("b", &[0]),
            topic("b", &[0, 2]),
        ]);
        let duplicated = duplicated_partitions(&request);
        let mut pairs: Vec<_> = duplicated.into_iter().collect();
        pairs.sort_unstable();
        assert_eq!(pairs, vec![("a".to_string(), 0), ("b".to_string(), 0)]);
    }
}
