//! `ListGroups`: every group of every shard's coordinator, optionally filtered by state
//! (v4+) and type (v5+: `classic` or `consumer`, KIP-848).

use futures::future::join_all;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::groups;
use crate::handlers::context::{str_bytes, GroupAccess, RequestContext};

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: ListGroupsRequest,
) -> ListGroupsResponse {
    let version = context.api_version;
    let asks = (0..shard.config.shard_count()).map(|owner| {
        groups::on_coordinator(shard.router, owner, |groups| async move { groups.list() })
    });
    let mut error_code = codes::NONE;
    let mut listed = Vec::new();
    for reply in join_all(asks).await {
        match reply {
            Some(groups) => listed.extend(groups),
            None => error_code = crate::groups::codes::COORDINATOR_NOT_AVAILABLE,
        }
    }
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let types_match = |group_type: &str| {
        request.types_filter.is_empty()
            || request
                .types_filter
                .iter()
                .any(|t| t.eq_ignore_ascii_case(group_type))
    };
    listed.sort();
    let groups = listed
        .into_iter()
        .filter(|(_, _, state, _)| states.is_empty() || states.contains(&state.to_lowercase()))
        .filter(|(_, _, _, group_type)| types_match(group_type))
        .filter(|(group_id, _, _, _)| context.authorize_group(Operation::Describe, group_id))
        .map(|(group_id, protocol_type, state, group_type)| {
            let group = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&group_id)))
                .with_protocol_type(str_bytes(&protocol_type));
            let group = if version >= 4 {
                group.with_group_state(str_bytes(state))
            } else {
                group
            };
            if version >= 5 {
                group.with_group_type(str_bytes(group_type))
            } else {
                group
            }
        })
        .collect();
    ListGroupsResponse::default()
        .with_error_code(error_code)
        .with_groups(groups)
}
