//! Request and response codec around the generated `kafka-protocol` messages, for both
//! ends of a connection: the broker decodes requests and encodes responses, the clients
//! encode requests and decode responses. Pure: no IO, no async. Decode errors carry the byte
//! offset inside the frame where decoding stopped.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use crate::frame::FRAME_SIZE_PREFIX_BYTES;

/// The fixed front of every request header version: enough to route, to answer, and to
/// name the request in a log line even when the rest cannot be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestPreamble {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

/// A frame is at least ten bytes (checked by `frame`), so the preamble is always present.
pub fn peek_preamble(frame: &[u8]) -> RequestPreamble {
    assert!(
        frame.len() >= 8,
        "frame layer guarantees a header-sized frame"
    );
    RequestPreamble {
        api_key: i16::from_be_bytes([frame[0], frame[1]]),
        api_version: i16::from_be_bytes([frame[2], frame[3]]),
        correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
    }
}

/// A request body or header the generated codec could not decode, or a response it refused
/// to encode.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot decode {what} v{version} at byte {offset} of {frame_bytes}: {reason}")]
    Decode {
        what: &'static str,
        version: i16,
        offset: usize,
        frame_bytes: usize,
        reason: String,
    },
    #[error("cannot encode {what} v{version}: {reason}")]
    Encode {
        what: &'static str,
        version: i16,
        reason: String,
    },
}

/// Decodes the request header from the front of `frame`, leaving `frame` at the body.
pub fn decode_request_header(
    frame: &mut Bytes,
    api_key: ApiKey,
    api_version: i16,
) -> Result<RequestHeader, CodecError> {
    let header_version = api_key.request_header_version(api_version);
    decode_message(frame, "request header", header_version, |buf| {
        RequestHeader::decode(buf, header_version)
    })
}

/// Decodes a request body of type `M` at `version` from the rest of the frame.
pub fn decode_body<M: Decodable>(
    body: &mut Bytes,
    api_key: ApiKey,
    version: i16,
) -> Result<M, CodecError> {
    let what = api_key_name(api_key);
    decode_message(body, what, version, |buf| M::decode(buf, version))
}

fn decode_message<M, E: std::fmt::Display>(
    buf: &mut Bytes,
    what: &'static str,
    version: i16,
    decode: impl FnOnce(&mut Bytes) -> Result<M, E>,
) -> Result<M, CodecError> {
    let frame_bytes = buf.len();
    // Decode from a clone so the offset of failure can be computed from what is left.
    let mut cursor = buf.clone();
    match decode(&mut cursor) {
        Ok(message) => {
            *buf = cursor;
            Ok(message)
        }
        Err(error) => Err(CodecError::Decode {
            what,
            version,
            offset: frame_bytes - cursor.len(),
            frame_bytes,
            reason: error.to_string(),
        }),
    }
}

/// Encodes a whole response frame: size prefix, response header, body.
pub fn encode_response_frame<M: Encodable>(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    body: &M,
) -> Result<Bytes, CodecError> {
    let header_version = response_header_version(api_key, api_version);
    let encode_error = |reason: String| CodecError::Encode {
        what: api_key_name(api_key),
        version: api_version,
        reason,
    };
    let mut frame = BytesMut::with_capacity(256);
    frame.put_i32(0); // patched below, once the length is known
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut frame, header_version)
        .map_err(|error| encode_error(error.to_string()))?;
    body.encode(&mut frame, api_version)
        .map_err(|error| encode_error(error.to_string()))?;
    let body_bytes = i32::try_from(frame.len() - FRAME_SIZE_PREFIX_BYTES)
        .map_err(|_| encode_error("response larger than 2 GiB".into()))?;
    frame[..FRAME_SIZE_PREFIX_BYTES].copy_from_slice(&body_bytes.to_be_bytes());
    Ok(frame.freeze())
}

/// The response header version of `api_key` at `api_version`. `ApiVersions` responses
/// always use header v0 so a client that sent a version the broker does not know can still
/// read the correlation id (KIP-511).
pub fn response_header_version(api_key: ApiKey, api_version: i16) -> i16 {
    if api_key == ApiKey::ApiVersions {
        0
    } else {
        api_key.response_header_version(api_version)
    }
}

