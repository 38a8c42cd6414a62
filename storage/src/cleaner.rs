//! The log cleaner: compaction of a partition whose `cleanup.policy` includes `compact`
//! (`storage/FORMAT.md` § Log cleaner). One call of [`PartitionLog::clean`] is one pass:
//!
//! 1. The cleanable range: sealed segments only (never the active one), up to the first whose
//!    newest timestamp is younger than `min.compaction.lag.ms`. Sealed segments lie wholly
//!    below the durable offset, so nothing above the high watermark is ever touched.
//! 2. The map: key → latest offset over the dirty part (from where the last pass stopped),
//!    bounded by `map_bytes`. A dirty part bigger than the map is cleaned over several
//!    passes: this pass ends where the map filled up, at a batch boundary.
//! 3. The rewrite: every segment from the first up to the end of the map. A record stays if
//!    its offset is the latest for its key (or its key is not in the map); a tombstone (null
//!    value) that is the latest stays until `delete.retention.ms` after its segment was first
//!    cleaned; a record without a key goes (Kafka's cleaner drops them too). **Every batch
//!    stays**, with its baseOffset, lastOffsetDelta, partitionLeaderEpoch, producer
//!    id/epoch/sequence and timestamps; only its records, recordCount, batchLength and CRC
//!    change, and a batch whose records all went stays as a header with 0 records. So the
//!    segment holds the same batches at the same offsets, Raft indexes and terms: the Raft
//!    numbering (one batch, one entry) survives compaction, and batch offsets stay
//!    contiguous.
//! 4. The swap: the cleaned segments are written beside the old ones as `<base>.cleaned`,
//!    fdatasync'd, then `cleaner.state` naming them is written atomically (the commit), and
//!    each is renamed over its `<base>.log`, oldest first. Recovery completes a committed
//!    swap and deletes the files of an uncommitted one ([`recover_swap`]).
//!
//! Batches left whole, unread ("opaque"): control batches (Raft's and transaction
//! markers), transactional batches, and compressed batches the caller's [`RecordCodec`]
//! cannot open. Their keys are not in the map, so a tombstone after one is kept (removing
//! it could bring back a value the opaque batch holds). Leaving transactional data whole is
//! safe: an aborted or still-open transaction's value never shadows an older one, and the
//! broker's transaction state (open and aborted transactions, `producer_state.rs`) is kept
//! apart from the segments, by offset, which cleaning preserves.
//!
//! Not done yet, where Kafka's `LogCleaner` does more with transactions: it removes the
//! records of aborted transactions (it walks the aborted-transaction index of the range
//! being cleaned and drops the batches of producers inside an aborted transaction); it
//! removes a transaction's marker once no record of that transaction is left below it and
//! the marker is older than `delete.retention.ms` (KIP-534's delete horizon, kept in the
//! batch header); it keeps the last batch of every active producer so that producer's
//! state survives compaction; and it never cleans at or above the first unstable offset
//! (the LSO), so open transactions are not compacted. Committed transactional records take
//! part in key deduplication there.
//!
//! Concurrency: appends never wait for the cleaner; the cleaner holds the log's segments
//! gate, which retention, truncation and close take before they remove segments, so no
//! segment disappears under a pass.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use crate::batch::{
    self, BatchHeader, ATTRIBUTES_OFFSET, BATCH_HEADER_BYTES, BATCH_LENGTH_OFFSET,
    COMPRESSION_CODEC_MASK, CRC_OFFSET, LOG_OVERHEAD_BYTES, RECORD_COUNT_OFFSET,
};
use crate::error::StorageError;
use crate::index::{BuildingIndex, IndexedBatch, SegmentIndex, SegmentStart};
use crate::io::{Disk, DiskFile, IoBuffer, PAGE_BYTES};
use crate::meta::{decode_cleaner_state, encode_cleaner_state, CleanedSegment, CleanerState};
use crate::segment::{index_file_name, segment_file_name, term_of, WindowReader};
use crate::state::PartitionLog;

/// The cleaner's state file in the partition directory.
pub const CLEANER_STATE_FILE: &str = "cleaner.state";
/// A cleaned segment written beside the one it replaces, before the swap.
pub const CLEANED_SUFFIX: &str = ".cleaned";
/// `first_cleaned_ms` of a segment remembered before it was cleaned whole.
const NOT_CLEANED_WHOLE: i64 = i64::MAX;
/// What one map entry costs beyond its key: the offset, the key's box and the table's slot.
const MAP_ENTRY_OVERHEAD_BYTES: usize = 48;
/// How much the cleaner reads and writes at a time.
const CLEANER_IO_BYTES: usize = 1 << 20;

/// The settings of one pass (a topic's compaction settings and the shard's budgets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanOptions {
    /// Bytes the key → offset map may hold (keys plus [`MAP_ENTRY_OVERHEAD_BYTES`] each).
    /// A dirty part holding more is cleaned over several passes; one batch always fits.
    pub map_bytes: usize,
    /// Tombstones stay this long after their segment was first cleaned (`delete.retention.ms`).
    pub delete_retention_ms: u64,
    /// A segment is cleanable once its newest timestamp is this old (`min.compaction.lag.ms`).
    pub min_compaction_lag_ms: u64,
    /// Bytes read plus written per second, at most (`log.cleaner.io.max.bytes.per.second`).
    pub io_bytes_per_second: Option<u64>,
}

