//! Connections and cluster routing for the CLI: blocking frames over `TcpStream`, versions
//! negotiated per broker with `ApiVersions`, the broker list and partition leaders from
//! `Metadata`, group coordinators from `FindCoordinator`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::thread;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, GroupId, ListOffsetsRequest,
    MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message, Request, StrBytes};
use uuid::Uuid;

use super::{check_error, describe_error, fail, CliError, CliResult, ConnectArgs};

/// Largest response frame accepted. Fetches ask for at most `FETCH_BYTES_MAX`, metadata of
/// even a large cluster is a few MiB; anything bigger is a broken peer, refused before the
/// buffer is allocated.
pub const RESPONSE_FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;
const CLIENT_ID: &str = "ringfeed-cli";
/// Attempts at a request that fails with a retriable error (leader moving, coordinator
/// loading), with `RETRY_BACKOFF` times the attempt number between them.
pub const RETRIES_MAX: u32 = 5;
pub const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// `ListOffsets` timestamps meaning "log end" and "log start".
pub const OFFSET_LATEST: i64 = -1;
pub const OFFSET_EARLIEST: i64 = -2;

/// The APIs the CLI uses with the highest version it speaks. The crate's own maximum, except
/// OffsetCommit/OffsetFetch: their v10 names topics by id and the crate's v10 request
/// structs have no field for it.
const APIS: [(ApiKey, i16); 20] = [
    (
        ApiKey::Produce,
        max_of::<kafka_protocol::messages::ProduceRequest>(),
    ),
    (
        ApiKey::Fetch,
        max_of::<kafka_protocol::messages::FetchRequest>(),
    ),
    (ApiKey::ListOffsets, max_of::<ListOffsetsRequest>()),
    (ApiKey::Metadata, max_of::<MetadataRequest>()),
    (ApiKey::OffsetCommit, 9),
    (ApiKey::OffsetFetch, 9),
    (ApiKey::FindCoordinator, max_of::<FindCoordinatorRequest>()),
    (
        ApiKey::JoinGroup,
        max_of::<kafka_protocol::messages::JoinGroupRequest>(),
    ),
    (
        ApiKey::Heartbeat,
        max_of::<kafka_protocol::messages::HeartbeatRequest>(),
    ),
    (
        ApiKey::LeaveGroup,
        max_of::<kafka_protocol::messages::LeaveGroupRequest>(),
    ),
    (
        ApiKey::SyncGroup,
        max_of::<kafka_protocol::messages::SyncGroupRequest>(),
    ),
    (
        ApiKey::DescribeGroups,
        max_of::<kafka_protocol::messages::DescribeGroupsRequest>(),
    ),
    (
        ApiKey::ListGroups,
        max_of::<kafka_protocol::messages::ListGroupsRequest>(),
    ),
    (ApiKey::ApiVersions, max_of::<ApiVersionsRequest>()),
    (
        ApiKey::CreateTopics,
        max_of::<kafka_protocol::messages::CreateTopicsRequest>(),
    ),
    (
        ApiKey::DeleteTopics,
        max_of::<kafka_protocol::messages::DeleteTopicsRequest>(),
    ),
    (
        ApiKey::DescribeConfigs,
        max_of::<kafka_protocol::messages::DescribeConfigsRequest>(),
    ),
    (
        ApiKey::DeleteGroups,
        max_of::<kafka_protocol::messages::DeleteGroupsRequest>(),
    ),
    (
        ApiKey::IncrementalAlterConfigs,
        max_of::<kafka_protocol::messages::IncrementalAlterConfigsRequest>(),
    ),
    (
        ApiKey::DescribeCluster,
        max_of::<kafka_protocol::messages::DescribeClusterRequest>(),
    ),
];

const fn max_of<M: Message>() -> i16 {
    M::VERSIONS.max
}

fn crate_min(key: ApiKey) -> i16 {
    key.valid_versions().min
}

