//! [`ReplicaManager`]: the Raft groups of the partition replicas one shard hosts, driven in
//! rounds by one `MultiRaft` with one `LogDurability` (group commit across groups).
//!
//! - Groups: [`ReplicaManager::reconcile`] opens the groups of the replicas the metadata
//!   places on this shard and closes the others (idempotent; called from the shard's
//!   metadata apply, one call at a time). A group's log is the partition's log in
//!   `<data-dir>/<topic>-<partition>`; the shard's hard states live in
//!   `<data-dir>/shard-<shard>.raft/raft-meta.log` (group 0's store on shard 0 stays where
//!   it is; a partition's directory always ends in `-<partition>`, so never collides). A restart reopens both: entries after the persisted commit are re-read into
//!   memory and applied again from there.
//! - Rounds: a round whenever frames or proposals arrive and a tick every
//!   `TICK_INTERVAL_MS` ([`ReplicaManager::start`]); tests call [`ReplicaManager::tick`] and
//!   [`ReplicaManager::round`] themselves. After the driver's round: committed entries
//!   advance each group's committed end offset (the high watermark) and answer the produce
//!   calls waiting on them; waiting calls of a group whose leadership or term changed are
//!   answered [`OUTCOME_UNKNOWN`] (their entries may still commit under the next leader) and
//!   those whose entry a new leader replaced `NOT_LEADER_OR_FOLLOWER`; leadership changes
//!   are recorded.
//! - Frames: [`ReplicaManager::receive`] takes frames for this shard's groups (cut by
//!   `cluster::split_by_shard`); at most [`INBOUND_FRAMES_MAX`] wait for a round, later ones
//!   are dropped and counted (Raft resends). Frames of a round go to the sender the shard
//!   installed ([`ReplicaManager::set_sender`]); without one they queue, at most
//!   [`OUTBOUND_FRAMES_MAX`], and the newest are dropped and counted beyond that.
//! - Offsets: every replica stamps an entry with its own log end offset (`log_store.rs`),
//!   and logs agree up to the entry before, so an entry's Kafka offsets are the same on
//!   every replica. The committed end offset is kept by adding each applied entry's span
//!   (records of a data batch; 1 for the control batch of a leader's empty entry or a
//!   configuration change) to the end offset of the commit index read at open.
//!
//! Owned by one shard, `!Send`; nothing is locked. No `RefCell` borrow is held across an
//! await.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::task::JoinHandle;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::storage::RaftState;
use raft::StateRole;
use ringfeed_replication::driver::membership::MembershipStep;
use ringfeed_replication::driver::MultiRaft;
use ringfeed_replication::log_store::{
    snapshot_entry, LogDurability, LogStore, LogStoreStart, RecentBudget,
};
use ringfeed_replication::log_store_meta::{GroupMeta, RaftMetaStore};
use ringfeed_replication::wire::{Frame, WireLimits};

use crate::disk::{BrokerDisk, PartitionLog};
use crate::error_codes as codes;
use crate::metadata::TopicPartition;
use crate::replica::producers::{Producers, TAIL_SCAN_ENTRIES};
use crate::replica::txns::{ReplicaTxnSnapshot, ReplicaTxns, TxnEntry, REPLICA_TXNS_FILE};
use crate::replica::types::{HostedReplica, LeadershipChange};
use crate::storage::batch::{control, BatchHeader};
use crate::storage::{Clock, Disk};

/// Received frames waiting for the next round; more are dropped (Raft resends).
pub const INBOUND_FRAMES_MAX: usize = 256;
/// A round's frames waiting for a sender; more are dropped (Raft resends).
pub const OUTBOUND_FRAMES_MAX: usize = 256;
/// How often the leader renews the index followers must reach to count as caught up.
const ISR_MARK_INTERVAL: Duration = Duration::from_millis(500);
/// Entries a new replica of a moving group may be behind its leader's last one and count
/// as caught up (`MultiRaft::advance_membership`): under steady produce a learner is always
/// a few entries behind, and the joint change waits for it in the joint quorum anyway.
const MOVE_LAG_ENTRIES_MAX: u64 = 16;
/// Memory for a group's recent entries beyond its unapplied ones (serves followers that
/// are a little behind without reading the disk).
pub(crate) const RECENT_BYTES_MAX: usize = 1 << 20;
/// Memory for the recent applied entries of all the groups of one shard together
/// (`log_store::RecentBudget`): a shard of many partitions keeps less of each.
pub(crate) const RECENT_BYTES_SHARD_MAX: usize = 64 << 20;

/// How a shard's replica manager starts.
pub struct ReplicaManagerStart {
    pub node_id: u64,
    /// This start's incarnation (frames carry it; peers drop frames of an earlier one).
    pub incarnation: u64,
    pub shard: usize,
    pub data_dir: PathBuf,
    pub disk: BrokerDisk,
    pub clock: Clock,
    pub election_seed: u64,
    /// `replica.lag.time.max.ms`.
    pub replica_lag_time_max: Duration,
    /// The shard's tail-cache budget, shared with its other logs.
    pub tail_cache: crate::storage::ShardTailCache,
}

/// What a produce call waits for: `Ok(Some(base))` its last batch committed in its term at
/// Kafka offset `base`; `Ok(None)` (acks=1) it is durable on the leader in its term (the
/// caller reads its offset); `Err(code)` it will not be acknowledged.
pub(crate) type Resolution = Result<Option<i64>, i16>;

pub(crate) struct Waiter {
    pub(crate) term: u64,
    pub(crate) acks: i16,
    pub(crate) answer: oneshot::Sender<Resolution>,
}

