//! Guards Raft safety under the driver: N brokers (3 and 5), each a `MultiRaft` hosting G
//! groups, over a simulated network (seeded drops, delays, reorders, duplicates, minority and
//! majority partitions, heals) with crashes that cut power (a node keeps only what its disk
//! made durable, hard state included) and restarts. Every frame crosses the real wire codec.
//!
//! Checked as it happens, on every step:
//! - election safety: at most one leader per (group, term);
//! - log matching, by induction: every stored entry (group, index, term) has the same bytes and
//!   the same previous term on every node that writes it;
//! - committed entries never change: each (group, index) applied anywhere has one (term, bytes),
//!   and no node overwrites an entry at or below its own commit index;
//! - leader completeness: a new leader of term t holds every entry committed in a term < t;
//! - durable state: commit index and term never go backwards, one vote per term, the durable
//!   commit index never passes the durable log's end.
//!
//! Plus, after the chaos: full pairwise log matching, and liveness (after healing, every group
//! elects a leader and commits a new entry on every node within a bounded number of steps).
//!
//! A failing seed prints itself; replay it with
//! `RINGFEED_RAFT_SEED=<seed> cargo test -p ringfeed-replication --test raft_simulation`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use raft::eraftpb::{ConfState, Entry, HardState, MessageType, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, StateRole, Storage};
use ringfeed_replication::driver::quiet::QUIET_TICK_EVERY;
use ringfeed_replication::driver::{Durability, GroupStore, MultiRaft, ELECTION_TICKS_MAX};
use ringfeed_replication::wire::{Frame, HeartbeatKind, WireLimits};
use ringfeed_storage::sim::SeededRng;

/// Steps between two ticks of a node (a step is a tenth of a tick: 10 ms of a 100 ms tick).
const TICK_STEPS: u64 = 10;
/// Steps the simulation may take, after healing, for every group to commit a new entry on
/// every node: 100 ticks, five times the longest election timeout.
const LIVENESS_STEPS_MAX: u64 = 100 * TICK_STEPS;
/// A node's transport sends a keepalive to each peer this often (200 ms: 2 ticks).
const KEEPALIVE_STEPS: u64 = 2 * TICK_STEPS;
/// A peer heard from within this is live to a node (1 s: 10 ticks), as the transport says.
const PEER_LIVENESS_STEPS: u64 = 10 * TICK_STEPS;
/// Steps an idle, healed cluster may take for every group to go quiet on every node: a
/// heartbeat round trip for the commit to be known, a leader's calm ticks, and slack.
const QUIET_STEPS_MAX: u64 = 30 * TICK_STEPS;
/// Ticks over which a quiet cluster's frames are counted.
const QUIET_WINDOW_TICKS: u64 = 100;

#[derive(Debug, Clone, Copy)]
struct SimConfig {
    nodes: u64,
    groups: u64,
    chaos_steps: u64,
}

// ---------------------------------------------------------------------------------------------
// Invariant checker, shared by every node's stores and the simulation loop.

#[derive(Default)]
struct Checker {
    /// (group, index, term) -> (bytes, term of the previous index) as first written anywhere.
    written: BTreeMap<(u64, u64, u64), (Vec<u8>, u64)>,
    /// (group, index) -> (term, bytes) of the committed entry, from every node's applies.
    committed: BTreeMap<(u64, u64), (u64, Vec<u8>)>,
    /// (group, index) -> the lowest term in which a leader counted it committed.
    commit_terms: BTreeMap<(u64, u64), u64>,
    /// (group, term) -> leader.
    leaders: BTreeMap<(u64, u64), u64>,
    /// (node, group) -> the last index the node applied (reset by a restart).
    applied: BTreeMap<(u64, u64), u64>,
    /// (node, group, term) -> commit index a leader was last seen with.
    leader_commit_seen: BTreeMap<(u64, u64, u64), u64>,
    /// (node, group) that applied the post-heal marker.
    markers_applied: BTreeSet<(u64, u64)>,
}

/// The transport's liveness, modelled: (node, peer) -> the step and incarnation the node last
/// heard the peer in, from a delivered frame or a keepalive (which the cuts and drops of the
/// network stop like any frame). A restarted node has heard from no one yet.
#[derive(Default)]
struct Liveness {
    heard: BTreeMap<(u64, u64), (u64, u64)>,
}

impl Liveness {
    fn heard(&mut self, node: u64, peer: u64, now: u64, incarnation: u64) {
        let last = self.heard.entry((node, peer)).or_insert((now, incarnation));
        // A frame of an older incarnation still in flight does not undo a newer one.
        if incarnation >= last.1 {
            *last = (now, incarnation);
        }
    }

    fn forget(&mut self, node: u64) {
        self.heard.retain(|(observer, _), _| *observer != node);
    }

    fn live_peers(&self, node: u64, now: u64) -> ringfeed_replication::driver::LivePeers {
        self.heard
            .range((node, 0)..=(node, u64::MAX))
            .filter(|(_, (at, _))| now - at < PEER_LIVENESS_STEPS)
            .map(|((_, peer), (_, incarnation))| (*peer, *incarnation))
            .collect()
    }
}

