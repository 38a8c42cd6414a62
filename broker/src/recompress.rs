//! Produce's codec rules, applied to one partition's batches before they are appended, and
//! Fetch's one ([`apply_fetch_codec_rule`]), applied to the batches read for a response:
//!
//! - A zstd batch needs Produce v7 or later (KIP-110): an older request is answered
//!   `UNSUPPORTED_COMPRESSION_TYPE`, as Kafka's `ProduceRequest.validateRecords` does, since a
//!   client speaking v6 may have consumers that cannot read zstd.
//! - A codec id Kafka does not define (5-7) is `CORRUPT_MESSAGE`: no consumer could read it.
//! - A topic whose `compression.type` is not `producer` stores its batches in that codec
//!   (Kafka's `LogValidator`): a batch in another codec is decompressed and its records
//!   compressed again into a new v2 batch. Everything but the codec bits of the attributes,
//!   the records section, `batchLength` and the CRC is copied from the producer's header, so
//!   offset deltas, timestamps, producer id/epoch/sequence and the transactional flag are
//!   kept. A batch already in the topic's codec is stored as sent (zero-copy), as is every
//!   batch of a `producer` topic, the default.
//!
//! Pure and synchronous: no IO, no await. The produce path runs it on the receiving shard
//! between receiving a request and handing its batches to the partition, so it never
//! reorders pipelined requests, and at most one recompression per shard is in memory at a
//! time: the extra memory is one decompressed batch (at most
//! [`DECOMPRESSED_RECORDS_BYTES_MAX`]) and its recompressed copy. The CPU it costs is
//! measured in docs/BENCHMARKS.md (`recompress` bench).

use std::cell::RefCell;
use std::io::{Read, Write};

use bytes::{BufMut, Bytes};

use crate::error_codes as codes;
use crate::storage::batch::{
    self, BatchError, BatchHeader, ATTRIBUTES_OFFSET, BATCH_HEADER_BYTES, BATCH_LENGTH_OFFSET,
    CRC_OFFSET, LOG_OVERHEAD_BYTES,
};

/// Records of one batch after decompression, at most. A larger batch is refused with
/// `MESSAGE_TOO_LARGE` (a Java producer then splits it and retries). It bounds what a
/// compressed batch of a few KiB may expand to (a decompression bomb).
pub const DECOMPRESSED_RECORDS_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The codec of a batch, from its attributes; `None` for a header too short or a codec id
/// Kafka does not define.
fn codec_of(batch: &[u8]) -> Option<Codec> {
    let attributes = batch.get(ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2)?;
    Codec::from_attributes(i16::from_be_bytes([attributes[0], attributes[1]]))
}

/// The first Produce version that may carry zstd batches (KIP-110).
const PRODUCE_VERSION_ZSTD_MIN: i16 = 7;
/// The first Fetch version whose client can read zstd batches (KIP-110).
const FETCH_VERSION_ZSTD_MIN: i16 = 10;

/// Kafka's level for zstd (`compression.zstd.level` default) and gzip (`Deflater`'s default).
const ZSTD_LEVEL: i32 = 3;
const GZIP_LEVEL: u32 = 6;
/// xerial snappy-java's stream framing, which Kafka's snappy batches use: a 16-byte header,
/// then blocks of at most 32 KiB of input, each preceded by its compressed length (u32 BE).
const XERIAL_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
const XERIAL_MAGIC_BYTES: usize = 8;
const XERIAL_BLOCK_INPUT_BYTES: usize = 32 * 1024;

/// A record batch codec: its id in the attributes' low three bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

impl Codec {
    pub fn from_attributes(attributes: i16) -> Option<Codec> {
        Some(match attributes & batch::COMPRESSION_CODEC_MASK {
            0 => Codec::None,
            1 => Codec::Gzip,
            2 => Codec::Snappy,
            3 => Codec::Lz4,
            4 => Codec::Zstd,
            _ => return None,
        })
    }
}

/// A topic's `compression.type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompressionType {
    /// Store batches as the producer compressed them (no recompression, zero-copy).
    #[default]
    Producer,
    /// Store every batch in this codec (`uncompressed` is `Codec::None`).
    Codec(Codec),
}

