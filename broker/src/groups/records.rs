//! What the coordinator writes to `__consumer_offsets`, in Kafka's own record schemas so a
//! tool that reads Kafka's offsets topic can read ours. Pure: no IO, no async.
//!
//! ```text
//! offset commit  key:   version i16 (1) | group string | topic string | partition i32
//!                value: version i16 (3) | offset i64 | leader_epoch i32 | metadata string
//!                       | commit_timestamp i64            (null value = offset deleted)
//! group          key:   version i16 (2) | group string   (null value = group deleted)
//!                value: version i16 (3) | protocol_type string | generation i32
//!                       | protocol nullable string | leader nullable string
//!                       | current_state_timestamp i64 | members i32 count, each:
//!                         member_id string | group_instance_id nullable string
//!                         | client_id string | client_host string | rebalance_timeout i32
//!                         | session_timeout i32 | subscription bytes | assignment bytes
//! ```
//! Strings are i16 length + UTF-8 bytes, bytes i32 length + bytes. A classic group's
//! membership is written as Kafka's `GroupMetadataValue` v3 whenever a generation completes
//! (every member has its assignment) and when the group empties, so a coordinator that
//! loads the partition (after a restart or a failover) knows the members and their
//! generation, and they go on heartbeating instead of rejoining. Consumer-protocol groups
//! (KIP-848) are persisted in Ringfeed's own
//! records ([`ConsumerRecord`], key versions 1003-1008: Kafka's coordinator record type + 1000,
//! values version 0; a classic member's metadata value version 1), laid out in
//! `storage/FORMAT.md`. Kafka's own are flexible-version
//! records keyed by topic id; ours carry topic names, like the offset records above, so a
//! deleted-and-recreated topic is never confused with the old one by id, and a reader of
//! Kafka's schemas skips ours as unknown key versions instead of misreading them.

use bytes::{BufMut, Bytes, BytesMut};

use crate::groups::assignor::Assignment;
use crate::records::next_record;
use crate::storage::batch::{
    build, BatchHeader, ATTRIBUTES_OFFSET, BATCH_HEADER_BYTES, CRC_OFFSET,
};

const OFFSET_KEY_VERSION: i16 = 1;
/// Kafka's offset value v3 (with the leader epoch), written for every commit without an
/// expiry; v1 (with the expire timestamp) for one that carries it, as Kafka writes them.
const OFFSET_VALUE_VERSION: i16 = 3;
const OFFSET_VALUE_WITH_EXPIRY_VERSION: i16 = 1;
const GROUP_KEY_VERSION: i16 = 2;
/// Kafka's `GroupMetadataValue` v3 (with the group instance id), the one version written;
/// older ones (0-2) are read too.
const GROUP_VALUE_VERSION: i16 = 3;
/// Members one classic group record may hold: the group size limit, with room to spare
/// for a record written under a larger limit before a restart.
pub const CLASSIC_GROUP_MEMBERS_MAX: usize = 4096;
/// Ringfeed's own key for an `OffsetCommit` v0 commit. Kafka never wrote these to
/// `__consumer_offsets` (it kept them in `ZooKeeper`), so no Kafka key version means this;
/// 1000 stays clear of the versions Kafka's coordinator records use.
const STANDALONE_OFFSET_KEY_VERSION: i16 = 1000;
const STANDALONE_OFFSET_VALUE_VERSION: i16 = 0;
/// Consumer-protocol group records: Kafka's coordinator record type (its key version) +
/// 1000, so the kind stays recognisable and clear of Kafka's own versions.
const CONSUMER_GROUP_KEY_VERSION: i16 = 1003;
const CONSUMER_MEMBER_KEY_VERSION: i16 = 1005;
const CONSUMER_TARGET_KEY_VERSION: i16 = 1006;
const CONSUMER_TARGET_MEMBER_KEY_VERSION: i16 = 1007;
const CONSUMER_CURRENT_KEY_VERSION: i16 = 1008;
const CONSUMER_VALUE_VERSION: i16 = 0;
/// Key 1005's value: v1 appends the topics the member's regex resolved to (v0 has none);
/// v2 appends, after those, the [`ClassicMemberValue`] of a member using the classic
/// protocol inside a consumer group (KIP-848's upgrade path). Members of the consumer
/// protocol are written as v1.
const CONSUMER_MEMBER_VALUE_VERSION: i16 = 1;
const CONSUMER_MEMBER_CLASSIC_VALUE_VERSION: i16 = 2;
/// Protocols one classic member may list (`JoinGroup` protocols; clients send one or two).
pub const CLASSIC_PROTOCOLS_MAX: usize = 64;

/// One committed offset as stored and as `OffsetFetch` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// When the offset expires, from an `OffsetCommit` v2-4's `retention_time_ms` (now +
    /// retention); `None`: `offsets.retention` after the group empties (Kafka's rule since
    /// KIP-211). Kept in Kafka's offset value v1, which has no leader epoch.
    pub expire_timestamp_ms: Option<i64>,
}

/// One record of the offsets log, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffsetsRecord {
    Commit {
        group: String,
        topic: String,
        partition: i32,
        /// `None`: a tombstone (the offset was deleted or expired).
        value: Option<CommittedOffset>,
    },
    /// The group was deleted (a tombstone of its group key).
    GroupDeleted { group: String },
    /// A classic group's membership as of its last completed generation, or its emptying
    /// (the value of its group key).
    ClassicGroup {
        group: String,
        value: ClassicGroupValue,
    },
    /// An `OffsetCommit` v0 commit: the offset alone, kept apart from the group's commits
    /// (Kafka 3.9 wrote it to `ZooKeeper`; only `OffsetFetch` v0 reads it back).
    StandaloneCommit {
        group: String,
        topic: String,
        partition: i32,
        offset: i64,
    },
    /// Part of a consumer-protocol group's state (KIP-848).
    Consumer(ConsumerRecord),
}

