//! Opening a partition directory: what to trust, what to scan, what to cut and what to refuse.
//!
//! - A replacement of the whole log committed before a crash (`replacement_commit.rs`) is
//!   finished before anything else is read; one not committed is a `*.tmp`, removed.
//! - Sealed segments (all but the last) were fdatasync'd before the next one was created;
//!   their index files say where they end. A missing or invalid index is rebuilt by a full
//!   validating scan, and any damage inside a sealed segment is mid-log corruption.
//! - The last segment is trusted up to the clean-shutdown marker when there is one (no scan).
//!   Otherwise it is scanned: up to the recovery checkpoint headers only, after it every batch
//!   must pass length, magic, CRC32C and offset continuity.
//! - Where the scan stops at damage, everything after it is searched for a valid batch with a
//!   later offset. None: a torn tail, truncated, with the dropped bytes logged. One: damage in
//!   the middle of the log, reported as an error and never cut.
//! - Raft indexes: each segment starts at the index where the one before it ended. The first
//!   segment's comes from an anchor (a sealed index file, or the checkpoint or marker naming
//!   their segment's base index), counting back over the segments before it. A directory
//!   without `log.format` is a format-1 one: its batches are numbered from index 1, its
//!   indexes rebuilt, and once open it gets a checkpoint and then `log.format` (upgraded).

use std::path::Path;
use std::rc::Rc;

use crate::appender::Appender;
use crate::batch::BATCH_HEADER_BYTES;
use crate::cache::TailCache;
use crate::clock::Clock;
use crate::config::LogConfig;
use crate::error::{StorageError, OFFSET_MAX};
use crate::index::{BuildingIndex, SegmentIndex, SegmentStart};
use crate::io::{align_up, Disk, DiskFile};
use crate::meta::{
    decode_checkpoint, decode_log_format, encode_checkpoint, encode_log_format, LogCheckpoint,
    LogFormat, MetaKind, INDEX_UNKNOWN, LOG_FORMAT_VERSION, TERMS_NEVER,
};
use crate::replacement_commit::Replaced;
use crate::segment::{
    self, index_file_name, parse_file_name, segment_file_name, ScanStop, Segment, CHECKPOINT_FILE,
    CLEAN_SHUTDOWN_FILE, LOG_FORMAT_FILE, SEGMENT_SUFFIX,
};
use crate::state::{LogStats, State};

/// What recovery found and did, for the broker's start-up log and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The clean-shutdown marker was present and valid: nothing was scanned.
    pub clean_shutdown: bool,
    pub segments: usize,
    pub indexes_rebuilt: usize,
    /// Bytes of the last segment scanned with full validation.
    pub bytes_validated: u64,
    /// A torn tail was cut: the segment, the position, and the non-zero bytes dropped.
    pub truncated: Option<TornTail>,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    /// The directory was format 1 and was upgraded in place (`FORMAT.md` § Upgrade).
    pub upgraded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment_base_offset: i64,
    pub position: u64,
    pub dropped_bytes: u64,
    /// Valid batches lay behind the damage (possible after a power cut reordered unsynced
    /// writes); they were not known durable and were cut with it.
    pub valid_batches_dropped: bool,
    pub reason: String,
}

fn io_error(operation: &'static str) -> impl FnOnce(std::io::Error) -> StorageError {
    move |e| StorageError::io(operation, e)
}

