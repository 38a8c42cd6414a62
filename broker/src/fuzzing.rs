//! Entry point of the request-decoding fuzz target (`fuzz/fuzz_targets/request_decoding.rs`),
//! kept in the crate so the committed corpus replays through the same code in `cargo test`
//! (stable, no libFuzzer) as under `cargo fuzz`. Compiled for tests and with the `fuzzing`
//! feature only.
//!
//! The input is the byte stream a client sends on one connection. It goes through what the
//! connection does before a handler runs (`connection::start_request`): framing with the size
//! check, the preamble, admission by the registry, the header and body decode, and the checks
//! that do not need a shard (splitting Produce records into batches and validating each as the
//! log would). A decoded request must also encode back at its version and decode to itself
//! (exactly for non-flexible versions, see `round_trip`). Any input must end in a decoded request or a
//! refusal, never a panic.

use std::fmt::Debug;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::frame::FrameBuffer;
use crate::handlers::Request;
use crate::limits::Limits;
use crate::records::split_batches;
use crate::request_decode::{decode_frame, FrameVerdict};

/// Bytes handed to the frame buffer per simulated socket read; small so reassembly across
/// reads is exercised too.
const READ_BYTES: usize = 1000;

/// The SASL target: byte 0 picks the mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), the
/// rest is the client's tokens separated by a NUL NUL pair, stepped through one
/// `Authenticator` against a fixed user (`fuzz`, password `fuzz`; 4096 iterations) until
/// the exchange ends. Any input must end in a challenge, a login or a `Failure`, never a
/// panic. Returns how many steps succeeded.
pub fn sasl_exchange(data: &[u8]) -> usize {
    use crate::sasl::scram::{ScramCredential, ScramHash};
    use crate::sasl::{Authenticator, Credentials, Mechanism};
    thread_local! {
        static CREDENTIALS: Credentials = {
            let mut credentials = Credentials::default();
            for hash in [ScramHash::Sha256, ScramHash::Sha512] {
                credentials.insert("fuzz", ScramCredential::derive(hash, b"fuzz", b"fuzz-salt", 4096));
            }
            credentials
        };
    }
    let Some((selector, rest)) = data.split_first() else {
        return 0;
    };
    let mechanism = match selector % 3 {
        0 => Mechanism::Plain,
        1 => Mechanism::Scram(ScramHash::Sha256),
        _ => Mechanism::Scram(ScramHash::Sha512),
    };
    let mut authenticator = Authenticator::new(mechanism);
    let mut steps = 0;
    CREDENTIALS.with(|credentials| {
        for token in split_tokens(rest) {
            match authenticator.step(token, credentials, "fuzz-server-nonce") {
                Ok(_) => steps += 1,
                Err(_) => break,
            }
        }
    });
    steps
}

/// The `ssl.principal.mapping.rules` target: the input up to its first NUL is the rule
/// text, the rest a certificate subject. Any input must parse or be refused, and a parsed
/// list must map any subject to a name or to none, never panic. Returns whether it parsed.
pub fn principal_mapping(data: &[u8]) -> bool {
    let (rules, subject) = match data.iter().position(|byte| *byte == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b"CN=fuzz,OU=test,O=Ringfeed"[..]),
    };
    let Ok(mapper) = crate::tls::PrincipalMapper::parse(&String::from_utf8_lossy(rules)) else {
        return false;
    };
    let _ = mapper.name(&String::from_utf8_lossy(subject));
    true
}

fn split_tokens(data: &[u8]) -> Vec<&[u8]> {
    let mut tokens = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(2).position(|pair| pair == [0, 0]) {
        tokens.push(&rest[..at]);
        rest = &rest[at + 2..];
    }
    tokens.push(rest);
    tokens
}

