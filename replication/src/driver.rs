//! The per-shard Raft driver: one [`MultiRaft`] owns every group (partition, or the controller)
//! a shard hosts, thousands of them, and drives their raft-rs `RawNode`s in rounds, the way
//! `TiKV`'s batch system does:
//!
//! ```text
//! round:  1. release the readies whose writes became durable   (on_persist_ready, then send
//!                                                                their persisted messages)
//!         2. step the messages received since the last round
//!         3. tick every awake group once per tick due (a quiet one on every tenth: `quiet`)
//!         4. for each group with a Ready: send the leader's messages, apply committed entries
//!            (callback), stage snapshot / entries / hard state in its store,
//!            advance_append_async, advance_apply
//!         5. one durability wait for everything staged by every group (Durability::start_sync)
//!         6. release again (a synchronous Durability completes at once)
//!         7. one frame per peer broker (split only above WireLimits::frame_bytes_max)
//! ```
//!
//! Persisting completes asynchronously: a Ready's writes are staged, the shard's
//! [`Durability`] makes them durable with one wait (group commit across groups), and only then
//! is `on_persist_ready` called and the messages raft wants sent after persisting (votes,
//! append responses) leave. A leader counts itself in the quorum only after its own persist
//! (raft-rs `on_persist_entries`), so acks=all never runs ahead of the leader's disk.
//!
//! Owned by one shard; nothing here is shared or locked. Not `Send`-bound: the stores may hold
//! shard-local handles.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{self, AssertUnwindSafe};

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};
use ringfeed_storage::sim::SeededRng;
use thiserror::Error;

use crate::wire::{group_message_encoded_size, Frame, WireLimits, FRAME_BODY_BYTES_MIN};

/// How often the shard calls [`MultiRaft::tick`].
pub const TICK_INTERVAL_MS: u64 = 100;
/// A leader heartbeats every 2 ticks (200 ms) to each follower (coalesced per broker pair).
pub const HEARTBEAT_TICKS: usize = 2;
/// A follower that hears no leader for a randomized 10..20 ticks (1-2 s) starts a pre-vote.
/// Failover after a leader dies or is cut off therefore takes the election timeout (at most
/// 2 s) plus a pre-vote and a vote round trip (milliseconds on a LAN): about 1-2.1 s, inside
/// issue 12's "a few seconds". With `check_quorum` a cut-off leader steps down after one
/// election timeout without hearing a quorum, so it stops accepting writes by then too.
pub const ELECTION_TICKS: usize = 10;
/// Upper bound (exclusive) of the randomized election timeout, in ticks.
pub const ELECTION_TICKS_MAX: usize = 2 * ELECTION_TICKS;
/// Bytes of entries in one append message: a handful of Kafka batches (1 MiB default max).
pub const APPEND_BYTES_MAX: u64 = 1 << 20;
/// Appends in flight to one follower before the leader waits for acknowledgements.
pub const APPENDS_IN_FLIGHT_MAX: usize = 256;

const _: () = assert!(HEARTBEAT_TICKS < ELECTION_TICKS);

/// A group's Raft log as the driver needs it: raft-rs's reads ([`raft::Storage`]) plus staged
/// writes. A staged write is visible to the reads at once and durable only once a later
/// [`Durability::start_sync`] completes; writes of one group become durable in the order they
/// were staged (a power cut keeps a prefix of them).
pub trait GroupStore: raft::Storage {
    /// Whether raft-rs asked for entries this store could not serve at once
    /// (`LogTemporarilyUnavailable`): the shard reads them and calls
    /// [`MultiRaft::entries_fetched`]. A store that serves everything from memory never does.
    fn wants_fetch(&self) -> bool {
        false
    }
    /// Replaces the log with `snapshot` (the follower was too far behind).
    fn stage_snapshot(&mut self, snapshot: Snapshot) -> raft::Result<()>;
    /// Appends `entries`, first dropping any stored entry at or after the first one's index.
    fn stage_entries(&mut self, entries: &[Entry]) -> raft::Result<()>;
    fn stage_hard_state(&mut self, hard_state: &HardState) -> raft::Result<()>;
    /// Records the configuration a committed change made, to be saved with the next durable
    /// write (a restart reopens the group with it).
    fn stage_conf_state(&mut self, conf_state: ConfState);
    /// Entries up to `index` are applied (and so durable here): a store may let them leave
    /// memory. Raft-rs reads them again only to send them to a lagging follower.
    fn advance_applied(&mut self, _index: u64) {}
}

