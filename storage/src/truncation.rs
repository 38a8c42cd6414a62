//! Suffix truncation: a Raft follower drops the entries from a conflicting index on
//! (`storage/FORMAT.md` § Suffix truncation).
//!
//! Segments are preallocated, so the old tail's bytes would stay in the file after the cut,
//! and a new entry of the same size and record count written over the first old one would
//! make the old tail after it read as a valid continuation. So the cut is made durable before
//! anything new is written, in an order that leaves, after a crash at any point, either the
//! old log, a prefix of it no shorter than the cut, or the truncated log:
//!
//! 1. everything appended is made durable (no write or fdatasync is in flight afterwards);
//! 2. the in-memory log is cut (offsets, index, appender, cache; later segments dropped);
//! 3. the recovery checkpoint is lowered to the cut, durably: from here recovery validates
//!    every byte after the cut instead of trusting it;
//! 4. the index files of the cut segment and every later one are removed, then the later
//!    segments themselves, last first, each step made durable by a directory fsync;
//! 5. the cut segment's file is truncated at the cut and fdatasync'd;
//! 6. only then may the next append proceed (the append gate is held throughout).
//!
//! An IO error after step 2 fences the log: its memory and files disagree.
//!
//! Finding the cut reads only from the last index entry before it (about
//! `index_interval_bytes`) in the active segment; a cut in a sealed segment re-reads that
//! segment's headers from its start.

use std::rc::Rc;

use crate::appender::Appender;
use crate::batch::{BatchHeader, BATCH_HEADER_BYTES};
use crate::error::{ReadError, StorageError};
use crate::flusher::fence;
use crate::index::{BuildingIndex, SegmentIndex, SegmentStart};
use crate::io::{align_down, Disk, DiskFile};
use crate::lifecycle::empty_before_close;
use crate::preallocation::Preallocation;
use crate::segment::{self, index_file_name, segment_file_name, ScanStop, Segment, WindowReader};
use crate::state::PartitionLog;

/// Where the cut falls, found before anything changes.
struct Cut<F> {
    segment_base_offset: i64,
    file: Rc<F>,
    position: u64,
    offset: i64,
    /// The cut segment's index rebuilt up to the cut.
    index: BuildingIndex,
    /// The bytes of the cut's page before it (the appender rewrites that page whole).
    tail_page: Vec<u8>,
}

impl<D: Disk> PartitionLog<D> {
    /// Removes the entries from Raft index `index` on (a Raft conflict). Durable when it
    /// returns: no crash afterwards brings them back, and the next append lands at `index`.
    /// Entries appended before the log was replicated (below
    /// [`Self::terms_from_index`]) are never truncated, nor is anything below the log start.
    pub async fn truncate_from_index(&self, index: u64) -> Result<(), ReadError> {
        let _permit = self
            .inner
            .append_gate
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        // Not under a cleaning pass (see `cleaner.rs`).
        let _segments = self.segments_turn().await?;
        {
            let state = self.state();
            state.check_usable()?;
            if index == state.next_index {
                return Ok(());
            }
            if index < state.terms_from_index || index > state.next_index {
                return Err(ReadError::IndexOutOfRange {
                    index,
                    first_index: state.terms_from_index,
                    next_index: state.next_index,
                });
            }
        }
        // The cut reads the segment and rebuilds the appender: a dormant log wakes.
        self.wake_holding_gates().await?;
        let _awake = self.in_use();
        let end = self.log_end_offset();
        if self.durable_offset() < end {
            self.wait_durable(end - 1).await?;
        }
        let cut = self.find_cut(index).await?;
        if cut.offset < self.log_start_offset() {
            return Err(ReadError::OffsetOutOfRange {
                offset: cut.offset,
                log_start_offset: self.log_start_offset(),
                log_end_offset: end,
            });
        }
        let doomed = self.cut_in_memory(cut);
        if let Err(error) = self.cut_on_disk(&doomed).await {
            fence(&self.inner, error.clone());
            return Err(error.into());
        }
        self.inner.progress.notify_all();
        crate::flusher::wake(&self.inner);
        Ok(())
    }