/// One hosted group.
pub(crate) struct Hosted {
    pub(crate) replica: HostedReplica,
    /// The group's replicas as the metadata names them now, first = preferred leader
    /// (`replica.voters` is what the group was opened with; a reassignment changes them).
    pub(crate) voters: RefCell<Vec<u64>>,
    pub(crate) log: PartitionLog,
    /// The Kafka end offset of the entries applied here: the high watermark.
    pub(crate) committed_end: Cell<i64>,
    /// Produce calls waiting, by the Raft index of their last batch (and a serial: a
    /// retried duplicate waits on the same entry as its original).
    pub(crate) waiting: RefCell<BTreeMap<(u64, u64), Waiter>>,
    pub(crate) next_waiter: Cell<u64>,
    /// The last index applied here.
    pub(crate) applied_index: Cell<u64>,
    /// Idempotent producers' sequences (`producers`).
    pub(crate) producers: RefCell<Producers>,
    /// Open and aborted transactions, from the committed entries (`txns`).
    pub(crate) txns: RefCell<ReplicaTxns>,
    /// A transaction snapshot is being written (one at a time: they share a temporary file).
    txn_snapshot_writing: Cell<bool>,
    /// When each voter last had every entry the leader had (leader only; reset on election).
    caught_up_at: RefCell<BTreeMap<u64, Instant>>,
    /// The term `caught_up_at` is of: a replica that leads again in a later term starts
    /// afresh even if nothing asked while it followed.
    caught_up_term: Cell<u64>,
    /// The leader's last index and when it was that (renewed every `ISR_MARK_INTERVAL`):
    /// a follower that reached it was caught up at that time, even if the leader appended
    /// more since (a partition under steady load never waits for a follower at its end).
    isr_mark: Cell<Option<(Instant, u64)>>,
    /// The last (leader, term, isr) recorded for the controller.
    reported: RefCell<Option<(u64, u64, Vec<u64>)>>,
    /// The settled voters last recorded for the controller (`LeadershipChange::voters`).
    reported_voters: RefCell<Vec<u64>>,
    /// Notified when `committed_end` moves or the group closes.
    pub(crate) committed: crate::wake::Signal,
    pub(crate) closed: Cell<bool>,
}

/// Counts for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaCounts {
    pub inbound_frames_dropped: u64,
    pub outbound_frames_dropped: u64,
    pub frames_for_unknown_groups: u64,
    pub groups_opened: u64,
    pub groups_closed: u64,
    /// Times a replica here became its group's leader (a new term).
    pub leader_elections: u64,
    /// Membership changes proposed here for partition moves.
    pub membership_changes: u64,
    /// Changes of a led group's in-sync set that removed replicas, and that added some.
    pub isr_shrinks: u64,
    pub isr_expands: u64,
    /// Leadership transfers started here (`handover`) and given up.
    pub transfers_started: u64,
    pub transfers_aborted: u64,
    /// Entries read from a log for a lagging follower (`catch_up`), one per read.
    pub entries_fetches: u64,
    /// Snapshots installed here: a replica too far behind its leader rebuilt from the
    /// leader's first entry (`install_snapshot`).
    pub snapshots_installed: u64,
    /// Applied entries whose end disagreed with the log's (`apply`): the high watermark
    /// no longer matched the stored offsets. Always 0 unless there is a defect.
    pub offset_mismatches: u64,
}

/// See the module docs.
pub struct ReplicaManager {
    /// Itself, for the tasks it starts from `&self` (`catch_up`).
    pub(crate) this: std::rc::Weak<ReplicaManager>,
    pub(crate) node_id: u64,
    shard: usize,
    data_dir: PathBuf,
    disk: BrokerDisk,
    pub(crate) clock: Clock,
    replica_lag_time_max: Duration,
    tail_cache: crate::storage::ShardTailCache,
    /// Open transactions the shard's hosted partitions hold at most
    /// (`ONGOING_TXNS_PER_SHARD_MAX`; smaller in tests).
    pub(crate) open_txns_max: Cell<usize>,
    /// The memory this shard's groups share for their recent applied entries.
    recent_budget: RecentBudget,
    pub(crate) driver: RefCell<MultiRaft<Store>>,
    durability: RefCell<LogDurability<BrokerDisk>>,
    pub(crate) groups: RefCell<BTreeMap<u64, Rc<Hosted>>>,
    pub(crate) by_partition: RefCell<HashMap<TopicPartition, u64>>,
    /// Replicas this shard should host whose log could not be opened, with why: answered
    /// `KAFKA_STORAGE_ERROR` (as an offline plain log is) until an open succeeds. Opening is
    /// tried again at every reconcile.
    unopened: RefCell<HashMap<TopicPartition, String>>,
    /// Hard states read at start, for groups not opened yet.
    recovered: RefCell<BTreeMap<u64, GroupMeta>>,
    /// Groups with produce calls waiting.
    pub(crate) groups_waiting: RefCell<BTreeSet<u64>>,
    inbound_frames: Cell<usize>,
    outbound: RefCell<VecDeque<Frame>>,
    sender: RefCell<Option<FrameSender>>,
    /// Leadership changes not drained yet, the latest per group.
    changes: RefCell<BTreeMap<u64, LeadershipChange>>,
    /// The voters each hosted group moves to (`HostedReplica::target`), for the groups
    /// moving; the leader drives each change (`drive_moves`).
    targets: RefCell<BTreeMap<u64, BTreeSet<u64>>>,
    /// A tick happened since leadership was last looked at.
    scan_due: Cell<bool>,
    /// The driver's slow ticks when a leadership scan last looked at quiet groups
    /// (`record_leadership`).
    quiet_scanned_at: Cell<Option<u64>>,
    pub(crate) counts: RefCell<ReplicaCounts>,
    doorbell: LocalSender<()>,
    rung: RefCell<Option<LocalReceiver<()>>>,
    /// Rung when a leadership change is recorded, for the task that reports them
    /// (`take_changes_rung`), so it need not poll.
    changes_doorbell: LocalSender<()>,
    changes_rung: RefCell<Option<LocalReceiver<()>>>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
    storage_failure_logged: Cell<bool>,
    /// Groups whose followers wait for entries read from the log (`catch_up`).
    pub(crate) fetches_queued: RefCell<BTreeSet<u64>>,
    pub(crate) fetch_task_running: Cell<bool>,
}

pub(crate) type Store = LogStore<BrokerDisk>;

/// The answer to a produce call whose entry was proposed but whose fate this replica cannot
/// know (it stopped leading, or stopped): Kafka's `REQUEST_TIMED_OUT`, which clients take as
/// "possibly written" and retry with the same producer sequence.
pub const OUTCOME_UNKNOWN: i16 = codes::REQUEST_TIMED_OUT;

/// Where a shard's outbound frames go (see [`ReplicaManager::set_sender`]).
pub type FrameSender = Box<dyn Fn(Frame)>;

impl crate::cluster::DrivenRounds for ReplicaManager {
    fn tick_groups(&self) {
        self.tick();
    }

    fn run_round(&self) -> bool {
        self.round()
    }

    fn ticks_until_needed(&self) -> Option<u64> {
        self.driver.borrow().ticks_until_needed()
    }
}