pub(crate) async fn recover<D: Disk>(
    disk: &D,
    dir: &Path,
    config: Rc<LogConfig>,
    clock: &Clock,
) -> Result<(State<D::File>, RecoveryReport), StorageError> {
    let (mut names, mut bases) = list_segments(disk, dir).await?;
    // A committed replacement of the log is finished first: it removes the old log, the
    // cleaner's files included (`replacement_commit.rs`).
    if crate::replacement_commit::finish_if_committed(disk, dir, &names)
        .await?
        .is_some()
    {
        (names, bases) = list_segments(disk, dir).await?;
    }
    // A cleaner's swap: finished if committed, else its files removed (`cleaner.rs`).
    if crate::cleaner::recover_swap(disk, dir, &names).await? {
        (names, bases) = list_segments(disk, dir).await?;
    }
    let format = read_log_format(disk, dir, &names).await?;
    let terms_from_index = format.map_or(TERMS_NEVER, |f| f.terms_from_index);
    let marker = read_checkpoint(disk, dir, CLEAN_SHUTDOWN_FILE, MetaKind::CleanShutdown).await;
    let checkpoint =
        read_checkpoint(disk, dir, CHECKPOINT_FILE, MetaKind::RecoveryCheckpoint).await;
    let mut report = RecoveryReport::default();
    let created = bases.is_empty();
    if created {
        // A new partition, or one whose files were all removed: never reuse an offset a
        // checkpoint remembers.
        let base = checkpoint.map_or(0, |c| c.next_offset.max(c.log_start_offset));
        let file = disk
            .open(&dir.join(segment_file_name(base)), true)
            .await
            .map_err(io_error("creating a segment"))?;
        disk.sync_dir(dir)
            .await
            .map_err(io_error("fsync of the partition directory"))?;
        drop(file);
        bases.push(base);
    }
    let last_base = *bases.last().expect("at least one segment");
    let numbering = Numbering {
        format,
        created,
        terms_from_index,
        checkpoints: [marker, checkpoint],
    };
    let (sealed, start) =
        open_sealed_segments(disk, dir, &bases, &numbering, &config, &mut report).await?;
    let (marker, checkpoint) = vouching_for_last(dir, start, marker, checkpoint);
    let (active, segment_bytes, marker) = open_last(
        disk,
        dir,
        LastSegment {
            start,
            marker,
            checkpoint,
            terms_from_index,
        },
        &config,
        &mut report,
    )
    .await?;
    if let Some(previous) = sealed.values().next_back() {
        if previous.next_offset() != last_base {
            return Err(StorageError::MidLogCorruption(format!(
                "{}: segment {} ends at offset {} but the next segment starts at {last_base}",
                dir.display(),
                previous.base_offset,
                previous.next_offset()
            )));
        }
    }
    let on_disk = if names.iter().any(|n| n == CLEAN_SHUTDOWN_FILE) {
        let marker = marker.map(|m| LogCheckpoint {
            segment_base_index: active.index.base_index(),
            ..m
        });
        retire_marker(disk, dir, marker, checkpoint).await?
    } else {
        checkpoint
    };
    let mut state = assemble_state(
        active,
        segment_bytes,
        sealed,
        checkpoint,
        marker,
        config,
        clock,
    )
    .await?;
    state.terms_from_index = terms_from_index;
    anchor_and_upgrade(disk, dir, &state, on_disk, format).await?;
    report.upgraded = format.is_none() && !created;
    report.segments = bases.len();
    report.clean_shutdown = marker.is_some();
    report.log_start_offset = state.log_start_offset;
    report.log_end_offset = state.next_offset;
    Ok((state, report))
}

/// The state of a log that a replacement just turned into one segment of one entry
/// (`replacement.rs`): the last segment opened as [`recover`] opens it, with the checkpoint
/// the replacement wrote, and the state assembled around it.
pub(crate) async fn open_replaced<D: Disk>(
    disk: &D,
    dir: &Path,
    replaced: &Replaced,
    config: Rc<LogConfig>,
    clock: &Clock,
) -> Result<State<D::File>, StorageError> {
    let checkpoint = replaced.checkpoint;
    let last = LastSegment {
        start: SegmentStart {
            base_offset: checkpoint.segment_base_offset,
            base_index: checkpoint.segment_base_index,
            previous_term: 0,
        },
        marker: None,
        checkpoint: Some(checkpoint),
        terms_from_index: replaced.terms_from_index,
    };
    let mut report = RecoveryReport::default();
    let (active, segment_bytes, _) = open_last(disk, dir, last, &config, &mut report).await?;
    let sealed = std::collections::BTreeMap::new();
    let mut state = assemble_state(
        active,
        segment_bytes,
        sealed,
        Some(checkpoint),
        None,
        config,
        clock,
    )
    .await?;
    state.terms_from_index = replaced.terms_from_index;
    if state.next_offset != checkpoint.next_offset || segment_bytes != checkpoint.durable_bytes {
        return Err(StorageError::MidLogCorruption(format!(
            "{}: the replacement entry reads back as {segment_bytes} bytes up to offset {}, not {checkpoint:?}",
            dir.display(),
            state.next_offset
        )));
    }
    Ok(state)
}

