//! [`PartitionLog`]: the log of one partition, the public face of the crate.
//!
//! Ownership: a log lives on one glommio executor (one shard) and is never shared across
//! threads; `PartitionLog` is a cheap `Rc` handle, cloned into the tasks of that shard.
//! Concurrency contract: any number of tasks may call any method at once. Appends are
//! serialized by an executor-local gate and get their offsets in the order they pass it.
//! That is *not* always the order they reached it: glommio's semaphore lets a newcomer take
//! a gate just released before the waiter it woke runs. A caller that needs an order among
//! its appends must not have two in flight at once (the broker sequences each partition's
//! produce appends itself, see `broker/src/partition.rs`). Reads, waits and lookups never
//! block appends. A background flusher task owns all
//! data writes and fdatasyncs (see `flusher.rs`).
//!
//! Offsets: `log_start_offset` ≤ `high_watermark` ≤ `log_end_offset`. The high watermark is
//! the end of what completed writes put in the file (it survives a process crash); the
//! durable offset is the end of what a completed fdatasync covered (it survives a power cut).

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use glommio::sync::Semaphore;

use crate::batch::{self, BatchHeader, BATCH_HEADER_BYTES};
use crate::cache::CachedBatch;
pub use crate::clock::Clock;
use crate::config::LogConfig;
use crate::error::{AppendError, ReadError, StorageError, OFFSET_MAX};
use crate::index::{IndexedBatch, SegmentIndex};
use crate::io::{Disk, DiskFile, DmaDisk};
use crate::recovery::{self, RecoveryReport};
use crate::segment::{Segment, WindowReader};
use crate::signal::Signal;
pub use crate::state::{FdatasyncObserver, LogStats, PartitionLog};
use crate::state::{Inner, State};

/// Where appended batches landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub base_offset: i64,
    pub last_offset: i64,
}

/// How an append sets a batch's partitionLeaderEpoch, and so its Raft term
/// (`FORMAT.md` § Raft index and term).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stamp {
    /// A plain append to a log that has never been replicated: the producer's field is kept,
    /// the term is 0.
    Plain,
    /// A Raft leader's entry: partitionLeaderEpoch is set to the term.
    Leader(i32),
    /// A follower's copy of an entry: stored unchanged; its field is its term.
    Replicated,
}

/// Where an append put a batch, as [`PartitionLog::append_validated`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placed {
    pub outcome: AppendOutcome,
    pub index: u64,
}

/// A batch that passed [`PartitionLog::check`]; only that function makes one.
#[derive(Debug, Clone)]
pub struct CheckedBatch {
    batch: Bytes,
    header: BatchHeader,
}

impl CheckedBatch {
    /// The batch's header, as the check parsed it.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    pub(crate) fn into_parts(self) -> (Bytes, BatchHeader) {
        (self.batch, self.header)
    }
}

impl PartitionLog<DmaDisk> {
    /// Opens (creating if needed) the partition in `dir` on the real disk, recovering it.
    pub async fn open(
        dir: &Path,
        config: impl Into<Rc<LogConfig>>,
    ) -> Result<(Self, RecoveryReport), StorageError> {
        Self::open_on(DmaDisk, dir, config, Clock::System).await
    }
}

impl<D: Disk> PartitionLog<D> {
    /// Opens the partition in `dir` on `disk`. Recovery runs first (see `recovery.rs`); an
    /// error means the log is damaged in a way that must not be cut silently.
    pub async fn open_on(
        disk: D,
        dir: &Path,
        config: impl Into<Rc<LogConfig>>,
        clock: Clock,
    ) -> Result<(Self, RecoveryReport), StorageError> {
        // glommio opens directories relative to no fd: a relative path fails with EBADF.
        let dir = &std::path::absolute(dir)
            .map_err(|e| StorageError::io("resolving the partition directory", e))?;
        let (state, report) = recovery::recover(&disk, dir, config.into(), &clock).await?;
        let flusher_wake = Rc::new(Signal::default());
        let opened_at = clock.now();
        let inner = Rc::new(Inner {
            disk,
            dir: dir.clone(),
            clock,
            state: RefCell::new(state),
            append_gate: Semaphore::new(1),
            checkpoint_gate: Semaphore::new(1),
            segments_gate: Semaphore::new(1),
            cleaner_state: RefCell::new(None),
            stopping: Cell::new(false),
            flusher_wake,
            flusher_running: Cell::new(false),
            progress: Signal::default(),
            fdatasync_observer: RefCell::new(None),
            in_use: Cell::new(0),
            used: Cell::new(false),
            idle_since: Cell::new(opened_at),
        });
        Ok((PartitionLog { inner }, report))
    }

