//! Topic set-up and partition layout: `Metadata`, `CreateTopics` and `ListOffsets`, run once before
//! a workload starts so nothing on the measured path asks the cluster anything.

use std::collections::BTreeMap;
use std::io;
use std::thread;
use std::time::Duration;

use kafka_protocol::messages::{ApiKey, BrokerId, MetadataResponse};
use ringfeed_client::admin::NewTopic;
pub use ringfeed_client::topic_name;

use crate::cli::ApiVersionsMode;
use crate::client::{self, explain_fixed, protocol_error, Connection};

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const LEADER_NOT_AVAILABLE: i16 = 5;
const TOPIC_ALREADY_EXISTS: i16 = 36;
/// How long the broker may take to create the topic.
const CREATE_TOPICS_TIMEOUT_MS: i32 = 30_000;
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
    // Checked first for the bench's own words on a broker too old for it.
    client::version(&connection.versions, ApiKey::Metadata)?;
    Ok(connection.metadata(Some(&[topic.to_string()]))?)
}

fn topic_error(metadata: &MetadataResponse, topic: &str) -> Option<i16> {
    metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
        .map(|t| t.error_code)
}

fn create_topic(connection: &mut Connection, topic: &str, partitions: i32) -> io::Result<()> {
    client::version(&connection.versions, ApiKey::CreateTopics)?;
    // Replication by the broker's default (v4+), else 1: a single-node target wants 1 anyway.
    let new_topic = NewTopic {
        name: topic.to_string(),
        partitions: Some(partitions),
        ..NewTopic::default()
    };
    for created in connection.create_topics(&[new_topic], CREATE_TOPICS_TIMEOUT_MS)? {
        match created.outcome {
            Err(error) if error.broker_code() != Some(TOPIC_ALREADY_EXISTS) => {
                return Err(protocol_error(&format!("CreateTopics {topic}"), error));
            }
            _ => {}
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
        client::version(&connection.versions, ApiKey::ListOffsets)?;
        for (partition, outcome) in
            connection.list_offsets(&layout.topic, &partitions, timestamp)?
        {
            let offset = outcome.map_err(|error| protocol_error("ListOffsets", error))?;
            let Some(slot) = usize::try_from(partition)
                .ok()
                .and_then(|index| offsets.get_mut(index))
            else {
                return Err(protocol_error(
                    "ListOffsets",
                    format!("an answer for partition {partition}, which was not asked"),
                ));
            };
            *slot = offset;
        }
    }
    Ok(offsets)
}
