//! Kafka v2 record-batch framing, shared by the storage crate, the broker and the clients:
//! the header layout as named offsets, reading a batch header, and splitting a `records`
//! blob into whole batches without copying. Content checks (CRC32C, records) are the storage
//! crate's (`ringfeed_storage::batch::validate`); this module only says where batches are.
//!
//! Layout (big-endian, see `storage/FORMAT.md` § Record batch):
//! ```text
//!  0 baseOffset i64 | 8 batchLength i32 | 12 partitionLeaderEpoch i32 | 16 magic i8
//! 17 crc u32 (CRC32C of bytes 21..end) | 21 attributes i16 | 23 lastOffsetDelta i32
//! 27 baseTimestamp i64 | 35 maxTimestamp i64 | 43 producerId i64 | 51 producerEpoch i16
//! 53 baseSequence i32 | 57 recordCount i32 | 61 records ...
//! ```

use bytes::Bytes;

pub const BASE_OFFSET_OFFSET: usize = 0;
pub const BATCH_LENGTH_OFFSET: usize = 8;
pub const PARTITION_LEADER_EPOCH_OFFSET: usize = 12;
pub const MAGIC_OFFSET: usize = 16;
pub const CRC_OFFSET: usize = 17;
pub const ATTRIBUTES_OFFSET: usize = 21;
pub const LAST_OFFSET_DELTA_OFFSET: usize = 23;
pub const BASE_TIMESTAMP_OFFSET: usize = 27;
pub const MAX_TIMESTAMP_OFFSET: usize = 35;
pub const PRODUCER_ID_OFFSET: usize = 43;
pub const PRODUCER_EPOCH_OFFSET: usize = 51;
pub const BASE_SEQUENCE_OFFSET: usize = 53;
pub const RECORD_COUNT_OFFSET: usize = 57;
/// Size of the fixed batch header; records start here.
pub const BATCH_HEADER_BYTES: usize = 61;
/// The bytes before `batchLength` counts from: baseOffset and batchLength themselves.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The smallest legal `batchLength`: a header with no records.
pub const BATCH_LENGTH_MIN: usize = BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES;
pub const MAGIC_V2: i8 = 2;

const _: () = assert!(BATCH_HEADER_BYTES == RECORD_COUNT_OFFSET + 4);
const _: () = assert!(CRC_OFFSET + 4 == ATTRIBUTES_OFFSET);
const _: () = assert!(LOG_OVERHEAD_BYTES == BATCH_LENGTH_OFFSET + 4);

/// The low bits of `attributes` naming the compression codec (0: none).
pub const COMPRESSION_CODEC_MASK: i16 = 0x07;
/// The `attributes` bit of a control batch (transaction markers).
pub const CONTROL_FLAG: i16 = 0x20;
/// The `attributes` bit of a transactional batch (KIP-98): its records belong to the
/// producer's open transaction until a marker commits or aborts it.
pub const TRANSACTIONAL_FLAG: i16 = 0x10;

/// The header fields of one batch, read from its first 61 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Bytes after the batchLength field; the whole batch is `batch_length + 12` bytes.
    pub batch_length: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Reads the header from the start of `bytes`; `None` when fewer than 61 bytes are given.
    pub fn parse(bytes: &[u8]) -> Option<BatchHeader> {
        let header = bytes.get(..BATCH_HEADER_BYTES)?;
        Some(BatchHeader {
            base_offset: read_i64(header, BASE_OFFSET_OFFSET),
            batch_length: read_i32(header, BATCH_LENGTH_OFFSET),
            magic: header[MAGIC_OFFSET] as i8,
            crc: read_i32(header, CRC_OFFSET) as u32,
            attributes: read_i16(header, ATTRIBUTES_OFFSET),
            last_offset_delta: read_i32(header, LAST_OFFSET_DELTA_OFFSET),
            base_timestamp: read_i64(header, BASE_TIMESTAMP_OFFSET),
            max_timestamp: read_i64(header, MAX_TIMESTAMP_OFFSET),
            producer_id: read_i64(header, PRODUCER_ID_OFFSET),
            producer_epoch: read_i16(header, PRODUCER_EPOCH_OFFSET),
            base_sequence: read_i32(header, BASE_SEQUENCE_OFFSET),
            record_count: read_i32(header, RECORD_COUNT_OFFSET),
        })
    }

    /// Total size of the batch on the wire and on disk.
    pub fn total_bytes(&self) -> usize {
        self.batch_length.max(0) as usize + LOG_OVERHEAD_BYTES
    }

    /// Saturates rather than overflows: the header may come from damaged bytes, which must
    /// end in an error, never in a panic.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    pub fn is_compressed(&self) -> bool {
        self.attributes & COMPRESSION_CODEC_MASK != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_FLAG != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_FLAG != 0
    }
}

