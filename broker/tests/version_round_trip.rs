//! Guards that every request and every response of every API, at every version Ringfeed
//! advertises, survives the broker's codec path both ways (issue 15, item 2): Kafka 3.9's old
//! versions come from regenerated codecs (vendor/README.md), and a version whose decoder and
//! encoder disagree would corrupt a frame only for the clients that use it.
//!
//! The property, per API, version and direction: random bytes that decode to a message re-encode
//! to bytes that decode to the same message, and encoding that message again gives the same
//! bytes. Requests go in as frames through `request_decode::decode_frame` (admission, header,
//! body) and out through the client's `encode_request_frame`; responses go out through the
//! broker's `encode_response_frame` and back through the client's header and body decoders.
//!
//! The bytes are drawn in pieces shaped like the wire's numbers (small i32 and i16, -1, small
//! bytes, any byte): as lengths, counts and varints these make empty, one-element, null and
//! small values, so a good share of draws decode to messages with populated arrays, strings
//! and tagged fields. Each version must yield a number
//! of distinct messages, so a version whose decoder rejects everything cannot pass unseen.
//! `ROUND_TRIP_SEED` replays another seed.
//!
//! Left out: messages with a tagged field whose tag is 2^31 or more. The generated decoders
//! read the tag as an unsigned varint and keep it as a negative `i32`, and the encoders write
//! only tags from 0, so such a message loses that field when re-encoded (every flexible
//! version of every API, not one version's rule; noted in vendor/README.md).

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{self, ApiKey, RequestHeader};
use kafka_protocol::protocol::{Encodable, Request as KafkaRequest, StrBytes};
use ringfeed_broker::codec;
use ringfeed_broker::handlers::Request;
use ringfeed_broker::registry::SUPPORTED_APIS;
use ringfeed_broker::request_decode::{decode_frame, FrameVerdict};
use std::collections::HashSet;

/// Draws per API, version and direction, at most: a direction stops drawing once it has
/// round-tripped `DISTINCT_MESSAGES` different messages.
const DRAWS_MAX: usize = 200_000;
/// Distinct decoded messages each API, version and direction must round-trip.
const DISTINCT_MESSAGES: usize = 25;

/// xorshift64*: deterministic, no dependency.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn small(&mut self) -> u8 {
        [0, 1, 1, 2, 3][(self.next() % 5) as usize]
    }

    /// Up to 400 bytes in pieces shaped like the wire's numbers: a small big-endian i32 or
    /// i16 (a count, a length, an id), a null (-1), one small byte (a varint, a bool, an
    /// int8) or any byte.
    fn bytes(&mut self) -> Vec<u8> {
        let len = (self.next() % 400) as usize;
        let mut out = Vec::with_capacity(len + 4);
        while out.len() < len {
            match self.next() % 20 {
                0..=6 => {
                    let small = self.small();
                    out.extend_from_slice(&[0, 0, 0, small]);
                }
                7..=10 => {
                    let small = self.small();
                    out.extend_from_slice(&[0, small]);
                }
                11..=14 => {
                    let small = self.small();
                    out.push(small);
                }
                15..=16 => out.extend_from_slice(&[0xFF, 0xFF]),
                _ => out.push((self.next() >> 56) as u8),
            }
        }
        out
    }
}

fn seed() -> u64 {
    std::env::var("ROUND_TRIP_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x5EED_0015)
}

/// What one direction of one version yielded.
struct Tally {
    distinct: HashSet<Vec<u8>>,
    /// Distinct messages there are to find: one when the version has no fields at all
    /// (`ListGroups` and `ApiVersions` requests before their flexible versions).
    wanted: usize,
}

impl Tally {
    fn for_message<M: Encodable + Default>(version: i16) -> Self {
        let mut default = BytesMut::new();
        M::default()
            .encode(&mut default, version)
            .expect("the default encodes");
        let wanted = if default.is_empty() {
            1
        } else {
            DISTINCT_MESSAGES
        };
        Tally {
            distinct: HashSet::new(),
            wanted,
        }
    }

    fn done(&self) -> bool {
        self.distinct.len() >= self.wanted
    }

    fn check(&self, what: &str) {
        assert!(
            self.done(),
            "{what}: only {} distinct messages decoded from {DRAWS_MAX} draws",
            self.distinct.len()
        );
    }
}

fn request_frame(key: ApiKey, version: i16, body: &[u8]) -> Bytes {
    let mut frame = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("round-trip")))
        .encode(&mut frame, key.request_header_version(version))
        .expect("header encodes");
    frame.extend_from_slice(body);
    frame.freeze()
}

