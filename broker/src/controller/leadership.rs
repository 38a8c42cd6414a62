//! Leadership changes committed by the controller (Kafka's `PartitionChangeRecord` role,
//! issue 12): the leader of a partition's Raft group reports its leadership, term and ISR
//! when they change; the controller records them in the partition's `leader`,
//! `leader_epoch` and `isr`, and every broker's Metadata then shows them.
//!
//! - Broker side ([`PendingReports`], shard 0): `report_leadership` queues changes, the
//!   newest per group; every heartbeat carries up to [`CHANGES_PER_HEARTBEAT_MAX`] of them
//!   until the committed state shows each one (or something newer), so a heartbeat lost on
//!   the way or to a controller failover costs a repeat, not the report. Steady state sends
//!   nothing.
//! - Controller side ([`apply`]): a report counts when its term is at least the recorded
//!   epoch, its sender is the leader it names (a replica of the partition), and, when it
//!   names no leader, its term is newer than the recorded one. A stale leader (a lower
//!   term) is ignored, so leadership only moves forward.

use std::collections::{BTreeMap, HashMap};

use crate::controller::reassignment;
use crate::controller::store::ClusterState;

/// Changes one heartbeat carries at most; the rest go with the following ones.
pub const CHANGES_PER_HEARTBEAT_MAX: usize = 256;
/// In-sync replicas one change may name (a decoded heartbeat naming more is refused).
pub const ISR_MAX: usize = 64;
/// Groups with a change waiting on one broker; the oldest are dropped beyond it (their
/// group reports again on its next change).
pub const PENDING_MAX: usize = 100_000;

/// What a group's leader reports: Raft node ids (= Kafka node ids), 0 = none.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeadershipChange {
    pub group_id: u64,
    /// Node id of the leader, 0 = none.
    pub leader: u64,
    /// The leader's Raft term: the partition's leader epoch.
    pub term: u64,
    pub isr: Vec<u64>,
    /// The group's voters while its membership is settled (no learner, not joint), from its
    /// leader; empty otherwise. A move whose target they are ends (`reassignment::complete`).
    pub voters: Vec<u64>,
}

/// Why a report was not recorded (logged at debug by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    UnknownGroup,
    Stale,
    NotFromTheLeader,
    NotAReplica,
    Unchanged,
}

/// Records the reports `from` sent in `state`; returns how many changed it and the reasons
/// the others were ignored.
pub fn apply(
    state: &mut ClusterState,
    from: i32,
    changes: &[LeadershipChange],
) -> (usize, Vec<(u64, Ignored)>) {
    let mut by_group: HashMap<u64, (usize, usize)> = HashMap::new();
    for (topic_index, topic) in state.topics.iter().enumerate() {
        for (partition_index, partition) in topic.partitions.iter().enumerate() {
            by_group.insert(partition.group_id, (topic_index, partition_index));
        }
    }
    let mut recorded = 0;
    let mut ignored = Vec::new();
    for change in changes {
        // The move first: the ISR of a report that ends it names the new replicas.
        let moved = complete_move(state, from, change);
        let outcome = apply_one(state, &by_group, from, change);
        match outcome {
            Ok(()) => recorded += 1,
            Err(_) if moved => recorded += 1,
            Err(why) => ignored.push((change.group_id, why)),
        }
    }
    (recorded, ignored)
}

/// Ends the move of the change's group when its leader (the sender, not stale) reports the
/// voters the move targets.
fn complete_move(state: &mut ClusterState, from: i32, change: &LeadershipChange) -> bool {
    if change.voters.is_empty() || i64::try_from(change.leader).ok() != Some(i64::from(from)) {
        return false;
    }
    let Some(record) = state
        .topics
        .iter()
        .flat_map(|topic| &topic.partitions)
        .find(|record| record.group_id == change.group_id)
    else {
        return false;
    };
    let fresh = i64::try_from(change.term).unwrap_or(i64::MAX) >= i64::from(record.leader_epoch);
    let hosting = reassignment::hosting(state, change.group_id, &record.replicas);
    if !fresh || !hosting.contains(&from) {
        return false;
    }
    let done = reassignment::complete(state, change.group_id, &change.voters);
    if done {
        tracing::info!(group_id = change.group_id, voters = ?change.voters, "partition move done");
    }
    done
}