/// The request-decoding target: the input as one connection's incoming byte stream.
/// Returns how many requests were decoded before the stream ended or was refused.
pub fn request_decoding(data: &[u8]) -> usize {
    let limits = Limits::default();
    let mut frames = FrameBuffer::new(limits.request_frame_bytes_max);
    let mut input = data;
    let mut decoded = 0;
    loop {
        match frames.take_frame() {
            Err(_) => return decoded, // unframeable: the connection closes
            Ok(Some(frame)) => {
                assert!(frame.len() <= limits.request_frame_bytes_max);
                match decode_frame(frame) {
                    FrameVerdict::Decoded {
                        api_key,
                        api_version,
                        header,
                        request,
                    } => {
                        check_decoded(api_key, api_version, &header, &request, &limits);
                        decoded += 1;
                    }
                    FrameVerdict::ApiVersionsFallback(response) => {
                        let declared = i32::from_be_bytes(response[..4].try_into().expect("4"));
                        assert_eq!(declared as usize, response.len() - 4);
                    }
                    FrameVerdict::Refused { .. } => return decoded, // the connection closes
                }
                continue;
            }
            Ok(None) => {}
        }
        if input.is_empty() || frames.pending_frame_size().is_err() {
            return decoded;
        }
        let space = frames.read_space();
        let count = space.len().min(READ_BYTES).min(input.len());
        space[..count].copy_from_slice(&input[..count]);
        frames.commit(count);
        input = &input[count..];
    }
}

/// The message-set target (`fuzz/fuzz_targets/message_set_reading.rs`): arbitrary bytes as a
/// Produce v0-2 partition's records (read, decompressed, up-converted) and as a fetch-style
/// set; a set that converts is down-converted back at both magics under a small `max_bytes`.
/// Any input ends in a converted batch or a Kafka error code, never a panic. Returns whether
/// the input converted.
pub fn message_set_reading(data: &[u8]) -> bool {
    use crate::message_format::{down_convert, up_convert, DownConversion};
    use ringfeed_protocol::message_set::MessageSetReader;
    for message in MessageSetReader::allowing_partial_tail(data) {
        if message.is_err() {
            break;
        }
    }
    let Ok(batch) = up_convert(data, Limits::default().request_frame_bytes_max) else {
        return false;
    };
    ringfeed_storage::batch::validate(&batch, usize::MAX).expect("a converted batch is valid");
    for magic in [0, 1] {
        for whole_first_message in [false, true] {
            let rules = DownConversion {
                magic,
                fetch_offset: 0,
                max_bytes: 64,
                whole_first_message,
            };
            down_convert(std::slice::from_ref(&batch), rules).expect("a valid batch converts");
        }
    }
    true
}

