//! raft-rs's [`Storage`] over a partition log: the Raft log IS the partition log
//! (`storage/FORMAT.md` § Raft index and term).
//!
//! One Raft entry is one Kafka v2 batch. A data entry's `data` is a producer batch; the
//! empty entry a new leader appends and configuration changes are stored as control batches
//! ([`entry_batch`]), built from the entry alone so that every replica stores the same bytes.
//! Every replica persists an entry the same way, stamping the batch with its own log end
//! offset and the entry's term: Raft has already matched the logs up to the entry before, so
//! the log ends, and therefore the bytes, agree (a follower does not need its leader's
//! stamped bytes, and an entry re-sent from the leader's disk is stamped identically).
//!
//! raft-rs calls `Storage` synchronously. Terms are answered from the log's leader-epoch
//! cache (in memory, for every entry held). Entries are answered from the recent entries kept
//! in memory (everything not yet applied is kept); for older ones a request that may wait
//! (sending to a lagging follower) gets `LogTemporarilyUnavailable` and is remembered
//! ([`GroupStore::wants_fetch`]); the shard runs [`LogStore::fetch`], hands the context it
//! returns to the driver (`MultiRaft::entries_fetched`, which calls
//! `RawNode::on_entries_fetched`: raft-rs asks again and is served from what was read), then
//! [`LogStore::release_fetched`].
//!
//! Writes are staged (`GroupStore::stage_entries`, for the driver's rounds): visible to
//! raft-rs's reads at once, written to the log by [`LogStore::write_staged`] in staging order.
//! [`LogDurability`] is the shard's durability barrier over such stores: one worker writes
//! the staged entries of every store that staged something, waits for their fdatasyncs (all
//! of them at once, so that ext4 can commit them together), saves the staged hard states in
//! the shard's raft-meta store, and only then completes the ticket. A store that staged
//! nothing costs a round nothing: a store queues itself for the worker when it stages.
//!
//! Snapshots (stores opened with `serves_snapshots`, the partitions' groups): a follower
//! that needs entries its leader no longer holds (its leader's retention removed them) is
//! rebuilt from the leader's first entry. The leader's snapshot is that one entry, as its log
//! stores it (stamped with offset and term; [`snapshot_data`]), at its Raft index, with the
//! leader's applied configuration; reading it may wait for the disk, so the first request
//! gets `SnapshotTemporarilyUnavailable` and queues a read ([`LogStore::fetch`]), and
//! raft-rs asks again at the follower's next heartbeat response. The follower stages a
//! replacement: its whole log gives way to that entry (`PartitionLog::replace_with_entry`,
//! crash-safe), and appends go on after it. Kafka's follower does the same when its fetch
//! offset falls below the leader's log start (truncate fully, start at the leader's log
//! start). A follower's own offsets then start where its leader's log starts; what the
//! leader no longer holds is gone from the follower too, as it is from every reader.
//! The controller's store does not serve snapshots: its state machine needs every entry.
//!
//! Contract: one `LogStore` per group, owned by the shard that owns the partition, used by
//! that shard's driver and its `LogDurability` only (a cheap handle: both hold one).
//! [`LogStore::write_staged`] calls must not overlap (the durability worker runs one at a
//! time).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use bytes::Bytes;
use futures::future::join_all;
use raft::eraftpb::{Entry, EntryType, HardState, Snapshot};
use raft::storage::{GetEntriesContext, RaftState, Storage};
use raft::StorageError as RaftStorageError;
use ringfeed_storage::batch::control;
use ringfeed_storage::{
    CheckedBatch, Disk, EntryError, PartitionLog, ReadError, StorageError, StoredEntry,
};

use crate::driver::{Durability, GroupStore};
use crate::log_store_meta::{GroupMeta, RaftMetaStore};

/// Why the store could not do what the driver asked. Every one leaves the log as it was or
/// fenced (see the storage crate); none is retried by the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogStoreError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Entry(#[from] EntryError),
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A snapshot from a peer that is not what [`snapshot_data`] makes.
    #[error("a snapshot that cannot be installed: {0}")]
    BadSnapshot(String),
    /// Kafka's leader epoch is an i32; a Raft term past it cannot be stamped.
    #[error("Raft term {0} does not fit a Kafka leader epoch")]
    TermTooLarge(u64),
    /// Data entries are producer batches (or a `LOG_START` control batch, or a transaction
    /// marker); another control batch there would be read back as a Raft entry of another
    /// kind (a configuration change).
    #[error("a data entry at Raft index {0} holds a control batch")]
    ControlBatchInData(u64),
}