/// Kafka's `GroupMetadataValue`: a classic group's generation and members.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassicGroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp_ms: i64,
    pub members: Vec<ClassicGroupMember>,
}

/// One member of a [`ClassicGroupValue`]: its subscription is its metadata for the
/// group's protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassicGroupMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

impl ClassicGroupValue {
    fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_i16(GROUP_VALUE_VERSION);
        put_string(&mut out, &self.protocol_type);
        out.put_i32(self.generation);
        put_nullable(&mut out, self.protocol_name.as_deref());
        put_nullable(&mut out, self.leader.as_deref());
        out.put_i64(self.state_timestamp_ms);
        put_count(&mut out, self.members.len());
        for member in &self.members {
            put_string(&mut out, &member.member_id);
            put_nullable(&mut out, member.instance_id.as_deref());
            put_string(&mut out, &member.client_id);
            put_string(&mut out, &member.client_host);
            out.put_i32(member.rebalance_timeout_ms);
            out.put_i32(member.session_timeout_ms);
            put_bytes(&mut out, &member.subscription);
            put_bytes(&mut out, &member.assignment);
        }
        out.freeze()
    }

    /// Kafka's versions 0-3: v1 adds the rebalance timeout, v2 the state timestamp, v3 the
    /// group instance id. A count beyond [`CLASSIC_GROUP_MEMBERS_MAX`] or the bytes left is
    /// refused before anything is allocated for it.
    fn decode(mut value: &[u8]) -> Option<Self> {
        let value = &mut value;
        let version = take_i16(value)?;
        if !(0..=GROUP_VALUE_VERSION).contains(&version) {
            return None;
        }
        let protocol_type = take_string(value)?;
        let generation = take_i32(value)?;
        let protocol_name = take_nullable(value)?;
        let leader = take_nullable(value)?;
        let state_timestamp_ms = if version >= 2 { take_i64(value)? } else { -1 };
        let count = usize::try_from(take_i32(value)?).ok()?;
        // Each member is at least 2 + 2 + 2 + 4 + 4 + 4 bytes (v0, empty strings and bytes).
        if count > CLASSIC_GROUP_MEMBERS_MAX || count.saturating_mul(18) > value.len() {
            return None;
        }
        let mut members = Vec::with_capacity(count);
        for _ in 0..count {
            let member_id = take_string(value)?;
            let instance_id = if version >= 3 {
                take_nullable(value)?
            } else {
                None
            };
            let client_id = take_string(value)?;
            let client_host = take_string(value)?;
            let rebalance_timeout_ms = if version >= 1 { take_i32(value)? } else { -1 };
            let session_timeout_ms = take_i32(value)?;
            let subscription = take_bytes(value)?;
            let assignment = take_bytes(value)?;
            members.push(ClassicGroupMember {
                member_id,
                instance_id,
                client_id,
                client_host,
                // Kafka's v0 had one timeout for both.
                rebalance_timeout_ms: if rebalance_timeout_ms < 0 {
                    session_timeout_ms
                } else {
                    rebalance_timeout_ms
                },
                session_timeout_ms,
                subscription,
                assignment,
            });
        }
        Some(Self {
            protocol_type,
            generation,
            protocol_name,
            leader,
            state_timestamp_ms,
            members,
        })
    }
}

/// Kafka's `ConsumerGroupMetadataValue` with its partition metadata: the group epoch and
/// the partition counts of the subscribed topics it was reached with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerGroupValue {
    pub group_epoch: i32,
    pub subscribed_partitions: Vec<(String, i32)>,
}

/// Kafka's `ConsumerGroupMemberMetadataValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberMetadataValue {
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topics: Vec<String>,
    pub subscribed_regex: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub server_assignor: Option<String>,
    /// The topics `subscribed_regex` resolved to, as its principal may see them (value v1+;
    /// empty when read from v0). Kafka keeps them in its `ConsumerGroupRegularExpression`
    /// record, per pattern.
    pub regex_topics: Vec<String>,
    /// Set for a member that speaks the classic protocol (Kafka's `ClassicMemberMetadata`;
    /// value v2).
    pub classic: Option<ClassicMemberValue>,
}

/// Kafka's `ClassicMemberMetadata`: the session timeout and `JoinGroup` protocols (name,
/// metadata) of a classic member inside a consumer group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassicMemberValue {
    pub session_timeout_ms: i32,
    pub protocols: Vec<(String, Bytes)>,
}

/// Kafka's `ConsumerGroupTargetAssignmentMetadataValue`, and the assignor that computed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetMetadataValue {
    pub assignment_epoch: i32,
    pub assignor: Option<String>,
}

/// Kafka's `ConsumerGroupCurrentMemberAssignmentValue`. `state`: 0 stable, 1 unrevoked
/// partitions, 2 unreleased partitions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CurrentAssignmentValue {
    pub member_epoch: i32,
    pub previous_epoch: i32,
    pub state: i8,
    pub assigned: Assignment,
    pub pending_revocation: Assignment,
}

/// One record of a consumer-protocol group; a `None` value is a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumerRecord {
    Group {
        group: String,
        value: Option<ConsumerGroupValue>,
    },
    Member {
        group: String,
        member_id: String,
        value: Option<MemberMetadataValue>,
    },
    Target {
        group: String,
        value: Option<TargetMetadataValue>,
    },
    TargetMember {
        group: String,
        member_id: String,
        value: Option<Assignment>,
    },
    Current {
        group: String,
        member_id: String,
        value: Option<CurrentAssignmentValue>,
    },
}

