//! `ringfeed cluster status`: the brokers (id, address, rack), the controller, how many
//! partitions each broker leads and is the preferred leader of (first replica; leader
//! balancing moves leadership there), how many partitions another replica leads, and the partitions that are under-replicated (fewer in-sync
//! replicas than replicas) or offline (no leader), from `Metadata` of every topic and
//! `DescribeCluster` (where the broker serves it; the `Metadata` broker list otherwise).
//!
//! `ringfeed cluster elect-leaders [--topic T [--partition P]]`: Kafka's preferred leader
//! election (`ElectLeaders`, type 0, as `kafka-leader-election.sh --election-type PREFERRED`):
//! every partition, one topic's, or one partition goes back to its preferred replica; prints
//! each partition's outcome.
//!
//! `ringfeed cluster reassign`: gives a partition a new replica list, or cancels its move,
//! with `AlterPartitionReassignments` on the controller (Kafka's `kafka-reassign-partitions
//! --execute` / `--cancel` for one partition); `ringfeed cluster reassignments` lists the
//! moves in progress (`ListPartitionReassignments`, `--list`).

use std::collections::BTreeMap;

use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, BrokerId, DescribeClusterRequest, DescribeClusterResponse,
    ElectLeadersRequest, ListPartitionReassignmentsRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::client::Cluster;
use super::{check_error, print_table, CliResult, ConnectArgs, Outcome};

#[derive(clap::Subcommand, Clone)]
pub enum ClusterCommand {
    /// Brokers, controller, leaders per broker, under-replicated and offline partitions.
    Status,
    /// Moves leadership back to each partition's preferred replica (first in its replica
    /// list): every partition, one topic's, or one partition.
    ElectLeaders {
        /// Only this topic's partitions (all of them unless --partition).
        #[arg(long)]
        topic: Option<String>,
        /// Only this partition of --topic.
        #[arg(long, requires = "topic")]
        partition: Option<i32>,
        /// How long the brokers may take to move the leaders, in milliseconds (the broker
        /// waits at most 300 s). Not `--timeout-ms`: that bounds each socket operation; the
        /// answer is awaited for both added.
        #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(i32).range(0..=300_000))]
        election_timeout_ms: i32,
    },
    /// Give a partition a new replica list (first = preferred leader), or cancel its move.
    Reassign {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        /// The new replicas by node id, comma-separated (e.g. 2,3,4).
        #[arg(
            long,
            value_delimiter = ',',
            required_unless_present = "cancel",
            conflicts_with = "cancel"
        )]
        replicas: Vec<i32>,
        /// Cancel the partition's move in progress.
        #[arg(long)]
        cancel: bool,
    },
    /// The partition moves in progress: replicas, adding and removing ones.
    Reassignments,
}

pub fn run(connect: &ConnectArgs, command: ClusterCommand) -> CliResult<Outcome> {
    let mut cluster = super::client::connect(connect)?;
    match command {
        ClusterCommand::Status => status(&mut cluster),
        ClusterCommand::ElectLeaders {
            topic,
            partition,
            election_timeout_ms,
        } => elect_leaders(&mut cluster, topic, partition, election_timeout_ms),
        ClusterCommand::Reassign {
            topic,
            partition,
            replicas,
            cancel,
        } => reassign(
            &mut cluster,
            &topic,
            partition,
            (!cancel).then_some(replicas),
        ),
        ClusterCommand::Reassignments => reassignments(&mut cluster),
    }
}

/// Kafka's `ELECTION_NOT_NEEDED`: the partition already has its preferred leader.
const ELECTION_NOT_NEEDED: i16 = 84;

