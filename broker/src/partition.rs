//! The partitions one shard owns, and the work other code asks of them. All partition access
//! in the broker goes through here, whether the request arrived on this shard's connections
//! or over the mesh from another shard.
//!
//! `PartitionTable` is owned by exactly one shard (it holds `!Send` storage handles). Only
//! the shard's metadata apply (`shard::ShardServices`) adds or removes entries, and `PartitionTable::fence` is the one
//! other change (a storage failure takes a partition offline until restart); any number of
//! produce/fetch tasks may use the logs concurrently.
//!
//! Produce order: every produce call runs in two stages,
//! [`PartitionTable::dispatch_produce`] (synchronous) and [`DispatchedProduce::run`]. Dispatching a produce call checks all of its batches and takes its
//! place in the partition's append line ([`TurnQueue`]); the appends of one call then run
//! together, one call at a time, in dispatch order, and the acks waits overlap freely. So
//! calls dispatched one after the other are appended in that order whatever the executor
//! does meanwhile; the connection dispatches a client's requests in request order, locally
//! or through the mesh, which keeps the order ([`produce_on`]). Each
//! append asserts it (`ProduceOrigin`).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::select;
use uuid::Uuid;

use crate::disk::PartitionLog;
use crate::error_codes as codes;
use crate::log_throttle::LogThrottle;
use crate::metadata::TopicPartition;
pub use crate::producer_state::TxnMarker;
use crate::producer_state::{ProducerStates, Refused, TxnVerification};
use crate::replica::serve::PendingReplicaProduce;
use crate::replica::ReplicaManager;
use crate::router::{CallKind, Ending, PeerGone, ShardRouter};
use crate::storage::{AppendError, CheckedBatch, ReadError};
use crate::turns::{Ticket, TurnQueue};

/// Which client request a produce call serves: a connection (unique in the process) and
/// the request's place in that connection's order. Appends assert that each connection's
/// requests reach each partition in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceOrigin {
    pub connection_id: u64,
    pub request_sequence: u64,
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
    /// The last stable offset (transactions): below it every transaction is complete. The
    /// high watermark for a plain partition whose transactions are not loaded (no
    /// idempotent, transactional or `read_committed` use since the start).
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    pub batches: Vec<Bytes>,
    /// `read_committed`: the aborted transactions overlapping the returned batches, as
    /// (producer id, first offset) (Kafka's `aborted_transactions`).
    pub aborted_transactions: Vec<(i64, i64)>,
}

impl FetchOutcome {
    /// An answer with `error_code`, unknown (-1) offsets and no data.
    pub fn failed(error_code: i16) -> Self {
        Self {
            error_code,
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            batches: Vec::new(),
            aborted_transactions: Vec::new(),
        }
    }

    /// Where a reader at `isolation` stops: the last stable offset or the high watermark.
    pub fn readable_end(&self, isolation: Isolation) -> i64 {
        match isolation {
            Isolation::ReadCommitted => self.last_stable_offset,
            Isolation::ReadUncommitted => self.high_watermark,
        }
    }
}

pub use crate::isolation::Isolation;

#[derive(Debug, Clone, Copy)]
pub struct OffsetOutcome {
    pub error_code: i16,
    pub offset: i64,
    pub timestamp_ms: i64,
}

/// How a fetch's long-poll wait on a partition ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The high watermark passed the offset, or the wait's time ran out (or the partition
    /// is not served here: the fetch then reads its error).
    Waited,
    /// Not parked: the shard has `Limits::shard_fetch_waits_parked_max` waits parked already.
    Refused,
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
    /// The append line of each partition that has seen a produce call.
    sequencers: RefCell<HashMap<TopicPartition, Rc<AppendSequencer>>>,
    /// The Raft groups of this shard's replicated partitions (a broker among several
    /// voters only): a partition not in `slots` is looked up there.
    replicas: RefCell<Option<Rc<ReplicaManager>>>,
    /// Verifies a transactional batch that would open a transaction with its coordinator
    /// (`ProducerStates::append_verified`); installed by the shard, `None` in unit tests.
    txn_verifier: RefCell<Option<crate::producer_state::TxnVerifier>>,
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

/// Connections whose latest request one partition remembers for the order assertion: the
/// most recent ones, so a partition costs a few hundred bytes however many connections write
/// to it. A connection forgotten is checked again from its next request (never falsely).
const ORDER_CHECKED_CONNECTIONS_MAX: usize = 16;

/// One partition's produce appends: one call at a time, in the order calls were dispatched.
#[derive(Default)]
struct AppendSequencer {
    turns: TurnQueue,
    /// (connection id, latest request appended here) of the connections seen last.
    latest_requests: RefCell<VecDeque<(u64, u64)>>,
}

impl AppendSequencer {
    /// Per-connection order is what this type exists for: a request appended after a later
    /// one of the same connection is a broken invariant, not an operating error. (Equal is
    /// a request naming the partition twice: its pieces are dispatched in request order.)
    fn assert_in_order(&self, tp: &TopicPartition, origin: ProduceOrigin) {
        let mut latest = self.latest_requests.borrow_mut();
        let ProduceOrigin {
            connection_id,
            request_sequence,
        } = origin;
        if let Some(position) = latest.iter().position(|(id, _)| *id == connection_id) {
            let (_, previous) = latest.remove(position).expect("found above");
            assert!(
                previous <= request_sequence,
                "partition {tp}: connection {connection_id:#x} appends request {request_sequence} after request {previous}",
            );
        } else if latest.len() == ORDER_CHECKED_CONNECTIONS_MAX {
            latest.pop_front();
        }
        latest.push_back((connection_id, request_sequence));
    }
}