/// The batch that stores `entry` (before the log stamps its offset and term).
pub fn entry_batch(entry: &Entry) -> Result<Bytes, LogStoreError> {
    let data = &entry.data;
    Ok(match entry.entry_type() {
        EntryType::EntryNormal if data.is_empty() => control::batch(control::LEADER_CHANGE, &[]),
        EntryType::EntryNormal => {
            let batch = data.clone();
            // The control batches a data entry may be, each of which reads back as a data
            // entry too: a replicated `DeleteRecords` (`control::LOG_START`) and a
            // transaction's commit or abort marker (Kafka's control types 0 and 1).
            let is_control =
                ringfeed_storage::batch::BatchHeader::parse(&batch).is_some_and(|h| h.is_control());
            let data_control = matches!(
                control::record(&batch),
                Some((
                    control::LOG_START | control::ABORT_MARKER | control::COMMIT_MARKER,
                    _
                ))
            );
            if is_control && !data_control {
                return Err(LogStoreError::ControlBatchInData(entry.index));
            }
            batch
        }
        EntryType::EntryConfChange => control::batch(control::RAFT_CONF_CHANGE_V1, data),
        EntryType::EntryConfChangeV2 => control::batch(control::RAFT_CONF_CHANGE, data),
    })
}

/// The Raft entry a stored batch is (the inverse of [`entry_batch`]).
pub fn stored_entry(stored: &StoredEntry) -> Entry {
    let mut entry = Entry {
        term: u64::try_from(stored.term).expect("the log holds no negative term"),
        index: stored.index,
        ..Entry::default()
    };
    match control::record(&stored.batch) {
        Some((control::LEADER_CHANGE, value)) if value.is_empty() => {}
        Some((control::RAFT_CONF_CHANGE, value)) => {
            entry.set_entry_type(EntryType::EntryConfChangeV2);
            entry.data = value;
        }
        Some((control::RAFT_CONF_CHANGE_V1, value)) => {
            entry.set_entry_type(EntryType::EntryConfChange);
            entry.data = value;
        }
        _ => entry.data = stored.batch.clone(),
    }
    entry
}

/// A write staged for the log, in staging order.
#[derive(Debug, Clone)]
enum StagedWrite {
    /// Drop the entries from this index on (a conflict), before the appends after it.
    Truncate(u64),
    /// Append the batch of the entry at `index`, checked when it was staged.
    Append {
        index: u64,
        term: i32,
        batch: CheckedBatch,
    },
    /// Replace the whole log with one entry: a leader's first entry, as the leader stores
    /// it, at `index` (a snapshot; see the module docs), then raise the log start to the
    /// leader's (its `DeleteRecords`) once the log reaches it.
    Replace {
        index: u64,
        batch: Bytes,
        log_start_offset: i64,
    },
}

/// The version byte that starts a snapshot's data ([`snapshot_data`]).
const SNAPSHOT_DATA_VERSION: u8 = 1;

/// What a partition's snapshot carries ([`snapshot_data`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// The leader's log start offset: at or past the entry's base offset (`DeleteRecords`
    /// may have moved it into or past the entry).
    pub log_start_offset: i64,
    /// The leader's stored batch of the snapshot's entry (baseOffset and
    /// partitionLeaderEpoch stamped, as its log holds it).
    pub batch: Bytes,
}

/// A snapshot's data: the version byte, the leader's log start offset (i64, big-endian),
/// then the leader's stored batch of the snapshot's entry.
pub fn snapshot_data(log_start_offset: i64, stored_batch: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + stored_batch.len());
    data.push(SNAPSHOT_DATA_VERSION);
    data.extend_from_slice(&log_start_offset.to_be_bytes());
    data.extend_from_slice(stored_batch);
    data
}

/// The version byte and the log start offset before a snapshot's batch.
const SNAPSHOT_HEADER_BYTES: usize = 1 + 8;

/// What a snapshot carries, checked against its metadata: the batch's partitionLeaderEpoch
/// must be the snapshot's term, and the log start may not lie before the batch. The bytes
/// came from a peer; the log checks the batch itself (`PartitionLog::check_replacement`).
pub fn snapshot_entry(snapshot: &Snapshot) -> Result<SnapshotEntry, LogStoreError> {
    let metadata = snapshot.get_metadata();
    let data = &snapshot.data;
    if data.first() != Some(&SNAPSHOT_DATA_VERSION) || data.len() < SNAPSHOT_HEADER_BYTES {
        return Err(LogStoreError::BadSnapshot(format!(
            "unknown data version {:?} ({} bytes)",
            data.first(),
            data.len()
        )));
    }
    let log_start_offset = i64::from_be_bytes(data[1..9].try_into().expect("8 bytes"));
    let batch = Bytes::copy_from_slice(&data[SNAPSHOT_HEADER_BYTES..]);
    let Some(header) = ringfeed_storage::batch::BatchHeader::parse(&batch) else {
        return Err(LogStoreError::BadSnapshot("its data is not a batch".into()));
    };
    let epoch = ringfeed_storage::batch::partition_leader_epoch(&batch);
    if u64::try_from(epoch).ok() != Some(metadata.term) || metadata.index == 0 {
        return Err(LogStoreError::BadSnapshot(format!(
            "index {} term {} with a batch of epoch {epoch}",
            metadata.index, metadata.term
        )));
    }
    let base_offset = header.base_offset;
    if log_start_offset < base_offset {
        return Err(LogStoreError::BadSnapshot(format!(
            "log start {log_start_offset} before its entry's offset {base_offset}"
        )));
    }
    Ok(SnapshotEntry {
        log_start_offset,
        batch,
    })
}

