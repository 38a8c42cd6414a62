//! The Fetch response frame without a copy of its records: the framing (size prefix, response
//! header, and every field of the body but the records payloads) is encoded into one small
//! buffer of exactly its size, and the frame is that buffer's pieces interleaved with the
//! batches as they were read (`Bytes` of the tail cache or of a disk read). The socket writes
//! the pieces with vectored writes; no record byte is copied on the way.
//!
//! Byte-identical to `codec::encode_response_frame` of the same response with each partition's
//! batches concatenated into its `records`, by construction: every field is encoded by the
//! generated `kafka-protocol` encoder. Only the records field's length prefix is written here.
//! The prefixes are found without knowing the layout of any version: the body is encoded twice,
//! with each spliced partition's `records` empty (`Some`, length 0) and absent (`None`, length
//! -1, or 0 in the compact form). The two encodings have the same length and differ only in
//! those prefixes (4 bytes each below v12, 1 byte each from v12, where a flexible version writes
//! the length + 1 as an unsigned varint), in response order.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, FetchResponse, ResponseHeader};
use kafka_protocol::protocol::Encodable;

use crate::codec::{response_header_version, CodecError};
use crate::frame::FRAME_SIZE_PREFIX_BYTES;

/// A response frame as the slices that are written one after another, size prefix first.
/// Most responses are one slice; a Fetch response is its framing pieces and record batches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseFrame {
    slices: Vec<Bytes>,
    frame_bytes: usize,
}

impl ResponseFrame {
    /// A frame already encoded in one buffer.
    pub fn whole(frame: Bytes) -> Self {
        Self {
            frame_bytes: frame.len(),
            slices: vec![frame],
        }
    }

    /// The frame's slices in write order; none is empty.
    pub fn slices(&self) -> &[Bytes] {
        &self.slices
    }

    /// Bytes in the whole frame, size prefix included.
    pub fn len(&self) -> usize {
        self.frame_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.frame_bytes == 0
    }

    /// The frame in one buffer: a copy unless it is one slice. For tests and in-process
    /// callers (the simulation), never the socket path.
    pub fn concatenated(&self) -> Bytes {
        if let [only] = self.slices.as_slice() {
            return only.clone();
        }
        let mut frame = BytesMut::with_capacity(self.frame_bytes);
        for slice in &self.slices {
            frame.put_slice(slice);
        }
        frame.freeze()
    }

    /// Appends `slice` to the frame; an empty slice is left out.
    pub fn push(&mut self, slice: Bytes) {
        if !slice.is_empty() {
            self.frame_bytes += slice.len();
            self.slices.push(slice);
        }
    }
}

/// Encodes a Fetch response frame whose records are `partition_batches`: one entry per
/// partition of `response` in encoding order (topic by topic, each topic's partitions in
/// order), the batches of that partition's `records` field. A partition with no batches keeps
/// its own `records` (absent, or empty); a partition with batches must have no records of its
/// own (absent or empty), as they would be lost.
///
/// # Panics
/// When `partition_batches` does not have one entry per partition, or a partition with batches
/// has records of its own: the caller built them together (programmer errors).
pub fn encode_fetch_response_frame(
    api_version: i16,
    correlation_id: i32,
    mut response: FetchResponse,
    partition_batches: &[Vec<Bytes>],
) -> Result<ResponseFrame, CodecError> {
    let encode_error = |reason: String| CodecError::Encode {
        what: "Fetch",
        version: api_version,
        reason,
    };
    let partitions_in_response: usize = response
        .responses
        .iter()
        .map(|topic| topic.partitions.len())
        .sum();
    assert_eq!(
        partitions_in_response,
        partition_batches.len(),
        "one batch list per partition of the response"
    );
    // Records field lengths of the spliced partitions, in response order.
    let mut spliced_records_bytes = Vec::new();
    set_spliced_records(&mut response, partition_batches, Some(&Bytes::new()));
    for batches in partition_batches
        .iter()
        .filter(|batches| !batches.is_empty())
    {
        spliced_records_bytes.push(batches.iter().map(Bytes::len).sum::<usize>());
    }
    let body_with_empty_records = encode_body(&response, api_version).map_err(encode_error)?;
    set_spliced_records(&mut response, partition_batches, None);
    let body_with_absent_records = encode_body(&response, api_version).map_err(encode_error)?;
    let flexible = ApiKey::Fetch.response_header_version(api_version) >= 1;
    let prefix_positions = records_prefix_positions(
        &body_with_empty_records,
        &body_with_absent_records,
        flexible,
    );
    assert_eq!(
        prefix_positions.len(),
        spliced_records_bytes.len(),
        "the two encodings differ only in the spliced records' length prefixes"
    );

    let mut header = BytesMut::with_capacity(16);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(
            &mut header,
            response_header_version(ApiKey::Fetch, api_version),
        )
        .map_err(|error| encode_error(error.to_string()))?;
    let prefix_growth: usize = spliced_records_bytes
        .iter()
        .map(|&bytes| records_prefix_bytes(bytes, flexible) - records_prefix_bytes(0, flexible))
        .sum();
    let framing_bytes =
        FRAME_SIZE_PREFIX_BYTES + header.len() + body_with_empty_records.len() + prefix_growth;
    let records_bytes: usize = spliced_records_bytes.iter().sum();
    let frame_body_bytes = i32::try_from(framing_bytes - FRAME_SIZE_PREFIX_BYTES + records_bytes)
        .map_err(|_| encode_error("response larger than 2 GiB".into()))?;

    // The framing, with the position after each spliced records prefix (where its batches go).
    let mut framing = BytesMut::with_capacity(framing_bytes);
    framing.put_i32(frame_body_bytes);
    framing.put_slice(&header);
    let mut splice_points = Vec::with_capacity(prefix_positions.len());
    let mut body_written = 0;
    let empty_prefix_bytes = records_prefix_bytes(0, flexible);
    for (&position, &records_bytes) in prefix_positions.iter().zip(&spliced_records_bytes) {
        framing.put_slice(&body_with_empty_records[body_written..position]);
        put_records_prefix(&mut framing, records_bytes, flexible)
            .map_err(|()| encode_error("records larger than 2 GiB".into()))?;
        splice_points.push(framing.len());
        body_written = position + empty_prefix_bytes;
    }
    framing.put_slice(&body_with_empty_records[body_written..]);
    assert_eq!(framing.len(), framing_bytes, "framing size computed first");

    let framing = framing.freeze();
    let mut frame = ResponseFrame::default();
    let mut framing_written = 0;
    let spliced_batches = partition_batches
        .iter()
        .filter(|batches| !batches.is_empty());
    for (splice_point, batches) in splice_points.into_iter().zip(spliced_batches) {
        frame.push(framing.slice(framing_written..splice_point));
        for batch in batches {
            frame.push(batch.clone());
        }
        framing_written = splice_point;
    }
    frame.push(framing.slice(framing_written..));
    Ok(frame)
}

