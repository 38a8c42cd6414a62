//! Segment files: naming, the windowed reader used by reads and recovery, and the batch scan
//! that validates a segment and rebuilds its index (`storage/FORMAT.md` § Segment file).

use std::rc::Rc;

use bytes::Bytes;

use crate::batch::{
    self, BatchHeader, BATCH_HEADER_BYTES, BATCH_LENGTH_MIN, MAGIC_OFFSET, MAGIC_V2,
};
use crate::index::{BuildingIndex, IndexedBatch, SegmentIndex};
use crate::io::DiskFile;

pub const SEGMENT_SUFFIX: &str = ".log";
pub const INDEX_SUFFIX: &str = ".index";
pub const CHECKPOINT_FILE: &str = "recovery.checkpoint";
pub const CLEAN_SHUTDOWN_FILE: &str = "clean.shutdown";
pub const LOG_FORMAT_FILE: &str = "log.format";
/// The broker's producer-state snapshot (`FORMAT.md` § Producer-state snapshot). Storage
/// never reads it; it only removes it with the log it describes (`replacement_commit.rs`).
pub const PRODUCER_STATE_FILE: &str = "producer-state.snapshot";
/// A replicated partition's transaction snapshot (`FORMAT.md` § Replica transaction
/// snapshot), written by the broker; removed with the log it describes like the above.
pub const REPLICA_TXNS_FILE: &str = "replica-txns.snapshot";
/// No batch can be larger than a request (socket.request.max.bytes, 100 MiB), so a header
/// claiming more is damage, whatever the topic's current batch limit says.
pub const RECOVERY_BATCH_BYTES_MAX: usize = 128 << 20;
/// How much a sequential scan reads at a time.
const SCAN_WINDOW_BYTES: usize = 1 << 20;

pub fn segment_file_name(base_offset: i64) -> String {
    format!("{base_offset:020}{SEGMENT_SUFFIX}")
}

pub fn index_file_name(base_offset: i64) -> String {
    format!("{base_offset:020}{INDEX_SUFFIX}")
}

/// The base offset a segment or index file is named by, if the name is one of ours.
pub fn parse_file_name(name: &str, suffix: &str) -> Option<i64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One segment of a partition: its file and index. The active segment is the last one.
pub struct Segment<F> {
    pub base_offset: i64,
    /// The open file; `None` while the log is dormant (`dormancy.rs`).
    pub file: Option<Rc<F>>,
    pub index: SegmentIndex,
}

impl<F> Segment<F> {
    /// The open file of a segment of an awake log. Whatever reads or writes a segment first
    /// wakes the log (`dormancy.rs`), so a closed file here is a bug in this crate.
    pub fn file(&self) -> &Rc<F> {
        self.file
            .as_ref()
            .expect("a segment's file is open while its log is awake")
    }

    pub fn next_offset(&self) -> i64 {
        self.index.next_offset()
    }
    pub fn bytes(&self) -> u64 {
        self.index.segment_bytes()
    }
}

/// Reads a file sequentially in large windows and hands out `Bytes` slices of them, so a run
/// of small batches costs one IO per window.
pub struct WindowReader<'a, F> {
    file: &'a F,
    end: u64,
    window_start: u64,
    window: Bytes,
    window_bytes_min: usize,
}

impl<'a, F: DiskFile> WindowReader<'a, F> {
    /// Reads no further than `end` (the segment's logical end or file size).
    pub fn new(file: &'a F, end: u64, window_bytes_min: usize) -> Self {
        WindowReader {
            file,
            end,
            window_start: 0,
            window: Bytes::new(),
            window_bytes_min,
        }
    }

    /// `len` bytes at `position`, or `None` when they run past the end.
    pub async fn get(&mut self, position: u64, len: usize) -> std::io::Result<Option<Bytes>> {
        if position + len as u64 > self.end {
            return Ok(None);
        }
        let window_end = self.window_start + self.window.len() as u64;
        if position < self.window_start || position + len as u64 > window_end {
            let want = len
                .max(self.window_bytes_min)
                .min((self.end - position) as usize);
            self.window = self.file.read_at(position, want).await?;
            self.window_start = position;
            if self.window.len() < len {
                return Ok(None); // the file is shorter than its claimed end
            }
        }
        let at = (position - self.window_start) as usize;
        Ok(Some(self.window.slice(at..at + len)))
    }
}

/// Where a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStop {
    /// Zeros or the end of the file: the data simply ends here.
    CleanEnd,
    /// Bytes that are not the next valid batch.
    Damaged { reason: String },
}

pub struct ScanOutcome {
    /// The end of the last valid batch.
    pub valid_bytes: u64,
    pub stop: ScanStop,
    pub index: BuildingIndex,
}