fn entry_bytes(entry: &Entry) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(entry.data.len() + entry.context.len() + 1);
    bytes.push(entry.entry_type as u8);
    bytes.extend_from_slice(&entry.data);
    bytes.extend_from_slice(&entry.context);
    bytes
}

impl Checker {
    /// A node is about to store `entries` in its log of `group`, which holds `log` now.
    fn on_write(&mut self, node: u64, group: u64, entries: &[Entry], log: &MemStorage) {
        let Some(first) = entries.first() else {
            return;
        };
        let core = log.rl();
        let commit = core.hard_state().commit;
        let mut previous_term = if first.index <= 1 {
            0
        } else {
            log.term(first.index - 1).unwrap_or_else(|error| {
                panic!(
                    "node {node} group {group}: append at {} leaves a gap: {error}",
                    first.index
                )
            })
        };
        drop(core);
        for entry in entries {
            let bytes = entry_bytes(entry);
            let key = (group, entry.index, entry.term);
            match self.written.get(&key) {
                Some((known, known_previous)) => {
                    assert!(
                        *known == bytes && *known_previous == previous_term,
                        "log matching: node {node} group {group} writes index {} term {} \
                         differently from another node",
                        entry.index,
                        entry.term
                    );
                }
                None => {
                    self.written.insert(key, (bytes.clone(), previous_term));
                }
            }
            if entry.index <= commit {
                let existing = log.term(entry.index).ok();
                assert_eq!(
                    existing,
                    Some(entry.term),
                    "node {node} group {group} overwrites index {} at or below its commit {commit}",
                    entry.index
                );
            }
            if let Some((term, known)) = self.committed.get(&(group, entry.index)) {
                if entry.index <= commit {
                    assert!(
                        *term == entry.term && *known == bytes,
                        "committed entry rewritten"
                    );
                }
            }
            previous_term = entry.term;
        }
    }

    fn on_apply(&mut self, node: u64, group: u64, entry: &Entry, marker: &[u8]) {
        let applied = self.applied.entry((node, group)).or_insert(0);
        assert_eq!(
            entry.index,
            *applied + 1,
            "node {node} group {group} applies out of order"
        );
        *applied = entry.index;
        let bytes = entry_bytes(entry);
        match self.committed.get(&(group, entry.index)) {
            Some((term, known)) => assert!(
                *term == entry.term && *known == bytes,
                "committed entry changed: node {node} group {group} index {} has term {} \
                 where term {term} was committed",
                entry.index,
                entry.term
            ),
            None => {
                self.committed
                    .insert((group, entry.index), (entry.term, bytes));
            }
        }
        if !marker.is_empty() && entry.data == marker {
            self.markers_applied.insert((node, group));
        }
    }

    /// Called after every round of `node`, for each group it hosts.
    fn observe(&mut self, node: u64, group: u64, raft: &raft::Raft<SimStore>) {
        if raft.state != StateRole::Leader {
            return;
        }
        let term = raft.term;
        if let Some(&leader) = self.leaders.get(&(group, term)) {
            assert_eq!(
                leader, node,
                "election safety: group {group} has leaders {leader} and {node} in term {term}"
            );
        } else {
            self.leaders.insert((group, term), node);
            self.check_leader_completeness(node, group, raft);
        }
        let seen = self
            .leader_commit_seen
            .entry((node, group, term))
            .or_insert(0);
        let committed = raft.raft_log.committed;
        for index in (*seen + 1)..=committed {
            let entry_term = raft
                .raft_log
                .term(index)
                .expect("leader holds its committed log");
            let commit_term = self.commit_terms.entry((group, index)).or_insert(term);
            *commit_term = (*commit_term).min(term);
            if let Some((known, _)) = self.committed.get(&(group, index)) {
                assert_eq!(
                    *known, entry_term,
                    "leader {node} commits another entry at {index}"
                );
            }
        }
        *seen = (*seen).max(committed);
    }

    /// Only a leader sends appends, heartbeats and snapshots: a node that led a term only
    /// between two observations (elected and deposed within one round) still shows here.
    fn on_send(&mut self, frame: &Frame) {
        let leader_messages = frame
            .heartbeats
            .iter()
            .filter(|heartbeat| heartbeat.kind == HeartbeatKind::Request)
            .map(|heartbeat| (heartbeat.group_id, heartbeat.term))
            .chain(
                frame
                    .messages
                    .iter()
                    .filter(|sent| {
                        matches!(
                            MessageType::from_i32(sent.message.msg_type),
                            Some(
                                MessageType::MsgAppend
                                    | MessageType::MsgHeartbeat
                                    | MessageType::MsgSnapshot
                            )
                        )
                    })
                    .map(|sent| (sent.group_id, sent.message.term)),
            );
        for (group, term) in leader_messages {
            let leader = *self.leaders.entry((group, term)).or_insert(frame.from_node);
            assert_eq!(
                leader, frame.from_node,
                "election safety: group {group} has leaders {leader} and {} in term {term}",
                frame.from_node
            );
        }
    }