    /// The clock the log was opened with; a shard's services share it, so a wait on a log
    /// (Fetch's `max_wait_ms`) sleeps on the same time as the log's own timers.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The disk the log lives on, for files kept beside it (the broker's producer-state
    /// snapshot), so they share the log's crash behaviour.
    pub fn disk(&self) -> &D {
        &self.inner.disk
    }

    pub(crate) fn state(&self) -> std::cell::Ref<'_, State<D::File>> {
        self.inner.state.borrow()
    }

    pub(crate) fn state_mut(&self) -> std::cell::RefMut<'_, State<D::File>> {
        self.inner.state.borrow_mut()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.state().log_start_offset
    }

    /// The end of what consumers may read: written to the file, so it survives a crash of
    /// this process.
    pub fn high_watermark(&self) -> i64 {
        self.state().written_offset
    }

    pub fn log_end_offset(&self) -> i64 {
        self.state().next_offset
    }

    /// The end of what a completed fdatasync covered.
    pub fn durable_offset(&self) -> i64 {
        self.state().durable_offset
    }

    /// Whether the log was closed or removed (it accepts and wakes nothing more).
    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// The error that fenced this log, if one did.
    pub fn fenced_error(&self) -> Option<StorageError> {
        self.state().fenced.clone()
    }

    /// Bytes of batches in all segments.
    pub fn size_bytes(&self) -> u64 {
        let state = self.state();
        state.sealed.values().map(Segment::bytes).sum::<u64>() + state.active_appended_bytes()
    }

    pub fn stats(&self) -> LogStats {
        self.state().stats
    }

    /// Whether a flusher task exists now: one runs while the log has work and for a while
    /// after, none once it has been idle (so idle partitions cost no task).
    pub fn has_flusher_task(&self) -> bool {
        self.inner.flusher_running.get()
    }

    /// Makes the log's tail cache one of `shard`'s, under the budget they share (see
    /// `cache.rs`). What the cache held is dropped.
    pub fn share_tail_cache(&self, shard: &crate::ShardTailCache) {
        self.state_mut().cache.share(shard);
    }

    /// Reports the latency of each fdatasync the flusher completes from now on (for
    /// metrics). Replaces any previous observer.
    pub fn observe_fdatasync_latency(&self, observer: FdatasyncObserver) {
        *self.inner.fdatasync_observer.borrow_mut() = Some(observer);
    }

    pub fn config(&self) -> LogConfig {
        LogConfig::clone(&self.state().config)
    }

    /// Applies new settings; they govern the next append, roll and retention pass.
    /// A caller with many logs under one config passes them one `Rc` (see `State::config`).
    pub fn set_config(&self, config: impl Into<Rc<LogConfig>>) {
        let config = config.into();
        let mut state = self.state_mut();
        state.cache.set_bytes_max(config.tail_cache_bytes_max);
        state.config = config;
        drop(state);
        crate::flusher::wake(&self.inner);
    }

    /// Validates one Kafka v2 batch, assigns its offsets and appends it. The batch is
    /// visible to readers once written (see [`Self::wait_written`]) and durable once
    /// fdatasync'd (see [`Self::wait_durable`]). On error nothing was appended.
    pub async fn append(&self, batch: Bytes) -> Result<AppendOutcome, AppendError> {
        let checked = self.check(batch)?;
        self.append_checked(checked).await
    }

    /// Validates one batch as [`Self::append`] would, without appending it, so a caller with
    /// several batches can refuse them all before appending any (Kafka rejects a produce
    /// request's batches for a partition together).
    pub fn check(&self, batch: Bytes) -> Result<CheckedBatch, AppendError> {
        let state = self.state();
        state.check_usable()?;
        let header = batch::validate(&batch, state.config.batch_bytes_max)?;
        Ok(CheckedBatch { batch, header })
    }

    /// Checks the batch of a Raft entry before it is staged: a producer's batch a leader
    /// already held to [`Self::check`], or an entry copied from a leader whose cleaner
    /// compacted it (fewer records than offsets, or none: `batch::validate_compacted`).
    pub fn check_entry(&self, batch: Bytes) -> Result<CheckedBatch, AppendError> {
        let state = self.state();
        state.check_usable()?;
        let header = batch::validate_compacted(&batch, state.config.batch_bytes_max)?;
        Ok(CheckedBatch { batch, header })
    }

    /// Appends a batch [`Self::check`] accepted, like [`Self::append`] without checking it
    /// again.
    pub async fn append_checked(
        &self,
        checked: CheckedBatch,
    ) -> Result<AppendOutcome, AppendError> {
        let CheckedBatch { batch, header } = checked;
        let _permit = self
            .inner
            .append_gate
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        let _awake = self.awake_holding_append_gate().await?;
        self.make_room(batch.len()).await?;
        let placed = self.append_validated(&batch, &header, Stamp::Plain, 0)?;
        crate::flusher::wake(&self.inner);
        Ok(placed.outcome)
    }

    /// The synchronous part of an append: offsets, buffer copy, index and cache. `term` is
    /// the batch's term, already checked against the log by the caller (see `entries.rs`).
    pub(crate) fn append_validated(
        &self,
        batch: &[u8],
        header: &BatchHeader,
        stamp: Stamp,
        term: i32,
    ) -> Result<Placed, StorageError> {
        let mut guard = self.state_mut();
        guard.check_usable()?;
        let state = &mut *guard;
        let base_offset = state.next_offset;
        // The entry paths check these against the state they hold the gate over; a plain
        // append to a replicated log would give a Raft entry an unstamped term.
        match stamp {
            Stamp::Plain => assert!(
                state.terms_from_index == crate::meta::TERMS_NEVER && term == 0,
                "a plain append to a replicated log"
            ),
            Stamp::Leader(stamped) => assert_eq!(stamped, term, "a leader stamps its term"),
            Stamp::Replicated => assert_eq!(
                header.base_offset, base_offset,
                "a replicated entry lands at its leader's offset"
            ),
        }
        assert!(
            term >= state.last_term,
            "term {term} appended after term {}",
            state.last_term
        );
        // Only `check` makes a CheckedBatch for a plain append, after `batch::validate`
        // made sure of both; a Raft entry passed `batch::validate_compacted` (`check_entry`,
        // `append_replicated`): a leader's cleaner may have compacted it, so it may hold
        // fewer records than offsets.
        assert!(
            header.record_count >= 0
                && header.last_offset_delta >= 0
                && i64::from(header.record_count) <= i64::from(header.last_offset_delta) + 1
                && (stamp != Stamp::Plain
                    || i64::from(header.last_offset_delta) == i64::from(header.record_count) - 1),
            "an unchecked batch reached the append: {header:?}"
        );
        let records = i64::from(header.last_offset_delta) + 1;
        if base_offset > OFFSET_MAX - records {
            return Err(StorageError::OffsetsExhausted {
                next_offset: base_offset,
                records,
            });
        }
        let next_offset = base_offset + records;
        // The caller holds the append gate and keeps the log awake (`dormancy.rs`).
        let appender = state
            .appender
            .as_deref_mut()
            .expect("the log is awake while it appends");
        let position = appender.appended_bytes();
        // Straight into the DMA buffers, baseOffset rewritten on the way (it lies outside
        // the CRC): one copy of the batch, not two.
        let file = &**state.active.file();
        appender.append(file, &base_offset.to_be_bytes());
        match stamp {
            Stamp::Leader(term) => {
                let epoch_at = batch::PARTITION_LEADER_EPOCH_OFFSET;
                appender.append(file, &batch[batch::BATCH_LENGTH_OFFSET..epoch_at]);
                appender.append(file, &term.to_be_bytes());
                appender.append(file, &batch[epoch_at + 4..]);
            }
            Stamp::Plain | Stamp::Replicated => {
                appender.append(file, &batch[batch::BASE_OFFSET_OFFSET + 8..]);
            }
        }
        let index = state.next_index;
        if let SegmentIndex::Building(building) = &mut state.active.index {
            building.add_batch(IndexedBatch {
                base_offset,
                next_offset,
                max_timestamp: header.max_timestamp,
                term,
                position,
                bytes: batch.len(),
            });
        }
        // The clock is read once per segment, not per batch.
        if state.active_first_append_ms.is_none() {
            state.active_first_append_ms = Some(self.inner.clock.now_ms());
        }
        state.next_offset = next_offset;
        state.next_index = index + 1;
        state.last_term = term;
        state.assert_offsets_ordered();
        state.stats.batches_appended += 1;
        state.stats.bytes_appended += batch.len() as u64;
        if state.cache.admits(batch.len()) {
            let bytes = match stamp {
                Stamp::Leader(term) => batch::stamped(batch, base_offset, term),
                Stamp::Plain | Stamp::Replicated => batch::with_base_offset(batch, base_offset),
            };
            state.cache.push(CachedBatch {
                base_offset,
                next_offset,
                bytes,
            });
        } else {
            state.cache.clear();
        }
        Ok(Placed {
            outcome: AppendOutcome {
                base_offset,
                last_offset: next_offset - 1,
            },
            index,
        })
    }

    /// Waits until `offset` is written to the file (survives a process crash): acks=1.
    pub async fn wait_written(&self, offset: i64) -> Result<(), StorageError> {
        loop {
            let progress = self.inner.progress.wait();
            {
                let state = self.state();
                if state.written_offset > offset {
                    return Ok(());
                }
                state.check_usable()?;
            }
            progress.await;
        }
    }

    /// Waits until `offset` is covered by a completed fdatasync: acks=all. One fdatasync
    /// covers every append made before it started (group commit). If a write or fdatasync
    /// fails first, this returns the error, and so does every later call: nothing is
    /// retried and then acknowledged.
    pub async fn wait_durable(&self, offset: i64) -> Result<(), StorageError> {
        {
            let mut state = self.state_mut();
            state.durable_wanted = state.durable_wanted.max(offset + 1);
        }
        crate::flusher::wake(&self.inner);
        loop {
            let progress = self.inner.progress.wait();
            {
                let state = self.state();
                if state.durable_offset > offset {
                    // Released only below the durable offset, which never passes the high
                    // watermark: an acks=all answer never covers unwritten data.
                    state.assert_offsets_ordered();
                    return Ok(());
                }
                // Closed: close() made everything durable before shutting, so a wait still
                // unsatisfied here is for a log that was removed (DeleteTopics).
                state.check_usable()?;
            }
            progress.await;
        }
    }

    /// Completes when the high watermark passes `offset`, or the log is fenced or closed.
    /// Cancel-safe: race it with a timer for Fetch's `max_wait_ms`.
    pub async fn wait_for_data(&self, offset: i64) {
        loop {
            let progress = self.inner.progress.wait();
            {
                let state = self.state();
                if state.written_offset > offset || state.fenced.is_some() || state.closed {
                    return;
                }
            }
            progress.await;
        }
    }

    /// Completes at the log's next progress (a write or fdatasync completing, a fence, a
    /// close), or at once when it is fenced or closed: for waiters whose condition is more
    /// than the high watermark (a `read_committed` fetch waits for the last stable offset).
    /// Cancel-safe.
    pub async fn wait_for_progress(&self) {
        let progress = self.inner.progress.wait();
        {
            let state = self.state();
            if state.fenced.is_some() || state.closed {
                return;
            }
        }
        progress.await;
    }

    /// Whole batches, as stored, from the one containing `offset` up to the high watermark,
    /// until one more would pass `max_bytes` (the first is returned whatever its size). An
    /// empty result at the high watermark.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<Vec<Bytes>, ReadError> {
        if let Some(answer) = self.read_from_memory(offset, max_bytes) {
            return answer;
        }
        // A disk read: a dormant log wakes first (`dormancy.rs`), and its state may have
        // moved meanwhile, so the memory is asked again.
        let _awake = self.awake().await?;
        if let Some(answer) = self.read_from_memory(offset, max_bytes) {
            return answer;
        }
        let (file, plan) = {
            let state = self.state();
            let segment = state.segment_for(offset);
            let plan = DiskRead {
                segment_base_offset: segment.base_offset,
                position: segment
                    .index
                    .position_for_offset(segment.base_offset, offset),
                end: state.segment_end_bytes(segment),
                offset,
                max_bytes,
                visible_end: state.written_offset,
            };
            (segment.file().clone(), plan)
        };
        read_batches(&*file, plan).await
    }

    /// What [`Self::read`] answers without the disk: an offset out of range, nothing at the
    /// high watermark, or batches from the tail cache. `None`: the disk must be read.
    fn read_from_memory(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Option<Result<Vec<Bytes>, ReadError>> {
        let state = self.state();
        if offset < state.log_start_offset || offset > state.next_offset {
            return Some(Err(ReadError::OffsetOutOfRange {
                offset,
                log_start_offset: state.log_start_offset,
                log_end_offset: state.next_offset,
            }));
        }
        if offset >= state.written_offset {
            return Some(Ok(Vec::new()));
        }
        let batches = state.cache.read(offset, max_bytes, state.written_offset)?;
        // Served from memory the log holds only while awake: a use of it.
        self.inner.used.set(true);
        Some(Ok(batches))
    }

    /// The largest record timestamp from the log start on and the offset of the first record
    /// carrying it (Kafka's max-timestamp offset lookup); `None` for an empty log. Compressed
    /// batches are not decoded: there the batch's base offset stands for the record.
    pub async fn max_timestamp(&self) -> Result<Option<(i64, i64)>, StorageError> {
        let _awake = self.awake().await?;
        let (indexed_max, log_start) = {
            let state = self.state();
            let log_start = state.log_start_offset;
            let max = state
                .segments()
                .filter(|s| s.next_offset() > log_start)
                .map(|s| s.index.max_timestamp())
                .max();
            (max, log_start)
        };
        let Some(max_timestamp_ms) = indexed_max.filter(|&max| max != i64::MIN) else {
            return Ok(None);
        };
        if let Some((offset, ts)) = self.offset_for_timestamp(max_timestamp_ms).await? {
            return Ok(Some((ts, offset)));
        }
        // The indexes' largest timestamp belongs only to records DeleteRecords left below the
        // log start, inside the segment it cut into: read what remains of that segment.
        let Some(remaining_max) = self.largest_timestamp_from(log_start).await? else {
            return Ok(None);
        };
        Ok(self
            .offset_for_timestamp(remaining_max)
            .await?
            .map(|(offset, ts)| (ts, offset)))
    }

    /// The largest record timestamp at or after `log_start`: the indexes answer for whole
    /// segments, the segment holding `log_start` is read from there.
    async fn largest_timestamp_from(&self, log_start: i64) -> Result<Option<i64>, StorageError> {
        let (later_max, cut) = {
            let state = self.state();
            let later_max = state
                .segments()
                .filter(|s| s.base_offset >= log_start)
                .map(|s| s.index.max_timestamp())
                .max();
            let cut = state
                .segments()
                .find(|s| s.base_offset < log_start && s.next_offset() > log_start)
                .map(|s| {
                    (
                        s.file().clone(),
                        s.index.position_for_offset(s.base_offset, log_start),
                        state.segment_end_bytes(s),
                    )
                });
            (later_max, cut)
        };
        let cut_max = match cut {
            Some((file, position, end)) => largest_timestamp_in(&*file, position, end, log_start)
                .await
                .map_err(|e| StorageError::io("read", e))?,
            None => None,
        };
        Ok(later_max.max(cut_max).filter(|&max| max != i64::MIN))
    }

    /// The first record at or after the log start whose timestamp is at least
    /// `timestamp_ms`: its offset and timestamp (for `ListOffsets`). In compressed batches
    /// records are not decoded: the batch's base offset (or the log start inside it) and
    /// maxTimestamp are returned, which never skips a match.
    pub async fn offset_for_timestamp(
        &self,
        timestamp_ms: i64,
    ) -> Result<Option<(i64, i64)>, StorageError> {
        let _awake = self.awake().await?;
        let mut after_base = None;
        // The first segment whose largest timestamp reaches `timestamp_ms` holds the answer,
        // unless every record there that reaches it lies below the log start.
        while let Some(search) = self.time_search(timestamp_ms, after_base) {
            let found = find_by_timestamp(
                &*search.file,
                search.position,
                search.end,
                timestamp_ms,
                search.log_start,
            )
            .await
            .map_err(|e| StorageError::io("read", e))?;
            if found.is_some() {
                return Ok(found);
            }
            after_base = Some(search.base_offset);
        }
        Ok(None)
    }

    /// Where to look for `timestamp_ms`: the first segment after `after_base` with records
    /// at or after the log start whose largest timestamp reaches it, scanned from the later
    /// of the two index positions that cannot be past the answer (the time index's, and the
    /// offset index's for the log start).
    fn time_search(
        &self,
        timestamp_ms: i64,
        after_base: Option<i64>,
    ) -> Option<TimeSearch<D::File>> {
        let state = self.state();
        let log_start = state.log_start_offset;
        let segment = state
            .segments()
            .filter(|s| after_base.is_none_or(|after| s.base_offset > after))
            .filter(|s| s.next_offset() > log_start)
            .find(|s| s.index.max_timestamp() >= timestamp_ms)?;
        let position = segment.index.position_for_timestamp(timestamp_ms).max(
            segment
                .index
                .position_for_offset(segment.base_offset, log_start),
        );
        Some(TimeSearch {
            file: segment.file().clone(),
            base_offset: segment.base_offset,
            position,
            end: state.segment_end_bytes(segment),
            log_start,
        })
    }
}

