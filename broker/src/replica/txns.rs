//! Transactions on a replicated partition (KIP-98 on top of Raft): which producers have a
//! transaction open and from which offset, the aborted transactions, and so the last stable
//! offset `read_committed` consumers read up to.
//!
//! Every replica keeps this state, from the **committed** entries only, in log order, as it
//! applies them (`manager::apply`): a transactional data batch opens its producer's
//! transaction, a commit or abort marker (a control batch the transaction coordinator had
//! the leader propose, `serve::write_txn_marker`) closes it. The rules are the plain
//! partition's (`producer_state::PartitionTxns`, which this wraps), so a new leader serves
//! the same last stable offset and aborted list the old one did, with no hand-over. The
//! last stable offset is taken under the high watermark (the committed end), which moves
//! in the same apply step: no reader sees a transaction's batch before the batch opened it.
//!
//! Persistence: a snapshot ([`ReplicaTxnSnapshot`], `storage/FORMAT.md` § Replica
//! transaction snapshot) of the state as of a Raft index, written atomically every
//! [`SNAPSHOT_EVERY_OFFSETS`] applied offsets; a replica that opens replays the committed
//! entries after it. Without one (a replica written by an earlier version, or a log a
//! replacement rebuilt, which removes the file with the old log) the whole committed log is
//! replayed once. Entries the log lost before the snapshot's index + 1 (retention): their
//! markers are gone, so open transactions that began below the log start are dropped, as
//! their records are (Kafka's log start moves its first unstable offset the same way).
//!
//! Bounds: those of `PartitionTxns` (open and aborted transactions per partition), checked
//! by the leader before it proposes a batch that would open one more (`POLICY_VIOLATION`).
//! Owned by the partition's group on its shard (`manager::Hosted`).

use bytes::Bytes;

use crate::producer_state::{AbortedTxn, PartitionTxns, TxnMarker};
use crate::storage::batch::{control, BatchHeader};
use crate::storage::meta::{self, MetaKind};
use crate::storage::AbortedRange;

/// Applied offsets between two snapshots: what a replica that opens replays at most past
/// its snapshot (about 5 MB of 100-byte records).
pub const SNAPSHOT_EVERY_OFFSETS: i64 = 50_000;

/// The snapshot file in the replica's directory (`storage/FORMAT.md`).
pub use crate::storage::segment::REPLICA_TXNS_FILE;

/// The archived form of a replica's transactions as of Raft index `index`, version 1.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Eq, Clone)]
pub struct ReplicaTxnSnapshot {
    /// The last entry the state includes.
    pub index: u64,
    /// The Kafka end offset of that entry (the high watermark then).
    pub next_offset: i64,
    /// Open transactions: (producer id, first offset), by first offset.
    pub ongoing: Vec<(i64, i64)>,
    /// Aborted transactions in marker order: (producer id, first offset, marker offset,
    /// last stable offset then).
    pub aborted: Vec<(i64, i64, i64, i64)>,
}

impl ReplicaTxnSnapshot {
    pub fn encode(&self) -> Vec<u8> {
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(self).expect("plain struct");
        meta::seal(MetaKind::ReplicaTxns, &archive)
    }

    /// The snapshot in `file`, checked (envelope, checksums, archive); never trusted blindly,
    /// the caller still checks it against the log.
    pub fn decode(file: &[u8]) -> Result<Self, String> {
        let payload = meta::open(MetaKind::ReplicaTxns, file).map_err(|e| e.to_string())?;
        rkyv::from_bytes::<ReplicaTxnSnapshot, rkyv::rancor::Error>(&payload)
            .map_err(|e| e.to_string())
    }
}

/// One replicated partition's transactions. See the module docs.
#[derive(Debug, Default)]
pub struct ReplicaTxns {
    txns: PartitionTxns,
    /// The last entry applied: entries at or before it change nothing (a snapshot can be
    /// ahead of the commit index a replica reopens with, and Raft applies those entries
    /// again).
    applied_index: u64,
    /// The committed end when the last snapshot was taken.
    snapshot_end: i64,
}

