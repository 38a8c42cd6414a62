//! Message format v0/v1 (magic 0 and 1) for the old request versions, as Kafka converts:
//!
//! - [`up_convert`]: a Produce v0-2 `MessageSet` becomes one v2 record batch before the
//!   normal produce path (offsets are then assigned by the partition). Keys, values, null
//!   values and timestamps are kept (magic 0 has none: -1, Kafka's `NO_TIMESTAMP`; a magic 1
//!   `LogAppendTime` wrapper's inner messages take the wrapper's timestamp, as Kafka reads
//!   them). A set with compressed wrapper messages (gzip, snappy, lz4) becomes a batch in that
//!   codec (the first wrapper's; Kafka clients never mix codecs in one set). The batch is
//!   `CreateTime`: the topic's `message.timestamp.type` applies as to any v2 batch.
//! - [`down_convert`]: the v2 batches read for a Fetch v0-3 become one `MessageSet` of the
//!   request's magic (v0-1: magic 0, v2-3: magic 1) with every message's absolute offset and
//!   (magic 1) its timestamp and timestamp type. Written **uncompressed** whatever the batch's
//!   codec: the converted set is bounded by the fetch's `max_bytes` message by message, which
//!   a compressed wrapper would not allow without compressing first and measuring after;
//!   old fetchers pay the decompression, never a recompression. Control batches are skipped
//!   (a v0/v1 consumer cannot read them). v2 record headers have no place in v0/v1: dropped,
//!   as Kafka drops them.
//!
//! Refusals, as Kafka's `LogValidator` answers them: broken framing, bad CRCs and codecs it
//! cannot read are `CORRUPT_MESSAGE`; a wrapper whose inner messages lie (nested compression,
//! a magic other than the wrapper's, magic 1 relative offsets other than 0, 1, 2, ...) is
//! `INVALID_RECORD`; zstd below magic 2 is `UNSUPPORTED_COMPRESSION_TYPE` (KIP-110).
//!
//! Memory: the decompressed inner sets of one produce set are at most
//! [`DECOMPRESSED_RECORDS_BYTES_MAX`] together; a down-converted set is at most the fetch's
//! partition `max_bytes` plus one message (KIP-74 for v3), and one decompressed batch.
//! Only old-version requests reach this module: v3+/v4+ requests never pay for it.

use bytes::Bytes;
use ringfeed_protocol::batch::{BatchHeader, BATCH_HEADER_BYTES, COMPRESSION_CODEC_MASK};
use ringfeed_protocol::message_set::{
    self, Message, MessageSetError, MessageSetReader, TIMESTAMP_TYPE_LOG_APPEND,
};
use ringfeed_storage::batch::{build, read_varint};

use crate::error_codes as codes;
use crate::recompress::{self, Codec, DECOMPRESSED_RECORDS_BYTES_MAX};

/// The attributes bit of a `LogAppendTime` v2 batch (the same bit as magic 1's).
const BATCH_LOG_APPEND_TIME: i16 = 0x08;

/// The magic a Fetch version answers with (Kafka's `FetchResponse` rules): v0-1 predate
/// timestamps (KIP-32), v2-3 are magic 1; v4+ read v2 batches and are not converted.
pub fn fetch_magic(fetch_version: i16) -> Option<i8> {
    match fetch_version {
        0..=1 => Some(0),
        2..=3 => Some(1),
        _ => None,
    }
}

fn set_error_code(error: &MessageSetError) -> i16 {
    match error {
        MessageSetError::Truncated { .. }
        | MessageSetError::BadSize { .. }
        | MessageSetError::BadMagic { .. }
        | MessageSetError::Crc { .. }
        | MessageSetError::BadLength { .. } => codes::CORRUPT_MESSAGE,
    }
}

/// The codec of a wrapper message, or the refusal of one this format cannot carry.
fn wrapper_codec(message: &Message<'_>) -> Result<Codec, i16> {
    match message.codec() {
        0 => Ok(Codec::None),
        1 => Ok(Codec::Gzip),
        2 => Ok(Codec::Snappy),
        3 => Ok(Codec::Lz4),
        4 => Err(codes::UNSUPPORTED_COMPRESSION_TYPE),
        _ => Err(codes::CORRUPT_MESSAGE),
    }
}

