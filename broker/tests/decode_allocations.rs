//! Guards that decoding a request never allocates from a declared length before checking it
//! against the bytes left in the frame (issue 10, item 11). The generated codec sizes an
//! array's `Vec` from its declared count before reading any element; a count of 2^31 asked
//! for ~150 GB, and a refused allocation aborts the process. Under strict overcommit or an
//! address-space limit that is a broker crash from one small frame.
//!
//! This test binary counts the largest single allocation made while a frame decodes. Every
//! length field of real clients' frames (the committed fuzz corpus) and of a minimal request
//! per served API and version is overwritten with, or preceded by, a hostile length (`i32::MAX`,
//! `i16::MAX`, the largest unsigned varint), and the decode must stay within a small multiple
//! of the frame's size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};
use ringfeed_broker::handlers::Request;
use ringfeed_broker::registry::SUPPORTED_APIS;
use ringfeed_broker::request_decode::{decode_frame, FrameVerdict};

/// Passes everything to `System`, remembering the largest request of the current thread.
struct LargestAllocation;

thread_local! {
    static LARGEST_BYTES: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocations during thread teardown are not ours to count.
    let _ = LARGEST_BYTES.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: forwards every call unchanged to `System`; `note` touches only a thread-local
// `Cell` and never allocates.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(pointer, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// A decode may allocate a few times what the frame holds (decoded structs are larger than
/// their encoding); a hostile length asks for gigabytes. The frames here are under 64 KiB.
const DECODE_ALLOCATION_BYTES_MAX: usize = 16 << 20;
/// Length fields sit near the front; past this many bytes of a frame only record data follows.
const MUTATED_PREFIX_BYTES: usize = 2048;
/// The fixed preamble (api key, version, correlation id) stays intact so the frame is admitted.
const PREAMBLE_BYTES: usize = 8;

const HOSTILE_LENGTHS: [&[u8]; 3] = [
    &[0x7f, 0xff, 0xff, 0xff],       // i32::MAX: array count, bytes length
    &[0x7f, 0xff],                   // i16::MAX: string length
    &[0xff, 0xff, 0xff, 0xff, 0x0f], // u32::MAX as an unsigned varint: compact lengths
];

/// Decodes `frame` and returns the largest single allocation made meanwhile.
fn largest_allocation_decoding(frame: Bytes) -> usize {
    LARGEST_BYTES.with(|largest| largest.set(0));
    drop(decode_frame(frame));
    LARGEST_BYTES.with(Cell::get)
}

/// Every variant of `frame` with a hostile length written over, or inserted at, each offset
/// after the preamble; `check` gets each.
fn for_each_mutation(frame: &[u8], mut check: impl FnMut(Bytes, &str, usize)) {
    let end = frame.len().min(MUTATED_PREFIX_BYTES);
    for offset in PREAMBLE_BYTES..=end {
        for length in HOSTILE_LENGTHS {
            let mut inserted = Vec::with_capacity(frame.len() + length.len());
            inserted.extend_from_slice(&frame[..offset]);
            inserted.extend_from_slice(length);
            inserted.extend_from_slice(&frame[offset..]);
            check(Bytes::from(inserted), "inserted", offset);
            if offset + length.len() <= frame.len() {
                let mut overwritten = frame.to_vec();
                overwritten[offset..offset + length.len()].copy_from_slice(length);
                check(Bytes::from(overwritten), "overwritten", offset);
            }
        }
    }
}

fn assert_bounded(name: &str, frame: &[u8]) {
    let mut decodes = 0;
    for_each_mutation(frame, |mutated, how, offset| {
        let bytes = mutated.len();
        let largest = largest_allocation_decoding(mutated);
        assert!(
            largest <= DECODE_ALLOCATION_BYTES_MAX,
            "{name}: a hostile length {how} at byte {offset} of a {bytes}-byte frame made the \
             decode allocate {largest} bytes at once"
        );
        decodes += 1;
    });
    assert!(decodes > 0, "{name}: nothing mutated");
}

/// The frames of one connection's byte stream (size-prefixed), without their prefixes.
fn frames_of(stream: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    let mut rest = stream;
    while rest.len() >= 4 {
        let declared = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let Ok(size) = usize::try_from(declared) else {
            break;
        };
        if rest.len() - 4 < size || size < PREAMBLE_BYTES {
            break;
        }
        frames.push(&rest[4..4 + size]);
        rest = &rest[4 + size..];
    }
    frames
}

#[test]
fn hostile_lengths_in_real_clients_frames_allocate_nothing_large() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/request_decoding");
    let mut frames_checked = 0;
    for entry in
        std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
    {
        let path = entry.expect("directory entry").path();
        let stream = std::fs::read(&path).expect("corpus file");
        for (index, frame) in frames_of(&stream).into_iter().enumerate() {
            assert_bounded(&format!("{} frame {index}", path.display()), frame);
            frames_checked += 1;
        }
    }
    assert!(frames_checked >= 50, "only {frames_checked} corpus frames");
}

/// The request body of `key` at its all-default value, encoded at `version`.
fn default_body(key: ApiKey, version: i16, out: &mut BytesMut) {
    Request::default_of(key)
        .unwrap_or_else(|| panic!("no default request for {key:?}"))
        .encode_body(out, version)
        .unwrap_or_else(|error| panic!("{key:?} v{version}: {error}"));
}

#[test]
fn hostile_lengths_in_every_served_request_allocate_nothing_large() {
    for spec in SUPPORTED_APIS {
        for version in spec.accepted_min..=spec.advertised_max {
            let mut frame = BytesMut::new();
            RequestHeader::default()
                .with_request_api_key(spec.key as i16)
                .with_request_api_version(version)
                .with_client_id(Some(StrBytes::from_static_str("t")))
                .encode(&mut frame, spec.key.request_header_version(version))
                .expect("header encodes");
            default_body(spec.key, version, &mut frame);
            // The unmutated frame decodes, so the mutations start from a frame the decoder
            // walks to the end rather than one refused at admission.
            assert!(
                matches!(
                    decode_frame(frame.clone().freeze()),
                    FrameVerdict::Decoded { .. }
                ),
                "{:?} v{version} does not decode",
                spec.key
            );
            assert_bounded(&format!("{:?} v{version}", spec.key), &frame);
        }
    }
}
