//! The committed half of a log replacement (`storage/FORMAT.md` § Replacement): from the
//! moment the staged entry is renamed to `replacement-<index>.segment`, the old log is gone
//! and these steps turn the directory into a log of that one entry. They run right after
//! the commit (`replacement.rs`) and again at open (`recovery.rs`) when a crash interrupted
//! them, so each is idempotent:
//!
//! 1. fsync the directory (the commit's rename is durable before anything old is removed);
//! 2. remove every file of the old log: segments, indexes, the clean-shutdown marker, the
//!    cleaner's state and cleaned copies, the broker's producer-state and replica
//!    transaction snapshots; fsync the directory;
//! 3. lower `terms_from_index` in `log.format` to the entry's index if it lies past it;
//! 4. write a checkpoint anchoring the new segment (its whole entry is durable);
//! 5. rename the staged file to its segment name; fsync the directory.
//!
//! This module knows only files: the log in memory is rebuilt by the caller.

use std::path::Path;

use crate::batch::{self, BatchHeader, BATCH_HEADER_BYTES};
use crate::cleaner::{CLEANED_SUFFIX, CLEANER_STATE_FILE};
use crate::error::{StorageError, OFFSET_MAX};
use crate::io::{Disk, DiskFile};
use crate::meta::{
    decode_log_format, encode_checkpoint, encode_log_format, LogCheckpoint, LogFormat, MetaKind,
    LOG_FORMAT_VERSION,
};
use crate::segment::{
    parse_file_name, segment_file_name, CHECKPOINT_FILE, CLEAN_SHUTDOWN_FILE, INDEX_SUFFIX,
    LOG_FORMAT_FILE, PRODUCER_STATE_FILE, REPLICA_TXNS_FILE, SEGMENT_SUFFIX,
};

const REPLACEMENT_PREFIX: &str = "replacement-";
const COMMITTED_SUFFIX: &str = ".segment";

/// The entry being written, before the commit (`.tmp`: an open removes it).
pub(crate) fn staged_file_name(index: u64) -> String {
    format!("{REPLACEMENT_PREFIX}{index:020}.tmp")
}

/// The entry once the replacement is committed.
pub(crate) fn committed_file_name(index: u64) -> String {
    format!("{REPLACEMENT_PREFIX}{index:020}{COMMITTED_SUFFIX}")
}