impl Default for CleanOptions {
    fn default() -> Self {
        CleanOptions {
            map_bytes: 16 << 20,
            delete_retention_ms: 24 * 60 * 60 * 1000,
            min_compaction_lag_ms: 0,
            io_bytes_per_second: None,
        }
    }
}

/// Opens and closes compressed record sections (the codecs live in the broker). A codec
/// that answers `None` leaves the batch whole and unread.
pub trait RecordCodec {
    /// The records of a compressed batch whose attributes are `attributes`.
    fn decompress(&self, attributes: i16, section: &[u8]) -> Option<Vec<u8>>;
    /// `records` compressed with the codec of `attributes`.
    fn compress(&self, attributes: i16, records: &[u8]) -> Option<Vec<u8>>;
}

/// No codecs: compressed batches are left whole.
pub struct NoCodec;

impl RecordCodec for NoCodec {
    fn decompress(&self, _attributes: i16, _section: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn compress(&self, _attributes: i16, _records: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanOutcome {
    /// Segments rewritten and swapped in.
    pub segments_rewritten: usize,
    /// Bytes read (map and rewrite) plus written.
    pub io_bytes: u64,
    /// Bytes of the rewritten segments before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
    /// Records without a key, removed (Kafka's cleaner drops them).
    pub keyless_removed: u64,
    /// The first offset not cleaned after this pass.
    pub clean_end_offset: i64,
}

/// How dirty a log is, for choosing which log to clean (Kafka's `LogToClean`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DirtySummary {
    /// Bytes of sealed segments below the first dirty offset.
    pub clean_bytes: u64,
    /// Bytes of cleanable segments at or after it.
    pub dirty_bytes: u64,
    /// `dirty / (clean + dirty)`, 0 when there is nothing to clean.
    pub dirty_ratio: f64,
    /// The newest timestamp of the first dirty cleanable segment (for `max.compaction.lag.ms`).
    pub first_dirty_max_timestamp: Option<i64>,
    /// A clean segment holds tombstones whose `delete.retention.ms` has run out: a pass is
    /// due whatever the ratio.
    pub tombstones_due: bool,
}

/// One sealed segment, as a pass sees it.
struct SegmentView<F> {
    base_offset: i64,
    file: Rc<F>,
    bytes: u64,
    next_offset: i64,
    base_index: u64,
    next_index: u64,
    last_term: i32,
    previous_term: i32,
    max_timestamp: i64,
}

/// One record of a batch: its bytes within the records section and what decides its fate.
struct RecordRef {
    range: std::ops::Range<usize>,
    offset_delta: i64,
    key: Option<std::ops::Range<usize>>,
    tombstone: bool,
}

/// The records of an uncompressed section, or `None` if they do not parse.
fn parse_records(section: &[u8], count: i32) -> Option<Vec<RecordRef>> {
    let mut records = Vec::with_capacity(usize::try_from(count).ok()?.min(1 << 16));
    let mut at = 0;
    for _ in 0..count {
        let mut rest = section.get(at..)?;
        let before = rest.len();
        let length = usize::try_from(batch::read_varint(&mut rest)?).ok()?;
        let start = at + (before - rest.len());
        let end = start.checked_add(length)?;
        let mut fields = section.get(start..end)?.get(1..)?; // attributes
        batch::read_varint(&mut fields)?; // timestampDelta
        let offset_delta = batch::read_varint(&mut fields)?;
        let key_length = batch::read_varint(&mut fields)?;
        let key_start = end - fields.len();
        let key = if key_length < 0 {
            None
        } else {
            let key_length = usize::try_from(key_length).ok()?;
            fields = fields.get(key_length..)?;
            Some(key_start..key_start + key_length)
        };
        let value_length = batch::read_varint(&mut fields)?;
        records.push(RecordRef {
            range: at..end,
            offset_delta,
            key,
            tombstone: value_length < 0,
        });
        at = end;
    }
    (at == section.len()).then_some(records)
}

/// A batch's records, opened if they can be: `None` for a batch left whole.
fn open_records(bytes: &[u8], header: &BatchHeader, codec: &dyn RecordCodec) -> Option<Vec<u8>> {
    if header.is_control() || header.is_transactional() {
        return None;
    }
    let section = &bytes[BATCH_HEADER_BYTES..];
    if header.is_compressed() {
        codec.decompress(header.attributes, section)
    } else {
        Some(section.to_vec())
    }
}

/// The key → latest offset map of one pass, bounded in bytes.
struct OffsetMap {
    latest: HashMap<Box<[u8]>, i64>,
    bytes: usize,
}

impl OffsetMap {
    fn put(&mut self, key: &[u8], offset: i64) {
        if let Some(latest) = self.latest.get_mut(key) {
            *latest = offset;
        } else {
            self.latest.insert(key.into(), offset);
            self.bytes += key.len() + MAP_ENTRY_OVERHEAD_BYTES;
        }
    }
}

/// Paces the cleaner's IO to a byte rate.
struct Throttle<'a> {
    clock: &'a crate::clock::Clock,
    bytes_per_second: Option<u64>,
    started: std::time::Instant,
    bytes: u64,
}

impl Throttle<'_> {
    async fn spend(&mut self, bytes: u64) {
        self.bytes += bytes;
        let Some(rate) = self.bytes_per_second.filter(|&r| r > 0) else {
            return;
        };
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        let elapsed = self.clock.now().saturating_duration_since(self.started);
        if let Some(ahead) = due.checked_sub(elapsed).filter(|d| !d.is_zero()) {
            self.clock.sleep(ahead).await;
        }
    }
}

