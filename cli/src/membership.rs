//! Membership of a consumer group for `ringfeed consume --group`: Kafka's classic protocol
//! (`JoinGroup`, `SyncGroup`, `Heartbeat`, `OffsetCommit`, `LeaveGroup`) with the range
//! assignor, as the Java consumer runs it. One topic is subscribed; when this member is the
//! leader it assigns every member's subscriptions, whatever topics they name.

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, JoinGroupResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};
use ringfeed_client::groups::JoinGroup;
use ringfeed_client::ErrorKind;

use super::client::{topic_name, Cluster, RETRIES_MAX, RETRY_BACKOFF};
use super::{describe_error, fail, CliError, CliResult};

const PROTOCOL_TYPE: &str = "consumer";
const ASSIGNOR: &str = "range";
/// Kafka's consumer defaults: the group drops a member silent for the session timeout;
/// heartbeats go at a third of it; a rebalance waits this long for members to rejoin.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
const REBALANCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Committed offsets are written at most this often while consuming, and always at exit and
/// before a rebalance.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// This process's membership: who it is in which generation and what it was assigned.
pub struct Membership {
    pub group: String,
    topic: String,
    member_id: String,
    generation: i32,
    coordinator: String,
    pub assigned: Vec<i32>,
    last_heartbeat: Instant,
}

/// What a heartbeat said about the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Stable,
    /// Rebalancing, or this member was dropped: commit what is done and rejoin.
    MustRejoin,
}

impl Membership {
    /// Joins `group` subscribed to `topic` and waits for the assignment.
    pub fn join(cluster: &mut Cluster, group: &str, topic: &str) -> CliResult<Self> {
        let mut membership = Self {
            group: group.to_string(),
            topic: topic.to_string(),
            member_id: String::new(),
            generation: -1,
            coordinator: cluster.coordinator_address(group)?,
            assigned: Vec::new(),
            last_heartbeat: Instant::now(),
        };
        membership.rejoin(cluster)?;
        Ok(membership)
    }

    /// Runs `JoinGroup` then `SyncGroup` until an assignment arrives (bounded attempts).
    pub fn rejoin(&mut self, cluster: &mut Cluster) -> CliResult<()> {
        for attempt in 1..=RETRIES_MAX * 2 {
            match self.join_and_sync(cluster)? {
                Ok(assigned) => {
                    self.assigned = assigned;
                    self.last_heartbeat = Instant::now();
                    return Ok(());
                }
                Err(code) => {
                    self.recover_from(cluster, code)?;
                    thread::sleep(RETRY_BACKOFF * attempt.min(RETRIES_MAX));
                }
            }
        }
        fail(format!(
            "group {}: could not join after repeated rebalances",
            self.group
        ))
    }

    /// `Ok(Ok(partitions))` when assigned; `Ok(Err(code))` for a group error worth another
    /// attempt; `Err` for anything else.
    fn join_and_sync(&mut self, cluster: &mut Cluster) -> CliResult<Result<Vec<i32>, i16>> {
        let join = match self.join_group(cluster)? {
            Ok(join) => join,
            Err(code) => return Ok(Err(code)),
        };
        let assignments = if join.leader == join.member_id {
            assign_range(cluster, &join)?
        } else {
            Vec::new()
        };
        let connection = cluster.connection_to(&self.coordinator)?;
        let synced = connection.sync_group(
            &self.group,
            self.generation,
            &self.member_id,
            (PROTOCOL_TYPE, ASSIGNOR),
            assignments,
            REBALANCE_TIMEOUT + cluster_timeout_margin(),
        );
        let assignment = match synced {
            Ok(assignment) => assignment,
            Err(error) => match error.broker_code() {
                Some(code) => return Ok(Err(code)),
                None => return Err(error.into()),
            },
        };
        Ok(Ok(decode_assignment(&assignment, &self.topic)?))
    }

