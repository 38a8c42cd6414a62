//! The partition side of transactions (KIP-98): which producers have a transaction open on
//! one partition and from which offset, the last stable offset (LSO) `read_committed`
//! consumers read up to, and the aborted transactions whose records they must skip.
//!
//! Owned by the partition's `PartitionProducers` (the parent module), so by the partition's
//! shard. It is changed only under the partition's producer gate (a transactional batch
//! after its sequence check, a marker), synchronously right after the append that placed
//! the batch; fetches read it without the gate, between two awaits.
//!
//! Rules, as Kafka's `ProducerStateManager`/`ProducerAppendInfo`:
//! - a transactional batch of a producer with no open transaction here opens one at the
//!   batch's base offset; later ones of that transaction change nothing;
//! - a non-transactional batch of a producer with an open transaction here is refused
//!   (`INVALID_TXN_STATE`);
//! - a marker (commit or abort) closes the producer's open transaction, if any; an abort of
//!   an open one records an [`AbortedTxn`] (first offset, marker offset, the LSO then);
//! - LSO = min(first offset of every open transaction, high watermark). New transactions
//!   open at offsets past the log end, so the LSO never goes back.
//!
//! Bounds (Kafka has none): [`ONGOING_TXNS_PER_PARTITION_MAX`] open transactions and
//! [`ABORTED_TXNS_PER_PARTITION_MAX`] aborted entries per partition, and
//! `ONGOING_TXNS_PER_SHARD_MAX` open transactions per shard (the parent module). At any bound a
//! transactional batch that would open a new transaction is refused with `POLICY_VIOLATION`
//! (the client aborts the transaction; its abort marker adds no entry here, as nothing of it
//! was written here); batches of transactions already open and markers are never refused for
//! it, so aborted entries stay below the bound plus the open transactions.
//!
//! What the aborted bound counts: aborts whose records or marker are still in the log.
//! Entries leave in two ways, so it is reached only by aborts in the part of the log not yet
//! cleaned or not yet retained away, not by every abort the partition ever saw:
//! - whose marker is below the log start (retention, `DeleteRecords`): their records are
//!   gone, as Kafka drops a segment's `.txnindex` with the segment;
//! - whose marker the log cleaner removes (a compacted topic): the cleaner removes an aborted
//!   transaction's records in one pass and its marker in a later one, once
//!   `delete.retention.ms` ran out (`storage/src/cleaner.rs`), and before that pass commits
//!   the entry is forgotten here and a snapshot without it written
//!   (`ProducerStates::forget_cleaned_aborts`), as Kafka's cleaner writes the cleaned
//!   segment's `.txnindex` without it. On a compacted topic whose cleaner keeps up, the
//!   entries are those of the dirty part plus the aborts of the last `delete.retention.ms`.
//!
//! A transactional batch with no records is one the cleaner emptied (producers cannot
//! send one): replayed at a start it opens nothing, as its transaction's marker may be gone.

use std::collections::{BTreeSet, HashMap, VecDeque};

use kafka_protocol::error::ResponseError;

use crate::storage::batch::BatchHeader;

/// Open transactions one partition tracks at most.
pub const ONGOING_TXNS_PER_PARTITION_MAX: usize = 1_000;
/// Aborted-transaction entries one partition keeps at most (34 bytes each in Kafka's
/// `.txnindex` layout, about 1.7 MB at the bound, held in memory and in the snapshot).
pub const ABORTED_TXNS_PER_PARTITION_MAX: usize = 50_000;

pub const INVALID_TXN_STATE: i16 = ResponseError::InvalidTxnState.code();
pub const POLICY_VIOLATION: i16 = ResponseError::PolicyViolation.code();

/// One aborted transaction of a partition: Kafka's `AbortedTxn` (`.txnindex` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The offset of the abort marker.
    pub last_offset: i64,
    /// The LSO once this transaction was completed (Kafka records it; informational).
    pub last_stable_offset: i64,
}

/// The transactions of one partition. See the module docs.
#[derive(Debug, Default)]
pub struct PartitionTxns {
    /// Producer id → first offset of its open transaction here.
    ongoing: HashMap<i64, i64>,
    /// The same, ordered by first offset: the LSO is the first one.
    by_first_offset: BTreeSet<(i64, i64)>,
    /// Ordered by `last_offset` (markers are appended in offset order).
    aborted: VecDeque<AbortedTxn>,
}

impl PartitionTxns {
    /// Whether the batch of `header` (a data batch with a producer id, that passed the
    /// sequence check) may be appended: the error code if not.
    pub fn check_data_batch(&self, header: &BatchHeader) -> Result<(), i16> {
        let open = self.ongoing.contains_key(&header.producer_id);
        if !header.is_transactional() {
            return if open { Err(INVALID_TXN_STATE) } else { Ok(()) };
        }
        if !open
            && (self.ongoing.len() >= ONGOING_TXNS_PER_PARTITION_MAX
                || self.aborted.len() >= ABORTED_TXNS_PER_PARTITION_MAX)
        {
            return Err(POLICY_VIOLATION);
        }
        Ok(())
    }

