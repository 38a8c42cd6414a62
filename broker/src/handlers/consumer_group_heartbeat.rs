//! `ConsumerGroupHeartbeat` (KIP-848): joins, heartbeats and leaves of consumer-protocol
//! group members. Topic ids of the request become names here (from this shard's metadata
//! copy) and the answer's names become ids again; the coordinator works with names.

use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse};

use std::sync::Arc;

use crate::acl::model::{Operation, ResourceType};
use crate::acl::store as acl_store;
use crate::error_codes as codes;
use crate::groups::assignor::Assignment as Partitions;
use crate::groups::consumer::{HeartbeatAnswer, HeartbeatRequest, TopicVisibility};
use crate::groups::GROUP_ID_BYTES_MAX;
use crate::handlers::context::{str_bytes, GroupAccess, RequestContext};
use crate::metadata::MetadataSnapshot;

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: ConsumerGroupHeartbeatRequest,
) -> ConsumerGroupHeartbeatResponse {
    let group_id = request.group_id.to_string();
    if !context.authorize_group(Operation::Read, &group_id) {
        return response(&HeartbeatAnswer::error(
            codes::GROUP_AUTHORIZATION_FAILED,
            "group authorization failed",
        ));
    }
    // Kafka's `handleConsumerGroupHeartbeat`: a member may subscribe only to topics it may
    // describe (a subscription must not reveal which other topics exist).
    let unauthorized = request
        .subscribed_topic_names
        .as_ref()
        .is_some_and(|names| {
            names
                .iter()
                .any(|name| !context.authorize_topic(Operation::Describe, name))
        });
    if unauthorized {
        return response(&HeartbeatAnswer::error(
            codes::TOPIC_AUTHORIZATION_FAILED,
            "Topic authorization failed.",
        ));
    }
    if group_id.is_empty() || group_id.len() > GROUP_ID_BYTES_MAX {
        return response(&HeartbeatAnswer::error(
            crate::groups::codes::INVALID_REQUEST,
            "GroupId can't be empty.",
        ));
    }
    let snapshot = shard.metadata.current();
    let version = context.api_version;
    let owned = request.topic_partitions.map(|topics| {
        let mut owned = Partitions::new();
        for topic in topics {
            // An id this broker does not know (a deleted topic) owns nothing here.
            if let Some(metadata) = snapshot.topic_by_id(topic.topic_id) {
                owned
                    .entry(metadata.name.to_string())
                    .or_default()
                    .extend(topic.partitions);
            }
        }
        owned
    });
    let heartbeat = HeartbeatRequest {
        member_id: request.member_id.to_string(),
        member_epoch: request.member_epoch,
        instance_id: request.instance_id.map(|id| id.to_string()),
        rack_id: request.rack_id.map(|id| id.to_string()),
        rebalance_timeout_ms: request.rebalance_timeout_ms,
        subscribed_topics: request
            .subscribed_topic_names
            .map(|names| names.into_iter().map(|n| n.to_string()).collect()),
        // null: unchanged; "" (librdkafka's "no regex"): none.
        subscribed_regex: request.subscribed_topic_regex.map(|r| r.to_string()),
        server_assignor: request.server_assignor.map(|a| a.to_string()),
        owned,
        client_id: context.client_id.clone().unwrap_or_default(),
        client_host: format!("/{}", context.peer.ip()),
        visibility: topic_visibility(context),
    };
    let answer = shard
        .on_group_coordinator(&group_id, move |groups, at| async move {
            groups.consumer_heartbeat(at, heartbeat, version).await
        })
        .await
        .unwrap_or_else(|code| HeartbeatAnswer::error(code, "the coordinator is not available"));
    let assignment = answer
        .assignment
        .as_ref()
        .map(|partitions| wire_assignment(&snapshot, partitions));
    response(&answer).with_assignment(assignment)
}

/// The topics this request's principal may DESCRIBE: what its regex may resolve to (Kafka
/// 4.x filters a regex's topics the same way).
fn topic_visibility(context: &RequestContext) -> TopicVisibility {
    let Some(acls) = context.acls.clone() else {
        return TopicVisibility::everything();
    };
    let principal = context.principal.clone();
    let host = context.peer.ip().to_string();
    let key: Arc<str> = Arc::from(format!("{principal}/{host}"));
    TopicVisibility::new(
        key,
        Arc::new(move |topic: &str| {
            acl_store::decide(
                Some(&acls),
                &principal,
                &host,
                Operation::Describe,
                ResourceType::Topic,
                topic,
            )
        }),
    )
}

fn response(answer: &HeartbeatAnswer) -> ConsumerGroupHeartbeatResponse {
    ConsumerGroupHeartbeatResponse::default()
        .with_error_code(answer.error_code)
        .with_error_message(answer.error_message.as_deref().map(str_bytes))
        .with_member_id((!answer.member_id.is_empty()).then(|| str_bytes(&answer.member_id)))
        .with_member_epoch(answer.member_epoch)
        .with_heartbeat_interval_ms(answer.heartbeat_interval_ms)
}

/// An assigned topic as both consumer-group APIs answer it.
pub struct AssignedTopic<'a> {
    pub topic_id: uuid::Uuid,
    pub name: &'a str,
    pub partitions: Vec<i32>,
}

/// Names to topic ids (`ConsumerGroupHeartbeat` and `ConsumerGroupDescribe`); a topic deleted
/// since the assignment was made is left out.
pub fn assigned_topics<'a>(
    snapshot: &MetadataSnapshot,
    partitions: &'a Partitions,
) -> Vec<AssignedTopic<'a>> {
    partitions
        .iter()
        .filter_map(|(name, set)| {
            let topic = snapshot.topic(name)?;
            Some(AssignedTopic {
                topic_id: topic.id,
                name,
                partitions: set.iter().copied().collect(),
            })
        })
        .collect()
}

fn wire_assignment(snapshot: &MetadataSnapshot, partitions: &Partitions) -> Assignment {
    let topic_partitions = assigned_topics(snapshot, partitions)
        .into_iter()
        .map(|topic| {
            TopicPartitions::default()
                .with_topic_id(topic.topic_id)
                .with_partitions(topic.partitions)
        })
        .collect();
    Assignment::default().with_topic_partitions(topic_partitions)
}
