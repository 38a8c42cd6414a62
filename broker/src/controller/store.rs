//! The controller's durable state: one file, `<data-dir>/cluster.meta`, rewritten whole on
//! every change with the temp + fsync + rename + directory-fsync sequence, so a crash leaves
//! either the old or the new state, never a mix.
//!
//! ```text
//! offset  size  field
//!      0     8  MAGIC              b"RFCLMETA"
//!      8     4  FORMAT_VERSION     u32 little-endian (1)
//!     12     4  payload_bytes      u32 little-endian
//!     16     4  payload_crc32c     u32 little-endian, CRC32C of the payload
//!     20     n  payload            rkyv archive of `ClusterState`
//! ```

use std::path::{Path, PathBuf};

use rkyv::rancor;

use crate::disk::BrokerDisk;
use crate::storage::Disk;

pub const MAGIC: [u8; 8] = *b"RFCLMETA";
pub const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 20;
const FILE_NAME: &str = "cluster.meta";

/// One topic as persisted.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TopicRecord {
    pub name: String,
    pub id: [u8; 16],
    /// Owning shard of each partition, by partition index.
    pub partition_shards: Vec<u32>,
    pub overrides: Vec<ConfigEntry>,
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
    if version != FORMAT_VERSION {
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
            }],
        }
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
        future[8..12].copy_from_slice(&2_u32.to_le_bytes());
        assert!(decode(&future).unwrap_err().contains("format version 2"));
    }
}