/// The decoded request, or `None` when the broker refused the frame (not a codec failure:
/// random bytes are mostly not a message).
fn broker_decodes(frame: Bytes) -> Option<Request> {
    match decode_frame(frame) {
        FrameVerdict::Decoded { request, .. } => Some(*request),
        FrameVerdict::Refused { .. } => None,
        FrameVerdict::ApiVersionsFallback(_) => panic!("only served versions are drawn"),
    }
}

/// A decoded message holding an unknown tag of 2^31 or more (see the file comment). Maps
/// print in key order, so such a tag is the first of its map.
fn has_tag_beyond_i32(message: &impl std::fmt::Debug) -> bool {
    format!("{message:?}").contains("unknown_tagged_fields: {-")
}

/// Request: random body -> broker decode -> client encode -> broker decode, compared.
fn request_round_trip<R: KafkaRequest + PartialEq + std::fmt::Debug>(
    message: &R,
    version: i16,
    unwrap: impl Fn(Request) -> R,
) -> Vec<u8> {
    let mut frame = BytesMut::new();
    codec::encode_request_frame(&mut frame, message, version, 7, "round-trip")
        .unwrap_or_else(|error| panic!("decoded but cannot encode: {error}: {message:?}"));
    let mut encoded = frame.freeze();
    encoded.advance(4);
    let again = broker_decodes(encoded.clone()).map_or_else(
        || panic!("v{version}: re-encoded request refused: {message:?}"),
        &unwrap,
    );
    assert_eq!(&again, message, "v{version}: request changed on the way");
    let mut frame_again = BytesMut::new();
    codec::encode_request_frame(&mut frame_again, &again, version, 7, "round-trip")
        .expect("encodes once more");
    assert_eq!(
        &frame_again[4..],
        &encoded[..],
        "v{version}: request encodes differently the second time"
    );
    encoded.to_vec()
}

/// Response: random body -> client decode -> broker encode -> client decode, compared.
fn response_round_trip<R: KafkaRequest>(key: ApiKey, version: i16, body: &[u8]) -> Option<Vec<u8>>
where
    R::Response: PartialEq + std::fmt::Debug,
{
    let mut drawn = Bytes::copy_from_slice(body);
    let message: R::Response = codec::decode_body(&mut drawn, key, version).ok()?;
    if has_tag_beyond_i32(&message) {
        return None;
    }
    let frame = codec::encode_response_frame(key, version, 9, &message)
        .unwrap_or_else(|error| panic!("{key:?} v{version}: decoded but cannot encode: {error}"));
    let mut reply = frame.slice(4..);
    let correlation_id = codec::decode_response_header::<R>(&mut reply, version)
        .unwrap_or_else(|error| panic!("{key:?} v{version}: {error}"));
    assert_eq!(correlation_id, 9);
    let body_bytes = reply.clone();
    let again: R::Response = codec::decode_body(&mut reply, key, version).unwrap_or_else(|error| {
        panic!("{key:?} v{version}: re-encoded response: {error}: {message:?}, encoded {frame:?}")
    });
    assert!(
        reply.is_empty(),
        "{key:?} v{version}: {} bytes left",
        reply.len()
    );
    assert_eq!(again, message, "{key:?} v{version}: response changed");
    let frame_again =
        codec::encode_response_frame(key, version, 9, &again).expect("encodes once more");
    assert_eq!(
        frame_again, frame,
        "{key:?} v{version}: encodes differently"
    );
    Some(body_bytes.to_vec())
}

