//! The Kafka v2 `RecordBatch` format as the log holds it: validation and the one in-place
//! rewrite the log makes (baseOffset). The layout constants and the header reader come from
//! `ringfeed_protocol::batch`. Pure code: no IO, no async.
//!
//! Layout (big-endian, see `storage/FORMAT.md` § Record batch):
//! ```text
//!  0 baseOffset i64 | 8 batchLength i32 | 12 partitionLeaderEpoch i32 | 16 magic i8
//! 17 crc u32 (CRC32C of bytes 21..end) | 21 attributes i16 | 23 lastOffsetDelta i32
//! 27 baseTimestamp i64 | 35 maxTimestamp i64 | 43 producerId i64 | 51 producerEpoch i16
//! 53 baseSequence i32 | 57 recordCount i32 | 61 records ...
//! ```

use bytes::{Bytes, BytesMut};

// The layout and the header are the protocol crate's (one parser for storage, the broker
// and the clients); the checks below are what the log holds a batch to.
pub use ringfeed_protocol::batch::{
    BatchHeader, ATTRIBUTES_OFFSET, BASE_OFFSET_OFFSET, BASE_SEQUENCE_OFFSET,
    BASE_TIMESTAMP_OFFSET, BATCH_HEADER_BYTES, BATCH_LENGTH_MIN, BATCH_LENGTH_OFFSET,
    COMPRESSION_CODEC_MASK, CRC_OFFSET, LAST_OFFSET_DELTA_OFFSET, LOG_OVERHEAD_BYTES, MAGIC_OFFSET,
    MAGIC_V2, MAX_TIMESTAMP_OFFSET, PARTITION_LEADER_EPOCH_OFFSET, PRODUCER_EPOCH_OFFSET,
    PRODUCER_ID_OFFSET, RECORD_COUNT_OFFSET,
};

/// Why a batch was refused. Each kind maps to one Kafka error code in the broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The bytes cannot be a batch (length, magic or checksum): Kafka's `CORRUPT_MESSAGE`.
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// A well-formed batch whose contents break the format's rules: `INVALID_RECORD`.
    #[error("invalid record batch: {0}")]
    InvalidRecord(String),
    /// Larger than the partition's maximum batch size: `MESSAGE_TOO_LARGE`.
    #[error("record batch of {size_bytes} bytes exceeds the maximum of {max_bytes} bytes")]
    TooLarge { size_bytes: usize, max_bytes: usize },
}

/// Checks one batch the way the log accepts it from a producer: exactly one whole batch,
/// magic 2, the CRC32C, the size limit, and record count against lastOffsetDelta. For
/// uncompressed batches the records are walked too (lengths and offset deltas), so a batch
/// whose header lies about its contents is refused before it reaches the disk.
pub fn validate(batch: &[u8], batch_bytes_max: usize) -> Result<BatchHeader, BatchError> {
    let header = validate_framing(batch, batch_bytes_max)?;
    if header.record_count <= 0 {
        return Err(BatchError::InvalidRecord(format!(
            "record count {} must be positive",
            header.record_count
        )));
    }
    if i64::from(header.last_offset_delta) != i64::from(header.record_count) - 1 {
        return Err(BatchError::InvalidRecord(format!(
            "lastOffsetDelta {} does not match record count {}",
            header.last_offset_delta, header.record_count
        )));
    }
    if !header.is_compressed() {
        check_uncompressed_records(&batch[BATCH_HEADER_BYTES..], header.record_count)?;
    }
    Ok(header)
}

