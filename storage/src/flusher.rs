//! The flusher: one background task per log that owns every data write and fdatasync.
//!
//! Each write round takes all buffered appends (one write per buffer, issued together),
//! waits for them and advances the high watermark. Then, if anyone wants durability (or the
//! flush policy says so) and no fdatasync is in flight, it starts one in its own task: it
//! covers every write completed before it was issued (group commit) and the durable offset
//! moves to exactly that point when it returns. Write rounds go on while it runs, so acks=1
//! producers never wait behind a slow fdatasync; at most one fdatasync is in flight, and the
//! next one starts when it ends if more was written meanwhile. A failed write or fdatasync
//! fences the log: the durable offset never moves again, so no acknowledgement can follow.
//!
//! The task holds only a weak reference between rounds; when the last handle is dropped it
//! wakes and exits. It is started by the first [`wake`] and exits after [`FLUSHER_IDLE_EXIT`]
//! with nothing to do (nothing unwritten, no fdatasync wanted or in flight, no interval sync
//! pending), so a partition nobody writes to holds no task; the next `wake` starts one again.

use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::time::Duration;

use futures::future::{join_all, select, Either};

use crate::clock::Sleep;
use crate::config::FlushPolicy;
use crate::error::StorageError;
use crate::io::{Disk, DiskFile};
use crate::meta::{LogCheckpoint, MetaKind};
use crate::segment::CHECKPOINT_FILE;
use crate::signal::Signal;
use crate::state::{Inner, PartitionLog, State};

enum Work {
    Write,
    Sync,
    /// Nothing now; an interval policy may want a sync after this long.
    Idle(Option<Duration>),
    Stop,
}

/// How long a flusher with nothing to do waits before it exits. Long enough that a partition
/// written at any steady rate keeps its task (a spawn per produce would cost an allocation on
/// the hot path), short enough that idle partitions hold none.
pub const FLUSHER_IDLE_EXIT: Duration = Duration::from_secs(10);

/// Tells the log's flusher there is work (data to write, a durability request, a close or a
/// fence), starting the task when none runs.
pub(crate) fn wake<D: Disk>(inner: &Rc<Inner<D>>) {
    if inner.flusher_running.get() {
        inner.flusher_wake.notify_all();
        return;
    }
    inner.flusher_running.set(true);
    glommio::spawn_local(run(Rc::downgrade(inner), inner.flusher_wake.clone())).detach();
}

async fn run<D: Disk>(weak: Weak<Inner<D>>, wake: Rc<Signal>) {
    // When the flusher last had work, and the timer that ends it once idle for
    // `FLUSHER_IDLE_EXIT` since then. The timer outlives the waits it spans, so a busy log
    // arms at most one per period rather than one per write round.
    let mut busy_at = None;
    let mut exit_timer: Option<Pin<Box<Sleep>>> = None;
    loop {
        let woken = wake.wait();
        let Some(inner) = weak.upgrade() else { return };
        // Decided and acted on with no await in between: a `wake` after this sees the flag
        // cleared and starts a new task, so no work is left without a flusher.
        let work = next_work(&inner);
        if matches!(work, Work::Write | Work::Sync) {
            busy_at = Some(inner.clock.now());
        }
        match work {
            Work::Stop => {
                inner.flusher_running.set(false);
                return;
            }
            Work::Write => {
                if let Err(error) = round(&inner).await {
                    fence(&inner, error);
                }
            }
            Work::Sync => start_sync_if_wanted(&inner),
            Work::Idle(Some(sync_after)) => {
                let sleep = inner.clock.sleep(sync_after);
                drop(inner);
                if let Either::Right(_) = select(woken, sleep).await {
                    request_interval_sync(&weak);
                }
            }
            Work::Idle(None) => {
                let timer = exit_timer
                    .get_or_insert_with(|| Box::pin(inner.clock.sleep(FLUSHER_IDLE_EXIT)));
                drop(inner);
                if let Either::Right(_) = select(woken, timer.as_mut()).await {
                    exit_timer = None;
                    let Some(inner) = weak.upgrade() else { return };
                    let idle_long_enough = busy_at.is_none_or(|at| {
                        inner.clock.now().saturating_duration_since(at) >= FLUSHER_IDLE_EXIT
                    });
                    if idle_long_enough && matches!(next_work(&inner), Work::Idle(None)) {
                        inner.flusher_running.set(false);
                        return;
                    }
                }
            }
        }
    }
}

