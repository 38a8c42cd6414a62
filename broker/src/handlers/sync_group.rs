//! `SyncGroup`: the leader hands the coordinator every member's assignment; followers wait
//! for theirs. Routed to the group's coordinator.

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::groups::group::SyncResult;
use crate::groups::SyncRequest;
use crate::handlers::context::{str_bytes, GroupAccess, RequestContext};

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: SyncGroupRequest,
) -> SyncGroupResponse {
    if !context.authorize_group(Operation::Read, &request.group_id) {
        return SyncGroupResponse::default().with_error_code(codes::GROUP_AUTHORIZATION_FAILED);
    }
    let sync = SyncRequest {
        member_id: request.member_id.to_string(),
        generation: request.generation_id,
        protocol_type: request.protocol_type.map(|p| p.to_string()),
        protocol_name: request.protocol_name.map(|p| p.to_string()),
        assignments: request
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    };
    let result = shard
        .on_group_coordinator(&request.group_id, move |groups, at| async move {
            groups.sync(at, sync).await
        })
        .await
        .unwrap_or_else(SyncResult::error);
    let with_protocol = context.api_version >= 5 && result.error_code == 0;
    SyncGroupResponse::default()
        .with_error_code(result.error_code)
        .with_protocol_type(
            result
                .protocol_type
                .as_deref()
                .filter(|_| with_protocol)
                .map(str_bytes),
        )
        .with_protocol_name(
            result
                .protocol_name
                .as_deref()
                .filter(|_| with_protocol)
                .map(str_bytes),
        )
        .with_assignment(result.assignment)
}
