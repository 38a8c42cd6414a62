//! Heartbeat: keeps a member's session alive; tells it when a rebalance has started.

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::handlers::context::{GroupAccess, RequestContext};
use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: HeartbeatRequest,
) -> HeartbeatResponse {
    if !context.authorize_group(Operation::Read, &request.group_id) {
        return HeartbeatResponse::default().with_error_code(codes::GROUP_AUTHORIZATION_FAILED);
    }
    let member_id = request.member_id.to_string();
    let instance_id = request.group_instance_id.map(|id| id.to_string());
    let generation = request.generation_id;
    let error_code = shard
        .on_group_coordinator(&request.group_id, move |groups, at| async move {
            groups
                .heartbeat(at, member_id, instance_id, generation)
                .await
        })
        .await
        .unwrap_or_else(|code| code);
    HeartbeatResponse::default().with_error_code(error_code)
}
