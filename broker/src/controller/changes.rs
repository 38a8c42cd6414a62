//! Pure state transitions of the controller: each takes the cluster state and a request and
//! returns per-topic outcomes, changing the state only for topics that succeed. No IO, so
//! every rule here is unit-tested directly.

use std::collections::BTreeSet;

use uuid::Uuid;

use crate::controller::calls::{
    ConfigChange, ConfigOperation, ControllerCall, NewTopic, PartitionReassignment, PlacementRules,
    TopicOutcome, TopicRef,
};
use crate::controller::store::{
    ClusterState, ConfigEntry, PartitionRecord, ReplicaRecord, TopicRecord,
};
use crate::controller::{placement, reassignment};
use crate::error_codes as codes;
use crate::metadata::is_internal_topic;
use crate::topic_config::validate_override;

/// Why `__consumer_offsets` cannot be deleted or grown by clients.
const INTERNAL_TOPIC_MESSAGE: &str =
    "__consumer_offsets is internal: the group coordinator owns it";

/// The name whose partition 0 directory holds the controller's Raft log
/// (`cluster::controller_group::METADATA_LOG_DIR`), as Kafka's `KRaft` log is named.
pub const CONTROLLER_LOG_TOPIC: &str = "__cluster_metadata";

/// Kafka's limit on topic name length (so `<topic>-<partition>` fits a file name).
const TOPIC_NAME_BYTES_MAX: usize = 249;

pub fn apply(
    state: &mut ClusterState,
    call: ControllerCall,
    rules: &PlacementRules,
) -> Vec<TopicOutcome> {
    match call {
        ControllerCall::CreateTopics {
            topics,
            validate_only,
        } => topics
            .into_iter()
            .map(|topic| create_topic(state, topic, validate_only, rules))
            .collect(),
        ControllerCall::DeleteTopics { topics } => topics
            .into_iter()
            .map(|topic| delete_topic(state, &topic))
            .collect(),
        ControllerCall::CreatePartitions {
            topics,
            validate_only,
        } => topics
            .into_iter()
            .map(|growth| {
                add_partitions(
                    state,
                    &growth.name,
                    growth.total,
                    &growth.assignment,
                    validate_only,
                    rules,
                )
            })
            .collect(),
        ControllerCall::AlterConfigs {
            changes,
            validate_only,
        } => changes
            .into_iter()
            .map(|change| alter_configs(state, change, validate_only))
            .collect(),
        ControllerCall::AlterReassignments {
            partitions,
            allow_replication_factor_change,
        } => partitions
            .into_iter()
            .map(|entry| reassign(state, &entry, allow_replication_factor_change, rules))
            .collect(),
        ControllerCall::ReportOffline { .. } => unreachable!("handled by Controller::execute"),
    }
}

/// `AlterPartitionReassignments` of one partition (`reassignment::alter`), after v1's
/// replication-factor check.
fn reassign(
    state: &mut ClusterState,
    entry: &PartitionReassignment,
    allow_replication_factor_change: bool,
    rules: &PlacementRules,
) -> TopicOutcome {
    let mut result = TopicOutcome::ok(&entry.topic, Uuid::nil(), entry.partition);
    let current = state
        .topics
        .iter()
        .find(|topic| topic.name == entry.topic)
        .and_then(|topic| topic.partitions.get(usize::try_from(entry.partition).ok()?))
        .map(|record| record.replicas.len());
    if let (false, Some(current), Some(wanted)) = (
        allow_replication_factor_change,
        current,
        entry.replicas.as_ref(),
    ) {
        if wanted.len() != current && !wanted.is_empty() {
            result.error_code = codes::INVALID_REPLICATION_FACTOR;
            result.message = Some(format!(
                "The replication factor is changed from {current} to {}",
                wanted.len()
            ));
            return result;
        }
    }
    if let Err((code, message)) = reassignment::alter(
        state,
        &entry.topic,
        entry.partition,
        entry.replicas.as_deref(),
        rules,
    ) {
        result.error_code = code;
        result.message = Some(message);
    }
    result
}

