//! Where new partitions go (issue 12, replication factor 1): a broker and a shard on it.
//!
//! - One-node broker (`PlacementRules::clustered` false): every partition is this broker's;
//!   each goes to the shard with the fewest partitions (lowest index on ties), exactly as
//!   before the registry, and no broker is recorded (`TopicRecord::partition_brokers` stays
//!   empty).
//! - Cluster: only live (registered, not fenced) brokers are chosen. A topic's partitions go
//!   round-robin over them, in node id order, from a per-topic start offset (the topic's
//!   ordinal, so topics of one partition do not all land on the first broker), except that a
//!   broker with fewer partitions than the one whose turn it is goes first: the leaders of
//!   all topics then stay within one partition of each other across live brokers (the
//!   property test below). On the chosen broker the partition takes its least loaded shard.

use std::collections::BTreeMap;

use crate::controller::calls::PlacementRules;
use crate::controller::store::ClusterState;

/// One placed partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub broker: i32,
    pub shard: u32,
}

/// Why no placement is possible.
pub fn no_live_brokers() -> String {
    "replication factor 1 cannot be reached: no broker is registered and alive".into()
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

/// Partitions placed on each broker and on each (broker, shard).
fn loads(
    state: &ClusterState,
    rules: &PlacementRules,
) -> (BTreeMap<i32, usize>, BTreeMap<(i32, u32), usize>) {
    let mut per_broker = BTreeMap::new();
    let mut per_shard = BTreeMap::new();
    for topic in &state.topics {
        for (partition, shard) in topic.partition_shards.iter().enumerate() {
            let broker = topic
                .partition_brokers
                .get(partition)
                .copied()
                .unwrap_or(rules.node_id);
            *per_broker.entry(broker).or_insert(0) += 1;
            *per_shard.entry((broker, *shard)).or_insert(0) += 1;
        }
    }
    (per_broker, per_shard)
}

/// Places `count` new partitions of a topic; `start` is its round-robin start offset.
/// `Err` when the cluster has no live broker.
pub fn place(
    state: &ClusterState,
    count: usize,
    start: usize,
    rules: &PlacementRules,
) -> Result<Vec<Placed>, String> {
    if !rules.clustered {
        return Ok(place_on_shards(state, count, rules.shard_count)
            .into_iter()
            .map(|shard| Placed {
                broker: rules.node_id,
                shard,
            })
            .collect());
    }
    let live = live_brokers(state);
    if live.is_empty() {
        return Err(no_live_brokers());
    }
    let order: Vec<i32> = live.keys().copied().collect();
    let (mut per_broker, mut per_shard) = loads(state, rules);
    let mut cursor = start % order.len();
    let mut placed = Vec::with_capacity(count);
    for _ in 0..count {
        // Least loaded first; among equals, the one whose round-robin turn comes first.
        let (turn, broker) = (0..order.len())
            .map(|step| (step, order[(cursor + step) % order.len()]))
            .min_by_key(|(step, broker)| (per_broker.get(broker).copied().unwrap_or(0), *step))
            .expect("at least one live broker");
        cursor = (cursor + turn + 1) % order.len();
        let shard = least_loaded_shard(&per_shard, broker, live[&broker]);
        *per_broker.entry(broker).or_insert(0) += 1;
        *per_shard.entry((broker, shard)).or_insert(0) += 1;
        placed.push(Placed { broker, shard });
    }
    Ok(placed)
}

/// Places partitions on the brokers a client named (one replica each); `Err` names a broker
/// that is not registered and alive.
pub fn place_on(
    state: &ClusterState,
    brokers: &[i32],
    rules: &PlacementRules,
) -> Result<Vec<Placed>, String> {
    let live = live_brokers(state);
    let (_, mut per_shard) = loads(state, rules);
    brokers
        .iter()
        .map(|&broker| {
            let shards = *live
                .get(&broker)
                .ok_or_else(|| format!("broker {broker} is not registered and alive"))?;
            let shard = least_loaded_shard(&per_shard, broker, shards);
            *per_shard.entry((broker, shard)).or_insert(0) += 1;
            Ok(Placed { broker, shard })
        })
        .collect()
}

fn least_loaded_shard(per_shard: &BTreeMap<(i32, u32), usize>, broker: i32, shards: u32) -> u32 {
    (0..shards)
        .min_by_key(|shard| {
            (
                per_shard.get(&(broker, *shard)).copied().unwrap_or(0),
                *shard,
            )
        })
        .expect("at least one shard")
}

/// A one-node broker's rule: each partition goes to the shard with the fewest partitions so
/// far (lowest index on ties), so shards stay within one partition of each other.
fn place_on_shards(state: &ClusterState, count: usize, shard_count: usize) -> Vec<u32> {
    let mut load = vec![0_usize; shard_count];
    for shard in state
        .topics
        .iter()
        .flat_map(|topic| &topic.partition_shards)
    {
        load[*shard as usize % shard_count] += 1;
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
    use crate::controller::store::{BrokerRecord, TopicRecord};
    use crate::limits::Limits;
    use proptest::prelude::*;

    fn rules() -> PlacementRules {
        PlacementRules {
            shard_count: 2,
            node_id: 1,
            broker_count: 5,
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

    /// Places topics of the given sizes one after another, as `changes` records them.
    fn place_topics(state: &mut ClusterState, sizes: &[usize]) {
        for (index, &size) in sizes.iter().enumerate() {
            let placed = place(state, size, state.topics.len(), &rules()).unwrap();
            assert_eq!(placed.len(), size, "every partition placed exactly once");
            state.topics.push(TopicRecord {
                name: format!("t{index}"),
                id: [0; 16],
                partition_shards: placed.iter().map(|placed| placed.shard).collect(),
                overrides: Vec::new(),
                partition_brokers: placed.iter().map(|placed| placed.broker).collect(),
            });
        }
    }

    fn per_broker(state: &ClusterState) -> BTreeMap<i32, usize> {
        let mut load = BTreeMap::new();
        for broker in state
            .topics
            .iter()
            .flat_map(|topic| &topic.partition_brokers)
        {
            *load.entry(*broker).or_insert(0) += 1;
        }
        load
    }

    proptest! {
        /// Any brokers (some fenced, various shard counts) and any sequence of topic sizes:
        /// every partition lands once on a live broker and a shard it has, and leaders stay
        /// within one partition of each other across the live brokers.
        #[test]
        fn partitions_go_once_to_live_brokers_balanced_within_one(
            brokers in proptest::collection::btree_map(0..20_i32, (1..4_u32, proptest::bool::weighted(0.3)), 1..7),
            sizes in proptest::collection::vec(1..40_usize, 1..12),
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
                prop_assert!(place(&state, 1, 0, &rules()).is_err());
                return Ok(());
            }
            place_topics(&mut state, &sizes);
            let total: usize = sizes.iter().sum();
            let load = per_broker(&state);
            prop_assert_eq!(load.values().sum::<usize>(), total);
            for broker in load.keys() {
                prop_assert!(live.contains_key(broker), "fenced or unknown broker {} chosen", broker);
            }
            let counts: Vec<usize> = live.keys().map(|node| load.get(node).copied().unwrap_or(0)).collect();
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            prop_assert!(max - min <= 1, "leaders per broker {:?}", counts);
            for topic in &state.topics {
                for (shard, broker) in topic.partition_shards.iter().zip(&topic.partition_brokers) {
                    prop_assert!(*shard < live[broker], "shard {} of broker {}", shard, broker);
                }
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
        place_topics(&mut state, &[1, 1, 1, 6]);
        let placed: Vec<&[i32]> = state
            .topics
            .iter()
            .map(|topic| topic.partition_brokers.as_slice())
            .collect();
        // One-partition topics spread instead of piling on broker 1; the fourth topic starts
        // at its ordinal (3 % 3 = broker 1) and goes round.
        assert_eq!(placed, [&[1][..], &[2], &[3], &[1, 2, 3, 1, 2, 3]]);
        // A broker that comes back with nothing gets the next partitions first.
        state.brokers.push(broker(4, 2, false));
        let next = place(&state, 4, 0, &rules()).unwrap();
        let brokers: Vec<i32> = next.iter().map(|placed| placed.broker).collect();
        assert_eq!(brokers, [4, 4, 4, 1]);
        let shards: Vec<u32> = next.iter().map(|placed| placed.shard).collect();
        assert_eq!(shards[..3], [0, 1, 0], "its shards filled evenly");
    }

    #[test]
    fn a_cluster_without_live_brokers_places_nothing_and_one_node_places_on_itself() {
        let state = ClusterState {
            brokers: vec![broker(1, 1, true)],
            ..ClusterState::default()
        };
        assert!(place(&state, 1, 0, &rules())
            .unwrap_err()
            .contains("no broker"));
        let one_node = PlacementRules {
            clustered: false,
            node_id: 7,
            ..rules()
        };
        let placed = place(&state, 3, 0, &one_node).unwrap();
        assert!(placed.iter().all(|placed| placed.broker == 7));
        assert_eq!(
            placed.iter().map(|placed| placed.shard).collect::<Vec<_>>(),
            [0, 1, 0]
        );
        assert!(place_on(&state, &[1], &rules())
            .unwrap_err()
            .contains("broker 1"));
    }
}
