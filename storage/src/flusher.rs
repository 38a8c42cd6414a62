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
//! wakes and exits.

use std::rc::{Rc, Weak};
use std::time::Duration;

use futures::future::{join_all, select, Either};

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

pub(crate) fn spawn<D: Disk>(inner: Weak<Inner<D>>, wake: Rc<Signal>) {
    glommio::spawn_local(run(inner, wake)).detach();
}

async fn run<D: Disk>(weak: Weak<Inner<D>>, wake: Rc<Signal>) {
    loop {
        let woken = wake.wait();
        let Some(inner) = weak.upgrade() else { return };
        match next_work(&inner) {
            Work::Stop => return,
            Work::Write => {
                if let Err(error) = round(&inner).await {
                    fence(&inner, error);
                }
            }
            Work::Sync => start_sync_if_wanted(&inner),
            Work::Idle(sync_after) => {
                let sleep = sync_after.map(|delay| inner.clock.sleep(delay));
                drop(inner);
                match sleep {
                    None => woken.await,
                    Some(sleep) => {
                        if let Either::Right(_) = select(woken, sleep).await {
                            request_interval_sync(&weak);
                        }
                    }
                }
            }
        }
    }
}

fn next_work<D: Disk>(inner: &Inner<D>) -> Work {
    let state = inner.state.borrow();
    if state.fenced.is_some() || (state.closed && state.appender.unwritten_bytes() == 0) {
        return Work::Stop;
    }
    if state.appender.unwritten_bytes() > 0 {
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
        let file = state.active.file.clone();
        let round = state.appender.take_writes();
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
            Rc::ptr_eq(&file, &state.active.file),
            "the active segment changed during a write round"
        );
        // Rounds run one at a time, each taking the log end when it starts: the high
        // watermark only grows, and writes complete in offset order.
        assert!(
            round_end_offset >= state.written_offset,
            "a write round would move the high watermark back from {} to {round_end_offset}",
            state.written_offset
        );
        state.appender.mark_written(round.end_bytes);
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
            bytes: state.appender.appended_bytes() - state.appender.unwritten_bytes(),
        };
        (state.active.file.clone(), target)
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
    inner.flusher_wake.notify_all(); // more may have been written meanwhile
    if checkpoint_due {
        let log = PartitionLog {
            inner: inner.clone(),
        };
        glommio::spawn_local(async move { log.write_checkpoint().await }).detach();
    }
}

/// Stops the log from accepting or acknowledging anything more.
pub(crate) fn fence<D: Disk>(inner: &Inner<D>, error: StorageError) {
    tracing::error!(dir = %inner.dir.display(), %error, "partition log fenced: pending and later appends fail");
    let mut state = inner.state.borrow_mut();
    if state.fenced.is_none() {
        state.fenced = Some(error);
    }
    drop(state);
    inner.progress.notify_all();
    inner.flusher_wake.notify_all();
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