fn io_error(operation: &'static str) -> impl FnOnce(std::io::Error) -> StorageError {
    move |e| StorageError::io(operation, e)
}

fn cleaned_file_name(base_offset: i64) -> String {
    format!("{base_offset:020}{CLEANED_SUFFIX}")
}

/// Reads the cleaner state; absent or unreadable is a fresh one (everything is dirty, no
/// segment was cleaned: tombstones wait a full `delete.retention.ms` again).
async fn read_state<D: Disk>(disk: &D, dir: &Path) -> Result<CleanerState, StorageError> {
    let bytes = disk
        .read_file(&dir.join(CLEANER_STATE_FILE))
        .await
        .map_err(io_error("reading the cleaner state"))?;
    Ok(match bytes.map(|b| decode_cleaner_state(&b)) {
        Some(Ok(state)) => state,
        Some(Err(error)) => {
            tracing::warn!(dir = %dir.display(), %error, "ignoring an unreadable cleaner state");
            CleanerState::default()
        }
        None => CleanerState::default(),
    })
}

async fn write_state<D: Disk>(
    disk: &D,
    dir: &Path,
    state: &CleanerState,
) -> Result<(), StorageError> {
    disk.write_file_atomically(&dir.join(CLEANER_STATE_FILE), &encode_cleaner_state(state))
        .await
        .map_err(io_error("writing the cleaner state"))
}

/// Replaces segment `base`'s file with its cleaned copy: the index goes first (durably), as
/// it describes the old file's positions; the new one is written after the swap (or rebuilt
/// by recovery from the segment).
async fn swap_one<D: Disk>(disk: &D, dir: &Path, base: i64) -> Result<(), StorageError> {
    match disk.remove_file(&dir.join(index_file_name(base))).await {
        Ok(()) => disk
            .sync_dir(dir)
            .await
            .map_err(io_error("fsync of the partition directory"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StorageError::io("removing a segment index", e)),
    }
    disk.rename(
        &dir.join(cleaned_file_name(base)),
        &dir.join(segment_file_name(base)),
    )
    .await
    .map_err(io_error("renaming a cleaned segment"))?;
    disk.sync_dir(dir)
        .await
        .map_err(io_error("fsync of the partition directory"))
}

/// Run by recovery before segments are opened: completes a committed swap (the state names
/// segments in `swapping`: each whose `.cleaned` file is still there is swapped in), then
/// deletes every other `.cleaned` file (an uncommitted pass). `names` is the directory
/// listing; returns whether anything changed.
pub(crate) async fn recover_swap<D: Disk>(
    disk: &D,
    dir: &Path,
    names: &[String],
) -> Result<bool, StorageError> {
    let leftovers: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with(CLEANED_SUFFIX))
        .collect();
    let has_state = names.iter().any(|n| n == CLEANER_STATE_FILE);
    let mut state = if has_state {
        read_state(disk, dir).await?
    } else {
        CleanerState::default()
    };
    if state.swapping.is_empty() && leftovers.is_empty() {
        return Ok(false);
    }
    for &base in &state.swapping {
        if names.contains(&cleaned_file_name(base)) {
            swap_one(disk, dir, base).await?;
            tracing::info!(dir = %dir.display(), base, "completed the swap of a cleaned segment");
        }
    }
    if !state.swapping.is_empty() {
        state.swapping.clear();
        write_state(disk, dir, &state).await?;
    }
    for name in leftovers {
        match disk.remove_file(&dir.join(name)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // swapped in above
            Err(e) => {
                return Err(StorageError::io(
                    "removing an uncommitted cleaned segment",
                    e,
                ))
            }
        }
    }
    disk.sync_dir(dir)
        .await
        .map_err(io_error("fsync of the partition directory"))?;
    Ok(true)
}

/// Writes a cleaned segment in page-aligned chunks.
struct SegmentWriter<F: DiskFile> {
    file: F,
    pending: Vec<u8>,
    written: u64,
}

impl<F: DiskFile> SegmentWriter<F> {
    async fn push(&mut self, bytes: &[u8], throttle: &mut Throttle<'_>) -> std::io::Result<()> {
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= CLEANER_IO_BYTES {
            let whole = self.pending.len() / PAGE_BYTES * PAGE_BYTES;
            self.write(whole).await?;
            throttle.spend(whole as u64).await;
        }
        Ok(())
    }

    /// Writes the first `len` pending bytes (padded with zeros to a page).
    async fn write(&mut self, len: usize) -> std::io::Result<()> {
        let padded = len.div_ceil(PAGE_BYTES) * PAGE_BYTES;
        let mut buffer = self.file.alloc_buffer(padded);
        let slice = buffer.as_mut_slice();
        slice[..len].copy_from_slice(&self.pending[..len]);
        slice[len..].fill(0);
        self.file.write_at(buffer, self.written).await?;
        self.pending.drain(..len);
        self.written += len as u64;
        Ok(())
    }

    /// Writes the rest, trims the file to the data and makes it durable.
    async fn finish(mut self) -> std::io::Result<u64> {
        if !self.pending.is_empty() {
            self.write(self.pending.len()).await?;
        }
        self.file.truncate(self.written).await?;
        self.file.fdatasync().await?;
        Ok(self.written)
    }
}

