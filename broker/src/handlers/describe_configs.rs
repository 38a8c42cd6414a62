//! `DescribeConfigs`: a topic's effective configs (with their source) and the broker's
//! read-only settings.

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, RequestContext, TopicAdmin};
use crate::settings::{Kind, Setting, Source};
use crate::topic_config::{FLUSH_POLICY_KEY, TOPIC_CONFIG_KEYS};

pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_DOUBLE: i8 = 6;
const TYPE_LIST: i8 = 7;

#[allow(clippy::unused_async)]
pub async fn handle(
    shard: &TopicAdmin<'_>,
    context: &RequestContext,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|resource| match refusal(context, &resource) {
            Some(code) => DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone())
                .with_error_code(code),
            None => describe(shard, context.api_version, &resource),
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// The error for a resource the principal may not `DESCRIBE_CONFIGS` (a topic, or the
/// cluster for a broker's configs), or None.
fn refusal(
    context: &RequestContext,
    resource: &kafka_protocol::messages::describe_configs_request::DescribeConfigsResource,
) -> Option<i16> {
    match resource.resource_type {
        2 if !context
            .authorize_topic(Operation::DescribeConfigs, resource.resource_name.as_str()) =>
        {
            Some(codes::TOPIC_AUTHORIZATION_FAILED)
        }
        4 | 8 if !context.authorize_cluster(Operation::DescribeConfigs) => {
            Some(codes::CLUSTER_AUTHORIZATION_FAILED)
        }
        _ => None,
    }
}

fn describe(
    shard: &TopicAdmin<'_>,
    version: i16,
    resource: &kafka_protocol::messages::describe_configs_request::DescribeConfigsResource,
) -> DescribeConfigsResult {
    let result = DescribeConfigsResult::default()
        .with_resource_type(resource.resource_type)
        .with_resource_name(resource.resource_name.clone());
    let wanted = |key: &str| {
        resource
            .configuration_keys
            .as_ref()
            .is_none_or(|keys| keys.iter().any(|wanted| wanted.as_str() == key))
    };
    let entries: Vec<(String, String, i8, i8, bool)> = match resource.resource_type {
        RESOURCE_TOPIC => {
            let snapshot = shard.metadata.current();
            let Some(topic) = snapshot.topic(resource.resource_name.as_str()) else {
                return result
                    .with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION)
                    .with_error_message(Some(str_bytes("no such topic")));
            };
            TOPIC_CONFIG_KEYS
                .iter()
                .filter(|key| wanted(key))
                .map(|key| {
                    let source = if topic.overrides.contains_key(*key) {
                        SOURCE_TOPIC
                    } else {
                        broker_source(shard.config.settings.topic_default_source(key))
                    };
                    (
                        key.to_string(),
                        topic.config.value_of(key).unwrap_or_default(),
                        source,
                        config_type(key),
                        false,
                    )
                })
                .collect()
        }
        RESOURCE_BROKER => broker_configs(shard)
            .into_iter()
            .filter(|entry| wanted(&entry.0))
            .collect(),
        other => {
            return result
                .with_error_code(codes::INVALID_REQUEST)
                .with_error_message(Some(str_bytes(&format!(
                    "resource type {other} is not supported"
                ))));
        }
    };
    let configs = entries
        .into_iter()
        .map(|(name, value, source, kind, read_only)| {
            let entry = DescribeConfigsResourceResult::default()
                .with_name(StrBytes::from_string(name))
                .with_value(Some(StrBytes::from_string(value)))
                .with_read_only(read_only)
                .with_config_source(source);
            match version {
                // v0 has `is_default` instead of `config_source` ("true if the configuration
                // is not set"); Kafka's client turns it back into a source.
                0 => entry.with_is_default(source == SOURCE_DEFAULT),
                3.. => entry.with_config_type(kind),
                _ => entry,
            }
        })
        .collect();
    result.with_configs(configs)
}

fn config_type(key: &str) -> i8 {
    match key {
        "cleanup.policy" => TYPE_LIST,
        "max.message.bytes" | "segment.bytes" => TYPE_INT,
        FLUSH_POLICY_KEY | "compression.type" => TYPE_STRING,
        "min.cleanable.dirty.ratio" => TYPE_DOUBLE,
        _ => TYPE_LONG,
    }
}

/// Kafka's source for a value the broker's configuration decides: `STATIC_BROKER_CONFIG`
/// when the operator set it (file, environment or flag), `DEFAULT_CONFIG` otherwise.
fn broker_source(source: Option<&Source>) -> i8 {
    match source {
        None | Some(Source::Default) => SOURCE_DEFAULT,
        Some(_) => SOURCE_STATIC_BROKER,
    }
}

/// Every broker setting (`settings::SETTINGS`) with its effective value; read-only, as
/// they are fixed at start-up.
fn broker_configs(shard: &TopicAdmin<'_>) -> Vec<(String, String, i8, i8, bool)> {
    let config = &shard.config;
    config
        .settings
        .entries()
        .iter()
        .map(|entry| {
            let value = match entry.setting.key {
                // The effective values, with port 0 and relative paths resolved.
                "listeners" => config.listen.to_string(),
                "log.dirs" => config.data_dir.display().to_string(),
                _ => entry.value.clone(),
            };
            (
                entry.setting.key.to_string(),
                value,
                broker_source(Some(&entry.source)),
                setting_type(entry.setting, &entry.value),
                true,
            )
        })
        .collect()
}

fn setting_type(setting: &Setting, value: &str) -> i8 {
    match setting.kind {
        Kind::Bool => TYPE_BOOLEAN,
        Kind::Integer { max, .. } if max <= i64::from(i32::MAX) => TYPE_INT,
        Kind::Integer { .. } => TYPE_LONG,
        Kind::TopicDefault if value.parse::<i64>().is_ok() => {
            config_type(setting.topic_key.unwrap_or_default())
        }
        _ => TYPE_STRING,
    }
}