/// The shard's durability barrier, shared by all its groups: one wait covers every write
/// staged before it (one fdatasync per active log per round, not per group write).
pub trait Durability {
    /// Starts making durable every write staged so far; tickets increase.
    fn start_sync(&mut self) -> u64;
    /// The highest ticket whose sync has completed (0 before any). Tickets complete in order.
    fn durable_ticket(&mut self) -> u64;
}

/// Writes raft-rs's test store keeps in memory: durable as soon as staged.
impl GroupStore for raft::storage::MemStorage {
    fn stage_snapshot(&mut self, snapshot: Snapshot) -> raft::Result<()> {
        self.wl().apply_snapshot(snapshot)
    }

    fn stage_entries(&mut self, entries: &[Entry]) -> raft::Result<()> {
        self.wl().append(entries)
    }

    fn stage_hard_state(&mut self, hard_state: &HardState) -> raft::Result<()> {
        self.wl().set_hardstate(hard_state.clone());
        Ok(())
    }

    fn stage_conf_state(&mut self, conf_state: ConfState) {
        self.wl().set_conf_state(conf_state);
    }
}

/// A [`Durability`] whose syncs complete at once (memory stores, tests).
#[derive(Debug, Default)]
pub struct ImmediateDurability {
    ticket: u64,
}

impl Durability for ImmediateDurability {
    fn start_sync(&mut self) -> u64 {
        self.ticket += 1;
        self.ticket
    }

    fn durable_ticket(&mut self) -> u64 {
        self.ticket
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProposeError {
    #[error("group {0} is not hosted here")]
    UnknownGroup(u64),
    #[error("not the leader of group {group_id} (leader {leader_hint}, 0 if unknown)")]
    NotLeader { group_id: u64, leader_hint: u64 },
    #[error("group {group_id} dropped the proposal: {reason}")]
    Dropped { group_id: u64, reason: String },
    #[error("group {0} is fenced after a storage error")]
    Fenced(u64),
}

/// Where a proposal landed: acknowledge it once a committed entry at `index` has `term`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposed {
    pub term: u64,
    pub index: u64,
}

/// Counts for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverStats {
    pub frames_sent: u64,
    pub frames_dropped_wrong_node: u64,
    pub frames_dropped_stale_incarnation: u64,
    pub messages_for_unknown_groups: u64,
    pub messages_refused_by_raft: u64,
    pub messages_too_large: u64,
    pub syncs_started: u64,
    pub groups_fenced: u64,
    /// Leadership transfers to this node refused while it shuts down.
    pub leadership_refused: u64,
    /// Groups that went quiet (`quiet`), and quiet groups woken again.
    pub groups_quieted: u64,
    pub groups_woken: u64,
}

/// The raft settings every group shares; only the node id differs per broker.
pub fn group_config(node_id: u64, applied: u64) -> raft::Config {
    raft::Config {
        id: node_id,
        election_tick: ELECTION_TICKS,
        heartbeat_tick: HEARTBEAT_TICKS,
        min_election_tick: ELECTION_TICKS,
        max_election_tick: ELECTION_TICKS_MAX,
        applied,
        max_size_per_msg: APPEND_BYTES_MAX,
        max_inflight_msgs: APPENDS_IN_FLIGHT_MAX,
        // A partitioned node's pre-vote fails without raising its term, so it cannot depose a
        // healthy leader when it comes back.
        pre_vote: true,
        // A leader that no longer hears a quorum steps down (no stale leader serving writes).
        check_quorum: true,
        // The broker answers clients NOT_LEADER_OR_FOLLOWER with the leader instead.
        disable_proposal_forwarding: true,
        ..raft::Config::default()
    }
}

struct Group<S: GroupStore> {
    node: RawNode<S>,
    /// (term, role) when its election timeout was last drawn: raft-rs redraws from
    /// `thread_rng` whenever it resets (term or role change); the driver then redraws from
    /// its seeded source so a simulation replays exactly.
    timeout_drawn_for: (u64, StateRole),
    /// A storage write failed (fsyncgate: never retry and carry on as if the write happened),
    /// or raft-rs panicked on a peer's message: the group takes no further part.
    fenced: bool,
    /// Whether it ticks once in `QUIET_TICK_EVERY`, and why (`quiet`).
    rest: quiet::Rest,
}

/// Readies staged in one round, released together when their sync completes.
struct PendingSync {
    ticket: u64,
    /// (group, ready number, messages to send once persisted)
    readies: Vec<(u64, u64, Vec<Message>)>,
}

