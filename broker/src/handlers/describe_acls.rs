//! `DescribeAcls`: the ACL bindings a filter matches, grouped by resource pattern
//! (`kafka-acls.sh --list`, `AdminClient` `describe_acls`). Needs DESCRIBE on the cluster.
//! Answered from this shard's snapshot, which holds the set as of the last change.
//!
//! v0 (Kafka 3.9; removed by KIP-896 in 4.0) has no pattern type filter: the codec reads it
//! as LITERAL (the field's default, as Kafka's v0 request does), so v0 lists literal
//! bindings only and its answer, which has no pattern type either, never holds another kind.

use std::collections::BTreeMap;

use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{DescribeAclsRequest, DescribeAclsResponse};

use crate::acl::model::Operation;
use crate::acl::store::filter_from_codes;
use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, RequestContext, TopicAdmin};

/// Async only because every handler is (`served_apis!` awaits them all).
#[allow(clippy::unused_async)]
pub async fn handle(
    shard: &TopicAdmin<'_>,
    context: &RequestContext,
    request: DescribeAclsRequest,
) -> DescribeAclsResponse {
    let refused = |code: i16, message: &str| {
        DescribeAclsResponse::default()
            .with_error_code(code)
            .with_error_message(Some(str_bytes(message)))
    };
    if !shard.acls().enforced() {
        return refused(codes::SECURITY_DISABLED, "no authorizer is configured");
    }
    if !context.authorize_cluster(Operation::Describe) {
        return refused(
            codes::CLUSTER_AUTHORIZATION_FAILED,
            "describing ACLs needs DESCRIBE on the cluster",
        );
    }
    let filter = match filter_from_codes(
        request.resource_type_filter,
        request.resource_name_filter.map(|name| name.to_string()),
        request.pattern_type_filter,
        request
            .principal_filter
            .map(|principal| principal.to_string()),
        request.host_filter.map(|host| host.to_string()),
        request.operation,
        request.permission_type,
    ) {
        Ok(filter) => filter,
        Err(reason) => return refused(codes::INVALID_REQUEST, &reason),
    };
    let snapshot = shard.acls().bindings();
    let mut by_resource: BTreeMap<_, Vec<AclDescription>> = BTreeMap::new();
    for binding in snapshot
        .bindings
        .iter()
        .filter(|binding| filter.matches(binding))
    {
        by_resource
            .entry((
                binding.resource_type.code(),
                binding.resource_name.as_str(),
                binding.pattern_type.code(),
            ))
            .or_default()
            .push(
                AclDescription::default()
                    .with_principal(str_bytes(binding.principal.as_str()))
                    .with_host(str_bytes(&binding.host))
                    .with_operation(binding.operation.code())
                    .with_permission_type(binding.permission.code()),
            );
    }
    let resources = by_resource
        .into_iter()
        .map(|((resource_type, name, pattern_type), acls)| {
            DescribeAclsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(str_bytes(name))
                .with_pattern_type(pattern_type)
                .with_acls(acls)
        })
        .collect();
    DescribeAclsResponse::default()
        .with_error_code(codes::NONE)
        .with_resources(resources)
}