/// Kafka's rule, and not the controller log's name: its partition 0 directory is the
/// controller's Raft log (Kafka reserves the name too).
fn validate_new_topic_name(name: &str) -> Result<(), String> {
    validate_topic_name(name)?;
    if name == CONTROLLER_LOG_TOPIC {
        return Err(format!(
            "{CONTROLLER_LOG_TOPIC} is reserved for the controller's log"
        ));
    }
    Ok(())
}

/// Kafka's rule: 1-249 bytes of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "topic name must be 1 to {TOPIC_NAME_BYTES_MAX} bytes"
        ));
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be . or ..".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} contains {bad:?}; allowed: ASCII letters, digits, '.', '_', '-'"
        ));
    }
    Ok(())
}

fn create_topic(
    state: &mut ClusterState,
    topic: NewTopic,
    validate_only: bool,
    rules: &PlacementRules,
) -> TopicOutcome {
    if let Err(reason) = validate_new_topic_name(&topic.name) {
        return TopicOutcome::error(&topic.name, codes::INVALID_TOPIC_EXCEPTION, reason);
    }
    if state
        .topics
        .iter()
        .any(|existing| existing.name == topic.name)
    {
        return TopicOutcome::error(
            &topic.name,
            codes::TOPIC_ALREADY_EXISTS,
            format!("topic {} already exists", topic.name),
        );
    }
    if state.topics.len() >= rules.limits.topics_max {
        return TopicOutcome::error(
            &topic.name,
            codes::POLICY_VIOLATION,
            format!(
                "the cluster holds its maximum of {} topics",
                rules.limits.topics_max
            ),
        );
    }
    let assigned = if topic.manual_assignment.is_empty() {
        None
    } else {
        match manual_assignment(state, &topic.manual_assignment, rules) {
            Ok(placed) => Some(placed),
            Err(reason) => {
                return TopicOutcome::error(&topic.name, codes::INVALID_REPLICA_ASSIGNMENT, reason)
            }
        }
    };
    let replication_factor =
        match replication_factor(state, assigned.as_deref(), topic.replication_factor, rules) {
            Ok(factor) => factor,
            Err(reason) => {
                return TopicOutcome::error(&topic.name, codes::INVALID_REPLICATION_FACTOR, reason)
            }
        };
    let partitions = if let Some(placed) = &assigned {
        placed.len() as i32
    } else if topic.partitions == -1 {
        rules.default_partitions
    } else {
        topic.partitions
    };
    if partitions < 1 || partitions > rules.limits.topic_partitions_max {
        return TopicOutcome::error(
            &topic.name,
            codes::INVALID_PARTITIONS,
            format!(
                "partitions must be 1 to {}",
                rules.limits.topic_partitions_max
            ),
        );
    }
    let overrides = match new_overrides(topic.configs) {
        Ok(overrides) => overrides,
        Err(reason) => return TopicOutcome::error(&topic.name, codes::INVALID_CONFIG, reason),
    };
    let id = Uuid::new_v4();
    // The topic's ordinal is its round-robin start offset across brokers.
    let placed = match assigned.map_or_else(
        || {
            placement::place(
                state,
                partitions as usize,
                replication_factor as usize,
                state.topics.len(),
                rules,
            )
        },
        Ok,
    ) {
        Ok(placed) => placed,
        Err(reason) => {
            return TopicOutcome::error(&topic.name, codes::INVALID_REPLICATION_FACTOR, reason)
        }
    };
    if !validate_only {
        let partitions = placed
            .into_iter()
            .map(|replicas| PartitionRecord::placed(replicas, state.take_group_id()))
            .collect();
        state.topics.push(TopicRecord {
            name: topic.name.clone(),
            id: id.into_bytes(),
            partitions,
            overrides,
        });
    }
    TopicOutcome::ok(&topic.name, id, partitions).with_replication_factor(replication_factor)
}

