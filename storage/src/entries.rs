//! The partition log as a Raft log (`storage/FORMAT.md` § Raft index and term).
//!
//! Every batch is one Raft entry; its Raft index is its ordinal in the log (the first batch
//! after the log's start has the first segment's base index) and its term is its
//! partitionLeaderEpoch, for batches from `terms_from_index` on (before that, batches were
//! appended by a log that was not replicated and have term 0). A leader's entries are
//! stamped with baseOffset and term here; a follower stores its leader's bytes unchanged, at
//! the offset the leader gave them. There is no table from indexes to offsets: segments and
//! their index entries carry both.
//!
//! Contract: as for the rest of [`PartitionLog`]: one shard, any number of tasks; entry
//! appends pass the same gate as plain appends, in the order they pass it.

use bytes::Bytes;

use crate::batch::{self, BatchHeader, BATCH_HEADER_BYTES};
use crate::error::{EntryError, ReadError, StorageError};
use crate::io::{Disk, DiskFile};
use crate::log::{CheckedBatch, Stamp};
use crate::meta::{encode_log_format, LogFormat, LOG_FORMAT_VERSION, TERMS_NEVER};
use crate::segment::{term_of, WindowReader, LOG_FORMAT_FILE};
use crate::state::PartitionLog;

/// Where an entry landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryOutcome {
    pub base_offset: i64,
    pub last_offset: i64,
    pub index: u64,
    pub term: i32,
}

/// One entry read back: its Raft index and term, and the batch as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub index: u64,
    pub term: i32,
    pub batch: Bytes,
}

impl<D: Disk> PartitionLog<D> {
    /// The Raft index of the log's first batch (the first segment's base index); one past
    /// [`Self::last_index`] when the log is empty.
    pub fn first_index(&self) -> u64 {
        let state = self.state();
        let first = state
            .segments()
            .next()
            .map(|segment| segment.index.base_index());
        first.unwrap_or(state.next_index)
    }

    /// The Raft index of the log's last batch (appended, not necessarily written).
    pub fn last_index(&self) -> u64 {
        self.state().next_index - 1
    }

    /// The term of the log's last batch; 0 when empty or never replicated.
    pub fn last_term(&self) -> i32 {
        self.state().last_term
    }

    /// The Raft index from which partitionLeaderEpoch is a term; `None` while the log has
    /// never been replicated.
    pub fn terms_from_index(&self) -> Option<u64> {
        Some(self.state().terms_from_index).filter(|&index| index != TERMS_NEVER)
    }

    /// Appends a Raft leader's entry: a batch [`Self::check`] accepted, stamped with the
    /// next offset and with `term` as partitionLeaderEpoch. `term` may not be below the
    /// log's last term.
    pub async fn append_as_leader(
        &self,
        checked: CheckedBatch,
        term: i32,
    ) -> Result<EntryOutcome, EntryError> {
        let (batch, header) = checked.into_parts();
        self.append_entry(batch, header, Stamp::Leader(term)).await
    }

    /// Appends a follower's copy of its leader's entry, bytes unchanged: its baseOffset must
    /// be this log's end and its partitionLeaderEpoch (its term) at least the last term.
    /// The bytes come from the network: everything is checked, nothing is trusted. The
    /// entry may be one the leader's cleaner compacted (fewer records than offsets, or none).
    pub async fn append_replicated(&self, entry: Bytes) -> Result<EntryOutcome, EntryError> {
        let header = {
            let state = self.state();
            state.check_usable()?;
            batch::validate_compacted(&entry, state.config.batch_bytes_max)?
        };
        let batch = entry;
        self.append_entry(batch, header, Stamp::Replicated).await
    }

    async fn append_entry(
        &self,
        batch: Bytes,
        header: BatchHeader,
        stamp: Stamp,
    ) -> Result<EntryOutcome, EntryError> {
        let _permit = self
            .inner
            .append_gate
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        let _awake = self.awake_holding_append_gate().await?;
        self.record_terms_start().await?;
        self.make_room(batch.len()).await?;
        let term = {
            let state = self.state();
            state.check_usable()?;
            let term = match stamp {
                Stamp::Leader(term) => term,
                Stamp::Replicated => batch::partition_leader_epoch(&batch),
                Stamp::Plain => unreachable!("plain appends go through `append`"),
            };
            if term < state.last_term || term < 0 {
                return Err(EntryError::TermGoesBack {
                    term,
                    last_term: state.last_term,
                });
            }
            if stamp == Stamp::Replicated && header.base_offset != state.next_offset {
                return Err(EntryError::OffsetMismatch {
                    base_offset: header.base_offset,
                    next_offset: state.next_offset,
                });
            }
            term
        };
        let placed = self.append_validated(&batch, &header, stamp, term)?;
        crate::flusher::wake(&self.inner);
        Ok(EntryOutcome {
            base_offset: placed.outcome.base_offset,
            last_offset: placed.outcome.last_offset,
            index: placed.index,
            term,
        })
    }

    /// Before the first entry of a log never replicated: records durably that terms start
    /// at the next index, so a restart reads the entries' epochs as terms and the batches
    /// before them as term 0. Called with the append gate held.
    async fn record_terms_start(&self) -> Result<(), StorageError> {
        let next_index = {
            let state = self.state();
            if state.terms_from_index != TERMS_NEVER {
                return Ok(());
            }
            state.next_index
        };
        self.write_terms_from(next_index).await?;
        self.state_mut().terms_from_index = next_index;
        Ok(())
    }