/// A batch with only `kept` of its records (by index into `records`), header otherwise
/// unchanged; `None` if its codec cannot compress the result.
fn rebuild_batch(
    original: &[u8],
    header: &BatchHeader,
    section: &[u8],
    records: &[RecordRef],
    kept: &[bool],
    codec: &dyn RecordCodec,
) -> Option<Vec<u8>> {
    let mut plain = Vec::new();
    let mut count: i32 = 0;
    for (record, _) in records.iter().zip(kept).filter(|(_, &k)| k) {
        plain.extend_from_slice(&section[record.range.clone()]);
        count += 1;
    }
    let mut attributes = header.attributes;
    let records_section = if count == 0 {
        // An empty batch carries no records to compress: stored uncompressed.
        attributes &= !COMPRESSION_CODEC_MASK;
        Vec::new()
    } else if header.is_compressed() {
        codec.compress(header.attributes, &plain)?
    } else {
        plain
    };
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + records_section.len());
    out.extend_from_slice(&original[..BATCH_HEADER_BYTES]);
    out.extend_from_slice(&records_section);
    let batch_length = i32::try_from(out.len() - LOG_OVERHEAD_BYTES).ok()?;
    out[BATCH_LENGTH_OFFSET..BATCH_LENGTH_OFFSET + 4].copy_from_slice(&batch_length.to_be_bytes());
    out[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    out[RECORD_COUNT_OFFSET..RECORD_COUNT_OFFSET + 4].copy_from_slice(&count.to_be_bytes());
    let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
    out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    Some(out)
}

/// Walks the whole batches of a segment file, checked as a read from disk checks them.
struct BatchWalk<'a, F> {
    reader: WindowReader<'a, F>,
    position: u64,
    base_offset: i64,
}

impl<F: DiskFile> BatchWalk<'_, F> {
    async fn next(&mut self) -> Result<Option<(BatchHeader, Bytes)>, StorageError> {
        let io = io_error("reading a segment to clean");
        let Some(header_bytes) = self
            .reader
            .get(self.position, BATCH_HEADER_BYTES)
            .await
            .map_err(io)?
        else {
            return Ok(None);
        };
        let header = BatchHeader::parse(&header_bytes).expect("61 bytes");
        let damaged = |what: &str| {
            StorageError::MidLogCorruption(format!(
                "segment {} at byte {}: {what}; not cleaned",
                self.base_offset, self.position
            ))
        };
        let bytes = self
            .reader
            .get(self.position, header.total_bytes())
            .await
            .map_err(io_error("reading a segment to clean"))?
            .ok_or_else(|| damaged("a batch runs past the segment"))?;
        if !batch::is_intact(&bytes) {
            return Err(damaged("a batch fails its CRC32C"));
        }
        self.position += bytes.len() as u64;
        Ok(Some((header, bytes)))
    }
}

impl<D: Disk> PartitionLog<D> {
    /// The sealed segments a pass may clean: up to the first whose newest timestamp is
    /// younger than `min_compaction_lag_ms`.
    fn cleanable_segments(&self, min_compaction_lag_ms: u64) -> Vec<SegmentView<D::File>> {
        let now_ms = self.inner.clock.now_ms();
        let state = self.state();
        let mut previous_term = 0;
        let mut views = Vec::new();
        for segment in state.sealed.values() {
            let max_timestamp = segment.index.max_timestamp();
            if max_timestamp > now_ms.saturating_sub(min_compaction_lag_ms as i64) {
                break;
            }
            views.push(SegmentView {
                base_offset: segment.base_offset,
                file: segment.file.clone(),
                bytes: segment.bytes(),
                next_offset: segment.next_offset(),
                base_index: segment.index.base_index(),
                next_index: segment.index.next_index(),
                last_term: segment.index.last_term(),
                previous_term,
                max_timestamp,
            });
            previous_term = segment.index.last_term();
        }
        views
    }

    /// A pass stops when the log is closing, closed or fenced.
    fn check_cleanable(&self) -> Result<(), StorageError> {
        if self.inner.stopping.get() {
            return Err(StorageError::Closed);
        }
        self.state().check_usable()
    }

    async fn cleaner_state(&self) -> Result<CleanerState, StorageError> {
        if let Some(state) = self.inner.cleaner_state.borrow().as_deref() {
            return Ok(state.clone());
        }
        let state = read_state(&self.inner.disk, self.dir()).await?;
        *self.inner.cleaner_state.borrow_mut() = Some(Box::new(state.clone()));
        Ok(state)
    }

    /// How dirty the log is (see [`DirtySummary`]).
    pub async fn dirty_summary(
        &self,
        min_compaction_lag_ms: u64,
        delete_retention_ms: u64,
    ) -> Result<DirtySummary, StorageError> {
        let cleaner = self.cleaner_state().await?;
        let first_dirty = cleaner.clean_end_offset.max(self.log_start_offset());
        let views = self.cleanable_segments(min_compaction_lag_ms);
        let mut summary = DirtySummary {
            tombstones_due: tombstones_due(
                &cleaner,
                &views,
                delete_retention_ms,
                self.inner.clock.now_ms(),
            ),
            ..DirtySummary::default()
        };
        for view in views {
            if view.next_offset <= first_dirty {
                summary.clean_bytes += view.bytes;
            } else {
                summary.dirty_bytes += view.bytes;
                summary
                    .first_dirty_max_timestamp
                    .get_or_insert(view.max_timestamp);
            }
        }
        let total = summary.clean_bytes + summary.dirty_bytes;
        if total > 0 {
            summary.dirty_ratio = summary.dirty_bytes as f64 / total as f64;
        }
        Ok(summary)
    }

