//! The dormant form of a log: what an idle partition gives back, and how it comes back.
//!
//! An open log holds, besides its offsets and indexes, things only an active log needs: an
//! open file per segment (a file descriptor and glommio's `DmaFile` with its own copy of the
//! path), the appender with its copy of the last partial page, the tail cache, and the spare
//! capacity of the active index's vectors. A log nobody has used for a while (the caller's
//! `idle_after`, checked by [`PartitionLog::doze_if_idle`]) gives them back: it goes
//! *dormant*. The next operation that needs them wakes it: the files are reopened and the
//! appender rebuilt from the tail page on disk, transparently to the caller.
//!
//! Invariant: a dormant log has written and made durable everything appended
//! (`unwritten == 0`, `durable == written == log end`) and has no write, fdatasync, append,
//! roll, truncation, cleaning pass or retention pass in flight. So nothing acknowledged
//! depends on its memory; its files on disk hold it all, exactly as after a clean
//! `fdatasync`. A crash while dormant is recovered like any other crash (the checkpoint and
//! files are those of an idle log).
//!
//! Concurrency (one shard, tasks interleaving at awaits):
//! - Going dormant is synchronous (no await), and only when both gates are free (no append,
//!   roll, truncation, close, removal, cleaning or retention pass holds them) and no
//!   operation holds an [`InUse`] guard. A reader still holding a segment's file (an `Rc`
//!   taken before) keeps that file open until it is done.
//! - Waking takes the append gate, then the segments gate (the order everything else takes
//!   them in), opens every segment file and reads the tail page, then installs them with no
//!   await in between. Holding both gates, nothing adds, removes or replaces a segment
//!   meanwhile; a second waker waits on the gates and finds the log awake.
//! - An operation that needs the awake parts takes an [`InUse`] guard with no await between
//!   the wake and the guard, and keeps it for as long as it needs them.
//! - What needs no file stays as it is on a dormant log: offsets, waits for data or
//!   durability (long polls), reads at the log end, retention and `DeleteRecords` (segments
//!   are unlinked without being opened), close (index, checkpoint and marker are written
//!   from memory) and removal.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use crate::appender::Appender;
use crate::error::StorageError;
use crate::io::{align_down, Disk, DiskFile};
use crate::segment::segment_file_name;
use crate::state::PartitionLog;

/// What [`PartitionLog::doze_if_idle`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doze {
    /// The log went dormant now.
    Dozed,
    /// It already was.
    Dormant,
    /// It was used since the last check, or not for long enough yet.
    Active,
    /// Idle long enough, but something runs on it (an append, a read, a pass, a write
    /// round or fdatasync), or it is closed or fenced.
    Busy,
    /// Idle long enough with written data not yet durable: an fdatasync was requested, and
    /// a later check finds it done.
    Syncing,
}

/// Keeps the log awake while an operation uses its files or appender (see the module docs).
pub(crate) struct InUse<'a> {
    in_use: &'a Cell<u32>,
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.in_use.set(self.in_use.get() - 1);
    }
}

impl<D: Disk> PartitionLog<D> {
    /// Whether the log is dormant now (its files closed; see `dormancy.rs`).
    pub fn is_dormant(&self) -> bool {
        self.state().is_dormant()
    }

    /// Puts the log to sleep if nothing has used it for `idle_after` (on the log's clock)
    /// and nothing runs on it. Synchronous and cheap when there is nothing to do: the
    /// broker calls it for every partition of a shard now and then. A log is "used" by
    /// appends, reads that reach the cache or the disk, truncation and cleaning; a read at
    /// the log end or a wait for data (a long poll) is not a use, so a consumer polling an
    /// idle partition lets it sleep.
    pub fn doze_if_idle(&self, idle_after: Duration) -> Doze {
        let inner = &self.inner;
        let now = inner.clock.now();
        if self.is_dormant() {
            return Doze::Dormant;
        }
        if inner.used.replace(false) {
            inner.idle_since.set(now);
            return Doze::Active;
        }
        if now.saturating_duration_since(inner.idle_since.get()) < idle_after {
            return Doze::Active;
        }
        if inner.in_use.get() > 0
            || inner.append_gate.available() == 0
            || inner.segments_gate.available() == 0
        {
            return Doze::Busy;
        }
        let mut guard = self.state_mut();
        let state = &mut *guard;
        if state.fenced.is_some()
            || state.closed
            || state.unwritten_bytes() > 0
            || state.sync_in_flight
        {
            return Doze::Busy;
        }
        if state.durable_offset < state.written_offset {
            // Dormant, the log holds no file to fdatasync: everything becomes durable first.
            state.durable_wanted = state.durable_wanted.max(state.written_offset);
            drop(guard);
            crate::flusher::wake(inner);
            return Doze::Syncing;
        }
        assert!(
            state.written_offset == state.next_offset,
            "nothing unwritten, yet the high watermark {} is below the log end {}",
            state.written_offset,
            state.next_offset
        );
        // Files a reader still holds close when it is done with them.
        for segment in state.sealed.values_mut() {
            segment.file = None;
        }
        state.active.file = None;
        state.appender = None;
        state.cache.release();
        if let crate::index::SegmentIndex::Building(index) = &mut state.active.index {
            index.shrink_to_fit();
        }
        tracing::debug!(dir = %inner.dir.display(), "partition log dormant");
        Doze::Dozed
    }

