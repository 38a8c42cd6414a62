//! The partitions one shard owns, and the work other code asks of them. All partition access
//! in the broker goes through here, whether the request arrived on this shard's connections
//! or over the mesh from another shard.
//!
//! `PartitionTable` is owned by exactly one shard (it holds `!Send` storage handles). Only
//! `Shard::apply_metadata` adds or removes entries, and `PartitionTable::fence` is the one
//! other change (a storage failure takes a partition offline until restart); any number of
//! produce/fetch tasks may use the logs concurrently, under the storage crate's contract
//! per log (appends are applied in call order).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::select;
use uuid::Uuid;

use crate::error_codes as codes;
use crate::log_throttle::LogThrottle;
use crate::metadata::TopicPartition;
use crate::producer_state::{ProducerStates, Refused};
use crate::storage::{AppendError, BatchError, PartitionLog, ReadError};

/// Work on one partition, executed by its owning shard.
#[derive(Debug)]
pub enum PartitionCall {
    /// Append `batches` (whole v2 record batches, in order) and answer once `acks` holds.
    Produce {
        tp: TopicPartition,
        batches: Vec<Bytes>,
        acks: i16,
    },
    /// Whole batches from `offset`, about `max_bytes` (at least one batch when any exists).
    /// `max_bytes` 0 reads nothing: only the offsets are answered (a fetch's probe).
    Fetch {
        tp: TopicPartition,
        offset: i64,
        max_bytes: usize,
    },
    /// Resolve when the high watermark passes `offset`, or after `wait`; `WaitRefused` at
    /// once when the shard has `Limits::shard_fetch_waits_parked_max` waits parked.
    /// Cancelled (over the mesh) when the caller stops waiting.
    WaitForData {
        tp: TopicPartition,
        offset: i64,
        wait: Duration,
    },
    /// Kafka `ListOffsets` semantics: -2 earliest, -1 latest, else first offset at or after the time.
    ListOffsets {
        tp: TopicPartition,
        timestamp_ms: i64,
    },
    /// Move the log start to `offset` (-1 = the high watermark).
    DeleteRecords { tp: TopicPartition, offset: i64 },
}

impl PartitionCall {
    pub fn tp(&self) -> &TopicPartition {
        match self {
            PartitionCall::Produce { tp, .. }
            | PartitionCall::Fetch { tp, .. }
            | PartitionCall::WaitForData { tp, .. }
            | PartitionCall::ListOffsets { tp, .. }
            | PartitionCall::DeleteRecords { tp, .. } => tp,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ProduceOutcome {
    pub error_code: i16,
    pub base_offset: i64,
    pub log_start_offset: i64,
}

#[derive(Debug, Default)]
pub struct FetchOutcome {
    pub error_code: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub batches: Vec<Bytes>,
}

#[derive(Debug, Clone, Copy)]
pub struct OffsetOutcome {
    pub error_code: i16,
    pub offset: i64,
    pub timestamp_ms: i64,
}

#[derive(Debug)]
pub enum PartitionReply {
    Produce(ProduceOutcome),
    Fetch(FetchOutcome),
    Waited,
    /// The wait was not parked: see `PartitionCall::WaitForData`.
    WaitRefused,
    Offset(OffsetOutcome),
}

/// A partition this shard owns: open, or offline because its log could not be opened or
/// failed (reported as `KAFKA_STORAGE_ERROR` until the broker restarts).
pub enum PartitionSlot {
    Online { topic_id: Uuid, log: PartitionLog },
    Offline { topic_id: Uuid, reason: String },
}

impl PartitionSlot {
    pub fn topic_id(&self) -> Uuid {
        match self {
            PartitionSlot::Online { topic_id, .. } | PartitionSlot::Offline { topic_id, .. } => {
                *topic_id
            }
        }
    }
}

/// Told when a partition of this shard goes offline (so the controller can publish it).
pub type OfflineListener = Box<dyn Fn(TopicPartition, Uuid)>;

/// See the module docs for the ownership contract.
#[derive(Default)]
pub struct PartitionTable {
    slots: RefCell<HashMap<TopicPartition, PartitionSlot>>,
    offline_listener: RefCell<Option<OfflineListener>>,
    /// Idempotent producers' sequence state of the partitions above.
    producers: ProducerStates,
    /// Read failures logged per partition: a consumer stuck at a corrupt batch retries it
    /// about twice a second, forever.
    read_failures_logged: RefCell<HashMap<TopicPartition, LogThrottle>>,
    /// Fetch long-poll waits parked on these partitions.
    parked_waits: ParkedWaits,
}

/// The fetch long-poll waits parked on one shard's partitions, whether the fetch runs on
/// this shard or on another one (a `WaitForData` call over the mesh), and their bound.
/// Owned by the shard's `PartitionTable`; every wait holds a `ParkedWait` while parked.
pub struct ParkedWaits {
    /// `Limits::shard_fetch_waits_parked_max`.
    parked_max: Cell<usize>,
    parked: Cell<usize>,
    /// Waits refused since start because `parked_max` were parked.
    refused: Cell<u64>,
    refusals_logged: RefCell<LogThrottle>,
}

impl Default for ParkedWaits {
    fn default() -> Self {
        Self {
            parked_max: Cell::new(usize::MAX),
            parked: Cell::new(0),
            refused: Cell::new(0),
            refusals_logged: RefCell::default(),
        }
    }
}

impl ParkedWaits {
    pub fn parked(&self) -> usize {
        self.parked.get()
    }

    pub fn refused(&self) -> u64 {
        self.refused.get()
    }

    /// Counts one more parked wait until the guard is dropped, or `None` (counted and
    /// logged, rate-limited) when `parked_max` are parked already.
    fn try_park(&self, tp: &TopicPartition) -> Option<ParkedWait<'_>> {
        if self.parked.get() >= self.parked_max.get() {
            self.refused.set(self.refused.get() + 1);
            if let Some(skipped) = self.refusals_logged.borrow_mut().occurrence(Instant::now()) {
                tracing::warn!(partition = %tp, parked_max = self.parked_max.get(), refusals_before_this_unlogged = skipped, "fetch wait refused: this shard has its maximum of long-poll waits parked; the fetch answers at its max_wait_ms");
            }
            return None;
        }
        self.parked.set(self.parked.get() + 1);
        Some(ParkedWait { waits: self })
    }
}

/// One parked wait; see `ParkedWaits`.
struct ParkedWait<'a> {
    waits: &'a ParkedWaits,
}

impl Drop for ParkedWait<'_> {
    fn drop(&mut self) {
        self.waits.parked.set(self.waits.parked.get() - 1);
    }
}

