//! The sparse offset and time index of one segment (`storage/FORMAT.md` § Segment index).
//!
//! While a segment is active its index grows in memory ([`SegmentIndex::Building`]); when the
//! segment is sealed the index is written as an rkyv archive and later read back zero-copy
//! ([`SegmentIndex::Archived`]): lookups binary-search the archived arrays in place.
//!
//! Every batch is also a Raft entry: the index knows the Raft index of the segment's first
//! batch and each entry carries the batch's index relative to it, so a batch is found by its
//! Raft index as by its offset (`storage/FORMAT.md` § Raft index and term).

use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::meta::{self, MetaError, MetaKind};

/// An offset index entry: the batch whose base offset is `base_offset + relative_offset`,
/// and whose Raft index is `base_index + relative_index`, starts at byte `position` of the
/// segment.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetIndexEntry {
    pub relative_offset: u32,
    pub relative_index: u32,
    pub position: u32,
}

/// A time index entry: every batch up to and including the one at `position` has a
/// maxTimestamp of at most `timestamp` (a running maximum, as in Kafka's time index).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeIndexEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
    pub position: u32,
}

/// A term index entry: the segment's batches from Raft index `start_index` (offset
/// `start_offset`) on have term `term`, up to the next entry. One for the segment's first
/// batch and one for each batch whose term differs from the one before it: together, the
/// segments' entries are the partition's leader-epoch cache (Kafka's leader-epoch
/// checkpoint, KIP-101), kept and truncated with the log itself.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermIndexEntry {
    pub start_index: u64,
    pub start_offset: i64,
    pub term: i32,
}

const _: () = assert!(size_of::<ArchivedOffsetIndexEntry>() == 12);
const _: () = assert!(size_of::<ArchivedTermIndexEntry>() == 24);
const _: () = assert!(size_of::<ArchivedTimeIndexEntry>() == 16);

/// What a sealed segment's index file holds: its entries and the facts about the segment
/// needed to open it without a scan.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentIndexData {
    pub base_offset: i64,
    /// Bytes of batches in the segment (the logical end; the file may be longer).
    pub segment_bytes: u64,
    /// One past the last offset in the segment.
    pub next_offset: i64,
    /// Largest batch maxTimestamp in the segment, `i64::MIN` when empty.
    pub max_timestamp: i64,
    /// The Raft index of the segment's first batch.
    pub base_index: u64,
    /// One past the Raft index of the segment's last batch (`base_index` when empty).
    pub next_index: u64,
    /// The term of the segment's first batch; of the batch before the segment when empty.
    pub first_term: i32,
    /// The term of the segment's last batch; of the batch before the segment when empty.
    pub last_term: i32,
    pub offset_entries: Vec<OffsetIndexEntry>,
    pub time_entries: Vec<TimeIndexEntry>,
    pub term_entries: Vec<TermIndexEntry>,
}

/// A segment's index, in whichever form it is held.
pub enum SegmentIndex {
    Building(BuildingIndex),
    /// A validated archive; see [`SegmentIndex::archived`].
    Archived(AlignedVec),
}

/// Where a segment starts: its first offset, the Raft index of its first batch, and the
/// term of the batch before it (0 at the start of a log), which its own terms may not go
/// below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentStart {
    pub base_offset: i64,
    pub base_index: u64,
    pub previous_term: i32,
}

/// One batch as the index records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexedBatch {
    pub base_offset: i64,
    /// One past the batch's last offset.
    pub next_offset: i64,
    pub max_timestamp: i64,
    /// The batch's Raft term (see [`SegmentIndexData::last_term`]).
    pub term: i32,
    /// Where the batch starts in the segment, and its size.
    pub position: u64,
    pub bytes: usize,
}