impl ReplicaManager {
    /// Opens the shard's raft-meta store (recovering it); hosts no group until
    /// [`Self::reconcile`].
    pub async fn open(start: ReplicaManagerStart) -> Result<Rc<Self>, String> {
        let meta_dir = start.data_dir.join(replica_meta_dir_name(start.shard));
        let created = async {
            start.disk.create_dir_all(&meta_dir).await?;
            // The new directory's entry survives a power cut only once its parent is synced.
            start.disk.sync_dir(&start.data_dir).await
        };
        created
            .await
            .map_err(|error| format!("creating {}: {error}", meta_dir.display()))?;
        let meta = RaftMetaStore::open(start.disk.clone(), &meta_dir)
            .await
            .map_err(|error| format!("raft-meta store in {}: {error}", meta_dir.display()))?;
        let recovered = meta.groups().map(|(id, m)| (id, m.clone())).collect();
        let (doorbell, rung) = local_channel::new_bounded(1);
        let (changes_doorbell, changes_rung) = local_channel::new_bounded(1);
        Ok(Rc::new_cyclic(|this| Self {
            this: this.clone(),
            node_id: start.node_id,
            shard: start.shard,
            data_dir: start.data_dir,
            disk: start.disk,
            clock: start.clock,
            replica_lag_time_max: start.replica_lag_time_max,
            tail_cache: start.tail_cache,
            recent_budget: RecentBudget::new(RECENT_BYTES_SHARD_MAX),
            driver: RefCell::new(MultiRaft::new(
                start.node_id,
                start.incarnation,
                WireLimits::default(),
                start.election_seed,
            )),
            durability: RefCell::new(LogDurability::new(meta)),
            groups: RefCell::default(),
            by_partition: RefCell::default(),
            unopened: RefCell::default(),
            recovered: RefCell::new(recovered),
            groups_waiting: RefCell::default(),
            inbound_frames: Cell::new(0),
            outbound: RefCell::default(),
            sender: RefCell::new(None),
            changes: RefCell::default(),
            targets: RefCell::default(),
            scan_due: Cell::new(true),
            quiet_scanned_at: Cell::new(None),
            counts: RefCell::default(),
            doorbell,
            rung: RefCell::new(Some(rung)),
            changes_doorbell,
            changes_rung: RefCell::new(Some(changes_rung)),
            tasks: RefCell::default(),
            storage_failure_logged: Cell::new(false),
            fetches_queued: RefCell::default(),
            fetch_task_running: Cell::new(false),
            open_txns_max: Cell::new(crate::producer_state::ONGOING_TXNS_PER_SHARD_MAX),
        }))
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn counts(&self) -> ReplicaCounts {
        self.counts.borrow().clone()
    }

    pub(crate) fn durability_stats(&self) -> ringfeed_replication::log_store::DurabilityStats {
        self.durability.borrow().stats()
    }

    /// The groups hosted now, ascending.
    pub fn group_ids(&self) -> Vec<u64> {
        self.groups.borrow().keys().copied().collect()
    }

    /// Whether `tp` is a replicated partition hosted here (leader or follower).
    pub fn hosts(&self, tp: &TopicPartition) -> bool {
        self.by_partition.borrow().contains_key(tp)
    }

    /// The group id of a hosted partition.
    pub fn group_of(&self, tp: &TopicPartition) -> Option<u64> {
        self.by_partition.borrow().get(tp).copied()
    }

    /// Why this shard could not open the log of `tp`, which it should host (see `unopened`).
    pub fn failed_to_open(&self, tp: &TopicPartition) -> Option<String> {
        self.unopened.borrow().get(tp).cloned()
    }

    pub(crate) fn hosted(&self, tp: &TopicPartition) -> Option<(u64, Rc<Hosted>)> {
        let group_id = self.group_of(tp)?;
        let hosted = self.groups.borrow().get(&group_id)?.clone();
        Some((group_id, hosted))
    }

    /// The leader of a hosted group as this replica knows it (0: none) and the term.
    pub fn leader_and_term(&self, group_id: u64) -> Option<(u64, u64)> {
        let driver = self.driver.borrow();
        let raft = driver.raft(group_id)?;
        Some((raft.leader_id, raft.term))
    }

    /// The Kafka end offset of a hosted group's committed entries (its high watermark).
    pub fn high_watermark(&self, group_id: u64) -> Option<i64> {
        Some(self.groups.borrow().get(&group_id)?.committed_end.get())
    }

    /// Every hosted partition with its log (shutdown closes them after [`Self::stop`]).
    pub fn hosted_logs(&self) -> Vec<(TopicPartition, PartitionLog)> {
        self.groups
            .borrow()
            .values()
            .map(|hosted| (hosted.replica.topic.clone(), hosted.log.clone()))
            .collect()
    }

    /// The partition log of a hosted group (for checks and tests).
    pub fn log(&self, group_id: u64) -> Option<PartitionLog> {
        Some(self.groups.borrow().get(&group_id)?.log.clone())
    }

    /// Opens the groups of `wanted` not hosted yet and closes (deleting their logs) the
    /// hosted ones `wanted` no longer names, or names with another topic id. Idempotent.
    /// Calls must not overlap (the shard's metadata apply runs one at a time).
    pub async fn reconcile(self: &Rc<Self>, wanted: &[HostedReplica]) {
        let wanted_by_group: BTreeMap<u64, &HostedReplica> =
            wanted.iter().map(|r| (r.group_id, r)).collect();
        let stale: Vec<u64> = self
            .groups
            .borrow()
            .iter()
            .filter(|(id, hosted)| {
                wanted_by_group.get(id).is_none_or(|r| {
                    r.topic_id != hosted.replica.topic_id || r.topic != hosted.replica.topic
                })
            })
            .map(|(id, _)| *id)
            .collect();
        for group_id in stale {
            if let Some(log) = self.close_group(group_id) {
                let dir = log.dir().display().to_string();
                if let Err(error) = log.remove().await {
                    tracing::error!(group_id, %dir, %error, "removing a replica's log failed");
                }
            }
        }
        {
            let mut targets = self.targets.borrow_mut();
            targets.clear();
            for replica in wanted {
                if !replica.target.is_empty() {
                    targets.insert(replica.group_id, replica.target.iter().copied().collect());
                }
            }
        }
        for (group_id, replica) in wanted_by_group {
            let hosted = self.groups.borrow().get(&group_id).cloned();
            match hosted {
                Some(hosted) => {
                    if hosted.replica.config != replica.config {
                        hosted.log.set_config(replica.config.clone());
                    }
                    if *hosted.voters.borrow() != replica.voters {
                        hosted.voters.replace(replica.voters.clone());
                    }
                }
                None => match self.open_group(replica.clone()).await {
                    Ok(()) => {
                        self.unopened.borrow_mut().remove(&replica.topic);
                    }
                    Err(error) => {
                        tracing::error!(partition = %replica.topic, group_id, %error, "replica not opened");
                        self.unopened
                            .borrow_mut()
                            .insert(replica.topic.clone(), error);
                    }
                },
            }
        }
        let wanted_partitions: HashSet<&TopicPartition> =
            wanted.iter().map(|replica| &replica.topic).collect();
        self.unopened
            .borrow_mut()
            .retain(|tp, _| wanted_partitions.contains(tp));
    }

    async fn open_group(self: &Rc<Self>, replica: HostedReplica) -> Result<(), String> {
        let dir = self.data_dir.join(format!(
            "{}-{}",
            replica.topic.topic, replica.topic.partition
        ));
        let (log, _report) = PartitionLog::open_on(
            self.disk.clone(),
            &dir,
            replica.config.clone(),
            self.clock.clone(),
        )
        .await
        .map_err(|error| format!("{}: {error}", dir.display()))?;
        log.share_tail_cache(&self.tail_cache);
        let persisted = self.recovered.borrow_mut().remove(&replica.group_id);
        let (mut hard_state, conf_state, snapshot_index, snapshot_term) = match persisted {
            Some(meta) => (
                meta.hard_state,
                meta.conf_state,
                meta.snapshot_index,
                meta.snapshot_term,
            ),
            None => (
                HardState::default(),
                // A replica a move added joins with the old voters and the move's
                // learners (`driver::membership`: it passes older changes over).
                ConfState::from((replica.voters.clone(), replica.learners.clone())),
                0,
                0,
            ),
        };
        // Everything before the log's first entry was committed (retention removes applied
        // entries only; a snapshot's entry is a committed one). A crash between a snapshot's
        // replacement of the log and the save of its hard state leaves a commit index
        // before the new log: raft-rs refuses to start below its log's first index.
        if hard_state != HardState::default() {
            hard_state.commit = hard_state.commit.max(log.first_index().saturating_sub(1));
        }
        let commit = hard_state.commit;
        let committed_end = end_offset_of_index(&log, commit).await?;
        let txn_snapshot = read_txn_snapshot(&replica.topic, &log).await;
        let tail = scan_tail(&log, commit, txn_snapshot).await?;
        // A `LOG_START` entry applied before a crash whose raise had not reached the disk
        // (`apply` raises it in a task of its own): raised again before the replica serves.
        if let Some(start) = tail.log_start.filter(|&s| s > log.log_start_offset()) {
            log.advance_log_start(start)
                .await
                .map_err(|error| format!("raising the log start to {start}: {error}"))?;
        }
        let producers = tail.producers;
        let mut txns = tail.txns;
        // Taken now when the replay was long, so the next open does not repeat it.
        if let Some(snapshot) = txns.snapshot_due(committed_end) {
            write_txn_snapshot(&log, &snapshot)
                .await
                .map_err(|error| format!("writing the transaction snapshot: {error}"))?;
        }
        let store = LogStore::open(
            log.clone(),
            LogStoreStart {
                raft_state: RaftState::new(hard_state, conf_state),
                snapshot_index,
                snapshot_term,
                recent_bytes_max: RECENT_BYTES_MAX,
                recent_budget: Some(self.recent_budget.clone()),
                serves_snapshots: true,
            },
        )
        .await
        .map_err(|error| format!("log store: {error}"))?;
        let group_id = replica.group_id;
        self.driver
            .borrow_mut()
            .add_group(group_id, store.clone(), commit)
            .map_err(|error| format!("starting the group: {error}"))?;
        self.durability.borrow().register(group_id, store);
        tracing::info!(partition = %replica.topic, group_id, shard = self.shard, commit, committed_end, "replica open");
        self.by_partition
            .borrow_mut()
            .insert(replica.topic.clone(), group_id);
        self.groups.borrow_mut().insert(
            group_id,
            Rc::new(Hosted {
                voters: RefCell::new(replica.voters.clone()),
                replica,
                log,
                committed_end: Cell::new(committed_end),
                waiting: RefCell::default(),
                next_waiter: Cell::new(0),
                applied_index: Cell::new(commit),
                producers: RefCell::new(producers),
                txns: RefCell::new(txns),
                txn_snapshot_writing: Cell::new(false),
                caught_up_at: RefCell::default(),
                caught_up_term: Cell::new(0),
                isr_mark: Cell::new(None),
                reported: RefCell::new(None),
                reported_voters: RefCell::default(),
                committed: crate::wake::Signal::default(),
                closed: Cell::new(false),
            }),
        );
        self.counts.borrow_mut().groups_opened += 1;
        self.ring();
        Ok(())
    }

    /// Stops driving a group; its waiting produce calls are answered
    /// `NOT_LEADER_OR_FOLLOWER`. Returns its log.
    fn close_group(&self, group_id: u64) -> Option<PartitionLog> {
        let hosted = self.groups.borrow_mut().remove(&group_id)?;
        self.driver.borrow_mut().remove_group(group_id);
        self.durability.borrow().unregister(group_id);
        self.by_partition.borrow_mut().remove(&hosted.replica.topic);
        self.groups_waiting.borrow_mut().remove(&group_id);
        self.fetches_queued.borrow_mut().remove(&group_id);
        self.changes.borrow_mut().remove(&group_id);
        for (_, waiter) in std::mem::take(&mut *hosted.waiting.borrow_mut()) {
            let _ = waiter.answer.send(Err(codes::NOT_LEADER_OR_FOLLOWER));
        }
        hosted.closed.set(true);
        hosted.committed.notify_all();
        self.counts.borrow_mut().groups_closed += 1;
        Some(hosted.log.clone())
    }

    /// Sends every frame of later rounds to `sender` (the transport on shard 0, a typed
    /// call to shard 0 elsewhere); frames queued before are sent to it now.
    pub fn set_sender(&self, sender: FrameSender) {
        let queued: Vec<Frame> = self.outbound.borrow_mut().drain(..).collect();
        for frame in queued {
            sender(frame);
        }
        *self.sender.borrow_mut() = Some(sender);
    }

    /// The frames queued while no sender is installed (tests move them themselves).
    pub fn take_outbound(&self) -> Vec<Frame> {
        self.outbound.borrow_mut().drain(..).collect()
    }

    fn send(&self, frame: Frame) {
        if let Some(sender) = self.sender.borrow().as_ref() {
            sender(frame);
            return;
        }
        let mut outbound = self.outbound.borrow_mut();
        if outbound.len() >= OUTBOUND_FRAMES_MAX {
            self.counts.borrow_mut().outbound_frames_dropped += 1;
            return;
        }
        outbound.push_back(frame);
    }

    /// Takes a frame (or a piece of one) for this shard's groups for the next round.
    pub fn receive(&self, frame: Frame) {
        if self.inbound_frames.get() >= INBOUND_FRAMES_MAX {
            self.counts.borrow_mut().inbound_frames_dropped += 1;
            return;
        }
        self.inbound_frames.set(self.inbound_frames.get() + 1);
        self.driver.borrow_mut().receive(frame);
        self.ring();
    }

    /// The peer brokers shard 0's transport heard from lately changed: quiet groups rest
    /// on it, and those it concerns wake (`ringfeed_replication::driver::quiet`).
    pub fn set_live_peers(&self, live: ringfeed_replication::driver::LivePeers) {
        self.driver.borrow_mut().set_live_peers(live);
        self.ring();
    }

    pub(crate) fn ring(&self) {
        let _ = self.doorbell.try_send(());
    }

    /// One tick is due (every `TICK_INTERVAL_MS`).
    pub fn tick(&self) {
        self.driver.borrow_mut().tick();
        self.scan_due.set(true);
    }

    /// What rings when a leadership change is recorded ([`Self::take_leadership_changes`]);
    /// taken once, by the task that reports them.
    pub fn take_changes_rung(&self) -> Option<LocalReceiver<()>> {
        self.changes_rung.borrow_mut().take()
    }

    /// Drains the leadership changes recorded since the last call, by group.
    pub fn take_leadership_changes(&self) -> Vec<LeadershipChange> {
        std::mem::take(&mut *self.changes.borrow_mut())
            .into_values()
            .collect()
    }

    /// Starts the driver task: a round whenever there is work, a tick every
    /// `TICK_INTERVAL_MS`. Once per manager.
    pub fn start(self: &Rc<Self>) {
        let Some(rung) = self.rung.borrow_mut().take() else {
            return;
        };
        let task =
            glommio::spawn_local(crate::cluster::drive_rounds(Rc::downgrade(self), rung)).detach();
        self.tasks.borrow_mut().push(task);
    }

    /// Stops the driver task; waiting produce calls are answered [`OUTCOME_UNKNOWN`]: their
    /// entries may still be committed by the group without this replica.
    pub fn stop(&self) {
        for task in self.tasks.borrow_mut().drain(..) {
            task.cancel();
        }
        for hosted in self.groups.borrow().values() {
            for (_, waiter) in std::mem::take(&mut *hosted.waiting.borrow_mut()) {
                let _ = waiter.answer.send(Err(OUTCOME_UNKNOWN));
            }
        }
    }

    /// One round (module docs); returns whether work remains (a sync in flight).
    pub fn round(&self) -> bool {
        let mut applied: Vec<Applied> = Vec::new();
        let fetches;
        let installed;
        let frames = {
            let mut driver = self.driver.borrow_mut();
            if !driver.has_work() {
                return false;
            }
            let mut durability = self.durability.borrow_mut();
            let frames = driver.round(&mut *durability, |group_id, entry| {
                applied.push(Applied::of(group_id, entry));
            });
            fetches = driver.take_fetches_wanted();
            installed = driver.take_snapshots_installed();
            frames
        };
        self.queue_fetches(fetches);
        self.inbound_frames.set(0);
        if let Some(error) = self.durability.borrow().failed() {
            if !self.storage_failure_logged.replace(true) {
                tracing::error!(shard = self.shard, %error, "replica logs cannot be made durable; this shard's groups stop acknowledging");
            }
        }
        for frame in frames {
            self.send(frame);
        }
        let mut moved = BTreeSet::new();
        for (group_id, snapshot) in installed {
            moved.insert(group_id);
            self.install_snapshot(group_id, &snapshot);
        }
        for entry in applied {
            moved.insert(entry.group_id);
            self.apply(&entry);
        }
        let groups = self.groups.borrow();
        for group_id in moved {
            if let Some(hosted) = groups.get(&group_id) {
                hosted.committed.notify_all();
            }
        }
        drop(groups);
        self.answer_lost_and_persisted();
        if self.scan_due.replace(false) {
            self.drive_moves();
            self.record_leadership();
        }
        self.driver.borrow().has_work()
    }

    /// A snapshot this replica staged: its log gives way to the leader's first entry
    /// (`log_store.rs`, written by the next durability round), so the applied state starts
    /// again there: the high watermark is that entry's end, and the idempotent producers'
    /// and transactions' state is what that entry and the entries after it bring (a
    /// producer whose last batches were only before it is not known here, as after a
    /// restart that found none).
    fn install_snapshot(&self, group_id: u64, snapshot: &Snapshot) {
        let Some(hosted) = self.groups.borrow().get(&group_id).cloned() else {
            return;
        };
        let index = snapshot.get_metadata().index;
        let entry = snapshot_entry(snapshot).ok().and_then(|entry| {
            let header = BatchHeader::parse(&entry.batch)?;
            Some((header, entry.batch))
        });
        // The store checked the batch when it staged the snapshot.
        let Some((header, batch)) = entry else { return };
        let end = header.last_offset() + 1;
        tracing::info!(partition = %hosted.replica.topic, group_id, index, log_start = end, "replica too far behind its leader: rebuilt from the leader's first entry");
        hosted.applied_index.set(index);
        hosted.committed_end.set(end);
        // The entry itself is applied: the first batch of a transaction still open holds
        // readers at its offset here as on the leader (its later batches, and its marker,
        // come as entries). The replacement removes the transaction snapshot file with the
        // old log; a restart before the next one replays the new log whole, entry included.
        let txn_entry = TxnEntry::of(&header, &batch);
        let mut producers = Producers::default();
        let mut txns = ReplicaTxns::starting_at(index.saturating_sub(1), header.base_offset);
        match &txn_entry {
            TxnEntry::Data(header) => producers.committed(header, index, header.base_offset),
            TxnEntry::Marker(marker) => producers.marker_committed(marker),
            TxnEntry::Other => {}
        }
        txns.apply(index, &txn_entry, header.base_offset);
        *hosted.producers.borrow_mut() = producers;
        *hosted.txns.borrow_mut() = txns;
        self.counts.borrow_mut().snapshots_installed += 1;
    }

    fn apply(&self, entry: &Applied) {
        let Some(hosted) = self.groups.borrow().get(&entry.group_id).cloned() else {
            return;
        };
        let base = hosted.committed_end.get();
        hosted.committed_end.set(base + entry.span);
        hosted.applied_index.set(entry.index);
        self.check_applied_end(&hosted, entry.index);
        match &entry.txn {
            TxnEntry::Data(header) => {
                hosted
                    .producers
                    .borrow_mut()
                    .committed(header, entry.index, base);
            }
            TxnEntry::Marker(marker) => hosted.producers.borrow_mut().marker_committed(marker),
            TxnEntry::Other => {}
        }
        hosted
            .txns
            .borrow_mut()
            .apply(entry.index, &entry.txn, base);
        Self::snapshot_txns_if_due(&hosted);
        if let Some(start) = entry.log_start {
            // Every replica raises its own log start; the segments below it go in the
            // retention pass, under its index limit. The leader's `DeleteRecords` waits for
            // its own raise to be durable before it answers (`serve::delete_records`).
            let log = hosted.log.clone();
            let tp = hosted.replica.topic.clone();
            glommio::spawn_local(async move {
                if let Err(error) = log.advance_log_start(start).await {
                    tracing::warn!(partition = %tp, start, %error, "raising the log start of a replica failed");
                }
            })
            .detach();
        }
        let keys: Vec<(u64, u64)> = hosted
            .waiting
            .borrow()
            .range((entry.index, 0)..=(entry.index, u64::MAX))
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            let Some(waiter) = hosted.waiting.borrow_mut().remove(&key) else {
                continue;
            };
            let outcome = if waiter.term == entry.term {
                Ok(Some(base))
            } else {
                Err(codes::NOT_LEADER_OR_FOLLOWER)
            };
            let _ = waiter.answer.send(outcome);
        }
    }

