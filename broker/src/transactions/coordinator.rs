//! [`TxnCoordinator`]: the transactional ids one shard coordinates, modelled on the group
//! coordinator (`groups/coordinator.rs`).
//!
//! Ownership: an id belongs to the shard owning its partition of `__transaction_state`
//! (Java `hashCode` of the id modulo the partition count, as Kafka places it); handlers
//! send the id's work there (`transactions::on_coordinator`) and only that shard's
//! coordinator touches it. State changes happen in synchronous sections between awaits;
//! the awaits are the log (replay, append, fdatasync) and the marker writes.
//!
//! Persistence: every transition is one record (`log.rs`, Kafka's `TransactionLog`
//! format) appended to the id's partition and fdatasync'd before it takes effect; while
//! it is in flight the id is `pending` and other requests for it get
//! `CONCURRENT_TRANSACTIONS` (Kafka's `pendingState`). A partition is replayed the first
//! time a request needs it after a start; transactions found in PrepareCommit/PrepareAbort
//! have their markers written again and are completed, so a broker killed between the
//! answer to `EndTxn` and the last marker finishes the transaction after the restart.
//! The topic is compacted (latest record per id; a tombstone forgets an expired id).
//!
//! `EndTxn` is answered once its PrepareCommit/PrepareAbort is durable, as Kafka answers;
//! the markers (`TxnEffects::write_marker`, one per partition, on the partition's owner)
//! and the CompleteCommit/CompleteAbort record follow in a task of their own. Requests for
//! the id in the meantime get `CONCURRENT_TRANSACTIONS` (`state.rs`), except
//! `AddPartitionsToTxn`/`AddOffsetsToTxn`, the next transaction's first request, which
//! waits up to [`CONCURRENT_WAIT_MAX`] for the completion first (Kafka refuses at once and
//! the client retries after its backoff).
//!
//! A ticker (started with the first load) aborts transactions past their timeout with an
//! epoch bump (the producer is fenced, as in Kafka) and forgets ids idle longer than
//! `transactional.id.expiration.ms`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::{Rc, Weak};
use std::time::Duration;

use futures::future::{join_all, LocalBoxFuture};

use crate::error_codes as broker_codes;
use crate::groups::offsets_store::OffsetsStore;
use crate::metadata::TopicPartition;
use crate::partition::{PartitionTable, TxnMarker};
use crate::replays::{ReplayTurn, Replays};
use crate::shutdown::ShutdownSignal;
use crate::storage::batch::BatchHeader;
use crate::storage::Clock;
use crate::transactions::log::{self, TxnRecord};
use crate::transactions::state::{self, EndPlan, Expected, InitPlan, TxnMetadata, TxnState};
use crate::transactions::types::{
    codes, TRANSACTION_STATE_TOPIC, TXN_IDS_PER_SHARD_MAX, TXN_PARTITIONS_MAX,
};

/// Bytes read per step while replaying a partition of the transaction log.
const REPLAY_READ_BYTES: usize = 1 << 20;
/// The coordinator epoch markers carry from a plain `__transaction_state` partition (one
/// broker: its coordinator never changes). From a replicated one it is the Raft term the
/// coordinator loaded the partition in (Kafka: the partition's leader epoch), so a deposed
/// coordinator's late markers are fenced (`TRANSACTION_COORDINATOR_FENCED`) once its
/// successor's reached the partition (`Self::coordinator_epoch`).
const COORDINATOR_EPOCH: i32 = 0;
/// The longest `AddPartitionsToTxn` waits for its id's previous transaction to complete
/// before answering `CONCURRENT_TRANSACTIONS` (the completion's markers and Complete record
/// take a few fdatasyncs; one stuck on an unavailable partition is retried by the ticker).
const CONCURRENT_WAIT_MAX: Duration = Duration::from_millis(100);
/// Between retries of a marker write that failed with a retriable error.
const MARKER_RETRY_MAX: Duration = Duration::from_secs(1);

/// What a coordinator needs done on other shards.
pub trait TxnEffects {
    /// A new producer id from the broker's allocator (shard 0).
    fn new_producer_id(&self) -> LocalBoxFuture<'static, Result<i64, i16>>;
    /// Writes `marker` on `tp`'s owner; the Kafka error code (0 ok).
    fn write_marker(&self, tp: TopicPartition, marker: TxnMarker) -> LocalBoxFuture<'static, i16>;
}

/// The coordinator's settings (`transaction.max.timeout.ms`,
/// `transactional.id.expiration.ms`, `transaction.abort.timed.out.transaction.cleanup.interval.ms`).
#[derive(Clone, Debug)]
pub struct TxnConfig {
    pub max_timeout_ms: i32,
    pub id_expiration: Duration,
    pub abort_check_interval: Duration,
}

impl Default for TxnConfig {
    fn default() -> Self {
        Self {
            max_timeout_ms: 900_000,
            id_expiration: Duration::from_secs(7 * 24 * 60 * 60),
            abort_check_interval: Duration::from_secs(10),
        }
    }
}

/// What a coordinator uses of its shard: the transaction-state partitions (from the
/// shard's partition table), time, shutdown, settings, and the effects on
/// other shards. Owned by the coordinator's shard.
pub struct TxnHandle {
    pub shard_id: usize,
    pub partitions: Rc<PartitionTable>,
    pub clock: Clock,
    pub shutdown: ShutdownSignal,
    pub config: TxnConfig,
    pub effects: Rc<dyn TxnEffects>,
}