/// A new topic's replication factor: its replica lists' length, or the one asked for (-1:
/// `default.replication.factor`), which must be 1 to the brokers available (Kafka's check
/// and message).
fn replication_factor(
    state: &ClusterState,
    assigned: Option<&[Vec<ReplicaRecord>]>,
    asked: i16,
    rules: &PlacementRules,
) -> Result<i16, String> {
    let factor = match (assigned, asked) {
        (Some(placed), _) => placed[0].len() as i16,
        (None, -1) => rules.default_replication_factor,
        (None, asked) => asked,
    };
    if factor < 1 {
        return Err(
            "Replication factor must be larger than 0, or -1 to use the default value.".into(),
        );
    }
    let available = placement::available_brokers(state, rules);
    if factor as usize > available {
        return Err(placement::unreachable_replication_factor(
            factor as usize,
            available,
        ));
    }
    Ok(factor)
}

/// A new topic's config overrides, each validated (entries without a value are skipped).
fn new_overrides(configs: Vec<(String, Option<String>)>) -> Result<Vec<ConfigEntry>, String> {
    let mut overrides = Vec::new();
    for (key, value) in configs {
        let Some(value) = value else { continue };
        validate_override(&key, &value)?;
        overrides.push(ConfigEntry { key, value });
    }
    Ok(overrides)
}

/// Where a client's replica lists put each partition (Kafka's checks): every list names the
/// same number of distinct, live brokers; on a one-node broker, only this broker.
fn manual_assignment(
    state: &ClusterState,
    assignment: &[Vec<i32>],
    rules: &PlacementRules,
) -> Result<Vec<Vec<ReplicaRecord>>, String> {
    let replication_factor = assignment[0].len();
    for (partition, brokers) in assignment.iter().enumerate() {
        if brokers.is_empty() {
            return Err(format!("partition {partition} has an empty replica list"));
        }
        if brokers.len() != replication_factor {
            return Err(format!(
                "all partitions need the same number of replicas: partition {partition} has {}, \
                 partition 0 has {replication_factor}",
                brokers.len()
            ));
        }
        if let Some(twice) = brokers
            .iter()
            .enumerate()
            .find_map(|(at, broker)| brokers[..at].contains(broker).then_some(*broker))
        {
            return Err(format!(
                "partition {partition} names broker {twice} more than once"
            ));
        }
        if !rules.clustered && brokers.as_slice() != [rules.node_id] {
            return Err(format!("the only broker is node {}", rules.node_id));
        }
    }
    if !rules.clustered {
        // Where on this broker is the shards' business, as for any new partition.
        return placement::place(state, assignment.len(), 1, 0, rules);
    }
    placement::place_on(state, assignment)
}

fn delete_topic(state: &mut ClusterState, topic: &TopicRef) -> TopicOutcome {
    let position = match topic {
        TopicRef::Name(name) => state.topics.iter().position(|record| &record.name == name),
        TopicRef::Id(id) => state
            .topics
            .iter()
            .position(|record| record.id == id.into_bytes()),
    };
    match (position, topic) {
        (Some(position), _) if is_internal_topic(&state.topics[position].name) => {
            TopicOutcome::error(
                &state.topics[position].name.clone(),
                codes::INVALID_REQUEST,
                INTERNAL_TOPIC_MESSAGE,
            )
        }
        (Some(position), _) => {
            let record = state.topics.remove(position);
            TopicOutcome::ok(
                &record.name,
                Uuid::from_bytes(record.id),
                record.partition_count() as i32,
            )
        }
        (None, TopicRef::Name(name)) => TopicOutcome::error(
            name,
            codes::UNKNOWN_TOPIC_OR_PARTITION,
            format!("no topic {name}"),
        ),
        (None, TopicRef::Id(id)) => TopicOutcome::error(
            "",
            codes::UNKNOWN_TOPIC_ID,
            format!("no topic with id {id}"),
        ),
    }
}