    /// Finds batch `index` in its segment and rebuilds that segment's index up to it.
    async fn find_cut(&self, index: u64) -> Result<Cut<D::File>, ReadError> {
        let (file, start, location, end, terms_from_index, active_index) = {
            let state = self.state();
            let mut previous_term = 0;
            let mut found = None;
            for segment in state.segments() {
                if segment.index.base_index() > index {
                    break;
                }
                found = Some((segment, previous_term));
                previous_term = segment.index.last_term();
            }
            let (segment, previous_term) = found.expect("the checks placed `index` in the log");
            let start = SegmentStart {
                base_offset: segment.base_offset,
                base_index: segment.index.base_index(),
                previous_term,
            };
            // The active segment's index is cut back to the last entry before the cut; a
            // sealed one's is rebuilt from its start.
            let active_index = match &segment.index {
                SegmentIndex::Building(building) => Some(building.clone()),
                SegmentIndex::Archived(_) => None,
            };
            (
                segment.file().clone(),
                start,
                segment.index.locate_index(index),
                state.segment_end_bytes(segment),
                state.terms_from_index,
                active_index,
            )
        };
        let corrupt = |position, reason: String| ReadError::Corrupt {
            offset: location.base_offset,
            segment_base_offset: start.base_offset,
            position,
            reason,
        };
        let position = position_of_index(&*file, end, location, index)
            .await
            .map_err(|e| StorageError::io("read", e))?
            .ok_or_else(|| corrupt(location.position, format!("no batch at Raft index {index}")))?;
        // The bytes before the cut are durable and were checked when appended or recovered:
        // a header walk rebuilds the index (and the term before the cut).
        let (from, rebuilt) = match active_index {
            Some(mut building) => (building.cut_back(index), building),
            None => (
                0,
                BuildingIndex::new(start, self.state().config.index_interval_bytes),
            ),
        };
        let scan = segment::scan(&*file, position, from, position, terms_from_index, rebuilt)
            .await
            .map_err(|e| StorageError::io("read", e))?;
        if scan.stop != ScanStop::CleanEnd || scan.index.data.next_index != index {
            return Err(corrupt(
                scan.valid_bytes,
                format!(
                    "the walk to Raft index {index} stopped at index {} ({:?})",
                    scan.index.data.next_index, scan.stop
                ),
            ));
        }
        let tail_start = align_down(position);
        let tail_page = file
            .read_at(tail_start, (position - tail_start) as usize)
            .await
            .map_err(|e| StorageError::io("read", e))?
            .to_vec();
        Ok(Cut {
            segment_base_offset: start.base_offset,
            file,
            position,
            offset: scan.index.data.next_offset,
            index: scan.index,
            tail_page,
        })
    }

    /// Steps 2: the log in memory ends at the cut. Returns the segments after the cut
    /// segment, which the disk still holds, and the cut itself.
    fn cut_in_memory(&self, cut: Cut<D::File>) -> Doomed<D::File> {
        let now_ms = self.inner.clock.now_ms();
        let mut guard = self.state_mut();
        let state = &mut *guard;
        let mut later: Vec<Segment<D::File>> = Vec::new();
        let bases_after: Vec<i64> = state
            .sealed
            .range(cut.segment_base_offset + 1..)
            .map(|(&base, _)| base)
            .collect();
        for base in bases_after {
            later.extend(state.sealed.remove(&base));
        }
        let cut_was_sealed = state.sealed.remove(&cut.segment_base_offset).is_some();
        let new_active = Segment {
            base_offset: cut.segment_base_offset,
            file: Some(cut.file.clone()),
            index: SegmentIndex::Building(cut.index),
        };
        let old_active = std::mem::replace(&mut state.active, new_active);
        if cut_was_sealed {
            later.push(old_active);
        }
        let last_term = match &state.active.index {
            SegmentIndex::Building(index) => index.data.last_term,
            SegmentIndex::Archived(_) => unreachable!("the active index is building"),
        };
        state.appender = Some(Box::new(Appender::new(
            cut.position,
            &cut.tail_page,
            state.config.write_chunk_bytes,
        )));
        state.preallocation = Preallocation {
            // Nothing is allocated past the cut once the file is truncated there: the next
            // append allocates its step.
            end_bytes: cut.position,
            step_bytes: crate::preallocation::step_min_bytes(state.config.preallocate_step_bytes),
            step_taken_ms: now_ms,
        };
        state.active_first_append_ms = (cut.position > 0).then_some(now_ms);
        state.next_offset = cut.offset;
        state.written_offset = cut.offset;
        state.durable_offset = cut.offset;
        state.durable_wanted = state.durable_wanted.min(cut.offset);
        state.active_durable_bytes = cut.position;
        state.next_index = state.active.index.next_index();
        state.last_term = last_term;
        state.cache.clear();
        state.assert_offsets_ordered();
        later.sort_by_key(|segment| segment.base_offset);
        Doomed {
            later,
            cut_base_offset: cut.segment_base_offset,
            cut_file: cut.file,
            cut_position: cut.position,
        }
    }

