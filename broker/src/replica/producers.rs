//! Idempotent producers on a replicated partition: the sequence checks of
//! `producer_state` (same verdicts: a stale epoch is `INVALID_PRODUCER_EPOCH`, a gap
//! `OUT_OF_ORDER_SEQUENCE_NUMBER`, a batch seen among a producer's last five is a duplicate
//! answered with the original's offsets), over batches the group has committed (every
//! replica records them as they are applied, so a new leader has them) and batches this
//! leader proposed in its term and not yet committed.
//!
//! A leader checks only once it has applied every committed entry and committed in its
//! term (`serve`): then every earlier leader's batch that will ever commit is applied.
//! After a restart the state is rebuilt from the last [`TAIL_SCAN_ENTRIES`] committed
//! entries of the log; a producer silent for longer is treated as new (its next batch is
//! accepted whatever its sequence, as `producer_state` does for an unknown producer).

use std::collections::{HashMap, VecDeque};

use crate::producer_state::{check_sequence, last_sequence, ProducerSummary, Sequenced, TxnMarker};
use crate::storage::batch::BatchHeader;

/// Batches remembered per producer (Kafka's 5 in-flight requests per connection).
const BATCHES_REMEMBERED: usize = 5;
/// Committed entries read back at open to rebuild the state.
pub const TAIL_SCAN_ENTRIES: u64 = 2_000;

/// Where a remembered batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchAt {
    /// Proposed by this leader at `index` in `term`, not committed yet.
    Proposed {
        index: u64,
        term: u64,
    },
    Committed {
        base_offset: i64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    first_sequence: i32,
    last_sequence: i32,
    /// The batch's max timestamp (`DescribeProducers`).
    max_timestamp: i64,
    at: BatchAt,
}

#[derive(Debug)]
struct Producer {
    epoch: i16,
    batches: VecDeque<Seen>,
    /// The coordinator epoch of the producer's last committed marker here; -1 none.
    coordinator_epoch: i32,
}

impl Producer {
    /// A producer first seen at `epoch`: no batches, no marker yet.
    fn new(epoch: i16) -> Self {
        Producer {
            epoch,
            batches: VecDeque::new(),
            coordinator_epoch: -1,
        }
    }
}

/// What to do with an idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Propose,
    Duplicate(BatchAt),
    Refuse(i16),
}

/// One replicated partition's producers. Owned by its group on one shard.
#[derive(Debug, Default)]
pub struct Producers {
    producers: HashMap<i64, Producer>,
    /// Built from every entry the partition ever committed (a new partition, or one whose
    /// whole log the scan at open read): a producer unknown here never wrote to it. Not so
    /// after a snapshot, or when the log's start or its older entries were not read; then an
    /// unknown producer is taken at any sequence, as Kafka does for a producer whose state
    /// retention removed.
    complete: bool,
}

impl Producers {
    /// The state of a partition read from its first entry on (see `complete`).
    pub fn from_the_start() -> Self {
        Producers {
            producers: HashMap::new(),
            complete: true,
        }
    }

    /// The verdict on an idempotent batch (producer id ≥ 0) at a leader in `term`.
    pub fn check(&self, header: &BatchHeader, term: u64) -> Verdict {
        let producer = self.producers.get(&header.producer_id);
        // Proposals of an earlier term that were not committed are gone.
        let live = producer.into_iter().flat_map(|producer| {
            producer
                .batches
                .iter()
                .filter(move |seen| match seen.at {
                    BatchAt::Proposed { term: at, .. } => at == term,
                    BatchAt::Committed { .. } => true,
                })
                .map(|seen| (seen.first_sequence, seen.last_sequence, seen.at))
        });
        let nothing_live = live.clone().next().is_none();
        match check_sequence(producer.map(|producer| producer.epoch), header, live) {
            Sequenced::New if nothing_live && self.complete && header.base_sequence != 0 => {
                // Nothing of the producer's is committed here or proposed in this term, yet
                // its batch does not start at sequence 0: its earlier batches were refused
                // here (a leader that had not applied its term's first entry yet) or lost
                // with another term. Taken, the client would count them written (librdkafka
                // acks them implicitly when a later batch succeeds) and they would be lost.
                // Found by the SIGTERM test of test_replication.py: 98 records acknowledged
                // that way, never written.
                Verdict::Refuse(crate::producer_state::OUT_OF_ORDER_SEQUENCE_NUMBER)
            }
            Sequenced::New => Verdict::Propose,
            Sequenced::Duplicate(at) => Verdict::Duplicate(at),
            Sequenced::Refused(code) => Verdict::Refuse(code),
        }
    }