/// Checks a batch as a compacted log may hold it (a Raft follower's copy of its leader's
/// entry, `FORMAT.md` § Log cleaner): like [`validate`], except that it may hold fewer
/// records than its offsets (none at all), each uncompressed record's offsetDelta rising
/// within `0..=lastOffsetDelta`.
pub fn validate_compacted(batch: &[u8], batch_bytes_max: usize) -> Result<BatchHeader, BatchError> {
    let header = validate_framing(batch, batch_bytes_max)?;
    if header.last_offset_delta < 0
        || header.record_count < 0
        || i64::from(header.record_count) > i64::from(header.last_offset_delta) + 1
    {
        return Err(BatchError::InvalidRecord(format!(
            "record count {} does not fit lastOffsetDelta {}",
            header.record_count, header.last_offset_delta
        )));
    }
    if !header.is_compressed() {
        check_compacted_records(
            &batch[BATCH_HEADER_BYTES..],
            header.record_count,
            header.last_offset_delta,
        )?;
    }
    Ok(header)
}

/// Walks the uncompressed records of a compacted batch: lengths fit, offsetDeltas rise
/// within `0..=last_offset_delta`, the records fill the batch exactly.
fn check_compacted_records(
    records: &[u8],
    record_count: i32,
    last_offset_delta: i32,
) -> Result<(), BatchError> {
    walk_records(records, record_count, |_, previous, offset_delta| {
        offset_delta > previous && offset_delta <= i64::from(last_offset_delta)
    })
}

/// The checks every stored batch passes: exactly one whole batch, magic 2, the CRC32C, the
/// size limit.
fn validate_framing(batch: &[u8], batch_bytes_max: usize) -> Result<BatchHeader, BatchError> {
    if batch.len() > batch_bytes_max {
        return Err(BatchError::TooLarge {
            size_bytes: batch.len(),
            max_bytes: batch_bytes_max,
        });
    }
    let header = BatchHeader::parse(batch).ok_or_else(|| {
        BatchError::Corrupt(format!(
            "{} bytes is shorter than a batch header",
            batch.len()
        ))
    })?;
    if header.batch_length < BATCH_LENGTH_MIN as i32 || header.total_bytes() != batch.len() {
        return Err(BatchError::Corrupt(format!(
            "batchLength {} does not match the {} bytes given",
            header.batch_length,
            batch.len()
        )));
    }
    if header.magic != MAGIC_V2 {
        return Err(BatchError::Corrupt(format!(
            "magic {} is not 2",
            header.magic
        )));
    }
    let computed_crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    if computed_crc != header.crc {
        return Err(BatchError::Corrupt(format!(
            "CRC32C mismatch: batch says {:#010x}, bytes give {computed_crc:#010x}",
            header.crc
        )));
    }
    Ok(header)
}

/// Walks uncompressed records: each length must fit, each offsetDelta must be its index,
/// and the records must fill the batch exactly.
pub fn check_uncompressed_records(records: &[u8], record_count: i32) -> Result<(), BatchError> {
    walk_records(records, record_count, |index, _, offset_delta| {
        offset_delta == i64::from(index)
    })
}

/// The walk both record checks share: each record's length must fit, its offsetDelta must
/// satisfy `in_order(index, previous offsetDelta (-1 first), offsetDelta)`, and the records
/// must fill the batch exactly.
fn walk_records(
    mut records: &[u8],
    record_count: i32,
    in_order: impl Fn(i32, i64, i64) -> bool,
) -> Result<(), BatchError> {
    let mut previous = -1;
    for index in 0..record_count {
        let invalid = |what: &str| BatchError::InvalidRecord(format!("record {index}: {what}"));
        let length = read_varint(&mut records).ok_or_else(|| invalid("bad length varint"))?;
        if length < 0 || length as usize > records.len() {
            return Err(invalid("length runs past the batch"));
        }
        let (mut record, rest) = records.split_at(length as usize);
        records = rest;
        record = record.get(1..).ok_or_else(|| invalid("empty record"))?; // attributes
        read_varint(&mut record).ok_or_else(|| invalid("bad timestampDelta"))?;
        let offset_delta = read_varint(&mut record).ok_or_else(|| invalid("bad offsetDelta"))?;
        if !in_order(index, previous, offset_delta) {
            return Err(invalid("offsetDelta out of sequence"));
        }
        previous = offset_delta;
    }
    if !records.is_empty() {
        return Err(BatchError::InvalidRecord(format!(
            "{} bytes after the last of {record_count} records",
            records.len()
        )));
    }
    Ok(())
}

