//! What the parts of `transactions` share: the internal topic, bounds and error codes.

pub use crate::metadata::TRANSACTION_STATE_TOPIC;

/// Partitions of `__transaction_state`. Kafka's default is 50, sized for a cluster; here,
/// as for `__consumer_offsets` (`groups::OFFSETS_TOPIC_PARTITIONS`), each partition is an
/// open log with its own flusher and preallocated segment, and 8 spread transactional ids
/// over every shard of this machine. Fixed: the id's partition is `hash % count`, so the
/// count can never change once ids are placed.
pub const TRANSACTION_STATE_PARTITIONS: i32 = 8;

/// Transactional ids one shard's coordinator holds in memory (each costs its metadata
/// and partition set). At the bound, an `InitProducerId` for an id the shard does not
/// know is refused `COORDINATOR_NOT_AVAILABLE` (retriable: ids expire after
/// `transactional.id.expiration.ms`); known ids carry on.
pub const TXN_IDS_PER_SHARD_MAX: usize = 100_000;

/// Partitions one transaction may span. Kafka has no bound; each costs a marker write at
/// the end and a place in the record. Past it `AddPartitionsToTxn` is refused
/// (`INVALID_REQUEST`, as Kafka has no code for it) and the transaction stays as it was.
pub const TXN_PARTITIONS_MAX: usize = 10_000;

/// Bytes of a transactional id (stored with an i16 length, as Kafka's log does).
pub const TXN_ID_BYTES_MAX: usize = i16::MAX as usize;

/// Error codes of the transaction APIs, named once.
pub mod codes {
    use kafka_protocol::error::ResponseError;

    pub const NONE: i16 = 0;
    pub const CONCURRENT_TRANSACTIONS: i16 = ResponseError::ConcurrentTransactions.code();
    pub const PRODUCER_FENCED: i16 = ResponseError::ProducerFenced.code();
    pub const INVALID_PRODUCER_EPOCH: i16 = ResponseError::InvalidProducerEpoch.code();
    pub const INVALID_PRODUCER_ID_MAPPING: i16 = ResponseError::InvalidProducerIdMapping.code();
    pub const INVALID_TXN_STATE: i16 = ResponseError::InvalidTxnState.code();
    pub const INVALID_TRANSACTION_TIMEOUT: i16 = ResponseError::InvalidTransactionTimeout.code();
    pub const COORDINATOR_NOT_AVAILABLE: i16 = ResponseError::CoordinatorNotAvailable.code();
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = ResponseError::CoordinatorLoadInProgress.code();
    pub const NOT_COORDINATOR: i16 = ResponseError::NotCoordinator.code();
    pub const INVALID_REQUEST: i16 = ResponseError::InvalidRequest.code();
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = ResponseError::UnknownTopicOrPartition.code();
    pub const OPERATION_NOT_ATTEMPTED: i16 = ResponseError::OperationNotAttempted.code();
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 =
        ResponseError::TransactionalIdAuthorizationFailed.code();
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = ResponseError::TopicAuthorizationFailed.code();
    pub const GROUP_AUTHORIZATION_FAILED: i16 = ResponseError::GroupAuthorizationFailed.code();
    pub const TRANSACTIONAL_ID_NOT_FOUND: i16 = ResponseError::TransactionalIdNotFound.code();
    pub const INVALID_REGULAR_EXPRESSION: i16 = ResponseError::InvalidRegularExpression.code();
    /// What a transaction past `TXN_PARTITIONS_MAX` gets.
    pub const OVER_PARTITIONS_BOUND: i16 = INVALID_REQUEST;
}
