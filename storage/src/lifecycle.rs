//! Segment lifecycle: making room for an append (roll, preallocation, backpressure),
//! retention, `DeleteRecords`, clean close and removal.

use std::path::Path;
use std::rc::Rc;

use crate::appender::Appender;
use crate::error::{ReadError, StorageError};
use crate::flusher::fence;
use crate::index::{BuildingIndex, SegmentIndex, SegmentStart};
use crate::io::{Disk, DiskFile};
use crate::log::PartitionLog;
use crate::meta::{encode_checkpoint, LogCheckpoint, MetaKind};
use crate::preallocation::{self, Preallocation};
use crate::segment::{index_file_name, segment_file_name, Segment, CLEAN_SHUTDOWN_FILE};

/// What an append must wait for before it can be placed.
enum Obstacle {
    Roll,
    /// Fallocate the active file up to `end_bytes`, a step of `step_bytes` past the append.
    Preallocate {
        end_bytes: u64,
        step_bytes: u64,
    },
    Backpressure,
}

impl<D: Disk> PartitionLog<D> {
    /// Called with the append gate held: rolls, preallocates or waits until a batch of
    /// `batch_bytes` can be copied into the active segment without blocking.
    pub(crate) async fn make_room(&self, batch_bytes: usize) -> Result<(), StorageError> {
        loop {
            let progress = self.inner.progress.wait();
            match self.obstacle(batch_bytes)? {
                None => return Ok(()),
                Some(Obstacle::Roll) => self.roll().await?,
                Some(Obstacle::Preallocate {
                    end_bytes,
                    step_bytes,
                }) => self.preallocate(end_bytes, step_bytes).await?,
                Some(Obstacle::Backpressure) => progress.await,
            }
        }
    }

    fn obstacle(&self, batch_bytes: usize) -> Result<Option<Obstacle>, StorageError> {
        let state = self.state();
        state.check_usable()?;
        let appended = state.active_appended_bytes();
        let needed = appended + batch_bytes as u64;
        let too_big = needed > state.config.segment_bytes_max;
        let too_old = match (
            state.config.segment_age_max_ms,
            state.active_first_append_ms,
        ) {
            (Some(max_ms), Some(first_ms)) => self.inner.clock.now_ms() - first_ms >= max_ms as i64,
            _ => false,
        };
        Ok(if appended > 0 && (too_big || too_old) {
            Some(Obstacle::Roll)
        } else if needed > state.preallocation.end_bytes {
            // The last step is used up: how fast it went decides the next one.
            let last = state.preallocation;
            let step_bytes = preallocation::next_step_bytes(
                last.step_bytes,
                true,
                self.inner.clock.now_ms() - last.step_taken_ms,
                state.config.preallocate_step_bytes,
            );
            Some(Obstacle::Preallocate {
                end_bytes: preallocation::target_bytes(needed, step_bytes),
                step_bytes,
            })
        } else if state.unwritten_bytes() > 0
            && state.unwritten_bytes() + batch_bytes as u64
                > state.config.unwritten_bytes_max as u64
        {
            Some(Obstacle::Backpressure)
        } else {
            None
        })
    }

    /// Grows the active file's allocation. ENOSPC here refuses the append but leaves the log
    /// usable: nothing was written, and appends succeed again once space is freed.
    async fn preallocate(&self, end_bytes: u64, step_bytes: u64) -> Result<(), StorageError> {
        let file = self.state().active.file().clone();
        file.preallocate(end_bytes)
            .await
            .map_err(|e| StorageError::io("preallocating the active segment", e))?;
        let mut state = self.state_mut();
        state.preallocation = Preallocation {
            end_bytes: state.preallocation.end_bytes.max(end_bytes),
            step_bytes,
            step_taken_ms: self.inner.clock.now_ms(),
        };
        Ok(())
    }