/// Drives the Raft groups of one shard. See the module docs for a round.
pub struct MultiRaft<S: GroupStore> {
    node_id: u64,
    incarnation: u64,
    limits: WireLimits,
    groups: BTreeMap<u64, Group<S>>,
    inbox: Vec<(u64, Message)>,
    ticks_due: u32,
    /// Ticks taken since the driver started: a quiet group ticks when this is a multiple of
    /// `QUIET_TICK_EVERY`.
    ticks_taken: u64,
    /// The peer brokers the transport heard from lately ([`Self::set_live_peers`]).
    live_peers: LivePeers,
    /// Set by a tick after which every group was quiet or fenced, to the count of wakes
    /// then (`DriverStats::groups_woken`): a wake since, or a new group, makes it stale, so
    /// [`Self::ticks_until_needed`] costs nothing per round.
    resting_since_tick: Option<u64>,
    /// Groups touched since their last Ready (stepped, ticked, proposed to, persisted): only
    /// these can have a new one, so a round costs what changed, not the number of groups.
    maybe_ready: BTreeSet<u64>,
    /// Groups whose store wants entries read from disk ([`GroupStore::wants_fetch`]), for
    /// the shard to serve ([`Self::take_fetches_wanted`]).
    fetches_wanted: BTreeSet<u64>,
    /// Snapshots staged since the last [`Self::take_snapshots_installed`] (a group's state
    /// machine starts again from each), in staging order.
    snapshots_installed: Vec<(u64, Snapshot)>,
    election_rng: SeededRng,
    pending: VecDeque<PendingSync>,
    /// Messages to send this round, per peer node, in the order raft made them.
    outbox: BTreeMap<u64, Vec<(u64, Message)>>,
    /// The highest incarnation heard from each peer.
    peer_incarnations: BTreeMap<u64, u64>,
    stats: DriverStats,
    /// Set when the broker starts a controlled shutdown ([`Self::refuse_leadership`]).
    refusing_leadership: bool,
    logger: slog::Logger,
}

impl<S: GroupStore> MultiRaft<S> {
    /// `election_seed` seeds the election timeouts (see `Group::timeout_drawn_for`).
    pub fn new(node_id: u64, incarnation: u64, limits: WireLimits, election_seed: u64) -> Self {
        Self {
            node_id,
            incarnation,
            limits,
            groups: BTreeMap::new(),
            inbox: Vec::new(),
            ticks_due: 0,
            ticks_taken: 0,
            live_peers: LivePeers::new(),
            resting_since_tick: None,
            maybe_ready: BTreeSet::new(),
            fetches_wanted: BTreeSet::new(),
            snapshots_installed: Vec::new(),
            election_rng: SeededRng::new(election_seed),
            pending: VecDeque::new(),
            outbox: BTreeMap::new(),
            peer_incarnations: BTreeMap::new(),
            stats: DriverStats::default(),
            refusing_leadership: false,
            logger: crate::raft_log::logger(),
        }
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn stats(&self) -> &DriverStats {
        &self.stats
    }

    /// Starts driving a group whose store already holds its membership (and, after a restart,
    /// its durable log and hard state). `applied`: the last index the state machine holds.
    pub fn add_group(&mut self, group_id: u64, store: S, applied: u64) -> raft::Result<()> {
        let logger = crate::raft_log::group_logger(&self.logger, group_id);
        let node = RawNode::new(&group_config(self.node_id, applied), store, &logger)?;
        let mut group = Group {
            node,
            timeout_drawn_for: (0, StateRole::Follower),
            fenced: false,
            rest: quiet::Rest::default(),
        };
        redraw_election_timeout(&mut group, &mut self.election_rng, true);
        let previous = self.groups.insert(group_id, group);
        assert!(previous.is_none(), "group {group_id} added twice");
        self.resting_since_tick = None;
        self.maybe_ready.insert(group_id);
        Ok(())
    }

    /// Stops driving a group (its replica left this shard, or its topic was deleted) and
    /// says whether it was hosted. Its readies waiting for a sync and its queued messages are dropped:
    /// raft on the peers resends whatever they needed. The caller keeps the store's handle.
    pub fn remove_group(&mut self, group_id: u64) -> bool {
        if self.groups.remove(&group_id).is_none() {
            return false;
        }
        self.maybe_ready.remove(&group_id);
        self.fetches_wanted.remove(&group_id);
        self.inbox.retain(|(id, _)| *id != group_id);
        for sync in &mut self.pending {
            sync.readies.retain(|(id, _, _)| *id != group_id);
        }
        for messages in self.outbox.values_mut() {
            messages.retain(|(id, _)| *id != group_id);
        }
        true
    }

    pub fn group_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.groups.keys().copied()
    }