/// Creates the directory if needed, removes `*.tmp`, and lists it: every name, and the
/// segments' base offsets in order.
async fn list_segments<D: Disk>(
    disk: &D,
    dir: &Path,
) -> Result<(Vec<String>, Vec<i64>), StorageError> {
    disk.create_dir_all(dir)
        .await
        .map_err(io_error("creating the partition directory"))?;
    let names = disk
        .list_dir(dir)
        .await
        .map_err(io_error("listing the partition directory"))?;
    for stale in names.iter().filter(|n| {
        std::path::Path::new(n)
            .extension()
            .is_some_and(|e| e == "tmp")
    }) {
        let _ = disk.remove_file(&dir.join(stale)).await;
    }
    let mut bases: Vec<i64> = names
        .iter()
        .filter_map(|n| parse_file_name(n, SEGMENT_SUFFIX))
        .collect();
    bases.sort_unstable();
    if let Some(&base) = bases.iter().find(|&&base| base > OFFSET_MAX) {
        // Only a damaged or hand-made file name gets here; scanning from such a base would
        // overflow offset arithmetic. The partition goes offline with this reason.
        return Err(StorageError::MidLogCorruption(format!(
            "{}: segment file name {} is past the largest offset {OFFSET_MAX}",
            dir.display(),
            segment_file_name(base)
        )));
    }
    Ok((names, bases))
}

/// Removes the clean-shutdown marker (durably) before any new write, first making what it
/// vouched for the checkpoint when the checkpoint says less. Returns the checkpoint on disk.
async fn retire_marker<D: Disk>(
    disk: &D,
    dir: &Path,
    marker: Option<LogCheckpoint>,
    checkpoint: Option<LogCheckpoint>,
) -> Result<Option<LogCheckpoint>, StorageError> {
    let mut on_disk = checkpoint;
    if let Some(marker) = marker.filter(|m| checkpoint != Some(*m)) {
        // What the marker vouched for stays vouched for once it is gone: otherwise a crash
        // before the next checkpoint would scan those bytes as an unknown tail and could
        // cut them (clean shutdown writes both; this covers a lost or stale checkpoint).
        let contents = encode_checkpoint(MetaKind::RecoveryCheckpoint, &marker);
        disk.write_file_atomically(&dir.join(CHECKPOINT_FILE), &contents)
            .await
            .map_err(io_error("writing the recovery checkpoint"))?;
        on_disk = Some(marker);
    }
    // From here on the marker would lie: it must be gone before the first new write.
    disk.remove_file(&dir.join(CLEAN_SHUTDOWN_FILE))
        .await
        .map_err(io_error("removing the clean-shutdown marker"))?;
    disk.sync_dir(dir)
        .await
        .map_err(io_error("fsync of the partition directory"))?;
    Ok(on_disk)
}

/// What numbers the segments: the format (none: format 1), whether the directory was just
/// created, where terms start, and the marker and checkpoint as anchors.
struct Numbering {
    format: Option<LogFormat>,
    created: bool,
    terms_from_index: u64,
    checkpoints: [Option<LogCheckpoint>; 2],
}

/// Numbers the first segment and opens every sealed one in order, each starting at the Raft
/// index and term where the one before it ended. Returns them and where the last one starts.
async fn open_sealed_segments<D: Disk>(
    disk: &D,
    dir: &Path,
    bases: &[i64],
    numbering: &Numbering,
    config: &LogConfig,
    report: &mut RecoveryReport,
) -> Result<
    (
        std::collections::BTreeMap<i64, Segment<D::File>>,
        SegmentStart,
    ),
    StorageError,
> {
    let last_base = *bases.last().expect("at least one segment");
    let mut loaded = load_sealed_indexes(disk, dir, bases).await;
    let first_index = match numbering.format {
        // Format 1 numbered nothing: its batches become Raft indexes 1, 2, ...
        None => 1,
        // Nothing is left to number; continue where the checkpoint says the log was, if it
        // says (a replicated log that lost every segment has lost data Raft counts on).
        Some(_) if numbering.created => numbering.checkpoints[1]
            .filter(|c| c.segment_base_offset == last_base && c.segment_base_index != INDEX_UNKNOWN)
            .map_or(1, |c| c.segment_base_index),
        Some(_) => {
            let anchors = Anchors {
                loaded: &loaded,
                checkpoints: numbering.checkpoints,
            };
            first_base_index(disk, dir, bases, &anchors, config).await?
        }
    };
    let mut start = SegmentStart {
        base_offset: bases[0],
        base_index: first_index,
        previous_term: 0,
    };
    let mut sealed = std::collections::BTreeMap::new();
    for (i, &base) in bases[..bases.len() - 1].iter().enumerate() {
        let sealed_segment = SealedSegment {
            start,
            next_base: bases[i + 1],
            loaded: loaded[i].take(),
            terms_from_index: numbering.terms_from_index,
        };
        let segment = open_sealed(disk, dir, sealed_segment, config, report).await?;
        start = SegmentStart {
            base_offset: bases[i + 1],
            base_index: segment.index.next_index(),
            previous_term: segment.index.last_term(),
        };
        sealed.insert(base, segment);
    }
    Ok((sealed, start))
}

