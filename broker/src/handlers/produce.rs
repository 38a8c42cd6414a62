//! Produce: split per partition, send each piece to its owning shard, answer when the acks
//! condition holds there. A missing partition or a bad batch is a per-partition error code.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::join_all;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};

use super::RequestContext;
use crate::error_codes as codes;
use crate::metadata::{MetadataSnapshot, TopicPartition};
use crate::partition::{PartitionCall, PartitionReply};
use crate::records::split_batches;
use crate::shard::Shard;

pub async fn handle(
    shard: &Rc<Shard>,
    _context: &RequestContext,
    request: ProduceRequest,
) -> ProduceResponse {
    let snapshot = shard.metadata();
    let acks = request.acks;
    let mut responses = Vec::with_capacity(request.topic_data.len());
    let mut pieces = Vec::new();
    for (topic_index, topic) in request.topic_data.into_iter().enumerate() {
        for partition in topic.partition_data {
            let records = partition.records.unwrap_or_default();
            pieces.push(produce_partition(
                shard,
                &snapshot,
                topic_index,
                topic.name.clone(),
                partition.index,
                records,
                acks,
            ));
        }
        responses.push(TopicProduceResponse::default().with_name(topic.name));
    }
    // join_all polls every piece once, in request order, before any completes: pipelined
    // produce requests reach each partition's log in the order they arrived.
    for (topic_index, partition_response) in join_all(pieces).await {
        responses[topic_index]
            .partition_responses
            .push(partition_response);
    }
    ProduceResponse::default().with_responses(responses)
}

async fn produce_partition(
    shard: &Shard,
    snapshot: &Arc<MetadataSnapshot>,
    topic_index: usize,
    topic: TopicName,
    partition: i32,
    records: Bytes,
    acks: i16,
) -> (usize, PartitionProduceResponse) {
    let answer = |error_code, base_offset, log_start_offset| {
        let response = PartitionProduceResponse::default()
            .with_index(partition)
            .with_error_code(error_code)
            .with_base_offset(base_offset)
            .with_log_start_offset(log_start_offset);
        (topic_index, response)
    };
    if !matches!(acks, -1..=1) {
        return answer(codes::INVALID_REQUIRED_ACKS, -1, -1);
    }
    let (Some(topic_metadata), Some(owner)) = (
        snapshot.topic(topic.0.as_str()),
        snapshot.owner_of(topic.0.as_str(), partition),
    ) else {
        return answer(codes::UNKNOWN_TOPIC_OR_PARTITION, -1, -1);
    };
    let batches = match split_batches(&records, topic_metadata.config.max_message_bytes as usize) {
        Ok(batches) => batches,
        Err(error_code) => return answer(error_code, -1, -1),
    };
    let tp = TopicPartition {
        topic: topic_metadata.name.clone(),
        partition,
    };
    match shard
        .partition_call(owner, PartitionCall::Produce { tp, batches, acks })
        .await
    {
        Some(PartitionReply::Produce(outcome)) => answer(
            outcome.error_code,
            outcome.base_offset,
            outcome.log_start_offset,
        ),
        Some(other) => panic!("produce answered with {other:?}"),
        None => answer(codes::NOT_LEADER_OR_FOLLOWER, -1, -1),
    }
}
