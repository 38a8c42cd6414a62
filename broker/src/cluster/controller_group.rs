//! The controller as Raft group 0 (`KRaft`'s `__cluster_metadata`): its replicas are the
//! voters of `controller.quorum.voters`, each driven on shard 0 of its broker by a
//! [`MultiRaft`] over the cluster [`Transport`].
//!
//! - Log: a partition log in `<data-dir>/__cluster_metadata-0` through [`LogStore`], hard and
//!   conf state in the raft-meta store (`<data-dir>/raft-meta.log`), both synced by the
//!   shard's [`LogDurability`] before raft hears they are durable. A restart reopens both.
//! - Entries: each committed change is a whole [`ClusterState`] (`store::encode`, the bytes
//!   `cluster.meta` holds) as the value of a one-record Kafka batch. A whole state, not a
//!   delta, makes applying trivially deterministic and lets a restarted broker recover its
//!   state from the last committed entry alone; its size is bounded by `topics_max`.
//! - Proposing: only the leader proposes, and only once it has applied everything committed
//!   and committed an entry of its own term (raft-rs appends one at election), so the state a
//!   change is computed from is the latest one ([`ControllerGroup::ready_to_propose`]).
//! - Applying: every committed state is handed to the `on_commit` callback in log order on
//!   every broker, the proposer's included; a proposal resolves when its index commits (with
//!   its term: applied; another term: superseded by a new leader).
//!
//! Lives on shard 0, `!Send`; one driver task owns the rounds.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::task::JoinHandle;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState};
use raft::storage::RaftState;
use raft::StateRole;
use ringfeed_replication::driver::{MultiRaft, ProposeError};
use ringfeed_replication::log_store::{LogDurability, LogStore, LogStoreStart};
use ringfeed_replication::log_store_meta::RaftMetaStore;
use ringfeed_replication::wire::{Frame, WireLimits};
use ringfeed_storage::batch::{
    build, read_varint, BatchHeader, BATCH_HEADER_BYTES, LOG_OVERHEAD_BYTES,
};
use ringfeed_storage::{Clock, Disk, LogConfig, PartitionLog};

use crate::cluster::transport::Transport;
use crate::cluster::{split_by_shard, CONTROLLER_GROUP_ID, REGISTRY_MAILBOX};
use crate::controller::store::{self, ClusterState};

/// The directory of group 0's log under the data directory.
pub const METADATA_LOG_DIR: &str = "__cluster_metadata-0";
/// Entries kept in memory beyond the unapplied ones (each a whole cluster state).
const RECENT_BYTES_MAX: usize = 4 << 20;
/// Received frames waiting for the driver round.
pub const INBOUND_FRAMES_MAX: usize = 256;
/// Broker heartbeats received and not yet read by the controller; the oldest are dropped
/// beyond this (each broker sends one a second, so only a stalled shard 0 gets near it).
pub const MAILBOX_MAX: usize = 1024;

/// Why a proposal was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposalError {
    /// This broker does not lead group 0 (or has not caught up in its term yet).
    #[error("not the controller (leader: {leader:?})")]
    NotController { leader: Option<u64> },
    /// A new leader's entry took the proposal's index: the change was not made.
    #[error("the change was superseded by a new controller leader")]
    Superseded,
    #[error("controller log: {0}")]
    Storage(String),
    /// Not committed within [`PROPOSAL_TIMEOUT`] (leadership lost, no quorum): the change
    /// may or may not be made later.
    #[error("the change was not committed within {PROPOSAL_TIMEOUT:?}")]
    TimedOut,
}

/// How long a proposal waits to commit: many election timeouts (1-2 s each), so a change is
/// only given up on when the group has no quorum.
pub const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(15);

/// Called with every committed state, in log order.
pub type OnCommit = Box<dyn Fn(ClusterState)>;

/// A proposal's term and where to answer it.
type Waiting = (u64, oneshot::Sender<Result<(), ProposalError>>);

/// How a [`ControllerGroup`] starts.
pub struct ControllerGroupStart<D: Disk> {
    pub node_id: u64,
    /// Every voter's node id, this broker's included.
    pub voters: Vec<u64>,
    /// Increases at every start of this broker (peers drop frames of a previous life).
    pub incarnation: u64,
    pub disk: D,
    pub data_dir: std::path::PathBuf,
    pub election_seed: u64,
}