/// Requests memory could not serve kept waiting for [`LogStore::fetch`]: about one per
/// lagging follower (raft-rs asks again for a follower at each of its heartbeat responses;
/// a request for the same first index replaces the earlier one). More are dropped, oldest
/// first: raft-rs asks again.
const WANTED_MAX: usize = 8;

/// A request raft-rs made that memory could not serve, waiting for [`LogStore::fetch`].
#[derive(Debug, Clone, Copy)]
struct Wanted {
    low: u64,
    high: u64,
    max_size: Option<u64>,
    context: GetEntriesContext,
}

struct StoreState {
    raft_state: RaftState,
    /// The index and term of the entry before the first one served: a snapshot's (a log
    /// whose start was compacted, or the batches appended before the log was replicated).
    snapshot_index: u64,
    snapshot_term: u64,
    /// The most recent entries, contiguous, ending at the last index staged (which the log
    /// reaches once the staged writes are written).
    recent: VecDeque<Entry>,
    recent_bytes: usize,
    recent_bytes_max: usize,
    /// This store's place in its shard's [`RecentBudget`], if it shares one.
    budget_share: Option<BudgetShare>,
    /// Entries below this may leave memory: applied ones.
    applied: u64,
    /// What [`LogStore::fetch`] read for the last request memory could not serve, until
    /// [`LogStore::release_fetched`].
    fetched: Vec<Entry>,
    /// Oldest first, at most [`WANTED_MAX`].
    wanted: VecDeque<Wanted>,
    /// Requests served from disk by [`LogStore::fetch`] (for metrics).
    fetches: u64,
    /// Whether this store sends and installs snapshots (see the module docs).
    serves_snapshots: bool,
    /// The entry a snapshot is to be made of, waiting for [`LogStore::fetch`] to read it.
    snapshot_wanted: Option<u64>,
    /// That entry, read, until the next snapshot is made of it (one batch at most).
    snapshot_entry: Option<StoredEntry>,
    /// Snapshots made here for a follower (for metrics).
    snapshots_made: u64,
    /// Replacements staged and not yet written: until then the log holds entries the
    /// snapshot replaced, and nothing past the snapshot is read from it.
    replaces_staged: u32,
    /// A snapshot's log start past what the log holds yet, raised once it is durable.
    log_start_pending: Option<i64>,
    staged: Vec<StagedWrite>,
    /// A hard state staged and not yet saved by the durability worker.
    staged_hard_state: Option<HardState>,
    /// Where this store queues its group for the durability worker when it stages
    /// something, once [`LogDurability::register`] has registered it.
    sync_queue: Option<(u64, SyncQueue)>,
    /// Queued and not yet taken by the worker: at most one place in the queue.
    queued_for_sync: bool,
}

impl StoreState {
    /// Something was staged: the next durability round must visit this store.
    fn queue_for_sync(&mut self) {
        if self.queued_for_sync {
            return;
        }
        if let Some((group_id, queue)) = &self.sync_queue {
            queue.borrow_mut().push(*group_id);
            self.queued_for_sync = true;
        }
    }
}

/// The groups of a shard whose stores staged writes or a hard state since the durability
/// worker last took them, each once.
type SyncQueue = Rc<RefCell<Vec<u64>>>;

/// raft-rs's [`Storage`] over one partition log, a cheap handle. See the module docs.
pub struct LogStore<D: Disk> {
    log: PartitionLog<D>,
    state: Rc<RefCell<StoreState>>,
}

impl<D: Disk> Clone for LogStore<D> {
    fn clone(&self) -> Self {
        LogStore {
            log: self.log.clone(),
            state: self.state.clone(),
        }
    }
}

/// How a [`LogStore`] starts.
#[derive(Debug, Clone, Default)]
pub struct LogStoreStart {
    /// The hard and conf state the group persisted (see `log_store_meta.rs`).
    pub raft_state: RaftState,
    /// The entry before the first one served (0, 0 for a log that starts at index 1).
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    /// Memory for recent entries beyond the unapplied ones.
    pub recent_bytes_max: usize,
    /// The shard-wide budget the store's applied entries share with its neighbours' (see
    /// [`RecentBudget`]); without one only `recent_bytes_max` bounds them.
    pub recent_budget: Option<RecentBudget>,
    /// Whether the group sends and installs snapshots (partitions do, the controller does
    /// not; see the module docs).
    pub serves_snapshots: bool,
}