    /// Wakes the log if it is dormant and keeps it awake while the guard lives. Takes the
    /// append and segments gates to wake it: the caller may hold neither.
    pub(crate) async fn awake(&self) -> Result<InUse<'_>, StorageError> {
        if self.is_dormant() {
            let _append = self
                .inner
                .append_gate
                .acquire_permit(1)
                .await
                .map_err(|_| StorageError::Closed)?;
            let _segments = self.segments_turn().await?;
            self.wake_holding_gates().await?;
        }
        Ok(self.in_use())
    }

    /// [`Self::awake`] for a caller holding the append gate (an append).
    pub(crate) async fn awake_holding_append_gate(&self) -> Result<InUse<'_>, StorageError> {
        if self.is_dormant() {
            let _segments = self.segments_turn().await?;
            self.wake_holding_gates().await?;
        }
        Ok(self.in_use())
    }

    /// A guard for an awake log (no await between the check and the guard).
    pub(crate) fn in_use(&self) -> InUse<'_> {
        assert!(!self.is_dormant(), "only an awake log is put in use");
        let inner = &self.inner;
        inner.used.set(true);
        inner.in_use.set(inner.in_use.get() + 1);
        InUse {
            in_use: &inner.in_use,
        }
    }

    /// Reopens a dormant log's files and rebuilds its appender. The caller holds both gates,
    /// so the segments stay as they are until this returns. An error (too many open files,
    /// say) leaves the log dormant and intact: the operation that woke it fails, the next
    /// one tries again.
    pub(crate) async fn wake_holding_gates(&self) -> Result<(), StorageError> {
        let (bases, segment_bytes) = {
            let state = self.state();
            if !state.is_dormant() {
                return Ok(());
            }
            state.check_usable()?;
            let bases: Vec<i64> = state.segments().map(|s| s.base_offset).collect();
            (bases, state.active.bytes())
        };
        let disk = &self.inner.disk;
        let mut files = Vec::with_capacity(bases.len());
        for &base in &bases {
            let file = disk
                .open(&self.dir().join(segment_file_name(base)), false)
                .await
                .map_err(|e| StorageError::io("reopening a dormant log's segment", e))?;
            files.push(Rc::new(file));
        }
        let tail_start = align_down(segment_bytes);
        let active_file = files.last().expect("a log has an active segment");
        let tail_page = active_file
            .read_at(tail_start, (segment_bytes - tail_start) as usize)
            .await
            .map_err(|e| StorageError::io("reading a dormant log's tail page", e))?;
        if tail_page.len() as u64 != segment_bytes - tail_start {
            return Err(StorageError::io(
                "reading a dormant log's tail page",
                std::io::Error::other(format!(
                    "the active segment ends before byte {segment_bytes} of its data"
                )),
            ));
        }
        let mut guard = self.state_mut();
        let state = &mut *guard;
        state.check_usable()?;
        // The gates kept every segment in place while the files were opened.
        let present: Vec<i64> = state.segments().map(|s| s.base_offset).collect();
        assert_eq!(present, bases, "the segments changed under a wake");
        let chunk_bytes = state.config.write_chunk_bytes;
        for (segment, file) in state
            .sealed
            .values_mut()
            .chain(std::iter::once(&mut state.active))
            .zip(files)
        {
            segment.file = Some(file);
        }
        state.appender = Some(Box::new(Appender::new(
            segment_bytes,
            &tail_page,
            chunk_bytes,
        )));
        drop(guard);
        tracing::debug!(dir = %self.dir().display(), segments = bases.len(), "partition log awake");
        Ok(())
    }
}