/// Runs both directions of `key` at `version`.
fn round_trip_version(key: ApiKey, version: i16, draws: &mut Draws) {
    macro_rules! by_api {
        ($($variant:ident => $request:ident),* $(,)?) => {
            match key {
                $(ApiKey::$variant => {
                    let mut requests = Tally::for_message::<messages::$request>(version);
                    let mut responses = Tally::for_message::<
                        <messages::$request as KafkaRequest>::Response,
                    >(version);
                    let started = std::time::Instant::now();
                    let mut drawn = 0;
                    let unwrap = |request: Request| match request {
                        Request::$variant(inner) => inner,
                        other => panic!("decoded as {other:?}"),
                    };
                    for _ in 0..DRAWS_MAX {
                        if requests.done() && responses.done() {
                            break;
                        }
                        drawn += 1;
                        let body = draws.bytes();
                        if let Some(request) = broker_decodes(request_frame(key, version, &body)) {
                            let message = unwrap(request);
                            if !has_tag_beyond_i32(&message) {
                                requests.distinct.insert(request_round_trip(&message, version, unwrap));
                            }
                        }
                        if let Some(encoded) =
                            response_round_trip::<messages::$request>(key, version, &body)
                        {
                            responses.distinct.insert(encoded);
                        }
                    }
                    eprintln!("{key:?} v{version}: {drawn} draws, {:?}", started.elapsed());
                    requests.check(&format!("{key:?} v{version} request"));
                    responses.check(&format!("{key:?} v{version} response"));
                })*
                other => panic!("no round trip for {other:?}; add it here"),
            }
        };
    }
    by_api!(
        Produce => ProduceRequest,
        Fetch => FetchRequest,
        ListOffsets => ListOffsetsRequest,
        Metadata => MetadataRequest,
        OffsetCommit => OffsetCommitRequest,
        OffsetFetch => OffsetFetchRequest,
        FindCoordinator => FindCoordinatorRequest,
        JoinGroup => JoinGroupRequest,
        Heartbeat => HeartbeatRequest,
        LeaveGroup => LeaveGroupRequest,
        SyncGroup => SyncGroupRequest,
        DescribeGroups => DescribeGroupsRequest,
        ListGroups => ListGroupsRequest,
        DeleteGroups => DeleteGroupsRequest,
        OffsetDelete => OffsetDeleteRequest,
        DescribeConfigs => DescribeConfigsRequest,
        AlterConfigs => AlterConfigsRequest,
        ApiVersions => ApiVersionsRequest,
        CreateTopics => CreateTopicsRequest,
        DeleteTopics => DeleteTopicsRequest,
        DeleteRecords => DeleteRecordsRequest,
        OffsetForLeaderEpoch => OffsetForLeaderEpochRequest,
        CreatePartitions => CreatePartitionsRequest,
        IncrementalAlterConfigs => IncrementalAlterConfigsRequest,
        DescribeCluster => DescribeClusterRequest,
        InitProducerId => InitProducerIdRequest,
        AddPartitionsToTxn => AddPartitionsToTxnRequest,
        AddOffsetsToTxn => AddOffsetsToTxnRequest,
        EndTxn => EndTxnRequest,
        TxnOffsetCommit => TxnOffsetCommitRequest,
        DescribeTransactions => DescribeTransactionsRequest,
        ListTransactions => ListTransactionsRequest,
        DescribeLogDirs => DescribeLogDirsRequest,
        DescribeAcls => DescribeAclsRequest,
        CreateAcls => CreateAclsRequest,
        DeleteAcls => DeleteAclsRequest,
        DescribeClientQuotas => DescribeClientQuotasRequest,
        AlterClientQuotas => AlterClientQuotasRequest,
        DescribeUserScramCredentials => DescribeUserScramCredentialsRequest,
        AlterUserScramCredentials => AlterUserScramCredentialsRequest,
        DescribeProducers => DescribeProducersRequest,
        DescribeTopicPartitions => DescribeTopicPartitionsRequest,
        SaslHandshake => SaslHandshakeRequest,
        SaslAuthenticate => SaslAuthenticateRequest,
        ConsumerGroupHeartbeat => ConsumerGroupHeartbeatRequest,
        ConsumerGroupDescribe => ConsumerGroupDescribeRequest,
        ElectLeaders => ElectLeadersRequest,
        AlterPartitionReassignments => AlterPartitionReassignmentsRequest,
        ListPartitionReassignments => ListPartitionReassignmentsRequest,
    );
}

#[test]
fn every_request_and_response_round_trips_at_every_served_version() {
    let mut draws = Draws(seed());
    let mut versions = 0;
    for spec in SUPPORTED_APIS {
        // Every accepted version is drawn (the registry's test keeps accepted = advertised).
        for version in spec.accepted_min..=spec.advertised_max {
            round_trip_version(spec.key, version, &mut draws);
            versions += 1;
        }
    }
    assert!(versions > 150, "{versions} versions");
}
