//! The reassignment transitions against a simple model (property test), and the cases
//! Kafka's clients depend on by name.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::controller::calls::PlacementRules;
use crate::controller::reassignment::{
    alter, complete, hosting, in_progress, Moving, IN_FLIGHT_MAX, REPLICAS_MAX,
};
use crate::controller::store::{
    BrokerRecord, ClusterState, PartitionRecord, ReplicaRecord, TopicRecord,
};
use crate::error_codes as codes;
use crate::limits::Limits;

fn rules(clustered: bool) -> PlacementRules {
    PlacementRules {
        shard_count: 2,
        node_id: 1,
        clustered,
        default_replication_factor: 3,
        default_partitions: 1,
        limits: Limits::default(),
        topic_defaults: crate::settings::Effective::defaults().topic_defaults(),
    }
}

fn broker(node_id: i32, shard_count: u32, fenced: bool) -> BrokerRecord {
    BrokerRecord {
        node_id,
        incarnation: 1,
        listeners: Vec::new(),
        rack: None,
        shard_count,
        fenced,
    }
}

/// Brokers 1..=5 live with 2 shards, 6 fenced; topic `t` with one partition per given
/// replica list (each replica on shard 0).
fn cluster(partitions: &[Vec<i32>]) -> ClusterState {
    let mut state = ClusterState {
        brokers: (1..=5)
            .map(|id| broker(id, 2, false))
            .chain([broker(6, 2, true)])
            .collect(),
        ..ClusterState::default()
    };
    let records = partitions
        .iter()
        .map(|brokers| {
            let replicas = brokers
                .iter()
                .map(|&broker| ReplicaRecord { broker, shard: 0 })
                .collect();
            PartitionRecord::placed(replicas, state.take_group_id())
        })
        .collect();
    state.topics.push(TopicRecord {
        name: "t".into(),
        id: [1; 16],
        partitions: records,
        overrides: Vec::new(),
    });
    state
}

fn replicas_of(state: &ClusterState, partition: usize) -> Vec<i32> {
    state.topics[0].partitions[partition]
        .replicas
        .iter()
        .map(|replica| replica.broker)
        .collect()
}

fn voters(brokers: &[i32]) -> Vec<u64> {
    brokers.iter().map(|broker| *broker as u64).collect()
}

#[test]
fn a_move_is_recorded_listed_and_completed_by_the_leaders_report() {
    let mut state = cluster(&[vec![1, 2, 3]]);
    alter(&mut state, "t", 0, Some(&[2, 3, 4]), &rules(true)).unwrap();
    assert_eq!(
        replicas_of(&state, 0),
        vec![1, 2, 3],
        "replicas stay until done"
    );
    assert_eq!(
        in_progress(&state, None),
        vec![Moving {
            topic: "t".into(),
            partition: 0,
            replicas: vec![2, 3, 4, 1],
            adding: vec![4],
            removing: vec![1],
        }]
    );
    let group_id = state.topics[0].partitions[0].group_id;
    let mut all = hosting(&state, group_id, &state.topics[0].partitions[0].replicas);
    all.sort_unstable();
    assert_eq!(
        all,
        vec![1, 2, 3, 4],
        "the new replica is hosted during the move"
    );
    assert!(
        !complete(&mut state, group_id, &voters(&[1, 2, 3, 4])),
        "a joint or unfinished membership does not end the move"
    );
    assert!(complete(&mut state, group_id, &voters(&[4, 3, 2])));
    assert_eq!(replicas_of(&state, 0), vec![2, 3, 4]);
    assert!(
        !state.topics[0].partitions[0].isr.contains(&1),
        "1 left the ISR"
    );
    assert!(in_progress(&state, None).is_empty() && state.reassignments.is_empty());
}

#[test]
fn kafka_errors_per_partition() {
    let mut state = cluster(&[vec![1, 2, 3], vec![1]]);
    let code = |state: &mut ClusterState, topic: &str, partition: i32, replicas: Option<&[i32]>| {
        alter(state, topic, partition, replicas, &rules(true))
            .err()
            .map(|(code, _)| code)
    };
    assert_eq!(
        code(&mut state, "nope", 0, Some(&[1, 2])),
        Some(codes::UNKNOWN_TOPIC_OR_PARTITION)
    );
    assert_eq!(
        code(&mut state, "t", 7, Some(&[1, 2])),
        Some(codes::UNKNOWN_TOPIC_OR_PARTITION)
    );
    assert_eq!(
        code(&mut state, "t", -1, None),
        Some(codes::UNKNOWN_TOPIC_OR_PARTITION)
    );
    for bad in [&[][..], &[1, 2, 2], &[1, 2, 9], &[1, 2, 6], &[2]] {
        assert_eq!(
            code(&mut state, "t", 0, Some(bad)),
            Some(codes::INVALID_REPLICA_ASSIGNMENT),
            "{bad:?}"
        );
    }
    assert_eq!(
        code(&mut state, "t", 1, Some(&[1, 2])),
        Some(codes::INVALID_REPLICA_ASSIGNMENT),
        "a single replica has no group to change"
    );
    let too_many: Vec<i32> = (1..=(REPLICAS_MAX as i32 + 1)).collect();
    assert_eq!(
        code(&mut state, "t", 0, Some(&too_many)),
        Some(codes::INVALID_REPLICA_ASSIGNMENT)
    );
    assert_eq!(
        code(&mut state, "t", 0, None),
        Some(codes::NO_REASSIGNMENT_IN_PROGRESS)
    );
    assert_eq!(
        alter(&mut state, "t", 0, Some(&[2, 3, 4]), &rules(false)).map_err(|(code, _)| code),
        Err(codes::INVALID_REPLICA_ASSIGNMENT),
        "a one-node broker moves nothing"
    );
    assert_eq!(
        state,
        cluster(&[vec![1, 2, 3], vec![1]]),
        "refusals change nothing"
    );
}