/// Encodes a whole request frame (size prefix, header, body) into `frame`, reusing its
/// memory: a client keeps one buffer per connection, so sending allocates nothing once the
/// buffer has grown to its largest request.
pub fn encode_request_frame<R: Request>(
    frame: &mut BytesMut,
    request: &R,
    version: i16,
    correlation_id: i32,
    client_id: &'static str,
) -> Result<(), CodecError> {
    let encode_error = |reason: String| CodecError::Encode {
        what: ApiKey::try_from(R::KEY).map_or("request", api_key_name),
        version,
        reason,
    };
    frame.clear();
    frame.put_i32(0); // patched below, once the length is known
    RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(client_id)))
        .encode(frame, R::header_version(version))
        .map_err(|error| encode_error(error.to_string()))?;
    request
        .encode(frame, version)
        .map_err(|error| encode_error(error.to_string()))?;
    let body_bytes = i32::try_from(frame.len() - FRAME_SIZE_PREFIX_BYTES)
        .map_err(|_| encode_error("request larger than 2 GiB".into()))?;
    frame[..FRAME_SIZE_PREFIX_BYTES].copy_from_slice(&body_bytes.to_be_bytes());
    Ok(())
}

/// Decodes the response header at the front of a response frame body (the bytes after the
/// size prefix) for a request of type `R` sent at `version`, leaving `frame` at the body.
/// Returns the correlation id the broker answered.
pub fn decode_response_header<R: Request>(
    frame: &mut Bytes,
    version: i16,
) -> Result<i32, CodecError> {
    let header_version = ApiKey::try_from(R::KEY).map_or_else(
        |()| R::Response::header_version(version),
        |key| response_header_version(key, version),
    );
    decode_message(frame, "response header", header_version, |buf| {
        ResponseHeader::decode(buf, header_version)
    })
    .map(|header| header.correlation_id)
}