    /// One cleaning pass (see the module docs). Appends go on meanwhile; an error leaves the
    /// log as it was (a swap already committed is finished by the next open).
    pub async fn clean(
        &self,
        options: &CleanOptions,
        codec: &dyn RecordCodec,
    ) -> Result<CleanOutcome, StorageError> {
        let _segments = self.segments_turn().await?;
        self.check_cleanable()?;
        let now_ms = self.inner.clock.now_ms();
        let cleaner = self.cleaner_state().await?;
        if !cleaner.swapping.is_empty() {
            // A committed swap failed half-way (an IO error): the next open finishes it;
            // until then no pass may commit another over it.
            return Err(StorageError::MidLogCorruption(format!(
                "{}: a cleaned-segment swap is pending until the partition is reopened",
                self.dir().display()
            )));
        }
        let log_start = self.log_start_offset();
        let first_dirty = cleaner.clean_end_offset.max(log_start);
        let views = self.cleanable_segments(options.min_compaction_lag_ms);
        let cleanable_end = views.last().map_or(first_dirty, |v| v.next_offset);
        let mut outcome = CleanOutcome {
            clean_end_offset: first_dirty,
            ..CleanOutcome::default()
        };
        let dirty = first_dirty < cleanable_end;
        if !dirty && !tombstones_due(&cleaner, &views, options.delete_retention_ms, now_ms) {
            return Ok(outcome);
        }
        let mut throttle = Throttle {
            clock: &self.inner.clock,
            bytes_per_second: options.io_bytes_per_second,
            started: self.inner.clock.now(),
            bytes: 0,
        };
        let (map, map_end) = if dirty {
            self.build_map(&views, first_dirty, options.map_bytes, codec, &mut throttle)
                .await?
        } else {
            // Only expired tombstones to remove, from the segments already clean.
            let empty = OffsetMap {
                latest: HashMap::new(),
                bytes: 0,
            };
            (empty, first_dirty)
        };
        // Every segment holding offsets below the map's end is rewritten.
        let to_clean: Vec<&SegmentView<D::File>> = views
            .iter()
            .take_while(|v| v.base_offset < map_end)
            .collect();
        let first_cleaned = first_clean_times(&cleaner, &to_clean, map_end, now_ms);
        let pass = Pass {
            previous: &cleaner,
            map: &map,
            map_end,
            delete_retention_ms: options.delete_retention_ms,
            now_ms,
            codec,
        };
        let dir = self.dir().to_path_buf();
        let (rewritten, flags) = self
            .rewrite_all(
                &to_clean,
                &first_cleaned,
                &pass,
                &mut throttle,
                &mut outcome,
            )
            .await?;
        let first_base = views.first().map_or(log_start, |v| v.base_offset);
        let times: Vec<(i64, Option<i64>, SegmentFlags)> = to_clean
            .iter()
            .zip(first_cleaned)
            .zip(flags)
            .map(|((v, first), flags)| (v.base_offset, first, flags))
            .collect();
        let cleaner = next_state(
            &cleaner,
            first_base,
            &times,
            map_end,
            rewritten.iter().map(|(base, _)| *base).collect(),
        );
        self.commit_and_swap(&dir, cleaner, rewritten).await?;
        outcome.clean_end_offset = map_end;
        outcome.io_bytes = throttle.bytes;
        self.inner.state.borrow_mut().stats.bytes_cleaned += outcome.bytes_before;
        Ok(outcome)
    }

    /// Rewrites each of `to_clean` that changes; returns the cleaned segments' indexes and,
    /// for each of `to_clean`, whether tombstones wait in it for their retention.
    async fn rewrite_all(
        &self,
        to_clean: &[&SegmentView<D::File>],
        first_cleaned: &[Option<i64>],
        pass: &Pass<'_>,
        throttle: &mut Throttle<'_>,
        outcome: &mut CleanOutcome,
    ) -> Result<(Vec<(i64, SegmentIndex)>, Vec<SegmentFlags>), StorageError> {
        let dir = self.dir().to_path_buf();
        let terms_from_index = self.state().terms_from_index;
        let mut rewritten = Vec::new();
        let mut flags = Vec::new();
        let mut opaque_seen = false;
        for (view, &first_cleaned_ms) in to_clean.iter().zip(first_cleaned) {
            // Left whole by an earlier pass: it may hold values a tombstone after it hides.
            let unread_before = pass
                .previous
                .cleaned
                .iter()
                .any(|c| c.base_offset == view.base_offset && c.holds_unread);
            opaque_seen |= unread_before;
            let tombstones_expire = first_cleaned_ms.is_some_and(|first| {
                first.saturating_add(pass.delete_retention_ms as i64) <= pass.now_ms
            });
            let rules = Rules {
                map: pass.map,
                map_end: pass.map_end,
                tombstones_expire,
            };
            let result = self
                .rewrite_segment(
                    view,
                    &rules,
                    &mut opaque_seen,
                    terms_from_index,
                    pass.codec,
                    throttle,
                    outcome,
                )
                .await;
            match result {
                Ok((index, mut segment_flags)) => {
                    rewritten.extend(index.map(|index| (view.base_offset, index)));
                    segment_flags.holds_unread |= unread_before;
                    flags.push(segment_flags);
                }
                Err(error) => {
                    self.discard_cleaned(&dir, &rewritten).await;
                    let _ = self
                        .inner
                        .disk
                        .remove_file(&dir.join(cleaned_file_name(view.base_offset)))
                        .await;
                    return Err(error);
                }
            }
        }
        Ok((rewritten, flags))
    }

