//! [`GroupCoordinator`]: the groups one shard owns and the work done on them.
//!
//! Owned by one shard (part of its services, `!Send`). Every group call for this shard,
//! local or from the mesh, runs through one of the typed methods of [`GroupCoordinator`]
//! (`join`, `sync`, `commit`, ...), each reached through `groups::on_coordinator`. Group state changes
//! only in synchronous sections between awaits; the awaits are the offsets log (replay,
//! append, fdatasync) and parked joins/syncs waiting for the group to move on.
//! A `__consumer_offsets` partition is replayed once, by the first call that needs it;
//! calls arriving meanwhile wait for that replay. A ticker (started with the first load)
//! runs session and rebalance timeouts and offset expiry. A replicated partition is served
//! only while this shard's replica leads it: loaded once per term, unloaded when the term
//! or the leadership goes (`offsets_store`, `store_of`, `unload`).
//!
//! Transactional offsets (`TxnOffsetCommit`) are appended as the producer's transactional
//! batch and held pending per (offsets partition, producer id) until the transaction's
//! marker on that partition: `complete_txn` applies them on commit and drops them on abort,
//! called by the transaction coordinator's marker write and by the replay when it reads the
//! marker (a control batch). A checkpoint waits while a partition has pending offsets.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::sync::Semaphore;

use crate::disk::BrokerDisk;
use crate::error_codes as broker_codes;
use crate::groups::assignor::Assignor;
use crate::groups::consumer::{
    consumer_codes::STALE_MEMBER_EPOCH, ConsumerGroupDescription, ConsumerRules, HeartbeatAnswer,
    HeartbeatRequest, TopicCatalog,
};
use crate::groups::group::{
    Answer, Group, GroupRules, GroupState, JoinRequest, JoinResult, SyncResult,
};
use crate::groups::offsets_store::OffsetsStore;
use crate::groups::records::{self, ConsumerRecord, OffsetsRecord};
use crate::groups::types::{
    codes, partition_for, CommitRequest, FetchedOffsets, GroupAddress, GroupDescription,
    ListedGroup, MemberDescription, MigrationPolicy, SyncRequest, OFFSET_METADATA_BYTES_MAX,
    TOPIC_NAME_BYTES_MAX,
};
use crate::limits::Limits;
use crate::metadata::OFFSETS_TOPIC;
use crate::metadata::{MetadataView, TopicPartition};
use crate::metrics::{HistogramBuckets, LatencyHistogram};
use crate::partition::PartitionTable;
use crate::producer_state::{GrantedBlocks, ProducerIds};
use crate::replays::{ReplayTurn, Replays};
use crate::shutdown::ShutdownSignal;
use crate::storage::batch::BatchHeader;
use crate::storage::Clock;

/// How often the ticker looks at session and rebalance deadlines. Kafka's own timers fire
/// on the millisecond, but clients' timeouts are seconds; 100 ms keeps expiry prompt.
const TICK: Duration = Duration::from_millis(100);
/// Bytes read per step while replaying a partition of the offsets log.
const REPLAY_READ_BYTES: usize = 1 << 20;

/// The topics of this shard's metadata as consumer groups see them.
struct SnapshotTopics<'a>(&'a crate::metadata::MetadataSnapshot);

impl TopicCatalog for SnapshotTopics<'_> {
    fn partitions(&self, topic: &str) -> Option<i32> {
        self.0.topic(topic).map(|t| t.partition_count())
    }
    fn version(&self) -> u64 {
        self.0.epoch
    }
    fn names(&self) -> Vec<&str> {
        self.0.topics.keys().map(|name| &**name).collect()
    }
}

/// What the coordinator applies, from the broker's limits.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub rules: GroupRules,
    pub offsets_retention: Duration,
    /// Records appended to an offsets partition before it is checkpointed and trimmed.
    pub checkpoint_after_records: usize,
}

impl CoordinatorConfig {
    fn from_limits(limits: &crate::limits::Limits) -> Self {
        Self {
            rules: GroupRules {
                session_timeout_min: limits.group_session_timeout_min,
                session_timeout_max: limits.group_session_timeout_max,
                initial_rebalance_delay: limits.group_initial_rebalance_delay,
                consumer: ConsumerRules {
                    session_timeout: limits.group_consumer_session_timeout,
                    heartbeat_interval: limits.group_consumer_heartbeat_interval,
                    max_size: limits.group_consumer_max_size,
                },
                migration: MigrationPolicy::from_name(limits.group_consumer_migration_policy)
                    .unwrap_or_default(),
            },
            offsets_retention: limits.offsets_retention,
            checkpoint_after_records: limits.offsets_checkpoint_records,
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self::from_limits(&crate::limits::Limits::default())
    }
}

/// One offsets partition, as the coordinator writes it.
#[derive(Clone)]
struct OffsetsLog {
    partition: i32,
    /// Partitions of `__consumer_offsets`: which groups live on this one.
    partitions_total: i32,
    /// Its log, or its Raft group when it is replicated (`offsets_store`).
    store: OffsetsStore,
}

/// What a coordinator uses of its shard, and nothing more: the `__consumer_offsets`
/// partitions it appends to and replays (from the shard's partition table), the metadata
/// that says how many there are and which are here, the shutdown signal that releases parked
/// answers, the broker's limits, and (shard 0) where the producer-id block lives. Owned by
/// the coordinator's shard.
pub struct OffsetsHandle {
    pub shard_id: usize,
    pub partitions: Rc<PartitionTable>,
    pub metadata: Rc<MetadataView>,
    pub shutdown: ShutdownSignal,
    pub limits: Limits,
    pub disk: BrokerDisk,
    pub data_dir: std::path::PathBuf,
    /// The shard's clock: group deadlines, commit timestamps, offset expiry.
    pub clock: Clock,
    /// Shard 0 of a broker of a cluster: the producer-id blocks the controller grants it
    /// (`producer_state::GrantedBlocks`); None on a one-node broker and other shards.
    pub producer_id_blocks: Option<Rc<GrantedBlocks>>,
}

/// See the module docs for the ownership and concurrency contract. Cheap to clone (clones
/// share the groups): a job from another shard takes one into its future.
#[derive(Clone)]
pub struct GroupCoordinator {
    inner: Rc<Inner>,
}

/// One group's `OffsetCommit` v0 offsets by (topic, partition).
type StandaloneOffsets = HashMap<(String, i32), i64>;

struct Inner {
    offsets: OffsetsHandle,
    config: RefCell<CoordinatorConfig>,
    groups: RefCell<HashMap<String, Group>>,
    /// `OffsetCommit` v0 commits by group, then (topic, partition): apart from the groups'
    /// commits, as Kafka 3.9 kept them apart (in `ZooKeeper`). Never expired, as there.
    standalone_offsets: RefCell<HashMap<String, StandaloneOffsets>>,
    /// Per offsets partition: closed once its replay has finished.
    replays: Replays,
    /// Replicated offsets partitions loaded (replayed) here, by the Raft term this replica
    /// leads them in: the coordinator serves them in that term only (see `unload`).
    loaded_terms: RefCell<HashMap<i32, u64>>,
    ticker_started: std::cell::Cell<bool>,
    /// See `append_gate`.
    append_gates: RefCell<HashMap<i32, Rc<Semaphore>>>,
    /// Records appended (or replayed) per offsets partition since its last checkpoint.
    records_since_checkpoint: RefCell<HashMap<i32, usize>>,
    /// Partitions with a checkpoint under way.
    checkpointing: RefCell<std::collections::HashSet<i32>>,
    /// Shard 0 only, created on first use.
    producer_ids: RefCell<Option<Rc<ProducerIds>>>,
    /// KIP-848 metrics of the groups this shard coordinates.
    consumer_counts: RefCell<ConsumerGroupCounts>,
    /// `TxnOffsetCommit` offsets written but not yet visible, by (offsets partition,
    /// producer id): the transaction's marker on that partition applies them (commit) or
    /// drops them (abort), see `complete_txn`. Bounded by `TXN_OFFSETS_PENDING_MAX`.
    txn_offsets: RefCell<HashMap<(i32, i64), Vec<OffsetsRecord>>>,
    /// Offsets partitions whose replay is reading the log now. A marker written meanwhile
    /// is left to the replay (`complete_txn`), which reads on to the committed end.
    replaying: RefCell<HashSet<i32>>,
}

/// Offsets of open transactions one shard's groups hold at once (records). Past it a
/// `TxnOffsetCommit` is refused `COORDINATOR_NOT_AVAILABLE` (retriable) until transactions
/// end; Kafka has no bound.
const TXN_OFFSETS_PENDING_MAX: usize = 100_000;

/// Rebalances (group epoch bumps) of this shard's consumer-protocol groups, and how long
/// their members took to reach each new target assignment.
#[derive(Default)]
struct ConsumerGroupCounts {
    rebalances: u64,
    reconciliation: LatencyHistogram,
}

impl ConsumerGroupCounts {
    /// What one heartbeat or tick did to a group whose epoch was `epoch_before`.
    fn note(&mut self, epoch_before: i32, consumer: &mut crate::groups::consumer::ConsumerGroup) {
        let bumps = consumer.group_epoch.saturating_sub(epoch_before).max(0);
        self.rebalances += u64::try_from(bumps).unwrap_or(0);
        for took in consumer.reconciled.drain(..) {
            self.reconciliation.record(took);
        }
    }
}

impl GroupCoordinator {
    fn rules(&self) -> GroupRules {
        self.inner.config.borrow().rules.clone()
    }