/// The index of the active segment as it grows.
#[derive(Clone)]
pub struct BuildingIndex {
    pub data: SegmentIndexData,
    /// Batches added (kept in memory only; the index file has it as `next_index - base_index`).
    pub batches: u64,
    interval_bytes: u32,
    bytes_since_entry: u64,
    time_entry_timestamp: i64,
    /// The term of the batch before the segment.
    previous_term: i32,
    /// For each offset entry, the segment's largest maxTimestamp before its batch (memory
    /// only), so [`Self::cut_back`] can undo batches exactly.
    max_timestamp_before_entry: Vec<i64>,
}

impl BuildingIndex {
    pub fn new(start: SegmentStart, interval_bytes: u32) -> BuildingIndex {
        BuildingIndex {
            data: SegmentIndexData {
                base_offset: start.base_offset,
                max_timestamp: i64::MIN,
                next_offset: start.base_offset,
                base_index: start.base_index,
                next_index: start.base_index,
                first_term: start.previous_term,
                last_term: start.previous_term,
                ..SegmentIndexData::default()
            },
            batches: 0,
            interval_bytes,
            // Index the very first batch so lookups never start before the segment.
            bytes_since_entry: u64::MAX,
            time_entry_timestamp: i64::MIN,
            previous_term: start.previous_term,
            max_timestamp_before_entry: Vec::new(),
        }
    }

    /// Undoes the batches from the last indexed one at or before Raft index `index` on, as
    /// if they had never been added, and returns where that batch starts: a scan from there
    /// re-adds what precedes a cut (see `truncation.rs`) without reading the whole segment.
    pub fn cut_back(&mut self, index: u64) -> u64 {
        let data = &mut self.data;
        let relative = index.saturating_sub(data.base_index);
        let kept = data
            .offset_entries
            .partition_point(|e| u64::from(e.relative_index) <= relative)
            .saturating_sub(1);
        let Some(&floor) = data.offset_entries.get(kept) else {
            // No batch was indexed: none was added.
            return 0;
        };
        let floor_index = data.base_index + u64::from(floor.relative_index);
        data.offset_entries.truncate(kept);
        data.max_timestamp = self.max_timestamp_before_entry[kept];
        self.max_timestamp_before_entry.truncate(kept);
        data.time_entries.retain(|e| e.position < floor.position);
        self.time_entry_timestamp = data.time_entries.last().map_or(i64::MIN, |e| e.timestamp);
        data.term_entries.retain(|e| e.start_index < floor_index);
        data.last_term = data
            .term_entries
            .last()
            .map_or(self.previous_term, |e| e.term);
        self.batches = u64::from(floor.relative_index);
        if self.batches == 0 {
            data.first_term = self.previous_term;
        }
        data.next_index = floor_index;
        data.next_offset = data.base_offset + i64::from(floor.relative_offset);
        data.segment_bytes = u64::from(floor.position);
        // The undone batch had an entry: it gets one again.
        self.bytes_since_entry = u64::MAX;
        u64::from(floor.position)
    }

    /// Gives back the vectors' spare capacity (a dormant log's index grows no more until it
    /// wakes).
    pub fn shrink_to_fit(&mut self) {
        self.data.offset_entries.shrink_to_fit();
        self.data.time_entries.shrink_to_fit();
        self.data.term_entries.shrink_to_fit();
        self.max_timestamp_before_entry.shrink_to_fit();
    }