/// Why a `records` blob cannot be cut into batches. `at` is the byte offset of the batch at
/// fault inside the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("no record batch at all")]
    Empty,
    #[error("negative batch length {batch_length}")]
    NegativeLength { at: usize, batch_length: i32 },
    #[error("a {batch_bytes}-byte batch is shorter than its header")]
    ShorterThanHeader { at: usize, batch_bytes: usize },
    #[error("a {batch_bytes}-byte batch at byte {at} runs past the {available} bytes left")]
    Truncated {
        at: usize,
        batch_bytes: usize,
        available: usize,
    },
    #[error("a {batch_bytes}-byte batch at byte {at} is above the {max_bytes}-byte limit")]
    TooLarge {
        at: usize,
        batch_bytes: usize,
        max_bytes: usize,
    },
}

/// The whole size of the batch at the front of `rest` (`at` is its place in the blob, for
/// errors), read from its length field alone; `Ok(None)` while fewer than the 12 bytes that
/// carry the length are present. The batch itself may still run past `rest`.
pub fn batch_bytes_at(rest: &[u8], at: usize) -> Result<Option<usize>, FramingError> {
    let Some(length_field) = rest.get(BATCH_LENGTH_OFFSET..LOG_OVERHEAD_BYTES) else {
        return Ok(None);
    };
    let batch_length = i32::from_be_bytes(length_field.try_into().expect("four bytes"));
    let Ok(counted) = usize::try_from(batch_length) else {
        return Err(FramingError::NegativeLength { at, batch_length });
    };
    let batch_bytes = LOG_OVERHEAD_BYTES + counted;
    if batch_bytes < BATCH_HEADER_BYTES {
        return Err(FramingError::ShorterThanHeader { at, batch_bytes });
    }
    Ok(Some(batch_bytes))
}

/// Splits a produce request's `records` into whole batches (zero-copy slices). Every byte
/// must belong to a whole batch of at most `batch_bytes_max` bytes (the topic's
/// `max.message.bytes`); framing is checked before size, as Kafka does.
pub fn split_batches(records: &Bytes, batch_bytes_max: usize) -> Result<Vec<Bytes>, FramingError> {
    if records.is_empty() {
        return Err(FramingError::Empty);
    }
    let mut batches = Vec::new();
    let mut at = 0;
    while at < records.len() {
        let rest = &records[at..];
        let truncated = |batch_bytes| FramingError::Truncated {
            at,
            batch_bytes,
            available: rest.len(),
        };
        let Some(batch_bytes) = batch_bytes_at(rest, at)? else {
            return Err(truncated(LOG_OVERHEAD_BYTES));
        };
        if batch_bytes > rest.len() {
            return Err(truncated(batch_bytes));
        }
        if batch_bytes > batch_bytes_max {
            return Err(FramingError::TooLarge {
                at,
                batch_bytes,
                max_bytes: batch_bytes_max,
            });
        }
        batches.push(records.slice(at..at + batch_bytes));
        at += batch_bytes;
    }
    Ok(batches)
}

/// The whole batches at the front of fetched `records` (zero-copy slices), in order. A
/// fetch may end in a partial batch (Kafka cuts a response at its byte limit): iteration
/// ends before it, and [`WholeBatches::consumed_bytes`] tells where it starts. A length
/// field that cannot be a batch's is an error, after which iteration ends.
pub struct WholeBatches {
    records: Bytes,
    at: usize,
    failed: bool,
}

impl WholeBatches {
    pub fn new(records: Bytes) -> Self {
        Self {
            records,
            at: 0,
            failed: false,
        }
    }

    /// Bytes of the whole batches yielded so far.
    pub fn consumed_bytes(&self) -> usize {
        self.at
    }

    /// Bytes after the whole batches yielded so far (a partial batch once iteration ended).
    pub fn remaining_bytes(&self) -> usize {
        self.records.len() - self.at
    }
}

impl Iterator for WholeBatches {
    type Item = Result<Bytes, FramingError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let rest = &self.records[self.at..];
        let batch_bytes = match batch_bytes_at(rest, self.at) {
            Ok(Some(batch_bytes)) if batch_bytes <= rest.len() => batch_bytes,
            Ok(_) => return None,
            Err(error) => {
                self.failed = true;
                return Some(Err(error));
            }
        };
        let batch = self.records.slice(self.at..self.at + batch_bytes);
        self.at += batch_bytes;
        Some(Ok(batch))
    }
}

