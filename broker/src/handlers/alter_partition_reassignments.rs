//! `AlterPartitionReassignments` (API 45, Kafka's KIP-455): give partitions new replica
//! lists, or cancel their moves (null replicas), as `kafka-reassign-partitions` and the
//! admin clients send it; v1's `allow_replication_factor_change` false refuses a list of
//! another length (`INVALID_REPLICATION_FACTOR`). One controller change for the whole request; an error per
//! partition (`controller::reassignment`).
//!
//! A new order of the same brokers (a new preferred leader) is applied at once; a list
//! naming other brokers is recorded as a move, which the partition's leader carries out by
//! changing its Raft group's membership (docs/REPLICATION.md, Status).

use std::collections::BTreeMap;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, TopicName,
};

use crate::acl::model::Operation;
use crate::controller::{ControllerCall, PartitionReassignment};
use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, RequestContext, TopicAdmin};

/// Partitions one request may name; a larger request is refused whole (a controller change
/// is one log entry of the whole state, so it stays bounded).
pub const PARTITIONS_MAX: usize = 10_000;

pub async fn handle(
    shard: &TopicAdmin<'_>,
    context: &RequestContext,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let refuse_all = |code: i16, message: String| {
        AlterPartitionReassignmentsResponse::default()
            .with_error_code(code)
            .with_error_message(Some(str_bytes(&message)))
    };
    // Kafka's rule: ALTER on the cluster.
    if !context.authorize_cluster(Operation::Alter) {
        return refuse_all(
            codes::CLUSTER_AUTHORIZATION_FAILED,
            "ALTER on the cluster is required".into(),
        );
    }
    let count: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    if count > PARTITIONS_MAX {
        return refuse_all(
            codes::INVALID_REQUEST,
            format!("{count} partitions in one request; at most {PARTITIONS_MAX}"),
        );
    }
    let partitions: Vec<PartitionReassignment> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(|partition| PartitionReassignment {
                    topic: topic.name.0.to_string(),
                    partition: partition.partition_index,
                    replicas: partition
                        .replicas
                        .as_ref()
                        .map(|replicas| replicas.iter().map(|id| id.0).collect()),
                })
        })
        .collect();
    if partitions.is_empty() {
        return AlterPartitionReassignmentsResponse::default();
    }
    let Some(reply) = shard
        .controller_call(ControllerCall::AlterReassignments {
            partitions,
            allow_replication_factor_change: request.allow_replication_factor_change,
        })
        .await
    else {
        return refuse_all(
            codes::REQUEST_TIMED_OUT,
            "the broker is shutting down".into(),
        );
    };
    // One result per entry, grouped by topic in the request's order.
    let mut order: Vec<String> = Vec::new();
    let mut by_topic: BTreeMap<String, Vec<ReassignablePartitionResponse>> = BTreeMap::new();
    for outcome in reply.outcomes {
        if !by_topic.contains_key(&outcome.name) {
            order.push(outcome.name.clone());
        }
        by_topic.entry(outcome.name.clone()).or_default().push(
            ReassignablePartitionResponse::default()
                .with_partition_index(outcome.partitions)
                .with_error_code(outcome.error_code)
                .with_error_message(outcome.message.as_deref().map(str_bytes)),
        );
    }
    let responses = order
        .into_iter()
        .map(|name| {
            let partitions = by_topic.remove(&name).unwrap_or_default();
            ReassignableTopicResponse::default()
                .with_name(TopicName(str_bytes(&name)))
                .with_partitions(partitions)
        })
        .collect();
    AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(request.allow_replication_factor_change)
        .with_responses(responses)
}
