//! Partition reassignment (Kafka's KIP-455, issue 12 item 8): pure transitions of the
//! controller state, no IO.
//!
//! - [`alter`] starts a move (`AlterPartitionReassignments` with replicas), changes the
//!   target of one in progress, or cancels one (null replicas). A move is recorded as a
//!   [`ReassignmentRecord`]; the partition's `replicas` stay the old ones. Every broker then
//!   hosts the union (`hosted`), new replicas opening their group as learners, and the
//!   partition's leader changes the group's membership to the target
//!   (`ringfeed_replication::driver::membership`).
//! - [`complete`] ends a move when the leader reports the group's voters are the target (no
//!   learner left, not joint): `replicas` become the target and the record goes, so brokers
//!   no longer named close their replica and delete its log.
//! - Cancelling sets the target back to the old replicas and keeps the record (and the new
//!   replicas hosted) until the leader reports that membership: a learner is removed from
//!   the group before its broker closes it. A cancelled move no longer shows in
//!   [`in_progress`].
//!
//! Only replicated partitions move (a single replica has no Raft group to change), to at
//! least two replicas, on registered live brokers; at most [`IN_FLIGHT_MAX`] at once.

use std::collections::BTreeSet;

use crate::controller::calls::PlacementRules;
use crate::controller::placement;
use crate::controller::store::{ClusterState, ReassignmentRecord, ReplicaRecord};
use crate::error_codes as codes;

/// Partition moves in progress at once (each copies a partition's log to new replicas).
pub const IN_FLIGHT_MAX: usize = 64;
/// Replicas one target may name.
pub const REPLICAS_MAX: usize = 16;

/// A refused change: Kafka's error code and the message.
pub type Refusal = (i16, String);

/// A partition's move as `ListPartitionReassignments` shows it (the shards' snapshot
/// carries it, so the type lives with the metadata).
pub use crate::metadata::PartitionMove as Moving;

fn brokers(replicas: &[ReplicaRecord]) -> Vec<i32> {
    replicas.iter().map(|replica| replica.broker).collect()
}

fn locate(state: &ClusterState, topic: &str, partition: i32) -> Option<(usize, usize)> {
    let topic_index = state
        .topics
        .iter()
        .position(|record| record.name == topic)?;
    let partition_index = usize::try_from(partition).ok()?;
    (partition_index < state.topics[topic_index].partitions.len())
        .then_some((topic_index, partition_index))
}

/// Starts, retargets or (`replicas` None) cancels the move of `topic`/`partition`.
pub fn alter(
    state: &mut ClusterState,
    topic: &str,
    partition: i32,
    replicas: Option<&[i32]>,
    rules: &PlacementRules,
) -> Result<(), Refusal> {
    let Some((topic_index, partition_index)) = locate(state, topic, partition) else {
        return Err((
            codes::UNKNOWN_TOPIC_OR_PARTITION,
            format!("no partition {partition} of topic {topic}"),
        ));
    };
    let record = &state.topics[topic_index].partitions[partition_index];
    let group_id = record.group_id;
    let current = record.replicas.clone();
    let existing = state
        .reassignments
        .iter()
        .position(|moving| moving.group_id == group_id);
    let Some(wanted) = replicas else {
        return match existing {
            Some(at) if brokers(&state.reassignments[at].target) != brokers(&current) => {
                state.reassignments[at].target = current;
                Ok(())
            }
            _ => Err((
                codes::NO_REASSIGNMENT_IN_PROGRESS,
                format!("partition {partition} of {topic} is not being reassigned"),
            )),
        };
    };
    if !rules.clustered {
        return Err((
            codes::INVALID_REPLICA_ASSIGNMENT,
            "a one-node broker has no other broker to move a partition to".into(),
        ));
    }
    validate(state, &current, wanted)?;
    let hosted_before: Vec<ReplicaRecord> =
        existing.map_or_else(Vec::new, |at| state.reassignments[at].hosted.clone());
    let target = place_target(state, &current, &hosted_before, wanted)?;
    let mut hosted = hosted_before;
    for replica in &target {
        if !current
            .iter()
            .chain(&hosted)
            .any(|r| r.broker == replica.broker)
        {
            hosted.push(*replica);
        }
    }
    let same_set = |a: &[ReplicaRecord], b: &[ReplicaRecord]| {
        brokers(a).into_iter().collect::<BTreeSet<_>>()
            == brokers(b).into_iter().collect::<BTreeSet<_>>()
    };
    match existing {
        Some(at) => {
            state.reassignments[at].target = target;
            state.reassignments[at].hosted = hosted;
        }
        // The same brokers in another order: only the preferred leader changes (Kafka
        // completes such a reassignment at once).
        None if same_set(&target, &current) => {
            state.topics[topic_index].partitions[partition_index].replicas = target;
        }
        None => {
            if state.reassignments.len() >= IN_FLIGHT_MAX {
                return Err((
                    codes::REASSIGNMENT_IN_PROGRESS,
                    format!(
                        "{IN_FLIGHT_MAX} partitions are moving already; retry once one is done"
                    ),
                ));
            }
            state.reassignments.push(ReassignmentRecord {
                group_id,
                target,
                hosted,
            });
        }
    }
    Ok(())
}