/// The `topic_partitions` of the request: null (every partition) without `--topic`; the
/// topic's partitions from `Metadata` without `--partition`.
fn election_scope(
    cluster: &mut Cluster,
    topic: Option<String>,
    partition: Option<i32>,
) -> CliResult<Option<Vec<TopicPartitions>>> {
    let Some(topic) = topic else {
        return Ok(None);
    };
    let partitions = if let Some(partition) = partition {
        vec![partition]
    } else {
        let metadata = cluster.metadata(Some(std::slice::from_ref(&topic)))?;
        let described = metadata.topics.first();
        if let Some(described) = described {
            check_error(described.error_code, None, &format!("topic {topic}"))?;
        }
        described
            .map(|t| t.partitions.iter().map(|p| p.partition_index).collect())
            .unwrap_or_default()
    };
    Ok(Some(vec![TopicPartitions::default()
        .with_topic(TopicName(StrBytes::from_string(topic)))
        .with_partitions(partitions)]))
}

fn elect_leaders(
    cluster: &mut Cluster,
    topic: Option<String>,
    partition: Option<i32>,
    timeout_ms: i32,
) -> CliResult<Outcome> {
    let request = ElectLeadersRequest::default()
        .with_election_type(0)
        .with_topic_partitions(election_scope(cluster, topic, partition)?)
        .with_timeout_ms(timeout_ms);
    let connection = cluster.controller()?;
    // The broker holds the answer until the leaders moved or the election timeout passed.
    let socket_timeout = connection.timeout();
    let election_timeout = std::time::Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0));
    connection.set_read_timeout(socket_timeout + election_timeout)?;
    let response = connection.call(&request)?;
    connection.set_read_timeout(socket_timeout)?;
    check_error(response.error_code, None, "ElectLeaders")?;
    let mut failures = 0;
    let mut rows = Vec::new();
    for topic in &response.replica_election_results {
        for result in &topic.partition_result {
            let outcome = match result.error_code {
                0 => "elected".to_string(),
                ELECTION_NOT_NEEDED => "already on the preferred replica".to_string(),
                code => {
                    failures += 1;
                    super::describe_error(code, result.error_message.as_ref())
                }
            };
            rows.push(vec![
                topic.topic.0.to_string(),
                result.partition_id.to_string(),
                outcome,
            ]);
        }
    }
    if rows.is_empty() {
        println!("every partition is led by its preferred replica");
    } else {
        print_table(&["TOPIC", "PARTITION", "OUTCOME"], &rows);
    }
    Ok(Outcome::from_failures(failures))
}

/// `AlterPartitionReassignments` of one partition on the controller; prints what it did.
fn reassign(
    cluster: &mut Cluster,
    topic: &str,
    partition: i32,
    replicas: Option<Vec<i32>>,
) -> CliResult<Outcome> {
    let request = AlterPartitionReassignmentsRequest::default().with_topics(vec![
        ReassignableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(partition)
                .with_replicas(
                    replicas
                        .clone()
                        .map(|ids| ids.into_iter().map(BrokerId).collect()),
                )]),
    ]);
    let response = cluster.controller()?.call(&request)?;
    check_error(
        response.error_code,
        response.error_message.as_ref(),
        "AlterPartitionReassignments",
    )?;
    for result in response.responses.iter().flat_map(|t| &t.partitions) {
        check_error(
            result.error_code,
            result.error_message.as_ref(),
            &format!("{topic}-{}", result.partition_index),
        )?;
    }
    match replicas {
        Some(replicas) => println!(
            "{topic}-{partition}: reassignment to {} accepted",
            id_list(&replicas)
        ),
        None => println!("{topic}-{partition}: reassignment cancelled"),
    }
    Ok(Outcome::Success)
}

/// `ListPartitionReassignments` of every partition on the controller, as a table.
fn reassignments(cluster: &mut Cluster) -> CliResult<Outcome> {
    let request = ListPartitionReassignmentsRequest::default().with_topics(None);
    let response = cluster.controller()?.call(&request)?;
    check_error(
        response.error_code,
        response.error_message.as_ref(),
        "ListPartitionReassignments",
    )?;
    let brokers = |list: &[BrokerId]| id_list(&list.iter().map(|id| id.0).collect::<Vec<_>>());
    let rows: Vec<Vec<String>> = response
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(|p| {
                vec![
                    topic.name.0.to_string(),
                    p.partition_index.to_string(),
                    brokers(&p.replicas),
                    brokers(&p.adding_replicas),
                    brokers(&p.removing_replicas),
                ]
            })
        })
        .collect();
    println!("reassignments in progress: {}", rows.len());
    if !rows.is_empty() {
        print_table(
            &["TOPIC", "PARTITION", "REPLICAS", "ADDING", "REMOVING"],
            &rows,
        );
    }
    Ok(Outcome::Success)
}