impl ConsumerRecord {
    fn key(&self, out: &mut BytesMut) {
        let (version, group, member_id) = match self {
            ConsumerRecord::Group { group, .. } => (CONSUMER_GROUP_KEY_VERSION, group, None),
            ConsumerRecord::Target { group, .. } => (CONSUMER_TARGET_KEY_VERSION, group, None),
            ConsumerRecord::Member {
                group, member_id, ..
            } => (CONSUMER_MEMBER_KEY_VERSION, group, Some(member_id)),
            ConsumerRecord::TargetMember {
                group, member_id, ..
            } => (CONSUMER_TARGET_MEMBER_KEY_VERSION, group, Some(member_id)),
            ConsumerRecord::Current {
                group, member_id, ..
            } => (CONSUMER_CURRENT_KEY_VERSION, group, Some(member_id)),
        };
        out.put_i16(version);
        put_string(out, group);
        if let Some(member_id) = member_id {
            put_string(out, member_id);
        }
    }

    fn value(&self) -> Option<Bytes> {
        let mut out = BytesMut::new();
        out.put_i16(match self {
            ConsumerRecord::Member {
                value: Some(value), ..
            } if value.classic.is_some() => CONSUMER_MEMBER_CLASSIC_VALUE_VERSION,
            ConsumerRecord::Member { .. } => CONSUMER_MEMBER_VALUE_VERSION,
            _ => CONSUMER_VALUE_VERSION,
        });
        match self {
            ConsumerRecord::Group { value, .. } => {
                let value = value.as_ref()?;
                out.put_i32(value.group_epoch);
                put_count(&mut out, value.subscribed_partitions.len());
                for (topic, count) in &value.subscribed_partitions {
                    put_string(&mut out, topic);
                    out.put_i32(*count);
                }
            }
            ConsumerRecord::Member { value, .. } => {
                let value = value.as_ref()?;
                put_nullable(&mut out, value.instance_id.as_deref());
                put_nullable(&mut out, value.rack_id.as_deref());
                put_string(&mut out, &value.client_id);
                put_string(&mut out, &value.client_host);
                put_count(&mut out, value.subscribed_topics.len());
                for topic in &value.subscribed_topics {
                    put_string(&mut out, topic);
                }
                put_nullable(&mut out, value.subscribed_regex.as_deref());
                out.put_i32(value.rebalance_timeout_ms);
                put_nullable(&mut out, value.server_assignor.as_deref());
                put_count(&mut out, value.regex_topics.len());
                for topic in &value.regex_topics {
                    put_string(&mut out, topic);
                }
                if let Some(classic) = &value.classic {
                    out.put_i32(classic.session_timeout_ms);
                    put_count(&mut out, classic.protocols.len());
                    for (name, metadata) in &classic.protocols {
                        put_string(&mut out, name);
                        put_count(&mut out, metadata.len());
                        out.put_slice(metadata);
                    }
                }
            }
            ConsumerRecord::Target { value, .. } => {
                let value = value.as_ref()?;
                out.put_i32(value.assignment_epoch);
                put_nullable(&mut out, value.assignor.as_deref());
            }
            ConsumerRecord::TargetMember { value, .. } => put_assignment(&mut out, value.as_ref()?),
            ConsumerRecord::Current { value, .. } => {
                let value = value.as_ref()?;
                out.put_i32(value.member_epoch);
                out.put_i32(value.previous_epoch);
                out.put_i8(value.state);
                put_assignment(&mut out, &value.assigned);
                put_assignment(&mut out, &value.pending_revocation);
            }
        }
        Some(out.freeze())
    }

    /// The group the record belongs to.
    pub fn group(&self) -> &str {
        match self {
            ConsumerRecord::Group { group, .. }
            | ConsumerRecord::Member { group, .. }
            | ConsumerRecord::Target { group, .. }
            | ConsumerRecord::TargetMember { group, .. }
            | ConsumerRecord::Current { group, .. } => group,
        }
    }
}