/// Group 0 on this broker. See the module docs.
pub struct ControllerGroup<D: Disk> {
    node_id: u64,
    driver: RefCell<MultiRaft<LogStore<D>>>,
    durability: RefCell<LogDurability<D>>,
    /// Proposals waiting for their index to commit: index → (term, answer).
    waiting: RefCell<BTreeMap<u64, Waiting>>,
    /// The last index handed to `on_commit` (or recovered).
    applied: Cell<u64>,
    on_commit: OnCommit,
    doorbell: LocalSender<()>,
    transport: RefCell<Option<Rc<Transport>>>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
    /// The durability barrier failed and that was logged (once, not every round).
    storage_failure_logged: Cell<bool>,
    incarnation: u64,
    /// Payloads addressed to the registry mailbox ([`REGISTRY_MAILBOX`]): (sender, bytes).
    mailbox: RefCell<std::collections::VecDeque<(u64, Vec<u8>)>>,
    /// Where received messages of partition groups go (the shards' replica managers);
    /// dropped while none is set (Raft resends).
    partition_frames: RefCell<Option<PartitionFrames>>,
}

/// Takes the part of a received frame that is for partition groups (not group 0).
pub type PartitionFrames = Box<dyn Fn(Frame)>;

impl<D: Disk> crate::cluster::DrivenRounds for ControllerGroup<D> {
    fn tick_groups(&self) {
        self.driver.borrow_mut().tick();
    }

    fn run_round(&self) -> bool {
        self.round()
    }
}

impl<D: Disk> ControllerGroup<D> {
    /// Opens group 0's log and raft-meta store (recovering both) and returns the group with
    /// the latest committed state in its log (None on a fresh log). Call [`Self::run`] next.
    pub async fn open(
        start: ControllerGroupStart<D>,
        on_commit: OnCommit,
    ) -> Result<(Rc<Self>, Option<ClusterState>), String> {
        let ControllerGroupStart {
            node_id,
            voters,
            incarnation,
            disk,
            data_dir,
            election_seed,
        } = start;
        let log_dir = data_dir.join(METADATA_LOG_DIR);
        let (log, _report) =
            PartitionLog::open_on(disk.clone(), &log_dir, LogConfig::default(), Clock::System)
                .await
                .map_err(|error| format!("{}: {error}", log_dir.display()))?;
        let meta = RaftMetaStore::open(disk, &data_dir)
            .await
            .map_err(|error| format!("raft-meta store in {}: {error}", data_dir.display()))?;
        let persisted = meta.get(CONTROLLER_GROUP_ID).cloned();
        let (hard_state, conf_state) = match persisted {
            Some(group_meta) => (group_meta.hard_state, group_meta.conf_state),
            None => (HardState::default(), ConfState::from((voters, vec![]))),
        };
        let commit = hard_state.commit;
        let recovered = latest_committed_state(&log, commit).await?;
        let store = LogStore::open(
            log,
            LogStoreStart {
                raft_state: RaftState::new(hard_state, conf_state),
                recent_bytes_max: RECENT_BYTES_MAX,
                ..LogStoreStart::default()
            },
        )
        .await
        .map_err(|error| format!("group 0's log store: {error}"))?;
        let durability = LogDurability::new(meta);
        durability.register(CONTROLLER_GROUP_ID, store.clone());
        let mut driver = MultiRaft::new(node_id, incarnation, WireLimits::default(), election_seed);
        driver
            .add_group(CONTROLLER_GROUP_ID, store, commit)
            .map_err(|error| format!("starting group 0: {error}"))?;
        let (doorbell, rung) = local_channel::new_bounded(1);
        let group = Rc::new(Self {
            node_id,
            driver: RefCell::new(driver),
            durability: RefCell::new(durability),
            waiting: RefCell::new(BTreeMap::new()),
            applied: Cell::new(commit),
            on_commit,
            doorbell,
            transport: RefCell::new(None),
            tasks: RefCell::new(Vec::new()),
            storage_failure_logged: Cell::new(false),
            incarnation,
            mailbox: RefCell::new(std::collections::VecDeque::new()),
            partition_frames: RefCell::new(None),
        });
        group.tasks.borrow_mut().push(
            glommio::spawn_local(crate::cluster::drive_rounds(Rc::downgrade(&group), rung))
                .detach(),
        );
        Ok((group, recovered))
    }