/// Where a partition this shard owns is served from ([`PartitionTable::served`]).
pub(crate) enum Served {
    /// A plain log in the table.
    Log(PartitionLog),
    /// A replicated partition: its leader serves it through the replica manager.
    Replica(Rc<ReplicaManager>),
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
            None => Err(self
                .replica_failure(tp)
                .unwrap_or(codes::NOT_LEADER_OR_FOLLOWER)),
        }
    }

    /// Serves replicated partitions from `replicas` (after the partitions in this table).
    pub fn set_txn_verifier(&self, verifier: crate::producer_state::TxnVerifier) {
        *self.txn_verifier.borrow_mut() = Some(verifier);
    }

    pub fn set_replicas(&self, replicas: Rc<ReplicaManager>) {
        *self.replicas.borrow_mut() = Some(replicas);
    }

    /// The replica manager, when it hosts `tp` (a replicated partition).
    pub(crate) fn replicas_hosting(&self, tp: &TopicPartition) -> Option<Rc<ReplicaManager>> {
        let replicas = self.replicas.borrow();
        replicas.as_ref().filter(|r| r.hosts(tp)).cloned()
    }

    /// Where a partition this shard owns is served from: its log in this table, or the
    /// replica manager when it is replicated; else the error code `log` answers.
    pub(crate) fn served(&self, tp: &TopicPartition) -> Result<Served, i16> {
        match self.log(tp) {
            Ok(log) => Ok(Served::Log(log)),
            Err(code) => self.replicas_hosting(tp).map(Served::Replica).ok_or(code),
        }
    }

    /// `KAFKA_STORAGE_ERROR` for a replicated partition this shard should host but whose
    /// log could not be opened (as for an offline plain log; Kafka answers the same for a
    /// partition on a failed log directory).
    fn replica_failure(&self, tp: &TopicPartition) -> Option<i16> {
        let reason = self.replicas.borrow().as_ref()?.failed_to_open(tp)?;
        tracing::debug!(partition = %tp, %reason, "request for a replica whose log could not be opened");
        Some(codes::KAFKA_STORAGE_ERROR)
    }

    pub fn parked_waits(&self) -> &ParkedWaits {
        &self.parked_waits
    }

    fn sequencer(&self, tp: &TopicPartition) -> Rc<AppendSequencer> {
        // Looked up on every produce call: clone the key (a String) only on first use.
        if let Some(sequencer) = self.sequencers.borrow().get(tp) {
            return sequencer.clone();
        }
        let sequencer = Rc::new(AppendSequencer::default());
        self.sequencers
            .borrow_mut()
            .insert(tp.clone(), sequencer.clone());
        sequencer
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
        self.sequencers.borrow_mut().remove(tp);
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

    /// The producer states of this shard's partitions (the log cleaner's view of their
    /// transactions, `compaction.rs`).
    pub fn producer_states(&self) -> &ProducerStates {
        &self.producers
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

/// A produce call past its synchronous stage ([`PartitionTable::dispatch_produce`]). Holds
/// no borrow: it may wait in a task.
pub struct DispatchedProduce(ProduceStage);

enum ProduceStage {
    /// Checked and in its partition's append line.
    InLine(InLine),
    /// Refused before it took a place.
    Refused(ProduceOutcome),
    /// Proposed to a replicated partition's Raft group (`replica::serve`).
    Replicated(PendingReplicaProduce),
}

/// A produce call holding its place in the partition's append line.
struct InLine {
    tp: TopicPartition,
    log: PartitionLog,
    batches: Vec<CheckedBatch>,
    acks: i16,
    origin: ProduceOrigin,
    sequencer: Rc<AppendSequencer>,
    ticket: Ticket,
    /// The request's transactional id, for KIP-890's verification.
    transactional_id: Option<String>,
}

impl PartitionTable {
    /// Stage one of a produce call, synchronous (see the module docs): append `batches`
    /// (whole v2 record batches, in order) once `acks` holds. Its batches are all checked
    /// here, before any is appended: one bad batch refuses the call (Kafka rejects a
    /// partition's records together), so a client that retries never finds the batches
    /// before it written twice.
    pub fn dispatch_produce(
        &self,
        tp: TopicPartition,
        batches: Vec<Bytes>,
        acks: i16,
        origin: ProduceOrigin,
        transactional_id: Option<String>,
    ) -> DispatchedProduce {
        let failed = |error_code| {
            DispatchedProduce(ProduceStage::Refused(ProduceOutcome {
                error_code,
                base_offset: -1,
                log_start_offset: -1,
            }))
        };
        let log = match self.log(&tp) {
            Ok(log) => log,
            Err(code) => {
                let Some(replicas) = self.replicas_hosting(&tp) else {
                    return failed(code);
                };
                // Proposing is the append: it happens now, in dispatch order.
                self.sequencer(&tp).assert_in_order(&tp, origin);
                let pending = replicas.dispatch_produce(&tp, batches, acks);
                return DispatchedProduce(ProduceStage::Replicated(pending));
            }
        };
        let checked: Result<Vec<CheckedBatch>, AppendError> =
            batches.into_iter().map(|batch| log.check(batch)).collect();
        let batches = match checked {
            Ok(batches) => batches,
            Err(error) => {
                tracing::debug!(partition = %tp, %error, "produce refused: a batch failed its checks");
                fence_if_log_fenced(self, &tp, &log);
                return failed(append_error_code(&error));
            }
        };
        // Control batches (transaction markers, Raft's leader-change and membership entries)
        // are written by the broker only; Kafka's LogValidator refuses them from clients.
        if batches.iter().any(|checked| checked.header().is_control()) {
            tracing::debug!(partition = %tp, "produce refused: clients may not write control batches");
            return failed(codes::INVALID_RECORD);
        }
        // Kafka's LogValidator: a transactional batch belongs to a producer id.
        if batches
            .iter()
            .any(|checked| checked.header().is_transactional() && checked.header().producer_id < 0)
        {
            tracing::debug!(partition = %tp, "produce refused: a transactional batch without a producer id");
            return failed(codes::INVALID_RECORD);
        }
        let sequencer = self.sequencer(&tp);
        let ticket = sequencer.turns.ticket();
        DispatchedProduce(ProduceStage::InLine(InLine {
            tp,
            log,
            batches,
            acks,
            origin,
            sequencer,
            ticket,
            transactional_id,
        }))
    }

    /// Whole batches from `offset`, about `max_bytes` (at least one batch when any exists),
    /// `read_uncommitted`. `max_bytes` 0 reads nothing: only the offsets are answered (a
    /// fetch's probe).
    pub async fn fetch(&self, tp: &TopicPartition, offset: i64, max_bytes: usize) -> FetchOutcome {
        fetch(self, tp, offset, max_bytes, Isolation::ReadUncommitted).await
    }

    /// [`Self::fetch`] at `isolation`: `read_committed` returns only batches below the last
    /// stable offset, with the aborted transactions overlapping them.
    pub async fn fetch_isolated(
        &self,
        tp: &TopicPartition,
        offset: i64,
        max_bytes: usize,
        isolation: Isolation,
    ) -> FetchOutcome {
        fetch(self, tp, offset, max_bytes, isolation).await
    }

    /// Resolves when the high watermark passes `offset`, or after `wait`; `Refused` at once
    /// when the shard has `Limits::shard_fetch_waits_parked_max` waits parked.
    pub async fn wait_for_data(
        &self,
        tp: &TopicPartition,
        offset: i64,
        wait: Duration,
    ) -> WaitOutcome {
        self.wait_for_data_isolated(tp, offset, wait, Isolation::ReadUncommitted)
            .await
    }

    /// [`Self::wait_for_data`] at `isolation`: `read_committed` waits for the last stable
    /// offset to pass `offset` (it moves with writes and with markers, each of which the
    /// log's progress signal follows).
    pub async fn wait_for_data_isolated(
        &self,
        tp: &TopicPartition,
        offset: i64,
        wait: Duration,
        isolation: Isolation,
    ) -> WaitOutcome {
        if let Ok(log) = self.log(tp) {
            let Some(_parked) = self.parked_waits.try_park(tp) else {
                return WaitOutcome::Refused;
            };
            let timer = std::pin::pin!(log.clock().sleep(wait));
            if isolation == Isolation::ReadCommitted {
                let stable = std::pin::pin!(self.wait_for_stable(tp, &log, offset));
                select(stable, timer).await;
            } else {
                let data = std::pin::pin!(log.wait_for_data(offset));
                select(data, timer).await;
            }
        } else if let Some(replicas) = self.replicas_hosting(tp) {
            let Some(_parked) = self.parked_waits.try_park(tp) else {
                return WaitOutcome::Refused;
            };
            let data = std::pin::pin!(replicas.wait_for_committed(tp, offset, isolation));
            let timer = std::pin::pin!(glommio::timer::sleep(wait));
            select(data, timer).await;
        }
        WaitOutcome::Waited
    }

    /// Completes when the last stable offset passes `offset`, or the log is fenced or
    /// closed.
    async fn wait_for_stable(&self, tp: &TopicPartition, log: &PartitionLog, offset: i64) {
        loop {
            let stable = self
                .producers
                .with_txns_if_any(tp, log, |txns| stable_offset(txns, log))
                .await
                .unwrap_or_else(|| log.high_watermark());
            // `wait_for_progress` completes at once on a fenced or closed log: without this
            // check a read_committed long poll on a closed log (a shutting-down broker) spun
            // its shard without ever yielding, so its timer never fired.
            if stable > offset || log.fenced_error().is_some() || log.is_closed() {
                return;
            }
            log.wait_for_progress().await;
        }
    }

    /// Kafka `ListOffsets` semantics: -2 earliest, -1 latest, else the first offset at or
    /// after the time.
    pub async fn list_offset(&self, tp: &TopicPartition, timestamp_ms: i64) -> OffsetOutcome {
        list_offset(self, tp, timestamp_ms, Isolation::ReadUncommitted).await
    }

    /// [`Self::list_offset`] at `isolation`: `read_committed`'s latest (-1) is the last
    /// stable offset.
    pub async fn list_offset_isolated(
        &self,
        tp: &TopicPartition,
        timestamp_ms: i64,
        isolation: Isolation,
    ) -> OffsetOutcome {
        list_offset(self, tp, timestamp_ms, isolation).await
    }

    /// Appends `marker`'s control batch (Kafka's format: attributes transactional|control,
    /// one record, key = version 0 + type 0 abort / 1 commit, value = version 0 +
    /// coordinator epoch), waits until it is durable, and completes the producer's open
    /// transaction here (the last stable offset moves; an abort records an aborted-txn
    /// entry). The marker's offset, or the Kafka error code: the partition's
    /// (`NOT_LEADER_OR_FOLLOWER`, `KAFKA_STORAGE_ERROR`), `INVALID_PRODUCER_EPOCH` for an
    /// epoch older than the producer's here, `TRANSACTION_COORDINATOR_FENCED` for an older
    /// coordinator epoch. A marker for a producer with no open transaction here is written
    /// too (Kafka does; a retry), and changes nothing else. A replicated partition takes it
    /// through Raft at its leader (`replica::serve`; other replicas answer
    /// `NOT_LEADER_OR_FOLLOWER`), answered once committed.
    pub async fn write_txn_marker(
        &self,
        tp: &TopicPartition,
        marker: TxnMarker,
    ) -> Result<i64, i16> {
        let log = match self.log(tp) {
            Ok(log) => log,
            Err(code) => {
                return match self.replicas_hosting(tp) {
                    Some(replicas) => replicas.write_txn_marker(tp, marker).await,
                    None => Err(code),
                }
            }
        };
        let timestamp_ms = log.clock().now_ms();
        let outcome = match self
            .producers
            .write_marker(tp, &log, marker, timestamp_ms)
            .await
        {
            Ok(outcome) => outcome,
            Err(Refused::Sequence(code)) => return Err(code),
            Err(Refused::Append(error)) => {
                tracing::warn!(partition = %tp, %error, "transaction marker not appended");
                fence_if_log_fenced(self, tp, &log);
                return Err(append_error_code(&error));
            }
        };
        if let Err(error) = log.wait_durable(outcome.last_offset).await {
            tracing::warn!(partition = %tp, %error, "transaction marker not made durable");
            fence_if_log_fenced(self, tp, &log);
            return Err(codes::KAFKA_STORAGE_ERROR);
        }
        Ok(outcome.base_offset)
    }

    /// `OffsetForLeaderEpoch` from the partition's leader-epoch cache: the epoch and end
    /// offset Kafka answers for `leader_epoch` (`storage::epochs`; (-1, -1) when undefined),
    /// or the error code of a partition that is offline or not here. A replicated partition
    /// is answered by its leader (a consumer validates its position there after every leader
    /// change, KIP-320, and would ask again forever if refused).
    pub fn end_offset_for_leader_epoch(
        &self,
        tp: &TopicPartition,
        leader_epoch: i32,
    ) -> Result<(i32, i64), i16> {
        match self.served(tp)? {
            Served::Log(log) => Ok(log.end_offset_for_leader_epoch(leader_epoch)),
            Served::Replica(replicas) => replicas.end_offset_for_leader_epoch(tp, leader_epoch),
        }
    }

    /// The partition's active idempotent producers (`DescribeProducers`), or the error code
    /// of a partition that is offline or not here. A replicated partition is answered by its
    /// leader.
    pub async fn describe_producers(
        &self,
        tp: &TopicPartition,
    ) -> Result<Vec<crate::producer_state::ProducerSummary>, i16> {
        match self.served(tp)? {
            Served::Log(log) => Ok(self.producers.describe(tp, &log).await),
            Served::Replica(replicas) => replicas.describe_producers(tp),
        }
    }

    /// Moves the log start to `offset` (-1 = the high watermark).
    pub async fn delete_records(&self, tp: &TopicPartition, offset: i64) -> OffsetOutcome {
        delete_records(self, tp, offset).await
    }
}

impl DispatchedProduce {
    /// Stage two: waits for the call's turn, appends, answers once its acks hold. It must
    /// run to the end once its turn has come (dropped half-way, some of its batches would be
    /// appended and the client told otherwise): run it in its own task.
    pub async fn run(self, table: &PartitionTable) -> ProduceOutcome {
        match self.0 {
            ProduceStage::InLine(in_line) => produce(table, in_line).await,
            ProduceStage::Refused(outcome) => outcome,
            ProduceStage::Replicated(pending) => {
                let answer = pending.wait().await;
                ProduceOutcome {
                    error_code: answer.error_code,
                    base_offset: answer.base_offset,
                    log_start_offset: answer.log_start_offset,
                }
            }
        }
    }
}

/// The services of a shard that owns partitions, as the typed partition calls below reach
/// them on the owning shard.
pub trait PartitionOwner: 'static {
    /// The kind partition calls are counted under.
    const PARTITION_CALLS: CallKind;

    /// This shard's partitions.
    fn partitions(&self) -> Rc<PartitionTable>;

    /// Asserts the ownership contract for a call about `tp` that arrived from another
    /// shard (see `shard::ShardServices`).
    fn check_ownership_on_receipt(&self, tp: &TopicPartition);
}

/// The owner's partition table, for a job about `tp` addressed to it: checked
/// on receipt when it came from another shard (a local call routed by this shard's own
/// metadata needs no check, and the produce path no extra lookups).
fn partitions_on_receipt<S: PartitionOwner>(
    services: &S,
    tp: &TopicPartition,
    from_another_shard: bool,
) -> Rc<PartitionTable> {
    if from_another_shard {
        services.check_ownership_on_receipt(tp);
    }
    services.partitions()
}

/// `PeerGone` only happens during shutdown; the caller answers as if the partition were away.
fn answered<T>(reply: Result<T, PeerGone>) -> Option<T> {
    reply
        .inspect_err(|gone| tracing::warn!(%gone, "partition call not answered"))
        .ok()
}

/// A produce call on the partition's owner `owner`, dispatched now: locally it takes its
/// place at the partition at once, remotely it is sent behind the calls sent to that shard
/// before it and takes its place on arrival (`ShardRouter::invoke_in_order`). Produce calls
/// made one after the other are therefore appended in that order. The returned future is
/// the wait for the outcome; `None` when the owner is gone (only during shutdown).
pub fn produce_on<S: PartitionOwner>(
    router: &Rc<ShardRouter<S>>,
    owner: usize,
    tp: TopicPartition,
    batches: Vec<Bytes>,
    acks: i16,
    origin: ProduceOrigin,
    transactional_id: Option<String>,
) -> impl Future<Output = Option<ProduceOutcome>> + 'static {
    let remote = owner != router.shard_id();
    let reply = router.invoke_in_order(owner, S::PARTITION_CALLS, move |services: &Rc<S>| {
        let table = partitions_on_receipt(&**services, &tp, remote);
        let dispatched = table.dispatch_produce(tp, batches, acks, origin, transactional_id);
        async move { dispatched.run(&table).await }
    });
    async move { answered(reply.await) }
}

