//! Guards the broker-to-broker codec: random frames round-trip exactly (seeded; replay one
//! with `RINGFEED_WIRE_SEED`), heartbeats travel in the compact list and expand back to the
//! messages raft made, and malformed bytes are refused with an error, never a panic or an
//! allocation sized by a hostile count.

use bytes::BytesMut;
use raft::eraftpb::{ConfState, Entry, Message, MessageType, Snapshot, SnapshotMetadata};
use ringfeed_storage::sim::SeededRng;

use super::*;

const FROM: u64 = 3;
const TO: u64 = 7;

fn random_bytes(rng: &mut SeededRng, max: u64) -> Vec<u8> {
    let len = if rng.below(3) == 0 {
        0
    } else {
        rng.below(max + 1)
    };
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// Mostly small values, sometimes the extremes: both ends of every field get exercised.
fn random_u64(rng: &mut SeededRng) -> u64 {
    match rng.below(4) {
        0 => 0,
        1 => rng.below(100),
        2 => u64::MAX - rng.below(2),
        _ => rng.next_u64(),
    }
}

fn random_ids(rng: &mut SeededRng) -> Vec<u64> {
    (0..rng.below(4)).map(|_| random_u64(rng)).collect()
}

fn random_snapshot(rng: &mut SeededRng) -> Snapshot {
    let metadata = (rng.below(4) != 0).then(|| SnapshotMetadata {
        conf_state: (rng.below(3) != 0).then(|| ConfState {
            voters: random_ids(rng),
            learners: random_ids(rng),
            voters_outgoing: random_ids(rng),
            learners_next: random_ids(rng),
            auto_leave: rng.below(2) == 0,
        }),
        index: random_u64(rng),
        term: random_u64(rng),
    });
    Snapshot {
        data: random_bytes(rng, 64),
        metadata,
    }
}

fn random_entry(rng: &mut SeededRng) -> Entry {
    Entry {
        entry_type: rng.below(3) as i32,
        term: random_u64(rng),
        index: random_u64(rng),
        data: random_bytes(rng, 200).into(),
        context: random_bytes(rng, 8),
        sync_log: rng.below(5) == 0,
    }
}

/// Any message raft could hand the driver, heartbeats (coalescible or not) often.
pub(crate) fn random_message(rng: &mut SeededRng, from: u64, to: u64) -> Message {
    let heartbeat = rng.below(3) == 0;
    let msg_type = if heartbeat {
        [MessageType::MsgHeartbeat, MessageType::MsgHeartbeatResponse][rng.below(2) as usize] as i32
    } else {
        rng.below(19) as i32
    };
    let mut message = Message {
        msg_type,
        from,
        to,
        term: random_u64(rng),
        commit: random_u64(rng),
        context: random_bytes(rng, 16),
        ..Message::default()
    };
    // A heartbeat stays coalescible unless this draws extra fields.
    if !heartbeat || rng.below(4) == 0 {
        message.log_term = random_u64(rng);
        message.index = random_u64(rng);
        message.commit_term = random_u64(rng);
        message.request_snapshot = random_u64(rng);
        message.reject = rng.below(2) == 0;
        message.reject_hint = random_u64(rng);
        message.priority = random_u64(rng) as i64;
        message.deprecated_priority = random_u64(rng);
        message.entries = (0..rng.below(4)).map(|_| random_entry(rng)).collect();
        message.snapshot = (rng.below(4) == 0).then(|| random_snapshot(rng));
    }
    message
}

pub(crate) fn random_frame(rng: &mut SeededRng) -> Frame {
    let mut frame = Frame::new(FROM, TO, random_u64(rng));
    for _ in 0..rng.below(12) {
        let group_id = random_u64(rng);
        frame.push(group_id, random_message(rng, FROM, TO));
    }
    frame
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame.encode(&mut out);
    assert_eq!(out.len(), frame.encoded_size());
    out.to_vec()
}

fn seeds() -> Vec<u64> {
    match std::env::var("RINGFEED_WIRE_SEED") {
        Ok(seed) => vec![seed.parse().expect("RINGFEED_WIRE_SEED is a u64")],
        Err(_) => (0..2_000).collect(),
    }
}

#[test]
fn random_frames_round_trip_exactly() {
    let limits = WireLimits::default();
    for seed in seeds() {
        let mut rng = SeededRng::new(seed);
        let frame = random_frame(&mut rng);
        let bytes = encode(&frame);
        let decoded = Frame::decode(&bytes, &limits)
            .unwrap_or_else(|error| panic!("seed {seed} (RINGFEED_WIRE_SEED={seed}): {error}"));
        assert_eq!(decoded, frame, "seed {seed} (RINGFEED_WIRE_SEED={seed})");
        assert_eq!(
            encode(&decoded),
            bytes,
            "seed {seed}: encoding is not canonical"
        );
    }
}

#[test]
fn every_prefix_of_a_frame_is_refused_without_panic() {
    let limits = WireLimits::default();
    for seed in 0..50 {
        let mut rng = SeededRng::new(seed);
        let bytes = encode(&random_frame(&mut rng));
        for end in 0..bytes.len() {
            assert!(
                Frame::decode(&bytes[..end], &limits).is_err(),
                "seed {seed} end {end}"
            );
        }
    }
}

#[test]
fn heartbeats_of_many_groups_share_the_compact_list_and_expand_back() {
    let mut frame = Frame::new(FROM, TO, 1);
    let mut sent = Vec::new();
    for group_id in 0..1_000 {
        let message = Message {
            msg_type: MessageType::MsgHeartbeat as i32,
            from: FROM,
            to: TO,
            term: 4,
            commit: group_id,
            ..Message::default()
        };
        sent.push((group_id, message.clone()));
        frame.push(group_id, message);
    }
    assert_eq!(frame.heartbeats.len(), 1_000);
    assert!(frame.messages.is_empty());
    // 29 bytes a group instead of a full message's 90.
    assert_eq!(
        frame.encoded_size(),
        FRAME_LENGTH_BYTES + FRAME_BODY_BYTES_MIN + 1_000 * HEARTBEAT_FIXED_BYTES
    );
    let decoded = Frame::decode(&encode(&frame), &WireLimits::default()).expect("decodes");
    let received: Vec<_> = decoded.into_group_messages().collect();
    assert_eq!(received, sent);
}

#[test]
fn a_heartbeat_with_other_fields_set_travels_in_full() {
    let message = Message {
        msg_type: MessageType::MsgHeartbeatResponse as i32,
        from: FROM,
        to: TO,
        reject: true,
        ..Message::default()
    };
    let mut frame = Frame::new(FROM, TO, 1);
    frame.push(9, message.clone());
    assert!(frame.heartbeats.is_empty());
    let decoded = Frame::decode(&encode(&frame), &WireLimits::default()).expect("decodes");
    assert_eq!(
        decoded.into_group_messages().collect::<Vec<_>>(),
        [(9, message)]
    );
}

fn one_message_frame() -> Vec<u8> {
    let mut frame = Frame::new(FROM, TO, 1);
    frame.push(
        5,
        Message {
            msg_type: MessageType::MsgAppend as i32,
            from: FROM,
            to: TO,
            entries: vec![Entry {
                data: bytes::Bytes::from_static(b"batch"),
                ..Entry::default()
            }],
            ..Message::default()
        },
    );
    encode(&frame)
}

/// Offset of the first full message's `msg_type`: after the header, an empty heartbeat list,
/// `message_count` and `group_id`.
const FIRST_MSG_TYPE_OFFSET: usize =
    FRAME_LENGTH_BYTES + FRAME_HEADER_BYTES + MESSAGE_COUNT_BYTES + 8;

#[test]
fn unknown_enums_are_decode_errors() {
    let limits = WireLimits::default();
    let mut bytes = one_message_frame();
    bytes[FIRST_MSG_TYPE_OFFSET] = 19;
    assert_eq!(
        Frame::decode(&bytes, &limits),
        Err(WireError::UnknownMessageType {
            value: 19,
            offset: FIRST_MSG_TYPE_OFFSET
        })
    );
    let mut bytes = one_message_frame();
    let entry_type_offset = FIRST_MSG_TYPE_OFFSET + MESSAGE_FIXED_BYTES - 8;
    bytes[entry_type_offset] = 3;
    assert_eq!(
        Frame::decode(&bytes, &limits),
        Err(WireError::UnknownEntryType {
            value: 3,
            offset: entry_type_offset
        })
    );
}

#[test]
fn unknown_version_and_oversized_frames_are_refused_before_reading_on() {
    let mut bytes = one_message_frame();
    bytes[FRAME_LENGTH_BYTES..FRAME_LENGTH_BYTES + 2].copy_from_slice(&2u16.to_be_bytes());
    assert_eq!(
        Frame::decode(&bytes, &WireLimits::default()),
        Err(WireError::UnknownVersion { version: 2 })
    );
    let limits = WireLimits {
        frame_bytes_max: 64,
    };
    let bytes = one_message_frame();
    assert!(matches!(
        Frame::decode(&bytes, &limits),
        Err(WireError::FrameTooLarge { max: 64, .. })
    ));
    assert!(matches!(
        frame_body_length(u32::MAX.to_be_bytes(), &WireLimits::default()),
        Err(WireError::FrameTooLarge { .. })
    ));
}

#[test]
fn hostile_counts_are_refused_before_allocation() {
    let limits = WireLimits::default();
    // A header declaring 2^32-1 heartbeats in a frame that holds none.
    let mut bytes = encode(&Frame::new(FROM, TO, 1));
    let count_offset = FRAME_LENGTH_BYTES + FRAME_HEADER_BYTES - 4;
    bytes[count_offset..count_offset + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        Frame::decode(&bytes, &limits),
        Err(WireError::CountTooLarge {
            field: "heartbeat_count",
            ..
        })
    ));
    // An entry's data_length past the end of the frame.
    let mut bytes = one_message_frame();
    let data_length_offset = FIRST_MSG_TYPE_OFFSET + MESSAGE_FIXED_BYTES - 8 + 18;
    bytes[data_length_offset..data_length_offset + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        Frame::decode(&bytes, &limits),
        Err(WireError::Truncated {
            field: "data_length",
            ..
        })
    ));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = one_message_frame();
    bytes.push(0);
    let body = (bytes.len() - FRAME_LENGTH_BYTES) as u32;
    bytes[..FRAME_LENGTH_BYTES].copy_from_slice(&body.to_be_bytes());
    assert!(matches!(
        Frame::decode(&bytes, &WireLimits::default()),
        Err(WireError::TrailingBytes { left: 1, .. })
    ));
}