/// Where a transactional id lives: its partition of `__transaction_state`.
#[derive(Clone, Debug)]
pub struct TxnAddress {
    pub transactional_id: String,
    pub partition: i32,
}

/// One id: its metadata (None while a first `InitProducerId` allocates its producer id)
/// and whether a transition is being persisted.
struct Entry {
    metadata: Option<TxnMetadata>,
    pending: bool,
    partition: i32,
}

/// A transaction as `DescribeTransactions`/`ListTransactions` report it.
#[derive(Clone, Debug)]
pub struct TxnDescription {
    pub transactional_id: String,
    pub metadata: TxnMetadata,
}

/// See the module docs. Cheap to clone (clones share the ids).
#[derive(Clone)]
pub struct TxnCoordinator {
    inner: Rc<Inner>,
}

struct Inner {
    handle: TxnHandle,
    ids: RefCell<HashMap<String, Entry>>,
    /// Per partition: closed once its replay has finished.
    replays: Replays,
    ticker_started: Cell<bool>,
    /// Ids whose markers are being written (one completion task per id at a time); the
    /// ticker restarts the completion of a prepared transaction not in here (a failed
    /// write of its Complete record).
    completing: RefCell<HashSet<String>>,
    /// Replicated partitions loaded here, by the Raft term this replica leads them in
    /// (`groups::offsets_store`, as the group coordinator keeps them).
    loaded_terms: RefCell<HashMap<i32, u64>>,
    /// Notified whenever an id's transition or completion ends: requests waiting for an id
    /// to settle (`add_partitions`) plan again.
    settled: crate::wake::Signal,
}

impl TxnCoordinator {
    pub fn new(handle: TxnHandle) -> Self {
        Self {
            inner: Rc::new(Inner {
                handle,
                ids: RefCell::default(),
                replays: Replays::default(),
                ticker_started: Cell::new(false),
                completing: RefCell::default(),
                loaded_terms: RefCell::default(),
                settled: crate::wake::Signal::default(),
            }),
        }
    }

    /// The ownership contract: a call routed to shard `owner` runs on that shard.
    pub fn assert_owned_by(&self, owner: usize) {
        assert_eq!(
            self.inner.handle.shard_id, owner,
            "a transaction call reached shard {} but was addressed to shard {owner}",
            self.inner.handle.shard_id
        );
    }

    fn now_ms(&self) -> i64 {
        self.inner.handle.clock.now_ms()
    }

    /// `InitProducerId` with a transactional id: the producer id and epoch, or the code.
    pub async fn init_producer_id(
        &self,
        at: TxnAddress,
        timeout_ms: i32,
        expected: Expected,
    ) -> Result<(i64, i16), i16> {
        if timeout_ms <= 0 || timeout_ms > self.inner.handle.config.max_timeout_ms {
            return Err(codes::INVALID_TRANSACTION_TIMEOUT);
        }
        let log = self.ensure_loaded(at.partition).await?;
        let id = at.transactional_id.as_str();
        let now = self.now_ms();
        let (plan, current) = {
            let ids = self.inner.ids.borrow();
            let entry = ids.get(id);
            if entry.is_some_and(|entry| entry.pending) {
                return Err(codes::CONCURRENT_TRANSACTIONS);
            }
            if entry.is_none() && ids.len() >= TXN_IDS_PER_SHARD_MAX {
                tracing::warn!(
                    max = TXN_IDS_PER_SHARD_MAX,
                    "transactional ids per shard at their bound; refusing a new one"
                );
                return Err(codes::COORDINATOR_NOT_AVAILABLE);
            }
            let current = entry.and_then(|entry| entry.metadata.clone());
            (
                state::plan_init(current.as_ref(), false, expected, timeout_ms, now),
                current,
            )
        };
        match plan {
            InitPlan::Refuse(code) => Err(code),
            InitPlan::Current { producer_id, epoch } => Ok((producer_id, epoch)),
            InitPlan::Persist(next) => {
                self.transition(&log, id, at.partition, Some(next.clone()))
                    .await?;
                Ok((next.producer_id, next.producer_epoch))
            }
            InitPlan::NewProducerId { record_last_epoch } => {
                self.set_pending(id, at.partition, current.clone());
                let allocated = self.inner.handle.effects.new_producer_id().await;
                let producer_id = match allocated {
                    Ok(producer_id) => producer_id,
                    Err(code) => {
                        self.clear_pending(id, current);
                        return Err(code);
                    }
                };
                let next = state::rotated(
                    current.as_ref(),
                    producer_id,
                    record_last_epoch,
                    timeout_ms,
                    self.now_ms(),
                );
                self.persist_pending(&log, id, current, Some(next.clone()))
                    .await?;
                Ok((next.producer_id, next.producer_epoch))
            }
            InitPlan::AbortOngoing(prepared) => {
                self.transition(&log, id, at.partition, Some(prepared.clone()))
                    .await?;
                self.spawn_completion(id.to_string(), prepared);
                Err(codes::CONCURRENT_TRANSACTIONS)
            }
        }
    }