    /// Connects the group to its transport: frames it receives are stepped, rounds' frames
    /// are sent through it.
    pub fn attach(self: &Rc<Self>, transport: Rc<Transport>, inbound: LocalReceiver<Frame>) {
        *self.transport.borrow_mut() = Some(transport);
        let group = Rc::downgrade(self);
        let forward = async move {
            while let Some(mut frame) = inbound.recv().await {
                let Some(group) = group.upgrade() else { return };
                group.take_mail(&mut frame);
                // Group 0 is stepped here; partition groups' messages go to the hook, which
                // cuts them per owning shard (`replica`).
                for (piece_of, piece) in split_by_shard(frame, |group_id| {
                    usize::from(group_id != CONTROLLER_GROUP_ID)
                }) {
                    if piece_of == 0 {
                        group.driver.borrow_mut().receive(piece);
                    } else if let Some(hook) = group.partition_frames.borrow().as_ref() {
                        hook(piece);
                    }
                }
                let _ = group.doorbell.try_send(());
            }
        };
        self.tasks
            .borrow_mut()
            .push(glommio::spawn_local(forward).detach());
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Sends the partition groups' messages received from now on to `hook`.
    pub fn set_partition_frames(&self, hook: PartitionFrames) {
        *self.partition_frames.borrow_mut() = Some(hook);
    }

    /// Hands the transport's liveness changes to `listener` (the shards' Raft drivers);
    /// nothing while no transport is attached.
    pub fn set_liveness_listener(&self, listener: crate::cluster::transport::LivenessListener) {
        if let Some(transport) = self.transport.borrow().as_ref() {
            transport.set_liveness_listener(listener);
        }
    }

    /// Sends a frame of partition groups on the transport (best effort, as every frame).
    pub fn send_frame(&self, frame: &Frame) {
        if let Some(transport) = self.transport.borrow().as_ref() {
            transport.send(frame);
        }
    }

    /// This start's incarnation (frames carry it; so does the broker's registration).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Moves the registry mailbox's messages out of `frame` (raft never sees them): each is
    /// a `MsgPropose` whose one entry is the payload ([`Self::send_mail`]).
    fn take_mail(&self, frame: &mut Frame) {
        let from = frame.from_node;
        let mut mailbox = self.mailbox.borrow_mut();
        frame.messages.retain_mut(|message| {
            if message.group_id != REGISTRY_MAILBOX {
                return true;
            }
            for entry in message.message.entries.drain(..) {
                if mailbox.len() >= MAILBOX_MAX {
                    mailbox.pop_front();
                }
                mailbox.push_back((from, entry.data.to_vec()));
            }
            false
        });
    }

    /// Sends `payload` to `to`'s registry mailbox on the transport, or into this broker's
    /// own mailbox when `to` is this broker. Best effort, like every frame (the sender
    /// repeats its heartbeat every interval).
    pub fn send_mail(&self, to: u64, payload: Vec<u8>) {
        if to == self.node_id {
            let mut mailbox = self.mailbox.borrow_mut();
            if mailbox.len() >= MAILBOX_MAX {
                mailbox.pop_front();
            }
            mailbox.push_back((to, payload));
            return;
        }
        let Some(transport) = self.transport.borrow().clone() else {
            return;
        };
        let mut frame = Frame::new(self.node_id, to, self.incarnation);
        frame.push(
            REGISTRY_MAILBOX,
            raft::eraftpb::Message {
                msg_type: raft::eraftpb::MessageType::MsgPropose as i32,
                from: self.node_id,
                to,
                entries: vec![Entry {
                    data: payload.into(),
                    ..Entry::default()
                }],
                ..raft::eraftpb::Message::default()
            },
        );
        transport.send(&frame);
    }

    /// The mailbox's payloads received so far, oldest first.
    pub fn take_mailbox(&self) -> Vec<(u64, Vec<u8>)> {
        self.mailbox.borrow_mut().drain(..).collect()
    }

    /// Group 0's current term as this broker knows it.
    pub fn term(&self) -> u64 {
        self.driver
            .borrow()
            .raft(CONTROLLER_GROUP_ID)
            .map_or(0, |raft| raft.term)
    }

    /// The attached transport's counts (for metrics).
    pub fn transport_counts(&self) -> Option<crate::cluster::transport::TransportCounts> {
        self.transport
            .borrow()
            .as_ref()
            .map(|transport| transport.counts())
    }

    /// The current leader of group 0 as this broker knows it.
    pub fn leader(&self) -> Option<u64> {
        let driver = self.driver.borrow();
        let raft = driver.raft(CONTROLLER_GROUP_ID)?;
        (raft.leader_id != raft::INVALID_ID).then_some(raft.leader_id)
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.node_id)
    }