/// A poor man's fuzzer that runs in every `cargo test`: seeded mutations (bit flips, byte
/// overwrites with boundary values, truncations, duplications) of real frames go through the
/// fuzz target's checks. libFuzzer (`fuzz/`, target `wire_decoding`) goes further.
#[test]
fn mutated_frames_decode_or_fail_cleanly() {
    let mut decoded = 0;
    for seed in 0..3_000 {
        let mut rng = SeededRng::new(seed);
        let mut bytes = encode(&random_frame(&mut rng));
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len() as u64) as usize;
            match rng.below(4) {
                0 => bytes[at] ^= 1 << rng.below(8),
                1 => bytes[at] = [0, 1, 2, 0x7f, 0x80, 0xff][rng.below(6) as usize],
                2 => bytes.truncate(at),
                _ => {
                    let copy = bytes[at..].to_vec();
                    bytes.extend_from_slice(&copy[..copy.len().min(16)]);
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
        // Keep the length prefix honest half of the time, so mutations reach the body.
        if rng.below(2) == 0 && bytes.len() >= FRAME_LENGTH_BYTES {
            let body = (bytes.len() - FRAME_LENGTH_BYTES) as u32;
            bytes[..FRAME_LENGTH_BYTES].copy_from_slice(&body.to_be_bytes());
        }
        crate::fuzzing::wire_decoding(&bytes);
        decoded += usize::from(Frame::decode(&bytes, &WireLimits::default()).is_ok());
    }
    assert!(
        decoded > 0,
        "no mutant decoded: the mutations never reach the re-encoding checks"
    );
}
