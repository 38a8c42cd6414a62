//! `IncrementalAlterConfigs`: SET and DELETE of single topic config keys. APPEND and
//! SUBTRACT only apply to list configs, and `cleanup.policy` (the one list) accepts only
//! `delete`, so they are refused with `INVALID_CONFIG`.

use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};

use crate::acl::model::Operation;
use crate::controller::{ConfigChange, ConfigOperation};
use crate::error_codes as codes;
use crate::handlers::alter_configs::submit_config_change;
use crate::handlers::context::{str_bytes, RequestContext, TopicAdmin};
use crate::handlers::describe_configs::RESOURCE_TOPIC;

const OPERATION_SET: i8 = 0;
const OPERATION_DELETE: i8 = 1;

pub async fn handle(
    shard: &TopicAdmin<'_>,
    context: &RequestContext,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
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
        let mut operations = Vec::with_capacity(resource.configs.len());
        let mut refused = None;
        for config in &resource.configs {
            let operation = match (config.config_operation, &config.value) {
                (OPERATION_SET, Some(value)) => ConfigOperation::Set(value.to_string()),
                (OPERATION_DELETE, _) => ConfigOperation::Delete,
                (operation, _) => {
                    refused = Some(format!(
                        "operation {operation} on {} is not supported",
                        config.name.as_str()
                    ));
                    break;
                }
            };
            operations.push((config.name.to_string(), operation));
        }
        if let Some(reason) = refused {
            responses.push(
                response
                    .with_error_code(codes::INVALID_CONFIG)
                    .with_error_message(Some(str_bytes(&reason))),
            );
            continue;
        }
        let change = ConfigChange {
            topic: resource.resource_name.to_string(),
            replace_all: false,
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
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