/// The version of each API both sides speak, chosen once per broker.
#[derive(Clone, Debug, Default)]
pub struct Versions {
    chosen: HashMap<i16, i16>,
}

impl Versions {
    /// For each API: the highest version that is at most ours and theirs, and at least both
    /// minimums; an API with no such version is left out (its use fails with a clear error).
    pub fn negotiate(response: &ApiVersionsResponse) -> Self {
        let mut chosen = HashMap::new();
        for (key, ours_max) in APIS {
            let Some(theirs) = response.api_keys.iter().find(|a| a.api_key == key as i16) else {
                continue;
            };
            let version = ours_max.min(theirs.max_version);
            if version >= theirs.min_version.max(crate_min(key)) {
                chosen.insert(key as i16, version);
            }
        }
        Self { chosen }
    }

    pub fn get(&self, key: i16) -> Option<i16> {
        self.chosen.get(&key).copied()
    }
}

/// One connection to one broker, with the versions negotiated for it. One request is in
/// flight at a time.
pub struct Connection {
    stream: TcpStream,
    pub address: String,
    versions: Versions,
    next_correlation_id: i32,
    frame: BytesMut,
}

impl Connection {
    /// Connects (trying every address the name resolves to) and negotiates versions.
    pub fn open(address: &str, timeout: Duration) -> CliResult<Self> {
        let stream = connect(address, timeout)?;
        let mut connection = Self {
            stream,
            address: address.to_string(),
            versions: Versions::default(),
            next_correlation_id: 1,
            frame: BytesMut::with_capacity(4096),
        };
        let response = connection.api_versions()?;
        connection.versions = Versions::negotiate(&response);
        Ok(connection)
    }

    /// `ApiVersions` at our highest version; a broker that does not know it answers with a
    /// v0 body carrying `UNSUPPORTED_VERSION` and its range (KIP-511), and we ask again at
    /// the highest version it named.
    fn api_versions(&mut self) -> CliResult<ApiVersionsResponse> {
        let ours = max_of::<ApiVersionsRequest>();
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let frame = self.round_trip(&request, ours)?;
        let response = match decode_body::<ApiVersionsResponse>(frame.clone(), ours) {
            Ok(response) if response.error_code == 0 => return Ok(response),
            Ok(response) => response,
            Err(_) => decode_body::<ApiVersionsResponse>(frame, 0)?,
        };
        if response.error_code != ResponseError::UnsupportedVersion.code() {
            check_error(
                response.error_code,
                None,
                &format!("ApiVersions to {}", self.address),
            )?;
        }
        let theirs = response
            .api_keys
            .iter()
            .find(|a| a.api_key == ApiKey::ApiVersions as i16)
            .map_or(0, |a| a.max_version.min(ours));
        let frame = self.round_trip(&request, theirs)?;
        let response = decode_body::<ApiVersionsResponse>(frame, theirs)?;
        check_error(
            response.error_code,
            None,
            &format!("ApiVersions to {}", self.address),
        )?;
        Ok(response)
    }

    /// The negotiated version of `R`'s API, or an error naming the API and the broker.
    pub fn version<R: Request>(&self) -> CliResult<i16> {
        self.versions.get(R::KEY).ok_or_else(|| {
            let name =
                ApiKey::try_from(R::KEY).map_or_else(|()| R::KEY.to_string(), |k| format!("{k:?}"));
            CliError(format!(
                "broker {} supports no version of {name} this client speaks",
                self.address
            ))
        })
    }

    /// Sends `request` at the negotiated version and waits for its response.
    pub fn call<R: Request>(&mut self, request: &R) -> CliResult<R::Response> {
        let version = self.version::<R>()?;
        self.call_at(request, version)
    }

    pub fn call_at<R: Request>(&mut self, request: &R, version: i16) -> CliResult<R::Response> {
        let frame = self.round_trip(request, version)?;
        decode_body::<R::Response>(frame, version)
    }