/// The Raft term of the batch at Raft index `index` whose partitionLeaderEpoch is `epoch`:
/// the epoch from `terms_from_index` on, 0 before it (`FORMAT.md` § Raft index and term).
pub fn term_of(index: u64, epoch: i32, terms_from_index: u64) -> i32 {
    if index >= terms_from_index {
        epoch
    } else {
        0
    }
}

/// Walks batches from `position` (offset `next_offset` expected there) to the first that is
/// not valid, adding each to `index`. Before `trusted_bytes` only headers are checked (the
/// recovery checkpoint vouches for those bytes); after it every batch must pass length,
/// magic, CRC32C and offset continuity. Everywhere a batch's term (see [`term_of`]) may not
/// be negative nor below the term before it: terms never go back along a Raft log, and a
/// suffix truncation cut off could otherwise pass for a continuation (`FORMAT.md` § Suffix
/// truncation).
pub async fn scan<F: DiskFile>(
    file: &F,
    file_bytes: u64,
    mut position: u64,
    trusted_bytes: u64,
    terms_from_index: u64,
    mut index: BuildingIndex,
) -> std::io::Result<ScanOutcome> {
    // The index covers the segment up to where the scan starts, no more and no less.
    assert_eq!(
        position, index.data.segment_bytes,
        "a scan starts where its index ends"
    );
    let mut reader = WindowReader::new(file, file_bytes, SCAN_WINDOW_BYTES);
    loop {
        let expected_offset = index.data.next_offset;
        let stop = match reader.get(position, BATCH_HEADER_BYTES).await? {
            None => Some(tail_stop(&mut reader, position, file_bytes).await?),
            Some(header_bytes) => {
                let term = term_of(
                    index.data.next_index,
                    crate::batch::partition_leader_epoch(&header_bytes),
                    terms_from_index,
                );
                match check_header(&header_bytes, expected_offset, file_bytes - position)
                    .and_then(|header| check_term(header, term, &index))
                {
                    Err(stop) => Some(stop),
                    Ok(header) => {
                        let size = header.total_bytes();
                        // `file_bytes` is what the caller believes (a clean-shutdown marker's
                        // durable size); the file itself may be shorter.
                        let Some(batch_bytes) = reader.get(position, size).await? else {
                            return Ok(ScanOutcome {
                                valid_bytes: position,
                                stop: ScanStop::Damaged {
                                    reason: format!(
                                        "batch at offset {expected_offset} runs past the end of the file"
                                    ),
                                },
                                index,
                            });
                        };
                        if position >= trusted_bytes && !batch::is_intact(&batch_bytes) {
                            Some(ScanStop::Damaged {
                                reason: format!(
                                    "CRC32C mismatch in batch at offset {expected_offset}"
                                ),
                            })
                        } else {
                            index.add_batch(IndexedBatch {
                                base_offset: header.base_offset,
                                next_offset: header.last_offset() + 1,
                                max_timestamp: header.max_timestamp,
                                term,
                                position,
                                bytes: size,
                            });
                            position += size as u64;
                            None
                        }
                    }
                }
            }
        };
        if let Some(stop) = stop {
            return Ok(ScanOutcome {
                valid_bytes: position,
                stop,
                index,
            });
        }
    }
}

/// A header that cannot start the next batch: all zeros is a clean end (preallocated
/// space), anything else is damage.
fn check_header(
    bytes: &[u8],
    expected_offset: i64,
    bytes_left: u64,
) -> Result<BatchHeader, ScanStop> {
    if bytes.iter().all(|&b| b == 0) {
        return Err(ScanStop::CleanEnd);
    }
    let header = BatchHeader::parse(bytes).expect("61 bytes");
    let damaged = |reason: String| Err(ScanStop::Damaged { reason });
    if header.magic != MAGIC_V2 {
        return damaged(format!(
            "magic {} where offset {expected_offset} should start",
            header.magic
        ));
    }
    if header.base_offset != expected_offset {
        return damaged(format!(
            "batch claims offset {} where {expected_offset} should start",
            header.base_offset
        ));
    }
    let size = header.total_bytes();
    if header.batch_length < BATCH_LENGTH_MIN as i32
        || size > RECOVERY_BATCH_BYTES_MAX
        || size as u64 > bytes_left
    {
        return damaged(format!(
            "batch at offset {expected_offset} claims {size} bytes with {bytes_left} left"
        ));
    }
    if header.last_offset_delta < 0 || header.record_count < 0 {
        return damaged(format!(
            "batch at offset {expected_offset} has negative counts"
        ));
    }
    // Offsets are i64: the offset after this batch must exist too.
    if expected_offset
        .checked_add(i64::from(header.last_offset_delta) + 1)
        .is_none()
    {
        return damaged(format!(
            "batch at offset {expected_offset} runs past the largest offset"
        ));
    }
    Ok(header)
}