    /// The group's raft state, for status pages and the simulation's checks.
    pub fn raft(&self, group_id: u64) -> Option<&raft::Raft<S>> {
        self.groups.get(&group_id).map(|group| &group.node.raft)
    }

    /// Every group's raft state, in group order.
    pub fn rafts(&self) -> impl Iterator<Item = (u64, &raft::Raft<S>)> + '_ {
        self.groups
            .iter()
            .map(|(&group_id, group)| (group_id, &group.node.raft))
    }

    pub fn is_fenced(&self, group_id: u64) -> bool {
        self.groups.get(&group_id).is_some_and(|group| group.fenced)
    }

    /// Proposes `data` as a new entry of `group_id` on this node, which must lead it. The
    /// entry shares `data`'s memory: raft-rs's copies of it (the unstable log, a message per
    /// follower, the committed entries) are references, not copies.
    pub fn propose(&mut self, group_id: u64, data: Bytes) -> Result<Proposed, ProposeError> {
        let group = self
            .groups
            .get_mut(&group_id)
            .ok_or(ProposeError::UnknownGroup(group_id))?;
        if group.fenced {
            return Err(ProposeError::Fenced(group_id));
        }
        let raft = &group.node.raft;
        if raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader {
                group_id,
                leader_hint: raft.leader_id,
            });
        }
        let before = raft.raft_log.last_index();
        group
            .node
            .propose(Vec::new(), data)
            .map_err(|error| ProposeError::Dropped {
                group_id,
                reason: error.to_string(),
            })?;
        self.stats.count_rest(group.rest.wake());
        self.maybe_ready.insert(group_id);
        let raft = &group.node.raft;
        let index = raft.raft_log.last_index();
        assert_eq!(index, before + 1, "one proposal, one entry");
        Ok(Proposed {
            term: raft.term,
            index,
        })
    }

    /// Asks this node, leader of `group_id`, to hand the leadership to voter `to` (raft-rs
    /// leader transfer: the leader stops taking proposals, brings `to` up to its last index,
    /// then tells it to campaign at once; a transfer not done within an election timeout is
    /// abandoned and the leader takes proposals again). Returns whether a transfer is under
    /// way to `to` after the call: false when this node does not lead the group, the group is
    /// fenced, or `to` is this node or not a voter.
    pub fn transfer_leader(&mut self, group_id: u64, to: u64) -> bool {
        let Some(group) = self.groups.get_mut(&group_id) else {
            return false;
        };
        let raft = &group.node.raft;
        if group.fenced
            || raft.state != StateRole::Leader
            || to == self.node_id
            || !raft.prs().conf().voters().contains(to)
        {
            return false;
        }
        group.node.transfer_leader(to);
        self.stats.count_rest(group.rest.wake());
        self.maybe_ready.insert(group_id);
        group.node.raft.lead_transferee == Some(to)
    }

    /// Asks for the leadership of `group_id` for this node (`ElectLeaders`, preferred
    /// election): on its leader a no-op (true); on a follower that knows its leader,
    /// raft-rs forwards a `MsgTransferLeader` naming this node to the leader, which then
    /// transfers as in [`Self::transfer_leader`] (only the transferee itself may ask: the
    /// wire takes a message's sender from its frame). Returns whether the leadership is
    /// here or was asked for; false when the group is not hosted, fenced, has no known
    /// leader, or this node is not a voter, or refuses leadership (shutting down).
    pub fn request_leadership(&mut self, group_id: u64) -> bool {
        let node_id = self.node_id;
        let refusing = self.refusing_leadership;
        let Some(group) = self.groups.get_mut(&group_id) else {
            return false;
        };
        let raft = &group.node.raft;
        if group.fenced || refusing || !raft.prs().conf().voters().contains(node_id) {
            return false;
        }
        if raft.state == StateRole::Leader {
            return true;
        }
        if raft.leader_id == raft::INVALID_ID {
            return false;
        }
        group.node.transfer_leader(node_id);
        self.stats.count_rest(group.rest.wake());
        self.maybe_ready.insert(group_id);
        true
    }

    /// From now on this node refuses leadership handed to it: a leader's transfer to it
    /// (`MsgTimeoutNow`) is dropped, so it does not campaign. For a broker shutting down,
    /// so that another broker's leader balancing does not move a group back to it while it
    /// is handing its own over (that leader gives its transfer up, `abort_transfer`).
    pub fn refuse_leadership(&mut self) {
        self.refusing_leadership = true;
    }

    /// Ends a leadership transfer of `group_id` under way from this node (the leader takes
    /// proposals again); returns whether one was. raft-rs abandons a transfer to one voter
    /// when asked for another, and asking for itself is a no-op after that.
    pub fn abort_transfer(&mut self, group_id: u64) -> bool {
        let Some(group) = self.groups.get_mut(&group_id) else {
            return false;
        };
        let raft = &group.node.raft;
        if raft.state != StateRole::Leader || raft.lead_transferee.is_none() {
            return false;
        }
        group.node.transfer_leader(self.node_id);
        self.stats.count_rest(group.rest.wake());
        self.maybe_ready.insert(group_id);
        group.node.raft.lead_transferee.is_none()
    }

    /// The voter a leadership transfer of `group_id` is under way to, if any.
    pub fn transferring_to(&self, group_id: u64) -> Option<u64> {
        let raft = &self.groups.get(&group_id)?.node.raft;
        (raft.state == StateRole::Leader)
            .then_some(raft.lead_transferee)
            .flatten()
    }

    /// The groups whose store wants entries read from disk since the last call: for each,
    /// the shard reads them (`LogStore::fetch`) and calls [`Self::entries_fetched`].
    pub fn take_fetches_wanted(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.fetches_wanted)
            .into_iter()
            .collect()
    }

    /// The snapshots the groups staged since the last call, each with its group, in order:
    /// a group's applied state jumps to the snapshot's index (no entry up to it is applied
    /// one by one). A group handles one Ready per round, and a Ready with a snapshot
    /// applies no entry, so a round gives a group a snapshot or applied entries, not both.
    pub fn take_snapshots_installed(&mut self) -> Vec<(u64, Snapshot)> {
        std::mem::take(&mut self.snapshots_installed)
    }

    /// The store of a hosted group.
    pub fn store(&self, group_id: u64) -> Option<&S> {
        self.groups.get(&group_id).map(|group| group.node.store())
    }

    /// Entries raft-rs asked for under `context` were read into the group's store: raft-rs
    /// asks again (sending to the follower that waited) and is served from them. A context
    /// of an earlier term or leadership does nothing (raft-rs checks).
    pub fn entries_fetched(&mut self, group_id: u64, context: raft::GetEntriesContext) {
        let Some(group) = self.groups.get_mut(&group_id) else {
            return;
        };
        if group.fenced {
            return;
        }
        let node = &mut group.node;
        if panic::catch_unwind(AssertUnwindSafe(|| node.on_entries_fetched(context))).is_err() {
            // As in `step_inbox`: raft-rs's `fatal!` fences this group, not the shard.
            group.fenced = true;
            self.stats.groups_fenced += 1;
            return;
        }
        self.stats.count_rest(group.rest.wake());
        self.maybe_ready.insert(group_id);
    }

    /// Queues a received frame's messages for the next round.
    pub fn receive(&mut self, frame: Frame) {
        if frame.to_node != self.node_id {
            self.stats.frames_dropped_wrong_node += 1;
            return;
        }
        let known = self.peer_incarnations.entry(frame.from_node).or_insert(0);
        if frame.incarnation < *known {
            // A frame from the peer's previous life, overtaken by its restart.
            self.stats.frames_dropped_stale_incarnation += 1;
            return;
        }
        *known = frame.incarnation;
        self.inbox.extend(frame.into_group_messages());
    }

    /// One tick is due (call every [`TICK_INTERVAL_MS`]); the next round ticks every group.
    pub fn tick(&mut self) {
        self.ticks_due += 1;
    }

    /// Whether a round would do anything now (messages queued, a tick due, a group ready, or
    /// a sync that may have completed).
    pub fn has_work(&self) -> bool {
        !self.inbox.is_empty()
            || self.ticks_due > 0
            || !self.pending.is_empty()
            || !self.maybe_ready.is_empty()
    }

    /// One round (module docs). `apply(group_id, entry)` sees every committed entry once, in
    /// index order (after a restart, again from the `applied` index the group was added with).
    /// Returns the frames to send: one per peer, more only where one would exceed the limit.
    pub fn round<D, A>(&mut self, durability: &mut D, mut apply: A) -> Vec<Frame>
    where
        D: Durability,
        A: FnMut(u64, &Entry),
    {
        self.release_durable(durability.durable_ticket());
        self.step_inbox();
        self.tick_groups();
        let mut readies = Vec::new();
        let mut staged_any = false;
        for group_id in std::mem::take(&mut self.maybe_ready) {
            let group = self.groups.get_mut(&group_id).expect("hosted group");
            if group.fenced {
                continue;
            }
            // Stepping (an append response from a lagging follower) may have asked for
            // entries memory no longer holds.
            if group.node.store().wants_fetch() {
                self.fetches_wanted.insert(group_id);
            }
            if !group.node.has_ready() {
                continue;
            }
            let ready = match handle_ready(group_id, group, &mut self.outbox, &mut apply) {
                Ok(ready) => ready,
                Err(error) => {
                    tracing::error!(group_id, %error, "a Raft group's store refused its Ready; the group is fenced");
                    group.fenced = true;
                    self.stats.groups_fenced += 1;
                    continue;
                }
            };
            if group.node.has_ready() {
                // More than one Ready's worth (committed entries past the size cap).
                self.maybe_ready.insert(group_id);
            }
            staged_any |= ready.staged;
            if let Some(snapshot) = ready.snapshot {
                self.snapshots_installed.push((group_id, snapshot));
            }
            readies.push((group_id, ready.number, ready.persisted_messages));
        }
        self.queue_for_durability(durability, readies, staged_any);
        self.release_durable(durability.durable_ticket());
        self.frames()
    }

    fn step_inbox(&mut self) {
        for (group_id, message) in std::mem::take(&mut self.inbox) {
            let Some(group) = self.groups.get_mut(&group_id) else {
                self.stats.messages_for_unknown_groups += 1;
                continue;
            };
            if group.fenced {
                continue;
            }
            if self.refusing_leadership && message.get_msg_type() == MessageType::MsgTimeoutNow {
                // Shutting down: a leader (balancing, or shutting down too) is handing this
                // node a group. It does not campaign; the leader's transfer ends when it
                // gives up (`abort_transfer`, or raft-rs after an election timeout).
                self.stats.leadership_refused += 1;
                continue;
            }
            if group.rest.is_quiet() && !quiet::Rest::keeps_quiet(&group.node.raft, &message) {
                self.stats.count_rest(group.rest.wake());
            }
            // raft-rs trusts its peers: a message no correct peer sends (a heartbeat committing
            // past this node's log, an append conflicting with a committed entry) ends in its
            // `fatal!`, a panic. The group is fenced instead, like after a storage error, and
            // the shard's other groups carry on; the message came over the network, so it must
            // not take the broker down. Its state is never touched again.
            let node = &mut group.node;
            let heartbeat = (message.get_msg_type() == MessageType::MsgHeartbeat).then_some((
                message.from,
                message.term,
                message.commit,
            ));
            match panic::catch_unwind(AssertUnwindSafe(|| node.step(message))) {
                Ok(Ok(())) => group.rest.stepped_heartbeat(&group.node.raft, heartbeat),
                // Refusals (a local message type from the network, a response from a node that
                // is not a peer) are the peer's problem, not this group's.
                Ok(Err(_)) => self.stats.messages_refused_by_raft += 1,
                Err(_) => {
                    group.fenced = true;
                    self.stats.groups_fenced += 1;
                    continue;
                }
            }
            self.maybe_ready.insert(group_id);
            redraw_election_timeout(group, &mut self.election_rng, false);
        }
    }

    /// Ticks every awake group, and the quiet ones on every `QUIET_TICK_EVERY`th tick; each
    /// group ticked goes quiet or wakes as its calm says (`quiet`).
    fn tick_groups(&mut self) {
        let ticks = std::mem::take(&mut self.ticks_due);
        for _ in 0..ticks {
            self.ticks_taken += 1;
            let slow_tick = self.ticks_taken % quiet::QUIET_TICK_EVERY == 0;
            let mut all_resting = true;
            for (&group_id, group) in &mut self.groups {
                if group.fenced || (group.rest.is_quiet() && !slow_tick) {
                    continue;
                }
                group.node.tick();
                redraw_election_timeout(group, &mut self.election_rng, false);
                let raft = &group.node.raft;
                let calm = quiet::is_calm(raft, &group.rest, &self.live_peers);
                let role = raft.state;
                self.stats.count_rest(group.rest.after_tick(calm, role));
                all_resting &= group.rest.is_quiet();
                self.maybe_ready.insert(group_id);
            }
            self.resting_since_tick = all_resting.then_some(self.stats.groups_woken);
        }
    }

    /// The peer brokers the transport heard from lately, each with its incarnation (the
    /// shard is told at each change). Quiet groups whose leader's broker, or one of whose
    /// followers' brokers, stopped or started being live or restarted wake (`quiet`).
    ///
    /// A woken follower whose leader's broker fell silent or restarted counts its election
    /// timeout as one timeout (`ELECTION_TICKS`) spent already: the leader was not heard for
    /// the liveness timeout, which is that long, so it campaigns within the rest of its
    /// randomized timeout, and a quiet group fails over as fast as an awake one.
    pub fn set_live_peers(&mut self, live: LivePeers) {
        if live == self.live_peers {
            return;
        }
        let changed = quiet::liveness_changes(&self.live_peers, &live);
        self.live_peers = live;
        for (&group_id, group) in &mut self.groups {
            if !group.rest.is_quiet() || !quiet::woken_by_liveness(&group.node.raft, &changed) {
                continue;
            }
            self.stats.count_rest(group.rest.wake());
            self.maybe_ready.insert(group_id);
            let raft = &mut group.node.raft;
            if raft.state == StateRole::Follower {
                raft.election_elapsed = raft.election_elapsed.max(ELECTION_TICKS);
            }
        }
    }

    /// The groups ticking once in `QUIET_TICK_EVERY` now.
    pub fn quiet_groups(&self) -> usize {
        self.groups
            .values()
            .filter(|group| group.rest.is_quiet())
            .count()
    }

    /// How many ticks may pass before one matters to a group: `None` while a group is awake
    /// (it ticks every tick), else the ticks up to and including the next slow tick, when
    /// quiet groups tick (1..=`QUIET_TICK_EVERY`). A driver task may sleep that long when
    /// nothing else wakes it, then call [`Self::tick`] once per tick that passed: quiet groups
    /// tick at the same moments as if it had woken every tick.
    pub fn ticks_until_needed(&self) -> Option<u64> {
        if self.resting_since_tick != Some(self.stats.groups_woken) {
            return None;
        }
        let taken = self.ticks_taken + u64::from(self.ticks_due);
        Some(quiet::QUIET_TICK_EVERY - taken % quiet::QUIET_TICK_EVERY)
    }

    /// Slow ticks taken (ticks on which quiet groups tick, `QUIET_TICK_EVERY` apart).
    pub fn slow_ticks_taken(&self) -> u64 {
        self.ticks_taken / quiet::QUIET_TICK_EVERY
    }

    /// Whether `group_id` is hosted and quiet.
    pub fn is_quiet(&self, group_id: u64) -> bool {
        self.groups
            .get(&group_id)
            .is_some_and(|group| group.rest.is_quiet())
    }

    fn queue_for_durability<D: Durability>(
        &mut self,
        durability: &mut D,
        readies: Vec<(u64, u64, Vec<Message>)>,
        staged_any: bool,
    ) {
        if readies.is_empty() {
            return;
        }
        if staged_any {
            self.stats.syncs_started += 1;
            let ticket = durability.start_sync();
            self.pending.push_back(PendingSync { ticket, readies });
        } else if let Some(last) = self.pending.back_mut() {
            // Nothing new to write, but earlier readies of these groups may still be waiting:
            // readies are released in order, so these wait for the latest sync.
            last.readies.extend(readies);
        } else {
            self.pending.push_back(PendingSync { ticket: 0, readies });
        }
    }

    /// Tells raft which readies are durable and sends what waited for that.
    fn release_durable(&mut self, durable_ticket: u64) {
        while self
            .pending
            .front()
            .is_some_and(|sync| sync.ticket <= durable_ticket)
        {
            let sync = self.pending.pop_front().expect("checked");
            for (group_id, number, messages) in sync.readies {
                let group = self.groups.get_mut(&group_id).expect("pending group");
                if group.fenced {
                    continue;
                }
                group.node.on_persist_ready(number);
                self.maybe_ready.insert(group_id);
                for message in messages {
                    queue_message(&mut self.outbox, group_id, message);
                }
            }
        }
    }

    /// The round's frames: one per peer, split where the frame limit requires.
    fn frames(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        for (peer, messages) in std::mem::take(&mut self.outbox) {
            let mut frame = Frame::new(self.node_id, peer, self.incarnation);
            let mut frame_bytes = FRAME_BODY_BYTES_MIN;
            for (group_id, message) in messages {
                let size = group_message_encoded_size(&message);
                if FRAME_BODY_BYTES_MIN + size > self.limits.frame_bytes_max {
                    self.refuse_too_large(group_id, &message);
                    continue;
                }
                if frame_bytes + size > self.limits.frame_bytes_max {
                    let full = std::mem::replace(
                        &mut frame,
                        Frame::new(self.node_id, peer, self.incarnation),
                    );
                    frames.push(full);
                    frame_bytes = FRAME_BODY_BYTES_MIN;
                }
                frame_bytes += size;
                frame.push(group_id, message);
            }
            if !frame.is_empty() {
                frames.push(frame);
            }
        }
        self.stats.frames_sent += frames.len() as u64;
        frames
    }

    /// A message no frame can carry (a snapshot larger than the frame limit): raft hears that
    /// the peer is unreachable, or that the snapshot failed, and tries again later.
    fn refuse_too_large(&mut self, group_id: u64, message: &Message) {
        self.stats.messages_too_large += 1;
        let Some(group) = self.groups.get_mut(&group_id) else {
            return;
        };
        if message.msg_type == MessageType::MsgSnapshot as i32 {
            group
                .node
                .report_snapshot(message.to, SnapshotStatus::Failure);
        } else {
            group.node.report_unreachable(message.to);
        }
    }
}

