//! `DeleteGroups`: removes groups without members, with their committed offsets.

use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use super::RequestContext;
use crate::groups::{self, GroupCall, GroupReply};
use crate::shard::Shard;

pub async fn handle(
    shard: &Rc<Shard>,
    _context: &RequestContext,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let results = request.groups_names.into_iter().map(|group_id| async move {
        let error_code = match groups::route(shard, &group_id, GroupCall::Delete).await {
            Ok(GroupReply::Code(code)) | Err(code) => code,
            Ok(other) => panic!("DeleteGroups answered with {other:?}"),
        };
        DeletableGroupResult::default()
            .with_group_id(group_id)
            .with_error_code(error_code)
    });
    DeleteGroupsResponse::default().with_results(join_all(results).await)
}