/// A list of node ids for a table cell, `-` when empty.
fn id_list(ids: &[i32]) -> String {
    if ids.is_empty() {
        return "-".into();
    }
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// One broker as the status lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStatus {
    pub node_id: i32,
    pub address: String,
    pub rack: Option<String>,
    /// Partitions whose leader it is.
    pub leaders: usize,
    /// Partitions whose preferred leader (first replica) it is.
    pub preferred: usize,
}

/// One partition that needs attention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub in_sync: Vec<i32>,
}

/// What `cluster status` prints, computed from the broker's answers alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    pub cluster_id: Option<String>,
    pub controller_id: i32,
    pub brokers: Vec<BrokerStatus>,
    pub partitions: usize,
    pub under_replicated: Vec<PartitionStatus>,
    pub offline: Vec<PartitionStatus>,
    /// Partitions led by a broker missing from the broker list (fenced, or just gone).
    pub led_by_unlisted: usize,
    /// Partitions with a leader that is not their preferred replica (first in the list).
    pub not_on_preferred: usize,
}

impl ClusterStatus {
    /// From `Metadata` of every topic and, when served, `DescribeCluster` (whose broker list
    /// and controller win: it is the API Kafka's admin tools read them from).
    pub fn from_answers(
        metadata: &MetadataResponse,
        described: Option<&DescribeClusterResponse>,
    ) -> Self {
        let mut brokers: BTreeMap<i32, BrokerStatus> = BTreeMap::new();
        let mut add = |node_id: i32, host: &str, port: i32, rack: Option<&str>| {
            brokers.insert(
                node_id,
                BrokerStatus {
                    node_id,
                    address: format!("{host}:{port}"),
                    rack: rack.map(ToString::to_string),
                    leaders: 0,
                    preferred: 0,
                },
            );
        };
        let (cluster_id, controller_id) = if let Some(described) = described {
            for broker in &described.brokers {
                add(
                    broker.broker_id.0,
                    broker.host.as_str(),
                    broker.port,
                    broker.rack.as_deref(),
                );
            }
            (
                Some(described.cluster_id.to_string()),
                described.controller_id.0,
            )
        } else {
            for broker in &metadata.brokers {
                add(
                    broker.node_id.0,
                    broker.host.as_str(),
                    broker.port,
                    broker.rack.as_deref(),
                );
            }
            (
                metadata.cluster_id.as_ref().map(ToString::to_string),
                metadata.controller_id.0,
            )
        };
        let mut status = ClusterStatus {
            cluster_id,
            controller_id,
            brokers: Vec::new(),
            partitions: 0,
            under_replicated: Vec::new(),
            offline: Vec::new(),
            led_by_unlisted: 0,
            not_on_preferred: 0,
        };
        for topic in &metadata.topics {
            let name = topic.name.as_ref().map_or("", |name| name.0.as_str());
            for partition in &topic.partitions {
                status.partitions += 1;
                let described = PartitionStatus {
                    topic: name.to_string(),
                    partition: partition.partition_index,
                    leader: partition.leader_id.0,
                    replicas: partition.replica_nodes.iter().map(|id| id.0).collect(),
                    in_sync: partition.isr_nodes.iter().map(|id| id.0).collect(),
                };
                match brokers.get_mut(&described.leader) {
                    Some(leader) => leader.leaders += 1,
                    None if described.leader >= 0 => status.led_by_unlisted += 1,
                    None => {}
                }
                if let Some(&preferred) = described.replicas.first() {
                    if let Some(broker) = brokers.get_mut(&preferred) {
                        broker.preferred += 1;
                    }
                    if described.leader >= 0 && described.leader != preferred {
                        status.not_on_preferred += 1;
                    }
                }
                if described.leader < 0 {
                    status.offline.push(described);
                } else if described.in_sync.len() < described.replicas.len() {
                    status.under_replicated.push(described);
                }
            }
        }
        let order = |p: &PartitionStatus| (p.topic.clone(), p.partition);
        status.offline.sort_by_key(order);
        status.under_replicated.sort_by_key(order);
        status.brokers = brokers.into_values().collect();
        status
    }