    /// Writes the group's transaction snapshot in a task when one is due (`txns`), one at a
    /// time: a snapshot due while another is written is taken at a later entry.
    fn snapshot_txns_if_due(hosted: &Rc<Hosted>) {
        if hosted.txn_snapshot_writing.get() {
            return;
        }
        let due = {
            let mut txns = hosted.txns.borrow_mut();
            txns.drop_below(hosted.log.log_start_offset());
            txns.snapshot_due(hosted.committed_end.get())
        };
        let Some(snapshot) = due else {
            return;
        };
        hosted.txn_snapshot_writing.set(true);
        let hosted = hosted.clone();
        glommio::spawn_local(async move {
            if let Err(error) = write_txn_snapshot(&hosted.log, &snapshot).await {
                // The next one is due after as many offsets again; a restart replays from
                // the last one written.
                tracing::warn!(partition = %hosted.replica.topic, %error, "writing a replica transaction snapshot failed");
            }
            hosted.txn_snapshot_writing.set(false);
        })
        .detach();
    }

    /// The invariant that the high watermark is where the log's entries put it: applied
    /// entries are durable here, so when the entry just applied is the log's last, the
    /// committed end (summed from the applied entries' spans) is the log's end. Checked
    /// where that costs nothing; a breach is logged and counted, not a panic (it may come
    /// from what is on disk).
    fn check_applied_end(&self, hosted: &Hosted, index: u64) {
        if hosted.log.last_index() != index {
            return;
        }
        let log_end = hosted.log.log_end_offset();
        let committed_end = hosted.committed_end.get();
        if log_end != committed_end {
            self.counts.borrow_mut().offset_mismatches += 1;
            tracing::error!(partition = %hosted.replica.topic, index, committed_end, log_end,
                "the applied entries' end disagrees with the log's: the high watermark is off");
        }
    }

