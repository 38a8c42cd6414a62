//! `CreateAcls`: adds ACL bindings (Kafka's `kafka-acls.sh --add`, `AdminClient`
//! `create_acls`). Needs ALTER on the cluster. Each creation is checked as Kafka checks it
//! (`INVALID_REQUEST` with the reason); the valid ones go to shard 0 in one change, written
//! durably and installed on every shard before the answer (`ShardServices::acl_change`).
//!
//! v0 (Kafka 3.9) has no pattern type: the codec reads each creation as LITERAL, as Kafka does.

use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::{CreateAclsRequest, CreateAclsResponse};

use crate::acl::model::Operation;
use crate::acl::store::{binding_from_codes, AclChange, AclChangeReply};
use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, RequestContext, TopicAdmin};

pub async fn handle(
    shard: &TopicAdmin<'_>,
    context: &RequestContext,
    request: CreateAclsRequest,
) -> CreateAclsResponse {
    let refused = |code: i16, message: &str| {
        AclCreationResult::default()
            .with_error_code(code)
            .with_error_message(Some(str_bytes(message)))
    };
    let count = request.creations.len();
    let everyone = |code: i16, message: &str| {
        CreateAclsResponse::default().with_results(vec![refused(code, message); count])
    };
    if !shard.acls().enforced() {
        return everyone(codes::SECURITY_DISABLED, "no authorizer is configured");
    }
    if !context.authorize_cluster(Operation::Alter) {
        return everyone(
            codes::CLUSTER_AUTHORIZATION_FAILED,
            "creating ACLs needs ALTER on the cluster",
        );
    }
    let checked: Vec<Result<_, String>> = request
        .creations
        .into_iter()
        .map(|creation| {
            let binding = binding_from_codes(
                creation.resource_type,
                creation.resource_name.to_string(),
                creation.resource_pattern_type,
                creation.principal.as_str(),
                creation.host.to_string(),
                creation.operation,
                creation.permission_type,
            )?;
            binding.validate()?;
            Ok(binding)
        })
        .collect();
    let valid: Vec<_> = checked
        .iter()
        .filter_map(|checked| checked.as_ref().ok().cloned())
        .collect();
    let stored = if valid.is_empty() {
        Ok(())
    } else {
        match shard.acl_change(AclChange::Create(valid)).await {
            Some(AclChangeReply::Created(result)) => result,
            Some(AclChangeReply::Deleted(_)) => Err((
                codes::UNKNOWN_SERVER_ERROR,
                "internal error: wrong reply".into(),
            )),
            None => Err((
                codes::UNKNOWN_SERVER_ERROR,
                "the broker is shutting down".into(),
            )),
        }
    };
    let results = checked
        .into_iter()
        .map(|checked| match (checked, &stored) {
            (Err(reason), _) => refused(codes::INVALID_REQUEST, &reason),
            (Ok(_), Err((code, reason))) => refused(*code, reason),
            (Ok(_), Ok(())) => AclCreationResult::default().with_error_code(codes::NONE),
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}