/// What a committed entry means to the transactions ([`TxnEntry::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnEntry {
    /// A data batch of an idempotent or transactional producer.
    Data(BatchHeader),
    /// A commit or abort marker.
    Marker(TxnMarker),
    /// Anything else (plain data, Raft's own control batches).
    Other,
}

impl TxnEntry {
    /// Reads `batch` (with its parsed `header`): bytes from the log are not trusted, so a
    /// control batch that is not a well-formed marker is `Other`.
    pub fn of(header: &BatchHeader, batch: &Bytes) -> Self {
        if header.producer_id < 0 {
            return TxnEntry::Other;
        }
        if !header.is_control() {
            return TxnEntry::Data(*header);
        }
        match control::txn_marker_of(batch) {
            Some((commit, coordinator_epoch)) => TxnEntry::Marker(TxnMarker {
                producer_id: header.producer_id,
                producer_epoch: header.producer_epoch,
                commit,
                coordinator_epoch,
            }),
            None => TxnEntry::Other,
        }
    }
}

impl ReplicaTxns {
    /// The state a snapshot holds, with what the log no longer has dropped: aborted
    /// transactions whose marker is below `log_start`, and, when entries after the
    /// snapshot's index are gone (`entries_lost`), open transactions that began below it.
    /// Entries at or past the file's own `next_offset` contradict it (a file from damage
    /// its checksums did not catch, or a bug) and are dropped: the replay after the
    /// snapshot brings markers from `next_offset` on, and an aborted entry beyond one of
    /// them would break `PartitionTxns`' marker-order assertion, a panic from disk data.
    pub fn restored(snapshot: &ReplicaTxnSnapshot, log_start: i64, entries_lost: bool) -> Self {
        let end = snapshot.next_offset;
        let ongoing: Vec<(i64, i64)> = snapshot
            .ongoing
            .iter()
            .copied()
            .filter(|&(_, first_offset)| first_offset < end)
            .filter(|&(_, first_offset)| !entries_lost || first_offset >= log_start)
            .collect();
        let aborted: Vec<AbortedTxn> = snapshot
            .aborted
            .iter()
            .filter(|&&(_, _, last_offset, _)| last_offset < end)
            .map(
                |&(producer_id, first_offset, last_offset, last_stable_offset)| AbortedTxn {
                    producer_id,
                    first_offset,
                    last_offset,
                    last_stable_offset,
                },
            )
            .collect();
        let mut txns = PartitionTxns::default();
        txns.restore(&ongoing, &aborted);
        txns.drop_below(log_start);
        ReplicaTxns {
            txns,
            applied_index: snapshot.index,
            snapshot_end: snapshot.next_offset,
        }
    }

    /// Nothing open or aborted as of entry `index` ending at `next_offset` (a log rebuilt
    /// from a leader's first entry: what came before it is not here).
    pub fn starting_at(index: u64, next_offset: i64) -> Self {
        ReplicaTxns {
            txns: PartitionTxns::default(),
            applied_index: index,
            snapshot_end: next_offset,
        }
    }

    /// Applies the committed entry at `index` whose batch starts at `base_offset`, once.
    pub fn apply(&mut self, index: u64, entry: &TxnEntry, base_offset: i64) {
        if index <= self.applied_index {
            return;
        }
        self.applied_index = index;
        match entry {
            TxnEntry::Data(header) => self.data_committed(header, base_offset),
            TxnEntry::Marker(marker) => {
                self.marker_committed(marker.producer_id, marker.commit, base_offset);
            }
            TxnEntry::Other => {}
        }
    }

    /// Whether a transactional batch of `header` (checked by the leader against the
    /// committed state) may be proposed: `INVALID_TXN_STATE` for a plain batch of a
    /// producer with a transaction open here, `POLICY_VIOLATION` at a bound.
    pub fn check_data_batch(&self, header: &BatchHeader) -> Result<(), i16> {
        self.txns.check_data_batch(header)
    }

    /// A committed data batch of a producer at `base_offset`.
    fn data_committed(&mut self, header: &BatchHeader, base_offset: i64) {
        self.txns.record_data_batch(header, base_offset);
    }