/// Sets `records` of every partition that has batches to `records`.
fn set_spliced_records(
    response: &mut FetchResponse,
    partition_batches: &[Vec<Bytes>],
    records: Option<&Bytes>,
) {
    let partitions = response
        .responses
        .iter_mut()
        .flat_map(|topic| topic.partitions.iter_mut());
    for (partition, batches) in partitions.zip(partition_batches) {
        if batches.is_empty() {
            continue;
        }
        assert!(
            partition.records.as_ref().is_none_or(Bytes::is_empty),
            "a partition with batches has no records of its own"
        );
        partition.records = records.cloned();
    }
}

/// The body alone (no header), in a buffer of its computed size.
fn encode_body(response: &FetchResponse, api_version: i16) -> Result<Vec<u8>, String> {
    let body_bytes = response
        .compute_size(api_version)
        .map_err(|error| error.to_string())?;
    let mut body = BytesMut::with_capacity(body_bytes);
    response
        .encode(&mut body, api_version)
        .map_err(|error| error.to_string())?;
    Ok(body.to_vec())
}

/// Where each records length prefix starts: the runs where the two encodings differ (one
/// run per spliced partition, 4 bytes below v12 and 1 byte from v12).
fn records_prefix_positions(
    with_empty_records: &[u8],
    with_absent_records: &[u8],
    flexible: bool,
) -> Vec<usize> {
    assert_eq!(
        with_empty_records.len(),
        with_absent_records.len(),
        "an empty and an absent records field have the same size"
    );
    let prefix_bytes = records_prefix_bytes(0, flexible);
    let mut positions = Vec::new();
    let mut position = 0;
    while position < with_empty_records.len() {
        if with_empty_records[position] == with_absent_records[position] {
            position += 1;
            continue;
        }
        positions.push(position);
        position += prefix_bytes;
    }
    positions
}

/// Bytes of the length prefix of a records field holding `records_bytes`.
fn records_prefix_bytes(records_bytes: usize, flexible: bool) -> usize {
    if !flexible {
        return 4;
    }
    // The compact form writes the length + 1 as an unsigned varint, 7 bits a byte.
    let mut value = records_bytes + 1;
    let mut bytes = 1;
    while value >= 0x80 {
        value >>= 7;
        bytes += 1;
    }
    bytes
}

/// Writes the length prefix as `kafka-protocol` does: `Bytes` is an `i32` length, the compact
/// form an unsigned varint `u32` of the length + 1. `Err` when the length does not fit.
fn put_records_prefix(
    framing: &mut BytesMut,
    records_bytes: usize,
    flexible: bool,
) -> Result<(), ()> {
    if !flexible {
        framing.put_i32(i32::try_from(records_bytes).map_err(|_| ())?);
        return Ok(());
    }
    let mut value = u32::try_from(records_bytes + 1).map_err(|_| ())?;
    while value >= 0x80 {
        framing.put_u8(u8::try_from(value & 0x7f).expect("seven bits") | 0x80);
        value >>= 7;
    }
    framing.put_u8(u8::try_from(value).expect("below 0x80"));
    Ok(())
}