/// Runs `work` on the partition table of `tp`'s owner, checking the placement on receipt
/// when that is another shard. `None` when the owner is gone (only during shutdown).
async fn on_owner<S, R, F, Fut>(
    router: &Rc<ShardRouter<S>>,
    owner: usize,
    tp: TopicPartition,
    ending: Ending,
    work: F,
) -> Option<R>
where
    S: PartitionOwner,
    F: FnOnce(Rc<PartitionTable>, TopicPartition) -> Fut + Send + 'static,
    Fut: Future<Output = R> + 'static,
    R: Send + 'static,
{
    let remote = owner != router.shard_id();
    let reply = router.invoke_on(
        owner,
        S::PARTITION_CALLS,
        ending,
        move |services: &Rc<S>| {
            let table = partitions_on_receipt(&**services, &tp, remote);
            work(table, tp)
        },
    );
    answered(reply.await)
}

/// [`PartitionTable::fetch_isolated`] on the partition's owner.
pub async fn fetch_on<S: PartitionOwner>(
    router: &Rc<ShardRouter<S>>,
    owner: usize,
    tp: TopicPartition,
    offset: i64,
    max_bytes: usize,
    isolation: Isolation,
) -> Option<FetchOutcome> {
    on_owner(
        router,
        owner,
        tp,
        Ending::ToCompletion,
        move |table, tp| async move {
            table
                .fetch_isolated(&tp, offset, max_bytes, isolation)
                .await
        },
    )
    .await
}

