//! Record-batch framing as the broker answers it: a produce `records` field split into
//! whole batches (`ringfeed_protocol::batch`, zero-copy), each framing failure turned into
//! the Kafka code put on the partition. Content checks (magic, CRC32C, record counts) are
//! the storage crate's job on append.

use bytes::Bytes;
use ringfeed_protocol::batch::{self, FramingError};

use crate::error_codes as codes;
use crate::storage::batch as storage_batch;

/// Splits `records` into whole batches (zero-copy slices). Errors are the Kafka code to put
/// on the partition: `CORRUPT_MESSAGE` for broken framing, `MESSAGE_TOO_LARGE` for a batch above
/// `batch_bytes_max` (the topic's `max.message.bytes`).
pub fn split_batches(records: &Bytes, batch_bytes_max: usize) -> Result<Vec<Bytes>, i16> {
    batch::split_batches(records, batch_bytes_max).map_err(|error| framing_error_code(&error))
}

/// The partition error code of a framing failure.
pub fn framing_error_code(error: &FramingError) -> i16 {
    match error {
        FramingError::TooLarge { .. } => codes::MESSAGE_TOO_LARGE,
        FramingError::Empty
        | FramingError::NegativeLength { .. }
        | FramingError::ShorterThanHeader { .. }
        | FramingError::Truncated { .. } => codes::CORRUPT_MESSAGE,
    }
}

/// Splits the next record of an uncompressed batch's records section off `rest`: its key
/// and value (`None` = null). `None` when the record is malformed. Used by the coordinators
/// that read their own logs (`__consumer_offsets`, `__transaction_state`).
pub fn next_record<'a>(rest: &mut &'a [u8]) -> Option<(&'a [u8], Option<&'a [u8]>)> {
    let length = usize::try_from(storage_batch::read_varint(rest)?).ok()?;
    let record = rest.get(..length)?;
    *rest = rest.get(length..)?;
    let mut fields = record.get(1..)?; // attributes
    storage_batch::read_varint(&mut fields)?; // timestamp delta
    storage_batch::read_varint(&mut fields)?; // offset delta
    let key = take_varint_bytes(&mut fields)??;
    let value = take_varint_bytes(&mut fields)?;
    Some((key, value))
}

/// A varint-length-prefixed field: `Some(None)` for length -1 (null).
// The two levels mean different things: outer `None` is a malformed record, inner a null.
#[allow(clippy::option_option)]
fn take_varint_bytes<'a>(fields: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let length = storage_batch::read_varint(fields)?;
    if length < 0 {
        return Some(None);
    }
    let length = usize::try_from(length).ok()?;
    let bytes = fields.get(..length)?;
    *fields = fields.get(length..)?;
    Some(Some(bytes))
}

/// The splitting itself is tested in `ringfeed_protocol::batch`; these check the codes.
#[cfg(test)]
mod tests {
    use super::*;
    use ringfeed_protocol::batch::LOG_OVERHEAD_BYTES;

    fn fake_batch(total_bytes: usize, fill: u8) -> Vec<u8> {
        let mut batch = vec![fill; total_bytes];
        batch[8..12].copy_from_slice(&((total_bytes - LOG_OVERHEAD_BYTES) as i32).to_be_bytes());
        batch
    }

    #[test]
    fn broken_framing_is_corrupt_message() {
        let mut truncated = fake_batch(70, 1);
        truncated.truncate(69);
        assert_eq!(
            split_batches(&Bytes::from(truncated), 1000),
            Err(codes::CORRUPT_MESSAGE)
        );
        let mut negative = fake_batch(70, 1);
        negative[8..12].copy_from_slice(&(-5_i32).to_be_bytes());
        assert_eq!(
            split_batches(&Bytes::from(negative), 1000),
            Err(codes::CORRUPT_MESSAGE)
        );
        assert_eq!(
            split_batches(&Bytes::from(vec![0_u8; 11]), 1000),
            Err(codes::CORRUPT_MESSAGE)
        );
        assert_eq!(
            split_batches(&Bytes::new(), 1000),
            Err(codes::CORRUPT_MESSAGE)
        );
    }

    #[test]
    fn a_batch_above_the_limit_is_message_too_large() {
        let mut records = fake_batch(70, 1);
        records.extend(fake_batch(2000, 2));
        assert_eq!(
            split_batches(&Bytes::from(records), 1000),
            Err(codes::MESSAGE_TOO_LARGE)
        );
    }
}