/// One segment's part of a time lookup (see [`PartitionLog::time_search`]).
struct TimeSearch<F> {
    file: Rc<F>,
    base_offset: i64,
    position: u64,
    end: u64,
    log_start: i64,
}

/// Where a disk read starts and what it may return.
struct DiskRead {
    segment_base_offset: i64,
    position: u64,
    end: u64,
    offset: i64,
    max_bytes: usize,
    visible_end: i64,
}

/// Reads whole batches from a segment file starting at `position` (at or before the batch
/// holding `offset`), skipping batches that end before `offset`. Every batch read from disk
/// is checked (header and CRC32C) before it is served: the cache holds only batches checked
/// at append, but bytes on disk can rot, and a client should get an error, not bad data. A
/// damaged first batch is an error; damage after good batches ends the read before it.
async fn read_batches<F: DiskFile>(file: &F, plan: DiskRead) -> Result<Vec<Bytes>, ReadError> {
    let io = |e| ReadError::Storage(StorageError::io("read", e));
    let mut reader = WindowReader::new(file, plan.end, plan.max_bytes.clamp(64 << 10, 8 << 20));
    let (mut batches, mut total, mut position) = (Vec::new(), 0, plan.position);
    let mut expected_base = None;
    while let Some(header_bytes) = reader.get(position, BATCH_HEADER_BYTES).await.map_err(io)? {
        let header = BatchHeader::parse(&header_bytes).expect("61 bytes");
        let size = header.total_bytes();
        if header.base_offset >= plan.visible_end
            || (!batches.is_empty() && total + size > plan.max_bytes)
        {
            break;
        }
        let bytes = reader.get(position, size).await.map_err(io)?;
        let bytes = match check_stored(bytes, &header, expected_base, &plan) {
            Ok(bytes) => bytes,
            // Serve what is good; the next read starts at the damage and reports it.
            Err(_) if !batches.is_empty() => break,
            Err(reason) => {
                tracing::error!(
                    segment = plan.segment_base_offset,
                    position,
                    offset = plan.offset,
                    reason,
                    "stored batch failed its checks; not serving it"
                );
                return Err(ReadError::Corrupt {
                    offset: plan.offset,
                    segment_base_offset: plan.segment_base_offset,
                    position,
                    reason,
                });
            }
        };
        expected_base = Some(header.last_offset().saturating_add(1));
        if header.last_offset() >= plan.offset {
            batches.push(bytes);
            total += size;
        }
        position += size as u64;
    }
    if batches.is_empty() {
        // `offset` is below the visible end, so some batch must hold it: an index that points
        // past the data (or data that ends early) is damage, and an empty answer would have
        // the consumer ask again forever.
        return Err(ReadError::Corrupt {
            offset: plan.offset,
            segment_base_offset: plan.segment_base_offset,
            position,
            reason: format!(
                "no batch holds offset {} up to byte {} of the segment",
                plan.offset, plan.end
            ),
        });
    }
    Ok(batches)
}

