//! The idempotent producer: producer ids that are never reused, and per-partition sequence
//! checking so a retried batch is not written twice.
//!
//! [`ProducerIds`] lives on shard 0 (reached through the group coordinator's call path):
//! ids are handed out from blocks whose end is persisted (atomically replaced file) before
//! the first id of the block is used, so after any crash the next id is above every id
//! ever issued.
//!
//! [`ProducerStates`] is part of a shard's partition table. For each partition and producer
//! it keeps the epoch and the last five batches (first/last sequence, offsets): Kafka's
//! `max.in.flight.requests.per.connection` limit for idempotence. An idempotent batch is
//! checked and appended under the partition's producer gate, so the check and the offset
//! assignment happen in one order. The state is rebuilt from the log's tail the first time
//! a partition sees an idempotent batch after a start, so a retry across a restart is still
//! recognised.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::sync::{Semaphore, StaticPermit};
use kafka_protocol::error::ResponseError;

use crate::disk::{BrokerDisk, PartitionLog};
use crate::metadata::TopicPartition;
use crate::storage::batch::{control, BatchHeader};
use crate::storage::meta::{self, MetaKind};
use crate::storage::{AppendError, AppendOutcome, CheckedBatch, Disk};

mod transactions;

pub use transactions::{
    AbortedTxn, PartitionTxns, ABORTED_TXNS_PER_PARTITION_MAX, INVALID_TXN_STATE,
    ONGOING_TXNS_PER_PARTITION_MAX, POLICY_VIOLATION,
};

/// Open transactions one shard tracks at most, over all its partitions: a batch that would
/// open one more is refused with `POLICY_VIOLATION` (as at the per-partition bound,
/// `transactions.rs`). About 100 bytes each. Checked before the append, so partitions
/// appending at the same moment may each pass it once.
pub const ONGOING_TXNS_PER_SHARD_MAX: usize = 20_000;

pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = ResponseError::OutOfOrderSequenceNumber.code();
pub const INVALID_PRODUCER_EPOCH: i16 = ResponseError::InvalidProducerEpoch.code();
pub const TRANSACTION_COORDINATOR_FENCED: i16 = ResponseError::TransactionCoordinatorFenced.code();

/// A commit or abort marker the transaction coordinator writes to one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnMarker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub coordinator_epoch: i32,
}

/// Batches remembered per producer and partition (Kafka's in-flight limit for idempotence).
const BATCHES_REMEMBERED: usize = 5;
/// How far back (in offsets) the tail scan looks for producer state after a start.
const TAIL_SCAN_OFFSETS: i64 = 200_000;
/// Bytes read per step of the tail scan.
const TAIL_SCAN_READ_BYTES: usize = 1 << 20;
/// Producer ids reserved per persisted block.
const PRODUCER_ID_BLOCK: i64 = 1000;
/// Offsets of idempotent batches between snapshots of a partition's producer state: well
/// inside `TAIL_SCAN_OFFSETS`, so the scan after a start never has to reach past one.
const SNAPSHOT_EVERY_OFFSETS: i64 = 50_000;
/// A marker, or a batch opening a transaction, takes a snapshot when the log has grown this
/// many offsets (of any batches) since the last one: the open and aborted transactions a restart needs are then never
/// further back than the scan from a snapshot reaches, however little of the partition's
/// traffic is idempotent, and a snapshot (at most about 2 MB with
/// `ABORTED_TXNS_PER_PARTITION_MAX` entries) is rewritten at most once per this many
/// offsets. Below `TAIL_SCAN_OFFSETS`, so a partition with no snapshot yet is scanned whole.
const SNAPSHOT_AFTER_MARKER_OFFSETS: i64 = 10_000;
/// The snapshot file in the partition's directory (`storage/FORMAT.md`).
const SNAPSHOT_FILE: &str = "producer-state.snapshot";
/// An empty file in the partition's directory, written (durably) before the partition's
/// first transactional batch is appended: without it the partition never held a
/// transaction, and a `read_committed` reader needs no producer state loaded
/// (`storage/FORMAT.md`).
const TRANSACTIONS_SEEN_FILE: &str = "transactions.seen";

/// The archived form of one partition's producer state (`storage/FORMAT.md`), version 3.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Eq)]
struct ProducerSnapshot {
    next_offset: i64,
    producers: Vec<SnapshotProducer>,
    /// Open transactions as of `next_offset`: (producer id, first offset).
    ongoing_txns: Vec<(i64, i64)>,
    /// Aborted transactions whose marker is below `next_offset`, in marker order.
    aborted_txns: Vec<SnapshotAbortedTxn>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Eq)]
struct SnapshotProducer {
    producer_id: i64,
    epoch: i16,
    batches: Vec<SnapshotBatch>,
    /// The max timestamp of the producer's newest batch (`DescribeProducers`); -1 when
    /// upgraded from a version-1 file, which did not record it.
    last_timestamp: i64,
    /// The coordinator epoch of the producer's last marker here; -1 none (or upgraded).
    coordinator_epoch: i32,
}

/// Kafka's `.txnindex` entry fields.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Eq)]
struct SnapshotAbortedTxn {
    producer_id: i64,
    first_offset: i64,
    last_offset: i64,
    last_stable_offset: i64,
}

/// Version 2 of the snapshot (no transactions), read and upgraded in place.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Eq)]
struct ProducerSnapshotV2 {
    next_offset: i64,
    producers: Vec<SnapshotProducerV2>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Eq)]
struct SnapshotProducerV2 {
    producer_id: i64,
    epoch: i16,
    batches: Vec<SnapshotBatch>,
    last_timestamp: i64,
}

/// Version 1 of the snapshot (no `last_timestamp`), read and upgraded in place.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Eq)]
struct ProducerSnapshotV1 {
    next_offset: i64,
    producers: Vec<SnapshotProducerV1>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Eq)]
struct SnapshotProducerV1 {
    producer_id: i64,
    epoch: i16,
    batches: Vec<SnapshotBatch>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Eq)]
struct SnapshotBatch {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: i64,
    last_offset: i64,
}

fn encode_snapshot(snapshot: &ProducerSnapshot) -> Vec<u8> {
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(snapshot).expect("plain structs");
    meta::seal(MetaKind::ProducerState, &archive)
}

/// Reads the current version, version 2 (upgraded: no transactions, coordinator epochs
/// unknown) and version 1 (also: its producers' last timestamp is unknown, -1, until their
/// next batch); the next snapshot is written as the current one.
fn decode_snapshot(file: &[u8]) -> Result<ProducerSnapshot, String> {
    let (version, payload) = meta::open_versions(
        MetaKind::ProducerState,
        file,
        &[MetaKind::ProducerState.version(), 2, 1],
    )
    .map_err(|e| e.to_string())?;
    // Each older version is upgraded one step at a time: 1 to 2, then 2 to the current.
    let v2 = match version {
        1 => {
            let archived =
                rkyv::access::<ArchivedProducerSnapshotV1, rkyv::rancor::Error>(&payload)
                    .map_err(|e| e.to_string())?;
            let v1 = rkyv::deserialize::<ProducerSnapshotV1, rkyv::rancor::Error>(archived)
                .map_err(|e| e.to_string())?;
            ProducerSnapshotV2 {
                next_offset: v1.next_offset,
                producers: v1
                    .producers
                    .into_iter()
                    .map(|p| SnapshotProducerV2 {
                        producer_id: p.producer_id,
                        epoch: p.epoch,
                        batches: p.batches,
                        last_timestamp: -1,
                    })
                    .collect(),
            }
        }
        2 => {
            let archived =
                rkyv::access::<ArchivedProducerSnapshotV2, rkyv::rancor::Error>(&payload)
                    .map_err(|e| e.to_string())?;
            rkyv::deserialize::<ProducerSnapshotV2, rkyv::rancor::Error>(archived)
                .map_err(|e| e.to_string())?
        }
        _ => {
            let archived = rkyv::access::<ArchivedProducerSnapshot, rkyv::rancor::Error>(&payload)
                .map_err(|e| e.to_string())?;
            return rkyv::deserialize::<ProducerSnapshot, rkyv::rancor::Error>(archived)
                .map_err(|e| e.to_string());
        }
    };
    Ok(ProducerSnapshot {
        next_offset: v2.next_offset,
        producers: v2
            .producers
            .into_iter()
            .map(|p| SnapshotProducer {
                producer_id: p.producer_id,
                epoch: p.epoch,
                batches: p.batches,
                last_timestamp: p.last_timestamp,
                coordinator_epoch: -1,
            })
            .collect(),
        ongoing_txns: Vec::new(),
        aborted_txns: Vec::new(),
    })
}