impl PartitionTable {
    /// `fetch_waits_parked_max`: `Limits::shard_fetch_waits_parked_max`.
    pub fn new(fetch_waits_parked_max: usize) -> Self {
        let table = Self::default();
        table.parked_waits.parked_max.set(fetch_waits_parked_max);
        table
    }

    /// The log of a partition this shard owns, or the error code to answer with.
    pub fn log(&self, tp: &TopicPartition) -> Result<PartitionLog, i16> {
        match self.slots.borrow().get(tp) {
            Some(PartitionSlot::Online { log, .. }) => Ok(log.clone()),
            Some(PartitionSlot::Offline { reason, .. }) => {
                tracing::debug!(partition = %tp, %reason, "request for an offline partition");
                Err(codes::KAFKA_STORAGE_ERROR)
            }
            None => Err(codes::NOT_LEADER_OR_FOLLOWER),
        }
    }

    pub fn parked_waits(&self) -> &ParkedWaits {
        &self.parked_waits
    }

    pub fn set_offline_listener(&self, listener: OfflineListener) {
        *self.offline_listener.borrow_mut() = Some(listener);
    }

    pub fn insert(&self, tp: TopicPartition, slot: PartitionSlot) {
        if let PartitionSlot::Offline { topic_id, .. } = &slot {
            self.notify_offline(&tp, *topic_id);
        }
        self.slots.borrow_mut().insert(tp, slot);
    }

    fn notify_offline(&self, tp: &TopicPartition, topic_id: Uuid) {
        if let Some(listener) = self.offline_listener.borrow().as_ref() {
            listener(tp.clone(), topic_id);
        }
    }

    pub fn remove(&self, tp: &TopicPartition) -> Option<PartitionSlot> {
        self.producers.forget(tp);
        self.read_failures_logged.borrow_mut().remove(tp);
        self.slots.borrow_mut().remove(tp)
    }

    /// Topic id of every owned partition (for reconciling against a new snapshot).
    pub fn owned(&self) -> Vec<(TopicPartition, Uuid)> {
        self.slots
            .borrow()
            .iter()
            .map(|(tp, slot)| (tp.clone(), slot.topic_id()))
            .collect()
    }

