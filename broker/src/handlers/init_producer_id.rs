//! `InitProducerId`: for idempotent producers a producer id that is never reused, or the
//! next epoch of one we issued (KIP-360); with a transactional id, the id's transaction
//! coordinator answers (`transactions`): a new producer id, or the next epoch, fencing the
//! previous producer and aborting its open transaction first.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::acl::model::{Operation, ResourceType};
use crate::groups;
use crate::handlers::context::{GroupAccess, RequestContext};
use crate::transactions::{codes, state};

/// Clients below this version know `INVALID_PRODUCER_EPOCH`, not `PRODUCER_FENCED`
/// (KIP-588, as Kafka's `KafkaApis` maps it).
const FIRST_VERSION_KNOWING_FENCED: i16 = 4;

/// The shard that allocates producer ids (see `producer_state::ProducerIds`).
const ALLOCATOR_SHARD: usize = 0;

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let failed = |code| {
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if let Some(id) = request.transactional_id.as_ref() {
        let id = id.0.to_string();
        return match transactional(shard, context, &request, id).await {
            Ok((producer_id, epoch)) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(epoch),
            Err(code) => failed(state::for_version(
                code,
                context.api_version,
                FIRST_VERSION_KNOWING_FENCED,
            )),
        };
    }
    // Idempotence: IDEMPOTENT_WRITE on the cluster, or WRITE on any topic (Kafka 3+).
    if !context.authorize_cluster(Operation::IdempotentWrite)
        && !context.authorize_any(Operation::Write, ResourceType::Topic)
    {
        return failed(ResponseError::ClusterAuthorizationFailed.code());
    }
    let (producer_id, epoch) = (request.producer_id.0, request.producer_epoch);
    let allocated =
        groups::on_coordinator(shard.router, ALLOCATOR_SHARD, move |groups| async move {
            groups.init_producer_id(producer_id, epoch).await
        });
    match allocated.await {
        Some(Ok((producer_id, epoch))) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch),
        Some(Err(code)) => failed(code),
        None => failed(ResponseError::CoordinatorNotAvailable.code()),
    }
}

/// The transactional path: WRITE on the transactional id, then the id's coordinator.
async fn transactional(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: &InitProducerIdRequest,
    id: String,
) -> Result<(i64, i16), i16> {
    if id.is_empty() {
        return Err(codes::INVALID_REQUEST);
    }
    if !context.authorize(Operation::Write, ResourceType::TransactionalId, &id) {
        return Err(codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    }
    // KIP-360: v3+ may name the producer id and epoch it had; -1/-1 means none.
    let expected = (request.producer_id.0 >= 0 && request.producer_epoch >= 0)
        .then_some((request.producer_id.0, request.producer_epoch));
    let timeout_ms = request.transaction_timeout_ms;
    shard
        .on_txn_coordinator(&id, move |coordinator, at| async move {
            coordinator.init_producer_id(at, timeout_ms, expected).await
        })
        .await?
}