    /// The key → latest offset map over the dirty part from `first_dirty`, and where it ends
    /// (a batch boundary: the cleanable end, or where the map filled up).
    async fn build_map(
        &self,
        views: &[SegmentView<D::File>],
        first_dirty: i64,
        map_bytes: usize,
        codec: &dyn RecordCodec,
        throttle: &mut Throttle<'_>,
    ) -> Result<(OffsetMap, i64), StorageError> {
        let mut map = OffsetMap {
            latest: HashMap::new(),
            bytes: 0,
        };
        let mut map_end = first_dirty;
        for view in views.iter().filter(|v| v.next_offset > first_dirty) {
            let position = self.state().sealed.get(&view.base_offset).map_or(0, |s| {
                s.index.position_for_offset(view.base_offset, first_dirty)
            });
            let mut walk = BatchWalk {
                reader: WindowReader::new(&*view.file, view.bytes, CLEANER_IO_BYTES),
                position,
                base_offset: view.base_offset,
            };
            while let Some((header, bytes)) = walk.next().await? {
                self.check_cleanable()?;
                // Between batches, the shard's other tasks (appends, fetches) run first.
                glommio::yield_if_needed().await;
                throttle.spend(bytes.len() as u64).await;
                if header.last_offset() < first_dirty {
                    continue;
                }
                if map.bytes >= map_bytes && map_end > first_dirty {
                    return Ok((map, map_end));
                }
                if let Some(section) = open_records(&bytes, &header, codec) {
                    let records =
                        parse_records(&section, header.record_count).ok_or_else(|| {
                            StorageError::MidLogCorruption(format!(
                                "batch at offset {} has records that do not parse; not cleaned",
                                header.base_offset
                            ))
                        })?;
                    for record in &records {
                        let offset = header.base_offset.saturating_add(record.offset_delta);
                        if let (Some(key), true) = (&record.key, offset >= first_dirty) {
                            map.put(&section[key.clone()], offset);
                        }
                    }
                }
                map_end = header.last_offset() + 1;
            }
        }
        Ok((map, map_end))
    }

    /// Writes the cleaned copy of one segment as `<base>.cleaned` and returns its index
    /// (`None` when cleaning would change nothing in it) and whether tombstones stay in it
    /// only until their retention runs out.
    #[allow(clippy::too_many_arguments)]
    async fn rewrite_segment(
        &self,
        view: &SegmentView<D::File>,
        rules: &Rules<'_>,
        opaque_seen: &mut bool,
        terms_from_index: u64,
        codec: &dyn RecordCodec,
        throttle: &mut Throttle<'_>,
        outcome: &mut CleanOutcome,
    ) -> Result<(Option<SegmentIndex>, SegmentFlags), StorageError> {
        // A first walk decides; the file is written only if something goes, by a second walk
        // that decides the same way (nothing of the segment is held in memory).
        let opaque_at_start = *opaque_seen;
        let mut changed = false;
        let mut removed = Counts::default();
        {
            let mut walk = BatchWalk {
                reader: WindowReader::new(&*view.file, view.bytes, CLEANER_IO_BYTES),
                position: 0,
                base_offset: view.base_offset,
            };
            while let Some((header, bytes)) = walk.next().await? {
                self.check_cleanable()?;
                // Between batches, the shard's other tasks (appends, fetches) run first.
                glommio::yield_if_needed().await;
                throttle.spend(bytes.len() as u64).await;
                changed |=
                    clean_batch(&bytes, &header, rules, opaque_seen, codec, &mut removed).is_some();
            }
        }
        let flags = SegmentFlags {
            tombstones_waiting: removed.tombstones_waiting > 0,
            holds_unread: removed.unread > 0,
        };
        if !changed {
            return Ok((None, flags));
        }
        *opaque_seen = opaque_at_start;
        removed = Counts::default();
        let mut writer = self.create_cleaned(view.base_offset).await?;
        let mut index = BuildingIndex::new(
            SegmentStart {
                base_offset: view.base_offset,
                base_index: view.base_index,
                previous_term: view.previous_term,
            },
            self.state().config.index_interval_bytes,
        );
        let mut walk = BatchWalk {
            reader: WindowReader::new(&*view.file, view.bytes, CLEANER_IO_BYTES),
            position: 0,
            base_offset: view.base_offset,
        };
        while let Some((header, original)) = walk.next().await? {
            self.check_cleanable()?;
            // Between batches, the shard's other tasks (appends, fetches) run first.
            glommio::yield_if_needed().await;
            let replacement =
                clean_batch(&original, &header, rules, opaque_seen, codec, &mut removed);
            let bytes: &[u8] = replacement.as_deref().unwrap_or(&original);
            let term = term_of(
                index.data.next_index,
                batch::partition_leader_epoch(bytes),
                terms_from_index,
            );
            index.add_batch(IndexedBatch {
                base_offset: header.base_offset,
                next_offset: header.last_offset() + 1,
                max_timestamp: header.max_timestamp,
                term,
                position: writer.written + writer.pending.len() as u64,
                bytes: bytes.len(),
            });
            writer
                .push(bytes, throttle)
                .await
                .map_err(io_error("writing a cleaned segment"))?;
        }
        let written = writer
            .finish()
            .await
            .map_err(io_error("writing a cleaned segment"))?;
        let data = &index.data;
        if data.next_offset != view.next_offset
            || data.next_index != view.next_index
            || data.last_term != view.last_term
        {
            // The segment changed under the pass (it cannot: the segments gate is held).
            return Err(StorageError::MidLogCorruption(format!(
                "segment {} read differently during cleaning; not cleaned",
                view.base_offset
            )));
        }
        outcome.segments_rewritten += 1;
        outcome.bytes_before += view.bytes;
        outcome.bytes_after += written;
        outcome.records_removed += removed.records;
        outcome.tombstones_removed += removed.tombstones;
        outcome.keyless_removed += removed.keyless;
        throttle.spend(written).await;
        Ok((Some(SegmentIndex::Building(index)), flags))
    }