/// One Produce v0-2 partition's `records` as one v2 batch (see the module docs). The error
/// is the Kafka code for the whole partition. `batch_bytes_max` is the topic's
/// `max.message.bytes`, checked against the set as sent.
pub fn up_convert(records: &[u8], batch_bytes_max: usize) -> Result<Bytes, i16> {
    up_convert_bounded(records, batch_bytes_max, DECOMPRESSED_RECORDS_BYTES_MAX)
}

/// [`up_convert`] with the decompressed bytes of all wrappers bounded by `decompressed_max`.
fn up_convert_bounded(
    records: &[u8],
    batch_bytes_max: usize,
    decompressed_max: usize,
) -> Result<Bytes, i16> {
    if records.is_empty() {
        return Err(codes::CORRUPT_MESSAGE);
    }
    if records.len() > batch_bytes_max {
        return Err(codes::MESSAGE_TOO_LARGE);
    }
    // First pass: check every outer message (framing and CRC, once) and decompress the
    // wrappers' inner sets, so the second can borrow keys and values from them.
    let mut outer: Vec<Message<'_>> = Vec::new();
    let mut inner_sets: Vec<Vec<u8>> = Vec::new();
    let mut decompressed_bytes = 0;
    let mut target = Codec::None;
    for message in MessageSetReader::new(records) {
        let message = message.map_err(|error| set_error_code(&error))?;
        outer.push(message);
        let codec = wrapper_codec(&message)?;
        if codec == Codec::None {
            continue;
        }
        if target == Codec::None {
            target = codec;
        }
        let value = message.value.ok_or(codes::CORRUPT_MESSAGE)?;
        let mut inner = Vec::new();
        let limit = decompressed_max - decompressed_bytes;
        let fixed;
        let value = if codec == Codec::Lz4 && message.magic == 0 {
            fixed = with_lz4_header_checksum_fixed(value);
            &fixed[..]
        } else {
            value
        };
        recompress::decompress_section(codec, value, limit, &mut inner)?;
        decompressed_bytes += inner.len();
        inner_sets.push(inner);
    }
    let mut converted: Vec<build::Record<'_>> = Vec::new();
    let mut inner_sets = inner_sets.iter();
    for message in &outer {
        if message.codec() == 0 {
            converted.push(record_of(message, message.timestamp));
            continue;
        }
        let inner_set = inner_sets.next().expect("one inner set per wrapper");
        let mut inner_count = 0;
        for inner in MessageSetReader::new(inner_set) {
            let inner = inner.map_err(|error| set_error_code(&error))?;
            let lies = inner.codec() != 0
                || inner.magic != message.magic
                || (message.magic >= 1 && inner.offset != inner_count);
            if lies {
                return Err(codes::INVALID_RECORD);
            }
            let timestamp = if message.is_log_append_time() {
                message.timestamp
            } else {
                inner.timestamp
            };
            converted.push(record_of(&inner, timestamp));
            inner_count += 1;
        }
        if inner_count == 0 {
            return Err(codes::INVALID_RECORD);
        }
    }
    let batch = build::batch(&converted);
    if target == Codec::None {
        Ok(batch)
    } else {
        recompress::recompress(batch, target)
    }
}

/// Kafka 0.8-0.10's lz4 framing of magic 0 messages (KAFKA-3160): the frame descriptor's
/// header checksum was computed over the magic number too, and Kafka ignores that checksum
/// for magic 0. The frame reader checks it, so it is recomputed as the LZ4 frame format
/// defines it (second byte of XXH32 of the descriptor, FLG through the optional dictionary
/// id). Anything that is not an LZ4 frame header is returned as it is, for the reader to
/// refuse.
fn with_lz4_header_checksum_fixed(frame: &[u8]) -> Vec<u8> {
    const LZ4_FRAME_MAGIC: [u8; 4] = 0x184D_2204_u32.to_le_bytes();
    let mut fixed = frame.to_vec();
    let (Some(magic), Some(&flags)) = (frame.get(..4), frame.get(4)) else {
        return fixed;
    };
    if magic != LZ4_FRAME_MAGIC {
        return fixed;
    }
    let content_size_bytes = if flags & 0x08 != 0 { 8 } else { 0 };
    let dictionary_id_bytes = if flags & 0x01 != 0 { 4 } else { 0 };
    let checksum_at = 4 + 2 + content_size_bytes + dictionary_id_bytes;
    if let Some(descriptor) = frame.get(4..checksum_at) {
        if checksum_at < fixed.len() {
            fixed[checksum_at] = (xxh32_short(descriptor) >> 8) as u8;
        }
    }
    fixed
}

