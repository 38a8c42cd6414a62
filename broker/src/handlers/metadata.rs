//! Metadata: brokers (the live registered ones in a cluster, this one on a one-node broker;
//! each at its address for the listener the request came in on), topics with ids and
//! partitions with their replicas, ISR, leader and leader epoch (`MetadataSnapshot::
//! describe_partition`), auto-creation.

use std::sync::Arc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::acl::model::{Operation, ResourceType, CLUSTER_RESOURCE_NAME};
use crate::config::BrokerConfig;
use crate::controller::{ControllerCall, NewTopic};
use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, RequestContext, TopicAdmin};
use crate::metadata::{MetadataSnapshot, TopicMetadata};

/// Kafka ACL operation codes as a bitfield (1 << code), of which a client that asks is told
/// those its ACLs allow (all of them with authorization off): READ 3, WRITE 4, CREATE 5, DELETE 6, ALTER 7,
/// DESCRIBE 8, `DESCRIBE_CONFIGS` 10, `ALTER_CONFIGS` 11.
pub const TOPIC_OPERATIONS_ALL: i32 =
    1 << 3 | 1 << 4 | 1 << 5 | 1 << 6 | 1 << 7 | 1 << 8 | 1 << 10 | 1 << 11;
/// CREATE 5, ALTER 7, DESCRIBE 8, `CLUSTER_ACTION` 9, `DESCRIBE_CONFIGS` 10, `ALTER_CONFIGS` 11,
/// `IDEMPOTENT_WRITE` 12.
pub const CLUSTER_OPERATIONS_ALL: i32 =
    1 << 5 | 1 << 7 | 1 << 8 | 1 << 9 | 1 << 10 | 1 << 11 | 1 << 12;

pub async fn handle(
    shard: &TopicAdmin<'_>,
    context: &RequestContext,
    request: MetadataRequest,
) -> MetadataResponse {
    let version = context.api_version;
    let include_topic_operations = request.include_topic_authorized_operations && version >= 8;
    let include_cluster_operations =
        request.include_cluster_authorized_operations && (8..=10).contains(&version);
    // v0 has no null: an empty list means every topic. v1+: null means every topic.
    let requested = match request.topics {
        Some(topics) if !(version == 0 && topics.is_empty()) => Some(topics),
        _ => None,
    };
    let auto_create =
        shard.config.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
    let mut snapshot = shard.metadata.current();
    let mut topics: Vec<MetadataResponseTopic> = match requested {
        // Listing every topic lists those the principal may describe (Kafka's rule).
        None => snapshot
            .topics
            .values()
            .filter(|topic| context.authorize_topic(Operation::Describe, &topic.name))
            .map(|topic| describe_topic(&snapshot, topic, version))
            .collect(),
        Some(requested) => {
            let mut creation_errors = Vec::new();
            // Auto-creation needs CREATE on the cluster or on the topic.
            let (missing, uncreatable): (Vec<String>, Vec<String>) = requested
                .iter()
                .filter_map(|topic| topic.name.as_ref().map(|name| name.0.to_string()))
                .filter(|name| snapshot.topic(name).is_none())
                .partition(|name| {
                    context.authorize_cluster(Operation::Create)
                        || context.authorize_topic(Operation::Create, name)
                });
            if auto_create && !missing.is_empty() {
                creation_errors = create_missing(shard, missing).await;
                snapshot = shard.metadata.current();
            }
            if auto_create {
                creation_errors.extend(
                    uncreatable
                        .into_iter()
                        .map(|name| (name, codes::TOPIC_AUTHORIZATION_FAILED)),
                );
            }
            requested
                .iter()
                .map(|topic| match &topic.name {
                    Some(name) if !context.authorize_topic(Operation::Describe, name) => {
                        MetadataResponseTopic::default()
                            .with_name(Some(name.clone()))
                            .with_error_code(codes::TOPIC_AUTHORIZATION_FAILED)
                    }
                    Some(name) => describe_by_name(&snapshot, name, &creation_errors, version),
                    None => describe_by_id(&snapshot, topic.topic_id, version),
                })
                .collect()
        }
    };
    if include_topic_operations {
        for topic in topics
            .iter_mut()
            .filter(|topic| topic.error_code == codes::NONE)
        {
            let name = topic.name.as_ref().map_or("", |name| name.0.as_str());
            topic.topic_authorized_operations =
                context.authorized_operations(ResourceType::Topic, name, TOPIC_OPERATIONS_ALL);
        }
    }
    let response = MetadataResponse::default();
    let response = if include_cluster_operations {
        response.with_cluster_authorized_operations(context.authorized_operations(
            ResourceType::Cluster,
            CLUSTER_RESOURCE_NAME,
            CLUSTER_OPERATIONS_ALL,
        ))
    } else {
        response
    };
    response
        .with_brokers(
            live_brokers(shard.config, &snapshot, context.listener)
                .into_iter()
                .map(|(node, host, port, rack)| {
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(node))
                        .with_host(str_bytes(&host))
                        .with_port(port)
                        .with_rack(rack.as_deref().map(str_bytes))
                })
                .collect(),
        )
        .with_cluster_id(cluster_id_field(&snapshot, version))
        .with_controller_id(if version >= 1 {
            BrokerId(snapshot.controller_id)
        } else {
            BrokerId(-1)
        })
        .with_topics(topics)
}

