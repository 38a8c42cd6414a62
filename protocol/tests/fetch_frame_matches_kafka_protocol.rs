//! Guards the zero-copy Fetch response frame (`fetch_frame::encode_fetch_response_frame`): its
//! framing pieces and record batches, written one after another, are byte for byte the frame
//! `kafka-protocol` encodes for the same response with each partition's batches concatenated
//! into its `records` — over seeded random responses of every Fetch version from v4 to v16
//! (flexible and not, with and without tagged fields), empty and absent records, errors,
//! aborted transactions (none and some), many partitions, and batches whose sizes cross the
//! varint length boundaries.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint,
    PartitionData, SnapshotId,
};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchResponse, ProducerId, TopicName};
use kafka_protocol::protocol::{Decodable, StrBytes};
use ringfeed_protocol::codec::encode_response_frame;
use ringfeed_protocol::fetch_frame::{encode_fetch_response_frame, ResponseFrame};

/// A small seeded generator (xorshift64*): reproducible without a dependency.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn int(&mut self) -> i32 {
        i32::try_from(self.below(1 << 20)).unwrap() - 1
    }

    fn long(&mut self) -> i64 {
        i64::try_from(self.below(1 << 40)).unwrap() - 1
    }
}

/// Batch sizes around the compact length's varint steps (length + 1 crossing 2^7 and 2^14;
/// 2^21 is in the targeted test) and the sizes the bench uses.
const BATCH_SIZES: [usize; 11] = [
    1, 61, 126, 127, 128, 1000, 16_382, 16_383, 16_384, 70_000, 100,
];

fn batch(random: &mut Seeded) -> Bytes {
    let size = BATCH_SIZES[usize::try_from(random.below(BATCH_SIZES.len() as u64)).unwrap()];
    let fill = u8::try_from(random.below(256)).unwrap();
    let mut batch = vec![fill; size];
    batch[0] = fill.wrapping_add(1); // a misplaced batch shows as a difference
    Bytes::from(batch)
}

fn topic_id(random: &mut Seeded) -> FetchableTopicResponse {
    // The crate does not re-export `Uuid`: decode one (16 bytes, no partitions, no tags).
    let mut encoded = BytesMut::new();
    encoded.put_u64(random.next());
    encoded.put_u64(random.next());
    encoded.put_u8(1);
    encoded.put_u8(0);
    FetchableTopicResponse::decode(&mut encoded.freeze(), 13).unwrap()
}

/// One partition, with only the fields `version` has set (the encoder refuses others).
fn partition(random: &mut Seeded, version: i16) -> (PartitionData, Vec<Bytes>) {
    let mut partition = PartitionData::default()
        .with_partition_index(random.int())
        .with_error_code(if random.chance(20) { 3 } else { 0 })
        .with_high_watermark(random.long())
        .with_last_stable_offset(random.long())
        .with_log_start_offset(if version >= 5 { random.long() } else { -1 });
    partition.aborted_transactions = match random.below(3) {
        0 => None,
        1 => Some(Vec::new()),
        _ => Some(
            (0..random.below(3))
                .map(|_| {
                    AbortedTransaction::default()
                        .with_producer_id(ProducerId(random.long()))
                        .with_first_offset(random.long())
                })
                .collect(),
        ),
    };
    if version >= 11 && random.chance(30) {
        partition.preferred_read_replica = BrokerId(random.int());
    }
    if version >= 12 && random.chance(30) {
        partition.diverging_epoch = EpochEndOffset::default()
            .with_epoch(random.int())
            .with_end_offset(random.long());
    }
    if version >= 12 && random.chance(30) {
        partition.current_leader = LeaderIdAndEpoch::default()
            .with_leader_id(BrokerId(random.int()))
            .with_leader_epoch(random.int());
    }
    if version >= 12 && random.chance(20) {
        partition.snapshot_id = SnapshotId::default()
            .with_end_offset(random.long())
            .with_epoch(random.int());
    }
    if version >= 12 && random.chance(10) {
        partition
            .unknown_tagged_fields
            .insert(90, Bytes::from_static(b"tag"));
    }
    let batches: Vec<Bytes> = match random.below(4) {
        0 => Vec::new(),
        1 => vec![batch(random)],
        _ => (0..=random.below(4)).map(|_| batch(random)).collect(),
    };
    // A partition without batches answers with its own records: empty, or absent.
    partition.records = if batches.is_empty() && random.chance(50) {
        None
    } else {
        Some(Bytes::new())
    };
    (partition, batches)
}

