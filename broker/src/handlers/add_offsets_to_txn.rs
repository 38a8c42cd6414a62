//! `AddOffsetsToTxn`: adds the group's `__consumer_offsets` partition to the producer's
//! transaction, so the offsets it then commits with `TxnOffsetCommit` become visible with
//! the transaction's commit marker on that partition (Kafka's rule).

use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};

use crate::acl::model::{Operation, ResourceType};
use crate::groups::{partition_for, OFFSETS_TOPIC, OFFSETS_TOPIC_PARTITIONS};
use crate::handlers::context::{GroupAccess, RequestContext};
use crate::metadata::TopicPartition;
use crate::transactions::{codes, state};

/// Clients below this version know `INVALID_PRODUCER_EPOCH`, not `PRODUCER_FENCED`.
const FIRST_VERSION_KNOWING_FENCED: i16 = 2;

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let code = add(shard, context, request).await;
    AddOffsetsToTxnResponse::default().with_error_code(state::for_version(
        code,
        context.api_version,
        FIRST_VERSION_KNOWING_FENCED,
    ))
}

async fn add(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: AddOffsetsToTxnRequest,
) -> i16 {
    let id = request.transactional_id.0.to_string();
    let group = request.group_id.0.to_string();
    if id.is_empty() || group.is_empty() {
        return codes::INVALID_REQUEST;
    }
    if !context.authorize(Operation::Write, ResourceType::TransactionalId, &id) {
        return codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
    }
    if !context.authorize_group(Operation::Read, &group) {
        return codes::GROUP_AUTHORIZATION_FAILED;
    }
    // The partition count of `__consumer_offsets` is fixed, so the group's partition is
    // known even before the topic exists.
    let offsets_partition = TopicPartition {
        topic: OFFSETS_TOPIC.into(),
        partition: partition_for(&group, OFFSETS_TOPIC_PARTITIONS),
    };
    let (producer_id, epoch) = (request.producer_id.0, request.producer_epoch);
    shard
        .on_txn_coordinator(&id, move |coordinator, at| async move {
            coordinator
                .add_partitions(at, producer_id, epoch, vec![offsets_partition])
                .await
        })
        .await
        .unwrap_or_else(|code| code)
}
