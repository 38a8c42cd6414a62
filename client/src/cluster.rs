//! The cluster as seen from a bootstrap broker: the broker list and partition leaders from
//! `Metadata`, group coordinators from `FindCoordinator`, log offsets from `ListOffsets`, and
//! a connection per broker opened on first use. Retriable errors (a leader being elected, a
//! coordinator loading) are retried a few times with a growing pause.

use std::collections::{BTreeMap, HashMap};
use std::thread;
use std::time::Duration;

use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    BrokerId, GroupId, ListOffsetsRequest, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use ringfeed_protocol::error_codes;
use uuid::Uuid;

use crate::connection::{ConnectOptions, Connection};
use crate::error::{check_error, describe_error, Error, ErrorKind, Result};

/// Attempts at a request that fails with a retriable error (leader moving, coordinator
/// loading), with `RETRY_BACKOFF` times the attempt number between them.
pub const RETRIES_MAX: u32 = 5;
pub const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// `ListOffsets` timestamps meaning "log end" and "log start".
pub const OFFSET_LATEST: i64 = -1;
pub const OFFSET_EARLIEST: i64 = -2;

/// One partition as `Metadata` describes it.
#[derive(Clone, Debug)]
pub struct PartitionLayout {
    pub index: i32,
    pub leader: BrokerId,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub in_sync: Vec<i32>,
    pub error_code: i16,
}

/// A topic's id and partitions (sorted by index).
#[derive(Clone, Debug)]
pub struct TopicLayout {
    pub name: String,
    pub topic_id: Uuid,
    pub is_internal: bool,
    pub partitions: Vec<PartitionLayout>,
}

impl TopicLayout {
    pub fn partition(&self, index: i32) -> Option<&PartitionLayout> {
        self.partitions.iter().find(|p| p.index == index)
    }
}

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

pub fn group_id(name: &str) -> GroupId {
    GroupId(StrBytes::from_string(name.to_string()))
}

/// The cluster as seen from the bootstrap broker: connections by address, the broker list of
/// the last `Metadata` answer.
pub struct Cluster {
    options: ConnectOptions,
    bootstrap_address: String,
    connections: HashMap<String, Connection>,
    brokers: BTreeMap<i32, String>,
    pub controller_id: i32,
    pub cluster_id: Option<String>,
}