impl<D: Disk> LogStore<D> {
    /// Opens the store over `log`, loading every entry after the persisted commit index into
    /// memory: raft-rs reads unapplied entries synchronously, and the driver starts with
    /// `Config::applied` = the persisted commit index.
    pub async fn open(log: PartitionLog<D>, start: LogStoreStart) -> Result<Self, LogStoreError> {
        let commit = start.raft_state.hard_state.commit;
        let first_unapplied = (commit + 1)
            .max(log.first_index())
            .max(start.snapshot_index + 1);
        let mut recent = VecDeque::new();
        let mut recent_bytes = 0;
        let mut low = first_unapplied;
        while low <= log.last_index() {
            let stored = log.read_entries(low, log.last_index() + 1, 1 << 20).await?;
            let Some(last) = stored.last() else { break };
            low = last.index + 1;
            for entry in stored.iter().map(stored_entry) {
                recent_bytes += entry.data.len();
                recent.push_back(entry);
            }
        }
        let state = StoreState {
            raft_state: start.raft_state,
            snapshot_index: start.snapshot_index,
            snapshot_term: start.snapshot_term,
            recent,
            recent_bytes,
            recent_bytes_max: start.recent_bytes_max,
            budget_share: start.recent_budget.as_ref().map(RecentBudget::join),
            applied: commit,
            fetched: Vec::new(),
            wanted: VecDeque::new(),
            fetches: 0,
            serves_snapshots: start.serves_snapshots,
            snapshot_wanted: None,
            snapshot_entry: None,
            snapshots_made: 0,
            replaces_staged: 0,
            log_start_pending: None,
            staged: Vec::new(),
            staged_hard_state: None,
            sync_queue: None,
            queued_for_sync: false,
        };
        Ok(LogStore {
            log,
            state: Rc::new(RefCell::new(state)),
        })
    }

    pub fn log(&self) -> &PartitionLog<D> {
        &self.log
    }

    /// Persists a `Ready`'s entries: stages them, then writes them ([`Self::write_staged`]).
    /// Written, not yet durable: [`Self::sync`] makes them durable.
    pub async fn append(&self, entries: &[Entry]) -> Result<(), LogStoreError> {
        self.stage(entries)?;
        self.write_staged().await
    }