/// The marker and checkpoint, less any that places the last segment at another Raft index
/// than the sealed segments do: such a file is stale and vouches for nothing.
fn vouching_for_last(
    dir: &Path,
    start: SegmentStart,
    marker: Option<LogCheckpoint>,
    checkpoint: Option<LogCheckpoint>,
) -> (Option<LogCheckpoint>, Option<LogCheckpoint>) {
    let last_base = start.base_offset;
    let describes_last = |c: &LogCheckpoint| {
        c.segment_base_offset == last_base
            && (c.segment_base_index == INDEX_UNKNOWN || c.segment_base_index == start.base_index)
    };
    let marker = marker.filter(describes_last);
    let checkpoint = checkpoint.filter(|c| {
        let stale = c.segment_base_offset == last_base && !describes_last(c);
        if stale {
            tracing::warn!(dir = %dir.display(), ?c, "ignoring a checkpoint that disagrees with the segments' Raft indexes");
        }
        !stale
    });
    (marker, checkpoint)
}

/// The partition's `log.format`, `None` for a format-1 directory. A file that exists but
/// cannot be read is refused: it decides the terms of the log's batches.
async fn read_log_format<D: Disk>(
    disk: &D,
    dir: &Path,
    names: &[String],
) -> Result<Option<LogFormat>, StorageError> {
    if !names.iter().any(|n| n == LOG_FORMAT_FILE) {
        return Ok(None);
    }
    let path = dir.join(LOG_FORMAT_FILE);
    let bytes = disk
        .read_file(&path)
        .await
        .map_err(io_error("reading the log format"))?;
    let unusable = |why: String| {
        StorageError::MidLogCorruption(format!("{}: unusable: {why}", path.display()))
    };
    let format =
        decode_log_format(&bytes.unwrap_or_default()).map_err(|e| unusable(e.to_string()))?;
    if format.format_version != LOG_FORMAT_VERSION {
        return Err(unusable(format!(
            "partition format {} (this build reads {LOG_FORMAT_VERSION})",
            format.format_version
        )));
    }
    Ok(Some(format))
}

/// Every sealed segment's index file that is usable as it stands: valid, format 2, and ending
/// where the next segment begins. `None` where the index must be rebuilt.
async fn load_sealed_indexes<D: Disk>(
    disk: &D,
    dir: &Path,
    bases: &[i64],
) -> Vec<Option<SegmentIndex>> {
    let mut loaded = Vec::new();
    for pair in bases.windows(2) {
        let (base, next_base) = (pair[0], pair[1]);
        let index_path = dir.join(index_file_name(base));
        let index = match disk.read_file(&index_path).await {
            Ok(Some(bytes)) => SegmentIndex::load(&bytes, base).map_err(|e| e.to_string()),
            Ok(None) => Err("missing".to_string()),
            Err(e) => Err(e.to_string()),
        };
        loaded.push(match index {
            Ok(index) if index.next_offset() == next_base => Some(index),
            other => {
                let why = other
                    .err()
                    .unwrap_or_else(|| "ends before the next segment".into());
                tracing::warn!(path = %index_path.display(), why, "rebuilding a segment index");
                None
            }
        });
    }
    loaded
}

/// What records the Raft index of some segment's first batch.
struct Anchors<'a> {
    loaded: &'a [Option<SegmentIndex>],
    checkpoints: [Option<LogCheckpoint>; 2],
}

/// The Raft index of the first segment's first batch, from the first anchor found (a sealed
/// index file, else the marker or checkpoint), less the batches of the segments before the
/// anchored one (counted by a scan). A format-2 directory without any anchor has lost its
/// numbering, which no scan can restore: refused.
async fn first_base_index<D: Disk>(
    disk: &D,
    dir: &Path,
    bases: &[i64],
    anchors: &Anchors<'_>,
    config: &LogConfig,
) -> Result<u64, StorageError> {
    let from_index = anchors
        .loaded
        .iter()
        .enumerate()
        .find_map(|(i, index)| index.as_ref().map(|index| (i, index.base_index())));
    let from_checkpoint = || {
        anchors.checkpoints.iter().flatten().find_map(|c| {
            let i = bases.iter().position(|&b| b == c.segment_base_offset)?;
            (c.segment_base_index != INDEX_UNKNOWN).then_some((i, c.segment_base_index))
        })
    };
    let Some((anchored, anchor_index)) = from_index.or_else(from_checkpoint) else {
        return Err(StorageError::MidLogCorruption(format!(
            "{}: no segment index, checkpoint or marker records the log's Raft indexes",
            dir.display()
        )));
    };
    let mut before = 0_u64;
    for &base in &bases[..anchored] {
        before += count_batches(disk, dir, base, config).await?;
    }
    anchor_index
        .checked_sub(before)
        .filter(|&first| first >= 1)
        .ok_or_else(|| {
            StorageError::MidLogCorruption(format!(
                "{}: segment {} is anchored at Raft index {anchor_index}, below the {before} batches before it",
                dir.display(),
                bases[anchored]
            ))
        })
}

