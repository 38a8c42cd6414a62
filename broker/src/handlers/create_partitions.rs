//! `CreatePartitions`: grow a topic; new partitions are placed on the least-loaded shards.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse, TopicName};

use crate::acl::model::Operation;
use crate::controller::ControllerCall;
use crate::handlers::context::{str_bytes, RequestContext, TopicAdmin};

/// A topic and the partition count asked for it.
type NameAndCount = (String, i32);

pub async fn handle(
    shard: &TopicAdmin<'_>,
    context: &RequestContext,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    // ALTER on each topic (Kafka's rule).
    let (topics, refused): (Vec<NameAndCount>, Vec<NameAndCount>) = request
        .topics
        .iter()
        .map(|topic| (topic.name.0.to_string(), topic.count))
        .partition(|(name, _)| context.authorize_topic(Operation::Alter, name));
    let refused: Vec<CreatePartitionsTopicResult> = refused
        .into_iter()
        .map(|(name, _)| {
            CreatePartitionsTopicResult::default()
                .with_name(TopicName(str_bytes(&name)))
                .with_error_code(crate::error_codes::TOPIC_AUTHORIZATION_FAILED)
        })
        .collect();
    let reply = if topics.is_empty() {
        None
    } else {
        shard
            .controller_call(ControllerCall::CreatePartitions {
                topics,
                validate_only: request.validate_only,
            })
            .await
    };
    let Some(reply) = reply else {
        return CreatePartitionsResponse::default().with_results(refused);
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
        .chain(refused)
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}
