//! Typed topic and config calls on the [`Cluster`]: `CreateTopics`, `DeleteTopics` (to the
//! controller), `DescribeConfigs` and `IncrementalAlterConfigs` (to any broker). Each builds
//! its request for the version negotiated with the broker and returns plain values; an
//! error code becomes an [`Error`] of kind `Broker(code)`, per topic where Kafka answers per
//! topic so one refused topic does not hide the others.

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest,
};
use kafka_protocol::protocol::StrBytes;

use crate::cluster::{topic_name, Cluster};
use crate::connection::Connection;
use crate::error::{check_error, describe_error, Error, ErrorKind, Result};

/// Kafka's config resource type for a topic.
const RESOURCE_TYPE_TOPIC: i8 = 2;
/// `IncrementalAlterConfigs` operations.
const CONFIG_OPERATION_SET: i8 = 0;
const CONFIG_OPERATION_DELETE: i8 = 1;

/// A topic to create. `None` counts ask for the broker's default where the version has one
/// (v4+), else 1.
#[derive(Clone, Debug, Default)]
pub struct NewTopic {
    pub name: String,
    pub partitions: Option<i32>,
    pub replication_factor: Option<i16>,
    pub configs: Vec<(String, String)>,
}

/// What the broker did with one topic of a `CreateTopics`.
#[derive(Debug)]
pub struct CreatedTopic {
    pub name: String,
    /// The partitions and replication factor it got, which the answer carries from v5 on.
    pub outcome: Result<Option<(i32, i16)>>,
}

/// One config entry of `DescribeConfigs`.
#[derive(Clone, Debug)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    pub is_sensitive: bool,
    /// Kafka's `ConfigSource` code; see [`config_source_name`].
    pub source: i8,
}

/// The name Kafka gives a `ConfigSource` code.
pub fn config_source_name(source: i8) -> &'static str {
    match source {
        1 => "DYNAMIC_TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => "DEFAULT_CONFIG",
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        _ => "UNKNOWN",
    }
}

/// An error code of one item of an answer, with the broker's message.
fn item_error(code: i16, message: Option<&StrBytes>) -> Error {
    Error::new(ErrorKind::Broker(code), describe_error(code, message))
}