/// Checks on a decoded request that need no shard: it goes back through the codec, and
/// Produce records split into batches the storage validation can judge without panicking.
fn check_decoded(
    api_key: ApiKey,
    api_version: i16,
    header: &RequestHeader,
    request: &Request,
    limits: &Limits,
) {
    let header_version = api_key.request_header_version(api_version);
    // Flexible versions (header v2) carry tagged fields; see `round_trip`.
    let flexible = header_version >= 2;
    round_trip(header, header_version, flexible);
    let version = api_version;
    match request {
        Request::Produce(produce) => {
            round_trip(produce, version, flexible);
            for topic in &produce.topic_data {
                for partition in &topic.partition_data {
                    let records = partition.records.clone().unwrap_or_default();
                    if let Ok(batches) = split_batches(&records, limits.message_bytes_max_default) {
                        for stored in batches {
                            let _ = ringfeed_storage::batch::validate(
                                &stored,
                                limits.message_bytes_max_default,
                            );
                        }
                    }
                }
            }
        }
        Request::Fetch(r) => round_trip(r, version, flexible),
        Request::ListOffsets(r) => round_trip(r, version, flexible),
        Request::Metadata(r) => round_trip(r, version, flexible),
        Request::OffsetCommit(r) => round_trip(r, version, flexible),
        Request::OffsetFetch(r) => round_trip(r, version, flexible),
        Request::FindCoordinator(r) => round_trip(r, version, flexible),
        Request::JoinGroup(r) => round_trip(r, version, flexible),
        Request::Heartbeat(r) => round_trip(r, version, flexible),
        Request::LeaveGroup(r) => round_trip(r, version, flexible),
        Request::SyncGroup(r) => round_trip(r, version, flexible),
        Request::DescribeGroups(r) => round_trip(r, version, flexible),
        Request::ListGroups(r) => round_trip(r, version, flexible),
        Request::DeleteGroups(r) => round_trip(r, version, flexible),
        Request::ElectLeaders(r) => round_trip(r, version, flexible),
        Request::OffsetDelete(r) => round_trip(r, version, flexible),
        Request::DescribeConfigs(r) => round_trip(r, version, flexible),
        Request::AlterConfigs(r) => round_trip(r, version, flexible),
        Request::ApiVersions(r) => round_trip(r, version, flexible),
        Request::CreateTopics(r) => round_trip(r, version, flexible),
        Request::DeleteTopics(r) => round_trip(r, version, flexible),
        Request::DeleteRecords(r) => round_trip(r, version, flexible),
        Request::OffsetForLeaderEpoch(r) => round_trip(r, version, flexible),
        Request::CreatePartitions(r) => round_trip(r, version, flexible),
        Request::IncrementalAlterConfigs(r) => round_trip(r, version, flexible),
        Request::DescribeCluster(r) => round_trip(r, version, flexible),
        Request::DescribeLogDirs(r) => round_trip(r, version, flexible),
        Request::DescribeAcls(r) => round_trip(r, version, flexible),
        Request::CreateAcls(r) => round_trip(r, version, flexible),
        Request::DeleteAcls(r) => round_trip(r, version, flexible),
        Request::DescribeClientQuotas(r) => {
            round_trip(r, version, flexible);
            quota_filter(r);
        }
        Request::AlterClientQuotas(r) => {
            round_trip(r, version, flexible);
            quota_alteration(r);
        }
        Request::DescribeUserScramCredentials(r) => round_trip(r, version, flexible),
        Request::AlterUserScramCredentials(r) => round_trip(r, version, flexible),
        Request::DescribeProducers(r) => round_trip(r, version, flexible),
        Request::DescribeTopicPartitions(r) => round_trip(r, version, flexible),
        Request::InitProducerId(r) => round_trip(r, version, flexible),
        Request::AddPartitionsToTxn(r) => round_trip(r, version, flexible),
        Request::AddOffsetsToTxn(r) => round_trip(r, version, flexible),
        Request::EndTxn(r) => round_trip(r, version, flexible),
        Request::TxnOffsetCommit(r) => round_trip(r, version, flexible),
        Request::DescribeTransactions(r) => round_trip(r, version, flexible),
        Request::ListTransactions(r) => round_trip(r, version, flexible),
        Request::ConsumerGroupHeartbeat(r) => round_trip(r, version, flexible),
        Request::ConsumerGroupDescribe(r) => round_trip(r, version, flexible),
        Request::AlterPartitionReassignments(r) => round_trip(r, version, flexible),
        Request::ListPartitionReassignments(r) => round_trip(r, version, flexible),
        Request::SaslHandshake(r) => round_trip(r, version, flexible),
        Request::SaslAuthenticate(r) => {
            round_trip(r, version, flexible);
            // The token goes through every mechanism's first step, as a login would.
            for mechanism in 0..3 {
                let mut stream = vec![mechanism];
                stream.extend_from_slice(&r.auth_bytes);
                sasl_exchange(&stream);
            }
        }
    }
}

/// A `DescribeClientQuotas` filter goes through the handler's parse and match.
fn quota_filter(request: &kafka_protocol::messages::DescribeClientQuotasRequest) {
    let components: Vec<(&str, i8, Option<&str>)> = request
        .components
        .iter()
        .map(|c| (c.entity_type.as_str(), c.match_type, c._match.as_deref()))
        .collect();
    if let Ok(filter) = crate::quotas::QuotaFilter::parse(&components, request.strict) {
        let entity = crate::quotas::Entity {
            user: Some(crate::quotas::EntityName::Default),
            client_id: None,
        };
        let _ = filter.matches(&entity);
    }
}