    /// Answers the waiting calls of groups whose leadership or term changed, and acks=1
    /// calls whose entries are durable on this leader in their term.
    fn answer_lost_and_persisted(&self) {
        let waiting: Vec<u64> = self.groups_waiting.borrow().iter().copied().collect();
        let driver = self.driver.borrow();
        let groups = self.groups.borrow();
        for group_id in waiting {
            let Some(hosted) = groups.get(&group_id) else {
                self.groups_waiting.borrow_mut().remove(&group_id);
                continue;
            };
            let raft = driver.raft(group_id);
            let leading_term = raft
                .filter(|raft| raft.state == StateRole::Leader && !driver.is_fenced(group_id))
                .map(|raft| raft.term);
            let mut waiters = hosted.waiting.borrow_mut();
            let answered: Vec<((u64, u64), Resolution)> = waiters
                .iter()
                .filter_map(|(&(index, serial), waiter)| {
                    if Some(waiter.term) != leading_term {
                        // The entry is in this replica's log and may have reached others:
                        // the next leader can still commit it. So the outcome is unknown,
                        // and the answer says so (`REQUEST_TIMED_OUT`, which librdkafka
                        // treats as possibly persisted and retries with the same sequence,
                        // deduplicated by the next leader). `NOT_LEADER_OR_FOLLOWER` would
                        // say "not written": after an epoch bump librdkafka then sends the
                        // records again as new ones, and a committed copy is duplicated
                        // (found by `reliability/partitions.py`).
                        return Some(((index, serial), Err(OUTCOME_UNKNOWN)));
                    }
                    let raft = raft?;
                    let durable = waiter.acks == 1
                        && raft.raft_log.persisted >= index
                        && raft.raft_log.term(index).ok() == Some(waiter.term);
                    durable.then_some(((index, serial), Ok(None)))
                })
                .collect();
            for (key, outcome) in answered {
                if let Some(waiter) = waiters.remove(&key) {
                    let _ = waiter.answer.send(outcome);
                }
            }
            if waiters.is_empty() {
                self.groups_waiting.borrow_mut().remove(&group_id);
            }
        }
    }

