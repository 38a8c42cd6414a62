//! Errors the log reports. Operating errors are values; broken invariants panic.

use std::rc::Rc;

use crate::batch::BatchError;

/// The log cannot be trusted to store more: an IO error fenced it, or recovery found
/// damage it will not silently cut. Cheap to clone: every waiter fenced by one error gets it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("storage IO error during {operation}: {source}")]
    Io {
        operation: &'static str,
        source: Rc<std::io::Error>,
    },
    #[error("partition log is fenced after an earlier failure: {0}")]
    Fenced(Rc<StorageError>),
    #[error("no space left on the device while {0}")]
    NoSpace(&'static str),
    #[error("corruption in the middle of the log: {0}")]
    MidLogCorruption(String),
    #[error("the partition log is closed")]
    Closed,
    /// The next offset would pass [`OFFSET_MAX`]: only a log recovered from damaged or
    /// hand-made files gets here (at a million records a second, 2^62 offsets last 146,000
    /// years). Appends are refused; reads go on.
    #[error("offsets exhausted: the log ends at {next_offset} and the batch holds {records} records (offsets stop at {OFFSET_MAX})")]
    OffsetsExhausted { next_offset: i64, records: i64 },
}

/// The largest offset a log assigns. Far below `i64::MAX` so that offset arithmetic on
/// anything read back (a base plus a batch's 2^31 records, a segment's worth of such
/// batches) cannot overflow; recovery refuses segment names and checkpoints above it.
pub const OFFSET_MAX: i64 = 1 << 62;

impl StorageError {
    pub(crate) fn io(operation: &'static str, source: std::io::Error) -> StorageError {
        if is_no_space(&source) {
            return StorageError::NoSpace(operation);
        }
        StorageError::Io {
            operation,
            source: Rc::new(source),
        }
    }
}

/// Out of space for this writer: ENOSPC, or EDQUOT (a disk quota; to the broker the same:
/// writes are refused until space is freed, nothing is lost), whether it comes as a raw OS
/// error or wrapped by glommio (which keeps only the error kind when it adds the operation
/// and path to the message).
pub fn is_no_space(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || matches!(
            error.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
}

/// Why an append was refused. Nothing was written and no offset was assigned.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why a Raft entry was refused by [`crate::PartitionLog::append_as_leader`] or
/// [`crate::PartitionLog::append_replicated`]. Nothing was written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EntryError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Terms never go back along a Raft log; a replicated entry claiming so is damage or a
    /// confused peer.
    #[error("an entry at term {term} cannot follow the log's last term {last_term}")]
    TermGoesBack { term: i32, last_term: i32 },
    /// A replicated entry must land at the offset its leader gave it: the logs share offsets.
    #[error(
        "an entry stamped with offset {base_offset} cannot go where the log ends at {next_offset}"
    )]
    OffsetMismatch { base_offset: i64, next_offset: i64 },
    /// A log cannot start at this Raft index (a replacement was asked for it): indexes
    /// start at 1, and the index after it must exist.
    #[error("a log cannot start at Raft index {index} (indexes run from 1 to 2^64 - 3)")]
    InvalidIndex { index: u64 },
}

impl From<AppendError> for EntryError {
    fn from(error: AppendError) -> Self {
        match error {
            AppendError::Batch(error) => EntryError::Batch(error),
            AppendError::Storage(error) => EntryError::Storage(error),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error("offset {offset} is outside the log [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },
    /// A stored batch failed its CRC32C (or its header is damaged) when read from disk: it
    /// is not served. Damage to durable data; the partition's files need an operator.
    #[error("stored batch at offset {offset} (byte {position} of segment {segment_base_offset}) is corrupt: {reason}")]
    Corrupt {
        offset: i64,
        segment_base_offset: i64,
        position: u64,
        reason: String,
    },
    /// A Raft index outside the entries the log holds (below its first, or past its end).
    #[error("Raft index {index} is outside the log [{first_index}, {next_index})")]
    IndexOutOfRange {
        index: u64,
        first_index: u64,
        next_index: u64,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[cfg(test)]
mod tests {
    use super::is_no_space;
    use std::io::{Error, ErrorKind};

    #[test]
    fn full_disk_and_exhausted_quota_are_no_space_other_errors_are_not() {
        assert!(is_no_space(&Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_no_space(&Error::from_raw_os_error(libc::EDQUOT)));
        assert!(is_no_space(&Error::new(ErrorKind::StorageFull, "wrapped")));
        assert!(!is_no_space(&Error::from_raw_os_error(libc::EIO)));
        assert!(!is_no_space(&Error::from_raw_os_error(libc::EROFS)));
    }
}
