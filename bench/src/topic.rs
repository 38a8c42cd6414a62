//! Topic set-up and partition layout: `Metadata`, `CreateTopics` and `ListOffsets`, run once before
//! a workload starts so nothing on the measured path asks the cluster anything.

use std::collections::BTreeMap;
use std::io;
use std::thread;
use std::time::Duration;

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, ListOffsetsRequest, MetadataRequest, MetadataResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::cli::ApiVersionsMode;
use crate::client::{self, explain_fixed, protocol_error, Connection};

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const LEADER_NOT_AVAILABLE: i16 = 5;
const TOPIC_ALREADY_EXISTS: i16 = 36;
/// A new topic's leaders appear within this many metadata polls (100 ms apart) or the set-up
/// fails: bounded, like everything else.
const LEADER_POLLS_MAX: u32 = 100;
const LEADER_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// `ListOffsets` timestamps meaning "log end" and "log start".
const OFFSET_LATEST: i64 = -1;
const OFFSET_EARLIEST: i64 = -2;

/// Where each partition of the topic lives: `leaders[p]` is the `host:port` of partition `p`'s
/// leader.
#[derive(Clone, Debug)]
pub struct Layout {
    pub topic: String,
    pub leaders: Vec<String>,
    /// How every connection of the run learns the broker's API versions.
    pub api_versions: ApiVersionsMode,
}

impl Layout {
    pub fn partitions(&self) -> usize {
        self.leaders.len()
    }
}

pub fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// Returns the topic's layout, creating it with `partitions` partitions when it does not
/// exist. An existing topic keeps its partition count (and the caller is told).
pub fn ensure_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    api_versions: ApiVersionsMode,
) -> io::Result<Layout> {
    let mut connection = client::open(bootstrap, api_versions)?;
    if client::version(&connection.versions, ApiKey::Metadata)? < 4 {
        // Before Metadata v4 asking about a topic may auto-create it with the broker's
        // default partition count, so create it first (an existing topic is left alone).
        create_topic(&mut connection, topic, partitions)
            .map_err(|e| explain_fixed(e, &connection.versions, "CreateTopics"))?;
    } else {
        let metadata = fetch_metadata(&mut connection, topic)?;
        if topic_error(&metadata, topic) == Some(UNKNOWN_TOPIC_OR_PARTITION) {
            create_topic(&mut connection, topic, partitions)?;
        }
    }
    for _ in 0..LEADER_POLLS_MAX {
        let metadata = fetch_metadata(&mut connection, topic)?;
        if let Some(leaders) = leaders_of(&metadata, topic)? {
            return Ok(Layout {
                topic: topic.to_string(),
                leaders,
                api_versions,
            });
        }
        thread::sleep(LEADER_POLL_INTERVAL);
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("topic {topic}: partition leaders did not appear"),
    ))
}

fn fetch_metadata(connection: &mut Connection, topic: &str) -> io::Result<MetadataResponse> {
    let version = client::version(&connection.versions, ApiKey::Metadata)?;
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name(topic)))
        ]))
        // The field exists from v4; before it a broker auto-creates by its own setting, and
        // the codec refuses a non-default value it cannot encode.
        .with_allow_auto_topic_creation(version < 4);
    Ok(connection.call_at(&request, version)?)
}

fn topic_error(metadata: &MetadataResponse, topic: &str) -> Option<i16> {
    metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
        .map(|t| t.error_code)
}

fn create_topic(connection: &mut Connection, topic: &str, partitions: i32) -> io::Result<()> {
    let version = client::version(&connection.versions, ApiKey::CreateTopics)?;
    // -1 ("broker default") replication needs v4+; a single-node target wants 1 anyway.
    let replication_factor = if version >= 4 { -1 } else { 1 };
    let request = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)])
        .with_timeout_ms(30_000);
    let response = connection.call_at(&request, version)?;
    for result in response.topics {
        if result.error_code != 0 && result.error_code != TOPIC_ALREADY_EXISTS {
            return Err(protocol_error(
                &format!("CreateTopics {topic}"),
                format!(
                    "error {} {}",
                    result.error_code,
                    result.error_message.as_ref().map_or("", |m| m.as_str())
                ),
            ));
        }
    }
    Ok(())
}

/// Each partition's leader once every partition has one; `None` while leaders are still being
/// elected.
fn leaders_of(metadata: &MetadataResponse, topic: &str) -> io::Result<Option<Vec<String>>> {
    let brokers: BTreeMap<BrokerId, String> = metadata
        .brokers
        .iter()
        .map(|b| (b.node_id, format!("{}:{}", b.host.as_str(), b.port)))
        .collect();
    let Some(entry) = metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
    else {
        return Ok(None);
    };
    match entry.error_code {
        0 => {}
        UNKNOWN_TOPIC_OR_PARTITION | LEADER_NOT_AVAILABLE => return Ok(None),
        code => return Err(protocol_error(&format!("Metadata {topic}"), code)),
    }
    let mut partitions: Vec<_> = entry.partitions.iter().collect();
    partitions.sort_by_key(|p| p.partition_index);
    let mut leaders = Vec::with_capacity(partitions.len());
    for (expected, partition) in partitions.iter().enumerate() {
        let Some(address) = brokers.get(&partition.leader_id) else {
            return Ok(None);
        };
        if partition.partition_index as usize != expected || partition.error_code != 0 {
            return Ok(None);
        }
        leaders.push(address.clone());
    }
    if leaders.is_empty() {
        return Ok(None);
    }
    Ok(Some(leaders))
}

/// Which end of each partition's log to ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogEnd {
    Start,
    End,
}

/// The start or end offset of every partition, asked of each partition's leader.
pub fn list_offsets(layout: &Layout, end: LogEnd) -> io::Result<Vec<i64>> {
    let timestamp = match end {
        LogEnd::Start => OFFSET_EARLIEST,
        LogEnd::End => OFFSET_LATEST,
    };
    let mut offsets = vec![0; layout.partitions()];
    let mut by_leader: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (partition, leader) in layout.leaders.iter().enumerate() {
        by_leader.entry(leader).or_default().push(partition as i32);
    }
    for (leader, partitions) in by_leader {
        let mut connection = client::open(leader, layout.api_versions)?;
        let version = client::version(&connection.versions, ApiKey::ListOffsets)?;
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(&layout.topic))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(p)
                                .with_timestamp(timestamp)
                        })
                        .collect(),
                )]);
        let response = connection.call_at(&request, version)?;
        for partition in response.topics.iter().flat_map(|t| &t.partitions) {
            if partition.error_code != 0 {
                return Err(protocol_error("ListOffsets", partition.error_code));
            }
            offsets[partition.partition_index as usize] = partition.offset;
        }
    }
    Ok(offsets)
}