    /// Stages a `Ready`'s entries: raft-rs reads them at once; a suffix they conflict with is
    /// dropped from memory now and from the log (durably, see `storage/src/truncation.rs`)
    /// when the staged writes are written. Refuses, staging nothing, an entry that cannot
    /// be stored (a term past a Kafka leader epoch, a data entry that is not a batch).
    pub fn stage(&self, entries: &[Entry]) -> Result<(), LogStoreError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut checked = Vec::with_capacity(entries.len());
        for entry in entries {
            let term =
                i32::try_from(entry.term).map_err(|_| LogStoreError::TermTooLarge(entry.term))?;
            // A leader's cleaner may have compacted an entry it sends (`cleaner.rs`).
            let batch = self
                .log
                .check_entry(entry_batch(entry)?)
                .map_err(EntryError::from)?;
            checked.push((term, batch));
        }
        let mut state = self.state.borrow_mut();
        let last_staged = self.last_staged(&state);
        if first.index <= last_staged {
            while state.recent.back().is_some_and(|e| e.index >= first.index) {
                let dropped = state.recent.pop_back().expect("checked");
                state.recent_bytes -= dropped.data.len();
            }
            state.fetched.clear();
            state.staged.push(StagedWrite::Truncate(first.index));
        }
        // Entries share their data (`Bytes`): keeping one is not a copy.
        for (entry, (term, batch)) in entries.iter().zip(checked) {
            state.recent_bytes += entry.data.len();
            state.recent.push_back(entry.clone());
            state.staged.push(StagedWrite::Append {
                index: entry.index,
                term,
                batch,
            });
        }
        state.queue_for_sync();
        Ok(())
    }

    /// Writes the staged entries to the log, in staging order.
    pub async fn write_staged(&self) -> Result<(), LogStoreError> {
        let staged = std::mem::take(&mut self.state.borrow_mut().staged);
        self.write(staged).await
    }

    /// Writes `writes`, taken from the staged ones in order, to the log.
    async fn write(&self, writes: Vec<StagedWrite>) -> Result<(), LogStoreError> {
        for write in writes {
            match write {
                StagedWrite::Truncate(index) => {
                    if index <= self.log.last_index() {
                        self.log.truncate_from_index(index).await?;
                    }
                }
                StagedWrite::Append { index, term, batch } => {
                    let outcome = self.log.append_as_leader(batch, term).await?;
                    // raft-rs hands entries in index order, right after the log's last.
                    assert_eq!(outcome.index, index, "entries are written in order");
                }
                StagedWrite::Replace {
                    index,
                    batch,
                    log_start_offset,
                } => {
                    let outcome = self.log.replace_with_entry(index, batch).await?;
                    assert_eq!(outcome.index, index, "the log holds the snapshot's entry");
                    let mut state = self.state.borrow_mut();
                    state.replaces_staged -= 1;
                    state.log_start_pending =
                        (log_start_offset > outcome.base_offset).then_some(log_start_offset);
                }
            }
        }
        evict(&mut self.state.borrow_mut());
        Ok(())
    }

    /// Waits until everything appended is durable; then the driver may tell raft-rs
    /// (`on_persist_ready`).
    pub async fn sync(&self) -> Result<(), LogStoreError> {
        let end = self.log.log_end_offset();
        // A store that staged only a hard state has nothing to wait for: no flusher woken.
        let all_durable = self.log.durable_offset() >= end && self.log.fenced_error().is_none();
        if !all_durable && end > self.log.log_start_offset() {
            self.log.wait_durable(end - 1).await?;
        }
        self.raise_pending_log_start().await
    }

    /// Raises the log start to a snapshot's (its leader's `DeleteRecords`) once the log holds
    /// everything below it durably: in the same round as the entries that reach it, so a
    /// reader never meets offsets the leader had deleted for longer than that round.
    async fn raise_pending_log_start(&self) -> Result<(), LogStoreError> {
        let pending = self.state.borrow().log_start_pending;
        if let Some(start) = pending.filter(|&start| start <= self.log.durable_offset()) {
            self.log.advance_log_start(start).await?;
            self.state.borrow_mut().log_start_pending = None;
        }
        Ok(())
    }

    /// Records the hard state raft-rs reported (persist it with `log_store_meta.rs` first).
    pub fn set_hard_state(&self, hard_state: HardState) {
        self.state.borrow_mut().raft_state.hard_state = hard_state;
    }

    /// The group's meta to save, if a hard state was staged since the last call.
    fn take_staged_meta(&self) -> Option<GroupMeta> {
        let mut state = self.state.borrow_mut();
        let hard_state = state.staged_hard_state.take()?;
        Some(GroupMeta {
            hard_state,
            conf_state: state.raft_state.conf_state.clone(),
            snapshot_index: state.snapshot_index,
            snapshot_term: state.snapshot_term,
        })
    }

    /// Records the configuration raft-rs applied.
    pub fn set_conf_state(&self, conf_state: raft::eraftpb::ConfState) {
        self.state.borrow_mut().raft_state.conf_state = conf_state;
    }

    /// Entries up to `index` are applied: they may leave memory.
    pub fn advance_applied(&self, index: u64) {
        let mut state = self.state.borrow_mut();
        state.applied = state.applied.max(index);
        evict(&mut state);
    }

    /// Reads the oldest request raft-rs made that memory could not serve; returns the
    /// context to pass to `RawNode::on_entries_fetched` (at once, before anything else
    /// touches the store: raft-rs's repeated request is served from what was read), or
    /// `None` when nothing was waiting.
    pub async fn fetch(&self) -> Result<Option<GetEntriesContext>, LogStoreError> {
        let snapshot_wanted = self.state.borrow_mut().snapshot_wanted.take();
        if let Some(index) = snapshot_wanted {
            // raft-rs asks for the snapshot again by itself (at the follower's next
            // heartbeat response): there is no context to hand back.
            let stored = self.log.read_entries(index, index + 1, 0).await?;
            let entry = stored.into_iter().next().filter(|e| e.index == index);
            self.state.borrow_mut().snapshot_entry = entry;
            return Ok(None);
        }
        let Some(wanted) = self.state.borrow_mut().wanted.pop_front() else {
            return Ok(None);
        };
        let max_bytes = wanted.max_size.map_or(usize::MAX, |max| max as usize);
        let stored = self
            .log
            .read_entries(wanted.low, wanted.high, max_bytes)
            .await?;
        let mut state = self.state.borrow_mut();
        state.fetched = stored.iter().map(stored_entry).collect();
        state.fetches += 1;
        Ok(Some(wanted.context))
    }

    /// Bytes of entry data held in memory (recent entries; what a fetch read is apart).
    pub fn recent_bytes(&self) -> usize {
        self.state.borrow().recent_bytes
    }

    /// Bytes of entry data the store holds now: recent entries and what the last fetch
    /// read, not yet released (for metrics).
    pub fn held_bytes(&self) -> usize {
        let state = self.state.borrow();
        state.recent_bytes + state.fetched.iter().map(|e| e.data.len()).sum::<usize>()
    }

    /// Whether a request memory could not serve waits for [`Self::fetch`].
    pub fn wants_fetch(&self) -> bool {
        let state = self.state.borrow();
        !state.wanted.is_empty() || state.snapshot_wanted.is_some()
    }

    /// How many snapshots this store made for a follower.
    pub fn snapshots_made(&self) -> u64 {
        self.state.borrow().snapshots_made
    }

    /// The last index staged: the last recent entry, else the snapshot's while a
    /// replacement waits (the log still holds what it replaces), else the log's last.
    fn last_staged(&self, state: &StoreState) -> u64 {
        match state.recent.back() {
            Some(entry) => entry.index,
            None if state.replaces_staged > 0 => state.snapshot_index,
            None => self.log.last_index(),
        }
    }

    /// The entry a snapshot is made of: the first the log holds whose partitionLeaderEpoch
    /// is its term, applied (so committed everywhere it matters).
    fn snapshot_point(&self, state: &StoreState) -> Option<u64> {
        if state.replaces_staged > 0 {
            return None;
        }
        let index = self.log.first_index().max(self.log.terms_from_index()?);
        (index <= state.applied && index <= self.log.last_index()).then_some(index)
    }

    /// Gives back the memory of what [`Self::fetch`] read, once raft-rs took it.
    pub fn release_fetched(&self) {
        self.state.borrow_mut().fetched = Vec::new();
    }

    /// How many requests raft-rs made were served from disk rather than memory.
    pub fn fetches(&self) -> u64 {
        self.state.borrow().fetches
    }
}