fn parse_committed(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(REPLACEMENT_PREFIX)?
        .strip_suffix(COMMITTED_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The log a finished replacement left: its one entry and where its terms start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replaced {
    /// Anchors the new segment: log start, base offset and index, the entry's bytes.
    pub checkpoint: LogCheckpoint,
    pub terms_from_index: u64,
    pub term: i32,
}

/// Finishes a replacement committed in `dir` (whose file names are `names`), if there is
/// one. Two committed replacements cannot come from this code: refused.
pub(crate) async fn finish_if_committed<D: Disk>(
    disk: &D,
    dir: &Path,
    names: &[String],
) -> Result<Option<Replaced>, StorageError> {
    let committed: Vec<u64> = names.iter().filter_map(|n| parse_committed(n)).collect();
    match committed[..] {
        [] => Ok(None),
        [index] if !index_fits(index) => Err(StorageError::MidLogCorruption(format!(
            "{}: a committed replacement of the log at Raft index {index}, which no entry has",
            dir.display()
        ))),
        [index] => {
            tracing::info!(dir = %dir.display(), index, "finishing a committed replacement of the log");
            finish(disk, dir, index).await.map(Some)
        }
        _ => Err(StorageError::MidLogCorruption(format!(
            "{}: several committed replacements of the log ({committed:?})",
            dir.display()
        ))),
    }
}

/// Steps 1 to 5 (module docs) for the replacement committed at Raft index `index`.
pub(crate) async fn finish<D: Disk>(
    disk: &D,
    dir: &Path,
    index: u64,
) -> Result<Replaced, StorageError> {
    let sync_dir = || async {
        disk.sync_dir(dir)
            .await
            .map_err(io_error("fsync of the partition directory"))
    };
    sync_dir().await?;
    let committed = dir.join(committed_file_name(index));
    let (header, term) = read_committed(disk, dir, &committed).await?;
    remove_old_log(disk, dir).await?;
    sync_dir().await?;
    let terms_from_index = lower_terms_from(disk, dir, index).await?;
    let checkpoint = LogCheckpoint {
        log_start_offset: header.base_offset,
        segment_base_offset: header.base_offset,
        durable_bytes: header.total_bytes() as u64,
        next_offset: header.last_offset() + 1,
        segment_base_index: index,
    };
    disk.write_file_atomically(
        &dir.join(CHECKPOINT_FILE),
        &encode_checkpoint(MetaKind::RecoveryCheckpoint, &checkpoint),
    )
    .await
    .map_err(io_error("writing the recovery checkpoint"))?;
    disk.rename(&committed, &dir.join(segment_file_name(header.base_offset)))
        .await
        .map_err(io_error("renaming the replacement entry to its segment"))?;
    sync_dir().await?;
    Ok(Replaced {
        checkpoint,
        terms_from_index,
        term,
    })
}

/// The committed entry's header and term, after checking the whole batch: it was fdatasync'd before
/// the commit, so damage here is damage to durable data.
async fn read_committed<D: Disk>(
    disk: &D,
    dir: &Path,
    path: &Path,
) -> Result<(BatchHeader, i32), StorageError> {
    let file = disk
        .open(path, false)
        .await
        .map_err(io_error("opening the replacement entry"))?;
    let head = file
        .read_at(0, BATCH_HEADER_BYTES)
        .await
        .map_err(io_error("reading the replacement entry"))?;
    let damaged = |why: &str| {
        StorageError::MidLogCorruption(format!(
            "{}: the committed replacement entry {} is damaged: {why}",
            dir.display(),
            path.display()
        ))
    };
    let header = BatchHeader::parse(&head).ok_or_else(|| damaged("no batch header"))?;
    if header.batch_length <= 0 || header.total_bytes() > crate::segment::RECOVERY_BATCH_BYTES_MAX {
        return Err(damaged("impossible batch length"));
    }
    let bytes = file
        .read_at(0, header.total_bytes())
        .await
        .map_err(io_error("reading the replacement entry"))?;
    if !batch::is_intact(&bytes) {
        return Err(damaged("CRC32C or header check fails"));
    }
    let term = batch::partition_leader_epoch(&bytes);
    if !entry_fits(&header, term) {
        return Err(damaged("offsets or term out of range"));
    }
    Ok((header, term))
}

/// Whether a log can start at Raft index `index`: indexes start at 1, and the one after it
/// must exist and differ from [`crate::meta::TERMS_NEVER`].
pub(crate) fn index_fits(index: u64) -> bool {
    (1..crate::meta::TERMS_NEVER - 1).contains(&index)
}

/// Whether an entry's offsets and term can start a log: base offset from 0, last offset
/// below [`OFFSET_MAX`], term not negative.
pub(crate) fn entry_fits(header: &BatchHeader, term: i32) -> bool {
    header.base_offset >= 0
        && header.last_offset_delta >= 0
        && header.base_offset <= OFFSET_MAX - (i64::from(header.last_offset_delta) + 1)
        && term >= 0
}

/// Removes every file of the old log (step 2); the new entry's file, `log.format`, the
/// checkpoint (replaced whole in step 4) and files being written (`*.tmp`) stay.
async fn remove_old_log<D: Disk>(disk: &D, dir: &Path) -> Result<(), StorageError> {
    let names = disk
        .list_dir(dir)
        .await
        .map_err(io_error("listing the partition directory"))?;
    let old = names.iter().filter(|name| {
        parse_file_name(name, SEGMENT_SUFFIX).is_some()
            || parse_file_name(name, INDEX_SUFFIX).is_some()
            || name.ends_with(CLEANED_SUFFIX)
            || [
                CLEAN_SHUTDOWN_FILE,
                CLEANER_STATE_FILE,
                PRODUCER_STATE_FILE,
                REPLICA_TXNS_FILE,
            ]
            .contains(&name.as_str())
    });
    for name in old {
        match disk.remove_file(&dir.join(name)).await {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error("deleting the replaced log")(error)),
        }
    }
    Ok(())
}

/// Step 3: the entry's partitionLeaderEpoch is its term, so terms must start at its index
/// or before. A missing or unreadable `log.format` is rewritten too: it describes the log
/// that is gone.
async fn lower_terms_from<D: Disk>(disk: &D, dir: &Path, index: u64) -> Result<u64, StorageError> {
    let path = dir.join(LOG_FORMAT_FILE);
    let current = disk
        .read_file(&path)
        .await
        .map_err(io_error("reading the log format"))?
        .and_then(|bytes| decode_log_format(&bytes).ok())
        .filter(|format| format.format_version == LOG_FORMAT_VERSION);
    if let Some(format) = current.filter(|format| format.terms_from_index <= index) {
        return Ok(format.terms_from_index);
    }
    let format = LogFormat {
        format_version: LOG_FORMAT_VERSION,
        terms_from_index: index,
    };
    disk.write_file_atomically(&path, &encode_log_format(&format))
        .await
        .map_err(io_error("writing the log format"))?;
    Ok(index)
}

fn io_error(operation: &'static str) -> impl FnOnce(std::io::Error) -> StorageError {
    move |e| StorageError::io(operation, e)
}
