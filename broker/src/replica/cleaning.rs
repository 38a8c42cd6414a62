//! The log cleaner on replicated partitions (`cleanup.policy=compact`; the shard's cleaner,
//! `compaction::clean_logs_periodically`, takes these logs beside its plain ones).
//!
//! Each replica compacts its own log, as Kafka's replicas do; nothing about cleaning goes
//! through Raft. What makes that safe:
//! - **Every batch stays** (`storage/src/cleaner.rs`): a cleaned entry keeps its offsets,
//!   Raft index and term, so Raft's log matching, the terms raft-rs asks for and every
//!   index the replica keeps are unchanged. A follower copying an entry its leader already
//!   cleaned (catching up from the leader's log, or rebuilt from its first entry) checks it
//!   as a compacted batch (`batch::validate_compacted`). Replicas may differ in how far
//!   each has cleaned; they never differ in what a reader of the latest values sees.
//! - **Committed entries only**: nothing at or above the last stable offset under the high
//!   watermark (`serve::last_stable_offset`) is cleaned. A sealed segment may hold durable
//!   entries that are not committed yet; Raft may truncate those, and a record cleaned away
//!   because of a later one that is then truncated would be lost.
//! - **Transactions** come from the replica's own state (`txns`), which is derived from the
//!   same log: aborted transactions' records are removed, committed ones compacted. No
//!   marker is ever retired ([`CleanerTxns::retires_markers`]): a follower may hold a
//!   transaction's batches as they were before its leader cleaned them and copy the marker
//!   only after; a retired marker ends nothing, and that transaction would stay open on the
//!   follower. Emptied transactional batches open nothing when a replica replays them
//!   (`PartitionTxns::record_data_batch`), and a marker with nothing open completes nothing.
//!   The cost: a marker's batch stays for good. The aborted entry of a marker that would
//!   have been retired (its transaction's records gone, `delete.retention.ms` over) is
//!   forgotten all the same, so the aborted list does not grow with every abort.
//!
//! Runs on the shard that owns the groups.

use std::rc::Rc;

use crate::disk::PartitionLog;
use crate::metadata::TopicPartition;
use crate::replica::manager::Hosted;
use crate::replica::serve::last_stable_offset;
use crate::replica::ReplicaManager;
use crate::storage::{AbortedRange, CleanerTxns, StorageError};

/// A replicated partition's transactions as the cleaner needs them, read when its pass
/// starts: a bound that only rises and the aborted list up to it (a transaction aborted
/// later began at or above the bound).
pub struct ReplicaCleanerTxns {
    /// The last stable offset under the high watermark.
    pub clean_below: i64,
    pub aborted: Vec<AbortedRange>,
    /// The group, whose spent aborted entries a pass forgets.
    hosted: Rc<Hosted>,
}

impl CleanerTxns for ReplicaCleanerTxns {
    fn first_unstable_offset(&self) -> i64 {
        self.clean_below
    }

    fn aborted(&self) -> Vec<AbortedRange> {
        self.aborted.clone()
    }

    /// The pass found these abort markers' transactions without records (removed in an
    /// earlier pass) and their retention over: their entries hide nothing and go, so the
    /// list does not grow with every abort a compacted topic ever saw. Not made durable
    /// here: the markers stay, so an entry back after a restart hides nothing either and is
    /// forgotten again at the next pass; the next transaction snapshot leaves it out.
    async fn forget_aborted(&self, marker_offsets: &[i64]) -> Result<(), StorageError> {
        let forgotten = self.hosted.txns.borrow_mut().forget_aborted(marker_offsets);
        if forgotten > 0 {
            tracing::debug!(partition = %self.hosted.replica.topic, forgotten, "aborted transactions whose records the cleaner removed forgotten");
        }
        Ok(())
    }

    fn retires_markers(&self) -> bool {
        false
    }
}

impl ReplicaManager {
    /// Every open hosted partition with its log and the offset its cleaner stops at (see
    /// the module docs).
    pub fn cleanable_logs(&self) -> Vec<(TopicPartition, PartitionLog, i64)> {
        self.groups
            .borrow()
            .values()
            .filter(|hosted| !hosted.closed.get())
            .map(|hosted| {
                (
                    hosted.replica.topic.clone(),
                    hosted.log.clone(),
                    last_stable_offset(hosted),
                )
            })
            .collect()
    }

    /// The transactions of hosted partition `tp` for a cleaning pass that starts now;
    /// `None` if it is not hosted here (any more).
    pub fn cleaner_txns(&self, tp: &TopicPartition) -> Option<ReplicaCleanerTxns> {
        let (_, hosted) = self.hosted(tp)?;
        if hosted.closed.get() {
            return None;
        }
        let clean_below = last_stable_offset(&hosted);
        let aborted = hosted.txns.borrow().aborted_ranges();
        Some(ReplicaCleanerTxns {
            clean_below,
            aborted,
            hosted,
        })
    }
}