#[test]
fn the_same_brokers_in_another_order_only_change_the_preferred_leader_at_once() {
    let mut state = cluster(&[vec![1, 2, 3]]);
    alter(&mut state, "t", 0, Some(&[3, 1, 2]), &rules(true)).unwrap();
    assert_eq!(replicas_of(&state, 0), vec![3, 1, 2]);
    assert!(state.reassignments.is_empty());
    let shards: Vec<u32> = state.topics[0].partitions[0]
        .replicas
        .iter()
        .map(|replica| replica.shard)
        .collect();
    assert_eq!(shards, vec![0, 0, 0], "replicas keep their shards");
}

#[test]
fn cancelling_targets_the_old_replicas_until_the_learners_are_removed() {
    let mut state = cluster(&[vec![1, 2, 3]]);
    let group_id = state.topics[0].partitions[0].group_id;
    alter(&mut state, "t", 0, Some(&[2, 3, 4]), &rules(true)).unwrap();
    alter(&mut state, "t", 0, None, &rules(true)).unwrap();
    assert!(
        in_progress(&state, None).is_empty(),
        "a cancelled move is not listed"
    );
    assert_eq!(
        alter(&mut state, "t", 0, None, &rules(true)).map_err(|(code, _)| code),
        Err(codes::NO_REASSIGNMENT_IN_PROGRESS),
        "cancelling twice"
    );
    let mut all = hosting(&state, group_id, &state.topics[0].partitions[0].replicas);
    all.sort_unstable();
    assert_eq!(
        all,
        vec![1, 2, 3, 4],
        "4 stays hosted until the leader removed it"
    );
    assert!(!complete(&mut state, group_id, &voters(&[2, 3, 4])));
    assert!(complete(&mut state, group_id, &voters(&[1, 2, 3])));
    assert_eq!(replicas_of(&state, 0), vec![1, 2, 3]);
    assert!(state.reassignments.is_empty());
}

#[test]
fn at_most_in_flight_max_moves_at_once() {
    let lists: Vec<Vec<i32>> = (0..=IN_FLIGHT_MAX).map(|_| vec![1, 2]).collect();
    let mut state = cluster(&lists);
    for partition in 0..IN_FLIGHT_MAX as i32 {
        alter(&mut state, "t", partition, Some(&[2, 3]), &rules(true)).unwrap();
    }
    assert_eq!(
        alter(
            &mut state,
            "t",
            IN_FLIGHT_MAX as i32,
            Some(&[2, 3]),
            &rules(true)
        )
        .map_err(|(code, _)| code),
        Err(codes::REASSIGNMENT_IN_PROGRESS)
    );
    // Retargeting one in progress is not a new move.
    alter(&mut state, "t", 0, Some(&[3, 4]), &rules(true)).unwrap();
}

/// What the model keeps per partition: its replicas and the target of a recorded move.
#[derive(Debug, Clone)]
struct Model {
    replicas: Vec<i32>,
    target: Option<Vec<i32>>,
}