    /// Sends a request the broker does not answer (Produce with acks=0).
    pub fn send_only<R: Request>(&mut self, request: &R, version: i16) -> CliResult<()> {
        self.send(request, version).map(|_| ())
    }

    /// Lengthens the read timeout for requests the broker may hold (a long-polling fetch,
    /// a `JoinGroup` waiting for the rebalance).
    pub fn set_read_timeout(&mut self, timeout: Duration) -> CliResult<()> {
        self.stream
            .set_read_timeout(Some(timeout))
            .map_err(|error| CliError(format!("{}: {error}", self.address)))
    }

    fn send<R: Request>(&mut self, request: &R, version: i16) -> CliResult<i32> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        encode_request(&mut self.frame, request, version, correlation_id)?;
        self.stream
            .write_all(&self.frame)
            .map_err(|error| io_error(&self.address, "sending a request", &error))?;
        Ok(correlation_id)
    }

    /// Sends and returns the response frame after its header, checked for the correlation id.
    fn round_trip<R: Request>(&mut self, request: &R, version: i16) -> CliResult<Bytes> {
        let correlation_id = self.send(request, version)?;
        let mut frame = self.receive_frame()?;
        // ApiVersions responses always carry header v0 so any client can read them (KIP-511).
        let header_version = if R::KEY == ApiKey::ApiVersions as i16 {
            0
        } else {
            R::Response::header_version(version)
        };
        let header = ResponseHeader::decode(&mut frame, header_version)
            .map_err(|error| CliError(format!("{}: bad response header: {error}", self.address)))?;
        if header.correlation_id != correlation_id {
            return fail(format!(
                "{}: response correlation id {} where {correlation_id} was expected",
                self.address, header.correlation_id
            ));
        }
        Ok(frame)
    }

    fn receive_frame(&mut self) -> CliResult<Bytes> {
        let mut size = [0_u8; 4];
        self.stream
            .read_exact(&mut size)
            .map_err(|error| io_error(&self.address, "waiting for a response", &error))?;
        let frame_bytes = i32::from_be_bytes(size);
        let Ok(frame_bytes) = usize::try_from(frame_bytes) else {
            return fail(format!(
                "{}: negative response size {frame_bytes}",
                self.address
            ));
        };
        if frame_bytes > RESPONSE_FRAME_BYTES_MAX {
            return fail(format!(
                "{}: a {frame_bytes}-byte response is over the {RESPONSE_FRAME_BYTES_MAX}-byte bound",
                self.address
            ));
        }
        let mut frame = BytesMut::zeroed(frame_bytes);
        self.stream
            .read_exact(&mut frame)
            .map_err(|error| io_error(&self.address, "reading a response", &error))?;
        Ok(frame.freeze())
    }
}

fn connect(address: &str, timeout: Duration) -> CliResult<TcpStream> {
    let addresses = address
        .to_socket_addrs()
        .map_err(|error| CliError(format!("broker address {address:?}: {error}")))?;
    let mut last_error = None;
    for socket_address in addresses {
        match TcpStream::connect_timeout(&socket_address, timeout) {
            Ok(stream) => {
                let configured = stream
                    .set_nodelay(true)
                    .and_then(|()| stream.set_read_timeout(Some(timeout)))
                    .and_then(|()| stream.set_write_timeout(Some(timeout)));
                configured.map_err(|error| io_error(address, "configuring the socket", &error))?;
                return Ok(stream);
            }
            Err(error) => last_error = Some(error),
        }
    }
    match last_error {
        Some(error) => Err(io_error(address, "connecting", &error)),
        None => fail(format!("broker address {address:?} resolves to nothing")),
    }
}

fn io_error(address: &str, doing: &str, error: &std::io::Error) -> CliError {
    let hint = match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            " (timed out; see --timeout-ms)"
        }
        std::io::ErrorKind::UnexpectedEof => " (the broker closed the connection)",
        _ => "",
    };
    CliError(format!("broker {address}: {doing}: {error}{hint}"))
}

