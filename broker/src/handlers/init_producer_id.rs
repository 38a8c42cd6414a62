//! `InitProducerId` for idempotent producers: a producer id that is never reused, or the
//! next epoch of one we issued (KIP-360). Transactions are not served: a transactional id
//! gets `TRANSACTIONAL_ID_AUTHORIZATION_FAILED`, which clients report as fatal rather than
//! retrying forever against a coordinator that does not exist.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::acl::model::{Operation, ResourceType};
use crate::groups;
use crate::handlers::context::{GroupAccess, RequestContext};

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
    if request.transactional_id.is_some() {
        return failed(ResponseError::TransactionalIdAuthorizationFailed.code());
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
