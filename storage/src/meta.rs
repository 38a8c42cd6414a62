//! Small metadata files: a checksummed, versioned envelope around an rkyv archive
//! (`storage/FORMAT.md` § Metadata envelope). Used for segment indexes, the recovery
//! checkpoint, the clean-shutdown marker and the log-format file.
//!
//! ```text
//!  0 magic [u8; 4]       4 version u32 LE     8 payload_bytes u64 LE
//! 16 payload_crc32c u32 LE                   20 header_crc32c u32 LE (bytes 0..20)
//! 24 reserved [u8; 8] (zero)                 32 payload: rkyv archive
//! ```

use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

pub const ENVELOPE_MAGIC_OFFSET: usize = 0;
pub const ENVELOPE_VERSION_OFFSET: usize = 4;
pub const ENVELOPE_PAYLOAD_BYTES_OFFSET: usize = 8;
pub const ENVELOPE_PAYLOAD_CRC_OFFSET: usize = 16;
pub const ENVELOPE_HEADER_CRC_OFFSET: usize = 20;
pub const ENVELOPE_HEADER_BYTES: usize = 32;
const _: () = assert!(ENVELOPE_HEADER_CRC_OFFSET + 4 + 8 == ENVELOPE_HEADER_BYTES);

/// Which file an envelope holds; the magic keeps one from being read as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKind {
    SegmentIndex,
    RecoveryCheckpoint,
    CleanShutdown,
    /// The broker's idempotent-producer state of one partition (broker `producer_state.rs`).
    ProducerState,
    /// The partition's format and where its Raft terms start (`log.format`).
    LogFormat,
    /// What the log cleaner has done and the swap it is committing (`cleaner.state`).
    CleanerState,
    /// A replicated partition's transactions as of a Raft index (broker
    /// `replica/txns.rs`, `replica-txns.snapshot`).
    ReplicaTxns,
}

impl MetaKind {
    pub const fn magic(self) -> [u8; 4] {
        match self {
            MetaKind::SegmentIndex => *b"RFIX",
            MetaKind::RecoveryCheckpoint => *b"RFCP",
            MetaKind::CleanShutdown => *b"RFCS",
            MetaKind::ProducerState => *b"RFPS",
            MetaKind::LogFormat => *b"RFLF",
            MetaKind::CleanerState => *b"RFCL",
            MetaKind::ReplicaTxns => *b"RFRT",
        }
    }

    /// Bumped whenever the archived structure changes; older files are rebuilt or ignored,
    /// except where [`open_versions`] is told to read an older version too. Version 2 of the
    /// index, checkpoint and marker carries Raft indexes (partition format 2).
    pub const fn version(self) -> u32 {
        match self {
            MetaKind::SegmentIndex | MetaKind::RecoveryCheckpoint | MetaKind::CleanShutdown => 2,
            // Version 2 of the producer state adds each producer's last timestamp, version 3
            // the partition's open and aborted transactions and coordinator epochs.
            MetaKind::ProducerState => 3,
            MetaKind::LogFormat | MetaKind::CleanerState | MetaKind::ReplicaTxns => 1,
        }
    }
}

/// Why a metadata file was not used. Never fatal: an index is rebuilt, a checkpoint or
/// marker is treated as absent (a full scan follows).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("shorter than its header")]
    Truncated,
    #[error("wrong magic")]
    WrongMagic,
    #[error("unsupported version {0}")]
    UnsupportedVersion(u32),
    #[error("checksum mismatch")]
    ChecksumMismatch,
    #[error("archive does not validate: {0}")]
    InvalidArchive(String),
}

/// Wraps an archive in the envelope.
pub fn seal(kind: MetaKind, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0_u8; ENVELOPE_HEADER_BYTES];
    out[ENVELOPE_MAGIC_OFFSET..4].copy_from_slice(&kind.magic());
    out[ENVELOPE_VERSION_OFFSET..8].copy_from_slice(&kind.version().to_le_bytes());
    out[ENVELOPE_PAYLOAD_BYTES_OFFSET..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    out[ENVELOPE_PAYLOAD_CRC_OFFSET..20].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let header_crc = crc32c::crc32c(&out[..ENVELOPE_HEADER_CRC_OFFSET]);
    out[ENVELOPE_HEADER_CRC_OFFSET..24].copy_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks the envelope and returns the payload copied into rkyv-aligned memory.
pub fn open(kind: MetaKind, file: &[u8]) -> Result<AlignedVec, MetaError> {
    open_versions(kind, file, &[kind.version()]).map(|(_, payload)| payload)
}

/// Like [`open`], accepting any of `versions`; returns the file's version with the payload.
pub fn open_versions(
    kind: MetaKind,
    file: &[u8],
    versions: &[u32],
) -> Result<(u32, AlignedVec), MetaError> {
    let header = file
        .get(..ENVELOPE_HEADER_BYTES)
        .ok_or(MetaError::Truncated)?;
    let le_u32 = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4"));
    if header[..4] != kind.magic() {
        return Err(MetaError::WrongMagic);
    }
    if le_u32(ENVELOPE_HEADER_CRC_OFFSET) != crc32c::crc32c(&header[..ENVELOPE_HEADER_CRC_OFFSET]) {
        return Err(MetaError::ChecksumMismatch);
    }
    let version = le_u32(ENVELOPE_VERSION_OFFSET);
    if !versions.contains(&version) {
        return Err(MetaError::UnsupportedVersion(version));
    }
    let payload_bytes = u64::from_le_bytes(header[8..16].try_into().expect("8"));
    let payload = file
        .get(ENVELOPE_HEADER_BYTES..)
        .filter(|rest| rest.len() as u64 == payload_bytes)
        .ok_or(MetaError::Truncated)?;
    if le_u32(ENVELOPE_PAYLOAD_CRC_OFFSET) != crc32c::crc32c(payload) {
        return Err(MetaError::ChecksumMismatch);
    }
    let mut aligned = AlignedVec::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    Ok((version, aligned))
}

/// Where the log stood at a point known to be durable (the recovery checkpoint), or where it
/// stood at a clean shutdown (the marker). Recovery trusts the bytes before `durable_bytes`
/// of segment `segment_base_offset` and scans only what follows.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCheckpoint {
    pub log_start_offset: i64,
    pub segment_base_offset: i64,
    pub durable_bytes: u64,
    pub next_offset: i64,
    /// The Raft index of the first batch of segment `segment_base_offset` (format 2);
    /// [`INDEX_UNKNOWN`] when read from a format-1 file, which did not record it.
    pub segment_base_index: u64,
}