#[derive(Debug, Clone)]
enum Op {
    Alter(i32, Option<Vec<i32>>),
    /// The partition's leader reports these voters.
    Report(usize, Vec<i32>),
    /// The leader reports the target (or the replicas when none): the usual ending.
    Finish(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let list = proptest::collection::vec(0..8_i32, 0..5);
    prop_oneof![
        4 => (-1..5_i32, proptest::option::weighted(0.8, list.clone())).prop_map(|(p, r)| Op::Alter(p, r)),
        1 => (0..4_usize, list).prop_map(|(p, v)| Op::Report(p, v)),
        2 => (0..4_usize).prop_map(Op::Finish),
    ]
}

fn set(brokers: &[i32]) -> BTreeSet<i32> {
    brokers.iter().copied().collect()
}

/// The model's answer to an alter: the error code, or how the partition changes.
fn model_alter(model: &mut [Model], partition: i32, wanted: Option<&[i32]>) -> Result<(), i16> {
    let Some(entry) = usize::try_from(partition).ok().and_then(|p| model.get(p)) else {
        return Err(codes::UNKNOWN_TOPIC_OR_PARTITION);
    };
    let entry = entry.clone();
    let p = partition as usize;
    let Some(wanted) = wanted else {
        return match &entry.target {
            Some(target) if *target != entry.replicas => {
                model[p].target = Some(entry.replicas.clone());
                Ok(())
            }
            _ => Err(codes::NO_REASSIGNMENT_IN_PROGRESS),
        };
    };
    let live = |broker: &i32| (1..=5).contains(broker);
    let valid = !wanted.is_empty()
        && wanted.len() <= REPLICAS_MAX
        && set(wanted).len() == wanted.len()
        && wanted.iter().all(live)
        && wanted.len() >= 2
        && entry.replicas.len() >= 2;
    if !valid {
        return Err(codes::INVALID_REPLICA_ASSIGNMENT);
    }
    if entry.target.is_some() {
        model[p].target = Some(wanted.to_vec());
    } else if set(wanted) == set(&entry.replicas) {
        model[p].replicas = wanted.to_vec();
    } else {
        model[p].target = Some(wanted.to_vec());
    }
    Ok(())
}

fn model_report(model: &mut [Model], partition: usize, voters: &[i32]) -> bool {
    match &model[partition].target {
        Some(target) if set(target) == set(voters) => {
            model[partition].replicas = target.clone();
            model[partition].target = None;
            true
        }
        _ => false,
    }
}

proptest! {
    /// Any sequence of alters (valid or not, cancels included) and leader reports: the
    /// state's replicas and moves follow the model; refusals leave the state unchanged; the
    /// listed moves are the recorded ones whose target differs from the replicas; every
    /// replica of a target sits on a shard its broker has, a broker kept keeps its shard,
    /// and every broker of a target is hosted while the move lasts.
    #[test]
    fn transitions_follow_the_model(
        initial in proptest::collection::vec(
            proptest::sample::subsequence(vec![1, 2, 3, 4, 5], 1..4).prop_shuffle(), 1..4),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let mut state = cluster(&initial);
        let mut model: Vec<Model> = initial
            .iter()
            .map(|replicas| Model { replicas: replicas.clone(), target: None })
            .collect();
        for op in ops {
            let before = state.clone();
            match op {
                Op::Alter(partition, wanted) => {
                    let got = alter(&mut state, "t", partition, wanted.as_deref(), &rules(true))
                        .map_err(|(code, _)| code);
                    let expected = model_alter(&mut model, partition, wanted.as_deref());
                    prop_assert_eq!(got, expected);
                    if got.is_err() {
                        prop_assert_eq!(&state, &before);
                    }
                }
                Op::Report(partition, reported) => {
                    if partition < model.len() {
                        let group_id = state.topics[0].partitions[partition].group_id;
                        prop_assert_eq!(
                            complete(&mut state, group_id, &voters(&reported)),
                            model_report(&mut model, partition, &reported)
                        );
                    }
                }
                Op::Finish(partition) => {
                    if partition < model.len() {
                        let reported = model[partition]
                            .target
                            .clone()
                            .unwrap_or_else(|| model[partition].replicas.clone());
                        let group_id = state.topics[0].partitions[partition].group_id;
                        prop_assert_eq!(
                            complete(&mut state, group_id, &voters(&reported)),
                            model_report(&mut model, partition, &reported)
                        );
                    }
                }
            }
            let mut expected_listing = Vec::new();
            for (index, entry) in model.iter().enumerate() {
                let record = &state.topics[0].partitions[index];
                prop_assert_eq!(replicas_of(&state, index), entry.replicas.clone());
                let moving = state
                    .reassignments
                    .iter()
                    .find(|moving| moving.group_id == record.group_id);
                let target: Option<Vec<i32>> = moving
                    .map(|moving| moving.target.iter().map(|replica| replica.broker).collect());
                prop_assert_eq!(&target, &entry.target);
                if let Some(moving) = moving {
                    let shards: BTreeMap<i32, u32> = state
                        .brokers
                        .iter()
                        .map(|broker| (broker.node_id, broker.shard_count))
                        .collect();
                    for replica in &moving.target {
                        prop_assert!(replica.shard < shards[&replica.broker]);
                        if let Some(kept) = record.replicas.iter().find(|r| r.broker == replica.broker) {
                            prop_assert_eq!(kept.shard, replica.shard);
                        }
                    }
                    let hosted = set(&hosting(&state, record.group_id, &record.replicas));
                    for replica in moving.target.iter().chain(&record.replicas) {
                        prop_assert!(hosted.contains(&replica.broker));
                    }
                    let all = hosting(&state, record.group_id, &record.replicas);
                    prop_assert_eq!(all.len(), hosted.len(), "each broker hosted once");
                }
                if let Some(target) = &entry.target {
                    if *target != entry.replicas {
                        expected_listing.push((index as i32, target.clone()));
                    }
                }
            }
            let listed: Vec<(i32, Vec<i32>)> = in_progress(&state, None)
                .into_iter()
                .map(|moving| {
                    let target: Vec<i32> = moving
                        .replicas
                        .iter()
                        .copied()
                        .filter(|broker| !moving.removing.contains(broker))
                        .collect();
                    (moving.partition, target)
                })
                .collect();
            prop_assert_eq!(listed, expected_listing);
        }
    }
}