    fn check_leader_completeness(&self, node: u64, group: u64, raft: &raft::Raft<SimStore>) {
        let range = (group, 0)..=(group, u64::MAX);
        for (&(_, index), &commit_term) in self.commit_terms.range(range) {
            if commit_term >= raft.term {
                continue;
            }
            let expected = self.committed.get(&(group, index)).map(|(term, _)| *term);
            let held = raft.raft_log.term(index).ok();
            if let Some(expected) = expected {
                assert_eq!(
                    held,
                    Some(expected),
                    "leader completeness: node {node} leads group {group} in term {} without \
                     index {index} committed in term {commit_term}",
                    raft.term
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A node's disk: staged writes become durable in order, a sync at a time; a power cut keeps
// exactly what the completed syncs covered.

enum Write {
    Entries(Vec<Entry>),
    HardState(HardState),
}

#[derive(Clone, Default)]
struct DurableGroup {
    entries: Vec<Entry>,
    hard_state: HardState,
}

impl DurableGroup {
    fn apply(&mut self, node: u64, group: u64, write: Write) {
        match write {
            Write::Entries(entries) => {
                let first = entries.first().expect("empty writes are not staged").index;
                assert!(
                    first as usize <= self.entries.len() + 1,
                    "durable log of node {node} group {group} would have a gap"
                );
                self.entries.truncate(first as usize - 1);
                self.entries.extend(entries);
            }
            Write::HardState(hard_state) => {
                let old = &self.hard_state;
                assert!(
                    hard_state.commit >= old.commit,
                    "node {node} group {group}: durable commit goes back {} -> {}",
                    old.commit,
                    hard_state.commit
                );
                assert!(hard_state.term >= old.term, "durable term goes back");
                if hard_state.term == old.term && old.vote != 0 {
                    assert_eq!(hard_state.vote, old.vote, "two votes in one term");
                }
                self.hard_state = hard_state;
            }
        }
        assert!(
            self.hard_state.commit <= self.entries.len() as u64,
            "node {node} group {group}: durable commit {} past the durable log's end {}",
            self.hard_state.commit,
            self.entries.len()
        );
    }
}

struct SimDisk {
    node: u64,
    rng: SeededRng,
    now: u64,
    sync_steps_max: u64,
    groups: BTreeMap<u64, DurableGroup>,
    staged: VecDeque<(u64, Write)>,
    staged_total: u64,
    durable_total: u64,
    /// (ticket, `staged_total` at its start, the step it completes at)
    syncs: VecDeque<(u64, u64, u64)>,
    next_ticket: u64,
    durable_ticket: u64,
}

impl SimDisk {
    fn complete_syncs(&mut self) {
        while let Some(&(ticket, upto, at)) = self.syncs.front() {
            if at > self.now {
                break;
            }
            self.syncs.pop_front();
            while self.durable_total < upto {
                let (group, write) = self.staged.pop_front().expect("staged write");
                self.durable_total += 1;
                let node = self.node;
                self.groups
                    .get_mut(&group)
                    .expect("group on disk")
                    .apply(node, group, write);
            }
            self.durable_ticket = ticket;
        }
    }

    /// The power goes: staged writes and syncs in flight are lost.
    fn power_cut(&mut self) {
        self.staged.clear();
        self.syncs.clear();
        self.staged_total = self.durable_total;
    }
}

#[derive(Clone)]
struct SimDurability(Rc<RefCell<SimDisk>>);

impl Durability for SimDurability {
    fn start_sync(&mut self) -> u64 {
        let mut disk = self.0.borrow_mut();
        disk.next_ticket += 1;
        let sync_steps_max = disk.sync_steps_max;
        let delay = disk.rng.below(sync_steps_max + 1);
        let (ticket, upto, at) = (disk.next_ticket, disk.staged_total, disk.now + delay);
        disk.syncs.push_back((ticket, upto, at));
        ticket
    }

    fn durable_ticket(&mut self) -> u64 {
        let mut disk = self.0.borrow_mut();
        disk.complete_syncs();
        disk.durable_ticket
    }
}

/// One group's store on one node: raft reads a `MemStorage` holding everything staged; the
/// disk learns each write so a power cut can roll back to the durable prefix.
struct SimStore {
    node: u64,
    group: u64,
    log: MemStorage,
    disk: Rc<RefCell<SimDisk>>,
    checker: Rc<RefCell<Checker>>,
}

impl SimStore {
    fn stage(&self, write: Write) {
        let mut disk = self.disk.borrow_mut();
        disk.staged.push_back((self.group, write));
        disk.staged_total += 1;
    }
}

impl Storage for SimStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.log.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.log.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.log.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.log.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.log.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.log.snapshot(request_index, to)
    }
}

impl GroupStore for SimStore {
    fn stage_snapshot(&mut self, _snapshot: Snapshot) -> raft::Result<()> {
        // Logs are never compacted here, so no leader has a reason to send one.
        panic!(
            "node {} group {}: unexpected snapshot",
            self.node, self.group
        );
    }

    fn stage_entries(&mut self, entries: &[Entry]) -> raft::Result<()> {
        self.checker
            .borrow_mut()
            .on_write(self.node, self.group, entries, &self.log);
        self.log.wl().append(entries)?;
        self.stage(Write::Entries(entries.to_vec()));
        Ok(())
    }

    fn stage_hard_state(&mut self, hard_state: &HardState) -> raft::Result<()> {
        self.log.wl().set_hardstate(hard_state.clone());
        self.stage(Write::HardState(hard_state.clone()));
        Ok(())
    }

    fn stage_conf_state(&mut self, conf_state: ConfState) {
        // The simulated groups never change membership (the driver's membership tests
        // cover that on the memory store); kept in memory for completeness.
        self.log.wl().set_conf_state(conf_state);
    }
}

// ---------------------------------------------------------------------------------------------
// The simulation.

struct Node {
    id: u64,
    disk: Rc<RefCell<SimDisk>>,
    driver: Option<MultiRaft<SimStore>>,
    incarnation: u64,
    down_until: u64,
    tick_phase: u64,
}

struct InFlight {
    deliver_at: u64,
    to: u64,
    bytes: Vec<u8>,
}

struct Sim {
    seed: u64,
    config: SimConfig,
    rng: SeededRng,
    now: u64,
    nodes: Vec<Node>,
    network: Vec<InFlight>,
    /// Directed links that drop everything.
    cut: BTreeSet<(u64, u64)>,
    heal_at: u64,
    drop_per_mille: u64,
    duplicate_per_mille: u64,
    delay_steps_max: u64,
    checker: Rc<RefCell<Checker>>,
    marker: Vec<u8>,
    proposals: u64,
    liveness: Liveness,
    /// No node is told of live peers, so no group with peers goes quiet (for comparisons).
    liveness_withheld: bool,
    /// Frames, and group messages in them, sent by every node since the start.
    frames_sent: u64,
    messages_sent: u64,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct SimReport {
    proposals: u64,
    committed: usize,
    elections: usize,
    crashes: u64,
    partitions: u64,
    liveness_steps: u64,
    /// Steps from the marker's last apply until every group was quiet on every node.
    quiet_steps: u64,
    /// Frames every node sent in `QUIET_WINDOW_TICKS` once all groups were quiet.
    quiet_frames: u64,
}

impl Sim {
    fn new(seed: u64, config: SimConfig) -> Self {
        let mut rng = SeededRng::new(seed);
        let checker = Rc::new(RefCell::new(Checker::default()));
        let voters: Vec<u64> = (1..=config.nodes).collect();
        let mut nodes = Vec::new();
        for id in 1..=config.nodes {
            let groups = (0..config.groups)
                .map(|group| (group, DurableGroup::default()))
                .collect();
            let disk = Rc::new(RefCell::new(SimDisk {
                node: id,
                rng: SeededRng::new(rng.next_u64()),
                now: 0,
                sync_steps_max: rng.below(4),
                groups,
                staged: VecDeque::new(),
                staged_total: 0,
                durable_total: 0,
                syncs: VecDeque::new(),
                next_ticket: 0,
                durable_ticket: 0,
            }));
            nodes.push(Node {
                id,
                disk,
                driver: None,
                incarnation: 0,
                down_until: 0,
                tick_phase: rng.below(TICK_STEPS),
            });
        }
        let mut sim = Self {
            seed,
            config,
            drop_per_mille: rng.below(150),
            duplicate_per_mille: rng.below(50),
            delay_steps_max: 1 + rng.below(8),
            rng,
            now: 0,
            nodes,
            network: Vec::new(),
            cut: BTreeSet::new(),
            heal_at: 0,
            checker,
            marker: Vec::new(),
            proposals: 0,
            liveness: Liveness::default(),
            liveness_withheld: false,
            frames_sent: 0,
            messages_sent: 0,
        };
        for index in 0..sim.nodes.len() {
            sim.start_node(index, &voters);
        }
        sim
    }

    /// Starts (or restarts) a node from what its disk holds durably.
    fn start_node(&mut self, index: usize, voters: &[u64]) {
        let election_seed = self.rng.next_u64();
        let node = &mut self.nodes[index];
        node.incarnation += 1;
        let mut driver = MultiRaft::new(
            node.id,
            node.incarnation,
            WireLimits::default(),
            election_seed,
        );
        let durable = node.disk.borrow().groups.clone();
        for (group, state) in durable {
            let log = MemStorage::new_with_conf_state(ConfState::from((voters.to_vec(), vec![])));
            log.wl().append(&state.entries).expect("durable log");
            log.wl().set_hardstate(state.hard_state.clone());
            let store = SimStore {
                node: node.id,
                group,
                log,
                disk: node.disk.clone(),
                checker: self.checker.clone(),
            };
            self.checker
                .borrow_mut()
                .applied
                .insert((node.id, group), 0);
            driver.add_group(group, store, 0).expect("group starts");
        }
        node.driver = Some(driver);
        let id = node.id;
        self.liveness.forget(id);
    }

    fn voters(&self) -> Vec<u64> {
        (1..=self.config.nodes).collect()
    }

    fn step(&mut self) {
        self.now += 1;
        self.deliver();
        self.send_keepalives();
        for index in 0..self.nodes.len() {
            self.run_node(index);
        }
    }

    fn deliver(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|frame| frame.deliver_at <= now);
        self.network = later;
        for frame in due {
            let node = &mut self.nodes[(frame.to - 1) as usize];
            let Some(driver) = node.driver.as_mut() else {
                continue;
            };
            let decoded =
                Frame::decode(&frame.bytes, &WireLimits::default()).expect("our own frame");
            self.liveness
                .heard(frame.to, decoded.from_node, now, decoded.incarnation);
            driver.receive(decoded);
        }
    }

    /// Each running node's keepalive to each peer, every `KEEPALIVE_STEPS` (in its own
    /// phase), through the same cuts and drops as frames; delivered at once.
    fn send_keepalives(&mut self) {
        let now = self.now;
        for from in 0..self.nodes.len() {
            let sender = &self.nodes[from];
            if sender.driver.is_none() || (now + sender.tick_phase) % KEEPALIVE_STEPS != 0 {
                continue;
            }
            let (from_id, incarnation) = (sender.id, sender.incarnation);
            for to in 0..self.nodes.len() {
                let to_id = self.nodes[to].id;
                if to_id == from_id
                    || self.nodes[to].driver.is_none()
                    || self.cut.contains(&(from_id, to_id))
                    || self.rng.below(1000) < self.drop_per_mille
                {
                    continue;
                }
                self.liveness.heard(to_id, from_id, now, incarnation);
            }
        }
    }

    fn run_node(&mut self, index: usize) {
        let now = self.now;
        let marker = self.marker.clone();
        let node = &mut self.nodes[index];
        let Some(driver) = node.driver.as_mut() else {
            return;
        };
        node.disk.borrow_mut().now = now;
        if !self.liveness_withheld {
            driver.set_live_peers(self.liveness.live_peers(node.id, now));
        }
        if (now + node.tick_phase) % TICK_STEPS == 0 {
            driver.tick();
        }
        let mut durability = SimDurability(node.disk.clone());
        let node_id = node.id;
        let checker = self.checker.clone();
        let frames = driver.round(&mut durability, |group, entry| {
            checker
                .borrow_mut()
                .on_apply(node_id, group, entry, &marker);
        });
        // A fenced group means raft-rs panicked on a message (a peer broke an invariant, such
        // as a heartbeat committing past an entry this node acknowledged and then lost).
        assert_eq!(
            driver.stats().groups_fenced,
            0,
            "node {node_id} fenced a group: raft-rs panicked on a peer's message"
        );
        {
            let mut checker = checker.borrow_mut();
            for (group, raft) in driver.rafts() {
                checker.observe(node_id, group, raft);
            }
        }
        self.frames_sent += frames.len() as u64;
        self.messages_sent += frames
            .iter()
            .map(|frame| (frame.heartbeats.len() + frame.messages.len()) as u64)
            .sum::<u64>();
        for frame in frames {
            self.send(&frame);
        }
    }

    fn send(&mut self, frame: &Frame) {
        self.checker.borrow_mut().on_send(frame);
        let mut bytes = BytesMut::new();
        frame.encode(&mut bytes);
        if self.cut.contains(&(frame.from_node, frame.to_node))
            || self.rng.below(1000) < self.drop_per_mille
        {
            return;
        }
        let copies = if self.rng.below(1000) < self.duplicate_per_mille {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = 1 + self.rng.below(self.delay_steps_max);
            self.network.push(InFlight {
                deliver_at: self.now + delay,
                to: frame.to_node,
                bytes: bytes.to_vec(),
            });
        }
    }

    fn crash(&mut self, index: usize, report: &mut SimReport) {
        let node = &mut self.nodes[index];
        node.driver = None;
        node.disk.borrow_mut().power_cut();
        node.down_until = self.now + TICK_STEPS * (2 + self.rng.below(40));
        report.crashes += 1;
    }

    fn partition(&mut self, report: &mut SimReport) {
        // A random side: sometimes a minority, sometimes a majority, sometimes one node.
        let side: BTreeSet<u64> = (1..=self.config.nodes)
            .filter(|_| self.rng.below(2) == 0)
            .collect();
        self.cut.clear();
        for a in 1..=self.config.nodes {
            for b in 1..=self.config.nodes {
                if side.contains(&a) != side.contains(&b) {
                    self.cut.insert((a, b));
                }
            }
        }
        self.heal_at = self.now + TICK_STEPS * (5 + self.rng.below(60));
        report.partitions += 1;
    }

    fn random_faults(&mut self, report: &mut SimReport) {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&index| self.nodes[index].driver.is_some())
            .collect();
        if up.len() > 1 && self.rng.below(1000) < 3 {
            let victim = up[self.rng.below(up.len() as u64) as usize];
            self.crash(victim, report);
        }
        let voters = self.voters();
        for index in 0..self.nodes.len() {
            if self.nodes[index].driver.is_none() && self.nodes[index].down_until <= self.now {
                self.start_node(index, &voters);
            }
        }
        if self.cut.is_empty() && self.rng.below(1000) < 4 {
            self.partition(report);
        } else if !self.cut.is_empty() && self.now >= self.heal_at {
            self.cut.clear();
        }
    }

    fn random_proposal(&mut self) {
        if self.rng.below(100) >= 30 {
            return;
        }
        let group = self.rng.below(self.config.groups);
        let index = self.rng.below(self.config.nodes) as usize;
        let Some(driver) = self.nodes[index].driver.as_mut() else {
            return;
        };
        let length = 1 + self.rng.below(64);
        let data: Vec<u8> = (0..length).map(|_| self.rng.next_u64() as u8).collect();
        if driver.propose(group, data.into()).is_ok() {
            self.proposals += 1;
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
        self.drop_per_mille = 0;
        self.duplicate_per_mille = 0;
        let voters = self.voters();
        for index in 0..self.nodes.len() {
            if self.nodes[index].driver.is_none() {
                self.start_node(index, &voters);
            }
        }
    }

    /// Proposes the marker in every group at whichever node leads it, until every node of
    /// every group applied it; returns the steps that took.
    fn await_liveness(&mut self) -> u64 {
        self.marker = format!("healed-{}", self.seed).into_bytes();
        let all = self.config.nodes * self.config.groups;
        let mut proposed_in: BTreeMap<u64, u64> = BTreeMap::new();
        for steps in 1..=LIVENESS_STEPS_MAX {
            self.step();
            if self.checker.borrow().markers_applied.len() as u64 == all {
                return steps;
            }
            for group in 0..self.config.groups {
                for node in &mut self.nodes {
                    let driver = node.driver.as_mut().expect("healed");
                    let raft = driver.raft(group).expect("hosted");
                    if raft.state == StateRole::Leader
                        && proposed_in.get(&group) != Some(&raft.term)
                    {
                        let term = raft.term;
                        if driver.propose(group, self.marker.clone().into()).is_ok() {
                            proposed_in.insert(group, term);
                        }
                    }
                }
            }
        }
        let missing: Vec<_> = (1..=self.config.nodes)
            .flat_map(|node| (0..self.config.groups).map(move |group| (node, group)))
            .filter(|key| !self.checker.borrow().markers_applied.contains(key))
            .take(10)
            .collect();
        panic!("liveness: after healing, (node, group) {missing:?} still lack a new commit");
    }

    /// Steps an idle cluster until every group is quiet on every node; returns the steps.
    fn await_quiet(&mut self) -> u64 {
        let all = self.config.groups as usize;
        for steps in 1..=QUIET_STEPS_MAX {
            self.step();
            let quiet = self
                .nodes
                .iter()
                .all(|node| node.driver.as_ref().expect("healed").quiet_groups() == all);
            if quiet {
                return steps;
            }
        }
        let loud: Vec<(u64, u64, StateRole)> = self
            .nodes
            .iter()
            .flat_map(|node| {
                let driver = node.driver.as_ref().expect("healed");
                (0..self.config.groups)
                    .filter(|&group| !driver.is_quiet(group))
                    .map(move |group| (node.id, group, driver.raft(group).expect("hosted").state))
            })
            .take(10)
            .collect();
        panic!("quiet: an idle cluster still has (node, group, role) {loud:?} awake");
    }

    /// Frames sent over `QUIET_WINDOW_TICKS` by a cluster whose groups are all quiet: a node
    /// ticks its quiet groups on every `QUIET_TICK_EVERY`th tick, so it sends at most a round of
    /// heartbeats and a round of responses to each peer per slow tick, whatever the number
    /// of groups. Every group must stay quiet meanwhile.
    fn count_quiet_frames(&mut self) -> u64 {
        let before = self.frames_sent;
        let woken_before = self.woken();
        for _ in 0..QUIET_WINDOW_TICKS * TICK_STEPS {
            self.step();
        }
        assert_eq!(self.woken(), woken_before, "an idle quiet group woke");
        let frames = self.frames_sent - before;
        let slow_ticks = QUIET_WINDOW_TICKS / QUIET_TICK_EVERY + 1;
        let bound = self.config.nodes * (self.config.nodes - 1) * 2 * slow_ticks;
        assert!(
            frames <= bound,
            "a quiet cluster of {} groups sent {frames} frames in {QUIET_WINDOW_TICKS} ticks \
             (at most {bound} expected)",
            self.config.groups
        );
        frames
    }

    fn woken(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|node| node.driver.as_ref())
            .map(|driver| driver.stats().groups_woken)
            .sum()
    }

    /// Full log matching on every pair of nodes: where two logs hold the same (index, term),
    /// they are identical up to there.
    fn check_logs_match(&self) {
        for group in 0..self.config.groups {
            let logs: Vec<Vec<(u64, Vec<u8>)>> = self
                .nodes
                .iter()
                .filter_map(|node| node.driver.as_ref())
                .map(|driver| {
                    let raft = driver.raft(group).expect("hosted");
                    let last = raft.raft_log.last_index();
                    let entries = if last == 0 {
                        Vec::new()
                    } else {
                        raft.raft_log
                            .entries(1, None, GetEntriesContext::empty(false))
                            .expect("whole log")
                    };
                    entries
                        .iter()
                        .map(|entry| (entry.term, entry_bytes(entry)))
                        .collect()
                })
                .collect();
            for (a, log_a) in logs.iter().enumerate() {
                for log_b in &logs[a + 1..] {
                    let common = log_a.len().min(log_b.len());
                    if let Some(last_match) = (0..common).rev().find(|&i| log_a[i].0 == log_b[i].0)
                    {
                        assert_eq!(
                            log_a[..=last_match],
                            log_b[..=last_match],
                            "log matching: group {group} differs below index {}",
                            last_match + 1
                        );
                    }
                }
            }
        }
    }

    fn run(mut self) -> SimReport {
        let mut report = SimReport::default();
        for _ in 0..self.config.chaos_steps {
            self.random_faults(&mut report);
            self.random_proposal();
            self.step();
            if self.now % 500 == 0 {
                self.check_logs_match();
            }
        }
        self.heal();
        report.liveness_steps = self.await_liveness();
        self.check_logs_match();
        report.quiet_steps = self.await_quiet();
        report.quiet_frames = self.count_quiet_frames();
        let checker = self.checker.borrow();
        report.proposals = self.proposals;
        report.committed = checker.committed.len();
        report.elections = checker.leaders.len();
        report
    }
}

fn run_seed(seed: u64, config: SimConfig) -> SimReport {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| Sim::new(seed, config).run()));
    match outcome {
        Ok(report) => report,
        Err(cause) => {
            eprintln!(
                "raft simulation failed at seed {seed} ({config:?}); replay with \
                 RINGFEED_RAFT_SEED={seed} cargo test -p ringfeed-replication --test raft_simulation"
            );
            panic::resume_unwind(cause)
        }
    }
}

