//! Kafka v2 record-batch framing as the broker needs it: split a produce `records` field
//! into whole batches without copying, and check each batch's size before it is routed.
//! Content checks (magic, CRC32C, record counts) are the storage crate's job on append.

use bytes::Bytes;

use crate::error_codes as codes;

/// baseOffset (8) + batchLength (4): `batchLength` counts the bytes after these twelve.
pub const BATCH_LENGTH_PREFIX_BYTES: usize = 12;
/// The fixed v2 batch header, up to and including the record count.
pub const BATCH_HEADER_BYTES: usize = 61;
const _: () = assert!(BATCH_HEADER_BYTES > BATCH_LENGTH_PREFIX_BYTES);

/// Splits `records` into whole batches (zero-copy slices). Errors are the Kafka code to put
/// on the partition: `CORRUPT_MESSAGE` for broken framing, `MESSAGE_TOO_LARGE` for a batch above
/// `batch_bytes_max` (the topic's `max.message.bytes`).
pub fn split_batches(records: &Bytes, batch_bytes_max: usize) -> Result<Vec<Bytes>, i16> {
    if records.is_empty() {
        return Err(codes::CORRUPT_MESSAGE);
    }
    let mut batches = Vec::new();
    let mut at = 0;
    while at < records.len() {
        let rest = &records[at..];
        let Some(length_field) = rest.get(8..BATCH_LENGTH_PREFIX_BYTES) else {
            return Err(codes::CORRUPT_MESSAGE);
        };
        let batch_length = i32::from_be_bytes(length_field.try_into().expect("four bytes"));
        let Ok(batch_length) = usize::try_from(batch_length) else {
            return Err(codes::CORRUPT_MESSAGE);
        };
        let batch_bytes = BATCH_LENGTH_PREFIX_BYTES + batch_length;
        if batch_bytes < BATCH_HEADER_BYTES || batch_bytes > rest.len() {
            return Err(codes::CORRUPT_MESSAGE);
        }
        if batch_bytes > batch_bytes_max {
            return Err(codes::MESSAGE_TOO_LARGE);
        }
        batches.push(records.slice(at..at + batch_bytes));
        at += batch_bytes;
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_batch(total_bytes: usize, fill: u8) -> Vec<u8> {
        let mut batch = vec![fill; total_bytes];
        batch[8..12]
            .copy_from_slice(&((total_bytes - BATCH_LENGTH_PREFIX_BYTES) as i32).to_be_bytes());
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
