//! The transaction state machine of one transactional id, as Kafka's
//! `TransactionCoordinator` and `TransactionMetadata` run it (transaction version 1, the
//! one librdkafka and the Java client use against a broker that does not advertise
//! `transaction.version` 2): pure functions from the current metadata and a request to
//! the new metadata to persist, or the error code to answer. No IO, no time source (the
//! caller passes `now_ms`), so the coordinator and the model test drive the same code.
//!
//! A transition is persisted before it takes effect: the coordinator marks the id
//! `pending` while the record is appended (Kafka's `pendingState`), and every request
//! arriving meanwhile is answered `CONCURRENT_TRANSACTIONS`.

use std::collections::BTreeSet;

use crate::metadata::TopicPartition;
use crate::transactions::types::codes;

/// Kafka's `RecordBatch.NO_PRODUCER_EPOCH` / `NO_PRODUCER_ID`.
pub const NO_PRODUCER_EPOCH: i16 = -1;
pub const NO_PRODUCER_ID: i64 = -1;

/// Kafka's transaction states, with their numbers in the transaction log
/// (`TransactionState.id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
    PrepareEpochFence,
}

impl TxnState {
    pub fn id(self) -> i8 {
        match self {
            Self::Empty => 0,
            Self::Ongoing => 1,
            Self::PrepareCommit => 2,
            Self::PrepareAbort => 3,
            Self::CompleteCommit => 4,
            Self::CompleteAbort => 5,
            Self::Dead => 6,
            Self::PrepareEpochFence => 7,
        }
    }

    pub fn from_id(id: i8) -> Option<Self> {
        Some(match id {
            0 => Self::Empty,
            1 => Self::Ongoing,
            2 => Self::PrepareCommit,
            3 => Self::PrepareAbort,
            4 => Self::CompleteCommit,
            5 => Self::CompleteAbort,
            6 => Self::Dead,
            7 => Self::PrepareEpochFence,
            _ => return None,
        })
    }

    /// Kafka's names, as `DescribeTransactions`/`ListTransactions` report them.
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::Ongoing => "Ongoing",
            Self::PrepareCommit => "PrepareCommit",
            Self::PrepareAbort => "PrepareAbort",
            Self::CompleteCommit => "CompleteCommit",
            Self::CompleteAbort => "CompleteAbort",
            Self::Dead => "Dead",
            Self::PrepareEpochFence => "PrepareEpochFence",
        }
    }
}

/// What the coordinator knows of one transactional id (Kafka's `TransactionMetadata`
/// without its pending state, which the coordinator keeps beside it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnMetadata {
    pub producer_id: i64,
    /// The producer id before the last rotation (epoch exhaustion), for a retried
    /// `InitProducerId` (KIP-360). Not persisted, as in Kafka's log format v0.
    pub last_producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump made for a client that named its epoch (KIP-360).
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<TopicPartition>,
    pub start_ms: i64,
    pub update_ms: i64,
}

impl TxnMetadata {
    /// A new id's metadata: Kafka creates it with no epoch, and the first `InitProducerId`
    /// bumps it to 0.
    pub fn fresh(producer_id: i64, timeout_ms: i32, now_ms: i64) -> Self {
        Self {
            producer_id,
            last_producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            start_ms: -1,
            update_ms: now_ms,
        }
    }

    /// Kafka's `isEpochExhausted`: the epoch must leave room for one fencing bump.
    pub fn epoch_exhausted(epoch: i16) -> bool {
        epoch >= i16::MAX - 1
    }
}

/// What `InitProducerId` with a transactional id does, decided from the id's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitPlan {
    /// Answer with this error code, change nothing.
    Refuse(i16),
    /// Answer with the current producer id and epoch, change nothing (a retry of a bump
    /// the producer never saw the answer to).
    Current { producer_id: i64, epoch: i16 },
    /// Persist this metadata (epoch bumped, state Empty), then answer with its id and epoch.
    Persist(TxnMetadata),
    /// Allocate a producer id, then persist [`rotated`] of it and answer with it.
    NewProducerId { record_last_epoch: bool },
    /// An ongoing transaction is in the way: persist this `PrepareAbort` (epoch bumped to
    /// fence the old producer), write the abort markers, and answer
    /// `CONCURRENT_TRANSACTIONS` so the client retries once it is complete.
    AbortOngoing(TxnMetadata),
}

/// A request's producer id and epoch when the client names them (KIP-360); `None` for a
/// first `InitProducerId` (-1/-1).
pub type Expected = Option<(i64, i16)>;