/// The seeds to run: the one `RINGFEED_RAFT_SEED` names, or `default`.
fn seeds(default: std::ops::Range<u64>) -> Vec<u64> {
    match std::env::var("RINGFEED_RAFT_SEED") {
        Ok(seed) => vec![seed.parse().expect("RINGFEED_RAFT_SEED is a u64")],
        Err(_) => default.collect(),
    }
}

fn run_seeds(name: &str, seeds: &[u64], config: SimConfig) {
    let started = Instant::now();
    let mut total = SimReport::default();
    for &seed in seeds {
        let report = run_seed(seed, config);
        total.proposals += report.proposals;
        total.committed += report.committed;
        total.elections += report.elections;
        total.crashes += report.crashes;
        total.partitions += report.partitions;
        total.liveness_steps = total.liveness_steps.max(report.liveness_steps);
        total.quiet_steps = total.quiet_steps.max(report.quiet_steps);
        total.quiet_frames = total.quiet_frames.max(report.quiet_frames);
    }
    println!(
        "{name}: {} seeds in {:.1?}: {} proposals accepted, {} (group, index) committed, \
         {} elections won, {} power cuts, {} partitions; after healing every group committed \
         on every node within {} steps ({} ticks) at worst; idle, every group was quiet \
         within {} ticks, and a quiet cluster sent at most {} frames in {QUIET_WINDOW_TICKS} ticks",
        seeds.len(),
        started.elapsed(),
        total.proposals,
        total.committed,
        total.elections,
        total.crashes,
        total.partitions,
        total.liveness_steps,
        total.liveness_steps / TICK_STEPS,
        total.quiet_steps / TICK_STEPS,
        total.quiet_frames,
    );
    assert!(total.committed > 0 && total.elections > 0);
}