    /// Creates (or empties) `<base>.cleaned` for writing.
    async fn create_cleaned(&self, base: i64) -> Result<SegmentWriter<D::File>, StorageError> {
        let path = self.dir().join(cleaned_file_name(base));
        let file = self
            .inner
            .disk
            .open(&path, true)
            .await
            .map_err(io_error("creating a cleaned segment"))?;
        file.truncate(0)
            .await
            .map_err(io_error("creating a cleaned segment"))?;
        Ok(SegmentWriter {
            file,
            pending: Vec::new(),
            written: 0,
        })
    }

    async fn discard_cleaned(&self, dir: &Path, rewritten: &[(i64, SegmentIndex)]) {
        for (base, _) in rewritten {
            let _ = self
                .inner
                .disk
                .remove_file(&dir.join(cleaned_file_name(*base)))
                .await;
        }
    }

    /// Commits the pass (the cleaner state naming the cleaned files) and swaps them in, oldest
    /// first; then clears the swap from the state.
    async fn commit_and_swap(
        &self,
        dir: &Path,
        mut cleaner: CleanerState,
        rewritten: Vec<(i64, SegmentIndex)>,
    ) -> Result<(), StorageError> {
        let disk = &self.inner.disk;
        if !rewritten.is_empty() {
            // The cleaned files' names must be durable before the commit names them.
            if let Err(error) = disk.sync_dir(dir).await {
                self.discard_cleaned(dir, &rewritten).await;
                return Err(StorageError::io("fsync of the partition directory", error));
            }
            if let Err(error) = self.check_cleanable() {
                self.discard_cleaned(dir, &rewritten).await;
                return Err(error);
            }
        }
        if let Err(error) = write_state(disk, dir, &cleaner).await {
            self.discard_cleaned(dir, &rewritten).await;
            *self.inner.cleaner_state.borrow_mut() = None; // reread: the commit may have landed
            return Err(error);
        }
        *self.inner.cleaner_state.borrow_mut() = None;
        if rewritten.is_empty() {
            *self.inner.cleaner_state.borrow_mut() = Some(Box::new(cleaner));
            return Ok(());
        }
        for (base, index) in rewritten {
            // Committed: from here an error leaves the rest to the next open's recovery.
            swap_one(disk, dir, base).await?;
            let file = disk
                .open(&dir.join(segment_file_name(base)), false)
                .await
                .map_err(io_error("opening a cleaned segment"))?;
            let old = {
                let mut state = self.state_mut();
                let segment = state
                    .sealed
                    .get_mut(&base)
                    .expect("the segments gate keeps a segment being cleaned");
                let old = std::mem::replace(&mut segment.file, Rc::new(file));
                segment.index = index;
                old
            };
            if Rc::strong_count(&old) == 1 {
                // Its blocks are freed here, on the blocking pool, not by the close on the
                // shard thread (as `lifecycle::empty_before_close` does for deletions).
                if let Err(error) = old.truncate(0).await {
                    tracing::warn!(base, %error, "could not empty a replaced segment before closing it");
                }
            }
            let contents = {
                let state = self.state();
                let segment = &state.sealed[&base];
                match &segment.index {
                    SegmentIndex::Building(building) => SegmentIndex::encode(&building.data),
                    SegmentIndex::Archived(_) => unreachable!("a cleaned segment's index is built"),
                }
            };
            if let Err(error) = disk
                .write_file_atomically(&dir.join(index_file_name(base)), &contents)
                .await
            {
                tracing::warn!(base, %error, "could not write a cleaned segment's index; it will be rebuilt");
            }
        }
        cleaner.swapping.clear();
        write_state(disk, dir, &cleaner).await?;
        *self.inner.cleaner_state.borrow_mut() = Some(Box::new(cleaner));
        Ok(())
    }
}