/// A stored batch as read from disk, if it may be served: whole, CRC32C intact, and at the
/// offsets expected where it lies, i.e. right after the batch before it, or for the first
/// batch of a read (where the index pointed) starting at or before the offset asked for, and
/// ending below the visible end (the log only makes whole batches visible). baseOffset lies
/// outside the CRC, so only this catches a batch whose offset field rotted; and a trusted
/// index and the data it indexes can disagree.
fn check_stored(
    bytes: Option<Bytes>,
    header: &BatchHeader,
    expected_base: Option<i64>,
    plan: &DiskRead,
) -> Result<Bytes, String> {
    let offset = plan.offset;
    let Some(bytes) = bytes.filter(|b| batch::is_intact(b)) else {
        return Err(format!(
            "batch header claims offset {} and {} bytes, and fails its CRC32C or header check",
            header.base_offset,
            header.total_bytes()
        ));
    };
    let in_place = match expected_base {
        Some(expected) => header.base_offset == expected,
        None => header.base_offset <= offset,
    };
    if !in_place {
        return Err(format!(
            "batch claims offset {} where offset {} was expected",
            header.base_offset,
            expected_base.unwrap_or(offset)
        ));
    }
    if header.last_offset() >= plan.visible_end {
        return Err(format!(
            "batch claims offsets {}..={} past the log's end at {}",
            header.base_offset,
            header.last_offset(),
            plan.visible_end
        ));
    }
    Ok(bytes)
}

