//! `CreatePartitions`: grow a topic; new partitions get the topic's replication factor,
//! placed by the controller or on the replica lists the client gives.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse, TopicName};

use crate::acl::model::Operation;
use crate::controller::{ControllerCall, NewPartitions};
use crate::handlers::context::{str_bytes, RequestContext, TopicAdmin};

pub async fn handle(
    shard: &TopicAdmin<'_>,
    context: &RequestContext,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    // ALTER on each topic (Kafka's rule).
    let (topics, refused): (Vec<NewPartitions>, Vec<NewPartitions>) = request
        .topics
        .iter()
        .map(|topic| NewPartitions {
            name: topic.name.0.to_string(),
            total: topic.count,
            assignment: topic
                .assignments
                .iter()
                .flatten()
                .map(|assignment| assignment.broker_ids.iter().map(|id| id.0).collect())
                .collect(),
        })
        .partition(|growth| context.authorize_topic(Operation::Alter, &growth.name));
    let refused: Vec<CreatePartitionsTopicResult> = refused
        .into_iter()
        .map(|growth| {
            CreatePartitionsTopicResult::default()
                .with_name(TopicName(str_bytes(&growth.name)))
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
