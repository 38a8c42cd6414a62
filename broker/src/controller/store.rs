//! The controller's durable state: one file, `<data-dir>/cluster.meta`, rewritten whole on
//! every change with the temp + fsync + rename + directory-fsync sequence, so a crash leaves
//! either the old or the new state, never a mix. Group 0's entries (several voters) carry
//! the same bytes.
//!
//! ```text
//! offset  size  field
//!      0     8  MAGIC              b"RFCLMETA"
//!      8     4  FORMAT_VERSION     u32 little-endian (5; 1 to 4 are read and upgraded)
//!     12     4  payload_bytes      u32 little-endian
//!     16     4  payload_crc32c     u32 little-endian, CRC32C of the payload
//!     20     n  payload            rkyv archive of `ClusterState`
//! ```
//!
//! The payload, format 5 (issue 12's replication and reassignments, issue 13's security
//! metadata; rkyv lays the fields out, this is what they mean):
//!
//! ```text
//! ClusterState
//!   epoch                   u64     +1 with every committed change
//!   cluster_id              string
//!   topics                  [TopicRecord]
//!     name                  string
//!     id                    16 bytes (UUID)
//!     partitions            [PartitionRecord], by partition index
//!       replicas            [ReplicaRecord]   first = preferred leader; distinct brokers
//!         broker            i32     node.id; -1 = the broker reading it (one-node broker,
//!                                   or a topic placed before the registry)
//!         shard             u32     the shard of that broker holding the replica
//!       group_id            u64     the partition's Raft group, never reused in the
//!                                   cluster's life (from next_group_id; 0 is the controller)
//!       leader              i32     node.id of the leader, -1 none
//!       leader_epoch        i32     the leader's Raft term; 0 = never reported (the first
//!                                   live replica leads, as before replication)
//!       isr                 [i32]   in-sync replicas (node ids)
//!     overrides             [ConfigEntry { key, value }]
//!   brokers                 [BrokerRecord], by node id (empty on a one-node broker)
//!     node_id, incarnation, listeners [{ name, host, port }], rack, shard_count, fenced
//!   next_group_id           u64     the next partition group id to hand out (from 1)
//!   next_producer_id        i64     start of the next producer-id block (AllocateProducerIds)
//!   producer_id_blocks      [ProducerIdBlock]  the latest block granted to each broker
//!     broker                i32
//!     incarnation           u64     the broker life it was granted to (a restart asks anew)
//!     start                 i64     ids start .. start + PRODUCER_ID_BLOCK_SIZE
//!   security                SecurityRecords (format 4; a cluster's ACLs, SCRAM credentials
//!                                   and client quotas; empty on a one-node broker, which
//!                                   keeps its files, see docs/SECURITY.md)
//!     seeded                bool    the first leader folded its data directory's files in
//!                                   (`controller::security::seed`); never again after
//!     acls                  [AclRecord], sorted, distinct: Kafka's wire codes
//!       resource_type i8, resource_name string, pattern_type i8, principal string,
//!       host string, operation i8, permission i8
//!     scram                 [ScramRecord], sorted by (user, mechanism), one per pair
//!       user string, mechanism i8 (1 SCRAM-SHA-256, 2 SCRAM-SHA-512), salt bytes,
//!       iterations u32, stored_key bytes, server_key bytes   (never a password)
//!     quotas                [QuotaRecord], sorted by entity, one per entity
//!       user     Option<Option<string>>   None: no user part; Some(None): the default
//!       client_id Option<Option<string>>  the same for the client id
//!       values   [{ key string, value_bits u64 (f64::to_bits) }]
//!   reassignments           [ReassignmentRecord] (format 5; partition moves in progress,
//!                                   by group id, at most `controller::reassignment::IN_FLIGHT_MAX`)
//!     group_id              u64     the partition's Raft group
//!     target                [ReplicaRecord]  the replicas it moves to (first = preferred
//!                                   leader); the partition's `replicas` stay the old ones
//!                                   until its leader reports the group's voters are these
//!     hosted                [ReplicaRecord]  every replica the move placed beyond `replicas`
//!                                   (kept open until the move ends, so a cancelled move's
//!                                   learners are removed from the group before they close)
//! ```
//!
//! Upgrades, in place (the next write is format 5): format 4 gets no reassignments; format 3 gets an empty, unseeded
//! `security` (the first leader then folds its files in). format 1 (no brokers) and format 2
//! (`partition_shards` and `partition_brokers` per topic) become one replica per partition
//! (its broker, or -1 where none was recorded), leader = that broker, epoch 0, ISR = the
//! replica; group ids are handed out in topic then partition order; the producer-id
//! allocator starts at 0 (brokers ask with their own `producer-ids` file's end as a floor).