const THREE_NODES: SimConfig = SimConfig {
    nodes: 3,
    groups: 50,
    chaos_steps: 3_000,
};

const FIVE_NODES: SimConfig = SimConfig {
    nodes: 5,
    groups: 50,
    chaos_steps: 3_000,
};

/// Few groups, so many seeds fit in a debug `cargo test`: more fault schedules, each shorter.
const SMALL: SimConfig = SimConfig {
    nodes: 3,
    groups: 3,
    chaos_steps: 2_000,
};

#[test]
fn three_nodes_fifty_groups_stay_safe_and_live_under_faults() {
    run_seeds("3 nodes x 50 groups", &seeds(0..6), THREE_NODES);
}

#[test]
fn five_nodes_fifty_groups_stay_safe_and_live_under_faults() {
    run_seeds("5 nodes x 50 groups", &seeds(1_000..1_003), FIVE_NODES);
}

#[test]
fn many_small_clusters_stay_safe_and_live_under_faults() {
    run_seeds("3 nodes x 3 groups", &seeds(10_000..10_150), SMALL);
    let five = SimConfig { nodes: 5, ..SMALL };
    run_seeds("5 nodes x 3 groups", &seeds(20_000..20_075), five);
}

/// A cluster with no faults, settled: every group has a leader that committed in its term,
/// and (unless liveness is withheld) every group is quiet on every node.
fn settled_cluster(seed: u64, liveness_withheld: bool) -> Sim {
    let mut sim = Sim::new(
        seed,
        SimConfig {
            nodes: 3,
            groups: 50,
            chaos_steps: 0,
        },
    );
    sim.drop_per_mille = 0;
    sim.duplicate_per_mille = 0;
    sim.liveness_withheld = liveness_withheld;
    sim.await_liveness();
    if !liveness_withheld {
        sim.await_quiet();
    }
    sim
}