    /// `AddPartitionsToTxn` / `AddOffsetsToTxn`: the code for every partition asked.
    pub async fn add_partitions(
        &self,
        at: TxnAddress,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<TopicPartition>,
    ) -> i16 {
        let log = match self.ensure_loaded(at.partition).await {
            Ok(log) => log,
            Err(code) => return code,
        };
        let id = at.transactional_id.as_str();
        let plan = || {
            let ids = self.inner.ids.borrow();
            let entry = ids.get(id);
            state::add_partitions(
                entry.and_then(|entry| entry.metadata.as_ref()),
                entry.is_some_and(|entry| entry.pending),
                producer_id,
                epoch,
                &partitions,
                TXN_PARTITIONS_MAX,
                self.now_ms(),
            )
        };
        let mut planned = plan();
        if planned == Err(codes::CONCURRENT_TRANSACTIONS) {
            // The producer's previous transaction is still completing (its markers, then its
            // Complete record) or another request for the id is being persisted: a
            // producer's first AddPartitionsToTxn after a commit usually arrives then.
            // Refused, the client retries after a backoff (librdkafka 20 ms, several
            // transactions' worth here); waiting here for the id to settle costs it only
            // the completion's own time.
            let deadline = self.inner.handle.clock.now() + CONCURRENT_WAIT_MAX;
            while planned == Err(codes::CONCURRENT_TRANSACTIONS)
                && self.inner.handle.clock.now() < deadline
            {
                let settled = std::pin::pin!(self.inner.settled.wait());
                let expired = self.inner.handle.clock.sleep_until(deadline);
                futures::future::select(settled, expired).await;
                planned = plan();
            }
        }
        match planned {
            Err(code) => code,
            Ok(None) => codes::NONE,
            Ok(Some(next)) => self
                .transition(&log, id, at.partition, Some(next))
                .await
                .err()
                .unwrap_or(codes::NONE),
        }
    }

    /// `AddPartitionsToTxn` v4+ with `verify_only` (KIP-890, a broker asking): per
    /// partition NONE when it is in the id's ongoing transaction, else `INVALID_TXN_STATE`;
    /// `Err` for a producer that is not the id's current one.
    pub async fn verify_partitions(
        &self,
        at: TxnAddress,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<TopicPartition>,
    ) -> Result<Vec<i16>, i16> {
        self.ensure_loaded(at.partition).await?;
        let ids = self.inner.ids.borrow();
        let metadata = ids
            .get(&at.transactional_id)
            .and_then(|entry| entry.metadata.as_ref())
            .ok_or(codes::INVALID_PRODUCER_ID_MAPPING)?;
        if metadata.producer_id != producer_id {
            return Err(codes::INVALID_PRODUCER_ID_MAPPING);
        }
        if metadata.producer_epoch != epoch {
            return Err(codes::PRODUCER_FENCED);
        }
        Ok(partitions
            .iter()
            .map(|tp| {
                if metadata.state == TxnState::Ongoing && metadata.partitions.contains(tp) {
                    codes::NONE
                } else {
                    codes::INVALID_TXN_STATE
                }
            })
            .collect())
    }

    /// `EndTxn`: answered once the PrepareCommit/PrepareAbort is durable; the markers and
    /// the completion follow in their own task.
    pub async fn end_txn(&self, at: TxnAddress, producer_id: i64, epoch: i16, commit: bool) -> i16 {
        let log = match self.ensure_loaded(at.partition).await {
            Ok(log) => log,
            Err(code) => return code,
        };
        let id = at.transactional_id.as_str();
        let plan = {
            let ids = self.inner.ids.borrow();
            let entry = ids.get(id);
            state::end_txn(
                entry.and_then(|entry| entry.metadata.as_ref()),
                entry.is_some_and(|entry| entry.pending),
                producer_id,
                epoch,
                commit,
                self.now_ms(),
            )
        };
        match plan {
            EndPlan::Answer(code) => code,
            EndPlan::Prepare(prepared) => {
                if let Err(code) = self
                    .transition(&log, id, at.partition, Some(prepared.clone()))
                    .await
                {
                    return code;
                }
                self.spawn_completion(id.to_string(), prepared);
                codes::NONE
            }
        }
    }

    /// The id's transaction, for `DescribeTransactions`: `Err(TRANSACTIONAL_ID_NOT_FOUND)`
    /// for an id this coordinator does not hold.
    pub async fn describe(&self, at: TxnAddress) -> Result<TxnMetadata, i16> {
        self.ensure_loaded(at.partition).await?;
        self.inner
            .ids
            .borrow()
            .get(&at.transactional_id)
            .and_then(|entry| entry.metadata.clone())
            .ok_or(codes::TRANSACTIONAL_ID_NOT_FOUND)
    }

    /// Every id this shard holds (of the partitions loaded so far), at most `max`, and the
    /// number there were.
    pub fn list(&self, max: usize) -> (Vec<TxnDescription>, usize) {
        let ids = self.inner.ids.borrow();
        let described = ids
            .iter()
            .filter_map(|(id, entry)| {
                entry.metadata.clone().map(|metadata| TxnDescription {
                    transactional_id: id.clone(),
                    metadata,
                })
            })
            .take(max)
            .collect();
        (described, ids.len())
    }

    /// Loads every transaction-state partition this shard holds (at start-up or for
    /// `ListTransactions`), so open transactions are found without waiting for their
    /// producers.
    pub async fn load_all(&self) {
        let partitions: Vec<i32> = self
            .inner
            .handle
            .partitions
            .owned()
            .into_iter()
            .filter(|(tp, _)| &*tp.topic == TRANSACTION_STATE_TOPIC)
            .map(|(tp, _)| tp.partition)
            .collect();
        for partition in partitions {
            let _ = self.ensure_loaded(partition).await;
        }
    }