    /// Seals the active segment and starts a new one at the next offset. The new file is
    /// created first, so running out of space leaves the old segment active and untouched.
    async fn roll(&self) -> Result<(), StorageError> {
        let last_offset = self.log_end_offset() - 1;
        self.wait_durable(last_offset).await?;
        let (base_offset, step_bytes) = {
            let state = self.state();
            // The new segment carries the partition's pace: a busy partition keeps its step
            // (no ramp from the minimum at every roll), one that went quiet gives it back.
            let last = state.preallocation;
            let step_bytes = preallocation::next_step_bytes(
                last.step_bytes,
                false,
                self.inner.clock.now_ms() - last.step_taken_ms,
                state.config.preallocate_step_bytes,
            );
            (state.next_offset, step_bytes)
        };
        let file = self.create_segment_file(base_offset, step_bytes).await?;
        self.seal_active().await?;
        self.install_active(file, base_offset, step_bytes);
        tracing::debug!(dir = %self.dir().display(), base_offset, "rolled to a new segment");
        let _ = self.write_checkpoint().await;
        Ok(())
    }

    /// Makes a freshly created segment file the active segment; the old one becomes sealed.
    fn install_active(&self, file: D::File, base_offset: i64, step_bytes: u64) {
        let mut guard = self.state_mut();
        let state = &mut *guard;
        // `roll` holds the append gate and waited until everything was durable: nothing of
        // the old segment is left unwritten, and the new one starts at the log end.
        assert!(
            state.unwritten_bytes() == 0
                && state.durable_offset == state.next_offset
                && base_offset == state.next_offset,
            "rolling to {base_offset} with log end {}, durable {} and {} bytes unwritten",
            state.next_offset,
            state.durable_offset,
            state.unwritten_bytes()
        );
        let appender = Appender::new(0, &[], state.config.write_chunk_bytes);
        let start = SegmentStart {
            base_offset,
            base_index: state.next_index,
            previous_term: state.last_term,
        };
        let index = BuildingIndex::new(start, state.config.index_interval_bytes);
        let new_active = Segment {
            base_offset,
            file: Some(Rc::new(file)),
            index: SegmentIndex::Building(index),
        };
        let old = std::mem::replace(&mut state.active, new_active);
        state.sealed.insert(old.base_offset, old);
        state.appender = Some(Box::new(appender));
        state.preallocation = Preallocation {
            end_bytes: step_bytes,
            step_bytes,
            step_taken_ms: self.inner.clock.now_ms(),
        };
        state.active_first_append_ms = None;
        state.active_durable_bytes = 0;
    }

    async fn create_segment_file(
        &self,
        base_offset: i64,
        preallocate_bytes: u64,
    ) -> Result<D::File, StorageError> {
        self.create_data_file(&segment_file_name(base_offset), preallocate_bytes)
            .await
    }

    /// Creates the data file `name` in the partition directory, allocated to
    /// `preallocate_bytes`, its name made durable. A new segment starts so, and so does an
    /// entry staged to replace the log (`replacement.rs`). A failed preallocation leaves no file.
    pub(crate) async fn create_data_file(
        &self,
        name: &str,
        preallocate_bytes: u64,
    ) -> Result<D::File, StorageError> {
        let path = self.dir().join(name);
        let disk = &self.inner.disk;
        let file = disk
            .open(&path, true)
            .await
            .map_err(|e| StorageError::io("creating a segment", e))?;
        if let Err(error) = file.preallocate(preallocate_bytes).await {
            let _ = disk.remove_file(&path).await;
            return Err(StorageError::io("preallocating a new segment", error));
        }
        disk.sync_dir(self.dir())
            .await
            .map_err(|e| StorageError::io("fsync of the partition directory", e))?;
        Ok(file)
    }

    /// Writes the active segment's index and trims its file to the data. The index is only
    /// an accelerator (rebuilt if lost), so failing to write it is logged, not fatal; the
    /// fdatasync after the trim is an fdatasync, and its failure fences.
    async fn seal_active(&self) -> Result<(), StorageError> {
        let (file, base_offset, contents, bytes) = {
            let state = self.state();
            let SegmentIndex::Building(index) = &state.active.index else {
                unreachable!("the active index is building")
            };
            (
                state.active.file().clone(),
                state.active.base_offset,
                SegmentIndex::encode(&index.data),
                index.data.segment_bytes,
            )
        };
        let path = self.dir().join(index_file_name(base_offset));
        if let Err(error) = self
            .inner
            .disk
            .write_file_atomically(&path, &contents)
            .await
        {
            tracing::warn!(path = %path.display(), %error, "could not write a segment index; it will be rebuilt");
        }
        if let Err(error) = file.truncate(bytes).await {
            tracing::warn!(base_offset, %error, "could not trim a sealed segment to its data");
        }
        if let Err(error) = file.fdatasync().await {
            let error = StorageError::io("fdatasync of a sealed segment", error);
            fence(&self.inner, error.clone());
            return Err(error);
        }
        Ok(())
    }