fn str_bytes(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

impl Connection {
    /// `CreateTopics` on this broker (the controller, or any `KRaft` broker), the broker
    /// waiting at most `timeout_ms`; per topic, its result in the answer's order.
    pub fn create_topics(
        &mut self,
        topics: &[NewTopic],
        timeout_ms: i32,
    ) -> Result<Vec<CreatedTopic>> {
        let version = self.version::<CreateTopicsRequest>()?;
        let request = create_topics_request(topics, version).with_timeout_ms(timeout_ms);
        let response = self.call_at(&request, version)?;
        Ok(response
            .topics
            .iter()
            .map(|result| CreatedTopic {
                name: result.name.0.to_string(),
                outcome: if result.error_code != 0 {
                    Err(item_error(result.error_code, result.error_message.as_ref()))
                } else if version >= 5 {
                    Ok(Some((result.num_partitions, result.replication_factor)))
                } else {
                    Ok(None)
                },
            })
            .collect())
    }
}

impl Cluster {
    /// `CreateTopics` on the controller; per topic, its result in the answer's order.
    pub fn create_topics(&mut self, topics: &[NewTopic]) -> Result<Vec<CreatedTopic>> {
        let timeout_ms = self.broker_timeout_ms();
        self.controller()?.create_topics(topics, timeout_ms)
    }

    /// `DeleteTopics` on the controller; per topic (named, or by id when the answer has no
    /// name), whether it was deleted.
    pub fn delete_topics(&mut self, names: &[String]) -> Result<Vec<(String, Result<()>)>> {
        let timeout_ms = self.broker_timeout_ms();
        let connection = self.controller()?;
        let version = connection.version::<DeleteTopicsRequest>()?;
        // v6 lists topics as states (name or id); before, as names.
        let request = if version >= 6 {
            DeleteTopicsRequest::default().with_topics(
                names
                    .iter()
                    .map(|name| DeleteTopicState::default().with_name(Some(topic_name(name))))
                    .collect(),
            )
        } else {
            DeleteTopicsRequest::default()
                .with_topic_names(names.iter().map(|n| topic_name(n)).collect())
        }
        .with_timeout_ms(timeout_ms);
        let response = connection.call_at(&request, version)?;
        Ok(response
            .responses
            .iter()
            .map(|result| {
                let name = result
                    .name
                    .as_ref()
                    .map_or_else(|| result.topic_id.to_string(), |n| n.0.to_string());
                let outcome = match result.error_code {
                    0 => Ok(()),
                    code => Err(item_error(code, result.error_message.as_ref())),
                };
                (name, outcome)
            })
            .collect())
    }

    /// Every config of topic `name` (`DescribeConfigs`, any broker).
    pub fn describe_topic_configs(&mut self, name: &str) -> Result<Vec<ConfigEntry>> {
        let request = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(RESOURCE_TYPE_TOPIC)
                .with_resource_name(str_bytes(name))
                .with_configuration_keys(None),
        ]);
        let response = self.any().call(&request)?;
        let Some(result) = response.results.first() else {
            return Err(Error::failed(format!(
                "DescribeConfigs {name}: empty answer"
            )));
        };
        check_error(
            result.error_code,
            result.error_message.as_ref(),
            &format!("configs of {name}"),
        )?;
        Ok(result
            .configs
            .iter()
            .map(|c| ConfigEntry {
                name: c.name.to_string(),
                value: c.value.as_ref().map(ToString::to_string),
                is_sensitive: c.is_sensitive,
                source: c.config_source,
            })
            .collect())
    }

    /// Sets `set` and removes `delete` from topic `name`'s configs in one
    /// `IncrementalAlterConfigs` (any broker); the other configs are left as they are.
    pub fn alter_topic_configs(
        &mut self,
        name: &str,
        set: &[(String, String)],
        delete: &[String],
    ) -> Result<()> {
        let mut configs: Vec<AlterableConfig> = set
            .iter()
            .map(|(key, value)| {
                AlterableConfig::default()
                    .with_name(str_bytes(key))
                    .with_config_operation(CONFIG_OPERATION_SET)
                    .with_value(Some(str_bytes(value)))
            })
            .collect();
        configs.extend(delete.iter().map(|key| {
            AlterableConfig::default()
                .with_name(str_bytes(key))
                .with_config_operation(CONFIG_OPERATION_DELETE)
                .with_value(None)
        }));
        let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(RESOURCE_TYPE_TOPIC)
                .with_resource_name(str_bytes(name))
                .with_configs(configs),
        ]);
        let response = self.any().call(&request)?;
        let Some(result) = response.responses.first() else {
            return Err(Error::failed(format!(
                "IncrementalAlterConfigs {name}: empty answer"
            )));
        };
        check_error(
            result.error_code,
            result.error_message.as_ref(),
            &format!("altering configs of {name}"),
        )
    }
}

/// `CreateTopics` for `topics` at `version`, without its timeout.
pub fn create_topics_request(topics: &[NewTopic], version: i16) -> CreateTopicsRequest {
    // "-1: the broker's default" exists from v4; older brokers need numbers.
    let default = if version >= 4 { -1 } else { 1 };
    let topics = topics
        .iter()
        .map(|topic| {
            CreatableTopic::default()
                .with_name(topic_name(&topic.name))
                .with_num_partitions(topic.partitions.unwrap_or(default))
                .with_replication_factor(topic.replication_factor.unwrap_or(default as i16))
                .with_configs(
                    topic
                        .configs
                        .iter()
                        .map(|(key, value)| {
                            CreatableTopicConfig::default()
                                .with_name(str_bytes(key))
                                .with_value(Some(str_bytes(value)))
                        })
                        .collect(),
                )
        })
        .collect();
    CreateTopicsRequest::default().with_topics(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_counts_ask_for_the_broker_default_only_where_the_version_has_one() {
        let topic = NewTopic {
            name: "t".to_string(),
            configs: vec![("retention.ms".to_string(), "1000".to_string())],
            ..NewTopic::default()
        };
        let v4 = create_topics_request(std::slice::from_ref(&topic), 4);
        assert_eq!(v4.topics[0].num_partitions, -1);
        assert_eq!(v4.topics[0].replication_factor, -1);
        assert_eq!(v4.topics[0].configs[0].name.as_str(), "retention.ms");
        let v3 = create_topics_request(&[topic], 3);
        assert_eq!(v3.topics[0].num_partitions, 1);
        assert_eq!(v3.topics[0].replication_factor, 1);
    }
}