    /// Persists `next` for `id` (None forgets it) with the id pending meanwhile, then
    /// installs it. The caller checked the transition between its last await and this call.
    async fn transition(
        &self,
        log: &OffsetsStore,
        id: &str,
        partition: i32,
        next: Option<TxnMetadata>,
    ) -> Result<(), i16> {
        let current = self
            .inner
            .ids
            .borrow()
            .get(id)
            .and_then(|e| e.metadata.clone());
        self.set_pending(id, partition, current.clone());
        self.persist_pending(log, id, current, next).await
    }

    fn set_pending(&self, id: &str, partition: i32, current: Option<TxnMetadata>) {
        let mut ids = self.inner.ids.borrow_mut();
        let entry = ids.entry(id.to_string()).or_insert(Entry {
            metadata: current,
            pending: false,
            partition,
        });
        assert!(
            !entry.pending,
            "one transition at a time per transactional id"
        );
        entry.pending = true;
    }

    /// Ends a pending transition that did not happen: back to `previous`.
    fn clear_pending(&self, id: &str, previous: Option<TxnMetadata>) {
        self.inner.settled.notify_all();
        let mut ids = self.inner.ids.borrow_mut();
        match previous {
            Some(metadata) => {
                if let Some(entry) = ids.get_mut(id) {
                    entry.metadata = Some(metadata);
                    entry.pending = false;
                }
            }
            None => {
                ids.remove(id);
            }
        }
    }

    async fn persist_pending(
        &self,
        log: &OffsetsStore,
        id: &str,
        previous: Option<TxnMetadata>,
        next: Option<TxnMetadata>,
    ) -> Result<(), i16> {
        let record = TxnRecord {
            transactional_id: id.to_string(),
            metadata: next.clone(),
        };
        let written = append_durably(log, &log::encode_batch(&record, self.now_ms())).await;
        if let Err(code) = written {
            self.clear_pending(id, previous);
            return Err(code);
        }
        if let OffsetsStore::Replicated {
            partition, term, ..
        } = log
        {
            // Unloaded meanwhile (leadership moved): the ids in memory are another term's,
            // or none; the next leader's replay has the record if it was committed.
            if self.inner.loaded_terms.borrow().get(&partition.partition) != Some(term) {
                return Err(codes::NOT_COORDINATOR);
            }
        }
        let mut ids = self.inner.ids.borrow_mut();
        match next {
            Some(metadata) => {
                let entry = ids.get_mut(id).expect("a pending id stays until cleared");
                entry.metadata = Some(metadata);
                entry.pending = false;
            }
            None => {
                ids.remove(id);
            }
        }
        drop(ids);
        self.inner.settled.notify_all();
        Ok(())
    }

    /// Writes the markers of a prepared transaction, then persists its completion.
    fn spawn_completion(&self, id: String, prepared: TxnMetadata) {
        if !self.inner.completing.borrow_mut().insert(id.clone()) {
            return;
        }
        let coordinator = self.clone();
        glommio::spawn_local(async move {
            coordinator.complete(&id, prepared).await;
            coordinator.inner.completing.borrow_mut().remove(&id);
            coordinator.inner.settled.notify_all();
        })
        .detach();
    }

    async fn complete(&self, id: &str, prepared: TxnMetadata) {
        let state_partition = self.inner.ids.borrow().get(id).map(|e| e.partition);
        let marker = TxnMarker {
            producer_id: prepared.producer_id,
            producer_epoch: prepared.producer_epoch,
            commit: prepared.state == TxnState::PrepareCommit,
            coordinator_epoch: state_partition.map_or(COORDINATOR_EPOCH, |partition| {
                self.coordinator_epoch(partition)
            }),
        };
        let writes = prepared
            .partitions
            .iter()
            .map(|tp| self.write_marker_until_done(tp.clone(), marker));
        join_all(writes).await;
        if self.inner.handle.shutdown.is_started() {
            return; // finished after the restart, from the replayed Prepare record
        }
        let Some(partition) = self.inner.ids.borrow().get(id).map(|e| e.partition) else {
            return;
        };
        let Ok(log) = self.ensure_loaded(partition).await else {
            return;
        };
        let next = {
            let ids = self.inner.ids.borrow();
            let Some(entry) = ids.get(id) else { return };
            // Only the transaction these markers were for; nothing else moves a Prepare
            // state, so anything else means it was already completed.
            match &entry.metadata {
                Some(current) if !entry.pending && *current == prepared => {
                    state::completed(current, self.now_ms())
                }
                _ => None,
            }
        };
        let Some(next) = next else { return };
        if let Err(code) = self.transition(&log, id, partition, Some(next)).await {
            tracing::warn!(transactional_id = %id, code, "completing a transaction failed; the ticker retries it");
        }
    }

    /// The coordinator epoch of markers for ids of `__transaction_state` partition
    /// `partition`: the Raft term it was loaded in when replicated (terms only grow, so a
    /// later coordinator's epoch is higher), else [`COORDINATOR_EPOCH`].
    fn coordinator_epoch(&self, partition: i32) -> i32 {
        self.inner
            .loaded_terms
            .borrow()
            .get(&partition)
            .map_or(COORDINATOR_EPOCH, |&term| {
                i32::try_from(term).unwrap_or(i32::MAX)
            })
    }

