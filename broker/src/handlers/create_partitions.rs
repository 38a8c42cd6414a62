//! `CreatePartitions`: grow a topic; new partitions are placed on the least-loaded shards.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse, TopicName};

use crate::controller::ControllerCall;
use crate::handlers::context::{str_bytes, RequestContext, TopicAdmin};

pub async fn handle(
    shard: &TopicAdmin<'_>,
    _context: &RequestContext,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let topics = request
        .topics
        .iter()
        .map(|topic| (topic.name.0.to_string(), topic.count))
        .collect();
    let Some(reply) = shard
        .controller_call(ControllerCall::CreatePartitions {
            topics,
            validate_only: request.validate_only,
        })
        .await
    else {
        return CreatePartitionsResponse::default();
    };
    let results = reply
        .outcomes
        .into_iter()
        .map(|outcome| {
            CreatePartitionsTopicResult::default()
                .with_name(TopicName(str_bytes(&outcome.name)))
                .with_error_code(outcome.error_code)
                .with_error_message(outcome.message.as_deref().map(str_bytes))
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}