/// Metadata's `cluster_id` (v2+): null while this broker has not joined its cluster.
fn cluster_id_field(snapshot: &MetadataSnapshot, version: i16) -> Option<StrBytes> {
    snapshot
        .cluster_id
        .as_deref()
        .filter(|_| version >= 2)
        .map(str_bytes)
}

/// This broker as clients on `listener` should reach it (Kafka answers with the advertised
/// address of the listener the request came in on).
pub fn this_broker(config: &BrokerConfig, listener: usize) -> MetadataResponseBroker {
    let (host, port) = config.advertised(listener);
    MetadataResponseBroker::default()
        .with_node_id(BrokerId(config.cluster.node_id))
        .with_host(str_bytes(host))
        .with_port(port)
        .with_rack(config.cluster.rack.as_deref().map(str_bytes))
}

/// Where clients on this broker's `listener` reach broker `node`: this broker's advertised
/// address, or the address the live broker `node` registered for the listener of the same
/// name (`None` if it is not alive or has no such listener, as Kafka leaves it out).
pub fn broker_address(
    config: &BrokerConfig,
    snapshot: &MetadataSnapshot,
    listener: usize,
    node: i32,
) -> Option<(String, i32)> {
    if node == config.cluster.node_id {
        let (host, port) = config.advertised(listener);
        return Some((host.to_string(), port));
    }
    let name = config.listeners.get(listener)?.name.as_str();
    let (host, port) = snapshot.broker(node)?.address(name)?;
    Some((host.to_string(), port))
}

/// Every live broker as clients on `listener` reach it, by node id: this one always, the
/// other registered, unfenced brokers that have a listener of the same name.
pub fn live_brokers(
    config: &BrokerConfig,
    snapshot: &MetadataSnapshot,
    listener: usize,
) -> Vec<(i32, String, i32, Option<String>)> {
    let mut brokers: Vec<(i32, String, i32, Option<String>)> = snapshot
        .brokers
        .iter()
        .filter(|broker| broker.node_id != config.cluster.node_id)
        .filter_map(|broker| {
            let (host, port) = broker_address(config, snapshot, listener, broker.node_id)?;
            Some((broker.node_id, host, port, broker.rack.clone()))
        })
        .collect();
    let (host, port) = config.advertised(listener);
    brokers.push((
        config.cluster.node_id,
        host.to_string(),
        port,
        config.cluster.rack.clone(),
    ));
    brokers.sort_by_key(|broker| broker.0);
    brokers
}