    /// Records a data batch the log placed at `base_offset` (after [`Self::check_data_batch`],
    /// or replayed from the log). A batch with no records (one the log cleaner emptied; a
    /// producer's never has none) opens nothing: its transaction's marker may be gone too.
    pub fn record_data_batch(&mut self, header: &BatchHeader, base_offset: i64) {
        if header.is_transactional()
            && header.record_count > 0
            && !self.ongoing.contains_key(&header.producer_id)
        {
            self.open(header.producer_id, base_offset);
        }
    }

    fn open(&mut self, producer_id: i64, first_offset: i64) {
        self.ongoing.insert(producer_id, first_offset);
        self.by_first_offset.insert((first_offset, producer_id));
    }

    /// Closes the producer's open transaction at the marker at `marker_offset`; an abort of
    /// an open transaction records and returns its entry.
    pub fn complete(
        &mut self,
        producer_id: i64,
        commit: bool,
        marker_offset: i64,
    ) -> Option<AbortedTxn> {
        let first_offset = self.ongoing.remove(&producer_id)?;
        let removed = self.by_first_offset.remove(&(first_offset, producer_id));
        assert!(
            removed,
            "producer {producer_id}: open transaction not indexed"
        );
        assert!(
            first_offset < marker_offset,
            "producer {producer_id}: marker at {marker_offset} before its transaction's first offset {first_offset}"
        );
        if commit {
            return None;
        }
        // Kafka's `lastStableOffset(completedTxn)`: the first offset of another open
        // transaction, or the offset after the marker.
        let last_stable_offset = self
            .by_first_offset
            .first()
            .map_or(marker_offset + 1, |(first, _)| *first);
        let entry = AbortedTxn {
            producer_id,
            first_offset,
            last_offset: marker_offset,
            last_stable_offset,
        };
        if let Some(newest) = self.aborted.back() {
            assert!(
                newest.last_offset < marker_offset,
                "abort markers recorded out of offset order"
            );
        }
        self.aborted.push_back(entry);
        Some(entry)
    }

