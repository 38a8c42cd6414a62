//! `DeleteAcls`: removes the ACL bindings each filter matches and answers, per filter, the
//! bindings it removed (`kafka-acls.sh --remove`, `AdminClient` `delete_acls`). Needs ALTER
//! on the cluster. A filter Kafka refuses gets `INVALID_REQUEST` alone; the valid filters
//! go to shard 0 in one change (`ShardServices::acl_change`).
//!
//! v0 (Kafka 3.9) has no pattern type filter: the codec reads it as LITERAL, so v0 deletes
//! (and answers) literal bindings only, and never a prefixed one its answer could not name.

use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::{DeleteAclsRequest, DeleteAclsResponse};

use crate::acl::model::Operation;
use crate::acl::store::{filter_from_codes, AclChange, AclChangeReply};
use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, RequestContext, TopicAdmin};

pub async fn handle(
    shard: &TopicAdmin<'_>,
    context: &RequestContext,
    request: DeleteAclsRequest,
) -> DeleteAclsResponse {
    let refused = |code: i16, message: &str| {
        DeleteAclsFilterResult::default()
            .with_error_code(code)
            .with_error_message(Some(str_bytes(message)))
    };
    let count = request.filters.len();
    let everyone = |code: i16, message: &str| {
        DeleteAclsResponse::default().with_filter_results(vec![refused(code, message); count])
    };
    if !shard.acls().enforced() {
        return everyone(codes::SECURITY_DISABLED, "no authorizer is configured");
    }
    if !context.authorize_cluster(Operation::Alter) {
        return everyone(
            codes::CLUSTER_AUTHORIZATION_FAILED,
            "deleting ACLs needs ALTER on the cluster",
        );
    }
    let checked: Vec<Result<_, String>> = request
        .filters
        .into_iter()
        .map(|filter| {
            filter_from_codes(
                filter.resource_type_filter,
                filter.resource_name_filter.map(|name| name.to_string()),
                filter.pattern_type_filter,
                filter
                    .principal_filter
                    .map(|principal| principal.to_string()),
                filter.host_filter.map(|host| host.to_string()),
                filter.operation,
                filter.permission_type,
            )
        })
        .collect();
    let valid: Vec<_> = checked
        .iter()
        .filter_map(|checked| checked.as_ref().ok().cloned())
        .collect();
    let removed = if valid.is_empty() {
        Ok(Vec::new())
    } else {
        match shard.acl_change(AclChange::Delete(valid)).await {
            Some(AclChangeReply::Deleted(result)) => result,
            Some(AclChangeReply::Created(_)) => Err((
                codes::UNKNOWN_SERVER_ERROR,
                "internal error: wrong reply".into(),
            )),
            None => Err((
                codes::UNKNOWN_SERVER_ERROR,
                "the broker is shutting down".into(),
            )),
        }
    };
    let mut removed_per_valid = match &removed {
        Ok(removed) => removed.clone().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    let results = checked
        .into_iter()
        .map(|checked| match (checked, &removed) {
            (Err(reason), _) => refused(codes::INVALID_REQUEST, &reason),
            (Ok(_), Err((code, reason))) => refused(*code, reason),
            (Ok(_), Ok(_)) => {
                let matching = removed_per_valid
                    .next()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|binding| {
                        DeleteAclsMatchingAcl::default()
                            .with_error_code(codes::NONE)
                            .with_resource_type(binding.resource_type.code())
                            .with_resource_name(str_bytes(&binding.resource_name))
                            .with_pattern_type(binding.pattern_type.code())
                            .with_principal(str_bytes(binding.principal.as_str()))
                            .with_host(str_bytes(&binding.host))
                            .with_operation(binding.operation.code())
                            .with_permission_type(binding.permission.code())
                    })
                    .collect();
                DeleteAclsFilterResult::default()
                    .with_error_code(codes::NONE)
                    .with_matching_acls(matching)
            }
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}