/// Memory for recent applied entries shared by the stores of one shard: each keeps at most
/// an equal share of `shard_bytes_max` (and never more than its own `recent_bytes_max`).
/// Without it a shard of a thousand partitions that each saw a megabyte pass kept a
/// gigabyte of entries no follower needed. Applied entries past the share are read from the
/// log again when a follower needs them (`LogStore::fetch`); unapplied entries stay in memory
/// whatever the budget (raft-rs reads them synchronously), bounded by the driver's limits on
/// proposals and inbound messages.
///
/// Owned by one shard, like its stores (a cheap handle).
#[derive(Debug, Clone)]
pub struct RecentBudget {
    inner: Rc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    shard_bytes_max: usize,
    stores: Cell<usize>,
}

impl RecentBudget {
    pub fn new(shard_bytes_max: usize) -> Self {
        RecentBudget {
            inner: Rc::new(BudgetInner {
                shard_bytes_max,
                stores: Cell::new(0),
            }),
        }
    }

    /// Each store's share now: the budget over the stores that hold a place in it.
    pub fn share(&self) -> usize {
        self.inner.shard_bytes_max / self.inner.stores.get().max(1)
    }

    /// The stores that share it.
    pub fn stores(&self) -> usize {
        self.inner.stores.get()
    }

    fn join(&self) -> BudgetShare {
        self.inner.stores.set(self.inner.stores.get() + 1);
        BudgetShare {
            budget: self.clone(),
        }
    }
}

/// A store's place in a [`RecentBudget`], given back when the store goes.
#[derive(Debug)]
struct BudgetShare {
    budget: RecentBudget,
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        let stores = &self.budget.inner.stores;
        stores.set(stores.get().checked_sub(1).expect("a share was taken"));
    }
}

/// Drops the oldest applied entries while memory is over the store's budget: its own, or
/// its share of its shard's if that is smaller.
fn evict(state: &mut StoreState) {
    let bytes_max = state
        .budget_share
        .as_ref()
        .map_or(state.recent_bytes_max, |share| {
            state.recent_bytes_max.min(share.budget.share())
        });
    while state.recent_bytes > bytes_max
        && state
            .recent
            .front()
            .is_some_and(|e| e.index <= state.applied)
    {
        let dropped = state.recent.pop_front().expect("checked");
        state.recent_bytes -= dropped.data.len();
    }
}

/// `entries[low..high]` of a contiguous run, if it holds `low` (as many as it has).
fn slice_of(run: &[Entry], low: u64, high: u64) -> Option<Vec<Entry>> {
    let first = run.first()?.index;
    if low < first || low > run.last()?.index {
        return None;
    }
    let start = (low - first) as usize;
    let end = ((high - first) as usize).min(run.len());
    Some(run[start..end].to_vec())
}

