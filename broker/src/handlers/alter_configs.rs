//! `AlterConfigs` (the legacy, non-incremental form): replaces a topic's whole set of
//! overrides with the given one.

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

use crate::acl::model::Operation;
use crate::controller::{ConfigChange, ConfigOperation, ControllerCall};
use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, RequestContext, TopicAdmin};
use crate::handlers::describe_configs::RESOURCE_TOPIC;

pub async fn handle(
    shard: &TopicAdmin<'_>,
    context: &RequestContext,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let response = AlterConfigsResourceResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        if resource.resource_type != RESOURCE_TOPIC {
            responses.push(
                response
                    .with_error_code(codes::INVALID_REQUEST)
                    .with_error_message(Some(str_bytes("only topic configs can be altered"))),
            );
            continue;
        }
        if !context.authorize_topic(Operation::AlterConfigs, resource.resource_name.as_str()) {
            responses.push(response.with_error_code(codes::TOPIC_AUTHORIZATION_FAILED));
            continue;
        }
        let operations = resource
            .configs
            .iter()
            .map(|config| {
                let operation = config
                    .value
                    .as_ref()
                    .map_or(ConfigOperation::Delete, |value| {
                        ConfigOperation::Set(value.to_string())
                    });
                (config.name.to_string(), operation)
            })
            .collect();
        let change = ConfigChange {
            topic: resource.resource_name.to_string(),
            replace_all: true,
            operations,
        };
        let (error_code, message) =
            submit_config_change(shard, change, request.validate_only).await;
        responses.push(
            response
                .with_error_code(error_code)
                .with_error_message(message.as_deref().map(str_bytes)),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

/// Sends one topic's config change to the controller (both `AlterConfigs` forms end here) and
/// returns the error code and message for that resource's response.
pub(super) async fn submit_config_change(
    shard: &TopicAdmin<'_>,
    change: ConfigChange,
    validate_only: bool,
) -> (i16, Option<String>) {
    let reply = shard
        .controller_call(ControllerCall::AlterConfigs {
            changes: vec![change],
            validate_only,
        })
        .await;
    match reply.and_then(|mut reply| reply.outcomes.pop()) {
        Some(outcome) => (outcome.error_code, outcome.message),
        None => (codes::REQUEST_TIMED_OUT, None),
    }
}