fn apply_one(
    state: &mut ClusterState,
    by_group: &HashMap<u64, (usize, usize)>,
    from: i32,
    change: &LeadershipChange,
) -> Result<(), Ignored> {
    let &(topic, partition) = by_group
        .get(&change.group_id)
        .ok_or(Ignored::UnknownGroup)?;
    // During a move, a replica it added may lead (the old leader handed over to it).
    let hosting = reassignment::hosting(
        state,
        change.group_id,
        &state.topics[topic].partitions[partition].replicas,
    );
    let record = &mut state.topics[topic].partitions[partition];
    let term = i32::try_from(change.term).map_err(|_| Ignored::Stale)?;
    let is_replica = |node: i32| record.replicas.iter().any(|replica| replica.broker == node);
    if !hosting.contains(&from) {
        return Err(Ignored::NotAReplica);
    }
    let leader = if change.leader == 0 {
        // Nobody leads: only news when the term is newer than the recorded leader's.
        if term <= record.leader_epoch {
            return Err(Ignored::Stale);
        }
        -1
    } else {
        if term < record.leader_epoch {
            return Err(Ignored::Stale);
        }
        let leader = i32::try_from(change.leader).map_err(|_| Ignored::NotAReplica)?;
        if leader != from {
            return Err(Ignored::NotFromTheLeader);
        }
        leader
    };
    // Only replicas, each once, in the reported order.
    let mut isr: Vec<i32> = Vec::with_capacity(change.isr.len());
    for node in &change.isr {
        if let Ok(node) = i32::try_from(*node) {
            if is_replica(node) && !isr.contains(&node) {
                isr.push(node);
            }
        }
    }
    if (record.leader, record.leader_epoch, &record.isr) == (leader, term, &isr) {
        return Err(Ignored::Unchanged);
    }
    record.leader = leader;
    record.leader_epoch = term;
    record.isr = isr;
    Ok(())
}

/// A broker's leadership reports not yet seen committed (shard 0). See the module docs.
#[derive(Debug, Default)]
pub struct PendingReports {
    /// The newest change per group, with the order it was queued in (oldest dropped first).
    by_group: BTreeMap<u64, (u64, LeadershipChange)>,
    queued: u64,
}