/// A Raft index no batch has: the first batch of a log has index 1 or more (`FORMAT.md`
/// § Raft index and term), so 0 marks an index a format-1 file did not record.
pub const INDEX_UNKNOWN: u64 = 0;

/// The checkpoint as format 1 wrote it (read once, when a format-1 partition is upgraded).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
struct LogCheckpointV1 {
    log_start_offset: i64,
    segment_base_offset: i64,
    durable_bytes: u64,
    next_offset: i64,
}

const CHECKPOINT_VERSION_1: u32 = 1;

pub fn encode_checkpoint(kind: MetaKind, checkpoint: &LogCheckpoint) -> Vec<u8> {
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(checkpoint).expect("plain struct");
    seal(kind, &archive)
}

/// Reads a checkpoint or marker of this format or of format 1 (its `segment_base_index`
/// then is [`INDEX_UNKNOWN`]).
pub fn decode_checkpoint(kind: MetaKind, file: &[u8]) -> Result<LogCheckpoint, MetaError> {
    let invalid = |e: rkyv::rancor::Error| MetaError::InvalidArchive(e.to_string());
    let (version, payload) = open_versions(kind, file, &[kind.version(), CHECKPOINT_VERSION_1])?;
    if version == CHECKPOINT_VERSION_1 {
        let old = rkyv::access::<ArchivedLogCheckpointV1, rkyv::rancor::Error>(&payload)
            .map_err(invalid)?;
        return Ok(LogCheckpoint {
            log_start_offset: old.log_start_offset.to_native(),
            segment_base_offset: old.segment_base_offset.to_native(),
            durable_bytes: old.durable_bytes.to_native(),
            next_offset: old.next_offset.to_native(),
            segment_base_index: INDEX_UNKNOWN,
        });
    }
    let archived =
        rkyv::access::<ArchivedLogCheckpoint, rkyv::rancor::Error>(&payload).map_err(invalid)?;
    Ok(LogCheckpoint {
        log_start_offset: archived.log_start_offset.to_native(),
        segment_base_offset: archived.segment_base_offset.to_native(),
        durable_bytes: archived.durable_bytes.to_native(),
        next_offset: archived.next_offset.to_native(),
        segment_base_index: archived.segment_base_index.to_native(),
    })
}

/// The partition's format (`log.format`). Its presence says the directory is format 2: every
/// segment's Raft indexes are anchored in an index file or the checkpoint, so a directory
/// without it is a format-1 one to upgrade (its batches are numbered from index 1).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogFormat {
    pub format_version: u32,
    /// Batches at Raft indexes below this were appended before the log was replicated
    /// (by format 1, or by plain appends): their partitionLeaderEpoch is whatever the producer
    /// sent, and their term is 0. From this index on, partitionLeaderEpoch is the Raft term.
    /// [`TERMS_NEVER`] while the log has not been replicated.
    pub terms_from_index: u64,
}

/// The partition format this code writes.
pub const LOG_FORMAT_VERSION: u32 = 2;
/// `terms_from_index` of a log that has never held a replicated entry.
pub const TERMS_NEVER: u64 = u64::MAX;

pub fn encode_log_format(format: &LogFormat) -> Vec<u8> {
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(format).expect("plain struct");
    seal(MetaKind::LogFormat, &archive)
}

pub fn decode_log_format(file: &[u8]) -> Result<LogFormat, MetaError> {
    let payload = open(MetaKind::LogFormat, file)?;
    let archived = rkyv::access::<ArchivedLogFormat, rkyv::rancor::Error>(&payload)
        .map_err(|e| MetaError::InvalidArchive(e.to_string()))?;
    Ok(LogFormat {
        format_version: archived.format_version.to_native(),
        terms_from_index: archived.terms_from_index.to_native(),
    })
}

