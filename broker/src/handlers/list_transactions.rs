//! `ListTransactions` (KIP-664): every transactional id of every shard's coordinator (each
//! loads its `__transaction_state` partitions first), filtered by state names (an unknown
//! name is listed back in `unknown_state_filters`), producer ids, v1+'s minimum running
//! time (`duration_filter`, ongoing transactions older than it) and v2+'s id pattern (a
//! regular expression matching whole ids). Only ids the principal may DESCRIBE are listed.

use futures::future::join_all;
use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId,
};

use crate::acl::model::{Operation, ResourceType};
use crate::handlers::context::{str_bytes, GroupAccess, RequestContext};
use crate::transactions::state::TxnState;
use crate::transactions::{self, codes, TxnDescription, TXN_IDS_PER_SHARD_MAX};

/// Every state name, to tell a filter naming an unknown one.
const STATES: [TxnState; 8] = [
    TxnState::Empty,
    TxnState::Ongoing,
    TxnState::PrepareCommit,
    TxnState::PrepareAbort,
    TxnState::CompleteCommit,
    TxnState::CompleteAbort,
    TxnState::Dead,
    TxnState::PrepareEpochFence,
];

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let pattern = match request.transactional_id_pattern.as_deref() {
        Some(pattern) if context.api_version >= 2 && !pattern.is_empty() => {
            match regex::Regex::new(&format!("^(?:{pattern})$")) {
                Ok(regex) => Some(regex),
                Err(_) => {
                    return ListTransactionsResponse::default()
                        .with_error_code(codes::INVALID_REGULAR_EXPRESSION)
                }
            }
        }
        _ => None,
    };
    let asks = (0..shard.config.shard_count()).map(|owner| {
        transactions::on_coordinator(shard.router, owner, |coordinator| async move {
            coordinator.load_all().await;
            coordinator.list(TXN_IDS_PER_SHARD_MAX).0
        })
    });
    let mut error_code = codes::NONE;
    let mut listed: Vec<TxnDescription> = Vec::new();
    for reply in join_all(asks).await {
        match reply {
            Some(found) => listed.extend(found),
            None => error_code = codes::COORDINATOR_NOT_AVAILABLE,
        }
    }
    let (known, unknown): (Vec<_>, Vec<_>) = request
        .state_filters
        .iter()
        .partition(|name| STATES.iter().any(|state| state.name() == name.as_str()));
    let now_ms = shard.clock.now_ms();
    let duration = (context.api_version >= 1 && request.duration_filter >= 0)
        .then_some(request.duration_filter);
    listed.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
    let states = listed
        .into_iter()
        .filter(|txn| {
            known.is_empty() && unknown.is_empty()
                || known
                    .iter()
                    .any(|name| name.as_str() == txn.metadata.state.name())
        })
        .filter(|txn| {
            request.producer_id_filters.is_empty()
                || request
                    .producer_id_filters
                    .contains(&ProducerId(txn.metadata.producer_id))
        })
        .filter(|txn| {
            duration.is_none_or(|duration| {
                txn.metadata.state == TxnState::Ongoing
                    && now_ms.saturating_sub(txn.metadata.start_ms) >= duration
            })
        })
        .filter(|txn| {
            pattern
                .as_ref()
                .is_none_or(|regex| regex.is_match(&txn.transactional_id))
        })
        .filter(|txn| {
            context.authorize(
                Operation::Describe,
                ResourceType::TransactionalId,
                &txn.transactional_id,
            )
        })
        .map(|txn| {
            TransactionState::default()
                .with_transactional_id(TransactionalId(str_bytes(&txn.transactional_id)))
                .with_producer_id(ProducerId(txn.metadata.producer_id))
                .with_transaction_state(str_bytes(txn.metadata.state.name()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_error_code(error_code)
        .with_unknown_state_filters(unknown.into_iter().cloned().collect())
        .with_transaction_states(states)
}