/// Handles one group's Ready: sends the leader's messages, applies committed entries, stages
/// the writes. A storage error fences the group (the caller marks it).
fn handle_ready<S: GroupStore, A: FnMut(u64, &Entry)>(
    group_id: u64,
    group: &mut Group<S>,
    outbox: &mut BTreeMap<u64, Vec<(u64, Message)>>,
    apply: &mut A,
) -> raft::Result<HandledReady> {
    let mut ready = group.node.ready();
    // A leader's messages leave before its own write is durable (raft thesis 10.2.1).
    for message in ready.take_messages() {
        queue_message(outbox, group_id, message);
    }
    let committed = ready.take_committed_entries();
    for entry in &committed {
        if entry.entry_type() == EntryType::EntryConfChangeV2 {
            apply_conf_change(group, entry);
        }
        apply(group_id, entry);
    }
    let mut staged = false;
    let store = group.node.mut_store();
    if let Some(last) = committed.last() {
        store.advance_applied(last.index);
    }
    let mut snapshot = None;
    if !ready.snapshot().is_empty() {
        staged = true;
        store.stage_snapshot(ready.snapshot().clone())?;
        snapshot = Some(ready.snapshot().clone());
    }
    if !ready.entries().is_empty() {
        staged = true;
        store.stage_entries(ready.entries())?;
    }
    if let Some(hard_state) = ready.hs() {
        staged = true;
        store.stage_hard_state(hard_state)?;
    }
    let number = ready.number();
    let persisted_messages = ready.take_persisted_messages();
    group.node.advance_append_async(ready);
    group.node.advance_apply();
    Ok(HandledReady {
        number,
        staged,
        persisted_messages,
        snapshot,
    })
}