    /// A committed marker of `producer_id` at `offset`.
    fn marker_committed(&mut self, producer_id: i64, commit: bool, offset: i64) {
        if self
            .txns
            .open_transaction(producer_id)
            .is_some_and(|first_offset| first_offset >= offset)
        {
            // A marker before its transaction's first batch cannot come from the log's
            // order; from damaged entries it must not take the broker down.
            tracing::error!(
                producer_id,
                offset,
                "a transaction marker precedes its transaction's first batch; ignored"
            );
            return;
        }
        self.txns.complete(producer_id, commit, offset);
    }

    /// The last stable offset under `high_watermark`, at least `log_start`.
    pub fn last_stable_offset(&self, high_watermark: i64, log_start: i64) -> i64 {
        self.txns
            .last_stable_offset(high_watermark)
            .max(log_start)
            .min(high_watermark)
    }

    /// The aborted transactions overlapping `[fetch_offset, upper)` (Kafka's fetch rule).
    pub fn aborted_overlapping(&self, fetch_offset: i64, upper: i64) -> Vec<(i64, i64)> {
        self.txns.aborted_overlapping(fetch_offset, upper)
    }

    /// The aborted transactions whose marker the log holds, for the log cleaner.
    pub fn aborted_ranges(&self) -> Vec<AbortedRange> {
        self.txns.aborted_ranges()
    }

    /// Forgets the aborted transactions whose markers are at `marker_offsets` (the log
    /// cleaner removed their records); how many went. Idempotent.
    pub fn forget_aborted(&mut self, marker_offsets: &[i64]) -> usize {
        self.txns.forget_aborted(marker_offsets)
    }

    /// How many transactions are open here.
    pub fn ongoing_count(&self) -> usize {
        self.txns.ongoing_count()
    }

    /// The first offset of the producer's open transaction, if any.
    pub fn open_transaction(&self, producer_id: i64) -> Option<i64> {
        self.txns.open_transaction(producer_id)
    }

    /// Forgets aborted transactions whose marker is below `log_start` (retention).
    pub fn drop_below(&mut self, log_start: i64) {
        self.txns.drop_below(log_start);
    }

    /// A snapshot of the state now, the committed end being `next_offset`, if that moved
    /// [`SNAPSHOT_EVERY_OFFSETS`] past the last one; the caller writes it.
    pub fn snapshot_due(&mut self, next_offset: i64) -> Option<ReplicaTxnSnapshot> {
        (next_offset - self.snapshot_end >= SNAPSHOT_EVERY_OFFSETS)
            .then(|| self.snapshot(next_offset))
    }