/// One remembered batch of a producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BatchEntry {
    first_sequence: i32,
    last_sequence: i32,
    outcome: AppendOutcome,
}

#[derive(Debug)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchEntry>,
    /// The max timestamp of the newest batch, -1 when not known.
    last_timestamp: i64,
    /// The coordinator epoch of the producer's last marker here, -1 none: a marker from an
    /// older coordinator is fenced (Kafka's `checkCoordinatorEpoch`).
    coordinator_epoch: i32,
}

impl Default for ProducerEntry {
    fn default() -> Self {
        Self {
            epoch: 0,
            batches: VecDeque::new(),
            last_timestamp: -1,
            coordinator_epoch: -1,
        }
    }
}

/// One active producer of a partition, as `DescribeProducers` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerSummary {
    pub producer_id: i64,
    pub epoch: i16,
    /// -1 when no batch of the producer is remembered.
    pub last_sequence: i32,
    pub last_timestamp: i64,
    /// Of the producer's last transaction marker here, -1 none.
    pub coordinator_epoch: i32,
    /// The first offset of the producer's open transaction here, -1 none.
    pub current_txn_start_offset: i64,
}

/// What the sequence check decides for one batch.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Append,
    /// Already in the log: answer with where it went, write nothing.
    Duplicate(AppendOutcome),
    Refuse(i16),
}

/// Kafka's sequence numbers wrap from `i32::MAX` to 0.
pub(crate) fn next_sequence(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

pub(crate) fn last_sequence(header: &BatchHeader) -> i32 {
    let last = i64::from(header.base_sequence) + i64::from(header.last_offset_delta);
    // Wraps past i32::MAX like the client's counter does.
    (last % (i64::from(i32::MAX) + 1)) as i32
}

/// What Kafka's sequence rules say of an idempotent batch: new (write it), a duplicate of a
/// remembered batch (answer with its `T`, write nothing), or refused with an error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sequenced<T> {
    New,
    Duplicate(T),
    Refused(i16),
}

/// Kafka's rules (`ProducerStateManager.checkSequence`): an older epoch is fenced; a newer
/// epoch must start at sequence 0; in the same epoch a batch equal to a remembered one is a
/// duplicate and anything but the next sequence is out of order. An unknown producer
/// (`known_epoch` `None`) is accepted at any sequence (its state may have aged out of the
/// log). `remembered` are the producer's batches, oldest first, as (first sequence, last
/// sequence, what a duplicate answers). Shared by the plain log (`check` below) and the
/// replicated partitions (`replica::producers`).
pub(crate) fn check_sequence<T, I>(
    known_epoch: Option<i16>,
    header: &BatchHeader,
    remembered: I,
) -> Sequenced<T>
where
    I: DoubleEndedIterator<Item = (i32, i32, T)> + Clone,
{
    let Some(epoch) = known_epoch else {
        return Sequenced::New;
    };
    if header.producer_epoch < epoch {
        return Sequenced::Refused(INVALID_PRODUCER_EPOCH);
    }
    if header.producer_epoch > epoch {
        return if header.base_sequence == 0 {
            Sequenced::New
        } else {
            Sequenced::Refused(OUT_OF_ORDER_SEQUENCE_NUMBER)
        };
    }
    let last = last_sequence(header);
    if let Some((_, _, at)) = remembered
        .clone()
        .find(|(first, seen_last, _)| *first == header.base_sequence && *seen_last == last)
    {
        return Sequenced::Duplicate(at);
    }
    match remembered.last() {
        Some((_, newest_last, _)) if header.base_sequence != next_sequence(newest_last) => {
            Sequenced::Refused(OUT_OF_ORDER_SEQUENCE_NUMBER)
        }
        _ => Sequenced::New,
    }
}

fn check(entry: Option<&ProducerEntry>, header: &BatchHeader) -> Verdict {
    let verdict = check_sequence(
        entry.map(|entry| entry.epoch),
        header,
        entry.into_iter().flat_map(|entry| {
            entry
                .batches
                .iter()
                .map(|b| (b.first_sequence, b.last_sequence, b.outcome))
        }),
    );
    match verdict {
        Sequenced::New => Verdict::Append,
        Sequenced::Duplicate(outcome) => Verdict::Duplicate(outcome),
        Sequenced::Refused(code) => Verdict::Refuse(code),
    }
}

/// Producer state of one partition. Owned by the partition's shard.
struct PartitionProducers {
    producers: RefCell<HashMap<i64, ProducerEntry>>,
    /// The partition's transactions (`transactions.rs`).
    txns: RefCell<PartitionTxns>,
    loaded: Cell<bool>,
    /// Offsets of idempotent batches appended since the last snapshot.
    offsets_since_snapshot: Cell<i64>,
    /// `next_offset` of the last snapshot taken or loaded (0 none).
    snapshot_offset: Cell<i64>,
    /// Snapshot files are written one at a time.
    snapshot_gate: Semaphore,
    /// Snapshots taken so far, and the newest written (or being written): an older one that
    /// gets its turn at the gate later is not written over it (it may still hold aborted
    /// entries the log cleaner had forgotten).
    snapshots_taken: Cell<u64>,
    snapshot_written: Cell<u64>,
}

impl Default for PartitionProducers {
    fn default() -> Self {
        Self {
            producers: RefCell::default(),
            txns: RefCell::default(),
            loaded: Cell::new(false),
            offsets_since_snapshot: Cell::new(0),
            snapshot_offset: Cell::new(0),
            snapshot_gate: Semaphore::new(1),
            snapshots_taken: Cell::new(0),
            snapshot_written: Cell::new(0),
        }
    }
}

impl PartitionProducers {
    /// The state as of `next_offset`, the log end offset when taken under the gate (every
    /// batch and marker appended so far is accounted for; a load ignores the snapshot when
    /// the log it finds ends below that). Batches at or past it are left out.
    fn snapshot(&self, next_offset: i64) -> ProducerSnapshot {
        let producers = self
            .producers
            .borrow()
            .iter()
            .map(|(producer_id, entry)| SnapshotProducer {
                producer_id: *producer_id,
                epoch: entry.epoch,
                last_timestamp: entry.last_timestamp,
                coordinator_epoch: entry.coordinator_epoch,
                batches: entry
                    .batches
                    .iter()
                    .filter(|b| b.outcome.last_offset < next_offset)
                    .map(|b| SnapshotBatch {
                        first_sequence: b.first_sequence,
                        last_sequence: b.last_sequence,
                        base_offset: b.outcome.base_offset,
                        last_offset: b.outcome.last_offset,
                    })
                    .collect(),
            })
            .collect();
        let txns = self.txns.borrow();
        ProducerSnapshot {
            next_offset,
            producers,
            ongoing_txns: txns
                .ongoing()
                .filter(|(_, first_offset)| *first_offset < next_offset)
                .collect(),
            aborted_txns: txns
                .aborted()
                .filter(|entry| entry.last_offset < next_offset)
                .map(|entry| SnapshotAbortedTxn {
                    producer_id: entry.producer_id,
                    first_offset: entry.first_offset,
                    last_offset: entry.last_offset,
                    last_stable_offset: entry.last_stable_offset,
                })
                .collect(),
        }
    }