    /// Controlled shutdown: from now on refuses the leadership of group 0
    /// (`MultiRaft::refuse_leadership`); while this broker leads it, hands it to a
    /// caught-up voter (heard from recently, holding every entry; of several, the lowest
    /// id) unless a transfer is under way. Returns whether a transfer is under way (false
    /// once another broker leads, or when no voter is caught up).
    pub fn hand_over(&self) -> bool {
        let mut driver = self.driver.borrow_mut();
        driver.refuse_leadership();
        let Some(raft) = driver.raft(CONTROLLER_GROUP_ID) else {
            return false;
        };
        if raft.state != StateRole::Leader {
            return false;
        }
        if driver.transferring_to(CONTROLLER_GROUP_ID).is_some() {
            return true;
        }
        let last_index = raft.raft_log.last_index();
        let successor = raft
            .prs()
            .iter()
            .filter(|(&id, progress)| {
                id != self.node_id && progress.recent_active && progress.matched >= last_index
            })
            .map(|(&id, _)| id)
            .min();
        let Some(successor) = successor else {
            return false;
        };
        if !driver.transfer_leader(CONTROLLER_GROUP_ID, successor) {
            return false;
        }
        tracing::info!(to = successor, "handing the controller over");
        let _ = self.doorbell.try_send(());
        true
    }

    /// Whether a change proposed now is computed from the latest committed state: this
    /// broker leads, has committed an entry of its term, and applied everything committed.
    pub fn ready_to_propose(&self) -> bool {
        let driver = self.driver.borrow();
        let Some(raft) = driver.raft(CONTROLLER_GROUP_ID) else {
            return false;
        };
        let committed = raft.raft_log.committed;
        raft.state == StateRole::Leader
            && raft.raft_log.term(committed).ok() == Some(raft.term)
            && self.applied.get() == committed
    }

    /// Proposes `state` as the next cluster state and waits until it is committed and
    /// applied here (`on_commit` has seen it).
    pub async fn propose(&self, state: &ClusterState) -> Result<(), ProposalError> {
        if !self.ready_to_propose() {
            return Err(ProposalError::NotController {
                leader: self.leader(),
            });
        }
        let encoded = store::encode(state);
        let batch = build::batch(&[build::Record {
            key: None,
            value: Some(&encoded),
            timestamp_ms: unix_millis(),
        }]);
        let proposed = self.driver.borrow_mut().propose(CONTROLLER_GROUP_ID, batch);
        let proposed = match proposed {
            Ok(proposed) => proposed,
            Err(ProposeError::NotLeader { leader_hint, .. }) => {
                return Err(ProposalError::NotController {
                    leader: (leader_hint != raft::INVALID_ID).then_some(leader_hint),
                })
            }
            Err(error) => return Err(ProposalError::Storage(error.to_string())),
        };
        let (answer, answered) = oneshot::channel();
        self.waiting
            .borrow_mut()
            .insert(proposed.index, (proposed.term, answer));
        let _ = self.doorbell.try_send(());
        let answer = glommio::timer::timeout(PROPOSAL_TIMEOUT, async {
            Ok(answered.await.unwrap_or(Err(ProposalError::Superseded)))
        })
        .await;
        answer.unwrap_or_else(|_| {
            self.waiting.borrow_mut().remove(&proposed.index);
            Err(ProposalError::TimedOut)
        })
    }

    /// Stops the driver and forwarding tasks; pending proposals are answered `Superseded`.
    pub fn stop(&self) {
        for task in self.tasks.borrow_mut().drain(..) {
            task.cancel();
        }
        self.waiting.borrow_mut().clear();
    }

    /// One driver round; returns whether work remains (a sync in flight).
    fn round(&self) -> bool {
        let mut committed: Vec<Entry> = Vec::new();
        let frames = {
            let mut driver = self.driver.borrow_mut();
            if !driver.has_work() {
                return false;
            }
            let mut durability = self.durability.borrow_mut();
            driver.round(&mut *durability, |_group, entry| {
                committed.push(entry.clone());
            })
        };
        if let Some(error) = self.durability.borrow().failed() {
            if !self.storage_failure_logged.replace(true) {
                tracing::error!(%error, "controller log cannot be made durable; group 0 stops here");
            }
        }
        if let Some(transport) = self.transport.borrow().as_ref() {
            for frame in &frames {
                transport.send(frame);
            }
        }
        for entry in committed {
            self.apply(&entry);
        }
        self.driver.borrow().has_work()
    }

