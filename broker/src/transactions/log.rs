//! The records of `__transaction_state`, in Kafka's `TransactionLog` format (key version
//! 0, value version 0), drawn in storage/FORMAT.md § Transaction state log:
//!
//! ```text
//! key   = version:i16 (0) transactional_id:string(i16 length)
//! value = version:i16 (0) producer_id:i64 producer_epoch:i16 timeout_ms:i32 state:i8
//!         partitions:i32 count (-1 null) of { topic:string(i16) count:i32 partition:i32... }
//!         last_update_ms:i64 start_ms:i64
//! ```
//!
//! A null value (tombstone) forgets the id. Decoding never trusts lengths: a record that
//! does not parse is an error the coordinator reports (and stops serving the partition),
//! never a panic.

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};

use crate::metadata::TopicPartition;
use crate::records::next_record;
use crate::storage::batch::{build, BatchHeader, BATCH_HEADER_BYTES};
use crate::transactions::state::{TxnMetadata, TxnState, NO_PRODUCER_EPOCH, NO_PRODUCER_ID};

const KEY_VERSION: i16 = 0;
const VALUE_VERSION: i16 = 0;

/// One record: the id and its metadata, or `None` to forget it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRecord {
    pub transactional_id: String,
    pub metadata: Option<TxnMetadata>,
}

fn put_string(out: &mut BytesMut, value: &str) {
    let length = i16::try_from(value.len()).expect("ids and topic names are bounded to i16");
    out.put_i16(length);
    out.put_slice(value.as_bytes());
}

pub fn encode_key(transactional_id: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + transactional_id.len());
    out.put_i16(KEY_VERSION);
    put_string(&mut out, transactional_id);
    out.freeze()
}

pub fn encode_value(metadata: &TxnMetadata) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_i16(VALUE_VERSION);
    out.put_i64(metadata.producer_id);
    out.put_i16(metadata.producer_epoch);
    out.put_i32(metadata.timeout_ms);
    out.put_i8(metadata.state.id());
    let mut by_topic: Vec<(&str, Vec<i32>)> = Vec::new();
    for tp in &metadata.partitions {
        match by_topic.last_mut() {
            Some((topic, partitions)) if *topic == &*tp.topic => partitions.push(tp.partition),
            _ => by_topic.push((&tp.topic, vec![tp.partition])),
        }
    }
    out.put_i32(i32::try_from(by_topic.len()).expect("bounded by TXN_PARTITIONS_MAX"));
    for (topic, partitions) in by_topic {
        put_string(&mut out, topic);
        out.put_i32(i32::try_from(partitions.len()).expect("bounded by TXN_PARTITIONS_MAX"));
        for partition in partitions {
            out.put_i32(partition);
        }
    }
    out.put_i64(metadata.update_ms);
    out.put_i64(metadata.start_ms);
    out.freeze()
}

/// Reads big-endian fields off a slice; every read is checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| "record ends early".to_string())?;
        self.0 = rest;
        Ok(*head)
    }
    fn i8(&mut self) -> Result<i8, String> {
        self.take::<1>().map(i8::from_be_bytes)
    }
    fn i16(&mut self) -> Result<i16, String> {
        self.take::<2>().map(i16::from_be_bytes)
    }
    fn i32(&mut self) -> Result<i32, String> {
        self.take::<4>().map(i32::from_be_bytes)
    }
    fn i64(&mut self) -> Result<i64, String> {
        self.take::<8>().map(i64::from_be_bytes)
    }
    fn string(&mut self) -> Result<String, String> {
        let length = usize::try_from(self.i16()?).map_err(|_| "negative string length")?;
        let bytes = self
            .0
            .get(..length)
            .ok_or("string longer than the record")?;
        self.0 = &self.0[length..];
        String::from_utf8(bytes.to_vec()).map_err(|_| "string is not UTF-8".to_string())
    }
    /// An array count, checked against the bytes left (each element at least `min_bytes`).
    fn count(&mut self, min_bytes: usize) -> Result<usize, String> {
        let count = self.i32()?;
        let count = usize::try_from(count).map_err(|_| "negative count")?;
        if count.saturating_mul(min_bytes) > self.0.len() {
            return Err("count larger than the record".into());
        }
        Ok(count)
    }
}

pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<TxnRecord, String> {
    let mut key = Reader(key);
    let version = key.i16()?;
    if version != KEY_VERSION {
        return Err(format!("unknown key version {version}"));
    }
    let transactional_id = key.string()?;
    let Some(value) = value else {
        return Ok(TxnRecord {
            transactional_id,
            metadata: None,
        });
    };
    let mut value = Reader(value);
    let version = value.i16()?;
    if version != VALUE_VERSION {
        return Err(format!("unknown value version {version}"));
    }
    let producer_id = value.i64()?;
    let producer_epoch = value.i16()?;
    let timeout_ms = value.i32()?;
    let state_id = value.i8()?;
    let state = TxnState::from_id(state_id).ok_or(format!("unknown state {state_id}"))?;
    let mut partitions = BTreeSet::new();
    let topics = value.count(6)?;
    for _ in 0..topics {
        let topic: std::sync::Arc<str> = value.string()?.into();
        let count = value.count(4)?;
        for _ in 0..count {
            partitions.insert(TopicPartition {
                topic: topic.clone(),
                partition: value.i32()?,
            });
        }
    }
    let update_ms = value.i64()?;
    let start_ms = value.i64()?;
    Ok(TxnRecord {
        transactional_id,
        metadata: Some(TxnMetadata {
            producer_id,
            last_producer_id: NO_PRODUCER_ID,
            producer_epoch,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            timeout_ms,
            state,
            partitions,
            start_ms,
            update_ms,
        }),
    })
}

/// One batch of one record (each transition is its own append).
pub fn encode_batch(record: &TxnRecord, timestamp_ms: i64) -> Bytes {
    let key = encode_key(&record.transactional_id);
    let value = record.metadata.as_ref().map(encode_value);
    build::batch(&[build::Record {
        key: Some(&key),
        value: value.as_deref(),
        timestamp_ms,
    }])
}

/// Every record of one stored batch, in order. Control batches (none are written here,
/// but a marker could only ever be skipped) yield nothing. A compressed batch or a record
/// that does not parse is an error: this log holds only what the coordinator wrote.
pub fn decode_batch(stored: &[u8]) -> Result<Vec<TxnRecord>, String> {
    let header = BatchHeader::parse(stored).ok_or("unparseable batch header")?;
    if header.is_control() {
        return Ok(Vec::new());
    }
    if header.is_compressed() {
        return Err("compressed batch in the transaction state log".into());
    }
    let mut rest = stored.get(BATCH_HEADER_BYTES..).unwrap_or_default();
    let mut records = Vec::new();
    for _ in 0..header.record_count {
        let (key, value) = next_record(&mut rest).ok_or("malformed record")?;
        records.push(decode(key, value)?);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn metadata(partitions: &[(&str, i32)]) -> TxnMetadata {
        TxnMetadata {
            producer_id: 42,
            last_producer_id: NO_PRODUCER_ID,
            producer_epoch: 7,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            timeout_ms: 60_000,
            state: TxnState::Ongoing,
            partitions: partitions
                .iter()
                .map(|(topic, partition)| TopicPartition {
                    topic: (*topic).into(),
                    partition: *partition,
                })
                .collect(),
            start_ms: 1000,
            update_ms: 2000,
        }
    }

    #[test]
    fn a_record_round_trips_through_a_batch() {
        let record = TxnRecord {
            transactional_id: "tx-1".into(),
            metadata: Some(metadata(&[("a", 0), ("a", 3), ("b", 1)])),
        };
        let batch = encode_batch(&record, 5);
        assert_eq!(decode_batch(&batch).unwrap(), vec![record]);
        let tombstone = TxnRecord {
            transactional_id: "tx-1".into(),
            metadata: None,
        };
        assert_eq!(
            decode_batch(&encode_batch(&tombstone, 5)).unwrap(),
            vec![tombstone]
        );
    }

    #[test]
    fn the_value_is_kafkas_layout() {
        let value = encode_value(&metadata(&[("t", 2)]));
        let expected: Vec<u8> = [
            &0_i16.to_be_bytes()[..],
            &42_i64.to_be_bytes(),
            &7_i16.to_be_bytes(),
            &60_000_i32.to_be_bytes(),
            &[1],
            &1_i32.to_be_bytes(),
            &1_i16.to_be_bytes(),
            b"t",
            &1_i32.to_be_bytes(),
            &2_i32.to_be_bytes(),
            &2000_i64.to_be_bytes(),
            &1000_i64.to_be_bytes(),
        ]
        .concat();
        assert_eq!(&value[..], &expected[..]);
    }

    proptest! {
        /// Damaged records are errors, never panics.
        #[test]
        fn garbage_never_panics(key in proptest::collection::vec(any::<u8>(), 0..40),
                                value in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode(&key, Some(&value));
            let _ = decode_batch(&value);
        }

        #[test]
        fn truncated_values_are_errors(cut in 0_usize..40) {
            let value = encode_value(&metadata(&[("topic", 1), ("topic", 2)]));
            let key = encode_key("id");
            prop_assume!(cut < value.len());
            prop_assert!(decode(&key, Some(&value[..cut])).is_err());
        }
    }
}