    pub fn online_logs(&self) -> Vec<(TopicPartition, PartitionLog)> {
        let slots = self.slots.borrow();
        slots
            .iter()
            .filter_map(|(tp, slot)| match slot {
                PartitionSlot::Online { log, .. } => Some((tp.clone(), log.clone())),
                PartitionSlot::Offline { .. } => None,
            })
            .collect()
    }

    /// Marks a partition offline after a storage failure, so later requests fail fast.
    pub fn fence(&self, tp: &TopicPartition, reason: String) {
        let mut slots = self.slots.borrow_mut();
        let Some(slot @ PartitionSlot::Online { .. }) = slots.get_mut(tp) else {
            return;
        };
        tracing::error!(partition = %tp, %reason, "partition fenced after a storage error");
        let topic_id = slot.topic_id();
        *slot = PartitionSlot::Offline { topic_id, reason };
        drop(slots);
        self.notify_offline(tp, topic_id);
    }
}

/// Runs one partition call on the owning shard.
pub async fn execute(table: &PartitionTable, call: PartitionCall) -> PartitionReply {
    match call {
        PartitionCall::Produce { tp, batches, acks } => {
            PartitionReply::Produce(produce(table, &tp, batches, acks).await)
        }
        PartitionCall::Fetch {
            tp,
            offset,
            max_bytes,
        } => PartitionReply::Fetch(fetch(table, &tp, offset, max_bytes).await),
        PartitionCall::WaitForData { tp, offset, wait } => {
            if let Ok(log) = table.log(&tp) {
                let Some(_parked) = table.parked_waits.try_park(&tp) else {
                    return PartitionReply::WaitRefused;
                };
                let data = std::pin::pin!(log.wait_for_data(offset));
                let timer = std::pin::pin!(glommio::timer::sleep(wait));
                select(data, timer).await;
            }
            PartitionReply::Waited
        }
        PartitionCall::ListOffsets { tp, timestamp_ms } => {
            PartitionReply::Offset(list_offset(table, &tp, timestamp_ms).await)
        }
        PartitionCall::DeleteRecords { tp, offset } => {
            PartitionReply::Offset(delete_records(table, &tp, offset).await)
        }
    }
}

fn append_error_code(error: &AppendError) -> i16 {
    match error {
        AppendError::Batch(BatchError::Corrupt(_)) => codes::CORRUPT_MESSAGE,
        AppendError::Batch(BatchError::InvalidRecord(_)) => codes::INVALID_RECORD,
        AppendError::Batch(BatchError::TooLarge { .. }) => codes::MESSAGE_TOO_LARGE,
        AppendError::Storage(_) => codes::KAFKA_STORAGE_ERROR,
    }
}

/// Takes the partition offline only when its log fenced itself (a write or fdatasync
/// failed). A full disk refuses the append without fencing: producing resumes once space is
/// freed, so the partition must stay online for it.
fn fence_if_log_fenced(table: &PartitionTable, tp: &TopicPartition, log: &PartitionLog) {
    if let Some(error) = log.fenced_error() {
        table.fence(tp, error.to_string());
    }
}

async fn produce(
    table: &PartitionTable,
    tp: &TopicPartition,
    batches: Vec<Bytes>,
    acks: i16,
) -> ProduceOutcome {
    let failed = |error_code| ProduceOutcome {
        error_code,
        base_offset: -1,
        log_start_offset: -1,
    };
    let log = match table.log(tp) {
        Ok(log) => log,
        Err(code) => return failed(code),
    };
    let mut first_base_offset = None;
    let mut last_offset = -1;
    for batch in batches {
        match table.producers.append(tp, &log, batch).await {
            Ok(outcome) => {
                first_base_offset.get_or_insert(outcome.base_offset);
                last_offset = outcome.last_offset;
            }
            Err(Refused::Sequence(code)) => return failed(code),
            Err(Refused::Append(error)) => {
                tracing::debug!(partition = %tp, %error, "append refused");
                fence_if_log_fenced(table, tp, &log);
                return failed(append_error_code(&error));
            }
        }
    }
    let waited = match acks {
        0 => Ok(()),
        -1 => log.wait_durable(last_offset).await,
        _ => log.wait_written(last_offset).await,
    };
    if let Err(error) = waited {
        tracing::debug!(partition = %tp, %error, "acks not met");
        fence_if_log_fenced(table, tp, &log);
        return failed(codes::KAFKA_STORAGE_ERROR);
    }
    ProduceOutcome {
        error_code: codes::NONE,
        base_offset: first_base_offset.unwrap_or(-1),
        log_start_offset: log.log_start_offset(),
    }
}

