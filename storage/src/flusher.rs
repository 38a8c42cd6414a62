//! The flusher: one background task per log that owns every data write and fdatasync.
//!
//! Each round takes all buffered appends (one write per buffer, issued together), waits for
//! them, advances the high watermark, and then, if anyone wants durability (or the flush
//! policy says so), runs one fdatasync that covers every append the round wrote: group
//! commit. Appends that arrive during a round wait for the next one. A failed write or
//! fdatasync fences the log: the durable offset never moves again, so no acknowledgement
//! can follow the failure.
//!
//! The task holds only a weak reference between rounds; when the last handle is dropped it
//! wakes and exits.

use std::rc::{Rc, Weak};
use std::time::Duration;

use futures::future::{join_all, select, Either};

use crate::config::FlushPolicy;
use crate::error::StorageError;
use crate::io::{Disk, DiskFile};
use crate::log::{Inner, PartitionLog};
use crate::meta::{LogCheckpoint, MetaKind};
use crate::segment::CHECKPOINT_FILE;
use crate::signal::Signal;

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
            Work::Write | Work::Sync => {
                if let Err(error) = round(&inner).await {
                    fence(&inner, error);
                }
            }
            Work::Idle(sync_after) => {
                drop(inner);
                match sync_after {
                    None => woken.await,
                    Some(delay) => {
                        if let Either::Right(_) =
                            select(woken, Box::pin(glommio::timer::sleep(delay))).await
                        {
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
    let unsynced = state.durable_offset < state.written_offset;
    if unsynced
        && (state.durable_wanted > state.durable_offset
            || state.config.flush == FlushPolicy::Always)
    {
        return Work::Sync;
    }
    match state.config.flush {
        FlushPolicy::IntervalMs(interval_ms) if unsynced => {
            let due_ms = state.last_sync_ms + interval_ms as i64;
            let wait_ms = (due_ms - inner.clock.now_ms()).max(0) as u64;
            Work::Idle(Some(Duration::from_millis(wait_ms)))
        }
        _ => Work::Idle(None),
    }
}

fn request_interval_sync<D: Disk>(weak: &Weak<Inner<D>>) {
    if let Some(inner) = weak.upgrade() {
        let mut state = inner.state.borrow_mut();
        state.durable_wanted = state.durable_wanted.max(state.written_offset);
    }
}

/// One write round and, when wanted, the fdatasync that follows it.
async fn round<D: Disk>(inner: &Rc<Inner<D>>) -> Result<(), StorageError> {
    let (file, round, round_end_offset) = {
        let mut guard = inner.state.borrow_mut();
        let state = &mut *guard;
        let file = state.active.file.clone();
        let round = state.appender.take_writes(&*file);
        (file, round, state.next_offset)
    };
    if !round.writes.is_empty() {
        let results = join_all(
            round
                .writes
                .into_iter()
                .map(|(position, buffer)| file.write_at(buffer, position)),
        )
        .await;
        results
            .into_iter()
            .collect::<std::io::Result<Vec<()>>>()
            .map_err(|e| StorageError::io("write", e))?;
    }
    let sync_target = {
        let mut state = inner.state.borrow_mut();
        state.appender.mark_written(round.end_bytes);
        state.stats.write_rounds += 1;
        state.written_offset = round_end_offset;
        let unsynced = state.durable_offset < state.written_offset;
        let wanted = state.durable_wanted > state.durable_offset
            || state.config.flush == FlushPolicy::Always;
        (unsynced && wanted).then_some((state.written_offset, round.end_bytes))
    };
    inner.progress.notify_all();
    if let Some((durable_offset, durable_bytes)) = sync_target {
        file.fdatasync()
            .await
            .map_err(|e| StorageError::io("fdatasync", e))?;
        let now_ms = inner.clock.now_ms();
        let checkpoint_due = {
            let mut state = inner.state.borrow_mut();
            state.durable_offset = durable_offset;
            state.stats.fdatasyncs += 1;
            state.active_durable_bytes = durable_bytes;
            state.last_sync_ms = now_ms;
            now_ms - state.last_checkpoint_ms >= state.config.checkpoint_interval_ms as i64
        };
        inner.progress.notify_all();
        if checkpoint_due {
            let log = PartitionLog {
                inner: inner.clone(),
            };
            glommio::spawn_local(async move { log.write_checkpoint().await }).detach();
        }
    }
    Ok(())
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