/// An `AlterClientQuotas` goes through the store's plan (entity and value checks, bounds)
/// against an empty set; what it accepts must serialize and read back equal.
fn quota_alteration(request: &kafka_protocol::messages::AlterClientQuotasRequest) {
    use crate::quotas::store::{plan, QuotaEntry};
    let entries = request
        .entries
        .iter()
        .map(|entry| {
            let components: Vec<(&str, Option<&str>)> = entry
                .entity
                .iter()
                .map(|c| (c.entity_type.as_str(), c.entity_name.as_deref()))
                .collect();
            QuotaEntry {
                entity: crate::quotas::Entity::parse(&components),
                ops: entry
                    .ops
                    .iter()
                    .map(|op| crate::quotas::QuotaOp {
                        key: op.key.to_string(),
                        value: op.value,
                        remove: op.remove,
                    })
                    .collect(),
            }
        })
        .collect();
    let (set, _) = plan(&crate::quotas::QuotaSet::default(), entries);
    let path = std::path::Path::new("quotas.json");
    let reread = crate::quotas::QuotaSet::from_json(&set.to_json(), path);
    assert_eq!(
        reread.as_ref(),
        Ok(&set),
        "an accepted quota set reads back"
    );
}

/// The broker-heartbeat target (`fuzz/fuzz_targets/broker_heartbeat.rs`): the payload a peer
/// sends a registry mailbox: a heartbeat (`controller::registry::BrokerHeartbeat`) or a
/// forwarded security change or its reply (`controller::forwarding`), an `ElectLeaders`
/// ask (`controller::election_mail`), or a transaction marker or its answer
/// (`transactions::marker_mail`). Any input must decode
/// or be refused, never panic; what decodes must encode back to bytes that decode to the
/// same message, and a forwarded change must apply (or be refused) without a panic. Returns
/// whether it decoded.
pub fn broker_heartbeat(data: &[u8]) -> bool {
    use crate::controller::forwarding::ForwardMail;
    use crate::controller::registry::BrokerHeartbeat;
    use crate::transactions::marker_mail::MarkerMail;
    if let Some(mail) = MarkerMail::decode(data) {
        let Ok(mail) = mail else {
            return false;
        };
        let bytes = match &mail {
            MarkerMail::Request(request) => request.encode(),
            MarkerMail::Reply(reply) => reply.encode(),
        };
        assert_eq!(
            bytes, data,
            "a marker mail has one encoding: what decodes encodes back to its bytes"
        );
        return true;
    }
    if let Some(election) = crate::controller::election_mail::ElectionMail::decode(data) {
        let Ok(election) = election else {
            return false;
        };
        let again = crate::controller::election_mail::ElectionMail::decode(&election.encode());
        assert_eq!(
            again,
            Some(Ok(election)),
            "election mail round trip changed it"
        );
        return true;
    }
    if let Some(mail) = ForwardMail::decode(data) {
        let Ok(mail) = mail else {
            return false;
        };
        let bytes = match &mail {
            ForwardMail::Request(request) => request.encode(),
            ForwardMail::Reply(reply) => reply.encode(),
        };
        let again = ForwardMail::decode(&bytes)
            .expect("re-encoded forward mail is forward mail")
            .expect("re-encoded forward mail decodes");
        assert_eq!(again, mail, "forward mail round trip changed it");
        match mail {
            ForwardMail::Request(request) => {
                if let Ok(change) = request.change.into_change() {
                    let mut records = crate::controller::store::SecurityRecords::default();
                    crate::controller::security::apply(&mut records, change);
                }
            }
            ForwardMail::Reply(reply) => drop(reply.reply.into_reply()),
        }
        return true;
    }
    let Ok(heartbeat) = BrokerHeartbeat::decode(data) else {
        return false;
    };
    let again = BrokerHeartbeat::decode(&heartbeat.encode()).expect("re-encoded heartbeat decodes");
    assert_eq!(again, heartbeat, "heartbeat round trip changed it");
    true
}