async fn fetch(
    table: &PartitionTable,
    tp: &TopicPartition,
    offset: i64,
    max_bytes: usize,
) -> FetchOutcome {
    let log = match table.log(tp) {
        Ok(log) => log,
        Err(error_code) => {
            return FetchOutcome {
                error_code,
                high_watermark: -1,
                log_start_offset: -1,
                batches: Vec::new(),
            }
        }
    };
    let result = if max_bytes == 0 {
        Ok(Vec::new())
    } else {
        log.read(offset, max_bytes).await
    };
    let mut outcome = FetchOutcome {
        error_code: codes::NONE,
        high_watermark: log.high_watermark(),
        log_start_offset: log.log_start_offset(),
        batches: Vec::new(),
    };
    match result {
        Ok(batches) => outcome.batches = batches,
        Err(ReadError::OffsetOutOfRange { .. }) => outcome.error_code = codes::OFFSET_OUT_OF_RANGE,
        Err(error) => {
            let logged = table
                .read_failures_logged
                .borrow_mut()
                .entry(tp.clone())
                .or_default()
                .occurrence(Instant::now());
            if let Some(skipped) = logged {
                tracing::error!(partition = %tp, offset, %error, failures_before_this_unlogged = skipped, "read failed");
            }
            outcome.error_code = codes::KAFKA_STORAGE_ERROR;
        }
    }
    outcome
}

async fn list_offset(
    table: &PartitionTable,
    tp: &TopicPartition,
    timestamp_ms: i64,
) -> OffsetOutcome {
    let answer = |error_code, offset, timestamp_ms| OffsetOutcome {
        error_code,
        offset,
        timestamp_ms,
    };
    let log = match table.log(tp) {
        Ok(log) => log,
        Err(code) => return answer(code, -1, -1),
    };
    let found = match timestamp_ms {
        // -4 is the earliest *local* offset (KIP-405): every segment here is local.
        -2 | -4 => return answer(codes::NONE, log.log_start_offset(), -1),
        -1 => return answer(codes::NONE, log.high_watermark(), -1),
        -3 => log
            .max_timestamp()
            .await
            .map(|found| found.map(|(ts, offset)| (offset, ts))),
        timestamp_ms if timestamp_ms >= 0 => log.offset_for_timestamp(timestamp_ms).await,
        _ => return answer(codes::UNSUPPORTED_VERSION, -1, -1),
    };
    match found {
        Ok(Some((offset, found_timestamp_ms))) => answer(codes::NONE, offset, found_timestamp_ms),
        Ok(None) => answer(codes::NONE, -1, -1),
        Err(error) => {
            tracing::error!(partition = %tp, %error, "time index lookup failed");
            answer(codes::KAFKA_STORAGE_ERROR, -1, -1)
        }
    }
}

async fn delete_records(table: &PartitionTable, tp: &TopicPartition, offset: i64) -> OffsetOutcome {
    let answer = |error_code, offset| OffsetOutcome {
        error_code,
        offset,
        timestamp_ms: -1,
    };
    let log = match table.log(tp) {
        Ok(log) => log,
        Err(code) => return answer(code, -1),
    };
    let target = if offset == -1 {
        log.high_watermark()
    } else {
        offset
    };
    match log.delete_records_before(target).await {
        Ok(log_start_offset) => answer(codes::NONE, log_start_offset),
        Err(ReadError::OffsetOutOfRange { .. }) => {
            answer(codes::OFFSET_OUT_OF_RANGE, log.log_start_offset())
        }
        Err(error) => {
            tracing::error!(partition = %tp, %error, "delete records failed");
            answer(codes::KAFKA_STORAGE_ERROR, -1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TopicPartition {
        TopicPartition {
            topic: "t".into(),
            partition: 0,
        }
    }

    #[test]
    fn waits_past_the_bound_are_refused_and_counted_until_one_ends() {
        let table = PartitionTable::new(2);
        let waits = table.parked_waits();
        let first = waits.try_park(&tp()).expect("below the bound");
        let second = waits.try_park(&tp()).expect("at the bound");
        assert!(waits.try_park(&tp()).is_none(), "past the bound");
        assert!(waits.try_park(&tp()).is_none(), "still past it");
        assert_eq!((waits.parked(), waits.refused()), (2, 2));
        drop(first);
        let third = waits.try_park(&tp()).expect("a parked wait ended");
        assert_eq!((waits.parked(), waits.refused()), (2, 2));
        drop((second, third));
        assert_eq!(waits.parked(), 0, "every guard leaves the count");
    }
}
