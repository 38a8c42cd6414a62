//! What the parts of `groups` share: limits, error codes, the requests and descriptions the
//! coordinator takes and returns, and where a group lives (`partition_for`). Depends on no
//! other part of `groups` but the offsets' record types.

use std::time::Duration;

use bytes::Bytes;

use crate::groups::records::CommittedOffset;

/// Members plus handed-out member ids one group may hold (`group.max.size`; Kafka's default
/// is unbounded; consumer-protocol groups count their members). Every member id costs memory until its session ends, so a client looping
/// on `JoinGroup` without an id must hit a wall: 1,000 consumers is far beyond any partition
/// count a group here can usefully share.
pub const GROUP_SIZE_MAX: usize = 1000;

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
    /// KIP-447: `OffsetFetch` with `require_stable` for a partition whose offset was
    /// committed in a transaction that has not ended yet (the client retries).
    pub const UNSTABLE_OFFSET_COMMIT: i16 = ResponseError::UnstableOffsetCommit.code();
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

/// `group.consumer.migration.policy` (Kafka 4's): which way a non-empty group may move
/// between the classic and the consumer protocol while its members stay online.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MigrationPolicy {
    /// Both ways (Kafka's default).
    #[default]
    Bidirectional,
    /// Classic to consumer only.
    Upgrade,
    /// Consumer to classic only.
    Downgrade,
    Disabled,
}

impl MigrationPolicy {
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "bidirectional" => Some(Self::Bidirectional),
            "upgrade" => Some(Self::Upgrade),
            "downgrade" => Some(Self::Downgrade),
            "disabled" => Some(Self::Disabled),
            _ => None,
        }
    }

    pub fn upgrades(self) -> bool {
        matches!(self, Self::Bidirectional | Self::Upgrade)
    }

    pub fn downgrades(self) -> bool {
        matches!(self, Self::Bidirectional | Self::Downgrade)
    }
}

/// A `SyncGroup` as the coordinator takes it.
#[derive(Debug)]
pub struct SyncRequest {
    pub member_id: String,
    pub generation: i32,
    /// v5: must match the group's, when given.
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

/// An `OffsetCommit` as the coordinator takes it.
#[derive(Debug)]
pub struct CommitRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub offsets: Vec<(String, i32, CommittedOffset)>,
}

/// Where a group's work goes: its id and the `__consumer_offsets` partition it lives on
/// (see the module docs); the partition's owner runs it.
#[derive(Debug, Clone)]
pub struct GroupAddress {
    pub group: String,
    pub partition: i32,
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

/// One group as `ListGroups` shows it: id, protocol type, state, type (`classic` or
/// `consumer`).
pub type ListedGroup = (String, String, &'static str, &'static str);

/// One group's committed offsets as `OffsetFetch` reads them: (topic, partition, offset if
/// committed).
pub type FetchedOffsets = Vec<(String, i32, Option<CommittedOffset>)>;

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

/// A `JoinGroup` as a group takes it, classic or a classic member inside a consumer group.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: a member without an id is given one and must rejoin with it (KIP-394).
    pub require_known_member_id: bool,
}