/// Steps until every group has a leader among the running nodes in a term above
/// `terms_before`; returns the steps.
fn await_new_leaders(sim: &mut Sim, terms_before: &BTreeMap<u64, u64>) -> u64 {
    for steps in 1..=LIVENESS_STEPS_MAX {
        sim.step();
        let led: BTreeSet<u64> = sim
            .nodes
            .iter()
            .filter_map(|node| node.driver.as_ref())
            .flat_map(|driver| {
                driver
                    .rafts()
                    .filter(|(group, raft)| {
                        raft.state == StateRole::Leader
                            && terms_before
                                .get(group)
                                .is_some_and(|term| raft.term > *term)
                    })
                    .map(|(group, _)| group)
                    .collect::<Vec<_>>()
            })
            .collect();
        if terms_before.keys().all(|group| led.contains(group)) {
            return steps;
        }
    }
    panic!("the killed leader's groups elected no new leader");
}

/// The node leading the most groups, and every group's term on it.
fn busiest_leader(sim: &Sim) -> (usize, BTreeMap<u64, u64>) {
    let index = (0..sim.nodes.len())
        .max_by_key(|&index| {
            let driver = sim.nodes[index].driver.as_ref().expect("running");
            driver
                .rafts()
                .filter(|(_, raft)| raft.state == StateRole::Leader)
                .count()
        })
        .expect("nodes");
    let driver = sim.nodes[index].driver.as_ref().expect("running");
    let led = driver
        .rafts()
        .filter(|(_, raft)| raft.state == StateRole::Leader)
        .map(|(group, raft)| (group, raft.term))
        .collect();
    (index, led)
}