/// Walks uncompressed records and returns the offset delta and timestamp of the first record
/// whose timestamp is at least `timestamp_ms`. `None` when the batch is compressed (its
/// records are not readable without the codec) or no record qualifies.
pub fn first_at_or_after(batch: &[u8], timestamp_ms: i64) -> Option<(i32, i64)> {
    record_timestamps(batch)?.find(|&(_, timestamp)| timestamp >= timestamp_ms)
}

/// The offset delta and timestamp of each record of an uncompressed batch, in order. `None`
/// when the batch is compressed (its records are not readable without the codec). The walk
/// ends early, without error, at a record that does not parse: stored batches passed
/// [`validate`], so that is damage, and time lookups skip what they cannot read.
pub fn record_timestamps(batch: &[u8]) -> Option<RecordTimestamps<'_>> {
    let header = BatchHeader::parse(batch)?;
    if header.is_compressed() {
        return None;
    }
    Some(RecordTimestamps {
        base_timestamp: header.base_timestamp,
        records: batch.get(BATCH_HEADER_BYTES..)?,
        records_left: header.record_count,
    })
}

/// See [`record_timestamps`].
pub struct RecordTimestamps<'a> {
    base_timestamp: i64,
    records: &'a [u8],
    records_left: i32,
}

impl RecordTimestamps<'_> {
    fn parse_next(&mut self) -> Option<(i32, i64)> {
        let length = usize::try_from(read_varint(&mut self.records)?).ok()?;
        let (record, rest) = (self.records.get(..length)?, self.records.get(length..)?);
        self.records = rest;
        let mut fields = record.get(1..)?; // attributes
        let timestamp_delta = read_varint(&mut fields)?;
        let offset_delta = i32::try_from(read_varint(&mut fields)?).ok()?;
        Some((
            offset_delta,
            self.base_timestamp.saturating_add(timestamp_delta),
        ))
    }
}

impl Iterator for RecordTimestamps<'_> {
    type Item = (i32, i64);

    fn next(&mut self) -> Option<(i32, i64)> {
        if self.records_left <= 0 {
            return None;
        }
        self.records_left -= 1;
        let parsed = self.parse_next();
        if parsed.is_none() {
            self.records_left = 0; // nothing after a record that does not parse is trusted
        }
        parsed
    }
}

/// Whether `bytes` is one whole v2 batch whose CRC32C matches its contents (the check a
/// stored batch is held to before it is served from disk).
pub fn is_intact(bytes: &[u8]) -> bool {
    BatchHeader::parse(bytes).is_some_and(|header| {
        header.magic == MAGIC_V2
            && header.batch_length >= BATCH_LENGTH_MIN as i32
            && header.total_bytes() == bytes.len()
            && crc32c::crc32c(&bytes[ATTRIBUTES_OFFSET..]) == header.crc
    })
}

/// Returns a copy of `batch` with baseOffset set to `base_offset`. baseOffset lies outside
/// the CRC, so the checksum the producer computed stays valid end to end.
pub fn with_base_offset(batch: &[u8], base_offset: i64) -> Bytes {
    let mut stored = BytesMut::with_capacity(batch.len());
    stored.extend_from_slice(&base_offset.to_be_bytes());
    stored.extend_from_slice(&batch[BASE_OFFSET_OFFSET + 8..]);
    stored.freeze()
}

/// The partitionLeaderEpoch field of a batch (or of its first 61 bytes); outside the CRC.
/// Where the log holds Raft entries it is the entry's term (`FORMAT.md` § Raft index and term).
pub fn partition_leader_epoch(batch: &[u8]) -> i32 {
    let field = &batch[PARTITION_LEADER_EPOCH_OFFSET..PARTITION_LEADER_EPOCH_OFFSET + 4];
    i32::from_be_bytes(field.try_into().expect("4 bytes"))
}