fn decode_consumer(version: i16, mut key: &[u8], value: Option<&[u8]>) -> Option<ConsumerRecord> {
    let group = take_string(&mut key)?;
    let mut value_version = CONSUMER_VALUE_VERSION;
    let mut value = match value {
        None => None,
        Some(mut value) => {
            value_version = take_i16(&mut value)?;
            let newest = if version == CONSUMER_MEMBER_KEY_VERSION {
                CONSUMER_MEMBER_CLASSIC_VALUE_VERSION
            } else {
                CONSUMER_VALUE_VERSION
            };
            if !(CONSUMER_VALUE_VERSION..=newest).contains(&value_version) {
                return None;
            }
            Some(value)
        }
    };
    let record = match version {
        CONSUMER_GROUP_KEY_VERSION => ConsumerRecord::Group {
            group,
            value: match value.as_mut() {
                None => None,
                Some(value) => Some(ConsumerGroupValue {
                    group_epoch: take_i32(value)?,
                    subscribed_partitions: take_list(value, |v| {
                        Some((take_string(v)?, take_i32(v)?))
                    })?,
                }),
            },
        },
        CONSUMER_TARGET_KEY_VERSION => ConsumerRecord::Target {
            group,
            value: match value.as_mut() {
                None => None,
                Some(value) => Some(TargetMetadataValue {
                    assignment_epoch: take_i32(value)?,
                    assignor: take_nullable(value)?,
                }),
            },
        },
        CONSUMER_MEMBER_KEY_VERSION => ConsumerRecord::Member {
            member_id: take_string(&mut key)?,
            group,
            value: match value.as_mut() {
                None => None,
                Some(value) => Some(MemberMetadataValue {
                    instance_id: take_nullable(value)?,
                    rack_id: take_nullable(value)?,
                    client_id: take_string(value)?,
                    client_host: take_string(value)?,
                    subscribed_topics: take_list(value, take_string)?,
                    subscribed_regex: take_nullable(value)?,
                    rebalance_timeout_ms: take_i32(value)?,
                    server_assignor: take_nullable(value)?,
                    regex_topics: if value_version >= CONSUMER_MEMBER_VALUE_VERSION {
                        take_list(value, take_string)?
                    } else {
                        Vec::new()
                    },
                    classic: if value_version == CONSUMER_MEMBER_CLASSIC_VALUE_VERSION {
                        Some(take_classic(value)?)
                    } else {
                        None
                    },
                }),
            },
        },
        CONSUMER_TARGET_MEMBER_KEY_VERSION => ConsumerRecord::TargetMember {
            member_id: take_string(&mut key)?,
            group,
            value: match value.as_mut() {
                None => None,
                Some(value) => Some(take_assignment(value)?),
            },
        },
        CONSUMER_CURRENT_KEY_VERSION => ConsumerRecord::Current {
            member_id: take_string(&mut key)?,
            group,
            value: match value.as_mut() {
                None => None,
                Some(value) => Some(CurrentAssignmentValue {
                    member_epoch: take_i32(value)?,
                    previous_epoch: take_i32(value)?,
                    state: i8::from_be_bytes(take(value, 1)?.try_into().ok()?),
                    assigned: take_assignment(value)?,
                    pending_revocation: take_assignment(value)?,
                }),
            },
        },
        _ => return None,
    };
    Some(record)
}

/// A classic member's session timeout and protocols, each count checked against the bytes
/// left and [`CLASSIC_PROTOCOLS_MAX`] before anything is allocated.
fn take_classic(value: &mut &[u8]) -> Option<ClassicMemberValue> {
    let session_timeout_ms = take_i32(value)?;
    let count = usize::try_from(take_i32(value)?).ok()?;
    if count > CLASSIC_PROTOCOLS_MAX || count.saturating_mul(6) > value.len() {
        return None;
    }
    let mut protocols = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take_string(value)?;
        let length = usize::try_from(take_i32(value)?).ok()?;
        let metadata = Bytes::copy_from_slice(take(value, length)?);
        protocols.push((name, metadata));
    }
    Some(ClassicMemberValue {
        session_timeout_ms,
        protocols,
    })
}

fn put_count(out: &mut BytesMut, count: usize) {
    // Lists are bounded by the group's limits (members, topics, partitions) far below this.
    out.put_i32(i32::try_from(count).expect("list length fits an i32"));
}

/// Bytes: i32 length + the bytes.
fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    put_count(out, bytes.len());
    out.put_slice(bytes);
}

fn take_bytes(value: &mut &[u8]) -> Option<Bytes> {
    let length = usize::try_from(take_i32(value)?).ok()?;
    Some(Bytes::copy_from_slice(take(value, length)?))
}

fn put_nullable(out: &mut BytesMut, text: Option<&str>) {
    match text {
        Some(text) => put_string(out, text),
        None => out.put_i16(-1),
    }
}

/// topics: i32 count, each topic string | partitions i32 count | partition i32...
fn put_assignment(out: &mut BytesMut, assignment: &Assignment) {
    put_count(out, assignment.len());
    for (topic, partitions) in assignment {
        put_string(out, topic);
        put_count(out, partitions.len());
        for partition in partitions {
            out.put_i32(*partition);
        }
    }
}

/// A list of `count` items; a count beyond the bytes left fails as soon as they run out,
/// so a lying count costs no more memory than the record holds.
fn take_list<T>(
    bytes: &mut &[u8],
    mut item: impl FnMut(&mut &[u8]) -> Option<T>,
) -> Option<Vec<T>> {
    let count = usize::try_from(take_i32(bytes)?).ok()?;
    let mut out = Vec::with_capacity(count.min(bytes.len()));
    for _ in 0..count {
        out.push(item(bytes)?);
    }
    Some(out)
}

fn take_assignment(bytes: &mut &[u8]) -> Option<Assignment> {
    let topics = take_list(bytes, |v| Some((take_string(v)?, take_list(v, take_i32)?)))?;
    let mut out = Assignment::new();
    for (topic, partitions) in topics {
        out.entry(topic).or_default().extend(partitions);
    }
    Some(out)
}

/// A nullable string: `Some(None)` for length -1.
#[allow(clippy::option_option)]
fn take_nullable(bytes: &mut &[u8]) -> Option<Option<String>> {
    let length = take_i16(bytes)?;
    if length == -1 {
        return Some(None);
    }
    let length = usize::try_from(length).ok()?;
    Some(Some(String::from_utf8(take(bytes, length)?.to_vec()).ok()?))
}

impl OffsetsRecord {
    fn key(&self) -> Bytes {
        let mut key = BytesMut::new();
        match self {
            OffsetsRecord::Commit {
                group,
                topic,
                partition,
                ..
            } => {
                key.put_i16(OFFSET_KEY_VERSION);
                put_string(&mut key, group);
                put_string(&mut key, topic);
                key.put_i32(*partition);
            }
            OffsetsRecord::GroupDeleted { group } | OffsetsRecord::ClassicGroup { group, .. } => {
                key.put_i16(GROUP_KEY_VERSION);
                put_string(&mut key, group);
            }
            OffsetsRecord::StandaloneCommit {
                group,
                topic,
                partition,
                ..
            } => {
                key.put_i16(STANDALONE_OFFSET_KEY_VERSION);
                put_string(&mut key, group);
                put_string(&mut key, topic);
                key.put_i32(*partition);
            }
            OffsetsRecord::Consumer(record) => record.key(&mut key),
        }
        key.freeze()
    }