    /// A coordinator for the shard `offsets` describes; its groups keep time on that
    /// shard's clock.
    pub fn new(offsets: OffsetsHandle) -> Self {
        Self {
            inner: Rc::new(Inner {
                offsets,
                config: RefCell::default(),
                groups: RefCell::default(),
                standalone_offsets: RefCell::default(),
                replays: Replays::default(),
                loaded_terms: RefCell::default(),
                ticker_started: std::cell::Cell::new(false),
                append_gates: RefCell::default(),
                records_since_checkpoint: RefCell::default(),
                txn_offsets: RefCell::default(),
                replaying: RefCell::default(),
                checkpointing: RefCell::default(),
                producer_ids: RefCell::default(),
                consumer_counts: RefCell::default(),
            }),
        }
    }

    /// A group call addressed to shard `owner` runs on that shard's coordinator only.
    pub fn assert_owned_by(&self, owner: usize) {
        assert_eq!(
            self.inner.offsets.shard_id, owner,
            "a group call addressed to shard {owner} ran on another shard's coordinator"
        );
    }

    /// `JoinGroup`; the answer may wait for the rebalance. A classic member of a group whose
    /// members live in its consumer group (KIP-848's migration) is answered by it, once its
    /// change is durable.
    pub async fn join(&self, at: GroupAddress, request: JoinRequest) -> JoinResult {
        let log = match self.ensure_loaded(at.partition).await {
            Ok(log) => log,
            Err(code) => return JoinResult::error(code, &request.member_id),
        };
        let now = self.inner.offsets.clock.now();
        let rules = self.rules();
        let snapshot = self.inner.offsets.metadata.current();
        let topics = SnapshotTopics(&snapshot);
        let member_id = request.member_id.clone();
        let (answer, records) = self.with_group(&at.group, |g| {
            let epoch_before = g.consumer.as_ref().map_or(0, |c| c.group_epoch);
            let answer = if g.has_consumer_members() {
                Answer::Now(g.join_consumer_group(request, &topics, &rules, now))
            } else {
                g.join(request, &rules, now)
            };
            (answer, self.take_records(g, epoch_before))
        });
        if !records.is_empty() {
            let code = self.persist(&log, records).await;
            if code != broker_codes::NONE {
                if let Answer::Now(_) = answer {
                    return JoinResult::error(code, &member_id);
                }
            }
        }
        let gone = JoinResult::error(codes::UNKNOWN_MEMBER_ID, "");
        let stopping = JoinResult::error(codes::NOT_COORDINATOR, "");
        settle(&self.inner.offsets.shutdown, answer, gone, stopping).await
    }

    /// `SyncGroup`; a follower's answer waits for the leader's assignment.
    ///
    /// The leader's sync that completes a generation writes its membership
    /// (`Group::take_classic_record`); every member's sync is answered once that is durable
    /// (`Group::finish_sync`), as Kafka answers them after storing the group. If the write
    /// fails they all get the error and the group rebalances, so the next generation is
    /// written.
    pub async fn sync(&self, at: GroupAddress, request: SyncRequest) -> SyncResult {
        let log = match self.ensure_loaded(at.partition).await {
            Ok(log) => log,
            Err(code) => return SyncResult::error(code),
        };
        let now = self.inner.offsets.clock.now();
        let SyncRequest {
            member_id,
            generation,
            protocol_type,
            protocol_name,
            assignments,
        } = request;
        let answer = self.with_existing(&at.group, |g| {
            if g.has_consumer_members() {
                let protocol = (protocol_type.as_deref(), protocol_name.as_deref());
                let answer = g.sync_consumer_group(&member_id, generation, protocol, now);
                return (Answer::Now(answer), Vec::new());
            }
            if !protocol_matches(protocol_type.as_ref(), g.protocol_type.as_ref())
                || !protocol_matches(protocol_name.as_ref(), g.protocol_name.as_ref())
            {
                let refused = SyncResult::error(codes::INCONSISTENT_GROUP_PROTOCOL);
                return (Answer::Now(refused), Vec::new());
            }
            let answer = g.sync(&member_id, generation, assignments, now);
            (answer, records_of(g))
        });
        let answer = match answer {
            None => Answer::Now(SyncResult::error(codes::UNKNOWN_MEMBER_ID)),
            Some((answer, records)) => {
                // A task of its own, run to the end even if this call is dropped (its
                // client gone, and a call on this shard runs in place): the other members'
                // syncs stay parked until `finish_sync`.
                let (coordinator, group) = (self.clone(), at.group.clone());
                let finished = glommio::spawn_local(async move {
                    let written = if records.is_empty() {
                        broker_codes::NONE
                    } else {
                        coordinator.persist(&log, records).await
                    };
                    if written != broker_codes::NONE {
                        tracing::warn!(%group, code = written, "completed generation not written");
                    }
                    let (rules, now) = (coordinator.rules(), coordinator.inner.offsets.clock.now());
                    coordinator.with_existing(&group, |g| g.finish_sync(written, &rules, now));
                })
                .detach();
                finished.await;
                answer
            }
        };
        let gone = SyncResult::error(codes::UNKNOWN_MEMBER_ID);
        let stopping = SyncResult::error(codes::NOT_COORDINATOR);
        settle(&self.inner.offsets.shutdown, answer, gone, stopping).await
    }

    /// `Heartbeat`: one error code.
    pub async fn heartbeat(
        &self,
        at: GroupAddress,
        member_id: String,
        instance_id: Option<String>,
        generation: i32,
    ) -> i16 {
        if let Err(code) = self.ensure_loaded(at.partition).await {
            return code;
        }
        let now = self.inner.offsets.clock.now();
        self.heartbeat_member(&at.group, &member_id, instance_id.as_ref(), generation, now)
    }

    /// `ConsumerGroupHeartbeat` (KIP-848): answered at once (reconciliation never parks).
    pub async fn consumer_heartbeat(
        &self,
        at: GroupAddress,
        request: HeartbeatRequest,
        version: i16,
    ) -> HeartbeatAnswer {
        let log = match self.ensure_loaded(at.partition).await {
            Ok(log) => log,
            Err(code) => return HeartbeatAnswer::error(code, "the coordinator is not available"),
        };
        let now = self.inner.offsets.clock.now();
        let rules = self.rules();
        let snapshot = self.inner.offsets.metadata.current();
        let topics = SnapshotTopics(&snapshot);
        let (answer, records) = self.with_group(&at.group, |g| {
            let epoch_before = g.consumer.as_ref().map_or(0, |c| c.group_epoch);
            let answer = g.consumer_heartbeat(request, version, &topics, &rules, now);
            (answer, self.take_records(g, epoch_before))
        });
        if records.is_empty() {
            return answer;
        }
        // Answered only once the change is durable, as Kafka answers after its write. If
        // the write fails, memory is ahead of the log: the member gets the error, retries,
        // and the next change is written with the state as it then is.
        match self.persist(&log, records).await {
            broker_codes::NONE => answer,
            code => HeartbeatAnswer::error(code, "the group's change could not be written"),
        }
    }

    /// `ConsumerGroupDescribe` (KIP-848), for one group: `None` when there is no
    /// consumer-protocol group of that id.
    pub async fn consumer_describe(
        &self,
        at: GroupAddress,
    ) -> Result<Option<ConsumerGroupDescription>, i16> {
        self.ensure_loaded(at.partition).await?;
        let groups = self.inner.groups.borrow();
        Ok(groups.get(&at.group).and_then(|g| {
            let consumer = g.consumer.as_ref()?;
            Some(ConsumerGroupDescription {
                state: consumer.state_name(),
                group_epoch: consumer.group_epoch,
                assignment_epoch: consumer.assignment_epoch,
                assignor: consumer.assignor.unwrap_or(Assignor::ALL[0]).name(),
                members: consumer
                    .members
                    .values()
                    .map(|m| {
                        let target = consumer
                            .target
                            .get(&m.member_id)
                            .cloned()
                            .unwrap_or_default();
                        (m.clone(), target)
                    })
                    .collect(),
            })
        }))
    }

    /// `LeaveGroup`: an error code per (member id, group instance id) leaving, in order.
    /// Classic members inside a consumer group leave it (written before the answer).
    pub async fn leave(
        &self,
        at: GroupAddress,
        members: Vec<(String, Option<String>)>,
    ) -> Vec<i16> {
        let log = match self.ensure_loaded(at.partition).await {
            Ok(log) => log,
            Err(code) => return vec![code; members.len()],
        };
        let now = self.inner.offsets.clock.now();
        let rules = self.rules();
        let mut records = Vec::new();
        let mut codes_out: Vec<i16> = members
            .iter()
            .map(|(member_id, instance_id)| {
                self.with_existing(&at.group, |g| {
                    let epoch_before = g.consumer.as_ref().map_or(0, |c| c.group_epoch);
                    let code = if g.has_consumer_members() {
                        g.leave_consumer_group(member_id, instance_id.as_deref())
                    } else {
                        g.leave(member_id, instance_id.as_deref(), &rules, now)
                    };
                    records.extend(self.take_records(g, epoch_before));
                    code
                })
                .unwrap_or(codes::UNKNOWN_MEMBER_ID)
            })
            .collect();
        if !records.is_empty() {
            let code = self.persist(&log, records).await;
            if code != broker_codes::NONE {
                for slot in codes_out.iter_mut().filter(|c| **c == broker_codes::NONE) {
                    *slot = code;
                }
            }
        }
        codes_out
    }

