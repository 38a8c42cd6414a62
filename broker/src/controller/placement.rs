//! Where new partitions go (issue 12): a replica list per partition, each replica a broker
//! and a shard on it, the first replica the preferred leader.
//!
//! - One-node broker (`PlacementRules::clustered` false): one replica, this broker's, on the
//!   shard with the fewest partitions (lowest index on ties), exactly as before the registry;
//!   its broker is recorded as [`LOCAL_BROKER`].
//! - Cluster: only live (registered, not fenced) brokers are chosen, each replica of a
//!   partition on a different broker. Leaders (first replicas) go round-robin over the live
//!   brokers in node id order from a per-topic start offset (the topic's ordinal, so topics of
//!   one partition do not all land on the first broker), except that a broker leading fewer
//!   partitions than the one whose turn it is goes first: leaders then stay within one of each
//!   other across live brokers. Followers go to the brokers holding the fewest replicas, so
//!   replica counts stay within one of each other too while topics share a replication
//!   factor (the property test below; with mixed factors the leaders' balance comes first).
//!   On each chosen broker the replica takes the broker's least loaded shard (replicas
//!   counted).

use std::collections::BTreeMap;

use crate::controller::calls::PlacementRules;
use crate::controller::store::{ClusterState, ReplicaRecord, LOCAL_BROKER};

/// Why no placement is possible: Kafka's message (`StripedReplicaPlacer`).
pub fn unreachable_replication_factor(replication_factor: usize, live: usize) -> String {
    format!(
        "Unable to replicate the partition {replication_factor} time(s): The target replication \
         factor of {replication_factor} cannot be reached because only {live} broker(s) are \
         registered."
    )
}

/// The live brokers, by node id, with their shard counts.
pub fn live_brokers(state: &ClusterState) -> BTreeMap<i32, u32> {
    state
        .brokers
        .iter()
        .filter(|broker| !broker.fenced)
        .map(|broker| (broker.node_id, broker.shard_count.max(1)))
        .collect()
}

/// Brokers a new partition's replicas can be placed on: the live ones in a cluster, this
/// broker alone otherwise.
pub fn available_brokers(state: &ClusterState, rules: &PlacementRules) -> usize {
    if rules.clustered {
        live_brokers(state).len()
    } else {
        1
    }
}

/// Replicas and leaders placed so far.
#[derive(Default)]
struct Loads {
    leaders: BTreeMap<i32, usize>,
    replicas: BTreeMap<i32, usize>,
    per_shard: BTreeMap<(i32, u32), usize>,
}

impl Loads {
    fn of(state: &ClusterState) -> Self {
        let mut loads = Self::default();
        for partition in state.topics.iter().flat_map(|topic| &topic.partitions) {
            if let Some(first) = partition.replicas.first() {
                *loads.leaders.entry(first.broker).or_insert(0) += 1;
            }
            for replica in &partition.replicas {
                loads.add_replica(*replica);
            }
        }
        loads
    }

    fn add_replica(&mut self, replica: ReplicaRecord) {
        *self.replicas.entry(replica.broker).or_insert(0) += 1;
        *self
            .per_shard
            .entry((replica.broker, replica.shard))
            .or_insert(0) += 1;
    }

    fn leaders_of(&self, broker: i32) -> usize {
        self.leaders.get(&broker).copied().unwrap_or(0)
    }

    fn replicas_of(&self, broker: i32) -> usize {
        self.replicas.get(&broker).copied().unwrap_or(0)
    }

    fn least_loaded_shard(&self, broker: i32, shards: u32) -> u32 {
        (0..shards)
            .min_by_key(|shard| {
                (
                    self.per_shard.get(&(broker, *shard)).copied().unwrap_or(0),
                    *shard,
                )
            })
            .expect("at least one shard")
    }
}

