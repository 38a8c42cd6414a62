//! `TxnOffsetCommit`: a transactional producer commits a consumer group's offsets as part
//! of its transaction. Checked as Kafka does: WRITE on the transactional id, READ on the
//! group, READ on each topic (`TOPIC_AUTHORIZATION_FAILED`) and the topic's existence
//! (`UNKNOWN_TOPIC_OR_PARTITION`). The transaction coordinator then confirms the producer
//! is the id's current one and that the group's `__consumer_offsets` partition was added
//! to its ongoing transaction by `AddOffsetsToTxn` (KIP-890's verification; otherwise
//! `INVALID_TXN_STATE`, or the producer's `INVALID_PRODUCER_ID_MAPPING`/`PRODUCER_FENCED`),
//! when that coordinator is on this broker (in a cluster it may not be: not checked then).
//! The group coordinator writes the offsets as the producer's transactional batch and keeps
//! them pending until the transaction's marker on that partition commits (they become the
//! group's offsets) or aborts (they are dropped): `GroupCoordinator::complete_txn`.

use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use crate::acl::model::{Operation, ResourceType};
use crate::groups::records::CommittedOffset;
use crate::groups::{partition_for, CommitRequest, OFFSETS_TOPIC, OFFSETS_TOPIC_PARTITIONS};
use crate::handlers::context::{GroupAccess, RequestContext};
use crate::metadata::TopicPartition;
use crate::transactions::{codes, state};

/// Clients below this version know `INVALID_PRODUCER_EPOCH`, not `PRODUCER_FENCED`.
const FIRST_VERSION_KNOWING_FENCED: i16 = 3;

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let count: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    let per_partition = commit(shard, context, &request, count).await;
    let mut per_partition = per_partition
        .into_iter()
        .map(|code| state::for_version(code, context.api_version, FIRST_VERSION_KNOWING_FENCED));
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    TxnOffsetCommitResponsePartition::default()
                        .with_partition_index(partition.partition_index)
                        .with_error_code(per_partition.next().unwrap_or(codes::NONE))
                })
                .collect();
            TxnOffsetCommitResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

/// One code per partition of the request, in order.
async fn commit(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: &TxnOffsetCommitRequest,
    count: usize,
) -> Vec<i16> {
    let id = request.transactional_id.0.to_string();
    let group = request.group_id.0.to_string();
    if id.is_empty() || group.is_empty() {
        return vec![codes::INVALID_REQUEST; count];
    }
    if !context.authorize(Operation::Write, ResourceType::TransactionalId, &id) {
        return vec![codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED; count];
    }
    if !context.authorize_group(Operation::Read, &group) {
        return vec![codes::GROUP_AUTHORIZATION_FAILED; count];
    }
    let snapshot = shard.metadata.current();
    let refusals: Vec<Option<i16>> = request
        .topics
        .iter()
        .flat_map(|topic| {
            let name = topic.name.0.as_str();
            let refusal = if !context.authorize(Operation::Read, ResourceType::Topic, name) {
                Some(codes::TOPIC_AUTHORIZATION_FAILED)
            } else if snapshot.topic(name).is_none() {
                Some(codes::UNKNOWN_TOPIC_OR_PARTITION)
            } else {
                None
            };
            topic.partitions.iter().map(move |_| refusal)
        })
        .collect();
    let (producer_id, epoch) = (request.producer_id.0, request.producer_epoch);
    let verified = verify(shard, &id, &group, producer_id, epoch).await;
    if verified != codes::NONE {
        return vec![verified; count];
    }
    let now_ms = shard.clock.now_ms();
    let offsets: Vec<(String, i32, CommittedOffset)> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(move |partition| {
                let value = CommittedOffset {
                    offset: partition.committed_offset,
                    leader_epoch: partition.committed_leader_epoch,
                    metadata: partition
                        .committed_metadata
                        .as_deref()
                        .unwrap_or_default()
                        .to_string(),
                    commit_timestamp_ms: now_ms,
                    expire_timestamp_ms: None,
                };
                (topic.name.0.to_string(), partition.partition_index, value)
            })
        })
        .zip(&refusals)
        .filter(|(_, refused)| refused.is_none())
        .map(|(offset, _)| offset)
        .collect();
    let accepted = offsets.len();
    let coordinator_codes = if accepted == 0 {
        Vec::new()
    } else {
        let commit = CommitRequest {
            member_id: request.member_id.to_string(),
            instance_id: request.group_instance_id.as_ref().map(ToString::to_string),
            generation: request.generation_id,
            offsets,
        };
        shard
            .on_group_coordinator(&group, move |groups, at| async move {
                groups
                    .commit_transactional(at, producer_id, epoch, commit)
                    .await
            })
            .await
            .unwrap_or_else(|code| vec![code; accepted])
    };
    let mut from_coordinator = coordinator_codes.into_iter();
    refusals
        .into_iter()
        .map(|refused| refused.unwrap_or_else(|| from_coordinator.next().unwrap_or(codes::NONE)))
        .collect()
}

/// KIP-890's check: the group's offsets partition is in the producer's ongoing transaction
/// (`NONE`, or the transaction coordinator's error code). Checked where the transaction
/// coordinator is on this broker (always on one node). In a cluster it may lead its
/// `__transaction_state` partition on another broker, which this one cannot ask yet
/// (Kafka's group coordinator asks it with `AddPartitionsToTxn` v4 `verify_only`): the commit
/// is taken unverified there, as Kafka before 3.6 took it.
async fn verify(
    shard: &GroupAccess<'_>,
    id: &str,
    group: &str,
    producer_id: i64,
    epoch: i16,
) -> i16 {
    let offsets_partition = TopicPartition {
        topic: OFFSETS_TOPIC.into(),
        partition: partition_for(group, OFFSETS_TOPIC_PARTITIONS),
    };
    let asked = shard
        .ask_txn_coordinator_about(id, producer_id, epoch, &offsets_partition)
        .await;
    asked.unwrap_or_else(|| {
        tracing::debug!(transactional_id = %id, %group, "TxnOffsetCommit taken without verification: the transaction coordinator is on another broker");
        codes::NONE
    })
}