    pub fn is_healthy(&self) -> bool {
        self.offline.is_empty() && self.under_replicated.is_empty()
    }
}

fn status(cluster: &mut Cluster) -> CliResult<Outcome> {
    let metadata = cluster.metadata(None)?;
    for topic in &metadata.topics {
        let name = topic.name.as_ref().map_or("?", |name| name.0.as_str());
        // A partition's own error (no leader, storage error) is what the status reports;
        // a topic-level error means its partitions are not in the answer.
        check_error(topic.error_code, None, &format!("topic {name}"))?;
    }
    let connection = cluster.any();
    let described = if connection.version::<DescribeClusterRequest>().is_ok() {
        let response = connection.call(&DescribeClusterRequest::default())?;
        check_error(
            response.error_code,
            response.error_message.as_ref(),
            "DescribeCluster",
        )?;
        Some(response)
    } else {
        None
    };
    let status = ClusterStatus::from_answers(&metadata, described.as_ref());
    print_status(&status);
    Ok(Outcome::Success)
}

fn print_status(status: &ClusterStatus) {
    println!(
        "cluster id: {}",
        status.cluster_id.as_deref().unwrap_or("(none)")
    );
    let controller = if status.controller_id < 0 {
        "(none)".to_string()
    } else {
        status.controller_id.to_string()
    };
    println!("controller: {controller}");
    println!(
        "healthy: {}",
        if status.is_healthy() { "yes" } else { "no" }
    );
    println!();
    let rows: Vec<Vec<String>> = status
        .brokers
        .iter()
        .map(|broker| {
            vec![
                broker.node_id.to_string(),
                broker.address.clone(),
                broker.rack.clone().unwrap_or_else(|| "-".into()),
                if broker.node_id == status.controller_id {
                    "yes".into()
                } else {
                    "no".into()
                },
                broker.leaders.to_string(),
                broker.preferred.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "BROKER",
            "ADDRESS",
            "RACK",
            "CONTROLLER",
            "LEADERS",
            "PREFERRED",
        ],
        &rows,
    );
    println!();
    println!("partitions: {}", status.partitions);
    if status.led_by_unlisted > 0 {
        println!("led by brokers not listed: {}", status.led_by_unlisted);
    }
    println!(
        "led by another than their preferred replica: {}",
        status.not_on_preferred
    );
    print_partitions("under-replicated partitions", &status.under_replicated);
    print_partitions("offline partitions", &status.offline);
}

fn print_partitions(title: &str, partitions: &[PartitionStatus]) {
    println!("{title}: {}", partitions.len());
    if partitions.is_empty() {
        return;
    }
    let ids = |ids: &[i32]| {
        ids.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let rows: Vec<Vec<String>> = partitions
        .iter()
        .map(|p| {
            vec![
                p.topic.clone(),
                p.partition.to_string(),
                p.leader.to_string(),
                ids(&p.replicas),
                ids(&p.in_sync),
            ]
        })
        .collect();
    print_table(&["TOPIC", "PARTITION", "LEADER", "REPLICAS", "ISR"], &rows);
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    use super::*;

    fn partition(
        index: i32,
        leader: i32,
        replicas: &[i32],
        isr: &[i32],
    ) -> MetadataResponsePartition {
        MetadataResponsePartition::default()
            .with_partition_index(index)
            .with_leader_id(BrokerId(leader))
            .with_replica_nodes(replicas.iter().copied().map(BrokerId).collect())
            .with_isr_nodes(isr.iter().copied().map(BrokerId).collect())
    }

    fn metadata() -> MetadataResponse {
        let broker = |id: i32| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(StrBytes::from_static_str("h"))
                .with_port(9000 + id)
        };
        MetadataResponse::default()
            .with_brokers(vec![broker(1), broker(2)])
            .with_controller_id(BrokerId(2))
            .with_cluster_id(Some(StrBytes::from_static_str("from-metadata")))
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("t"))))
                .with_partitions(vec![
                    partition(2, -1, &[3], &[]),
                    partition(0, 1, &[1, 2, 3], &[1, 2, 3]),
                    partition(1, 2, &[2, 3, 1], &[2]),
                    partition(3, 2, &[2], &[2]),
                    partition(4, 3, &[3], &[3]),
                ])])
    }

    #[test]
    fn status_counts_leaders_and_finds_the_partitions_needing_attention() {
        let status = ClusterStatus::from_answers(&metadata(), None);
        assert_eq!(status.cluster_id.as_deref(), Some("from-metadata"));
        assert_eq!(status.controller_id, 2);
        let leaders: Vec<(i32, usize)> = status
            .brokers
            .iter()
            .map(|b| (b.node_id, b.leaders))
            .collect();
        assert_eq!(leaders, vec![(1, 1), (2, 2)]);
        let preferred: Vec<(i32, usize)> = status
            .brokers
            .iter()
            .map(|b| (b.node_id, b.preferred))
            .collect();
        assert_eq!(preferred, vec![(1, 1), (2, 2)]);
        assert_eq!(
            status.not_on_preferred, 0,
            "partition 4 is led by its preferred 3, partition 2 by none"
        );
        assert_eq!(status.brokers[0].address, "h:9001");
        assert_eq!(status.partitions, 5);
        assert_eq!(
            status.led_by_unlisted, 1,
            "partition 4's leader 3 is not listed"
        );
        let under: Vec<i32> = status
            .under_replicated
            .iter()
            .map(|p| p.partition)
            .collect();
        assert_eq!(under, vec![1]);
        let offline: Vec<i32> = status.offline.iter().map(|p| p.partition).collect();
        assert_eq!(
            offline,
            vec![2],
            "no leader: offline, not also under-replicated"
        );
        assert!(!status.is_healthy());
    }

    #[test]
    fn a_partition_led_by_another_than_its_preferred_replica_is_counted() {
        let moved = metadata().with_topics(vec![MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("t"))))
            .with_partitions(vec![
                partition(0, 2, &[1, 2], &[1, 2]),
                partition(1, 2, &[2, 1], &[1, 2]),
            ])]);
        let status = ClusterStatus::from_answers(&moved, None);
        assert_eq!(status.not_on_preferred, 1);
        let counts: Vec<(i32, usize, usize)> = status
            .brokers
            .iter()
            .map(|b| (b.node_id, b.leaders, b.preferred))
            .collect();
        assert_eq!(counts, vec![(1, 0, 1), (2, 2, 1)]);
    }

    #[test]
    fn describe_cluster_names_the_brokers_and_controller_when_served() {
        let described = DescribeClusterResponse::default()
            .with_cluster_id(StrBytes::from_static_str("described"))
            .with_controller_id(BrokerId(3))
            .with_brokers(vec![DescribeClusterBroker::default()
                .with_broker_id(BrokerId(3))
                .with_host(StrBytes::from_static_str("x"))
                .with_port(1)
                .with_rack(Some(StrBytes::from_static_str("r1")))]);
        let status = ClusterStatus::from_answers(&metadata(), Some(&described));
        assert_eq!(status.cluster_id.as_deref(), Some("described"));
        assert_eq!(status.controller_id, 3);
        assert_eq!(status.brokers.len(), 1);
        assert_eq!(status.brokers[0].rack.as_deref(), Some("r1"));
        assert_eq!(status.brokers[0].leaders, 1);
        assert_eq!(status.led_by_unlisted, 3);
    }

    #[test]
    fn a_cluster_with_every_replica_in_sync_is_healthy() {
        let healthy =
            metadata()
                .with_topics(vec![MetadataResponseTopic::default()
                    .with_partitions(vec![partition(0, 1, &[1], &[1])])]);
        let status = ClusterStatus::from_answers(&healthy, None);
        assert!(status.is_healthy());
        assert_eq!(status.brokers[0].leaders, 1);
    }
}
