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
use crate::groups::codes as group_codes;
use crate::groups::records::CommittedOffset;
use crate::handlers::context::{str_bytes, GroupAccess, RequestContext};

/// One group's answer: a group-level error code, then per (topic, partition) the committed
/// offset (None: nothing committed) in request order.
struct GroupOffsets {
    error_code: i16,
    offsets: Vec<(String, i32, Option<CommittedOffset>)>,
    /// Partitions answered `UNSTABLE_OFFSET_COMMIT` (KIP-447: a transaction that committed
    /// their offset has not ended yet, and the request asked for stable offsets).
    unstable: Vec<(String, i32)>,
}

impl GroupOffsets {
    fn failed(error_code: i16, requested: Vec<(String, i32)>) -> Self {
        GroupOffsets {
            error_code,
            offsets: requested.into_iter().map(|(t, p)| (t, p, None)).collect(),
            unstable: Vec::new(),
        }
    }
}

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let version = context.api_version;
    // v7+ (KIP-447); false in earlier versions, which have no such field.
    let require_stable = request.require_stable;
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
            let answer = fetch(
                shard,
                context,
                &group.group_id,
                partitions,
                member,
                require_stable,
            )
            .await;
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
        fetch(
            shard,
            context,
            &request.group_id,
            partitions,
            None,
            require_stable,
        )
        .await
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
        return GroupOffsets::failed(codes::GROUP_AUTHORIZATION_FAILED, requested);
    }
    let fetched = shard
        .on_group_coordinator(group, move |groups, at| async move {
            groups.fetch_standalone(at, partitions).await
        })
        .await;
    match fetched.and_then(|fetched| fetched) {
        Ok(offsets) => GroupOffsets {
            error_code: codes::NONE,
            unstable: Vec::new(),
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
        Err(error_code) => GroupOffsets::failed(error_code, requested),
    }
}

async fn fetch(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    group: &str,
    partitions: Option<Vec<(String, Vec<i32>)>>,
    member: Option<(String, i32)>,
    require_stable: bool,
) -> GroupOffsets {
    let requested: Vec<(String, i32)> = partitions
        .iter()
        .flatten()
        .flat_map(|(topic, indexes)| indexes.iter().map(move |i| (topic.clone(), *i)))
        .collect();
    if !context.authorize_group(Operation::Read, group) {
        return GroupOffsets::failed(codes::GROUP_AUTHORIZATION_FAILED, requested);
    }
    let fetched = shard
        .on_group_coordinator(group, move |groups, at| async move {
            groups
                .fetch_offsets(at, partitions, member, require_stable)
                .await
        })
        .await;
    match fetched.and_then(|fetched| fetched) {
        // Topics the principal may not describe are left out, as Kafka leaves them out.
        Ok((mut offsets, unstable)) => GroupOffsets {
            offsets: {
                offsets.retain(|(topic, _, _)| context.authorize_topic(Operation::Describe, topic));
                offsets
            },
            error_code: codes::NONE,
            unstable,
        },
        // Kafka echoes the requested partitions with the error on each.
        Err(error_code) => GroupOffsets::failed(error_code, requested),
    }
}

/// The error code of one partition: `code`, or `UNSTABLE_OFFSET_COMMIT` when it is listed
/// as unstable.
fn code_unless_unstable(unstable: &[(String, i32)], topic: &str, partition: i32, code: i16) -> i16 {
    if unstable.iter().any(|(t, p)| t == topic && *p == partition) {
        group_codes::UNSTABLE_OFFSET_COMMIT
    } else {
        code
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
    let unstable = answer.unstable;
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
                        _ => code_unless_unstable(&unstable, &topic, index, partition_code),
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
    let unstable = answer.unstable;
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
                        .with_error_code(code_unless_unstable(
                            &unstable,
                            &topic,
                            index,
                            codes::NONE,
                        ))
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