    /// The group's changes as records to write (a completed generation or emptying of a
    /// classic group, then consumer-protocol changes), and its consumer-protocol rebalances
    /// counted (`epoch_before`: the consumer group's epoch before the change).
    fn take_records(&self, g: &mut Group, epoch_before: i32) -> Vec<OffsetsRecord> {
        if let Some(consumer) = g.consumer.as_mut() {
            self.inner
                .consumer_counts
                .borrow_mut()
                .note(epoch_before, consumer);
        }
        records_of(g)
    }

    /// `OffsetCommit`: an error code per offset, in order.
    pub async fn commit(&self, at: GroupAddress, request: CommitRequest) -> Vec<i16> {
        match self.ensure_loaded(at.partition).await {
            Ok(log) => self.commit_offsets(&log, &at.group, request).await,
            Err(code) => vec![code; request.offsets.len()],
        }
    }

    /// `TxnOffsetCommit`: the offsets are written as the producer's transactional batch and
    /// held pending until the transaction's marker on this partition (`complete_txn`).
    /// A request naming no generation, member or instance is not checked against the group
    /// (Kafka's rule for transactional commits); one that does is checked as a commit.
    pub async fn commit_transactional(
        &self,
        at: GroupAddress,
        producer_id: i64,
        producer_epoch: i16,
        request: CommitRequest,
    ) -> Vec<i16> {
        let count = request.offsets.len();
        let log = match self.ensure_loaded(at.partition).await {
            Ok(log) => log,
            Err(code) => return vec![code; count],
        };
        let named = request.generation >= 0
            || !request.member_id.is_empty()
            || request.instance_id.is_some();
        if named {
            let checked = self.with_group(&at.group, |g| {
                g.check_commit(
                    &request.member_id,
                    request.instance_id.as_deref(),
                    request.generation,
                )
            });
            if let Err(code) = checked {
                return vec![code; count];
            }
        }
        let pending: usize = self.inner.txn_offsets.borrow().values().map(Vec::len).sum();
        if pending + count > TXN_OFFSETS_PENDING_MAX {
            return vec![codes::COORDINATOR_NOT_AVAILABLE; count];
        }
        let mut codes_out = Vec::with_capacity(count);
        let mut records = Vec::new();
        for (topic, partition, value) in request.offsets {
            let code = if value.metadata.len() > OFFSET_METADATA_BYTES_MAX {
                codes::OFFSET_METADATA_TOO_LARGE
            } else if topic.len() > TOPIC_NAME_BYTES_MAX {
                broker_codes::UNKNOWN_TOPIC_OR_PARTITION
            } else {
                records.push(OffsetsRecord::Commit {
                    group: at.group.clone(),
                    topic,
                    partition,
                    value: Some(value),
                });
                broker_codes::NONE
            };
            codes_out.push(code);
        }
        if records.is_empty() {
            return codes_out;
        }
        let batch = records::encode_txn_batch(
            &records,
            self.inner.offsets.clock.now_ms(),
            producer_id,
            producer_epoch,
        );
        let code = self
            .append_txn_offsets(&log, batch, producer_id, records)
            .await;
        for slot in codes_out.iter_mut().filter(|c| **c == broker_codes::NONE) {
            *slot = code;
        }
        codes_out
    }

    async fn append_txn_offsets(
        &self,
        log: &OffsetsLog,
        batch: Bytes,
        producer_id: i64,
        records: Vec<OffsetsRecord>,
    ) -> i16 {
        let gate = self.append_gate(log.partition);
        let turn = gate.acquire_permit(1).await.expect("never closed");
        let appended = match log.store.append(batch).await {
            Ok(appended) => appended,
            Err(code) => return code,
        };
        // Pending in log order; the marker (after this, from the same coordinator's
        // EndTxn) finds them.
        self.inner
            .txn_offsets
            .borrow_mut()
            .entry((log.partition, producer_id))
            .or_default()
            .extend(records);
        drop(turn);
        match appended.durable().await {
            Ok(()) => broker_codes::NONE,
            Err(code) => code,
        }
    }

    /// The transaction of `producer_id` ended on offsets partition `partition` (its marker
    /// is written there, and committed): its pending offsets become the groups' committed
    /// offsets (`commit`) or are dropped. Called after the marker's write.
    ///
    /// While the partition is being replayed the call is left out: the replay may not have
    /// read the transaction's offsets yet (ending nothing here, they would then stay pending
    /// for good, or be applied by the producer's next commit after an abort), and it reads
    /// on to the committed end, which holds the marker, and ends them in log order.
    pub fn complete_txn(&self, partition: i32, producer_id: i64, commit: bool) {
        if self.inner.replaying.borrow().contains(&partition) {
            return;
        }
        self.end_txn_offsets(partition, producer_id, commit);
    }

    /// [`Self::complete_txn`]'s effect, for the replay too when it reads a marker.
    fn end_txn_offsets(&self, partition: i32, producer_id: i64, commit: bool) {
        let pending = self
            .inner
            .txn_offsets
            .borrow_mut()
            .remove(&(partition, producer_id));
        let Some(records) = pending.filter(|_| commit) else {
            return;
        };
        *self
            .inner
            .records_since_checkpoint
            .borrow_mut()
            .entry(partition)
            .or_default() += records.len();
        for record in records {
            self.apply(record);
        }
    }

    /// `OffsetFetch`: the committed offsets of `partitions` (of every committed partition
    /// when `None`), or the error code for the group. `member` (v9: member id and epoch) is
    /// checked against a consumer-protocol group's member epochs, as Kafka does
    /// (`STALE_MEMBER_EPOCH`); admin clients name no member. With `require_stable`
    /// (KIP-447, v7+), a partition whose offset a transaction committed that has not ended
    /// yet answers `None` here and is listed in the second part: the handler answers it
    /// `UNSTABLE_OFFSET_COMMIT` and the client asks again, instead of reading the offset
    /// from before the transaction and reprocessing what it covered.
    pub async fn fetch_offsets(
        &self,
        at: GroupAddress,
        partitions: Option<Vec<(String, Vec<i32>)>>,
        member: Option<(String, i32)>,
        require_stable: bool,
    ) -> Result<(FetchedOffsets, Vec<(String, i32)>), i16> {
        self.ensure_loaded(at.partition).await?;
        if let Some((member_id, member_epoch)) = member {
            let groups = self.inner.groups.borrow();
            let consumer = groups
                .get(&at.group)
                .filter(|g| g.members.is_empty())
                .and_then(|g| g.consumer.as_ref());
            if let Some(consumer) = consumer {
                consumer.check_member_epoch(&member_id, member_epoch)?;
            }
        }
        let mut offsets = self.committed(&at.group, partitions);
        if !require_stable {
            return Ok((offsets, Vec::new()));
        }
        let unstable = self.unstable_offsets(&at.group);
        let mut listed = Vec::new();
        for (topic, partition, value) in &mut offsets {
            if unstable.contains(&(topic.clone(), *partition)) {
                *value = None;
                listed.push((topic.clone(), *partition));
            }
        }
        Ok((offsets, listed))
    }

    /// The (topic, partition)s of `group` with transactional offsets still pending.
    fn unstable_offsets(&self, group: &str) -> HashSet<(String, i32)> {
        let pending = self.inner.txn_offsets.borrow();
        pending
            .values()
            .flatten()
            .filter_map(|record| match record {
                OffsetsRecord::Commit {
                    group: of,
                    topic,
                    partition,
                    ..
                } if of == group => Some((topic.clone(), *partition)),
                _ => None,
            })
            .collect()
    }

    /// `OffsetCommit` v0: `(topic, partition, offset, metadata bytes)` stored apart from the
    /// group's commits and without the group's membership rules, as Kafka 3.9 wrote them to
    /// `ZooKeeper` (the offset alone; metadata above `offset.metadata.max.bytes` refused).
    /// An error code per offset, in order.
    pub async fn commit_standalone(
        &self,
        at: GroupAddress,
        offsets: Vec<(String, i32, i64, usize)>,
    ) -> Vec<i16> {
        let log = match self.ensure_loaded(at.partition).await {
            Ok(log) => log,
            Err(code) => return vec![code; offsets.len()],
        };
        let mut codes_out = Vec::with_capacity(offsets.len());
        let mut records = Vec::new();
        for (topic, partition, offset, metadata_bytes) in offsets {
            if metadata_bytes > OFFSET_METADATA_BYTES_MAX {
                codes_out.push(codes::OFFSET_METADATA_TOO_LARGE);
                continue;
            }
            if topic.len() > TOPIC_NAME_BYTES_MAX {
                codes_out.push(broker_codes::UNKNOWN_TOPIC_OR_PARTITION);
                continue;
            }
            codes_out.push(broker_codes::NONE);
            records.push(OffsetsRecord::StandaloneCommit {
                group: at.group.clone(),
                topic,
                partition,
                offset,
            });
        }
        if records.is_empty() {
            return codes_out;
        }
        let code = self.persist(&log, records).await;
        for slot in codes_out.iter_mut().filter(|c| **c == broker_codes::NONE) {
            *slot = code;
        }
        codes_out
    }

    /// `OffsetFetch` v0: the `OffsetCommit` v0 offsets of `partitions`, in order (`None`:
    /// never committed with v0), or the error code for the group.
    pub async fn fetch_standalone(
        &self,
        at: GroupAddress,
        partitions: Vec<(String, Vec<i32>)>,
    ) -> Result<Vec<(String, i32, Option<i64>)>, i16> {
        self.ensure_loaded(at.partition).await?;
        let stored = self.inner.standalone_offsets.borrow();
        let group = stored.get(&at.group);
        Ok(partitions
            .into_iter()
            .flat_map(|(topic, indexes)| {
                indexes.into_iter().map(move |index| {
                    let offset = group.and_then(|g| g.get(&(topic.clone(), index)).copied());
                    (topic.clone(), index, offset)
                })
            })
            .collect())
    }

