//! `AlterConfigs` (the legacy, non-incremental form): replaces a topic's whole set of
//! overrides with the given one.

use std::rc::Rc;

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

use super::describe_configs::RESOURCE_TOPIC;
use super::{str_bytes, RequestContext};
use crate::controller::{ConfigChange, ConfigOperation, ControllerCall};
use crate::error_codes as codes;
use crate::shard::Shard;

pub async fn handle(
    shard: &Rc<Shard>,
    _context: &RequestContext,
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
        let reply = shard
            .controller_call(ControllerCall::AlterConfigs {
                changes: vec![change],
                validate_only: request.validate_only,
            })
            .await;
        let outcome = reply.and_then(|mut reply| reply.outcomes.pop());
        responses.push(match outcome {
            Some(outcome) => response
                .with_error_code(outcome.error_code)
                .with_error_message(outcome.message.as_deref().map(str_bytes)),
            None => response.with_error_code(codes::REQUEST_TIMED_OUT),
        });
    }
    AlterConfigsResponse::default().with_responses(responses)
}