/// XXH32 with seed 0 of fewer than 16 bytes (an LZ4 frame descriptor is at most 14), as the
/// xxHash specification defines it for short inputs.
fn xxh32_short(input: &[u8]) -> u32 {
    const PRIME1: u32 = 2_654_435_761;
    const PRIME2: u32 = 2_246_822_519;
    const PRIME3: u32 = 3_266_489_917;
    const PRIME4: u32 = 668_265_263;
    const PRIME5: u32 = 374_761_393;
    debug_assert!(input.len() < 16);
    let mut hash = PRIME5.wrapping_add(input.len() as u32);
    let mut words = input.chunks_exact(4);
    for word in &mut words {
        let word = u32::from_le_bytes(word.try_into().expect("4 bytes"));
        hash = hash.wrapping_add(word.wrapping_mul(PRIME3));
        hash = hash.rotate_left(17).wrapping_mul(PRIME4);
    }
    for &byte in words.remainder() {
        hash = hash.wrapping_add(u32::from(byte).wrapping_mul(PRIME5));
        hash = hash.rotate_left(11).wrapping_mul(PRIME1);
    }
    hash ^= hash >> 15;
    hash = hash.wrapping_mul(PRIME2);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(PRIME3);
    hash ^ (hash >> 16)
}

fn record_of<'a>(message: &Message<'a>, timestamp: i64) -> build::Record<'a> {
    build::Record {
        key: message.key,
        value: message.value,
        timestamp_ms: timestamp,
    }
}

/// What a down-conversion may return for one partition.
#[derive(Debug, Clone, Copy)]
pub struct DownConversion {
    pub magic: i8,
    /// Messages below it (the start of the first batch read) are left out.
    pub fetch_offset: i64,
    /// The partition's `max_bytes`.
    pub max_bytes: usize,
    /// Fetch v3 (KIP-74): a first message larger than `max_bytes` is returned whole. Below
    /// v3 it is cut at `max_bytes`, as Kafka answered them: the client sees a partial message
    /// and asks again with a larger size.
    pub whole_first_message: bool,
}

/// The batches read for one partition as one `MessageSet` (empty `Vec` when nothing is
/// left). `CORRUPT_MESSAGE` when a stored batch cannot be read (never expected: the log
/// checked it on append).
pub fn down_convert(batches: &[Bytes], rules: DownConversion) -> Result<Vec<Bytes>, i16> {
    let mut out: Vec<u8> = Vec::new();
    'batches: for batch in batches {
        let header = BatchHeader::parse(batch).ok_or(codes::CORRUPT_MESSAGE)?;
        if header.is_control() {
            continue;
        }
        // Decompressed as stored, not re-validated as a producer's batch: a batch the log
        // cleaner compacted has fewer records than offsets (storage/FORMAT.md § Log cleaner).
        let section = batch
            .get(BATCH_HEADER_BYTES..)
            .ok_or(codes::CORRUPT_MESSAGE)?;
        let decompressed;
        let mut records = if header.attributes & COMPRESSION_CODEC_MASK == 0 {
            section
        } else {
            let codec = Codec::from_attributes(header.attributes).ok_or(codes::CORRUPT_MESSAGE)?;
            let mut out = Vec::new();
            recompress::decompress_section(
                codec,
                section,
                DECOMPRESSED_RECORDS_BYTES_MAX,
                &mut out,
            )?;
            decompressed = out;
            &decompressed[..]
        };
        let log_append_time = header.attributes & BATCH_LOG_APPEND_TIME != 0;
        for _ in 0..header.record_count {
            let record = read_record(&mut records).ok_or(codes::CORRUPT_MESSAGE)?;
            // Deltas are the producer's bytes (the log checks framing and CRC, not them):
            // added as Kafka's Java longs add, wrapping, never a panic.
            let offset = header.base_offset.wrapping_add(record.offset_delta);
            if offset < rules.fetch_offset {
                continue;
            }
            let timestamp = if log_append_time {
                header.max_timestamp
            } else {
                header.base_timestamp.wrapping_add(record.timestamp_delta)
            };
            let attributes = if rules.magic >= 1 && log_append_time {
                TIMESTAMP_TYPE_LOG_APPEND
            } else {
                0
            };
            let message = Message {
                offset,
                magic: rules.magic,
                attributes,
                timestamp,
                key: record.key,
                value: record.value,
            };
            let bytes = message_set::message_bytes(rules.magic, record.key, record.value);
            if out.len() + bytes > rules.max_bytes {
                if out.is_empty() {
                    message_set::write_message(&mut out, &message);
                    if !rules.whole_first_message {
                        out.truncate(rules.max_bytes);
                    }
                }
                break 'batches;
            }
            message_set::write_message(&mut out, &message);
        }
    }
    Ok(if out.is_empty() {
        Vec::new()
    } else {
        vec![Bytes::from(out)]
    })
}

