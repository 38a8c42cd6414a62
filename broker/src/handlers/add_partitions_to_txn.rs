//! `AddPartitionsToTxn`: adds partitions to a producer's transaction before it writes to
//! them. v0-3 are the client's form (one transaction); v4+ are the batched form brokers
//! send (KIP-890), which needs `CLUSTER_ACTION`, may carry several transactions, and with
//! `verify_only` only checks that the partitions are in the transaction.
//!
//! As Kafka: a partition the principal may not WRITE gets `TOPIC_AUTHORIZATION_FAILED`, a
//! partition that does not exist `UNKNOWN_TOPIC_OR_PARTITION`, and when any does, the
//! others get `OPERATION_NOT_ATTEMPTED` and nothing is added. Otherwise every partition
//! gets the coordinator's one answer.

use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse};

use crate::acl::model::{Operation, ResourceType};
use crate::error_codes::CLUSTER_AUTHORIZATION_FAILED;
use crate::handlers::context::{GroupAccess, RequestContext};
use crate::metadata::TopicPartition;
use crate::transactions::{codes, state};

/// Clients below this version know `INVALID_PRODUCER_EPOCH`, not `PRODUCER_FENCED`.
const FIRST_VERSION_KNOWING_FENCED: i16 = 2;
/// The first version of the batched (broker) form.
const BATCHED_VERSION: i16 = 4;

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    if context.api_version < BATCHED_VERSION {
        let transaction = AddPartitionsToTxnTransaction::default()
            .with_transactional_id(request.v3_and_below_transactional_id)
            .with_producer_id(request.v3_and_below_producer_id)
            .with_producer_epoch(request.v3_and_below_producer_epoch)
            .with_topics(request.v3_and_below_topics);
        let result = add_to_one(shard, context, transaction).await;
        return AddPartitionsToTxnResponse::default()
            .with_results_by_topic_v3_and_below(result.topic_results);
    }
    if !context.authorize_cluster(Operation::ClusterAction) {
        return AddPartitionsToTxnResponse::default().with_error_code(CLUSTER_AUTHORIZATION_FAILED);
    }
    let mut results = Vec::with_capacity(request.transactions.len());
    for transaction in request.transactions {
        results.push(add_to_one(shard, context, transaction).await);
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(results)
}

/// One transaction's partitions: checked, then added (or verified) by its coordinator.
async fn add_to_one(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    transaction: AddPartitionsToTxnTransaction,
) -> AddPartitionsToTxnResult {
    let id = transaction.transactional_id.0.to_string();
    let asked: Vec<TopicPartition> = transaction
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(|partition| TopicPartition {
                topic: topic.name.0.as_str().into(),
                partition: *partition,
            })
        })
        .collect();
    let codes_for: Vec<i16> = if id.is_empty() {
        vec![codes::INVALID_REQUEST; asked.len()]
    } else if !context.authorize(Operation::Write, ResourceType::TransactionalId, &id) {
        vec![codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED; asked.len()]
    } else if let Some(refused) = refusals(shard, context, &asked) {
        refused
    } else {
        let (producer_id, epoch) = (transaction.producer_id.0, transaction.producer_epoch);
        let verify_only = context.api_version >= BATCHED_VERSION && transaction.verify_only;
        let count = asked.len();
        let answered = shard
            .on_txn_coordinator(&id, move |coordinator, at| async move {
                if verify_only {
                    coordinator
                        .verify_partitions(at, producer_id, epoch, asked)
                        .await
                } else {
                    let code = coordinator
                        .add_partitions(at, producer_id, epoch, asked)
                        .await;
                    Ok(vec![code; count])
                }
            })
            .await;
        match answered {
            Ok(Ok(per_partition)) => per_partition,
            Ok(Err(code)) | Err(code) => vec![code; count],
        }
    };
    let codes_for = codes_for
        .into_iter()
        .map(|code| state::for_version(code, context.api_version, FIRST_VERSION_KNOWING_FENCED));
    AddPartitionsToTxnResult::default()
        .with_transactional_id(transaction.transactional_id)
        .with_topic_results(results(&transaction.topics, codes_for))
}

/// Per partition the refusal (unauthorized, unknown) or `OPERATION_NOT_ATTEMPTED`, when
/// any partition is refused; None when all may be added.
fn refusals(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    asked: &[TopicPartition],
) -> Option<Vec<i16>> {
    let snapshot = shard.metadata.current();
    let refused: Vec<Option<i16>> = asked
        .iter()
        .map(|tp| {
            if !context.authorize(Operation::Write, ResourceType::Topic, &tp.topic) {
                return Some(codes::TOPIC_AUTHORIZATION_FAILED);
            }
            let exists = snapshot
                .topic(&tp.topic)
                .is_some_and(|topic| (0..topic.partition_count()).contains(&tp.partition));
            (!exists).then_some(codes::UNKNOWN_TOPIC_OR_PARTITION)
        })
        .collect();
    refused.iter().any(Option::is_some).then(|| {
        refused
            .into_iter()
            .map(|code| code.unwrap_or(codes::OPERATION_NOT_ATTEMPTED))
            .collect()
    })
}

/// The response's topics, in the request's order, with one code per partition.
fn results(
    topics: &[AddPartitionsToTxnTopic],
    mut codes_for: impl Iterator<Item = i16>,
) -> Vec<AddPartitionsToTxnTopicResult> {
    topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(*partition)
                        .with_partition_error_code(codes_for.next().unwrap_or(codes::NONE))
                })
                .collect();
            AddPartitionsToTxnTopicResult::default()
                .with_name(topic.name.clone())
                .with_results_by_partition(partitions)
        })
        .collect()
}
