//! The controller's durable state: one file, `<data-dir>/cluster.meta`, rewritten whole on
//! every change with the temp + fsync + rename + directory-fsync sequence, so a crash leaves
//! either the old or the new state, never a mix.
//!
//! ```text
//! offset  size  field
//!      0     8  MAGIC              b"RFCLMETA"
//!      8     4  FORMAT_VERSION     u32 little-endian (2; 1 is read and upgraded)
//!     12     4  payload_bytes      u32 little-endian
//!     16     4  payload_crc32c     u32 little-endian, CRC32C of the payload
//!     20     n  payload            rkyv archive of `ClusterState`
//! ```

use std::path::{Path, PathBuf};

use rkyv::rancor;

use crate::disk::BrokerDisk;
use crate::storage::Disk;

pub const MAGIC: [u8; 8] = *b"RFCLMETA";
/// 2 added the broker registry and each partition's broker (issue 12). Version 1 files
/// (and group 0 entries) are still read: their topics have no recorded broker, which a
/// one-node broker reads as itself (`partition_brokers` empty), and no registered brokers.
pub const FORMAT_VERSION: u32 = 2;
const FORMAT_VERSION_V1: u32 = 1;
const HEADER_BYTES: usize = 20;
const FILE_NAME: &str = "cluster.meta";

/// One topic as persisted.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TopicRecord {
    pub name: String,
    pub id: [u8; 16],
    /// Owning shard of each partition (on its broker), by partition index.
    pub partition_shards: Vec<u32>,
    pub overrides: Vec<ConfigEntry>,
    /// The broker (`node.id`) each partition is placed on, by partition index; empty for a
    /// topic of a one-node broker or of a version 1 file (every partition is that broker's).
    pub partition_brokers: Vec<i32>,
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

impl From<ClusterStateV1> for ClusterState {
    fn from(old: ClusterStateV1) -> Self {
        Self {
            epoch: old.epoch,
            cluster_id: old.cluster_id,
            topics: old
                .topics
                .into_iter()
                .map(|topic| TopicRecord {
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
    if version != FORMAT_VERSION && version != FORMAT_VERSION_V1 {
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
    if version == FORMAT_VERSION_V1 {
        return rkyv::from_bytes::<ClusterStateV1, rancor::Error>(&aligned)
            .map(ClusterState::from)
            .map_err(|error| error.to_string());
    }
    rkyv::from_bytes::<ClusterState, rancor::Error>(&aligned).map_err(|error| error.to_string())
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

    fn sample() -> ClusterState {
        ClusterState {
            epoch: 7,
            cluster_id: "rf-test".into(),
            topics: vec![TopicRecord {
                name: "orders".into(),
                id: [9; 16],
                partition_shards: vec![0, 1, 0],
                overrides: vec![ConfigEntry {
                    key: "retention.ms".into(),
                    value: "1000".into(),
                }],
                partition_brokers: vec![2, 3, 2],
            }],
            brokers: vec![BrokerRecord {
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
            }],
        }
    }

    /// A version 1 file, as a broker before the registry wrote it.
    fn v1_file(state: &ClusterStateV1) -> Vec<u8> {
        let payload = rkyv::to_bytes::<rancor::Error>(state).unwrap();
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&FORMAT_VERSION_V1.to_le_bytes());
        file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        file.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        file.extend_from_slice(&payload);
        file
    }

    #[test]
    fn version_1_files_are_read_and_rewritten_as_version_2() {
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
        let upgraded = decode(&v1_file(&old)).unwrap();
        assert_eq!(upgraded.cluster_id, "rf-old");
        assert_eq!(upgraded.topics[0].partition_shards, vec![1, 0]);
        assert!(upgraded.topics[0].partition_brokers.is_empty());
        assert!(upgraded.brokers.is_empty());
        let rewritten = encode(&upgraded);
        assert_eq!(rewritten[8..12], FORMAT_VERSION.to_le_bytes());
        assert_eq!(decode(&rewritten).unwrap(), upgraded);
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
        let mut future = file.clone();
        future[8..12].copy_from_slice(&3_u32.to_le_bytes());
        assert!(decode(&future).unwrap_err().contains("format version 3"));
    }
}
