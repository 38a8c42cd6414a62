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
}

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

/// ENOSPC, whether it comes as a raw OS error or wrapped by glommio (which keeps only the
/// error kind when it adds the operation and path to the message).
pub(crate) fn is_no_space(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(libc::ENOSPC) || error.kind() == std::io::ErrorKind::StorageFull
}

/// Why an append was refused. Nothing was written and no offset was assigned.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Storage(#[from] StorageError),
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
    #[error(transparent)]
    Storage(#[from] StorageError),
}