/// Returns a copy of `batch` with baseOffset and partitionLeaderEpoch set, as a Raft leader
/// stamps an entry. Both lie outside the CRC, so the producer's checksum stays valid.
pub fn stamped(batch: &[u8], base_offset: i64, partition_leader_epoch: i32) -> Bytes {
    let mut stored = BytesMut::with_capacity(batch.len());
    stored.extend_from_slice(&base_offset.to_be_bytes());
    stored.extend_from_slice(&batch[BATCH_LENGTH_OFFSET..PARTITION_LEADER_EPOCH_OFFSET]);
    stored.extend_from_slice(&partition_leader_epoch.to_be_bytes());
    stored.extend_from_slice(&batch[PARTITION_LEADER_EPOCH_OFFSET + 4..]);
    stored.freeze()
}

/// Reads a zigzag-encoded varint (up to 64 bits) and advances `bytes` past it.
pub fn read_varint(bytes: &mut &[u8]) -> Option<i64> {
    let mut value: u64 = 0;
    for (index, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            *bytes = &bytes[index + 1..];
            return Some((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    None
}

/// Builds valid uncompressed v2 batches from keys/values and timestamps, CRC filled in. Used
/// by tests and benchmarks, and by the broker's group coordinator to write committed offsets.
pub mod build {
    use super::{ATTRIBUTES_OFFSET, BATCH_HEADER_BYTES, CRC_OFFSET, LOG_OVERHEAD_BYTES, MAGIC_V2};
    use bytes::{BufMut, Bytes, BytesMut};

    /// One record to put in a batch.
    pub struct Record<'a> {
        pub key: Option<&'a [u8]>,
        pub value: Option<&'a [u8]>,
        pub timestamp_ms: i64,
    }

    /// Encodes `records` as one uncompressed v2 batch with baseOffset 0.
    pub fn batch(records: &[Record<'_>]) -> Bytes {
        assert!(!records.is_empty(), "a batch holds at least one record");
        let base_timestamp = records[0].timestamp_ms;
        let max_timestamp = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0);
        let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + records.len() * 32);
        out.put_i64(0); // baseOffset, assigned by the log
        out.put_i32(0); // batchLength, filled below
        out.put_i32(-1); // partitionLeaderEpoch
        out.put_i8(MAGIC_V2);
        out.put_u32(0); // crc, filled below
        out.put_i16(0); // attributes: no compression, create time
        out.put_i32(records.len() as i32 - 1);
        out.put_i64(base_timestamp);
        out.put_i64(max_timestamp);
        out.put_i64(-1); // producerId
        out.put_i16(-1); // producerEpoch
        out.put_i32(-1); // baseSequence
        out.put_i32(records.len() as i32);
        for (index, record) in records.iter().enumerate() {
            put_record(
                &mut out,
                record,
                index as i64,
                record.timestamp_ms - base_timestamp,
            );
        }
        let batch_length = (out.len() - LOG_OVERHEAD_BYTES) as i32;
        out[8..12].copy_from_slice(&batch_length.to_be_bytes());
        let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
        out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        out.freeze()
    }

    /// A batch of `count` records whose values are `value_bytes` long, for workloads.
    pub fn filler(count: usize, value_bytes: usize, timestamp_ms: i64) -> Bytes {
        let value = vec![0x5a_u8; value_bytes];
        let records: Vec<Record<'_>> = (0..count)
            .map(|_| Record {
                key: None,
                value: Some(&value),
                timestamp_ms,
            })
            .collect();
        batch(&records)
    }

    fn put_record(out: &mut BytesMut, record: &Record<'_>, offset_delta: i64, ts_delta: i64) {
        let mut body = BytesMut::new();
        body.put_i8(0); // attributes
        put_varint(&mut body, ts_delta);
        put_varint(&mut body, offset_delta);
        put_bytes(&mut body, record.key);
        put_bytes(&mut body, record.value);
        put_varint(&mut body, 0); // no headers
        put_varint(out, body.len() as i64);
        out.put_slice(&body);
    }

    fn put_bytes(out: &mut BytesMut, bytes: Option<&[u8]>) {
        match bytes {
            None => put_varint(out, -1),
            Some(bytes) => {
                put_varint(out, bytes.len() as i64);
                out.put_slice(bytes);
            }
        }
    }

    pub fn put_varint(out: &mut BytesMut, value: i64) {
        let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
        while zigzag >= 0x80 {
            out.put_u8((zigzag as u8) | 0x80);
            zigzag >>= 7;
        }
        out.put_u8(zigzag as u8);
    }
}

/// Control batches for the Raft entries that carry no records (`FORMAT.md` § Raft index and
/// term): one control record each, as Kafka's own Raft log stores them, so clients skip
/// them like transaction markers and no offset is hidden. Every field is a function of the
/// arguments (timestamps are -1, no producer): every replica that builds the batch for an
/// entry builds the same bytes.
pub mod control {
    use super::{build, read_varint, BatchHeader, BATCH_HEADER_BYTES, MAGIC_V2};
    use super::{ATTRIBUTES_OFFSET, CRC_OFFSET, LOG_OVERHEAD_BYTES};
    use bytes::{BufMut, Bytes, BytesMut};
    use ringfeed_protocol::batch::{CONTROL_FLAG, TRANSACTIONAL_FLAG};

    /// Kafka's `LeaderChange` control record type: the empty entry a new Raft leader appends.
    pub const LEADER_CHANGE: i16 = 2;
    /// Ringfeed's private control record type for a Raft configuration change; the value is
    /// the entry's `ConfChangeV2` (or `ConfChange`) bytes. Kafka uses 0-6; clients skip control
    /// batches whatever their type.
    pub const RAFT_CONF_CHANGE: i16 = 0x5246;
    /// As [`RAFT_CONF_CHANGE`], for a version-1 `ConfChange`.
    pub const RAFT_CONF_CHANGE_V1: i16 = 0x5247;

    /// Ringfeed's private control record type for a transaction marker the log cleaner
    /// removed (`FORMAT.md` § Log cleaner): the marker's batch stays (every batch does), its
    /// one record's type rewritten to this, so it ends nothing any more and readers skip it
    /// (an empty control batch would do too, but kafka-python's `read_committed` reader fails
    /// on one).
    pub const RETIRED_TXN_MARKER: i16 = 0x5248;

    /// Ringfeed's private control record type for `DeleteRecords` on a replicated partition:
    /// the value is the new log start offset (i64, big-endian). Every replica that applies
    /// the entry advances its log start there, so the records are gone from each and stay
    /// gone after a change of leader.
    pub const LOG_START: i16 = 0x5249;

    /// Kafka's `ControlRecordType.ABORT`: the marker that aborts a producer's transaction.
    pub const ABORT_MARKER: i16 = 0;
    /// Kafka's `ControlRecordType.COMMIT`.
    pub const COMMIT_MARKER: i16 = 1;

    /// A control batch of one record: key = (version 0, `control_type`), value = `value`.
    pub fn batch(control_type: i16, value: &[u8]) -> Bytes {
        build_one(
            ControlHeader {
                attributes: CONTROL_FLAG,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_ms: -1,
            },
            control_type,
            value,
        )
    }

    /// A transaction marker as Kafka writes it (`EndTransactionMarker`, `MemoryRecords.
    /// withEndTransactionMarker`): attributes transactional|control, the producer's id and
    /// epoch, base sequence -1, one record whose key is (version 0, type 0 abort / 1 commit)
    /// and whose value is (version i16 0, coordinator epoch i32).
    pub fn txn_marker(
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
        timestamp_ms: i64,
    ) -> Bytes {
        let mut value = BytesMut::with_capacity(6);
        value.put_i16(0);
        value.put_i32(coordinator_epoch);
        let control_type = if commit { COMMIT_MARKER } else { ABORT_MARKER };
        build_one(
            ControlHeader {
                attributes: CONTROL_FLAG | TRANSACTIONAL_FLAG,
                producer_id,
                producer_epoch,
                timestamp_ms,
            },
            control_type,
            &value,
        )
    }

    /// What a transaction marker says: (commit, coordinator epoch). `None` for any other
    /// batch, or a marker whose record is malformed (bytes from disk are never trusted).
    pub fn txn_marker_of(batch: &Bytes) -> Option<(bool, i32)> {
        let header = BatchHeader::parse(batch)?;
        if !header.is_transactional() {
            return None;
        }
        let (control_type, value) = record(batch)?;
        let commit = match control_type {
            COMMIT_MARKER => true,
            ABORT_MARKER => false,
            _ => return None,
        };
        let coordinator_epoch = i32::from_be_bytes(value.get(2..6)?.try_into().ok()?);
        Some((commit, coordinator_epoch))
    }

    /// The header fields a control batch sets; the rest are fixed.
    #[derive(Clone, Copy)]
    struct ControlHeader {
        attributes: i16,
        producer_id: i64,
        producer_epoch: i16,
        timestamp_ms: i64,
    }

    fn build_one(header: ControlHeader, control_type: i16, value: &[u8]) -> Bytes {
        let mut key = BytesMut::with_capacity(4);
        key.put_i16(0);
        key.put_i16(control_type);
        let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + value.len() + 16);
        out.put_i64(0); // baseOffset, assigned by the log
        out.put_i32(0); // batchLength, filled below
        out.put_i32(-1); // partitionLeaderEpoch, stamped by the log
        out.put_i8(MAGIC_V2);
        out.put_u32(0); // crc, filled below
        out.put_i16(header.attributes);
        out.put_i32(0); // lastOffsetDelta
        out.put_i64(header.timestamp_ms); // baseTimestamp
        out.put_i64(header.timestamp_ms); // maxTimestamp
        out.put_i64(header.producer_id);
        out.put_i16(header.producer_epoch);
        out.put_i32(-1); // baseSequence
        out.put_i32(1); // recordCount
        let mut body = BytesMut::new();
        body.put_i8(0); // record attributes
        build::put_varint(&mut body, 0); // timestampDelta
        build::put_varint(&mut body, 0); // offsetDelta
        build::put_varint(&mut body, key.len() as i64);
        body.put_slice(&key);
        build::put_varint(&mut body, value.len() as i64);
        body.put_slice(value);
        build::put_varint(&mut body, 0); // no headers
        build::put_varint(&mut out, body.len() as i64);
        out.put_slice(&body);
        let batch_length = (out.len() - LOG_OVERHEAD_BYTES) as i32;
        out[8..12].copy_from_slice(&batch_length.to_be_bytes());
        let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
        out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        out.freeze()
    }

    /// `batch` (a control batch of one record) with its record's type rewritten to
    /// `control_type` and its CRC32C recomputed; `None` if it is not of that shape.
    pub fn with_type(batch: &Bytes, control_type: i16) -> Option<Vec<u8>> {
        let header = BatchHeader::parse(batch)?;
        if !header.is_control() || header.record_count != 1 || header.is_compressed() {
            return None;
        }
        let mut rest = batch.get(BATCH_HEADER_BYTES..)?;
        let _length = read_varint(&mut rest)?;
        let (_attributes, tail) = rest.split_first()?;
        rest = tail;
        let _timestamp_delta = read_varint(&mut rest)?;
        let _offset_delta = read_varint(&mut rest)?;
        if read_varint(&mut rest)? < 4 {
            return None;
        }
        let type_at = batch.len() - rest.len() + 2;
        let mut out = batch.to_vec();
        out.get_mut(type_at..type_at + 2)?
            .copy_from_slice(&control_type.to_be_bytes());
        let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
        out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        Some(out)
    }

    /// The type and value of a control batch's single record; `None` for a data batch or a
    /// control batch of another shape. Reads only what [`batch`] writes; bytes from disk or
    /// the network are never trusted to be well formed.
    pub fn record(batch: &Bytes) -> Option<(i16, Bytes)> {
        let header = BatchHeader::parse(batch)?;
        if !header.is_control() || header.record_count != 1 || header.is_compressed() {
            return None;
        }
        let mut rest = batch.get(BATCH_HEADER_BYTES..)?;
        let _length = read_varint(&mut rest)?;
        let (_attributes, tail) = rest.split_first()?;
        rest = tail;
        let _timestamp_delta = read_varint(&mut rest)?;
        let _offset_delta = read_varint(&mut rest)?;
        let key_length = usize::try_from(read_varint(&mut rest)?).ok()?;
        let key = rest.get(..key_length)?;
        rest = &rest[key_length..];
        let control_type = i16::from_be_bytes(key.get(2..4)?.try_into().ok()?);
        let value_length = usize::try_from(read_varint(&mut rest)?).ok()?;
        let start = batch.len() - rest.len();
        let value = batch.slice(
            start
                ..start
                    .checked_add(value_length)
                    .filter(|&end| end <= batch.len())?,
        );
        Some((control_type, value))
    }
}