    /// Rewrites `log.format` with `terms_from_index` (atomically and durably).
    pub(crate) async fn write_terms_from(&self, terms_from_index: u64) -> Result<(), StorageError> {
        let format = LogFormat {
            format_version: LOG_FORMAT_VERSION,
            terms_from_index,
        };
        self.inner
            .disk
            .write_file_atomically(
                &self.dir().join(LOG_FORMAT_FILE),
                &encode_log_format(&format),
            )
            .await
            .map_err(|e| StorageError::io("writing the log format", e))
    }

    /// The entries from Raft index `low` up to (not including) `high`, as stored, until one
    /// more would pass `max_bytes` (the first is returned whatever its size). Only entries
    /// written to the file are read: fewer than asked come back when the rest is not
    /// written yet (a Raft log store keeps its recent entries in memory). Every batch is
    /// checked (header, CRC32C, offset continuity) before it is returned.
    pub async fn read_entries(
        &self,
        low: u64,
        high: u64,
        max_bytes: usize,
    ) -> Result<Vec<StoredEntry>, ReadError> {
        let mut entries: Vec<StoredEntry> = Vec::new();
        let mut bytes = 0;
        let mut next = low;
        let _awake = self.awake().await?;
        // One segment at a time: a read ends at its segment's end, and the next one goes on
        // from there while the budget lasts.
        while let Some(plan) = self.plan_entry_read(next, high)? {
            let budget = Budget {
                bytes_left: max_bytes.saturating_sub(bytes),
                first_is_free: entries.is_empty(),
            };
            let (read, reached_segment_end) = read_entries_from(&*plan.file, &plan, budget).await?;
            bytes += read.iter().map(|e| e.batch.len()).sum::<usize>();
            let Some(last) = read.last() else { break };
            next = last.index + 1;
            entries.extend(read);
            if !reached_segment_end {
                break;
            }
        }
        Ok(entries)
    }

    /// Where entries from `low` lie: the segment, the indexed batch to walk from, and the
    /// visible end. `None` when there is nothing to read.
    fn plan_entry_read(
        &self,
        low: u64,
        high: u64,
    ) -> Result<Option<EntryRead<D::File>>, ReadError> {
        let state = self.state();
        let first_index = state
            .segments()
            .next()
            .map_or(state.next_index, |segment| segment.index.base_index());
        if low < first_index || low > state.next_index {
            return Err(ReadError::IndexOutOfRange {
                index: low,
                first_index,
                next_index: state.next_index,
            });
        }
        if low >= high {
            return Ok(None);
        }
        let segment = state
            .segments()
            .filter(|segment| segment.index.base_index() <= low)
            .last()
            .expect("the first segment starts at or below `low`");
        let location = segment.index.locate_index(low);
        Ok(Some(EntryRead {
            file: segment.file().clone(),
            segment_base_offset: segment.base_offset,
            position: location.position,
            base_offset: location.base_offset,
            index: location.index,
            end: state.segment_end_bytes(segment),
            low,
            high,
            visible_end: state.written_offset,
            terms_from_index: state.terms_from_index,
        }))
    }
}

/// One entry read, planned under the state borrow and run without it.
struct EntryRead<F> {
    file: std::rc::Rc<F>,
    segment_base_offset: i64,
    /// The indexed batch to walk from: its position, base offset and Raft index.
    position: u64,
    base_offset: i64,
    index: u64,
    end: u64,
    low: u64,
    high: u64,
    visible_end: i64,
    terms_from_index: u64,
}

/// How many bytes of entries a read may still return; the first entry of a whole read is
/// returned whatever its size, so a reader always makes progress.
#[derive(Debug, Clone, Copy)]
struct Budget {
    bytes_left: usize,
    first_is_free: bool,
}

/// The entries of one segment from `plan`, and whether the read stopped at the segment's
/// end (rather than at `high`, the budget or the visible end).
async fn read_entries_from<F: DiskFile>(
    file: &F,
    plan: &EntryRead<F>,
    budget: Budget,
) -> Result<(Vec<StoredEntry>, bool), ReadError> {
    let io = |e| ReadError::Storage(StorageError::io("read", e));
    let window_bytes = budget.bytes_left.clamp(64 << 10, 8 << 20);
    let mut reader = WindowReader::new(file, plan.end, window_bytes);
    let (mut entries, mut total) = (Vec::new(), 0);
    let (mut position, mut expected_offset, mut index) =
        (plan.position, plan.base_offset, plan.index);
    while index < plan.high {
        let Some(header_bytes) = reader.get(position, BATCH_HEADER_BYTES).await.map_err(io)? else {
            return Ok((entries, true));
        };
        let header = BatchHeader::parse(&header_bytes).expect("61 bytes");
        if header.base_offset >= plan.visible_end || expected_offset >= plan.visible_end {
            break;
        }
        let size = header.total_bytes();
        let free = budget.first_is_free && entries.is_empty();
        if index >= plan.low && !free && total + size > budget.bytes_left {
            break;
        }
        let bytes = reader.get(position, size).await.map_err(io)?;
        let Some(bytes) = bytes.filter(|b| {
            batch::is_intact(b)
                && header.base_offset == expected_offset
                && header.last_offset() < plan.visible_end
        }) else {
            return Err(ReadError::Corrupt {
                offset: expected_offset,
                segment_base_offset: plan.segment_base_offset,
                position,
                reason: format!(
                    "the batch at Raft index {index} (offset {}) fails its checks",
                    header.base_offset
                ),
            });
        };
        if index >= plan.low {
            let term = term_of(
                index,
                batch::partition_leader_epoch(&bytes),
                plan.terms_from_index,
            );
            entries.push(StoredEntry {
                index,
                term,
                batch: bytes,
            });
            total += size;
        }
        position += size as u64;
        expected_offset = header.last_offset() + 1;
        index += 1;
    }
    Ok((entries, false))
}