impl<D: Disk> Storage for LogStore<D> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(self.state.borrow().raft_state.clone())
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let first = self.first_index()?;
        if low < first {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let recent = state.recent.make_contiguous();
        let found = slice_of(recent, low, high).or_else(|| slice_of(&state.fetched, low, high));
        if let Some(mut entries) = found {
            raft::util::limit_size(&mut entries, max_size);
            return Ok(entries);
        }
        if !context.can_async() || state.replaces_staged > 0 {
            // Unapplied entries are always in memory; only a broken driver contract gets here
            // (or a read past a snapshot before its replacement is written: everything
            // staged after the snapshot is in memory).
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let wanted = Wanted {
            low,
            high,
            max_size,
            context,
        };
        if let Some(earlier) = state.wanted.iter_mut().find(|w| w.low == low) {
            *earlier = wanted;
        } else {
            if state.wanted.len() == WANTED_MAX {
                state.wanted.pop_front();
            }
            state.wanted.push_back(wanted);
        }
        Err(raft::Error::Store(
            RaftStorageError::LogTemporarilyUnavailable,
        ))
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let state = self.state.borrow();
        if index == state.snapshot_index {
            return Ok(state.snapshot_term);
        }
        if index < state.snapshot_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        // Memory first: it holds staged entries the log does not have yet, and after a
        // staged truncation the log still holds the entries they replace.
        if let Some(first_recent) = state.recent.front().map(|e| e.index) {
            if index >= first_recent {
                return match state.recent.get((index - first_recent) as usize) {
                    Some(entry) => Ok(entry.term),
                    None => Err(raft::Error::Store(RaftStorageError::Unavailable)),
                };
            }
        }
        if state.replaces_staged > 0 {
            // The log still holds what the snapshot replaced.
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        match self.log.term_at(index) {
            Some(term) => Ok(u64::try_from(term).expect("the log holds no negative term")),
            None if index < self.log.first_index() => {
                Err(raft::Error::Store(RaftStorageError::Compacted))
            }
            None => Err(raft::Error::Store(RaftStorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        let state = self.state.borrow();
        if state.replaces_staged > 0 {
            return Ok(state.snapshot_index + 1);
        }
        Ok(self.log.first_index().max(state.snapshot_index + 1))
    }

    fn last_index(&self) -> raft::Result<u64> {
        let state = self.state.borrow();
        Ok(self.last_staged(&state).max(state.snapshot_index))
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let unavailable = raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable);
        let mut state = self.state.borrow_mut();
        if !state.serves_snapshots {
            return Err(unavailable);
        }
        let Some(index) = self.snapshot_point(&state) else {
            return Err(unavailable);
        };
        match state.snapshot_entry.take() {
            Some(entry) if entry.index == index => {
                state.snapshots_made += 1;
                let mut snapshot = Snapshot {
                    data: snapshot_data(self.log.log_start_offset(), &entry.batch),
                    ..Snapshot::default()
                };
                let metadata = snapshot.mut_metadata();
                metadata.index = index;
                metadata.term = u64::try_from(entry.term).expect("the log holds no negative term");
                metadata.set_conf_state(state.raft_state.conf_state.clone());
                Ok(snapshot)
            }
            _ => {
                // Read it first ([`LogStore::fetch`]); raft-rs asks again.
                state.snapshot_wanted = Some(index);
                Err(unavailable)
            }
        }
    }
}

impl<D: Disk> GroupStore for LogStore<D> {
    fn wants_fetch(&self) -> bool {
        LogStore::wants_fetch(self)
    }

    fn advance_applied(&mut self, index: u64) {
        LogStore::advance_applied(self, index);
    }

    fn stage_snapshot(&mut self, snapshot: Snapshot) -> raft::Result<()> {
        let mut state = self.state.borrow_mut();
        if !state.serves_snapshots {
            return Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let metadata = snapshot.get_metadata();
        let entry = snapshot_entry(&snapshot)
            .and_then(|entry| {
                self.log
                    .check_replacement(metadata.index, &entry.batch)
                    .map_err(LogStoreError::from)?;
                Ok(entry)
            })
            .map_err(|e| raft::Error::Store(RaftStorageError::Other(e.to_string().into())))?;
        let state = &mut *state;
        state.recent.clear();
        state.recent_bytes = 0;
        state.fetched.clear();
        state.wanted.clear();
        state.snapshot_wanted = None;
        state.snapshot_entry = None;
        state.snapshot_index = metadata.index;
        state.snapshot_term = metadata.term;
        state.applied = state.applied.max(metadata.index);
        state.raft_state.conf_state = metadata.get_conf_state().clone();
        state.raft_state.hard_state.commit = state.raft_state.hard_state.commit.max(metadata.index);
        // The raft-meta record saves the snapshot point and configuration with the
        // replacement (raft-rs usually stages a hard state in the same Ready too).
        state.staged_hard_state = Some(state.raft_state.hard_state.clone());
        state.staged.push(StagedWrite::Replace {
            index: metadata.index,
            batch: entry.batch,
            log_start_offset: entry.log_start_offset,
        });
        state.replaces_staged += 1;
        state.queue_for_sync();
        Ok(())
    }

    fn stage_entries(&mut self, entries: &[Entry]) -> raft::Result<()> {
        self.stage(entries)
            .map_err(|e| raft::Error::Store(RaftStorageError::Other(e.to_string().into())))
    }

    fn stage_hard_state(&mut self, hard_state: &HardState) -> raft::Result<()> {
        let mut state = self.state.borrow_mut();
        state.raft_state.hard_state = hard_state.clone();
        state.staged_hard_state = Some(hard_state.clone());
        state.queue_for_sync();
        Ok(())
    }

    fn stage_conf_state(&mut self, conf_state: raft::eraftpb::ConfState) {
        let mut state = self.state.borrow_mut();
        state.raft_state.conf_state = conf_state;
        // The raft-meta record holds both states and is written when a hard state is
        // staged: staging the current one saves the new configuration with the next sync.
        if state.staged_hard_state.is_none() {
            state.staged_hard_state = Some(state.raft_state.hard_state.clone());
        }
        state.queue_for_sync();
    }
}

/// What the durability worker shares with the driver's calls.
struct DurabilityState<D: Disk> {
    stores: HashMap<u64, LogStore<D>>,
    /// The registered stores that staged something since a round last took them.
    queue: SyncQueue,
    meta: Option<RaftMetaStore<D>>,
    requested: u64,
    completed: u64,
    worker_running: bool,
    /// The first error: no later ticket completes (the shard's groups stop acknowledging).
    failed: Option<LogStoreError>,
    stats: DurabilityStats,
}

/// What the durability worker has done, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DurabilityStats {
    /// Rounds run (each completes every ticket requested before it started).
    pub rounds: u64,
    /// Stores written and synced, summed over the rounds: a round visits only the stores
    /// that staged something since the previous one.
    pub stores_synced: u64,
}

/// The shard's durability barrier over [`LogStore`]s (the driver's `Durability`): a ticket
/// completes once every write staged before it, in every registered store, is written and
/// fdatasync'd and the staged hard states are saved. One worker task at a time does the
/// work, round after round, so each store's writes stay in staging order; a round visits
/// only the stores that queued themselves by staging (a shard's thousand quiet groups cost
/// a busy one nothing), and waits for their fdatasyncs together rather than one by one.
/// Lives on the shard's executor.
pub struct LogDurability<D: Disk> {
    state: Rc<RefCell<DurabilityState<D>>>,
}

impl<D: Disk + 'static> LogDurability<D> {
    pub fn new(meta: RaftMetaStore<D>) -> Self {
        LogDurability {
            state: Rc::new(RefCell::new(DurabilityState {
                stores: HashMap::new(),
                queue: SyncQueue::default(),
                meta: Some(meta),
                requested: 0,
                completed: 0,
                worker_running: false,
                failed: None,
                stats: DurabilityStats::default(),
            })),
        }
    }

    /// Makes `store` (group `group_id`) part of every later sync that follows its staging.
    pub fn register(&self, group_id: u64, store: LogStore<D>) {
        let mut shared = self.state.borrow_mut();
        {
            let mut store_state = store.state.borrow_mut();
            assert!(
                store_state.sync_queue.is_none(),
                "a store is registered with one barrier, once"
            );
            store_state.sync_queue = Some((group_id, shared.queue.clone()));
            // Whatever it staged before it was registered goes with the next round.
            store_state.queued_for_sync = false;
            store_state.queue_for_sync();
        }
        let replaced = shared.stores.insert(group_id, store);
        assert!(replaced.is_none(), "group {group_id} registered twice");
    }

    /// Leaves `group_id`'s store out of later syncs; a sync under way finishes with it.
    /// Its staged writes that no sync took yet are dropped, as after a crash: the caller
    /// removed the group from the driver first, so raft never hears they were persisted.
    pub fn unregister(&self, group_id: u64) {
        let removed = self.state.borrow_mut().stores.remove(&group_id);
        if let Some(store) = removed {
            let mut store_state = store.state.borrow_mut();
            store_state.sync_queue = None;
            store_state.queued_for_sync = false;
        }
    }

    /// The error that stopped the barrier, if one did.
    pub fn failed(&self) -> Option<LogStoreError> {
        self.state.borrow().failed.clone()
    }

    pub fn stats(&self) -> DurabilityStats {
        self.state.borrow().stats
    }

    async fn work(state: Rc<RefCell<DurabilityState<D>>>) {
        loop {
            let (target, round, meta) = {
                let mut shared = state.borrow_mut();
                if shared.requested == shared.completed || shared.failed.is_some() {
                    shared.worker_running = false;
                    return;
                }
                let meta = shared.meta.take().expect("one worker at a time");
                let queued = std::mem::take(&mut *shared.queue.borrow_mut());
                let round = Self::take_round(&shared.stores, queued);
                shared.stats.rounds += 1;
                shared.stats.stores_synced += round.len() as u64;
                (shared.requested, round, meta)
            };
            let (meta, result) = Self::sync_round(round, meta).await;
            let mut shared = state.borrow_mut();
            shared.meta = Some(meta);
            match result {
                Ok(()) => shared.completed = target,
                Err(error) => shared.failed = Some(error),
            }
        }
    }

    /// The queued stores with what they staged, taken at one instant: a store staging
    /// again while the round runs queues itself for the next one.
    fn take_round(stores: &HashMap<u64, LogStore<D>>, queued: Vec<u64>) -> Vec<RoundStore<D>> {
        queued
            .into_iter()
            // An unregistered group's id may still be queued: its writes are dropped.
            .filter_map(|group_id| stores.get(&group_id).map(|store| (group_id, store)))
            .filter_map(|(group_id, store)| {
                let mut store_state = store.state.borrow_mut();
                // Not queued: taken already in this round. A group unregistered and
                // registered again (a new store) before a round has its id queued twice.
                if !store_state.queued_for_sync {
                    return None;
                }
                store_state.queued_for_sync = false;
                Some(RoundStore {
                    group_id,
                    store: store.clone(),
                    writes: std::mem::take(&mut store_state.staged),
                    meta: None,
                })
            })
            .collect()
    }

    async fn sync_round(
        mut round: Vec<RoundStore<D>>,
        mut meta: RaftMetaStore<D>,
    ) -> (RaftMetaStore<D>, Result<(), LogStoreError>) {
        // The hard states go with the entries staged before them: taken now, saved once
        // those entries are durable.
        for taken in &mut round {
            taken.meta = taken.store.take_staged_meta();
        }
        let synced = join_all(round.iter_mut().map(|taken| async {
            let writes = std::mem::take(&mut taken.writes);
            taken.store.write(writes).await?;
            taken.store.sync().await
        }))
        .await;
        if let Some(error) = synced.into_iter().find_map(Result::err) {
            return (meta, Err(error));
        }
        let changed: Vec<(u64, GroupMeta)> = round
            .into_iter()
            .filter_map(|taken| taken.meta.map(|m| (taken.group_id, m)))
            .collect();
        let saved = meta.save(&changed).await.map_err(LogStoreError::from);
        (meta, saved)
    }
}

/// One store's share of a durability round.
struct RoundStore<D: Disk> {
    group_id: u64,
    store: LogStore<D>,
    writes: Vec<StagedWrite>,
    meta: Option<GroupMeta>,
}

impl<D: Disk + 'static> Durability for LogDurability<D> {
    fn start_sync(&mut self) -> u64 {
        let (ticket, start_worker) = {
            let mut shared = self.state.borrow_mut();
            shared.requested += 1;
            let start_worker = !shared.worker_running;
            shared.worker_running = true;
            (shared.requested, start_worker)
        };
        if start_worker {
            glommio::spawn_local(Self::work(self.state.clone())).detach();
        }
        ticket
    }

    fn durable_ticket(&mut self) -> u64 {
        self.state.borrow().completed
    }
}