    fn install(&self, snapshot: ProducerSnapshot) {
        let mut producers = self.producers.borrow_mut();
        for producer in snapshot.producers {
            let batches = producer
                .batches
                .into_iter()
                .map(|b| BatchEntry {
                    first_sequence: b.first_sequence,
                    last_sequence: b.last_sequence,
                    outcome: AppendOutcome {
                        base_offset: b.base_offset,
                        last_offset: b.last_offset,
                    },
                })
                .collect();
            let entry = ProducerEntry {
                epoch: producer.epoch,
                batches,
                last_timestamp: producer.last_timestamp,
                coordinator_epoch: producer.coordinator_epoch,
            };
            producers.insert(producer.producer_id, entry);
        }
        let mut aborted: Vec<AbortedTxn> = snapshot
            .aborted_txns
            .iter()
            .map(|entry| AbortedTxn {
                producer_id: entry.producer_id,
                first_offset: entry.first_offset,
                last_offset: entry.last_offset,
                last_stable_offset: entry.last_stable_offset,
            })
            .collect();
        // Written by this module under a CRC, but checked all the same: nothing read from
        // disk may trip an assertion later.
        let ongoing: Vec<(i64, i64)> = snapshot
            .ongoing_txns
            .iter()
            .copied()
            .filter(|(_, first_offset)| *first_offset < snapshot.next_offset)
            .collect();
        aborted.retain(|entry| entry.last_offset < snapshot.next_offset);
        self.txns.borrow_mut().restore(&ongoing, &aborted);
    }

    /// The snapshot in the partition's directory, if it is whole and not ahead of the log.
    async fn read_snapshot(tp: &TopicPartition, log: &PartitionLog) -> Option<ProducerSnapshot> {
        let path = log.dir().join(SNAPSHOT_FILE);
        let file = match log.disk().read_file(&path).await {
            Ok(file) => file?,
            Err(error) => {
                tracing::warn!(partition = %tp, %error, "producer state snapshot unreadable");
                return None;
            }
        };
        match decode_snapshot(&file) {
            Ok(snapshot) if snapshot.next_offset <= log.high_watermark() => Some(snapshot),
            Ok(snapshot) => {
                tracing::warn!(partition = %tp, snapshot_offset = snapshot.next_offset, high_watermark = log.high_watermark(), "producer state snapshot is ahead of the log; ignored");
                None
            }
            Err(error) => {
                tracing::warn!(partition = %tp, %error, "producer state snapshot invalid; ignored");
                None
            }
        }
    }
    /// Records a batch that [`check`] let through and the log then placed, asserting what
    /// that implies (the caller holds the partition's producer gate from the check on, so
    /// nothing changed in between): a producer's epoch never goes back, a new epoch starts
    /// at sequence 0, and within an epoch each batch's sequences continue the previous
    /// batch's, advancing by its record count, which is also the offsets the log gave it.
    /// Batches replayed from the log at a start go through [`Self::remember`] unchecked:
    /// the log may hold what an older state allowed.
    fn remember_appended(&self, header: &BatchHeader, outcome: AppendOutcome) {
        assert_eq!(
            outcome.last_offset - outcome.base_offset,
            i64::from(header.last_offset_delta),
            "the log placed a batch of {} records at {outcome:?}",
            header.record_count
        );
        if let Some(entry) = self.producers.borrow().get(&header.producer_id) {
            assert!(
                header.producer_epoch >= entry.epoch,
                "producer {} went back from epoch {} to {}",
                header.producer_id,
                entry.epoch,
                header.producer_epoch
            );
            let expected_sequence = if header.producer_epoch > entry.epoch {
                Some(0)
            } else {
                // A producer restored without batches may go on at any sequence (as `check`).
                entry
                    .batches
                    .back()
                    .map(|newest| next_sequence(newest.last_sequence))
            };
            if let Some(expected_sequence) = expected_sequence {
                assert_eq!(
                    header.base_sequence, expected_sequence,
                    "producer {} epoch {}: a batch out of sequence was appended",
                    header.producer_id, header.producer_epoch
                );
            }
        }
        self.remember(header, outcome);
    }

    fn remember(&self, header: &BatchHeader, outcome: AppendOutcome) {
        let mut producers = self.producers.borrow_mut();
        let entry = producers.entry(header.producer_id).or_default();
        if header.producer_epoch != entry.epoch {
            entry.batches.clear();
            entry.epoch = header.producer_epoch;
        }
        entry.batches.push_back(BatchEntry {
            first_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            outcome,
        });
        entry.last_timestamp = header.max_timestamp;
        while entry.batches.len() > BATCHES_REMEMBERED {
            entry.batches.pop_front();
        }
    }

    /// A marker the log placed at `offset` (or replayed from it): the producer's epoch
    /// moves up to the marker's (its remembered batches are of the older epoch), its
    /// coordinator epoch is the marker's, and its open transaction here, if any, is
    /// completed (an abort's entry is returned).
    fn apply_marker(&self, marker: TxnMarker, offset: i64) -> Option<AbortedTxn> {
        self.note_marker_epochs(&marker);
        self.txns
            .borrow_mut()
            .complete(marker.producer_id, marker.commit, offset)
    }

    /// The producer and coordinator epochs of a marker (also of one the log cleaner
    /// retired, which ends nothing but still fences older epochs).
    fn note_marker_epochs(&self, marker: &TxnMarker) {
        let mut producers = self.producers.borrow_mut();
        let entry = producers.entry(marker.producer_id).or_default();
        if marker.producer_epoch != entry.epoch {
            entry.batches.clear();
            entry.epoch = marker.producer_epoch;
        }
        entry.coordinator_epoch = marker.coordinator_epoch;
    }

    /// Loads the snapshot, then replays the batch headers after it (or, without one, the
    /// log's tail).
    async fn load(&self, tp: &TopicPartition, log: &PartitionLog) {
        let end = log.high_watermark();
        let mut offset = (end - TAIL_SCAN_OFFSETS).max(log.log_start_offset());
        if let Some(snapshot) = Self::read_snapshot(tp, log).await {
            offset = snapshot.next_offset.max(log.log_start_offset());
            self.snapshot_offset.set(snapshot.next_offset);
            self.install(snapshot);
        }
        let mut batches_seen = 0_usize;
        while offset < end {
            let batches = match log.read(offset, TAIL_SCAN_READ_BYTES).await {
                Ok(batches) if !batches.is_empty() => batches,
                Ok(_) => break,
                Err(error) => {
                    tracing::error!(partition = %tp, %error, "producer state scan failed; continuing without it");
                    break;
                }
            };
            for stored in batches {
                let Some(header) = BatchHeader::parse(&stored) else {
                    break;
                };
                offset = header.last_offset() + 1;
                if header.producer_id < 0 {
                    continue;
                }
                batches_seen += 1;
                if header.is_control() {
                    if let Some((control::RETIRED_TXN_MARKER, value)) = control::record(&stored) {
                        // A marker the log cleaner retired (its transaction's records went
                        // first): it ends nothing any more; its epochs still fence.
                        if let Some(coordinator_epoch) = value
                            .get(2..6)
                            .and_then(|b| b.try_into().ok())
                            .map(i32::from_be_bytes)
                        {
                            self.note_marker_epochs(&TxnMarker {
                                producer_id: header.producer_id,
                                producer_epoch: header.producer_epoch,
                                commit: true,
                                coordinator_epoch,
                            });
                        }
                        continue;
                    }
                    if let Some((commit, coordinator_epoch)) = control::txn_marker_of(&stored) {
                        let marker = TxnMarker {
                            producer_id: header.producer_id,
                            producer_epoch: header.producer_epoch,
                            commit,
                            coordinator_epoch,
                        };
                        self.apply_marker(marker, header.base_offset);
                    } else if header.is_transactional() {
                        // Never written by this broker; left out, so the producer's
                        // transaction stays open (readers wait) rather than guessed closed.
                        tracing::warn!(partition = %tp, offset = header.base_offset, producer = header.producer_id, "a transactional control batch that is not a readable marker; ignored");
                    }
                    continue;
                }
                let outcome = AppendOutcome {
                    base_offset: header.base_offset,
                    last_offset: header.last_offset(),
                };
                self.remember(&header, outcome);
                self.txns
                    .borrow_mut()
                    .record_data_batch(&header, header.base_offset);
            }
        }
        self.txns.borrow_mut().drop_below(log.log_start_offset());
        tracing::debug!(partition = %tp, batches_seen, producers = self.producers.borrow().len(), "producer state rebuilt (snapshot, then the batches after it or the log tail)");
        self.loaded.set(true);
    }
}

