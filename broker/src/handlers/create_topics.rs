//! `CreateTopics`: validated and applied by the controller on shard 0.

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse, TopicName};

use crate::acl::model::Operation;
use crate::controller::{ControllerCall, NewTopic, TopicOutcome};
use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, RequestContext, TopicAdmin};
use crate::metadata::MetadataSnapshot;
use crate::topic_config::TOPIC_CONFIG_KEYS;

/// `DescribeConfigs` `config_source` for a value that is a broker default.
const SOURCE_DEFAULT: i8 = 5;
/// `DescribeConfigs` `config_source` for a value set on the topic.
const SOURCE_TOPIC: i8 = 1;

pub async fn handle(
    shard: &TopicAdmin<'_>,
    context: &RequestContext,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    // CREATE on the cluster, or on the topic (Kafka's rule).
    let may_create_any = context.authorize_cluster(Operation::Create);
    let (allowed, refused): (Vec<&CreatableTopic>, Vec<&CreatableTopic>) =
        request.topics.iter().partition(|topic| {
            may_create_any || context.authorize_topic(Operation::Create, topic.name.0.as_str())
        });
    let topics: Vec<NewTopic> = allowed.into_iter().map(new_topic).collect();
    let reply = if topics.is_empty() {
        None
    } else {
        shard
            .controller_call(ControllerCall::CreateTopics {
                topics,
                validate_only: request.validate_only,
            })
            .await
    };
    let snapshot = shard.metadata.current();
    let mut results: Vec<CreatableTopicResult> = reply.map_or_else(Vec::new, |reply| {
        reply
            .outcomes
            .into_iter()
            .map(|outcome| describe_result(&snapshot, context.api_version, &outcome))
            .collect()
    });
    results.extend(refused.into_iter().map(|topic| {
        CreatableTopicResult::default()
            .with_name(topic.name.clone())
            .with_error_code(codes::TOPIC_AUTHORIZATION_FAILED)
            .with_error_message(Some(str_bytes("creating the topic needs CREATE")))
    }));
    CreateTopicsResponse::default().with_topics(results)
}

fn new_topic(topic: &CreatableTopic) -> NewTopic {
    NewTopic {
        name: topic.name.0.to_string(),
        partitions: topic.num_partitions,
        replication_factor: topic.replication_factor,
        manual_assignment: topic
            .assignments
            .iter()
            .map(|assignment| assignment.broker_ids.iter().map(|id| id.0).collect())
            .collect(),
        configs: topic
            .configs
            .iter()
            .map(|config| {
                (
                    config.name.to_string(),
                    config.value.as_ref().map(ToString::to_string),
                )
            })
            .collect(),
    }
}

/// One topic's result; v5+ also reports the partition count and the effective configs.
fn describe_result(
    snapshot: &MetadataSnapshot,
    version: i16,
    outcome: &TopicOutcome,
) -> CreatableTopicResult {
    let mut result = CreatableTopicResult::default()
        .with_name(TopicName(str_bytes(&outcome.name)))
        .with_error_code(outcome.error_code)
        .with_error_message(outcome.message.as_deref().map(str_bytes));
    if version >= 7 {
        result = result.with_topic_id(outcome.topic_id);
    }
    if version < 5 || outcome.error_code != codes::NONE {
        return result;
    }
    result = result
        .with_num_partitions(outcome.partitions)
        .with_replication_factor(outcome.replication_factor);
    let Some(topic) = snapshot.topic(&outcome.name) else {
        return result; // validate_only: nothing was created
    };
    let configs = TOPIC_CONFIG_KEYS
        .iter()
        .map(|key| {
            let source = if topic.overrides.contains_key(*key) {
                SOURCE_TOPIC
            } else {
                SOURCE_DEFAULT
            };
            CreatableTopicConfigs::default()
                .with_name(str_bytes(key))
                .with_value(topic.config.value_of(key).as_deref().map(str_bytes))
                .with_config_source(source)
        })
        .collect();
    result.with_configs(Some(configs))
}