use std::path::{Path, PathBuf};

use rkyv::rancor;

use crate::disk::BrokerDisk;
use crate::storage::Disk;

pub const MAGIC: [u8; 8] = *b"RFCLMETA";
/// 5 added partition reassignments in progress (issue 12 item 8);
/// 4 added the security records (ACLs, SCRAM credentials, client quotas; issue 13);
/// 3 added replica lists, Raft group ids, leader/epoch/ISR and the producer-id allocator;
/// 2 added the broker registry and each partition's broker (issue 12). Versions 1 to 3
/// (files and group 0 entries) are still read and upgraded (see the module docs), and 4.
pub const FORMAT_VERSION: u32 = 5;
const FORMAT_VERSION_V1: u32 = 1;
const FORMAT_VERSION_V2: u32 = 2;
const FORMAT_VERSION_V3: u32 = 3;
const FORMAT_VERSION_V4: u32 = 4;
const HEADER_BYTES: usize = 20;
const FILE_NAME: &str = "cluster.meta";
/// A replica's broker when none is recorded: whichever broker reads the state (a one-node
/// broker's own partitions, or a topic placed before the registry).
pub const LOCAL_BROKER: i32 = -1;
/// Producer ids in one block (Kafka's `AllocateProducerIds` hands out 1,000 at a time).
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;
/// The first partition group id (0 is the controller's group).
pub const FIRST_GROUP_ID: u64 = 1;

/// One topic as persisted.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TopicRecord {
    pub name: String,
    pub id: [u8; 16],
    /// By partition index.
    pub partitions: Vec<PartitionRecord>,
    pub overrides: Vec<ConfigEntry>,
}

impl TopicRecord {
    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }
}

/// One partition: where its replicas are, its Raft group and its leadership.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PartitionRecord {
    /// First = preferred leader; on distinct brokers.
    pub replicas: Vec<ReplicaRecord>,
    /// The partition's Raft group, unique for the cluster's life.
    pub group_id: u64,
    /// Node id of the leader, -1 none.
    pub leader: i32,
    /// The leader's term; 0 = no leader reported yet.
    pub leader_epoch: i32,
    /// In-sync replicas, by node id.
    pub isr: Vec<i32>,
}

impl PartitionRecord {
    /// A partition just placed: its first replica leads at epoch 0, every replica in sync.
    pub fn placed(replicas: Vec<ReplicaRecord>, group_id: u64) -> Self {
        Self {
            leader: replicas.first().map_or(-1, |replica| replica.broker),
            leader_epoch: 0,
            isr: replicas.iter().map(|replica| replica.broker).collect(),
            replicas,
            group_id,
        }
    }
}

/// One replica: a broker and the shard on it.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaRecord {
    pub broker: i32,
    pub shard: u32,
}

/// The latest producer-id block the controller granted a broker.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProducerIdBlock {
    pub broker: i32,
    pub incarnation: u64,
    pub start: i64,
}

/// One broker as it registered with the controller (issue 12's broker registry).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BrokerRecord {
    pub node_id: i32,
    /// Changes at every start of the broker, so a restart is told apart from a slow message.
    pub incarnation: u64,
    /// The advertised address of each Kafka listener, by listener name.
    pub listeners: Vec<ListenerRecord>,
    /// `broker.rack`, if set.
    pub rack: Option<String>,
    /// Shards the broker runs (where partitions placed on it may go).
    pub shard_count: u32,
    /// The controller stopped hearing from it for `broker.session.timeout.ms`: not alive,
    /// left out of Metadata, given no new partitions, until it registers again.
    pub fenced: bool,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ListenerRecord {
    pub name: String,
    pub host: String,
    pub port: i32,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    pub key: String,
    pub value: String,
}

