//! The log cleaner: compaction of a partition whose `cleanup.policy` includes `compact`
//! (`storage/FORMAT.md` § Log cleaner). One call of [`PartitionLog::clean`] is one pass:
//!
//! 1. The cleanable range: sealed segments only (never the active one), up to the first whose
//!    newest timestamp is younger than `min.compaction.lag.ms`, and below
//!    [`CleanOptions::clean_below`]. Sealed segments lie wholly below the durable offset,
//!    so nothing above a plain log's high watermark is ever touched; a replicated log's
//!    durable entries may not be committed yet, so it passes its high watermark as the bound.
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
//! Transactions ([`PartitionLog::clean_with_txns`], given the broker's [`CleanerTxns`]), as
//! Kafka's `LogCleaner` with its `CleanedTransactionMetadata`:
//! - nothing at or above the first unstable offset (the LSO: the first offset of the oldest
//!   open transaction) is cleaned: the map ends at the first batch at or above it, and a
//!   segment starting there is not cleanable; an open transaction's records are never
//!   compacted or removed;
//! - the records of an aborted transaction (its producer's transactional batches between
//!   the entry's first offset and its abort marker) are removed and shadow nothing in the
//!   map; committed transactional records are compacted like any other;
//! - a marker (commit or abort) stays while its transaction had a record read in this pass
//!   (a later pass may remove it once they are all gone); with none left, it is removed once
//!   `delete.retention.ms` ran out for its segment, as a tombstone is (Ringfeed's delete
//!   horizon is per segment, from its first clean, where KIP-534 stamps it in each batch).
//!   A segment holding a marker that waits only for that time is flagged as one holding
//!   tombstones, so a pass comes for it. Removing a marker retires it: its batch and record
//!   stay (every batch does), the record's control type rewritten to Ringfeed's
//!   [`batch::control::RETIRED_TXN_MARKER`], which readers skip and which ends nothing (an
//!   emptied control batch would be Kafka's nearest, but kafka-python's `read_committed`
//!   reader fails on one);
//! - before the pass commits, the broker is told the abort markers it removes
//!   ([`CleanerTxns::forget_aborted`]) and forgets their aborted-transaction entries
//!   durably: an entry whose marker is gone would hide its producer's later records from
//!   `read_committed` readers, while a marker whose entry is gone hides nothing (its
//!   records went in an earlier pass). So the broker's aborted list shrinks as the log is
//!   cleaned, on a compacted topic as retention shrinks it on a deleted one;
//! - a replicated log's view retires no marker ([`CleanerTxns::retires_markers`]): a
//!   follower may copy a marker after its leader cleaned it while holding the
//!   transaction's batches as they were, and a retired marker would leave that
//!   transaction open on the follower. The entries of abort markers it would have retired
//!   are still passed to [`CleanerTxns::forget_aborted`].
//!
//! Batches left whole, unread ("opaque"): control batches other than transaction markers
//! (Raft's), transactional batches when the pass is not told the partition's transactions
//! ([`PartitionLog::clean`]), and compressed batches the caller's [`RecordCodec`] cannot
//! open. Their keys are not in the map, so a tombstone after one is kept (removing it could
//! bring back a value the opaque batch holds).
//!
//! Where Kafka does more: it keeps the last batch of every active producer whole so the
//! producer's state survives compaction; here every batch's header stays anyway (producer
//! id, epoch, sequences), which is what the broker's producer state is rebuilt from.
//!
//! Concurrency: appends never wait for the cleaner; the cleaner holds the log's segments
//! gate, which retention, truncation and close take before they remove segments, so no
//! segment disappears under a pass. While it holds that gate it may wait for the broker to
//! forget aborted entries (which takes the partition's producer gate); it gives that wait
//! up once the log starts closing, so close never waits on an append waiting on close.

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
/// How often a pass waiting for the broker to forget aborted entries looks whether the log
/// is closing.
const STOPPING_POLL: Duration = Duration::from_millis(10);
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
    /// Nothing at or above this offset is cleaned (a batch boundary; `i64::MAX`: no bound
    /// beyond the sealed segments). A replicated log passes its high watermark here: a
    /// sealed segment may hold entries not yet committed, which Raft may still truncate,
    /// and a record cleaned away for a later one that is then truncated would be lost.
    pub clean_below: i64,
}

