//! `ListOffsets`: earliest (-2), latest (-1) or the first offset at or after a timestamp,
//! answered by each partition's owner. A partition named twice in one request is answered
//! `INVALID_REQUEST` for every copy, as Kafka does: answering each copy lets clients pair
//! the answers with the wrong queries (librdkafka gives every copy the last answer).
//!
//! v0 (Burrow, Sarama's `GetOffset`) asks for up to `max_num_offsets` offsets "before" a time
//! and gets a list (`old_style_offsets`): see [`old_style_offsets`]. As in Kafka 3.9, v0
//! answers duplicates one by one and refuses timestamps below -2 (`UNSUPPORTED_VERSION`).

use std::collections::{HashMap, HashSet};

use futures::future::join_all;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::handlers::context::{PartitionAccess, RequestContext};
use crate::metadata::TopicPartition;
use crate::partition::{self, Isolation};

pub async fn handle(
    shard: &PartitionAccess<'_>,
    context: &RequestContext,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let snapshot = shard.metadata.current();
    let duplicated = duplicated_partitions(&request);
    // v2+ (KIP-98): read_committed's latest is the last stable offset. Below v2 the field
    // is not on the wire and decodes as 0.
    let isolation = Isolation::from_level(request.isolation_level);
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let may_describe = context.authorize_topic(Operation::Describe, topic.name.0.as_str());
        let lookups = topic.partitions.iter().map(|partition| {
            let named_twice =
                duplicated.contains(&(topic.name.0.to_string(), partition.partition_index));
            let placement = snapshot
                .topic(topic.name.0.as_str())
                .zip(snapshot.owner_of(topic.name.0.as_str(), partition.partition_index));
            // v4+ (KIP-320): the client's leader epoch is checked, and the answer carries
            // the current one. Below v4 the field is not on the wire and decodes as -1.
            let (leader_error, leader_epoch) =
                placement.map_or((codes::NONE, -1), |(metadata, _)| {
                    (
                        snapshot.leader_check(
                            metadata,
                            partition.partition_index,
                            partition.current_leader_epoch,
                        ),
                        metadata.leader_epoch(partition.partition_index),
                    )
                });
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
            let max_num_offsets = partition.max_num_offsets;
            async move {
                if !may_describe {
                    return ListOffsetsPartitionResponse::default()
                        .with_partition_index(partition_index)
                        .with_error_code(codes::TOPIC_AUTHORIZATION_FAILED);
                }
                // v0 answers every copy of a partition named twice: Kafka 3.9's v0 path has
                // no duplicate check.
                if context.api_version == 0 {
                    let query = OldStyleQuery {
                        timestamp_ms,
                        max_num_offsets,
                        now_ms: shard.clock.now_ms(),
                    };
                    return answer_v0(shard, tp, query)
                        .await
                        .with_partition_index(partition_index);
                }
                if named_twice {
                    return ListOffsetsPartitionResponse::default()
                        .with_partition_index(partition_index)
                        .with_error_code(codes::INVALID_REQUEST);
                }
                if leader_error != codes::NONE {
                    return ListOffsetsPartitionResponse::default()
                        .with_partition_index(partition_index)
                        .with_error_code(leader_error);
                }
                let outcome = match tp {
                    None => None,
                    Some((tp, owner)) => {
                        partition::list_offset_on(shard.router, owner, tp, timestamp_ms, isolation)
                            .await
                    }
                };
                let response =
                    ListOffsetsPartitionResponse::default().with_partition_index(partition_index);
                match outcome {
                    Some(outcome) => response
                        .with_error_code(outcome.error_code)
                        .with_offset(outcome.offset)
                        .with_timestamp(outcome.timestamp_ms)
                        .with_leader_epoch(if context.api_version >= 4 {
                            leader_epoch
                        } else {
                            -1
                        }),
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

/// A v0 partition query: offsets before `timestamp_ms` (-1 latest, -2 earliest), at most
/// `max_num_offsets` of them.
#[derive(Clone, Copy)]
struct OldStyleQuery {
    timestamp_ms: i64,
    max_num_offsets: i32,
    now_ms: i64,
}

/// A v0 answer: the offsets in `old_style_offsets`; `timestamp` and `offset` stay -1 (v1+
/// fields, the codec refuses anything else at v0).
async fn answer_v0(
    shard: &PartitionAccess<'_>,
    tp: Option<(TopicPartition, usize)>,
    query: OldStyleQuery,
) -> ListOffsetsPartitionResponse {
    let response = ListOffsetsPartitionResponse::default();
    if query.timestamp_ms < -2 {
        // v0 knows only latest (-1) and earliest (-2) among the negative timestamps.
        return response.with_error_code(codes::UNSUPPORTED_VERSION);
    }
    let Some((tp, owner)) = tp else {
        return response.with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION);
    };
    if query.max_num_offsets < 0 {
        // Kafka sizes an array with it and answers the exception as UNKNOWN_SERVER_ERROR.
        return response.with_error_code(codes::UNKNOWN_SERVER_ERROR);
    }
    // The log start, the high watermark and the newest record's timestamp, each asked of the
    // owner as the v1+ queries -2, -1 and -3 are.
    let mut found = [0_i64; 3];
    for (slot, sentinel) in found.iter_mut().zip([-2, -1, -3]) {
        // v0 has no isolation level: read_uncommitted.
        let outcome = partition::list_offset_on(
            shard.router,
            owner,
            tp.clone(),
            sentinel,
            Isolation::ReadUncommitted,
        )
        .await;
        match outcome {
            Some(outcome) if outcome.error_code == codes::NONE => {
                *slot = if sentinel == -3 {
                    outcome.timestamp_ms
                } else {
                    outcome.offset
                };
            }
            Some(outcome) => return response.with_error_code(outcome.error_code),
            None => return response.with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION),
        }
    }
    let [log_start, high_watermark, newest_timestamp_ms] = found;
    let log = OneSegmentLog {
        log_start,
        high_watermark,
        last_write_ms: newest_timestamp_ms,
    };
    response
        .with_error_code(codes::NONE)
        .with_old_style_offsets(old_style_offsets(&log, query))
}

/// What the v0 answer is computed from: the partition seen as Kafka's log of one segment.
struct OneSegmentLog {
    log_start: i64,
    high_watermark: i64,
    /// Stands for the segment file's modification time: the newest record's timestamp
    /// (-1 when the log is empty).
    last_write_ms: i64,
}

/// Kafka 3.9's `UnifiedLog.legacyFetchOffsetsBefore` for a consumer, on a log of one segment:
/// the candidate offsets are the segment's base (the log start), stamped with the segment's
/// last write, and, when the segment holds records, the end (the high watermark for a
/// consumer), stamped now. Latest starts from the last candidate, earliest from the first,
/// a timestamp from the last candidate stamped at or before it; the answer walks back from
/// there, at most `max_num_offsets`, newest first. Kafka's logs of several segments would
/// add each segment's base between the two; Ringfeed's segments are its own storage detail.
fn old_style_offsets(log: &OneSegmentLog, query: OldStyleQuery) -> Vec<i64> {
    let mut candidates = vec![(log.log_start, log.last_write_ms)];
    if log.high_watermark > log.log_start {
        candidates.push((log.high_watermark, query.now_ms));
    }
    let start = match query.timestamp_ms {
        -1 => Some(candidates.len() - 1),
        -2 => Some(0),
        timestamp_ms => candidates
            .iter()
            .rposition(|&(_, stamped_ms)| stamped_ms <= timestamp_ms),
    };
    let Some(start) = start else {
        return Vec::new();
    };
    let count = usize::try_from(query.max_num_offsets)
        .unwrap_or(0)
        .min(start + 1);
    candidates[..=start]
        .iter()
        .rev()
        .take(count)
        .map(|&(offset, _)| offset)
        .collect()
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

    fn v0(timestamp_ms: i64, max_num_offsets: i32) -> OldStyleQuery {
        OldStyleQuery {
            timestamp_ms,
            max_num_offsets,
            now_ms: 10_000,
        }
    }

    #[test]
    fn v0_answers_as_kafka_does_for_a_log_of_one_segment() {
        let log = OneSegmentLog {
            log_start: 5,
            high_watermark: 42,
            last_write_ms: 9_000,
        };
        assert_eq!(old_style_offsets(&log, v0(-1, 1)), vec![42], "latest");
        assert_eq!(old_style_offsets(&log, v0(-1, 10)), vec![42, 5]);
        assert_eq!(old_style_offsets(&log, v0(-2, 10)), vec![5], "earliest");
        assert_eq!(old_style_offsets(&log, v0(-1, 0)), Vec::<i64>::new());
        assert_eq!(old_style_offsets(&log, v0(9_500, 10)), vec![5]);
        assert_eq!(old_style_offsets(&log, v0(10_000, 10)), vec![42, 5]);
        assert_eq!(
            old_style_offsets(&log, v0(8_999, 10)),
            Vec::<i64>::new(),
            "nothing was written before"
        );
        let empty = OneSegmentLog {
            log_start: 7,
            high_watermark: 7,
            last_write_ms: -1,
        };
        assert_eq!(old_style_offsets(&empty, v0(-1, 10)), vec![7]);
        assert_eq!(old_style_offsets(&empty, v0(-2, 10)), vec![7]);
        assert_eq!(old_style_offsets(&empty, v0(0, 10)), vec![7]);
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
