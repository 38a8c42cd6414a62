//! Consumer groups (Kafka's classic protocol) and committed offsets.
//!
//! Ownership: a group belongs to the shard that owns its partition of the internal topic
//! `__consumer_offsets` (partition = Java `hashCode` of the group id, as Kafka places it).
//! Handlers on any shard compute that owner and send the group's work there as a
//! [`GroupCall`] (`Shard::group_call`); only the owner's [`GroupCoordinator`] touches the
//! group. Committed offsets are records in that partition's log, appended and fdatasync'd
//! before `OffsetCommit` is answered, and replayed the first time the owner serves a group
//! of that partition after a start. Membership lives in memory only: after a restart the
//! members rejoin (their heartbeats get `UNKNOWN_MEMBER_ID`), as after a coordinator move.

pub mod coordinator;
pub mod group;
pub mod records;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::controller::{ControllerCall, NewTopic};
use crate::metadata::MetadataSnapshot;
use crate::shard::Shard;
pub use coordinator::GroupCoordinator;
use group::{JoinRequest, JoinResult, SyncResult};
use records::CommittedOffset;

/// Kafka's internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Partitions of `__consumer_offsets`. Kafka's default is 50, sized for a cluster; here each
/// partition is an open log with its own flusher and preallocated segment, and 8 already
/// spreads groups over every shard of this machine.
pub const OFFSETS_TOPIC_PARTITIONS: i32 = 8;

/// `offset.metadata.max.bytes`: larger commit metadata gets `OFFSET_METADATA_TOO_LARGE`.
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// No topic has a longer name (Kafka's limit), so a commit naming one is refused before its
/// record is built: the offsets log stores names with an i16 length.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Group ids are stored with an i16 length too; a longer one is `INVALID_GROUP_ID`.
pub const GROUP_ID_BYTES_MAX: usize = i16::MAX as usize;

/// Error codes of the group APIs, named once.
pub mod codes {
    use kafka_protocol::error::ResponseError;

    pub const OFFSET_METADATA_TOO_LARGE: i16 = ResponseError::OffsetMetadataTooLarge.code();
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = ResponseError::CoordinatorLoadInProgress.code();
    pub const COORDINATOR_NOT_AVAILABLE: i16 = ResponseError::CoordinatorNotAvailable.code();
    pub const NOT_COORDINATOR: i16 = ResponseError::NotCoordinator.code();
    pub const ILLEGAL_GENERATION: i16 = ResponseError::IllegalGeneration.code();
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = ResponseError::InconsistentGroupProtocol.code();
    pub const INVALID_GROUP_ID: i16 = ResponseError::InvalidGroupId.code();
    pub const UNKNOWN_MEMBER_ID: i16 = ResponseError::UnknownMemberId.code();
    pub const INVALID_SESSION_TIMEOUT: i16 = ResponseError::InvalidSessionTimeout.code();
    pub const REBALANCE_IN_PROGRESS: i16 = ResponseError::RebalanceInProgress.code();
    pub const GROUP_ID_NOT_FOUND: i16 = ResponseError::GroupIdNotFound.code();
    pub const NON_EMPTY_GROUP: i16 = ResponseError::NonEmptyGroup.code();
    pub const MEMBER_ID_REQUIRED: i16 = ResponseError::MemberIdRequired.code();
    pub const FENCED_INSTANCE_ID: i16 = ResponseError::FencedInstanceId.code();
    pub const GROUP_MAX_SIZE_REACHED: i16 = ResponseError::GroupMaxSizeReached.code();
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = ResponseError::GroupSubscribedToTopic.code();
    pub const INVALID_REQUEST: i16 = ResponseError::InvalidRequest.code();
}

/// Work on one group (or, for `List`, on every group of the receiving shard), executed by
/// the owner. Everything in it is `Send`: it may cross the mesh.
#[derive(Debug)]
pub enum GroupCall {
    Join(JoinRequest),
    Sync {
        member_id: String,
        generation: i32,
        /// v5: must match the group's, when given.
        protocol_type: Option<String>,
        protocol_name: Option<String>,
        assignments: Vec<(String, Bytes)>,
    },
    Heartbeat {
        member_id: String,
        instance_id: Option<String>,
        generation: i32,
    },
    /// (member id, group instance id) of each member leaving.
    Leave {
        members: Vec<(String, Option<String>)>,
    },
    Commit {
        member_id: String,
        instance_id: Option<String>,
        generation: i32,
        offsets: Vec<(String, i32, CommittedOffset)>,
    },
    /// `None`: every committed partition of the group.
    FetchOffsets {
        partitions: Option<Vec<(String, Vec<i32>)>>,
    },
    Describe,
    List,
    Delete,
    DeleteOffsets {
        partitions: Vec<(String, i32)>,
    },
    /// A producer id for an idempotent producer; served by shard 0 only (see
    /// `producer_state::ProducerIds`). Not a group call, but coordinator work all the same.
    InitProducerId {
        producer_id: i64,
        epoch: i16,
    },
}