/// [`PartitionTable::wait_for_data`] on the partition's owner; dropped by the caller, the
/// wait is dropped at the owner too (`Ending::WithItsCaller`).
pub async fn wait_for_data_on<S: PartitionOwner>(
    router: &Rc<ShardRouter<S>>,
    owner: usize,
    tp: TopicPartition,
    offset: i64,
    wait: Duration,
    isolation: Isolation,
) -> Option<WaitOutcome> {
    on_owner(
        router,
        owner,
        tp,
        Ending::WithItsCaller,
        move |table, tp| async move {
            table
                .wait_for_data_isolated(&tp, offset, wait, isolation)
                .await
        },
    )
    .await
}

/// [`PartitionTable::list_offset_isolated`] on the partition's owner.
pub async fn list_offset_on<S: PartitionOwner>(
    router: &Rc<ShardRouter<S>>,
    owner: usize,
    tp: TopicPartition,
    timestamp_ms: i64,
    isolation: Isolation,
) -> Option<OffsetOutcome> {
    on_owner(
        router,
        owner,
        tp,
        Ending::ToCompletion,
        move |table, tp| async move {
            table
                .list_offset_isolated(&tp, timestamp_ms, isolation)
                .await
        },
    )
    .await
}

/// [`PartitionTable::write_txn_marker`] on the partition's owner: the Kafka error code
/// (0 ok); `NOT_LEADER_OR_FOLLOWER` when the owner is gone (only during shutdown).
pub async fn write_txn_marker_on<S: PartitionOwner>(
    router: &Rc<ShardRouter<S>>,
    owner: usize,
    tp: TopicPartition,
    marker: TxnMarker,
) -> i16 {
    on_owner(
        router,
        owner,
        tp,
        // A marker appended must be waited for to the end (durability, then the answer).
        Ending::ToCompletion,
        move |table, tp| async move { table.write_txn_marker(&tp, marker).await },
    )
    .await
    .map_or(codes::NOT_LEADER_OR_FOLLOWER, |written| {
        written.err().unwrap_or(codes::NONE)
    })
}