    /// The voters of a group this replica leads that are in sync now (ascending, itself
    /// included): each had every entry the leader had, and was heard from (raft-rs
    /// `recent_active`), within `replica.lag.time.max.ms` (Kafka's `lastCaughtUpTime`).
    /// Empty when it does not lead.
    pub fn in_sync(&self, group_id: u64) -> Vec<u64> {
        let driver = self.driver.borrow();
        let Some(raft) = driver.raft(group_id) else {
            return Vec::new();
        };
        let Some(hosted) = self.groups.borrow().get(&group_id).cloned() else {
            return Vec::new();
        };
        let mut caught_up_at = hosted.caught_up_at.borrow_mut();
        if raft.state != StateRole::Leader || hosted.caught_up_term.get() != raft.term {
            caught_up_at.clear();
            hosted.isr_mark.set(None);
        }
        if raft.state != StateRole::Leader {
            return Vec::new();
        }
        hosted.caught_up_term.set(raft.term);
        let now = self.clock.now();
        let last_index = raft.raft_log.last_index();
        let mark = hosted.isr_mark.get();
        if mark.is_none_or(|(at, _)| now.saturating_duration_since(at) >= ISR_MARK_INTERVAL) {
            hosted.isr_mark.set(Some((now, last_index)));
        }
        let mut in_sync = Vec::new();
        // Learners (a move's new replicas) are not in the ISR until they are voters.
        let voters = raft.prs().conf().voters().ids();
        for (&id, progress) in raft.prs().iter() {
            if !voters.contains(id) {
                continue;
            }
            // A new leader gives every voter a whole lag period (Kafka resets
            // lastCaughtUpTime on a leader change the same way).
            let since = caught_up_at.entry(id).or_insert(now);
            // `recent_active` is cleared once per election timeout (check-quorum) and set
            // by every response: sampled each tick, it says "heard within one timeout".
            if id == self.node_id || (progress.recent_active && progress.matched >= last_index) {
                *since = now;
            } else if let Some((at, index)) = mark {
                if progress.recent_active && progress.matched >= index {
                    *since = (*since).max(at);
                }
            }
            if now.saturating_duration_since(*since) <= self.replica_lag_time_max {
                in_sync.push(id);
            }
        }
        in_sync.sort_unstable();
        in_sync
    }