#[cfg(test)]
mod tests {
    use super::build::{batch, filler, Record};
    use super::*;

    #[test]
    fn control_batches_are_valid_deterministic_and_read_back() {
        let first = control::batch(control::RAFT_CONF_CHANGE, b"conf change bytes");
        assert_eq!(
            first,
            control::batch(control::RAFT_CONF_CHANGE, b"conf change bytes")
        );
        let header = validate(&first, 1 << 20).expect("a valid batch");
        assert!(header.is_control());
        assert_eq!(
            control::record(&first),
            Some((
                control::RAFT_CONF_CHANGE,
                Bytes::from_static(b"conf change bytes")
            ))
        );
        let empty = control::batch(control::LEADER_CHANGE, &[]);
        assert_eq!(
            control::record(&empty),
            Some((control::LEADER_CHANGE, Bytes::new()))
        );
        assert_eq!(control::record(&sample()), None, "a data batch");
        for cut in 0..first.len() {
            let _ = control::record(&first.slice(..cut)); // never panics
        }
    }

    /// Kafka's marker bytes: attributes 0x30, the producer's id and epoch, sequence -1, one
    /// record with key (0, type) and value (0, coordinator epoch).
    #[test]
    fn transaction_markers_have_kafka_s_layout_and_read_back() {
        let marker = control::txn_marker(42, 3, false, 7, 1_000);
        let header = validate(&marker, 1 << 20).expect("a valid batch");
        assert_eq!(header.attributes, 0x30);
        assert!(header.is_control() && header.is_transactional());
        assert_eq!((header.producer_id, header.producer_epoch), (42, 3));
        assert_eq!((header.base_sequence, header.record_count), (-1, 1));
        assert_eq!(
            (header.base_timestamp, header.max_timestamp),
            (1_000, 1_000)
        );
        let (control_type, value) = control::record(&marker).expect("one control record");
        assert_eq!(control_type, control::ABORT_MARKER);
        assert_eq!(&value[..], &[0, 0, 0, 0, 0, 7]);
        assert_eq!(control::txn_marker_of(&marker), Some((false, 7)));
        let commit = control::txn_marker(42, 3, true, -1, 0);
        assert_eq!(control::txn_marker_of(&commit), Some((true, -1)));
        assert_eq!(
            control::txn_marker_of(&control::batch(control::LEADER_CHANGE, &[])),
            None,
            "a Raft control batch is not a marker"
        );
        assert_eq!(control::txn_marker_of(&sample()), None);
        for cut in 0..marker.len() {
            let _ = control::txn_marker_of(&marker.slice(..cut)); // never panics
        }
    }

