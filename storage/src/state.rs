//! The state a partition log shares between its parts: the handle ([`PartitionLog`]), what
//! the handle points to (`Inner`) and the mutable state behind it (`State`). `log.rs`, the
//! flusher and recovery all build on these, and none of them on each other's types, so the
//! dependencies point one way. The ownership and concurrency contract is in `log.rs`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use glommio::sync::Semaphore;

use crate::appender::Appender;
use crate::cache::TailCache;
use crate::clock::Clock;
use crate::config::LogConfig;
use crate::error::StorageError;
use crate::io::{Disk, DiskFile, DmaDisk};
use crate::segment::Segment;
use crate::signal::Signal;
/// Counters of what the log has done since it was opened (for metrics and benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub batches_appended: u64,
    pub bytes_appended: u64,
    pub write_rounds: u64,
    pub fdatasyncs: u64,
    /// Bytes of segments the cleaner rewrote (their size before).
    pub bytes_cleaned: u64,
}

/// Receives the latency of every fdatasync a log completes, on the log's own shard, between
/// awaits. The broker hands one to every log of a shard so they fill one shard-local
/// histogram; nothing crosses threads.
pub type FdatasyncObserver = Rc<dyn Fn(Duration)>;

/// The log of one partition. See the module docs of `log.rs` for the ownership and
/// concurrency contract.
pub struct PartitionLog<D: Disk = DmaDisk> {
    pub(crate) inner: Rc<Inner<D>>,
}

impl<D: Disk> PartitionLog<D> {
    /// Takes the segments gate (module docs of `cleaner.rs`): held while a cleaning pass
    /// runs or segments are removed or replaced, so none disappears under a pass.
    pub(crate) async fn segments_turn(
        &self,
    ) -> Result<glommio::sync::Permit<'_>, crate::StorageError> {
        self.inner
            .segments_gate
            .acquire_permit(1)
            .await
            .map_err(|_| crate::StorageError::Closed)
    }
}

impl<D: Disk> Clone for PartitionLog<D> {
    fn clone(&self) -> Self {
        PartitionLog {
            inner: self.inner.clone(),
        }
    }
}

pub(crate) struct Inner<D: Disk> {
    pub disk: D,
    pub dir: PathBuf,
    pub clock: Clock,
    pub state: RefCell<State<D::File>>,
    /// Serializes appends (and the rolls and preallocations they trigger); not first-come,
    /// first-served (see the module docs of `log.rs`).
    pub append_gate: Semaphore,
    /// Serializes writers of the checkpoint file, which share one temporary path.
    pub checkpoint_gate: Semaphore,
    /// Wakes the flusher: there is data to write or a durability request. Shared with the
    /// flusher outside `Inner` so dropping the last handle can stop it. Signalled only
    /// through `flusher::wake`, which starts the task when none runs.
    pub flusher_wake: Rc<Signal>,
    /// Whether a flusher task exists for this log. It exits after `FLUSHER_IDLE_EXIT` with
    /// nothing to do, so an idle partition holds no task (about 1.2 KiB of future and task
    /// each, which dominated the memory of thousands of idle partitions).
    pub flusher_running: Cell<bool>,
    /// Fires whenever the high watermark, durable offset or fenced state changes.
    pub progress: Signal,
    /// Held by the cleaner for a whole pass, and by whatever removes or replaces segments
    /// (retention, truncation, close, removal), so no segment disappears under a pass.
    pub segments_gate: Semaphore,
    /// The cleaner's state as last read or written (`None`: read it from its file). Boxed:
    /// only compacted partitions ever fill it, and inline it cost every log 64 bytes.
    pub cleaner_state: RefCell<Option<Box<crate::meta::CleanerState>>>,
    /// Set when close or removal begins: a cleaning pass stops at its next batch.
    pub stopping: Cell<bool>,
    /// See [`PartitionLog::observe_fdatasync_latency`].
    pub fdatasync_observer: RefCell<Option<FdatasyncObserver>>,
    /// Operations in flight that need the log awake (`dormancy.rs`): while any runs, the log
    /// does not go dormant.
    pub in_use: Cell<u32>,
    /// Set by every use of the log's awake parts; cleared by the idle check, which then
    /// counts the log idle from that moment (`dormancy.rs`). A flag, so the append path
    /// reads no clock.
    pub used: Cell<bool>,
    /// Since when the idle checks have found the log unused.
    pub idle_since: Cell<std::time::Instant>,
}

impl<D: Disk> Drop for Inner<D> {
    fn drop(&mut self) {
        self.flusher_wake.notify_all();
    }
}