/// Places `count` new partitions of a topic with `replication_factor` replicas each;
/// `start` is the topic's round-robin start offset. `Err` (Kafka's message) when fewer live
/// brokers than `replication_factor` exist.
pub fn place(
    state: &ClusterState,
    count: usize,
    replication_factor: usize,
    start: usize,
    rules: &PlacementRules,
) -> Result<Vec<Vec<ReplicaRecord>>, String> {
    let available = available_brokers(state, rules);
    if replication_factor == 0 || replication_factor > available {
        return Err(unreachable_replication_factor(
            replication_factor,
            available,
        ));
    }
    if !rules.clustered {
        return Ok(place_on_shards(state, count, rules.shard_count)
            .into_iter()
            .map(|shard| {
                vec![ReplicaRecord {
                    broker: LOCAL_BROKER,
                    shard,
                }]
            })
            .collect());
    }
    let live = live_brokers(state);
    let order: Vec<i32> = live.keys().copied().collect();
    let mut loads = Loads::of(state);
    let mut cursor = start % order.len();
    let mut placed = Vec::with_capacity(count);
    for _ in 0..count {
        // Leader: fewest leaders, then fewest replicas; among equals, the one whose
        // round-robin turn comes first.
        let (turn, leader) = (0..order.len())
            .map(|step| (step, order[(cursor + step) % order.len()]))
            .min_by_key(|(step, broker)| {
                (loads.leaders_of(*broker), loads.replicas_of(*broker), *step)
            })
            .expect("at least one live broker");
        let leader_at = (cursor + turn) % order.len();
        cursor = (leader_at + 1) % order.len();
        // Followers: fewest replicas; among equals, the broker leading more partitions (it
        // gets fewer leaders' replicas later), then round-robin order after the leader.
        let mut brokers = vec![leader];
        let mut follower_steps = Vec::with_capacity(replication_factor);
        while brokers.len() < replication_factor {
            let (step, follower) = (1..order.len())
                .map(|step| (step, order[(leader_at + step) % order.len()]))
                .filter(|(_, broker)| !brokers.contains(broker))
                .min_by_key(|(step, broker)| {
                    (
                        loads.replicas_of(*broker),
                        std::cmp::Reverse(loads.leaders_of(*broker)),
                        *step,
                    )
                })
                .expect("replication factor checked against the live brokers");
            brokers.push(follower);
            follower_steps.push((step, follower));
        }
        // Listed in round-robin order after the leader, whichever way they were chosen.
        follower_steps.sort_unstable();
        brokers.truncate(1);
        brokers.extend(follower_steps.into_iter().map(|(_, follower)| follower));
        *loads.leaders.entry(leader).or_insert(0) += 1;
        let replicas = brokers
            .into_iter()
            .map(|broker| {
                let replica = ReplicaRecord {
                    broker,
                    shard: loads.least_loaded_shard(broker, live[&broker]),
                };
                loads.add_replica(replica);
                replica
            })
            .collect();
        placed.push(replicas);
    }
    Ok(placed)
}

/// Places partitions on the replica lists a client named (one list per partition); `Err`
/// names a broker that is not registered and alive. The lists are checked by the caller.
pub fn place_on(
    state: &ClusterState,
    assignment: &[Vec<i32>],
) -> Result<Vec<Vec<ReplicaRecord>>, String> {
    let live = live_brokers(state);
    let mut loads = Loads::of(state);
    assignment
        .iter()
        .map(|brokers| {
            brokers
                .iter()
                .map(|&broker| {
                    let shards = *live
                        .get(&broker)
                        .ok_or_else(|| format!("broker {broker} is not registered and alive"))?;
                    let replica = ReplicaRecord {
                        broker,
                        shard: loads.least_loaded_shard(broker, shards),
                    };
                    loads.add_replica(replica);
                    Ok(replica)
                })
                .collect()
        })
        .collect()
}