    /// Kafka retries a marker until it is written or the partition is gone.
    async fn write_marker_until_done(&self, tp: TopicPartition, marker: TxnMarker) {
        let mut wait = Duration::from_millis(50);
        loop {
            let code = self
                .inner
                .handle
                .effects
                .write_marker(tp.clone(), marker)
                .await;
            match code {
                // Written, or the topic was deleted: nothing left to mark (Kafka drops the
                // partition).
                codes::NONE | codes::UNKNOWN_TOPIC_OR_PARTITION => return,
                code if broker_codes::is_retriable(code) => {}
                code => {
                    tracing::error!(partition = %tp, code, ?marker, "a transaction marker was refused; skipping the partition");
                    return;
                }
            }
            if self.inner.handle.shutdown.is_started() {
                return;
            }
            self.inner.handle.clock.sleep(wait).await;
            wait = (wait * 2).min(MARKER_RETRY_MAX);
        }
    }

    /// The transaction-state partition `partition`, replayed the first time (a replicated
    /// one: the first time in each term this replica leads it; see `store_of`).
    async fn ensure_loaded(&self, partition: i32) -> Result<OffsetsStore, i16> {
        let tp = TopicPartition {
            topic: TRANSACTION_STATE_TOPIC.into(),
            partition,
        };
        let log = self.store_of(&tp)?;
        self.start_ticker();
        let replaying = match self.inner.replays.turn(partition).await {
            ReplayTurn::Replayed => return Ok(log),
            ReplayTurn::Failed => return Err(codes::COORDINATOR_LOAD_IN_PROGRESS),
            ReplayTurn::Replay(replaying) => replaying,
        };
        let mut replayed = self.replay(partition, &log).await;
        if let (Ok(_), OffsetsStore::Replicated { term, .. }) = (&replayed, &log) {
            if log.still_leading() {
                self.inner
                    .loaded_terms
                    .borrow_mut()
                    .insert(partition, *term);
                tracing::info!(partition = %tp, term, "transaction state partition loaded as its leader");
            } else {
                replayed = Err("leadership lost during the replay".to_string());
            }
        }
        replaying.finish(replayed.is_ok());
        match replayed {
            Ok(prepared) => {
                for (id, metadata) in prepared {
                    self.spawn_completion(id, metadata);
                }
                Ok(log)
            }
            Err(error) => {
                // Damaged: reported, and the partition's ids are not served (every request
                // gets COORDINATOR_NOT_AVAILABLE and tries the replay again).
                tracing::error!(partition = %tp, %error, "replaying the transaction state log failed");
                self.inner
                    .ids
                    .borrow_mut()
                    .retain(|_, entry| entry.partition != partition);
                if let OffsetsStore::Replicated { .. } = log {
                    self.unload(partition);
                    return Err(codes::NOT_COORDINATOR);
                }
                Err(codes::COORDINATOR_NOT_AVAILABLE)
            }
        }
    }

    /// Where transaction-state partition `tp` is written on this shard: its log (one
    /// replica), or its Raft group while this replica leads it (unloaded and refused
    /// otherwise), exactly as the group coordinator decides for `__consumer_offsets`.
    fn store_of(&self, tp: &TopicPartition) -> Result<OffsetsStore, i16> {
        let not_here = match self.inner.handle.partitions.log(tp) {
            Ok(log) => return Ok(OffsetsStore::Plain(log)),
            Err(code) => code,
        };
        let Some(replicas) = self.inner.handle.partitions.replicas_hosting(tp) else {
            return Err(if not_here == broker_codes::NOT_LEADER_OR_FOLLOWER {
                codes::NOT_COORDINATOR
            } else {
                codes::COORDINATOR_NOT_AVAILABLE
            });
        };
        let loaded = self.inner.loaded_terms.borrow().get(&tp.partition).copied();
        match OffsetsStore::replicated(replicas, tp.clone()) {
            Ok((store, _)) if loaded == Some(store.term()) => Ok(store),
            Ok((store, caught_up)) => {
                if loaded.is_some() {
                    self.unload(tp.partition);
                }
                if caught_up {
                    Ok(store)
                } else {
                    Err(codes::COORDINATOR_LOAD_IN_PROGRESS)
                }
            }
            Err(code) => {
                if loaded.is_some() {
                    self.unload(tp.partition);
                }
                Err(code)
            }
        }
    }

    /// Forgets replicated partition `partition` (this replica stopped leading it, or leads
    /// it in a new term): its ids leave memory and the next call it leads replays it again.
    /// Completions under way fail their next write (proposed in the old term).
    fn unload(&self, partition: i32) {
        let Some(term) = self.inner.loaded_terms.borrow_mut().remove(&partition) else {
            return;
        };
        self.inner
            .ids
            .borrow_mut()
            .retain(|_, entry| entry.partition != partition);
        self.inner.replays.forget(partition);
        tracing::info!(
            partition,
            term,
            "transaction state partition unloaded: no longer its leader in that term"
        );
    }

    /// Unloads every loaded replicated partition this replica no longer leads in the term
    /// it loaded it in.
    fn unload_lost_partitions(&self) {
        let loaded: Vec<i32> = self.inner.loaded_terms.borrow().keys().copied().collect();
        for partition in loaded {
            let tp = TopicPartition {
                topic: TRANSACTION_STATE_TOPIC.into(),
                partition,
            };
            // store_of unloads what it finds stale.
            let _ = self.store_of(&tp);
        }
    }