/// Everything the controller owns. `epoch` increases with every committed change.
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq, Default,
)]
pub struct ClusterState {
    pub epoch: u64,
    pub cluster_id: String,
    pub topics: Vec<TopicRecord>,
    /// Registered brokers, by node id (empty on a one-node broker).
    pub brokers: Vec<BrokerRecord>,
    /// The next partition group id to hand out ([`FIRST_GROUP_ID`] when 0).
    pub next_group_id: u64,
    /// Start of the next producer-id block.
    pub next_producer_id: i64,
    /// The latest block granted to each broker, by broker.
    pub producer_id_blocks: Vec<ProducerIdBlock>,
    /// A cluster's ACLs, credentials and quotas (`controller::security`).
    pub security: SecurityRecords,
    /// Partition moves in progress (`controller::reassignment`), by group id.
    pub reassignments: Vec<ReassignmentRecord>,
}

/// A partition moving to other replicas (Kafka's KIP-455 reassignment).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ReassignmentRecord {
    pub group_id: u64,
    /// The replicas it moves to; equal to the partition's replicas once cancelled (the
    /// leader then removes the learners it added).
    pub target: Vec<ReplicaRecord>,
    /// Replicas hosted for the move beyond the partition's `replicas` (each once).
    pub hosted: Vec<ReplicaRecord>,
}

/// The security metadata a cluster's controller owns (issue 13: "ACLs and credentials live
/// in the controller's metadata"). Kept sorted and distinct by `controller::security`, so
/// two states holding the same sets compare equal.
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq, Default,
)]
pub struct SecurityRecords {
    /// The first leader folded its data directory's files in (done once per cluster).
    pub seeded: bool,
    pub acls: Vec<AclRecord>,
    pub scram: Vec<ScramRecord>,
    pub quotas: Vec<QuotaRecord>,
}

/// One ACL binding, in Kafka's wire codes.
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub struct AclRecord {
    pub resource_type: i8,
    pub resource_name: String,
    pub pattern_type: i8,
    pub principal: String,
    pub host: String,
    pub operation: i8,
    pub permission: i8,
}

/// One user's SCRAM credential of one mechanism: salted and iterated, never a password.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ScramRecord {
    pub user: String,
    /// Kafka's `ScramMechanism` code: 1 SCRAM-SHA-256, 2 SCRAM-SHA-512.
    pub mechanism: i8,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// One quota entity and its values.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct QuotaRecord {
    /// None: the entity has no user part; `Some(None)`: the default user.
    pub user: Option<Option<String>>,
    pub client_id: Option<Option<String>>,
    pub values: Vec<QuotaValueRecord>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct QuotaValueRecord {
    pub key: String,
    /// `f64::to_bits` (a float has no `Eq`; the bits compare exactly).
    pub value_bits: u64,
}

impl ClusterState {
    /// Hands out the next partition group id.
    pub fn take_group_id(&mut self) -> u64 {
        let id = self.next_group_id.max(FIRST_GROUP_ID);
        self.next_group_id = id + 1;
        id
    }
}

/// What a version 4 payload holds (before reassignments).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
struct ClusterStateV4 {
    epoch: u64,
    cluster_id: String,
    topics: Vec<TopicRecord>,
    brokers: Vec<BrokerRecord>,
    next_group_id: u64,
    next_producer_id: i64,
    producer_id_blocks: Vec<ProducerIdBlock>,
    security: SecurityRecords,
}

impl From<ClusterStateV4> for ClusterState {
    fn from(old: ClusterStateV4) -> Self {
        Self {
            epoch: old.epoch,
            cluster_id: old.cluster_id,
            topics: old.topics,
            brokers: old.brokers,
            next_group_id: old.next_group_id,
            next_producer_id: old.next_producer_id,
            producer_id_blocks: old.producer_id_blocks,
            security: old.security,
            reassignments: Vec::new(),
        }
    }
}