fn response(random: &mut Seeded, version: i16) -> (FetchResponse, Vec<Vec<Bytes>>) {
    let mut response = FetchResponse::default()
        .with_throttle_time_ms(if random.chance(30) { random.int() } else { 0 })
        // An error the response as a whole carries (UNKNOWN_SERVER_ERROR), from v7.
        .with_error_code(if version >= 7 && random.chance(10) {
            -1
        } else {
            0
        })
        .with_session_id(if version >= 7 { random.int() } else { 0 });
    let mut partition_batches = Vec::new();
    let topics = if random.chance(10) {
        0
    } else {
        1 + random.below(4)
    };
    for topic_index in 0..topics {
        let mut topic = if version >= 13 {
            topic_id(random)
        } else {
            FetchableTopicResponse::default().with_topic(TopicName(StrBytes::from_string(format!(
                "topic-{topic_index}-{}",
                random.below(1000)
            ))))
        };
        // Sometimes many partitions, as a consumer of a wide topic asks.
        let partitions = if random.chance(5) {
            200
        } else {
            random.below(6)
        };
        for _ in 0..partitions {
            let (partition, batches) = partition(random, version);
            topic.partitions.push(partition);
            partition_batches.push(batches);
        }
        response.responses.push(topic);
    }
    if version >= 16 && random.chance(40) {
        response.node_endpoints.push(
            NodeEndpoint::default()
                .with_node_id(BrokerId(random.int()))
                .with_host(StrBytes::from_static_str("broker.example"))
                .with_port(9092)
                .with_rack(
                    random
                        .chance(50)
                        .then(|| StrBytes::from_static_str("rack-a")),
                ),
        );
    }
    (response, partition_batches)
}

/// The response as `kafka-protocol` encodes it today: each partition's batches concatenated.
fn concatenated_reference(
    response: &FetchResponse,
    partition_batches: &[Vec<Bytes>],
    version: i16,
    correlation_id: i32,
) -> Bytes {
    let mut reference = response.clone();
    let partitions = reference
        .responses
        .iter_mut()
        .flat_map(|topic| topic.partitions.iter_mut());
    for (partition, batches) in partitions.zip(partition_batches) {
        if !batches.is_empty() {
            partition.records = Some(batches.concat().into());
        }
    }
    encode_response_frame(ApiKey::Fetch, version, correlation_id, &reference).unwrap()
}

fn assert_identical(frame: &ResponseFrame, reference: &Bytes, context: &str) {
    assert!(
        frame.slices().iter().all(|slice| !slice.is_empty()),
        "{context}: an empty slice"
    );
    assert_eq!(frame.len(), reference.len(), "{context}: frame size");
    let written = frame.concatenated();
    if let Some(first_difference) = written
        .iter()
        .zip(reference.iter())
        .position(|(a, b)| a != b)
    {
        panic!("{context}: first difference at byte {first_difference}");
    }
}

#[test]
fn random_responses_of_every_version_encode_as_kafka_protocol_does() {
    let mut random = Seeded(0x5eed_f37c_0016_0001);
    for round in 0..12 {
        for version in 4..=16 {
            let (response, partition_batches) = response(&mut random, version);
            let reference =
                concatenated_reference(&response, &partition_batches, version, 0x0102_0304);
            let frame =
                encode_fetch_response_frame(version, 0x0102_0304, response, &partition_batches)
                    .unwrap();
            assert_identical(&frame, &reference, &format!("round {round}, v{version}"));
            // The batches themselves are on the frame, not copies of them.
            let spliced: Vec<&Bytes> = partition_batches.iter().flatten().collect();
            for batch in spliced {
                assert!(
                    frame
                        .slices()
                        .iter()
                        .any(|slice| slice.as_ptr() == batch.as_ptr() && slice.len() == batch.len()),
                    "round {round}, v{version}: a batch was copied"
                );
            }
        }
    }
}

#[test]
fn an_empty_response_and_one_batch_frames_are_identical_too() {
    for version in 4..=16 {
        let empty = FetchResponse::default();
        let reference = encode_response_frame(ApiKey::Fetch, version, 7, &empty).unwrap();
        let frame = encode_fetch_response_frame(version, 7, empty, &[]).unwrap();
        assert_identical(&frame, &reference, &format!("empty v{version}"));

        let one = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(if version < 13 {
                TopicName(StrBytes::from_static_str("t"))
            } else {
                TopicName::default()
            })
            .with_partitions(vec![PartitionData::default()
                .with_aborted_transactions(Some(Vec::new()))
                .with_records(Some(Bytes::new()))])]);
        // 2^21 - 1 bytes: the compact length + 1 takes four varint bytes.
        let batches = vec![vec![
            Bytes::from(vec![7_u8; 16_384]),
            Bytes::from(vec![8_u8; 2_080_767]),
        ]];
        let reference = concatenated_reference(&one, &batches, version, 7);
        let frame = encode_fetch_response_frame(version, 7, one, &batches).unwrap();
        assert_identical(&frame, &reference, &format!("one batch v{version}"));
        // Framing before the records, the two batches, and the partition's trailing fields (if any).
        assert!(
            frame.slices().len() <= 4,
            "v{version}: {} slices",
            frame.slices().len()
        );
    }
}