    /// `DescribeGroups`, for one group.
    pub async fn describe(&self, at: GroupAddress) -> GroupDescription {
        match self.ensure_loaded(at.partition).await {
            Ok(_) => self.description(&at.group),
            Err(code) => GroupDescription {
                error_code: code,
                state: "",
                protocol_type: String::new(),
                protocol_name: String::new(),
                members: Vec::new(),
            },
        }
    }

    /// `DeleteGroups`, for one group: one error code.
    pub async fn delete(&self, at: GroupAddress) -> i16 {
        match self.ensure_loaded(at.partition).await {
            Ok(log) => self.delete_group(&log, &at.group).await,
            Err(code) => code,
        }
    }

    /// `OffsetDelete`: an error code per partition, in order, or the error code for the
    /// group.
    pub async fn delete_offsets(
        &self,
        at: GroupAddress,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<i16>, i16> {
        let log = self.ensure_loaded(at.partition).await?;
        self.delete_group_offsets(&log, &at.group, partitions).await
    }

    /// A heartbeat naming a group instance id held by another member id is fenced (KIP-345).
    fn heartbeat_member(
        &self,
        group: &str,
        member_id: &str,
        instance_id: Option<&String>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        self.with_existing(group, |g| {
            if g.has_consumer_members() {
                let instance_id = instance_id.map(String::as_str);
                return g.heartbeat_consumer_group(member_id, instance_id, generation, now);
            }
            if let Some(instance_id) = instance_id {
                let owner = g
                    .members
                    .iter()
                    .find(|m| m.instance_id.as_ref() == Some(instance_id));
                if owner.is_some_and(|m| m.member_id != member_id) {
                    return codes::FENCED_INSTANCE_ID;
                }
            }
            g.heartbeat(member_id, generation, now)
        })
        .unwrap_or(codes::UNKNOWN_MEMBER_ID)
    }

    /// Runs `change` on the group, creating it (Empty) if it does not exist yet.
    fn with_group<T>(&self, group: &str, change: impl FnOnce(&mut Group) -> T) -> T {
        let mut groups = self.inner.groups.borrow_mut();
        let entry = groups
            .entry(group.to_string())
            .or_insert_with(|| Group::new(group).with_clock(self.inner.offsets.clock.clone()));
        change(entry)
    }

    /// Runs `change` on the group if it exists.
    fn with_existing<T>(&self, group: &str, change: impl FnOnce(&mut Group) -> T) -> Option<T> {
        self.inner.groups.borrow_mut().get_mut(group).map(change)
    }

    /// The offsets partition `partition`, replayed into memory the first time (for a
    /// replicated one: the first time in each term this replica leads it).
    async fn ensure_loaded(&self, partition: i32) -> Result<OffsetsLog, i16> {
        let tp = TopicPartition {
            topic: OFFSETS_TOPIC.into(),
            partition,
        };
        let store = self.store_of(&tp)?;
        let partitions_total = self
            .inner
            .offsets
            .metadata
            .current()
            .topic(OFFSETS_TOPIC)
            .map_or(1, |topic| topic.partition_count());
        let log = OffsetsLog {
            partition,
            partitions_total,
            store,
        };
        self.start_ticker();
        let replaying = match self.inner.replays.turn(partition).await {
            ReplayTurn::Replayed => return Ok(log),
            ReplayTurn::Failed => return Err(codes::COORDINATOR_LOAD_IN_PROGRESS),
            ReplayTurn::Replay(replaying) => replaying,
        };
        let mut replayed = self.replay(&tp, &log.store).await;
        if let (Ok(()), OffsetsStore::Replicated { term, .. }) = (&replayed, &log.store) {
            // Leadership may have moved on while the log was read.
            if log.store.still_leading() {
                self.inner
                    .loaded_terms
                    .borrow_mut()
                    .insert(partition, *term);
                tracing::info!(partition = %tp, term, "offsets partition loaded as its leader");
            } else {
                replayed = Err("leadership lost during the replay".to_string());
            }
        }
        if let Err(error) = &replayed {
            tracing::error!(partition = %tp, %error, "replaying the offsets log failed");
        }
        replaying.finish(replayed.is_ok());
        if replayed.is_err() && matches!(log.store, OffsetsStore::Replicated { .. }) {
            self.unload(partition);
            return Err(codes::NOT_COORDINATOR);
        }
        replayed
            .map(|()| log)
            .map_err(|_| codes::COORDINATOR_NOT_AVAILABLE)
    }

    /// Where offsets partition `tp` is written on this shard: its log (one replica), or its
    /// Raft group while this replica leads it (unloaded and refused otherwise). Err is the
    /// code to answer with.
    fn store_of(&self, tp: &TopicPartition) -> Result<OffsetsStore, i16> {
        let not_here = match self.inner.offsets.partitions.log(tp) {
            Ok(log) => return Ok(OffsetsStore::Plain(log)),
            Err(code) => code,
        };
        let Some(replicas) = self.inner.offsets.partitions.replicas_hosting(tp) else {
            // A partition this shard does not hold (a stale route) or an offline one.
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

    /// Forgets replicated offsets partition `partition` (this replica stopped leading it, or
    /// leads it in a new term): its groups, offsets and pending transactional offsets leave
    /// memory, parked joins and syncs of its groups are released, and the next call in a
    /// term this replica leads replays the log again, as Kafka's coordinator unloads a
    /// partition when it loses leadership.
    fn unload(&self, partition: i32) {
        let Some(term) = self.inner.loaded_terms.borrow_mut().remove(&partition) else {
            return;
        };
        let total = self
            .inner
            .offsets
            .metadata
            .current()
            .topic(OFFSETS_TOPIC)
            .map_or(1, |topic| topic.partition_count());
        let here = |group: &str| partition_for(group, total) == partition;
        let mut groups = self.inner.groups.borrow_mut();
        let before = groups.len();
        groups.retain(|id, _| !here(id));
        let unloaded = before - groups.len();
        drop(groups);
        self.inner
            .standalone_offsets
            .borrow_mut()
            .retain(|id, _| !here(id));
        self.inner
            .txn_offsets
            .borrow_mut()
            .retain(|(at, _), _| *at != partition);
        self.inner
            .records_since_checkpoint
            .borrow_mut()
            .remove(&partition);
        self.inner.replays.forget(partition);
        tracing::info!(
            partition,
            term,
            groups = unloaded,
            "offsets partition unloaded: no longer its leader in that term"
        );
    }

    /// Unloads every loaded replicated partition this replica no longer leads in the term
    /// it loaded it in (the ticker's check, so parked calls are released promptly).
    fn unload_lost_partitions(&self) {
        let loaded: Vec<i32> = self.inner.loaded_terms.borrow().keys().copied().collect();
        for partition in loaded {
            let tp = TopicPartition {
                topic: OFFSETS_TOPIC.into(),
                partition,
            };
            // store_of unloads what it finds stale.
            let _ = self.store_of(&tp);
        }
    }

    /// Reads the partition's whole log and applies every record in order, up to the
    /// committed end as it is when the reading stops: what commits while it reads (a
    /// transaction's marker, whose `complete_txn` is left to the replay) is read too.
    async fn replay(&self, tp: &TopicPartition, log: &OffsetsStore) -> Result<(), String> {
        let started = Instant::now();
        self.inner.replaying.borrow_mut().insert(tp.partition);
        let _replaying = ReplayingMark {
            inner: &self.inner,
            partition: tp.partition,
        };
        let mut offset = log.log_start_offset();
        let (mut applied, mut skipped) = (0_usize, 0_usize);
        loop {
            // Checked with no await before the mark is dropped: a marker committed after
            // this is told to the loaded coordinator.
            let end = log.replay_end();
            if offset >= end {
                break;
            }
            let batches = log.read(offset, REPLAY_READ_BYTES).await?;
            if batches.is_empty() {
                break;
            }
            for stored in batches {
                let Some(header) = BatchHeader::parse(&stored) else {
                    return Err(format!("unparseable batch at offset {offset}"));
                };
                offset = header.last_offset() + 1;
                if header.is_control() {
                    if let Some(commit) = records::marker_commits(&stored) {
                        self.end_txn_offsets(tp.partition, header.producer_id, commit);
                    }
                    continue;
                }
                let (decoded, foreign) = records::decode_batch(&stored);
                if records::is_transactional_data(&header) {
                    skipped += foreign;
                    self.inner
                        .txn_offsets
                        .borrow_mut()
                        .entry((tp.partition, header.producer_id))
                        .or_default()
                        .extend(decoded);
                    continue;
                }
                skipped += foreign;
                applied += decoded.len();
                for record in decoded {
                    self.apply_replayed(record);
                }
            }
        }
        self.inner
            .records_since_checkpoint
            .borrow_mut()
            .insert(tp.partition, applied);
        tracing::info!(partition = %tp, applied, skipped, elapsed_ms = started.elapsed().as_millis() as u64, "offsets log replayed");
        Ok(())
    }

    /// Applies one record read back from the offsets log: a consumer group's records
    /// rebuild it (see `ConsumerGroup::replay`), the others as after an append.
    fn apply_replayed(&self, record: OffsetsRecord) {
        if let OffsetsRecord::ClassicGroup { group, value } = record {
            let now = self.inner.offsets.clock.now();
            let mut groups = self.inner.groups.borrow_mut();
            return groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(&group).with_clock(self.inner.offsets.clock.clone()))
                .restore_classic(value, now);
        }
        let OffsetsRecord::Consumer(record) = record else {
            return self.apply(record);
        };
        let mut groups = self.inner.groups.borrow_mut();
        if let ConsumerRecord::Group { group, value: None } = &record {
            if let Some(g) = groups.get_mut(group) {
                g.consumer = None;
            }
            return;
        }
        let rules = self.inner.config.borrow().rules.consumer.clone();
        let now = self.inner.offsets.clock.now();
        let group = record.group().to_string();
        let entry = groups
            .entry(group.clone())
            .or_insert_with(|| Group::new(&group).with_clock(self.inner.offsets.clock.clone()));
        entry
            .consumer
            .get_or_insert_default()
            .replay(record, &rules, now);
        entry.drop_restored_classic_members();
    }

    /// Applies one record of the offsets log to memory (replay, and after each append).
    fn apply(&self, record: OffsetsRecord) {
        match record {
            OffsetsRecord::Commit {
                group,
                topic,
                partition,
                value,
            } => {
                let mut groups = self.inner.groups.borrow_mut();
                match value {
                    Some(value) => {
                        let entry = groups.entry(group.clone()).or_insert_with(|| {
                            Group::new(&group).with_clock(self.inner.offsets.clock.clone())
                        });
                        entry.offsets.insert((topic, partition), value);
                    }
                    None => {
                        if let Some(entry) = groups.get_mut(&group) {
                            entry.offsets.remove(&(topic, partition));
                        }
                    }
                }
            }
            OffsetsRecord::GroupDeleted { group } => {
                self.inner.groups.borrow_mut().remove(&group);
            }
            OffsetsRecord::StandaloneCommit {
                group,
                topic,
                partition,
                offset,
            } => {
                self.inner
                    .standalone_offsets
                    .borrow_mut()
                    .entry(group)
                    .or_default()
                    .insert((topic, partition), offset);
            }
            // Written from the group's memory, which already holds them (a replay restores
            // them in `apply_replayed`).
            OffsetsRecord::Consumer(_) | OffsetsRecord::ClassicGroup { .. } => {}
        }
    }

    /// Appends `records` as one batch and waits until it is fdatasync'd (acks=all). Memory
    /// is updated right after the append, in log order; if the fdatasync then fails the log
    /// is fenced and this coordinator stops answering for the partition.
    async fn persist(&self, log: &OffsetsLog, records: Vec<OffsetsRecord>) -> i16 {
        let batch = records::encode_batch(&records, self.inner.offsets.clock.now_ms());
        let gate = self.append_gate(log.partition);
        let turn = gate.acquire_permit(1).await.expect("never closed");
        let appended = match log.store.append(batch).await {
            Ok(appended) => appended,
            Err(code) => return code,
        };
        *self
            .inner
            .records_since_checkpoint
            .borrow_mut()
            .entry(log.partition)
            .or_default() += records.len();
        for record in records {
            self.apply(record);
        }
        drop(turn);
        if let Err(code) = appended.durable().await {
            return code;
        }
        self.maybe_checkpoint(log);
        broker_codes::NONE
    }

    /// Every append to one offsets partition passes this gate: a checkpoint's snapshot and
    /// its append must not interleave with a commit (its older value would win on replay).
    fn append_gate(&self, partition: i32) -> Rc<Semaphore> {
        self.inner
            .append_gates
            .borrow_mut()
            .entry(partition)
            .or_insert_with(|| Rc::new(Semaphore::new(1)))
            .clone()
    }

    /// Starts a checkpoint of the partition once enough records followed the last one.
    fn maybe_checkpoint(&self, log: &OffsetsLog) {
        let threshold = self.inner.config.borrow().checkpoint_after_records;
        let due = self
            .inner
            .records_since_checkpoint
            .borrow()
            .get(&log.partition)
            .is_some_and(|count| *count >= threshold);
        // A checkpoint trims the log before it; offsets of an open transaction written
        // before it would be lost with it (they are not live yet), so it waits until no
        // transaction has pending offsets on the partition.
        let open_transactions = self
            .inner
            .txn_offsets
            .borrow()
            .keys()
            .any(|(partition, _)| *partition == log.partition);
        if !due || open_transactions || !self.inner.checkpointing.borrow_mut().insert(log.partition)
        {
            return;
        }
        let (coordinator, log) = (
            GroupCoordinator {
                inner: self.inner.clone(),
            },
            log.clone(),
        );
        glommio::spawn_local(async move {
            coordinator.checkpoint(&log).await;
            coordinator
                .inner
                .checkpointing
                .borrow_mut()
                .remove(&log.partition);
        })
        .detach();
    }

    /// Kafka compacts `__consumer_offsets`; this log cannot, so it is checkpointed instead:
    /// every live offset of the partition is appended again as one batch, and once that is
    /// acknowledged (durable; on a replicated partition committed by its group) everything
    /// before it is deleted (it holds nothing the checkpoint lacks). A replicated partition
    /// deletes through its group, so every replica trims and a new leader replays from the
    /// checkpoint on.
    async fn checkpoint(&self, offsets: &OffsetsLog) {
        let partition = offsets.partition;
        let store = &offsets.store;
        let gate = self.append_gate(partition);
        let turn = gate.acquire_permit(1).await.expect("never closed");
        let live = self.live_records(offsets);
        self.inner
            .records_since_checkpoint
            .borrow_mut()
            .insert(partition, 0);
        // When nothing is live everything goes up to the end taken here, under the gate:
        // what is appended after it stays.
        let end = store.replay_end();
        let appended = if live.is_empty() {
            None
        } else {
            let batch = records::encode_batch(&live, self.inner.offsets.clock.now_ms());
            if store.batch_bytes_max().is_none_or(|max| batch.len() > max) {
                tracing::warn!(
                    partition,
                    bytes = batch.len(),
                    "offsets checkpoint larger than a batch; not checkpointed"
                );
                return;
            }
            match store.append(batch).await {
                Ok(pending) => Some(pending),
                Err(code) => {
                    tracing::warn!(partition, code, "offsets checkpoint append refused");
                    return;
                }
            }
        };
        drop(turn);
        let keep_from = match appended {
            None => end,
            Some(pending) => match pending.acknowledged().await {
                Ok(base_offset) => base_offset,
                Err(code) => {
                    tracing::warn!(partition, code, "offsets checkpoint not acknowledged");
                    return;
                }
            },
        };
        match store.trim_before(keep_from).await {
            Ok(start) => {
                tracing::info!(
                    partition,
                    live = live.len(),
                    log_start_offset = start,
                    "offsets log checkpointed"
                );
            }
            Err(error) => {
                tracing::error!(partition, %error, "offsets checkpoint failed");
            }
        }
    }

    /// Consumer-protocol group rebalances (group epoch bumps) on this shard since the start,
    /// and the reconciliation times of their members.
    pub fn consumer_group_metrics(&self) -> (u64, HistogramBuckets) {
        let counts = self.inner.consumer_counts.borrow();
        (counts.rebalances, counts.reconciliation.buckets())
    }

    /// Committed offsets of this shard's groups as (group, topic, partition, offset), for
    /// the lag metric: at most `max`, by group id then topic and partition, and how many
    /// there are in all. Only groups served since the start are known (an offsets
    /// partition is replayed on first use).
    pub fn committed_offsets(&self, max: usize) -> (Vec<(String, String, i32, i64)>, usize) {
        let groups = self.inner.groups.borrow();
        let total = groups.values().map(|group| group.offsets.len()).sum();
        let mut ids: Vec<&String> = groups.keys().collect();
        ids.sort_unstable();
        let listed = ids
            .into_iter()
            .flat_map(|id| {
                groups[id]
                    .offsets
                    .iter()
                    .map(move |((topic, partition), committed)| {
                        (id.clone(), topic.clone(), *partition, committed.offset)
                    })
            })
            .take(max)
            .collect();
        (listed, total)
    }

    /// Every committed offset of the groups placed on this offsets partition, the
    /// `OffsetCommit` v0 ones included, and the groups' last written membership.
    fn live_records(&self, log: &OffsetsLog) -> Vec<OffsetsRecord> {
        let here = |group: &str| partition_for(group, log.partitions_total) == log.partition;
        let mut live: Vec<OffsetsRecord> = self
            .inner
            .groups
            .borrow()
            .values()
            .filter(|g| here(&g.id))
            .flat_map(|g| {
                g.offsets
                    .iter()
                    .map(|((topic, partition), value)| OffsetsRecord::Commit {
                        group: g.id.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                        value: Some(value.clone()),
                    })
            })
            .collect();
        // Classic membership before consumer-protocol records, as `records_of` writes them.
        live.extend(
            self.inner
                .groups
                .borrow()
                .values()
                .filter(|g| here(&g.id) && !g.has_consumer_members())
                .filter_map(|g| {
                    Some(OffsetsRecord::ClassicGroup {
                        group: g.id.clone(),
                        value: g.classic_written.clone()?,
                    })
                }),
        );
        live.extend(
            self.inner
                .groups
                .borrow()
                .values()
                .filter(|g| here(&g.id))
                .filter_map(|g| Some(g.consumer.as_ref()?.all_records(&g.id)))
                .flatten()
                .map(OffsetsRecord::Consumer),
        );
        let standalone = self.inner.standalone_offsets.borrow();
        live.extend(standalone.iter().filter(|(group, _)| here(group)).flat_map(
            |(group, offsets)| {
                offsets.iter().map(
                    |((topic, partition), offset)| OffsetsRecord::StandaloneCommit {
                        group: group.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                        offset: *offset,
                    },
                )
            },
        ));
        live
    }

    /// `OffsetCommit`: admitted by the group's rules, then validated per partition.
    async fn commit_offsets(
        &self,
        log: &OffsetsLog,
        group: &str,
        request: CommitRequest,
    ) -> Vec<i16> {
        let CommitRequest {
            member_id,
            instance_id,
            generation,
            offsets,
        } = request;
        let admitted = self.with_group(group, |g| {
            g.check_commit(&member_id, instance_id.as_deref(), generation)
                .map(|()| {
                    offsets
                        .iter()
                        .map(|(topic, partition, _)| {
                            g.commit_admits_partition(&member_id, generation, topic, *partition)
                        })
                        .collect::<Vec<bool>>()
                })
        });
        let admitted_partitions = match admitted {
            Ok(admitted_partitions) => admitted_partitions,
            Err(code) => return vec![code; offsets.len()],
        };
        let mut codes_out = Vec::with_capacity(offsets.len());
        let mut records = Vec::new();
        for ((topic, partition, value), admitted) in offsets.into_iter().zip(admitted_partitions) {
            if !admitted {
                codes_out.push(STALE_MEMBER_EPOCH);
                continue;
            }
            if value.metadata.len() > OFFSET_METADATA_BYTES_MAX {
                codes_out.push(codes::OFFSET_METADATA_TOO_LARGE);
                continue;
            }
            if topic.len() > TOPIC_NAME_BYTES_MAX {
                codes_out.push(broker_codes::UNKNOWN_TOPIC_OR_PARTITION);
                continue;
            }
            codes_out.push(broker_codes::NONE);
            records.push(OffsetsRecord::Commit {
                group: group.to_string(),
                topic,
                partition,
                value: Some(value),
            });
        }
        if records.is_empty() {
            return codes_out;
        }
        let code = self.persist(log, records).await;
        for slot in codes_out.iter_mut().filter(|c| **c == broker_codes::NONE) {
            *slot = code;
        }
        codes_out
    }

    fn committed(
        &self,
        group: &str,
        partitions: Option<Vec<(String, Vec<i32>)>>,
    ) -> FetchedOffsets {
        let groups = self.inner.groups.borrow();
        let committed = groups.get(group).map(|g| &g.offsets);
        match partitions {
            Some(partitions) => partitions
                .into_iter()
                .flat_map(|(topic, indexes)| {
                    indexes.into_iter().map(move |index| (topic.clone(), index))
                })
                .map(|(topic, index)| {
                    let value = committed.and_then(|c| c.get(&(topic.clone(), index)).cloned());
                    (topic, index, value)
                })
                .collect(),
            None => committed
                .into_iter()
                .flatten()
                .map(|((topic, index), value)| (topic.clone(), *index, Some(value.clone())))
                .collect(),
        }
    }

    fn description(&self, group: &str) -> GroupDescription {
        let groups = self.inner.groups.borrow();
        let Some(g) = groups.get(group) else {
            return GroupDescription {
                error_code: broker_codes::NONE,
                state: GroupState::Dead.name(),
                protocol_type: String::new(),
                protocol_name: String::new(),
                members: Vec::new(),
            };
        };
        if g.consumer.is_some() && g.members.is_empty() {
            // Kafka 4.x: DescribeGroups describes classic groups only.
            return GroupDescription {
                error_code: codes::GROUP_ID_NOT_FOUND,
                state: GroupState::Dead.name(),
                protocol_type: String::new(),
                protocol_name: String::new(),
                members: Vec::new(),
            };
        }
        let protocol = g.protocol_name.clone().unwrap_or_default();
        // Kafka shows member metadata and assignments only once the group is Stable.
        let stable = g.state == GroupState::Stable;
        let members = g
            .members
            .iter()
            .map(|m| MemberDescription {
                member_id: m.member_id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: if stable {
                    m.metadata_for(&protocol)
                } else {
                    Bytes::default()
                },
                assignment: if stable {
                    m.assignment.clone()
                } else {
                    Bytes::default()
                },
            })
            .collect();
        GroupDescription {
            error_code: broker_codes::NONE,
            state: g.state.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol_name: protocol,
            members,
        }
    }

    /// `ListGroups`: every group of this shard.
    pub fn list(&self) -> Vec<ListedGroup> {
        self.inner
            .groups
            .borrow()
            .values()
            .filter(|g| g.state != GroupState::Dead)
            .map(|g| match &g.consumer {
                Some(consumer) if g.members.is_empty() => (
                    g.id.clone(),
                    "consumer".to_string(),
                    consumer.state_name(),
                    "consumer",
                ),
                _ => (
                    g.id.clone(),
                    // A group only used for commits has no protocol type: "" as in Kafka.
                    g.protocol_type.clone().unwrap_or_default(),
                    g.state.name(),
                    "classic",
                ),
            })
            .collect()
    }

    /// `DeleteGroups`: only a group without members; its offsets and the group are
    /// tombstoned in the log first.
    async fn delete_group(&self, log: &OffsetsLog, group: &str) -> i16 {
        let records = {
            let groups = self.inner.groups.borrow();
            let Some(g) = groups.get(group) else {
                return codes::GROUP_ID_NOT_FOUND;
            };
            if g.state != GroupState::Empty || g.has_consumer_members() {
                return codes::NON_EMPTY_GROUP;
            }
            let mut records: Vec<OffsetsRecord> = g
                .offsets
                .keys()
                .map(|(topic, partition)| OffsetsRecord::Commit {
                    group: group.to_string(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: None,
                })
                .collect();
            if g.consumer.is_some() {
                records.push(OffsetsRecord::Consumer(ConsumerRecord::Group {
                    group: group.to_string(),
                    value: None,
                }));
            }
            records.push(OffsetsRecord::GroupDeleted {
                group: group.to_string(),
            });
            records
        };
        self.persist(log, records).await
    }

    /// Tombstones every committed offset of `deleted` topics in the groups of the offsets
    /// partitions this shard owns, as Kafka does when topics are deleted: a topic created
    /// again under the same name must not start its consumer groups at the old topic's
    /// offsets (they would skip the new topic's first records). Loads offsets partitions not
    /// yet replayed, so a lazily loaded group cannot bring the old offsets back later.
    pub async fn forget_deleted_topics(&self, deleted: &BTreeSet<String>) {
        let snapshot = self.inner.offsets.metadata.current();
        let Some(offsets_topic) = snapshot.topic(OFFSETS_TOPIC) else {
            return; // no group has ever committed
        };
        let partitions_total = offsets_topic.partition_count();
        let owned: Vec<i32> = snapshot
            .partitions_on(self.inner.offsets.shard_id)
            .filter(|(tp, _)| &*tp.topic == OFFSETS_TOPIC)
            .map(|(tp, _)| tp.partition)
            .collect();
        for partition in owned {
            let log = match self.ensure_loaded(partition).await {
                Ok(log) => log,
                // A replicated partition another replica leads: its coordinator writes them.
                Err(codes::NOT_COORDINATOR) => continue,
                Err(code) => {
                    tracing::warn!(
                        partition,
                        code,
                        "offsets of deleted topics not removed: offsets partition unavailable"
                    );
                    continue;
                }
            };
            let tombstones: Vec<OffsetsRecord> = self
                .inner
                .groups
                .borrow()
                .values()
                .filter(|g| partition_for(&g.id, partitions_total) == partition)
                .flat_map(|g| {
                    g.offsets
                        .keys()
                        .filter(|(topic, _)| deleted.contains(topic))
                        .map(|(topic, topic_partition)| OffsetsRecord::Commit {
                            group: g.id.clone(),
                            topic: topic.clone(),
                            partition: *topic_partition,
                            value: None,
                        })
                })
                .collect();
            if tombstones.is_empty() {
                continue;
            }
            let count = tombstones.len();
            match self.persist(&log, tombstones).await {
                broker_codes::NONE => {
                    tracing::info!(
                        partition,
                        count,
                        ?deleted,
                        "committed offsets of deleted topics removed"
                    );
                }
                code => {
                    tracing::warn!(
                        partition,
                        count,
                        code,
                        "offsets of deleted topics not removed"
                    );
                }
            }
        }
    }

    /// `OffsetDelete`: refused per partition while a member is subscribed to the topic
    /// (we cannot read the subscription of a non-consumer protocol, so any member counts).
    async fn delete_group_offsets(
        &self,
        log: &OffsetsLog,
        group: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<i16>, i16> {
        let (group_code, subscribed) = {
            let groups = self.inner.groups.borrow();
            match groups.get(group) {
                None => (codes::GROUP_ID_NOT_FOUND, Vec::new()),
                Some(g) if g.state == GroupState::Dead => (codes::GROUP_ID_NOT_FOUND, Vec::new()),
                Some(g) => (broker_codes::NONE, subscribed_topics(g)),
            }
        };
        if group_code != broker_codes::NONE {
            return Err(group_code);
        }
        let mut records = Vec::new();
        let mut outcome = Vec::new();
        for (topic, partition) in partitions {
            if subscribed.contains(&topic) {
                outcome.push((topic, partition, codes::GROUP_SUBSCRIBED_TO_TOPIC));
                continue;
            }
            if topic.len() > TOPIC_NAME_BYTES_MAX {
                outcome.push((topic, partition, broker_codes::UNKNOWN_TOPIC_OR_PARTITION));
                continue;
            }
            records.push(OffsetsRecord::Commit {
                group: group.to_string(),
                topic: topic.clone(),
                partition,
                value: None,
            });
            outcome.push((topic, partition, broker_codes::NONE));
        }
        let code = if records.is_empty() {
            broker_codes::NONE
        } else {
            self.persist(log, records).await
        };
        Ok(outcome
            .into_iter()
            .map(|(_, _, c)| if c == broker_codes::NONE { code } else { c })
            .collect())
    }

    /// `InitProducerId`: a producer id and epoch for an idempotent producer, or the error
    /// code. Shard 0 only (see `producer_state::ProducerIds`): not group work, but
    /// coordinator work all the same.
    pub async fn init_producer_id(&self, producer_id: i64, epoch: i16) -> Result<(i64, i16), i16> {
        let offsets = &self.inner.offsets;
        assert_eq!(
            offsets.shard_id, 0,
            "producer ids are allocated on shard 0 only"
        );
        let ids = self
            .inner
            .producer_ids
            .borrow_mut()
            .get_or_insert_with(|| {
                Rc::new(ProducerIds::new(
                    offsets.disk.clone(),
                    &offsets.data_dir,
                    offsets.producer_id_blocks.clone(),
                ))
            })
            .clone();
        ids.init_or_code(producer_id, epoch).await
    }

    /// Starts the clock of this shard's groups, with the broker's settings.
    fn start_ticker(&self) {
        if self.inner.ticker_started.replace(true) {
            return;
        }
        *self.inner.config.borrow_mut() =
            CoordinatorConfig::from_limits(&self.inner.offsets.limits);
        let inner = Rc::downgrade(&self.inner);
        glommio::spawn_local(tick_forever(inner, self.inner.offsets.clock.clone())).detach();
        glommio::spawn_local(expire_offsets_forever(Rc::downgrade(&self.inner))).detach();
    }

    /// The offsets partition `group` lives on, if this shard holds it and has it loaded
    /// (a replicated one: in the term this replica leads it now). For the ticker's writes,
    /// which must never reach a partition memory does not reflect.
    fn offsets_log_of(&self, group: &str) -> Option<OffsetsLog> {
        let snapshot = self.inner.offsets.metadata.current();
        let partitions_total = snapshot.topic(OFFSETS_TOPIC)?.partition_count();
        let tp = TopicPartition {
            topic: OFFSETS_TOPIC.into(),
            partition: partition_for(group, partitions_total),
        };
        let store = self.store_of(&tp).ok()?;
        if let OffsetsStore::Replicated { term, .. } = &store {
            if self.inner.loaded_terms.borrow().get(&tp.partition) != Some(term) {
                return None;
            }
        }
        Some(OffsetsLog {
            partition: tp.partition,
            partitions_total,
            store,
        })
    }

    /// Writes what the ticker changed in groups (members whose session or rebalance
    /// timeout ran out).
    async fn persist_ticked_changes(&self, changed: Vec<(String, Vec<OffsetsRecord>)>) {
        for (group, records) in changed {
            let Some(log) = self.offsets_log_of(&group) else {
                continue;
            };
            let count = records.len();
            let code = self.persist(&log, records).await;
            if code != broker_codes::NONE {
                tracing::error!(%group, count, code, "group change not written");
            }
        }
    }

    /// Tombstones every expired offset of this shard's groups (see `Group::expired_offsets`).
    async fn expire_offsets(&self) {
        let retention_ms = self.inner.config.borrow().offsets_retention.as_millis() as i64;
        let now_ms = self.inner.offsets.clock.now_ms();
        let expired: Vec<(String, Vec<(String, i32)>)> = self
            .inner
            .groups
            .borrow()
            .values()
            .map(|g| (g.id.clone(), g.expired_offsets(now_ms, retention_ms)))
            .filter(|(_, expired)| !expired.is_empty())
            .collect();
        for (group, partitions) in expired {
            let Some(log) = self.offsets_log_of(&group) else {
                continue;
            };
            let count = partitions.len();
            let records = partitions
                .into_iter()
                .map(|(topic, partition)| OffsetsRecord::Commit {
                    group: group.clone(),
                    topic,
                    partition,
                    value: None,
                })
                .collect();
            let code = self.persist(&log, records).await;
            tracing::info!(%group, count, code, "expired committed offsets removed");
        }
    }
}

/// The topics any member of `group` subscribes to, read from the consumer protocol's
/// subscription (version i16, topics array of strings) in each member's metadata.
fn subscribed_topics(group: &Group) -> Vec<String> {
    if let Some(consumer) = group.consumer.as_ref().filter(|_| group.members.is_empty()) {
        return consumer
            .members
            .values()
            .flat_map(|m| m.subscribed_topics.iter().cloned())
            .collect();
    }
    if group.members.is_empty() {
        return Vec::new();
    }
    if group.protocol_type.as_deref() != Some("consumer") {
        return group
            .offsets
            .keys()
            .map(|(topic, _)| topic.clone())
            .collect();
    }
    let protocol = group.protocol_name.clone().unwrap_or_default();
    let mut topics = Vec::new();
    for member in &group.members {
        let metadata = member.metadata_for(&protocol);
        let mut bytes: &[u8] = &metadata;
        let Some(count) = bytes
            .get(2..6)
            .map(|b| i32::from_be_bytes(b.try_into().expect("4")))
        else {
            continue;
        };
        bytes = &bytes[6..];
        for _ in 0..count.max(0) {
            let Some(length) = bytes
                .get(..2)
                .map(|b| i16::from_be_bytes([b[0], b[1]]) as usize)
            else {
                break;
            };
            let Some(name) = bytes.get(2..2 + length) else {
                break;
            };
            topics.push(String::from_utf8_lossy(name).into_owned());
            bytes = &bytes[2 + length..];
        }
    }
    topics
}

/// Waits for a parked answer. A dropped sender (the member was removed without an answer)
/// reads as `gone`. Shutdown answers `stopping` at once, as Kafka answers parked requests
/// with `NOT_COORDINATOR` when a coordinator unloads: a parked join may otherwise hold its
/// connection, and so the shutdown, for a whole rebalance timeout.
async fn settle<T>(shutdown: &ShutdownSignal, answer: Answer<T>, gone: T, stopping: T) -> T {
    let receiver = match answer {
        Answer::Now(result) => return result,
        Answer::Later(receiver) => receiver,
    };
    let parked = std::pin::pin!(receiver.recv());
    let shutdown = std::pin::pin!(shutdown.started());
    match futures::future::select(parked, shutdown).await {
        futures::future::Either::Left((answer, _)) => answer.unwrap_or(gone),
        futures::future::Either::Right(_) => stopping,
    }
}

/// `SyncGroup` v5 names the protocol type and name it expects; they must match the group's.
fn protocol_matches(asked: Option<&String>, current: Option<&String>) -> bool {
    asked.is_none_or(|asked| Some(asked) == current)
}

/// Expires offsets every `offsets.retention.check.interval.ms` (Kafka: 10 minutes; sooner
/// when the retention itself is shorter) until the shard is gone.
async fn expire_offsets_forever(inner: Weak<Inner>) {
    loop {
        let interval = {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let retention = inner.config.borrow().offsets_retention;
            let interval = retention.clamp(Duration::from_secs(1), Duration::from_secs(600));
            inner.offsets.clock.sleep(interval)
        };
        interval.await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        GroupCoordinator { inner }.expire_offsets().await;
    }
}

/// An offsets partition in `Inner::replaying` while its replay runs; removed when the
/// replay ends, fails or is cancelled.
struct ReplayingMark<'a> {
    inner: &'a Inner,
    partition: i32,
}

impl Drop for ReplayingMark<'_> {
    fn drop(&mut self) {
        self.inner.replaying.borrow_mut().remove(&self.partition);
    }
}

/// What changed in `g` to write to the offsets log: its classic membership (a generation
/// completed or the group emptied, `Group::take_classic_record`) before its
/// consumer-protocol records, the order a replay needs (`apply_replayed`).
fn records_of(g: &mut Group) -> Vec<OffsetsRecord> {
    let classic = g
        .take_classic_record()
        .map(|value| OffsetsRecord::ClassicGroup {
            group: g.id.clone(),
            value,
        });
    classic
        .into_iter()
        .chain(
            g.take_consumer_records()
                .into_iter()
                .map(OffsetsRecord::Consumer),
        )
        .collect()
}

/// Runs every group's clock until the coordinator is dropped with its shard.
async fn tick_forever(inner: Weak<Inner>, clock: Clock) {
    loop {
        clock.sleep(TICK).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        GroupCoordinator {
            inner: inner.clone(),
        }
        .unload_lost_partitions();
        let rules = inner.config.borrow().rules.clone();
        let now = clock.now();
        let mut changed = Vec::new();
        {
            let mut groups = inner.groups.borrow_mut();
            for group in groups.values_mut() {
                let epoch_before = group.consumer.as_ref().map_or(0, |c| c.group_epoch);
                group.tick(&rules, now);
                if let Some(consumer) = group.consumer.as_mut() {
                    inner
                        .consumer_counts
                        .borrow_mut()
                        .note(epoch_before, consumer);
                }
                let records = records_of(group);
                if !records.is_empty() {
                    changed.push((group.id.clone(), records));
                }
            }
            groups.retain(|_, group| !group.is_disposable());
        }
        if !changed.is_empty() {
            // Members the clock removed: their tombstones (or the emptied classic group),
            // written apart from the ticks.
            let coordinator = GroupCoordinator { inner };
            glommio::spawn_local(async move {
                coordinator.persist_ticked_changes(changed).await;
            })
            .detach();
        }
    }
}

#[cfg(test)]
mod tests {

    use bytes::BytesMut;
    use uuid::Uuid;

    use super::*;
    use crate::disk::PartitionLog;
    use crate::groups::records::CommittedOffset;
    use crate::partition::PartitionSlot;
    use crate::storage::batch::{ATTRIBUTES_OFFSET, CRC_OFFSET};
    use crate::storage::LogConfig;

    use crate::test_executor::run;

    fn offsets_tp() -> TopicPartition {
        TopicPartition {
            topic: OFFSETS_TOPIC.into(),
            partition: 0,
        }
    }

    async fn table(dir: &std::path::Path) -> Rc<PartitionTable> {
        let disk = BrokerDisk::default();
        let (log, _) = PartitionLog::open_on(disk, dir, LogConfig::default(), Clock::System)
            .await
            .expect("open");
        let table = Rc::new(PartitionTable::default());
        table.insert(
            offsets_tp(),
            PartitionSlot::Online {
                topic_id: Uuid::new_v4(),
                log,
            },
        );
        table
    }

    fn coordinator(table: &Rc<PartitionTable>, dir: &std::path::Path) -> GroupCoordinator {
        GroupCoordinator::new(OffsetsHandle {
            shard_id: 0,
            partitions: table.clone(),
            metadata: Rc::new(MetadataView::default()),
            shutdown: ShutdownSignal::default(),
            limits: Limits::default(),
            disk: BrokerDisk::default(),
            data_dir: dir.to_path_buf(),
            clock: Clock::System,
            producer_id_blocks: None,
        })
    }

    fn at() -> GroupAddress {
        GroupAddress {
            group: "g".into(),
            partition: 0,
        }
    }

    fn commit(offset: i64) -> CommitRequest {
        CommitRequest {
            member_id: String::new(),
            instance_id: None,
            generation: -1,
            offsets: vec![("t".into(), 0, commit_value(offset))],
        }
    }

    async fn committed(coordinator: &GroupCoordinator) -> Option<i64> {
        let (fetched, unstable) = coordinator
            .fetch_offsets(at(), Some(vec![("t".into(), vec![0])]), None, false)
            .await
            .expect("fetched");
        assert!(
            unstable.is_empty(),
            "listed only when stable offsets are asked for"
        );
        fetched
            .first()
            .and_then(|(_, _, value)| value.as_ref().map(|v| v.offset))
    }

    /// What a KIP-447 client (`require_stable`) is told is unstable.
    async fn unstable(coordinator: &GroupCoordinator) -> Vec<(String, i32)> {
        let (fetched, unstable) = coordinator
            .fetch_offsets(at(), Some(vec![("t".into(), vec![0])]), None, true)
            .await
            .expect("fetched");
        if !unstable.is_empty() {
            assert!(
                fetched[0].2.is_none(),
                "an unstable partition shows no offset"
            );
        }
        unstable
    }

    /// A marker as the partition side writes it: a control batch of the producer.
    fn marker(producer_id: i64, commit: bool) -> Bytes {
        let plain = crate::storage::batch::control::batch(i16::from(commit), &[0, 0, 0, 0, 0, 0]);
        let mut out = BytesMut::from(&plain[..]);
        out[43..51].copy_from_slice(&producer_id.to_be_bytes());
        let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
        out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        out.freeze()
    }

    /// The leader's `SyncGroup` whose client goes away while the completed generation is being
    /// written: the write and its finish run to the end anyway, so the group becomes
    /// `Stable` and the generation is in the log. Were the finish dropped with the call, the
    /// group would stay `CompletingRebalance` with every other member's sync parked.
    #[test]
    fn a_dropped_leader_sync_still_finishes_the_generation() {
        run(|| async {
            let dir = tempfile::tempdir().expect("tempdir");
            let table = table(dir.path()).await;
            let live = coordinator(&table, dir.path());
            let join = JoinRequest {
                member_id: String::new(),
                instance_id: None,
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                session_timeout: std::time::Duration::from_secs(10),
                rebalance_timeout: std::time::Duration::from_secs(10),
                protocol_type: "consumer".into(),
                protocols: vec![("range".into(), Bytes::from_static(b"s"))],
                require_known_member_id: false,
            };
            // The default initial rebalance delay (3 s) is waited out by the join.
            let joined = live.join(at(), join).await;
            assert_eq!((joined.error_code, joined.generation), (0, 1));
            let sync = SyncRequest {
                member_id: joined.member_id.clone(),
                generation: 1,
                protocol_type: None,
                protocol_name: None,
                assignments: vec![(joined.member_id.clone(), Bytes::from_static(b"a"))],
            };
            let call = live.clone();
            let leader_sync = glommio::spawn_local(async move { call.sync(at(), sync).await });
            // Dropped at its first await (the write), as a closed connection drops it.
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            drop(leader_sync.cancel());
            let deadline = Instant::now() + std::time::Duration::from_secs(5);
            while live.describe(at()).await.state != "Stable" {
                assert!(Instant::now() < deadline, "the generation never finished");
                glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            }
            let reloaded = coordinator(&table, dir.path());
            assert_eq!(
                reloaded.describe(at()).await.state,
                "Stable",
                "and it is in the log"
            );
        });
    }

    /// A transaction's marker written while a coordinator replays the partition: the
    /// replay ends the transaction's offsets whenever the marker's `complete_txn` comes.
    /// The case this was written for is the marker told after the replay started but before
    /// it read the offsets: before, `complete_txn` found nothing pending yet and the replay
    /// stopped at the end it saw when it started, so the offsets stayed pending for good
    /// (`UNSTABLE_OFFSET_COMMIT` to KIP-447 readers, the old offset to the others). The
    /// interleaving is not forced (the real disk's timing decides it): with the old code
    /// restored this test still passed in 6 of 6 runs here, so it checks the outcome, not
    /// that the window is closed; the reasoning is in `complete_txn` and `replay`.
    #[test]
    fn a_marker_written_during_the_replay_ends_its_offsets() {
        run(|| async {
            let dir = tempfile::tempdir().expect("tempdir");
            let table = table(dir.path()).await;
            let log = table.log(&offsets_tp()).expect("log");
            // About 26 MB of plain commits first, so the replay reads the log in many
            // steps, then producer 9's transactional offsets (44) at the end.
            let filler: Vec<OffsetsRecord> = (0..200)
                .map(|n| OffsetsRecord::Commit {
                    group: "filler".into(),
                    topic: "f".into(),
                    partition: n,
                    value: Some(CommittedOffset {
                        metadata: "m".repeat(OFFSET_METADATA_BYTES_MAX),
                        ..commit_value(1)
                    }),
                })
                .collect();
            for _ in 0..32 {
                log.append(records::encode_batch(&filler, 1))
                    .await
                    .expect("filler");
            }
            let offsets = records::encode_txn_batch(
                &[OffsetsRecord::Commit {
                    group: at().group,
                    topic: "t".into(),
                    partition: 0,
                    value: Some(commit_value(44)),
                }],
                1,
                9,
                0,
            );
            let appended = log.append(offsets).await.expect("txn offsets");
            log.wait_durable(appended.last_offset)
                .await
                .expect("durable");

            let replaying = coordinator(&table, dir.path());
            let loading = {
                let replaying = replaying.clone();
                glommio::spawn_local(async move { committed(&replaying).await })
            };
            // The replay starts (its first read in flight); the marker is written and the
            // coordinator told, as the partition side does.
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            assert!(
                replaying.inner.replaying.borrow().contains(&0),
                "the replay is under way"
            );
            let marked = log.append(marker(9, true)).await.expect("marker");
            log.wait_durable(marked.last_offset).await.expect("durable");
            replaying.complete_txn(0, 9, true);
            assert_eq!(loading.await, Some(44));
            assert_eq!(unstable(&replaying).await, []);
        });
    }

    fn commit_value(offset: i64) -> CommittedOffset {
        CommittedOffset {
            offset,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 1,
            expire_timestamp_ms: None,
        }
    }

    #[test]
    fn transactional_offsets_are_visible_only_once_committed_live_and_after_replay() {
        run(|| async {
            let dir = tempfile::tempdir().expect("tempdir");
            let table = table(dir.path()).await;
            let log = table.log(&offsets_tp()).expect("log");
            // The partition side appends the marker, then the coordinator is told.
            let mark = |producer_id: i64, commit: bool| {
                let log = log.clone();
                async move {
                    let appended = log
                        .append(marker(producer_id, commit))
                        .await
                        .expect("marker");
                    log.wait_durable(appended.last_offset)
                        .await
                        .expect("durable");
                }
            };
            let live = coordinator(&table, dir.path());
            assert_eq!(live.commit_transactional(at(), 7, 0, commit(42)).await, [0]);
            assert_eq!(committed(&live).await, None, "pending until the marker");
            assert_eq!(unstable(&live).await, [("t".to_string(), 0)]);
            mark(7, true).await;
            live.complete_txn(0, 7, true);
            assert_eq!(committed(&live).await, Some(42));
            assert_eq!(unstable(&live).await, []);
            assert_eq!(live.commit_transactional(at(), 7, 1, commit(50)).await, [0]);
            mark(7, false).await;
            live.complete_txn(0, 7, false);
            assert_eq!(committed(&live).await, Some(42), "an abort drops them");
            // Replay: the same outcome from the log; a pending commit of producer 8 without
            // its marker stays invisible...
            assert_eq!(live.commit_transactional(at(), 8, 0, commit(60)).await, [0]);
            let replayed = coordinator(&table, dir.path());
            assert_eq!(committed(&replayed).await, Some(42));
            // ...until a commit marker of that producer follows it in the log.
            mark(8, true).await;
            let replayed = coordinator(&table, dir.path());
            assert_eq!(committed(&replayed).await, Some(60));
        });
    }
}