    fn join_group(&mut self, cluster: &mut Cluster) -> CliResult<Result<JoinGroupResponse, i16>> {
        let subscription = encode_subscription(&self.topic)?;
        for _ in 0..2 {
            let connection = cluster.connection_to(&self.coordinator)?;
            let protocols = [(ASSIGNOR, subscription.clone())];
            let join = JoinGroup {
                group: &self.group,
                member_id: &self.member_id,
                session_timeout: SESSION_TIMEOUT,
                rebalance_timeout: REBALANCE_TIMEOUT,
                protocol_type: PROTOCOL_TYPE,
                protocols: &protocols,
            };
            // The coordinator holds JoinGroup until every member rejoined or the rebalance
            // timeout passed (plus the group's initial delay on first join).
            let response = connection.join_group(&join, cluster_timeout_margin())?;
            if response.error_code == ResponseError::MemberIdRequired.code() {
                // KIP-394: the first join only hands out a member id; join again with it.
                self.member_id = response.member_id.to_string();
                continue;
            }
            if response.error_code != 0 {
                return Ok(Err(response.error_code));
            }
            self.member_id = response.member_id.to_string();
            self.generation = response.generation_id;
            return Ok(Ok(response));
        }
        Ok(Err(ResponseError::MemberIdRequired.code()))
    }

    /// Acts on a group error code: find the coordinator again, forget a stale member id,
    /// or give up on errors no retry fixes.
    fn recover_from(&mut self, cluster: &mut Cluster, code: i16) -> CliResult<()> {
        let error = ResponseError::try_from_code(code);
        match error {
            Some(
                ResponseError::NotCoordinator
                | ResponseError::CoordinatorNotAvailable
                | ResponseError::CoordinatorLoadInProgress,
            ) => {
                cluster.forget(&self.coordinator);
                self.coordinator = cluster.coordinator_address(&self.group)?;
            }
            Some(ResponseError::UnknownMemberId | ResponseError::IllegalGeneration) => {
                self.member_id.clear();
                self.generation = -1;
            }
            Some(ResponseError::RebalanceInProgress | ResponseError::MemberIdRequired) => {}
            _ => {
                return fail(format!(
                    "group {}: {}",
                    self.group,
                    describe_error(code, None)
                ));
            }
        }
        Ok(())
    }

    /// Sends a heartbeat when one is due.
    pub fn heartbeat_if_due(&mut self, cluster: &mut Cluster) -> CliResult<GroupState> {
        if self.last_heartbeat.elapsed() < HEARTBEAT_INTERVAL {
            return Ok(GroupState::Stable);
        }
        let beat = cluster.connection_to(&self.coordinator)?.heartbeat(
            &self.group,
            self.generation,
            &self.member_id,
        );
        self.last_heartbeat = Instant::now();
        let code = match beat {
            Ok(()) => return Ok(GroupState::Stable),
            Err(error) => error.broker_code().ok_or(error)?,
        };
        self.recover_from(cluster, code)?;
        Ok(GroupState::MustRejoin)
    }

    /// Commits `positions` (the next offset to read, per partition) for this generation.
    /// A commit refused because the group moved on is reported and leads to a rejoin.
    pub fn commit(
        &mut self,
        cluster: &mut Cluster,
        positions: &BTreeMap<i32, i64>,
    ) -> CliResult<GroupState> {
        if positions.is_empty() {
            return Ok(GroupState::Stable);
        }
        let connection = cluster.connection_to(&self.coordinator)?;
        let outcomes = connection.commit_offsets(
            &self.group,
            self.generation,
            &self.member_id,
            &self.topic,
            positions,
        )?;
        let mut state = GroupState::Stable;
        for (partition, outcome) in outcomes {
            if let Err(error) = outcome {
                eprintln!(
                    "group {}: committing {}/{partition}: {error}",
                    self.group, self.topic,
                );
                self.recover_from(cluster, error.broker_code().ok_or(error)?)?;
                state = GroupState::MustRejoin;
            }
        }
        Ok(state)
    }