/// Scans batches from `position` for the first record at or after offset `min_offset` whose
/// timestamp reaches `timestamp_ms` (Kafka's rule: the record, not its batch). A batch whose
/// maxTimestamp is below it is skipped unread.
async fn find_by_timestamp<F: DiskFile>(
    file: &F,
    mut position: u64,
    end: u64,
    timestamp_ms: i64,
    min_offset: i64,
) -> std::io::Result<Option<(i64, i64)>> {
    let mut reader = WindowReader::new(file, end, 256 << 10);
    while let Some(header_bytes) = reader.get(position, BATCH_HEADER_BYTES).await? {
        let header = BatchHeader::parse(&header_bytes).expect("61 bytes");
        if header.last_offset() >= min_offset && header.max_timestamp >= timestamp_ms {
            let Some(bytes) = reader.get(position, header.total_bytes()).await? else {
                break;
            };
            let found = match batch::record_timestamps(&bytes) {
                Some(records) => records
                    .map(|(delta, ts)| (header.base_offset.saturating_add(i64::from(delta)), ts))
                    .find(|&(offset, ts)| offset >= min_offset && ts >= timestamp_ms),
                None => Some((header.base_offset.max(min_offset), header.max_timestamp)),
            };
            if found.is_some() {
                return Ok(found);
            }
        }
        position += header.total_bytes() as u64;
    }
    Ok(None)
}

/// The largest record timestamp at or after offset `min_offset` among the batches from
/// `position`; compressed batches count with their maxTimestamp.
async fn largest_timestamp_in<F: DiskFile>(
    file: &F,
    mut position: u64,
    end: u64,
    min_offset: i64,
) -> std::io::Result<Option<i64>> {
    let mut reader = WindowReader::new(file, end, 256 << 10);
    let mut largest = None;
    while let Some(header_bytes) = reader.get(position, BATCH_HEADER_BYTES).await? {
        let header = BatchHeader::parse(&header_bytes).expect("61 bytes");
        if header.last_offset() >= min_offset {
            let Some(bytes) = reader.get(position, header.total_bytes()).await? else {
                break;
            };
            let batch_largest = match batch::record_timestamps(&bytes) {
                Some(records) => records
                    .filter(|&(delta, _)| {
                        header.base_offset.saturating_add(i64::from(delta)) >= min_offset
                    })
                    .map(|(_, ts)| ts)
                    .max(),
                None => Some(header.max_timestamp),
            };
            largest = largest.max(batch_largest);
        }
        position += header.total_bytes() as u64;
    }
    Ok(largest)
}