fn add_partitions(
    state: &mut ClusterState,
    name: &str,
    total: i32,
    assignment: &[Vec<i32>],
    validate_only: bool,
    rules: &PlacementRules,
) -> TopicOutcome {
    let Some(index) = state.topics.iter().position(|record| record.name == name) else {
        return TopicOutcome::error(
            name,
            codes::UNKNOWN_TOPIC_OR_PARTITION,
            format!("no topic {name}"),
        );
    };
    if is_internal_topic(name) {
        // More partitions would move groups (placement is hash % count) away from their
        // committed offsets.
        return TopicOutcome::error(name, codes::INVALID_REQUEST, INTERNAL_TOPIC_MESSAGE);
    }
    let current = state.topics[index].partition_count() as i32;
    if total <= current {
        return TopicOutcome::error(
            name,
            codes::INVALID_PARTITIONS,
            format!("topic {name} has {current} partitions; the new count must be larger"),
        );
    }
    if total > rules.limits.topic_partitions_max {
        return TopicOutcome::error(
            name,
            codes::INVALID_PARTITIONS,
            format!(
                "partitions must be at most {}",
                rules.limits.topic_partitions_max
            ),
        );
    }
    let added = (total - current) as usize;
    // New partitions get as many replicas as the topic's first one has.
    let replication_factor = state.topics[index]
        .partitions
        .first()
        .map_or(1, |partition| partition.replicas.len().max(1));
    let placed = if assignment.is_empty() {
        // Continues the topic's round-robin where its existing partitions left it.
        let start = index + current as usize;
        match placement::place(state, added, replication_factor, start, rules) {
            Ok(placed) => placed,
            Err(reason) => {
                return TopicOutcome::error(name, codes::INVALID_REPLICATION_FACTOR, reason)
            }
        }
    } else if assignment.len() != added {
        return TopicOutcome::error(
            name,
            codes::INVALID_REPLICA_ASSIGNMENT,
            format!(
                "{} replica lists for {added} new partitions",
                assignment.len()
            ),
        );
    } else if assignment[0].len() != replication_factor {
        return TopicOutcome::error(
            name,
            codes::INVALID_REPLICA_ASSIGNMENT,
            format!(
                "the topic's partitions have {replication_factor} replicas; the new ones name {}",
                assignment[0].len()
            ),
        );
    } else {
        match manual_assignment(state, assignment, rules) {
            Ok(placed) => placed,
            Err(reason) => {
                return TopicOutcome::error(name, codes::INVALID_REPLICA_ASSIGNMENT, reason)
            }
        }
    };
    if !validate_only {
        for replicas in placed {
            let partition = PartitionRecord::placed(replicas, state.take_group_id());
            state.topics[index].partitions.push(partition);
        }
    }
    TopicOutcome::ok(name, Uuid::from_bytes(state.topics[index].id), total)
        .with_replication_factor(replication_factor as i16)
}