    /// Records one batch appended at `batch.position`; it gets Raft index `data.next_index`.
    pub fn add_batch(&mut self, batch: IndexedBatch) {
        let IndexedBatch {
            base_offset,
            next_offset,
            max_timestamp,
            term,
            position,
            bytes,
        } = batch;
        let data = &mut self.data;
        let max_timestamp_before = data.max_timestamp;
        // Both callers add batches in order: the append path at the log end, the recovery
        // scan only after `check_header` matched the expected offset and a non-negative count
        // and the term was checked not to go back.
        assert!(
            base_offset == data.next_offset && next_offset > base_offset,
            "batch {base_offset}..{next_offset} indexed where offset {} is next",
            data.next_offset
        );
        assert_eq!(
            position, data.segment_bytes,
            "batches are indexed back to back"
        );
        assert!(
            term >= data.last_term,
            "term {term} indexed after term {}",
            data.last_term
        );
        let relative_index = self.batches;
        if self.batches == 0 {
            data.first_term = term;
        }
        if self.batches == 0 || term != data.last_term {
            data.term_entries.push(TermIndexEntry {
                start_index: data.next_index,
                start_offset: base_offset,
                term,
            });
        }
        data.last_term = term;
        self.batches += 1;
        data.next_index += 1;
        data.max_timestamp = data.max_timestamp.max(max_timestamp);
        // An entry holds its offset (relative to the segment's base) and position in 32 bits
        // each. Compressed batches may claim up to 2^31 records, so a few of them can carry a
        // segment's offsets past that: such batches get no entry (the index is sparse; a
        // lookup starts at the last entry below and reads forward) rather than a truncated
        // one out of order.
        let entry = u32::try_from(base_offset - data.base_offset)
            .ok()
            .zip(u32::try_from(position).ok())
            .zip(u32::try_from(relative_index).ok())
            .filter(|_| self.bytes_since_entry >= u64::from(self.interval_bytes));
        if let Some(((relative_offset, position), relative_index)) = entry {
            if let Some(last) = data.offset_entries.last() {
                assert!(
                    relative_offset > last.relative_offset && position > last.position,
                    "index entries must grow in offset and position: {last:?} then {relative_offset} at {position}"
                );
            }
            data.offset_entries.push(OffsetIndexEntry {
                relative_offset,
                relative_index,
                position,
            });
            self.max_timestamp_before_entry.push(max_timestamp_before);
            if data.max_timestamp > self.time_entry_timestamp {
                data.time_entries.push(TimeIndexEntry {
                    timestamp: data.max_timestamp,
                    relative_offset,
                    position,
                });
                self.time_entry_timestamp = data.max_timestamp;
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += bytes as u64;
        data.next_offset = next_offset;
        data.segment_bytes = position + bytes as u64;
    }
}

impl SegmentIndex {
    /// Parses and validates an index file; any defect means "rebuild from the segment".
    pub fn load(file: &[u8], expected_base_offset: i64) -> Result<SegmentIndex, MetaError> {
        let payload = meta::open(MetaKind::SegmentIndex, file)?;
        let archived = rkyv::access::<ArchivedSegmentIndexData, rkyv::rancor::Error>(&payload)
            .map_err(|e| MetaError::InvalidArchive(e.to_string()))?;
        if archived.base_offset.to_native() != expected_base_offset {
            return Err(MetaError::InvalidArchive(
                "base offset does not match the file name".into(),
            ));
        }
        Ok(SegmentIndex::Archived(payload))
    }

    /// Serializes the index (either form) into an index file's bytes.
    pub fn encode(data: &SegmentIndexData) -> Vec<u8> {
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(data).expect("plain data");
        meta::seal(MetaKind::SegmentIndex, &archive)
    }

    fn archived(bytes: &AlignedVec) -> &ArchivedSegmentIndexData {
        // SAFETY: `bytes` passed `rkyv::access` (full validation) in `load` and is never
        // mutated afterwards, so the archive is known to be well-formed.
        unsafe { rkyv::access_unchecked::<ArchivedSegmentIndexData>(bytes) }
    }

    pub fn segment_bytes(&self) -> u64 {
        match self {
            SegmentIndex::Building(b) => b.data.segment_bytes,
            SegmentIndex::Archived(a) => Self::archived(a).segment_bytes.to_native(),
        }
    }

    pub fn next_offset(&self) -> i64 {
        match self {
            SegmentIndex::Building(b) => b.data.next_offset,
            SegmentIndex::Archived(a) => Self::archived(a).next_offset.to_native(),
        }
    }

    pub fn max_timestamp(&self) -> i64 {
        match self {
            SegmentIndex::Building(b) => b.data.max_timestamp,
            SegmentIndex::Archived(a) => Self::archived(a).max_timestamp.to_native(),
        }
    }

    pub fn base_index(&self) -> u64 {
        match self {
            SegmentIndex::Building(b) => b.data.base_index,
            SegmentIndex::Archived(a) => Self::archived(a).base_index.to_native(),
        }
    }

    pub fn next_index(&self) -> u64 {
        match self {
            SegmentIndex::Building(b) => b.data.next_index,
            SegmentIndex::Archived(a) => Self::archived(a).next_index.to_native(),
        }
    }

    pub fn first_term(&self) -> i32 {
        match self {
            SegmentIndex::Building(b) => b.data.first_term,
            SegmentIndex::Archived(a) => Self::archived(a).first_term.to_native(),
        }
    }

    pub fn last_term(&self) -> i32 {
        match self {
            SegmentIndex::Building(b) => b.data.last_term,
            SegmentIndex::Archived(a) => Self::archived(a).last_term.to_native(),
        }
    }

    /// The term of the batch at Raft index `index`, if this segment holds it.
    pub fn term_at(&self, index: u64) -> Option<i32> {
        if index < self.base_index() || index >= self.next_index() {
            return None;
        }
        let term = match self {
            SegmentIndex::Building(b) => {
                let entries = &b.data.term_entries;
                let count = entries.partition_point(|e| e.start_index <= index);
                entries[count.checked_sub(1)?].term
            }
            SegmentIndex::Archived(a) => {
                let entries = &Self::archived(a).term_entries;
                let count = entries.partition_point(|e| e.start_index.to_native() <= index);
                entries[count.checked_sub(1)?].term.to_native()
            }
        };
        Some(term)
    }

    /// The segment's term entries, in index order.
    pub fn term_entries(&self) -> Vec<TermIndexEntry> {
        match self {
            SegmentIndex::Building(b) => b.data.term_entries.clone(),
            SegmentIndex::Archived(a) => Self::archived(a)
                .term_entries
                .iter()
                .map(|e| TermIndexEntry {
                    start_index: e.start_index.to_native(),
                    start_offset: e.start_offset.to_native(),
                    term: e.term.to_native(),
                })
                .collect(),
        }
    }

    /// The last indexed batch at or before Raft index `index`: its byte position, base
    /// offset and Raft index. Walking batches forward from it reaches `index`.
    pub fn locate_index(&self, index: u64) -> BatchLocation {
        let base_index = self.base_index();
        let relative = index.saturating_sub(base_index).min(u64::from(u32::MAX)) as u32;
        let found = match self {
            SegmentIndex::Building(b) => {
                let entries = &b.data.offset_entries;
                let count = entries.partition_point(|e| e.relative_index <= relative);
                count.checked_sub(1).map(|i| {
                    (
                        entries[i].position,
                        entries[i].relative_offset,
                        entries[i].relative_index,
                    )
                })
            }
            SegmentIndex::Archived(a) => {
                let entries = &Self::archived(a).offset_entries;
                let count = entries.partition_point(|e| e.relative_index.to_native() <= relative);
                count.checked_sub(1).map(|i| {
                    let e = &entries[i];
                    (
                        e.position.to_native(),
                        e.relative_offset.to_native(),
                        e.relative_index.to_native(),
                    )
                })
            }
        };
        let (position, relative_offset, relative_index) = found.unwrap_or((0, 0, 0));
        let base_offset = match self {
            SegmentIndex::Building(b) => b.data.base_offset,
            SegmentIndex::Archived(a) => Self::archived(a).base_offset.to_native(),
        };
        BatchLocation {
            position: u64::from(position),
            base_offset: base_offset + i64::from(relative_offset),
            index: base_index + u64::from(relative_index),
        }
    }

    /// Byte position of the last indexed batch starting at or before `offset`; scanning
    /// forward from it reaches the batch containing `offset`.
    pub fn position_for_offset(&self, base_offset: i64, offset: i64) -> u64 {
        let relative = offset
            .saturating_sub(base_offset)
            .clamp(0, i64::from(u32::MAX)) as u32;
        let position = match self {
            SegmentIndex::Building(b) => floor_position(
                &b.data.offset_entries,
                |e| (e.relative_offset, e.position),
                relative,
            ),
            SegmentIndex::Archived(a) => floor_position(
                &Self::archived(a).offset_entries,
                |e| (e.relative_offset.to_native(), e.position.to_native()),
                relative,
            ),
        };
        u64::from(position.unwrap_or(0))
    }

    /// Byte position from which to scan for the first batch with maxTimestamp ≥
    /// `timestamp`: the last indexed batch whose running maximum is still below it.
    pub fn position_for_timestamp(&self, timestamp: i64) -> u64 {
        let below = |entry_timestamp: i64| entry_timestamp < timestamp;
        let position = match self {
            SegmentIndex::Building(b) => {
                let entries = &b.data.time_entries;
                let count = entries.partition_point(|e| below(e.timestamp));
                count.checked_sub(1).map(|i| entries[i].position)
            }
            SegmentIndex::Archived(a) => {
                let entries = &Self::archived(a).time_entries;
                let count = entries.partition_point(|e| below(e.timestamp.to_native()));
                count
                    .checked_sub(1)
                    .map(|i| entries[i].position.to_native())
            }
        };
        u64::from(position.unwrap_or(0))
    }
}

/// Where a batch starts: byte position in its segment, base offset and Raft index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLocation {
    pub position: u64,
    pub base_offset: i64,
    pub index: u64,
}

/// The value of the last entry whose key is at most `target` (keys ascend).
fn floor_position<T>(
    entries: &[T],
    key_value: impl Fn(&T) -> (u32, u32),
    target: u32,
) -> Option<u32> {
    let count = entries.partition_point(|e| key_value(e).0 <= target);
    count.checked_sub(1).map(|i| key_value(&entries[i]).1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(base_offset: i64, base_index: u64) -> SegmentStart {
        SegmentStart {
            base_offset,
            base_index,
            previous_term: 0,
        }
    }

    fn batch(
        base_offset: i64,
        next_offset: i64,
        max_timestamp: i64,
        position: u64,
    ) -> IndexedBatch {
        IndexedBatch {
            base_offset,
            next_offset,
            max_timestamp,
            term: 0,
            position,
            bytes: 600,
        }
    }

    fn built() -> BuildingIndex {
        let mut index = BuildingIndex::new(start(100, 7), 1000);
        // Ten batches of 600 bytes, 5 records each, timestamps rising by 10 with a dip, terms
        // 1, 1, 1, 2, ... (each batch i >= 3 at term i - 1).
        for i in 0..10_i64 {
            let ts = if i == 5 { 5 } else { 1000 + i * 10 };
            index.add_batch(IndexedBatch {
                term: (i as i32 - 1).max(1),
                ..batch(100 + i * 5, 105 + i * 5, ts, (i * 600) as u64)
            });
        }
        index
    }

    #[test]
    fn building_and_archived_forms_answer_alike() {
        let building = built();
        let data = building.data.clone();
        let archived = SegmentIndex::load(&SegmentIndex::encode(&data), 100).expect("valid");
        let building = SegmentIndex::Building(building);
        for form in [&building, &archived] {
            assert_eq!(form.segment_bytes(), 6000);
            assert_eq!(form.next_offset(), 150);
            assert_eq!(form.max_timestamp(), 1090);
            assert_eq!(form.position_for_offset(100, 99), 0);
            assert_eq!(form.position_for_offset(100, 100), 0);
            // Entries every 1000 bytes: batches at 0, 1200, 2400, 3600, 4800.
            assert_eq!(form.position_for_offset(100, 112), 1200);
            assert_eq!(form.position_for_offset(100, 149), 4800);
            assert_eq!(form.position_for_timestamp(0), 0);
            assert_eq!(form.position_for_timestamp(1041), 2400);
            assert_eq!((form.base_index(), form.next_index()), (7, 17));
            assert_eq!((form.first_term(), form.last_term()), (1, 8));
            let location = |position, base_offset, index| BatchLocation {
                position,
                base_offset,
                index,
            };
            assert_eq!(form.locate_index(7), location(0, 100, 7));
            assert_eq!(form.locate_index(8), location(0, 100, 7));
            assert_eq!(form.locate_index(9), location(1200, 110, 9));
            assert_eq!(form.locate_index(16), location(4800, 140, 15));
            let terms: Vec<Option<i32>> = (6..18).map(|index| form.term_at(index)).collect();
            let mut expected = vec![None, Some(1), Some(1), Some(1)];
            expected.extend((2..=8).map(Some));
            expected.push(None);
            assert_eq!(terms, expected);
            let entries = form.term_entries();
            assert_eq!(entries.len(), 8, "one per term");
            assert_eq!(
                entries[1],
                TermIndexEntry {
                    start_index: 10,
                    start_offset: 115,
                    term: 2
                }
            );
        }
    }

    /// Cutting back and re-adding the batches up to a cut gives the index of exactly those
    /// batches, at every cut.
    #[test]
    fn cutting_back_then_re_adding_equals_indexing_the_prefix() {
        let batches: Vec<IndexedBatch> = (0..10_i64)
            .map(|i| IndexedBatch {
                term: (i as i32 - 1).max(1),
                ..batch(
                    100 + i * 5,
                    105 + i * 5,
                    if i == 5 { 5 } else { 1000 + i * 10 },
                    (i * 600) as u64,
                )
            })
            .collect();
        for cut in 0..=10_usize {
            let mut prefix = BuildingIndex::new(start(100, 7), 1000);
            for b in &batches[..cut] {
                prefix.add_batch(*b);
            }
            let mut redone = built();
            let from = redone.cut_back(7 + cut as u64);
            let first_redone = batches
                .iter()
                .position(|b| b.position == from)
                .unwrap_or(cut);
            for b in &batches[first_redone..cut] {
                redone.add_batch(*b);
            }
            assert_eq!(redone.data, prefix.data, "cut before batch {cut}");
            assert_eq!(redone.batches, prefix.batches);
        }
    }

    #[test]
    #[should_panic(expected = "indexed where offset 150 is next")]
    fn a_batch_indexed_out_of_order_panics() {
        built().add_batch(IndexedBatch {
            term: 9,
            ..batch(160, 165, 0, 6000)
        });
    }

    #[test]
    #[should_panic(expected = "term 7 indexed after term 8")]
    fn a_term_going_back_panics() {
        built().add_batch(IndexedBatch {
            term: 7,
            ..batch(150, 155, 0, 6000)
        });
    }

    /// Compressed batches may claim 2^31 records each: offsets past 32 bits from the segment's
    /// base get no entry, so the entries stay in order and lookups stay right.
    #[test]
    fn offsets_past_32_bits_from_the_base_get_no_entry() {
        let mut index = BuildingIndex::new(start(0, 1), 0);
        let huge = i64::from(i32::MAX);
        for i in 0..4_i64 {
            index.add_batch(IndexedBatch {
                bytes: 100,
                ..batch(i * huge, (i + 1) * huge, 0, (i * 100) as u64)
            });
        }
        let relative: Vec<u32> = index
            .data
            .offset_entries
            .iter()
            .map(|e| e.relative_offset)
            .collect();
        assert_eq!(relative, vec![0, i32::MAX as u32, 2 * i32::MAX as u32]);
        let index = SegmentIndex::Building(index);
        assert_eq!(
            index.position_for_offset(0, 3 * huge + 5),
            200,
            "read forward from there"
        );
    }

    #[test]
    fn an_index_for_another_segment_or_damaged_is_refused() {
        let file = SegmentIndex::encode(&built().data);
        assert!(SegmentIndex::load(&file, 101).is_err());
        let mut damaged = file.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        assert!(SegmentIndex::load(&damaged, 100).is_err());
    }
}