/// The batches of a sealed segment, by a validating scan (only when its index is lost and
/// an anchor lies after it). Damage in a sealed segment is mid-log corruption.
async fn count_batches<D: Disk>(
    disk: &D,
    dir: &Path,
    base: i64,
    config: &LogConfig,
) -> Result<u64, StorageError> {
    let file = disk
        .open(&dir.join(segment_file_name(base)), false)
        .await
        .map_err(io_error("opening a segment"))?;
    let file_bytes = file.size().await.map_err(io_error("stat of a segment"))?;
    let start = SegmentStart {
        base_offset: base,
        base_index: 1,
        previous_term: 0,
    };
    let index = BuildingIndex::new(start, config.index_interval_bytes);
    let scan = segment::scan(&file, file_bytes, 0, 0, TERMS_NEVER, index)
        .await
        .map_err(io_error("scanning a segment"))?;
    if scan.stop != ScanStop::CleanEnd {
        return Err(StorageError::MidLogCorruption(format!(
            "{}: sealed segment {base} is damaged at byte {} ({:?})",
            dir.display(),
            scan.valid_bytes,
            scan.stop
        )));
    }
    Ok(scan.index.batches)
}

/// Makes sure the checkpoint anchors the active segment's Raft index (a new or format-1
/// partition has no such checkpoint yet, and without an anchor a later open could not number
/// the log), then, for a format-1 directory, writes `log.format`: the upgrade is complete only
/// once both are durable, so a crash in between repeats it.
async fn anchor_and_upgrade<D: Disk>(
    disk: &D,
    dir: &Path,
    state: &State<D::File>,
    checkpoint: Option<LogCheckpoint>,
    format: Option<LogFormat>,
) -> Result<(), StorageError> {
    let base_index = state.active.index.base_index();
    let anchored = checkpoint.is_some_and(|c| {
        c.segment_base_offset == state.active.base_offset && c.segment_base_index == base_index
    });
    if !anchored {
        let fresh = LogCheckpoint {
            log_start_offset: state.log_start_offset,
            segment_base_offset: state.active.base_offset,
            durable_bytes: state.active_durable_bytes,
            next_offset: state.durable_offset,
            segment_base_index: base_index,
        };
        disk.write_file_atomically(
            &dir.join(CHECKPOINT_FILE),
            &encode_checkpoint(MetaKind::RecoveryCheckpoint, &fresh),
        )
        .await
        .map_err(io_error("writing the recovery checkpoint"))?;
    }
    if format.is_none() {
        let format = LogFormat {
            format_version: LOG_FORMAT_VERSION,
            terms_from_index: TERMS_NEVER,
        };
        disk.write_file_atomically(&dir.join(LOG_FORMAT_FILE), &encode_log_format(&format))
            .await
            .map_err(io_error("writing the log format"))?;
    }
    Ok(())
}

async fn read_checkpoint<D: Disk>(
    disk: &D,
    dir: &Path,
    name: &str,
    kind: MetaKind,
) -> Option<LogCheckpoint> {
    let path = dir.join(name);
    match disk.read_file(&path).await {
        Ok(Some(bytes)) => match decode_checkpoint(kind, &bytes) {
            // Offsets are never negative nor above OFFSET_MAX; such a checkpoint would start a
            // new log below zero, or where offset arithmetic overflows.
            Ok(checkpoint)
                if ![
                    checkpoint.log_start_offset,
                    checkpoint.segment_base_offset,
                    checkpoint.next_offset,
                ]
                .iter()
                .all(|offset| (0..=OFFSET_MAX).contains(offset)) =>
            {
                tracing::warn!(path = %path.display(), ?checkpoint, "ignoring a checkpoint with offsets out of range; scanning instead");
                None
            }
            Ok(checkpoint) => Some(checkpoint),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "ignoring an unusable checkpoint; scanning instead");
                None
            }
        },
        Ok(None) => None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "could not read a checkpoint; scanning instead");
            None
        }
    }
}