/// Why an idempotent append (or a marker) was refused.
#[derive(Debug)]
pub enum Refused {
    Append(AppendError),
    /// A sequence, epoch, coordinator-epoch or transaction-state error code.
    Sequence(i16),
}

/// One partition's producer state and the gate its idempotent appends pass one at a time.
type GatedProducers = (Rc<Semaphore>, Rc<PartitionProducers>);

/// The producer states of every partition a shard owns, each behind its own gate.
#[derive(Default)]
pub struct ProducerStates {
    partitions: RefCell<HashMap<TopicPartition, GatedProducers>>,
    /// Whether each partition's `transactions.seen` file exists, once looked up (or
    /// written). Only ever goes from false to true while the partition is here.
    transactions_seen: RefCell<HashMap<TopicPartition, bool>>,
}

/// Asks the transaction coordinator of transactional id `.0` whether partition `.3` is in
/// producer `.1`'s (epoch `.2`) ongoing transaction (KIP-890): `NONE`, or the code the
/// produce is refused with. Installed by the shard (`shard::txn_verifier`).
pub type TxnVerifier =
    Rc<dyn Fn(String, i64, i16, TopicPartition) -> futures::future::LocalBoxFuture<'static, i16>>;

/// The verification a transactional produce call asks for: the shard's verifier and the
/// request's transactional id.
#[derive(Clone)]
pub struct TxnVerification {
    pub verifier: TxnVerifier,
    pub transactional_id: String,
}

impl ProducerStates {
    /// Appends one checked batch. Batches without a producer id go straight to the log; idempotent
    /// ones are checked first, and a duplicate answers with the original's offsets.
    pub async fn append(
        &self,
        tp: &TopicPartition,
        log: &PartitionLog,
        batch: CheckedBatch,
    ) -> Result<AppendOutcome, Refused> {
        self.append_verified(tp, log, batch, None).await
    }

    /// [`Self::append`], where a transactional batch that would open its producer's
    /// transaction on this partition is first verified with the transaction coordinator
    /// (`verification`; KIP-890 part 1): the partition must be in the producer's ongoing
    /// transaction, or the batch is refused with the verifier's code (`INVALID_TXN_STATE`)
    /// and opens nothing. Without it, a batch that arrives after its transaction ended (a
    /// delayed retry, a zombie with the current epoch) opens a transaction no coordinator
    /// knows, and no marker ever ends it: the partition's last stable offset, and every
    /// `read_committed` reader, would stop there. The partition's gate stays held while the
    /// coordinator answers, so a marker for this partition cannot slip in between the
    /// verification and the append (Kafka keeps a verification guard for the same reason).
    pub async fn append_verified(
        &self,
        tp: &TopicPartition,
        log: &PartitionLog,
        batch: CheckedBatch,
        verification: Option<&TxnVerification>,
    ) -> Result<AppendOutcome, Refused> {
        let header = Some(*batch.header()).filter(|header| header.producer_id >= 0);
        let Some(header) = header else {
            return log.append_checked(batch).await.map_err(Refused::Append);
        };
        let (_turn, state) = self.gated_loaded(tp, log).await;
        let verdict = check(state.producers.borrow().get(&header.producer_id), &header);
        match verdict {
            Verdict::Refuse(code) => Err(Refused::Sequence(code)),
            Verdict::Duplicate(outcome) => {
                tracing::debug!(partition = %tp, producer = header.producer_id, sequence = header.base_sequence, "duplicate batch answered from producer state");
                Ok(outcome)
            }
            Verdict::Append => {
                if header.is_transactional() {
                    state.txns.borrow_mut().drop_below(log.log_start_offset());
                }
                state
                    .txns
                    .borrow()
                    .check_data_batch(&header)
                    .map_err(Refused::Sequence)?;
                let opens = header.is_transactional()
                    && state
                        .txns
                        .borrow()
                        .open_transaction(header.producer_id)
                        .is_none();
                if opens && self.open_txns_on_shard() >= ONGOING_TXNS_PER_SHARD_MAX {
                    tracing::debug!(partition = %tp, producer = header.producer_id, "transaction refused: the shard has its maximum of open transactions");
                    return Err(Refused::Sequence(POLICY_VIOLATION));
                }
                if let Some(verification) = verification.filter(|_| opens) {
                    let code = (verification.verifier)(
                        verification.transactional_id.clone(),
                        header.producer_id,
                        header.producer_epoch,
                        tp.clone(),
                    )
                    .await;
                    if code != crate::error_codes::NONE {
                        tracing::debug!(partition = %tp, producer = header.producer_id, code, "transactional batch refused: not in its producer's ongoing transaction");
                        return Err(Refused::Sequence(code));
                    }
                }
                if opens {
                    self.mark_transactions_seen(tp, log).await?;
                }
                let outcome = log.append_checked(batch).await.map_err(Refused::Append)?;
                state.remember_appended(&header, outcome);
                state
                    .txns
                    .borrow_mut()
                    .record_data_batch(&header, outcome.base_offset);
                let opened = header.is_transactional()
                    && state.txns.borrow().open_transaction(header.producer_id)
                        == Some(outcome.base_offset);
                if opened {
                    snapshot_if_far(tp, log, &state);
                }
                let since = state.offsets_since_snapshot.get() + i64::from(header.record_count);
                state.offsets_since_snapshot.set(since);
                if since >= SNAPSHOT_EVERY_OFFSETS {
                    state.offsets_since_snapshot.set(0);
                    spawn_snapshot(tp.clone(), log.clone(), state.clone());
                }
                Ok(outcome)
            }
        }
    }

    /// Appends `marker`'s control batch (Kafka's format, stamped `timestamp_ms`) and
    /// completes the producer's open transaction here. Refused with
    /// `INVALID_PRODUCER_EPOCH` when the marker's producer epoch is older than the
    /// producer's here, `TRANSACTION_COORDINATOR_FENCED` when its coordinator epoch is
    /// older than the last marker's (Kafka's `appendEndTxnMarker` checks). A marker for a
    /// producer with no open transaction here is written all the same (a retry). The caller
    /// waits for durability.
    pub async fn write_marker(
        &self,
        tp: &TopicPartition,
        log: &PartitionLog,
        marker: TxnMarker,
        timestamp_ms: i64,
    ) -> Result<AppendOutcome, Refused> {
        let (_turn, state) = self.gated_loaded(tp, log).await;
        if let Some(entry) = state.producers.borrow().get(&marker.producer_id) {
            if marker.producer_epoch < entry.epoch {
                return Err(Refused::Sequence(INVALID_PRODUCER_EPOCH));
            }
            if marker.coordinator_epoch < entry.coordinator_epoch {
                return Err(Refused::Sequence(TRANSACTION_COORDINATOR_FENCED));
            }
        }
        let batch = control::txn_marker(
            marker.producer_id,
            marker.producer_epoch,
            marker.commit,
            marker.coordinator_epoch,
            timestamp_ms,
        );
        let checked = log.check(batch).map_err(Refused::Append)?;
        let outcome = log.append_checked(checked).await.map_err(Refused::Append)?;
        let aborted = state.apply_marker(marker, outcome.base_offset);
        state.txns.borrow_mut().drop_below(log.log_start_offset());
        snapshot_if_far(tp, log, &state);
        tracing::trace!(partition = %tp, producer = marker.producer_id, commit = marker.commit, offset = outcome.base_offset, aborted = aborted.is_some(), "transaction marker appended");
        Ok(outcome)
    }

