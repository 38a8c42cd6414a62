//! Replacing the whole log with one entry: a Raft follower installing its leader's snapshot
//! (`storage/FORMAT.md` § Replacement).
//!
//! A follower so far behind that its leader no longer holds the entries it needs gets the
//! leader's first held entry instead, with its Raft index, and continues from there: its
//! own log is thrown away. A crash at any point leaves either the old log, untouched, or the
//! new one-entry log, never a mix. Holding the append and segments gates:
//!
//! 1. everything appended is made durable (no write or fdatasync is in flight afterwards),
//!    and the checkpoint gate is taken (no checkpoint of the old log lands after the new
//!    one's);
//! 2. the entry is written to `replacement-<index>.tmp`, allocated and page-padded as a new
//!    segment, and fdatasync'd; an error here removes it and leaves the old log usable;
//! 3. **commit**: it is renamed to `replacement-<index>.segment`;
//! 4. the committed steps (`replacement_commit.rs`, also run by recovery) remove the old
//!    log's files and give the entry its segment name, with a checkpoint anchoring it;
//! 5. the state in memory is rebuilt from the directory by recovery's code and swapped in.
//!
//! An IO error after the commit fences the log (its memory and files disagree); the next
//! open finishes the replacement. Files the broker keeps beside the log: its producer-state
//! snapshot is removed with the log it describes; `transactions.seen` stays (it only makes
//! `read_committed` readers load the producer state, which is always safe). The caller
//! drops whatever else it derived from the old log (the broker's producer state in memory).

use std::rc::Rc;

use bytes::Bytes;

use crate::appender::Appender;
use crate::batch::{self, BatchError, BatchHeader};
use crate::entries::EntryOutcome;
use crate::error::{EntryError, StorageError};
use crate::flusher::fence;
use crate::io::{Disk, DiskFile};
use crate::lifecycle::empty_before_close;
use crate::preallocation::{step_min_bytes, target_bytes};
use crate::recovery::open_replaced;
use crate::replacement_commit::{
    self, committed_file_name, entry_fits, index_fits, staged_file_name,
};
use crate::state::{PartitionLog, State};

impl<D: Disk> PartitionLog<D> {
    /// Replaces the whole log with one entry, `entry` at Raft index `index`: a leader's
    /// stored batch (stamped with its baseOffset and term, possibly compacted or a control
    /// batch), checked like [`Self::append_replicated`] checks one, and stored unchanged.
    /// Afterwards the log holds exactly that entry: the log start is its baseOffset, the
    /// next append lands at its lastOffset + 1 and Raft index `index` + 1, and the last term
    /// is its partitionLeaderEpoch. Durable when it returns.
    ///
    /// A refused entry (index 0 or `u64::MAX - 1` and up, a damaged batch, a negative term or offsets out of range)
    /// or an IO error before the commit leaves the old log as it was. An IO error after the
    /// commit fences the log; reopening it gives the new one.
    pub async fn replace_with_entry(
        &self,
        index: u64,
        entry: Bytes,
    ) -> Result<EntryOutcome, EntryError> {
        let header = self.check_replacement(index, &entry)?;
        let term = batch::partition_leader_epoch(&entry);
        let _permit = self
            .inner
            .append_gate
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        // Not under a cleaning pass (see `cleaner.rs`).
        let _segments = self.segments_turn().await?;
        self.state().check_usable()?;
        // A dormant log has everything durable and needs no file opened: its old files are
        // only deleted, and the new state is awake.
        let end = self.log_end_offset();
        if self.durable_offset() < end {
            self.wait_durable(end - 1).await?;
        }
        let _checkpoint = self
            .inner
            .checkpoint_gate
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        self.state().check_usable()?;
        self.stage(index, &entry).await?;
        let installed = self.install(index).await;
        if let Err(error) = installed {
            fence(&self.inner, error.clone());
            return Err(error.into());
        }
        tracing::info!(dir = %self.dir().display(), index, base_offset = header.base_offset,
            "replaced the log with one entry (a Raft snapshot)");
        Ok(EntryOutcome {
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
            index,
            term,
        })
    }

