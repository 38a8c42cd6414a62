//! Opening a partition directory: what to trust, what to scan, what to cut and what to refuse.
//!
//! - Sealed segments (all but the last) were fdatasync'd before the next one was created;
//!   their index files say where they end. A missing or invalid index is rebuilt by a full
//!   validating scan, and any damage inside a sealed segment is mid-log corruption.
//! - The last segment is trusted up to the clean-shutdown marker when there is one (no scan).
//!   Otherwise it is scanned: up to the recovery checkpoint headers only, after it every batch
//!   must pass length, magic, CRC32C and offset continuity.
//! - Where the scan stops at damage, everything after it is searched for a valid batch with a
//!   later offset. None: a torn tail, truncated, with the dropped bytes logged. One: damage in
//!   the middle of the log, reported as an error and never cut.

use std::path::Path;
use std::rc::Rc;

use crate::appender::Appender;
use crate::batch::BATCH_HEADER_BYTES;
use crate::cache::TailCache;
use crate::clock::Clock;
use crate::config::LogConfig;
use crate::error::{StorageError, OFFSET_MAX};
use crate::index::{BuildingIndex, SegmentIndex};
use crate::io::{align_up, Disk, DiskFile};
use crate::meta::{decode_checkpoint, encode_checkpoint, LogCheckpoint, MetaKind};
use crate::segment::{
    self, index_file_name, parse_file_name, segment_file_name, ScanStop, Segment, CHECKPOINT_FILE,
    CLEAN_SHUTDOWN_FILE, SEGMENT_SUFFIX,
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
    config: LogConfig,
    clock: &Clock,
) -> Result<(State<D::File>, RecoveryReport), StorageError> {
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
    let marker = read_checkpoint(disk, dir, CLEAN_SHUTDOWN_FILE, MetaKind::CleanShutdown).await;
    let checkpoint =
        read_checkpoint(disk, dir, CHECKPOINT_FILE, MetaKind::RecoveryCheckpoint).await;
    let mut report = RecoveryReport::default();
    if bases.is_empty() {
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
    let mut sealed = std::collections::BTreeMap::new();
    for (i, &base) in bases[..bases.len() - 1].iter().enumerate() {
        let segment = open_sealed(disk, dir, base, bases[i + 1], &config, &mut report).await?;
        sealed.insert(base, segment);
    }
    let marker = marker.filter(|m| m.segment_base_offset == last_base);
    let (active, segment_bytes, marker) = open_last(
        disk,
        dir,
        last_base,
        marker,
        checkpoint,
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
    if names.iter().any(|n| n == CLEAN_SHUTDOWN_FILE) {
        if let Some(marker) = marker.filter(|m| checkpoint != Some(*m)) {
            // What the marker vouched for stays vouched for once it is gone: otherwise a crash
            // before the next checkpoint would scan those bytes as an unknown tail and could
            // cut them (clean shutdown writes both; this covers a lost or stale checkpoint).
            let contents = encode_checkpoint(MetaKind::RecoveryCheckpoint, &marker);
            disk.write_file_atomically(&dir.join(CHECKPOINT_FILE), &contents)
                .await
                .map_err(io_error("writing the recovery checkpoint"))?;
        }
        // From here on the marker would lie: it must be gone before the first new write.
        disk.remove_file(&dir.join(CLEAN_SHUTDOWN_FILE))
            .await
            .map_err(io_error("removing the clean-shutdown marker"))?;
        disk.sync_dir(dir)
            .await
            .map_err(io_error("fsync of the partition directory"))?;
    }
    let state = assemble_state(
        active,
        segment_bytes,
        sealed,
        checkpoint,
        marker,
        config,
        clock,
    )
    .await?;
    report.segments = bases.len();
    report.clean_shutdown = marker.is_some();
    report.log_start_offset = state.log_start_offset;
    report.log_end_offset = state.next_offset;
    Ok((state, report))
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

/// Opens a sealed segment from its index, or rebuilds the index by a validating scan.
async fn open_sealed<D: Disk>(
    disk: &D,
    dir: &Path,
    base: i64,
    next_base: i64,
    config: &LogConfig,
    report: &mut RecoveryReport,
) -> Result<Segment<D::File>, StorageError> {
    let file = disk
        .open(&dir.join(segment_file_name(base)), false)
        .await
        .map_err(io_error("opening a segment"))?;
    let index_path = dir.join(index_file_name(base));
    let loaded = match disk.read_file(&index_path).await {
        Ok(Some(bytes)) => SegmentIndex::load(&bytes, base).map_err(|e| e.to_string()),
        Ok(None) => Err("missing".to_string()),
        Err(e) => Err(e.to_string()),
    };
    let index = match loaded {
        Ok(index) if index.next_offset() == next_base => index,
        other => {
            let why = other
                .err()
                .unwrap_or_else(|| "ends before the next segment".into());
            tracing::warn!(path = %index_path.display(), why, "rebuilding a segment index");
            let file_bytes = file.size().await.map_err(io_error("stat of a segment"))?;
            let scan = segment::scan(
                &file,
                file_bytes,
                0,
                0,
                BuildingIndex::new(base, config.index_interval_bytes),
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
        file: Rc::new(file),
        index,
    })
}

/// Opens the last segment: trusted to the clean-shutdown marker, or scanned and, if its tail
/// is torn, truncated. Returns the segment, its logical size, and the marker if it was
/// trusted (`None` when it disagreed with the segment and a scan decided instead).
async fn open_last<D: Disk>(
    disk: &D,
    dir: &Path,
    base: i64,
    marker: Option<LogCheckpoint>,
    checkpoint: Option<LogCheckpoint>,
    config: &LogConfig,
    report: &mut RecoveryReport,
) -> Result<(Segment<D::File>, u64, Option<LogCheckpoint>), StorageError> {
    let file = disk
        .open(&dir.join(segment_file_name(base)), false)
        .await
        .map_err(io_error("opening a segment"))?;
    let file_bytes = file.size().await.map_err(io_error("stat of a segment"))?;
    let fresh_index = BuildingIndex::new(base, config.index_interval_bytes);
    if let Some(marker) = marker {
        // Clean shutdown: only headers are walked, to rebuild the in-memory index.
        let scan = segment::scan(
            &file,
            marker.durable_bytes,
            0,
            marker.durable_bytes,
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
                    file: Rc::new(file),
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
        BuildingIndex::new(base, config.index_interval_bytes),
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
            file: Rc::new(file),
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
    config: LogConfig,
    clock: &Clock,
) -> Result<State<F>, StorageError> {
    let file = &*active.file;
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
    let appender = Appender::new(segment_bytes, &tail_page, config.write_chunk_bytes);
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
        appender,
        config,
    })
}
