//! `EndTxn`: commits or aborts the producer's transaction. Answered once the id's
//! PrepareCommit/PrepareAbort is durable in `__transaction_state`, as Kafka answers; the
//! markers on every partition of the transaction follow, then CompleteCommit/CompleteAbort
//! (`transactions::coordinator`). Until then the id's requests get
//! `CONCURRENT_TRANSACTIONS`. Served with transaction version 1 rules at every version
//! (v5's epoch bump per transaction belongs to `transaction.version` 2, which is not
//! advertised, so clients do not use it).

use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse, ProducerId};

use crate::acl::model::{Operation, ResourceType};
use crate::handlers::context::{GroupAccess, RequestContext};
use crate::transactions::{codes, state};

/// Clients below this version know `INVALID_PRODUCER_EPOCH`, not `PRODUCER_FENCED`.
const FIRST_VERSION_KNOWING_FENCED: i16 = 2;

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: EndTxnRequest,
) -> EndTxnResponse {
    let id = request.transactional_id.0.to_string();
    let (producer_id, epoch, commit) = (
        request.producer_id.0,
        request.producer_epoch,
        request.committed,
    );
    let code = if id.is_empty() {
        codes::INVALID_REQUEST
    } else if !context.authorize(Operation::Write, ResourceType::TransactionalId, &id) {
        codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    } else {
        shard
            .on_txn_coordinator(&id, move |coordinator, at| async move {
                coordinator.end_txn(at, producer_id, epoch, commit).await
            })
            .await
            .unwrap_or_else(|code| code)
    };
    EndTxnResponse::default()
        .with_error_code(state::for_version(
            code,
            context.api_version,
            FIRST_VERSION_KNOWING_FENCED,
        ))
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}