    /// Runs `read` on the partition's transactions, loading the producer state from the log
    /// first if this is its first use since the start (so a `read_committed` reader never
    /// sees a transaction that was open at a crash). Once loaded it takes no gate.
    pub async fn with_txns<R>(
        &self,
        tp: &TopicPartition,
        log: &PartitionLog,
        read: impl FnOnce(&PartitionTxns) -> R,
    ) -> R {
        let loaded = self
            .partitions
            .borrow()
            .get(tp)
            .filter(|(_, state)| state.loaded.get())
            .map(|(_, state)| state.clone());
        let state = match loaded {
            Some(state) => state,
            None => self.gated_loaded(tp, log).await.1,
        };
        let txns = state.txns.borrow();
        read(&txns)
    }

    /// Writes the partition's `transactions.seen` file, once, before its first
    /// transactional batch is appended (the caller holds the gate, the state is loaded).
    async fn mark_transactions_seen(
        &self,
        tp: &TopicPartition,
        log: &PartitionLog,
    ) -> Result<(), Refused> {
        if self.transactions_seen.borrow().get(tp) == Some(&true) {
            return Ok(());
        }
        let path = log.dir().join(TRANSACTIONS_SEEN_FILE);
        if let Err(error) = log.disk().write_file_atomically(&path, &[]).await {
            tracing::error!(partition = %tp, %error, "transactions.seen not written; transactional batch refused");
            return Err(Refused::Sequence(crate::error_codes::KAFKA_STORAGE_ERROR));
        }
        self.transactions_seen.borrow_mut().insert(tp.clone(), true);
        Ok(())
    }

    /// Whether the partition ever held a transactional batch (its `transactions.seen`
    /// file), looked up once. A lookup that fails answers yes: loading is always safe.
    async fn ever_transactional(&self, tp: &TopicPartition, log: &PartitionLog) -> bool {
        if let Some(seen) = self.transactions_seen.borrow().get(tp) {
            return *seen;
        }
        let path = log.dir().join(TRANSACTIONS_SEEN_FILE);
        let seen = match log.disk().read_file(&path).await {
            Ok(found) => found.is_some(),
            Err(error) => {
                tracing::warn!(partition = %tp, %error, "transactions.seen unreadable; loading the producer state");
                true
            }
        };
        // An append may have written the file meanwhile: never go back from true.
        *self
            .transactions_seen
            .borrow_mut()
            .entry(tp.clone())
            .or_insert(seen)
    }

    /// [`Self::with_txns`] for a `read_committed` reader: `None`, with nothing loaded, when
    /// the partition never held a transactional batch (no transaction is open and none was
    /// aborted: everything is stable).
    pub async fn with_txns_if_any<R>(
        &self,
        tp: &TopicPartition,
        log: &PartitionLog,
        read: impl FnOnce(&PartitionTxns) -> R,
    ) -> Option<R> {
        let loaded = self
            .partitions
            .borrow()
            .get(tp)
            .is_some_and(|(_, state)| state.loaded.get());
        if !loaded && !self.ever_transactional(tp, log).await {
            return None;
        }
        Some(self.with_txns(tp, log, read).await)
    }

    /// Runs `read` on the partition's transactions if they are loaded; `None` (nothing
    /// loaded) otherwise.
    pub fn loaded_txns<R>(
        &self,
        tp: &TopicPartition,
        read: impl FnOnce(&PartitionTxns) -> R,
    ) -> Option<R> {
        let partitions = self.partitions.borrow();
        let (_, state) = partitions.get(tp).filter(|(_, state)| state.loaded.get())?;
        let txns = state.txns.borrow();
        Some(read(&txns))
    }

    /// The partition's state, loaded from the log if this is its first use, and the turn at
    /// its gate: the state is read or changed only while the permit is held.
    async fn gated_loaded(
        &self,
        tp: &TopicPartition,
        log: &PartitionLog,
    ) -> (StaticPermit, Rc<PartitionProducers>) {
        let (gate, state) = self
            .partitions
            .borrow_mut()
            .entry(tp.clone())
            .or_insert_with(|| (Rc::new(Semaphore::new(1)), Rc::default()))
            .clone();
        let turn = gate.acquire_static_permit(1).await.expect("never closed");
        if !state.loaded.get() {
            state.load(tp, log).await;
        }
        (turn, state)
    }

    /// The partition's active producers, sorted by id, loading its state from the log first
    /// if no idempotent batch reached it since the start.
    pub async fn describe(&self, tp: &TopicPartition, log: &PartitionLog) -> Vec<ProducerSummary> {
        let (_turn, state) = self.gated_loaded(tp, log).await;
        let mut producers: Vec<ProducerSummary> = state
            .producers
            .borrow()
            .iter()
            .map(|(producer_id, entry)| ProducerSummary {
                producer_id: *producer_id,
                epoch: entry.epoch,
                last_sequence: entry.batches.back().map_or(-1, |b| b.last_sequence),
                last_timestamp: entry.last_timestamp,
                coordinator_epoch: entry.coordinator_epoch,
                current_txn_start_offset: state
                    .txns
                    .borrow()
                    .open_transaction(*producer_id)
                    .unwrap_or(-1),
            })
            .collect();
        producers.sort_by_key(|p| p.producer_id);
        producers
    }

    /// Open transactions on every partition of the shard whose state is loaded (a
    /// partition's open transactions are known only once loaded; its first transactional
    /// batch loads it). Counted when a batch would open a transaction, not kept.
    fn open_txns_on_shard(&self) -> usize {
        self.partitions
            .borrow()
            .values()
            .map(|(_, state)| state.txns.borrow().ongoing_count())
            .sum()
    }

    /// The log cleaner removes the abort markers at `marker_offsets` (their transactions'
    /// records are gone): their aborted entries are forgotten, and a snapshot without them
    /// is written before this returns, so that after a crash no entry outlives its marker
    /// (the cleaner commits its pass only after). Markers the log already holds empty are
    /// skipped by the replay after the snapshot, so nothing brings the entries back.
    pub async fn forget_cleaned_aborts(
        &self,
        tp: &TopicPartition,
        log: &PartitionLog,
        marker_offsets: &[i64],
    ) -> std::io::Result<usize> {
        let (turn, state) = self.gated_loaded(tp, log).await;
        let forgotten = state.txns.borrow_mut().forget_aborted(marker_offsets);
        state.offsets_since_snapshot.set(0);
        let taken = take_snapshot(log, &state);
        drop(turn); // appends go on; the snapshot holds the state as of now
        write_snapshot(log, &state, taken).await?;
        tracing::debug!(partition = %tp, forgotten, markers = marker_offsets.len(), "aborted transactions forgotten: the cleaner removes their markers");
        Ok(forgotten)
    }

    /// The LSO of a partition that ever held a transactional batch, for the log cleaner's
    /// choice of a log; `None` for one that never did.
    pub async fn cleaner_first_unstable_offset(
        &self,
        tp: &TopicPartition,
        log: &PartitionLog,
    ) -> Option<i64> {
        self.with_txns_if_any(tp, log, |txns| {
            txns.last_stable_offset(log.high_watermark())
                .max(log.log_start_offset())
        })
        .await
    }

