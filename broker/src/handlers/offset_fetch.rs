//! `OffsetFetch`: a group's committed offsets, from its coordinator. v0-7 ask for one group,
//! v8+ for several at once (each routed to its own coordinator, concurrently). A partition
//! without a commit reads offset -1, as in Kafka. v0 reads only `OffsetCommit` v0's commits
//! (Kafka 3.9 read them from `ZooKeeper`), answering `UNKNOWN_TOPIC_OR_PARTITION` where there
//! is none.

use futures::future::join_all;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::groups::records::CommittedOffset;
use crate::handlers::context::{str_bytes, GroupAccess, RequestContext};

/// One group's answer: a group-level error code, then per (topic, partition) the committed
/// offset (None: nothing committed) in request order.
struct GroupOffsets {
    error_code: i16,
    offsets: Vec<(String, i32, Option<CommittedOffset>)>,
}

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let version = context.api_version;
    if version >= 8 {
        let lookups = request.groups.into_iter().map(|group| async move {
            let partitions = group.topics.map(|topics| {
                topics
                    .into_iter()
                    .map(|t| (t.name.to_string(), t.partition_indexes))
                    .collect()
            });
            // v9: a consumer-protocol member names itself and its epoch (KIP-848).
            let member = (group.member_id.is_some() || group.member_epoch >= 0).then(|| {
                let member_id = group.member_id.as_deref().unwrap_or_default().to_string();
                (member_id, group.member_epoch)
            });
            let answer = fetch(shard, context, &group.group_id, partitions, member).await;
            multi_group_entry(group.group_id, answer)
        });
        return OffsetFetchResponse::default().with_groups(join_all(lookups).await);
    }
    let partitions = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name.to_string(), t.partition_indexes))
            .collect()
    });
    let answer = if version == 0 {
        // v0's topics are not nullable: the codec always gives a list.
        fetch_standalone(
            shard,
            context,
            &request.group_id,
            partitions.unwrap_or_default(),
        )
        .await
    } else {
        fetch(shard, context, &request.group_id, partitions, None).await
    };
    single_group_response(version, answer)
}

/// v0 reads what `OffsetCommit` v0 stored, and only that, as Kafka 3.9 read `ZooKeeper`.
async fn fetch_standalone(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    group: &str,
    partitions: Vec<(String, Vec<i32>)>,
) -> GroupOffsets {
    let requested: Vec<(String, i32)> = partitions
        .iter()
        .flat_map(|(topic, indexes)| indexes.iter().map(move |i| (topic.clone(), *i)))
        .collect();
    if !context.authorize_group(Operation::Read, group) {
        return GroupOffsets {
            error_code: codes::GROUP_AUTHORIZATION_FAILED,
            offsets: requested.into_iter().map(|(t, p)| (t, p, None)).collect(),
        };
    }
    let fetched = shard
        .on_group_coordinator(group, move |groups, at| async move {
            groups.fetch_standalone(at, partitions).await
        })
        .await;
    match fetched.and_then(|fetched| fetched) {
        Ok(offsets) => GroupOffsets {
            error_code: codes::NONE,
            offsets: offsets
                .into_iter()
                // Topics the principal may not describe are left out, as Kafka leaves them out.
                .filter(|(topic, _, _)| context.authorize_topic(Operation::Describe, topic))
                .map(|(topic, partition, offset)| {
                    let value = offset.map(|offset| CommittedOffset {
                        offset,
                        ..no_commit()
                    });
                    (topic, partition, value)
                })
                .collect(),
        },
        Err(error_code) => GroupOffsets {
            error_code,
            offsets: requested.into_iter().map(|(t, p)| (t, p, None)).collect(),
        },
    }
}