/// A sealed segment to open: where it starts, where the next begins, its index file if that
/// was usable, and where the log's terms start.
struct SealedSegment {
    start: SegmentStart,
    next_base: i64,
    loaded: Option<SegmentIndex>,
    terms_from_index: u64,
}

/// Opens a sealed segment from its index, or rebuilds the index by a validating scan. An
/// index file that places the segment at another Raft index than the segments before it, or
/// whose terms go below theirs, is stale and rebuilt too.
async fn open_sealed<D: Disk>(
    disk: &D,
    dir: &Path,
    sealed: SealedSegment,
    config: &LogConfig,
    report: &mut RecoveryReport,
) -> Result<Segment<D::File>, StorageError> {
    let SealedSegment {
        start,
        next_base,
        loaded,
        terms_from_index,
    } = sealed;
    let base = start.base_offset;
    let file = disk
        .open(&dir.join(segment_file_name(base)), false)
        .await
        .map_err(io_error("opening a segment"))?;
    let index_path = dir.join(index_file_name(base));
    let loaded = loaded.filter(|index| {
        let placed =
            index.base_index() == start.base_index && index.first_term() >= start.previous_term;
        if !placed {
            tracing::warn!(path = %index_path.display(), index = index.base_index(), expected = start.base_index,
                "rebuilding a segment index that disagrees with the segments before it");
        }
        placed
    });
    let index = if let Some(index) = loaded {
        index
    } else {
        {
            let file_bytes = file.size().await.map_err(io_error("stat of a segment"))?;
            let scan = segment::scan(
                &file,
                file_bytes,
                0,
                0,
                terms_from_index,
                BuildingIndex::new(start, config.index_interval_bytes),
            )
            .await
            .map_err(io_error("scanning a segment"))?;
            if scan.stop != ScanStop::CleanEnd || scan.index.data.next_offset != next_base {
                return Err(StorageError::MidLogCorruption(format!(
                    "{}: sealed segment {base} is damaged at byte {} ({:?}); offsets {}..{next_base} are unreadable",
                    dir.display(),
                    scan.valid_bytes,
                    scan.stop,
                    scan.index.data.next_offset
                )));
            }
            let _ = disk
                .write_file_atomically(&index_path, &SegmentIndex::encode(&scan.index.data))
                .await;
            report.indexes_rebuilt += 1;
            SegmentIndex::Building(scan.index)
        }
    };
    Ok(Segment {
        base_offset: base,
        file: Some(Rc::new(file)),
        index,
    })
}

/// The last segment to open: where it starts, and what vouches for its bytes.
struct LastSegment {
    start: SegmentStart,
    marker: Option<LogCheckpoint>,
    checkpoint: Option<LogCheckpoint>,
    terms_from_index: u64,
}

/// Opens the last segment: trusted to the clean-shutdown marker, or scanned and, if its tail
/// is torn, truncated. Returns the segment, its logical size, and the marker if it was
/// trusted (`None` when it disagreed with the segment and a scan decided instead).
async fn open_last<D: Disk>(
    disk: &D,
    dir: &Path,
    last: LastSegment,
    config: &LogConfig,
    report: &mut RecoveryReport,
) -> Result<(Segment<D::File>, u64, Option<LogCheckpoint>), StorageError> {
    let LastSegment {
        start,
        marker,
        checkpoint,
        terms_from_index,
    } = last;
    let base = start.base_offset;
    let file = disk
        .open(&dir.join(segment_file_name(base)), false)
        .await
        .map_err(io_error("opening a segment"))?;
    let file_bytes = file.size().await.map_err(io_error("stat of a segment"))?;
    let fresh_index = BuildingIndex::new(start, config.index_interval_bytes);
    if let Some(marker) = marker {
        // Clean shutdown: only headers are walked, to rebuild the in-memory index.
        let scan = segment::scan(
            &file,
            marker.durable_bytes,
            0,
            marker.durable_bytes,
            terms_from_index,
            fresh_index,
        )
        .await
        .map_err(io_error("reading a segment"))?;
        // Nothing is written after a clean shutdown until the marker is gone, so a batch
        // header's worth past its end must still be zeros; otherwise the marker is stale and
        // the bytes after it would be appended over now and read back after a later crash.
        let after_end = file
            .read_at(marker.durable_bytes, BATCH_HEADER_BYTES)
            .await
            .map_err(io_error("reading a segment"))?;
        if scan.valid_bytes == marker.durable_bytes
            && scan.index.data.next_offset == marker.next_offset
            && after_end.iter().all(|&byte| byte == 0)
        {
            return Ok((
                Segment {
                    base_offset: base,
                    file: Some(Rc::new(file)),
                    index: SegmentIndex::Building(scan.index),
                },
                scan.valid_bytes,
                Some(marker),
            ));
        }
        tracing::warn!(dir = %dir.display(), "clean-shutdown marker disagrees with the segment; scanning");
    }
    let trusted_bytes = checkpoint
        .filter(|c| c.segment_base_offset == base)
        .map_or(0, |c| c.durable_bytes);
    let scan = segment::scan(
        &file,
        file_bytes,
        0,
        trusted_bytes,
        terms_from_index,
        BuildingIndex::new(start, config.index_interval_bytes),
    )
    .await
    .map_err(io_error("scanning a segment"))?;
    report.bytes_validated = scan.valid_bytes.saturating_sub(trusted_bytes);
    let damage = match &scan.stop {
        ScanStop::Damaged { reason } => Some(reason.clone()),
        ScanStop::CleanEnd if scan.valid_bytes < trusted_bytes => Some(format!(
            "zeros where the checkpoint vouches for {trusted_bytes} durable bytes"
        )),
        ScanStop::CleanEnd => None,
    };
    report.truncated =
        settle_tail(&file, file_bytes, base, &scan, damage, trusted_bytes, dir).await?;
    let valid_bytes = scan.valid_bytes;
    Ok((
        Segment {
            base_offset: base,
            file: Some(Rc::new(file)),
            index: SegmentIndex::Building(scan.index),
        },
        valid_bytes,
        None,
    ))
}

