//! `LeaveGroup`: one member (v0-2) or a batch of members by id or group instance id (v3+).

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::handlers::context::{GroupAccess, RequestContext};

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: LeaveGroupRequest,
) -> LeaveGroupResponse {
    if !context.authorize_group(Operation::Read, &request.group_id) {
        return LeaveGroupResponse::default().with_error_code(codes::GROUP_AUTHORIZATION_FAILED);
    }
    let batched = context.api_version >= 3;
    let members: Vec<_> = if batched {
        request.members
    } else {
        vec![
            kafka_protocol::messages::leave_group_request::MemberIdentity::default()
                .with_member_id(request.member_id),
        ]
    };
    let identities = members
        .iter()
        .map(|m| {
            (
                m.member_id.to_string(),
                m.group_instance_id.as_ref().map(ToString::to_string),
            )
        })
        .collect();
    let leaving = shard
        .on_group_coordinator(&request.group_id, move |groups, at| async move {
            groups.leave(at, identities).await
        })
        .await;
    let member_codes = match leaving {
        Ok(codes) => codes,
        Err(code) => return LeaveGroupResponse::default().with_error_code(code),
    };
    if !batched {
        return LeaveGroupResponse::default().with_error_code(member_codes[0]);
    }
    let responses = members
        .into_iter()
        .zip(member_codes)
        .map(|(member, code)| {
            MemberResponse::default()
                .with_member_id(member.member_id)
                .with_group_instance_id(member.group_instance_id)
                .with_error_code(code)
        })
        .collect();
    LeaveGroupResponse::default()
        .with_error_code(codes::NONE)
        .with_members(responses)
}
