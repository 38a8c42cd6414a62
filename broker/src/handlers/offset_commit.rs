//! `OffsetCommit`: routed to the group's coordinator, which writes the offsets to its
//! `__consumer_offsets` partition and answers once they are fdatasync'd. As in Kafka
//! (`KafkaApis.handleOffsetCommitRequest`), a partition that does not exist in the metadata
//! is answered `UNKNOWN_TOPIC_OR_PARTITION` here and never reaches the coordinator, whether
//! the commit comes from a group member or is a simple (generation -1) commit.
//!
//! Old versions: v0 commits are stored apart from the group's, the offset alone and without
//! the group's membership rules, as Kafka 3.9 wrote them to `ZooKeeper`; only `OffsetFetch` v0
//! reads them (`GroupCoordinator::commit_standalone`). v1 carries a per-partition commit
//! timestamp (-1: the broker's clock), v2-4 a retention time (see `stored_value`).

use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::groups::records::CommittedOffset;
use crate::groups::CommitRequest;
use crate::handlers::context::{GroupAccess, RequestContext};

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    mut request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let refused_topics = refuse_unauthorized(context, &mut request);
    let now_ms = shard.clock.now_ms();
    let snapshot = shard.metadata.current();
    // Per partition of the request, in order: whether it exists (and goes to the coordinator).
    let known: Vec<bool> = request
        .topics
        .iter()
        .flat_map(|topic| {
            let snapshot = &snapshot;
            topic.partitions.iter().map(move |partition| {
                snapshot
                    .owner_of(topic.name.as_str(), partition.partition_index)
                    .is_some()
            })
        })
        .collect();
    let mut known_flags = known.iter();
    // -1 (the default, and every version but 2-4): the broker's `offsets.retention`.
    let retention_time_ms = request.retention_time_ms;
    let offsets: Vec<(String, i32, CommittedOffset)> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(move |partition| {
                let value = stored_value(partition, retention_time_ms, now_ms);
                (topic.name.to_string(), partition.partition_index, value)
            })
        })
        .filter(|_| *known_flags.next().expect("one flag per partition"))
        .collect();
    let count = offsets.len();
    let coordinator_codes = if count == 0 {
        // Nothing left to commit: Kafka answers without asking the coordinator.
        Vec::new()
    } else if context.api_version == 0 {
        let standalone = offsets
            .into_iter()
            .map(|(topic, partition, value)| (topic, partition, value.offset, value.metadata.len()))
            .collect();
        shard
            .on_group_coordinator(&request.group_id, move |groups, at| async move {
                groups.commit_standalone(at, standalone).await
            })
            .await
            .unwrap_or_else(|code| vec![code; count])
    } else {
        let commit = CommitRequest {
            member_id: request.member_id.to_string(),
            instance_id: request.group_instance_id.map(|id| id.to_string()),
            generation: request.generation_id_or_member_epoch,
            offsets,
        };
        shard
            .on_group_coordinator(&request.group_id, move |groups, at| async move {
                groups.commit(at, commit).await
            })
            .await
            .unwrap_or_else(|code| vec![code; count])
    };
    let mut partition_codes = merge_codes(&known, coordinator_codes).into_iter();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            topic_answer(topic, || {
                partition_codes.next().expect("one code per partition")
            })
        })
        .chain(refused_topics)
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// A topic's answer: each of its partitions, in request order, with the next of `codes`.
fn topic_answer(
    topic: OffsetCommitRequestTopic,
    mut codes: impl FnMut() -> i16,
) -> OffsetCommitResponseTopic {
    let partitions = topic
        .partitions
        .iter()
        .map(|partition| {
            OffsetCommitResponsePartition::default()
                .with_partition_index(partition.partition_index)
                .with_error_code(codes())
        })
        .collect();
    OffsetCommitResponseTopic::default()
        .with_name(topic.name)
        .with_partitions(partitions)
}