    fn sample() -> Bytes {
        batch(&[
            Record {
                key: Some(b"k1"),
                value: Some(b"v1"),
                timestamp_ms: 1000,
            },
            Record {
                key: None,
                value: Some(b"value-two"),
                timestamp_ms: 1005,
            },
            Record {
                key: Some(b"k3"),
                value: None,
                timestamp_ms: 1010,
            },
        ])
    }

    #[test]
    fn a_built_batch_validates_and_reports_its_header() {
        let bytes = sample();
        let header = validate(&bytes, 1 << 20).expect("valid");
        assert_eq!(header.record_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.max_timestamp, 1010);
        assert_eq!(header.total_bytes(), bytes.len());
    }

    #[test]
    fn every_bit_flip_from_the_length_field_on_is_refused() {
        let bytes = sample();
        for byte in BATCH_LENGTH_OFFSET..bytes.len() {
            if (PARTITION_LEADER_EPOCH_OFFSET..MAGIC_OFFSET).contains(&byte) {
                continue; // partitionLeaderEpoch lies outside the CRC, as in Kafka
            }
            let mut damaged = bytes.to_vec();
            damaged[byte] ^= 0x10;
            assert!(
                validate(&damaged, 1 << 20).is_err(),
                "flip at byte {byte} accepted"
            );
        }
    }

