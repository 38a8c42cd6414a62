//! Heartbeat: keeps a member's session alive; tells it when a rebalance has started.

use std::rc::Rc;

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use super::RequestContext;
use crate::groups::{self, GroupCall, GroupReply};
use crate::shard::Shard;

pub async fn handle(
    shard: &Rc<Shard>,
    _context: &RequestContext,
    request: HeartbeatRequest,
) -> HeartbeatResponse {
    let call = GroupCall::Heartbeat {
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.map(|id| id.to_string()),
        generation: request.generation_id,
    };
    let error_code = match groups::route(shard, &request.group_id, call).await {
        Ok(GroupReply::Code(code)) | Err(code) => code,
        Ok(other) => panic!("Heartbeat answered with {other:?}"),
    };
    HeartbeatResponse::default().with_error_code(error_code)
}