    fn remember(&mut self, header: &BatchHeader, at: BatchAt) {
        let producer = self
            .producers
            .entry(header.producer_id)
            .or_insert_with(|| Producer::new(header.producer_epoch));
        if header.producer_epoch > producer.epoch {
            producer.epoch = header.producer_epoch;
            producer.batches.clear();
        }
        producer.batches.push_back(Seen {
            first_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            max_timestamp: header.max_timestamp,
            at,
        });
        while producer.batches.len() > BATCHES_REMEMBERED {
            producer.batches.pop_front();
        }
    }

    /// Kafka's `appendEndTxnMarker` checks of a marker at a leader: `INVALID_PRODUCER_EPOCH`
    /// for a producer epoch older than the producer's here (committed or proposed),
    /// `TRANSACTION_COORDINATOR_FENCED` for a coordinator epoch older than its last
    /// committed marker's.
    pub fn check_marker(&self, marker: &TxnMarker) -> Result<(), i16> {
        let Some(producer) = self.producers.get(&marker.producer_id) else {
            return Ok(());
        };
        if marker.producer_epoch < producer.epoch {
            return Err(crate::producer_state::INVALID_PRODUCER_EPOCH);
        }
        if marker.coordinator_epoch < producer.coordinator_epoch {
            return Err(crate::producer_state::TRANSACTION_COORDINATOR_FENCED);
        }
        Ok(())
    }

    /// This leader proposed `marker`: a marker of a newer producer epoch (the coordinator
    /// bumped it to fence a timed-out transaction's producer) fences the older epoch's
    /// batches from now on, before the marker commits, so none of them can be proposed
    /// after it and open a transaction nothing would close.
    pub fn marker_proposed(&mut self, marker: &TxnMarker) {
        self.note_marker_epoch(marker);
    }

    /// The group committed `marker` (every replica, in log order).
    pub fn marker_committed(&mut self, marker: &TxnMarker) {
        self.note_marker_epoch(marker);
        if let Some(producer) = self.producers.get_mut(&marker.producer_id) {
            producer.coordinator_epoch = producer.coordinator_epoch.max(marker.coordinator_epoch);
        }
    }

    fn note_marker_epoch(&mut self, marker: &TxnMarker) {
        let producer = self
            .producers
            .entry(marker.producer_id)
            .or_insert_with(|| Producer::new(marker.producer_epoch));
        if marker.producer_epoch > producer.epoch {
            producer.epoch = marker.producer_epoch;
            producer.batches.clear();
        }
    }

    /// Kafka `DescribeProducers` at a leader in `term`: each producer's epoch, the last
    /// sequence and timestamp of its newest batch that is committed or proposed in `term`
    /// (-1 when none is), the coordinator epoch of its last marker and the first offset of
    /// its open transaction (`open_transaction`; -1 none).
    pub fn describe(
        &self,
        term: u64,
        open_transaction: impl Fn(i64) -> Option<i64>,
    ) -> Vec<ProducerSummary> {
        let mut summaries: Vec<ProducerSummary> = self
            .producers
            .iter()
            .map(|(&producer_id, producer)| {
                let newest = producer.batches.iter().rev().find(|seen| match seen.at {
                    BatchAt::Proposed { term: at, .. } => at == term,
                    BatchAt::Committed { .. } => true,
                });
                ProducerSummary {
                    producer_id,
                    epoch: producer.epoch,
                    last_sequence: newest.map_or(-1, |seen| seen.last_sequence),
                    last_timestamp: newest.map_or(-1, |seen| seen.max_timestamp),
                    coordinator_epoch: producer.coordinator_epoch,
                    current_txn_start_offset: open_transaction(producer_id).unwrap_or(-1),
                }
            })
            .collect();
        summaries.sort_by_key(|summary| summary.producer_id);
        summaries
    }