    #[test]
    fn length_mismatch_and_bad_magic_are_corrupt() {
        let bytes = sample();
        let short = &bytes[..bytes.len() - 1];
        assert!(matches!(
            validate(short, 1 << 20),
            Err(BatchError::Corrupt(_))
        ));
        let mut two = bytes.to_vec();
        two.extend_from_slice(&bytes);
        assert!(matches!(
            validate(&two, 1 << 20),
            Err(BatchError::Corrupt(_))
        ));
        let mut magic = bytes.to_vec();
        magic[MAGIC_OFFSET] = 1;
        assert!(matches!(
            validate(&magic, 1 << 20),
            Err(BatchError::Corrupt(_))
        ));
        assert!(matches!(
            validate(&bytes[..20], 1 << 20),
            Err(BatchError::Corrupt(_))
        ));
    }

    #[test]
    fn record_count_that_disagrees_with_last_offset_delta_is_invalid() {
        let mut bytes = sample().to_vec();
        bytes[RECORD_COUNT_OFFSET..RECORD_COUNT_OFFSET + 4].copy_from_slice(&4_i32.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[ATTRIBUTES_OFFSET..]);
        bytes[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate(&bytes, 1 << 20),
            Err(BatchError::InvalidRecord(_))
        ));
    }

    #[test]
    fn oversized_batch_is_too_large() {
        let bytes = filler(10, 200, 0);
        let max = bytes.len() - 1;
        assert_eq!(
            validate(&bytes, max),
            Err(BatchError::TooLarge {
                size_bytes: bytes.len(),
                max_bytes: max
            })
        );
    }

    #[test]
    fn rewriting_base_offset_keeps_the_crc_valid() {
        let stored = with_base_offset(&sample(), 41);
        let header = validate(&stored, 1 << 20).expect("still valid");
        assert_eq!(header.base_offset, 41);
        assert_eq!(header.last_offset(), 43);
    }

    #[test]
    fn time_lookup_finds_the_first_record_at_or_after() {
        let bytes = sample();
        assert_eq!(first_at_or_after(&bytes, 0), Some((0, 1000)));
        assert_eq!(first_at_or_after(&bytes, 1001), Some((1, 1005)));
        assert_eq!(first_at_or_after(&bytes, 1010), Some((2, 1010)));
        assert_eq!(first_at_or_after(&bytes, 1011), None);
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for value in [
            0,
            1,
            -1,
            63,
            -64,
            64,
            300,
            i64::from(i32::MAX),
            i64::MIN,
            i64::MAX,
        ] {
            let mut out = BytesMut::new();
            build::put_varint(&mut out, value);
            let mut slice = &out[..];
            assert_eq!(read_varint(&mut slice), Some(value));
            assert!(slice.is_empty());
        }
        let mut unterminated: &[u8] = &[0x80; 11];
        assert_eq!(read_varint(&mut unterminated), None);
    }
}