    /// The last stable offset under `high_watermark`.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        self.by_first_offset
            .first()
            .map_or(high_watermark, |(first, _)| (*first).min(high_watermark))
    }

    /// The first offset of the producer's open transaction here, if it has one.
    pub fn open_transaction(&self, producer_id: i64) -> Option<i64> {
        self.ongoing.get(&producer_id).copied()
    }

    pub fn ongoing_count(&self) -> usize {
        self.ongoing.len()
    }

    /// The open transactions, as (producer id, first offset), ordered by first offset.
    pub fn ongoing(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.by_first_offset
            .iter()
            .map(|(first, producer_id)| (*producer_id, *first))
    }

    pub fn aborted(&self) -> impl Iterator<Item = &AbortedTxn> {
        self.aborted.iter()
    }

    /// The aborted transactions whose marker the log holds, as the log cleaner takes them
    /// (a replica's and a single-broker partition's alike).
    pub fn aborted_ranges(&self) -> Vec<crate::storage::AbortedRange> {
        self.aborted
            .iter()
            .map(|entry| crate::storage::AbortedRange {
                producer_id: entry.producer_id,
                first_offset: entry.first_offset,
                marker_offset: entry.last_offset,
            })
            .collect()
    }

    /// Kafka's fetch rule: the aborted transactions overlapping `[fetch_offset, upper)`, as
    /// (producer id, first offset), those whose marker is at or after `fetch_offset` and
    /// whose first offset is below `upper`.
    pub fn aborted_overlapping(&self, fetch_offset: i64, upper: i64) -> Vec<(i64, i64)> {
        let start = self
            .aborted
            .partition_point(|entry| entry.last_offset < fetch_offset);
        self.aborted
            .range(start..)
            .filter(|entry| entry.first_offset < upper)
            .map(|entry| (entry.producer_id, entry.first_offset))
            .collect()
    }

    /// Drops the aborted entries whose marker is below `log_start_offset`, and open
    /// transactions wholly below it are kept (their marker is still to come).
    pub fn drop_below(&mut self, log_start_offset: i64) {
        while self
            .aborted
            .front()
            .is_some_and(|entry| entry.last_offset < log_start_offset)
        {
            self.aborted.pop_front();
        }
    }

    /// Forgets the aborted entries whose abort markers are at `marker_offsets`: the log
    /// cleaner removes those markers, their transactions' records being gone. Returns how
    /// many were forgotten.
    pub fn forget_aborted(&mut self, marker_offsets: &[i64]) -> usize {
        let mut sorted = marker_offsets.to_vec();
        sorted.sort_unstable();
        let before = self.aborted.len();
        self.aborted
            .retain(|entry| sorted.binary_search(&entry.last_offset).is_err());
        before - self.aborted.len()
    }

    /// Restores state read from a snapshot (`ongoing` as (producer id, first offset),
    /// `aborted` in marker order); entries out of order are skipped, never trusted.
    pub fn restore(&mut self, ongoing: &[(i64, i64)], aborted: &[AbortedTxn]) {
        for &(producer_id, first_offset) in ongoing {
            if !self.ongoing.contains_key(&producer_id) {
                self.open(producer_id, first_offset);
            }
        }
        for entry in aborted {
            let in_order = self
                .aborted
                .back()
                .is_none_or(|newest| newest.last_offset < entry.last_offset);
            if in_order && entry.first_offset < entry.last_offset {
                self.aborted.push_back(*entry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(producer_id: i64, transactional: bool) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 0,
            magic: 2,
            crc: 0,
            attributes: if transactional { 0x10 } else { 0 },
            last_offset_delta: 0,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: 0,
            base_sequence: 0,
            record_count: 1,
        }
    }

    #[test]
    fn lso_follows_the_oldest_open_transaction_and_aborts_are_recorded() {
        let mut txns = PartitionTxns::default();
        assert_eq!(txns.last_stable_offset(5), 5);
        txns.record_data_batch(&header(1, true), 10);
        txns.record_data_batch(&header(2, true), 12);
        txns.record_data_batch(&header(1, true), 14);
        assert_eq!(txns.last_stable_offset(20), 10);
        assert_eq!(
            txns.last_stable_offset(8),
            8,
            "never above the high watermark"
        );
        assert_eq!(
            txns.check_data_batch(&header(1, false)),
            Err(INVALID_TXN_STATE)
        );
        assert_eq!(txns.check_data_batch(&header(3, false)), Ok(()));
        assert_eq!(
            txns.complete(1, false, 20),
            Some(AbortedTxn {
                producer_id: 1,
                first_offset: 10,
                last_offset: 20,
                last_stable_offset: 12,
            })
        );
        assert_eq!(txns.last_stable_offset(30), 12);
        assert_eq!(txns.complete(2, true, 21), None);
        assert_eq!(
            txns.complete(2, false, 22),
            None,
            "no open transaction: no entry"
        );
        assert_eq!(txns.last_stable_offset(30), 30);
        assert_eq!(txns.aborted_overlapping(0, 30), vec![(1, 10)]);
        assert_eq!(
            txns.aborted_overlapping(21, 30),
            vec![],
            "marker before the fetch"
        );
        assert_eq!(
            txns.aborted_overlapping(0, 10),
            vec![],
            "first offset at the upper bound"
        );
        txns.drop_below(21);
        assert_eq!(txns.aborted().count(), 0);
    }

    #[test]
    fn cleaned_aborts_are_forgotten_and_emptied_batches_open_nothing() {
        let mut txns = PartitionTxns::default();
        for (producer_id, first, marker) in [(1, 0, 5), (2, 6, 9), (1, 10, 12)] {
            txns.record_data_batch(&header(producer_id, true), first);
            txns.complete(producer_id, false, marker);
        }
        assert_eq!(txns.forget_aborted(&[12, 5, 40]), 2);
        let left: Vec<i64> = txns.aborted().map(|e| e.last_offset).collect();
        assert_eq!(left, vec![9]);
        // The bound counts only what is left: room again for new transactions.
        assert_eq!(txns.check_data_batch(&header(3, true)), Ok(()));
        // A batch the cleaner emptied (replayed at a start) opens no transaction, as its
        // marker may be gone too.
        let mut emptied = header(4, true);
        emptied.record_count = 0;
        txns.record_data_batch(&emptied, 20);
        assert_eq!(txns.open_transaction(4), None);
        assert_eq!(txns.last_stable_offset(30), 30);
    }

    #[test]
    fn at_the_aborted_bound_the_cleaner_makes_room_again() {
        let mut txns = PartitionTxns::default();
        let max = ABORTED_TXNS_PER_PARTITION_MAX as i64;
        for n in 0..max {
            txns.record_data_batch(&header(1, true), 2 * n);
            txns.complete(1, false, 2 * n + 1);
        }
        assert_eq!(
            txns.check_data_batch(&header(2, true)),
            Err(POLICY_VIOLATION)
        );
        // The cleaner retires the markers of the older half (their records went earlier).
        let markers: Vec<i64> = (0..max / 2).map(|n| 2 * n + 1).collect();
        assert_eq!(txns.forget_aborted(&markers), markers.len());
        assert_eq!(txns.check_data_batch(&header(2, true)), Ok(()));
        assert_eq!(txns.aborted_overlapping(0, 2 * max)[0], (1, max));
    }

    #[test]
    fn a_new_transaction_past_the_bound_is_refused_but_open_ones_go_on() {
        let mut txns = PartitionTxns::default();
        for producer_id in 0..ONGOING_TXNS_PER_PARTITION_MAX as i64 {
            txns.record_data_batch(&header(producer_id, true), producer_id);
        }
        let new = header(ONGOING_TXNS_PER_PARTITION_MAX as i64, true);
        assert_eq!(txns.check_data_batch(&new), Err(POLICY_VIOLATION));
        assert_eq!(txns.check_data_batch(&header(0, true)), Ok(()));
    }
}
