//! The leader-epoch cache (Kafka's leader-epoch checkpoint, KIP-101): for each leader epoch
//! (= Raft term) the first offset and Raft index it wrote. It is not a separate file: every
//! segment index records where each term starts in its segment (`FORMAT.md` § Segment
//! index, `term_entries`), so the cache is persisted with the sealed indexes, rebuilt with
//! them when lost (terms are in the batches), cut by a truncation and shortened by retention
//! together with the log. It answers Raft's synchronous `term(i)` for every entry held, and
//! `OffsetForLeaderEpoch`.

use crate::index::TermIndexEntry;
use crate::io::Disk;
use crate::state::PartitionLog;

/// One leader epoch's start in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderEpoch {
    pub epoch: i32,
    pub start_offset: i64,
    pub start_index: u64,
}

/// Kafka's answer for an epoch no entry has (`UNDEFINED_EPOCH`, `UNDEFINED_EPOCH_OFFSET`).
pub const EPOCH_UNDEFINED: (i32, i64) = (-1, -1);

impl<D: Disk> PartitionLog<D> {
    /// The term of the entry at Raft index `index`, if the log holds it.
    pub fn term_at(&self, index: u64) -> Option<i32> {
        let state = self.state();
        let segment = state
            .segments()
            .take_while(|segment| segment.index.base_index() <= index)
            .last()?;
        segment.index.term_at(index)
    }

    /// Every leader epoch in the log, oldest first; an epoch that spans segments is listed
    /// once, at its first batch still in the log.
    pub fn leader_epochs(&self) -> Vec<LeaderEpoch> {
        let state = self.state();
        let mut epochs: Vec<LeaderEpoch> = Vec::new();
        for TermIndexEntry {
            start_index,
            start_offset,
            term,
        } in state
            .segments()
            .flat_map(|segment| segment.index.term_entries())
        {
            if epochs.last().is_some_and(|last| last.epoch == term) {
                continue;
            }
            epochs.push(LeaderEpoch {
                epoch: term,
                start_offset,
                start_index,
            });
        }
        epochs
    }

    /// `OffsetForLeaderEpoch` as Kafka answers it (`LeaderEpochFileCache.endOffsetFor`): for
    /// the largest epoch at or below `requested`, the offset where the next epoch starts (the
    /// log end offset for the latest epoch). An epoch above the latest, or -1, is undefined;
    /// one below the earliest answers with the requested epoch and the earliest start.
    pub fn end_offset_for_leader_epoch(&self, requested: i32) -> (i32, i64) {
        let epochs = self.leader_epochs();
        let log_end_offset = self.log_end_offset();
        let Some(latest) = epochs.last() else {
            return EPOCH_UNDEFINED;
        };
        if requested < 0 {
            return EPOCH_UNDEFINED;
        }
        if latest.epoch == requested {
            return (requested, log_end_offset);
        }
        let higher = epochs.partition_point(|e| e.epoch <= requested);
        let Some(next) = epochs.get(higher) else {
            return EPOCH_UNDEFINED;
        };
        match higher.checked_sub(1) {
            Some(floor) => (epochs[floor].epoch, next.start_offset),
            None => (requested, next.start_offset),
        }
    }
}