/// A `GroupCall` addressed to the coordinator of `group` (empty for `List`), which lives on
/// `__consumer_offsets` partition `partition`.
#[derive(Debug)]
pub struct GroupEnvelope {
    pub group: String,
    pub partition: i32,
    pub call: GroupCall,
}

/// One member as `DescribeGroups` shows it.
#[derive(Debug, Clone)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub error_code: i16,
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol_name: String,
    pub members: Vec<MemberDescription>,
}

/// One group as `ListGroups` shows it: id, protocol type, state.
pub type ListedGroup = (String, String, &'static str);

#[derive(Debug)]
pub enum GroupReply {
    Join(JoinResult),
    Sync(SyncResult),
    /// One error code for the whole request.
    Code(i16),
    /// One error code per item of the request, in its order.
    Codes(Vec<i16>),
    Offsets {
        error_code: i16,
        offsets: Vec<(String, i32, Option<CommittedOffset>)>,
    },
    Described(GroupDescription),
    Listed(Vec<ListedGroup>),
    /// (producer id, epoch), or the error code.
    ProducerId(Result<(i64, i16), i16>),
}

/// Kafka's placement of a group: `abs(groupId.hashCode()) % partitions`, with Java's
/// `String.hashCode` over UTF-16 code units, so a group lands on the partition number Kafka
/// would pick for it.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let hash = group.encode_utf16().fold(0_i32, |hash, unit| {
        hash.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    // Kafka's Utils.abs: MIN_VALUE maps to 0 rather than overflowing.
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive % partitions.max(1)
}

/// Where a group's coordinator lives: its `__consumer_offsets` partition and that
/// partition's shard. Creates the internal topic on first use, as Kafka does on the first
/// `FindCoordinator`. `Err` is the error code to answer with.
pub async fn locate(shard: &Rc<Shard>, group: &str) -> Result<(i32, usize), i16> {
    let snapshot = offsets_topic_snapshot(shard).await?;
    let topic = snapshot
        .topic(OFFSETS_TOPIC)
        .ok_or(codes::COORDINATOR_NOT_AVAILABLE)?;
    let partition = partition_for(group, topic.partition_count());
    let owner = snapshot
        .owner_of(OFFSETS_TOPIC, partition)
        .ok_or(codes::COORDINATOR_NOT_AVAILABLE)?;
    Ok((partition, owner))
}

/// The metadata, once it holds `__consumer_offsets` (created here if missing).
pub async fn offsets_topic_snapshot(shard: &Rc<Shard>) -> Result<Arc<MetadataSnapshot>, i16> {
    let snapshot = shard.metadata();
    if snapshot.topic(OFFSETS_TOPIC).is_some() {
        return Ok(snapshot);
    }
    let topic = NewTopic {
        name: OFFSETS_TOPIC.to_string(),
        partitions: OFFSETS_TOPIC_PARTITIONS,
        replication_factor: -1,
        manual_assignment: Vec::new(),
        configs: vec![
            // Commits of an active group must never age out with a segment; expiry of
            // offsets is the coordinator's job (offsets.retention), not the log's.
            ("retention.ms".to_string(), Some("-1".to_string())),
            // Kafka's offsets.topic.segment.bytes.
            ("segment.bytes".to_string(), Some("104857600".to_string())),
        ],
    };
    let call = ControllerCall::CreateTopics {
        topics: vec![topic],
        validate_only: false,
    };
    shard
        .controller_call(call)
        .await
        .ok_or(codes::COORDINATOR_NOT_AVAILABLE)?;
    let snapshot = shard.metadata();
    if snapshot.topic(OFFSETS_TOPIC).is_some() {
        Ok(snapshot)
    } else {
        tracing::error!("could not create {OFFSETS_TOPIC}");
        Err(codes::COORDINATOR_NOT_AVAILABLE)
    }
}

/// Sends `call` for `group` to its coordinator, wherever it lives. `Err` is the error code
/// for the whole request (no coordinator reachable).
pub async fn route(shard: &Rc<Shard>, group: &str, call: GroupCall) -> Result<GroupReply, i16> {
    if group.is_empty() || group.len() > GROUP_ID_BYTES_MAX {
        return Err(codes::INVALID_GROUP_ID);
    }
    let (partition, owner) = locate(shard, group).await?;
    let envelope = GroupEnvelope {
        group: group.to_string(),
        partition,
        call,
    };
    shard
        .group_call(owner, envelope)
        .await
        .ok_or(codes::COORDINATOR_NOT_AVAILABLE)
}

/// `Duration` from a Kafka millisecond field; negative values count as zero.
pub fn millis(value: i32) -> Duration {
    Duration::from_millis(u64::try_from(value).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::partition_for;

    #[test]
    fn groups_land_where_kafka_puts_them() {
        // Java: "payment".hashCode() == -786681338, abs % 50 == 38.
        assert_eq!(partition_for("payment", 50), 38);
        // "".hashCode() == 0.
        assert_eq!(partition_for("", 50), 0);
        // Every group maps inside the topic.
        for name in ["a", "inventory", "notification", "ünïcode-group"] {
            assert!((0..8).contains(&partition_for(name, 8)));
        }
    }
}