fn read_i16(bytes: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn read_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn read_i64(bytes: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_batch(total_bytes: usize, fill: u8) -> Vec<u8> {
        let mut batch = vec![fill; total_bytes];
        batch[8..12].copy_from_slice(&((total_bytes - LOG_OVERHEAD_BYTES) as i32).to_be_bytes());
        batch
    }

    #[test]
    fn splits_back_to_back_batches_without_copying() {
        let mut records = fake_batch(70, 1);
        records.extend(fake_batch(100, 2));
        let records = Bytes::from(records);
        let batches = split_batches(&records, 1000).unwrap();
        assert_eq!(
            batches.iter().map(Bytes::len).collect::<Vec<_>>(),
            vec![70, 100]
        );
        assert_eq!(
            batches[1].as_ptr(),
            records[70..].as_ptr(),
            "a slice of the request, not a copy"
        );
    }

    #[test]
    fn broken_framing_is_refused() {
        let mut truncated = fake_batch(70, 1);
        truncated.truncate(69);
        assert!(matches!(
            split_batches(&Bytes::from(truncated), 1000),
            Err(FramingError::Truncated { at: 0, .. })
        ));
        let mut negative = fake_batch(70, 1);
        negative[8..12].copy_from_slice(&(-5_i32).to_be_bytes());
        assert_eq!(
            split_batches(&Bytes::from(negative), 1000),
            Err(FramingError::NegativeLength {
                at: 0,
                batch_length: -5
            })
        );
        assert!(matches!(
            split_batches(&Bytes::from(vec![0_u8; 11]), 1000),
            Err(FramingError::Truncated { .. })
        ));
        assert!(matches!(
            split_batches(&Bytes::from(vec![0_u8; 12]), 1000),
            Err(FramingError::ShorterThanHeader {
                batch_bytes: 12,
                ..
            })
        ));
        assert_eq!(split_batches(&Bytes::new(), 1000), Err(FramingError::Empty));
    }

    #[test]
    fn a_batch_above_the_limit_is_too_large() {
        let mut records = fake_batch(70, 1);
        records.extend(fake_batch(2000, 2));
        assert_eq!(
            split_batches(&Bytes::from(records), 1000),
            Err(FramingError::TooLarge {
                at: 70,
                batch_bytes: 2000,
                max_bytes: 1000
            })
        );
    }

    #[test]
    fn fetched_records_yield_whole_batches_and_stop_before_a_partial_one() {
        let mut records = fake_batch(70, 1);
        records.extend(fake_batch(100, 2));
        records.extend(&fake_batch(80, 3)[..50]);
        let mut batches = WholeBatches::new(Bytes::from(records));
        assert_eq!(batches.next().unwrap().unwrap().len(), 70);
        assert_eq!(batches.next().unwrap().unwrap().len(), 100);
        assert!(batches.next().is_none());
        assert_eq!(
            (batches.consumed_bytes(), batches.remaining_bytes()),
            (170, 50)
        );
        // Fewer bytes than a length field: nothing, and no error.
        let mut tiny = WholeBatches::new(Bytes::from(vec![0_u8; 11]));
        assert!(tiny.next().is_none());
    }

    #[test]
    fn a_fetched_length_that_cannot_be_a_batch_is_an_error_then_the_end() {
        let mut records = fake_batch(70, 1);
        let mut bad = fake_batch(70, 2);
        bad[8..12].copy_from_slice(&(-1_i32).to_be_bytes());
        records.extend(bad);
        let mut batches = WholeBatches::new(Bytes::from(records));
        assert!(batches.next().unwrap().is_ok());
        assert_eq!(
            batches.next().unwrap(),
            Err(FramingError::NegativeLength {
                at: 70,
                batch_length: -1
            })
        );
        assert!(batches.next().is_none());
    }

    #[test]
    fn header_fields_are_read_at_their_offsets() {
        let mut bytes = vec![0_u8; BATCH_HEADER_BYTES];
        bytes[..8].copy_from_slice(&41_i64.to_be_bytes());
        bytes[BATCH_LENGTH_OFFSET..BATCH_LENGTH_OFFSET + 4]
            .copy_from_slice(&(BATCH_LENGTH_MIN as i32).to_be_bytes());
        bytes[MAGIC_OFFSET] = 2;
        bytes[ATTRIBUTES_OFFSET + 1] = 0x23; // lz4, control
        bytes[LAST_OFFSET_DELTA_OFFSET..LAST_OFFSET_DELTA_OFFSET + 4]
            .copy_from_slice(&2_i32.to_be_bytes());
        bytes[RECORD_COUNT_OFFSET..].copy_from_slice(&3_i32.to_be_bytes());
        let header = BatchHeader::parse(&bytes).unwrap();
        assert_eq!(
            (header.base_offset, header.magic, header.record_count),
            (41, 2, 3)
        );
        assert_eq!(header.last_offset(), 43);
        assert_eq!(header.total_bytes(), BATCH_HEADER_BYTES);
        assert!(header.is_compressed() && header.is_control());
        assert!(BatchHeader::parse(&bytes[..60]).is_none());
    }
}