impl Cluster {
    /// Connects to the first bootstrap broker that answers and reads the broker list.
    pub fn connect(brokers: &[String], options: ConnectOptions) -> Result<Self> {
        let mut errors = Vec::new();
        for address in brokers.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
            match Connection::open(address, &options) {
                Ok(connection) => {
                    let mut cluster = Self {
                        options,
                        bootstrap_address: address.to_string(),
                        connections: HashMap::from([(address.to_string(), connection)]),
                        brokers: BTreeMap::new(),
                        controller_id: -1,
                        cluster_id: None,
                    };
                    cluster.metadata(Some(&[]))?;
                    return Ok(cluster);
                }
                Err(error) => errors.push(error.to_string()),
            }
        }
        if errors.is_empty() {
            return Err(Error::failed(
                "no bootstrap broker given (--brokers or RINGFEED_BROKERS)",
            ));
        }
        Err(Error::failed(format!(
            "no bootstrap broker answered: {}",
            errors.join("; ")
        )))
    }

    pub fn timeout(&self) -> Duration {
        self.options.timeout
    }

    /// The `timeout_ms` put in requests the broker may hold (`Produce`, `CreateTopics`,
    /// `DeleteTopics`): a tenth (at most a second) below our socket timeout, so the broker's
    /// own timeout answer arrives before we give up on the connection.
    pub fn broker_timeout_ms(&self) -> i32 {
        let timeout = self.options.timeout;
        let margin = (timeout / 10).min(Duration::from_secs(1));
        i32::try_from(timeout.saturating_sub(margin).as_millis()).unwrap_or(i32::MAX)
    }

    /// The bootstrap connection, for requests any broker answers.
    pub fn any(&mut self) -> &mut Connection {
        self.connections
            .get_mut(&self.bootstrap_address)
            .expect("the bootstrap connection is opened first and never dropped")
    }

    /// Broker ids of the last `Metadata` answer.
    pub fn broker_ids(&self) -> Vec<i32> {
        self.brokers.keys().copied().collect()
    }

    pub fn broker_address(&self, node_id: i32) -> Option<&str> {
        self.brokers.get(&node_id).map(String::as_str)
    }

    /// `Metadata` for `topics` (`None`: every topic), without creating any. Refreshes the
    /// broker list.
    pub fn metadata(&mut self, topics: Option<&[String]>) -> Result<MetadataResponse> {
        let response = self.any().metadata(topics)?;
        check_error(response.error_code, None, "Metadata")?;
        self.brokers = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        self.controller_id = response.controller_id.0;
        self.cluster_id = response.cluster_id.as_ref().map(ToString::to_string);
        Ok(response)
    }

    /// The topic's layout, retrying while its leaders are being elected; a topic that does
    /// not exist is an error naming it.
    pub fn topic_layout(&mut self, topic: &str) -> Result<TopicLayout> {
        for attempt in 1..=RETRIES_MAX {
            let metadata = self.metadata(Some(&[topic.to_string()]))?;
            let Some(entry) = metadata
                .topics
                .iter()
                .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
            else {
                return Err(Error::failed(format!(
                    "topic {topic}: missing from the Metadata answer"
                )));
            };
            let retriable = error_codes::is_retriable(entry.error_code);
            if entry.error_code == error_codes::UNKNOWN_TOPIC_OR_PARTITION {
                return Err(Error::failed(format!("topic {topic} does not exist")));
            }
            if entry.error_code == 0 || !retriable || attempt == RETRIES_MAX {
                check_error(entry.error_code, None, &format!("topic {topic}"))?;
                let mut partitions: Vec<PartitionLayout> = entry
                    .partitions
                    .iter()
                    .map(|p| PartitionLayout {
                        index: p.partition_index,
                        leader: p.leader_id,
                        leader_epoch: p.leader_epoch,
                        replicas: p.replica_nodes.iter().map(|id| id.0).collect(),
                        in_sync: p.isr_nodes.iter().map(|id| id.0).collect(),
                        error_code: p.error_code,
                    })
                    .collect();
                partitions.sort_by_key(|p| p.index);
                return Ok(TopicLayout {
                    name: topic.to_string(),
                    topic_id: entry.topic_id,
                    is_internal: entry.is_internal,
                    partitions,
                });
            }
            thread::sleep(RETRY_BACKOFF * attempt);
        }
        unreachable!("the last attempt returns")
    }

    /// The connection to broker `node_id`, opened on first use.
    pub fn broker(&mut self, node_id: i32) -> Result<&mut Connection> {
        let Some(address) = self.brokers.get(&node_id).cloned() else {
            return Err(Error::failed(format!(
                "broker {node_id} is not in the cluster's broker list"
            )));
        };
        self.connection_to(&address)
    }

    pub fn connection_to(&mut self, address: &str) -> Result<&mut Connection> {
        if !self.connections.contains_key(address) {
            let connection = Connection::open(address, &self.options)?;
            self.connections.insert(address.to_string(), connection);
        }
        Ok(self.connections.get_mut(address).expect("inserted above"))
    }

    /// Drops a connection after an IO error so the next use reconnects.
    pub fn forget(&mut self, address: &str) {
        if address != self.bootstrap_address {
            self.connections.remove(address);
        }
    }

    /// The controller when the cluster names one we can reach (where topic changes go on
    /// ZooKeeper-era Kafka), else any broker (`KRaft` brokers forward them).
    pub fn controller(&mut self) -> Result<&mut Connection> {
        if self.brokers.contains_key(&self.controller_id) {
            let id = self.controller_id;
            return self.broker(id);
        }
        Ok(self.any())
    }

    /// The address of `group`'s coordinator, retrying while it is being loaded or moved.
    pub fn coordinator_address(&mut self, group: &str) -> Result<String> {
        self.coordinator_address_of(group, 0)
    }

    /// The address of transactional id `id`'s coordinator (`FindCoordinator` key type 1).
    pub fn txn_coordinator_address(&mut self, id: &str) -> Result<String> {
        self.coordinator_address_of(id, 1)
    }

    fn coordinator_address_of(&mut self, group: &str, key_type: i8) -> Result<String> {
        for attempt in 1..=RETRIES_MAX {
            let connection = self.any();
            let version = connection.version::<FindCoordinatorRequest>()?;
            let key = StrBytes::from_string(group.to_string());
            let request = if version >= 4 {
                FindCoordinatorRequest::default().with_coordinator_keys(vec![key])
            } else {
                FindCoordinatorRequest::default().with_key(key)
            }
            .with_key_type(key_type);
            let response = connection.call_at(&request, version)?;
            let (code, message, host, port) = match response.coordinators.first() {
                Some(c) if version >= 4 => (
                    c.error_code,
                    c.error_message.clone(),
                    c.host.clone(),
                    c.port,
                ),
                _ if version >= 4 => return Err(Error::failed("FindCoordinator: empty answer")),
                _ => (
                    response.error_code,
                    response.error_message.clone(),
                    response.host.clone(),
                    response.port,
                ),
            };
            if code == 0 {
                return Ok(format!("{}:{port}", host.as_str()));
            }
            if !error_codes::is_retriable(code) || attempt == RETRIES_MAX {
                return Err(Error::new(
                    ErrorKind::Broker(code),
                    format!(
                        "{} {group}: finding its coordinator: {}",
                        if key_type == 0 {
                            "group"
                        } else {
                            "transactional id"
                        },
                        describe_error(code, message.as_ref())
                    ),
                ));
            }
            thread::sleep(RETRY_BACKOFF * attempt);
        }
        unreachable!("the last attempt returns")
    }

    pub fn coordinator(&mut self, group: &str) -> Result<&mut Connection> {
        let address = self.coordinator_address(group)?;
        self.connection_to(&address)
    }

    /// `ListOffsets` for `partitions` of `layout` at `timestamp` (or `OFFSET_EARLIEST` /
    /// `OFFSET_LATEST`), asked of each partition's leader. Per partition: the offset, or the
    /// error that partition got.
    pub fn list_offsets(
        &mut self,
        layout: &TopicLayout,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<BTreeMap<i32, std::result::Result<i64, String>>> {
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        let mut offsets = BTreeMap::new();
        for &index in partitions {
            match layout.partition(index) {
                Some(p) if p.leader.0 >= 0 => by_leader.entry(p.leader.0).or_default().push(index),
                Some(_) => {
                    offsets.insert(index, Err("no leader".to_string()));
                }
                None => {
                    offsets.insert(
                        index,
                        Err(format!("topic {} has no partition {index}", layout.name)),
                    );
                }
            }
        }
        for (leader, indexes) in by_leader {
            let answered = self
                .broker(leader)?
                .list_offsets(&layout.name, &indexes, timestamp)?;
            for (index, outcome) in answered {
                offsets.insert(index, outcome.map_err(|error| error.to_string()));
            }
        }
        for &index in partitions {
            offsets
                .entry(index)
                .or_insert_with(|| Err("missing from the ListOffsets answer".to_string()));
        }
        Ok(offsets)
    }
}