/// When each segment of `to_clean` was first cleaned: segments cleaned before keep their
/// time; those cleaned whole for the first time start theirs now (their tombstones cannot
/// expire in this pass unless `delete.retention.ms` is 0); one the map ends inside starts it
/// when it is cleaned whole.
fn first_clean_times<F>(
    cleaner: &CleanerState,
    to_clean: &[&SegmentView<F>],
    map_end: i64,
    now_ms: i64,
) -> Vec<Option<i64>> {
    to_clean
        .iter()
        .map(|v| {
            let earlier = cleaner
                .cleaned
                .iter()
                .find(|c| c.base_offset == v.base_offset)
                .map(|c| c.first_cleaned_ms)
                .filter(|&ms| ms != NOT_CLEANED_WHOLE);
            earlier.or((v.next_offset <= map_end).then_some(now_ms))
        })
        .collect()
}

/// The cleaner state after a pass: the map's end is clean; the segments cleaned keep or
/// start their first-clean times (`times`); segments gone below `first_base` are forgotten.
fn next_state(
    before: &CleanerState,
    first_base: i64,
    times: &[(i64, Option<i64>, SegmentFlags)],
    map_end: i64,
    swapping: Vec<i64>,
) -> CleanerState {
    let mut segments: Vec<CleanedSegment> = before
        .cleaned
        .iter()
        .copied()
        .filter(|c| c.base_offset >= first_base)
        .filter(|c| !times.iter().any(|&(base, _, _)| base == c.base_offset))
        .collect();
    segments.extend(
        times
            .iter()
            .filter_map(|&(base_offset, first_cleaned_ms, flags)| {
                // A segment not yet cleaned whole is remembered only for what it holds unread.
                (first_cleaned_ms.is_some() || flags.holds_unread).then_some(CleanedSegment {
                    base_offset,
                    first_cleaned_ms: first_cleaned_ms.unwrap_or(NOT_CLEANED_WHOLE),
                    tombstones_waiting: flags.tombstones_waiting,
                    holds_unread: flags.holds_unread,
                })
            }),
    );
    segments.sort_by_key(|c| c.base_offset);
    CleanerState {
        clean_end_offset: map_end,
        cleaned: segments,
        swapping,
    }
}

/// What a pass removed (and the tombstones it kept only for their retention).
#[derive(Default)]
struct Counts {
    records: u64,
    tombstones: u64,
    keyless: u64,
    tombstones_waiting: u64,
    /// Batches left whole that may hold superseded values.
    unread: u64,
}

/// What a pass learnt about one segment (kept in [`CleanedSegment`]).
#[derive(Debug, Clone, Copy)]
struct SegmentFlags {
    tombstones_waiting: bool,
    holds_unread: bool,
}

/// What every segment of a pass shares.
struct Pass<'a> {
    previous: &'a CleanerState,
    map: &'a OffsetMap,
    map_end: i64,
    delete_retention_ms: u64,
    now_ms: i64,
    codec: &'a dyn RecordCodec,
}

/// Whether a segment already clean holds tombstones whose retention has run out.
fn tombstones_due<F>(
    cleaner: &CleanerState,
    views: &[SegmentView<F>],
    delete_retention_ms: u64,
    now_ms: i64,
) -> bool {
    cleaner.cleaned.iter().any(|c| {
        c.tombstones_waiting
            && c.first_cleaned_ms
                .saturating_add(delete_retention_ms as i64)
                <= now_ms
            && views.iter().any(|v| v.base_offset == c.base_offset)
    })
}

/// What decides a record's fate in one segment.
struct Rules<'a> {
    map: &'a OffsetMap,
    map_end: i64,
    tombstones_expire: bool,
}

/// The cleaned copy of one batch, or `None` to keep it as it is. `removed` counts records,
/// tombstones and keyless records removed.
fn clean_batch(
    bytes: &[u8],
    header: &BatchHeader,
    rules: &Rules<'_>,
    opaque_seen: &mut bool,
    codec: &dyn RecordCodec,
    removed: &mut Counts,
) -> Option<Vec<u8>> {
    if header.base_offset >= rules.map_end {
        return None;
    }
    let Some(section) = open_records(bytes, header, codec) else {
        // Raft's control batches hold no keys; any other batch left unread might.
        if !header.is_control() {
            *opaque_seen = true;
            removed.unread += 1;
        }
        return None;
    };
    let Some(records) = parse_records(&section, header.record_count) else {
        *opaque_seen = true;
        removed.unread += 1;
        return None;
    };
    let mut kept = Vec::with_capacity(records.len());
    let mut counts = Counts::default();
    for record in &records {
        let offset = header.base_offset.saturating_add(record.offset_delta);
        let keep = if offset >= rules.map_end {
            true
        } else if let Some(key) = &record.key {
            let latest = rules.map.latest.get(&section[key.clone()]).copied();
            if latest.is_some_and(|latest| latest > offset) {
                false
            } else if record.tombstone && !*opaque_seen {
                if rules.tombstones_expire {
                    counts.tombstones += 1;
                } else {
                    counts.tombstones_waiting += 1;
                }
                !rules.tombstones_expire
            } else {
                true
            }
        } else {
            counts.keyless += 1;
            false
        };
        if !keep {
            counts.records += 1;
        }
        kept.push(keep);
    }
    removed.tombstones_waiting += counts.tombstones_waiting;
    if counts.records == 0 {
        return None;
    }
    let rebuilt = rebuild_batch(bytes, header, &section, &records, &kept, codec);
    if rebuilt.is_none() {
        *opaque_seen = true; // its superseded records stay
        removed.unread += 1;
        return None;
    }
    removed.records += counts.records;
    removed.tombstones += counts.tombstones;
    removed.keyless += counts.keyless;
    rebuilt
}