    /// Takes the next step of each move whose group this replica leads
    /// (`MultiRaft::advance_membership`: learners, one joint change, leave joint; a leader
    /// leaving the group hands over first). Once per tick; a step not possible now (a
    /// change in flight, learners catching up) waits for the next tick.
    fn drive_moves(&self) {
        let targets: Vec<(u64, BTreeSet<u64>)> = self
            .targets
            .borrow()
            .iter()
            .map(|(group, target)| (*group, target.clone()))
            .collect();
        for (group_id, target) in targets {
            let step = self.driver.borrow_mut().advance_membership(
                group_id,
                &target,
                MOVE_LAG_ENTRIES_MAX,
            );
            match step {
                Ok(MembershipStep::Proposed) => {
                    self.counts.borrow_mut().membership_changes += 1;
                    let now = self.driver.borrow().membership(group_id);
                    tracing::info!(
                        group_id,
                        ?target,
                        ?now,
                        "partition move: membership change proposed"
                    );
                    self.ring();
                }
                Ok(MembershipStep::Transferring(to)) => {
                    tracing::info!(
                        group_id,
                        to,
                        "partition move: handing leadership over first"
                    );
                }
                // The controller ends the move on the leader's report of these voters;
                // report them again until it has (a move cancelled before any change, or a
                // report lost with a controller failover, would otherwise never end).
                Ok(MembershipStep::Done) => {
                    if let Some(hosted) = self.groups.borrow().get(&group_id) {
                        hosted.reported_voters.borrow_mut().clear();
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(group_id, %error, "partition move: no step taken");
                }
            }
        }
    }

    /// Records, per group, a change of (leader, term, in-sync set) since the last report.
    /// Quiet groups are looked at once per slow tick, when they tick: nothing changes in
    /// them (a quiet leader's followers have everything and are live; any change wakes it),
    /// and a second between looks keeps `in_sync`'s samples well inside the lag time.
    fn record_leadership(&self) {
        let ids: Vec<u64> = {
            let driver = self.driver.borrow();
            let slow_ticks = Some(driver.slow_ticks_taken());
            let quiet_too = self.quiet_scanned_at.replace(slow_ticks) != slow_ticks;
            self.groups
                .borrow()
                .keys()
                .copied()
                .filter(|&group_id| quiet_too || !driver.is_quiet(group_id))
                .collect()
        };
        for group_id in ids {
            let Some(hosted) = self.groups.borrow().get(&group_id).cloned() else {
                continue;
            };
            let Some((leader, term, leads, serving)) =
                self.driver.borrow().raft(group_id).map(|raft| {
                    let leads = raft.state == StateRole::Leader;
                    let applied_term = raft.raft_log.term(hosted.applied_index.get()).ok();
                    let serving = leads && applied_term == Some(raft.term);
                    (raft.leader_id, raft.term, leads, serving)
                })
            else {
                continue;
            };
            // A leader is reported (so Metadata sends clients to it) once it has applied an
            // entry of its term, when it serves produce: before that it refuses idempotent
            // batches (`serve::check_sequences`). A client sent there too early has its
            // first request refused and its next, pipelined one refused out of sequence,
            // which librdkafka answers with an epoch bump that renumbers, and so writes
            // again, whatever it was retrying on other partitions.
            if leads && !serving {
                continue;
            }
            let isr = if leads {
                self.in_sync(group_id)
            } else {
                Vec::new()
            };
            // The voters once the membership is settled: what ends a move at the controller.
            let voters: Vec<u64> = if leads {
                self.driver
                    .borrow()
                    .membership(group_id)
                    .filter(|now| !now.is_joint() && now.learners.is_empty())
                    .map(|now| now.voters.into_iter().collect())
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            let voters_changed = *hosted.reported_voters.borrow() != voters;
            let now = (leader, term, isr);
            let mut reported = hosted.reported.borrow_mut();
            let was_leader = reported
                .as_ref()
                .is_some_and(|(leader, _, _)| *leader == self.node_id);
            if leads {
                self.count_leadership(reported.as_ref(), &now);
            }
            // The leader reports; a replica reports only that it stopped leading.
            let report = if leads {
                reported.as_ref() != Some(&now) || voters_changed
            } else {
                was_leader
            };
            if report {
                let _ = self.changes_doorbell.try_send(());
                self.changes.borrow_mut().insert(
                    group_id,
                    LeadershipChange {
                        group_id,
                        leader: now.0,
                        term: now.1,
                        isr: now.2.clone(),
                        voters: voters.clone(),
                    },
                );
            }
            if leads || was_leader {
                *reported = Some(now);
                *hosted.reported_voters.borrow_mut() = voters;
            }
        }
    }
}

impl ReplicaManager {
    /// Counts an election won, or a change of the in-sync set, between the last report of
    /// a group led here and `now` (leader, term, in-sync set).
    fn count_leadership(
        &self,
        reported: Option<&(u64, u64, Vec<u64>)>,
        now: &(u64, u64, Vec<u64>),
    ) {
        let mut counts = self.counts.borrow_mut();
        match reported {
            Some((leader, term, isr)) if *leader == now.0 && *term == now.1 => {
                counts.isr_shrinks += u64::from(isr.iter().any(|id| !now.2.contains(id)));
                counts.isr_expands += u64::from(now.2.iter().any(|id| !isr.contains(id)));
            }
            _ => counts.leader_elections += 1,
        }
    }
}

impl Drop for ReplicaManager {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A committed entry as the round hands it to `apply`.
struct Applied {
    group_id: u64,
    index: u64,
    term: u64,
    span: i64,
    /// An idempotent or transactional producer's batch, or a transaction marker.
    txn: TxnEntry,
    /// The log start a replicated `DeleteRecords` raises the log to (`serve::delete_records`).
    log_start: Option<i64>,
}

impl Applied {
    /// What applying `entry` needs, its batch header parsed once (this runs for every
    /// committed batch).
    fn of(group_id: u64, entry: &Entry) -> Self {
        let header = (entry.entry_type() == EntryType::EntryNormal)
            .then(|| BatchHeader::parse(&entry.data))
            .flatten();
        Applied {
            group_id,
            index: entry.index,
            term: entry.term,
            // A leader's empty entry and a configuration change take one offset each, as
            // their control batches in the log (`log_store.rs`).
            span: header.map_or(1, |h| i64::from(h.last_offset_delta) + 1),
            txn: header.map_or(TxnEntry::Other, |h| TxnEntry::of(&h, &entry.data)),
            log_start: header
                .filter(BatchHeader::is_control)
                .and_then(|_| log_start_carried(&entry.data)),
        }
    }
}

/// The log start offset of a `LOG_START` control batch.
fn log_start_carried(batch: &bytes::Bytes) -> Option<i64> {
    match control::record(batch) {
        Some((control::LOG_START, value)) => {
            Some(i64::from_be_bytes(value.as_ref().try_into().ok()?))
        }
        _ => None,
    }
}

/// What the committed entries read at open tell a replica.
struct TailState {
    /// The idempotent producers of the last `TAIL_SCAN_ENTRIES` entries (see `producers`).
    producers: Producers,
    /// The transactions: the snapshot's, with every committed entry after it applied.
    txns: ReplicaTxns,
    /// The highest log start a `LOG_START` entry among them carries.
    log_start: Option<i64>,
}

/// Reads the committed entries up to `commit` a replica needs at open: the last
/// `TAIL_SCAN_ENTRIES` for its producers, and every one after the transaction snapshot
/// (all of them without one) for its transactions (see [`TailState`]).
async fn scan_tail(
    log: &PartitionLog,
    commit: u64,
    txn_snapshot: Option<ReplicaTxnSnapshot>,
) -> Result<TailState, String> {
    let first_index = log.first_index();
    let producers_from = first_index.max(commit.saturating_sub(TAIL_SCAN_ENTRIES) + 1);
    // Every committed entry is read when the scan starts at the log's first and nothing
    // was ever removed before it (retention, DeleteRecords).
    let whole_log = producers_from == first_index && log.log_start_offset() == 0;
    let (txns, txns_from) = match txn_snapshot {
        Some(snapshot) => {
            let entries_lost = snapshot.index.saturating_add(1) < first_index;
            let from = snapshot.index.saturating_add(1).max(first_index);
            (
                ReplicaTxns::restored(&snapshot, log.log_start_offset(), entries_lost),
                from,
            )
        }
        None => (ReplicaTxns::default(), first_index),
    };
    let mut tail = TailState {
        producers: if whole_log {
            Producers::from_the_start()
        } else {
            Producers::default()
        },
        txns,
        log_start: None,
    };
    let mut low = producers_from.min(txns_from);
    while low <= commit {
        let read = log
            .read_entries(low, commit + 1, 1 << 20)
            .await
            .map_err(|error| format!("reading entries from {low}: {error}"))?;
        let Some(last) = read.last() else { break };
        low = last.index + 1;
        for entry in &read {
            let Some(header) = BatchHeader::parse(&entry.batch) else {
                continue;
            };
            let txn = TxnEntry::of(&header, &entry.batch);
            if entry.index >= producers_from {
                match &txn {
                    TxnEntry::Data(header) => {
                        tail.producers
                            .committed(header, entry.index, header.base_offset);
                    }
                    TxnEntry::Marker(marker) => tail.producers.marker_committed(marker),
                    TxnEntry::Other => {}
                }
            }
            tail.txns.apply(entry.index, &txn, header.base_offset);
            if let Some(start) = header
                .is_control()
                .then(|| log_start_carried(&entry.batch))
                .flatten()
            {
                tail.log_start = tail.log_start.max(Some(start));
            }
        }
    }
    if let Some(start) = tail.log_start {
        tail.txns.drop_below(start);
    }
    Ok(tail)
}

/// The replica's transaction snapshot, if it has a readable one. One that cannot be read or
/// checked is logged and ignored: the whole log is replayed instead.
async fn read_txn_snapshot(tp: &TopicPartition, log: &PartitionLog) -> Option<ReplicaTxnSnapshot> {
    let path = log.dir().join(REPLICA_TXNS_FILE);
    let file = match log.disk().read_file(&path).await {
        Ok(file) => file?,
        Err(error) => {
            tracing::warn!(partition = %tp, %error, "replica transaction snapshot unreadable; replaying the log");
            return None;
        }
    };
    match ReplicaTxnSnapshot::decode(&file) {
        // Its entries were applied, so committed, so in the log (or removed by retention,
        // which removes applied entries only): it is never ahead of what the log holds.
        Ok(snapshot) if snapshot.index <= log.last_index() => Some(snapshot),
        Ok(snapshot) => {
            tracing::warn!(partition = %tp, index = snapshot.index, last_index = log.last_index(), "replica transaction snapshot is past the log's end; replaying the log");
            None
        }
        Err(error) => {
            tracing::warn!(partition = %tp, %error, "replica transaction snapshot invalid; replaying the log");
            None
        }
    }
}

/// Writes a transaction snapshot durably (atomically replacing the last one).
async fn write_txn_snapshot(
    log: &PartitionLog,
    snapshot: &ReplicaTxnSnapshot,
) -> std::io::Result<()> {
    log.disk()
        .write_file_atomically(&log.dir().join(REPLICA_TXNS_FILE), &snapshot.encode())
        .await
}

/// The directory of shard `shard`'s raft-meta store under the data directory. Never a
/// partition's (those end in `-<partition>`).
pub fn replica_meta_dir_name(shard: usize) -> String {
    format!("shard-{shard}.raft")
}

/// The Kafka end offset of the entries up to Raft index `index` (the log start when
/// `index` is before the log's first entry).
async fn end_offset_of_index(log: &PartitionLog, index: u64) -> Result<i64, String> {
    if index < log.first_index() {
        return Ok(log.log_start_offset());
    }
    let read = log
        .read_entries(index, index + 1, 0)
        .await
        .map_err(|error| format!("reading entry {index}: {error}"))?;
    let entry = read
        .first()
        .ok_or_else(|| format!("committed entry {index} is missing from the log"))?;
    let header = BatchHeader::parse(&entry.batch)
        .ok_or_else(|| format!("committed entry {index} is not a batch"))?;
    Ok(header.last_offset() + 1)
}