/// A one-node broker's rule: each partition goes to the shard with the fewest partitions so
/// far (lowest index on ties), so shards stay within one partition of each other.
fn place_on_shards(state: &ClusterState, count: usize, shard_count: usize) -> Vec<u32> {
    let mut load = vec![0_usize; shard_count];
    for partition in state.topics.iter().flat_map(|topic| &topic.partitions) {
        if let Some(replica) = partition.replicas.first() {
            load[replica.shard as usize % shard_count] += 1;
        }
    }
    (0..count)
        .map(|_| {
            let (least_loaded, _) = load
                .iter()
                .enumerate()
                .min_by_key(|(shard, partitions)| (**partitions, *shard))
                .expect("at least one shard");
            load[least_loaded] += 1;
            least_loaded as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::store::{BrokerRecord, PartitionRecord, TopicRecord};
    use crate::limits::Limits;
    use proptest::prelude::*;

    fn rules() -> PlacementRules {
        PlacementRules {
            shard_count: 2,
            node_id: 1,
            clustered: true,
            default_replication_factor: 1,
            default_partitions: 3,
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

    /// Places topics of the given (size, replication factor) one after another, as
    /// `changes` records them.
    fn place_topics(state: &mut ClusterState, topics: &[(usize, usize)]) {
        for (index, &(size, replication_factor)) in topics.iter().enumerate() {
            let placed = place(
                state,
                size,
                replication_factor,
                state.topics.len(),
                &rules(),
            )
            .unwrap();
            assert_eq!(placed.len(), size, "every partition placed exactly once");
            let partitions = placed
                .into_iter()
                .map(|replicas| PartitionRecord::placed(replicas, state.take_group_id()))
                .collect();
            state.topics.push(TopicRecord {
                name: format!("t{index}"),
                id: [0; 16],
                partitions,
                overrides: Vec::new(),
            });
        }
    }

    /// Leaders (first replicas) and replicas per broker, counted from the state: the model
    /// the placement's own bookkeeping is checked against.
    fn counts(state: &ClusterState) -> (BTreeMap<i32, usize>, BTreeMap<i32, usize>) {
        let (mut leaders, mut replicas) = (BTreeMap::new(), BTreeMap::new());
        for partition in state.topics.iter().flat_map(|topic| &topic.partitions) {
            *leaders.entry(partition.replicas[0].broker).or_insert(0) += 1;
            for replica in &partition.replicas {
                *replicas.entry(replica.broker).or_insert(0) += 1;
            }
        }
        (leaders, replicas)
    }

    fn spread(live: &BTreeMap<i32, u32>, load: &BTreeMap<i32, usize>) -> usize {
        let counts: Vec<usize> = live
            .keys()
            .map(|node| load.get(node).copied().unwrap_or(0))
            .collect();
        counts.iter().max().unwrap() - counts.iter().min().unwrap()
    }

    proptest! {
        /// Any brokers (some fenced, various shard counts) and any sequence of topics (size,
        /// replication factor up to the live brokers): every partition gets its replication
        /// factor of distinct live brokers, each replica on a shard its broker has, leaders
        /// stay within one of each other across the live brokers, and so do replicas when
        /// the topics share one replication factor (half the cases: the usual cluster, where
        /// topics take `default.replication.factor`). Topics of mixed factors can leave
        /// replica counts further apart: leaders come first.
        #[test]
        fn replicas_go_to_distinct_live_brokers_balanced_within_one(
            brokers in proptest::collection::btree_map(0..20_i32, (1..4_u32, proptest::bool::weighted(0.3)), 1..7),
            topics in proptest::collection::vec((1..40_usize, 1..6_usize), 1..12),
            uniform in proptest::bool::ANY,
        ) {
            let mut state = ClusterState {
                brokers: brokers
                    .iter()
                    .map(|(node, (shards, fenced))| broker(*node, *shards, *fenced))
                    .collect(),
                ..ClusterState::default()
            };
            let live = live_brokers(&state);
            if live.is_empty() {
                prop_assert!(place(&state, 1, 1, 0, &rules()).is_err());
                return Ok(());
            }
            prop_assert!(place(&state, 1, live.len() + 1, 0, &rules()).is_err());
            let first_factor = topics[0].1;
            let topics: Vec<(usize, usize)> = topics
                .into_iter()
                .map(|(size, factor)| {
                    let factor = if uniform { first_factor } else { factor };
                    (size, factor.min(live.len()))
                })
                .collect();
            place_topics(&mut state, &topics);
            for (topic, &(_, factor)) in state.topics.iter().zip(&topics) {
                for partition in &topic.partitions {
                    prop_assert_eq!(partition.replicas.len(), factor);
                    let mut distinct: Vec<i32> = partition.replicas.iter().map(|r| r.broker).collect();
                    distinct.sort_unstable();
                    distinct.dedup();
                    prop_assert_eq!(distinct.len(), factor, "replicas on one broker twice");
                    for replica in &partition.replicas {
                        prop_assert!(live.contains_key(&replica.broker), "fenced or unknown broker {}", replica.broker);
                        prop_assert!(replica.shard < live[&replica.broker], "shard {} of broker {}", replica.shard, replica.broker);
                    }
                }
            }
            let (leaders, replicas) = counts(&state);
            let total: usize = topics.iter().map(|(size, _)| size).sum();
            prop_assert_eq!(leaders.values().sum::<usize>(), total);
            prop_assert!(spread(&live, &leaders) <= 1, "leaders per broker {:?}", leaders);
            if uniform {
                prop_assert!(spread(&live, &replicas) <= 1, "replicas per broker {:?}", replicas);
            }
        }
    }

    #[test]
    fn a_topic_goes_round_robin_from_its_own_start() {
        let mut state = ClusterState {
            brokers: vec![
                broker(1, 1, false),
                broker(2, 1, false),
                broker(3, 1, false),
            ],
            ..ClusterState::default()
        };
        place_topics(&mut state, &[(1, 1), (1, 1), (1, 1), (6, 1)]);
        let placed: Vec<Vec<i32>> = state
            .topics
            .iter()
            .map(|topic| {
                topic
                    .partitions
                    .iter()
                    .map(|p| p.replicas[0].broker)
                    .collect()
            })
            .collect();
        // One-partition topics spread instead of piling on broker 1; the fourth topic starts
        // at its ordinal (3 % 3 = broker 1) and goes round.
        assert_eq!(placed, [vec![1], vec![2], vec![3], vec![1, 2, 3, 1, 2, 3]]);
        // A broker that comes back with nothing gets the next partitions first.
        state.brokers.push(broker(4, 2, false));
        let next = place(&state, 4, 1, 0, &rules()).unwrap();
        let brokers: Vec<i32> = next.iter().map(|replicas| replicas[0].broker).collect();
        assert_eq!(brokers, [4, 4, 4, 1]);
        let shards: Vec<u32> = next.iter().map(|replicas| replicas[0].shard).collect();
        assert_eq!(shards[..3], [0, 1, 0], "its shards filled evenly");
    }

    #[test]
    fn three_replicas_on_three_brokers_rotate_their_leader() {
        let mut state = ClusterState {
            brokers: vec![
                broker(1, 2, false),
                broker(2, 2, false),
                broker(3, 2, false),
            ],
            ..ClusterState::default()
        };
        place_topics(&mut state, &[(3, 3)]);
        let lists: Vec<Vec<i32>> = state.topics[0]
            .partitions
            .iter()
            .map(|p| p.replicas.iter().map(|r| r.broker).collect())
            .collect();
        assert_eq!(lists, [vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]]);
        let first = &state.topics[0].partitions[0];
        assert_eq!((first.leader, first.leader_epoch), (1, 0));
        assert_eq!(first.isr, [1, 2, 3]);
        let shards: Vec<u32> = state.topics[0]
            .partitions
            .iter()
            .map(|p| p.replicas.iter().find(|r| r.broker == 1).unwrap().shard)
            .collect();
        assert_eq!(
            shards,
            [0, 1, 0],
            "broker 1's replicas spread over its shards"
        );
    }

    #[test]
    fn a_cluster_without_enough_live_brokers_places_nothing_and_one_node_places_on_itself() {
        let state = ClusterState {
            brokers: vec![broker(1, 1, true), broker(2, 1, false)],
            ..ClusterState::default()
        };
        let refused = place(&state, 1, 2, 0, &rules()).unwrap_err();
        assert_eq!(
            refused,
            "Unable to replicate the partition 2 time(s): The target replication factor of 2 \
             cannot be reached because only 1 broker(s) are registered."
        );
        let one_node = PlacementRules {
            clustered: false,
            node_id: 7,
            ..rules()
        };
        assert!(place(&state, 1, 2, 0, &one_node).is_err());
        let placed = place(&state, 3, 1, 0, &one_node).unwrap();
        assert!(placed
            .iter()
            .all(|replicas| replicas.len() == 1 && replicas[0].broker == LOCAL_BROKER));
        assert_eq!(
            placed
                .iter()
                .map(|replicas| replicas[0].shard)
                .collect::<Vec<_>>(),
            [0, 1, 0]
        );
        assert!(place_on(&state, &[vec![2, 1]])
            .unwrap_err()
            .contains("broker 1"));
        assert_eq!(place_on(&state, &[vec![2]]).unwrap()[0][0].broker, 2);
    }
}
