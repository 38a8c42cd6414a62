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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 4;

    fn tp(partition: i32) -> TopicPartition {
        TopicPartition {
            topic: "t".into(),
            partition,
        }
    }

    fn begun() -> TxnMetadata {
        rotated(None, 7, false, 1000, 0)
    }

    fn ongoing() -> TxnMetadata {
        add_partitions(Some(&begun()), false, 7, 0, &[tp(0)], MAX, 5)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_new_id_gets_a_producer_id_at_epoch_0() {
        assert_eq!(
            plan_init(None, false, None, 1000, 0),
            InitPlan::NewProducerId {
                record_last_epoch: false
            }
        );
        let first = begun();
        assert_eq!((first.producer_id, first.producer_epoch), (7, 0));
        assert_eq!(first.state, TxnState::Empty);
    }

    #[test]
    fn init_again_bumps_the_epoch_and_fences_the_old_producer() {
        let InitPlan::Persist(next) = plan_init(Some(&begun()), false, None, 1000, 1) else {
            panic!("a bump");
        };
        assert_eq!(next.producer_epoch, 1);
        assert_eq!(
            add_partitions(Some(&next), false, 7, 0, &[tp(0)], MAX, 2),
            Err(codes::PRODUCER_FENCED)
        );
        assert_eq!(
            end_txn(Some(&next), false, 7, 0, true, 2),
            EndPlan::Answer(codes::PRODUCER_FENCED)
        );
    }

    #[test]
    fn init_with_an_ongoing_transaction_aborts_it_at_a_bumped_epoch() {
        let InitPlan::AbortOngoing(prepared) = plan_init(Some(&ongoing()), false, None, 1000, 9)
        else {
            panic!("an abort first");
        };
        assert_eq!(prepared.state, TxnState::PrepareAbort);
        assert_eq!(prepared.producer_epoch, 1);
        assert_eq!(prepared.partitions, [tp(0)].into());
        // While it completes, the retry is told to wait.
        assert_eq!(
            plan_init(Some(&prepared), false, None, 1000, 10),
            InitPlan::Refuse(codes::CONCURRENT_TRANSACTIONS)
        );
        let done = completed(&prepared, 11).unwrap();
        let InitPlan::Persist(next) = plan_init(Some(&done), false, None, 1000, 12) else {
            panic!("a bump");
        };
        assert_eq!((next.producer_epoch, next.state), (2, TxnState::Empty));
    }

    #[test]
    fn kip_360_retries_and_fencing() {
        let current = begun();
        // The producer names its current epoch: bumped, the old epoch remembered.
        let InitPlan::Persist(next) = plan_init(Some(&current), false, Some((7, 0)), 1000, 1)
        else {
            panic!("a bump");
        };
        assert_eq!((next.producer_epoch, next.last_producer_epoch), (1, 0));
        // A retry of that request (it never saw the answer) gets the same epoch.
        assert_eq!(
            plan_init(Some(&next), false, Some((7, 0)), 1000, 2),
            InitPlan::Current {
                producer_id: 7,
                epoch: 1
            }
        );
        // Another producer id, or an older epoch, is fenced.
        assert_eq!(
            plan_init(Some(&next), false, Some((8, 1)), 1000, 2),
            InitPlan::Refuse(codes::PRODUCER_FENCED)
        );
        let InitPlan::Persist(third) = plan_init(Some(&next), false, Some((7, 1)), 1000, 3) else {
            panic!("a bump");
        };
        assert_eq!(
            plan_init(Some(&third), false, Some((7, 0)), 1000, 4),
            InitPlan::Refuse(codes::PRODUCER_FENCED)
        );
    }

    #[test]
    fn an_exhausted_epoch_rotates_the_producer_id() {
        let mut current = begun();
        current.producer_epoch = i16::MAX - 1;
        assert_eq!(
            plan_init(Some(&current), false, None, 1000, 1),
            InitPlan::NewProducerId {
                record_last_epoch: false
            }
        );
        let next = rotated(Some(&current), 8, true, 1000, 1);
        assert_eq!((next.producer_id, next.producer_epoch), (8, 0));
        assert_eq!(
            (next.last_producer_id, next.last_producer_epoch),
            (7, i16::MAX - 1)
        );
        // The retry with the old id and exhausted epoch is answered with the new one.
        assert_eq!(
            plan_init(Some(&next), false, Some((7, i16::MAX - 1)), 1000, 2),
            InitPlan::Current {
                producer_id: 8,
                epoch: 0
            }
        );
    }

    #[test]
    fn out_of_order_requests_get_kafkas_codes() {
        let empty = begun();
        assert_eq!(
            end_txn(Some(&empty), false, 7, 0, true, 1),
            EndPlan::Answer(codes::INVALID_TXN_STATE)
        );
        assert_eq!(
            end_txn(None, false, 7, 0, true, 1),
            EndPlan::Answer(codes::INVALID_PRODUCER_ID_MAPPING)
        );
        assert_eq!(
            add_partitions(Some(&empty), false, 99, 0, &[tp(0)], MAX, 1),
            Err(codes::INVALID_PRODUCER_ID_MAPPING)
        );
        assert_eq!(
            add_partitions(Some(&empty), true, 7, 0, &[tp(0)], MAX, 1),
            Err(codes::CONCURRENT_TRANSACTIONS)
        );
        let EndPlan::Prepare(prepared) = end_txn(Some(&ongoing()), false, 7, 0, true, 6) else {
            panic!("a prepare");
        };
        assert_eq!(
            end_txn(Some(&prepared), false, 7, 0, true, 7),
            EndPlan::Answer(codes::CONCURRENT_TRANSACTIONS)
        );
        assert_eq!(
            end_txn(Some(&prepared), false, 7, 0, false, 7),
            EndPlan::Answer(codes::INVALID_TXN_STATE)
        );
        assert_eq!(
            add_partitions(Some(&prepared), false, 7, 0, &[tp(1)], MAX, 7),
            Err(codes::CONCURRENT_TRANSACTIONS)
        );
        let done = completed(&prepared, 8).unwrap();
        assert_eq!(
            end_txn(Some(&done), false, 7, 0, true, 9),
            EndPlan::Answer(codes::NONE)
        );
        assert_eq!(
            end_txn(Some(&done), false, 7, 0, false, 9),
            EndPlan::Answer(codes::INVALID_TXN_STATE)
        );
        assert!(done.partitions.is_empty());
    }

    #[test]
    fn partitions_per_transaction_are_bounded() {
        let many: Vec<_> = (0..=i32::try_from(MAX).unwrap()).map(tp).collect();
        assert_eq!(
            add_partitions(Some(&begun()), false, 7, 0, &many, MAX, 1),
            Err(codes::OVER_PARTITIONS_BOUND)
        );
    }

    #[test]
    fn timeouts_and_expiry() {
        let current = ongoing(); // started at 5, timeout 1000
        assert!(!timed_out(&current, 1005));
        assert!(timed_out(&current, 1006));
        assert!(
            !expired(&current, 10, 1_000_000),
            "an ongoing id never expires"
        );
        assert!(expired(&begun(), 10, 10));
        assert_eq!(
            for_version(codes::PRODUCER_FENCED, 1, 2),
            codes::INVALID_PRODUCER_EPOCH
        );
        assert_eq!(
            for_version(codes::PRODUCER_FENCED, 2, 2),
            codes::PRODUCER_FENCED
        );
    }

    /// One request of the model test.
    #[derive(Clone, Debug)]
    enum Op {
        Init,
        /// Add partitions with the current producer (or a stale epoch / wrong id).
        Add {
            partitions: Vec<i32>,
            who: Who,
        },
        End {
            commit: bool,
            who: Who,
        },
        /// The markers of a prepared transaction are written.
        MarkersDone,
        Timeout,
    }

    #[derive(Clone, Copy, Debug)]
    enum Who {
        Current,
        StaleEpoch,
        OtherId,
    }

    /// The simple model: what a client sees, written from Kafka's documented behaviour.
    #[derive(Clone, Debug, PartialEq)]
    enum Phase {
        Empty,
        Ongoing,
        Preparing { commit: bool },
        Complete { commit: bool },
    }

    #[derive(Clone, Debug)]
    struct Model {
        producer: Option<(i64, i16)>,
        phase: Phase,
        partitions: BTreeSet<i32>,
    }

    fn op() -> impl Strategy<Value = Op> {
        let who = prop_oneof![
            6 => Just(Who::Current),
            1 => Just(Who::StaleEpoch),
            1 => Just(Who::OtherId)
        ];
        prop_oneof![
            Just(Op::Init),
            (proptest::collection::vec(0..6_i32, 1..3), who.clone())
                .prop_map(|(partitions, who)| Op::Add { partitions, who }),
            (any::<bool>(), who).prop_map(|(commit, who)| Op::End { commit, who }),
            Just(Op::MarkersDone),
            Just(Op::Timeout),
        ]
    }

    proptest! {
        /// Random request sequences: the state machine's codes, producer and state match
        /// the model's after every step.
        #[test]
        fn the_state_machine_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
            let mut real: Option<TxnMetadata> = None;
            let mut model = Model { producer: None, phase: Phase::Empty, partitions: BTreeSet::new() };
            let mut next_pid = 100_i64;
            for (step, op) in ops.into_iter().enumerate() {
                let now = i64::try_from(step).unwrap() * 10;
                let ident = |who: Who, model: &Model| {
                    let (pid, epoch) = model.producer.unwrap_or((1, 0));
                    match who {
                        Who::Current => (pid, epoch),
                        Who::StaleEpoch => (pid, epoch - 1),
                        Who::OtherId => (pid + 1000, epoch),
                    }
                };
                match op {
                    Op::Init => {
                        let code = model_init(&mut model, &mut next_pid);
                        let got = match plan_init(real.as_ref(), false, None, 50, now) {
                            InitPlan::NewProducerId { .. } => {
                                let pid = next_pid - 1;
                                real = Some(rotated(real.as_ref(), pid, false, 50, now));
                                codes::NONE
                            }
                            InitPlan::Persist(next) => { real = Some(next); codes::NONE }
                            InitPlan::AbortOngoing(next) => { real = Some(next); codes::CONCURRENT_TRANSACTIONS }
                            InitPlan::Refuse(code) => code,
                            InitPlan::Current { .. } => codes::NONE,
                        };
                        prop_assert_eq!(got, code);
                    }
                    Op::Add { partitions, who } => {
                        let (pid, epoch) = ident(who, &model);
                        let code = model_add(&mut model, pid, epoch, &partitions);
                        let tps: Vec<_> = partitions.iter().copied().map(tp).collect();
                        let got = match add_partitions(real.as_ref(), false, pid, epoch, &tps, 100, now) {
                            Ok(Some(next)) => { real = Some(next); codes::NONE }
                            Ok(None) => codes::NONE,
                            Err(code) => code,
                        };
                        prop_assert_eq!(got, code);
                    }
                    Op::End { commit, who } => {
                        let (pid, epoch) = ident(who, &model);
                        let code = model_end(&mut model, pid, epoch, commit);
                        let got = match end_txn(real.as_ref(), false, pid, epoch, commit, now) {
                            EndPlan::Prepare(next) => { real = Some(next); codes::NONE }
                            EndPlan::Answer(code) => code,
                        };
                        prop_assert_eq!(got, code);
                    }
                    Op::MarkersDone => {
                        if let Phase::Preparing { commit } = model.phase {
                            model.phase = Phase::Complete { commit };
                            model.partitions.clear();
                        }
                        if let Some(next) = real.as_ref().and_then(|r| completed(r, now)) {
                            real = Some(next);
                        }
                    }
                    Op::Timeout => {
                        // The ticker found the ongoing transaction past its timeout.
                        if model.phase == Phase::Ongoing {
                            model.phase = Phase::Preparing { commit: false };
                            if let Some((pid, epoch)) = model.producer {
                                model.producer = Some((pid, epoch + 1));
                            }
                        }
                        if let Some(current) = real.as_ref().filter(|r| r.state == TxnState::Ongoing) {
                            real = Some(fenced_abort(current, now));
                        }
                    }
                }
                // The states agree.
                match (&real, &model.producer) {
                    (None, None) => {}
                    (Some(r), Some((pid, epoch))) => {
                        prop_assert_eq!((r.producer_id, r.producer_epoch), (*pid, *epoch));
                        let phase = match r.state {
                            TxnState::Empty => Phase::Empty,
                            TxnState::Ongoing => Phase::Ongoing,
                            TxnState::PrepareCommit => Phase::Preparing { commit: true },
                            TxnState::PrepareAbort => Phase::Preparing { commit: false },
                            TxnState::CompleteCommit => Phase::Complete { commit: true },
                            TxnState::CompleteAbort => Phase::Complete { commit: false },
                            other => { prop_assert!(false, "unexpected {other:?}"); unreachable!() }
                        };
                        prop_assert_eq!(&phase, &model.phase);
                        let partitions: BTreeSet<i32> = r.partitions.iter().map(|tp| tp.partition).collect();
                        prop_assert_eq!(&partitions, &model.partitions);
                    }
                    (real, model) => prop_assert!(false, "real {real:?} vs model {model:?}"),
                }
            }
        }
    }

    fn model_init(model: &mut Model, next_pid: &mut i64) -> i16 {
        let Some((pid, epoch)) = model.producer else {
            model.producer = Some((*next_pid, 0));
            *next_pid += 1;
            return codes::NONE;
        };
        match model.phase {
            Phase::Preparing { .. } => codes::CONCURRENT_TRANSACTIONS,
            Phase::Ongoing => {
                model.producer = Some((pid, epoch + 1));
                model.phase = Phase::Preparing { commit: false };
                codes::CONCURRENT_TRANSACTIONS
            }
            Phase::Empty | Phase::Complete { .. } => {
                model.producer = Some((pid, epoch + 1));
                model.phase = Phase::Empty;
                model.partitions.clear();
                codes::NONE
            }
        }
    }

    fn model_check(model: &Model, pid: i64, epoch: i16) -> Result<(), i16> {
        match model.producer {
            None => Err(codes::INVALID_PRODUCER_ID_MAPPING),
            Some((p, _)) if p != pid => Err(codes::INVALID_PRODUCER_ID_MAPPING),
            Some((_, e)) if e != epoch => Err(codes::PRODUCER_FENCED),
            Some(_) => Ok(()),
        }
    }

    fn model_add(model: &mut Model, pid: i64, epoch: i16, partitions: &[i32]) -> i16 {
        if let Err(code) = model_check(model, pid, epoch) {
            return code;
        }
        match model.phase {
            Phase::Preparing { .. } => codes::CONCURRENT_TRANSACTIONS,
            Phase::Ongoing => {
                model.partitions.extend(partitions);
                codes::NONE
            }
            Phase::Empty | Phase::Complete { .. } => {
                model.partitions = partitions.iter().copied().collect();
                model.phase = Phase::Ongoing;
                codes::NONE
            }
        }
    }

    fn model_end(model: &mut Model, pid: i64, epoch: i16, commit: bool) -> i16 {
        if let Err(code) = model_check(model, pid, epoch) {
            return code;
        }
        match model.phase {
            Phase::Ongoing => {
                model.phase = Phase::Preparing { commit };
                codes::NONE
            }
            Phase::Preparing { commit: c } if c == commit => codes::CONCURRENT_TRANSACTIONS,
            Phase::Complete { commit: c } if c == commit => codes::NONE,
            _ => codes::INVALID_TXN_STATE,
        }
    }
}