/// The live brokers among `named` (ids; -1 and repeats allowed), as [`live_brokers`] lists
/// them: for the `node_endpoints` of KIP-951 refusals in Produce and Fetch.
pub fn endpoints_of(
    config: &BrokerConfig,
    snapshot: &MetadataSnapshot,
    listener: usize,
    named: impl IntoIterator<Item = i32>,
) -> Vec<(i32, String, i32, Option<String>)> {
    let named: std::collections::BTreeSet<i32> =
        named.into_iter().filter(|node| *node >= 0).collect();
    if named.is_empty() {
        return Vec::new();
    }
    live_brokers(config, snapshot, listener)
        .into_iter()
        .filter(|(node, ..)| named.contains(node))
        .collect()
}

/// Asks the controller to create `names` with the default settings; returns the names it
/// refused, with the error code to report for each.
async fn create_missing(shard: &TopicAdmin<'_>, names: Vec<String>) -> Vec<(String, i16)> {
    let topics = names
        .into_iter()
        .map(|name| NewTopic {
            name,
            partitions: -1,
            replication_factor: -1,
            manual_assignment: Vec::new(),
            configs: Vec::new(),
        })
        .collect();
    let Some(reply) = shard
        .controller_call(ControllerCall::CreateTopics {
            topics,
            validate_only: false,
        })
        .await
    else {
        return Vec::new();
    };
    reply
        .outcomes
        .into_iter()
        .filter(|outcome| {
            !matches!(
                outcome.error_code,
                codes::NONE | codes::TOPIC_ALREADY_EXISTS
            )
        })
        .map(|outcome| {
            // Auto-creation at a broker that is not the controller: Kafka's answer while a
            // topic is being created, which clients retry (NOT_CONTROLLER is for admin APIs).
            let code = match outcome.error_code {
                codes::NOT_CONTROLLER => codes::LEADER_NOT_AVAILABLE,
                code => code,
            };
            (outcome.name, code)
        })
        .collect()
}

fn describe_by_name(
    snapshot: &MetadataSnapshot,
    name: &TopicName,
    creation_errors: &[(String, i16)],
    version: i16,
) -> MetadataResponseTopic {
    if let Some(topic) = snapshot.topic(name.0.as_str()) {
        return describe_topic(snapshot, topic, version);
    }
    let error_code = creation_errors
        .iter()
        .find(|(failed, _)| failed.as_str() == name.0.as_str())
        .map_or(codes::UNKNOWN_TOPIC_OR_PARTITION, |(_, code)| *code);
    MetadataResponseTopic::default()
        .with_name(Some(name.clone()))
        .with_error_code(error_code)
}

fn describe_by_id(snapshot: &MetadataSnapshot, id: Uuid, version: i16) -> MetadataResponseTopic {
    match snapshot.topic_by_id(id) {
        Some(topic) => describe_topic(snapshot, topic, version),
        None => MetadataResponseTopic::default()
            .with_topic_id(id)
            .with_error_code(codes::UNKNOWN_TOPIC_ID),
    }
}

/// Each partition as the controller placed it and its leader reported it
/// (`MetadataSnapshot::describe_partition`); the leader epoch from v7, offline replicas
/// from v5.
fn describe_topic(
    snapshot: &MetadataSnapshot,
    topic: &Arc<TopicMetadata>,
    version: i16,
) -> MetadataResponseTopic {
    let nodes = |nodes: Vec<i32>| nodes.into_iter().map(BrokerId).collect::<Vec<_>>();
    let partitions = (0..topic.partition_count())
        .map(|partition| {
            let view = snapshot.describe_partition(topic, partition);
            MetadataResponsePartition::default()
                .with_error_code(view.error_code)
                .with_partition_index(partition)
                .with_leader_id(BrokerId(view.leader))
                .with_leader_epoch(if version >= 7 { view.leader_epoch } else { -1 })
                .with_replica_nodes(nodes(view.replicas))
                .with_isr_nodes(nodes(view.isr))
                .with_offline_replicas(if version >= 5 {
                    nodes(view.offline_replicas)
                } else {
                    Vec::new()
                })
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(&topic.name))))
        .with_is_internal(crate::metadata::is_internal_topic(&topic.name))
        .with_topic_id(if version >= 10 { topic.id } else { Uuid::nil() })
        .with_partitions(partitions)
}