    /// Leaves the group so the others are rebalanced at once rather than after the session
    /// timeout. Best effort: the process is exiting.
    pub fn leave(&mut self, cluster: &mut Cluster) {
        let Ok(connection) = cluster.connection_to(&self.coordinator) else {
            return;
        };
        match connection.leave_group(&self.group, &self.member_id) {
            // Best effort, as before the typed call: a broker without `LeaveGroup`, or one
            // that already dropped this member, lets the session time out instead.
            Err(error) if matches!(error.kind(), ErrorKind::Unsupported | ErrorKind::Broker(_)) => {
            }
            Err(error) => eprintln!("group {}: leaving: {error}", self.group),
            Ok(()) => {}
        }
    }
}

fn cluster_timeout_margin() -> Duration {
    Duration::from_secs(10)
}

/// Subscription metadata: the consumer protocol version (i16) then the subscription.
fn encode_subscription(topic: &str) -> CliResult<Bytes> {
    let version = 0;
    let mut buffer = BytesMut::new();
    buffer.put_i16(version);
    ConsumerProtocolSubscription::default()
        .with_topics(vec![StrBytes::from_string(topic.to_string())])
        .encode(&mut buffer, version)
        .map_err(|error| CliError(format!("encoding the subscription: {error}")))?;
    Ok(buffer.freeze())
}

/// Decodes a versioned consumer-protocol message; a version newer than the codec's is read
/// as the newest it knows, as Kafka's consumer does (later versions only add fields).
fn decode_versioned<M: Decodable + Message>(bytes: &Bytes, what: &str) -> CliResult<M> {
    let mut buffer = bytes.clone();
    if buffer.remaining() < 2 {
        return fail(format!("{what}: {} bytes, too short", bytes.len()));
    }
    let version = buffer.get_i16().clamp(M::VERSIONS.min, M::VERSIONS.max);
    M::decode(&mut buffer, version).map_err(|error| CliError(format!("{what}: {error}")))
}

pub fn decode_subscription(bytes: &Bytes) -> CliResult<ConsumerProtocolSubscription> {
    decode_versioned(bytes, "member subscription")
}

/// The partitions of every topic in an assignment (empty bytes: nothing assigned).
pub fn decode_assignment_topics(bytes: &Bytes) -> CliResult<Vec<(String, Vec<i32>)>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let assignment: ConsumerProtocolAssignment = decode_versioned(bytes, "member assignment")?;
    Ok(assignment
        .assigned_partitions
        .into_iter()
        .map(|t| (t.topic.0.to_string(), t.partitions))
        .collect())
}

fn decode_assignment(bytes: &Bytes, topic: &str) -> CliResult<Vec<i32>> {
    let mut partitions: Vec<i32> = decode_assignment_topics(bytes)?
        .into_iter()
        .filter(|(name, _)| name == topic)
        .flat_map(|(_, partitions)| partitions)
        .collect();
    partitions.sort_unstable();
    partitions.dedup();
    Ok(partitions)
}

fn encode_assignment(topics: &BTreeMap<String, Vec<i32>>) -> CliResult<Bytes> {
    let version = 0;
    let mut buffer = BytesMut::new();
    buffer.put_i16(version);
    ConsumerProtocolAssignment::default()
        .with_assigned_partitions(
            topics
                .iter()
                .map(|(topic, partitions)| {
                    AssignedTopic::default()
                        .with_topic(topic_name(topic))
                        .with_partitions(partitions.clone())
                })
                .collect(),
        )
        .encode(&mut buffer, version)
        .map_err(|error| CliError(format!("encoding an assignment: {error}")))?;
    Ok(buffer.freeze())
}