    /// Applies every record of the partition in order; returns the transactions left in
    /// PrepareCommit/PrepareAbort, whose markers must be written again.
    async fn replay(
        &self,
        partition: i32,
        log: &OffsetsStore,
    ) -> Result<Vec<(String, TxnMetadata)>, String> {
        let mut offset = log.log_start_offset();
        let end = log.replay_end();
        let mut found: HashMap<String, TxnMetadata> = HashMap::new();
        while offset < end {
            let batches = log.read(offset, REPLAY_READ_BYTES).await?;
            if batches.is_empty() {
                break;
            }
            for stored in batches {
                let header = BatchHeader::parse(&stored)
                    .ok_or_else(|| format!("unparseable batch at offset {offset}"))?;
                offset = header.last_offset() + 1;
                if header.is_control() {
                    // A Raft leader's first entry in a replicated partition.
                    continue;
                }
                for record in log::decode_batch(&stored)
                    .map_err(|error| format!("offset {}: {error}", header.base_offset))?
                {
                    match record.metadata {
                        Some(metadata) => found.insert(record.transactional_id, metadata),
                        None => found.remove(&record.transactional_id),
                    };
                }
            }
        }
        let mut prepared = Vec::new();
        let mut ids = self.inner.ids.borrow_mut();
        for (id, metadata) in found {
            if matches!(
                metadata.state,
                TxnState::PrepareCommit | TxnState::PrepareAbort
            ) {
                prepared.push((id.clone(), metadata.clone()));
            }
            // A request that raced the replay for an id of this partition cannot exist:
            // every request waits for the load first.
            ids.insert(
                id,
                Entry {
                    metadata: Some(metadata),
                    pending: false,
                    partition,
                },
            );
        }
        tracing::info!(partition, ids = ids.len(), "transaction state log replayed");
        Ok(prepared)
    }

    fn start_ticker(&self) {
        if self.inner.ticker_started.replace(true) {
            return;
        }
        glommio::spawn_local(tick_forever(Rc::downgrade(&self.inner))).detach();
    }

    /// Starts the completion of every prepared transaction that has none running (its
    /// Complete record failed to be written, or its task ended at a failed load).
    fn restart_stalled_completions(&self) {
        let stalled: Vec<(String, TxnMetadata)> = {
            let ids = self.inner.ids.borrow();
            let completing = self.inner.completing.borrow();
            ids.iter()
                .filter(|(id, e)| !e.pending && !completing.contains(*id))
                .filter_map(|(id, e)| Some((id.clone(), e.metadata.clone()?)))
                .filter(|(_, m)| {
                    matches!(m.state, TxnState::PrepareCommit | TxnState::PrepareAbort)
                })
                .collect()
        };
        for (id, prepared) in stalled {
            self.spawn_completion(id, prepared);
        }
    }

    /// One round of the ticker: aborts timed-out transactions (fencing their producers)
    /// and forgets idle ids.
    async fn tick(&self) {
        self.unload_lost_partitions();
        let now = self.now_ms();
        let expiration_ms =
            i64::try_from(self.inner.handle.config.id_expiration.as_millis()).unwrap_or(i64::MAX);
        let (timed_out, expired): (Vec<_>, Vec<_>) = {
            let ids = self.inner.ids.borrow();
            let timed_out = ids
                .iter()
                .filter(|(_, e)| !e.pending)
                .filter_map(|(id, e)| Some((id.clone(), e.partition, e.metadata.clone()?)))
                .filter(|(_, _, m)| state::timed_out(m, now))
                .collect();
            let expired = ids
                .iter()
                .filter(|(_, e)| !e.pending)
                .filter(|(_, e)| {
                    e.metadata
                        .as_ref()
                        .is_some_and(|m| state::expired(m, expiration_ms, now))
                })
                .map(|(id, e)| (id.clone(), e.partition))
                .collect();
            (timed_out, expired)
        };
        self.restart_stalled_completions();
        for (id, partition, metadata) in timed_out {
            let Ok(log) = self.ensure_loaded(partition).await else {
                continue;
            };
            if self
                .inner
                .ids
                .borrow()
                .get(&id)
                .is_none_or(|e| e.pending || e.metadata.as_ref() != Some(&metadata))
            {
                continue; // moved on while we awaited
            }
            let prepared = state::fenced_abort(&metadata, self.now_ms());
            tracing::info!(transactional_id = %id, producer_id = metadata.producer_id, "aborting a transaction past its timeout");
            if self
                .transition(&log, &id, partition, Some(prepared.clone()))
                .await
                .is_ok()
            {
                self.spawn_completion(id, prepared);
            }
        }
        for (id, partition) in expired {
            let Ok(log) = self.ensure_loaded(partition).await else {
                continue;
            };
            let still_expired = self.inner.ids.borrow().get(&id).is_some_and(|e| {
                !e.pending
                    && e.metadata
                        .as_ref()
                        .is_some_and(|m| state::expired(m, expiration_ms, self.now_ms()))
            });
            if still_expired {
                tracing::info!(transactional_id = %id, "forgetting an idle transactional id");
                let _ = self.transition(&log, &id, partition, None).await;
            }
        }
    }
}

/// Appends one batch and waits until it is acknowledged: fdatasync'd (a plain log; a failed
/// write fences it, so the coordinator stops answering for the partition) or committed in
/// the leader's term (a replicated partition).
async fn append_durably(log: &OffsetsStore, batch: &bytes::Bytes) -> Result<(), i16> {
    log.append(batch.clone()).await?.durable().await
}

