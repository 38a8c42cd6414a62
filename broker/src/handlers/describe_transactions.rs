//! `DescribeTransactions` (KIP-664): each id's state, producer, timeout, start and
//! partitions, from its coordinator. An id the principal may not DESCRIBE gets
//! `TRANSACTIONAL_ID_AUTHORIZATION_FAILED`, an unknown one `TRANSACTIONAL_ID_NOT_FOUND`.

use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId, TopicName,
    TransactionalId,
};

use crate::acl::model::{Operation, ResourceType};
use crate::handlers::context::{str_bytes, GroupAccess, RequestContext};
use crate::transactions::codes;
use crate::transactions::state::TxnMetadata;

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let mut states = Vec::with_capacity(request.transactional_ids.len());
    for id in request.transactional_ids {
        let name = id.0.to_string();
        let described = if name.is_empty() {
            Err(codes::INVALID_REQUEST)
        } else if !context.authorize(Operation::Describe, ResourceType::TransactionalId, &name) {
            Err(codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
        } else {
            shard
                .on_txn_coordinator(&name, |coordinator, at| async move {
                    coordinator.describe(at).await
                })
                .await
                .and_then(|described| described)
        };
        states.push(state(id, described));
    }
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

fn state(id: TransactionalId, described: Result<TxnMetadata, i16>) -> TransactionState {
    let metadata = match described {
        Ok(metadata) => metadata,
        Err(code) => {
            return TransactionState::default()
                .with_transactional_id(id)
                .with_error_code(code)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_start_time_ms(-1)
        }
    };
    let mut topics: Vec<TopicData> = Vec::new();
    for tp in &metadata.partitions {
        match topics.last_mut() {
            Some(last) if *last.topic.0 == *tp.topic => last.partitions.push(tp.partition),
            _ => topics.push(
                TopicData::default()
                    .with_topic(TopicName(str_bytes(&tp.topic)))
                    .with_partitions(vec![tp.partition]),
            ),
        }
    }
    TransactionState::default()
        .with_transactional_id(id)
        .with_transaction_state(str_bytes(metadata.state.name()))
        .with_transaction_timeout_ms(metadata.timeout_ms)
        .with_transaction_start_time_ms(metadata.start_ms)
        .with_producer_id(ProducerId(metadata.producer_id))
        .with_producer_epoch(metadata.producer_epoch)
        .with_topics(topics)
}