/// The target's replicas: a broker already hosting one (old, or hosted for this move) keeps
/// its shard; a new one takes its broker's least loaded shard, as placement does.
fn place_target(
    state: &ClusterState,
    current: &[ReplicaRecord],
    hosted_before: &[ReplicaRecord],
    wanted: &[i32],
) -> Result<Vec<ReplicaRecord>, Refusal> {
    let known = |broker: i32| {
        current
            .iter()
            .chain(hosted_before)
            .find(|replica| replica.broker == broker)
            .copied()
    };
    let fresh: Vec<i32> = wanted
        .iter()
        .copied()
        .filter(|b| known(*b).is_none())
        .collect();
    let placed = placement::place_on(state, &[fresh])
        .map_err(|reason| (codes::INVALID_REPLICA_ASSIGNMENT, reason))?
        .pop()
        .unwrap_or_default();
    // `placed` follows `fresh`, which follows `wanted`: the unknown ones take it in order.
    let mut placed = placed.into_iter();
    let mut target: Vec<ReplicaRecord> = Vec::with_capacity(wanted.len());
    for broker in wanted {
        match known(*broker).or_else(|| placed.next()) {
            Some(replica) => target.push(replica),
            None => {
                return Err((
                    codes::INVALID_REPLICA_ASSIGNMENT,
                    format!("broker {broker} could not be placed"),
                ))
            }
        }
    }
    Ok(target)
}

/// Kafka's checks of a target replica list, and this broker's limits.
fn validate(
    state: &ClusterState,
    current: &[ReplicaRecord],
    wanted: &[i32],
) -> Result<(), Refusal> {
    let refuse = |message: String| Err((codes::INVALID_REPLICA_ASSIGNMENT, message));
    if wanted.is_empty() {
        return refuse("the replica list is empty".into());
    }
    if wanted.len() > REPLICAS_MAX {
        return refuse(format!("at most {REPLICAS_MAX} replicas"));
    }
    if let Some(twice) = wanted
        .iter()
        .enumerate()
        .find_map(|(at, broker)| wanted[..at].contains(broker).then_some(*broker))
    {
        return refuse(format!("broker {twice} is named more than once"));
    }
    let live = placement::live_brokers(state);
    if let Some(unknown) = wanted.iter().find(|broker| !live.contains_key(broker)) {
        return refuse(format!("broker {unknown} is not registered and alive"));
    }
    if current.len() < 2 || wanted.len() < 2 {
        return refuse(
            "only replicated partitions move, to two replicas or more (a single replica has \
             no Raft group to change)"
                .into(),
        );
    }
    Ok(())
}

/// Ends the move of `group_id` when `voters` (the leader's settled membership) are its
/// target: the partition's replicas become the target. Returns whether it ended.
pub fn complete(state: &mut ClusterState, group_id: u64, voters: &[u64]) -> bool {
    let Some(at) = state
        .reassignments
        .iter()
        .position(|moving| moving.group_id == group_id)
    else {
        return false;
    };
    let target = &state.reassignments[at].target;
    let wanted: BTreeSet<u64> = target
        .iter()
        .filter_map(|replica| u64::try_from(replica.broker).ok())
        .collect();
    if wanted != voters.iter().copied().collect::<BTreeSet<u64>>() {
        return false;
    }
    let target = state.reassignments.remove(at).target;
    if let Some(record) = state
        .topics
        .iter_mut()
        .flat_map(|topic| &mut topic.partitions)
        .find(|record| record.group_id == group_id)
    {
        record
            .isr
            .retain(|node| target.iter().any(|r| r.broker == *node));
        record.replicas = target;
    }
    true
}

/// The move of `group_id`, if one is recorded.
pub fn of_group(state: &ClusterState, group_id: u64) -> Option<&ReassignmentRecord> {
    state
        .reassignments
        .iter()
        .find(|moving| moving.group_id == group_id)
}

/// Every broker hosting a replica of `group_id` now: its replicas and those its move added.
pub fn hosting(state: &ClusterState, group_id: u64, replicas: &[ReplicaRecord]) -> Vec<i32> {
    let mut all = brokers(replicas);
    if let Some(moving) = of_group(state, group_id) {
        all.extend(
            moving
                .hosted
                .iter()
                .map(|replica| replica.broker)
                .filter(|broker| !replicas.iter().any(|r| r.broker == *broker)),
        );
    }
    all
}

/// The moves in progress (not cancelled), in topic then partition order; `only` limits
/// them to the named partitions.
pub fn in_progress(state: &ClusterState, only: Option<&[(String, i32)]>) -> Vec<Moving> {
    let mut moving = Vec::new();
    for topic in &state.topics {
        for (index, record) in topic.partitions.iter().enumerate() {
            let partition = index as i32;
            let Some(reassignment) = of_group(state, record.group_id) else {
                continue;
            };
            let old = brokers(&record.replicas);
            let target = brokers(&reassignment.target);
            if old == target
                || only.is_some_and(|only| {
                    !only
                        .iter()
                        .any(|(name, p)| *name == topic.name && *p == partition)
                })
            {
                continue;
            }
            let adding: Vec<i32> = target
                .iter()
                .copied()
                .filter(|b| !old.contains(b))
                .collect();
            let removing: Vec<i32> = old
                .iter()
                .copied()
                .filter(|b| !target.contains(b))
                .collect();
            let mut replicas = target.clone();
            replicas.extend(removing.iter().copied());
            moving.push(Moving {
                topic: topic.name.clone(),
                partition,
                replicas,
                adding,
                removing,
            });
        }
    }
    moving
}

#[cfg(test)]
#[path = "reassignment_tests.rs"]
mod tests;