impl Default for CleanOptions {
    fn default() -> Self {
        CleanOptions {
            map_bytes: 16 << 20,
            delete_retention_ms: 24 * 60 * 60 * 1000,
            min_compaction_lag_ms: 0,
            io_bytes_per_second: None,
            clean_below: i64::MAX,
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

/// One aborted transaction of the partition, as the cleaner needs it: its producer, the
/// offset of its first batch and of its abort marker (the broker's aborted-transaction list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedRange {
    pub producer_id: i64,
    pub first_offset: i64,
    pub marker_offset: i64,
}

/// The partition's transactions, which the broker keeps apart from the segments
/// (`producer_state`): what a pass that cleans transactional data needs to know, and the
/// one thing it asks back.
#[allow(async_fn_in_trait)] // single-threaded (glommio): no Send bound is wanted
pub trait CleanerTxns {
    /// The first offset of the oldest open transaction, or the high watermark (the LSO): a
    /// pass cleans nothing at or above it.
    fn first_unstable_offset(&self) -> i64;
    /// Every aborted transaction whose marker is in the log, in any order.
    fn aborted(&self) -> Vec<AbortedRange>;
    /// The pass removes the abort markers at `marker_offsets` (their transactions' records
    /// went in an earlier pass): called before the pass commits, it must forget their
    /// entries durably, so no reader is ever told a transaction is aborted whose marker
    /// (which ends it for the reader) is gone. An error abandons the pass.
    async fn forget_aborted(&self, marker_offsets: &[i64]) -> Result<(), StorageError>;
    /// Whether a pass may retire markers whose transactions' records are gone. A replicated
    /// log answers no: a follower may hold a transaction's batches as they were before its
    /// leader cleaned them, and copy the marker only after; a retired marker ends nothing,
    /// so the follower's transaction would stay open (its LSO stuck) for good. Kept
    /// markers cost a batch each and need no pass of their own; the aborted entries of
    /// those that would have been retired are still passed to [`Self::forget_aborted`]
    /// (again at every pass while the marker stays: forgetting must be idempotent), so
    /// the list does not grow with every abort a compacted topic ever saw. Their marker
    /// staying, the view need not forget them durably: an entry back after a restart hides
    /// nothing (its records are gone) and is forgotten again at the next pass.
    fn retires_markers(&self) -> bool {
        true
    }
}

/// No transaction information: transactional batches and markers are left whole (unread),
/// as they always may be.
pub struct NoTxns;

impl CleanerTxns for NoTxns {
    fn first_unstable_offset(&self) -> i64 {
        i64::MAX
    }
    fn aborted(&self) -> Vec<AbortedRange> {
        Vec::new()
    }
    async fn forget_aborted(&self, _marker_offsets: &[i64]) -> Result<(), StorageError> {
        Ok(())
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// Records of aborted transactions, removed.
    pub aborted_records_removed: u64,
    /// Transaction markers removed (emptied: their batch stays, with no record), and the
    /// offsets of the abort markers among them; with a view that retires no marker
    /// ([`CleanerTxns::retires_markers`]), the abort markers that would have been retired
    /// (their transactions' records are gone), whose entries the view is told to forget.
    pub markers_removed: u64,
    pub abort_markers_removed: Vec<i64>,
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
    /// `None` while the log is dormant: only a pass reads the file, and a pass wakes it.
    file: Option<Rc<F>>,
    bytes: u64,
    next_offset: i64,
    base_index: u64,
    next_index: u64,
    last_term: i32,
    previous_term: i32,
    max_timestamp: i64,
}

impl<F> SegmentView<F> {
    fn file(&self) -> &F {
        self.file
            .as_deref()
            .expect("a cleaning pass keeps its log awake")
    }
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

/// A batch's records, opened if they can be: `None` for a batch left whole (transactional
/// data is read only when the pass knows the partition's transactions).
fn open_records(
    bytes: &[u8],
    header: &BatchHeader,
    codec: &dyn RecordCodec,
    txns: Option<&TxnRules>,
) -> Option<Vec<u8>> {
    if header.is_control() || (header.is_transactional() && txns.is_none()) {
        return None;
    }
    let section = &bytes[BATCH_HEADER_BYTES..];
    if header.is_compressed() {
        codec.decompress(header.attributes, section)
    } else {
        Some(section.to_vec())
    }
}

/// The partition's aborted transactions, by producer, as one pass sees them.
struct TxnRules {
    /// Producer id → its aborted transactions as (first offset, marker offset), ordered.
    aborted: HashMap<i64, Vec<(i64, i64)>>,
    /// [`CleanerTxns::retires_markers`].
    retire_markers: bool,
}

impl TxnRules {
    fn new(ranges: Vec<AbortedRange>, retire_markers: bool) -> Self {
        let mut aborted: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        for range in ranges {
            aborted
                .entry(range.producer_id)
                .or_default()
                .push((range.first_offset, range.marker_offset));
        }
        for ranges in aborted.values_mut() {
            ranges.sort_unstable();
        }
        TxnRules {
            aborted,
            retire_markers,
        }
    }

    /// Whether the transactional batch of `producer_id` at `offset` belongs to an aborted
    /// transaction (one producer's transactions on a partition never overlap).
    fn is_aborted(&self, producer_id: i64, offset: i64) -> bool {
        self.aborted.get(&producer_id).is_some_and(|ranges| {
            let after = ranges.partition_point(|&(first, _)| first <= offset);
            after > 0 && offset < ranges[after - 1].1
        })
    }
}

/// What one producer's current transaction (since its last marker) held, as a walk goes.
#[derive(Clone, Copy, Default)]
struct TxnSeen {
    /// A batch with records was read (before this pass cleaned it).
    read: bool,
    /// A record stays after this pass.
    kept: bool,
}

/// What a walk over the segments of a pass carries from batch to batch.
#[derive(Clone, Default)]
struct WalkState {
    /// A batch was left whole (unread) earlier in the walk: it may hold a value a later
    /// tombstone hides.
    opaque_seen: bool,
    /// Per producer, its transaction since its last marker.
    txns: HashMap<i64, TxnSeen>,
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
    /// younger than `min_compaction_lag_ms`, and none starting at or above
    /// `first_unstable_offset` (one holding it is cleaned only below it).
    fn cleanable_segments(
        &self,
        min_compaction_lag_ms: u64,
        first_unstable_offset: i64,
    ) -> Vec<SegmentView<D::File>> {
        let now_ms = self.inner.clock.now_ms();
        let state = self.state();
        let mut previous_term = 0;
        let mut views = Vec::new();
        for segment in state.sealed.values() {
            let max_timestamp = segment.index.max_timestamp();
            if max_timestamp > now_ms.saturating_sub(min_compaction_lag_ms as i64)
                || segment.base_offset >= first_unstable_offset
            {
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
        self.dirty_summary_below(min_compaction_lag_ms, delete_retention_ms, i64::MAX)
            .await
    }

    /// [`Self::dirty_summary`] of a log whose transactions are cleaned: nothing at or above
    /// `first_unstable_offset` (the LSO) counts as dirty, as a pass would not clean it.
    pub async fn dirty_summary_below(
        &self,
        min_compaction_lag_ms: u64,
        delete_retention_ms: u64,
        first_unstable_offset: i64,
    ) -> Result<DirtySummary, StorageError> {
        let cleaner = self.cleaner_state().await?;
        let first_dirty = cleaner.clean_end_offset.max(self.log_start_offset());
        let views = self.cleanable_segments(min_compaction_lag_ms, first_unstable_offset);
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
            if view.next_offset.min(first_unstable_offset) <= first_dirty {
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

    /// One cleaning pass (see the module docs) that leaves transactional batches and
    /// markers whole. Appends go on meanwhile; an error leaves the log as it was (a swap
    /// already committed is finished by the next open).
    pub async fn clean(
        &self,
        options: &CleanOptions,
        codec: &dyn RecordCodec,
    ) -> Result<CleanOutcome, StorageError> {
        self.clean_with_txns::<NoTxns>(options, codec, None).await
    }

    /// One cleaning pass that, told the partition's transactions (`txns`), cleans below its
    /// LSO only, removes aborted transactions' records, compacts committed ones with the
    /// rest and removes markers once their transactions' records are gone (module docs).
    pub async fn clean_with_txns<T: CleanerTxns>(
        &self,
        options: &CleanOptions,
        codec: &dyn RecordCodec,
        txns: Option<&T>,
    ) -> Result<CleanOutcome, StorageError> {
        // A pass reads and replaces segment files: a dormant log wakes, and stays awake
        // until the pass ends (taken before the segments gate, which waking takes too).
        let _awake = self.awake().await?;
        let _segments = self.segments_turn().await?;
        // Read before anything else: transactions opened later start above the log end.
        let first_unstable = txns
            .map_or(i64::MAX, CleanerTxns::first_unstable_offset)
            .min(options.clean_below);
        let txn_rules = txns.map(|t| TxnRules::new(t.aborted(), t.retires_markers()));
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
        let views = self.cleanable_segments(options.min_compaction_lag_ms, first_unstable);
        let cleanable_end = views
            .last()
            .map_or(first_dirty, |v| v.next_offset.min(first_unstable));
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
            let bounds = MapBounds {
                first_dirty,
                first_unstable,
                map_bytes: options.map_bytes,
            };
            self.build_map(&views, &bounds, codec, txn_rules.as_ref(), &mut throttle)
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
            txns: txn_rules.as_ref(),
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
        // Forgotten first: an aborted entry whose marker is gone would hide the producer's
        // later records from readers; a marker whose entry is gone hides nothing (its
        // transaction's records went in an earlier pass).
        let forgotten = self.forget_unless_stopping(txns, &outcome.abort_markers_removed);
        if let Err(error) = forgotten.await {
            self.discard_cleaned(&dir, &rewritten).await;
            return Err(error);
        }
        self.commit_and_swap(&dir, cleaner, rewritten).await?;
        outcome.clean_end_offset = map_end;
        outcome.io_bytes = throttle.bytes;
        self.inner.state.borrow_mut().stats.bytes_cleaned += outcome.bytes_before;
        Ok(outcome)
    }

    /// `txns.forget_aborted(markers)`, given up (`Closed`) once the log starts closing: the
    /// broker may have to wait for a gate that an append holds while it waits for the log's
    /// append gate, which `close` holds while it waits for this pass's segments gate. Given
    /// up, the pass does not commit: its markers stay, and any entry already forgotten
    /// hides nothing (its records went in an earlier pass).
    async fn forget_unless_stopping<T: CleanerTxns>(
        &self,
        txns: Option<&T>,
        markers: &[i64],
    ) -> Result<(), StorageError> {
        let Some(txns) = txns.filter(|_| !markers.is_empty()) else {
            return Ok(());
        };
        let forget = std::pin::pin!(txns.forget_aborted(markers));
        let stopping = std::pin::pin!(async {
            while !self.inner.stopping.get() {
                self.inner.clock.sleep(STOPPING_POLL).await;
            }
        });
        match futures::future::select(forget, stopping).await {
            futures::future::Either::Left((forgotten, _)) => forgotten,
            futures::future::Either::Right(((), _)) => Err(StorageError::Closed),
        }
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
        let mut walk = WalkState::default();
        for (view, &first_cleaned_ms) in to_clean.iter().zip(first_cleaned) {
            // Left whole by an earlier pass: it may hold values a tombstone after it hides.
            let unread_before = pass
                .previous
                .cleaned
                .iter()
                .any(|c| c.base_offset == view.base_offset && c.holds_unread);
            walk.opaque_seen |= unread_before;
            let tombstones_expire = first_cleaned_ms.is_some_and(|first| {
                first.saturating_add(pass.delete_retention_ms as i64) <= pass.now_ms
            });
            let rules = Rules {
                map: pass.map,
                map_end: pass.map_end,
                tombstones_expire,
                txns: pass.txns,
            };
            let result = self
                .rewrite_segment(
                    view,
                    &rules,
                    &mut walk,
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
        bounds: &MapBounds,
        codec: &dyn RecordCodec,
        txns: Option<&TxnRules>,
        throttle: &mut Throttle<'_>,
    ) -> Result<(OffsetMap, i64), StorageError> {
        let MapBounds {
            first_dirty,
            first_unstable,
            map_bytes,
        } = *bounds;
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
                reader: WindowReader::new(view.file(), view.bytes, CLEANER_IO_BYTES),
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
                if header.base_offset >= first_unstable
                    || (map.bytes >= map_bytes && map_end > first_dirty)
                {
                    return Ok((map, map_end));
                }
                // An aborted transaction's records shadow nothing: they are removed.
                let aborted = header.is_transactional()
                    && txns.is_some_and(|t| t.is_aborted(header.producer_id, header.base_offset));
                let section = if aborted {
                    None
                } else {
                    open_records(&bytes, &header, codec, txns)
                };
                if let Some(section) = section {
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
        walk_state: &mut WalkState,
        terms_from_index: u64,
        codec: &dyn RecordCodec,
        throttle: &mut Throttle<'_>,
        outcome: &mut CleanOutcome,
    ) -> Result<(Option<SegmentIndex>, SegmentFlags), StorageError> {
        // A first walk decides; the file is written only if something goes, by a second walk
        // that decides the same way (nothing of the segment is held in memory).
        let state_at_start = walk_state.clone();
        let mut changed = false;
        let mut removed = Counts::default();
        {
            let mut walk = BatchWalk {
                reader: WindowReader::new(view.file(), view.bytes, CLEANER_IO_BYTES),
                position: 0,
                base_offset: view.base_offset,
            };
            while let Some((header, bytes)) = walk.next().await? {
                self.check_cleanable()?;
                // Between batches, the shard's other tasks (appends, fetches) run first.
                glommio::yield_if_needed().await;
                throttle.spend(bytes.len() as u64).await;
                changed |=
                    clean_batch(&bytes, &header, rules, walk_state, codec, &mut removed).is_some();
            }
        }
        let flags = SegmentFlags {
            tombstones_waiting: removed.tombstones_waiting > 0 || removed.markers_waiting > 0,
            holds_unread: removed.unread > 0,
        };
        if !changed {
            // Abort markers a replicated log keeps whose entries may go (`clean_marker`).
            outcome
                .abort_markers_removed
                .extend_from_slice(&removed.abort_markers);
            return Ok((None, flags));
        }
        *walk_state = state_at_start;
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
            reader: WindowReader::new(view.file(), view.bytes, CLEANER_IO_BYTES),
            position: 0,
            base_offset: view.base_offset,
        };
        while let Some((header, original)) = walk.next().await? {
            self.check_cleanable()?;
            // Between batches, the shard's other tasks (appends, fetches) run first.
            glommio::yield_if_needed().await;
            let replacement =
                clean_batch(&original, &header, rules, walk_state, codec, &mut removed);
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
        outcome.aborted_records_removed += removed.aborted_records;
        outcome.markers_removed += removed.markers;
        outcome
            .abort_markers_removed
            .extend_from_slice(&removed.abort_markers);
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
                let mut guard = self.state_mut();
                let state = &mut *guard;
                let segment = state
                    .sealed
                    .get_mut(&base)
                    .expect("the segments gate keeps a segment being cleaned");
                let old = segment.file.replace(Rc::new(file));
                segment.index = index;
                // The tail cache holds batches as they were appended: served after the swap,
                // they would bring back what the pass removed (and an aborted transaction's
                // records after a later pass forgot its entry). Dropped in the same step.
                state.cache.drop_below(segment.next_offset());
                old
            };
            // A pass keeps the log awake: the old file is open.
            let old = old.expect("a cleaning pass keeps its log awake");
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

/// What a pass removed (and the tombstones and markers it kept only for their retention).
#[derive(Default)]
struct Counts {
    records: u64,
    tombstones: u64,
    keyless: u64,
    aborted_records: u64,
    markers: u64,
    abort_markers: Vec<i64>,
    tombstones_waiting: u64,
    /// Markers a later pass may remove: their transactions' records are all gone.
    markers_waiting: u64,
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
    txns: Option<&'a TxnRules>,
}

/// Where a pass's map may reach.
#[derive(Clone, Copy)]
struct MapBounds {
    first_dirty: i64,
    /// The LSO: the map ends at the first batch at or above it.
    first_unstable: i64,
    map_bytes: usize,
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
    /// Tombstones, and markers whose transactions' records are gone, may go.
    tombstones_expire: bool,
    /// `None`: transactional batches and markers are left whole.
    txns: Option<&'a TxnRules>,
}

/// The cleaned copy of one batch, or `None` to keep it as it is. `removed` counts records,
/// tombstones and keyless records removed.
fn clean_batch(
    bytes: &Bytes,
    header: &BatchHeader,
    rules: &Rules<'_>,
    walk: &mut WalkState,
    codec: &dyn RecordCodec,
    removed: &mut Counts,
) -> Option<Vec<u8>> {
    if header.base_offset >= rules.map_end {
        return None;
    }
    let transactional = header.is_transactional() && header.producer_id >= 0;
    if let (Some(txns), true) = (rules.txns, transactional) {
        if header.is_control() {
            return clean_marker(bytes, header, rules, walk, removed);
        }
        if header.record_count <= 0 {
            return None; // emptied by an earlier pass
        }
        walk.txns.entry(header.producer_id).or_default().read = true;
        if txns.is_aborted(header.producer_id, header.base_offset) {
            removed.aborted_records += u64::try_from(header.record_count).unwrap_or(0);
            return rebuild_batch(bytes, header, &[], &[], &[], codec);
        }
    }
    let (cleaned, kept_any) =
        clean_records(bytes, header, rules, &mut walk.opaque_seen, codec, removed);
    if let (Some(_), true, false) = (rules.txns, transactional, header.is_control()) {
        walk.txns.entry(header.producer_id).or_default().kept |= kept_any;
    }
    cleaned
}

/// A transaction marker (control, transactional) below the map's end: kept while its
/// transaction's records were read in this pass (Kafka's rule: a later pass removes it once
/// they are gone), else removed once `delete.retention.ms` ran out for its segment, as a
/// tombstone is. Removed means retired: the batch and its one record stay, the record's
/// type rewritten to [`batch::control::RETIRED_TXN_MARKER`] (readers skip it; it ends
/// nothing).
fn clean_marker(
    bytes: &Bytes,
    header: &BatchHeader,
    rules: &Rules<'_>,
    walk: &mut WalkState,
    removed: &mut Counts,
) -> Option<Vec<u8>> {
    let seen = walk.txns.remove(&header.producer_id).unwrap_or_default();
    let abort = match batch::control::record(bytes) {
        Some((batch::control::ABORT_MARKER, _)) => true,
        Some((batch::control::COMMIT_MARKER, _)) => false,
        _ => return None, // retired by an earlier pass, or not a marker: left whole
    };
    if rules.txns.is_some_and(|t| !t.retire_markers) {
        // Kept for good, so nothing waits on it; once its transaction's records are gone
        // and its retention ran out, as a retired one's, an abort's entry may be forgotten
        // (it hides nothing more).
        if abort && !seen.read && rules.tombstones_expire {
            removed.abort_markers.push(header.base_offset);
        }
        return None;
    }
    if seen.read {
        if !seen.kept {
            removed.markers_waiting += 1;
        }
        return None;
    }
    if !rules.tombstones_expire {
        removed.markers_waiting += 1;
        return None;
    }
    let retired = batch::control::with_type(bytes, batch::control::RETIRED_TXN_MARKER)?;
    removed.markers += 1;
    if abort {
        removed.abort_markers.push(header.base_offset);
    }
    Some(retired)
}

/// The records of a batch that are not a transaction's aborted ones: the latest of each key
/// stays (see the module docs). Returns the cleaned copy (`None`: unchanged) and whether
/// any record stays.
fn clean_records(
    bytes: &[u8],
    header: &BatchHeader,
    rules: &Rules<'_>,
    opaque_seen: &mut bool,
    codec: &dyn RecordCodec,
    removed: &mut Counts,
) -> (Option<Vec<u8>>, bool) {
    let has_records = header.record_count > 0;
    let Some(section) = open_records(bytes, header, codec, rules.txns) else {
        // Raft's control batches hold no keys; any other batch left unread might.
        if !header.is_control() {
            *opaque_seen = true;
            removed.unread += 1;
        }
        return (None, has_records);
    };
    let Some(records) = parse_records(&section, header.record_count) else {
        *opaque_seen = true;
        removed.unread += 1;
        return (None, has_records);
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
        return (None, has_records);
    }
    let rebuilt = rebuild_batch(bytes, header, &section, &records, &kept, codec);
    if rebuilt.is_none() {
        *opaque_seen = true; // its superseded records stay
        removed.unread += 1;
        return (None, has_records);
    }
    removed.records += counts.records;
    removed.tombstones += counts.tombstones;
    removed.keyless += counts.keyless;
    (rebuilt, kept.iter().any(|&k| k))
}