/// [`PartitionTable::end_offset_for_leader_epoch`] on the partition's owner.
pub async fn end_offset_for_leader_epoch_on<S: PartitionOwner>(
    router: &Rc<ShardRouter<S>>,
    owner: usize,
    tp: TopicPartition,
    leader_epoch: i32,
) -> Option<Result<(i32, i64), i16>> {
    on_owner(
        router,
        owner,
        tp,
        Ending::WithItsCaller,
        move |table, tp| std::future::ready(table.end_offset_for_leader_epoch(&tp, leader_epoch)),
    )
    .await
}

/// [`PartitionTable::describe_producers`] on the partition's owner.
pub async fn describe_producers_on<S: PartitionOwner>(
    router: &Rc<ShardRouter<S>>,
    owner: usize,
    tp: TopicPartition,
) -> Option<Result<Vec<crate::producer_state::ProducerSummary>, i16>> {
    on_owner(
        router,
        owner,
        tp,
        // Loading the state from the log must not stop half-way.
        Ending::ToCompletion,
        move |table, tp| async move { table.describe_producers(&tp).await },
    )
    .await
}

/// [`PartitionTable::delete_records`] on the partition's owner.
pub async fn delete_records_on<S: PartitionOwner>(
    router: &Rc<ShardRouter<S>>,
    owner: usize,
    tp: TopicPartition,
    offset: i64,
) -> Option<OffsetOutcome> {
    on_owner(
        router,
        owner,
        tp,
        Ending::ToCompletion,
        move |table, tp| async move { table.delete_records(&tp, offset).await },
    )
    .await
}

/// The bytes on disk of each of `tps`, all owned by shard `owner`, in one call to it:
/// `None` for a partition that is offline or not there (`DescribeLogDirs` leaves it out).
/// `None` as a whole when the owner is gone (only during shutdown).
pub async fn log_sizes_on<S: PartitionOwner>(
    router: &Rc<ShardRouter<S>>,
    owner: usize,
    tps: Vec<TopicPartition>,
) -> Option<Vec<(TopicPartition, Option<u64>)>> {
    let remote = owner != router.shard_id();
    let reply = router.invoke_on(
        owner,
        S::PARTITION_CALLS,
        Ending::WithItsCaller,
        move |services: &Rc<S>| {
            if remote {
                for tp in &tps {
                    services.check_ownership_on_receipt(tp);
                }
            }
            let table = services.partitions();
            let sizes = tps
                .into_iter()
                .map(|tp| {
                    let size = match table.served(&tp) {
                        Ok(Served::Log(log)) => Some(log.size_bytes()),
                        Ok(Served::Replica(replicas)) => replicas.log_size_bytes(&tp),
                        Err(_) => None,
                    };
                    (tp, size)
                })
                .collect();
            std::future::ready(sizes)
        },
    );
    answered(reply.await)
}