/// The consumer-protocol target (`fuzz/fuzz_targets/consumer_protocol.rs`): arbitrary bytes
/// as a classic member's `ConsumerProtocolSubscription` and `ConsumerProtocolAssignment`
/// (KIP-848's migration reads them from `JoinGroup` metadata and from the assignments a
/// classic leader sent), and as both halves of a classic member moved into a consumer group.
/// Any input must decode or be refused, never panic; what decodes must encode back to bytes
/// that decode to the same topics and partitions. Returns whether either decoded.
pub fn consumer_protocol(data: &[u8]) -> bool {
    use crate::groups::consumer::classic_members::ClassicSnapshot;
    use crate::groups::consumer::ConsumerGroup;
    use crate::groups::consumer_protocol::{
        decode_assignment, decode_subscription, encode_assignment, encode_subscription, VERSION_MAX,
    };
    let subscription = decode_subscription(data);
    if let Ok(subscription) = &subscription {
        let version = subscription.version.min(VERSION_MAX);
        let again = encode_subscription(version, &subscription.topics, &subscription.owned);
        let again = decode_subscription(&again).expect("a re-encoded subscription decodes");
        assert_eq!(
            (&again.topics, &again.owned),
            (&subscription.topics, &subscription.owned)
        );
    }
    let assignment = decode_assignment(data);
    if let Ok(assignment) = &assignment {
        let again = decode_assignment(&encode_assignment(1, assignment));
        assert_eq!(
            again.as_ref(),
            Ok(assignment),
            "assignment round trip changed it"
        );
    }
    let snapshot = ClassicSnapshot {
        member_id: "m".into(),
        instance_id: None,
        client_id: "c".into(),
        client_host: "h".into(),
        session_timeout: std::time::Duration::from_secs(10),
        rebalance_timeout: std::time::Duration::from_secs(30),
        protocols: vec![("range".into(), Bytes::copy_from_slice(data))],
        metadata: Bytes::copy_from_slice(data),
        assignment: Bytes::copy_from_slice(data),
    };
    let converted = ConsumerGroup::from_classic(1, vec![snapshot], std::time::Instant::now());
    assert_eq!(
        converted.is_ok(),
        subscription.is_ok() && assignment.is_ok(),
        "a member converts exactly when both halves decode"
    );
    subscription.is_ok() || assignment.is_ok()
}

/// Encodes a decoded message at the version it came in and decodes the result. For
/// non-flexible versions the codec must be exactly symmetric: the message must encode and
/// decode back equal. Flexible versions are only required not to panic: `kafka-protocol`
/// 0.18 keeps an unknown tagged field whose tag is 2^31 or more under a negative key and then
/// leaves it out when encoding while still counting it, so such a message does not survive
/// the round trip (found by this target; harmless to the broker, which never re-encodes a
/// request, and kept here as `regression-flexible-tag-above-i32`).
fn round_trip<M: Encodable + Decodable + PartialEq + Debug>(
    message: &M,
    version: i16,
    flexible: bool,
) {
    let mut encoded = bytes::BytesMut::new();
    let encoding = message.encode(&mut encoded, version);
    if flexible {
        if encoding.is_ok() {
            let _ = M::decode(&mut encoded.freeze(), version);
        }
        return;
    }
    encoding.unwrap_or_else(|error| panic!("decoded v{version} message does not encode: {error}"));
    let decoded = M::decode(&mut encoded.freeze(), version)
        .unwrap_or_else(|error| panic!("re-encoded v{version} message does not decode: {error}"));
    assert_eq!(
        &decoded, message,
        "v{version} round trip changed the message"
    );
}

#[cfg(test)]
mod tests {
    //! Replays every committed corpus file (`fuzz/corpus/request_decoding/`) through the
    //! entry point above, so a crash the fuzzer once found stays fixed under `cargo test`.
    use super::*;
    use std::path::{Path, PathBuf};