/// Decides what the end of the last segment's scan means.
///
/// Bytes past the recovery checkpoint were never known durable: a power cut may have kept a
/// later unsynced write and lost an earlier one, leaving a hole before valid batches. So
/// damage past the checkpoint is a torn tail whatever follows it: cut, with any valid
/// batches dropped behind it logged and counted. Damage inside the bytes the checkpoint
/// vouches for, with a valid batch after it, is corruption of durable data: refused as
/// mid-log corruption, never cut. The cut truncates the file so stale bytes can never be
/// read as batches later.
async fn settle_tail<F: DiskFile>(
    file: &F,
    file_bytes: u64,
    base: i64,
    scan: &segment::ScanOutcome,
    damage: Option<String>,
    trusted_bytes: u64,
    dir: &Path,
) -> Result<Option<TornTail>, StorageError> {
    let expected = scan.index.data.next_offset;
    let after = segment::search_after_damage(file, file_bytes, scan.valid_bytes, expected)
        .await
        .map_err(io_error("scanning a segment"))?;
    let reason = match (damage, after.valid_batch_position) {
        (None, None) => return Ok(None),
        (Some(reason), _) => reason,
        (None, Some(_)) => "zeros".to_string(),
    };
    if let (true, Some(valid_position)) =
        (scan.valid_bytes < trusted_bytes, after.valid_batch_position)
    {
        return Err(StorageError::MidLogCorruption(format!(
            "{}: segment {base} is damaged at byte {} (offset {expected}: {reason}) inside the {trusted_bytes} bytes the checkpoint records as durable, and a valid batch follows at byte {valid_position}; refusing to cut acknowledged data",
            dir.display(),
            scan.valid_bytes,
        )));
    }
    let torn = TornTail {
        segment_base_offset: base,
        position: scan.valid_bytes,
        dropped_bytes: after.nonzero_end.saturating_sub(scan.valid_bytes),
        valid_batches_dropped: after.valid_batch_position.is_some(),
        reason,
    };
    if torn.valid_batches_dropped || torn.position < trusted_bytes {
        tracing::error!(dir = %dir.display(), segment = base, position = torn.position, dropped_bytes = torn.dropped_bytes,
            reason = torn.reason, trusted_bytes, "cutting a damaged tail that held valid batches or checkpointed data (a power cut reorders unsynced writes; anything else is media damage)");
    } else {
        tracing::warn!(dir = %dir.display(), segment = base, position = torn.position, dropped_bytes = torn.dropped_bytes, reason = torn.reason, "truncating a torn tail");
    }
    file.truncate(scan.valid_bytes)
        .await
        .map_err(io_error("truncating a torn tail"))?;
    file.fdatasync()
        .await
        .map_err(io_error("fdatasync after truncation"))?;
    Ok(Some(torn))
}

