//! TEMPORARY in-memory stand-in for `ringfeed-storage`, with the exact API of the storage
//! contract, so the broker can be wired and tested before the storage crate lands. It keeps
//! nothing on disk. Replace the body of this module with `pub use ringfeed_storage::*;`
//! once the crate exports the contract; nothing else in the broker changes.
#![allow(clippy::unused_async, dead_code)]

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FlushPolicy {
    Always,
    IntervalMs(u64),
    #[default]
    OnDemand,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub segment_bytes_max: u64,
    pub segment_age_max_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub retention_ms: Option<u64>,
    pub batch_bytes_max: usize,
    pub index_interval_bytes: u32,
    pub preallocate_step_bytes: u64,
    pub tail_cache_bytes_max: usize,
    pub flush: FlushPolicy,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes_max: 1 << 30,
            segment_age_max_ms: Some(604_800_000),
            retention_bytes: None,
            retention_ms: Some(604_800_000),
            batch_bytes_max: 1_048_588,
            index_interval_bytes: 4096,
            preallocate_step_bytes: 64 << 20,
            tail_cache_bytes_max: 16 << 20,
            flush: FlushPolicy::OnDemand,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("corrupt batch: {reason}")]
    Corrupt { reason: String },
    #[error("invalid record: {reason}")]
    InvalidRecord { reason: String },
    #[error("batch of {size} bytes exceeds {max}")]
    TooLarge { size: usize, max: usize },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("offset {offset} out of range [{log_start_offset}, {high_watermark}]")]
    OffsetOutOfRange { offset: i64, log_start_offset: i64, high_watermark: i64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Debug, Default)]
pub struct RecoveryReport {}

#[derive(Debug, Clone, Copy)]
pub struct AppendOutcome {
    pub base_offset: i64,
    pub last_offset: i64,
}

struct MemoryLogState {
    batches: Vec<(i64, i64, Bytes)>,
    log_start_offset: i64,
    next_offset: i64,
    waiters: Vec<oneshot::Sender<()>>,
    config: LogConfig,
}

#[derive(Clone)]
pub struct PartitionLog {
    state: Rc<RefCell<MemoryLogState>>,
}

impl PartitionLog {
    pub async fn open(_dir: &Path, config: LogConfig) -> Result<(Self, RecoveryReport), StorageError> {
        let state = MemoryLogState { batches: Vec::new(), log_start_offset: 0, next_offset: 0, waiters: Vec::new(), config };
        Ok((Self { state: Rc::new(RefCell::new(state)) }, RecoveryReport::default()))
    }

    pub async fn append(&self, batch: Bytes) -> Result<AppendOutcome, AppendError> {
        let mut state = self.state.borrow_mut();
        if batch.len() > state.config.batch_bytes_max {
            return Err(AppendError::TooLarge { size: batch.len(), max: state.config.batch_bytes_max });
        }
        if batch.len() < 61 || batch[16] != 2 {
            return Err(AppendError::Corrupt { reason: "not a v2 batch".into() });
        }
        let last_delta = i64::from(i32::from_be_bytes(batch[23..27].try_into().unwrap()));
        let base = state.next_offset;
        let mut owned = BytesMut::from(&batch[..]);
        owned[0..8].copy_from_slice(&base.to_be_bytes());
        state.batches.push((base, base + last_delta, owned.freeze()));
        state.next_offset = base + last_delta + 1;
        for waiter in state.waiters.drain(..) {
            let _ = waiter.send(());
        }
        Ok(AppendOutcome { base_offset: base, last_offset: base + last_delta })
    }

    pub async fn wait_written(&self, _last_offset: i64) -> Result<(), StorageError> { Ok(()) }
    pub async fn wait_durable(&self, _last_offset: i64) -> Result<(), StorageError> { Ok(()) }

    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<Vec<Bytes>, ReadError> {
        let state = self.state.borrow();
        if offset < state.log_start_offset || offset > state.next_offset {
            return Err(ReadError::OffsetOutOfRange { offset, log_start_offset: state.log_start_offset, high_watermark: state.next_offset });
        }
        let mut out = Vec::new();
        let mut total = 0;
        for (_, last, bytes) in &state.batches {
            if *last < offset { continue; }
            if !out.is_empty() && total + bytes.len() > max_bytes { break; }
            total += bytes.len();
            out.push(bytes.clone());
        }
        Ok(out)
    }

    pub fn log_start_offset(&self) -> i64 { self.state.borrow().log_start_offset }
    pub fn high_watermark(&self) -> i64 { self.state.borrow().next_offset }
    pub fn log_end_offset(&self) -> i64 { self.state.borrow().next_offset }

    pub fn wait_for_data(&self, offset: i64) -> impl std::future::Future<Output = ()> {
        let receiver = if self.high_watermark() > offset {
            None
        } else {
            let (sender, receiver) = oneshot::channel();
            self.state.borrow_mut().waiters.push(sender);
            Some(receiver)
        };
        async move {
            if let Some(receiver) = receiver {
                let _ = receiver.await;
            }
        }
    }

    pub async fn offset_for_timestamp(&self, ts_ms: i64) -> Result<Option<(i64, i64)>, StorageError> {
        let state = self.state.borrow();
        for (base, _, bytes) in &state.batches {
            let max_ts = i64::from_be_bytes(bytes[35..43].try_into().unwrap());
            if max_ts >= ts_ms {
                return Ok(Some((*base, max_ts)));
            }
        }
        Ok(None)
    }

    pub async fn delete_records_before(&self, offset: i64) -> Result<i64, ReadError> {
        let mut state = self.state.borrow_mut();
        if offset > state.next_offset {
            return Err(ReadError::OffsetOutOfRange { offset, log_start_offset: state.log_start_offset, high_watermark: state.next_offset });
        }
        state.log_start_offset = state.log_start_offset.max(offset);
        let start = state.log_start_offset;
        state.batches.retain(|(_, last, _)| *last >= start);
        Ok(start)
    }

    pub async fn enforce_retention(&self) -> Result<usize, StorageError> { Ok(0) }
    pub fn set_config(&self, config: LogConfig) { self.state.borrow_mut().config = config; }
    pub fn size_bytes(&self) -> u64 { self.state.borrow().batches.iter().map(|b| b.2.len() as u64).sum() }
    pub async fn close(&self) -> Result<(), StorageError> {
        for waiter in self.state.borrow_mut().waiters.drain(..) {
            let _ = waiter.send(());
        }
        Ok(())
    }
    pub async fn remove(log: PartitionLog) { let _ = log.close().await; }
}