    /// The LSO and the aborted transactions of a partition that ever held a transactional
    /// batch, for the log cleaner; `None` for one that never did.
    pub async fn cleaner_view(
        &self,
        tp: &TopicPartition,
        log: &PartitionLog,
    ) -> Option<(i64, Vec<crate::storage::AbortedRange>)> {
        self.with_txns_if_any(tp, log, |txns| {
            let stable = txns
                .last_stable_offset(log.high_watermark())
                .max(log.log_start_offset());
            (stable, txns.aborted_ranges())
        })
        .await
    }

    /// Forgets a partition that left this shard (deleted or moved).
    pub fn forget(&self, tp: &TopicPartition) {
        self.partitions.borrow_mut().remove(tp);
        self.transactions_seen.borrow_mut().remove(tp);
    }
}

/// At a transaction's opening or marker: a snapshot when the last one is
/// `SNAPSHOT_AFTER_MARKER_OFFSETS` or more behind the log end. Open and aborted transactions
/// are what a restart could not rebuild once the log tail scan no longer reaches their
/// batches and markers; the scan from a snapshot has no such limit. The caller holds the
/// partition's gate.
fn snapshot_if_far(tp: &TopicPartition, log: &PartitionLog, state: &Rc<PartitionProducers>) {
    let grown = log.log_end_offset() - state.snapshot_offset.get();
    if grown >= SNAPSHOT_AFTER_MARKER_OFFSETS {
        state.offsets_since_snapshot.set(0);
        spawn_snapshot(tp.clone(), log.clone(), state.clone());
    }
}

/// Takes the snapshot now (the caller holds the partition's gate, so the state matches the
/// log) and writes it in the background; a write that fails only costs a longer scan.
fn spawn_snapshot(tp: TopicPartition, log: PartitionLog, state: Rc<PartitionProducers>) {
    let taken = take_snapshot(&log, &state);
    glommio::spawn_local(async move {
        if let Err(error) = write_snapshot(&log, &state, taken).await {
            tracing::warn!(partition = %tp, %error, "producer state snapshot not written");
        }
    })
    .detach();
}

/// A snapshot taken under the partition's gate, numbered, encoded.
struct TakenSnapshot {
    number: u64,
    next_offset: i64,
    bytes: Vec<u8>,
}

fn take_snapshot(log: &PartitionLog, state: &PartitionProducers) -> TakenSnapshot {
    let snapshot = state.snapshot(log.log_end_offset());
    state.snapshot_offset.set(snapshot.next_offset);
    let number = state.snapshots_taken.get() + 1;
    state.snapshots_taken.set(number);
    TakenSnapshot {
        number,
        next_offset: snapshot.next_offset,
        bytes: encode_snapshot(&snapshot),
    }
}

/// Writes `taken` durably, unless a newer snapshot was written already.
async fn write_snapshot(
    log: &PartitionLog,
    state: &PartitionProducers,
    taken: TakenSnapshot,
) -> std::io::Result<()> {
    let path = log.dir().join(SNAPSHOT_FILE);
    // Two snapshots of one partition would share the temporary file: one at a time.
    let _turn = state
        .snapshot_gate
        .acquire_permit(1)
        .await
        .expect("never closed");
    if taken.number < state.snapshot_written.get() {
        return Ok(());
    }
    state.snapshot_written.set(taken.number);
    log.disk()
        .write_file_atomically(&path, &taken.bytes)
        .await?;
    tracing::debug!(partition = %log.dir().display(), next_offset = taken.next_offset, "producer state snapshot written");
    Ok(())
}

/// How long an `InitProducerId` waits for the controller to grant a block before it is
/// answered `COORDINATOR_LOAD_IN_PROGRESS` (retriable; Kafka answers the same while its
/// broker waits for `AllocateProducerIds`).
pub const BLOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How often the wait looks for a granted block.
const BLOCK_POLL: std::time::Duration = std::time::Duration::from_millis(10);
/// Blocks remembered for re-initialising a producer id issued by this broker (KIP-360).
const ISSUED_BLOCKS_MAX: usize = 1024;

/// Producer-id blocks the controller granted this broker of a cluster (shard 0;
/// `controller::producer_ids`). The controller hands each block it sees committed for this
/// broker's life to [`Self::receive`] and sends [`Self::request`] with its heartbeats;
/// [`ProducerIds`] takes the blocks. Owned by shard 0, `!Send`.
#[derive(Debug)]
pub struct GrantedBlocks {
    /// Blocks received and not used yet, oldest first.
    ready: RefCell<VecDeque<i64>>,
    /// Start of the last block received in this life, -1 none.
    last_received: Cell<i64>,
    /// A block is wanted: every heartbeat asks until one arrives.
    wanted: Cell<bool>,
    /// A block became wanted since the last heartbeat: send one now.
    urgent: Cell<bool>,
    /// The end of this broker's own `producer-ids` file (ids it issued as a one-node
    /// broker): no block may start below it.
    floor: Cell<i64>,
}

impl Default for GrantedBlocks {
    fn default() -> Self {
        Self {
            ready: RefCell::default(),
            last_received: Cell::new(-1),
            wanted: Cell::new(false),
            urgent: Cell::new(false),
            floor: Cell::new(0),
        }
    }
}

impl GrantedBlocks {
    /// A block the committed state records for this broker's life; a block already
    /// received is ignored.
    pub fn receive(&self, start: i64) {
        if start != self.last_received.get() {
            self.ready.borrow_mut().push_back(start);
            self.last_received.set(start);
            self.wanted.set(false);
        }
    }

    /// What the next heartbeat asks for: (the last block received, floor), if a block is
    /// wanted.
    pub fn request(&self) -> Option<(i64, i64)> {
        self.wanted
            .get()
            .then(|| (self.last_received.get(), self.floor.get()))
    }

    /// Whether a heartbeat should go now (a block became wanted since the last one).
    pub fn take_urgent(&self) -> bool {
        self.urgent.replace(false)
    }

    fn want(&self) {
        if !self.wanted.replace(true) {
            self.urgent.set(true);
        }
    }

    fn take(&self) -> Option<i64> {
        self.ready.borrow_mut().pop_front()
    }

    fn has_ready(&self) -> bool {
        !self.ready.borrow().is_empty()
    }
}

/// Shard 0's producer id allocator. See the module docs.
pub struct ProducerIds {
    disk: BrokerDisk,
    path: PathBuf,
    /// Next id to hand out, and the end (exclusive) of the persisted block.
    next: Cell<i64>,
    block_end: Cell<i64>,
    loaded: Cell<bool>,
    gate: Semaphore,
    /// A broker of a cluster: blocks come from the controller, and the `producer-ids` file
    /// is only read (as a floor). None: a one-node broker, which persists its own blocks.
    granted: Option<Rc<GrantedBlocks>>,
    /// (start, end) of the blocks used in this life, for re-initialising an id this broker
    /// issued; a cluster broker's blocks are not contiguous.
    issued: RefCell<VecDeque<(i64, i64)>>,
    /// How long an init waits for a granted block ([`BLOCK_WAIT`]; tests shorten it).
    block_wait: Cell<std::time::Duration>,
    /// When the last wait for a block ended without one.
    waited_in_vain: Cell<Option<std::time::Instant>>,
}

impl ProducerIds {
    pub fn new(disk: BrokerDisk, data_dir: &Path, granted: Option<Rc<GrantedBlocks>>) -> Self {
        Self {
            disk,
            path: data_dir.join("producer-ids"),
            next: Cell::new(0),
            block_end: Cell::new(0),
            loaded: Cell::new(false),
            gate: Semaphore::new(1),
            granted,
            issued: RefCell::default(),
            block_wait: Cell::new(BLOCK_WAIT),
            waited_in_vain: Cell::new(None),
        }
    }