/// Quiet groups send a tenth of the messages of awake ones, and a quiet group whose leader
/// is killed still elects a successor within the liveness timeout plus an election: its
/// followers wake when the leader's broker stops being live, not when their slow election
/// timeout (10-20 s) runs out. The invariants are checked throughout.
#[test]
fn quiet_groups_cost_a_tenth_and_a_killed_leader_is_replaced_within_liveness_and_an_election() {
    for seed in seeds(500..503) {
        let mut awake = settled_cluster(seed, true);
        let mut quiet = settled_cluster(seed, false);
        let window = QUIET_WINDOW_TICKS * TICK_STEPS;
        let (awake_before, quiet_before) = (awake.messages_sent, quiet.messages_sent);
        for _ in 0..window {
            awake.step();
            quiet.step();
        }
        let awake_messages = awake.messages_sent - awake_before;
        let quiet_messages = quiet.messages_sent - quiet_before;
        println!(
            "seed {seed}: 50 idle groups on 3 nodes sent {awake_messages} messages awake and \
             {quiet_messages} quiet in {QUIET_WINDOW_TICKS} ticks"
        );
        assert!(
            quiet_messages * (QUIET_TICK_EVERY - 2) <= awake_messages,
            "seed {seed}: quiet groups sent {quiet_messages} messages, awake ones {awake_messages}"
        );

        for (name, sim) in [("awake", &mut awake), ("quiet", &mut quiet)] {
            let (index, led) = busiest_leader(sim);
            let mut report = SimReport::default();
            sim.crash(index, &mut report);
            sim.nodes[index].down_until = u64::MAX;
            let steps = await_new_leaders(sim, &led);
            let ticks = steps / TICK_STEPS;
            println!(
                "seed {seed}, {name}: {} groups lost their leader; all had a new one after \
                 {ticks} ticks",
                led.len()
            );
            let liveness_ticks = if name == "quiet" {
                PEER_LIVENESS_STEPS / TICK_STEPS + KEEPALIVE_STEPS / TICK_STEPS
            } else {
                0
            };
            // Two of the longest election timeouts (a split vote takes a second one), a
            // pre-vote and a vote round, and for quiet groups the liveness timeout (which a
            // keepalive interval can overshoot): far below a quiet follower's own election
            // timeout, 10 to 20 times longer.
            let bound = 2 * ELECTION_TICKS_MAX as u64 + 3 + liveness_ticks;
            assert!(
                ticks <= bound,
                "seed {seed}, {name}: failover took {ticks} ticks, more than {bound}"
            );
        }
    }
}

#[test]
fn a_seed_replays_identically() {
    let config = SimConfig {
        chaos_steps: 1_000,
        ..SMALL
    };
    assert_eq!(run_seed(77, config), run_seed(77, config));
}

/// The long form, in release: `cargo test -p ringfeed-replication --release --test
/// raft_simulation -- --ignored --nocapture` (`RINGFEED_RAFT_SEEDS`: seeds per cluster size,
/// 300 by default).
#[test]
#[ignore = "long: hundreds of seeds of 50 groups"]
fn many_seeds_stay_safe_and_live() {
    let count: u64 = std::env::var("RINGFEED_RAFT_SEEDS").map_or(300, |count| {
        count.parse().expect("RINGFEED_RAFT_SEEDS is a count")
    });
    run_seeds(
        "3 nodes x 50 groups",
        &seeds(100_000..100_000 + count),
        THREE_NODES,
    );
    run_seeds(
        "5 nodes x 50 groups",
        &seeds(200_000..200_000 + count),
        FIVE_NODES,
    );
}