    /// The committed inputs of one fuzz target (`fuzz/corpus/<target>/`), sorted; never empty.
    fn corpus(target: &str) -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "{} holds no corpus", dir.display());
        paths
    }

    #[test]
    fn broker_heartbeat_corpus_replays() {
        use crate::controller::leadership::LeadershipChange;
        use crate::controller::producer_ids::ProducerIdRequest;
        use crate::controller::registry::BrokerHeartbeat;
        use crate::controller::store::{BrokerRecord, ListenerRecord};
        let seed = BrokerHeartbeat {
            registration: BrokerRecord {
                node_id: 2,
                incarnation: 1_796_000_000_000,
                listeners: vec![ListenerRecord {
                    name: "PLAINTEXT".into(),
                    host: "127.0.0.1".into(),
                    port: 9092,
                }],
                rack: Some("rack-a".into()),
                shard_count: 4,
                fenced: false,
            },
            wants_offsets_topic: true,
            leadership: Vec::new(),
            producer_ids: None,
            wants_transaction_state_topic: true,
        };
        let reports = BrokerHeartbeat {
            leadership: (1..4)
                .map(|group_id| LeadershipChange {
                    group_id,
                    leader: 2,
                    term: group_id + 4,
                    isr: vec![2, 1, 3],
                    voters: vec![1, 2, 3],
                })
                .collect(),
            producer_ids: Some(ProducerIdRequest {
                after: 3000,
                floor: 1000,
            }),
            ..seed.clone()
        };
        // `registration-v1` is a version 1 heartbeat (the build before leadership reports);
        // the `-v3` files are version 3 (before `__transaction_state` requests).
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/broker_heartbeat");
        if std::env::var_os("RINGFEED_WRITE_CORPUS").is_some() {
            std::fs::create_dir_all(&dir).expect("corpus directory");
            std::fs::write(dir.join("registration"), seed.encode()).expect("seed");
            std::fs::write(dir.join("leadership-and-producer-ids"), reports.encode())
                .expect("seed");
            for (name, bytes) in forward_seeds().into_iter().chain(marker_seeds()) {
                std::fs::write(dir.join(name), bytes).expect("seed");
            }
        }
        let paths = corpus("broker_heartbeat");
        let decoded = paths
            .iter()
            .filter(|path| super::broker_heartbeat(&std::fs::read(path).expect("corpus file")))
            .count();
        assert!(
            decoded >= 9,
            "{decoded} seeds decode: the target would see too few heartbeats, forwards and markers"
        );
    }

    /// A commit marker for a partition another broker leads, and its answer.
    fn marker_seeds() -> Vec<(&'static str, Vec<u8>)> {
        use crate::partition::TxnMarker;
        use crate::transactions::marker_mail::{MarkerReply, MarkerRequest};
        let request = MarkerRequest {
            id: 1_796_000_000_000_000_001,
            tp: crate::metadata::TopicPartition {
                topic: "orders".into(),
                partition: 3,
            },
            marker: TxnMarker {
                producer_id: 4000,
                producer_epoch: 2,
                commit: true,
                coordinator_epoch: 7,
            },
        };
        let reply = MarkerReply {
            id: request.id,
            error_code: crate::error_codes::NOT_LEADER_OR_FOLLOWER,
        };
        vec![
            ("marker-request", request.encode()),
            ("marker-reply", reply.encode()),
        ]
    }

    /// A forwarded credential change and a reply removing an ACL.
    fn forward_seeds() -> Vec<(&'static str, Vec<u8>)> {
        use crate::controller::forwarding::{
            ForwardReply, ForwardRequest, WireChange, WireReply, WireUpsertion,
        };
        use crate::controller::store::AclRecord;
        let request = ForwardRequest {
            id: 7,
            change: WireChange::Credentials {
                deletions: vec![("bob".into(), 1)],
                upsertions: vec![WireUpsertion {
                    user: "alice".into(),
                    mechanism: 2,
                    iterations: 4096,
                    salt: vec![1; 24],
                    salted_password: vec![2; 64],
                }],
            },
        };
        let reply = ForwardReply {
            id: 7,
            epoch: 42,
            reply: WireReply::Deleted(Ok(vec![vec![AclRecord {
                resource_type: 2,
                resource_name: "orders".into(),
                pattern_type: 4,
                principal: "User:alice".into(),
                host: "*".into(),
                operation: 4,
                permission: 2,
            }]])),
        };
        vec![
            ("forward-request", request.encode()),
            ("forward-reply", reply.encode()),
        ]
    }

    #[test]
    fn consumer_protocol_corpus_replays() {
        use crate::groups::assignor::Assignment;
        use crate::groups::consumer_protocol::{encode_assignment, encode_subscription};
        let topics = vec!["orders".to_string(), "audit".to_string()];
        let owned: Assignment = [("orders".to_string(), [0, 3].into())].into();
        let mut lying = encode_subscription(1, &topics, &owned).to_vec();
        lying.splice(2..6, [0x7f, 0xff, 0xff, 0xff]);
        let seeds: Vec<(&str, Vec<u8>)> = vec![
            (
                "subscription-v0",
                encode_subscription(0, &topics, &owned).to_vec(),
            ),
            (
                "subscription-v1",
                encode_subscription(1, &topics, &owned).to_vec(),
            ),
            (
                "subscription-v3",
                encode_subscription(3, &topics, &owned).to_vec(),
            ),
            ("assignment-v1", encode_assignment(1, &owned).to_vec()),
            ("lying-topic-count", lying),
        ];
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/consumer_protocol");
        if std::env::var_os("RINGFEED_WRITE_CORPUS").is_some() {
            std::fs::create_dir_all(&dir).expect("corpus directory");
            for (name, bytes) in &seeds {
                std::fs::write(dir.join(name), bytes).expect("seed");
            }
        }
        let paths = corpus("consumer_protocol");
        let decoded = paths
            .iter()
            .filter(|path| super::consumer_protocol(&std::fs::read(path).expect("corpus file")))
            .count();
        assert!(
            decoded >= 4 && decoded < paths.len(),
            "the seeds hold valid messages and hostile ones: {decoded} of {} decoded",
            paths.len()
        );
    }

    #[test]
    fn sasl_exchange_corpus_replays() {
        let paths = corpus("sasl_exchange");
        let mut completed = 0;
        for path in &paths {
            completed += super::sasl_exchange(&std::fs::read(path).expect("corpus file"));
        }
        // The seeds hold a whole PLAIN login and a SCRAM first message that must get a
        // challenge: the exchange is reached, not refused at the first byte.
        assert!(
            completed >= 2,
            "only {completed} steps succeeded over the seeds"
        );
    }

    #[test]
    fn principal_mapping_corpus_replays() {
        let paths = corpus("principal_mapping");
        let parsed = paths
            .iter()
            .filter(|path| super::principal_mapping(&std::fs::read(path).expect("corpus file")))
            .count();
        // Kafka's documented lists parse; the invalid seed does not.
        assert!(
            parsed >= 2 && parsed < paths.len(),
            "{parsed} of {} parsed",
            paths.len()
        );
    }

    #[test]
    fn request_decoding_corpus_replays() {
        let paths = corpus("request_decoding");
        let mut decoded = 0;
        for path in &paths {
            println!("{}", path.display());
            decoded += request_decoding(&std::fs::read(path).expect("corpus file"));
        }
        // Most seeds are frames captured from real clients: they must decode, or the
        // replay is not exercising the decode path at all.
        assert!(
            decoded * 2 > paths.len(),
            "{decoded} of {} inputs decoded",
            paths.len()
        );
    }

    #[test]
    fn message_set_reading_corpus_replays() {
        let paths = corpus("message_set_reading");
        let converted = paths
            .iter()
            .filter(|path| message_set_reading(&std::fs::read(path).expect("corpus file")))
            .count();
        // The seeds are valid sets of each magic and codec and hostile ones: both kinds.
        assert!(
            converted > 0 && converted < paths.len(),
            "{converted} of {}",
            paths.len()
        );
    }

    #[test]
    fn every_supported_version_decodes_a_minimal_request() {
        // A header with a null client id and an all-default body, per accepted version:
        // the decode path admits it and round-trips it.
        for spec in crate::registry::SUPPORTED_APIS {
            for version in spec.accepted_min..=spec.advertised_max {
                let frame = minimal_frame(spec.key, version);
                match decode_frame(frame) {
                    FrameVerdict::Decoded { api_key, .. } => assert_eq!(api_key, spec.key),
                    other => panic!("{:?} v{version}: {other:?}", spec.key),
                }
            }
        }
    }

    fn minimal_frame(api_key: ApiKey, version: i16) -> Bytes {
        let mut frame = bytes::BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(1)
            .encode(&mut frame, api_key.request_header_version(version))
            .expect("header");
        encode_default_body(api_key, version, &mut frame);
        frame.freeze()
    }

    fn encode_default_body(api_key: ApiKey, version: i16, out: &mut bytes::BytesMut) {
        use kafka_protocol::messages as m;
        macro_rules! body {
            ($($key:ident => $request:ident),* $(,)?) => {
                match api_key {
                    $(ApiKey::$key => m::$request::default().encode(out, version),)*
                    other => panic!("{other:?} is not served"),
                }
            };
        }
        body! {
            Produce => ProduceRequest, Fetch => FetchRequest, ListOffsets => ListOffsetsRequest,
            Metadata => MetadataRequest, OffsetCommit => OffsetCommitRequest,
            OffsetFetch => OffsetFetchRequest, FindCoordinator => FindCoordinatorRequest,
            JoinGroup => JoinGroupRequest, Heartbeat => HeartbeatRequest,
            LeaveGroup => LeaveGroupRequest, SyncGroup => SyncGroupRequest,
            DescribeGroups => DescribeGroupsRequest, ListGroups => ListGroupsRequest,
            DeleteGroups => DeleteGroupsRequest, ElectLeaders => ElectLeadersRequest,
            OffsetDelete => OffsetDeleteRequest,
            DescribeConfigs => DescribeConfigsRequest, AlterConfigs => AlterConfigsRequest,
            ApiVersions => ApiVersionsRequest, CreateTopics => CreateTopicsRequest,
            DeleteTopics => DeleteTopicsRequest, DeleteRecords => DeleteRecordsRequest,
            OffsetForLeaderEpoch => OffsetForLeaderEpochRequest,
            CreatePartitions => CreatePartitionsRequest,
            IncrementalAlterConfigs => IncrementalAlterConfigsRequest,
            DescribeCluster => DescribeClusterRequest, InitProducerId => InitProducerIdRequest,
            AddPartitionsToTxn => AddPartitionsToTxnRequest, AddOffsetsToTxn => AddOffsetsToTxnRequest,
            EndTxn => EndTxnRequest, TxnOffsetCommit => TxnOffsetCommitRequest, DescribeTransactions => DescribeTransactionsRequest,
            ListTransactions => ListTransactionsRequest,
            DescribeLogDirs => DescribeLogDirsRequest,
            DescribeAcls => DescribeAclsRequest, CreateAcls => CreateAclsRequest,
            DeleteAcls => DeleteAclsRequest,
            DescribeClientQuotas => DescribeClientQuotasRequest,
            AlterClientQuotas => AlterClientQuotasRequest,
            DescribeUserScramCredentials => DescribeUserScramCredentialsRequest,
            AlterUserScramCredentials => AlterUserScramCredentialsRequest,
            DescribeProducers => DescribeProducersRequest,
            DescribeTopicPartitions => DescribeTopicPartitionsRequest,
            SaslHandshake => SaslHandshakeRequest, SaslAuthenticate => SaslAuthenticateRequest,
            ConsumerGroupHeartbeat => ConsumerGroupHeartbeatRequest,
            ConsumerGroupDescribe => ConsumerGroupDescribeRequest,
            AlterPartitionReassignments => AlterPartitionReassignmentsRequest,
            ListPartitionReassignments => ListPartitionReassignmentsRequest,
        }
        .expect("a default body encodes");
    }
}