    #[cfg(test)]
    pub fn set_block_wait(&self, wait: std::time::Duration) {
        self.block_wait.set(wait);
    }

    /// `InitProducerId` on a broker of a cluster: ids from the blocks the controller granted
    /// (see [`GrantedBlocks`]); waits up to [`BLOCK_WAIT`] for one, then `None` (the
    /// caller answers a retriable error).
    async fn init_clustered(
        &self,
        granted: &GrantedBlocks,
        producer_id: i64,
        epoch: i16,
    ) -> Option<(i64, i16)> {
        let issued_here = {
            let issued = self.issued.borrow();
            let current = (self.block_end.get() - PRODUCER_ID_BLOCK, self.next.get());
            issued
                .iter()
                .chain(std::iter::once(&current))
                .any(|(start, end)| (*start..*end).contains(&producer_id))
        };
        if producer_id >= 0 && issued_here && (0..i16::MAX - 1).contains(&epoch) {
            return Some((producer_id, epoch + 1));
        }
        let now = std::time::Instant::now();
        // Inits queued behind one that just waited in vain (the controller unreachable) do
        // not wait a whole period each: within a period of that failure they only look.
        let deadline = match self.waited_in_vain.get() {
            Some(failed) if now < failed + BLOCK_WAIT => now,
            _ => now + self.block_wait.get(),
        };
        while self.next.get() >= self.block_end.get() {
            if let Some(start) = granted.take() {
                let mut issued = self.issued.borrow_mut();
                if self.block_end.get() > 0 {
                    issued.push_back((
                        self.block_end.get() - PRODUCER_ID_BLOCK,
                        self.block_end.get(),
                    ));
                }
                if issued.len() > ISSUED_BLOCKS_MAX {
                    issued.pop_front();
                }
                self.next.set(start);
                self.block_end.set(start + PRODUCER_ID_BLOCK);
                continue;
            }
            granted.want();
            if std::time::Instant::now() >= deadline {
                self.waited_in_vain.set(Some(std::time::Instant::now()));
                return None;
            }
            glommio::timer::sleep(BLOCK_POLL).await;
        }
        let id = self.next.get();
        self.next.set(id + 1);
        // Ask for the next block when 90% of this one is used, as Kafka prefetches.
        if self.block_end.get() - self.next.get() <= PRODUCER_ID_BLOCK / 10 && !granted.has_ready()
        {
            granted.want();
        }
        Some((id, 0))
    }

    /// `InitProducerId` with the broker's error code: `KAFKA_STORAGE_ERROR` when the
    /// `producer-ids` file cannot be read or written, `COORDINATOR_LOAD_IN_PROGRESS` while a
    /// cluster broker has no block from the controller.
    pub async fn init_or_code(&self, producer_id: i64, epoch: i16) -> Result<(i64, i16), i16> {
        let storage_error = |error: std::io::Error| {
            tracing::error!(%error, "producer id block cannot be read or persisted");
            crate::error_codes::KAFKA_STORAGE_ERROR
        };
        let Some(granted) = &self.granted else {
            return self.init(producer_id, epoch).await.map_err(storage_error);
        };
        let _turn = self.gate.acquire_permit(1).await.expect("never closed");
        if !self.loaded.get() {
            let floor = self.load_block_end().await.map_err(storage_error)?;
            granted.floor.set(floor);
            self.loaded.set(true);
        }
        let allocated = self.init_clustered(granted, producer_id, epoch).await;
        allocated.ok_or_else(|| {
            tracing::info!("no producer-id block from the controller yet; InitProducerId answered COORDINATOR_LOAD_IN_PROGRESS");
            ResponseError::CoordinatorLoadInProgress.code()
        })
    }

    /// The block end the `producer-ids` file holds (0 when there is none); a damaged file
    /// is an error.
    async fn load_block_end(&self) -> std::io::Result<i64> {
        let persisted = self.disk.read_file(&self.path).await?;
        match persisted {
            None => Ok(0),
            Some(bytes) => persisted_block_end(&bytes).ok_or_else(|| {
                // Starting again from 0 would hand out ids that producers hold:
                // refuse (InitProducerId fails) until an operator looks.
                tracing::error!(path = %self.path.display(), length = bytes.len(), "producer id file is damaged; no producer ids are handed out");
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is damaged ({} bytes, want 8)", self.path.display(), bytes.len()),
                )
            }),
        }
    }

    /// `InitProducerId` without a transactional id: a re-init naming a producer id we
    /// issued gets the same id with the next epoch (KIP-360), otherwise a new id at epoch 0.
    pub async fn init(&self, producer_id: i64, epoch: i16) -> std::io::Result<(i64, i16)> {
        let _turn = self.gate.acquire_permit(1).await.expect("never closed");
        if !self.loaded.get() {
            let end = self.load_block_end().await?;
            self.next.set(end);
            self.block_end.set(end);
            self.loaded.set(true);
        }
        if producer_id >= 0 && producer_id < self.next.get() && (0..i16::MAX - 1).contains(&epoch) {
            return Ok((producer_id, epoch + 1));
        }
        if self.next.get() >= self.block_end.get() {
            // Only a damaged or hand-made file comes near i64::MAX: refuse, as for a damaged
            // file, rather than wrap to negative ids.
            let end = self
                .block_end
                .get()
                .checked_add(PRODUCER_ID_BLOCK)
                .ok_or_else(|| {
                    tracing::error!(path = %self.path.display(), block_end = self.block_end.get(), "producer ids are exhausted; no producer ids are handed out");
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: producer ids are exhausted", self.path.display()),
                    )
                })?;
            self.disk
                .write_file_atomically(&self.path, &end.to_le_bytes())
                .await?;
            self.block_end.set(end);
        }
        let id = self.next.get();
        // The block holding every id handed out is persisted before the first of them is
        // used, so a restart never hands one out again.
        assert!(
            id < self.block_end.get(),
            "producer id {id} is past the persisted block end {}",
            self.block_end.get()
        );
        self.next.set(id + 1);
        Ok((id, 0))
    }
}