    fn apply(&self, entry: &Entry) {
        self.applied.set(entry.index);
        if entry.entry_type() == EntryType::EntryNormal && !entry.data.is_empty() {
            match state_of_entry(&entry.data) {
                Ok(state) => (self.on_commit)(state),
                // Only leaders propose, and only encoded states: a committed entry that is
                // not one is a bug or damage the log's CRC missed.
                Err(reason) => {
                    tracing::error!(index = entry.index, %reason, "committed controller entry is not a cluster state; skipped");
                }
            }
        }
        let resolved = self.waiting.borrow_mut().remove(&entry.index);
        if let Some((term, answer)) = resolved {
            let outcome = if term == entry.term {
                Ok(())
            } else {
                Err(ProposalError::Superseded)
            };
            let _ = answer.send(outcome);
        }
        // Proposals at lower indexes than this commit can no longer commit as proposed.
        let stale: Vec<u64> = self
            .waiting
            .borrow()
            .range(..entry.index)
            .map(|(index, _)| *index)
            .collect();
        for index in stale {
            if let Some((_, answer)) = self.waiting.borrow_mut().remove(&index) {
                let _ = answer.send(Err(ProposalError::Superseded));
            }
        }
    }
}

impl<D: Disk> Drop for ControllerGroup<D> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// The cluster state a committed entry's batch carries.
pub fn state_of_entry(batch: &[u8]) -> Result<ClusterState, String> {
    let value = single_record_value(batch).ok_or("not a one-record uncompressed batch")?;
    store::decode(&value)
}

/// The value of the only record of an uncompressed data batch (what [`build::batch`] writes
/// for one record); `None` for anything else. Never trusts the bytes to be well formed.
fn single_record_value(batch: &[u8]) -> Option<Bytes> {
    let header = BatchHeader::parse(batch)?;
    let whole = usize::try_from(header.batch_length).ok()? + LOG_OVERHEAD_BYTES;
    if whole != batch.len()
        || header.is_control()
        || header.record_count != 1
        || header.is_compressed()
    {
        return None;
    }
    let mut rest = batch.get(BATCH_HEADER_BYTES..)?;
    let _length = read_varint(&mut rest)?;
    let (_attributes, tail) = rest.split_first()?;
    rest = tail;
    let _timestamp_delta = read_varint(&mut rest)?;
    let _offset_delta = read_varint(&mut rest)?;
    let key_length = read_varint(&mut rest)?;
    if key_length > 0 {
        rest = rest.get(usize::try_from(key_length).ok()?..)?;
    }
    let value_length = usize::try_from(read_varint(&mut rest)?).ok()?;
    Some(Bytes::copy_from_slice(rest.get(..value_length)?))
}

/// The state of the last committed data entry at or below `commit` (entries are whole
/// states, so it is the state machine); `None` when nothing was committed yet.
async fn latest_committed_state<D: Disk>(
    log: &PartitionLog<D>,
    commit: u64,
) -> Result<Option<ClusterState>, String> {
    let mut index = commit.min(log.last_index());
    while index >= log.first_index().max(1) {
        let read = log
            .read_entries(index, index + 1, 64 << 20)
            .await
            .map_err(|error| format!("reading group 0's entry {index}: {error}"))?;
        let Some(stored) = read.first() else {
            return Err(format!("group 0's committed entry {index} is missing"));
        };
        let entry = ringfeed_replication::log_store::stored_entry(stored);
        if entry.entry_type() == EntryType::EntryNormal && !entry.data.is_empty() {
            return state_of_entry(&entry.data)
                .map(Some)
                .map_err(|reason| format!("group 0's committed entry {index}: {reason}"));
        }
        index -= 1;
    }
    Ok(None)
}

/// The data directory holds group 0's log (this broker was started as a cluster member).
pub fn has_metadata_log(data_dir: &Path) -> bool {
    data_dir.join(METADATA_LOG_DIR).is_dir()
}

#[cfg(test)]
#[path = "controller_group_tests.rs"]
mod tests;
