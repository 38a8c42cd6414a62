//! `ConsumerGroupDescribe` (KIP-848): epochs, assignor and members (with their current and
//! target assignments) of consumer-protocol groups. A classic group or an unknown id is
//! `GROUP_ID_NOT_FOUND`, as Kafka answers.

use futures::future::join_all;
use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment, DescribedGroup, Member, TopicPartitions,
};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, TopicName,
};

use crate::acl::model::{Operation, ResourceType};
use crate::groups::assignor::Assignment as Partitions;
use crate::groups::{codes, ConsumerGroupDescription};
use crate::handlers::consumer_group_heartbeat::assigned_topics;
use crate::handlers::context::{str_bytes, GroupAccess, RequestContext};
use crate::metadata::MetadataSnapshot;

/// Group ACL operations a client may perform, as a bitfield: READ 3, DELETE 6, DESCRIBE 8.
const GROUP_OPERATIONS_ALL: i32 = 1 << 3 | 1 << 6 | 1 << 8;
/// `member_type` (v1): the member uses the consumer protocol, or (KIP-848's migration) the
/// classic one inside a consumer group.
const MEMBER_TYPE_CONSUMER: i8 = 1;
const MEMBER_TYPE_CLASSIC: i8 = 0;

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    let snapshot = shard.metadata.current();
    let with_operations = request.include_authorized_operations;
    let snapshot = &snapshot;
    let descriptions = request.group_ids.into_iter().map(|group_id| async move {
        let base = DescribedGroup::default().with_group_id(group_id.clone());
        if !context.authorize_group(Operation::Describe, &group_id) {
            return base.with_error_code(crate::error_codes::GROUP_AUTHORIZATION_FAILED);
        }
        let reply = shard
            .on_group_coordinator(&group_id, |groups, at| async move {
                groups.consumer_describe(at).await
            })
            .await;
        let described = match reply.and_then(|inner| inner) {
            Err(error_code) => base.with_error_code(error_code),
            Ok(None) => base
                .with_error_code(codes::GROUP_ID_NOT_FOUND)
                .with_error_message(Some(str_bytes(&format!(
                    "Group {} not found or not a consumer group.",
                    &*group_id
                )))),
            Ok(Some(description)) => described(snapshot, base, description),
        };
        if with_operations {
            let operations =
                context.authorized_operations(ResourceType::Group, &group_id, GROUP_OPERATIONS_ALL);
            described.with_authorized_operations(operations)
        } else {
            described
        }
    });
    ConsumerGroupDescribeResponse::default().with_groups(join_all(descriptions).await)
}

fn described(
    snapshot: &MetadataSnapshot,
    base: DescribedGroup,
    description: ConsumerGroupDescription,
) -> DescribedGroup {
    let members = description
        .members
        .into_iter()
        .map(|(member, target)| {
            Member::default()
                .with_member_id(str_bytes(&member.member_id))
                .with_instance_id(member.instance_id.as_deref().map(str_bytes))
                .with_rack_id(member.rack_id.as_deref().map(str_bytes))
                .with_member_epoch(member.member_epoch)
                .with_client_id(str_bytes(&member.client_id))
                .with_client_host(str_bytes(&member.client_host))
                .with_subscribed_topic_names(
                    member
                        .subscribed_topics
                        .iter()
                        .map(|t| TopicName(str_bytes(t)))
                        .collect(),
                )
                .with_subscribed_topic_regex(member.subscribed_regex.as_deref().map(str_bytes))
                .with_assignment(assignment(snapshot, &member.assigned))
                .with_target_assignment(assignment(snapshot, &target))
                .with_member_type(if member.classic.is_some() {
                    MEMBER_TYPE_CLASSIC
                } else {
                    MEMBER_TYPE_CONSUMER
                })
        })
        .collect();
    base.with_group_state(str_bytes(description.state))
        .with_group_epoch(description.group_epoch)
        .with_assignment_epoch(description.assignment_epoch)
        .with_assignor_name(str_bytes(description.assignor))
        .with_members(members)
}

fn assignment(snapshot: &MetadataSnapshot, partitions: &Partitions) -> Assignment {
    let topic_partitions = assigned_topics(snapshot, partitions)
        .into_iter()
        .map(|topic| {
            TopicPartitions::default()
                .with_topic_id(topic.topic_id)
                .with_topic_name(TopicName(str_bytes(topic.name)))
                .with_partitions(topic.partitions)
        })
        .collect();
    Assignment::default().with_topic_partitions(topic_partitions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::consumer::ConsumerMember;

    /// A member's pattern is shown as it subscribed (null when it has none), beside the
    /// names it subscribed to.
    #[test]
    fn members_show_their_subscribed_regex() {
        let now = std::time::Instant::now();
        let mut with_regex = ConsumerMember::new("a", now);
        with_regex.subscribed_regex = Some("^orders-.*".into());
        let mut by_name = ConsumerMember::new("b", now);
        by_name.subscribed_topics.insert("audit".into());
        let description = ConsumerGroupDescription {
            state: "Stable",
            group_epoch: 3,
            assignment_epoch: 3,
            assignor: "uniform",
            members: vec![
                (with_regex, Partitions::new()),
                (by_name, Partitions::new()),
            ],
        };
        let group = described(
            &MetadataSnapshot::default(),
            DescribedGroup::default(),
            description,
        );
        let regexes: Vec<Option<String>> = group
            .members
            .iter()
            .map(|m| m.subscribed_topic_regex.as_ref().map(ToString::to_string))
            .collect();
        assert_eq!(regexes, vec![Some("^orders-.*".to_string()), None]);
        assert_eq!(group.members[1].subscribed_topic_names.len(), 1);
    }
}