/// Mutable state of one log. Borrowed only between awaits, never across one.
pub(crate) struct State<F: DiskFile> {
    /// Shared with the other partitions of its topic when the caller passes one `Rc` to
    /// them all (the broker does): 8 bytes per log, not 128.
    pub config: Rc<LogConfig>,
    pub sealed: BTreeMap<i64, Segment<F>>,
    pub active: Segment<F>,
    /// The write-behind buffers of the active segment; `None` while the log is dormant
    /// (`dormancy.rs`). Boxed: a dormant log keeps 8 bytes of it, not 136.
    pub appender: Option<Box<Appender<F::Buffer>>>,
    pub active_first_append_ms: Option<i64>,
    pub preallocation: crate::preallocation::Preallocation,
    pub log_start_offset: i64,
    pub next_offset: i64,
    /// The Raft index the next batch gets (`FORMAT.md` § Raft index and term).
    pub next_index: u64,
    /// The term of the last batch (0 for an empty log or one never replicated).
    pub last_term: i32,
    /// Where the log's terms start (see [`crate::meta::LogFormat`]).
    pub terms_from_index: u64,
    pub written_offset: i64,
    pub durable_offset: i64,
    /// Bytes of the active segment covered by the last fdatasync (for the checkpoint).
    pub active_durable_bytes: u64,
    /// The offset (exclusive) some waiter needs durable.
    pub durable_wanted: i64,
    pub last_sync_ms: i64,
    /// An fdatasync task is running (at most one at a time).
    pub sync_in_flight: bool,
    pub last_checkpoint_ms: i64,
    pub fenced: Option<StorageError>,
    pub closed: bool,
    pub cache: TailCache,
    pub stats: LogStats,
}

impl<F: DiskFile> State<F> {
    pub fn check_usable(&self) -> Result<(), StorageError> {
        if let Some(error) = &self.fenced {
            return Err(StorageError::Fenced(Rc::new(error.clone())));
        }
        if self.closed {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    /// Every segment in offset order, the active one last.
    pub(crate) fn segments(&self) -> impl Iterator<Item = &Segment<F>> {
        self.sealed.values().chain(std::iter::once(&self.active))
    }

    /// The segment holding `offset`: the last one whose base is at or below it.
    pub(crate) fn segment_for(&self, offset: i64) -> &Segment<F> {
        if offset >= self.active.base_offset {
            return &self.active;
        }
        self.sealed
            .range(..=offset)
            .next_back()
            .map_or(&self.active, |(_, s)| s)
    }

    /// The order the module docs of `log.rs` promise: log start ≤ high watermark, and
    /// durable offset ≤ high watermark ≤ log end. Every offset moves forward under the append
    /// gate or in the flusher, so a broken order is a bug in this crate, never something read
    /// from disk.
    pub(crate) fn assert_offsets_ordered(&self) {
        assert!(
            self.durable_offset <= self.written_offset && self.written_offset <= self.next_offset,
            "offsets out of order: durable {} high watermark {} log end {}",
            self.durable_offset,
            self.written_offset,
            self.next_offset
        );
        assert!(
            self.log_start_offset <= self.written_offset,
            "log start {} past the high watermark {}",
            self.log_start_offset,
            self.written_offset
        );
    }

    pub(crate) fn segment_end_bytes(&self, segment: &Segment<F>) -> u64 {
        if segment.base_offset == self.active.base_offset {
            self.active_appended_bytes() - self.unwritten_bytes()
        } else {
            segment.bytes()
        }
    }

    /// Whether the log is dormant: its files closed, no appender (`dormancy.rs`).
    pub(crate) fn is_dormant(&self) -> bool {
        self.appender.is_none()
    }

    /// The appender of an awake log. Everything that appends or writes first wakes the log
    /// and keeps it awake (`dormancy.rs`), so a dormant one here is a bug in this crate.
    pub(crate) fn appender_mut(&mut self) -> &mut Appender<F::Buffer> {
        self.appender
            .as_deref_mut()
            .expect("the log is awake while it appends or writes")
    }

    /// Bytes appended to the active segment. A dormant log has written everything it
    /// appended, and its index ends where its data does.
    pub(crate) fn active_appended_bytes(&self) -> u64 {
        self.appender
            .as_ref()
            .map_or_else(|| self.active.bytes(), |appender| appender.appended_bytes())
    }

    /// Appended bytes not yet written (none while dormant).
    pub(crate) fn unwritten_bytes(&self) -> u64 {
        self.appender
            .as_ref()
            .map_or(0, |appender| appender.unwritten_bytes())
    }
}