fn next_work<D: Disk>(inner: &Inner<D>) -> Work {
    let state = inner.state.borrow();
    if state.fenced.is_some() || (state.closed && state.unwritten_bytes() == 0) {
        return Work::Stop;
    }
    if state.unwritten_bytes() > 0 {
        return Work::Write;
    }
    if state.sync_in_flight {
        return Work::Idle(None); // the fdatasync task wakes the flusher when it ends
    }
    if sync_wanted(&state) {
        return Work::Sync;
    }
    let unsynced = state.durable_offset < state.written_offset;
    match state.config.flush {
        FlushPolicy::IntervalMs(interval_ms) if unsynced => {
            let due_ms = state.last_sync_ms + interval_ms as i64;
            let wait_ms = (due_ms - inner.clock.now_ms()).max(0) as u64;
            Work::Idle(Some(Duration::from_millis(wait_ms)))
        }
        _ => Work::Idle(None),
    }
}

/// Written data that someone (or the flush policy) wants durable.
fn sync_wanted<F: DiskFile>(state: &State<F>) -> bool {
    state.durable_offset < state.written_offset
        && (state.durable_wanted > state.durable_offset
            || state.config.flush == FlushPolicy::Always)
}

fn request_interval_sync<D: Disk>(weak: &Weak<Inner<D>>) {
    if let Some(inner) = weak.upgrade() {
        let mut state = inner.state.borrow_mut();
        state.durable_wanted = state.durable_wanted.max(state.written_offset);
    }
}

/// One write round, then an fdatasync started if one is wanted and none is in flight.
async fn round<D: Disk>(inner: &Rc<Inner<D>>) -> Result<(), StorageError> {
    let (file, round, round_end_offset) = {
        let mut guard = inner.state.borrow_mut();
        let state = &mut *guard;
        // Unwritten bytes keep the log awake (`dormancy.rs`).
        let file = state.active.file().clone();
        let round = state.appender_mut().take_writes(&*file);
        (file, round, state.next_offset)
    };
    if !round.writes.is_empty() {
        let writes = round
            .writes
            .into_iter()
            .map(|(position, buffer)| file.write_at(buffer, position));
        let results = join_all(writes).await;
        results
            .into_iter()
            .collect::<std::io::Result<Vec<()>>>()
            .map_err(|e| StorageError::io("write", e))?;
    }
    {
        let mut state = inner.state.borrow_mut();
        // A roll first waits until everything is durable, so it never swaps the file under a
        // round in flight: these writes went to the segment that is still active.
        assert!(
            Rc::ptr_eq(&file, state.active.file()),
            "the active segment changed during a write round"
        );
        // Rounds run one at a time, each taking the log end when it starts: the high
        // watermark only grows, and writes complete in offset order.
        assert!(
            round_end_offset >= state.written_offset,
            "a write round would move the high watermark back from {} to {round_end_offset}",
            state.written_offset
        );
        state.appender_mut().mark_written(round.end_bytes);
        state.stats.write_rounds += 1;
        state.written_offset = round_end_offset;
        state.assert_offsets_ordered();
    }
    inner.progress.notify_all();
    start_sync_if_wanted(inner);
    Ok(())
}

/// Starts an fdatasync task covering everything written so far, unless one is in flight
/// or nothing needs it.
fn start_sync_if_wanted<D: Disk>(inner: &Rc<Inner<D>>) {
    let (file, target) = {
        let mut state = inner.state.borrow_mut();
        if state.sync_in_flight || !sync_wanted(&state) {
            return;
        }
        state.sync_in_flight = true;
        let target = SyncTarget {
            segment_base_offset: state.active.base_offset,
            offset: state.written_offset,
            bytes: state.active_appended_bytes() - state.unwritten_bytes(),
        };
        // A dormant log has nothing unsynced (`dormancy.rs`): wanted, the log is awake.
        (state.active.file().clone(), target)
    };
    glommio::spawn_local(sync(inner.clone(), file, target)).detach();
}

