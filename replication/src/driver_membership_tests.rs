//! Membership changes on raft-rs's memory store: a group moves from {leader, other} to
//! {other, new} with the new replica a learner first, every entry (including those proposed
//! during the move) on the new replica, the old leader handing over; a cancelled move
//! removes its learner.

use std::collections::BTreeSet;

use bytes::BytesMut;
use raft::eraftpb::ConfState;
use raft::storage::MemStorage;
use raft::StateRole;

use super::membership::{Membership, MembershipStep};
use super::*;

const GROUP: u64 = 7;

struct Nodes {
    drivers: Vec<MultiRaft<MemStorage>>,
    durability: Vec<ImmediateDurability>,
    in_flight: Vec<Vec<u8>>,
    /// Data entries applied, per node.
    applied: BTreeMap<u64, Vec<Vec<u8>>>,
}

impl Nodes {
    /// `nodes` drivers; the group is hosted on `voters` with that configuration.
    fn new(nodes: u64, voters: &[u64]) -> Self {
        let mut drivers = Vec::new();
        for node in 1..=nodes {
            let mut driver = MultiRaft::new(node, 1, WireLimits::default(), node * 31);
            if voters.contains(&node) {
                let store =
                    MemStorage::new_with_conf_state(ConfState::from((voters.to_vec(), vec![])));
                driver.add_group(GROUP, store, 0).expect("group starts");
            }
            drivers.push(driver);
        }
        Self {
            durability: (0..nodes).map(|_| ImmediateDurability::default()).collect(),
            drivers,
            in_flight: Vec::new(),
            applied: BTreeMap::new(),
        }
    }

    fn driver(&mut self, node: u64) -> &mut MultiRaft<MemStorage> {
        &mut self.drivers[(node - 1) as usize]
    }

    /// Opens the group on `node` as a joining replica does: the old voters, the new
    /// replicas as learners.
    fn join(&mut self, node: u64, voters: &[u64], learners: &[u64]) {
        let store =
            MemStorage::new_with_conf_state(ConfState::from((voters.to_vec(), learners.to_vec())));
        self.driver(node).add_group(GROUP, store, 0).expect("joins");
    }

    fn round(&mut self, tick: bool) {
        for bytes in std::mem::take(&mut self.in_flight) {
            let frame = Frame::decode(&bytes, &WireLimits::default()).expect("a valid frame");
            self.drivers[(frame.to_node - 1) as usize].receive(frame);
        }
        for (driver, durability) in self.drivers.iter_mut().zip(&mut self.durability) {
            if tick {
                driver.tick();
            }
            let node = driver.node_id();
            let applied = &mut self.applied;
            for frame in driver.round(durability, |_, entry| {
                if entry.entry_type() == raft::eraftpb::EntryType::EntryNormal
                    && !entry.data.is_empty()
                {
                    applied.entry(node).or_default().push(entry.data.to_vec());
                }
            }) {
                let mut bytes = BytesMut::new();
                frame.encode(&mut bytes);
                self.in_flight.push(bytes.to_vec());
            }
        }
    }

    fn leader(&self) -> Option<u64> {
        self.drivers.iter().find_map(|driver| {
            let raft = driver.raft(GROUP)?;
            (raft.state == StateRole::Leader).then_some(driver.node_id())
        })
    }

    fn elect(&mut self) -> u64 {
        for _ in 0..300 {
            self.round(true);
            if let Some(leader) = self.leader() {
                return leader;
            }
        }
        panic!("no leader after 300 ticks");
    }

    /// Proposes `count` records at the leader, numbered from `first`; returns how many it
    /// accepted (none while it transfers leadership).
    fn produce(&mut self, first: usize, count: usize) -> usize {
        let Some(leader) = self.leader() else {
            return 0;
        };
        (first..first + count)
            .filter(|n| {
                self.driver(leader)
                    .propose(GROUP, format!("record {n}").into_bytes().into())
                    .is_ok()
            })
            .count()
    }

    /// Drives the move to `target` from whichever node leads, producing between steps,
    /// until the leader says done; returns the steps seen.
    fn move_to(&mut self, target: &[u64], produced: &mut Vec<usize>) -> Vec<MembershipStep> {
        let target: BTreeSet<u64> = target.iter().copied().collect();
        let mut steps = Vec::new();
        for round in 0..2000 {
            let next = produced.len();
            if self.produce(next, 3) == 3 {
                produced.extend(next..next + 3);
            }
            if let Some(leader) = self.leader() {
                let step = self
                    .driver(leader)
                    .advance_membership(GROUP, &target, 16)
                    .expect("the leader takes the step");
                if step == MembershipStep::Done {
                    return steps;
                }
                if steps.last() != Some(&step) {
                    steps.push(step);
                }
            }
            self.round(round % 3 == 0);
        }
        panic!("the move to {target:?} did not finish: {steps:?}");
    }

    fn membership(&self, node: u64) -> Membership {
        self.drivers[(node - 1) as usize]
            .membership(GROUP)
            .expect("hosted")
    }
}

fn set(ids: &[u64]) -> BTreeSet<u64> {
    ids.iter().copied().collect()
}

