//! Offline verification of a stopped partition directory: what `ringfeed check-data` runs.
//!
//! Start-up trusts what it may (sealed segments with valid indexes, checkpointed bytes get a
//! header walk only) to open fast; this check trusts nothing: every batch of every segment
//! must pass length, magic, CRC32C and offset continuity, terms must never go back, each
//! index must match its segment (Raft indexes included), and the checkpoint and marker must
//! decode and agree with the data. It only reads.

use std::path::Path;

use crate::index::{BuildingIndex, SegmentIndex, SegmentStart};
use crate::io::{Disk, DiskFile};
use crate::meta::{decode_checkpoint, decode_log_format, MetaKind, TERMS_NEVER};
use crate::segment::{
    self, index_file_name, parse_file_name, segment_file_name, ScanStop, CHECKPOINT_FILE,
    CLEAN_SHUTDOWN_FILE, LOG_FORMAT_FILE, SEGMENT_SUFFIX,
};

/// Where the next segment's Raft numbering must continue.
struct Numbering {
    /// `None` until a segment fixed it (the first from its index file, else index 1).
    next_index: Option<u64>,
    last_term: i32,
    terms_from_index: u64,
}

/// One thing found wrong, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: String,
    pub what: String,
}

/// What the check read and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub segments: usize,
    pub batches: u64,
    pub bytes: u64,
    pub first_offset: Option<i64>,
    pub next_offset: Option<i64>,
    pub findings: Vec<Finding>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    fn find(&mut self, file: &str, what: impl Into<String>) {
        self.findings.push(Finding {
            file: file.to_string(),
            what: what.into(),
        });
    }
}

/// Verifies the partition in `dir` without changing it.
pub async fn check_partition<D: Disk>(disk: &D, dir: &Path) -> std::io::Result<CheckReport> {
    let mut report = CheckReport::default();
    let names = disk.list_dir(dir).await?;
    let mut bases: Vec<i64> = names
        .iter()
        .filter_map(|n| parse_file_name(n, SEGMENT_SUFFIX))
        .collect();
    bases.sort_unstable();
    let terms_from_index = match disk.read_file(&dir.join(LOG_FORMAT_FILE)).await? {
        Some(bytes) => match decode_log_format(&bytes) {
            Ok(format) => format.terms_from_index,
            Err(error) => {
                report.find(LOG_FORMAT_FILE, format!("unusable: {error}"));
                TERMS_NEVER
            }
        },
        None => TERMS_NEVER,
    };
    let mut numbering = Numbering {
        next_index: None,
        last_term: 0,
        terms_from_index,
    };
    for (i, &base) in bases.iter().enumerate() {
        let is_last = i + 1 == bases.len();
        check_segment(disk, dir, base, is_last, &mut numbering, &mut report).await?;
    }
    report.segments = bases.len();
    check_metadata(disk, dir, &names, &mut report).await;
    Ok(report)
}

/// Scans one segment with full validation and compares its index file with what it finds.
async fn check_segment<D: Disk>(
    disk: &D,
    dir: &Path,
    base: i64,
    is_last: bool,
    numbering: &mut Numbering,
    report: &mut CheckReport,
) -> std::io::Result<()> {
    let name = segment_file_name(base);
    let index_file = match disk.read_file(&dir.join(index_file_name(base))).await {
        Ok(Some(bytes)) => SegmentIndex::load(&bytes, base).ok(),
        _ => None,
    };
    let base_index = numbering
        .next_index
        .or(index_file.as_ref().map(SegmentIndex::base_index))
        .unwrap_or(1);
    let file = disk.open(&dir.join(&name), false).await?;
    let file_bytes = file.size().await?;
    if let Some(expected) = report.next_offset.filter(|&next| next != base) {
        report.find(
            &name,
            format!("starts at offset {base} but the previous segment ends at {expected}"),
        );
    }
    let start = SegmentStart {
        base_offset: base,
        base_index,
        previous_term: numbering.last_term,
    };
    let index = BuildingIndex::new(start, 4096);
    let scan = segment::scan(&file, file_bytes, 0, 0, numbering.terms_from_index, index).await?;
    let data = &scan.index.data;
    numbering.next_index = Some(data.next_index);
    numbering.last_term = data.last_term;
    report.batches += scan.index.batches;
    report.bytes += scan.valid_bytes;
    report.first_offset.get_or_insert(base);
    report.next_offset = Some(data.next_offset);
    if let ScanStop::Damaged { reason } = &scan.stop {
        report.find(
            &name,
            format!(
                "damaged at byte {} (offset {}): {reason}",
                scan.valid_bytes, data.next_offset
            ),
        );
    }
    let after =
        segment::search_after_damage(&file, file_bytes, scan.valid_bytes, data.next_offset).await?;
    if let Some(position) = after.valid_batch_position {
        report.find(
            &name,
            format!(
                "valid batches resume at byte {position} after the data stops at byte {}",
                scan.valid_bytes
            ),
        );
    }
    if !is_last {
        check_index(disk, dir, base, scan.valid_bytes, data.next_offset, report).await;
        if let Some(index) = index_file.filter(|index| {
            (index.base_index(), index.next_index()) != (data.base_index, data.next_index)
        }) {
            report.find(
                &index_file_name(base),
                format!(
                    "says Raft indexes {}..{}, the segment holds {}..{}",
                    index.base_index(),
                    index.next_index(),
                    data.base_index,
                    data.next_index
                ),
            );
        }
    }
    Ok(())
}

/// A sealed segment's index must decode and describe the segment as scanned.
async fn check_index<D: Disk>(
    disk: &D,
    dir: &Path,
    base: i64,
    segment_bytes: u64,
    next_offset: i64,
    report: &mut CheckReport,
) {
    let name = index_file_name(base);
    match disk.read_file(&dir.join(&name)).await {
        Ok(Some(bytes)) => match SegmentIndex::load(&bytes, base) {
            Ok(index) if index.segment_bytes() == segment_bytes && index.next_offset() == next_offset => {}
            Ok(index) => report.find(&name, format!(
                "says {} bytes up to offset {}, the segment holds {segment_bytes} bytes up to {next_offset}",
                index.segment_bytes(),
                index.next_offset()
            )),
            Err(error) => report.find(&name, format!("unusable ({error}); start-up will rebuild it")),
        },
        Ok(None) => report.find(&name, "missing; start-up will rebuild it"),
        Err(error) => report.find(&name, format!("unreadable: {error}")),
    }
}

/// The checkpoint and marker must decode and point inside the data.
async fn check_metadata<D: Disk>(disk: &D, dir: &Path, names: &[String], report: &mut CheckReport) {
    for (file, kind) in [
        (CHECKPOINT_FILE, MetaKind::RecoveryCheckpoint),
        (CLEAN_SHUTDOWN_FILE, MetaKind::CleanShutdown),
    ] {
        if !names.iter().any(|n| n == file) {
            continue;
        }
        let bytes = match disk.read_file(&dir.join(file)).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => continue,
            Err(error) => {
                report.find(file, format!("unreadable: {error}"));
                continue;
            }
        };
        match decode_checkpoint(kind, &bytes) {
            Ok(checkpoint)
                if report
                    .next_offset
                    .is_some_and(|next| checkpoint.next_offset > next) =>
            {
                report.find(
                    file,
                    format!(
                        "vouches for offsets up to {} but the data ends at {}",
                        checkpoint.next_offset,
                        report.next_offset.unwrap_or(0)
                    ),
                );
            }
            Ok(_) => {}
            Err(error) => report.find(file, format!("unusable: {error}")),
        }
    }
}