/// What one fdatasync makes durable: everything written before it was issued.
struct SyncTarget {
    segment_base_offset: i64,
    offset: i64,
    bytes: u64,
}

async fn sync<D: Disk>(inner: Rc<Inner<D>>, file: Rc<D::File>, target: SyncTarget) {
    let started = inner.clock.now();
    let synced = file.fdatasync().await;
    let latency = inner.clock.now() - started;
    assert!(
        inner.state.borrow().sync_in_flight,
        "at most one fdatasync is in flight, and this one was"
    );
    inner.state.borrow_mut().sync_in_flight = false;
    if let Err(error) = synced {
        fence(&inner, StorageError::io("fdatasync", error));
        return;
    }
    let now_ms = inner.clock.now_ms();
    let checkpoint_due = {
        let mut state = inner.state.borrow_mut();
        // One fdatasync at a time, each covering the high watermark as it was when it started:
        // they complete in offset order, and the durable offset never passes what was written.
        assert!(
            target.offset >= state.durable_offset && target.offset <= state.written_offset,
            "an fdatasync covering up to {} completed with durable {} and high watermark {}",
            target.offset,
            state.durable_offset,
            state.written_offset
        );
        state.durable_offset = state.durable_offset.max(target.offset);
        state.assert_offsets_ordered();
        state.stats.fdatasyncs += 1;
        if state.active.base_offset == target.segment_base_offset {
            state.active_durable_bytes = state.active_durable_bytes.max(target.bytes);
        }
        state.last_sync_ms = now_ms;
        now_ms - state.last_checkpoint_ms >= state.config.checkpoint_interval_ms as i64
    };
    if let Some(observer) = inner.fdatasync_observer.borrow().as_ref() {
        observer(latency);
    }
    inner.progress.notify_all();
    wake(&inner); // more may have been written meanwhile
    if checkpoint_due {
        let log = PartitionLog {
            inner: inner.clone(),
        };
        glommio::spawn_local(async move { log.write_checkpoint().await }).detach();
    }
}

/// Stops the log from accepting or acknowledging anything more.
pub(crate) fn fence<D: Disk>(inner: &Rc<Inner<D>>, error: StorageError) {
    tracing::error!(dir = %inner.dir.display(), %error, "partition log fenced: pending and later appends fail");
    let mut state = inner.state.borrow_mut();
    if state.fenced.is_none() {
        state.fenced = Some(error);
    }
    drop(state);
    inner.progress.notify_all();
    wake(inner);
}

impl<D: Disk> PartitionLog<D> {
    /// Rewrites the recovery checkpoint from the current durable state. Failures are logged,
    /// not fatal: an older checkpoint only means recovery scans more.
    pub(crate) async fn write_checkpoint(&self) -> Result<(), StorageError> {
        let Ok(_permit) = self.inner.checkpoint_gate.acquire_permit(1).await else {
            return Ok(());
        };
        let checkpoint = {
            let mut state = self.state_mut();
            state.last_checkpoint_ms = self.inner.clock.now_ms();
            LogCheckpoint {
                log_start_offset: state.log_start_offset,
                segment_base_offset: state.active.base_offset,
                durable_bytes: state.active_durable_bytes,
                next_offset: state.durable_offset,
                segment_base_index: state.active.index.base_index(),
            }
        };
        let contents = crate::meta::encode_checkpoint(MetaKind::RecoveryCheckpoint, &checkpoint);
        let path = self.inner.dir.join(CHECKPOINT_FILE);
        self.inner.disk.write_file_atomically(&path, &contents).await.map_err(|error| {
            tracing::warn!(path = %path.display(), %error, "could not write the recovery checkpoint");
            StorageError::io("checkpoint", error)
        })
    }
}