async fn tick_forever(inner: Weak<Inner>) {
    loop {
        let Some((clock, interval)) = inner.upgrade().map(|inner| {
            (
                inner.handle.clock.clone(),
                inner.handle.config.abort_check_interval,
            )
        }) else {
            return;
        };
        clock.sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.handle.shutdown.is_started() {
            return;
        }
        TxnCoordinator { inner }.tick().await;
    }
}

#[cfg(test)]
mod tests {

    use uuid::Uuid;

    use super::*;
    use crate::partition::PartitionSlot;
    use crate::storage::LogConfig;

    use crate::test_executor::run;

    /// Producer ids from a counter; markers recorded (after `marker_delay`), or never
    /// answered when `stuck`.
    #[derive(Default)]
    struct Recorded {
        next_producer_id: Cell<i64>,
        markers: Rc<RefCell<Vec<(TopicPartition, TxnMarker)>>>,
        stuck: bool,
        marker_delay: Option<Duration>,
    }

    impl TxnEffects for Rc<Recorded> {
        fn new_producer_id(&self) -> LocalBoxFuture<'static, Result<i64, i16>> {
            let id = 1000 + self.next_producer_id.get();
            self.next_producer_id.set(self.next_producer_id.get() + 1);
            Box::pin(std::future::ready(Ok(id)))
        }
        fn write_marker(
            &self,
            tp: TopicPartition,
            marker: TxnMarker,
        ) -> LocalBoxFuture<'static, i16> {
            if self.stuck {
                return Box::pin(std::future::pending());
            }
            if let Some(delay) = self.marker_delay {
                let markers = self.markers.clone();
                return Box::pin(async move {
                    glommio::timer::sleep(delay).await;
                    markers.borrow_mut().push((tp, marker));
                    codes::NONE
                });
            }
            self.markers.borrow_mut().push((tp, marker));
            Box::pin(std::future::ready(codes::NONE))
        }
    }

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    async fn table_with_state_partition(dir: &std::path::Path) -> Rc<PartitionTable> {
        let disk = crate::disk::BrokerDisk::default();
        let (log, _) =
            crate::disk::PartitionLog::open_on(disk, dir, LogConfig::default(), Clock::System)
                .await
                .expect("open");
        let table = Rc::new(PartitionTable::default());
        table.insert(
            tp(TRANSACTION_STATE_TOPIC, 0),
            PartitionSlot::Online {
                topic_id: Uuid::new_v4(),
                log,
            },
        );
        table
    }

    fn coordinator(table: &Rc<PartitionTable>, effects: &Rc<Recorded>) -> TxnCoordinator {
        TxnCoordinator::new(TxnHandle {
            shard_id: 0,
            partitions: table.clone(),
            clock: Clock::System,
            shutdown: ShutdownSignal::default(),
            config: TxnConfig::default(),
            effects: Rc::new(effects.clone()),
        })
    }

    fn at(id: &str) -> TxnAddress {
        TxnAddress {
            transactional_id: id.into(),
            partition: 0,
        }
    }

    /// Waits (yielding to the completion task) until the id reaches `state`.
    async fn settle(coordinator: &TxnCoordinator, id: &str, state: TxnState) -> TxnMetadata {
        for _ in 0..200 {
            let described = coordinator.describe(at(id)).await.expect("known");
            if described.state == state {
                return described;
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        panic!("{id} never reached {state:?}");
    }

    #[test]
    fn a_commit_writes_a_marker_to_every_partition_then_completes() {
        run(|| async {
            let dir = tempfile::tempdir().expect("tempdir");
            let table = table_with_state_partition(dir.path()).await;
            let effects = Rc::new(Recorded::default());
            let coordinator = coordinator(&table, &effects);
            let (producer_id, epoch) = coordinator
                .init_producer_id(at("tx"), 60_000, None)
                .await
                .expect("init");
            assert_eq!((producer_id, epoch), (1000, 0));
            let added = coordinator
                .add_partitions(at("tx"), producer_id, epoch, vec![tp("a", 0), tp("b", 1)])
                .await;
            assert_eq!(added, codes::NONE);
            assert_eq!(
                coordinator
                    .end_txn(at("tx"), producer_id, epoch, true)
                    .await,
                codes::NONE
            );
            let done = settle(&coordinator, "tx", TxnState::CompleteCommit).await;
            assert!(done.partitions.is_empty());
            let markers = effects.markers.borrow().clone();
            assert_eq!(markers.len(), 2);
            assert!(markers
                .iter()
                .all(|(_, m)| m.commit && m.producer_id == producer_id && m.producer_epoch == 0));
            // A timeout above the maximum is refused before anything else.
            assert_eq!(
                coordinator.init_producer_id(at("tx"), 900_001, None).await,
                Err(codes::INVALID_TRANSACTION_TIMEOUT)
            );
        });
    }

    /// Commits a transaction of "tx" on partition a-0 and returns as soon as the commit is
    /// answered: the completion (markers, `CompleteCommit`) is still under way.
    async fn committed_and_completing(coordinator: &TxnCoordinator) -> (i64, i16) {
        let (producer_id, epoch) = coordinator
            .init_producer_id(at("tx"), 60_000, None)
            .await
            .expect("init");
        let added = coordinator
            .add_partitions(at("tx"), producer_id, epoch, vec![tp("a", 0)])
            .await;
        assert_eq!(added, codes::NONE);
        let ended = coordinator
            .end_txn(at("tx"), producer_id, epoch, true)
            .await;
        assert_eq!(ended, codes::NONE);
        (producer_id, epoch)
    }

    /// librdkafka's first `AddPartitionsToTxn` of the next transaction usually arrives while
    /// the previous one's markers are written; refused, it retries 20 ms later.
    #[test]
    fn the_next_transaction_waits_for_the_previous_ones_completion() {
        run(|| async {
            let dir = tempfile::tempdir().expect("tempdir");
            let table = table_with_state_partition(dir.path()).await;
            let effects = Rc::new(Recorded {
                marker_delay: Some(Duration::from_millis(30)),
                ..Recorded::default()
            });
            let coordinator = coordinator(&table, &effects);
            let (producer_id, epoch) = committed_and_completing(&coordinator).await;
            assert!(
                effects.markers.borrow().is_empty(),
                "markers still on their way"
            );
            let next = vec![tp("b", 1)];
            assert_eq!(
                coordinator
                    .add_partitions(at("tx"), producer_id, epoch, next)
                    .await,
                codes::NONE,
                "answered once the previous transaction completed, not refused"
            );
            assert_eq!(effects.markers.borrow().len(), 1);
            let described = coordinator.describe(at("tx")).await.expect("known");
            assert_eq!(described.state, TxnState::Ongoing);
            assert_eq!(described.partitions, [tp("b", 1)].into());
        });
    }

    /// A completion that cannot finish (a marker's partition unavailable) does not hold the
    /// request: it is refused after a bounded wait, as before.
    #[test]
    fn a_stuck_completion_is_refused_after_a_bounded_wait() {
        run(|| async {
            let dir = tempfile::tempdir().expect("tempdir");
            let table = table_with_state_partition(dir.path()).await;
            let effects = Rc::new(Recorded {
                stuck: true,
                ..Recorded::default()
            });
            let coordinator = coordinator(&table, &effects);
            let (producer_id, epoch) = committed_and_completing(&coordinator).await;
            let started = std::time::Instant::now();
            assert_eq!(
                coordinator
                    .add_partitions(at("tx"), producer_id, epoch, vec![tp("b", 1)])
                    .await,
                codes::CONCURRENT_TRANSACTIONS
            );
            let waited = started.elapsed();
            assert!(
                waited >= CONCURRENT_WAIT_MAX && waited < CONCURRENT_WAIT_MAX * 20,
                "waited {waited:?}"
            );
        });
    }

    #[test]
    fn state_is_replayed_and_a_prepared_transaction_is_completed_after_a_restart() {
        run(|| async {
            let dir = tempfile::tempdir().expect("tempdir");
            let table = table_with_state_partition(dir.path()).await;
            // First life: the markers never get written (the broker dies meanwhile).
            let stuck = Rc::new(Recorded {
                stuck: true,
                ..Recorded::default()
            });
            let first = coordinator(&table, &stuck);
            let (producer_id, epoch) = first
                .init_producer_id(at("tx"), 60_000, None)
                .await
                .expect("init");
            first
                .add_partitions(at("tx"), producer_id, epoch, vec![tp("a", 0)])
                .await;
            // An ongoing transaction of another id, to be found after the restart.
            let (other_id, other_epoch) = first
                .init_producer_id(at("other"), 60_000, None)
                .await
                .expect("init");
            first
                .add_partitions(at("other"), other_id, other_epoch, vec![tp("c", 2)])
                .await;
            assert_eq!(
                first.end_txn(at("tx"), producer_id, epoch, true).await,
                codes::NONE
            );
            assert_eq!(
                first.end_txn(at("tx"), producer_id, epoch, true).await,
                codes::CONCURRENT_TRANSACTIONS,
                "a retry while the markers are written"
            );
            drop(first);
            // Second life on the same log: the prepared commit is finished.
            let effects = Rc::new(Recorded::default());
            let second = coordinator(&table, &effects);
            let done = settle(&second, "tx", TxnState::CompleteCommit).await;
            assert_eq!(
                (done.producer_id, done.producer_epoch),
                (producer_id, epoch)
            );
            assert_eq!(
                effects.markers.borrow().clone(),
                vec![(
                    tp("a", 0),
                    TxnMarker {
                        producer_id,
                        producer_epoch: epoch,
                        commit: true,
                        coordinator_epoch: COORDINATOR_EPOCH
                    }
                )]
            );
            let other = second.describe(at("other")).await.expect("replayed");
            assert_eq!(other.state, TxnState::Ongoing);
            assert_eq!(other.partitions, [tp("c", 2)].into());
            // A new producer for it: the ongoing transaction is aborted at a bumped epoch
            // first (the caller is told to retry), then the epoch is bumped again.
            assert_eq!(
                second.init_producer_id(at("other"), 60_000, None).await,
                Err(codes::CONCURRENT_TRANSACTIONS)
            );
            settle(&second, "other", TxnState::CompleteAbort).await;
            let abort = effects
                .markers
                .borrow()
                .last()
                .map(|(_, marker)| *marker)
                .expect("a marker");
            assert_eq!(
                (abort.commit, abort.producer_epoch),
                (false, other_epoch + 1)
            );
            assert_eq!(
                second.init_producer_id(at("other"), 60_000, None).await,
                Ok((other_id, other_epoch + 2))
            );
            assert_eq!(
                second
                    .add_partitions(at("other"), other_id, other_epoch, vec![tp("c", 2)])
                    .await,
                codes::PRODUCER_FENCED
            );
        });
    }
}