/// The leader's job: the range assignment of every subscribed topic over its subscribers.
fn assign_range(
    cluster: &mut Cluster,
    join: &JoinGroupResponse,
) -> CliResult<Vec<(String, Bytes)>> {
    let mut subscriptions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut members = Vec::with_capacity(join.members.len());
    for member in &join.members {
        let subscription = decode_subscription(&member.metadata)?;
        for topic in subscription.topics {
            subscriptions
                .entry(topic.to_string())
                .or_default()
                .insert(member.member_id.to_string());
        }
        members.push(member.member_id.to_string());
    }
    let mut partition_counts = BTreeMap::new();
    for topic in subscriptions.keys() {
        // A topic a member names that does not exist gets no partitions, as in Kafka.
        let count = cluster
            .topic_layout(topic)
            .map_or(0, |layout| layout.partitions.len());
        partition_counts.insert(topic.clone(), count);
    }
    let plan = range_assignment(&subscriptions, &partition_counts);
    members
        .into_iter()
        .map(|member| {
            let topics = plan.get(&member).cloned().unwrap_or_default();
            Ok((member, encode_assignment(&topics)?))
        })
        .collect()
}

/// Kafka's `RangeAssignor`: per topic, subscribers sorted by member id each take a
/// contiguous range; the first `partitions % members` take one extra.
pub fn range_assignment(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    partition_counts: &BTreeMap<String, usize>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut plan: BTreeMap<String, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
    for (topic, members) in subscriptions {
        let partitions = partition_counts.get(topic).copied().unwrap_or(0);
        let per_member = partitions / members.len();
        let with_extra = partitions % members.len();
        let mut next = 0;
        for (index, member) in members.iter().enumerate() {
            let count = per_member + usize::from(index < with_extra);
            let range: Vec<i32> = (next..next + count).map(|p| p as i32).collect();
            next += count;
            if !range.is_empty() {
                plan.entry(member.clone())
                    .or_default()
                    .insert(topic.clone(), range);
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_assignment_gives_leading_members_the_extra_partitions() {
        let members: BTreeSet<String> = ["b", "a", "c"].iter().map(ToString::to_string).collect();
        let subscriptions = BTreeMap::from([
            ("t".to_string(), members),
            ("u".to_string(), BTreeSet::from(["c".to_string()])),
        ]);
        let counts = BTreeMap::from([("t".to_string(), 7), ("u".to_string(), 2)]);
        let plan = range_assignment(&subscriptions, &counts);
        assert_eq!(plan["a"]["t"], vec![0, 1, 2]);
        assert_eq!(plan["b"]["t"], vec![3, 4]);
        assert_eq!(plan["c"]["t"], vec![5, 6]);
        assert_eq!(plan["c"]["u"], vec![0, 1]);
        assert!(!plan["a"].contains_key("u"));
    }

    #[test]
    fn more_members_than_partitions_leaves_some_idle() {
        let members: BTreeSet<String> = ["a", "b", "c"].iter().map(ToString::to_string).collect();
        let plan = range_assignment(
            &BTreeMap::from([("t".to_string(), members)]),
            &BTreeMap::from([("t".to_string(), 2)]),
        );
        assert_eq!(plan["a"]["t"], vec![0]);
        assert_eq!(plan["b"]["t"], vec![1]);
        assert!(!plan.contains_key("c"));
    }

    #[test]
    fn subscription_and_assignment_round_trip_with_their_version_prefix() {
        let subscription = decode_subscription(&encode_subscription("orders").unwrap()).unwrap();
        assert_eq!(
            subscription.topics,
            vec![StrBytes::from_static_str("orders")]
        );
        let topics = BTreeMap::from([("orders".to_string(), vec![2, 0])]);
        let bytes = encode_assignment(&topics).unwrap();
        assert_eq!(decode_assignment(&bytes, "orders").unwrap(), vec![0, 2]);
        assert!(decode_assignment(&bytes, "other").unwrap().is_empty());
        assert!(decode_assignment(&Bytes::new(), "orders")
            .unwrap()
            .is_empty());
        assert!(decode_assignment_topics(&Bytes::from_static(&[0])).is_err());
    }
}