    /// This leader proposed the batch at `index` in `term`.
    pub fn proposed(&mut self, header: &BatchHeader, index: u64, term: u64) {
        self.remember(header, BatchAt::Proposed { index, term });
    }

    /// The group committed the batch at `index` at `base_offset` (every replica, in log
    /// order). A proposal at or below `index` not replaced here was superseded.
    pub fn committed(&mut self, header: &BatchHeader, index: u64, base_offset: i64) {
        if let Some(producer) = self.producers.get_mut(&header.producer_id) {
            if header.producer_epoch < producer.epoch {
                return;
            }
            // The proposal this entry is: at its index, with its sequences. Another batch
            // of the producer's can commit at the index of a proposal that was lost (a
            // leader of a later term put the retry elsewhere); taking it for the proposal
            // would name that proposal's sequences committed at this batch's offset.
            let first = header.base_sequence;
            let last = last_sequence(header);
            let replaced = producer.batches.iter_mut().find(|seen| {
                matches!(seen.at, BatchAt::Proposed { index: at, .. } if at == index)
                    && seen.first_sequence == first
                    && seen.last_sequence == last
            });
            if let Some(seen) = replaced {
                seen.at = BatchAt::Committed { base_offset };
                return;
            }
            producer.batches.retain(
                |seen| !matches!(seen.at, BatchAt::Proposed { index: at, .. } if at <= index),
            );
        }
        self.remember(header, BatchAt::Committed { base_offset });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer_state::{INVALID_PRODUCER_EPOCH, OUT_OF_ORDER_SEQUENCE_NUMBER};

    fn header(producer_id: i64, epoch: i16, base_sequence: i32, records: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence,
            record_count: records,
        }
    }