    /// Deletes whole sealed segments past `retention.bytes` or `retention.ms` (judged by a
    /// segment's newest timestamp, as Kafka does) and those wholly below the log start.
    /// Returns how many were deleted. The active segment is never deleted.
    pub async fn enforce_retention(&self) -> Result<usize, StorageError> {
        self.enforce_retention_below_index(u64::MAX).await
    }

    /// [`Self::enforce_retention`] for a replicated log: only segments whose every batch has
    /// a Raft index below `index_limit` may go (the entries its group may still need stay,
    /// whatever retention says), and the first segment that must stay ends the pass, so the
    /// log keeps a prefix-free run of segments.
    pub async fn enforce_retention_below_index(
        &self,
        index_limit: u64,
    ) -> Result<usize, StorageError> {
        let now_ms = self.inner.clock.now_ms();
        let mut doomed = Vec::new();
        {
            let state = self.state();
            let mut total: u64 = state.sealed.values().map(Segment::bytes).sum::<u64>()
                + state.active_appended_bytes();
            // Each sealed segment with the base index of the segment after it: the index
            // one past its last batch.
            let next_base_indexes = state
                .sealed
                .values()
                .skip(1)
                .chain(std::iter::once(&state.active))
                .map(|next| next.index.base_index());
            for (segment, end_index) in state.sealed.values().zip(next_base_indexes) {
                let below_start = segment.next_offset() <= state.log_start_offset;
                let over_size = state
                    .config
                    .retention_bytes
                    .is_some_and(|max| total - segment.bytes() >= max);
                let expired = state
                    .config
                    .retention_ms
                    .is_some_and(|ms| segment.index.max_timestamp() < now_ms - ms as i64);
                if !(below_start || over_size || expired) || end_index > index_limit {
                    break;
                }
                total -= segment.bytes();
                doomed.push(segment.base_offset);
            }
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        self.delete_segments(&doomed).await?;
        Ok(doomed.len())
    }

    async fn delete_segments(&self, base_offsets: &[i64]) -> Result<(), StorageError> {
        // Not under a cleaning pass (see `cleaner.rs`).
        let _segments = self.segments_turn().await?;
        let removed: Vec<Segment<D::File>> = {
            let mut state = self.state_mut();
            let removed = base_offsets
                .iter()
                .filter_map(|base| state.sealed.remove(base))
                .collect();
            let first_base = state
                .sealed
                .keys()
                .next()
                .copied()
                .unwrap_or(state.active.base_offset);
            state.log_start_offset = state.log_start_offset.max(first_base);
            // Only segments wholly below the high watermark are sealed, so the log start
            // cannot pass it.
            state.assert_offsets_ordered();
            removed
        };
        let disk = &self.inner.disk;
        for &base in base_offsets {
            // Readers holding the file keep reading it; the names go now.
            let _ = disk
                .remove_file(&self.dir().join(index_file_name(base)))
                .await;
            disk.remove_file(&self.dir().join(segment_file_name(base)))
                .await
                .map_err(|e| StorageError::io("deleting a segment", e))?;
        }
        for segment in removed {
            // Out of the map, a file no reader holds can gain no new one. A dormant log's
            // segments are closed already: their unlink (on the blocking pool) freed them.
            if let Some(file) = segment.file.filter(|file| Rc::strong_count(file) == 1) {
                empty_before_close(&*file, self.dir()).await;
            }
        }
        disk.sync_dir(self.dir())
            .await
            .map_err(|e| StorageError::io("fsync of the partition directory", e))?;
        tracing::info!(dir = %self.dir().display(), segments = base_offsets.len(), "deleted old segments");
        self.write_checkpoint().await
    }

    /// Advances the log start to `offset` (`DeleteRecords`), durably, and deletes the segments
    /// wholly below it. `offset` may not pass the high watermark.
    pub async fn delete_records_before(&self, offset: i64) -> Result<i64, ReadError> {
        self.advance_log_start(offset).await?;
        self.enforce_retention().await?;
        Ok(self.log_start_offset())
    }

    /// Advances the log start to `offset`, durably (a checkpoint is written, even when the
    /// start was there already: a caller that raised it in memory first, or raced another
    /// caller, returns only once it is durable), and deletes nothing: a replicated log's
    /// segments below the start go in its retention pass, under its Raft index limit. Reads
    /// below the start are refused at once. `offset` may not pass what is written.
    pub async fn advance_log_start(&self, offset: i64) -> Result<i64, ReadError> {
        {
            let mut state = self.state_mut();
            state.check_usable()?;
            if offset > state.written_offset || offset < 0 {
                return Err(ReadError::OffsetOutOfRange {
                    offset,
                    log_start_offset: state.log_start_offset,
                    log_end_offset: state.written_offset,
                });
            }
            if offset > state.log_start_offset {
                state.log_start_offset = offset;
                state.assert_offsets_ordered();
            }
        }
        self.write_checkpoint().await?;
        Ok(self.log_start_offset())
    }

    /// Makes everything durable, writes the active index and the clean-shutdown marker, and
    /// stops the log. A fenced log gets no marker: its next open scans.
    pub async fn close(&self) -> Result<(), StorageError> {
        let permit = self
            .inner
            .append_gate
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        // A cleaning pass stops at its next batch; a committed swap finishes first.
        self.inner.stopping.set(true);
        let segments = self.segments_turn().await?;
        let end = self.log_end_offset();
        self.wait_durable(end - 1).await?;
        let (base_offset, index_contents, marker) = {
            let state = self.state();
            let SegmentIndex::Building(index) = &state.active.index else {
                unreachable!("the active index is building")
            };
            let marker = LogCheckpoint {
                log_start_offset: state.log_start_offset,
                segment_base_offset: state.active.base_offset,
                durable_bytes: index.data.segment_bytes,
                next_offset: state.next_offset,
                segment_base_index: index.data.base_index,
            };
            (
                state.active.base_offset,
                SegmentIndex::encode(&index.data),
                marker,
            )
        };
        let disk = &self.inner.disk;
        let _ = disk
            .write_file_atomically(
                &self.dir().join(index_file_name(base_offset)),
                &index_contents,
            )
            .await;
        // The checkpoint too, so that if the marker is ever lost the scan trusts all of this.
        let _ = self.write_checkpoint().await;
        let marker_bytes = encode_checkpoint(MetaKind::CleanShutdown, &marker);
        let marker_written = disk
            .write_file_atomically(&self.dir().join(CLEAN_SHUTDOWN_FILE), &marker_bytes)
            .await;
        self.shut();
        drop(segments);
        drop(permit);
        marker_written.map_err(|e| StorageError::io("writing the clean-shutdown marker", e))
    }

    /// Stops the log and deletes its directory (`DeleteTopics`).
    pub async fn remove(self) -> Result<(), StorageError> {
        let _permit = self.inner.append_gate.acquire_permit(1).await;
        self.inner.stopping.set(true);
        let _segments = self.inner.segments_gate.acquire_permit(1).await;
        self.shut();
        // A read still in flight on the deleted topic may fail on an emptied file; the
        // topic is gone, so that is its answer.
        let files: Vec<_> = {
            let state = self.state();
            state
                .segments()
                .filter_map(|segment| segment.file.clone())
                .collect()
        };
        for file in files {
            empty_before_close(&*file, self.dir()).await;
        }
        self.inner
            .disk
            .remove_dir_all(self.dir())
            .await
            .map_err(|e| StorageError::io("deleting the partition", e))
    }

    fn shut(&self) {
        self.state_mut().closed = true;
        self.inner.append_gate.close();
        self.inner.progress.notify_all();
        crate::flusher::wake(&self.inner);
    }
}

/// Frees a deleted segment's blocks before its file is closed. The last close of an unlinked
/// file is what frees its blocks, and glommio closes through `io_uring`, whose final release
/// runs on the shard thread: a 1 GiB segment held the shard (every partition on it) for
/// about a second, a 2 GiB topic for up to 2.7 s. Truncating first does that work on the
/// executor's blocking pool (glommio truncates there), one file per call so other blocking
/// calls interleave, and leaves the close nothing to free. Best effort: the file is deleted
/// either way, and a failure only means the close does the work.
pub(crate) async fn empty_before_close<F: DiskFile>(file: &F, dir: &Path) {
    if let Err(error) = file.truncate(0).await {
        tracing::warn!(dir = %dir.display(), %error, "could not empty a deleted segment before closing it");
    }
}