impl Connection {
    /// `Metadata` for `topics` (`None`: every topic) at the negotiated version, never
    /// creating a topic where the version lets us say so (v4+).
    pub fn metadata(&mut self, topics: Option<&[String]>) -> Result<MetadataResponse> {
        let version = self.version::<MetadataRequest>()?;
        let topics = topics.map(|names| {
            names
                .iter()
                .map(|name| MetadataRequestTopic::default().with_name(Some(topic_name(name))))
                .collect()
        });
        // v0 has no "all topics" null: an empty list means all there.
        let topics = if version == 0 {
            Some(topics.unwrap_or_default())
        } else {
            topics
        };
        // The crate refuses `false` below v4, where the field does not exist; before it a
        // broker auto-creates by its own setting.
        let request = MetadataRequest::default()
            .with_topics(topics)
            .with_allow_auto_topic_creation(version < 4);
        self.call_at(&request, version)
    }

    /// `ListOffsets` of `partitions` of `topic` at `timestamp` (or `OFFSET_EARLIEST` /
    /// `OFFSET_LATEST`), asked of this broker (their leader). Per partition in the answer:
    /// the offset, or the error code that partition got.
    pub fn list_offsets(
        &mut self,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<Vec<(i32, Result<i64>)>> {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(topic))
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
        let response = self.call(&request)?;
        Ok(response
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|partition| {
                let outcome = match partition.error_code {
                    0 => Ok(partition.offset),
                    code => Err(Error::new(
                        ErrorKind::Broker(code),
                        describe_error(code, None),
                    )),
                };
                (partition.partition_index, outcome)
            })
            .collect())
    }
}