    /// Steps 3 to 5 (see the module docs).
    async fn cut_on_disk(&self, doomed: &Doomed<D::File>) -> Result<(), StorageError> {
        self.write_checkpoint().await?;
        let disk = &self.inner.disk;
        let dir = self.dir();
        let sync_dir = || async {
            disk.sync_dir(dir)
                .await
                .map_err(|e| StorageError::io("fsync of the partition directory", e))
        };
        let stale_indexes = doomed
            .later
            .iter()
            .map(|segment| segment.base_offset)
            .chain(std::iter::once(doomed.cut_base_offset));
        for base in stale_indexes {
            match disk.remove_file(&dir.join(index_file_name(base))).await {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(StorageError::io("deleting a segment index", error)),
            }
        }
        sync_dir().await?;
        for segment in doomed.later.iter().rev() {
            disk.remove_file(&dir.join(segment_file_name(segment.base_offset)))
                .await
                .map_err(|e| StorageError::io("deleting a segment", e))?;
            sync_dir().await?;
        }
        doomed
            .cut_file
            .truncate(doomed.cut_position)
            .await
            .map_err(|e| StorageError::io("truncating a segment at a Raft conflict", e))?;
        doomed
            .cut_file
            .fdatasync()
            .await
            .map_err(|e| StorageError::io("fdatasync after a truncation", e))?;
        for segment in &doomed.later {
            if let Some(file) = segment.file.as_ref().filter(|f| Rc::strong_count(f) == 1) {
                empty_before_close(&**file, dir).await;
            }
        }
        tracing::info!(dir = %dir.display(), segment = doomed.cut_base_offset, position = doomed.cut_position,
            segments_deleted = doomed.later.len(), "truncated the log at a Raft conflict");
        Ok(())
    }
}

/// What the disk still holds past the in-memory cut.
struct Doomed<F> {
    later: Vec<Segment<F>>,
    cut_base_offset: i64,
    cut_file: Rc<F>,
    cut_position: u64,
}

/// Walks batch headers from an indexed batch to the one at Raft index `index`; its byte
/// position, or `None` if the segment ends (or its data stops) first.
async fn position_of_index<F: DiskFile>(
    file: &F,
    end: u64,
    from: crate::index::BatchLocation,
    index: u64,
) -> std::io::Result<Option<u64>> {
    let mut reader = WindowReader::new(file, end, 256 << 10);
    let (mut position, mut at) = (from.position, from.index);
    while at < index {
        let Some(header) = reader.get(position, BATCH_HEADER_BYTES).await? else {
            return Ok(None);
        };
        let header = BatchHeader::parse(&header).expect("61 bytes");
        if header.batch_length <= 0 {
            return Ok(None);
        }
        position += header.total_bytes() as u64;
        at += 1;
    }
    Ok((position <= end).then_some(position))
}