/// Kafka's `prepareInitProducerIdTransit`, with `TransactionCoordinator`'s
/// `isValidProducerId`. `current` is None for an id never seen (or expired): the caller
/// then allocates a producer id and calls [`rotated`] with `record_last_epoch = false`.
pub fn plan_init(
    current: Option<&TxnMetadata>,
    pending: bool,
    expected: Expected,
    timeout_ms: i32,
    now_ms: i64,
) -> InitPlan {
    let Some(current) = current else {
        return InitPlan::NewProducerId {
            record_last_epoch: false,
        };
    };
    if pending {
        return InitPlan::Refuse(codes::CONCURRENT_TRANSACTIONS);
    }
    let valid = |(producer_id, epoch): (i64, i16)| {
        current.producer_epoch == NO_PRODUCER_EPOCH
            || producer_id == current.producer_id
            || (producer_id == current.last_producer_id && TxnMetadata::epoch_exhausted(epoch))
    };
    if !expected.is_none_or(valid) {
        return InitPlan::Refuse(codes::PRODUCER_FENCED);
    }
    match current.state {
        // Dead and PrepareEpochFence are transient, never seen between requests here (the
        // coordinator persists Dead only to forget the id, and writes a fence as
        // PrepareAbort).
        TxnState::PrepareCommit
        | TxnState::PrepareAbort
        | TxnState::Dead
        | TxnState::PrepareEpochFence => InitPlan::Refuse(codes::CONCURRENT_TRANSACTIONS),
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
            if TxnMetadata::epoch_exhausted(current.producer_epoch)
                && expected.is_none_or(|(_, epoch)| epoch == current.producer_epoch)
            {
                return InitPlan::NewProducerId {
                    record_last_epoch: expected.is_some(),
                };
            }
            bump_epoch(
                current,
                expected.map(|(_, epoch)| epoch),
                timeout_ms,
                now_ms,
            )
        }
        TxnState::Ongoing => InitPlan::AbortOngoing(fenced_abort(current, now_ms)),
    }
}

/// Kafka's `prepareIncrementProducerEpoch`.
fn bump_epoch(
    current: &TxnMetadata,
    expected_epoch: Option<i16>,
    timeout_ms: i32,
    now_ms: i64,
) -> InitPlan {
    let bumped = current.producer_epoch + 1;
    let (epoch, last_epoch) = match expected_epoch {
        None => (bumped, NO_PRODUCER_EPOCH),
        Some(expected)
            if current.producer_epoch == NO_PRODUCER_EPOCH
                || expected == current.producer_epoch =>
        {
            (bumped, current.producer_epoch)
        }
        Some(expected) if expected == current.last_producer_epoch => {
            return InitPlan::Current {
                producer_id: current.producer_id,
                epoch: current.producer_epoch,
            };
        }
        Some(_) => return InitPlan::Refuse(codes::PRODUCER_FENCED),
    };
    InitPlan::Persist(TxnMetadata {
        producer_epoch: epoch,
        last_producer_epoch: last_epoch,
        timeout_ms,
        state: TxnState::Empty,
        partitions: BTreeSet::new(),
        start_ms: -1,
        update_ms: now_ms,
        ..current.clone()
    })
}

/// Kafka's `prepareProducerIdRotation`: a new producer id at epoch 0 (a new id, or the
/// old epoch ran out).
pub fn rotated(
    current: Option<&TxnMetadata>,
    new_producer_id: i64,
    record_last_epoch: bool,
    timeout_ms: i32,
    now_ms: i64,
) -> TxnMetadata {
    let mut next = TxnMetadata::fresh(new_producer_id, timeout_ms, now_ms);
    next.producer_epoch = 0;
    if let Some(current) = current {
        next.last_producer_id = current.producer_id;
        if record_last_epoch {
            next.last_producer_epoch = current.producer_epoch;
        }
    }
    next
}

/// Kafka's `prepareFenceProducerEpoch` followed by the abort it leads to
/// (`endTransaction` with `isFromClient = false`): `PrepareAbort` at the next epoch, which
/// the markers carry so the fenced producer's late writes are refused.
pub fn fenced_abort(current: &TxnMetadata, now_ms: i64) -> TxnMetadata {
    let epoch = if current.producer_epoch < i16::MAX {
        current.producer_epoch + 1
    } else {
        current.producer_epoch
    };
    TxnMetadata {
        producer_epoch: epoch,
        last_producer_epoch: NO_PRODUCER_EPOCH,
        state: TxnState::PrepareAbort,
        update_ms: now_ms,
        ..current.clone()
    }
}

/// The checks every request of a begun producer passes first (Kafka's order): the id's
/// producer id, then its epoch, then a transition in flight.
fn check_producer(
    current: Option<&TxnMetadata>,
    pending: bool,
    producer_id: i64,
    epoch: i16,
) -> Result<&TxnMetadata, i16> {
    let current = current.ok_or(codes::INVALID_PRODUCER_ID_MAPPING)?;
    if current.producer_id != producer_id {
        return Err(codes::INVALID_PRODUCER_ID_MAPPING);
    }
    if current.producer_epoch != epoch {
        return Err(codes::PRODUCER_FENCED);
    }
    if pending {
        return Err(codes::CONCURRENT_TRANSACTIONS);
    }
    Ok(current)
}