/// What a version 3 payload holds (before the security records).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
struct ClusterStateV3 {
    epoch: u64,
    cluster_id: String,
    topics: Vec<TopicRecord>,
    brokers: Vec<BrokerRecord>,
    next_group_id: u64,
    next_producer_id: i64,
    producer_id_blocks: Vec<ProducerIdBlock>,
}

impl From<ClusterStateV3> for ClusterState {
    fn from(old: ClusterStateV3) -> Self {
        Self {
            epoch: old.epoch,
            cluster_id: old.cluster_id,
            topics: old.topics,
            brokers: old.brokers,
            next_group_id: old.next_group_id,
            next_producer_id: old.next_producer_id,
            producer_id_blocks: old.producer_id_blocks,
            security: SecurityRecords::default(),
            reassignments: Vec::new(),
        }
    }
}

/// What a version 1 payload holds (`ClusterState` before the broker registry).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
struct ClusterStateV1 {
    epoch: u64,
    cluster_id: String,
    topics: Vec<TopicRecordV1>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
struct TopicRecordV1 {
    name: String,
    id: [u8; 16],
    partition_shards: Vec<u32>,
    overrides: Vec<ConfigEntry>,
}

/// What a version 2 payload holds (before replica lists).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
struct ClusterStateV2 {
    epoch: u64,
    cluster_id: String,
    topics: Vec<TopicRecordV2>,
    brokers: Vec<BrokerRecord>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
struct TopicRecordV2 {
    name: String,
    id: [u8; 16],
    partition_shards: Vec<u32>,
    overrides: Vec<ConfigEntry>,
    /// Empty: none recorded (a one-node broker's, or version 1's).
    partition_brokers: Vec<i32>,
}

impl From<ClusterStateV1> for ClusterStateV2 {
    fn from(old: ClusterStateV1) -> Self {
        Self {
            epoch: old.epoch,
            cluster_id: old.cluster_id,
            topics: old
                .topics
                .into_iter()
                .map(|topic| TopicRecordV2 {
                    name: topic.name,
                    id: topic.id,
                    partition_shards: topic.partition_shards,
                    overrides: topic.overrides,
                    partition_brokers: Vec::new(),
                })
                .collect(),
            brokers: Vec::new(),
        }
    }
}

impl From<ClusterStateV2> for ClusterState {
    fn from(old: ClusterStateV2) -> Self {
        let mut state = Self {
            epoch: old.epoch,
            cluster_id: old.cluster_id,
            topics: Vec::with_capacity(old.topics.len()),
            brokers: old.brokers,
            next_group_id: FIRST_GROUP_ID,
            next_producer_id: 0,
            producer_id_blocks: Vec::new(),
            security: SecurityRecords::default(),
            reassignments: Vec::new(),
        };
        for topic in old.topics {
            let partitions = topic
                .partition_shards
                .iter()
                .enumerate()
                .map(|(partition, shard)| {
                    let broker = topic
                        .partition_brokers
                        .get(partition)
                        .copied()
                        .unwrap_or(LOCAL_BROKER);
                    let replica = ReplicaRecord {
                        broker,
                        shard: *shard,
                    };
                    PartitionRecord::placed(vec![replica], state.take_group_id())
                })
                .collect();
            state.topics.push(TopicRecord {
                name: topic.name,
                id: topic.id,
                partitions,
                overrides: topic.overrides,
            });
        }
        state
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a Ringfeed cluster metadata file or damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// Encodes `state` with the header above.
pub fn encode(state: &ClusterState) -> Vec<u8> {
    let payload =
        rkyv::to_bytes::<rancor::Error>(state).expect("serialising plain data cannot fail");
    let mut file = Vec::with_capacity(HEADER_BYTES + payload.len());
    file.extend_from_slice(&MAGIC);
    file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    file.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    file.extend_from_slice(&payload);
    file
}

/// Decodes a file written by `encode`, checking magic, version, length and checksum first.
pub fn decode(file: &[u8]) -> Result<ClusterState, String> {
    if file.len() < HEADER_BYTES || file[..8] != MAGIC {
        return Err("bad magic".into());
    }
    let word = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().expect("four bytes"));
    let version = word(8);
    if !(FORMAT_VERSION_V1..=FORMAT_VERSION).contains(&version) {
        return Err(format!(
            "format version {version}, this build reads {FORMAT_VERSION}"
        ));
    }
    let payload_bytes = word(12) as usize;
    let payload = file
        .get(HEADER_BYTES..HEADER_BYTES + payload_bytes)
        .ok_or("truncated payload")?;
    if crc32c::crc32c(payload) != word(16) {
        return Err("checksum mismatch".into());
    }
    // rkyv reads archives in place and needs them aligned; the file buffer may not be.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    match version {
        FORMAT_VERSION_V1 => rkyv::from_bytes::<ClusterStateV1, rancor::Error>(&aligned)
            .map(|old| ClusterState::from(ClusterStateV2::from(old))),
        FORMAT_VERSION_V2 => {
            rkyv::from_bytes::<ClusterStateV2, rancor::Error>(&aligned).map(ClusterState::from)
        }
        FORMAT_VERSION_V3 => {
            rkyv::from_bytes::<ClusterStateV3, rancor::Error>(&aligned).map(ClusterState::from)
        }
        FORMAT_VERSION_V4 => {
            rkyv::from_bytes::<ClusterStateV4, rancor::Error>(&aligned).map(ClusterState::from)
        }
        _ => rkyv::from_bytes::<ClusterState, rancor::Error>(&aligned),
    }
    .map_err(|error| error.to_string())
}

/// Reads and writes `cluster.meta` in one data directory, on the shard's disk. Used only by
/// the controller.
pub struct MetadataStore {
    disk: BrokerDisk,
    data_dir: PathBuf,
}

impl MetadataStore {
    pub fn new(disk: BrokerDisk, data_dir: &Path) -> Self {
        Self {
            disk,
            data_dir: data_dir.to_path_buf(),
        }
    }