struct RecordView<'a> {
    timestamp_delta: i64,
    offset_delta: i64,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
}

/// One v2 record from the front of `records` (headers skipped); `None` when it does not
/// parse.
fn read_record<'a>(records: &mut &'a [u8]) -> Option<RecordView<'a>> {
    let length = usize::try_from(read_varint(records)?).ok()?;
    let mut body = records.get(..length)?;
    *records = &records[length..];
    body = body.get(1..)?; // attributes, unused
    let timestamp_delta = read_varint(&mut body)?;
    let offset_delta = read_varint(&mut body)?;
    let key = read_bytes(&mut body).ok()?;
    let value = read_bytes(&mut body).ok()?;
    Some(RecordView {
        timestamp_delta,
        offset_delta,
        key,
        value,
    })
}

/// A varint-length byte string (negative: null); `Err` when it does not parse.
fn read_bytes<'a>(body: &mut &'a [u8]) -> Result<Option<&'a [u8]>, ()> {
    let length = read_varint(body).ok_or(())?;
    if length < 0 {
        return Ok(None);
    }
    let length = usize::try_from(length).map_err(|_| ())?;
    let bytes = body.get(..length).ok_or(())?;
    *body = &body[length..];
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ringfeed_protocol::message_set::NO_TIMESTAMP;

    fn plain(
        offset: i64,
        magic: i8,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        message_set::write_message(
            &mut out,
            &Message {
                offset,
                magic,
                attributes: 0,
                timestamp,
                key,
                value,
            },
        );
        out
    }

    fn wrapper(
        magic: i8,
        codec: Codec,
        attributes_extra: i8,
        timestamp: i64,
        inner: &[u8],
    ) -> Vec<u8> {
        let mut compressed = Vec::new();
        let compressed =
            recompress::compress_section(codec, inner, std::mem::take(&mut compressed)).unwrap();
        let mut out = Vec::new();
        message_set::write_message(
            &mut out,
            &Message {
                offset: 0,
                magic,
                attributes: codec as i8 | attributes_extra,
                timestamp,
                key: None,
                value: Some(&compressed),
            },
        );
        out
    }

    fn rules(magic: i8, max_bytes: usize) -> DownConversion {
        DownConversion {
            magic,
            fetch_offset: 0,
            max_bytes,
            whole_first_message: true,
        }
    }

    /// Reads a converted set back as (offset, timestamp, key, value).
    type Flat = (i64, i64, Option<Vec<u8>>, Option<Vec<u8>>);

    fn read_back(set: &[Bytes]) -> Vec<Flat> {
        set.iter()
            .flat_map(|bytes| {
                MessageSetReader::allowing_partial_tail(bytes)
                    .map(|m| m.unwrap())
                    .map(|m| {
                        (
                            m.offset,
                            m.timestamp,
                            m.key.map(<[u8]>::to_vec),
                            m.value.map(<[u8]>::to_vec),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn plain_v0_set_up_converts_with_no_timestamp() {
        let mut set = plain(0, 0, NO_TIMESTAMP, Some(b"k"), Some(b"v1"));
        set.extend(plain(0, 0, NO_TIMESTAMP, None, None));
        let batch = up_convert(&set, usize::MAX).unwrap();
        ringfeed_storage::batch::validate(&batch, usize::MAX).unwrap();
        let back = down_convert(&[batch], rules(1, usize::MAX)).unwrap();
        assert_eq!(
            read_back(&back),
            vec![
                (0, -1, Some(b"k".to_vec()), Some(b"v1".to_vec())),
                (1, -1, None, None)
            ]
        );
    }

    #[test]
    fn compressed_wrappers_keep_their_codec_and_inner_timestamps() {
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4] {
            let mut inner = plain(0, 1, 1000, None, Some(b"a"));
            inner.extend(plain(1, 1, 1005, Some(b"k"), Some(b"b")));
            let set = wrapper(1, codec, 0, 1005, &inner);
            let batch = up_convert(&set, usize::MAX).unwrap();
            let header = ringfeed_storage::batch::validate(&batch, usize::MAX).unwrap();
            assert_eq!(
                header.attributes & COMPRESSION_CODEC_MASK,
                codec as i16,
                "{codec:?}"
            );
            assert_eq!(
                read_back(&down_convert(&[batch], rules(1, usize::MAX)).unwrap()),
                vec![
                    (0, 1000, None, Some(b"a".to_vec())),
                    (1, 1005, Some(b"k".to_vec()), Some(b"b".to_vec()))
                ]
            );
        }
    }

    #[test]
    fn xxh32_matches_the_reference_vectors() {
        assert_eq!(xxh32_short(b""), 0x02CC_5D05);
        assert_eq!(xxh32_short(b"abc"), 0x32D1_53FF);
    }

    /// A magic 0 lz4 wrapper as Kafka 0.8/0.9 clients frame it: header checksum over the
    /// magic number too. Accepted (Kafka ignores it for magic 0); refused for magic 1.
    #[test]
    fn magic_0_lz4_with_the_old_kafka_header_checksum_is_read() {
        let inner = plain(0, 0, NO_TIMESTAMP, None, Some(b"old lz4"));
        let mut frame = recompress::compress_section(Codec::Lz4, &inner, Vec::new()).unwrap();
        let flags = frame[4];
        let checksum_at =
            6 + if flags & 0x08 != 0 { 8 } else { 0 } + if flags & 1 != 0 { 4 } else { 0 };
        assert_eq!(
            frame[checksum_at],
            (xxh32_short(&frame[4..checksum_at]) >> 8) as u8,
            "lz4 writes the checksum this module computes"
        );
        frame[checksum_at] = (xxh32_short(&frame[..checksum_at]) >> 8) as u8;
        let wrap = |magic: i8| {
            let mut out = Vec::new();
            let message = Message {
                offset: 0,
                magic,
                attributes: Codec::Lz4 as i8,
                timestamp: 0,
                key: None,
                value: Some(&frame),
            };
            message_set::write_message(&mut out, &message);
            out
        };
        let batch = up_convert(&wrap(0), usize::MAX).unwrap();
        assert_eq!(
            read_back(&down_convert(&[batch], rules(0, usize::MAX)).unwrap())[0]
                .3
                .as_deref(),
            Some(&b"old lz4"[..])
        );
        assert_eq!(
            up_convert(&wrap(1), usize::MAX),
            Err(codes::CORRUPT_MESSAGE)
        );
    }

    #[test]
    fn log_append_time_wrapper_gives_its_timestamp_to_inner_messages() {
        let inner = plain(0, 1, 5, None, Some(b"a"));
        let set = wrapper(1, Codec::Gzip, TIMESTAMP_TYPE_LOG_APPEND, 777, &inner);
        let batch = up_convert(&set, usize::MAX).unwrap();
        let back = read_back(&down_convert(&[batch], rules(1, usize::MAX)).unwrap());
        assert_eq!(back[0].1, 777);
    }

    #[test]
    fn lying_wrappers_are_refused() {
        // magic 1 inner offsets must be 0, 1, ...
        let mut inner = plain(0, 1, 1, None, Some(b"a"));
        inner.extend(plain(5, 1, 1, None, Some(b"b")));
        assert_eq!(
            up_convert(&wrapper(1, Codec::Gzip, 0, 1, &inner), usize::MAX),
            Err(codes::INVALID_RECORD)
        );
        // nested compression
        let nested = wrapper(1, Codec::Gzip, 0, 1, &plain(0, 1, 1, None, Some(b"a")));
        assert_eq!(
            up_convert(&wrapper(1, Codec::Gzip, 0, 1, &nested), usize::MAX),
            Err(codes::INVALID_RECORD)
        );
        // inner magic differs from the wrapper's
        let inner_v0 = plain(0, 0, NO_TIMESTAMP, None, Some(b"a"));
        assert_eq!(
            up_convert(&wrapper(1, Codec::Gzip, 0, 1, &inner_v0), usize::MAX),
            Err(codes::INVALID_RECORD)
        );
        // an empty inner set
        assert_eq!(
            up_convert(&wrapper(1, Codec::Gzip, 0, 1, &[]), usize::MAX),
            Err(codes::INVALID_RECORD)
        );
        // a wrapper whose value does not decompress
        let mut garbage = Vec::new();
        message_set::write_message(
            &mut garbage,
            &Message {
                offset: 0,
                magic: 1,
                attributes: 1,
                timestamp: 0,
                key: None,
                value: Some(b"not gzip"),
            },
        );
        assert_eq!(
            up_convert(&garbage, usize::MAX),
            Err(codes::CORRUPT_MESSAGE)
        );
        // zstd below magic 2
        let mut zstd = Vec::new();
        message_set::write_message(
            &mut zstd,
            &Message {
                offset: 0,
                magic: 1,
                attributes: 4,
                timestamp: 0,
                key: None,
                value: Some(b"x"),
            },
        );
        assert_eq!(
            up_convert(&zstd, usize::MAX),
            Err(codes::UNSUPPORTED_COMPRESSION_TYPE)
        );
        // a bad CRC
        let mut bad = plain(0, 1, 1, None, Some(b"a"));
        *bad.last_mut().unwrap() ^= 0xff;
        assert_eq!(up_convert(&bad, usize::MAX), Err(codes::CORRUPT_MESSAGE));
        // too large for the topic
        assert_eq!(
            up_convert(&plain(0, 1, 1, None, Some(&[0; 100])), 50),
            Err(codes::MESSAGE_TOO_LARGE)
        );
    }

    #[test]
    fn decompression_is_bounded() {
        // Two wrappers of 600 bytes each: the bound is on their sum.
        let inner = plain(0, 1, 1, None, Some(&[0; 560]));
        let one = wrapper(1, Codec::Gzip, 0, 1, &inner);
        assert!(up_convert_bounded(&one, usize::MAX, 1000).is_ok());
        let two = [one.clone(), one].concat();
        assert_eq!(
            up_convert_bounded(&two, usize::MAX, 1000),
            Err(codes::MESSAGE_TOO_LARGE)
        );
    }

    /// A compressed batch the log cleaner compacted (fewer records than its offsets, with a
    /// gap) is converted for an old client, each record at its own offset.
    #[test]
    fn a_compacted_compressed_batch_is_down_converted() {
        let records = [
            build::Record {
                key: Some(b"a"),
                value: Some(b"1"),
                timestamp_ms: 5,
            },
            build::Record {
                key: Some(b"b"),
                value: Some(b"2"),
                timestamp_ms: 5,
            },
        ];
        let gzip = recompress::recompress(build::batch(&records), Codec::Gzip).unwrap();
        // As the cleaner leaves it: lastOffsetDelta 5 over 2 records.
        let mut compacted = gzip.to_vec();
        compacted[23..27].copy_from_slice(&5_i32.to_be_bytes());
        let crc = crc32c::crc32c(&compacted[21..]);
        compacted[17..21].copy_from_slice(&crc.to_be_bytes());
        let back =
            read_back(&down_convert(&[Bytes::from(compacted)], rules(1, usize::MAX)).unwrap());
        let offsets: Vec<i64> = back.iter().map(|m| m.0).collect();
        assert_eq!(offsets, [0, 1]);
    }

    #[test]
    fn down_conversion_respects_max_bytes_and_fetch_offset() {
        let set: Vec<u8> = (0..10)
            .flat_map(|_| plain(0, 1, 9, None, Some(&[7; 100])))
            .collect();
        let batch = up_convert(&set, usize::MAX).unwrap();
        let one = message_set::message_bytes(1, None, Some(&[7; 100]));
        let back =
            read_back(&down_convert(std::slice::from_ref(&batch), rules(1, one * 3 + 5)).unwrap());
        assert_eq!(back.iter().map(|m| m.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        let from_4 = DownConversion {
            fetch_offset: 4,
            ..rules(0, usize::MAX)
        };
        let back = read_back(&down_convert(std::slice::from_ref(&batch), from_4).unwrap());
        assert_eq!(
            back.first().map(|m| (m.0, m.1)),
            Some((4, -1)),
            "magic 0 has no timestamp"
        );
        assert_eq!(back.len(), 6);
        // A first message above max_bytes: whole for v3, cut for v0-2.
        let whole = down_convert(std::slice::from_ref(&batch), rules(1, 10)).unwrap();
        assert_eq!(whole[0].len(), one);
        let cut = DownConversion {
            whole_first_message: false,
            ..rules(1, 10)
        };
        assert_eq!(down_convert(&[batch], cut).unwrap()[0].len(), 10);
    }

    /// A stored batch whose base plus a record's delta passes `i64::MAX` (a v3+ producer
    /// chooses the timestamps and deltas) is converted, not a panic.
    #[test]
    fn deltas_past_i64_max_do_not_panic() {
        use ringfeed_protocol::batch::{BASE_OFFSET_OFFSET, BASE_TIMESTAMP_OFFSET};
        let records = [
            build::Record {
                key: None,
                value: Some(b"a"),
                timestamp_ms: 0,
            },
            build::Record {
                key: None,
                value: Some(b"b"),
                timestamp_ms: 5,
            },
        ];
        let mut batch = build::batch(&records).to_vec();
        batch[BASE_OFFSET_OFFSET..BASE_OFFSET_OFFSET + 8].copy_from_slice(&i64::MAX.to_be_bytes());
        batch[BASE_TIMESTAMP_OFFSET..BASE_TIMESTAMP_OFFSET + 8]
            .copy_from_slice(&i64::MAX.to_be_bytes());
        let rules = DownConversion {
            fetch_offset: i64::MIN,
            ..rules(1, usize::MAX)
        };
        let back = read_back(&down_convert(&[Bytes::from(batch)], rules).unwrap());
        assert_eq!(
            back.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(),
            vec![(i64::MAX, i64::MAX), (i64::MIN, i64::MIN + 4)]
        );
    }

    #[test]
    fn control_batches_are_skipped() {
        let control = ringfeed_storage::batch::control::batch(3, b"entry");
        assert!(down_convert(&[control], rules(1, usize::MAX))
            .unwrap()
            .is_empty());
    }

    proptest! {
        /// v2 -> `MessageSet` -> v2 keeps offsets, keys, values and timestamps.
        #[test]
        fn round_trip_through_message_sets(
            records in proptest::collection::vec(
                (0_i64..2_000_000_000_000,
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))),
                1..20),
            base_offset in 0_i64..1_000_000,
            codec in prop_oneof![Just(Codec::None), Just(Codec::Gzip), Just(Codec::Snappy), Just(Codec::Lz4)],
        ) {
            let built: Vec<build::Record<'_>> = records.iter().map(|(ts, key, value)| build::Record {
                key: key.as_deref(), value: value.as_deref(), timestamp_ms: *ts,
            }).collect();
            let stored = ringfeed_storage::batch::with_base_offset(&build::batch(&built), base_offset);
            let stored = recompress::recompress(stored, codec).unwrap();
            let set = down_convert(&[stored], DownConversion { fetch_offset: 0, ..rules(1, usize::MAX) }).unwrap();
            let expected: Vec<Flat> = records.iter().enumerate().map(|(index, (ts, key, value))|
                (base_offset + index as i64, *ts, key.clone(), value.clone())).collect();
            prop_assert_eq!(read_back(&set), expected.clone());
            // ... and back to v2 through the produce path's conversion.
            let again = up_convert(&set[0], usize::MAX).unwrap();
            let again = down_convert(&[ringfeed_storage::batch::with_base_offset(&again, base_offset)], rules(1, usize::MAX)).unwrap();
            prop_assert_eq!(read_back(&again), expected);
        }

        #[test]
        fn up_convert_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = up_convert(&bytes, usize::MAX);
        }
    }
}
