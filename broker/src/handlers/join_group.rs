//! `JoinGroup`: routed to the group's coordinator, which parks the request until the
//! rebalance completes (or answers at once: `MEMBER_ID_REQUIRED`, errors, a rejoin that
//! changes nothing).

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::groups::group::{JoinRequest, JoinResult};
use crate::groups::millis;
use crate::handlers::context::{str_bytes, GroupAccess, RequestContext};

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: JoinGroupRequest,
) -> JoinGroupResponse {
    if !context.authorize_group(Operation::Read, &request.group_id) {
        return JoinGroupResponse::default().with_error_code(codes::GROUP_AUTHORIZATION_FAILED);
    }
    let version = context.api_version;
    let session_timeout = millis(request.session_timeout_ms);
    let join = JoinRequest {
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.map(|id| id.to_string()),
        client_id: context.client_id.clone().unwrap_or_default(),
        client_host: format!("/{}", context.peer.ip()),
        session_timeout,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout: if version >= 1 {
            millis(request.rebalance_timeout_ms)
        } else {
            session_timeout
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|protocol| (protocol.name.to_string(), protocol.metadata))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let member_id = join.member_id.clone();
    let result = shard
        .on_group_coordinator(&request.group_id, move |groups, at| async move {
            groups.join(at, join).await
        })
        .await
        .unwrap_or_else(|code| JoinResult::error(code, &member_id));
    response(version, result)
}

fn response(version: i16, result: JoinResult) -> JoinGroupResponse {
    let members = result
        .members
        .into_iter()
        .map(|(member_id, instance_id, metadata)| {
            JoinGroupResponseMember::default()
                .with_member_id(str_bytes(&member_id))
                .with_group_instance_id(if version >= 5 {
                    instance_id.as_deref().map(str_bytes)
                } else {
                    None
                })
                .with_metadata(metadata)
        })
        .collect();
    // Before v7 the protocol name is not nullable: an error answer carries "".
    let protocol_name = match result.protocol_name {
        Some(name) => Some(str_bytes(&name)),
        None if version < 7 => Some(str_bytes("")),
        None => None,
    };
    JoinGroupResponse::default()
        .with_error_code(result.error_code)
        .with_generation_id(result.generation)
        .with_protocol_type(if version >= 7 {
            result.protocol_type.as_deref().map(str_bytes)
        } else {
            None
        })
        .with_protocol_name(protocol_name)
        .with_leader(str_bytes(&result.leader))
        .with_member_id(str_bytes(&result.member_id))
        .with_members(members)
}