impl CompressionType {
    /// The values Kafka accepts for `compression.type`, in its documentation's order.
    pub const NAMES: [&'static str; 6] =
        ["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"];

    pub fn parse(name: &str) -> Option<CompressionType> {
        Some(match name {
            "producer" => CompressionType::Producer,
            "uncompressed" => CompressionType::Codec(Codec::None),
            "gzip" => CompressionType::Codec(Codec::Gzip),
            "snappy" => CompressionType::Codec(Codec::Snappy),
            "lz4" => CompressionType::Codec(Codec::Lz4),
            "zstd" => CompressionType::Codec(Codec::Zstd),
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Producer => "producer",
            CompressionType::Codec(Codec::None) => "uncompressed",
            CompressionType::Codec(Codec::Gzip) => "gzip",
            CompressionType::Codec(Codec::Snappy) => "snappy",
            CompressionType::Codec(Codec::Lz4) => "lz4",
            CompressionType::Codec(Codec::Zstd) => "zstd",
        }
    }
}

/// The produce path's one call: checks every batch's codec against the request version,
/// then brings each batch to the topic's codec. `batches` are whole batches as
/// `records::split_batches` cut them (each at least a header long). The error is the Kafka
/// code for the whole partition: nothing of it is appended.
pub fn apply_codec_rules(
    batches: Vec<Bytes>,
    produce_version: i16,
    compression: CompressionType,
) -> Result<Vec<Bytes>, i16> {
    for batch in &batches {
        match codec_of(batch) {
            None => return Err(codes::CORRUPT_MESSAGE),
            Some(Codec::Zstd) if produce_version < PRODUCE_VERSION_ZSTD_MIN => {
                return Err(codes::UNSUPPORTED_COMPRESSION_TYPE)
            }
            Some(_) => {}
        }
    }
    match compression {
        CompressionType::Producer => Ok(batches),
        CompressionType::Codec(target) => batches
            .into_iter()
            .map(|batch| recompress(batch, target))
            .collect(),
    }
}

/// The fetch path's codec rule (KIP-110): a Fetch below v10 comes from a client that may not
/// read zstd, so it is never handed a zstd batch. Kafka (`KafkaApis.maybeConvertFetchedData`)
/// answers `UNSUPPORTED_COMPRESSION_TYPE` for every partition of a topic whose
/// `compression.type` is zstd, with or without data, and looks no further: a `producer` topic
/// serves zstd batches as sent. Ringfeed does the same for a zstd topic and also reads the
/// codec bits of the batches about to be returned (already in memory, so free): they are
/// kept up to the first zstd one, and when that is the first the partition is refused. An old
/// client thus gets every batch it can decode, then the error, never bytes it cannot decode.
/// `batches` are whole stored batches (each at least a header long), in offset order.
pub fn apply_fetch_codec_rule(
    batches: &mut Vec<Bytes>,
    fetch_version: i16,
    compression: CompressionType,
) -> Result<(), i16> {
    if fetch_version >= FETCH_VERSION_ZSTD_MIN {
        return Ok(());
    }
    if compression == CompressionType::Codec(Codec::Zstd) {
        return Err(codes::UNSUPPORTED_COMPRESSION_TYPE);
    }
    let is_zstd = |batch: &Bytes| codec_of(batch) == Some(Codec::Zstd);
    match batches.iter().position(is_zstd) {
        Some(0) => Err(codes::UNSUPPORTED_COMPRESSION_TYPE),
        Some(first_zstd) => {
            batches.truncate(first_zstd);
            Ok(())
        }
        None => Ok(()),
    }
}

/// One batch in `target`'s codec: the batch itself when it is in that codec already (or is
/// a control batch, which Kafka never compresses), else a new batch (see the module docs).
/// The producer's CRC is checked first, so damaged bytes are refused, never re-checksummed.
pub fn recompress(batch: Bytes, target: Codec) -> Result<Bytes, i16> {
    // A batch kept as it is goes on to the partition's own check (`PartitionLog::check`):
    // validating it here too would walk its CRC and records twice.
    let kept = BatchHeader::parse(&batch).is_some_and(|header| {
        header.is_control() || Codec::from_attributes(header.attributes) == Some(target)
    });
    if kept {
        return Ok(batch);
    }
    let header = batch::validate(&batch, usize::MAX).map_err(|error| batch_error_code(&error))?;
    let source = Codec::from_attributes(header.attributes).ok_or(codes::CORRUPT_MESSAGE)?;
    let section = &batch[BATCH_HEADER_BYTES..];
    let mut out = DECOMPRESSED.with_borrow_mut(|scratch| {
        scratch.clear();
        let records = if source == Codec::None {
            section
        } else {
            let decompressed = decompress(source, section, DECOMPRESSED_RECORDS_BYTES_MAX, scratch);
            // `validate` walked the records of an uncompressed batch; these it could not read.
            let checked = decompressed.and_then(|()| {
                batch::check_uncompressed_records(scratch, header.record_count)
                    .map_err(|error| batch_error_code(&error))
            });
            if let Err(code) = checked {
                release_if_large(scratch);
                return Err(code);
            }
            &scratch[..]
        };
        let estimate = if target == Codec::None {
            records.len()
        } else {
            records.len() / 2
        };
        let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + estimate);
        out.extend_from_slice(&batch[..BATCH_HEADER_BYTES]);
        let compressed = compress(target, records, out);
        release_if_large(scratch);
        compressed
    })?;
    let batch_length =
        i32::try_from(out.len() - LOG_OVERHEAD_BYTES).map_err(|_| codes::MESSAGE_TOO_LARGE)?;
    out[BATCH_LENGTH_OFFSET..BATCH_LENGTH_OFFSET + 4].copy_from_slice(&batch_length.to_be_bytes());
    let attributes = (header.attributes & !batch::COMPRESSION_CODEC_MASK) | target as i16;
    out[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
    out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(Bytes::from(out))
}

thread_local! {
    /// The decompressed records of the batch being recompressed, reused from batch to batch:
    /// a fresh megabyte-sized buffer per batch is mapped, faulted in and unmapped by the
    /// allocator each time, which cost more than decompressing (perf of the bench). One per
    /// shard thread; recompression never awaits, so it is never borrowed twice.
    static DECOMPRESSED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Capacity the scratch buffer keeps between batches; a larger one (a batch near the 64 MiB
/// limit) is freed after use rather than held by the shard.
const SCRATCH_KEPT_BYTES_MAX: usize = 8 * 1024 * 1024;

fn release_if_large(scratch: &mut Vec<u8>) {
    if scratch.capacity() > SCRATCH_KEPT_BYTES_MAX {
        *scratch = Vec::new();
    }
}

/// The Kafka error code for a batch that fails its checks (the partition path maps
/// `AppendError::Batch` through this too).
pub fn batch_error_code(error: &BatchError) -> i16 {
    match error {
        BatchError::Corrupt(_) => codes::CORRUPT_MESSAGE,
        BatchError::InvalidRecord(_) => codes::INVALID_RECORD,
        BatchError::TooLarge { .. } => codes::MESSAGE_TOO_LARGE,
    }
}

/// [`decompress`] for a message format v0/v1 wrapper's value (`message_format`): the same
/// codecs, framings and limit. `codec` is not `None`.
pub fn decompress_section(
    codec: Codec,
    section: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), i16> {
    decompress(codec, section, limit, out)
}

/// [`compress`], for the log cleaner (which compresses a cleaned batch's records again in
/// their codec) and tests building v0/v1 wrapper messages.
pub fn compress_section(codec: Codec, records: &[u8], out: Vec<u8>) -> Result<Vec<u8>, i16> {
    compress(codec, records, out)
}

/// Appends the records section of a batch in `codec` (not `None`), uncompressed, to `out`;
/// `CORRUPT_MESSAGE` when the codec cannot read it, `MESSAGE_TOO_LARGE` past `limit` bytes.
fn decompress(codec: Codec, section: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), i16> {
    let mut read_bounded = |reader: &mut dyn Read| -> Result<(), i16> {
        reader
            .take(limit as u64 + 1)
            .read_to_end(out)
            .map_err(|_| codes::CORRUPT_MESSAGE)?;
        if out.len() > limit {
            return Err(codes::MESSAGE_TOO_LARGE);
        }
        Ok(())
    };
    match codec {
        Codec::None => unreachable!("an uncompressed section is used as it is"),
        Codec::Gzip => read_bounded(&mut flate2::read::MultiGzDecoder::new(section)),
        Codec::Snappy => snappy_decompress(section, limit, out),
        Codec::Lz4 => {
            read_bounded(&mut lz4::Decoder::new(section).map_err(|_| codes::CORRUPT_MESSAGE)?)
        }
        Codec::Zstd => read_bounded(
            &mut zstd::stream::read::Decoder::with_buffer(section)
                .map_err(|_| codes::CORRUPT_MESSAGE)?,
        ),
    }
}

/// Snappy as Kafka clients send it: xerial-framed (Java) or one raw block (snappy-java reads
/// both, and so does librdkafka). The declared length of each block is checked against the
/// limit before anything is allocated for it.
fn snappy_decompress(section: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), i16> {
    let mut decoder = snap::raw::Decoder::new();
    let mut append_block = |block: &[u8], out: &mut Vec<u8>| -> Result<(), i16> {
        let length = snap::raw::decompress_len(block).map_err(|_| codes::CORRUPT_MESSAGE)?;
        if out.len() + length > limit {
            return Err(codes::MESSAGE_TOO_LARGE);
        }
        let at = out.len();
        out.resize(at + length, 0);
        decoder
            .decompress(block, &mut out[at..])
            .map_err(|_| codes::CORRUPT_MESSAGE)?;
        Ok(())
    };
    if section.get(..XERIAL_MAGIC_BYTES) != Some(&XERIAL_HEADER[..XERIAL_MAGIC_BYTES]) {
        return append_block(section, out);
    }
    let mut rest = section
        .get(XERIAL_HEADER.len()..)
        .ok_or(codes::CORRUPT_MESSAGE)?;
    while !rest.is_empty() {
        let length_field = rest.get(..4).ok_or(codes::CORRUPT_MESSAGE)?;
        let length = u32::from_be_bytes(length_field.try_into().expect("four bytes")) as usize;
        let block = rest.get(4..4 + length).ok_or(codes::CORRUPT_MESSAGE)?;
        append_block(block, out)?;
        rest = &rest[4 + length..];
    }
    Ok(())
}

/// `out` with `records` appended, compressed with `codec` and framed as Kafka's Java client
/// frames it.
fn compress(codec: Codec, records: &[u8], mut out: Vec<u8>) -> Result<Vec<u8>, i16> {
    // Compressing into memory fails only on a codec bug: a broker error, not the client's.
    let failed = |_| codes::UNKNOWN_SERVER_ERROR;
    match codec {
        Codec::None => {
            out.extend_from_slice(records);
            Ok(out)
        }
        Codec::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
            encoder.write_all(records).map_err(failed)?;
            encoder.finish().map_err(failed)
        }
        Codec::Snappy => {
            let mut encoder = snap::raw::Encoder::new();
            out.put_slice(XERIAL_HEADER);
            for block in records.chunks(XERIAL_BLOCK_INPUT_BYTES) {
                let compressed = encoder
                    .compress_vec(block)
                    .map_err(|_| codes::UNKNOWN_SERVER_ERROR)?;
                out.put_u32(compressed.len() as u32);
                out.put_slice(&compressed);
            }
            Ok(out)
        }
        Codec::Lz4 => {
            // Independent blocks, no block or content checksums, as Kafka's
            // KafkaLZ4BlockOutputStream writes them (the crate's defaults differ); level 0 is
            // lz4's fast mode (Kafka before 3.8 and its compression.lz4.level).
            let mut encoder = lz4::EncoderBuilder::new()
                .block_mode(lz4::BlockMode::Independent)
                .block_checksum(lz4::liblz4::BlockChecksum::NoBlockChecksum)
                .checksum(lz4::ContentChecksum::NoChecksum)
                .level(0)
                .build(out)
                .map_err(failed)?;
            encoder.write_all(records).map_err(failed)?;
            let (out, finished) = encoder.finish();
            finished.map_err(failed)?;
            Ok(out)
        }
        Codec::Zstd => {
            let mut encoder = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL).map_err(failed)?;
            encoder.write_all(records).map_err(failed)?;
            encoder.finish().map_err(failed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::build;
    use bytes::BytesMut;

    fn decompressed(codec: Codec, section: &[u8], limit: usize) -> Result<Vec<u8>, i16> {
        let mut out = Vec::new();
        decompress(codec, section, limit, &mut out).map(|()| out)
    }

    fn compressed(codec: Codec, records: &[u8]) -> Vec<u8> {
        compress(codec, records, Vec::new()).unwrap()
    }
    use crate::storage::batch::{
        BatchHeader, BASE_SEQUENCE_OFFSET, PRODUCER_EPOCH_OFFSET, PRODUCER_ID_OFFSET,
    };

    const ALL_CODECS: [Codec; 5] = [
        Codec::None,
        Codec::Gzip,
        Codec::Snappy,
        Codec::Lz4,
        Codec::Zstd,
    ];

    /// An uncompressed batch with producer fields and the transactional flag set (CRC fixed).
    fn producer_batch(values: &[Vec<u8>]) -> Bytes {
        let records: Vec<build::Record<'_>> = values
            .iter()
            .enumerate()
            .map(|(index, value)| build::Record {
                key: Some(b"key"),
                value: Some(value),
                timestamp_ms: 1_700_000_000_000 + index as i64 * 7,
            })
            .collect();
        let mut batch = BytesMut::from(&build::batch(&records)[..]);
        batch[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8].copy_from_slice(&42_i64.to_be_bytes());
        batch[PRODUCER_EPOCH_OFFSET..PRODUCER_EPOCH_OFFSET + 2]
            .copy_from_slice(&3_i16.to_be_bytes());
        batch[BASE_SEQUENCE_OFFSET..BASE_SEQUENCE_OFFSET + 4]
            .copy_from_slice(&100_i32.to_be_bytes());
        batch[ATTRIBUTES_OFFSET + 1] |= 0x10; // transactional
        let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
        batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        batch.freeze()
    }

    fn values() -> Vec<Vec<u8>> {
        (0..50_u8)
            .map(|index| vec![index; 100 + usize::from(index) * 997])
            .collect()
    }

    #[test]
    fn every_codec_round_trips_and_keeps_the_header() {
        let original = producer_batch(&values());
        let original_header = BatchHeader::parse(&original).unwrap();
        for target in ALL_CODECS {
            let converted = recompress(original.clone(), target).unwrap();
            let header = batch::validate(&converted, usize::MAX).unwrap();
            assert_eq!(
                header.attributes & batch::COMPRESSION_CODEC_MASK,
                target as i16
            );
            assert_eq!(
                header.attributes & !batch::COMPRESSION_CODEC_MASK,
                original_header.attributes
            );
            let same_except_codec = BatchHeader {
                attributes: original_header.attributes,
                batch_length: original_header.batch_length,
                crc: original_header.crc,
                ..header
            };
            assert_eq!(same_except_codec, original_header, "{target:?}");
            // Back through every codec to uncompressed: the records are byte-identical.
            for via in ALL_CODECS {
                let there = recompress(converted.clone(), via).unwrap();
                let back = recompress(there, Codec::None).unwrap();
                assert_eq!(back, original, "{target:?} then {via:?}");
            }
        }
    }

    #[test]
    fn a_batch_already_in_the_topic_codec_is_not_copied() {
        let original = producer_batch(&values());
        let lz4 = recompress(original.clone(), Codec::Lz4).unwrap();
        let kept = recompress(lz4.clone(), Codec::Lz4).unwrap();
        assert_eq!(kept.as_ptr(), lz4.as_ptr());
        let kept = apply_codec_rules(vec![original.clone()], 9, CompressionType::Producer).unwrap();
        assert_eq!(kept[0].as_ptr(), original.as_ptr());
    }

    #[test]
    fn zstd_needs_produce_v7_and_unknown_codecs_are_corrupt() {
        let zstd = recompress(producer_batch(&values()), Codec::Zstd).unwrap();
        for version in 3..=6 {
            assert_eq!(
                apply_codec_rules(vec![zstd.clone()], version, CompressionType::Producer),
                Err(codes::UNSUPPORTED_COMPRESSION_TYPE)
            );
        }
        assert!(apply_codec_rules(vec![zstd.clone()], 7, CompressionType::Producer).is_ok());
        let lz4 = recompress(zstd, Codec::Lz4).unwrap();
        assert!(apply_codec_rules(vec![lz4], 3, CompressionType::Producer).is_ok());
        let mut unknown = BytesMut::from(&producer_batch(&values())[..]);
        unknown[ATTRIBUTES_OFFSET + 1] |= 0x05;
        assert_eq!(
            apply_codec_rules(vec![unknown.freeze()], 9, CompressionType::Producer),
            Err(codes::CORRUPT_MESSAGE)
        );
    }

    #[test]
    fn fetch_below_v10_is_cut_before_the_first_zstd_batch() {
        let plain = producer_batch(&values());
        let zstd = recompress(plain.clone(), Codec::Zstd).unwrap();
        let lz4 = recompress(plain.clone(), Codec::Lz4).unwrap();
        let read = vec![plain.clone(), lz4.clone(), zstd.clone(), plain.clone()];
        let rule = |mut batches: Vec<Bytes>, version, compression| {
            apply_fetch_codec_rule(&mut batches, version, compression).map(|()| batches)
        };
        let producer = CompressionType::Producer;
        for version in 4..=9 {
            let kept = rule(read.clone(), version, producer).unwrap();
            assert_eq!(kept, [plain.clone(), lz4.clone()]);
            let refused = rule(vec![zstd.clone(), plain.clone()], version, producer);
            assert_eq!(refused, Err(codes::UNSUPPORTED_COMPRESSION_TYPE));
            // Kafka's rule: a zstd topic is refused whatever was read, nothing included.
            let zstd_topic = rule(Vec::new(), version, CompressionType::Codec(Codec::Zstd));
            assert_eq!(zstd_topic, Err(codes::UNSUPPORTED_COMPRESSION_TYPE));
        }
        for version in [10, 11] {
            assert_eq!(rule(read.clone(), version, producer).unwrap(), read);
            let zstd_topic = CompressionType::Codec(Codec::Zstd);
            assert_eq!(
                rule(vec![zstd.clone()], version, zstd_topic).unwrap(),
                std::slice::from_ref(&zstd)
            );
        }
    }

    #[test]
    fn damaged_input_is_refused_not_rechecksummed() {
        let mut flipped = BytesMut::from(&producer_batch(&values())[..]);
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            recompress(flipped.freeze(), Codec::Zstd),
            Err(codes::CORRUPT_MESSAGE)
        );
        // A CRC-valid batch whose compressed section is garbage.
        let mut garbage = BytesMut::from(&producer_batch(&values())[..]);
        garbage[ATTRIBUTES_OFFSET + 1] |= Codec::Gzip as u8;
        let crc = crc32c::crc32c(&garbage[ATTRIBUTES_OFFSET..]);
        garbage[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            recompress(garbage.freeze(), Codec::Lz4),
            Err(codes::CORRUPT_MESSAGE)
        );
    }

    /// A small zstd batch whose records expand past the limit is refused before it is held.
    #[test]
    fn a_decompression_bomb_is_message_too_large() {
        let limit = 1 << 20;
        let huge = vec![0_u8; limit + 1];
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let section = compressed(codec, &huge);
            assert!(
                section.len() < limit / 10,
                "{codec:?} compresses zeros well"
            );
            assert_eq!(
                decompressed(codec, &section, limit).map(|records| records.len()),
                Err(codes::MESSAGE_TOO_LARGE),
                "{codec:?}"
            );
        }
    }

    /// Truncated or bit-flipped sections of every codec end in an error code or in some
    /// bytes, never in a panic (the section comes from the network).
    #[test]
    fn damaged_sections_never_panic() {
        let records = b"0123456789abcdef".repeat(300);
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let section = compressed(codec, &records);
            for cut in (0..section.len()).step_by(7) {
                let _ = decompressed(codec, &section[..cut], 1 << 20);
            }
            for at in (0..section.len()).step_by(3) {
                let mut flipped = section.clone();
                flipped[at] ^= 0x5a;
                let _ = decompressed(codec, &flipped, 1 << 20);
            }
        }
    }

    /// The LZ4 frame descriptor's FLG byte: version 01, independent blocks, no block or
    /// content checksum, no content size (what `KafkaLZ4BlockOutputStream` writes).
    #[test]
    fn lz4_frames_are_written_as_kafka_writes_them() {
        let section = compressed(Codec::Lz4, b"some records");
        assert_eq!(&section[..4], &[0x04, 0x22, 0x4d, 0x18], "LZ4 frame magic");
        assert_eq!(section[4], 0b0110_0000, "FLG");
    }

    #[test]
    fn raw_snappy_from_librdkafka_is_read_too() {
        let records = b"records, as one raw snappy block".repeat(50);
        let raw = snap::raw::Encoder::new().compress_vec(&records).unwrap();
        let read = decompressed(Codec::Snappy, &raw, 1 << 20).unwrap();
        assert_eq!(&read[..], &records[..]);
    }

    #[test]
    fn compression_type_names_round_trip() {
        for name in CompressionType::NAMES {
            assert_eq!(CompressionType::parse(name).unwrap().name(), name);
        }
        assert_eq!(CompressionType::parse("none"), None);
        assert_eq!(CompressionType::default(), CompressionType::Producer);
    }
}
