//! Small metadata files: a checksummed, versioned envelope around an rkyv archive
//! (`storage/FORMAT.md` § Metadata envelope). Used for segment indexes, the recovery
//! checkpoint and the clean-shutdown marker.
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
}

impl MetaKind {
    pub const fn magic(self) -> [u8; 4] {
        match self {
            MetaKind::SegmentIndex => *b"RFIX",
            MetaKind::RecoveryCheckpoint => *b"RFCP",
            MetaKind::CleanShutdown => *b"RFCS",
            MetaKind::ProducerState => *b"RFPS",
        }
    }

    /// Bumped whenever the archived structure changes; older files are rebuilt or ignored.
    pub const fn version(self) -> u32 {
        1
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
    if version != kind.version() {
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
    Ok(aligned)
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
}

pub fn encode_checkpoint(kind: MetaKind, checkpoint: &LogCheckpoint) -> Vec<u8> {
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(checkpoint).expect("plain struct");
    seal(kind, &archive)
}

pub fn decode_checkpoint(kind: MetaKind, file: &[u8]) -> Result<LogCheckpoint, MetaError> {
    let payload = open(kind, file)?;
    let archived = rkyv::access::<ArchivedLogCheckpoint, rkyv::rancor::Error>(&payload)
        .map_err(|e| MetaError::InvalidArchive(e.to_string()))?;
    Ok(LogCheckpoint {
        log_start_offset: archived.log_start_offset.to_native(),
        segment_base_offset: archived.segment_base_offset.to_native(),
        durable_bytes: archived.durable_bytes.to_native(),
        next_offset: archived.next_offset.to_native(),
    })
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
}