    /// The checks of [`Self::append_replicated`], and those a log's first entry needs: what
    /// [`Self::replace_with_entry`] refuses before it changes anything. A Raft store checks a
    /// snapshot from a peer with it before staging it, so that a bad one is refused for its
    /// group alone rather than failing a write round later.
    pub fn check_replacement(&self, index: u64, entry: &[u8]) -> Result<BatchHeader, EntryError> {
        let state = self.state();
        state.check_usable()?;
        if !index_fits(index) {
            return Err(EntryError::InvalidIndex { index });
        }
        let header = batch::validate_compacted(entry, state.config.batch_bytes_max)?;
        let term = batch::partition_leader_epoch(entry);
        if term < 0 {
            return Err(EntryError::TermGoesBack { term, last_term: 0 });
        }
        if !entry_fits(&header, term) {
            return Err(BatchError::InvalidRecord(format!(
                "offsets {}..={} cannot start a log",
                header.base_offset,
                header.last_offset()
            ))
            .into());
        }
        Ok(header)
    }

    /// Steps 2 and 3: the entry written, durable, and committed. An error before the
    /// rename removes the staged file: nothing of the old log changed.
    async fn stage(&self, index: u64, entry: &[u8]) -> Result<(), StorageError> {
        let disk = &self.inner.disk;
        let staged = self.dir().join(staged_file_name(index));
        let committed = self.dir().join(committed_file_name(index));
        // A staged file left by an attempt whose cleanup failed would keep its bytes past
        // this entry's.
        let _ = disk.remove_file(&staged).await;
        let mut written = self.write_staged(&staged_file_name(index), entry).await;
        if written.is_ok() {
            written = disk
                .rename(&staged, &committed)
                .await
                .map_err(|e| StorageError::io("committing a replacement of the log", e));
        }
        if written.is_err() {
            let _ = disk.remove_file(&staged).await;
        }
        written
    }

    /// Writes `entry` into a new file `name`, allocated and padded as a segment, and
    /// fdatasyncs it.
    async fn write_staged(&self, name: &str, entry: &[u8]) -> Result<(), StorageError> {
        let (allocate_bytes, chunk_bytes) = {
            let config = &self.state().config;
            let step_bytes = step_min_bytes(config.preallocate_step_bytes);
            (
                target_bytes(entry.len() as u64, step_bytes),
                config.write_chunk_bytes,
            )
        };
        let file = self.create_data_file(name, allocate_bytes).await?;
        // The appender pads the last page with zeros, as the active segment's writes are.
        let mut appender = Appender::new(0, &[], chunk_bytes);
        appender.append(&file, entry);
        for (position, buffer) in appender.take_writes(&file).writes {
            file.write_at(buffer, position)
                .await
                .map_err(|e| StorageError::io("writing a replacement entry", e))?;
        }
        file.fdatasync()
            .await
            .map_err(|e| StorageError::io("fdatasync of a replacement entry", e))
    }

    /// Steps 4 and 5: the committed steps on disk, then the new state in memory.
    async fn install(&self, index: u64) -> Result<(), StorageError> {
        let disk = &self.inner.disk;
        let replaced = replacement_commit::finish(disk, self.dir(), index).await?;
        let config = self.state().config.clone();
        let state = open_replaced(disk, self.dir(), &replaced, config, &self.inner.clock).await?;
        let old_files = self.swap_in(state);
        for file in old_files.iter().filter(|file| Rc::strong_count(file) == 1) {
            empty_before_close(&**file, self.dir()).await;
        }
        self.inner.used.set(true);
        self.inner.progress.notify_all();
        Ok(())
    }

    /// Puts the rebuilt state in place of the old one, keeping what belongs to the handle
    /// rather than to the log's contents (the tail cache's place in its shard's budget,
    /// emptied). Returns the old segments' open files.
    fn swap_in(&self, mut state: State<D::File>) -> Vec<Rc<D::File>> {
        let mut guard = self.state_mut();
        // The gates are held and everything appended was durable before the commit: no
        // write round or fdatasync of the old log is in flight to land on the new one.
        assert!(
            guard.unwritten_bytes() == 0
                && !guard.sync_in_flight
                && guard.durable_offset == guard.next_offset,
            "replacing a log with {} bytes unwritten, an fdatasync in flight: {}, durable {} of {}",
            guard.unwritten_bytes(),
            guard.sync_in_flight,
            guard.durable_offset,
            guard.next_offset
        );
        std::mem::swap(&mut state.cache, &mut guard.cache);
        state.cache.clear();
        let old = std::mem::replace(&mut *guard, state);
        drop(guard);
        // What the cleaner knew of the old log: its state file is gone too.
        *self.inner.cleaner_state.borrow_mut() = None;
        old.segments()
            .filter_map(|segment| segment.file.clone())
            .collect()
    }
}