/// Trims an active segment allocated past `wanted_bytes` (by a busier past, or by the fixed
/// 32 MiB steps of earlier versions), so a restarted idle partition holds one small step.
/// Everything past `wanted_bytes` lies beyond the data and its first step: recovery has
/// established where the data ends, appends overwrite whatever follows it, and readers stop
/// at the end. Best effort: if the trim fails or is lost to a crash, the file is only larger.
async fn give_back_excess_allocation<F: DiskFile>(file: &F, base_offset: i64, wanted_bytes: u64) {
    match file.size().await {
        Ok(size) if size > wanted_bytes => {
            if let Err(error) = file.truncate(wanted_bytes).await {
                tracing::warn!(base_offset, %error, "could not trim the active segment's excess preallocation");
            }
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(base_offset, %error, "could not read the active segment's size");
        }
    }
}

/// Builds the log state around the recovered active segment. An fdatasync first makes
/// whatever a crashed process had written durable, so the durable offset is honest.
async fn assemble_state<F: DiskFile>(
    active: Segment<F>,
    segment_bytes: u64,
    sealed: std::collections::BTreeMap<i64, Segment<F>>,
    checkpoint: Option<LogCheckpoint>,
    marker: Option<LogCheckpoint>,
    config: Rc<LogConfig>,
    clock: &Clock,
) -> Result<State<F>, StorageError> {
    let file = &**active.file();
    file.fdatasync()
        .await
        .map_err(io_error("fdatasync of the active segment"))?;
    // The partition's pace before the restart is unknown: start from the smallest step (a
    // busy partition doubles back to the maximum within its first few steps).
    let step_bytes = crate::preallocation::step_min_bytes(config.preallocate_step_bytes);
    let wanted_bytes = crate::preallocation::target_bytes(segment_bytes, step_bytes);
    give_back_excess_allocation(file, active.base_offset, wanted_bytes).await;
    let end_bytes = match file.preallocate(wanted_bytes).await {
        Ok(()) => wanted_bytes,
        // A full disk must not keep an intact log from opening (and being read): appends
        // try to preallocate again and are refused with NoSpace until space is freed.
        Err(error) if crate::error::is_no_space(&error) => {
            tracing::warn!(
                base_offset = active.base_offset,
                "no space to preallocate the active segment; appends wait for free space"
            );
            align_up(segment_bytes)
        }
        Err(error) => return Err(io_error("preallocating the active segment")(error)),
    };
    let tail_start = segment_bytes - segment_bytes % crate::io::PAGE_BYTES as u64;
    let tail_page = file
        .read_at(tail_start, (segment_bytes - tail_start) as usize)
        .await
        .map_err(io_error("reading the tail page"))?;
    let appender = Box::new(Appender::new(
        segment_bytes,
        &tail_page,
        config.write_chunk_bytes,
    ));
    let first_base = sealed.keys().next().copied().unwrap_or(active.base_offset);
    let remembered_start = marker
        .or(checkpoint)
        .map_or(first_base, |c| c.log_start_offset);
    // What `recover` established before building the state: the sealed segments and the
    // active one follow each other without a gap (a gap is refused as corruption), and the
    // appender starts where the active segment's index ends.
    assert_eq!(
        segment_bytes,
        active.bytes(),
        "the active segment's size and index agree"
    );
    let bases = sealed
        .keys()
        .copied()
        .chain(std::iter::once(active.base_offset));
    for (segment, next_base) in sealed.values().zip(bases.skip(1)) {
        assert_eq!(
            segment.next_offset(),
            next_base,
            "segment {} ends where the next begins",
            segment.base_offset
        );
    }
    let next_offset = active.next_offset();
    Ok(State {
        next_index: active.index.next_index(),
        last_term: active.index.last_term(),
        // `recover` sets it from `log.format`.
        terms_from_index: TERMS_NEVER,
        cache: TailCache::new(config.tail_cache_bytes_max),
        log_start_offset: remembered_start.clamp(first_base, next_offset),
        next_offset,
        written_offset: next_offset,
        durable_offset: next_offset,
        durable_wanted: next_offset,
        active_durable_bytes: segment_bytes,
        active_first_append_ms: (segment_bytes > 0).then(|| clock.now_ms()),
        preallocation: crate::preallocation::Preallocation {
            end_bytes,
            step_bytes,
            step_taken_ms: clock.now_ms(),
        },
        last_sync_ms: clock.now_ms(),
        last_checkpoint_ms: 0,
        fenced: None,
        sync_in_flight: false,
        closed: false,
        stats: LogStats::default(),
        sealed,
        active,
        appender: Some(appender),
        config,
    })
}