impl PendingReports {
    /// Queues `changes`, each replacing an older one of its group.
    pub fn queue(&mut self, changes: Vec<LeadershipChange>) {
        for change in changes {
            self.queued += 1;
            self.by_group.insert(change.group_id, (self.queued, change));
        }
        while self.by_group.len() > PENDING_MAX {
            let oldest = self
                .by_group
                .iter()
                .min_by_key(|(_, (order, _))| *order)
                .map(|(group, _)| *group)
                .expect("not empty");
            self.by_group.remove(&oldest);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_group.is_empty()
    }

    /// What the next heartbeat carries: the oldest [`CHANGES_PER_HEARTBEAT_MAX`] reports.
    pub fn to_send(&self) -> Vec<LeadershipChange> {
        let mut changes: Vec<&(u64, LeadershipChange)> = self.by_group.values().collect();
        changes.sort_by_key(|(order, _)| *order);
        changes
            .into_iter()
            .take(CHANGES_PER_HEARTBEAT_MAX)
            .map(|(_, change)| change.clone())
            .collect()
    }

    /// Forgets the reports `state` shows recorded, overtaken (a newer epoch) or moot (the
    /// group is gone).
    pub fn forget_settled(&mut self, state: &ClusterState) {
        if self.by_group.is_empty() {
            return;
        }
        let mut recorded: HashMap<u64, (i32, i32, &[i32])> = HashMap::new();
        for partition in state.topics.iter().flat_map(|topic| &topic.partitions) {
            recorded.insert(
                partition.group_id,
                (partition.leader, partition.leader_epoch, &partition.isr),
            );
        }
        self.by_group.retain(|group, (_, change)| {
            let Some(&(leader, epoch, isr)) = recorded.get(group) else {
                return false;
            };
            // A report that ends a move stays until the move is gone.
            if !change.voters.is_empty()
                && reassignment::of_group(state, *group).is_some_and(|moving| {
                    let target: std::collections::BTreeSet<u64> = moving
                        .target
                        .iter()
                        .filter_map(|replica| u64::try_from(replica.broker).ok())
                        .collect();
                    target == change.voters.iter().copied().collect()
                })
            {
                return true;
            }
            let term = i64::try_from(change.term).unwrap_or(i64::MAX);
            let reported_leader = if change.leader == 0 {
                -1
            } else {
                i64::try_from(change.leader).unwrap_or(-2)
            };
            let same_isr = isr.len() == change.isr.len()
                && isr
                    .iter()
                    .zip(&change.isr)
                    .all(|(a, b)| u64::try_from(*a).ok() == Some(*b));
            let settled = i64::from(epoch) > term
                || (i64::from(epoch) == term && i64::from(leader) == reported_leader && same_isr);
            !settled
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::store::{PartitionRecord, ReplicaRecord, TopicRecord};

    fn state() -> ClusterState {
        let replicas = |brokers: &[i32]| {
            brokers
                .iter()
                .map(|&broker| ReplicaRecord { broker, shard: 0 })
                .collect()
        };
        ClusterState {
            topics: vec![TopicRecord {
                name: "t".into(),
                id: [1; 16],
                partitions: vec![
                    PartitionRecord::placed(replicas(&[1, 2, 3]), 10),
                    PartitionRecord::placed(replicas(&[2, 3]), 11),
                ],
                overrides: Vec::new(),
            }],
            ..ClusterState::default()
        }
    }

    fn change(group_id: u64, leader: u64, term: u64, isr: &[u64]) -> LeadershipChange {
        LeadershipChange {
            group_id,
            leader,
            term,
            isr: isr.to_vec(),
            voters: Vec::new(),
        }
    }

    fn leadership(state: &ClusterState, partition: usize) -> (i32, i32, Vec<i32>) {
        let record = &state.topics[0].partitions[partition];
        (record.leader, record.leader_epoch, record.isr.clone())
    }

    #[test]
    fn a_leaders_report_is_recorded_and_a_stale_leaders_is_ignored() {
        let mut state = state();
        let (recorded, _) = apply(&mut state, 2, &[change(10, 2, 3, &[2, 1, 9, 2])]);
        assert_eq!(recorded, 1);
        assert_eq!(
            leadership(&state, 0),
            (2, 3, vec![2, 1]),
            "non-replicas and repeats leave the ISR"
        );
        // The previous leader, still believing it leads term 2, is ignored ...
        let (recorded, ignored) = apply(&mut state, 1, &[change(10, 1, 2, &[1, 2, 3])]);
        assert_eq!((recorded, ignored), (0, vec![(10, Ignored::Stale)]));
        assert_eq!(leadership(&state, 0), (2, 3, vec![2, 1]));
        // ... as is anyone speaking for another broker, or for a group it has no replica of.
        let (_, ignored) = apply(&mut state, 3, &[change(10, 1, 4, &[1])]);
        assert_eq!(ignored, [(10, Ignored::NotFromTheLeader)]);
        let (_, ignored) = apply(&mut state, 1, &[change(11, 1, 4, &[1])]);
        assert_eq!(ignored, [(11, Ignored::NotAReplica)]);
        let (_, ignored) = apply(&mut state, 1, &[change(99, 1, 4, &[1])]);
        assert_eq!(ignored, [(99, Ignored::UnknownGroup)]);
        // The same term with a shrunk ISR is news; a repeat is not.
        assert_eq!(apply(&mut state, 2, &[change(10, 2, 3, &[2])]).0, 1);
        assert_eq!(
            apply(&mut state, 2, &[change(10, 2, 3, &[2])]).1,
            [(10, Ignored::Unchanged)]
        );
        // A newer term moves leadership; "no leader" only in a newer term than recorded.
        assert_eq!(apply(&mut state, 3, &[change(10, 3, 5, &[3, 2])]).0, 1);
        assert_eq!(
            apply(&mut state, 2, &[change(10, 0, 5, &[])]).1,
            [(10, Ignored::Stale)]
        );
        assert_eq!(apply(&mut state, 2, &[change(10, 0, 6, &[])]).0, 1);
        assert_eq!(leadership(&state, 0), (-1, 6, vec![]));
        assert_eq!(leadership(&state, 1), (2, 0, vec![2, 3]), "untouched");
    }

    #[test]
    fn pending_reports_are_resent_until_the_state_shows_them() {
        let mut pending = PendingReports::default();
        pending.queue(vec![change(10, 2, 3, &[2, 1]), change(11, 2, 1, &[2])]);
        pending.queue(vec![change(10, 2, 4, &[2])]);
        let sent: Vec<(u64, u64)> = pending
            .to_send()
            .iter()
            .map(|change| (change.group_id, change.term))
            .collect();
        assert_eq!(
            sent,
            [(11, 1), (10, 4)],
            "one per group, the newest, oldest first"
        );
        let mut state = state();
        pending.forget_settled(&state);
        assert_eq!(pending.to_send().len(), 2, "nothing recorded yet");
        apply(&mut state, 2, &pending.to_send());
        pending.forget_settled(&state);
        assert!(pending.is_empty());
        // Overtaken by a newer epoch, or the group is gone: forgotten too.
        pending.queue(vec![change(10, 2, 1, &[2]), change(77, 2, 9, &[2])]);
        pending.forget_settled(&state);
        assert!(pending.is_empty());
    }

    #[test]
    fn the_leaders_settled_voters_end_a_move_to_them_and_nothing_else_does() {
        use crate::controller::store::{BrokerRecord, ReassignmentRecord};
        let mut state = state();
        state.brokers = (1..=4)
            .map(|node_id| BrokerRecord {
                node_id,
                incarnation: 1,
                listeners: Vec::new(),
                rack: None,
                shard_count: 1,
                fenced: false,
            })
            .collect();
        let replica = |broker| ReplicaRecord { broker, shard: 0 };
        state.reassignments.push(ReassignmentRecord {
            group_id: 10,
            target: vec![replica(2), replica(3), replica(4)],
            hosted: vec![replica(4)],
        });
        apply(&mut state, 1, &[change(10, 1, 3, &[1, 2, 3])]);
        let settled = |leader, term, voters: &[u64]| LeadershipChange {
            voters: voters.to_vec(),
            ..change(10, leader, term, &[leader])
        };
        let mut pending = PendingReports::default();
        pending.queue(vec![settled(4, 4, &[2, 3, 4])]);
        pending.forget_settled(&state);
        assert_eq!(
            pending.to_send().len(),
            1,
            "kept while the move is recorded"
        );
        // Not from the leader it names, stale, or other voters: the move goes on.
        apply(&mut state, 2, &[settled(4, 4, &[2, 3, 4])]);
        apply(&mut state, 4, &[settled(4, 2, &[2, 3, 4])]);
        apply(&mut state, 4, &[settled(4, 4, &[1, 2, 3, 4])]);
        assert_eq!(state.reassignments.len(), 1);
        // The new replica, leading before the move ends, is heard; its report ends it.
        let (recorded, ignored) = apply(&mut state, 4, &[settled(4, 4, &[4, 3, 2])]);
        assert_eq!((recorded, ignored), (1, vec![]));
        assert!(state.reassignments.is_empty());
        let brokers: Vec<i32> = state.topics[0].partitions[0]
            .replicas
            .iter()
            .map(|replica| replica.broker)
            .collect();
        assert_eq!(brokers, vec![2, 3, 4]);
        assert_eq!(leadership(&state, 0), (4, 4, vec![4]));
        pending.forget_settled(&state);
        assert!(pending.is_empty(), "settled once the move is gone");
    }

    #[test]
    fn a_full_queue_drops_the_oldest_groups() {
        let mut pending = PendingReports::default();
        pending.queue(
            (0..PENDING_MAX as u64 + 3)
                .map(|group| change(group, 1, 1, &[1]))
                .collect(),
        );
        let sent = pending.to_send();
        assert_eq!(sent.len(), CHANGES_PER_HEARTBEAT_MAX);
        assert_eq!(sent[0].group_id, 3);
    }
}