fn encode_request<R: Request>(
    frame: &mut BytesMut,
    request: &R,
    version: i16,
    correlation_id: i32,
) -> CliResult<()> {
    frame.clear();
    frame.put_i32(0); // patched below once the length is known
    RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)))
        .encode(frame, R::header_version(version))
        .map_err(encode_failed)?;
    request.encode(frame, version).map_err(encode_failed)?;
    let body_bytes = i32::try_from(frame.len() - 4)
        .map_err(|_| CliError("a request larger than 2 GiB".to_string()))?;
    frame[..4].copy_from_slice(&body_bytes.to_be_bytes());
    Ok(())
}

fn encode_failed(error: impl std::fmt::Display) -> CliError {
    CliError(format!("encoding a request: {error}"))
}

fn decode_body<M: Decodable>(mut frame: Bytes, version: i16) -> CliResult<M> {
    M::decode(&mut frame, version)
        .map_err(|error| CliError(format!("malformed response (v{version}): {error}")))
}

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
    timeout: Duration,
    bootstrap_address: String,
    connections: HashMap<String, Connection>,
    brokers: BTreeMap<i32, String>,
    pub controller_id: i32,
    pub cluster_id: Option<String>,
}

impl Cluster {
    /// Connects to the first bootstrap broker that answers and reads the broker list.
    pub fn connect(args: &ConnectArgs) -> CliResult<Self> {
        let timeout = args.timeout();
        let mut errors = Vec::new();
        for address in args
            .brokers
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
        {
            match Connection::open(address, timeout) {
                Ok(connection) => {
                    let mut cluster = Self {
                        timeout,
                        bootstrap_address: address.to_string(),
                        connections: HashMap::from([(address.to_string(), connection)]),
                        brokers: BTreeMap::new(),
                        controller_id: -1,
                        cluster_id: None,
                    };
                    cluster.metadata(Some(&[]))?;
                    return Ok(cluster);
                }
                Err(error) => errors.push(error.0),
            }
        }
        if errors.is_empty() {
            return fail("no bootstrap broker given (--brokers or RINGFEED_BROKERS)");
        }
        fail(format!(
            "no bootstrap broker answered: {}",
            errors.join("; ")
        ))
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The `timeout_ms` put in requests the broker may hold (`Produce`, `CreateTopics`,
    /// `DeleteTopics`): a tenth (at most a second) below our socket timeout, so the broker's
    /// own timeout answer arrives before we give up on the connection.
    pub fn broker_timeout_ms(&self) -> i32 {
        let margin = (self.timeout / 10).min(Duration::from_secs(1));
        i32::try_from(self.timeout.saturating_sub(margin).as_millis()).unwrap_or(i32::MAX)
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
    pub fn metadata(&mut self, topics: Option<&[String]>) -> CliResult<MetadataResponse> {
        let connection = self.any();
        let version = connection.version::<MetadataRequest>()?;
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
        // The crate refuses `false` below v4, where the field does not exist.
        let request = MetadataRequest::default()
            .with_topics(topics)
            .with_allow_auto_topic_creation(version < 4);
        let response = connection.call_at(&request, version)?;
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
    pub fn topic_layout(&mut self, topic: &str) -> CliResult<TopicLayout> {
        for attempt in 1..=RETRIES_MAX {
            let metadata = self.metadata(Some(&[topic.to_string()]))?;
            let Some(entry) = metadata
                .topics
                .iter()
                .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
            else {
                return fail(format!("topic {topic}: missing from the Metadata answer"));
            };
            let retriable =
                ResponseError::try_from_code(entry.error_code).is_some_and(|e| e.is_retriable());
            if entry.error_code == ResponseError::UnknownTopicOrPartition.code() {
                return fail(format!("topic {topic} does not exist"));
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
    pub fn broker(&mut self, node_id: i32) -> CliResult<&mut Connection> {
        let Some(address) = self.brokers.get(&node_id).cloned() else {
            return fail(format!(
                "broker {node_id} is not in the cluster's broker list"
            ));
        };
        self.connection_to(&address)
    }

    pub fn connection_to(&mut self, address: &str) -> CliResult<&mut Connection> {
        if !self.connections.contains_key(address) {
            let connection = Connection::open(address, self.timeout)?;
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
    pub fn controller(&mut self) -> CliResult<&mut Connection> {
        if self.brokers.contains_key(&self.controller_id) {
            let id = self.controller_id;
            return self.broker(id);
        }
        Ok(self.any())
    }

    /// The address of `group`'s coordinator, retrying while it is being loaded or moved.
    pub fn coordinator_address(&mut self, group: &str) -> CliResult<String> {
        for attempt in 1..=RETRIES_MAX {
            let connection = self.any();
            let version = connection.version::<FindCoordinatorRequest>()?;
            let key = StrBytes::from_string(group.to_string());
            let request = if version >= 4 {
                FindCoordinatorRequest::default().with_coordinator_keys(vec![key])
            } else {
                FindCoordinatorRequest::default().with_key(key)
            };
            let response = connection.call_at(&request, version)?;
            let (code, message, host, port) = match response.coordinators.first() {
                Some(c) if version >= 4 => (
                    c.error_code,
                    c.error_message.clone(),
                    c.host.clone(),
                    c.port,
                ),
                _ if version >= 4 => return fail("FindCoordinator: empty answer"),
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
            let retriable = ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable());
            if !retriable || attempt == RETRIES_MAX {
                return fail(format!(
                    "group {group}: finding its coordinator: {}",
                    describe_error(code, message.as_ref())
                ));
            }
            thread::sleep(RETRY_BACKOFF * attempt);
        }
        unreachable!("the last attempt returns")
    }

    pub fn coordinator(&mut self, group: &str) -> CliResult<&mut Connection> {
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
    ) -> CliResult<BTreeMap<i32, Result<i64, String>>> {
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
            let request = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(topic_name(&layout.name))
                    .with_partitions(
                        indexes
                            .iter()
                            .map(|&p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(p)
                                    .with_timestamp(timestamp)
                            })
                            .collect(),
                    )]);
            let response = self.broker(leader)?.call(&request)?;
            for partition in response.topics.iter().flat_map(|t| &t.partitions) {
                let result = if partition.error_code == 0 {
                    Ok(partition.offset)
                } else {
                    Err(describe_error(partition.error_code, None))
                };
                offsets.insert(partition.partition_index, result);
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

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;

    fn advertised(ranges: &[(ApiKey, i16, i16)]) -> ApiVersionsResponse {
        ApiVersionsResponse::default().with_api_keys(
            ranges
                .iter()
                .map(|&(key, min, max)| {
                    ApiVersion::default()
                        .with_api_key(key as i16)
                        .with_min_version(min)
                        .with_max_version(max)
                })
                .collect(),
        )
    }

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        let versions = Versions::negotiate(&advertised(&[
            (ApiKey::Fetch, 4, 12),
            (ApiKey::Produce, 0, 99),
            (ApiKey::OffsetCommit, 2, 10),
        ]));
        assert_eq!(versions.get(ApiKey::Fetch as i16), Some(12));
        assert_eq!(
            versions.get(ApiKey::Produce as i16),
            Some(max_of::<kafka_protocol::messages::ProduceRequest>())
        );
        assert_eq!(
            versions.get(ApiKey::OffsetCommit as i16),
            Some(9),
            "capped: v10 needs topic ids"
        );
        assert_eq!(
            versions.get(ApiKey::Metadata as i16),
            None,
            "not advertised"
        );
    }

    #[test]
    fn no_common_version_leaves_the_api_out() {
        // The broker only serves Produce 0-2, which the crate does not encode.
        let versions = Versions::negotiate(&advertised(&[(ApiKey::Produce, 0, 2)]));
        assert_eq!(versions.get(ApiKey::Produce as i16), None);
        let versions = Versions::negotiate(&advertised(&[(ApiKey::Fetch, 30, 40)]));
        assert_eq!(versions.get(ApiKey::Fetch as i16), None);
    }

    /// Reads one request frame; returns (api key, api version, correlation id).
    fn read_request(stream: &mut TcpStream) -> (i16, i16, i32) {
        let mut size = [0_u8; 4];
        stream.read_exact(&mut size).unwrap();
        let mut frame = vec![0_u8; i32::from_be_bytes(size) as usize];
        stream.read_exact(&mut frame).unwrap();
        let field = |at: usize| i16::from_be_bytes([frame[at], frame[at + 1]]);
        (
            field(0),
            field(2),
            i32::from_be_bytes(frame[4..8].try_into().unwrap()),
        )
    }

    fn write_response(
        stream: &mut TcpStream,
        correlation_id: i32,
        body: &ApiVersionsResponse,
        version: i16,
    ) {
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut frame, 0)
            .unwrap();
        body.encode(&mut frame, version).unwrap();
        let length = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        stream.write_all(&frame).unwrap();
    }

    #[test]
    fn an_older_broker_gets_api_versions_again_at_the_version_it_knows() {
        // A broker that only knows ApiVersions 0-2 answers our v4 with a v0 body carrying
        // UNSUPPORTED_VERSION and its range (KIP-511); the client asks again at v2.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let broker = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let (key, version, correlation_id) = read_request(&mut stream);
            assert_eq!(
                (key, version),
                (ApiKey::ApiVersions as i16, max_of::<ApiVersionsRequest>())
            );
            let mut refusal = advertised(&[(ApiKey::ApiVersions, 0, 2)]);
            refusal.error_code = ResponseError::UnsupportedVersion.code();
            write_response(&mut stream, correlation_id, &refusal, 0);
            let (key, version, correlation_id) = read_request(&mut stream);
            assert_eq!((key, version), (ApiKey::ApiVersions as i16, 2));
            let ranges = advertised(&[(ApiKey::ApiVersions, 0, 2), (ApiKey::Metadata, 0, 8)]);
            write_response(&mut stream, correlation_id, &ranges, 2);
        });
        let connection = Connection::open(&address, Duration::from_secs(5)).unwrap();
        broker.join().unwrap();
        assert_eq!(connection.version::<MetadataRequest>().unwrap(), 8);
        assert!(connection
            .version::<kafka_protocol::messages::FetchRequest>()
            .unwrap_err()
            .0
            .contains("supports no version of Fetch"));
    }

    #[test]
    fn an_oversized_or_truncated_answer_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let broker = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            read_request(&mut stream);
            stream.write_all(&i32::MAX.to_be_bytes()).unwrap();
        });
        let error = Connection::open(&address, Duration::from_secs(5))
            .err()
            .unwrap();
        broker.join().unwrap();
        assert!(error.0.contains("over the"), "{error}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let broker = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            read_request(&mut stream);
            stream.write_all(&[0, 0, 0, 9, 1]).unwrap();
        });
        let error = Connection::open(&address, Duration::from_secs(5))
            .err()
            .unwrap();
        broker.join().unwrap();
        assert!(error.0.contains("closed the connection"), "{error}");
    }

    #[test]
    fn request_frame_carries_its_size_and_header() {
        let mut frame = BytesMut::new();
        encode_request(&mut frame, &ApiVersionsRequest::default(), 0, 7).unwrap();
        let declared = i32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(declared, frame.len() - 4);
        assert_eq!(&frame[4..6], &(ApiKey::ApiVersions as i16).to_be_bytes());
        assert_eq!(&frame[8..12], &7_i32.to_be_bytes());
    }
}