    fn path(&self) -> PathBuf {
        self.data_dir.join(FILE_NAME)
    }

    /// Loads the state at start-up. `Ok(None)` means a fresh data directory.
    pub async fn load(&self) -> Result<Option<ClusterState>, StoreError> {
        let path = self.path();
        match self.disk.read_file(&path).await {
            Ok(Some(file)) => decode(&file)
                .map(Some)
                .map_err(|reason| StoreError::Corrupt { path, reason }),
            Ok(None) => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Replaces the persisted state atomically and durably: the disk's temporary file
    /// (`cluster.meta.tmp`, overwritten if a crash left one), fdatasync, rename, directory
    /// fsync. The file holds exactly `encode(state)`.
    pub async fn persist(&self, state: &ClusterState) -> Result<(), StoreError> {
        let path = self.path();
        self.disk
            .write_file_atomically(&path, &encode(state))
            .await
            .map_err(|source| StoreError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker_record() -> BrokerRecord {
        BrokerRecord {
            node_id: 2,
            incarnation: 77,
            listeners: vec![ListenerRecord {
                name: "PLAINTEXT".into(),
                host: "b2".into(),
                port: 9092,
            }],
            rack: Some("r1".into()),
            shard_count: 4,
            fenced: false,
        }
    }

    fn sample() -> ClusterState {
        let replica = |broker, shard| ReplicaRecord { broker, shard };
        ClusterState {
            epoch: 7,
            cluster_id: "rf-test".into(),
            topics: vec![TopicRecord {
                name: "orders".into(),
                id: [9; 16],
                partitions: vec![
                    PartitionRecord::placed(vec![replica(2, 0), replica(3, 1)], 5),
                    PartitionRecord {
                        replicas: vec![replica(3, 1), replica(2, 1)],
                        group_id: 6,
                        leader: 2,
                        leader_epoch: 4,
                        isr: vec![2],
                    },
                ],
                overrides: vec![ConfigEntry {
                    key: "retention.ms".into(),
                    value: "1000".into(),
                }],
            }],
            brokers: vec![broker_record()],
            next_group_id: 7,
            next_producer_id: 3000,
            producer_id_blocks: vec![ProducerIdBlock {
                broker: 2,
                incarnation: 77,
                start: 2000,
            }],
            security: SecurityRecords {
                seeded: true,
                acls: vec![AclRecord {
                    resource_type: 2,
                    resource_name: "orders".into(),
                    pattern_type: 3,
                    principal: "User:alice".into(),
                    host: "*".into(),
                    operation: 3,
                    permission: 3,
                }],
                scram: vec![ScramRecord {
                    user: "alice".into(),
                    mechanism: 2,
                    salt: vec![1, 2, 3],
                    iterations: 4096,
                    stored_key: vec![4; 64],
                    server_key: vec![5; 64],
                }],
                quotas: vec![QuotaRecord {
                    user: Some(Some("alice".into())),
                    client_id: Some(None),
                    values: vec![QuotaValueRecord {
                        key: "producer_byte_rate".into(),
                        value_bits: 1024.0_f64.to_bits(),
                    }],
                }],
            },
            reassignments: vec![ReassignmentRecord {
                group_id: 5,
                target: vec![replica(3, 1), replica(4, 0)],
                hosted: vec![replica(4, 0)],
            }],
        }
    }

    /// A file of an older version holding `payload`.
    fn old_file(version: u32, payload: &[u8]) -> Vec<u8> {
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&version.to_le_bytes());
        file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        file.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        file.extend_from_slice(payload);
        file
    }

    fn assert_rewritten_as_current(upgraded: &ClusterState) {
        let rewritten = encode(upgraded);
        assert_eq!(rewritten[8..12], FORMAT_VERSION.to_le_bytes());
        assert_eq!(&decode(&rewritten).unwrap(), upgraded);
    }

    #[test]
    fn version_1_files_are_read_and_rewritten_as_current() {
        let old = ClusterStateV1 {
            epoch: 4,
            cluster_id: "rf-old".into(),
            topics: vec![TopicRecordV1 {
                name: "kept".into(),
                id: [3; 16],
                partition_shards: vec![1, 0],
                overrides: Vec::new(),
            }],
        };
        let payload = rkyv::to_bytes::<rancor::Error>(&old).unwrap();
        let upgraded = decode(&old_file(FORMAT_VERSION_V1, &payload)).unwrap();
        assert_eq!(upgraded.cluster_id, "rf-old");
        let partitions = &upgraded.topics[0].partitions;
        let shards: Vec<u32> = partitions.iter().map(|p| p.replicas[0].shard).collect();
        assert_eq!(shards, [1, 0]);
        assert!(partitions
            .iter()
            .all(|p| p.replicas.len() == 1 && p.replicas[0].broker == LOCAL_BROKER));
        assert!(upgraded.brokers.is_empty());
        assert_rewritten_as_current(&upgraded);
    }

    #[test]
    fn version_2_files_are_read_and_rewritten_as_current() {
        let old = ClusterStateV2 {
            epoch: 9,
            cluster_id: "rf-v2".into(),
            topics: vec![
                TopicRecordV2 {
                    name: "a".into(),
                    id: [1; 16],
                    partition_shards: vec![0, 1, 1],
                    overrides: Vec::new(),
                    partition_brokers: vec![2, 3, 2],
                },
                TopicRecordV2 {
                    name: "b".into(),
                    id: [2; 16],
                    partition_shards: vec![1],
                    overrides: Vec::new(),
                    partition_brokers: Vec::new(),
                },
            ],
            brokers: vec![broker_record()],
        };
        let payload = rkyv::to_bytes::<rancor::Error>(&old).unwrap();
        let upgraded = decode(&old_file(FORMAT_VERSION_V2, &payload)).unwrap();
        assert_eq!(upgraded.epoch, 9);
        assert_eq!(upgraded.brokers, old.brokers);
        let a = &upgraded.topics[0].partitions;
        let replicas: Vec<(i32, u32)> = a
            .iter()
            .map(|p| (p.replicas[0].broker, p.replicas[0].shard))
            .collect();
        assert_eq!(replicas, [(2, 0), (3, 1), (2, 1)]);
        assert!(a
            .iter()
            .all(|p| p.leader == p.replicas[0].broker && p.leader_epoch == 0));
        assert_eq!(a[1].isr, [3]);
        assert_eq!(
            upgraded.topics[1].partitions[0].replicas[0].broker,
            LOCAL_BROKER
        );
        let groups: Vec<u64> = upgraded
            .topics
            .iter()
            .flat_map(|topic| topic.partitions.iter().map(|p| p.group_id))
            .collect();
        assert_eq!(groups, [1, 2, 3, 4], "unique, from 1, in topic order");
        assert_eq!(upgraded.next_group_id, 5);
        assert_eq!(upgraded.next_producer_id, 0);
        assert_rewritten_as_current(&upgraded);
    }

    #[test]
    fn version_3_files_are_read_with_empty_unseeded_security_and_rewritten_as_version_4() {
        let current = sample();
        let old = ClusterStateV3 {
            epoch: current.epoch,
            cluster_id: current.cluster_id.clone(),
            topics: current.topics.clone(),
            brokers: current.brokers.clone(),
            next_group_id: current.next_group_id,
            next_producer_id: current.next_producer_id,
            producer_id_blocks: current.producer_id_blocks.clone(),
        };
        let payload = rkyv::to_bytes::<rancor::Error>(&old).unwrap();
        let upgraded = decode(&old_file(FORMAT_VERSION_V3, &payload)).unwrap();
        assert_eq!(
            upgraded,
            ClusterState {
                security: SecurityRecords::default(),
                reassignments: Vec::new(),
                ..current
            },
            "every version 3 field kept"
        );
        assert!(!upgraded.security.seeded, "the first leader seeds it");
        assert_rewritten_as_current(&upgraded);
    }

    #[test]
    fn version_4_files_are_read_without_reassignments_and_rewritten_as_version_5() {
        let current = sample();
        let old = ClusterStateV4 {
            epoch: current.epoch,
            cluster_id: current.cluster_id.clone(),
            topics: current.topics.clone(),
            brokers: current.brokers.clone(),
            next_group_id: current.next_group_id,
            next_producer_id: current.next_producer_id,
            producer_id_blocks: current.producer_id_blocks.clone(),
            security: current.security.clone(),
        };
        let payload = rkyv::to_bytes::<rancor::Error>(&old).unwrap();
        let upgraded = decode(&old_file(FORMAT_VERSION_V4, &payload)).unwrap();
        assert_eq!(
            upgraded,
            ClusterState {
                reassignments: Vec::new(),
                ..current
            },
            "every version 4 field kept"
        );
        assert_rewritten_as_current(&upgraded);
    }

    #[test]
    fn group_ids_are_never_zero_nor_reused() {
        let mut state = ClusterState::default();
        assert_eq!(state.take_group_id(), FIRST_GROUP_ID);
        assert_eq!(state.take_group_id(), FIRST_GROUP_ID + 1);
    }

    #[test]
    fn round_trip_preserves_every_field() {
        assert_eq!(decode(&encode(&sample())).unwrap(), sample());
    }

    #[test]
    fn any_flipped_payload_bit_is_detected() {
        let file = encode(&sample());
        for at in HEADER_BYTES..file.len() {
            let mut damaged = file.clone();
            damaged[at] ^= 0x10;
            assert!(
                decode(&damaged).is_err(),
                "flip at byte {at} went unnoticed"
            );
        }
    }

    #[test]
    fn truncation_and_foreign_versions_are_refused() {
        let file = encode(&sample());
        assert!(decode(&file[..file.len() - 1]).is_err());
        for version in [0_u32, 6] {
            let mut foreign = file.clone();
            foreign[8..12].copy_from_slice(&version.to_le_bytes());
            assert!(decode(&foreign)
                .unwrap_err()
                .contains(&format!("format version {version}")));
        }
    }
}