    #[test]
    fn sequences_are_checked_against_committed_and_proposed_batches() {
        let mut producers = Producers::default();
        let first = header(7, 0, 0, 3);
        assert_eq!(producers.check(&first, 2), Verdict::Propose);
        producers.proposed(&first, 10, 2);
        let second = header(7, 0, 3, 2);
        assert_eq!(
            producers.check(&second, 2),
            Verdict::Propose,
            "continues the proposal"
        );
        assert_eq!(
            producers.check(&first, 2),
            Verdict::Duplicate(BatchAt::Proposed { index: 10, term: 2 })
        );
        assert_eq!(
            producers.check(&header(7, 0, 4, 1), 2),
            Verdict::Refuse(OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
        producers.committed(&first, 10, 40);
        assert_eq!(
            producers.check(&first, 3),
            Verdict::Duplicate(BatchAt::Committed { base_offset: 40 })
        );
        assert_eq!(
            producers.check(&header(7, -1, 3, 1), 3),
            Verdict::Refuse(INVALID_PRODUCER_EPOCH)
        );
        assert_eq!(
            producers.check(&header(7, 1, 0, 1), 3),
            Verdict::Propose,
            "new epoch"
        );
        assert_eq!(
            producers.check(&header(7, 1, 5, 1), 3),
            Verdict::Refuse(OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
    }

    #[test]
    fn describe_names_the_newest_live_batch_of_each_producer() {
        let mut producers = Producers::default();
        let mut first = header(7, 2, 0, 3);
        first.max_timestamp = 1_000;
        producers.committed(&first, 10, 40);
        let mut second = header(7, 2, 3, 2);
        second.max_timestamp = 2_000;
        producers.proposed(&second, 11, 5);
        producers.committed(&header(3, 0, 0, 1), 12, 43);
        let described = producers.describe(5, |_| None);
        assert_eq!(
            described
                .iter()
                .map(|s| (s.producer_id, s.epoch, s.last_sequence, s.last_timestamp))
                .collect::<Vec<_>>(),
            [(3, 0, 0, 0), (7, 2, 4, 2_000)]
        );
        assert!(described
            .iter()
            .all(|s| s.coordinator_epoch == -1 && s.current_txn_start_offset == -1));
        // In a later term the proposal of term 5 no longer counts; the committed batch does.
        let later = producers.describe(6, |_| None);
        assert_eq!(
            (later[1].last_sequence, later[1].last_timestamp),
            (2, 1_000)
        );
    }

    #[test]
    fn another_batch_committed_at_a_lost_proposals_index_does_not_take_its_place() {
        let mut producers = Producers::default();
        producers.committed(&header(7, 0, 0, 1), 4, 10);
        // Proposed in term 2 at indexes 5 and 6, then leadership was lost.
        producers.proposed(&header(7, 0, 1, 1), 5, 2);
        producers.proposed(&header(7, 0, 2, 1), 6, 2);
        // The next leader's empty entry took index 5; the retries committed at 6 and 7.
        producers.committed(&header(7, 0, 1, 1), 6, 12);
        producers.committed(&header(7, 0, 2, 1), 7, 13);
        assert_eq!(
            producers.check(&header(7, 0, 1, 1), 3),
            Verdict::Duplicate(BatchAt::Committed { base_offset: 12 })
        );
        assert_eq!(
            producers.check(&header(7, 0, 2, 1), 3),
            Verdict::Duplicate(BatchAt::Committed { base_offset: 13 })
        );
        assert_eq!(producers.check(&header(7, 0, 3, 1), 3), Verdict::Propose);
    }

    #[test]
    fn an_unknown_producer_must_start_at_sequence_zero_where_the_state_is_complete() {
        let complete = Producers::from_the_start();
        assert_eq!(
            complete.check(&header(7, 0, 98, 10), 2),
            Verdict::Refuse(OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
        assert_eq!(complete.check(&header(7, 0, 0, 98), 2), Verdict::Propose);
        // After a snapshot (or a partial scan) a producer may be unknown for having written
        // only before what this replica read: taken at any sequence, as Kafka does.
        assert_eq!(
            Producers::default().check(&header(7, 0, 98, 10), 2),
            Verdict::Propose
        );
    }

    fn marker(producer_id: i64, epoch: i16, coordinator_epoch: i32) -> TxnMarker {
        TxnMarker {
            producer_id,
            producer_epoch: epoch,
            commit: false,
            coordinator_epoch,
        }
    }

    #[test]
    fn markers_are_fenced_by_epochs_and_a_newer_epoch_fences_older_batches_at_once() {
        let mut producers = Producers::default();
        assert_eq!(producers.check_marker(&marker(7, 0, 0)), Ok(()), "unknown");
        producers.committed(&header(7, 1, 0, 1), 4, 10);
        assert_eq!(
            producers.check_marker(&marker(7, 0, 0)),
            Err(INVALID_PRODUCER_EPOCH)
        );
        producers.marker_committed(&marker(7, 1, 3));
        assert_eq!(
            producers.check_marker(&marker(7, 1, 2)),
            Err(crate::producer_state::TRANSACTION_COORDINATOR_FENCED)
        );
        assert_eq!(producers.check_marker(&marker(7, 1, 3)), Ok(()));
        // The coordinator bumped the epoch to abort a timed-out transaction: once its marker
        // is proposed, the old epoch's next batch is refused before the marker commits.
        assert_eq!(producers.check(&header(7, 1, 1, 1), 2), Verdict::Propose);
        producers.marker_proposed(&marker(7, 2, 3));
        assert_eq!(
            producers.check(&header(7, 1, 1, 1), 2),
            Verdict::Refuse(INVALID_PRODUCER_EPOCH)
        );
        assert_eq!(producers.check(&header(7, 2, 0, 1), 2), Verdict::Propose);
        let described = producers.describe(2, |id| (id == 7).then_some(10));
        assert_eq!(
            (
                described[0].epoch,
                described[0].coordinator_epoch,
                described[0].current_txn_start_offset
            ),
            (2, 3, 10)
        );
    }

    #[test]
    fn a_proposal_of_a_lost_term_is_forgotten() {
        let mut producers = Producers::default();
        producers.committed(&header(7, 0, 0, 1), 4, 10);
        producers.proposed(&header(7, 0, 1, 1), 5, 2);
        // Leadership lost; the next leader (term 3) never had index 5's batch.
        assert_eq!(producers.check(&header(7, 0, 1, 1), 3), Verdict::Propose);
        // A later commit at index 5 of another producer's batch supersedes it.
        producers.committed(&header(8, 0, 0, 1), 5, 11);
        producers.committed(&header(7, 0, 1, 1), 6, 12);
        assert_eq!(
            producers.check(&header(7, 0, 1, 1), 3),
            Verdict::Duplicate(BatchAt::Committed { base_offset: 12 })
        );
    }
}