fn alter_configs(
    state: &mut ClusterState,
    change: ConfigChange,
    validate_only: bool,
) -> TopicOutcome {
    let Some(record) = state
        .topics
        .iter_mut()
        .find(|record| record.name == change.topic)
    else {
        return TopicOutcome::error(
            &change.topic,
            codes::UNKNOWN_TOPIC_OR_PARTITION,
            format!("no topic {}", change.topic),
        );
    };
    let mut overrides = if change.replace_all {
        Vec::new()
    } else {
        record.overrides.clone()
    };
    let mut seen = BTreeSet::new();
    for (key, operation) in change.operations {
        if !seen.insert(key.clone()) {
            return TopicOutcome::error(
                &change.topic,
                codes::INVALID_REQUEST,
                format!("{key} appears twice"),
            );
        }
        overrides.retain(|entry| entry.key != key);
        if let ConfigOperation::Set(value) = operation {
            if let Err(reason) = validate_override(&key, &value) {
                return TopicOutcome::error(&change.topic, codes::INVALID_CONFIG, reason);
            }
            overrides.push(ConfigEntry { key, value });
        }
    }
    overrides.sort_by(|a, b| a.key.cmp(&b.key));
    if !validate_only {
        record.overrides = overrides;
    }
    TopicOutcome::ok(
        &record.name,
        Uuid::from_bytes(record.id),
        record.partition_count() as i32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::calls::NewPartitions;
    use crate::limits::Limits;
    use crate::metadata::{OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC};

    fn rules(shard_count: usize) -> PlacementRules {
        PlacementRules {
            shard_count,
            node_id: 0,
            clustered: false,
            default_replication_factor: 1,
            default_partitions: 3,
            limits: Limits::default(),
            topic_defaults: crate::settings::Effective::defaults().topic_defaults(),
        }
    }

    fn new_topic(name: &str, partitions: i32) -> NewTopic {
        NewTopic {
            name: name.into(),
            partitions,
            replication_factor: -1,
            manual_assignment: vec![],
            configs: vec![],
        }
    }

    fn create(state: &mut ClusterState, topic: NewTopic, shards: usize) -> TopicOutcome {
        apply(
            state,
            ControllerCall::CreateTopics {
                topics: vec![topic],
                validate_only: false,
            },
            &rules(shards),
        )
        .remove(0)
    }

    #[test]
    fn the_controller_log_name_and_replicas_on_several_brokers_are_refused() {
        let mut state = ClusterState::default();
        let outcome = create(&mut state, new_topic(CONTROLLER_LOG_TOPIC, 1), 1);
        assert_eq!(outcome.error_code, codes::INVALID_TOPIC_EXCEPTION);
        let mut replicated = new_topic("replicated", 1);
        replicated.replication_factor = 3;
        let outcomes = apply(
            &mut state,
            ControllerCall::CreateTopics {
                topics: vec![replicated, new_topic("single", 2)],
                validate_only: false,
            },
            &rules(1),
        );
        assert_eq!(outcomes[0].error_code, codes::INVALID_REPLICATION_FACTOR);
        assert_eq!(
            outcomes[0].message.as_deref(),
            Some(
                "Unable to replicate the partition 3 time(s): The target replication factor of \
                 3 cannot be reached because only 1 broker(s) are registered."
            )
        );
        assert_eq!(outcomes[1].error_code, codes::NONE);
        let names: Vec<&str> = state
            .topics
            .iter()
            .map(|topic| topic.name.as_str())
            .collect();
        assert_eq!(names, ["single"]);
    }

    fn cluster_of(live: &[i32], fenced: &[i32]) -> (ClusterState, PlacementRules) {
        let broker = |node_id: i32, fenced: bool| crate::controller::store::BrokerRecord {
            node_id,
            incarnation: 1,
            listeners: Vec::new(),
            rack: None,
            shard_count: 2,
            fenced,
        };
        let mut brokers: Vec<_> = live
            .iter()
            .map(|node| broker(*node, false))
            .chain(fenced.iter().map(|node| broker(*node, true)))
            .collect();
        brokers.sort_by_key(|broker| broker.node_id);
        let state = ClusterState {
            brokers,
            ..ClusterState::default()
        };
        let rules = PlacementRules {
            clustered: true,
            node_id: live[0],
            ..rules(2)
        };
        (state, rules)
    }

    fn create_with(
        state: &mut ClusterState,
        topic: NewTopic,
        rules: &PlacementRules,
    ) -> TopicOutcome {
        let call = ControllerCall::CreateTopics {
            topics: vec![topic],
            validate_only: false,
        };
        apply(state, call, rules).remove(0)
    }

    fn replica_lists(record: &TopicRecord) -> Vec<Vec<i32>> {
        record
            .partitions
            .iter()
            .map(|p| p.replicas.iter().map(|r| r.broker).collect())
            .collect()
    }

    #[test]
    fn a_cluster_places_up_to_its_live_brokers_replicas_and_default_is_the_setting() {
        let (mut state, rules) = cluster_of(&[1, 2, 3], &[4]);
        let three = NewTopic {
            replication_factor: 3,
            ..new_topic("three", 3)
        };
        let outcome = create_with(&mut state, three, &rules);
        assert_eq!(
            (outcome.error_code, outcome.replication_factor),
            (codes::NONE, 3)
        );
        assert_eq!(
            replica_lists(&state.topics[0]),
            [vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]]
        );
        let four = NewTopic {
            replication_factor: 4,
            ..new_topic("four", 1)
        };
        let refused = create_with(&mut state, four, &rules);
        assert_eq!(refused.error_code, codes::INVALID_REPLICATION_FACTOR);
        assert!(refused
            .message
            .unwrap()
            .contains("factor of 4 cannot be reached because only 3 broker(s)"));
        // -1 takes default.replication.factor.
        let by_default = PlacementRules {
            default_replication_factor: 2,
            ..rules.clone()
        };
        let outcome = create_with(&mut state, new_topic("dflt", 2), &by_default);
        assert_eq!(outcome.replication_factor, 2);
        assert!(replica_lists(&state.topics[1])
            .iter()
            .all(|list| list.len() == 2));
        // Growing keeps the topic's replication factor; group ids are never reused, even by
        // a topic recreated under the same name.
        let grow = ControllerCall::CreatePartitions {
            topics: vec![NewPartitions {
                name: "three".into(),
                total: 5,
                assignment: Vec::new(),
            }],
            validate_only: false,
        };
        assert_eq!(apply(&mut state, grow, &rules)[0].error_code, codes::NONE);
        assert!(replica_lists(&state.topics[0])
            .iter()
            .all(|list| list.len() == 3));
        let delete = ControllerCall::DeleteTopics {
            topics: vec![TopicRef::Name("three".into())],
        };
        apply(&mut state, delete, &rules);
        let again = NewTopic {
            replication_factor: 3,
            ..new_topic("three", 3)
        };
        create_with(&mut state, again, &rules);
        let groups: Vec<u64> = state
            .topics
            .iter()
            .flat_map(|topic| topic.partitions.iter().map(|p| p.group_id))
            .collect();
        assert_eq!(
            groups,
            [4, 5, 8, 9, 10],
            "dflt's 4-5; the recreated topic's after 6-7"
        );
    }

    #[test]
    fn manual_assignments_are_honoured_and_validated() {
        let (mut state, rules) = cluster_of(&[1, 2, 3], &[4]);
        let assigned = |name: &str, lists: Vec<Vec<i32>>| NewTopic {
            manual_assignment: lists,
            ..new_topic(name, -1)
        };
        let outcome = create_with(
            &mut state,
            assigned("m", vec![vec![3, 1], vec![1, 2]]),
            &rules,
        );
        assert_eq!(
            (
                outcome.error_code,
                outcome.partitions,
                outcome.replication_factor
            ),
            (codes::NONE, 2, 2)
        );
        assert_eq!(replica_lists(&state.topics[0]), [vec![3, 1], vec![1, 2]]);
        for (lists, why) in [
            (vec![vec![1, 1]], "more than once"),
            (vec![vec![1, 2], vec![3]], "same number of replicas"),
            (vec![vec![]], "empty replica list"),
            (vec![vec![4]], "broker 4 is not registered and alive"),
            (vec![vec![9]], "broker 9 is not registered and alive"),
        ] {
            let refused = create_with(&mut state, assigned("bad", lists.clone()), &rules);
            assert_eq!(
                refused.error_code,
                codes::INVALID_REPLICA_ASSIGNMENT,
                "{lists:?}"
            );
            assert!(
                refused.message.as_deref().unwrap().contains(why),
                "{lists:?}: {:?}",
                refused.message
            );
        }
        let grow = |lists: Vec<Vec<i32>>| ControllerCall::CreatePartitions {
            topics: vec![NewPartitions {
                name: "m".into(),
                total: 3,
                assignment: lists,
            }],
            validate_only: false,
        };
        assert_eq!(
            apply(&mut state, grow(vec![vec![2]]), &rules)[0].error_code,
            codes::INVALID_REPLICA_ASSIGNMENT,
            "the topic has two replicas per partition"
        );
        assert_eq!(
            apply(&mut state, grow(vec![vec![2, 3], vec![3, 1]]), &rules)[0].error_code,
            codes::INVALID_REPLICA_ASSIGNMENT,
            "two lists for one new partition"
        );
        assert_eq!(
            apply(&mut state, grow(vec![vec![2, 3]]), &rules)[0].error_code,
            codes::NONE
        );
        assert_eq!(replica_lists(&state.topics[0])[2], [2, 3]);
    }

    #[test]
    fn the_internal_topics_cannot_be_deleted_or_grown() {
        for internal in [OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC] {
            let mut state = ClusterState::default();
            create(&mut state, new_topic(internal, 8), 2);
            let rules = rules(2);
            let grow = ControllerCall::CreatePartitions {
                topics: vec![NewPartitions {
                    name: internal.into(),
                    total: 16,
                    assignment: Vec::new(),
                }],
                validate_only: false,
            };
            assert_eq!(
                apply(&mut state, grow, &rules)[0].error_code,
                codes::INVALID_REQUEST
            );
            let delete = ControllerCall::DeleteTopics {
                topics: vec![TopicRef::Name(internal.into())],
            };
            assert_eq!(
                apply(&mut state, delete, &rules)[0].error_code,
                codes::INVALID_REQUEST
            );
            assert_eq!(state.topics[0].partition_count(), 8);
        }
    }

    #[test]
    fn partitions_are_balanced_across_shards_and_topics() {
        let mut state = ClusterState::default();
        assert_eq!(
            create(&mut state, new_topic("a", 3), 2).error_code,
            codes::NONE
        );
        assert_eq!(
            create(&mut state, new_topic("b", 3), 2).error_code,
            codes::NONE
        );
        let shards = |topic: &TopicRecord| -> Vec<u32> {
            topic
                .partitions
                .iter()
                .map(|p| p.replicas[0].shard)
                .collect()
        };
        assert_eq!(shards(&state.topics[0]), vec![0, 1, 0]);
        assert_eq!(
            shards(&state.topics[1]),
            vec![1, 0, 1],
            "b starts on the lighter shard"
        );
    }

    #[test]
    fn creation_rules_give_kafka_error_codes() {
        let mut state = ClusterState::default();
        assert_eq!(
            create(&mut state, new_topic("t", -1), 1).partitions,
            3,
            "default partition count"
        );
        assert_eq!(
            create(&mut state, new_topic("t", 1), 1).error_code,
            codes::TOPIC_ALREADY_EXISTS
        );
        assert_eq!(
            create(&mut state, new_topic("bad/name", 1), 1).error_code,
            codes::INVALID_TOPIC_EXCEPTION
        );
        assert_eq!(
            create(&mut state, new_topic("zero", 0), 1).error_code,
            codes::INVALID_PARTITIONS
        );
        let replicated = NewTopic {
            replication_factor: 3,
            ..new_topic("r", 1)
        };
        assert_eq!(
            create(&mut state, replicated, 1).error_code,
            codes::INVALID_REPLICATION_FACTOR
        );
        let compacted = NewTopic {
            configs: vec![("cleanup.policy".into(), Some("compacted".into()))],
            ..new_topic("c", 1)
        };
        assert_eq!(
            create(&mut state, compacted, 1).error_code,
            codes::INVALID_CONFIG
        );
        assert_eq!(state.topics.len(), 1, "failed creations leave no trace");
    }

    #[test]
    fn replication_factor_and_assignments_follow_the_cluster_settings() {
        let mut state = ClusterState::default();
        let apply_with = |state: &mut ClusterState, topic: NewTopic, rules: &PlacementRules| {
            let call = ControllerCall::CreateTopics {
                topics: vec![topic],
                validate_only: false,
            };
            apply(state, call, rules).remove(0)
        };
        let node_7 = PlacementRules {
            node_id: 7,
            ..rules(1)
        };
        // -1 asks for default.replication.factor, which cannot exceed the brokers there are.
        let too_many_by_default = PlacementRules {
            default_replication_factor: 2,
            ..rules(1)
        };
        let outcome = apply_with(&mut state, new_topic("d", 1), &too_many_by_default);
        assert_eq!(outcome.error_code, codes::INVALID_REPLICATION_FACTOR);
        assert!(outcome.message.unwrap().contains("replication factor of 2"));
        // A manual assignment names this broker by its node.id, not a fixed 0.
        let on = |replicas: Vec<i32>| NewTopic {
            partitions: -1,
            manual_assignment: vec![replicas],
            ..new_topic("m", -1)
        };
        assert_eq!(
            apply_with(&mut state, on(vec![0]), &node_7).error_code,
            codes::INVALID_REPLICA_ASSIGNMENT
        );
        assert_eq!(
            apply_with(&mut state, on(vec![7]), &node_7).error_code,
            codes::NONE
        );
        assert_eq!(state.topics.len(), 1);
    }

    #[test]
    fn validate_only_changes_nothing() {
        let mut state = ClusterState::default();
        let outcomes = apply(
            &mut state,
            ControllerCall::CreateTopics {
                topics: vec![new_topic("v", 2)],
                validate_only: true,
            },
            &rules(1),
        );
        assert_eq!(outcomes[0].error_code, codes::NONE);
        assert!(state.topics.is_empty());
    }

    #[test]
    fn partitions_only_grow_and_deleted_topics_are_gone() {
        let mut state = ClusterState::default();
        create(&mut state, new_topic("g", 2), 2);
        let grow = |state: &mut ClusterState, total| {
            apply(
                state,
                ControllerCall::CreatePartitions {
                    topics: vec![NewPartitions {
                        name: "g".into(),
                        total,
                        assignment: Vec::new(),
                    }],
                    validate_only: false,
                },
                &rules(2),
            )
            .remove(0)
        };
        assert_eq!(grow(&mut state, 2).error_code, codes::INVALID_PARTITIONS);
        assert_eq!(grow(&mut state, 5).error_code, codes::NONE);
        assert_eq!(state.topics[0].partition_count(), 5);
        let deleted = apply(
            &mut state,
            ControllerCall::DeleteTopics {
                topics: vec![TopicRef::Name("g".into()), TopicRef::Name("g".into())],
            },
            &rules(2),
        );
        assert_eq!(deleted[0].error_code, codes::NONE);
        assert_eq!(deleted[1].error_code, codes::UNKNOWN_TOPIC_OR_PARTITION);
        assert!(state.topics.is_empty());
    }

    #[test]
    fn incremental_and_full_config_changes() {
        let mut state = ClusterState::default();
        create(&mut state, new_topic("cfg", 1), 1);
        let alter = |state: &mut ClusterState, replace_all, operations| {
            let change = ConfigChange {
                topic: "cfg".into(),
                replace_all,
                operations,
            };
            apply(
                state,
                ControllerCall::AlterConfigs {
                    changes: vec![change],
                    validate_only: false,
                },
                &rules(1),
            )
            .remove(0)
        };
        let set = |key: &str, value: &str| (key.to_string(), ConfigOperation::Set(value.into()));
        assert_eq!(
            alter(
                &mut state,
                false,
                vec![set("retention.ms", "1000"), set("segment.bytes", "2000000")]
            )
            .error_code,
            codes::NONE
        );
        assert_eq!(
            alter(
                &mut state,
                false,
                vec![("segment.bytes".into(), ConfigOperation::Delete)]
            )
            .error_code,
            codes::NONE
        );
        assert_eq!(
            state.topics[0].overrides,
            vec![ConfigEntry {
                key: "retention.ms".into(),
                value: "1000".into()
            }]
        );
        assert_eq!(
            alter(&mut state, false, vec![set("retention.ms", "x")]).error_code,
            codes::INVALID_CONFIG
        );
        assert_eq!(
            alter(&mut state, true, vec![set("retention.bytes", "10")]).error_code,
            codes::NONE
        );
        assert_eq!(
            state.topics[0].overrides,
            vec![ConfigEntry {
                key: "retention.bytes".into(),
                value: "10".into()
            }]
        );
    }
}