/// Takes out of the request the topics it may not commit: all of them without READ on the
/// group (`GROUP_AUTHORIZATION_FAILED`), else those without READ on the topic
/// (`TOPIC_AUTHORIZATION_FAILED`); returns their answers.
fn refuse_unauthorized(
    context: &RequestContext,
    request: &mut OffsetCommitRequest,
) -> Vec<OffsetCommitResponseTopic> {
    if !context.enforces_acls() {
        return Vec::new();
    }
    let group_allowed = context.authorize_group(Operation::Read, &request.group_id);
    let (readable, unreadable): (Vec<_>, Vec<_>) = std::mem::take(&mut request.topics)
        .into_iter()
        .partition(|topic| group_allowed && context.authorize_topic(Operation::Read, &topic.name));
    request.topics = readable;
    let refused_code = if group_allowed {
        codes::TOPIC_AUTHORIZATION_FAILED
    } else {
        codes::GROUP_AUTHORIZATION_FAILED
    };
    unreadable
        .into_iter()
        .map(|topic| topic_answer(topic, || refused_code))
        .collect()
}

/// What a request partition commits, as Kafka 3.9's `OffsetAndMetadata.fromRequest` makes
/// it: the commit timestamp is v1's `commit_timestamp` when the client set one, else now (it
/// is -1, the default, in every other version); v2-4's `retention_time_ms`, when not -1,
/// makes the offset expire that long after now instead of after `offsets.retention`.
fn stored_value(
    partition: &OffsetCommitRequestPartition,
    retention_time_ms: i64,
    now_ms: i64,
) -> CommittedOffset {
    CommittedOffset {
        offset: partition.committed_offset,
        leader_epoch: partition.committed_leader_epoch,
        metadata: partition
            .committed_metadata
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        commit_timestamp_ms: if partition.commit_timestamp == -1 {
            now_ms
        } else {
            partition.commit_timestamp
        },
        expire_timestamp_ms: (retention_time_ms != -1)
            .then(|| now_ms.saturating_add(retention_time_ms)),
    }
}

/// One code per partition of the request: the coordinator's codes, in order, for the
/// partitions that exist; `UNKNOWN_TOPIC_OR_PARTITION` for the others.
fn merge_codes(known: &[bool], coordinator_codes: Vec<i16>) -> Vec<i16> {
    assert_eq!(
        known.iter().filter(|known| **known).count(),
        coordinator_codes.len(),
        "the coordinator answers one code per partition it was given"
    );
    let mut coordinator_codes = coordinator_codes.into_iter();
    known
        .iter()
        .map(|&known| {
            if known {
                coordinator_codes.next().expect("counted above")
            } else {
                codes::UNKNOWN_TOPIC_OR_PARTITION
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_commit_timestamp_is_kept_and_minus_one_means_now() {
        let partition = OffsetCommitRequestPartition::default().with_committed_offset(17);
        assert_eq!(
            stored_value(&partition, -1, 1_000).commit_timestamp_ms,
            1_000
        );
        let stamped = partition.with_commit_timestamp(555);
        let stored = stored_value(&stamped, -1, 1_000);
        assert_eq!((stored.offset, stored.commit_timestamp_ms), (17, 555));
        assert_eq!(
            stored.expire_timestamp_ms, None,
            "no retention: the broker's"
        );
    }

    #[test]
    fn v2_to_v4_retention_expires_the_offset_that_long_after_now() {
        let partition = OffsetCommitRequestPartition::default().with_committed_offset(17);
        let stored = stored_value(&partition, 60_000, 1_000);
        assert_eq!(stored.expire_timestamp_ms, Some(61_000));
        assert_eq!(
            stored_value(&partition, i64::MAX, 1_000).expire_timestamp_ms,
            Some(i64::MAX)
        );
    }

    #[test]
    fn unknown_partitions_keep_their_place_among_the_coordinators_codes() {
        let known = [true, false, true, false];
        assert_eq!(
            merge_codes(&known, vec![codes::NONE, 22]),
            vec![
                codes::NONE,
                codes::UNKNOWN_TOPIC_OR_PARTITION,
                22,
                codes::UNKNOWN_TOPIC_OR_PARTITION
            ]
        );
        assert_eq!(
            merge_codes(&[false], Vec::new()),
            vec![codes::UNKNOWN_TOPIC_OR_PARTITION]
        );
    }
}
