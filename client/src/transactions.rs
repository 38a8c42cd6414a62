//! Typed calls for transactions (KIP-664): `ListTransactions` on one broker and
//! `DescribeTransactions` on a transactional id's coordinator.

use kafka_protocol::messages::{
    DescribeTransactionsRequest, ListTransactionsRequest, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use crate::connection::Connection;
use crate::error::{check_error, Error, Result};

/// One transaction as `ListTransactions` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedTransaction {
    pub transactional_id: String,
    pub producer_id: i64,
    pub state: String,
}

/// One transaction as `DescribeTransactions` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribedTransaction {
    pub transactional_id: String,
    pub state: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub start_time_ms: i64,
    /// (topic, partitions)
    pub topics: Vec<(String, Vec<i32>)>,
}

impl Connection {
    /// `ListTransactions` on this broker, every state and producer.
    pub fn list_transactions(&mut self) -> Result<Vec<ListedTransaction>> {
        let request = ListTransactionsRequest::default().with_duration_filter(-1);
        let response = self.call(&request)?;
        check_error(response.error_code, None, "ListTransactions")?;
        Ok(response
            .transaction_states
            .into_iter()
            .map(|txn| ListedTransaction {
                transactional_id: txn.transactional_id.0.to_string(),
                producer_id: txn.producer_id.0,
                state: txn.transaction_state.to_string(),
            })
            .collect())
    }

    /// `DescribeTransactions` for one id (ask its coordinator).
    pub fn describe_transaction(&mut self, id: &str) -> Result<DescribedTransaction> {
        let request = DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![TransactionalId(StrBytes::from_string(id.to_string()))]);
        let response = self.call(&request)?;
        let Some(txn) = response.transaction_states.into_iter().next() else {
            return Err(Error::failed(format!(
                "DescribeTransactions {id}: empty answer"
            )));
        };
        check_error(txn.error_code, None, &format!("DescribeTransactions {id}"))?;
        Ok(DescribedTransaction {
            transactional_id: txn.transactional_id.0.to_string(),
            state: txn.transaction_state.to_string(),
            producer_id: txn.producer_id.0,
            producer_epoch: txn.producer_epoch,
            timeout_ms: txn.transaction_timeout_ms,
            start_time_ms: txn.transaction_start_time_ms,
            topics: txn
                .topics
                .into_iter()
                .map(|topic| (topic.topic.0.to_string(), topic.partitions))
                .collect(),
        })
    }
}