#[test]
fn a_new_replica_catches_up_as_a_learner_then_replaces_the_leader_as_a_voter() {
    let mut nodes = Nodes::new(3, &[1, 2]);
    let leader = nodes.elect();
    let other = 3 - leader;
    let mut produced = Vec::new();
    for _ in 0..20 {
        let next = produced.len();
        assert_eq!(nodes.produce(next, 10), 10);
        produced.extend(next..next + 10);
        nodes.round(false);
    }
    nodes.join(3, &[1, 2], &[3]);
    let steps = nodes.move_to(&[other, 3], &mut produced);
    assert!(
        steps.contains(&MembershipStep::Transferring(other)),
        "the leader leaving hands over to the voter staying: {steps:?}"
    );
    assert_eq!(nodes.leader(), Some(other));
    // Everything committed reaches the new replica, in the leader's order, once.
    for _ in 0..50 {
        nodes.round(true);
    }
    for node in [other, 3] {
        let now = nodes.membership(node);
        assert_eq!(now.voters, set(&[other, 3]), "node {node}");
        assert!(
            now.learners.is_empty() && !now.is_joint(),
            "node {node}: {now:?}"
        );
    }
    let expected: Vec<Vec<u8>> = nodes.applied[&other].clone();
    assert!(expected.len() >= 200, "{} records applied", expected.len());
    assert_eq!(nodes.applied[&3], expected);
    let distinct: BTreeSet<&Vec<u8>> = expected.iter().collect();
    assert_eq!(distinct.len(), expected.len(), "no record applied twice");
    // Accepted proposals made before the leader changed are all committed (the leader
    // only stopped taking them while it handed over).
    for n in 0..200 {
        assert!(
            expected.contains(&format!("record {n}").into_bytes()),
            "record {n} lost"
        );
    }
}

#[test]
fn a_cancelled_move_removes_its_learner_and_keeps_the_voters() {
    let mut nodes = Nodes::new(3, &[1, 2]);
    let leader = nodes.elect();
    nodes.join(3, &[1, 2], &[3]);
    // One step: the learner is added (the move is cancelled before it is promoted).
    let step = nodes
        .driver(leader)
        .advance_membership(GROUP, &set(&[1, 3]), u64::MAX)
        .unwrap();
    assert_eq!(step, MembershipStep::Proposed);
    for _ in 0..10 {
        nodes.round(false);
    }
    assert_eq!(nodes.membership(leader).learners, set(&[3]));
    let mut produced = Vec::new();
    nodes.move_to(&[1, 2], &mut produced);
    let now = nodes.membership(nodes.leader().unwrap());
    assert_eq!(now.voters, set(&[1, 2]));
    assert!(now.learners.is_empty());
}

#[test]
fn a_follower_cannot_drive_and_an_empty_target_is_refused() {
    let mut nodes = Nodes::new(2, &[1, 2]);
    let leader = nodes.elect();
    let follower = 3 - leader;
    assert_eq!(
        nodes
            .driver(follower)
            .advance_membership(GROUP, &set(&[1]), 0)
            .unwrap(),
        MembershipStep::NotLeader
    );
    assert!(nodes
        .driver(leader)
        .advance_membership(GROUP, &BTreeSet::new(), 0)
        .is_err());
    assert_eq!(
        nodes
            .driver(leader)
            .advance_membership(GROUP, &set(&[1, 2]), 0)
            .unwrap(),
        MembershipStep::Done
    );
}

#[test]
fn a_change_applies_only_to_the_configuration_it_was_made_for() {
    use raft::eraftpb::{ConfChangeType, ConfChangeV2, Entry, EntryType};
    use raft::protocompat::PbMessage;

    let before = ConfState::from((vec![1, 2], vec![]));
    let after = ConfState::from((vec![1, 2], vec![3]));
    let change = ConfChangeV2 {
        changes: vec![super::membership::tests_single(
            3,
            ConfChangeType::AddLearnerNode,
        )],
        context: super::membership::tests_context(&before, &after),
        ..ConfChangeV2::default()
    };
    let mut entry = Entry::default();
    entry.set_entry_type(EntryType::EntryConfChangeV2);
    entry.data = change.encode_to_vec().into();
    let apply =
        |entry: &Entry, current: &ConfState| super::membership::change_to_apply(entry, current);
    assert_eq!(
        apply(&entry, &ConfState::from((vec![2, 1], vec![]))),
        Some(change.clone())
    );
    // A replica that opened with the configuration the change made, or a later one, or
    // saved it before a restart, passes it over.
    assert_eq!(apply(&entry, &after), None);
    assert_eq!(apply(&entry, &ConfState::from((vec![2, 3], vec![]))), None);
    // Damaged data is no change.
    entry.data = vec![0xff; 3].into();
    assert_eq!(apply(&entry, &before), None);
}

#[test]
fn a_learner_never_heard_from_is_not_promoted_however_short_the_log() {
    // Node 3 is added as a learner but never opens the group (a stopped broker): with a log
    // far shorter than the lag, the move must still wait for it.
    let mut nodes = Nodes::new(3, &[1, 2]);
    let leader = nodes.elect();
    let target = set(&[1, 2, 3]);
    let mut steps = Vec::new();
    for round in 0..300 {
        let step = nodes
            .driver(leader)
            .advance_membership(GROUP, &target, u64::MAX)
            .unwrap();
        if steps.last() != Some(&step) {
            steps.push(step);
        }
        nodes.round(round % 3 == 0);
    }
    assert_eq!(
        steps,
        vec![MembershipStep::Proposed, MembershipStep::Waiting],
        "the learner is added, then the move waits"
    );
    let now = nodes.membership(leader);
    assert_eq!(now.voters, set(&[1, 2]));
    assert_eq!(now.learners, set(&[3]));
    // Once it opens the group and answers, the move finishes.
    nodes.join(3, &[1, 2], &[3]);
    let mut produced = Vec::new();
    nodes.move_to(&[1, 2, 3], &mut produced);
    assert_eq!(nodes.membership(leader).voters, target);
}