fn append_error_code(error: &AppendError) -> i16 {
    match error {
        AppendError::Batch(error) => crate::recompress::batch_error_code(error),
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

/// Appends a dispatched call's batches in its turn, then waits for its acks outside it.
async fn produce(table: &PartitionTable, in_line: InLine) -> ProduceOutcome {
    let InLine {
        tp,
        log,
        batches,
        acks,
        origin,
        sequencer,
        ticket,
        transactional_id,
    } = in_line;
    // Only a transactional call (it names its id) takes the verifier: nothing per plain call.
    let verification = transactional_id.and_then(|transactional_id| {
        let verifier = table.txn_verifier.borrow().clone()?;
        Some(TxnVerification {
            verifier,
            transactional_id,
        })
    });
    let failed = |error_code| ProduceOutcome {
        error_code,
        base_offset: -1,
        log_start_offset: -1,
    };
    let turn = ticket.await;
    sequencer.assert_in_order(&tp, origin);
    let mut first_base_offset = None;
    let mut last_offset = -1;
    for batch in batches {
        match table
            .producers
            .append_verified(&tp, &log, batch, verification.as_ref())
            .await
        {
            Ok(outcome) => {
                first_base_offset.get_or_insert(outcome.base_offset);
                last_offset = outcome.last_offset;
            }
            Err(Refused::Sequence(code)) => return failed(code),
            Err(Refused::Append(error)) => {
                tracing::debug!(partition = %tp, %error, "append refused");
                fence_if_log_fenced(table, &tp, &log);
                return failed(append_error_code(&error));
            }
        }
    }
    // The next call may append while this one waits for its acks.
    drop(turn);
    let waited = match acks {
        0 => Ok(()),
        -1 => log.wait_durable(last_offset).await,
        _ => log.wait_written(last_offset).await,
    };
    if let Err(error) = waited {
        tracing::debug!(partition = %tp, %error, "acks not met");
        fence_if_log_fenced(table, &tp, &log);
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
    isolation: Isolation,
) -> FetchOutcome {
    let log = match table.log(tp) {
        Ok(log) => log,
        Err(_) if table.replicas_hosting(tp).is_some() => {
            let replicas = table.replicas_hosting(tp).expect("checked");
            let fetched = replicas.fetch(tp, offset, max_bytes, isolation).await;
            return FetchOutcome {
                error_code: fetched.error_code,
                high_watermark: fetched.high_watermark,
                last_stable_offset: fetched.last_stable_offset,
                log_start_offset: fetched.log_start_offset,
                batches: fetched.batches,
                aborted_transactions: fetched.aborted_transactions,
            };
        }
        Err(error_code) => return FetchOutcome::failed(error_code),
    };
    // A log its flusher fenced is offline even if no produce has seen it yet. Answered as
    // data it would be empty at the high watermark while `WaitForData` returns at once (a
    // fenced log wakes every waiter), and a long-poll Fetch would spin without yielding.
    if log.fenced_error().is_some() {
        fence_if_log_fenced(table, tp, &log);
        return FetchOutcome::failed(codes::KAFKA_STORAGE_ERROR);
    }
    // Taken before the read: the stable offset never goes back, so batches read below it
    // stay stable whatever is appended meanwhile.
    let last_stable_offset = match isolation {
        Isolation::ReadCommitted => table
            .producers
            .with_txns_if_any(tp, &log, |txns| stable_offset(txns, &log))
            .await
            .unwrap_or_else(|| log.high_watermark()),
        Isolation::ReadUncommitted => table
            .producers
            .loaded_txns(tp, |txns| stable_offset(txns, &log))
            .unwrap_or_else(|| log.high_watermark()),
    };
    let result = if max_bytes == 0 {
        Ok(Vec::new())
    } else {
        log.read(offset, max_bytes).await
    };
    let mut outcome = FetchOutcome {
        error_code: codes::NONE,
        high_watermark: log.high_watermark(),
        last_stable_offset,
        log_start_offset: log.log_start_offset(),
        batches: Vec::new(),
        aborted_transactions: Vec::new(),
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
    if isolation == Isolation::ReadCommitted && !outcome.batches.is_empty() {
        keep_stable(&mut outcome.batches, last_stable_offset);
        if let Some(upper) = outcome
            .batches
            .last()
            .and_then(|batch| crate::storage::batch::BatchHeader::parse(batch))
            .map(|header| header.last_offset() + 1)
        {
            outcome.aborted_transactions = table
                .producers
                .with_txns_if_any(tp, &log, |txns| txns.aborted_overlapping(offset, upper))
                .await
                .unwrap_or_default();
        }
    }
    outcome
}

/// The last stable offset of `log` with these transactions: the first offset of the oldest
/// open transaction, at least the log start (Kafka's `maybeIncrementFirstUnstableOffset`:
/// records removed by retention or `DeleteRecords` no longer hold readers back), at most the
/// high watermark.
fn stable_offset(txns: &crate::producer_state::PartitionTxns, log: &PartitionLog) -> i64 {
    txns.last_stable_offset(log.high_watermark())
        .max(log.log_start_offset())
}

/// Keeps the leading batches that end below the last stable offset (it is always at a batch
/// boundary: a transaction's first offset, or the high watermark).
fn keep_stable(batches: &mut Vec<Bytes>, last_stable_offset: i64) {
    let stable = batches
        .iter()
        .take_while(|batch| {
            crate::storage::batch::BatchHeader::parse(batch)
                .is_some_and(|header| header.last_offset() < last_stable_offset)
        })
        .count();
    batches.truncate(stable);
}

async fn list_offset(
    table: &PartitionTable,
    tp: &TopicPartition,
    timestamp_ms: i64,
    isolation: Isolation,
) -> OffsetOutcome {
    let answer = |error_code, offset, timestamp_ms| OffsetOutcome {
        error_code,
        offset,
        timestamp_ms,
    };
    let log = match table.log(tp) {
        Ok(log) => log,
        Err(code) => {
            let Some(replicas) = table.replicas_hosting(tp) else {
                return answer(code, -1, -1);
            };
            let found = replicas.list_offset(tp, timestamp_ms, isolation).await;
            return answer(found.error_code, found.offset, found.timestamp_ms);
        }
    };
    let found = match timestamp_ms {
        // -4 is the earliest *local* offset (KIP-405): every segment here is local.
        -2 | -4 => return answer(codes::NONE, log.log_start_offset(), -1),
        -1 if isolation == Isolation::ReadCommitted => {
            let stable = table
                .producers
                .with_txns_if_any(tp, &log, |txns| stable_offset(txns, &log))
                .await
                .unwrap_or_else(|| log.high_watermark());
            return answer(codes::NONE, stable, -1);
        }
        -1 => return answer(codes::NONE, log.high_watermark(), -1),
        -3 => log
            .max_timestamp()
            .await
            .map(|found| found.map(|(ts, offset)| (offset, ts))),
        timestamp_ms if timestamp_ms >= 0 => log.offset_for_timestamp(timestamp_ms).await,
        _ => return answer(codes::UNSUPPORTED_VERSION, -1, -1),
    };
    // Kafka's `fetchOffsetForTimestamp`: a `read_committed` lookup finds only offsets below
    // the last stable offset.
    let found = match (found, isolation) {
        (Ok(Some((offset, found_timestamp_ms))), Isolation::ReadCommitted) => {
            let stable = table
                .producers
                .with_txns_if_any(tp, &log, |txns| stable_offset(txns, &log))
                .await
                .unwrap_or_else(|| log.high_watermark());
            Ok(Some((offset, found_timestamp_ms)).filter(|_| offset < stable))
        }
        (found, _) => found,
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
    let log = match table.served(tp) {
        Ok(Served::Log(log)) => log,
        Ok(Served::Replica(replicas)) => {
            let (error_code, log_start) = replicas.delete_records(tp, offset).await;
            return answer(error_code, log_start);
        }
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
mod txn_tests;

#[cfg(test)]
mod tests {
    use std::panic::AssertUnwindSafe;

    use futures::future::join_all;
    use futures::FutureExt;

    use super::*;
    use crate::storage::batch::build::{self, Record};
    use crate::storage::LogConfig;

    use crate::test_executor::run;

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

    /// A table owning partition `t-0`, opened on a fresh directory with small preallocation
    /// steps, so appends wait inside the log now and then.
    async fn table_with_partition(dir: &std::path::Path) -> Rc<PartitionTable> {
        let config = LogConfig {
            preallocate_step_bytes: 4096,
            ..LogConfig::default()
        };
        let disk = crate::disk::BrokerDisk::default();
        let (log, _) = PartitionLog::open_on(disk, dir, config, crate::storage::Clock::System)
            .await
            .expect("open");
        let table = Rc::new(PartitionTable::default());
        let topic_id = Uuid::new_v4();
        table.insert(tp(), PartitionSlot::Online { topic_id, log });
        table
    }

    /// Found by the broker simulation (seed 19 of its long form): a log fenced by its
    /// flusher (a write failed) while no produce was waiting to take the partition offline
    /// answered a Fetch at its high watermark with no error and no data, and
    /// `WaitForData` returned at once (a fenced log wakes every waiter), so a long-poll
    /// Fetch spun in `handlers::fetch` without yielding until its `max_wait_ms` ran out,
    /// starving every other task of the shard. A fenced log must answer
    /// `KAFKA_STORAGE_ERROR`, as an offline partition does.
    #[test]
    fn a_fetch_of_a_log_fenced_by_its_flusher_is_answered_with_a_storage_error() {
        run(|| async {
            let disk = crate::storage::sim::SimDisk::new();
            let config = LogConfig {
                preallocate_step_bytes: 4096,
                ..LogConfig::default()
            };
            let (log, _) = PartitionLog::open_on(
                crate::disk::BrokerDisk::Sim(disk.clone()),
                std::path::Path::new("/data/t-0"),
                config,
                crate::storage::Clock::System,
            )
            .await
            .expect("open");
            let table = PartitionTable::default();
            table.insert(
                tp(),
                PartitionSlot::Online {
                    topic_id: Uuid::new_v4(),
                    log: log.clone(),
                },
            );
            let first = log.append(batch("kept")).await.expect("appended");
            log.wait_written(first.last_offset).await.expect("written");
            disk.fail_next_write();
            let second = log.append(batch("lost")).await.expect("appended");
            assert!(log.wait_written(second.last_offset).await.is_err());
            assert!(log.fenced_error().is_some(), "the flusher fenced the log");
            let outcome = table.fetch(&tp(), log.high_watermark(), 1 << 20).await;
            assert_eq!(outcome.error_code, codes::KAFKA_STORAGE_ERROR);
            assert!(table.log(&tp()).is_err(), "the partition is offline now");
        });
    }

    fn batch(value: &str) -> Bytes {
        build::batch(&[Record {
            key: None,
            value: Some(value.as_bytes()),
            timestamp_ms: 0,
        }])
    }

    fn dispatch(
        table: &PartitionTable,
        batches: Vec<Bytes>,
        request_sequence: u64,
    ) -> DispatchedProduce {
        let origin = ProduceOrigin {
            connection_id: 7,
            request_sequence,
        };
        table.dispatch_produce(tp(), batches, 1, origin, None)
    }

    #[test]
    fn a_bad_batch_refuses_every_batch_of_the_call() {
        run(|| async {
            let dir = tempfile::tempdir().expect("tempdir");
            let table = table_with_partition(dir.path()).await;
            let mut corrupt = batch("two").to_vec();
            *corrupt.last_mut().expect("bytes") ^= 0xFF;
            let call = dispatch(&table, vec![batch("one"), Bytes::from(corrupt)], 0);
            let refused = call.run(&table).await;
            assert_eq!(refused.error_code, codes::CORRUPT_MESSAGE);
            let log = table.log(&tp()).expect("online");
            assert_eq!(log.log_end_offset(), 0, "the good batch was not appended");
            let call = dispatch(&table, vec![batch("one"), batch("two")], 1);
            let appended = call.run(&table).await;
            assert_eq!(
                (appended.error_code, appended.base_offset),
                (codes::NONE, 0)
            );
            assert_eq!(log.log_end_offset(), 2);
        });
    }

    /// The order of appends is the order of dispatch, not the order in which the executor
    /// first runs the calls: here they run in reverse.
    #[test]
    fn calls_append_in_dispatch_order_whatever_order_they_run_in() {
        run(|| async {
            let dir = tempfile::tempdir().expect("tempdir");
            let table = table_with_partition(dir.path()).await;
            let dispatched: Vec<_> = (0..50_u64)
                .map(|index| {
                    let batches = vec![batch(&"x".repeat(3000 + index as usize))];
                    dispatch(&table, batches, index)
                })
                .collect();
            let running: Vec<_> = dispatched
                .into_iter()
                .rev()
                .map(|call| {
                    let table = table.clone();
                    glommio::spawn_local(async move { call.run(&table).await })
                })
                .collect();
            let mut outcomes = join_all(running).await;
            outcomes.reverse();
            let offsets: Vec<_> = outcomes.iter().map(|o| o.base_offset).collect();
            assert_eq!(offsets, (0..50).collect::<Vec<_>>());
        });
    }

    #[test]
    fn a_connection_s_later_request_appended_first_trips_the_assertion() {
        run(|| async {
            let dir = tempfile::tempdir().expect("tempdir");
            let table = table_with_partition(dir.path()).await;
            // Dispatched out of the connection's order: a broken caller, not a client error.
            let later = dispatch(&table, vec![batch("later")], 5);
            let earlier = dispatch(&table, vec![batch("earlier")], 4);
            later.run(&table).await;
            let panic = AssertUnwindSafe(earlier.run(&table))
                .catch_unwind()
                .await
                .expect_err("the assertion fires");
            let message = panic.downcast_ref::<String>().expect("a formatted message");
            assert!(
                message.contains("connection 0x7 appends request 4 after request 5"),
                "{message}"
            );
        });
    }

    #[test]
    fn the_order_check_remembers_the_latest_connections_only() {
        let sequencer = AppendSequencer::default();
        let origin = |connection_id, request_sequence| ProduceOrigin {
            connection_id,
            request_sequence,
        };
        sequencer.assert_in_order(&tp(), origin(1, 10));
        // A request naming the partition twice appends twice under one sequence.
        sequencer.assert_in_order(&tp(), origin(1, 10));
        for connection_id in 2..=ORDER_CHECKED_CONNECTIONS_MAX as u64 {
            sequencer.assert_in_order(&tp(), origin(connection_id, 0));
        }
        // Connection 1 is still remembered among 16; a 17th pushes out the least recent, 2.
        sequencer.assert_in_order(&tp(), origin(1, 11));
        assert_eq!(
            sequencer.latest_requests.borrow().len(),
            ORDER_CHECKED_CONNECTIONS_MAX
        );
        sequencer.assert_in_order(&tp(), origin(99, 0));
        assert_eq!(
            sequencer.latest_requests.borrow().len(),
            ORDER_CHECKED_CONNECTIONS_MAX
        );
        assert!(sequencer
            .latest_requests
            .borrow()
            .iter()
            .all(|(id, _)| *id != 2));
    }

    /// The shard's partition table serves a replicated partition it has no log for through the
    /// replica manager: produce calls are proposed in dispatch order (offsets in that order,
    /// whatever order their tasks run in), fetch and list-offsets answer from the committed end,
    /// and a follower's table refuses clients.
    #[test]
    fn replicated_partitions_are_served_through_the_replica_manager() {
        use crate::replica::tests::{batch, payload, run, tp, Cluster};
        run(|| async {
            let mut cluster = Cluster::new(2).await;
            let leader = cluster.elect().await;
            let table = Rc::new(PartitionTable::new(16));
            table.set_replicas(cluster.manager(leader));
            let dispatched: Vec<_> = (0..6_u64)
                .map(|sequence| {
                    let origin = ProduceOrigin {
                        connection_id: 9,
                        request_sequence: sequence,
                    };
                    table.dispatch_produce(
                        tp(),
                        vec![batch(&format!("t{sequence}"))],
                        -1,
                        origin,
                        None,
                    )
                })
                .collect();
            // Run in reverse: the order is the dispatch order all the same.
            let cells: Vec<Rc<RefCell<Option<i64>>>> = dispatched
                .into_iter()
                .rev()
                .map(|call| {
                    let cell = Rc::new(RefCell::new(None));
                    let (sink, table) = (cell.clone(), table.clone());
                    glommio::spawn_local(async move {
                        let outcome = call.run(&table).await;
                        assert_eq!(outcome.error_code, codes::NONE);
                        *sink.borrow_mut() = Some(outcome.base_offset);
                    })
                    .detach();
                    cell
                })
                .collect();
            for _ in 0..200 {
                if cells.iter().all(|cell| cell.borrow().is_some()) {
                    break;
                }
                cluster.step().await;
            }
            let mut offsets: Vec<i64> = cells
                .iter()
                .map(|cell| cell.borrow().expect("answered"))
                .collect();
            offsets.reverse();
            assert!(offsets.windows(2).all(|w| w[1] == w[0] + 2), "{offsets:?}");
            let fetched = table.fetch(&tp(), offsets[0], 1 << 20).await;
            assert_eq!(fetched.error_code, codes::NONE);
            assert_eq!(fetched.high_watermark, offsets[5] + 2);
            let bases: Vec<i64> = fetched
                .batches
                .iter()
                .map(|b| {
                    crate::storage::batch::BatchHeader::parse(b)
                        .unwrap()
                        .base_offset
                })
                .collect();
            assert_eq!(bases, offsets);
            for (batch_bytes, sequence) in fetched.batches.iter().zip(0..) {
                assert_eq!(
                    payload(batch_bytes),
                    payload(&batch(&format!("t{sequence}")))
                );
            }
            let latest = table.list_offset(&tp(), -1).await;
            assert_eq!(
                (latest.error_code, latest.offset),
                (codes::NONE, offsets[5] + 2)
            );

            let follower = (1..=3).find(|id| *id != leader).unwrap();
            let follower_table = PartitionTable::new(16);
            follower_table.set_replicas(cluster.manager(follower));
            let origin = ProduceOrigin {
                connection_id: 9,
                request_sequence: 0,
            };
            let refused = follower_table
                .dispatch_produce(tp(), vec![batch("f")], -1, origin, None)
                .run(&follower_table)
                .await;
            assert_eq!(refused.error_code, codes::NOT_LEADER_OR_FOLLOWER);
            let refused = follower_table.fetch(&tp(), 0, 1 << 20).await;
            assert_eq!(refused.error_code, codes::NOT_LEADER_OR_FOLLOWER);
            let refused = follower_table.list_offset(&tp(), -1).await;
            assert_eq!(refused.error_code, codes::NOT_LEADER_OR_FOLLOWER);
        });
    }
}