    /// The state now (as of the last applied entry, which ends at `next_offset`).
    pub fn snapshot(&mut self, next_offset: i64) -> ReplicaTxnSnapshot {
        self.snapshot_end = next_offset;
        ReplicaTxnSnapshot {
            index: self.applied_index,
            next_offset,
            ongoing: self.txns.ongoing().collect(),
            aborted: self
                .txns
                .aborted()
                .map(|a| {
                    (
                        a.producer_id,
                        a.first_offset,
                        a.last_offset,
                        a.last_stable_offset,
                    )
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn_header(producer_id: i64, records: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 0,
            magic: 2,
            crc: 0,
            attributes: 0x10,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: 0,
            base_sequence: 0,
            record_count: records,
        }
    }

    fn abort(producer_id: i64) -> TxnEntry {
        TxnEntry::Marker(TxnMarker {
            producer_id,
            producer_epoch: 0,
            commit: false,
            coordinator_epoch: 0,
        })
    }

    #[test]
    fn the_stable_offset_follows_open_transactions_and_a_snapshot_keeps_them() {
        let mut txns = ReplicaTxns::default();
        txns.apply(1, &TxnEntry::Data(txn_header(7, 3)), 10);
        txns.apply(2, &TxnEntry::Data(txn_header(8, 2)), 13);
        assert_eq!(txns.last_stable_offset(15, 0), 10);
        txns.apply(3, &abort(7), 15);
        assert_eq!(txns.last_stable_offset(16, 0), 13);
        assert_eq!(txns.aborted_overlapping(0, 16), [(7, 10)]);
        // Applied again (a snapshot ahead of the reopened commit index): no change, and no
        // second aborted entry.
        txns.apply(1, &TxnEntry::Data(txn_header(7, 3)), 10);
        txns.apply(3, &abort(7), 15);
        assert_eq!(txns.last_stable_offset(16, 0), 13);
        assert_eq!(txns.aborted_overlapping(0, 16), [(7, 10)]);
        let snapshot = txns.snapshot(16);
        assert_eq!(snapshot.index, 3);
        let decoded = ReplicaTxnSnapshot::decode(&snapshot.encode()).expect("round trip");
        assert_eq!(decoded, snapshot);
        let restored = ReplicaTxns::restored(&decoded, 0, false);
        assert_eq!(restored.last_stable_offset(16, 0), 13);
        assert_eq!(restored.aborted_overlapping(0, 16), [(7, 10)]);
        // Entries after the snapshot lost to retention up to offset 14: the open
        // transaction at 13 may have ended there, and is dropped; the abort at 15 stays.
        let lost = ReplicaTxns::restored(&decoded, 14, true);
        assert_eq!(lost.last_stable_offset(16, 14), 16);
        assert_eq!(lost.aborted_overlapping(14, 16), [(7, 10)]);
        // Without loss an open transaction below the log start still holds readers at it.
        let kept = ReplicaTxns::restored(&decoded, 14, false);
        assert_eq!(kept.last_stable_offset(16, 14), 14);
    }

    #[test]
    fn snapshot_entries_past_its_own_end_are_dropped_not_replayed_into_a_panic() {
        let contradicting = ReplicaTxnSnapshot {
            index: 3,
            next_offset: 10,
            ongoing: vec![(5, 12)],
            aborted: vec![(7, 2, 4, 5), (8, 11, 20, 21)],
        };
        let mut txns = ReplicaTxns::restored(&contradicting, 0, false);
        assert_eq!(
            txns.last_stable_offset(30, 0),
            30,
            "the open entry past 10 is dropped"
        );
        assert_eq!(txns.aborted_overlapping(0, 30), [(7, 2)]);
        // A marker replayed after the snapshot, below the dropped entry's 20: no panic.
        txns.apply(4, &TxnEntry::Data(txn_header(9, 1)), 10);
        txns.apply(5, &abort(9), 11);
        assert_eq!(txns.aborted_overlapping(0, 30), [(7, 2), (9, 10)]);
    }

    #[test]
    fn a_damaged_snapshot_is_refused_not_trusted() {
        let mut txns = ReplicaTxns::default();
        txns.apply(1, &TxnEntry::Data(txn_header(7, 1)), 0);
        let mut bytes = txns.snapshot(1).encode();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(ReplicaTxnSnapshot::decode(&bytes).is_err());
        assert!(ReplicaTxnSnapshot::decode(&bytes[..10]).is_err());
        assert!(ReplicaTxnSnapshot::decode(&[]).is_err());
    }

    #[test]
    fn snapshots_are_due_every_so_many_offsets() {
        let mut txns = ReplicaTxns::default();
        assert!(txns.snapshot_due(SNAPSHOT_EVERY_OFFSETS - 1).is_none());
        assert!(txns.snapshot_due(SNAPSHOT_EVERY_OFFSETS).is_some());
        assert!(txns.snapshot_due(SNAPSHOT_EVERY_OFFSETS + 1).is_none());
    }

    #[test]
    fn only_well_formed_markers_of_a_producer_are_markers() {
        let marker = control::txn_marker(7, 2, true, 5, 0);
        let header = BatchHeader::parse(&marker).expect("a batch");
        assert_eq!(
            TxnEntry::of(&header, &marker),
            TxnEntry::Marker(TxnMarker {
                producer_id: 7,
                producer_epoch: 2,
                commit: true,
                coordinator_epoch: 5
            })
        );
        let raft_entry = control::batch(control::LOG_START, &9_i64.to_be_bytes());
        let header = BatchHeader::parse(&raft_entry).expect("a batch");
        assert_eq!(TxnEntry::of(&header, &raft_entry), TxnEntry::Other);
    }
}