/// The block end a `producer-ids` file holds: exactly 8 bytes, little-endian, not negative.
fn persisted_block_end(bytes: &[u8]) -> Option<i64> {
    let end = i64::from_le_bytes(bytes.try_into().ok()?);
    (end >= 0).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_producer_id_file_is_refused_not_read_as_zero() {
        assert_eq!(persisted_block_end(&2000_i64.to_le_bytes()), Some(2000));
        assert_eq!(persisted_block_end(&[]), None);
        assert_eq!(persisted_block_end(&[1, 2, 3]), None);
        assert_eq!(persisted_block_end(&[0; 9]), None);
        assert_eq!(persisted_block_end(&(-5_i64).to_le_bytes()), None);
    }

    fn header(epoch: i16, base_sequence: i32, records: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: 7,
            producer_epoch: epoch,
            base_sequence,
            record_count: records,
        }
    }

    fn outcome(base_offset: i64) -> AppendOutcome {
        AppendOutcome {
            base_offset,
            last_offset: base_offset + 9,
        }
    }

    #[test]
    fn duplicates_gaps_and_epochs_follow_kafka() {
        let state = PartitionProducers::default();
        assert_eq!(
            check(None, &header(0, 17, 10)),
            Verdict::Append,
            "unknown producer"
        );
        for batch in 0..7 {
            state.remember(&header(0, batch * 10, 10), outcome(i64::from(batch) * 100));
        }
        let producers = state.producers.borrow();
        let entry = producers.get(&7);
        assert_eq!(check(entry, &header(0, 70, 10)), Verdict::Append);
        assert_eq!(
            check(entry, &header(0, 60, 10)),
            Verdict::Duplicate(outcome(600))
        );
        assert_eq!(
            check(entry, &header(0, 20, 10)),
            Verdict::Duplicate(outcome(200)),
            "fifth newest is still remembered"
        );
        assert_eq!(
            check(entry, &header(0, 10, 10)),
            Verdict::Refuse(OUT_OF_ORDER_SEQUENCE_NUMBER),
            "sixth newest is forgotten"
        );
        assert_eq!(
            check(entry, &header(0, 80, 10)),
            Verdict::Refuse(OUT_OF_ORDER_SEQUENCE_NUMBER),
            "a gap"
        );
        assert_eq!(
            check(entry, &header(1, 0, 10)),
            Verdict::Append,
            "new epoch from 0"
        );
        assert_eq!(
            check(entry, &header(1, 5, 10)),
            Verdict::Refuse(OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
        drop(producers);
        state.remember(&header(1, 0, 10), outcome(700));
        assert_eq!(
            check(state.producers.borrow().get(&7), &header(0, 70, 10)),
            Verdict::Refuse(INVALID_PRODUCER_EPOCH)
        );
    }

    /// Remembering an appended batch that skips sequences means the check was bypassed or
    /// raced: a programmer error, caught where the state changes.
    #[test]
    #[should_panic(expected = "a batch out of sequence was appended")]
    fn remembering_an_appended_batch_out_of_sequence_panics() {
        let state = PartitionProducers::default();
        state.remember_appended(&header(0, 0, 10), outcome(0));
        state.remember_appended(&header(0, 10, 10), outcome(10));
        state.remember_appended(&header(1, 0, 10), outcome(20));
        state.remember_appended(&header(1, 20, 10), outcome(30));
    }

    #[test]
    fn snapshots_round_trip_and_leave_out_unwritten_batches() {
        let state = PartitionProducers::default();
        state.remember(&header(3, 0, 10), outcome(0));
        state.remember(&header(3, 10, 10), outcome(10));
        let snapshot = state.snapshot(15);
        assert_eq!(
            snapshot.producers[0].batches.len(),
            1,
            "the batch ending at 19 is past 15"
        );
        let decoded = decode_snapshot(&encode_snapshot(&snapshot)).expect("valid");
        assert_eq!(decoded, snapshot);
        let restored = PartitionProducers::default();
        restored.install(decoded);
        let producers = restored.producers.borrow();
        assert_eq!(
            check(producers.get(&7), &header(3, 0, 10)),
            Verdict::Duplicate(outcome(0))
        );
        let mut corrupt = encode_snapshot(&snapshot);
        *corrupt.last_mut().unwrap() ^= 1;
        assert!(decode_snapshot(&corrupt).is_err());
    }

    /// `archive` in a snapshot envelope of `version` (`seal` writes the current one).
    fn sealed_as(version: u32, archive: &[u8]) -> Vec<u8> {
        let mut file = meta::seal(MetaKind::ProducerState, archive);
        file[meta::ENVELOPE_VERSION_OFFSET..meta::ENVELOPE_VERSION_OFFSET + 4]
            .copy_from_slice(&version.to_le_bytes());
        let header_crc = crc32c::crc32c(&file[..meta::ENVELOPE_HEADER_CRC_OFFSET]);
        file[meta::ENVELOPE_HEADER_CRC_OFFSET..meta::ENVELOPE_HEADER_CRC_OFFSET + 4]
            .copy_from_slice(&header_crc.to_le_bytes());
        file
    }

    /// A version-2 file (before transactions) is read: its producers keep their last
    /// timestamps, have no coordinator epoch, and no transaction is open or aborted.
    #[test]
    fn a_version_2_snapshot_is_upgraded_on_read() {
        let v2 = ProducerSnapshotV2 {
            next_offset: 30,
            producers: vec![SnapshotProducerV2 {
                producer_id: 8,
                epoch: 3,
                batches: vec![SnapshotBatch {
                    first_sequence: 5,
                    last_sequence: 9,
                    base_offset: 25,
                    last_offset: 29,
                }],
                last_timestamp: 1_234,
            }],
        };
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&v2).expect("plain structs");
        let upgraded = decode_snapshot(&sealed_as(2, &archive)).expect("version 2 is read");
        assert_eq!(upgraded.next_offset, 30);
        let producer = &upgraded.producers[0];
        assert_eq!((producer.producer_id, producer.epoch), (8, 3));
        assert_eq!(producer.last_timestamp, 1_234);
        assert_eq!(producer.coordinator_epoch, -1);
        assert_eq!(producer.batches, v2.producers[0].batches);
        assert!(upgraded.ongoing_txns.is_empty() && upgraded.aborted_txns.is_empty());
    }

    /// A version-1 file (before last timestamps) is read, its producers' timestamps unknown.
    #[test]
    fn a_version_1_snapshot_is_upgraded_on_read() {
        let v1 = ProducerSnapshotV1 {
            next_offset: 20,
            producers: vec![SnapshotProducerV1 {
                producer_id: 7,
                epoch: 2,
                batches: vec![SnapshotBatch {
                    first_sequence: 0,
                    last_sequence: 9,
                    base_offset: 10,
                    last_offset: 19,
                }],
            }],
        };
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&v1).expect("plain structs");
        let mut file = meta::seal(MetaKind::ProducerState, &archive);
        // `seal` writes the current version; make it a version-1 envelope.
        file[meta::ENVELOPE_VERSION_OFFSET..meta::ENVELOPE_VERSION_OFFSET + 4]
            .copy_from_slice(&1_u32.to_le_bytes());
        let header_crc = crc32c::crc32c(&file[..meta::ENVELOPE_HEADER_CRC_OFFSET]);
        file[meta::ENVELOPE_HEADER_CRC_OFFSET..meta::ENVELOPE_HEADER_CRC_OFFSET + 4]
            .copy_from_slice(&header_crc.to_le_bytes());
        let upgraded = decode_snapshot(&file).expect("version 1 is read");
        assert_eq!(upgraded.next_offset, 20);
        assert_eq!(upgraded.producers[0].epoch, 2);
        assert_eq!(upgraded.producers[0].last_timestamp, -1);
        assert_eq!(upgraded.producers[0].batches, v1.producers[0].batches);
        // A version this build does not know is refused, not misread.
        file[meta::ENVELOPE_VERSION_OFFSET..meta::ENVELOPE_VERSION_OFFSET + 4]
            .copy_from_slice(&9_u32.to_le_bytes());
        let header_crc = crc32c::crc32c(&file[..meta::ENVELOPE_HEADER_CRC_OFFSET]);
        file[meta::ENVELOPE_HEADER_CRC_OFFSET..meta::ENVELOPE_HEADER_CRC_OFFSET + 4]
            .copy_from_slice(&header_crc.to_le_bytes());
        assert!(decode_snapshot(&file).is_err());
    }

    #[test]
    fn last_timestamp_follows_the_newest_batch_and_survives_a_snapshot() {
        let state = PartitionProducers::default();
        let mut first = header(0, 0, 10);
        first.max_timestamp = 1_000;
        let mut second = header(0, 10, 10);
        second.max_timestamp = 2_000;
        state.remember(&first, outcome(0));
        state.remember(&second, outcome(10));
        assert_eq!(state.producers.borrow()[&7].last_timestamp, 2_000);
        let restored = PartitionProducers::default();
        restored.install(decode_snapshot(&encode_snapshot(&state.snapshot(20))).expect("valid"));
        assert_eq!(restored.producers.borrow()[&7].last_timestamp, 2_000);
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        assert_eq!(next_sequence(i32::MAX), 0);
        assert_eq!(last_sequence(&header(0, i32::MAX, 2)), 0);
    }
}