/// One segment the cleaner has cleaned at least once, and when it first did (the start of its
/// tombstones' `delete.retention.ms`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanedSegment {
    pub base_offset: i64,
    pub first_cleaned_ms: i64,
    /// Tombstones stayed in it at its last clean only because their retention had not run
    /// out: a pass is due once it has, even with nothing dirty (Kafka's KIP-534).
    pub tombstones_waiting: bool,
    /// A batch of it was left whole although it may hold superseded values (its records
    /// could not be read, or its codec could not compress the cleaned copy): no tombstone
    /// after it is ever removed, as that could bring such a value back.
    pub holds_unread: bool,
}

/// The log cleaner's state of one partition (`cleaner.state`, `FORMAT.md` § Log cleaner).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanerState {
    /// The first offset not yet cleaned (Kafka's cleaner-offset-checkpoint).
    pub clean_end_offset: i64,
    /// Segments cleaned at least once, in offset order.
    pub cleaned: Vec<CleanedSegment>,
    /// Non-empty only while a swap is being committed: the segments whose `<base>.cleaned`
    /// file replaces `<base>.log`, in offset order. Writing this file is the swap's commit.
    pub swapping: Vec<i64>,
}

pub fn encode_cleaner_state(state: &CleanerState) -> Vec<u8> {
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(state).expect("plain struct");
    seal(MetaKind::CleanerState, &archive)
}

pub fn decode_cleaner_state(file: &[u8]) -> Result<CleanerState, MetaError> {
    let payload = open(MetaKind::CleanerState, file)?;
    rkyv::from_bytes::<CleanerState, rkyv::rancor::Error>(&payload)
        .map_err(|e| MetaError::InvalidArchive(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_and_every_damage_is_caught() {
        let checkpoint = LogCheckpoint {
            log_start_offset: 3,
            segment_base_offset: 100,
            durable_bytes: 8192,
            next_offset: 170,
            segment_base_index: 12,
        };
        let file = encode_checkpoint(MetaKind::RecoveryCheckpoint, &checkpoint);
        assert_eq!(
            decode_checkpoint(MetaKind::RecoveryCheckpoint, &file),
            Ok(checkpoint)
        );
        assert_eq!(
            decode_checkpoint(MetaKind::CleanShutdown, &file),
            Err(MetaError::WrongMagic)
        );
        for byte in 0..file.len() {
            if (24..32).contains(&byte) {
                continue; // reserved
            }
            let mut damaged = file.clone();
            damaged[byte] ^= 0x01;
            assert!(
                decode_checkpoint(MetaKind::RecoveryCheckpoint, &damaged).is_err(),
                "flip at {byte} accepted"
            );
        }
        assert_eq!(
            decode_checkpoint(MetaKind::RecoveryCheckpoint, &file[..file.len() - 1]),
            Err(MetaError::Truncated)
        );
    }

    /// A format-1 checkpoint (what the code before Raft indexes wrote) still reads, with its
    /// Raft index unknown, so an upgrade keeps trusting the bytes it vouched for.
    #[test]
    fn a_format_1_checkpoint_reads_with_its_index_unknown() {
        let old = LogCheckpointV1 {
            log_start_offset: 3,
            segment_base_offset: 100,
            durable_bytes: 8192,
            next_offset: 170,
        };
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&old).expect("plain struct");
        let mut file = seal(MetaKind::RecoveryCheckpoint, &archive);
        file[ENVELOPE_VERSION_OFFSET..8].copy_from_slice(&CHECKPOINT_VERSION_1.to_le_bytes());
        let header_crc = crc32c::crc32c(&file[..ENVELOPE_HEADER_CRC_OFFSET]);
        file[ENVELOPE_HEADER_CRC_OFFSET..24].copy_from_slice(&header_crc.to_le_bytes());
        assert_eq!(
            decode_checkpoint(MetaKind::RecoveryCheckpoint, &file),
            Ok(LogCheckpoint {
                log_start_offset: 3,
                segment_base_offset: 100,
                durable_bytes: 8192,
                next_offset: 170,
                segment_base_index: INDEX_UNKNOWN,
            })
        );
    }

    #[test]
    fn the_cleaner_state_round_trips() {
        let state = CleanerState {
            clean_end_offset: 77,
            cleaned: vec![CleanedSegment {
                base_offset: 0,
                first_cleaned_ms: 1234,
                tombstones_waiting: true,
                holds_unread: false,
            }],
            swapping: vec![0, 40],
        };
        let file = encode_cleaner_state(&state);
        assert_eq!(decode_cleaner_state(&file), Ok(state));
        assert!(decode_cleaner_state(&file[..file.len() - 1]).is_err());
    }

    #[test]
    fn the_log_format_round_trips() {
        let format = LogFormat {
            format_version: LOG_FORMAT_VERSION,
            terms_from_index: 42,
        };
        assert_eq!(decode_log_format(&encode_log_format(&format)), Ok(format));
    }
}