    fn value(&self) -> Option<Bytes> {
        if let OffsetsRecord::Consumer(record) = self {
            return record.value();
        }
        if let OffsetsRecord::ClassicGroup { value, .. } = self {
            return Some(value.encode());
        }
        if let OffsetsRecord::StandaloneCommit { offset, .. } = self {
            let mut out = BytesMut::new();
            out.put_i16(STANDALONE_OFFSET_VALUE_VERSION);
            out.put_i64(*offset);
            return Some(out.freeze());
        }
        let OffsetsRecord::Commit {
            value: Some(value), ..
        } = self
        else {
            return None;
        };
        let mut out = BytesMut::new();
        if let Some(expire_timestamp_ms) = value.expire_timestamp_ms {
            out.put_i16(OFFSET_VALUE_WITH_EXPIRY_VERSION);
            out.put_i64(value.offset);
            put_string(&mut out, &value.metadata);
            out.put_i64(value.commit_timestamp_ms);
            out.put_i64(expire_timestamp_ms);
        } else {
            out.put_i16(OFFSET_VALUE_VERSION);
            out.put_i64(value.offset);
            out.put_i32(value.leader_epoch);
            put_string(&mut out, &value.metadata);
            out.put_i64(value.commit_timestamp_ms);
        }
        Some(out.freeze())
    }
}

/// One uncompressed v2 batch holding `records`, so a multi-partition commit lands in the log
/// atomically (a batch is appended whole or not at all).
pub fn encode_batch(records: &[OffsetsRecord], timestamp_ms: i64) -> Bytes {
    let encoded: Vec<(Bytes, Option<Bytes>)> = records
        .iter()
        .map(|record| (record.key(), record.value()))
        .collect();
    let records: Vec<build::Record<'_>> = encoded
        .iter()
        .map(|(key, value)| build::Record {
            key: Some(key),
            value: value.as_deref(),
            timestamp_ms,
        })
        .collect();
    build::batch(&records)
}

/// Attributes bit of a transactional batch (Kafka's `isTransactional`).
pub const TRANSACTIONAL_FLAG: i16 = 0x10;

/// `TxnOffsetCommit`'s records as Kafka writes them: one transactional batch of the
/// producer (id, epoch, no sequence), which the transaction's marker on this partition
/// later commits or aborts.
pub fn encode_txn_batch(
    records: &[OffsetsRecord],
    timestamp_ms: i64,
    producer_id: i64,
    producer_epoch: i16,
) -> Bytes {
    let plain = encode_batch(records, timestamp_ms);
    let mut out = BytesMut::from(&plain[..]);
    let attributes = i16::from_be_bytes([out[ATTRIBUTES_OFFSET], out[ATTRIBUTES_OFFSET + 1]]);
    out[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2]
        .copy_from_slice(&(attributes | TRANSACTIONAL_FLAG).to_be_bytes());
    out[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8].copy_from_slice(&producer_id.to_be_bytes());
    out[PRODUCER_ID_OFFSET + 8..PRODUCER_ID_OFFSET + 10]
        .copy_from_slice(&producer_epoch.to_be_bytes());
    let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
    out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    out.freeze()
}

/// Where the producer id sits in a v2 batch header (the epoch follows it).
const PRODUCER_ID_OFFSET: usize = 43;

/// Whether a stored batch is a transaction's data (not its marker).
pub fn is_transactional_data(header: &BatchHeader) -> bool {
    header.attributes & TRANSACTIONAL_FLAG != 0 && !header.is_control()
}