/// Applies a committed configuration change to the group where it applies
/// (`driver_membership::change_to_apply`) and stages the configuration it made. A change
/// raft-rs refuses (one not made here) changes nothing.
fn apply_conf_change<S: GroupStore>(group: &mut Group<S>, entry: &Entry) {
    let current = group.node.raft.prs().conf().to_conf_state();
    let Some(change) = membership::change_to_apply(entry, &current) else {
        return;
    };
    if let Ok(conf_state) = group.node.apply_conf_change(&change) {
        group.node.mut_store().stage_conf_state(conf_state);
    }
}

struct HandledReady {
    number: u64,
    staged: bool,
    persisted_messages: Vec<Message>,
    snapshot: Option<Snapshot>,
}

fn queue_message(outbox: &mut BTreeMap<u64, Vec<(u64, Message)>>, group_id: u64, message: Message) {
    outbox
        .entry(message.to)
        .or_default()
        .push((group_id, message));
}

/// Redraws the group's election timeout from the seeded source when raft-rs has just drawn
/// one from `thread_rng` (it does so in `reset`, which runs exactly on a term or role change),
/// or unconditionally at start. The draw spans the same range raft-rs uses.
fn redraw_election_timeout<S: GroupStore>(group: &mut Group<S>, rng: &mut SeededRng, force: bool) {
    let raft = &mut group.node.raft;
    let now = (raft.term, raft.state);
    if !force && now == group.timeout_drawn_for {
        return;
    }
    group.timeout_drawn_for = now;
    let timeout = rng.range(ELECTION_TICKS as u64, ELECTION_TICKS_MAX as u64 - 1);
    raft.set_randomized_election_timeout(timeout as usize);
}

#[path = "driver_membership.rs"]
pub mod membership;

#[path = "driver_quiet.rs"]
pub mod quiet;

pub use quiet::LivePeers;

impl DriverStats {
    fn count_rest(&mut self, change: quiet::Change) {
        match change {
            quiet::Change::None => {}
            quiet::Change::Quieted => self.groups_quieted += 1,
            quiet::Change::Woken => self.groups_woken += 1,
        }
    }
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "driver_membership_tests.rs"]
mod membership_tests;
