//! `DeleteGroups`: removes groups without members, with their committed offsets.

use crate::acl::model::Operation;
use crate::handlers::context::{GroupAccess, RequestContext};
use futures::future::join_all;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let results = request.groups_names.into_iter().map(|group_id| async move {
        if !context.authorize_group(Operation::Delete, &group_id) {
            return DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(crate::error_codes::GROUP_AUTHORIZATION_FAILED);
        }
        let error_code = shard
            .on_group_coordinator(
                &group_id,
                |groups, at| async move { groups.delete(at).await },
            )
            .await
            .unwrap_or_else(|code| code);
        DeletableGroupResult::default()
            .with_group_id(group_id)
            .with_error_code(error_code)
    });
    DeleteGroupsResponse::default().with_results(join_all(results).await)
}