/// A control batch's marker: `Some(true)` commit, `Some(false)` abort (key = version i16,
/// type i16: 0 abort, 1 commit); None when it does not parse.
pub fn marker_commits(stored: &[u8]) -> Option<bool> {
    let mut rest = stored.get(BATCH_HEADER_BYTES..)?;
    let (mut key, _) = next_record(&mut rest)?;
    let _version = take_i16(&mut key)?;
    match take_i16(&mut key)? {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

/// Decodes every record of one stored batch. Records that are not ours (a compressed batch,
/// an unknown schema version) are skipped and counted, never trusted.
pub fn decode_batch(stored: &[u8]) -> (Vec<OffsetsRecord>, usize) {
    let Some(header) = BatchHeader::parse(stored) else {
        return (Vec::new(), 1);
    };
    if header.is_compressed() || header.is_control() {
        return (Vec::new(), header.record_count.max(0) as usize);
    }
    let mut decoded = Vec::new();
    let mut skipped = 0;
    let mut rest = stored.get(BATCH_HEADER_BYTES..).unwrap_or_default();
    for _ in 0..header.record_count {
        let Some((key, value)) = next_record(&mut rest) else {
            skipped += 1;
            break;
        };
        match decode_record(key, value) {
            Some(record) => decoded.push(record),
            None => skipped += 1,
        }
    }
    (decoded, skipped)
}

fn decode_record(mut key: &[u8], value: Option<&[u8]>) -> Option<OffsetsRecord> {
    match take_i16(&mut key)? {
        0 | 1 => {
            let group = take_string(&mut key)?;
            let topic = take_string(&mut key)?;
            let partition = take_i32(&mut key)?;
            let value = match value {
                None => None,
                Some(value) => Some(decode_offset_value(value)?),
            };
            Some(OffsetsRecord::Commit {
                group,
                topic,
                partition,
                value,
            })
        }
        GROUP_KEY_VERSION => {
            let group = take_string(&mut key)?;
            match value {
                None => Some(OffsetsRecord::GroupDeleted { group }),
                Some(value) => Some(OffsetsRecord::ClassicGroup {
                    group,
                    value: ClassicGroupValue::decode(value)?,
                }),
            }
        }
        STANDALONE_OFFSET_KEY_VERSION => {
            let group = take_string(&mut key)?;
            let topic = take_string(&mut key)?;
            let partition = take_i32(&mut key)?;
            let mut value = value?;
            if take_i16(&mut value)? != STANDALONE_OFFSET_VALUE_VERSION {
                return None;
            }
            Some(OffsetsRecord::StandaloneCommit {
                group,
                topic,
                partition,
                offset: take_i64(&mut value)?,
            })
        }
        version @ CONSUMER_GROUP_KEY_VERSION..=CONSUMER_CURRENT_KEY_VERSION => {
            decode_consumer(version, key, value).map(OffsetsRecord::Consumer)
        }
        _ => None,
    }
}

/// Kafka's offset value versions: 0 and 2 (offset, metadata, commit timestamp), 1 (and the
/// expire timestamp), 3 (offset, leader epoch, metadata, commit timestamp).
fn decode_offset_value(mut value: &[u8]) -> Option<CommittedOffset> {
    let version = take_i16(&mut value)?;
    let offset = take_i64(&mut value)?;
    let leader_epoch = match version {
        0..=2 => -1,
        OFFSET_VALUE_VERSION => take_i32(&mut value)?,
        _ => return None,
    };
    let metadata = take_string(&mut value)?;
    let commit_timestamp_ms = take_i64(&mut value)?;
    let expire_timestamp_ms = if version == OFFSET_VALUE_WITH_EXPIRY_VERSION {
        Some(take_i64(&mut value)?)
    } else {
        None
    };
    Some(CommittedOffset {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp_ms,
        expire_timestamp_ms,
    })
}

fn put_string(out: &mut BytesMut, text: &str) {
    // Group ids, topic names and commit metadata are bounded far below i16::MAX by the
    // handlers (OFFSET_METADATA_TOO_LARGE, topic name rules), so the length always fits.
    let length = i16::try_from(text.len()).expect("string fits an i16 length");
    out.put_i16(length);
    out.put_slice(text.as_bytes());
}

fn take<'a>(bytes: &mut &'a [u8], count: usize) -> Option<&'a [u8]> {
    let taken = bytes.get(..count)?;
    *bytes = &bytes[count..];
    Some(taken)
}

fn take_i16(bytes: &mut &[u8]) -> Option<i16> {
    Some(i16::from_be_bytes(take(bytes, 2)?.try_into().ok()?))
}

fn take_i32(bytes: &mut &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(take(bytes, 4)?.try_into().ok()?))
}

fn take_i64(bytes: &mut &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(take(bytes, 8)?.try_into().ok()?))
}

