//! `DescribeGroups`: state, protocol and members of each named group, from its coordinator.
//! An unknown group is reported as `Dead` without error before v6; from v6 (KIP-1043) with
//! `GROUP_ID_NOT_FOUND` and a message, as Kafka 4 does.

use futures::future::join_all;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

use crate::acl::model::{Operation, ResourceType};
use crate::groups::{codes, GroupDescription};
use crate::handlers::context::{str_bytes, GroupAccess, RequestContext};

/// Group ACL operations a client may perform, as a bitfield (no ACLs yet: all of them):
/// READ 3, DELETE 6, DESCRIBE 8.
const GROUP_OPERATIONS_ALL: i32 = 1 << 3 | 1 << 6 | 1 << 8;

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let version = context.api_version;
    let with_operations = version >= 3 && request.include_authorized_operations;
    let descriptions = request.groups.into_iter().map(|group_id| async move {
        if !context.authorize_group(Operation::Describe, &group_id) {
            return DescribedGroup::default()
                .with_group_id(group_id)
                .with_error_code(crate::error_codes::GROUP_AUTHORIZATION_FAILED);
        }
        let reply = shard
            .on_group_coordinator(
                &group_id,
                |groups, at| async move { groups.describe(at).await },
            )
            .await;
        let description = match reply {
            Ok(description) => description,
            Err(error_code) => GroupDescription {
                error_code,
                state: "",
                protocol_type: String::new(),
                protocol_name: String::new(),
                members: Vec::new(),
            },
        };
        let unknown =
            description.error_code == crate::error_codes::NONE && description.state == "Dead";
        let described = described(version, description);
        let described = if unknown && version >= 6 {
            described
                .with_error_code(codes::GROUP_ID_NOT_FOUND)
                .with_error_message(Some(str_bytes(&format!("Group {} not found.", &*group_id))))
        } else {
            described
        };
        let described = described.with_group_id(group_id);
        if with_operations {
            let operations = context.authorized_operations(
                ResourceType::Group,
                &described.group_id,
                GROUP_OPERATIONS_ALL,
            );
            described.with_authorized_operations(operations)
        } else {
            described
        }
    });
    DescribeGroupsResponse::default().with_groups(join_all(descriptions).await)
}

fn described(version: i16, description: GroupDescription) -> DescribedGroup {
    let members = description
        .members
        .into_iter()
        .map(|member| {
            DescribedGroupMember::default()
                .with_member_id(str_bytes(&member.member_id))
                .with_group_instance_id(if version >= 4 {
                    member.instance_id.as_deref().map(str_bytes)
                } else {
                    None
                })
                .with_client_id(str_bytes(&member.client_id))
                .with_client_host(str_bytes(&member.client_host))
                .with_member_metadata(member.metadata)
                .with_member_assignment(member.assignment)
        })
        .collect();
    DescribedGroup::default()
        .with_error_code(description.error_code)
        .with_group_state(str_bytes(description.state))
        .with_protocol_type(str_bytes(&description.protocol_type))
        .with_protocol_data(str_bytes(&description.protocol_name))
        .with_members(members)
}