async fn fetch(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    group: &str,
    partitions: Option<Vec<(String, Vec<i32>)>>,
    member: Option<(String, i32)>,
) -> GroupOffsets {
    let requested: Vec<(String, i32)> = partitions
        .iter()
        .flatten()
        .flat_map(|(topic, indexes)| indexes.iter().map(move |i| (topic.clone(), *i)))
        .collect();
    if !context.authorize_group(Operation::Read, group) {
        return GroupOffsets {
            error_code: codes::GROUP_AUTHORIZATION_FAILED,
            offsets: requested.into_iter().map(|(t, p)| (t, p, None)).collect(),
        };
    }
    let fetched = shard
        .on_group_coordinator(group, move |groups, at| async move {
            groups.fetch_offsets(at, partitions, member).await
        })
        .await;
    match fetched.and_then(|fetched| fetched) {
        // Topics the principal may not describe are left out, as Kafka leaves them out.
        Ok(mut offsets) => GroupOffsets {
            offsets: {
                offsets.retain(|(topic, _, _)| context.authorize_topic(Operation::Describe, topic));
                offsets
            },
            error_code: codes::NONE,
        },
        Err(error_code) => GroupOffsets {
            error_code,
            // Kafka echoes the requested partitions with the error on each.
            offsets: requested.into_iter().map(|(t, p)| (t, p, None)).collect(),
        },
    }
}

/// One topic's partitions with their committed offsets.
type TopicOffsets = (String, Vec<(i32, Option<CommittedOffset>)>);

/// Groups consecutive entries of the same topic, keeping request order.
fn by_topic(offsets: Vec<(String, i32, Option<CommittedOffset>)>) -> Vec<TopicOffsets> {
    let mut topics: Vec<TopicOffsets> = Vec::new();
    for (topic, partition, value) in offsets {
        match topics.last_mut() {
            Some((last, partitions)) if *last == topic => partitions.push((partition, value)),
            _ => topics.push((topic, vec![(partition, value)])),
        }
    }
    topics
}

fn single_group_response(version: i16, answer: GroupOffsets) -> OffsetFetchResponse {
    // v0-1 have no group-level error: it goes on every partition instead.
    let partition_code = if version < 2 {
        answer.error_code
    } else {
        codes::NONE
    };
    let topics = by_topic(answer.offsets)
        .into_iter()
        .map(|(topic, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(index, value)| {
                    // v0 answers as Kafka 3.9 read ZooKeeper: the offset alone, and a
                    // partition without one is UNKNOWN_TOPIC_OR_PARTITION.
                    let error_code = match (&value, version) {
                        (None, 0) if partition_code == codes::NONE => {
                            codes::UNKNOWN_TOPIC_OR_PARTITION
                        }
                        _ => partition_code,
                    };
                    let value = value.unwrap_or_else(no_commit);
                    let metadata = if version == 0 { "" } else { &value.metadata };
                    let described = OffsetFetchResponsePartition::default()
                        .with_partition_index(index)
                        .with_committed_offset(value.offset)
                        .with_metadata(Some(str_bytes(metadata)))
                        .with_error_code(error_code);
                    if version >= 5 {
                        described.with_committed_leader_epoch(value.leader_epoch)
                    } else {
                        described
                    }
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(str_bytes(&topic)))
                .with_partitions(partitions)
        })
        .collect();
    let response = OffsetFetchResponse::default().with_topics(topics);
    if version >= 2 {
        response.with_error_code(answer.error_code)
    } else {
        response
    }
}

fn multi_group_entry(
    group_id: kafka_protocol::messages::GroupId,
    answer: GroupOffsets,
) -> OffsetFetchResponseGroup {
    let topics = by_topic(answer.offsets)
        .into_iter()
        .map(|(topic, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(index, value)| {
                    let value = value.unwrap_or_else(no_commit);
                    OffsetFetchResponsePartitions::default()
                        .with_partition_index(index)
                        .with_committed_offset(value.offset)
                        .with_committed_leader_epoch(value.leader_epoch)
                        .with_metadata(Some(str_bytes(&value.metadata)))
                })
                .collect();
            OffsetFetchResponseTopics::default()
                .with_name(TopicName(str_bytes(&topic)))
                .with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponseGroup::default()
        .with_group_id(group_id)
        .with_topics(topics)
        .with_error_code(answer.error_code)
}

fn no_commit() -> CommittedOffset {
    CommittedOffset {
        offset: -1,
        leader_epoch: -1,
        metadata: String::new(),
        commit_timestamp_ms: -1,
        expire_timestamp_ms: None,
    }
}
