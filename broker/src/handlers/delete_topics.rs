//! `DeleteTopics`: by name (v1-5) or by name or id (v6); the controller removes the topic and
//! each owning shard deletes its partition directories before the answer goes out.

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};

use crate::acl::model::Operation;
use crate::controller::{ControllerCall, TopicRef};
use crate::handlers::context::{str_bytes, RequestContext, TopicAdmin};

pub async fn handle(
    shard: &TopicAdmin<'_>,
    context: &RequestContext,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let mut topics: Vec<TopicRef> = request
        .topic_names
        .iter()
        .map(|name| TopicRef::Name(name.0.to_string()))
        .collect();
    topics.extend(request.topics.iter().map(|topic| match &topic.name {
        Some(name) => TopicRef::Name(name.0.to_string()),
        None => TopicRef::Id(topic.topic_id),
    }));
    // DELETE on each topic; one named by id is checked under the name it has now.
    let snapshot = shard.metadata.current();
    let (topics, refused): (Vec<TopicRef>, Vec<TopicRef>) = topics.into_iter().partition(|topic| {
        let name = match topic {
            TopicRef::Name(name) => Some(name.clone()),
            TopicRef::Id(id) => snapshot
                .topics
                .values()
                .find(|metadata| metadata.id == *id)
                .map(|metadata| metadata.name.to_string()),
        };
        name.is_none_or(|name| context.authorize_topic(Operation::Delete, &name))
    });
    let refused = refused.into_iter().map(|topic| {
        let mut result = DeletableTopicResult::default()
            .with_error_code(crate::error_codes::TOPIC_AUTHORIZATION_FAILED);
        match topic {
            TopicRef::Name(name) => result = result.with_name(Some(TopicName(str_bytes(&name)))),
            TopicRef::Id(id) if context.api_version >= 6 => result = result.with_topic_id(id),
            TopicRef::Id(_) => {}
        }
        result
    });
    let refused: Vec<DeletableTopicResult> = refused.collect();
    let reply = if topics.is_empty() {
        None
    } else {
        shard
            .controller_call(ControllerCall::DeleteTopics { topics })
            .await
    };
    let Some(reply) = reply else {
        return DeleteTopicsResponse::default().with_responses(refused);
    };
    let responses = reply
        .outcomes
        .into_iter()
        .map(|outcome| {
            let name = (!outcome.name.is_empty()).then(|| TopicName(str_bytes(&outcome.name)));
            let mut result = DeletableTopicResult::default()
                .with_name(name)
                .with_error_code(outcome.error_code);
            if context.api_version >= 5 {
                result = result.with_error_message(outcome.message.as_deref().map(str_bytes));
            }
            if context.api_version >= 6 {
                result = result.with_topic_id(outcome.topic_id);
            }
            result
        })
        .chain(refused)
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}