fn take_string(bytes: &mut &[u8]) -> Option<String> {
    let length = usize::try_from(take_i16(bytes)?).ok()?;
    String::from_utf8(take(bytes, length)?.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control batch as a transaction marker is written (key: version 0, type).
    fn marker(control_type: i16) -> Bytes {
        crate::storage::batch::control::batch(control_type, &[0, 0, 0, 0, 0, 0])
    }

    #[test]
    fn transactional_offsets_are_a_valid_transactional_batch_of_the_producer() {
        let records = vec![OffsetsRecord::Commit {
            group: "g".into(),
            topic: "t".into(),
            partition: 0,
            value: Some(CommittedOffset {
                offset: 7,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp_ms: 1,
                expire_timestamp_ms: None,
            }),
        }];
        let stored = encode_txn_batch(&records, 1, 42, 3);
        let header = crate::storage::batch::validate(&stored, 1 << 20).expect("valid CRC");
        assert_eq!((header.producer_id, header.producer_epoch), (42, 3));
        assert!(is_transactional_data(&header));
        assert_eq!(decode_batch(&stored).0, records);
        // Kafka's markers: control type 1 commits, 0 aborts.
        let commit = marker(1);
        let abort = marker(0);
        assert_eq!(marker_commits(&commit), Some(true));
        assert_eq!(marker_commits(&abort), Some(false));
    }

    #[test]
    fn commits_tombstones_and_group_deletions_round_trip_through_one_batch() {
        let records = vec![
            OffsetsRecord::Commit {
                group: "payments".into(),
                topic: "orders".into(),
                partition: 3,
                value: Some(CommittedOffset {
                    offset: 42,
                    leader_epoch: 5,
                    metadata: "m".into(),
                    commit_timestamp_ms: 1_700_000_000_000,
                    expire_timestamp_ms: None,
                }),
            },
            OffsetsRecord::Commit {
                group: "payments".into(),
                topic: "orders".into(),
                partition: 5,
                value: Some(CommittedOffset {
                    offset: 43,
                    leader_epoch: -1,
                    metadata: "retained".into(),
                    commit_timestamp_ms: 1_700_000_000_000,
                    expire_timestamp_ms: Some(1_700_000_060_000),
                }),
            },
            OffsetsRecord::Commit {
                group: "payments".into(),
                topic: "orders".into(),
                partition: 4,
                value: None,
            },
            OffsetsRecord::GroupDeleted {
                group: "old".into(),
            },
            OffsetsRecord::StandaloneCommit {
                group: "burrow".into(),
                topic: "orders".into(),
                partition: 1,
                offset: 77,
            },
        ];
        let batch = encode_batch(&records, 1_700_000_000_000);
        assert!(
            crate::storage::batch::validate(&batch, 1 << 20).is_ok(),
            "a valid v2 batch"
        );
        assert_eq!(decode_batch(&batch), (records, 0));
    }

    /// A member speaking the classic protocol inside a consumer group (value v2).
    fn classic_member_record() -> ConsumerRecord {
        ConsumerRecord::Member {
            group: "g".into(),
            member_id: "classic-1".to_string(),
            value: Some(MemberMetadataValue {
                instance_id: None,
                rack_id: None,
                client_id: "rdkafka".into(),
                client_host: "/10.0.0.2".into(),
                subscribed_topics: vec!["orders".into()],
                subscribed_regex: None,
                rebalance_timeout_ms: 300_000,
                server_assignor: None,
                regex_topics: Vec::new(),
                classic: Some(ClassicMemberValue {
                    session_timeout_ms: 10_000,
                    protocols: vec![
                        (
                            "cooperative-sticky".into(),
                            Bytes::from_static(b"\x00\x03sub"),
                        ),
                        ("range".into(), Bytes::new()),
                    ],
                }),
            }),
        }
    }

    fn consumer_records() -> Vec<OffsetsRecord> {
        let assignment: Assignment = [("orders".to_string(), [0, 3, 7].into())].into();
        let member = |member_id: &str| member_id.to_string();
        [
            ConsumerRecord::Group {
                group: "g".into(),
                value: Some(ConsumerGroupValue {
                    group_epoch: 9,
                    subscribed_partitions: vec![("orders".into(), 12), ("audit".into(), 1)],
                }),
            },
            ConsumerRecord::Member {
                group: "g".into(),
                member_id: member("m1"),
                value: Some(MemberMetadataValue {
                    instance_id: Some("i1".into()),
                    rack_id: None,
                    client_id: "rdkafka".into(),
                    client_host: "/10.0.0.1".into(),
                    subscribed_topics: vec!["orders".into(), "audit".into()],
                    subscribed_regex: Some("^orders-.*".into()),
                    rebalance_timeout_ms: 300_000,
                    server_assignor: Some("uniform".into()),
                    regex_topics: vec!["orders-eu".into(), "orders-us".into()],
                    classic: None,
                }),
            },
            classic_member_record(),
            ConsumerRecord::Target {
                group: "g".into(),
                value: Some(TargetMetadataValue {
                    assignment_epoch: 9,
                    assignor: Some("range".into()),
                }),
            },
            ConsumerRecord::TargetMember {
                group: "g".into(),
                member_id: member("m1"),
                value: Some(assignment.clone()),
            },
            ConsumerRecord::Current {
                group: "g".into(),
                member_id: member("m1"),
                value: Some(CurrentAssignmentValue {
                    member_epoch: 9,
                    previous_epoch: 8,
                    state: 1,
                    assigned: assignment,
                    pending_revocation: [("audit".to_string(), [0].into())].into(),
                }),
            },
            ConsumerRecord::Current {
                group: "g".into(),
                member_id: member("m2"),
                value: None,
            },
            ConsumerRecord::TargetMember {
                group: "g".into(),
                member_id: member("m2"),
                value: None,
            },
            ConsumerRecord::Member {
                group: "g".into(),
                member_id: member("m2"),
                value: None,
            },
            ConsumerRecord::Target {
                group: "g".into(),
                value: None,
            },
            ConsumerRecord::Group {
                group: "g".into(),
                value: None,
            },
        ]
        .into_iter()
        .map(OffsetsRecord::Consumer)
        .collect()
    }

    #[test]
    fn consumer_group_records_and_their_tombstones_round_trip() {
        let records = consumer_records();
        // A consumer-protocol member's metadata is value v1 (with its regex's topics); a
        // classic member's is v2 (and its classic metadata after them).
        let versions: Vec<[u8; 2]> = records
            .iter()
            .filter_map(|r| match r {
                OffsetsRecord::Consumer(ConsumerRecord::Member { value: Some(_), .. }) => {
                    let value = r.value().expect("a value");
                    Some([value[0], value[1]])
                }
                _ => None,
            })
            .collect();
        assert_eq!(versions, vec![[0, 1], [0, 2]]);
        let batch = encode_batch(&records, 1_700_000_000_000);
        assert!(
            crate::storage::batch::validate(&batch, 1 << 20).is_ok(),
            "a valid v2 batch"
        );
        assert_eq!(decode_batch(&batch), (records, 0));
    }

    /// Member values written before regex subscriptions were served (v0, no resolved
    /// topics) are still read.
    #[test]
    fn member_values_of_version_0_are_still_read() {
        let value = MemberMetadataValue {
            subscribed_regex: Some("^orders-.*".into()),
            subscribed_topics: vec!["audit".into()],
            ..MemberMetadataValue::default()
        };
        let record = ConsumerRecord::Member {
            group: "g".into(),
            member_id: "m1".into(),
            value: Some(value),
        };
        let v1 = record.value().expect("a value");
        assert_eq!(v1[..2], CONSUMER_MEMBER_VALUE_VERSION.to_be_bytes());
        // v0: the same fields without the trailing (empty) list of resolved topics.
        let mut v0 = CONSUMER_VALUE_VERSION.to_be_bytes().to_vec();
        v0.extend_from_slice(&v1[2..v1.len() - 4]);
        let key = OffsetsRecord::Consumer(record.clone()).key();
        assert_eq!(
            decode_record(&key, Some(&v0)),
            Some(OffsetsRecord::Consumer(record))
        );
        let mut v2 = v1.to_vec();
        v2[..2].copy_from_slice(&2_i16.to_be_bytes());
        assert_eq!(
            decode_record(&key, Some(&v2)),
            None,
            "a newer version is skipped"
        );
    }

    #[test]
    fn truncated_consumer_values_are_skipped_never_misread() {
        for record in consumer_records() {
            let (key, Some(value)) = (record.key(), record.value()) else {
                continue;
            };
            for cut in 0..value.len() {
                assert_eq!(
                    decode_record(&key, Some(&value[..cut])),
                    None,
                    "{record:?} cut at {cut}"
                );
            }
            let mut lying = value.to_vec();
            lying.splice(2..2, [0x7f, 0xff, 0xff, 0xff]);
            // A huge count in front of the real fields: rejected without allocating it.
            let _ = decode_record(&key, Some(&lying));
        }
    }

    fn classic_group() -> ClassicGroupValue {
        ClassicGroupValue {
            protocol_type: "consumer".into(),
            generation: 12,
            protocol_name: Some("cooperative-sticky".into()),
            leader: Some("m-1".into()),
            state_timestamp_ms: 1_700_000_000_000,
            members: vec![
                ClassicGroupMember {
                    member_id: "m-1".into(),
                    instance_id: None,
                    client_id: "rdkafka".into(),
                    client_host: "/10.0.0.1".into(),
                    rebalance_timeout_ms: 300_000,
                    session_timeout_ms: 45_000,
                    subscription: Bytes::from_static(b"\x00\x01sub"),
                    assignment: Bytes::from_static(b"\x00\x01asg"),
                },
                ClassicGroupMember {
                    member_id: "m-2".into(),
                    instance_id: Some("pod-2".into()),
                    client_id: "java".into(),
                    client_host: "/10.0.0.2".into(),
                    rebalance_timeout_ms: 60_000,
                    session_timeout_ms: 10_000,
                    subscription: Bytes::new(),
                    assignment: Bytes::from_static(b"a"),
                },
            ],
        }
    }

    /// Kafka's group key (v2) with its `GroupMetadataValue` v3: written and read back, next
    /// to the same key's tombstone (the group deleted).
    #[test]
    fn classic_group_membership_round_trips_as_kafkas_group_metadata_value() {
        let records = vec![
            OffsetsRecord::ClassicGroup {
                group: "payments".into(),
                value: classic_group(),
            },
            OffsetsRecord::GroupDeleted {
                group: "payments".into(),
            },
        ];
        let batch = encode_batch(&records, 1);
        assert_eq!(decode_batch(&batch), (records.clone(), 0));
        assert_eq!(
            records[0].key(),
            records[1].key(),
            "one key: the later record wins"
        );
        let value = records[0].value().expect("a value");
        assert_eq!(value[..2], [0, 3], "Kafka's value version 3");
    }

    /// Kafka's older `GroupMetadataValue` versions read: v0 (one timeout for both, no state
    /// timestamp, no instance id), v1 (the rebalance timeout), v2 (the state timestamp).
    #[test]
    fn older_group_metadata_versions_are_read() {
        for version in 0..=2_i16 {
            let mut out = BytesMut::new();
            out.put_i16(version);
            put_string(&mut out, "consumer");
            out.put_i32(4);
            put_nullable(&mut out, Some("range"));
            put_nullable(&mut out, Some("m"));
            if version >= 2 {
                out.put_i64(99);
            }
            out.put_i32(1);
            put_string(&mut out, "m");
            put_string(&mut out, "client");
            put_string(&mut out, "/host");
            if version >= 1 {
                out.put_i32(70_000);
            }
            out.put_i32(30_000);
            put_bytes(&mut out, b"sub");
            put_bytes(&mut out, b"asg");
            let value = ClassicGroupValue::decode(&out).expect("read");
            let member = &value.members[0];
            let rebalance = if version >= 1 { 70_000 } else { 30_000 };
            assert_eq!(
                (
                    value.generation,
                    value.state_timestamp_ms,
                    member.rebalance_timeout_ms
                ),
                (4, if version >= 2 { 99 } else { -1 }, rebalance),
                "version {version}"
            );
            assert_eq!(
                (member.instance_id.clone(), member.assignment.clone()),
                (None, Bytes::from_static(b"asg"))
            );
        }
    }

    /// A damaged value is refused, never misread or allowed to allocate what it claims:
    /// every truncation, a newer version, a member count beyond the bytes or the limit.
    #[test]
    fn damaged_group_metadata_is_refused() {
        let whole = classic_group().encode();
        assert!(ClassicGroupValue::decode(&whole).is_some());
        for cut in 0..whole.len() {
            assert_eq!(
                ClassicGroupValue::decode(&whole[..cut]),
                None,
                "cut at {cut}"
            );
        }
        let mut newer = whole.to_vec();
        newer[..2].copy_from_slice(&4_i16.to_be_bytes());
        assert_eq!(ClassicGroupValue::decode(&newer), None);
        let mut empty = classic_group();
        empty.members.clear();
        let empty = empty.encode();
        let count_at = empty.len() - 4;
        for lie in [i32::MAX, -1, (CLASSIC_GROUP_MEMBERS_MAX + 1) as i32] {
            let mut lying = empty.to_vec();
            lying[count_at..].copy_from_slice(&lie.to_be_bytes());
            lying.extend(std::iter::repeat_n(0_u8, 64));
            assert_eq!(ClassicGroupValue::decode(&lying), None, "count {lie}");
        }
    }

    #[test]
    fn foreign_records_are_skipped_not_trusted() {
        let batch = build::batch(&[build::Record {
            key: Some(b"\x00\x07garbage"),
            value: Some(b"x"),
            timestamp_ms: 0,
        }]);
        assert_eq!(decode_batch(&batch), (Vec::new(), 1));
        assert_eq!(decode_batch(&batch[..30]).1, 1, "a truncated batch");
    }
}