/// A term that cannot follow the batches before it is damage (see [`scan`]).
fn check_term(
    header: BatchHeader,
    term: i32,
    index: &BuildingIndex,
) -> Result<BatchHeader, ScanStop> {
    let last_term = index.data.last_term;
    if term < 0 || term < last_term {
        return Err(ScanStop::Damaged {
            reason: format!(
                "batch at offset {} (Raft index {}) has term {term} after term {last_term}",
                header.base_offset, index.data.next_index
            ),
        });
    }
    Ok(header)
}

/// Fewer than a header's bytes remain: zeros are a clean end, anything else a torn batch.
async fn tail_stop<F: DiskFile>(
    reader: &mut WindowReader<'_, F>,
    position: u64,
    file_bytes: u64,
) -> std::io::Result<ScanStop> {
    let rest = reader
        .get(position, (file_bytes - position) as usize)
        .await?
        .unwrap_or_default();
    Ok(if rest.iter().all(|&b| b == 0) {
        ScanStop::CleanEnd
    } else {
        ScanStop::Damaged {
            reason: format!("{} stray bytes shorter than a batch header", rest.len()),
        }
    })
}

/// What lies after damage at `damage_position`: the position of a valid batch with an offset
/// beyond `expected_offset` (then the damage is mid-log), and the end of the non-zero bytes
/// (what truncating there would drop).
pub struct AfterDamage {
    pub valid_batch_position: Option<u64>,
    pub nonzero_end: u64,
}

/// Searches every byte position after damage for a batch that validates completely. Only run
/// by recovery, over the part of one segment after a damaged batch.
pub async fn search_after_damage<F: DiskFile>(
    file: &F,
    file_bytes: u64,
    damage_position: u64,
    expected_offset: i64,
) -> std::io::Result<AfterDamage> {
    let mut reader = WindowReader::new(file, file_bytes, SCAN_WINDOW_BYTES);
    let mut nonzero_end = damage_position;
    let mut window_start = damage_position;
    while window_start < file_bytes {
        let len = ((file_bytes - window_start) as usize).min(SCAN_WINDOW_BYTES);
        let window = reader.get(window_start, len).await?.unwrap_or_default();
        if let Some(last) = window.iter().rposition(|&b| b != 0) {
            nonzero_end = window_start + last as u64 + 1;
        }
        // Visit candidates by their magic byte, so a batch whose header straddles two
        // windows is still found (its magic byte lies in exactly one of them).
        for (at, _) in window
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == MAGIC_V2 as u8)
        {
            let Some(position) = (window_start + at as u64).checked_sub(MAGIC_OFFSET as u64) else {
                continue;
            };
            if position <= damage_position {
                continue;
            }
            if is_valid_batch_beyond(&mut reader, position, file_bytes, expected_offset).await? {
                return Ok(AfterDamage {
                    valid_batch_position: Some(position),
                    nonzero_end: nonzero_end.max(position),
                });
            }
        }
        window_start += len as u64;
    }
    Ok(AfterDamage {
        valid_batch_position: None,
        nonzero_end,
    })
}

async fn is_valid_batch_beyond<F: DiskFile>(
    reader: &mut WindowReader<'_, F>,
    position: u64,
    file_bytes: u64,
    expected_offset: i64,
) -> std::io::Result<bool> {
    let Some(header_bytes) = reader.get(position, BATCH_HEADER_BYTES).await? else {
        return Ok(false);
    };
    let header = BatchHeader::parse(&header_bytes).expect("61 bytes");
    let size = header.total_bytes();
    let plausible = header.base_offset > expected_offset
        && header.batch_length >= BATCH_LENGTH_MIN as i32
        && size <= RECOVERY_BATCH_BYTES_MAX
        && position + size as u64 <= file_bytes;
    if !plausible {
        return Ok(false);
    }
    let batch_bytes = reader.get(position, size).await?;
    Ok(batch_bytes.is_some_and(|bytes| batch::is_intact(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_twenty_digits_and_parse_back() {
        assert_eq!(segment_file_name(42), "00000000000000000042.log");
        assert_eq!(
            parse_file_name("00000000000000000042.log", SEGMENT_SUFFIX),
            Some(42)
        );
        assert_eq!(
            parse_file_name("00000000000000000042.index", INDEX_SUFFIX),
            Some(42)
        );
        assert_eq!(parse_file_name("42.log", SEGMENT_SUFFIX), None);
        assert_eq!(
            parse_file_name("0000000000000000004x.log", SEGMENT_SUFFIX),
            None
        );
        assert_eq!(
            parse_file_name("00000000000000000042.log.tmp", SEGMENT_SUFFIX),
            None
        );
    }
}
