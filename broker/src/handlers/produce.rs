//! Produce: split per partition, send each piece to its owning shard, answer when the acks
//! condition holds there. A missing partition or a bad batch is a per-partition error code.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{join_all, select, Either};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};

use super::RequestContext;
use crate::error_codes as codes;
use crate::metadata::{MetadataSnapshot, TopicPartition};
use crate::partition::{PartitionCall, PartitionReply};
use crate::recompress::apply_codec_rules;
use crate::records::split_batches;
use crate::shard::Shard;

pub async fn handle(
    shard: &Rc<Shard>,
    context: &RequestContext,
    request: ProduceRequest,
) -> ProduceResponse {
    let snapshot = shard.metadata();
    let rules = PieceRules {
        version: context.api_version,
        acks: request.acks,
        timeout: Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0).max(1)),
    };
    let mut responses = Vec::with_capacity(request.topic_data.len());
    let mut pieces = Vec::new();
    for (topic_index, topic) in request.topic_data.into_iter().enumerate() {
        for partition in topic.partition_data {
            let piece = Piece {
                topic_index,
                topic: topic.name.clone(),
                partition: partition.index,
                records: partition.records.unwrap_or_default(),
            };
            pieces.push(produce_partition(shard, &snapshot, piece, rules));
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

/// One partition's share of a produce request.
struct Piece {
    topic_index: usize,
    topic: TopicName,
    partition: i32,
    records: Bytes,
}

/// What applies to every piece of one request.
#[derive(Clone, Copy)]
struct PieceRules {
    /// The request's Produce version (zstd batches need v7).
    version: i16,
    acks: i16,
    /// The request's `timeout_ms`: how long the client is willing to wait for its acks.
    timeout: Duration,
}

async fn produce_partition(
    shard: &Rc<Shard>,
    snapshot: &Arc<MetadataSnapshot>,
    piece: Piece,
    rules: PieceRules,
) -> (usize, PartitionProduceResponse) {
    let Piece {
        topic_index,
        topic,
        partition,
        records,
    } = piece;
    let answer = |error_code, base_offset, log_start_offset| {
        let response = PartitionProduceResponse::default()
            .with_index(partition)
            .with_error_code(error_code)
            .with_base_offset(base_offset)
            .with_log_start_offset(log_start_offset);
        (topic_index, response)
    };
    if !matches!(rules.acks, -1..=1) {
        return answer(codes::INVALID_REQUIRED_ACKS, -1, -1);
    }
    // Only the group coordinator writes the offsets topic, as in Kafka.
    if topic.0.as_str() == crate::groups::OFFSETS_TOPIC {
        return answer(codes::INVALID_TOPIC_EXCEPTION, -1, -1);
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
    let batches = match apply_codec_rules(batches, rules.version, topic_metadata.config.compression)
    {
        Ok(batches) => batches,
        Err(error_code) => return answer(error_code, -1, -1),
    };
    let tp = TopicPartition {
        topic: topic_metadata.name.clone(),
        partition,
    };
    let call = PartitionCall::Produce {
        tp,
        batches,
        acks: rules.acks,
    };
    match append_within(shard, owner, call, rules.timeout).await {
        Ok(Some(PartitionReply::Produce(outcome))) => answer(
            outcome.error_code,
            outcome.base_offset,
            outcome.log_start_offset,
        ),
        Ok(Some(other)) => panic!("produce answered with {other:?}"),
        Ok(None) => answer(codes::NOT_LEADER_OR_FOLLOWER, -1, -1),
        Err(TimedOut) => answer(codes::REQUEST_TIMED_OUT, -1, -1),
    }
}

struct TimedOut;

/// Runs the append as its own task and waits at most `timeout` for its acks. The append is
/// never cancelled half-way (a dropped future could stop between batches): on timeout it
/// carries on, and the client hears `REQUEST_TIMED_OUT`, as from Kafka when acks take too
/// long. Spawned tasks start in spawn order, so request order per partition is kept.
async fn append_within(
    shard: &Rc<Shard>,
    owner: usize,
    call: PartitionCall,
    timeout: Duration,
) -> Result<Option<PartitionReply>, TimedOut> {
    let shard = shard.clone();
    let appending =
        glommio::spawn_local(async move { shard.partition_call(owner, call).await }).detach();
    match select(appending, std::pin::pin!(glommio::timer::sleep(timeout))).await {
        Either::Left((reply, _)) => Ok(reply.flatten()),
        Either::Right(_) => Err(TimedOut),
    }
}