/// `AddPartitionsToTxn` (and `AddOffsetsToTxn`, which adds the group's offsets
/// partition): `Ok(None)` when every partition is already in the ongoing transaction
/// (nothing to write), `Ok(Some(next))` the metadata to persist. More than
/// `partitions_max` partitions in one transaction is refused (see
/// `types::TXN_PARTITIONS_MAX`).
pub fn add_partitions(
    current: Option<&TxnMetadata>,
    pending: bool,
    producer_id: i64,
    epoch: i16,
    partitions: &[TopicPartition],
    partitions_max: usize,
    now_ms: i64,
) -> Result<Option<TxnMetadata>, i16> {
    let current = check_producer(current, pending, producer_id, epoch)?;
    match current.state {
        TxnState::PrepareCommit | TxnState::PrepareAbort => {
            return Err(codes::CONCURRENT_TRANSACTIONS);
        }
        TxnState::Ongoing if partitions.iter().all(|tp| current.partitions.contains(tp)) => {
            return Ok(None);
        }
        TxnState::Ongoing
        | TxnState::Empty
        | TxnState::CompleteCommit
        | TxnState::CompleteAbort => {}
        TxnState::Dead | TxnState::PrepareEpochFence => return Err(codes::INVALID_TXN_STATE),
    }
    let begins = current.state != TxnState::Ongoing;
    let mut next = current.clone();
    if begins {
        next.partitions.clear();
        next.start_ms = now_ms;
    }
    next.partitions.extend(partitions.iter().cloned());
    if next.partitions.len() > partitions_max {
        return Err(codes::OVER_PARTITIONS_BOUND);
    }
    next.state = TxnState::Ongoing;
    next.update_ms = now_ms;
    Ok(Some(next))
}

/// What `EndTxn` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndPlan {
    /// Answer with this code (0 for a retry of an end already complete), change nothing.
    Answer(i16),
    /// Persist this PrepareCommit/PrepareAbort, answer, then write the markers.
    Prepare(TxnMetadata),
}

/// Kafka's `endTransaction` for a client's request (`isFromClient = true`: the epoch must
/// be the current one exactly).
pub fn end_txn(
    current: Option<&TxnMetadata>,
    pending: bool,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    now_ms: i64,
) -> EndPlan {
    let current = match check_producer(current, pending, producer_id, epoch) {
        Ok(current) => current,
        Err(code) => return EndPlan::Answer(code),
    };
    let answer = |matches: bool, code| {
        EndPlan::Answer(if matches {
            code
        } else {
            codes::INVALID_TXN_STATE
        })
    };
    match current.state {
        TxnState::Ongoing => EndPlan::Prepare(TxnMetadata {
            state: if commit {
                TxnState::PrepareCommit
            } else {
                TxnState::PrepareAbort
            },
            update_ms: now_ms,
            ..current.clone()
        }),
        TxnState::CompleteCommit => answer(commit, codes::NONE),
        TxnState::CompleteAbort => answer(!commit, codes::NONE),
        TxnState::PrepareCommit => answer(commit, codes::CONCURRENT_TRANSACTIONS),
        TxnState::PrepareAbort => answer(!commit, codes::CONCURRENT_TRANSACTIONS),
        TxnState::Empty | TxnState::Dead | TxnState::PrepareEpochFence => {
            EndPlan::Answer(codes::INVALID_TXN_STATE)
        }
    }
}

/// Kafka's `prepareComplete`: once every marker is written, CompleteCommit/CompleteAbort
/// with no partitions. `None` when `current` is not in a Prepare state (nothing to do).
pub fn completed(current: &TxnMetadata, now_ms: i64) -> Option<TxnMetadata> {
    let state = match current.state {
        TxnState::PrepareCommit => TxnState::CompleteCommit,
        TxnState::PrepareAbort => TxnState::CompleteAbort,
        _ => return None,
    };
    Some(TxnMetadata {
        state,
        partitions: BTreeSet::new(),
        update_ms: now_ms,
        ..current.clone()
    })
}

/// Whether the transaction ran past its timeout (Kafka's `abortTimedOutTransactions`
/// picks Ongoing ones whose start is older than their timeout).
pub fn timed_out(current: &TxnMetadata, now_ms: i64) -> bool {
    current.state == TxnState::Ongoing
        && current
            .start_ms
            .saturating_add(i64::from(current.timeout_ms))
            < now_ms
}

/// Whether an idle id may be forgotten (Kafka's `transactional.id.expiration.ms`: no
/// transaction in progress and no change for that long).
pub fn expired(current: &TxnMetadata, expiration_ms: i64, now_ms: i64) -> bool {
    matches!(
        current.state,
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
    ) && current.update_ms.saturating_add(expiration_ms) <= now_ms
}

/// The error code for a version that predates `PRODUCER_FENCED` (KIP-588): those
/// clients know only `INVALID_PRODUCER_EPOCH`. `first_version_knowing` is the first
/// version of the API whose clients understand `PRODUCER_FENCED`.
pub fn for_version(code: i16, version: i16, first_version_knowing: i16) -> i16 {
    if code == codes::PRODUCER_FENCED && version < first_version_knowing {
        codes::INVALID_PRODUCER_EPOCH
    } else {
        code
    }
}