pub fn api_key_name(api_key: ApiKey) -> &'static str {
    match api_key {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::AlterConfigs => "AlterConfigs",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::DeleteRecords => "DeleteRecords",
        ApiKey::OffsetForLeaderEpoch => "OffsetForLeaderEpoch",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::DescribeProducers => "DescribeProducers",
        ApiKey::DescribeLogDirs => "DescribeLogDirs",
        ApiKey::DescribeAcls => "DescribeAcls",
        ApiKey::CreateAcls => "CreateAcls",
        ApiKey::DeleteAcls => "DeleteAcls",
        ApiKey::DescribeClientQuotas => "DescribeClientQuotas",
        ApiKey::AlterClientQuotas => "AlterClientQuotas",
        ApiKey::DescribeUserScramCredentials => "DescribeUserScramCredentials",
        ApiKey::AlterUserScramCredentials => "AlterUserScramCredentials",
        ApiKey::DescribeTopicPartitions => "DescribeTopicPartitions",
        ApiKey::AlterPartitionReassignments => "AlterPartitionReassignments",
        ApiKey::ListPartitionReassignments => "ListPartitionReassignments",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::ElectLeaders => "ElectLeaders",
        ApiKey::OffsetDelete => "OffsetDelete",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::AddPartitionsToTxn => "AddPartitionsToTxn",
        ApiKey::AddOffsetsToTxn => "AddOffsetsToTxn",
        ApiKey::EndTxn => "EndTxn",
        ApiKey::TxnOffsetCommit => "TxnOffsetCommit",
        ApiKey::DescribeTransactions => "DescribeTransactions",
        ApiKey::ListTransactions => "ListTransactions",
        ApiKey::ConsumerGroupHeartbeat => "ConsumerGroupHeartbeat",
        ApiKey::ConsumerGroupDescribe => "ConsumerGroupDescribe",
        _ => "request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, MetadataRequest};

    fn metadata_v1_frame(body: &[u8]) -> Bytes {
        let mut frame = BytesMut::new();
        frame.put_i16(3); // Metadata
        frame.put_i16(1);
        frame.put_i32(77);
        frame.put_i16(4);
        frame.put_slice(b"test");
        frame.put_slice(body);
        frame.freeze()
    }

    #[test]
    fn preamble_is_read_without_decoding_the_rest() {
        let frame = metadata_v1_frame(&[0xde, 0xad]);
        assert_eq!(
            peek_preamble(&frame),
            RequestPreamble {
                api_key: 3,
                api_version: 1,
                correlation_id: 77
            }
        );
    }

    #[test]
    fn header_then_body_decode_and_truncation_reports_the_offset() {
        let mut whole = metadata_v1_frame(&[0, 0, 0, 1, 0, 3, b'a', b'b', b'c']);
        let header = decode_request_header(&mut whole, ApiKey::Metadata, 1).unwrap();
        assert_eq!(
            (header.correlation_id, header.client_id.unwrap().as_str()),
            (77, "test")
        );
        let request: MetadataRequest = decode_body(&mut whole, ApiKey::Metadata, 1).unwrap();
        assert_eq!(
            request.topics.unwrap()[0].name.as_ref().unwrap().0.as_str(),
            "abc"
        );

        // Declares one topic of 3 bytes but carries only 1: the error names where it stopped.
        let mut truncated = metadata_v1_frame(&[0, 0, 0, 1, 0, 3, b'a']);
        decode_request_header(&mut truncated, ApiKey::Metadata, 1).unwrap();
        let error =
            decode_body::<MetadataRequest>(&mut truncated, ApiKey::Metadata, 1).unwrap_err();
        let CodecError::Decode {
            what,
            frame_bytes,
            offset,
            ..
        } = error
        else {
            panic!("{error:?}")
        };
        assert_eq!((what, frame_bytes), ("Metadata", 7));
        assert!(offset <= frame_bytes, "offset {offset} inside the body");
    }

    #[test]
    fn declared_counts_beyond_the_frame_are_refused_before_allocating() {
        // Metadata v1 declaring i32::MAX topics, and v12 (compact) declaring 2^32 - 2, with
        // nothing behind them: allocating first would ask for ~150 GB (vendor/README.md).
        for (version, body) in [
            (1, &[0x7f, 0xff, 0xff, 0xff][..]),
            (12, &[0xff, 0xff, 0xff, 0xff, 0x0f][..]),
        ] {
            let mut body = Bytes::copy_from_slice(body);
            let error =
                decode_body::<MetadataRequest>(&mut body, ApiKey::Metadata, version).unwrap_err();
            assert!(
                error.to_string().contains("is more than the 0 bytes left"),
                "v{version}: {error}"
            );
        }
    }

    #[test]
    fn response_frame_carries_its_size_and_correlation_id() {
        let frame =
            encode_response_frame(ApiKey::ApiVersions, 3, 9, &ApiVersionsResponse::default())
                .unwrap();
        let declared = i32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(declared, frame.len() - 4);
        assert_eq!(i32::from_be_bytes(frame[4..8].try_into().unwrap()), 9);
        // ApiVersions v3 is flexible but its response header stays v0: the body starts
        // right after the correlation id with the error code.
        assert_eq!(&frame[8..10], &[0, 0]);
    }

    #[test]
    fn request_frame_carries_its_size_and_header() {
        let mut frame = BytesMut::new();
        encode_request_frame(&mut frame, &ApiVersionsRequest::default(), 0, 7, "test").unwrap();
        let declared = i32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(declared, frame.len() - 4);
        assert_eq!(&frame[4..6], &(ApiKey::ApiVersions as i16).to_be_bytes());
        assert_eq!(&frame[8..12], &7_i32.to_be_bytes());
        // The broker's own decoder reads it back.
        let mut body = frame.freeze().slice(4..);
        let header = decode_request_header(&mut body, ApiKey::ApiVersions, 0).unwrap();
        assert_eq!(
            (header.correlation_id, header.client_id.unwrap().as_str()),
            (7, "test")
        );
    }

    #[test]
    fn a_response_frame_decodes_on_the_client_side() {
        let frame = encode_response_frame(
            ApiKey::Metadata,
            12,
            5,
            &kafka_protocol::messages::MetadataResponse::default(),
        )
        .unwrap();
        let mut body = frame.slice(4..);
        assert_eq!(
            decode_response_header::<MetadataRequest>(&mut body, 12).unwrap(),
            5
        );
        let mut truncated = Bytes::from_static(&[0, 0]);
        assert!(decode_response_header::<MetadataRequest>(&mut truncated, 12).is_err());
    }
}
